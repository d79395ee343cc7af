//! Matrix products on NVIDIA's cuBLAS, the library PyTorch's matmul runs on.
//!
//! Burn 0.21's CubeCL GEMM reached 0.2–0.27 of cuBLAS on an H100 (its kernels use the warp-level
//! `mma` instructions, not Hopper's `wgmma`), and it has no strict f32 mode: its "f32" product
//! runs on tensor cores at TF32-like precision. So `matmul` jobs on a CUDA worker go through
//! cuBLAS by default, with the precision the job asks for:
//!
//! | job `dtype` | inputs and output on the device | cuBLAS compute type |
//! |---|---|---|
//! | `f32` | f32 | `CUBLAS_COMPUTE_32F` (true f32, CUDA cores) |
//! | `tf32` | f32 | `CUBLAS_COMPUTE_32F_FAST_TF32` (tensor cores, 10-bit mantissa products) |
//! | `bf16` | bf16 | `CUBLAS_COMPUTE_32F` (bf16 tensor cores, f32 accumulation) |
//! | `f16` | f16 | `CUBLAS_COMPUTE_32F` (f16 tensor cores, f32 accumulation) |
//!
//! libcublas is loaded at run time, like libcuda and NVRTC: a worker that cannot load it logs why
//! and runs matmul on Burn's kernels instead ([`crate::MatmulEngine::Burn`], also chosen with
//! `kiln worker --matmul-engine burn`). The other kinds always run on Burn.
//!
//! cuBLAS is column-major and kiln's matrices are row-major: a row-major m×n matrix is the
//! column-major n×m matrix of its transpose, so C = A·B is computed as Cᵀ = Bᵀ·Aᵀ, that is
//! `gemm(n, m, k, B, A)`, and the column-major result is C in row-major order.
//!
//! Unsafe code (with `openblas.rs`, the only in kiln): the call of cuBLAS's `gemm_ex` on raw
//! device pointers (cudarc's typed `Gemm` has no TF32 compute type) and the check that libcublas
//! loads.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::{CudaBlas, result::gemm_ex, sys};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError};
use kiln_proto::{ErrorKind, JobError};

use crate::matmul::Dtype;

/// Check that cuBLAS works on CUDA device `index`: the library loads, and a handle and a tiny
/// product succeed. The error says what is missing.
pub fn probe(index: usize) -> Result<(), String> {
    crate::engine::check_product("cuBLAS", |a, b| matmul(index, a, b, 1, 2, 1, Dtype::F32))
}

/// cudarc panics when it cannot load a library; look for libcublas first.
fn library_loads() -> Result<(), String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let candidates = cudarc::get_lib_name_candidates("cublas");
            for name in &candidates {
                // SAFETY: loading libcublas runs only its initialisers, as cudarc's own load
                // of the same library would.
                if unsafe { libloading::Library::new(name) }.is_ok() {
                    return Ok(name.clone());
                }
            }
            Err(format!(
                "libcublas could not be loaded (tried {}); install the CUDA toolkit's cuBLAS \
                 (libcublas and libcublasLt) and add its folder to LD_LIBRARY_PATH",
                candidates.join(", ")
            ))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// A cuBLAS handle on its own stream of one device.
struct Gemm {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

fn gemm_for(index: usize) -> Result<Arc<Mutex<Gemm>>, JobError> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<Mutex<Gemm>>>>> = OnceLock::new();
    library_loads().map_err(JobError::internal)?;
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(gemm) = handles.get(&index) {
        return Ok(gemm.clone());
    }
    let context = CudaContext::new(index).map_err(|e| driver_error("opening the device", e))?;
    let stream = context
        .new_stream()
        .map_err(|e| driver_error("creating a stream", e))?;
    let blas = CudaBlas::new(stream.clone())
        .map_err(|e| JobError::internal(format!("creating a cuBLAS handle: {e:?}")))?;
    let gemm = Arc::new(Mutex::new(Gemm { stream, blas }));
    handles.insert(index, gemm.clone());
    Ok(gemm)
}

