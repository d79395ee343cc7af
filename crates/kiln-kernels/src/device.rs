//! Devices a worker can run on, the Burn backend behind each, and CUDA detection.

use std::fmt;
use std::path::Path;

use kiln_proto::DeviceClass;

/// The CPU backend: burn-ndarray, multi-threaded.
pub type CpuBackend = burn::backend::NdArray<f32>;
/// The GPU backend: burn-cuda (with fusion and autotune, Burn's defaults).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// Where a worker runs its jobs, chosen at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The host's CPUs, through burn-ndarray.
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl ComputeDevice {
    /// The device class whose consumer this device serves.
    pub fn class(&self) -> DeviceClass {
        match self {
            ComputeDevice::Cpu => DeviceClass::Cpu,
            ComputeDevice::Cuda(_) => DeviceClass::Gpu,
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// How many CUDA devices this machine has, found without touching the CUDA runtime (which
/// panics when libcuda is missing): the NVIDIA device nodes, and libcuda on the loader path.
/// Zero means no usable CUDA.
pub fn cuda_device_count() -> usize {
    if !libcuda_present() {
        return 0;
    }
    gpu_device_nodes(Path::new("/dev"))
}

/// The `nvidia<N>` device nodes in `dev`, whatever their numbers. A container given one GPU of
/// a multi-GPU machine (a Kubernetes pod with `nvidia.com/gpu: 1`) sees that GPU's node under
/// its host number, `/dev/nvidia3` say, while CUDA calls it device 0: counting from
/// `/dev/nvidia0` up would find no GPU there.
fn gpu_device_nodes(dev: &Path) -> usize {
    std::fs::read_dir(dev)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

fn libcuda_present() -> bool {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/nvidia/lib64",
            "/usr/local/nvidia/lib",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/compat",
            "/usr/lib/wsl/lib",
        ]
        .map(str::to_owned),
    );
    dirs.iter().any(|d| {
        Path::new(d).join("libcuda.so.1").exists() || Path::new(d).join("libcuda.so").exists()
    })
}

/// Keep CubeCL's autotune results and compiled GPU kernels under `dir`, so that a restarted
/// worker does not pay JIT compilation and autotuning again. Must run before the first GPU
/// use in the process; later calls (or calls after CUDA was touched) return an error and
/// leave the cache where CubeCL's defaults put it.
pub fn use_cache_dir(dir: &Path) -> Result<(), String> {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.autotune.cache = CacheConfig::File(dir.join("autotune"));
    config.compilation.cache = Some(CacheConfig::File(dir.join("compilation")));
    // `set` panics when the configuration was already read or set.
    std::panic::catch_unwind(move || CubeClRuntimeConfig::set(config)).map_err(|_| {
        format!(
            "the GPU runtime was already configured; its caches stay where they were, not in {}",
            dir.display()
        )
    })
}

/// The default cache directory: `$XDG_CACHE_HOME/kiln` or `~/.cache/kiln`.
pub fn default_cache_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kiln")
}

/// Device memory as CubeCL's allocator sees it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of live allocations (tensors in use).
    pub in_use: u64,
    /// Bytes held from the driver: in use, padding, and pooled for reuse.
    pub reserved: u64,
}

/// Memory in use on a CUDA device, from CubeCL's memory manager (`ComputeClient::memory_usage`);
/// `None` for the CPU (whose memory is the process's) or when the device does not answer.
/// Blocking: it waits for the device's server, behind the work queued on it.
pub fn device_memory(device: &ComputeDevice) -> Option<DeviceMemory> {
    use cubecl_runtime::runtime::Runtime as _;
    match device {
        ComputeDevice::Cpu => None,
        ComputeDevice::Cuda(index) => {
            let client =
                cubecl_cuda::CudaRuntime::client(&burn::backend::cuda::CudaDevice::new(*index));
            let usage = client.memory_usage().ok()?;
            Some(DeviceMemory {
                in_use: usage.bytes_in_use,
                reserved: usage.bytes_reserved,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gpu_nodes_under_their_host_numbers() {
        let dev = std::env::temp_dir().join(format!("kiln-dev-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dev).unwrap();
        // What a pod given the host's fourth GPU sees, plus the control nodes every GPU
        // container has.
        for name in [
            "nvidia3",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia-modeset",
        ] {
            std::fs::write(dev.join(name), b"").unwrap();
        }
        assert_eq!(gpu_device_nodes(&dev), 1);
        std::fs::write(dev.join("nvidia0"), b"").unwrap();
        assert_eq!(gpu_device_nodes(&dev), 2);
        std::fs::remove_dir_all(&dev).unwrap();
        assert_eq!(gpu_device_nodes(&dev), 0, "no /dev: no GPU");
    }
}
