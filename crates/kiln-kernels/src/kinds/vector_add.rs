//! `vector_add`: c = a + b, the "small job" of pipeline benchmarks.
//!
//! On a CUDA worker it runs on cuBLAS (`cublasSgeam`, see [`crate::vendor::cublas`]) unless the
//! worker runs its BLAS kinds on Burn ([`crate::MatmulEngine::Burn`]: `--matmul-engine burn`, or
//! cuBLAS missing); on a CPU worker on burn-ndarray. Either way each element is one correctly
//! rounded f32 addition, so every engine gives the same bits. Results name it in `"engine"`:
//! cublas, burn-cuda or burn-ndarray.
//!
//! Generated inputs (`{"len": N}`) are a = `seeded_values(seed, 0, N)` and b =
//! `seeded_values(seed, 1, N)`. A job that runs alone on cuBLAS makes them on the GPU
//! ([`crate::vendor::nvrtc`]: the same values, bit for bit, without the host generating them or
//! PCIe carrying them) and says `"inputs": "device"`; elsewhere they are made on the host (and,
//! on a GPU, uploaded). Jobs that share a launch (at most [`BATCH_MAX_ELEMENTS`] elements each)
//! still make theirs on the host and upload them in one copy: a generator launch per job would
//! cost more than generating a small job's vectors, and one launch for a whole batch is not
//! written yet. A job alone on cuBLAS whose result carries only c's summary has the summary
//! made on the GPU ([`crate::reduce`]: the same bits) rather than copying c back.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kiln_proto::{JobError, Limits};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{MatmulEngine, burn_engine};
use crate::io::{Input, Inputs, Placement, Wanted, tensor_objects};
use crate::vendor::cublas::{MadeOn, Output, ReadBack, Source};
use crate::{Kernel, Plan, RunContext, seeded_values};

/// `{"len": 1024}` (generated from the seed) or `{"a": [..], "b": [..]}`, each of `a` and `b`
/// inline or an object (`{"object": "NAME"}`, a tensor of any shape, taken flat).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Length of the vectors generated from the seed, at least 1 (instead of `a` and `b`).
    #[serde(default)]
    pub len: Option<u64>,
    /// The first vector (with `b`, instead of `len`).
    #[serde(default)]
    pub a: Option<Input<Vec<f32>>>,
    /// The second vector, as long as `a`.
    #[serde(default)]
    pub b: Option<Input<Vec<f32>>>,
}

/// The length of vector `name`: its inline values, or the loaded object's (None while the
/// object is not loaded yet).
fn length(name: &str, input: &Input<Vec<f32>>, inputs: &Inputs) -> Option<u64> {
    match input {
        Input::Inline(v) => Some(v.len() as u64),
        Input::Object(_) => inputs
            .shape(name)
            .map(|s| s.iter().product::<usize>() as u64),
    }
}

/// Vector `name`'s values, inline or taken from the loaded object.
fn values(name: &str, input: &Input<Vec<f32>>, inputs: &Inputs) -> Result<Vec<f32>, JobError> {
    match input {
        Input::Inline(v) => Ok(v.clone()),
        Input::Object(_) => Ok(inputs.take_tensor(name)?.data),
    }
}

/// The `vector_add` kind: c = a + b, element-wise.
pub struct VectorAdd;

