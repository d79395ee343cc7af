//! What `matmul` jobs run on: the vendor BLAS of the device (cuBLAS on CUDA, OpenBLAS on the
//! CPU, both loaded at run time) or Burn's own kernels, like the other kinds (`vector_add` follows
//! the same setting: cuBLAS on CUDA, Burn on the CPU); and what `conv2d`
//! jobs run on: cuDNN on CUDA workers (loaded at run time, see [`crate::vendor::cudnn`]), a direct
//! depthwise loop on CPU workers ([`crate::cpu::depthwise`]), or Burn.
//!
//! Burn 0.21's GEMMs reach about a quarter of cuBLAS on Hopper GPUs (its kernels use the
//! warp-level `mma` instructions, not `wgmma`) and about half of OpenBLAS on AVX-512 CPUs
//! (burn-ndarray multiplies through the `matrixmultiply` crate); neither offers true f32 on
//! tensor cores' GPUs. A worker checks its device's BLAS at start ([`crate::vendor::cublas::probe`],
//! [`crate::vendor::openblas::probe`]) and uses Burn where the library is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::device::ComputeDevice;

/// What `matmul` jobs run on in this process (and `vector_add` jobs on CUDA workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulEngine {
    /// The device's BLAS (the default): cuBLAS on CUDA (matmul and vector_add), OpenBLAS on the
    /// CPU (matmul).
    #[default]
    Blas,
    /// Burn's kernels, as the other kinds (on CUDA, "f32" runs at TF32-like precision).
    Burn,
}

impl MatmulEngine {
    /// The setting's name: `blas` or `burn`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatmulEngine::Blas => "blas",
            MatmulEngine::Burn => "burn",
        }
    }
}

impl fmt::Display for MatmulEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatmulEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blas" => Ok(MatmulEngine::Blas),
            "burn" => Ok(MatmulEngine::Burn),
            other => Err(format!(
                "unknown matmul engine {other:?}: use blas (cuBLAS on CUDA, OpenBLAS on the CPU) or burn"
            )),
        }
    }
}

/// 0: the device's BLAS, 1: Burn.
static ENGINE: AtomicU8 = AtomicU8::new(0);

/// Choose what `matmul` jobs run on in this process (a worker does this at start, after checking
/// that its device's BLAS loads).
pub fn set_matmul_engine(engine: MatmulEngine) {
    let value = match engine {
        MatmulEngine::Blas => 0,
        MatmulEngine::Burn => 1,
    };
    ENGINE.store(value, Ordering::Relaxed);
}

/// What `matmul` jobs run on in this process.
pub fn matmul_engine() -> MatmulEngine {
    match ENGINE.load(Ordering::Relaxed) {
        0 => MatmulEngine::Blas,
        _ => MatmulEngine::Burn,
    }
}

/// What `conv2d` jobs run on in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvEngine {
    /// The default: NVIDIA's cuDNN on CUDA workers, in the precision the job asks for; kiln's
    /// direct depthwise loop on CPU workers (burn-ndarray has no vectorised depthwise path).
    #[default]
    Native,
    /// Burn's kernels (on CUDA, f32 may run on tensor cores at TF32-like precision).
    Burn,
}

impl ConvEngine {
    /// The setting's name: `native` or `burn`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConvEngine::Native => "native",
            ConvEngine::Burn => "burn",
        }
    }
}

impl fmt::Display for ConvEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConvEngine {
    type Err = String;

    /// `cudnn`, this setting's name before CPU workers had a native path, still means `native`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" | "cudnn" => Ok(ConvEngine::Native),
            "burn" => Ok(ConvEngine::Burn),
            other => Err(format!(
                "unknown conv2d engine {other:?}: use native (cuDNN on CUDA workers, a direct \
                 loop on CPU workers) or burn"
            )),
        }
    }
}

/// 0: native, 1: Burn.
static CONV_ENGINE: AtomicU8 = AtomicU8::new(0);

/// Choose what `conv2d` jobs run on in this process (a worker does this at start; a CUDA worker
/// after checking cuDNN).
pub fn set_conv_engine(engine: ConvEngine) {
    let value = match engine {
        ConvEngine::Native => 0,
        ConvEngine::Burn => 1,
    };
    CONV_ENGINE.store(value, Ordering::Relaxed);
}

/// What `conv2d` jobs run on in this process.
pub fn conv_engine() -> ConvEngine {
    match CONV_ENGINE.load(Ordering::Relaxed) {
        0 => ConvEngine::Native,
        _ => ConvEngine::Burn,
    }
}

/// The name of Burn's backend on a GPU or on the CPU, as results, heartbeats and benchmark rows
/// name the engine when a kind runs on Burn's kernels.
pub(crate) fn burn_engine(is_gpu: bool) -> &'static str {
    if is_gpu { "burn-cuda" } else { "burn-ndarray" }
}

/// What `matmul`, `conv2d` and `vector_add` jobs run on in this process on `device`, named as
/// their result events name it (`output.engine`), for heartbeats and `kiln status`.
pub fn engines(device: &ComputeDevice) -> BTreeMap<String, String> {
    let burn = burn_engine(matches!(device, ComputeDevice::Cuda(_)));
    let blas = matmul_engine() == MatmulEngine::Blas;
    let matmul = match device {
        ComputeDevice::Cuda(_) if blas => "cublas",
        ComputeDevice::Cpu if blas && crate::vendor::openblas::available() => "openblas",
        _ => burn,
    };
    let vector_add = match device {
        ComputeDevice::Cuda(_) if blas => "cublas",
        _ => burn,
    };
    let conv2d = match (device, conv_engine()) {
        (ComputeDevice::Cuda(_), ConvEngine::Native) => "cudnn",
        (ComputeDevice::Cpu, ConvEngine::Native) => crate::cpu::depthwise::ENGINE,
        (_, ConvEngine::Burn) => burn,
    };
    [
        ("matmul", matmul),
        ("conv2d", conv2d),
        ("vector_add", vector_add),
    ]
    .into_iter()
    .map(|(kind, engine)| (kind.to_owned(), engine.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_print() {
        assert_eq!("blas".parse(), Ok(MatmulEngine::Blas));
        assert_eq!("burn".parse(), Ok(MatmulEngine::Burn));
        assert_eq!(MatmulEngine::Burn.to_string(), "burn");
        let err = "mkl".parse::<MatmulEngine>().unwrap_err();
        assert!(err.starts_with("unknown matmul engine \"mkl\""), "{err}");
        assert_eq!("native".parse(), Ok(ConvEngine::Native));
        assert_eq!("cudnn".parse(), Ok(ConvEngine::Native));
        assert_eq!(ConvEngine::Burn.to_string(), "burn");
        let err = "miopen".parse::<ConvEngine>().unwrap_err();
        assert_eq!(
            err,
            "unknown conv2d engine \"miopen\": use native (cuDNN on CUDA workers, a direct loop \
             on CPU workers) or burn"
        );
    }
}
