use std::path::PathBuf;
use std::time::Duration;

use kiln_kernels::ComputeDevice;
use kiln_proto::{DeviceClass, Limits, Topology};

/// Everything a worker needs to know; the `kiln worker` flags map onto it one to one.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name reported in result events (`worker`).
    pub name: String,
    /// The device jobs run on.
    pub device: ComputeDevice,
    /// The class whose consumer the worker serves: the device's own, unless a simulation
    /// serves the GPU class from a CPU (see `slowdown`).
    pub class: DeviceClass,
    /// Simulation on machines without a GPU: each job takes this many times its real compute
    /// time (the worker sleeps for the difference), so that two CPU workers can stand in for
    /// a fast and a slow class. 1 = off.
    pub slowdown: f64,
    /// Simulation: a fixed delay added to every job (a GPU's launch and transfer cost).
    pub sim_overhead: Duration,
    /// Jobs held at once (running, waiting for a compute slot, or publishing results), at
    /// most; see `prefetch` for how many the worker actually holds.
    pub max_in_flight: usize,
    /// Work held beyond the compute slots: the worker holds one job per compute slot plus as
    /// many as its slots get through in this time at the recent pace of its jobs (zero: one
    /// job per slot). Small jobs keep the slots busy between pulls; long jobs are not held
    /// where another worker could be running them.
    pub prefetch: Duration,
    /// Jobs computing at once.
    pub compute_slots: usize,
    /// How long a small job that can share one launch with others of its kind
    /// ([`kiln_kernels::DecodedJob::batchable`]) waits for them before it runs: the most a
    /// lone job is delayed. Zero runs every job alone. Default: 1 ms on a GPU (a launch and
    /// its transfers cost more than the small job itself), zero on the CPU.
    pub batch_window: Duration,
    /// The most jobs one launch takes.
    pub batch_max_jobs: usize,
    /// Limits jobs are checked against before anything is allocated.
    pub limits: Limits,
    /// Streams and consumers, created or updated at start.
    pub topology: Topology,
    /// How long a graceful shutdown waits for running jobs.
    pub drain_timeout: Duration,
    /// Run each kind's warm-up jobs on a GPU before taking jobs (JIT and autotune at start).
    pub warmup: bool,
    /// Where a GPU worker keeps autotune results and compiled kernels across restarts.
    pub cache_dir: Option<PathBuf>,
    /// What `matmul` jobs run on: the device's BLAS (cuBLAS, OpenBLAS; checked at start, Burn
    /// where it cannot be loaded) or Burn's kernels.
    pub matmul_engine: kiln_kernels::MatmulEngine,
    /// What `conv2d` jobs run on in a CUDA worker: cuDNN (checked at start, Burn where it
    /// cannot be loaded) or Burn's kernels. CPU workers convolve on burn-ndarray.
    pub conv_engine: kiln_kernels::ConvEngine,
    /// Memory the jobs of this worker may hold together (`None`: a share of the device's
    /// memory, found at start). A job needing more is refused before any allocation; jobs
    /// that fit wait for each other rather than run out of memory together.
    pub memory: Option<kiln_kernels::MemoryBudget>,
    /// Prometheus metrics (register them to serve them; unregistered they cost a few atomic
    /// adds per job).
    pub metrics: kiln_telemetry::WorkerMetrics,
    /// Readiness for `/readyz`: warming up, serving, stopping.
    pub health: kiln_telemetry::Health,
}

impl WorkerConfig {
    /// The defaults for `device`: named `<host>-<device>-<pid>`, serving the device's class,
    /// one compute slot per core on the CPU and two on a GPU.
    pub fn new(device: ComputeDevice) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (compute_slots, batch_window) = match device {
            ComputeDevice::Cpu => (cores, Duration::ZERO),
            ComputeDevice::Cuda(_) => (2, Duration::from_millis(1)),
        };
        Self {
            name: default_name(&device),
            class: device.class(),
            slowdown: 1.0,
            sim_overhead: Duration::ZERO,
            device,
            max_in_flight: 256,
            prefetch: Duration::from_millis(100),
            compute_slots,
            batch_window,
            batch_max_jobs: 256,
            limits: Limits::default(),
            topology: Topology::default(),
            drain_timeout: Duration::from_secs(30),
            warmup: true,
            cache_dir: Some(kiln_kernels::default_cache_dir()),
            matmul_engine: kiln_kernels::MatmulEngine::Blas,
            conv_engine: kiln_kernels::ConvEngine::Native,
            memory: None,
            metrics: kiln_telemetry::WorkerMetrics::default(),
            health: kiln_telemetry::Health::default(),
        }
    }
}

fn default_name(device: &ComputeDevice) -> String {
    kiln_proto::instance_name(&device.to_string().replace(':', ""))
}