impl Kernel for VectorAdd {
    const NAME: &'static str = "vector_add";
    const SUMMARY: &'static str = "c = a + b, element-wise";
    const PARAMS_HELP: &'static str = "len: length of generated a and b\n\
         a, b: the vectors themselves (instead of len), equal lengths: inline, or \
         {\"object\": NAME} in KILN_DATA (.npy or safetensors)";
    const WARMUP: &'static [&'static str] = &[r#"{"len": 1024}"#, r#"{"len": 1048576}"#];
    type Params = Params;

    fn objects(params: &Params) -> Vec<Wanted> {
        tensor_objects(&[("a", &params.a), ("b", &params.b)])
    }

    fn plan(params: &Params, inputs: &Inputs, _limits: &Limits) -> Result<Plan, JobError> {
        let len = match (params.len, &params.a, &params.b) {
            (Some(len), None, None) => len,
            (None, Some(a), Some(b)) => match (length("a", a, inputs), length("b", b, inputs)) {
                (Some(la), Some(lb)) if la == lb => la,
                (Some(la), Some(lb)) => {
                    return Err(JobError::invalid_input(format!(
                        "vector_add needs a and b of equal length, got {la} and {lb}"
                    )));
                }
                // An object not loaded yet: checked again once it is.
                _ => {
                    return Ok(Plan {
                        elements: 0,
                        flops: 0.0,
                        gpu_only: false,
                    });
                }
            },
            _ => {
                return Err(JobError::invalid_input(
                    "vector_add needs either \"len\" or both \"a\" and \"b\"",
                ));
            }
        };
        if len == 0 {
            return Err(JobError::invalid_input(if params.len.is_some() {
                "vector_add needs len >= 1"
            } else {
                "vector_add needs a and b of at least one element each, got empty ones"
            }));
        }
        let elements = len.checked_mul(3).ok_or_else(|| {
            JobError::too_large(format!("vector_add len {len} overflows an element count"))
        })?;
        Ok(Plan {
            elements,
            flops: len as f64,
            gpu_only: false,
        })
    }

    fn run<B: Backend>(
        params: &Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError> {
        if let (Some(index), Some(len), true) = (ctx.cuda_index, params.len, on_cublas(ctx)) {
            // Generated inputs on cuBLAS are made on the device, not uploaded.
            ctx.checkpoint(1, 2)?;
            let source = Source::Seeded(ctx.seed);
            let read = ReadBack::for_placement(ctx.place(false, len as usize));
            let (c, made) =
                crate::vendor::cublas::vector_add_from(index, source, len as usize, read)?;
            let mut out = answer(params, ctx, c, "cublas", 1);
            if made == MadeOn::Device {
                out["inputs"] = json!(made.as_str());
            }
            return Ok(out);
        }
        let (a, b) = operands(params, ctx)?;
        let (c, engine) = add(ctx, a, b)?;
        Ok(answer(params, ctx, Output::Values(c), engine, 1))
    }

    /// Small jobs share a launch: their vectors are laid end to end, added at once, and cut
    /// apart again (an element-wise sum gives each job the bits it would get alone).
    fn batchable(_params: &Params, plan: &Plan) -> bool {
        plan.elements <= BATCH_MAX_ELEMENTS
    }

    fn run_batch<B: Backend>(
        jobs: &[(&Params, &RunContext<'_, B>)],
    ) -> Vec<Result<serde_json::Value, JobError>> {
        let Some((_, first)) = jobs.first() else {
            return Vec::new();
        };
        let operands: Vec<_> = jobs.iter().map(|(p, ctx)| operands(p, ctx)).collect();
        let ready = operands.iter().filter(|o| o.is_ok()).count();
        let total: usize = operands.iter().flatten().map(|(a, _)| a.len()).sum();
        let (mut a, mut b) = (Vec::with_capacity(total), Vec::with_capacity(total));
        for (x, y) in operands.iter().flatten() {
            a.extend_from_slice(x);
            b.extend_from_slice(y);
        }
        // One launch for every job whose inputs are ready; a failed launch fails them all.
        let launched = match ready {
            0 => Err(JobError::internal("no job of the batch had its inputs")),
            _ => add(first, a, b),
        };
        let mut offset = 0;
        jobs.iter()
            .zip(operands)
            .map(|((params, ctx), operands)| {
                let (a, _) = operands?;
                let (c, engine) = launched.as_ref().map_err(Clone::clone)?;
                let c = Output::Values(c[offset..offset + a.len()].to_vec());
                offset += a.len();
                Ok(answer(params, ctx, c, engine, ready))
            })
            .collect()
    }
}

/// Jobs of at most this many tensor elements (a + b + c: vectors of about 350,000) share
/// launches; bigger ones gain nothing from it.
pub const BATCH_MAX_ELEMENTS: u64 = 1 << 20;

/// The job's a and b: inline, loaded, or generated from its seed; then its first checkpoint.
fn operands<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
) -> Result<(Vec<f32>, Vec<f32>), JobError> {
    let (a, b) = match (&params.a, &params.b) {
        (Some(a), Some(b)) => (values("a", a, ctx.inputs)?, values("b", b, ctx.inputs)?),
        _ => {
            let len = params.len.unwrap_or(0) as usize;
            (
                seeded_values(ctx.seed, 0, len),
                seeded_values(ctx.seed, 1, len),
            )
        }
    };
    // Making or loading the inputs is most of a large vector_add's time: a cancel, a
    // timeout or a drain meanwhile stops it here.
    ctx.checkpoint(1, 2)?;
    Ok((a, b))
}

/// c = a + b on the engine `ctx` names, and that engine's name.
fn add<B: Backend>(
    ctx: &RunContext<'_, B>,
    a: Vec<f32>,
    b: Vec<f32>,
) -> Result<(Vec<f32>, &'static str), JobError> {
    Ok(match ctx.cuda_index {
        Some(index) if on_cublas(ctx) => {
            (crate::vendor::cublas::vector_add(index, &a, &b)?, "cublas")
        }
        _ => (burn_add::<B>(a, b, &ctx.device)?, burn_engine(ctx.is_gpu)),
    })
}

/// Whether the job runs on cuBLAS (on a CUDA device, unless the worker runs its BLAS kinds on
/// Burn).
fn on_cublas<B: Backend>(ctx: &RunContext<'_, B>) -> bool {
    ctx.cuda_index.is_some() && ctx.engines.matmul == MatmulEngine::Blas
}

/// The job's result: its length, engine and summary, with `c` inline or stored as the job's
/// output placement says (`c` was read back whole unless only its summary is wanted);
/// `"batched"`: how many jobs shared its launch, when more than one.
fn answer<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
    c: Output,
    engine: &str,
    batched: usize,
) -> serde_json::Value {
    let summary = c.summary();
    let Output::Values(c) = c else {
        let len = params.len.unwrap_or(0);
        return json!({ "len": len, "engine": engine, "summary": summary });
    };
    let len = c.len();
    let mut out = json!({
        "len": len,
        "engine": engine,
        "summary": summary,
    });
    if batched > 1 {
        out["batched"] = json!(batched);
    }
    // Data the user sent comes back inline when small, else as an object; generated
    // inputs get the summary only (unless the job asks for the object), which is what
    // benchmarks need and keeps result events small.
    match ctx.place(params.a.is_some(), len).finite(&c) {
        Placement::Inline => out["c"] = json!(c),
        Placement::Object => ctx.sink.put("c", kiln_data::HostTensor::new(vec![len], c)),
        Placement::Summary => {}
    }
    out
}

/// c = a + b on Burn's kernels.
fn burn_add<B: Backend>(
    a: Vec<f32>,
    b: Vec<f32>,
    device: &B::Device,
) -> Result<Vec<f32>, JobError> {
    let len = a.len();
    let a = Tensor::<B, 1>::from_data(TensorData::new(a, [len]), device);
    let b = Tensor::<B, 1>::from_data(TensorData::new(b, [len]), device);
    (a + b)
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| JobError::internal(format!("reading vector_add output: {e:?}")))
}

#[cfg(test)]
mod tests {
    use kiln_proto::{Codec, ErrorKind, Limits};

    /// An empty job is refused in the words the submitter used: `len`, or the vectors.
    #[test]
    fn empty_jobs_are_refused_in_their_own_terms() {
        let kind = crate::find("vector_add").expect("vector_add is registered");
        for (body, says) in [
            (r#"{"params":{"len":0}}"#, "vector_add needs len >= 1"),
            (
                r#"{"params":{"a":[],"b":[]}}"#,
                "vector_add needs a and b of at least one element each, got empty ones",
            ),
        ] {
            let error = kind
                .decode(Codec::Json, body.as_bytes(), &Limits::default())
                .err()
                .unwrap_or_else(|| panic!("{body} is refused"));
            assert_eq!(error.kind, ErrorKind::InvalidInput, "{body}");
            assert_eq!(error.message, says, "{body}");
        }
    }
}
