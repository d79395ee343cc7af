//! Command-line arguments of `kiln-bench` (also reached as `kiln-bench …`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_cli::cli::NatsArgs;

/// kiln's benchmarks: ratios measured in the same run, written as tables, JSON, CSV and charts.
#[derive(Debug, Parser)]
#[command(name = "kiln-bench", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub which: BenchKind,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchKind {
    /// Small vector_add jobs end to end (submit → worker → result → aggregator), as a ratio
    /// of the raw JetStream ceiling measured in the same run.
    Pipeline(PipelineArgs),
    /// One tiny job at a time (vector_add of 16 inline floats) from an external client,
    /// through `kiln worker` and `kiln aggregator` processes: p50/p90/p99/max against the raw
    /// JetStream round trip of the same shape measured in the same run.
    Latency(LatencyArgs),
    /// Small vector_add jobs on one worker with dynamic batching off and on: burst
    /// throughput and lone-job latency, in the same run.
    Batching(BatchingArgs),
    /// A mixed workload under three policies — always GPU, always CPU, kiln's scheduler —
    /// by makespan and mean completion time; simulated classes on machines without a GPU.
    Scheduler(SchedulerBenchArgs),
    /// Device-side kernel timings (matmul, vector add, conv2d, an Adam step, small jobs),
    /// compared with PyTorch by bench/scripts/torch_reference.py.
    Kernels(KernelsArgs),
    /// The whole suite in one run: kernels on every backend (GPU vs CPU), CPU matmul vs numpy,
    /// the pipeline vs the JetStream ceiling, communication overhead, scaling with workers
    /// and the scheduler; writes JSON, CSV, SVG charts and report.md.
    Suite(SuiteArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Folder for the report and its files (default: bench/results/<UTC date>).
    #[arg(long, env = "KILN_BENCH_OUT")]
    pub out: Option<PathBuf>,
    /// Tiny sizes and few jobs: a smoke run of every part in about a minute.
    #[arg(long, env = "KILN_BENCH_QUICK")]
    pub quick: bool,
    /// Leave the GPU out even where CUDA is present.
    #[arg(long, env = "KILN_BENCH_NO_GPU")]
    pub no_gpu: bool,
    /// Worker processes to measure throughput with, comma-separated.
    #[arg(
        long,
        env = "KILN_BENCH_WORKERS",
        value_delimiter = ',',
        default_value = "1,2,4"
    )]
    pub workers: Vec<usize>,
    /// The numpy reference script (its part is skipped when it, python or numpy is missing).
    #[arg(
        long,
        env = "KILN_BENCH_NUMPY_SCRIPT",
        default_value = "bench/scripts/numpy_reference.py"
    )]
    pub numpy_script: PathBuf,
    /// The PyTorch side of the original sizes' table (skipped when it, python or torch is
    /// missing).
    #[arg(
        long,
        env = "KILN_BENCH_TORCH_SCRIPT",
        default_value = "bench/scripts/torch_jobs.py"
    )]
    pub torch_script: PathBuf,
    /// Python interpreter for the numpy and PyTorch references.
    #[arg(long, env = "KILN_BENCH_PYTHON", default_value = "python3")]
    pub python: String,
    /// Rewrite the part of this markdown file between `<!-- bench:start -->` and
    /// `<!-- bench:end -->` with the run's headline tables and charts (`just bench` passes
    /// docs/BENCHMARKS.md; not with --quick).
    #[arg(long, env = "KILN_BENCH_README")]
    pub readme: Option<PathBuf>,
    /// The parts to run, comma-separated (default: all of them); the README is not rewritten
    /// unless every part ran.
    #[arg(
        long,
        env = "KILN_BENCH_PARTS",
        value_enum,
        value_delimiter = ',',
        default_value = "kernels,numpy,original,pipeline,overhead,data,scaling,scheduler"
    )]
    pub parts: Vec<SuitePart>,
    /// Seconds the original sizes' part may take (kiln's jobs and PyTorch's together): it
    /// starts no case past its share of them and reports the cases it did not reach, so that
    /// a run under an outer time limit (`just gpu-check`) still writes its report.
    #[arg(long, env = "KILN_BENCH_ORIGINAL_LIMIT_S")]
    pub original_limit_s: Option<u64>,
}

