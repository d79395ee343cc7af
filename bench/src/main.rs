//! `kiln-bench`: kiln's benchmarks, apart from the product. Each prints ratios measured in the
//! same run (kiln against the raw JetStream ceiling, GPU against CPU, kiln's kernels against
//! numpy and PyTorch) and writes them as JSON, CSV and SVG charts; `suite` runs them all and
//! writes `bench/results/<date>/report.md`. `kiln bench …` runs this binary.
//!
//! Parts that need separate worker processes start the `kiln` binary: `KILN_BIN`, else the
//! `kiln` beside this binary (cargo builds both into the same folder), else `kiln` on PATH.

mod batching;
mod cli;
mod cpu;
mod kernels;
mod latency;
mod machine;
mod pipeline;
mod roles;
mod scheduler;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{BenchKind, Cli};

// The pipeline benchmark runs workers in this process: the same allocator as `kiln worker`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli.nats.resolve() {
        eprintln!("kiln-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln-bench: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln-bench: {e:#}");
            ExitCode::FAILURE
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let nats = &cli.nats;
    match cli.which {
        BenchKind::Pipeline(args) => pipeline::run(nats, args).await,
        BenchKind::Latency(args) => latency::run(nats, args).await,
        BenchKind::Batching(args) => batching::run(nats, args).await,
        BenchKind::Scheduler(args) => scheduler::run(nats, args).await,
        BenchKind::Kernels(args) => tokio::task::spawn_blocking(move || kernels::run(args)).await?,
        BenchKind::Suite(args) => suite::run(nats, args).await,
    }
}

/// A private nats-server with JetStream in a temporary directory, and the arguments pointing
/// at it.
fn private_server(
    nats: &kiln_cli::cli::NatsArgs,
) -> anyhow::Result<(kiln_testkit::NatsServer, kiln_cli::cli::NatsArgs)> {
    let server = kiln_testkit::NatsServer::try_start(&[]).map_err(anyhow::Error::msg)?;
    let mut nats = nats.clone();
    nats.nats_url = server.url();
    Ok((server, nats))
}

/// The server a benchmark runs against: the one `nats` names when `external`, else a private
/// one, kept running as long as the returned handle lives.
fn bench_server(
    nats: &kiln_cli::cli::NatsArgs,
    external: bool,
) -> anyhow::Result<(Option<kiln_testkit::NatsServer>, kiln_cli::cli::NatsArgs)> {
    if external {
        return Ok((None, nats.clone()));
    }
    let (server, nats) = private_server(nats)?;
    Ok((Some(server), nats))
}

/// Write `value` as pretty JSON to `path`, making its folder first (`--json`, the suite's
/// files).
fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The `kiln` binary that worker processes are started from: `KILN_BIN`, the `kiln` beside
/// this binary, or `kiln` on PATH.
fn kiln_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("kiln")))
        .filter(|path| path.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("kiln"))
                .find(|path| path.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        anyhow::anyhow!(
            "no kiln binary to start workers from: build it (cargo build --release -p kiln-cli) \
             or set KILN_BIN to it"
        )
    })
}
