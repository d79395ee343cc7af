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
//! Unsafe code (with `cudnn.rs`, `vendor.rs` and `openblas.rs`, the only in kiln): the call of
//! cuBLAS's `gemm_ex` on raw device pointers (cudarc's typed `Gemm` has no TF32 compute type).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, result::gemm_ex, sys};
use cudarc::driver::CudaStream;
use kiln_proto::{ErrorKind, JobError};

use crate::precision::Dtype;
use crate::vendor::{Buffers, Handles, Library, lock};

const CUBLAS: Library = Library {
    name: "cuBLAS",
    file: "cublas",
    kind: "matmul",
    install: "install the CUDA toolkit's cuBLAS (libcublas and libcublasLt) and add its folder \
              to LD_LIBRARY_PATH",
};

/// Check that cuBLAS works on CUDA device `index`: the library loads, and a handle and a tiny
/// product succeed. The error says what is missing.
pub fn probe(index: usize) -> Result<(), String> {
    crate::engine::check_product("cuBLAS", |a, b| matmul(index, a, b, 1, 2, 1, Dtype::F32))
}

/// A cuBLAS handle on its own stream of one device.
struct Gemm {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

fn gemm_for(index: usize) -> Result<Arc<Mutex<Gemm>>, JobError> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    static HANDLES: Handles<Gemm> = OnceLock::new();
    CUBLAS.loads(&FOUND).map_err(JobError::internal)?;
    CUBLAS.handle(&HANDLES, index, |stream| {
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| JobError::internal(format!("creating a cuBLAS handle: {e:?}")))?;
        Ok(Gemm { stream, blas })
    })
}

fn dim(name: &str, value: usize) -> Result<i32, JobError> {
    crate::engine::blas_dim("cuBLAS", name, value)
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
fn launch(
    gemm: &Gemm,
    ops: &mut Buffers,
    (m, k, n): (i32, i32, i32),
    dtype: Dtype,
) -> Result<(), JobError> {
    CUBLAS.bind(&gemm.stream)?;
    let (element, compute) = types(dtype);
    let alpha = 1.0f32;
    let beta = 0.0f32;
    let at = ops.pointers(&gemm.stream);
    // SAFETY: A holds m·k, B k·n and C m·n elements of `element` on this stream's device (made
    // by `Buffers::upload` from slices of those lengths in `dtype`'s element type); alpha and
    // beta are f32 host scalars, as the f32 compute types require; the leading dimensions are
    // those of the transposed (column-major) views described in the module docs.
    unsafe {
        gemm_ex(
            *gemm.blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_N,
            n,
            m,
            k,
            (&alpha as *const f32).cast::<c_void>(),
            at.b as *const c_void,
            element,
            n,
            at.a as *const c_void,
            element,
            k,
            (&beta as *const f32).cast::<c_void>(),
            at.out as *mut c_void,
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
    let mut ops = Buffers::upload(
        &CUBLAS,
        &gemm.stream,
        [("A", a), ("B", b)],
        ("C", m * n),
        dtype,
    )?;
    launch(&gemm, &mut ops, dims, dtype)?;
    ops.download(&CUBLAS, &gemm.stream, "C", dtype)
}

/// Products of two n×n matrices of seeded values in one dtype, with the operands kept on the
/// device, for the kernel benchmarks (which time [`SquareProducts::launch`] between two
/// [`SquareProducts::sync`] calls, as they time Burn between two `B::sync`).
pub struct SquareProducts {
    gemm: Arc<Mutex<Gemm>>,
    operands: Buffers,
    size: i32,
    dtype: Dtype,
}

impl SquareProducts {
    pub fn new(index: usize, n: usize, dtype: Dtype) -> Result<Self, String> {
        let size = dim("n", n).map_err(|e| e.message)?;
        let values = crate::seeded_values(7, 0, n * n);
        let gemm = gemm_for(index).map_err(|e| e.message)?;
        let stream = lock(&gemm).stream.clone();
        let operands = Buffers::upload(
            &CUBLAS,
            &stream,
            [("A", &values), ("B", &values)],
            ("C", n * n),
            dtype,
        )
        .map_err(|e| e.message)?;
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
        launch(&gemm, &mut self.operands, dims, self.dtype).map_err(|e| e.message)
    }

    /// Wait for the products launched so far.
    pub fn sync(&self) -> Result<(), String> {
        lock(&self.gemm)
            .stream
            .synchronize()
            .map_err(|e| format!("stream sync: {e:?}"))
    }
}
