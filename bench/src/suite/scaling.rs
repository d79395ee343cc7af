//! Scaling: throughput against the number of worker processes.
//!
//! For each count, that many `kiln worker --device cpu --compute-slots 1` processes (this
//! binary) serve one private nats-server, each limited to one compute thread
//! (`RAYON_NUM_THREADS=1`, `MATMUL_NUM_THREADS=1`, `OPENBLAS_NUM_THREADS=1`), so a worker is
//! one core's worth of compute. Two workloads run on each count, all jobs published at once: many small jobs
//! (bound by messaging) and compute-bound matmuls. Throughput is jobs / (first publish → last
//! result received).

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::ProgressBar;
use kiln_proto::{Codec, DeviceClass, streams};
use serde::Serialize;
use serde_json::json;

use kiln_cli::cli::NatsArgs;
use kiln_client::{JobSpec, ResultCollector, publish_all};

pub struct Workload {
    pub name: &'static str,
    pub kind: &'static str,
    pub params: serde_json::Value,
    pub jobs: u64,
}

pub fn workloads(quick: bool) -> Vec<Workload> {
    vec![
        Workload {
            name: "small jobs (vector_add, len 1024)",
            kind: "vector_add",
            params: json!({"len": 1024}),
            jobs: if quick { 200 } else { 40_000 },
        },
        Workload {
            name: if quick {
                "compute jobs (matmul, n 128)"
            } else {
                "compute jobs (matmul, n 512)"
            },
            kind: "matmul",
            params: json!({"n": if quick { 128 } else { 512 }}),
            jobs: if quick { 20 } else { 1000 },
        },
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    pub workload: &'static str,
    pub workers: usize,
    pub jobs: u64,
    pub seconds: f64,
    pub jobs_per_s: f64,
    /// jobs/s over the same workload's jobs/s with the fewest workers measured.
    pub relative: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub cores: usize,
    pub method: &'static str,
    pub rows: Vec<ScalingRow>,
}

pub const METHOD: &str = "N `kiln worker --device cpu --compute-slots 1` processes with one compute \
    thread each (RAYON_NUM_THREADS=1, MATMUL_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1) on one private nats-server; each \
    workload's jobs published at once; throughput = jobs / (first publish → last result received); \
    nats-server, the publisher and the workers share the machine's cores";

pub async fn measure(
    nats: &NatsArgs,
    quick: bool,
    counts: &[usize],
    bar: &ProgressBar,
) -> anyhow::Result<Section> {
    anyhow::ensure!(
        !counts.is_empty() && counts.iter().all(|&n| n > 0),
        "--workers needs one or more counts above 0, e.g. 1,2,4"
    );
    let (server, nats) = crate::private_server(nats)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    streams::ensure_all(&js, &kiln_cli::cmd::topology(&nats)).await?;
    let exe = crate::kiln_binary()?;
    let workloads = workloads(quick);
    bar.set_length(counts.len() as u64 * workloads.iter().map(|w| w.jobs).sum::<u64>());
    let mut collector = ResultCollector::subscribe(&client, None, &[]).await?;
    let run = kiln_proto::new_job_id();
    let mut rows: Vec<ScalingRow> = Vec::new();
    for &count in counts {
        bar.set_message(format!("starting {count} worker(s)"));
        let prefix = format!("scale-{run}-{count}-");
        let children = start_workers(&exe, &nats.nats_url, &prefix, count)?;
        wait_live(&js, &prefix, count).await?;
        for w in &workloads {
            bar.set_message(format!("{count} worker(s): {}", w.name));
            let seconds = timed_run(&js, &mut collector, w, &prefix, count, bar).await?;
            let jobs_per_s = w.jobs as f64 / seconds;
            let base = rows
                .iter()
                .find(|r| r.workload == w.name)
                .map_or(jobs_per_s, |r| r.jobs_per_s);
            rows.push(ScalingRow {
                workload: w.name,
                workers: count,
                jobs: w.jobs,
                seconds,
                jobs_per_s,
                relative: jobs_per_s / base,
            });
        }
        for mut child in children {
            // Every job is answered: nothing is lost by stopping them hard.
            let _ = child.kill().await;
        }
    }
    drop(server);
    Ok(Section {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        method: METHOD,
        rows,
    })
}

/// `count` worker processes named `<prefix><i>`, each with one compute thread.
fn start_workers(
    exe: &Path,
    nats_url: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<tokio::process::Child>> {
    let mut children = Vec::with_capacity(count);
    for i in 0..count {
        let child = tokio::process::Command::new(exe)
            .args(["worker", "--device", "cpu", "--compute-slots", "1"])
            .args(["--no-warmup", "--name", &format!("{prefix}{i}")])
            .env("NATS_URL", nats_url)
            .env("RUST_LOG", "warn")
            .env("RAYON_NUM_THREADS", "1")
            .env("MATMUL_NUM_THREADS", "1")
            .env("OPENBLAS_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        children.push(child);
    }
    Ok(children)
}

/// Publish the workload's jobs at once and wait for every result from the `count` workers:
/// seconds from the first publish to the last result.
async fn timed_run(
    js: &jetstream::Context,
    collector: &mut ResultCollector,
    w: &Workload,
    prefix: &str,
    count: usize,
    bar: &ProgressBar,
) -> anyhow::Result<f64> {
    let entry = kiln_kernels::find(w.kind).context("the suite's kinds are registered")?;
    let jobs = (0..w.jobs)
        .map(|i| {
            JobSpec::new(
                entry,
                DeviceClass::Cpu,
                w.params.clone(),
                format!("{prefix}{}-{i}", w.kind),
                i,
                None,
                Codec::Json,
            )
        })
        .collect::<kiln_client::Result<Vec<_>>>()?;
    let ids: HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let started = Instant::now();
    publish_all(js, jobs, false, || {}).await?;
    let results = collector
        .collect(ids, Duration::from_secs(600), |_| bar.inc(1))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        results.len() as u64 == w.jobs,
        "{count} worker(s), {}: {} of {} results arrived",
        w.name,
        results.len(),
        w.jobs
    );
    Ok(seconds)
}

/// Wait until `count` workers named `prefix…` announce themselves as serving.
pub(crate) async fn wait_live(
    js: &jetstream::Context,
    prefix: &str,
    count: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = streams::live_workers(js)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|w| w.name.starts_with(prefix) && w.state == "serving")
            .count();
        if live >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {live} of {count} worker processes came up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
