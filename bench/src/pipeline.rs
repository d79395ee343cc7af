//! `kiln-bench pipeline`: kiln's end-to-end throughput as a ratio of the raw JetStream
//! ceiling, both measured in the same run on the same server.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, HEADER_MSG_ID, streams};
use serde::Serialize;
use serde_json::json;

use crate::cli::PipelineArgs;
use crate::cpu::CpuClock;
use crate::machine::describe_machine;
use crate::roles::RoleProcesses;
use kiln_cli::cli::NatsArgs;
use kiln_cli::cmd::roles::LocalRoles;
use kiln_cli::cmd::submit::progress_bar;
use kiln_client::{JobSpec, publish_all};

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
         (same bytes, three connections) {:.0}, kiln (worker and aggregator processes) {:.0}, \
         kiln (in-process roles) {:.0}",
        report.ceiling_same_bytes_jobs_per_s,
        report.ceiling_small_jobs_per_s,
        report.ceiling_three_connections_jobs_per_s,
        report.kiln_jobs_per_s,
        report.kiln_in_process_jobs_per_s
    );
    println!(
        "kiln / ceiling: {:.3} (same bytes), {:.3} (16-byte messages), {:.3} (same bytes, three \
         connections); in-process roles {:.3} (same bytes); kiln latency submit→result p50 \
         {:.2} ms, p99 {:.2} ms (all runs)",
        report.ratio_same_bytes,
        report.ratio_small,
        report.ratio_three_connections,
        report.ratio_in_process_same_bytes,
        report.kiln_total_ms_p50,
        report.kiln_total_ms_p99
    );
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
    // Two more connections, for the ceiling whose roles each have their own.
    let mut own = Vec::new();
    for _ in 0..2 {
        own.push(jetstream::new(
            kiln_client::connect(&nats.connect_options()).await?,
        ));
    }
    let [worker_js, results_js] = <[jetstream::Context; 2]>::try_from(own)
        .map_err(|_| anyhow::anyhow!("two connections were made"))?;
    let separate = Roles {
        publisher: js.clone(),
        worker: worker_js,
        results: results_js,
    };
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
    let latency = streams::latest_metrics(&js).await.ok().and_then(|s| {
        s.into_iter()
            .find(|s| s.kind == "vector_add" && s.class == "cpu")
    });
    let latency = latency.map(|l| l.total_ms).unwrap_or_default();
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
        for (side, job_size, result_size, per_job, roles) in [
            (CEILING_SAME, job_bytes, result_bytes, false, &shared),
            (CEILING_SMALL, 16, 16, false, &shared),
            (CEILING_PER_JOB, job_bytes, result_bytes, true, &shared),
            (CEILING_THREE, job_bytes, result_bytes, false, separate),
        ] {
            let varz = Varz::read(args.varz.as_deref());
            let shape = Shape {
                jobs: args.jobs,
                job_bytes: job_size,
                result_bytes: result_size,
                subject_per_result: per_job,
            };
            let cpu = CpuClock::start(&here);
            let seconds = ceiling(roles, shape, r).await?;
            varz.report(side, args.jobs);
            runs.push(record(side, args.jobs, seconds, cpu.per_job(args.jobs)));
        }
        let varz = Varz::read(args.varz.as_deref());
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
            interval: Duration::from_millis(crate::roles::SNAPSHOT_INTERVAL_MS),
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
    let roles = RoleProcesses::start(js, nats_url, &format!("bench-{tag}-")).await?;
    if verbose {
        println!("run {run}: kiln processes {:?}", roles.pids());
    }
    let warmup = job_specs(&format!("warm-{tag}"), 200, args.len)?;
    publish_and_count(js, warmup, "kiln warm-up").await?;
    let varz = Varz::read(args.varz.as_deref());
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
/// first publish.
async fn publish_and_count(
    js: &jetstream::Context,
    specs: Vec<JobSpec>,
    label: &'static str,
) -> anyhow::Result<f64> {
    let jobs = specs.len() as u64;
    let before = counted(js).await;
    let bar = progress_bar(jobs, label);
    let started = Instant::now();
    publish_all(js, specs, false, || {}).await?;
    let target = before + jobs;
    loop {
        let now = counted(js).await;
        bar.set_position(now.saturating_sub(before));
        if now >= target {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{label}: the run did not finish in 10 minutes ({} of {jobs} counted)",
            now - before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(seconds)
}

/// The server's message counters (`/varz` of its monitoring port), read before a side runs,
/// to print the messages it moved per job (`--varz`).
struct Varz {
    url: Option<String>,
    before: (u64, u64),
}

impl Varz {
    fn read(url: Option<&str>) -> Self {
        let before = url.map_or((0, 0), varz_counts);
        Varz {
            url: url.map(str::to_owned),
            before,
        }
    }

    fn report(&self, side: &str, jobs: u64) {
        let Some(url) = &self.url else { return };
        let (inn, out) = varz_counts(url);
        let per = |d: u64| d as f64 / jobs as f64;
        println!(
            "{side}: server messages per job: in {:.2}, out {:.2}",
            per(inn - self.before.0),
            per(out - self.before.1)
        );
    }
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

/// Jobs the aggregator has counted for (vector_add, cpu).
async fn counted(js: &jetstream::Context) -> u64 {
    streams::latest_metrics(js)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|s| s.kind == "vector_add" && s.class == "cpu")
        .map(|s| s.jobs)
        .sum()
}

/// The ceiling: kiln's message sizes, its three roles on one connection.
const CEILING_SAME: &str = "ceiling, same bytes";

/// The ceiling with 16-byte jobs and results.
const CEILING_SMALL: &str = "ceiling, 16-byte messages";

/// The ceiling's side whose results are stored as `KILN_RESULTS` stores kiln's: a subject per
/// result, one message per subject (what issue 9's one-answer-per-job rule costs the server).
const CEILING_PER_JOB: &str = "ceiling, same bytes, a subject per result";

/// The ceiling whose publisher, worker and consumer of results each have a connection of
/// their own, as kiln's publisher, worker and aggregator processes do (the server reads,
/// writes and wakes for three clients where the other ceilings have it serve one).
const CEILING_THREE: &str = "ceiling, same bytes, three connections";

/// The connections a ceiling's roles use: one, shared, or one each.
struct Roles {
    publisher: jetstream::Context,
    worker: jetstream::Context,
    results: jetstream::Context,
}

impl Roles {
    fn shared(js: &jetstream::Context) -> Self {
        Roles {
            publisher: js.clone(),
            worker: js.clone(),
            results: js.clone(),
        }
    }
}

/// What one ceiling run moves.
#[derive(Debug, Clone, Copy)]
struct Shape {
    jobs: u64,
    job_bytes: usize,
    result_bytes: usize,
    /// Results on a subject each, one message per subject (as in `KILN_RESULTS`).
    subject_per_result: bool,
}

/// The raw JetStream ceiling: the same message flow with no kiln logic. Publish `jobs`
/// messages (with message ids, as kiln does) to a work-queue stream; a consumer pulls each,
/// publishes a result to a second stream, waits for its PubAck and acks; a second consumer
/// pulls and acks the results. Timed from the first publish to the last result acked.
async fn ceiling(roles: &Roles, shape: Shape, run: u32) -> anyhow::Result<f64> {
    let Shape {
        jobs, job_bytes, ..
    } = shape;
    let js = &roles.publisher;
    let tag = format!("{}-{run}", kiln_proto::new_job_id());
    let (workers, mut results) = ceiling_streams(roles, shape.subject_per_result).await?;
    let worker = spawn_ceiling_worker(roles.worker.clone(), workers, shape);
    let bar = progress_bar(jobs, "ceiling");
    let started = Instant::now();
    let publisher = spawn_ceiling_publisher(js.clone(), jobs, job_bytes, tag);
    ack_ceiling_results(&mut results, jobs, &bar).await?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    publisher.await??;
    worker.await?;
    for name in ["BENCH_JOBS", "BENCH_RESULTS"] {
        let _ = js.delete_stream(name).await;
    }
    Ok(seconds)
}

/// The ceiling's two streams, made afresh, and the messages of their consumers: the jobs
/// the worker pulls (on its connection), and the results (on theirs).
async fn ceiling_streams(
    roles: &Roles,
    subject_per_result: bool,
) -> anyhow::Result<(pull::Stream, pull::Stream)> {
    fresh_streams(
        &roles.publisher,
        [
            ("BENCH_JOBS", "bench.jobs.>"),
            ("BENCH_RESULTS", "bench.results.>"),
        ],
        subject_per_result,
    )
    .await?;
    let workers = pull_messages(&roles.worker, "BENCH_JOBS", "bench-workers", 20_000, 256).await?;
    let results =
        pull_messages(&roles.results, "BENCH_RESULTS", "bench-agg", 200_000, 1000).await?;
    Ok((workers, results))
}

/// A raw JetStream side's two streams, made afresh (deleted first): a work-queue stream of
/// jobs and a stream of results, both with kiln's duplicate window; with
/// `results_once_per_subject`, results are kept as `KILN_RESULTS` keeps kiln's (one message per
/// subject; published with kiln's condition, a second one is refused).
pub(crate) async fn fresh_streams(
    js: &jetstream::Context,
    [(jobs, jobs_subject), (results, results_subject)]: [(&str, &str); 2],
    results_once_per_subject: bool,
) -> anyhow::Result<()> {
    for (name, subject, retention) in [
        (jobs, jobs_subject, stream::RetentionPolicy::WorkQueue),
        (results, results_subject, stream::RetentionPolicy::Limits),
    ] {
        let _ = js.delete_stream(name).await;
        let mut config = stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention,
            storage: stream::StorageType::File,
            duplicate_window: streams::DUPLICATE_WINDOW,
            ..Default::default()
        };
        if results_once_per_subject && name == results {
            config.max_messages_per_subject = 1;
        }
        js.create_stream(config).await?;
    }
    Ok(())
}

/// The messages of a new durable pull consumer on `stream`, acked one by one.
async fn pull_messages(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    max_ack_pending: i64,
    batch: usize,
) -> anyhow::Result<pull::Stream> {
    Ok(js
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending,
            ..Default::default()
        })
        .await?
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await?)
}

