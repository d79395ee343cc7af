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
//! `vector_add` jobs run on cuBLAS too: c = 1·a + 1·b is `cublasSgeam` over the vectors seen as
//! one-column matrices, a single correctly rounded f32 addition per element, like the CPU's. The
//! job moves its vectors with plain CUDA copies on the handle's stream. On Burn the same job had
//! cost 582 ms for 4M elements on an H200 (19 ms on the CPU; its transfers, not the add, took the
//! time), and a 1,024-element job 116 µs against PyTorch's 60 µs.
//!
//! Jobs whose inputs come from their seed do not upload them: A and B (a and b) are allocated on
//! the device and filled there by kiln's seeded-input kernel ([`super::nvrtc`], in the job's
//! element type), with the same bits the host would have uploaded ([`Source::Seeded`],
//! [`MadeOn`]).
//!
//! libcublas is loaded at run time, like libcuda and NVRTC: a worker that cannot load it logs why
//! and runs matmul and vector_add on Burn's kernels instead ([`crate::MatmulEngine::Burn`], also
//! chosen with `kiln worker --matmul-engine burn`). The other kinds run on cuDNN or Burn.
//!
//! cuBLAS is column-major and kiln's matrices are row-major: a row-major m×n matrix is the
//! column-major n×m matrix of its transpose, so C = A·B is computed as Cᵀ = Bᵀ·Aᵀ, that is
//! `gemm(n, m, k, B, A)`, and the column-major result is C in row-major order.
//!
//! Unsafe code (as in the other modules of `vendor/`; elsewhere in kiln only the vector-width
//! dispatch of the CPU loops): the calls of cuBLAS's `gemm_ex` (cudarc's typed `Gemm` has no
//! TF32 compute type) and `cublasSgeam` (cudarc has no safe wrapper) on raw device pointers.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, result::gemm_ex, sys};
use cudarc::driver::{CudaStream, sys::CUdeviceptr};
use kiln_proto::{ErrorKind, JobError};

use super::cuda::{Buffers, Handles, Library, lock, read_values};
use super::nvrtc::{Generator, generator};
use crate::{Dtype, Summary, seeded_values};

const CUBLAS: Library = Library {
    name: "cuBLAS",
    file: "cublas",
    kind: "matmul",
    install: "install the CUDA toolkit's cuBLAS (libcublas and libcublasLt) and add its folder \
              to LD_LIBRARY_PATH",
};

/// The same library, named in the messages of `vector_add` jobs.
const CUBLAS_ADD: Library = Library {
    kind: "vector_add",
    ..CUBLAS
};

/// The rows of the matrices a vector add hands `cublasSgeam`. Seen as one column, a 64M-element
/// add ran at 267 GB/s on an H200 (PyTorch: 3918); a matrix view lets cuBLAS spread it out.
const GEAM_ROWS: usize = 4096;

/// The most elements one `cublasSgeam` call adds (its dimensions are 32-bit `int`s); longer
/// vectors go in pieces of this length (a multiple of [`GEAM_ROWS`]).
const GEAM_PIECE: usize = 1 << 30;

/// Check that cuBLAS works on CUDA device `index`: the library loads, and a handle and a tiny
/// product succeed. The error says what is missing.
pub fn probe(index: usize) -> Result<(), String> {
    super::check_product("cuBLAS", |a, b| matmul(index, a, b, 1, 2, 1, Dtype::F32))
}

/// A cuBLAS handle on its own stream of one device.
struct Blas {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

fn blas_for(index: usize) -> Result<Arc<Mutex<Blas>>, JobError> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    static HANDLES: Handles<Blas> = OnceLock::new();
    CUBLAS.loads(&FOUND).map_err(JobError::internal)?;
    CUBLAS.handle(&HANDLES, index, |stream| {
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| JobError::internal(format!("creating a cuBLAS handle: {e:?}")))?;
        Ok(Blas { stream, blas })
    })
}

/// Where the two inputs of a cuBLAS job come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Values on the host (A and B, or a and b), uploaded.
    Host(&'a [f32], &'a [f32]),
    /// `seeded_values(seed, 0, ..)` and `seeded_values(seed, 1, ..)`: made on the device by
    /// [`super::nvrtc`]'s kernel, or on the host and uploaded where it is not available.
    Seeded(u64),
}

