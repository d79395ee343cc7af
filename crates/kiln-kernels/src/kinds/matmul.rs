//! `matmul`: C = A·B, f32 everywhere, tf32, bf16 or f16 on GPUs.
//!
//! The product runs on the device's BLAS by default ([`crate::MatmulEngine::Blas`]): cuBLAS on a
//! CUDA worker ([`crate::vendor::cublas`]), in the precision the job asks for, and OpenBLAS on a
//! CPU worker where it is installed ([`crate::vendor::openblas`]). With `--matmul-engine burn`,
//! or where the library is missing, it runs on Burn's kernels like the other kinds. The result
//! names both (`"dtype"`, `"engine"`: cublas, openblas, burn-cuda or burn-ndarray).
//!
//! Generated inputs: A = `seeded_values(seed, 0, m*k)` and B = `seeded_values(seed, 1, k*n)`,
//! both row-major, so every backend multiplies the same matrices. On cuBLAS they are made on the
//! GPU, in the job's dtype ([`crate::vendor::nvrtc`]: the same values, bit for bit, and for bf16
//! and f16 the same rounding as the host's conversion, without the host generating them or PCIe
//! carrying them), and the result says `"inputs": "device"`; elsewhere, or where the generator
//! kernel does not compile, on the host. A size left out of
//! `{"m", "k", "n"}` takes the value of `n`; without `n`, of `m`; without both, of `k`:
//! `{"n": 512}` is a 512³ product and `{"m": 64, "n": 512}` multiplies 64×512 by 512×512.

use burn::tensor::{DType, FloatDType, Tensor, TensorData, backend::Backend};
use kiln_proto::{JobError, Limits, checked_product};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Dtype;
use crate::dtype_name;
use crate::engine::MatmulEngine;
use crate::io::{Input, Inputs, Placement, Wanted, tensor_objects};
use crate::vendor::cublas::{MadeOn, Output, ReadBack, Source};
use crate::{Kernel, Plan, RunContext, seeded_values};

/// `{"m": 512, "k": 512, "n": 512}` (generated from the seed; `{"n": 512}` is square) or
/// `{"a": [[..]], "b": [[..]]}`, with an optional `"dtype"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Rows of A and C.
    #[serde(default)]
    pub m: Option<u64>,
    /// Columns of A, rows of B.
    #[serde(default)]
    pub k: Option<u64>,
    /// Columns of B and C.
    #[serde(default)]
    pub n: Option<u64>,
    /// Element type of the product (default f32).
    #[serde(default)]
    pub dtype: Option<Dtype>,
    /// A, row by row or an object holding a 2-D tensor (instead of sizes).
    #[serde(default)]
    pub a: Option<Input<Vec<Vec<f32>>>>,
    /// B, row by row or an object holding a 2-D tensor (instead of sizes).
    #[serde(default)]
    pub b: Option<Input<Vec<Vec<f32>>>>,
}

/// The sizes of one product: A is m×k, B is k×n, C is m×n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    m: u64,
    k: u64,
    n: u64,
}

impl Params {
    /// The product's sizes; `None` while a matrix given as an object is not loaded yet.
    fn dims(&self, inputs: &Inputs) -> Result<Option<Dims>, JobError> {
        let sized = self.m.is_some() || self.k.is_some() || self.n.is_some();
        match (&self.a, &self.b) {
            (Some(a), Some(b)) if !sized => {
                let (Some((m, k)), Some((k_b, n))) =
                    (input_shape("a", a, inputs)?, input_shape("b", b, inputs)?)
                else {
                    return Ok(None);
                };
                if k != k_b {
                    return Err(JobError::invalid_input(format!(
                        "matmul needs a's columns to equal b's rows, got a {m}x{k} and b {k_b}x{n}"
                    )));
                }
                Ok(Some(Dims { m, k, n }))
            }
            (None, None) if sized => {
                let fallback = self.n.or(self.m).or(self.k).unwrap_or(0);
                let dims = Dims {
                    m: self.m.unwrap_or(fallback),
                    k: self.k.unwrap_or(fallback),
                    n: self.n.unwrap_or(fallback),
                };
                if dims.m == 0 || dims.k == 0 || dims.n == 0 {
                    return Err(JobError::invalid_input(format!(
                        "matmul needs m, k and n >= 1, got m={} k={} n={}",
                        dims.m, dims.k, dims.n
                    )));
                }
                Ok(Some(dims))
            }
            (Some(_), Some(_)) => Err(JobError::invalid_input(
                "matmul takes either sizes (m, k, n) or matrices (a, b), not both",
            )),
            _ => Err(JobError::invalid_input(
                "matmul needs sizes (\"n\", or \"m\", \"k\", \"n\") or both matrices \"a\" and \"b\"",
            )),
        }
    }
}

