//! The long-running roles' arguments: `kiln worker`, `kiln aggregator`, `kiln scheduler`.

use std::time::Duration;

use clap::Args;

use super::values::{
    ack_wait, at_least_one, device, duration, either, host_port, period, period_ms, served_class,
    slowdown, worker_name,
};

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Device to run jobs on: cpu, cuda, cuda:N, or auto (CUDA when present, else CPU).
    #[arg(long, env = "KILN_DEVICE", default_value = "auto", value_parser = device)]
    pub device: String,
    /// Worker name reported in result events (default: host-device-pid-RANDOM, unique per process).
    #[arg(long, env = "KILN_WORKER_NAME", value_parser = worker_name)]
    pub name: Option<String>,
    /// Jobs held at once: computing, waiting for a compute slot, or publishing results.
    #[arg(long, env = "KILN_MAX_IN_FLIGHT", default_value_t = 256, value_parser = at_least_one::<usize>)]
    pub max_in_flight: usize,
    /// Threads for the worker's messages (pulling, decoding, answering); compute runs on
    /// threads of its own. One keeps a job on one thread from delivery to answer, which is
    /// fastest per job; give more to take more than about 30,000 small jobs a second.
    #[arg(long, env = "KILN_ASYNC_THREADS", default_value_t = 1, value_parser = at_least_one::<usize>)]
    pub async_threads: usize,
    /// Work to hold beyond the compute slots, in ms of compute at the recent pace of this
    /// worker's jobs: small jobs are pulled ahead, long ones are left for idle workers (0:
    /// one job per compute slot).
    #[arg(long, env = "KILN_PREFETCH_MS", default_value_t = 100)]
    pub prefetch_ms: u64,
    /// Jobs computing at once (default: CPU cores for cpu, 2 for cuda).
    #[arg(long, env = "KILN_COMPUTE_SLOTS", value_parser = at_least_one::<usize>)]
    pub compute_slots: Option<usize>,
    /// How long a small job that can share one launch with others of its kind waits for them
    /// (dynamic batching; vector_add up to 2^20 elements): the most it delays a lone job.
    /// 0 runs every job alone. Default: 1ms for cuda, 0 for cpu.
    #[arg(long, env = "KILN_BATCH_WINDOW", value_parser = humantime::parse_duration)]
    pub batch_window: Option<std::time::Duration>,
    /// The most jobs one shared launch takes.
    #[arg(long, env = "KILN_BATCH_MAX_JOBS", default_value_t = 256, value_parser = at_least_one::<usize>)]
    pub batch_max_jobs: usize,
    /// Most tensor elements one job may hold, inputs and output together (default 2^28, 1 GiB
    /// of f32); bigger jobs fail with too_large.
    #[arg(long, env = "KILN_MAX_ELEMENTS", value_parser = at_least_one::<u64>)]
    pub max_elements: Option<u64>,
    /// MiB of tensors this worker's jobs may hold together (default: 80% of host memory or
    /// of the container's limit for cpu, 85% of the GPU's memory for cuda). A job needing
    /// more fails with too_large before anything is allocated; jobs that fit wait their turn.
    #[arg(long, env = "KILN_MAX_MEMORY_MB", value_parser = at_least_one::<u64>)]
    pub max_memory_mb: Option<u64>,
    /// How long a graceful shutdown waits for running jobs before handing them back
    /// [default: 30s].
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,
    /// --drain-timeout in seconds (the older spelling).
    #[arg(
        long,
        env = "KILN_DRAIN_TIMEOUT_S",
        conflicts_with = "drain_timeout",
        value_name = "SECONDS"
    )]
    pub drain_timeout_s: Option<u64>,
    /// How long a job may go without an ack or progress ack before it is redelivered, when
    /// this worker creates its consumer (an existing consumer's own ack wait is followed)
    /// [default: 30s].
    #[arg(long, value_parser = ack_wait, value_name = "DURATION")]
    pub ack_wait: Option<Duration>,
    /// --ack-wait in seconds (the older spelling).
    #[arg(
        long,
        env = "KILN_ACK_WAIT_S",
        conflicts_with = "ack_wait",
        value_name = "SECONDS",
        value_parser = at_least_one::<u64>
    )]
    pub ack_wait_s: Option<u64>,
    /// Serve another class's consumer than the device's own (`gpu` from a CPU worker): with
    /// --slowdown, simulates a second device class on a machine without a GPU.
    #[arg(long, env = "KILN_SERVE_CLASS", value_parser = served_class)]
    pub serve_class: Option<kiln_proto::DeviceClass>,
    /// Simulation: make each job take this many times its real compute time (1 = off).
    #[arg(long, env = "KILN_SLOWDOWN", default_value_t = 1.0, value_parser = slowdown)]
    pub slowdown: f64,
    /// Simulation: time added to every job (a GPU's launch and transfer cost) [default: 0s].
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub sim_overhead: Option<Duration>,
    /// --sim-overhead in milliseconds (the older spelling; fractions allowed).
    #[arg(
        long,
        env = "KILN_SIM_OVERHEAD_MS",
        conflicts_with = "sim_overhead",
        value_name = "MS"
    )]
    pub sim_overhead_ms: Option<f64>,
    /// Skip the GPU warm-up (JIT and autotune of each kind's typical sizes before the first job).
    #[arg(long, env = "KILN_NO_WARMUP")]
    pub no_warmup: bool,
    /// Directory for the GPU autotune results and compiled kernels, kept across restarts
    /// (default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long, env = "KILN_CACHE_DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// What matmul jobs (and vector_add jobs on CUDA) run on: blas, the device's BLAS loaded at
    /// run time (cuBLAS on CUDA, with f32 matmul jobs in true f32; OpenBLAS on the CPU, from
    /// $KILN_OPENBLAS or libopenblas.so.0), falling back to burn with a log line where it cannot
    /// be loaded; or burn (Burn's kernels; on CUDA matmul's f32 at TF32-like precision).
    #[arg(long, env = "KILN_MATMUL_ENGINE", default_value = "blas", value_parser = ["blas", "burn"])]
    pub matmul_engine: String,
    /// What conv2d jobs run on: native (on CUDA workers NVIDIA's cuDNN 9, loaded at run time,
    /// with f32 jobs in true f32, falling back to burn with a log line where it cannot be
    /// loaded; on CPU workers kiln's direct depthwise loop on every core); or burn (Burn's
    /// kernels; on CUDA f32 at TF32-like precision). cudnn, its former name, means native.
    #[arg(long = "conv2d-engine", env = "KILN_CONV2D_ENGINE", default_value = "native", value_parser = ["native", "cudnn", "burn"])]
    pub conv_engine: String,
    /// Serve Prometheus /metrics, /healthz and /readyz on this HOST:PORT (off when unset).
    #[arg(long, env = "KILN_METRICS_ADDR", value_name = "HOST:PORT", value_parser = host_port)]
    pub metrics_addr: Option<String>,
}