/// Where a job's inputs were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeOn {
    /// On the host (given, loaded or generated there), then uploaded.
    Host,
    /// On the GPU, by the seeded-input kernel.
    Device,
}

impl MadeOn {
    /// `host` or `device`, as results name it.
    pub fn as_str(self) -> &'static str {
        match self {
            MadeOn::Host => "host",
            MadeOn::Device => "device",
        }
    }
}

/// What a job reads back of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// Every value (the job returns them, inline or as an object).
    Values,
    /// Only their summary: made on the device where [`super::nvrtc`]'s summary kernel runs
    /// (a few kilobytes come back instead of the output), else on the host.
    Summary,
}

impl ReadBack {
    /// What a job whose output goes to `placement` needs of it.
    pub fn for_placement(placement: crate::Placement) -> Self {
        match placement {
            crate::Placement::Summary => ReadBack::Summary,
            crate::Placement::Inline | crate::Placement::Object => ReadBack::Values,
        }
    }
}

/// An output read back: its values, or only their summary.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Every value, as f32.
    Values(Vec<f32>),
    /// Only the summary.
    Summary(Summary),
}

impl Output {
    /// `values` read back, as `read` asks for them: the values, or their summary made here.
    pub(crate) fn read(values: Vec<f32>, read: ReadBack) -> Self {
        match read {
            ReadBack::Values => Output::Values(values),
            ReadBack::Summary => Output::Summary(Summary::of(&values)),
        }
    }

    /// The output's summary.
    pub fn summary(&self) -> Summary {
        match self {
            Output::Values(values) => Summary::of(values),
            Output::Summary(summary) => summary.clone(),
        }
    }

    /// The values, where they were read back.
    pub fn values(&self) -> Option<&[f32]> {
        match self {
            Output::Values(values) => Some(values),
            Output::Summary(_) => None,
        }
    }

    fn into_values(self) -> Vec<f32> {
        match self {
            Output::Values(values) => values,
            Output::Summary(_) => unreachable!("values were asked for"),
        }
    }
}

/// Read `what` back from `ops` on `stream` as `read` asks: an f32 output through
/// [`read_values`] (its summary made on the device when large), a 16-bit one read back whole.
fn read_back(
    library: &Library,
    stream: &Arc<CudaStream>,
    ops: &Buffers,
    (what, dtype): (&str, Dtype),
    read: ReadBack,
) -> Result<Output, JobError> {
    match ops.output_f32() {
        Some(out) => read_values(library, stream, (what, out), read),
        None => Ok(Output::read(
            ops.download(library, stream, what, dtype)?,
            read,
        )),
    }
}

/// A job's inputs ready to go to the device: host values (given, or generated on the host where
/// the generator is not available), or the generator and the seed.
enum Prepared<'a> {
    Host(Cow<'a, [f32]>, Cow<'a, [f32]>),
    Device(Arc<Generator>, u64),
}

impl<'a> Prepared<'a> {
    /// Resolve `source` for the device of `handle` (its generator is compiled and loaded the
    /// first time); inputs of `lens` elements, which host values must have. Host generation,
    /// where needed, runs before the handle is locked for the job.
    fn of(
        source: Source<'a>,
        handle: &Mutex<Blas>,
        [a_len, b_len]: [usize; 2],
    ) -> Result<Self, JobError> {
        Ok(match source {
            Source::Host(a, b) if a.len() != a_len || b.len() != b_len => {
                return Err(JobError::invalid_input(format!(
                    "the inputs have {} and {} values where the operation needs {a_len} and \
                     {b_len}",
                    a.len(),
                    b.len()
                )));
            }
            Source::Host(a, b) => Prepared::Host(a.into(), b.into()),
            Source::Seeded(seed) => {
                let stream = lock(handle).stream.clone();
                match generator(&stream) {
                    Ok(generator) => Prepared::Device(generator, seed),
                    // Why is logged once per device by `generator`.
                    Err(_) => Prepared::Host(
                        seeded_values(seed, 0, a_len).into(),
                        seeded_values(seed, 1, b_len).into(),
                    ),
                }
            }
        })
    }