/// Rows and columns of matrix `name`, inline or loaded (None while not loaded yet).
fn input_shape(
    name: &str,
    input: &Input<Vec<Vec<f32>>>,
    inputs: &Inputs,
) -> Result<Option<(u64, u64)>, JobError> {
    match input {
        Input::Inline(rows) => matrix_shape(name, rows).map(Some),
        Input::Object(r) => match inputs.shape(name) {
            None => Ok(None),
            Some(&[rows, cols]) if rows > 0 && cols > 0 => Ok(Some((rows as u64, cols as u64))),
            Some(shape) => Err(JobError::invalid_input(format!(
                "matmul matrix {name} (object {:?}) has shape {shape:?}; it must be a 2-D \
                 tensor with at least one row and one column",
                r.object
            ))),
        },
    }
}

/// Matrix `name`'s values, row-major: inline rows joined, or the loaded object's.
fn input_values(
    name: &str,
    input: &Input<Vec<Vec<f32>>>,
    inputs: &Inputs,
) -> Result<Vec<f32>, JobError> {
    match input {
        Input::Inline(rows) => Ok(rows.concat()),
        Input::Object(_) => Ok(inputs.take_tensor(name)?.data),
    }
}

/// Rows and columns of a user-given matrix, refusing empty and ragged ones.
fn matrix_shape(name: &str, rows: &[Vec<f32>]) -> Result<(u64, u64), JobError> {
    let cols = rows.first().map_or(0, Vec::len);
    if cols == 0 {
        return Err(JobError::invalid_input(format!(
            "matmul matrix {name} is empty; give at least one row with at least one value"
        )));
    }
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
        return Err(JobError::invalid_input(format!(
            "matmul matrix {name} is ragged: row 0 has {cols} values but row {i} has {}",
            row.len()
        )));
    }
    Ok((rows.len() as u64, cols as u64))
}

/// The `matmul` kind: C = A·B in f32, tf32, bf16 or f16.
pub struct Matmul;

