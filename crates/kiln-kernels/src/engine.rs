//! What `matmul` jobs run on: the vendor BLAS of the device (cuBLAS on CUDA, OpenBLAS on the
//! CPU, both loaded at run time) or Burn's own kernels, like the other kinds (`vector_add`
//! follows the same setting: cuBLAS on CUDA, Burn on the CPU); and what `conv2d` jobs run on:
//! cuDNN on CUDA workers (loaded at run time, see [`crate::vendor::cudnn`]), a direct depthwise
//! loop on CPU workers ([`crate::cpu::depthwise`]), or Burn. The choice is a value,
//! [`Engines`], that the caller makes once and hands to each run; nothing here is global.
//!
//! Burn 0.21's GEMMs reach about a quarter of cuBLAS on Hopper GPUs (its kernels use the
//! warp-level `mma` instructions, not `wgmma`) and about half of OpenBLAS on AVX-512 CPUs
//! (burn-ndarray multiplies through the `matrixmultiply` crate); neither offers true f32 on
//! tensor cores' GPUs. A worker checks its device's BLAS at start
//! ([`crate::vendor::cublas::probe`], [`crate::vendor::openblas::probe`]) and chooses Burn
//! where the library is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::device::ComputeDevice;

/// What `matmul` jobs run on (and `vector_add` jobs on CUDA workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulEngine {
    /// The device's BLAS (the default): cuBLAS on CUDA (matmul and vector_add); OpenBLAS on the
    /// CPU (matmul) where libopenblas loads, else burn-ndarray. A job on CUDA fails if cuBLAS
    /// does not load: a worker checks it at start and chooses [`MatmulEngine::Burn`] where it
    /// fails.
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

/// What `conv2d` jobs run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvEngine {
    /// The default: NVIDIA's cuDNN on CUDA workers, in the precision the job asks for (a
    /// convolution over cuDNN's 32-bit sizes, or one cuDNN fails with an internal error, runs on
    /// Burn); kiln's direct depthwise loop on CPU workers (burn-ndarray has no vectorised
    /// depthwise path). A worker checks cuDNN at start and chooses [`ConvEngine::Burn`] where it
    /// fails.
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

/// The name of Burn's backend on a GPU or on the CPU (`burn-cuda`, `burn-ndarray`), as results,
/// heartbeats and benchmark rows name the engine when a kind runs on Burn's kernels.
pub fn burn_engine(is_gpu: bool) -> &'static str {
    if is_gpu { "burn-cuda" } else { "burn-ndarray" }
}

/// The engines the kinds that have a choice run on: chosen once by whoever runs jobs (a worker
/// at start, after checking that the vendor libraries load, from `--matmul-engine` and
/// `--conv2d-engine`) and handed to every run ([`crate::DecodedJob::run_with`]), which passes
/// it to the kind in [`crate::RunContext::engines`]. The default is the vendor libraries
/// everywhere, each falling back as [`MatmulEngine::Blas`] and [`ConvEngine::Native`] say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Engines {
    /// What `matmul` jobs run on, and `vector_add` jobs on CUDA.
    pub matmul: MatmulEngine,
    /// What `conv2d` jobs run on.
    pub conv: ConvEngine,
}

impl Engines {
    /// Burn's kernels for every kind (`--matmul-engine burn --conv2d-engine burn`).
    pub const BURN: Engines = Engines {
        matmul: MatmulEngine::Burn,
        conv: ConvEngine::Burn,
    };

    /// What `matmul`, `conv2d` and `vector_add` jobs run on with these engines on `device`,
    /// named as their result events name it (`output.engine`), for heartbeats and
    /// `kiln status`.
    pub fn names(&self, device: &ComputeDevice) -> BTreeMap<String, String> {
        let burn = burn_engine(matches!(device, ComputeDevice::Cuda(_)));
        let blas = self.matmul == MatmulEngine::Blas;
        let matmul = match device {
            ComputeDevice::Cuda(_) if blas => "cublas",
            ComputeDevice::Cpu if blas && crate::vendor::openblas::available() => "openblas",
            _ => burn,
        };
        let vector_add = match device {
            ComputeDevice::Cuda(_) if blas => "cublas",
            _ => burn,
        };
        let conv2d = match (device, self.conv) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_engines_name_burns_backend_for_every_kind() {
        let names = Engines::BURN.names(&ComputeDevice::Cpu);
        assert_eq!(names.len(), 3);
        assert!(names.values().all(|n| n == "burn-ndarray"), "{names:?}");
        let names = Engines::BURN.names(&ComputeDevice::Cuda(0));
        assert!(names.values().all(|n| n == "burn-cuda"), "{names:?}");
        let native = Engines::default().names(&ComputeDevice::Cuda(0));
        assert_eq!(native["matmul"], "cublas");
        assert_eq!(native["vector_add"], "cublas");
        assert_eq!(native["conv2d"], "cudnn");
        assert_eq!(
            Engines::default().names(&ComputeDevice::Cpu)["conv2d"],
            "direct"
        );
    }

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