    /// The operation's buffers on `stream`: the inputs uploaded or made there, the output
    /// allocated.
    fn buffers(
        &self,
        library: &Library,
        stream: &Arc<CudaStream>,
        [(a_name, a_len), (b_name, b_len)]: [(&str, usize); 2],
        out: (&str, usize),
        dtype: Dtype,
    ) -> Result<Buffers, JobError> {
        match self {
            Prepared::Host(a, b) => {
                Buffers::upload(library, stream, [(a_name, a), (b_name, b)], out, dtype)
            }
            Prepared::Device(generator, seed) => Buffers::seeded(
                library,
                stream,
                (generator, *seed),
                [(a_name, a_len), (b_name, b_len)],
                out,
                dtype,
            ),
        }
    }

    fn made_on(&self) -> MadeOn {
        match self {
            Prepared::Host(..) => MadeOn::Host,
            Prepared::Device(..) => MadeOn::Device,
        }
    }
}

fn dim(name: &str, value: usize) -> Result<i32, JobError> {
    super::blas_dim("cuBLAS", name, value)
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
    gemm: &Blas,
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
    let source = Source::Host(a, b);
    matmul_from(index, source, (m, k, n), dtype, ReadBack::Values).map(|(c, _)| c.into_values())
}

/// C = A·B on CUDA device `index` through cuBLAS, A (m×k) and B (k×n) from `source`, in
/// `dtype`'s element type; C (as f32, or its summary: `read`) comes back with where A and B
/// were made.
pub fn matmul_from(
    index: usize,
    source: Source<'_>,
    (m, k, n): (usize, usize, usize),
    dtype: Dtype,
    read: ReadBack,
) -> Result<(Output, MadeOn), JobError> {
    let dims = (dim("m", m)?, dim("k", k)?, dim("n", n)?);
    let gemm = blas_for(index)?;
    let inputs = Prepared::of(source, &gemm, [m * k, k * n])?;
    let gemm = lock(&gemm);
    let mut ops = inputs.buffers(
        &CUBLAS,
        &gemm.stream,
        [("A", m * k), ("B", k * n)],
        ("C", m * n),
        dtype,
    )?;
    launch(&gemm, &mut ops, dims, dtype)?;
    let c = read_back(&CUBLAS, &gemm.stream, &ops, ("C", dtype), read)?;
    Ok((c, inputs.made_on()))
}

/// Products of two n×n matrices of seeded values in one dtype, with the operands kept on the
/// device, for the kernel benchmarks (which time [`SquareProducts::launch`] between two
/// [`SquareProducts::sync`] calls, as they time Burn between two `B::sync`).
pub struct SquareProducts {
    gemm: Arc<Mutex<Blas>>,
    operands: Buffers,
    size: i32,
    dtype: Dtype,
}

impl SquareProducts {
    /// Upload the operands of n×n products in `dtype` to CUDA device `index`; an error if
    /// cuBLAS does not load or the device has no room.
    pub fn new(index: usize, n: usize, dtype: Dtype) -> Result<Self, String> {
        let size = dim("n", n).map_err(|e| e.message)?;
        let values = seeded_values(7, 0, n * n);
        let gemm = blas_for(index).map_err(|e| e.message)?;
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
        sync(&self.gemm)
    }
}

/// Launch c = a + b (f32, `len` elements, all three in `ops`) on `blas`'s stream; does not wait
/// for it. The vectors are added as [`GEAM_ROWS`]-row column-major matrices (pieces of at most
/// [`GEAM_PIECE`] elements), then a one-column matrix for the last `len % GEAM_ROWS`.
fn launch_add(blas: &Blas, ops: &mut Buffers, len: usize) -> Result<(), JobError> {
    CUBLAS_ADD.bind(&blas.stream)?;
    let at = ops.pointers(&blas.stream);
    let whole = len - len % GEAM_ROWS;
    let mut done = 0;
    while done < len {
        let (rows, cols) = if done < whole {
            (GEAM_ROWS, (whole - done).min(GEAM_PIECE) / GEAM_ROWS)
        } else {
            (len - done, 1)
        };
        let offset = (done * std::mem::size_of::<f32>()) as u64;
        let (a, b, c) = (at.a + offset, at.b + offset, at.out + offset);
        geam(blas, rows, cols, [a, b, c])?;
        done += rows * cols;
    }
    Ok(())
}

