//! `kiln worker`, `kiln aggregator` and `kiln scheduler`: the long-running roles.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kiln_kernels::ComputeDevice;
use tracing::Level;

use crate::cli::{AggregatorArgs, NatsArgs, SchedulerArgs, WorkerArgs};

/// Parse `cpu`, `cuda`, `cuda:N` or `auto` into a device, checking CUDA before touching it.
pub fn parse_device(spec: &str) -> anyhow::Result<ComputeDevice> {
    let cuda_count = kiln_kernels::cuda_device_count();
    match spec {
        "cpu" => Ok(ComputeDevice::Cpu),
        "auto" if cuda_count > 0 => Ok(ComputeDevice::Cuda(0)),
        "auto" => {
            tracing::info!("no CUDA device found (libcuda and /dev/nvidia*); using the CPU");
            Ok(ComputeDevice::Cpu)
        }
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let index = match cuda.strip_prefix("cuda:") {
                Some(i) => i.parse::<usize>().with_context(|| {
                    format!("device {cuda:?}: the index after cuda: must be a number")
                })?,
                None => 0,
            };
            if cuda_count == 0 {
                anyhow::bail!(
                    "--device {cuda}: no CUDA device found on this machine (need libcuda.so.1 and \
                     /dev/nvidia*); use --device cpu or --device auto"
                );
            }
            if index >= cuda_count {
                anyhow::bail!(
                    "--device {cuda}: this machine has {cuda_count} CUDA device(s), 0 to {}",
                    cuda_count - 1
                );
            }
            Ok(ComputeDevice::Cuda(index))
        }
        other => anyhow::bail!("unknown device {other:?}: use cpu, cuda, cuda:N or auto"),
    }
}

pub fn worker_config(
    args: &WorkerArgs,
    nats: &NatsArgs,
) -> anyhow::Result<kiln_worker::WorkerConfig> {
    let device = parse_device(&args.device)?;
    let mut config = kiln_worker::WorkerConfig::new(device);
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    config.max_in_flight = args.max_in_flight.max(1);
    config.prefetch = Duration::from_millis(args.prefetch_ms);
    if let Some(slots) = args.compute_slots {
        config.compute_slots = slots.max(1);
    }
    if let Some(window) = args.batch_window {
        config.batch_window = window;
    }
    config.batch_max_jobs = args.batch_max_jobs;
    if let Some(mib) = args.max_memory_mb {
        config.memory = Some(kiln_kernels::MemoryBudget::configured(mib));
    }
    if let Some(max) = args.max_elements {
        config.limits.max_elements = max;
    }
    config.drain_timeout = args.drain_timeout();
    config.warmup = !args.no_warmup;
    // Never `auto`: the flag's parser refuses it.
    if let Some(class) = args.serve_class {
        config.class = class;
    }
    // From 1 to 1000: the flag's parser refuses the rest.
    config.slowdown = args.slowdown;
    config.sim_overhead = args.sim_overhead().with_context(|| {
        format!(
            "--sim-overhead-ms {}: use 0 (off) or more",
            args.sim_overhead_ms.unwrap_or_default()
        )
    })?;
    if let Some(dir) = &args.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    config.matmul_engine = args
        .matmul_engine
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--matmul-engine: {e}"))?;
    config.conv_engine = args
        .conv_engine
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--conv2d-engine: {e}"))?;
    config.topology = super::topology(nats);
    config.topology.ack_wait = args.ack_wait();
    Ok(config)
}

