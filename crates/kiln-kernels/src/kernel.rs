//! The [`Kernel`] trait every job kind implements, and its type-erased registry entry.

use std::fmt::Debug;

use burn::tensor::backend::Backend;
use kiln_proto::{Codec, Job, JobError, Limits};
use serde::{Serialize, de::DeserializeOwned};

use crate::device::{ComputeDevice, CpuBackend, CudaBackend};

/// What a job will cost, computed from its parameters before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan {
    /// Tensor elements held at the peak (inputs, outputs, intermediates).
    pub elements: u64,
    /// Floating-point operations (multiply-adds count as two).
    pub flops: f64,
    /// Only a GPU worker can run it (a `dtype` other than f32): the scheduler routes it to the
    /// GPU class, never to the CPU class, which would refuse it.
    pub gpu_only: bool,
}

/// Progress of a long job, reported at checkpoints (training epochs, batch slices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Called by kernels at safe points: the worker uses it to extend the ack deadline, and
/// returns an error (`cancelled`, `timeout`) to stop the job there.
pub trait Checkpoint: Sync {
    fn checkpoint(&self, progress: Progress) -> Result<(), JobError>;
}

/// A checkpoint that never stops the job.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCheckpoint;

impl Checkpoint for NoCheckpoint {
    fn checkpoint(&self, _: Progress) -> Result<(), JobError> {
        Ok(())
    }
}

/// What a kernel gets besides its parameters.
pub struct RunContext<'a, B: Backend> {
    pub device: B::Device,
    /// Seed for generated inputs.
    pub seed: u64,
    pub limits: &'a Limits,
    /// Whether the backend is a GPU (some dtypes exist only there).
    pub is_gpu: bool,
    /// The CUDA device's index when the backend is CUDA (for kernels that call CUDA libraries
    /// directly, as matmul does cuBLAS).
    pub cuda_index: Option<usize>,
    pub checkpoint: &'a dyn Checkpoint,
}

impl<B: Backend> RunContext<'_, B> {
    pub fn checkpoint(&self, done: u64, total: u64) -> Result<(), JobError> {
        self.checkpoint.checkpoint(Progress { done, total })
    }
}

/// One job kind: its parameters, its cost, and its computation, generic over the backend.
pub trait Kernel: 'static {
    /// The kind's name: the last token of `jobs.<class>.<kind>`.
    const NAME: &'static str;
    /// One line saying what the kind computes.
    const SUMMARY: &'static str;
    /// Its parameters, one per line (`name: meaning (default)`), shown by `kiln submit --help`.
    const PARAMS_HELP: &'static str;
    /// Parameters (JSON) of the jobs a GPU worker runs before it takes its first job, so
    /// that JIT compilation and autotuning of the typical sizes are paid at start (and kept
    /// in the cache directory) rather than by the first user.
    const WARMUP: &'static [&'static str] = &[];
    /// The kind's parameters (`params` of the job body). Use `#[serde(deny_unknown_fields)]`
    /// and `Option` fields rather than untagged enums, so that bincode can carry them.
    type Params: Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static;

    /// Validate the parameters and say what the job will cost. Must not allocate tensors.
    fn plan(params: &Self::Params, limits: &Limits) -> Result<Plan, JobError>;

    /// Run the job and summarise its output as a JSON object.
    fn run<B: Backend>(
        params: &Self::Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError>;
}

/// A job decoded and validated against its kind, ready to run on any device.
pub struct DecodedJob {
    pub kind: &'static KindEntry,
    pub id: Option<String>,
    pub timeout_ms: Option<u64>,
    pub seed: u64,
    pub plan: Plan,
    limits: Limits,
    runnable: Box<dyn Runnable>,
}

impl Debug for DecodedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedJob")
            .field("kind", &self.kind.name)
            .field("id", &self.id)
            .field("seed", &self.seed)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl DecodedJob {
    /// Run the job on `device`; blocking, call it off the async executor.
    pub fn run(
        &self,
        device: &ComputeDevice,
        checkpoint: &dyn Checkpoint,
    ) -> Result<serde_json::Value, JobError> {
        self.runnable
            .run(device, self.seed, &self.limits, checkpoint)
    }
}

trait Runnable: Send + Sync {
    fn run(
        &self,
        device: &ComputeDevice,
        seed: u64,
        limits: &Limits,
        checkpoint: &dyn Checkpoint,
    ) -> Result<serde_json::Value, JobError>;
}

struct Typed<K: Kernel>(K::Params);

impl<K: Kernel> Runnable for Typed<K> {
    fn run(
        &self,
        device: &ComputeDevice,
        seed: u64,
        limits: &Limits,
        checkpoint: &dyn Checkpoint,
    ) -> Result<serde_json::Value, JobError> {
        match device {
            ComputeDevice::Cpu => K::run::<CpuBackend>(
                &self.0,
                &RunContext {
                    device: Default::default(),
                    seed,
                    limits,
                    is_gpu: false,
                    cuda_index: None,
                    checkpoint,
                },
            ),
            ComputeDevice::Cuda(index) => K::run::<CudaBackend>(
                &self.0,
                &RunContext {
                    device: burn::backend::cuda::CudaDevice::new(*index),
                    seed,
                    limits,
                    is_gpu: true,
                    cuda_index: Some(*index),
                    checkpoint,
                },
            ),
        }
    }
}

