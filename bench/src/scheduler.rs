//! `kiln-bench scheduler`: one mixed workload (many small jobs, a few large ones) under three
//! policies — always GPU, always CPU, kiln's scheduler — in the same run, compared by makespan
//! and mean completion time.
//!
//! On a machine without a GPU both classes are CPU workers: the "gpu" worker serves the GPU
//! consumer and adds a fixed delay per job (a GPU's launch and transfer cost), the "cpu" worker
//! takes a multiple of its real compute time. Small jobs are then cheaper on the cpu class and
//! large ones on the gpu class, which is the situation the scheduler is for.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, ResultEvent, streams};
use serde::Serialize;
use serde_json::json;

use crate::cli::SchedulerBenchArgs;
use kiln_cli::cli::NatsArgs;
use kiln_cli::cmd::roles::LocalRoles;
use kiln_cli::cmd::submit::progress_bar;
use kiln_client::{JobSpec, ResultCollector, publish_all};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PolicyRun {
    pub policy: &'static str,
    pub jobs: usize,
    pub makespan_ms: f64,
    pub mean_completion_ms: f64,
    pub to_gpu: usize,
    pub to_cpu: usize,
}

/// What `kiln-bench scheduler` measures (also a part of `kiln-bench suite`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub machine: String,
    pub simulated: String,
    pub small_jobs: u64,
    pub large_jobs: u64,
    pub runs: Vec<PolicyRun>,
    pub makespan_ratio_vs_always_gpu: f64,
    pub makespan_ratio_vs_always_cpu: f64,
    pub mean_completion_ratio_vs_always_gpu: f64,
    pub mean_completion_ratio_vs_always_cpu: f64,
}

