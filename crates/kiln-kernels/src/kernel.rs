//! The [`Kernel`] trait every job kind implements, and its type-erased registry entry.

use std::fmt::Debug;

use burn::tensor::backend::Backend;
use kiln_proto::{Codec, Job, JobError, Limits, OutputMode};
use serde::{Serialize, de::DeserializeOwned};

use crate::device::{ComputeDevice, CpuBackend, CudaBackend};
use crate::engine::Engines;
use crate::io::{Inputs, OutputSink, Placement, Stored, Wanted};

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
    /// Units of work finished so far, in the kernel's own unit (epochs, slices).
    pub done: u64,
    /// Units of work in the whole job.
    pub total: u64,
}

/// Called by kernels at safe points: the worker uses it to extend the ack deadline, and
/// returns an error (`cancelled`, `timeout`) to stop the job there.
pub trait Checkpoint: Sync {
    /// The job has reached `progress`; an error stops it there and becomes its result.
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
    /// The Burn device to allocate on.
    pub device: B::Device,
    /// Seed for generated inputs.
    pub seed: u64,
    /// The worker's limits (inline output size among them).
    pub limits: &'a Limits,
    /// Whether the backend is a GPU (some dtypes exist only there).
    pub is_gpu: bool,
    /// The CUDA device's index when the backend is CUDA (for kernels that call CUDA libraries
    /// directly, as matmul does cuBLAS).
    pub cuda_index: Option<usize>,
    /// What the kinds that have a choice run on (matmul, vector_add, conv2d), as the caller of
    /// [`DecodedJob::run_with`] chose.
    pub engines: Engines,
    /// Where the kernel reports progress; see [`RunContext::checkpoint`].
    pub checkpoint: &'a dyn Checkpoint,
    /// The objects loaded for the job's parameters that name one.
    pub inputs: &'a Inputs,
    /// Where the job asked its output to go.
    pub output: OutputMode,
    /// Where a kernel puts an output that goes to the object store ([`Placement::Object`]).
    pub sink: &'a OutputSink,
}