/// A kind's entry in the registry: its name, help, and how to decode its jobs.
#[derive(Debug)]
pub struct KindEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub params_help: &'static str,
    /// See [`Kernel::WARMUP`].
    pub warmup: &'static [&'static str],
    decode: fn(&'static KindEntry, Codec, &[u8], &Limits) -> Result<DecodedJob, JobError>,
    check_params: fn(serde_json::Value, &Limits) -> Result<Plan, JobError>,
    encode: fn(serde_json::Value, JobMeta, Codec) -> Result<Vec<u8>, JobError>,
}

/// The envelope fields of a job being built by a client.
#[derive(Debug, Clone, Default)]
pub struct JobMeta {
    pub id: Option<String>,
    pub seed: Option<u64>,
    pub timeout_ms: Option<u64>,
}

impl KindEntry {
    pub const fn of<K: Kernel>() -> Self {
        KindEntry {
            name: K::NAME,
            summary: K::SUMMARY,
            params_help: K::PARAMS_HELP,
            warmup: K::WARMUP,
            decode: decode::<K>,
            check_params: check_params::<K>,
            encode: encode::<K>,
        }
    }

    /// Decode a job body of this kind and validate it against `limits`.
    pub fn decode(
        &'static self,
        codec: Codec,
        body: &[u8],
        limits: &Limits,
    ) -> Result<DecodedJob, JobError> {
        (self.decode)(self, codec, body, limits)
    }

    /// Validate `params` as given in JSON (what `kiln submit` does before publishing).
    pub fn check_params(
        &self,
        params: serde_json::Value,
        limits: &Limits,
    ) -> Result<Plan, JobError> {
        (self.check_params)(params, limits)
    }

    /// Build a job body of this kind from JSON parameters, in either codec. The parameters
    /// are checked (unknown fields, wrong types, inconsistent values); size limits are
    /// left to the worker, whose limits are the ones that count.
    pub fn encode_job(
        &self,
        params: serde_json::Value,
        meta: JobMeta,
        codec: Codec,
    ) -> Result<Vec<u8>, JobError> {
        (self.encode)(params, meta, codec)
    }
}

fn decode<K: Kernel>(
    entry: &'static KindEntry,
    codec: Codec,
    body: &[u8],
    limits: &Limits,
) -> Result<DecodedJob, JobError> {
    limits.check_payload(body.len())?;
    // serde reads a JSON array as a struct's fields in order: `[1, 2, 3]` would be refused
    // for its first element ("expected a string"), which says nothing useful.
    if codec == Codec::Json
        && let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace())
        && *first != b'{'
    {
        return Err(JobError::invalid_input(format!(
            "{} job: the body must be a JSON object such as {{\"params\": {{…}}}}, got {}",
            K::NAME,
            match first {
                b'[' => "an array",
                b'"' => "a string",
                b'-' | b'0'..=b'9' => "a number",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "something that is not JSON",
            }
        )));
    }
    let job: Job<K::Params> = codec
        .decode("job", body)
        .map_err(|e| JobError::invalid_input(format!("{} job: {e}", K::NAME)))?;
    if let Some(id) = &job.id
        && !kiln_proto::valid_job_id(id)
    {
        return Err(JobError::invalid_input(format!(
            "job id {id:?} must be 1 to {} printable ASCII characters without spaces",
            kiln_proto::MAX_ID_LEN
        )));
    }
    let plan = K::plan(&job.params, limits)?;
    limits.check_elements(K::NAME, plan.elements)?;
    Ok(DecodedJob {
        kind: entry,
        id: job.id,
        timeout_ms: job.timeout_ms,
        seed: job.seed.unwrap_or(0),
        plan,
        runnable: Box::new(Typed::<K>(job.params)),
        limits: *limits,
    })
}

fn check_params<K: Kernel>(params: serde_json::Value, limits: &Limits) -> Result<Plan, JobError> {
    let params: K::Params = serde_json::from_value(params)
        .map_err(|e| JobError::invalid_input(format!("{} params: {e}", K::NAME)))?;
    let plan = K::plan(&params, limits)?;
    limits.check_elements(K::NAME, plan.elements)?;
    Ok(plan)
}

fn encode<K: Kernel>(
    params: serde_json::Value,
    meta: JobMeta,
    codec: Codec,
) -> Result<Vec<u8>, JobError> {
    let params: K::Params = serde_json::from_value(params)
        .map_err(|e| JobError::invalid_input(format!("{} params: {e}", K::NAME)))?;
    K::plan(&params, &Limits::UNLIMITED)?;
    let job = Job {
        id: meta.id,
        params,
        timeout_ms: meta.timeout_ms,
        seed: meta.seed,
    };
    codec
        .encode("job", &job)
        .map_err(|e| JobError::internal(e.to_string()))
}
