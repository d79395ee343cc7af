#![warn(missing_docs, unreachable_pub)]
//! kiln's job kinds and the registry that maps a kind's name to its code.
//!
//! A kind is one module in [`kinds`] implementing [`Kernel`], its computation written once as
//! Burn code generic over `B: Backend`, plus one line in `registry!` below; the worker, the
//! `kiln` command and the docs find it through [`find`] and [`KINDS`]. Three kinds can run on
//! another engine than Burn where that is faster or more exact: the vendor libraries in
//! [`vendor`] (cuBLAS, cuDNN, OpenBLAS, all loaded at run time) and kiln's own CPU loop in
//! [`cpu`]. Which one runs is an [`Engines`] value the caller chooses once and hands to each
//! run ([`DecodedJob::run_with`]; [`DecodedJob::run`] takes [`Engines::default`]), which the
//! kind reads in [`RunContext::engines`].
//!
//! # Which engine runs each kind
//!
//! | kind | CPU worker | CUDA worker |
//! |---|---|---|
//! | `matmul` | OpenBLAS `cblas_sgemm` if it loads, else burn-ndarray | cuBLAS `gemm_ex` |
//! | `vector_add` | burn-ndarray | cuBLAS `cublasSgeam` |
//! | `conv2d` | kiln's direct depthwise loop ([`cpu::depthwise`]) | cuDNN |
//! | `train_mlp` | burn-ndarray (with Autodiff) | burn-cuda (with Autodiff) |
//! | `mlp_predict` | burn-ndarray | burn-cuda |
//!
//! cuBLAS and cuDNN compute in the job's dtype (`f32` in true f32). matmul and vector_add jobs
//! on cuBLAS make their seeded inputs on the GPU ([`vendor::nvrtc`]), the same values
//! [`seeded_values`] makes on the host.
//!
//! Those are the defaults. Burn's own kernels run everything else:
//! - `kiln worker --matmul-engine burn` (`KILN_MATMUL_ENGINE`, [`MatmulEngine::Burn`]) moves
//!   matmul (both devices) and vector_add (CUDA) onto Burn; `--conv2d-engine burn`
//!   (`KILN_CONV2D_ENGINE`, [`ConvEngine::Burn`]) moves conv2d.
//! - A worker checks its libraries at start (a tiny product on cuBLAS or OpenBLAS, two small
//!   convolutions on cuDNN) and chooses Burn, with a log line, for the kinds whose library
//!   fails. [`DecodedJob::run`] checks nothing: there a matmul or vector_add job on CUDA fails
//!   if cuBLAS does not load. OpenBLAS is `$KILN_OPENBLAS` (a path or a file name), else
//!   `libopenblas.so.0` or `libopenblas.so`; without it, matmul on the CPU runs on
//!   burn-ndarray whatever the setting.
//! - A convolution over cuDNN's 32-bit sizes, or one cuDNN fails with an internal error
//!   (cuDNN not loading among them), runs on burn-cuda instead, with a warning for the latter.
//! - The job dtypes `tf32`, `bf16` and `f16` need a GPU worker; a CPU worker refuses them.
//!   On burn-cuda, matmul and conv2d cast to bf16 or f16, and f32 may run on tensor cores at
//!   TF32-like precision.
//!
//! Burn's backends are burn-ndarray ([`CpuBackend`]: its products go through the
//! `matrixmultiply` crate, or the system OpenBLAS with this crate's `blas` feature) and
//! burn-cuda ([`CudaBackend`]: CubeCL kernels compiled at run time, autotuned, cached in the
//! worker's cache directory). `matmul`, `vector_add` and `conv2d` results name the engine that
//! ran (`"engine"`: `openblas`, `cublas`, `cudnn`, `direct`, `burn-ndarray`, `burn-cuda`), and
//! a worker's heartbeat lists them ([`Engines::names`], `kiln status`). The kernel benchmark
//! (`kiln_bench::timing`, in the workspace's `bench/` crate) times matmul, vector_add, conv2d
//! and a training step where jobs run them, and on Burn in its `_burn` rows.
//!
//! ```
//! use kiln_kernels::{ComputeDevice, Engines, NoCheckpoint, find};
//! use kiln_proto::{Codec, Limits};
//! let kind = find("vector_add").unwrap();
//! let body = br#"{"params":{"len":8},"seed":1}"#;
//! let job = kind.decode(Codec::Json, body, &Limits::default()).unwrap();
//! let out = job.run(&ComputeDevice::Cpu, &NoCheckpoint).unwrap();
//! assert_eq!(out["len"], 8);
//! let out = job.run_with(&ComputeDevice::Cpu, Engines::BURN, &NoCheckpoint).unwrap();
//! assert_eq!(out["engine"], "burn-ndarray");
//! ```

mod data;
mod device;
mod dtype;
#[cfg(test)]
mod host_kernel;
mod io;
mod kernel;
mod magnitude;
mod memory;
mod reduce;
mod seeded;

pub mod cpu;
mod engine;
pub mod kinds;
pub mod vendor;

pub use data::{Summary, seeded_values};
pub use device::{
    ComputeDevice, CpuBackend, CudaBackend, DeviceMemory, cuda_device_count, default_cache_dir,
    device_memory, use_cache_dir,
};
pub use dtype::{Dtype, dtype_name};
pub use engine::{ConvEngine, Engines, MatmulEngine, burn_engine};
pub use io::{InlineValues, Input, Inputs, Narrowed, OutputSink, Placement, Stored, Wanted};
pub use kernel::{
    Checkpoint, DecodedJob, JobMeta, Kernel, KindEntry, NoCheckpoint, Plan, Progress, RunContext,
    run_batch,
};
pub use kiln_data::store::{Loaded, Want};
pub use memory::{BYTES_PER_ELEMENT, Bytes, MemoryBudget};

/// The kind registry: one entry per job kind. Adding a kind = one module + one line here.
macro_rules! registry {
    ($($kernel:ty),+ $(,)?) => {
        /// Every job kind this build of kiln can run.
        pub static KINDS: &[KindEntry] = &[$(KindEntry::of::<$kernel>()),+];
    };
}

registry! {
    kinds::matmul::Matmul,
    kinds::vector_add::VectorAdd,
    kinds::conv2d::Conv2d,
    kinds::train_mlp::TrainMlp,
    kinds::mlp_predict::MlpPredict,
}

/// The registry entry of the kind called `name`.
pub fn find(name: &str) -> Option<&'static KindEntry> {
    KINDS.iter().find(|k| k.name == name)
}

/// Names of every registered kind, for error messages and help texts.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}