impl Kernel for Matmul {
    const NAME: &'static str = "matmul";
    const SUMMARY: &'static str = "C = A·B, matrix product in f32, tf32, bf16 or f16";
    const PARAMS_HELP: &'static str = "n: columns of B and C; alone, the side of a square product\n\
         m: rows of A and C (default n)\n\
         k: columns of A, rows of B (default n)\n\
         dtype: f32, or tf32/bf16/f16 on GPU workers (f32; on GPUs f32 is true f32)\n\
         a, b: the matrices themselves as rows, or {\"object\": NAME} in KILN_DATA (2-D .npy \
         or safetensors), instead of m, k, n";
    const WARMUP: &'static [&'static str] = &[
        r#"{"n": 1024}"#,
        r#"{"n": 4096}"#,
        r#"{"n": 1024, "dtype": "bf16"}"#,
    ];
    type Params = Params;

    fn objects(params: &Params) -> Vec<Wanted> {
        tensor_objects(&[("a", &params.a), ("b", &params.b)])
    }

    fn plan(params: &Params, inputs: &Inputs, _limits: &Limits) -> Result<Plan, JobError> {
        let Some(Dims { m, k, n }) = params.dims(inputs)? else {
            return Ok(Plan {
                gpu_only: params.dtype.unwrap_or_default() != Dtype::F32,
                ..Plan::default()
            });
        };
        let what = "matmul";
        let elements = [
            checked_product(what, &[m, k])?,
            checked_product(what, &[k, n])?,
            checked_product(what, &[m, n])?,
        ]
        .into_iter()
        .try_fold(0u64, |acc, e| acc.checked_add(e))
        .ok_or_else(|| {
            JobError::too_large(format!(
                "matmul sizes m={m} k={k} n={n} overflow a 64-bit element count"
            ))
        })?;
        Ok(Plan {
            elements,
            flops: 2.0 * m as f64 * k as f64 * n as f64,
            gpu_only: params.dtype.unwrap_or_default() != Dtype::F32,
        })
    }

    fn refusal_on_cpu(params: &Self::Params) -> Option<JobError> {
        params.dtype.unwrap_or_default().refuse_on_cpu(Self::NAME)
    }

    fn run<B: Backend>(
        params: &Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError> {
        let dtype = params.dtype.unwrap_or_default();
        if let Some(refusal) = Self::refusal_on_cpu(params).filter(|_| !ctx.is_gpu) {
            return Err(refusal);
        }
        let Some(Dims { m, k, n }) = params.dims(ctx.inputs)? else {
            return Err(JobError::internal(
                "matmul ran before its objects were loaded",
            ));
        };
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let given = match (&params.a, &params.b) {
            (Some(a), Some(b)) => Some((
                input_values("a", a, ctx.inputs)?,
                input_values("b", b, ctx.inputs)?,
            )),
            _ => None,
        };
        let blas = ctx.engines.matmul == MatmulEngine::Blas;
        if let (Some(index), true) = (ctx.cuda_index, blas) {
            let source = match &given {
                Some((a, b)) => Source::Host(a, b),
                None => Source::Seeded(ctx.seed),
            };
            return on_cublas(params, ctx, (index, source), (m, k, n), dtype);
        }
        let (a, b) = given.unwrap_or_else(|| {
            (
                seeded_values(ctx.seed, 0, m * k),
                seeded_values(ctx.seed, 1, k * n),
            )
        });
        // A product runs in pieces of rows of A (and C), with a checkpoint before each, so that
        // a cancel, a timeout or a drain lands within about a second on any size.
        let piece_flops = if ctx.is_gpu {
            GPU_PIECE_FLOPS
        } else {
            CPU_PIECE_FLOPS
        };
        let rows = rows_per_piece(piece_flops, k, n).min(m.max(1));
        let pieces = m.div_ceil(rows) as u64;
        let (c, computed, engine) = match ctx.cuda_index {
            None if blas && !ctx.is_gpu && crate::vendor::openblas::available() => {
                let mut c = vec![0.0f32; m * n];
                if k > 0 && n > 0 {
                    for (i, (a_rows, c_rows)) in
                        a.chunks(rows * k).zip(c.chunks_mut(rows * n)).enumerate()
                    {
                        ctx.checkpoint(i as u64, pieces)?;
                        let r = c_rows.len() / n;
                        crate::vendor::openblas::matmul_into(a_rows, &b, c_rows, (r, k, n))?;
                    }
                }
                (c, dtype.as_str().to_owned(), "openblas")
            }
            _ => {
                let (c, computed) = burn_matmul::<B>(&a, b, (m, k, n), dtype, rows, ctx)?;
                (c, computed, crate::burn_engine(ctx.is_gpu))
            }
        };
        Ok(answer(
            params,
            ctx,
            Output::Values(c),
            (m, n),
            (&computed, engine),
        ))
    }
}