/// The ceiling's worker: for each of `jobs` messages, 256 at a time, publish a result of
/// `result_bytes`, wait for its PubAck, and ack the job.
fn spawn_ceiling_worker(
    js: jetstream::Context,
    workers: pull::Stream,
    shape: Shape,
) -> tokio::task::JoinHandle<()> {
    let result_body = bytes::Bytes::from(vec![b'r'; shape.result_bytes]);
    let (jobs, per_result) = (shape.jobs, shape.subject_per_result);
    tokio::spawn(async move {
        workers
            .take(jobs as usize)
            .for_each_concurrent(256, |message| {
                let js = js.clone();
                let body = result_body.clone();
                async move {
                    let Ok(message) = message else { return };
                    let mut headers = HeaderMap::new();
                    let id = format!("r-{}", message.info().map_or(0, |i| i.stream_sequence));
                    // A result on a subject of its own goes as kiln's do: only onto an empty
                    // subject, without a message id.
                    let subject = match per_result {
                        true => {
                            kiln_proto::expect_no_result(&mut headers);
                            format!("bench.results.{id}")
                        }
                        false => {
                            headers.insert(HEADER_MSG_ID, id.as_str());
                            "bench.results.x".to_owned()
                        }
                    };
                    if let Ok(ack) = js.publish_with_headers(subject, headers, body).await {
                        let _ = ack.await;
                    }
                    let _ = message.ack().await;
                }
            })
            .await;
    })
}