pub async fn run(nats: &NatsArgs, args: SchedulerBenchArgs) -> anyhow::Result<ExitCode> {
    let report = measure(nats, &args, true).await?;
    println!();
    println!(
        "{:<16} {:>6} {:>13} {:>20} {:>7} {:>7}",
        "policy", "jobs", "makespan ms", "mean completion ms", "to gpu", "to cpu"
    );
    for r in &report.runs {
        println!(
            "{:<16} {:>6} {:>13.1} {:>20.1} {:>7} {:>7}",
            r.policy, r.jobs, r.makespan_ms, r.mean_completion_ms, r.to_gpu, r.to_cpu
        );
    }
    println!(
        "\nkiln scheduler / always gpu: makespan {:.3}, mean completion {:.3}\nkiln scheduler / always cpu: makespan {:.3}, mean completion {:.3}  (below 1: the scheduler is faster)",
        report.makespan_ratio_vs_always_gpu,
        report.mean_completion_ratio_vs_always_gpu,
        report.makespan_ratio_vs_always_cpu,
        report.mean_completion_ratio_vs_always_cpu
    );
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
        let svg = path.with_extension("svg");
        std::fs::write(&svg, chart(&report.runs))
            .with_context(|| format!("writing {}", svg.display()))?;
        println!(
            "figures written to {} and {}",
            path.display(),
            svg.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The three policies on one private server, in one run; `verbose` prints the set-up.
pub(crate) async fn measure(
    nats: &NatsArgs,
    args: &SchedulerBenchArgs,
    verbose: bool,
) -> anyhow::Result<Report> {
    let (server, nats) = crate::private_server(nats)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    let topology = kiln_cli::cmd::topology(&nats);
    streams::ensure_all(&js, &topology).await?;
    let roles = start_roles(&client, &topology, args);
    // Let the heartbeats land, then teach the scheduler both classes with a few explicit jobs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut collector = ResultCollector::subscribe(&client, None, &[]).await?;
    for class in [DeviceClass::Gpu, DeviceClass::Cpu] {
        let jobs = workload(&format!("teach-{class}"), class, 10, 5)?;
        run_jobs(&js, &mut collector, jobs, "teaching").await?;
    }

    let simulated = format!(
        "both classes on the CPU: the gpu class adds {} ms per job, the cpu class takes {}x its compute time",
        args.gpu_overhead_ms, args.cpu_slowdown
    );
    if verbose {
        println!("machine: {}", crate::machine::describe_machine());
        println!("simulated: {simulated}");
        println!(
            "workload: {} vector_add (len 4096) and {} matmul (n 384), all submitted at once",
            args.small, args.large
        );
    }
    let mut runs = Vec::new();
    for (policy, class) in [
        ("always gpu", DeviceClass::Gpu),
        ("always cpu", DeviceClass::Cpu),
        ("kiln scheduler", DeviceClass::Auto),
    ] {
        runs.push(run_policy(&js, &mut collector, policy, class, args).await?);
    }
    roles.stop().await?;
    let report = Report::compare(simulated, args, runs);
    drop(server);
    Ok(report)
}

/// The two simulated classes and a scheduler, in this process.
fn start_roles(
    client: &async_nats::Client,
    topology: &kiln_proto::Topology,
    args: &SchedulerBenchArgs,
) -> LocalRoles {
    let mut roles = LocalRoles::default();
    for (name, class, slowdown, overhead_ms) in [
        ("sim-gpu", DeviceClass::Gpu, 1.0, args.gpu_overhead_ms),
        ("sim-cpu", DeviceClass::Cpu, args.cpu_slowdown, 0.0),
    ] {
        let mut config = kiln_worker::WorkerConfig::new(ComputeDevice::Cpu);
        config.name = name.into();
        config.class = class;
        config.slowdown = slowdown;
        config.sim_overhead = Duration::from_secs_f64(overhead_ms / 1000.0);
        config.compute_slots = 1;
        config.max_in_flight = 16;
        config.topology = topology.clone();
        roles.worker(client, config);
    }
    let mut scheduler = kiln_scheduler::SchedulerConfig::new("bench-scheduler".into());
    scheduler.topology = topology.clone();
    scheduler.refresh = Duration::from_millis(50);
    roles.scheduler(client, scheduler);
    roles
}

/// The workload submitted to `class` under `policy`: its makespan, mean completion time
/// (from the first submit) and where its jobs ran.
async fn run_policy(
    js: &jetstream::Context,
    collector: &mut ResultCollector,
    policy: &'static str,
    class: DeviceClass,
    args: &SchedulerBenchArgs,
) -> anyhow::Result<PolicyRun> {
    let tag = format!("{}-{}", policy.replace(' ', "-"), kiln_proto::new_job_id());
    let jobs = workload(&tag, class, args.small, args.large)?;
    let count = jobs.len();
    let (makespan, results) = run_jobs(js, collector, jobs, policy).await?;
    let submitted = results.first_submit;
    let mean = results
        .events
        .iter()
        .map(|e| ((e.finished_at - submitted).as_seconds_f64() * 1000.0).max(0.0))
        .sum::<f64>()
        / count as f64;
    let to_gpu = results
        .events
        .iter()
        .filter(|e| e.class == DeviceClass::Gpu)
        .count();
    Ok(PolicyRun {
        policy,
        jobs: count,
        makespan_ms: makespan.as_secs_f64() * 1000.0,
        mean_completion_ms: mean,
        to_gpu,
        to_cpu: count - to_gpu,
    })
}

impl Report {
    /// The scheduler's run against the two static policies'.
    fn compare(simulated: String, args: &SchedulerBenchArgs, runs: Vec<PolicyRun>) -> Self {
        let by = |p: &str| {
            runs.iter()
                .find(|r| r.policy == p)
                .expect("every policy ran")
        };
        let (gpu, cpu, kiln) = (by("always gpu"), by("always cpu"), by("kiln scheduler"));
        let report = Report {
            machine: crate::machine::describe_machine(),
            simulated,
            small_jobs: args.small,
            large_jobs: args.large,
            makespan_ratio_vs_always_gpu: kiln.makespan_ms / gpu.makespan_ms,
            makespan_ratio_vs_always_cpu: kiln.makespan_ms / cpu.makespan_ms,
            mean_completion_ratio_vs_always_gpu: kiln.mean_completion_ms / gpu.mean_completion_ms,
            mean_completion_ratio_vs_always_cpu: kiln.mean_completion_ms / cpu.mean_completion_ms,
            runs: Vec::new(),
        };
        Report { runs, ..report }
    }
}

/// `small` vector adds and `large` matmuls, interleaved, for `class`.
fn workload(tag: &str, class: DeviceClass, small: u64, large: u64) -> anyhow::Result<Vec<JobSpec>> {
    let add = kiln_kernels::find("vector_add").context("vector_add is registered")?;
    let matmul = kiln_kernels::find("matmul").context("matmul is registered")?;
    let total = small + large;
    let every = total.checked_div(large).map_or(u64::MAX, |e| e.max(1));
    let mut left_large = large;
    (0..total)
        .map(|i| {
            let id = format!("{tag}-{i}");
            if left_large > 0 && i % every == 0 {
                left_large -= 1;
                JobSpec::new(matmul, class, json!({"n": 384}), id, i, None, Codec::Json)
            } else {
                JobSpec::new(add, class, json!({"len": 4096}), id, i, None, Codec::Json)
            }
        })
        .collect::<kiln_client::Result<_>>()
        .map_err(Into::into)
}

struct Collected {
    first_submit: time::OffsetDateTime,
    events: Vec<ResultEvent>,
}

/// Publish `jobs` at once and wait for all their results; returns the makespan.
async fn run_jobs(
    js: &jetstream::Context,
    collector: &mut ResultCollector,
    jobs: Vec<JobSpec>,
    what: &str,
) -> anyhow::Result<(Duration, Collected)> {
    let ids: HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let count = ids.len();
    let bar = progress_bar(count as u64, what);
    let first_submit = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    publish_all(js, jobs, true, || {}).await?;
    let results = collector
        .collect(ids, Duration::from_secs(600), |_| bar.inc(1))
        .await;
    let makespan = started.elapsed();
    bar.finish_and_clear();
    anyhow::ensure!(
        results.len() == count,
        "{what}: {} of {count} results arrived",
        results.len()
    );
    Ok((
        makespan,
        Collected {
            first_submit,
            events: results.into_values().collect(),
        },
    ))
}

/// A grouped bar chart (makespan and mean completion per policy) as SVG.
pub(crate) fn chart(runs: &[PolicyRun]) -> String {
    let max = runs
        .iter()
        .flat_map(|r| [r.makespan_ms, r.mean_completion_ms])
        .fold(1.0f64, f64::max);
    let (w, h, left, bottom, top) = (640.0, 360.0, 70.0, 60.0, 40.0);
    let plot_h = h - bottom - top;
    let group = (w - left - 20.0) / runs.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">Mixed workload: makespan and mean completion by policy</text>"##,
        w / 2.0
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = h - bottom - plot_h * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v:.0}</text>"##,
            w - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">milliseconds</text>"##,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (i, r) in runs.iter().enumerate() {
        let x0 = left + group * i as f64 + group * 0.15;
        let bw = group * 0.33;
        for (j, (v, color)) in [
            (r.makespan_ms, "#4c72b0"),
            (r.mean_completion_ms, "#dd8452"),
        ]
        .into_iter()
        .enumerate()
        {
            let bh = plot_h * v / max;
            let x = x0 + j as f64 * bw;
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{}" width="{}" height="{bh}" fill="{color}"/><text x="{}" y="{}" text-anchor="middle" font-size="10">{v:.0}</text>"##,
                h - bottom - bh,
                bw - 4.0,
                x + bw / 2.0 - 2.0,
                h - bottom - bh - 4.0
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            x0 + bw,
            h - bottom + 18.0,
            r.policy
        );
    }
    let ly = h - 18.0;
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{}" width="12" height="12" fill="#4c72b0"/><text x="{}" y="{ly}">makespan</text><rect x="{}" y="{}" width="12" height="12" fill="#dd8452"/><text x="{}" y="{ly}">mean completion time</text></svg>"##,
        ly - 10.0,
        left + 16.0,
        left + 110.0,
        ly - 10.0,
        left + 126.0
    );
    svg
}