/// One part of `kiln-bench suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuitePart {
    Kernels,
    Numpy,
    /// GPU vs CPU at the original system's sizes, end to end and compute, beside PyTorch.
    Original,
    Pipeline,
    Overhead,
    Data,
    Scaling,
    Scheduler,
}

#[derive(Debug, Clone, Args)]
pub struct KernelsArgs {
    /// Device to benchmark: cpu, cuda, cuda:N, or auto (CUDA when present, else CPU).
    #[arg(long, env = "KILN_BENCH_DEVICE", default_value = "auto")]
    pub device: String,
    /// Tiny sizes: a smoke test of every case in seconds.
    #[arg(long, env = "KILN_BENCH_QUICK")]
    pub quick: bool,
    /// Write the rows and the machine description as JSON to this file (rewritten after
    /// every case, so an interrupted run keeps what it measured).
    #[arg(long, env = "KILN_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Untimed iterations per case (they pay JIT compilation and autotune; default 3 on CUDA,
    /// 1 on the CPU).
    #[arg(long, env = "KILN_BENCH_WARMUP")]
    pub warmup: Option<u32>,
    /// Timed iterations per case, at most (default 20 on CUDA, 5 on the CPU, 3 with --quick;
    /// the small vector add runs 10 times as many).
    #[arg(long, env = "KILN_BENCH_ITERS")]
    pub iters: Option<u32>,
    /// Seconds of timed iterations after which a case stops early (after at least 3).
    #[arg(long, env = "KILN_BENCH_CASE_BUDGET_S", default_value_t = 3.0)]
    pub case_budget_s: f64,
    /// Run only the cases whose name contains this text (e.g. matmul, bf16, train).
    #[arg(long, env = "KILN_BENCH_FILTER")]
    pub filter: Option<String>,
    /// On CUDA: the directory of GPU autotune results and compiled kernels, shared with
    /// workers (default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln, as `kiln worker`).
    #[arg(long, env = "KILN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SchedulerBenchArgs {
    /// Small jobs (vector_add, len 4096).
    #[arg(long, default_value_t = 400)]
    pub small: u64,
    /// Large jobs (matmul, n 384).
    #[arg(long, default_value_t = 60)]
    pub large: u64,
    /// Simulated classes (both on the CPU): the "gpu" worker adds this many ms per job…
    #[arg(long, default_value_t = 2.0)]
    pub gpu_overhead_ms: f64,
    /// …and the "cpu" worker's compute takes this many times longer.
    #[arg(long, default_value_t = 8.0)]
    pub cpu_slowdown: f64,
    /// Write the figures as JSON to this file (a bar chart goes beside it as .svg).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BatchingArgs {
    /// The worker's device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Jobs in the burst published at once.
    #[arg(long, default_value_t = 5_000)]
    pub jobs: u64,
    /// Lone jobs sent one at a time after the burst.
    #[arg(long, default_value_t = 500)]
    pub lone: u64,
    /// Length of each vector_add.
    #[arg(long, default_value_t = 1024)]
    pub len: u64,
    /// The batch window of the batching side.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Jobs per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Length of each vector_add.
    #[arg(long, default_value_t = 1024)]
    pub len: u64,
    /// Runs of each side (the median is reported, with all runs in the JSON).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use the server at --nats-url instead of starting a private one.
    #[arg(long)]
    pub external: bool,
    /// The server's monitoring URL (e.g. http://127.0.0.1:8222, nats-server -m 8222): print
    /// the messages it moved per job on each side, from its `/varz` counters.
    #[arg(long)]
    pub varz: Option<String>,
    /// The pid of the --external server on this machine, to count its CPU per job on each
    /// side (a private server's is counted without it).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Jobs timed per side.
    #[arg(long, default_value_t = 2000)]
    pub jobs: u64,
    /// Untimed jobs per side first.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use the server at --nats-url instead of starting a private one.
    #[arg(long)]
    pub external: bool,
}