/// The ceiling's client: publish `jobs` messages of `job_bytes`, up to 1024 PubAcks pending.
fn spawn_ceiling_publisher(
    js: jetstream::Context,
    jobs: u64,
    job_bytes: usize,
    tag: String,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let job_body = bytes::Bytes::from(vec![b'j'; job_bytes]);
    tokio::spawn(async move {
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..jobs {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MSG_ID, format!("{tag}-{i}").as_str());
            let ack = js
                .publish_with_headers("bench.jobs.x", headers, job_body.clone())
                .await?;
            pending.push(ack.into_future());
            if pending.len() >= 1024
                && let Some(done) = pending.next().await
            {
                done?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        anyhow::Ok(())
    })
}

/// The ceiling's aggregator: pull and ack `jobs` results; fails when none comes for a minute.
async fn ack_ceiling_results(
    results: &mut pull::Stream,
    jobs: u64,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    while seen < jobs {
        match tokio::time::timeout(Duration::from_secs(60), results.next()).await {
            Ok(Some(Ok(message))) => {
                let _ = message.ack().await;
                seen += 1;
                if seen.is_multiple_of(1000) {
                    bar.set_position(seen);
                }
            }
            Ok(Some(Err(e))) => anyhow::bail!("ceiling result consumer failed: {e}"),
            Ok(None) | Err(_) => anyhow::bail!("ceiling run stalled at {seen} of {jobs} results"),
        }
    }
    Ok(())
}
