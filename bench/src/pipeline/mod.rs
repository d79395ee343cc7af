//! `kiln-bench pipeline`: kiln's end-to-end throughput as a ratio of the raw JetStream
//! ceiling, both measured in the same run on the same server.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, streams};
use serde::Serialize;
use serde_json::json;

use crate::cli::PipelineArgs;
use crate::cpu::CpuClock;
use crate::machine::describe_machine;
use crate::roles::{PIPELINE_SNAPSHOT_MS, RoleProcesses};
use kiln_cli::cli::NatsArgs;
use kiln_cli::cmd::roles::LocalRoles;
use kiln_cli::cmd::submit::progress_bar;
use kiln_client::{JobSpec, publish_all};

mod ceiling;

use ceiling::{CEILING_KILN_STREAMS, CEILING_PER_JOB, CEILING_SAME, CEILING_SMALL, CEILING_THREE};
pub(crate) use ceiling::{Roles, Shape, Streams, ceiling, fresh_streams};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub side: &'static str,
    pub jobs: u64,
    pub seconds: f64,
    pub jobs_per_s: f64,
    /// CPU each process spent per job over the run, in µs (`server` when the bench knows its
    /// pid: its own server, or `--server-pid`).
    pub cpu_us_per_job: BTreeMap<String, f64>,
}

/// A [`Run`] as a CSV row: its CPU per process as one `role=µs` list (CSV has no maps).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunRow<'a> {
    pub side: &'a str,
    pub jobs: u64,
    pub seconds: f64,
    pub jobs_per_s: f64,
    pub cpu_us_per_job: String,
}

impl Run {
    pub(crate) fn row(&self) -> RunRow<'_> {
        let cpu: Vec<String> = self
            .cpu_us_per_job
            .iter()
            .map(|(role, us)| format!("{role}={us:.1}"))
            .collect();
        RunRow {
            side: self.side,
            jobs: self.jobs,
            seconds: self.seconds,
            jobs_per_s: self.jobs_per_s,
            cpu_us_per_job: cpu.join(" "),
        }
    }
}

/// What `kiln-bench pipeline` measures (also a part of `kiln-bench suite`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub machine: String,
    pub jobs_per_run: u64,
    pub vector_len: u64,
    pub job_bytes: usize,
    pub result_bytes: usize,
    pub runs: Vec<Run>,
    pub ceiling_same_bytes_jobs_per_s: f64,
    pub ceiling_small_jobs_per_s: f64,
    /// Same bytes, results stored as `KILN_RESULTS` stores kiln's (a subject per result).
    pub ceiling_subject_per_result_jobs_per_s: f64,
    /// Same bytes, the publisher, the worker and the consumer of results each on a connection
    /// of its own, as kiln's bench, worker and aggregator processes are.
    pub ceiling_three_connections_jobs_per_s: f64,
    /// kiln's processes against that ceiling.
    pub ratio_three_connections: f64,
    /// Same bytes, on streams and consumers set up as kiln's are.
    pub ceiling_kiln_streams_jobs_per_s: f64,
    /// kiln's processes against that ceiling.
    pub ratio_kiln_streams: f64,
    pub kiln_jobs_per_s: f64,
    pub ratio_same_bytes: f64,
    pub ratio_small: f64,
    /// The same jobs with the worker and the aggregator inside the bench process.
    pub kiln_in_process_jobs_per_s: f64,
    pub ratio_in_process_same_bytes: f64,
    /// Submit → result latency of kiln's jobs over all runs (the aggregator's histogram), ms.
    pub kiln_total_ms_p50: f64,
    pub kiln_total_ms_p90: f64,
    pub kiln_total_ms_p99: f64,
    pub kiln_total_ms_mean: f64,
    pub kiln_total_ms_max: f64,
}