pub async fn worker(nats: &NatsArgs, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = worker_config(&args, nats)?;
    config.metrics.zeroed(&kiln_kernels::kind_names());
    let _endpoint = super::metrics::serve(
        args.metrics_addr.as_deref(),
        "worker",
        &config.health,
        |r| {
            config.metrics.register(
                r,
                &config.name,
                &config.device.to_string(),
                config.class.as_str(),
            )
        },
    )
    .await?;
    let client = kiln_client::connect_and_wait(&nats.connect_options()).await?;
    let stopped = kiln_worker::run(client.clone(), config, crate::signal::shutdown()).await;
    // The acks of the last jobs may still sit in the client's write buffer: send them before
    // the process exits, or those jobs come back after the ack wait and run again.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    // A drain that runs past its timeout hands the jobs still running back: that is how a
    // worker stops gracefully (a rolling restart), not a failure of the process.
    if let Err(
        e @ kiln_worker::Error::DrainTimeout {
            running,
            handed_back,
            ..
        },
    ) = &stopped
    {
        let rest = match running.saturating_sub(*handed_back) {
            0 => String::new(),
            n => format!(
                " (the other {n}: answered as they finished, retried as a failed attempt where \
                 no copy could be stored (the queue full, or the server unreachable), or, still \
                 loading or storing their data, back after the ack wait)"
            ),
        };
        crate::log::say(Level::INFO, &format!("worker stopped: {e}{rest}"));
        return Ok(ExitCode::SUCCESS);
    }
    let stats = stopped?;
    crate::log::say(
        Level::INFO,
        &format!(
            "worker stopped: {} succeeded, {} failed, {} handed back for retry, {} handed back \
             unfinished",
            stats.succeeded, stats.failed, stats.retried, stats.handed_back
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn aggregator(nats: &NatsArgs, args: AggregatorArgs) -> anyhow::Result<ExitCode> {
    let config = kiln_aggregator::AggregatorConfig {
        interval: args.interval().max(Duration::from_millis(10)),
        topology: super::topology(nats),
        ..Default::default()
    };
    let errors = kiln_proto::ErrorKind::ALL.map(kiln_proto::ErrorKind::as_str);
    config.metrics.zeroed(&kiln_kernels::kind_names(), &errors);
    let _endpoint = super::metrics::serve(
        args.metrics_addr.as_deref(),
        "aggregator",
        &config.health,
        |r| config.metrics.register(r),
    )
    .await?;
    let client = kiln_client::connect_and_wait(&nats.connect_options()).await?;
    kiln_aggregator::run(client, config, crate::signal::shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn scheduler(nats: &NatsArgs, args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| kiln_proto::instance_name("scheduler"));
    let mut config = kiln_scheduler::SchedulerConfig::new(name);
    config.topology = super::topology(nats);
    config.refresh = args.refresh().max(Duration::from_millis(10));
    let _endpoint = super::metrics::serve(
        args.metrics_addr.as_deref(),
        "scheduler",
        &config.health,
        |r| config.metrics.register(r),
    )
    .await?;
    let client = kiln_client::connect_and_wait(&nats.connect_options()).await?;
    let stats = kiln_scheduler::run(client, config, crate::signal::shutdown()).await?;
    crate::log::say(
        Level::INFO,
        &format!(
            "scheduler stopped: {} job(s) routed to gpu, {} to cpu",
            stats.routed_gpu, stats.routed_cpu
        ),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    /// `worker_config` for `kiln worker --device cpu` and `flags`.
    fn config(flags: &[&str]) -> anyhow::Result<kiln_worker::WorkerConfig> {
        let args = [&["kiln", "worker", "--device", "cpu"][..], flags].concat();
        let cli = Cli::try_parse_from(args).expect("the flags parse");
        let Command::Worker(worker) = &cli.command else {
            unreachable!("a worker command")
        };
        super::worker_config(worker, &cli.nats)
    }

    #[test]
    fn slowdown_is_a_factor_from_one_to_a_thousand() {
        for ok in ["1", "2.5", "1000"] {
            let config = config(&["--slowdown", ok]).unwrap();
            assert_eq!(config.slowdown, ok.parse::<f64>().unwrap());
        }
        // 1e308 passed every check and made every job's compute panic converting the
        // simulated time to a Duration.
        // Refused as every other bad flag is: a usage error, exit status 2.
        for bad in ["0", "0.5", "NaN", "inf", "1000.5", "1e308", "x"] {
            let args = ["kiln", "worker", "--device", "cpu", "--slowdown", bad];
            let error = Cli::try_parse_from(args).map(|_| ()).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}"
            );
            assert_eq!(error.exit_code(), 2);
            let message = error.to_string();
            assert!(
                message.contains("--slowdown") && message.contains("from 1 (off) to 1000"),
                "{bad}: {message}"
            );
        }
    }
}