impl WorkerArgs {
    /// --drain-timeout, or --drain-timeout-s, or 30 s.
    pub fn drain_timeout(&self) -> Duration {
        either(
            self.drain_timeout,
            self.drain_timeout_s.map(Duration::from_secs),
            Duration::from_secs(30),
        )
    }

    /// --sim-overhead, or --sim-overhead-ms; `None` when that is negative or not a number.
    pub fn sim_overhead(&self) -> Option<Duration> {
        match (self.sim_overhead, self.sim_overhead_ms) {
            (Some(d), _) => Some(d),
            (None, Some(ms)) => Duration::try_from_secs_f64(ms / 1000.0).ok(),
            (None, None) => Some(Duration::ZERO),
        }
    }

    /// --ack-wait, or --ack-wait-s, or 30 s.
    pub fn ack_wait(&self) -> Duration {
        either(
            self.ack_wait,
            self.ack_wait_s.map(Duration::from_secs),
            Duration::from_secs(30),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct AggregatorArgs {
    /// Time between metrics snapshots [default: 1s].
    #[arg(long, value_parser = period, value_name = "DURATION")]
    pub interval: Option<Duration>,
    /// --interval in milliseconds (the older spelling).
    #[arg(
        long,
        env = "KILN_SNAPSHOT_INTERVAL_MS",
        conflicts_with = "interval",
        value_parser = period_ms,
        value_name = "MS"
    )]
    pub interval_ms: Option<u64>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this HOST:PORT (off when unset).
    #[arg(long, env = "KILN_METRICS_ADDR", value_name = "HOST:PORT", value_parser = host_port)]
    pub metrics_addr: Option<String>,
    /// Threads for the aggregator's messages; one folds each result on the thread that read
    /// it.
    #[arg(long, env = "KILN_ASYNC_THREADS", default_value_t = 1, value_parser = at_least_one::<usize>)]
    pub async_threads: usize,
}

impl AggregatorArgs {
    /// --interval, or --interval-ms, or 1 s.
    pub fn interval(&self) -> Duration {
        let old = self.interval_ms.map(Duration::from_millis);
        either(self.interval, old, Duration::from_secs(1))
    }
}

#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Name recorded in routing decisions (default: host-scheduler-pid-xxxx, four random hex
    /// digits).
    #[arg(long, env = "KILN_SCHEDULER_NAME")]
    pub name: Option<String>,
    /// Time between re-reads of each class's backlog and live workers [default: 250ms].
    #[arg(long, value_parser = period, value_name = "DURATION")]
    pub refresh: Option<Duration>,
    /// --refresh in milliseconds (the older spelling).
    #[arg(
        long,
        env = "KILN_SCHEDULER_REFRESH_MS",
        conflicts_with = "refresh",
        value_parser = period_ms,
        value_name = "MS"
    )]
    pub refresh_ms: Option<u64>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this HOST:PORT (off when unset).
    #[arg(long, env = "KILN_METRICS_ADDR", value_name = "HOST:PORT", value_parser = host_port)]
    pub metrics_addr: Option<String>,
}

impl SchedulerArgs {
    /// --refresh, or --refresh-ms, or 250 ms.
    pub fn refresh(&self) -> Duration {
        let old = self.refresh_ms.map(Duration::from_millis);
        either(self.refresh, old, Duration::from_millis(250))
    }
}