/// The handle, whether or not a job panicked while holding it (the handle itself stays valid).
fn lock(gemm: &Mutex<Gemm>) -> MutexGuard<'_, Gemm> {
    gemm.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn driver_error(what: &str, e: DriverError) -> JobError {
    let text = format!("{e:?}");
    if text.contains("OUT_OF_MEMORY") {
        JobError::new(
            ErrorKind::OutOfMemory,
            format!(
                "the GPU ran out of memory {what} for this matmul ({text}); submit a smaller job \
                 or run it on a device with more memory"
            ),
        )
    } else {
        JobError::internal(format!("CUDA failed {what} for cuBLAS: {text}"))
    }
}

fn dim(name: &str, value: usize) -> Result<i32, JobError> {
    crate::engine::blas_dim("cuBLAS", name, value)
}

/// Device buffers of one product, in the element type cuBLAS reads.
struct Operands<T> {
    a: CudaSlice<T>,
    b: CudaSlice<T>,
    c: CudaSlice<T>,
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> Operands<T> {
    fn upload(stream: &Arc<CudaStream>, a: &[T], b: &[T], c_len: usize) -> Result<Self, JobError> {
        Ok(Operands {
            a: stream
                .clone_htod(a)
                .map_err(|e| driver_error("uploading A", e))?,
            b: stream
                .clone_htod(b)
                .map_err(|e| driver_error("uploading B", e))?,
            c: stream
                .alloc_zeros(c_len)
                .map_err(|e| driver_error("allocating C", e))?,
        })
    }
}

/// The cuBLAS types of a job dtype: element type, compute type.
fn types(dtype: Dtype) -> (sys::cudaDataType, sys::cublasComputeType_t) {
    use sys::cublasComputeType_t::{CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32};
    use sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
    match dtype {
        Dtype::F32 => (CUDA_R_32F, CUBLAS_COMPUTE_32F),
        Dtype::Tf32 => (CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32),
        Dtype::Bf16 => (CUDA_R_16BF, CUBLAS_COMPUTE_32F),
        Dtype::F16 => (CUDA_R_16F, CUBLAS_COMPUTE_32F),
    }
}

/// Launch C = A·B (row-major, A m×k, B k×n) on `gemm`'s stream; does not wait for it.
fn launch<T>(
    gemm: &Gemm,
    ops: &mut Operands<T>,
    (m, k, n): (i32, i32, i32),
    dtype: Dtype,
) -> Result<(), JobError> {
    let (element, compute) = types(dtype);
    let alpha = 1.0f32;
    let beta = 0.0f32;
    let stream = &gemm.stream;
    let (a, _a) = ops.a.device_ptr(stream);
    let (b, _b) = ops.b.device_ptr(stream);
    let (c, _c) = ops.c.device_ptr_mut(stream);
    // SAFETY: A holds m·k, B k·n and C m·n elements of `element` on this stream's device (made
    // by `Operands::upload` from slices of those lengths); alpha and beta are f32 host scalars,
    // as the f32 compute types require; the leading dimensions are those of the transposed
    // (column-major) views described in the module docs.
    unsafe {
        gemm_ex(
            *gemm.blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_N,
            n,
            m,
            k,
            (&alpha as *const f32).cast::<c_void>(),
            b as *const c_void,
            element,
            n,
            a as *const c_void,
            element,
            k,
            (&beta as *const f32).cast::<c_void>(),
            c as *mut c_void,
            element,
            n,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| {
        let text = format!("{e:?}");
        if text.contains("ALLOC_FAILED") {
            JobError::new(
                ErrorKind::OutOfMemory,
                format!("cuBLAS could not allocate its workspace ({text})"),
            )
        } else {
            JobError::internal(format!("cuBLAS gemm failed: {text}"))
        }
    })
}

fn to_half(values: &[f32], dtype: Dtype) -> Vec<u16> {
    match dtype {
        Dtype::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
        _ => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
    }
}

fn from_half(bits: &[u16], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect(),
        _ => bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect(),
    }
}

/// C = A·B on CUDA device `index` through cuBLAS: A is m×k and B k×n, row-major f32 on the host;
/// they are converted to `dtype`'s element type (bf16/f16 round to nearest) before the upload,
/// and C comes back as f32.
pub fn matmul(
    index: usize,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dtype: Dtype,
) -> Result<Vec<f32>, JobError> {
    let dims = (dim("m", m)?, dim("k", k)?, dim("n", n)?);
    let gemm = gemm_for(index)?;
    let gemm = lock(&gemm);
    let stream = gemm.stream.clone();
    let download = |e| driver_error("reading C back", e);
    match dtype {
        Dtype::F32 | Dtype::Tf32 => {
            let mut ops = Operands::upload(&stream, a, b, m * n)?;
            launch(&gemm, &mut ops, dims, dtype)?;
            stream.clone_dtoh(&ops.c).map_err(download)
        }
        Dtype::Bf16 | Dtype::F16 => {
            let mut ops = Operands::upload(&stream, &to_half(a, dtype), &to_half(b, dtype), m * n)?;
            launch(&gemm, &mut ops, dims, dtype)?;
            Ok(from_half(
                &stream.clone_dtoh(&ops.c).map_err(download)?,
                dtype,
            ))
        }
    }
}

/// Products of two n×n matrices of seeded values in one dtype, with the operands kept on the
/// device, for the kernel benchmarks (which time [`SquareProducts::launch`] between two
/// [`SquareProducts::sync`] calls, as they time Burn between two `B::sync`).
pub struct SquareProducts {
    gemm: Arc<Mutex<Gemm>>,
    operands: SquareOperands,
    size: i32,
    dtype: Dtype,
}

enum SquareOperands {
    Full(Operands<f32>),
    Half(Operands<u16>),
}

impl SquareProducts {
    pub fn new(index: usize, n: usize, dtype: Dtype) -> Result<Self, String> {
        let size = dim("n", n).map_err(|e| e.message)?;
        let values = crate::seeded_values(7, 0, n * n);
        let gemm = gemm_for(index).map_err(|e| e.message)?;
        let stream = lock(&gemm).stream.clone();
        let upload = |e: JobError| e.message;
        let operands = match dtype {
            Dtype::F32 | Dtype::Tf32 => SquareOperands::Full(
                Operands::upload(&stream, &values, &values, n * n).map_err(upload)?,
            ),
            Dtype::Bf16 | Dtype::F16 => {
                let half = to_half(&values, dtype);
                SquareOperands::Half(
                    Operands::upload(&stream, &half, &half, n * n).map_err(upload)?,
                )
            }
        };
        Ok(SquareProducts {
            gemm,
            operands,
            size,
            dtype,
        })
    }

    /// Start one product on the handle's stream; does not wait for it.
    pub fn launch(&mut self) -> Result<(), String> {
        let gemm = lock(&self.gemm);
        let dims = (self.size, self.size, self.size);
        match &mut self.operands {
            SquareOperands::Full(ops) => launch(&gemm, ops, dims, self.dtype),
            SquareOperands::Half(ops) => launch(&gemm, ops, dims, self.dtype),
        }
        .map_err(|e| e.message)
    }

    /// Wait for the products launched so far.
    pub fn sync(&self) -> Result<(), String> {
        lock(&self.gemm)
            .stream
            .synchronize()
            .map_err(|e| format!("stream sync: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_trip_representable_values() {
        let values = [0.0f32, 1.0, -2.5, 0.125, 3072.0];
        assert_eq!(from_half(&to_half(&values, Dtype::F16), Dtype::F16), values);
        assert_eq!(
            from_half(&to_half(&values, Dtype::Bf16), Dtype::Bf16),
            values
        );
        // bf16 keeps 8 bits of mantissa: 1 + 2^-9 rounds to 1.
        assert_eq!(
            from_half(&to_half(&[1.0 + 2f32.powi(-9)], Dtype::Bf16), Dtype::Bf16),
            [1.0]
        );
    }
}