/// C = A + B for column-major `rows`×`cols` f32 matrices stored contiguously at `a`, `b`, `c`.
fn geam(
    blas: &Blas,
    rows: usize,
    cols: usize,
    [a, b, c]: [CUdeviceptr; 3],
) -> Result<(), JobError> {
    let int = |v: usize| i32::try_from(v).expect("a piece's dimensions fit an int");
    let (m, n) = (int(rows), int(cols));
    let one = 1.0f32;
    // SAFETY: the caller passes the addresses of `rows·cols` f32 elements inside the buffers of
    // one operation on this stream's device (`launch_add`: offsets within `len`-element
    // buffers uploaded in f32); alpha and beta are f32 host scalars (the handle's default
    // pointer mode); contiguous column-major matrices have leading dimension `rows`.
    unsafe {
        sys::cublasSgeam(
            *blas.blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            &one,
            a as *const f32,
            m,
            &one,
            b as *const f32,
            m,
            c as *mut f32,
            m,
        )
    }
    .result()
    .map_err(|e| JobError::internal(format!("cuBLAS geam (vector add) failed: {e:?}")))
}

/// c = a + b on CUDA device `index` through cuBLAS, f32 (a and b of equal length).
pub fn vector_add(index: usize, a: &[f32], b: &[f32]) -> Result<Vec<f32>, JobError> {
    if a.len() != b.len() {
        return Err(JobError::invalid_input(format!(
            "vector_add needs a and b of equal length, got {} and {}",
            a.len(),
            b.len()
        )));
    }
    vector_add_from(index, Source::Host(a, b), a.len(), ReadBack::Values)
        .map(|(c, _)| c.into_values())
}

/// c = a + b on CUDA device `index` through cuBLAS, f32, `len` elements of a and b from
/// `source` (host vectors of that length, or a seed); c (or its summary: `read`) comes back
/// with where a and b were made.
pub fn vector_add_from(
    index: usize,
    source: Source<'_>,
    len: usize,
    read: ReadBack,
) -> Result<(Output, MadeOn), JobError> {
    let blas = blas_for(index)?;
    let inputs = Prepared::of(source, &blas, [len, len])?;
    let blas = lock(&blas);
    let mut ops = inputs.buffers(
        &CUBLAS_ADD,
        &blas.stream,
        [("a", len), ("b", len)],
        ("c", len),
        Dtype::F32,
    )?;
    launch_add(&blas, &mut ops, len)?;
    let c = read_back(&CUBLAS_ADD, &blas.stream, &ops, ("c", Dtype::F32), read)?;
    Ok((c, inputs.made_on()))
}

/// Sums of two seeded f32 vectors kept on the device, for the kernel benchmarks (which time
/// [`DeviceSums::launch`] between two [`DeviceSums::sync`] calls).
pub struct DeviceSums {
    blas: Arc<Mutex<Blas>>,
    operands: Buffers,
    len: usize,
}

impl DeviceSums {
    /// Upload two seeded vectors of `len` elements and room for their sum to CUDA device
    /// `index`; an error if cuBLAS does not load or the device has no room.
    pub fn new(index: usize, len: usize) -> Result<Self, String> {
        let a = seeded_values(7, 0, len);
        let b = seeded_values(7, 1, len);
        let blas = blas_for(index).map_err(|e| e.message)?;
        let stream = lock(&blas).stream.clone();
        let operands = Buffers::upload(
            &CUBLAS_ADD,
            &stream,
            [("a", &a), ("b", &b)],
            ("c", len),
            Dtype::F32,
        )
        .map_err(|e| e.message)?;
        Ok(DeviceSums {
            blas,
            operands,
            len,
        })
    }

    /// Start one sum on the handle's stream; does not wait for it.
    pub fn launch(&mut self) -> Result<(), String> {
        let blas = lock(&self.blas);
        launch_add(&blas, &mut self.operands, self.len).map_err(|e| e.message)
    }

    /// Wait for the sums launched so far.
    pub fn sync(&self) -> Result<(), String> {
        sync(&self.blas)
    }
}

/// Wait for the work launched on a handle's stream (the benchmarks' sync).
fn sync(blas: &Mutex<Blas>) -> Result<(), String> {
    lock(blas)
        .stream
        .synchronize()
        .map_err(|e| format!("stream sync: {e:?}"))
}