pub async fn run(nats: &NatsArgs, args: PipelineArgs) -> anyhow::Result<ExitCode> {
    let report = measure_pipeline(nats, &args, true).await?;
    println!();
    println!(
        "{:<44} {:>8} {:>8}  CPU µs per job",
        "run", "seconds", "jobs/s"
    );
    for run in &report.runs {
        println!(
            "{:<44} {:>8.3} {:>8.0}  {}",
            run.side,
            run.seconds,
            run.jobs_per_s,
            crate::cpu::describe(&run.cpu_us_per_job)
        );
    }
    println!();
    println!(
        "median jobs/s: ceiling (same bytes) {:.0}, ceiling (16-byte messages) {:.0}, ceiling \
         (same bytes, three connections) {:.0}, ceiling (same bytes, kiln's stream settings) \
         {:.0}, kiln (worker and aggregator processes) {:.0}, kiln (in-process roles) {:.0}",
        report.ceiling_same_bytes_jobs_per_s,
        report.ceiling_small_jobs_per_s,
        report.ceiling_three_connections_jobs_per_s,
        report.ceiling_kiln_streams_jobs_per_s,
        report.kiln_jobs_per_s,
        report.kiln_in_process_jobs_per_s
    );
    println!(
        "kiln / ceiling: {:.3} (same bytes), {:.3} (16-byte messages), {:.3} (same bytes, three \
         connections), {:.3} (kiln's stream settings); in-process roles {:.3} (same bytes); kiln \
         latency submit→result p50 {:.2} ms, p99 {:.2} ms (all runs)",
        report.ratio_same_bytes,
        report.ratio_small,
        report.ratio_three_connections,
        report.ratio_kiln_streams,
        report.ratio_in_process_same_bytes,
        report.kiln_total_ms_p50,
        report.kiln_total_ms_p99
    );
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
        println!("figures written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Run the ceiling and kiln sides `args.runs` times each and take the medians; `verbose`
/// prints the machine and the sizes first.
pub(crate) async fn measure_pipeline(
    nats: &NatsArgs,
    args: &PipelineArgs,
    verbose: bool,
) -> anyhow::Result<Report> {
    let (server, nats) = crate::bench_server(nats, args.external)?;
    let server_pid = server.as_ref().map(|s| s.pid()).or(args.server_pid);
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    let topology = kiln_cli::cmd::topology(&nats);
    streams::ensure_all(&js, &topology).await?;

    // One real job and its real result fix the message sizes the ceiling uses.
    let sample = job_specs("size", 1, args.len)?.remove(0);
    let job_bytes = sample.body.len();
    let result_bytes = sample_result_bytes(args.len)?;
    let machine = describe_machine();
    if verbose {
        println!("machine: {machine}");
        println!(
            "{} jobs per run, vector_add len {}: job {} bytes, result {} bytes; {} run(s) per side",
            args.jobs, args.len, job_bytes, result_bytes, args.runs
        );
    }

    let sizes = (job_bytes, result_bytes);
    let separate = separate_roles(&nats, &js).await?;
    let runs = measure_runs(
        &client,
        (&js, &separate),
        &topology,
        (&nats.nats_url, server_pid),
        args,
        sizes,
        verbose,
    )
    .await?;
    let median = |side: &str| median_rate(&runs, side);
    let same = median(CEILING_SAME);
    let small = median(CEILING_SMALL);
    let kiln_rate = median("kiln");
    let in_process = median("kiln, in-process roles");
    let latency = streams::latest_metrics(&js)
        .await
        .ok()
        .and_then(|s| {
            s.into_iter()
                .find(|s| s.kind == "vector_add" && s.class == "cpu")
        })
        .map(|l| l.total_ms)
        .unwrap_or_default();
    Ok(Report {
        machine,
        jobs_per_run: args.jobs,
        vector_len: args.len,
        job_bytes,
        result_bytes,
        ceiling_same_bytes_jobs_per_s: same,
        ceiling_small_jobs_per_s: small,
        ceiling_subject_per_result_jobs_per_s: median(CEILING_PER_JOB),
        ceiling_three_connections_jobs_per_s: median(CEILING_THREE),
        ratio_three_connections: kiln_rate / median(CEILING_THREE),
        ceiling_kiln_streams_jobs_per_s: median(CEILING_KILN_STREAMS),
        ratio_kiln_streams: kiln_rate / median(CEILING_KILN_STREAMS),
        kiln_jobs_per_s: kiln_rate,
        ratio_same_bytes: kiln_rate / same,
        ratio_small: kiln_rate / small,
        kiln_in_process_jobs_per_s: in_process,
        ratio_in_process_same_bytes: in_process / same,
        kiln_total_ms_p50: latency.p50,
        kiln_total_ms_p90: latency.p90,
        kiln_total_ms_p99: latency.p99,
        kiln_total_ms_mean: latency.mean,
        kiln_total_ms_max: latency.max,
        runs,
    })
}

/// The ceiling's roles each on a connection of their own: the publisher on `js`'s, the worker
/// and the consumer of results on two more.
pub(crate) async fn separate_roles(
    nats: &NatsArgs,
    js: &jetstream::Context,
) -> anyhow::Result<Roles> {
    let connect = async || -> anyhow::Result<jetstream::Context> {
        Ok(jetstream::new(
            kiln_client::connect(&nats.connect_options()).await?,
        ))
    };
    Ok(Roles {
        publisher: js.clone(),
        worker: connect().await?,
        results: connect().await?,
    })
}

/// Each side `args.runs` times, interleaved: the two ceilings, kiln with in-process roles,
/// kiln with role processes.
async fn measure_runs(
    client: &async_nats::Client,
    (js, separate): (&jetstream::Context, &Roles),
    topology: &kiln_proto::Topology,
    (nats_url, server_pid): (&str, Option<u32>),
    args: &PipelineArgs,
    (job_bytes, result_bytes): (usize, usize),
    verbose: bool,
) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut here = vec![("bench", std::process::id())];
    here.extend(server_pid.map(|pid| ("server", pid)));
    let shared = Roles::shared(js);
    for r in 0..args.runs.max(1) {
        for (side, job_size, result_size, layout, roles) in [
            (
                CEILING_SAME,
                job_bytes,
                result_bytes,
                Streams::Plain,
                &shared,
            ),
            (CEILING_SMALL, 16, 16, Streams::Plain, &shared),
            (
                CEILING_PER_JOB,
                job_bytes,
                result_bytes,
                Streams::SubjectPerResult,
                &shared,
            ),
            (
                CEILING_THREE,
                job_bytes,
                result_bytes,
                Streams::Plain,
                separate,
            ),
            (
                CEILING_KILN_STREAMS,
                job_bytes,
                result_bytes,
                Streams::Kiln,
                separate,
            ),
        ] {
            let varz = Varz::read(args.varz.as_deref(), server_pid);
            let shape = Shape {
                jobs: args.jobs,
                job_bytes: job_size,
                result_bytes: result_size,
                streams: layout,
            };
            let cpu = CpuClock::start(&here);
            let seconds = ceiling(roles, topology, shape, r).await?;
            varz.report(side, args.jobs);
            runs.push(record(side, args.jobs, seconds, cpu.per_job(args.jobs)));
        }
        let varz = Varz::read(args.varz.as_deref(), server_pid);
        let cpu = CpuClock::start(&here);
        let seconds = kiln(client, js, topology, args.jobs, args.len, r).await?;
        varz.report("kiln, in-process roles", args.jobs);
        let cpu = cpu.per_job(args.jobs);
        runs.push(record("kiln, in-process roles", args.jobs, seconds, cpu));
        let (seconds, cpu) = kiln_processes(js, (nats_url, &here), args, r, verbose).await?;
        runs.push(record("kiln", args.jobs, seconds, cpu));
    }
    Ok(runs)
}

/// The median jobs/s of one side's runs.
fn median_rate(runs: &[Run], side: &str) -> f64 {
    let mut v: Vec<f64> = runs
        .iter()
        .filter(|r| r.side == side)
        .map(|r| r.jobs_per_s)
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn record(side: &'static str, jobs: u64, seconds: f64, cpu: BTreeMap<String, f64>) -> Run {
    Run {
        side,
        jobs,
        seconds,
        jobs_per_s: jobs as f64 / seconds,
        cpu_us_per_job: cpu,
    }
}

fn job_specs(run: &str, count: u64, len: u64) -> anyhow::Result<Vec<JobSpec>> {
    let kind = kiln_kernels::find("vector_add").context("vector_add is registered")?;
    (0..count)
        .map(|i| {
            JobSpec::new(
                kind,
                DeviceClass::Cpu,
                json!({ "len": len }),
                format!("bench-{run}-{i}"),
                i,
                None,
                Codec::Json,
            )
        })
        .collect::<kiln_client::Result<_>>()
        .map_err(Into::into)
}

/// The byte size of a real result event of a vector_add of `len`.
pub(crate) fn sample_result_bytes(len: u64) -> anyhow::Result<usize> {
    let kind = kiln_kernels::find("vector_add").context("vector_add is registered")?;
    let body = format!(r#"{{"id":"bench-size-0","params":{{"len":{len}}}}}"#);
    let job = kind
        .decode(Codec::Json, body.as_bytes(), &kiln_proto::Limits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = job
        .run(&ComputeDevice::Cpu, &kiln_kernels::NoCheckpoint)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = time::OffsetDateTime::now_utc();
    let event = kiln_proto::ResultEvent {
        id: "bench-size-0".into(),
        kind: "vector_add".into(),
        status: kiln_proto::Status::Succeeded,
        device: "cpu".into(),
        class: DeviceClass::Cpu,
        worker: kiln_worker::WorkerConfig::new(ComputeDevice::Cpu).name,
        attempt: 1,
        enqueued_at: now,
        started_at: now,
        finished_at: now,
        queue_ms: 1.234,
        compute_ms: 0.012,
        total_ms: 1.5,
        output,
        error: None,
        flops: 1024.0,
        routing: None,
        replay: 0,
    };
    Ok(serde_json::to_vec(&event)?.len())
}

/// kiln end to end with its roles in this process: publish `jobs` vector adds, one CPU
/// worker and the aggregator running here; seconds until the aggregator counted them all.
async fn kiln(
    client: &async_nats::Client,
    js: &jetstream::Context,
    topology: &kiln_proto::Topology,
    jobs: u64,
    len: u64,
    run: u32,
) -> anyhow::Result<f64> {
    let specs = job_specs(&format!("{}-{run}", kiln_proto::new_job_id()), jobs, len)?;
    let mut config = kiln_worker::WorkerConfig::new(ComputeDevice::Cpu);
    config.topology = topology.clone();
    let mut roles = LocalRoles::default();
    roles.worker(client, config);
    roles.aggregator(
        client,
        kiln_aggregator::AggregatorConfig {
            interval: Duration::from_millis(PIPELINE_SNAPSHOT_MS),
            topology: topology.clone(),
            ..Default::default()
        },
    );
    let seconds = publish_and_count(js, specs, "kiln, in-process").await?;
    roles.stop().await?;
    Ok(seconds)
}

/// kiln end to end as users run it: a `kiln worker` and a `kiln aggregator` process, this
/// process only publishing. The roles start (and take 200 warm-up jobs) before the clock does;
/// the CPU of `here` (this process, the server) and of the roles is counted over the same time.
async fn kiln_processes(
    js: &jetstream::Context,
    (nats_url, here): (&str, &[(&'static str, u32)]),
    args: &PipelineArgs,
    run: u32,
    verbose: bool,
) -> anyhow::Result<(f64, BTreeMap<String, f64>)> {
    let tag = format!("{}-{run}", kiln_proto::new_job_id());
    let prefix = format!("bench-{tag}-");
    let roles = RoleProcesses::start(js, nats_url, &prefix, PIPELINE_SNAPSHOT_MS).await?;
    if verbose {
        println!("run {run}: kiln processes {:?}", roles.pids());
    }
    let warmup = job_specs(&format!("warm-{tag}"), 200, args.len)?;
    publish_and_count(js, warmup, "kiln warm-up").await?;
    let server = here.iter().find(|(role, _)| *role == "server");
    let varz = Varz::read(args.varz.as_deref(), server.map(|&(_, pid)| pid));
    let specs = job_specs(&tag, args.jobs, args.len)?;
    let processes: Vec<_> = here.iter().copied().chain(roles.pids()).collect();
    let cpu = CpuClock::start(&processes);
    let seconds = publish_and_count(js, specs, "kiln, processes").await?;
    let cpu = cpu.per_job(args.jobs);
    varz.report("kiln, processes", args.jobs);
    roles.stop().await?;
    Ok((seconds, cpu))
}

/// Publish `specs` at once and wait until the aggregator has counted them: seconds from the
/// first publish. The count comes from the aggregator's snapshots as it publishes them (a
/// subscription to their subject), so the run ends within one snapshot interval of the last
/// result counted, not also a polling period later; a direct get of the latest snapshot every
/// 250 ms backs it up.
async fn publish_and_count(
    js: &jetstream::Context,
    specs: Vec<JobSpec>,
    label: &'static str,
) -> anyhow::Result<f64> {
    let jobs = specs.len() as u64;
    let subject = kiln_proto::subject::metrics("vector_add", "cpu");
    let mut snapshots = js.client().subscribe(subject).await?;
    let before = counted(js).await;
    let bar = progress_bar(jobs, label);
    let started = Instant::now();
    publish_all(js, specs, false, || {}).await?;
    let target = before + jobs;
    let mut now = counted(js).await;
    while now < target {
        bar.set_position(now.saturating_sub(before));
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{label}: the run did not finish in 10 minutes ({} of {jobs} counted)",
            now - before
        );
        let seen = tokio::time::timeout(Duration::from_millis(250), snapshots.next()).await;
        now = match seen {
            Ok(Some(message)) => {
                serde_json::from_slice::<kiln_proto::MetricsSnapshot>(&message.payload)
                    .map_or(now, |s| s.jobs.max(now))
            }
            Ok(None) => {
                // The subscription ended (a reconnect): poll, without spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                counted(js).await.max(now)
            }
            Err(_) => counted(js).await.max(now),
        };
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // The next run's baseline is read from the stream: wait (off the clock) until the
    // snapshot this run ended on is stored there.
    let stored_by = Instant::now() + Duration::from_secs(10);
    while counted(js).await < now && Instant::now() < stored_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(seconds)
}

/// The server's message counters (`/varz` of its monitoring port) and, when its pid is
/// known, its read and write system calls (`/proc/<pid>/io`), read before a side runs, to
/// print what it moved and how often it was woken per job (`--varz`).
struct Varz {
    url: Option<String>,
    before: (u64, u64),
    pid: Option<u32>,
    calls_before: Option<(u64, u64)>,
}

impl Varz {
    fn read(url: Option<&str>, pid: Option<u32>) -> Self {
        let before = url.map_or((0, 0), varz_counts);
        Varz {
            url: url.map(str::to_owned),
            before,
            pid,
            calls_before: pid.and_then(syscalls),
        }
    }

    fn report(&self, side: &str, jobs: u64) {
        let Some(url) = &self.url else { return };
        let (inn, out) = varz_counts(url);
        let per = |d: u64| d as f64 / jobs as f64;
        let calls = match (self.calls_before, self.pid.and_then(syscalls)) {
            (Some((r0, w0)), Some((r1, w1))) => {
                format!(
                    "; system calls per job: read {:.2}, write {:.2}",
                    per(r1 - r0),
                    per(w1 - w0)
                )
            }
            _ => String::new(),
        };
        println!(
            "{side}: server messages per job: in {:.2}, out {:.2}{calls}",
            per(inn - self.before.0),
            per(out - self.before.1)
        );
    }
}

/// The read and write system calls process `pid` has made (`syscr`, `syscw` of
/// `/proc/<pid>/io`; Linux).
fn syscalls(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("syscr:")?, field("syscw:")?))
}

/// `in_msgs` and `out_msgs` of the server whose monitoring endpoint is `url` (with curl).
fn varz_counts(url: &str) -> (u64, u64) {
    let body = std::process::Command::new("curl")
        .args(["-s", &format!("{url}/varz")])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    (n("in_msgs"), n("out_msgs"))
}

/// Jobs the aggregator has counted for (vector_add, cpu): its latest snapshot, read with one
/// direct get.
async fn counted(js: &jetstream::Context) -> u64 {
    let Ok(metrics) = js.get_stream_no_info(streams::STREAM_METRICS).await else {
        return 0;
    };
    let subject = kiln_proto::subject::metrics("vector_add", "cpu");
    match metrics.direct_get_last_for_subject(subject).await {
        Ok(message) => serde_json::from_slice::<kiln_proto::MetricsSnapshot>(&message.payload)
            .map_or(0, |s| s.jobs),
        Err(_) => 0,
    }
}