/// The product on cuBLAS of CUDA device `index`, from `source`: whole (a GPU finishes the
/// largest product that fits its memory in about a second), generated inputs made on the
/// device, and only C's summary read back where that is all the result carries.
fn on_cublas<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
    (index, source): (usize, Source<'_>),
    (m, k, n): (usize, usize, usize),
    dtype: Dtype,
) -> Result<serde_json::Value, JobError> {
    ctx.checkpoint(0, 1)?;
    let read = ReadBack::for_placement(ctx.place(params.a.is_some(), m * n));
    let (c, made) = crate::vendor::cublas::matmul_from(index, source, (m, k, n), dtype, read)?;
    let mut out = answer(params, ctx, c, (m, n), (dtype.as_str(), "cublas"));
    if made == MadeOn::Device {
        out["inputs"] = json!(made.as_str());
    }
    Ok(out)
}

/// The job's result: C's shape, the dtype it was computed in, the engine and C's summary, with C
/// inline or stored as the job's output placement says.
fn answer<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
    c: Output,
    (m, n): (usize, usize),
    (computed, engine): (&str, &str),
) -> serde_json::Value {
    let mut out = json!({
        "shape": [m, n],
        "dtype": computed,
        "engine": engine,
        "summary": c.summary(),
    });
    // Read back whole unless only the summary is wanted.
    let Output::Values(c) = c else {
        return out;
    };
    // Matrices the user sent come back inline when small, else as an object; generated
    // inputs get the summary only (unless the job asks for the object).
    match ctx.place(params.a.is_some(), m * n).finite(&c) {
        Placement::Inline => {
            let rows: Vec<&[f32]> = c.chunks(n).collect();
            out["c"] = json!(rows);
        }
        Placement::Object => ctx.sink.put("c", kiln_data::HostTensor::new(vec![m, n], c)),
        Placement::Summary => {}
    }
    out
}

/// Work in one piece of a product between checkpoints: about a second at most on a CPU
/// worker (about 50–100 GFLOP/s on a few cores), and on a GPU.
pub(crate) const CPU_PIECE_FLOPS: f64 = 4e9;
pub(crate) const GPU_PIECE_FLOPS: f64 = 2e12;

/// Rows of A per piece of `flops` work, for A m×k and B k×n.
fn rows_per_piece(flops: f64, k: usize, n: usize) -> usize {
    ((flops / (2.0 * k.max(1) as f64 * n.max(1) as f64)) as usize).max(16)
}

/// The product on Burn's kernels, `rows` rows of A at a time; returns C and the dtype it was
/// really computed in.
fn burn_matmul<B: Backend>(
    a: &[f32],
    b: Vec<f32>,
    (m, k, n): (usize, usize, usize),
    dtype: Dtype,
    rows: usize,
    ctx: &RunContext<'_, B>,
) -> Result<(Vec<f32>, String), JobError> {
    let device = &ctx.device;
    let b = Tensor::<B, 2>::from_data(TensorData::new(b, [k, n]), device);
    let b = match dtype.burn_dtype() {
        None => b,
        Some(low) => b.cast(low),
    };
    let pieces = m.div_ceil(rows.max(1)) as u64;
    let mut c = Vec::with_capacity(m * n);
    let mut computed = dtype.as_str().to_owned();
    for (i, a_rows) in a.chunks((rows * k).max(1)).enumerate() {
        ctx.checkpoint(i as u64, pieces)?;
        let r = a_rows.len() / k.max(1);
        let a = Tensor::<B, 2>::from_data(TensorData::new(a_rows.to_vec(), [r, k]), device);
        let product = match dtype.burn_dtype() {
            None => a.matmul(b.clone()),
            Some(low) => a.cast(low).matmul(b.clone()),
        };
        // Report the precision the product was actually computed in, not the one asked for.
        computed = match (dtype, product.dtype()) {
            (Dtype::Tf32, DType::F32) => "tf32".to_owned(),
            (_, other) => dtype_name(other),
        };
        let part = match product.dtype() {
            DType::F32 => product,
            _ => product.cast(FloatDType::F32),
        };
        c.extend(
            part.into_data()
                .into_vec::<f32>()
                .map_err(|e| JobError::internal(format!("reading matmul output: {e:?}")))?,
        );
    }
    if k == 0 {
        c.resize(m * n, 0.0);
    }
    Ok((c, computed))
}