impl<B: Backend> RunContext<'_, B> {
    /// Report `done` of `total` units finished: the job stops here with the error
    /// (`cancelled`, `timeout`) if the worker says so.
    pub fn checkpoint(&self, done: u64, total: u64) -> Result<(), JobError> {
        self.checkpoint.checkpoint(Progress { done, total })
    }

    /// Where an output of `elements` values goes: `user_data` says whether the job's inputs
    /// came from the user (inline or objects) rather than from the seed.
    pub fn place(&self, user_data: bool, elements: usize) -> Placement {
        Placement::of(
            self.output,
            user_data,
            elements,
            self.limits.max_inline_output,
        )
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
    /// Whether the kind's output is an image, which `"output": "png"` may store (8 bits a
    /// value, clamped to [0, 1]); other kinds refuse `png` rather than lose their values.
    const IMAGE_OUTPUT: bool = false;
    /// The kind's parameters (`params` of the job body). Use `#[serde(deny_unknown_fields)]`
    /// and `Option` fields rather than untagged enums, so that bincode can carry them.
    type Params: Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static;

    /// Validate the parameters and say what the job will cost. Must not allocate tensors.
    /// Parameters that name objects are known by `inputs` once the worker has loaded them;
    /// before that (`inputs` empty) they count as nothing and only the rest is checked.
    fn plan(params: &Self::Params, inputs: &Inputs, limits: &Limits) -> Result<Plan, JobError>;

    /// Refuse an output the job's sizes cannot be stored as (a PNG of a batch), before
    /// anything runs: called as the job is decoded and again once its objects are loaded
    /// (`inputs`). Kinds whose every output fits every mode keep the default.
    fn check_output(
        params: &Self::Params,
        inputs: &Inputs,
        output: OutputMode,
    ) -> Result<(), JobError> {
        let _ = (params, inputs, output);
        Ok(())
    }

    /// The objects the parameters name, and how each is read. Kinds without object
    /// parameters keep the default.
    fn objects(params: &Self::Params) -> Vec<Wanted> {
        let _ = params;
        Vec::new()
    }

    /// Run the job and summarise its output as a JSON object.
    fn run<B: Backend>(
        params: &Self::Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError>;

    /// Why a CPU worker refuses this job without running it (a dtype only GPUs compute); the
    /// kinds with such parameters say so, and [`Kernel::run`] refuses them on the CPU too.
    fn refusal_on_cpu(params: &Self::Params) -> Option<JobError> {
        let _ = params;
        None
    }

    /// Whether this job may share one launch with other jobs of its kind
    /// ([`Kernel::run_batch`]): kinds with a batched path say yes for their small jobs.
    fn batchable(params: &Self::Params, plan: &Plan) -> bool {
        let _ = (params, plan);
        false
    }

    /// Run jobs that [`Kernel::batchable`] allowed as one launch, each with its own context
    /// (seed, inputs, checkpoint, output); one result per job, in order, each as [`Kernel::run`]
    /// would give it. The default runs them one by one.
    fn run_batch<B: Backend>(
        jobs: &[(&Self::Params, &RunContext<'_, B>)],
    ) -> Vec<Result<serde_json::Value, JobError>> {
        jobs.iter()
            .map(|(params, ctx)| Self::run(params, ctx))
            .collect()
    }
}

/// A job decoded and validated against its kind, ready to run on any device.
pub struct DecodedJob {
    /// The job's kind.
    pub kind: &'static KindEntry,
    /// The `id` in its body, if it had one.
    pub id: Option<String>,
    /// Give up after this many milliseconds of compute (`None`: no limit).
    pub timeout_ms: Option<u64>,
    /// Seed for generated inputs (0 when the job gave none).
    pub seed: u64,
    /// Where the output goes.
    pub output: OutputMode,
    /// What it will cost; computed again by [`DecodedJob::load`] once its objects are known.
    pub plan: Plan,
    limits: Limits,
    inputs: Inputs,
    sink: OutputSink,
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
    /// Why a CPU worker refuses this job before running it: a `dtype` only GPU workers
    /// compute (the same error [`DecodedJob::run`] gives on the CPU).
    pub fn refusal_on_cpu(&self) -> Option<JobError> {
        self.runnable.refusal_on_cpu()
    }

    /// Run the job on `device` with the default engines ([`Engines::default`]: the vendor
    /// libraries, each with its own fallback); blocking, call it off the async executor.
    pub fn run(
        &self,
        device: &ComputeDevice,
        checkpoint: &dyn Checkpoint,
    ) -> Result<serde_json::Value, JobError> {
        self.run_with(device, Engines::default(), checkpoint)
    }

    /// Run the job on `device`, on `engines` where its kind has a choice (a worker passes the
    /// engines it chose at start); blocking, call it off the async executor.
    pub fn run_with(
        &self,
        device: &ComputeDevice,
        engines: Engines,
        checkpoint: &dyn Checkpoint,
    ) -> Result<serde_json::Value, JobError> {
        self.runnable
            .run(device, self.run_info(engines, checkpoint))
    }

    /// The objects the job's parameters name, to be loaded before it runs.
    pub fn objects(&self) -> Vec<Wanted> {
        self.runnable.objects()
    }

    /// Give the job the objects loaded for it, and check it again now that their sizes are
    /// known (shapes that do not fit together, too many elements).
    pub fn load(&mut self, inputs: Inputs) -> Result<(), JobError> {
        // Kept when the job is refused for its size: its result reports the work it asked.
        self.plan = self.runnable.plan(&inputs, &self.limits)?;
        self.limits
            .check_elements(self.kind.name, self.plan.elements)?;
        self.runnable.check_output(&inputs, self.output)?;
        self.inputs = inputs;
        Ok(())
    }

    /// Drop the objects loaded for the job (it will not run: their memory is given back now,
    /// not when the job is).
    pub fn unload(&mut self) {
        self.inputs = Inputs::none();
    }

    /// The output the job left to be stored in `KILN_DATA`, once it ran.
    pub fn take_stored(&self) -> Option<Stored> {
        self.sink.take()
    }

    /// Whether the job may share one launch with other jobs of its kind ([`run_batch`]).
    pub fn batchable(&self) -> bool {
        self.runnable.batchable(&self.plan)
    }

    fn run_info<'a>(&'a self, engines: Engines, checkpoint: &'a dyn Checkpoint) -> Run<'a> {
        Run {
            engines,
            seed: self.seed,
            limits: &self.limits,
            checkpoint,
            inputs: &self.inputs,
            output: self.output,
            sink: &self.sink,
        }
    }
}

/// Run `jobs`, all of one kind and each [`DecodedJob::batchable`], as one launch on `device`
/// (blocking): one result per job, in order, each checked by its own checkpoint. Jobs of
/// mixed kinds, or a kind without a batched path, run one by one.
pub fn run_batch(
    device: &ComputeDevice,
    engines: Engines,
    jobs: &[(&DecodedJob, &dyn Checkpoint)],
) -> Vec<Result<serde_json::Value, JobError>> {
    let Some((first, _)) = jobs.first() else {
        return Vec::new();
    };
    if jobs
        .iter()
        .any(|(job, _)| !std::ptr::eq(job.kind, first.kind))
    {
        return jobs
            .iter()
            .map(|(job, checkpoint)| job.run_with(device, engines, *checkpoint))
            .collect();
    }
    let runs: Vec<(&dyn Runnable, Run<'_>)> = jobs
        .iter()
        .map(|(job, checkpoint)| (&*job.runnable, job.run_info(engines, *checkpoint)))
        .collect();
    first.runnable.run_batch(device, runs)
}

/// What one run of a job gets besides the device.
struct Run<'a> {
    engines: Engines,
    seed: u64,
    limits: &'a Limits,
    checkpoint: &'a dyn Checkpoint,
    inputs: &'a Inputs,
    output: OutputMode,
    sink: &'a OutputSink,
}

trait Runnable: Send + Sync {
    fn run(&self, device: &ComputeDevice, run: Run<'_>) -> Result<serde_json::Value, JobError>;
    fn objects(&self) -> Vec<Wanted>;
    fn plan(&self, inputs: &Inputs, limits: &Limits) -> Result<Plan, JobError>;
    fn check_output(&self, inputs: &Inputs, output: OutputMode) -> Result<(), JobError>;
    fn batchable(&self, plan: &Plan) -> bool;
    fn refusal_on_cpu(&self) -> Option<JobError>;
    /// Run `runs` (this one's kind, each with its runnable) as one batch.
    fn run_batch(
        &self,
        device: &ComputeDevice,
        runs: Vec<(&dyn Runnable, Run<'_>)>,
    ) -> Vec<Result<serde_json::Value, JobError>>;
    fn as_any(&self) -> &dyn std::any::Any;
}

struct Typed<K: Kernel>(K::Params);

impl<'a> Run<'a> {
    /// The context of a run on backend `B`, on `device` (`cuda_index`: a CUDA device's).
    fn context<B: Backend>(
        &self,
        device: B::Device,
        cuda_index: Option<usize>,
    ) -> RunContext<'a, B> {
        RunContext {
            device,
            seed: self.seed,
            limits: self.limits,
            is_gpu: cuda_index.is_some(),
            cuda_index,
            engines: self.engines,
            checkpoint: self.checkpoint,
            inputs: self.inputs,
            output: self.output,
            sink: self.sink,
        }
    }
}

impl<K: Kernel> Typed<K> {
    fn batch_on<B: Backend>(
        runs: &[(&K::Params, Run<'_>)],
        device: &B::Device,
        cuda_index: Option<usize>,
    ) -> Vec<Result<serde_json::Value, JobError>> {
        let contexts: Vec<RunContext<'_, B>> = runs
            .iter()
            .map(|(_, run)| run.context::<B>(device.clone(), cuda_index))
            .collect();
        let jobs: Vec<(&K::Params, &RunContext<'_, B>)> = runs
            .iter()
            .zip(&contexts)
            .map(|((params, _), ctx)| (*params, ctx))
            .collect();
        K::run_batch::<B>(&jobs)
    }
}

impl<K: Kernel> Runnable for Typed<K> {
    fn run(&self, device: &ComputeDevice, run: Run<'_>) -> Result<serde_json::Value, JobError> {
        match device {
            ComputeDevice::Cpu => {
                K::run::<CpuBackend>(&self.0, &run.context(Default::default(), None))
            }
            ComputeDevice::Cuda(index) => K::run::<CudaBackend>(
                &self.0,
                &run.context(burn::backend::cuda::CudaDevice::new(*index), Some(*index)),
            ),
        }
    }

    fn batchable(&self, plan: &Plan) -> bool {
        K::batchable(&self.0, plan)
    }

    fn refusal_on_cpu(&self) -> Option<JobError> {
        K::refusal_on_cpu(&self.0)
    }

    fn run_batch(
        &self,
        device: &ComputeDevice,
        runs: Vec<(&dyn Runnable, Run<'_>)>,
    ) -> Vec<Result<serde_json::Value, JobError>> {
        // Every runnable is of this kind (`run_batch` checked the kinds), so of this type.
        let typed: Vec<(&K::Params, Run<'_>)> = runs
            .into_iter()
            .map(|(runnable, run)| {
                let params = &runnable
                    .as_any()
                    .downcast_ref::<Typed<K>>()
                    .expect("a batch holds jobs of one kind")
                    .0;
                (params, run)
            })
            .collect();
        match device {
            ComputeDevice::Cpu => Self::batch_on::<CpuBackend>(&typed, &Default::default(), None),
            ComputeDevice::Cuda(index) => Self::batch_on::<CudaBackend>(
                &typed,
                &burn::backend::cuda::CudaDevice::new(*index),
                Some(*index),
            ),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn objects(&self) -> Vec<Wanted> {
        K::objects(&self.0)
    }

    fn plan(&self, inputs: &Inputs, limits: &Limits) -> Result<Plan, JobError> {
        K::plan(&self.0, inputs, limits)
    }

    fn check_output(&self, inputs: &Inputs, output: OutputMode) -> Result<(), JobError> {
        K::check_output(&self.0, inputs, output)
    }
}

/// A kind's entry in the registry: its name, help, and how to decode its jobs.
#[derive(Debug)]
pub struct KindEntry {
    /// See [`Kernel::NAME`].
    pub name: &'static str,
    /// See [`Kernel::SUMMARY`].
    pub summary: &'static str,
    /// See [`Kernel::PARAMS_HELP`].
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
    /// The job's `id` (`None`: left out of the body).
    pub id: Option<String>,
    /// Seed for generated inputs (`None`: 0).
    pub seed: Option<u64>,
    /// Give up after this many milliseconds of compute (`None`: no limit).
    pub timeout_ms: Option<u64>,
    /// Where the output goes.
    pub output: OutputMode,
}

impl KindEntry {
    /// The entry of kernel `K`.
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
    let json = match codec {
        Codec::Json => kiln_proto::without_bom(body),
        Codec::Bincode => body,
    };
    // serde reads a JSON array as a struct's fields in order: `[1, 2, 3]` would be refused
    // for its first element ("expected a string"), which says nothing useful.
    if codec == Codec::Json
        && let Some(first) = json.iter().find(|b| !b.is_ascii_whitespace())
        && *first != b'{'
    {
        // Read through (nothing kept) to know it is JSON before naming it by its first byte.
        let got = match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
            Err(e) => format!("something that is not JSON ({e})"),
            Ok(_) => match first {
                b'[' => "an array",
                b'"' => "a string",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "a number",
            }
            .to_owned(),
        };
        return Err(JobError::invalid_input(format!(
            "{} job: the body must be a JSON object such as {{\"params\": {{…}}}}, got {got}{}",
            K::NAME,
            kiln_proto::in_utf16(body),
        )));
    }
    let job: Job<K::Params> = codec.decode("job", body).map_err(|e| {
        JobError::invalid_input(format!("{} job: {}", K::NAME, with_param_help::<K>(e)))
    })?;
    if let Some(id) = &job.id
        && !kiln_proto::valid_job_id(id)
    {
        return Err(JobError::invalid_input(format!(
            "job id {:?} is not valid: {}",
            truncated(id),
            kiln_proto::JOB_ID_RULE
        )));
    }
    if let Some(id) = &job.id
        && !kiln_proto::submittable_job_id(id)
    {
        return Err(JobError::invalid_input(format!(
            "job id {id:?} cannot be submitted: {}",
            kiln_proto::ASSIGNED_ID_RULE
        )));
    }
    // No time at all to compute in: every such job would fail `timeout` after doing
    // nothing (`kiln submit --timeout 0` and the Python client refuse it too).
    if job.timeout_ms == Some(0) {
        return Err(JobError::invalid_input(
            "timeout_ms is 0: give the most milliseconds of compute the job may take (at least \
             1), or leave it out for no limit",
        ));
    }
    check_output::<K>(job.output)?;
    let plan = K::plan(&job.params, &Inputs::none(), limits)?;
    limits.check_elements(K::NAME, plan.elements)?;
    K::check_output(&job.params, &Inputs::none(), job.output)?;
    Ok(DecodedJob {
        kind: entry,
        id: job.id,
        timeout_ms: job.timeout_ms,
        seed: job.seed.unwrap_or(0),
        output: job.output,
        plan,
        runnable: Box::new(Typed::<K>(job.params)),
        limits: *limits,
        inputs: Inputs::none(),
        sink: OutputSink::default(),
    })
}

/// Refuse `"output": "png"` for a kind whose output is not an image: PNG would clamp its
/// values to [0, 1] and keep 8 bits of each (a matmul's product came back as a grey picture).
fn check_output<K: Kernel>(output: OutputMode) -> Result<(), JobError> {
    if output == OutputMode::Png && !K::IMAGE_OUTPUT {
        return Err(JobError::invalid_input(format!(
            "{} job: \"output\": \"png\" is for images (conv2d's); a PNG would clamp this \
             kind's values to [0, 1] in 8 bits; ask for \"npy\" or \"safetensors\"",
            K::NAME
        )));
    }
    Ok(())
}

/// At most the first 40 characters of something a user sent, for an error message that
/// must stay small whatever they sent.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A parameters error with the help line of the parameter it names appended: serde says
/// `image[0][0]: invalid type: integer 0, expected a sequence`, which does not say what an
/// image is.
fn with_param_help<K: Kernel>(e: impl std::fmt::Display) -> String {
    let message = e.to_string();
    let path = message
        .split_once("params.")
        .map_or(message.as_str(), |(_, path)| path);
    let name = path.split(['[', '.', ':']).next().unwrap_or_default();
    let help = K::PARAMS_HELP.lines().find_map(|line| {
        let (names, meaning) = line.split_once(": ")?;
        names.split(", ").any(|n| n == name).then_some(meaning)
    });
    match help {
        Some(help) if !name.is_empty() => format!("{message} ({name}: {help})"),
        _ => message,
    }
}

fn check_params<K: Kernel>(params: serde_json::Value, limits: &Limits) -> Result<Plan, JobError> {
    let params: K::Params = kiln_proto::json_at_path(params).map_err(|e| {
        JobError::invalid_input(format!("{} params: {}", K::NAME, with_param_help::<K>(e)))
    })?;
    let plan = K::plan(&params, &Inputs::none(), limits)?;
    limits.check_elements(K::NAME, plan.elements)?;
    Ok(plan)
}

fn encode<K: Kernel>(
    params: serde_json::Value,
    meta: JobMeta,
    codec: Codec,
) -> Result<Vec<u8>, JobError> {
    let params: K::Params = kiln_proto::json_at_path(params).map_err(|e| {
        JobError::invalid_input(format!("{} params: {}", K::NAME, with_param_help::<K>(e)))
    })?;
    check_output::<K>(meta.output)?;
    K::plan(&params, &Inputs::none(), &Limits::UNLIMITED)?;
    // What the sizes known now say of the output (a PNG of 5 channels): said before the job
    // is sent, not by a worker later (or never, with none of its class running).
    K::check_output(&params, &Inputs::none(), meta.output)?;
    let job = Job {
        id: meta.id,
        params,
        timeout_ms: meta.timeout_ms,
        seed: meta.seed,
        output: meta.output,
    };
    codec
        .encode("job", &job)
        .map_err(|e| JobError::internal(e.to_string()))
}
