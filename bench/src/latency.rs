//! `kiln-bench latency`: one tiny job at a time from an external client, as a histogram,
//! against the raw JetStream round trip of the same shape measured in the same run.
//!
//! The client is this process, speaking plain JetStream as `nats pub -J` would: it publishes a
//! `vector_add` of two 16-float inline vectors to `jobs.cpu.vector_add` (JSON, `Nats-Msg-Id`),
//! waits for the PubAck, and waits for `results.vector_add.<id>` on a core subscription. kiln's
//! side runs a `kiln worker` and a `kiln aggregator` process. The floor is the same round trip
//! with no kiln logic: publish the same body to a work-queue stream, an echo consumer in this
//! process pulls it, publishes a result of kiln's result size to a second stream, waits for
//! its PubAck and acks; the client receives the result. The two sides alternate in blocks of
//! 100 jobs, so noise from the rest of the machine falls on both.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use kiln_proto::{HEADER_MSG_ID, ResultEvent, streams};
use serde::Serialize;

use crate::cli::LatencyArgs;
use crate::machine::describe_machine;
use crate::roles::RoleProcesses;
use kiln_cli::cli::NatsArgs;

/// Percentiles of one side, in ms.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// What `kiln-bench latency` measures (also a part of `kiln-bench suite`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub machine: String,
    pub jobs: u64,
    pub warmup: u64,
    pub job_bytes: usize,
    pub kiln: Percentiles,
    pub floor: Percentiles,
    /// Each side's round trip in stages (see [`STAGES`]), from the times its result carries
    /// (kiln's `enqueued_at`, `started_at` and `finished_at`; the echo's stored and taken
    /// times). Wall clocks of one machine.
    pub stages: Vec<Stage>,
}

/// One stage of both sides' round trips; the floor has no compute stage.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stage {
    pub stage: &'static str,
    pub kiln: Percentiles,
    pub floor: Option<Percentiles>,
}

/// The stages of a round trip, in order.
const STAGES: [&str; 4] = [
    "publish → stored",
    "stored → the worker (echo) has it",
    "the worker has it → computed",
    "computed (taken) → the client has the result",
];

/// The histograms of one side: the round trip and its stages, µs.
struct Timings {
    total: Histogram<u64>,
    stages: [Histogram<u64>; 4],
}

impl Timings {
    fn new() -> Self {
        Timings {
            total: histogram(),
            stages: STAGES.map(|_| histogram()),
        }
    }
}

/// How the latency is measured, for the report.
pub(crate) const METHOD: &str = "One job at a time from an external client (the bench process \
    publishing plain JetStream messages, as `nats pub -J` would, and waiting for \
    `results.vector_add.<id>`): vector_add of two 16-float inline vectors through a `kiln \
    worker` and a `kiln aggregator` process, against the raw JetStream round trip of the same \
    shape (publish → an echo consumer pulls, publishes a result of kiln's size and waits for \
    its PubAck, acks → the client receives it), the two sides alternating in blocks of 100 \
    jobs; percentiles from a histogram of every round trip after the warm-up.";

/// The jobs of each side timed in one block before the other side's turn.
const BLOCK: u64 = 100;

pub async fn run(nats: &NatsArgs, args: LatencyArgs) -> anyhow::Result<ExitCode> {
    let report = measure_latency(nats, &args, true).await?;
    println!();
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
        println!("figures written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The two sides as a markdown table, kiln as a ratio of the floor.
pub(crate) fn table(r: &Report) -> String {
    let row = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            p.p50, p.p90, p.p99, p.max, p.mean
        )
    };
    let stages: String = r
        .stages
        .iter()
        .map(|s| {
            let floor = s
                .floor
                .as_ref()
                .map_or("–".to_owned(), |f| format!("{:.3} / {:.3}", f.p50, f.p99));
            format!(
                "| {} | {floor} | {:.3} / {:.3} |\n",
                s.stage, s.kiln.p50, s.kiln.p99
            )
        })
        .collect();
    format!(
        "| one job at a time, ms | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|\n\
         {}{}\n| stage, p50 / p99 ms | floor | kiln |\n|---|---|---|\n{stages}\n\
         kiln / floor: p50 {:.2}, p99 {:.2} ({} jobs per side after {} warm-up, {} B jobs)",
        row("raw JetStream round trip (floor)", &r.floor),
        row("kiln (worker + aggregator processes)", &r.kiln),
        r.kiln.p50 / r.floor.p50,
        r.kiln.p99 / r.floor.p99,
        r.jobs,
        r.warmup,
        r.job_bytes
    )
}

/// Time `args.jobs` jobs one at a time on each side, alternating blocks.
pub(crate) async fn measure_latency(
    nats: &NatsArgs,
    args: &LatencyArgs,
    verbose: bool,
) -> anyhow::Result<Report> {
    let (_server, nats) = crate::bench_server(nats, args.external)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    streams::ensure_all(&js, &kiln_cli::cmd::topology(&nats)).await?;
    let tag = kiln_proto::new_job_id();
    let roles = RoleProcesses::start(
        &js,
        &nats.nats_url,
        &format!("lat-{tag}-"),
        crate::roles::SNAPSHOT_INTERVAL_MS,
    )
    .await?;
    if verbose {
        println!("machine: {}", describe_machine());
        println!("kiln processes {:?}", roles.pids());
    }
    let mut kiln = Side::kiln(&client, &tag).await?;
    let mut floor = Side::floor(&client, &js, &tag).await?;
    kiln.time(&js, args.warmup, None).await?;
    floor.time(&js, args.warmup, None).await?;
    let (mut kiln_ms, mut floor_ms) = (Timings::new(), Timings::new());
    let mut done = 0;
    while done < args.jobs {
        let n = BLOCK.min(args.jobs - done);
        kiln.time(&js, n, Some(&mut kiln_ms)).await?;
        floor.time(&js, n, Some(&mut floor_ms)).await?;
        done += n;
    }
    floor.stop(&js).await;
    roles.stop().await?;
    Ok(Report {
        machine: describe_machine(),
        jobs: args.jobs,
        warmup: args.warmup,
        job_bytes: body("x").len(),
        kiln: percentiles(&kiln_ms.total),
        floor: percentiles(&floor_ms.total),
        stages: (0..STAGES.len())
            .map(|i| Stage {
                stage: STAGES[i],
                kiln: percentiles(&kiln_ms.stages[i]),
                // The echo computes nothing.
                floor: (i != 2).then(|| percentiles(&floor_ms.stages[i])),
            })
            .collect(),
    })
}

/// Microseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// A job body: a vector_add of two 16-float vectors given inline.
fn body(id: &str) -> String {
    let a: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..16).map(|i| 1.0 - i as f32 * 0.25).collect();
    serde_json::json!({ "id": id, "params": { "a": a, "b": b } }).to_string()
}

/// One side of the measurement: where jobs go and where their results come back.
struct Side {
    name: &'static str,
    tag: String,
    job_subject: &'static str,
    result_prefix: &'static str,
    results: async_nats::Subscriber,
    echo: Option<tokio::task::JoinHandle<()>>,
    count: u64,
}

impl Side {
    async fn kiln(client: &async_nats::Client, tag: &str) -> anyhow::Result<Self> {
        Ok(Side {
            name: "kiln",
            tag: format!("lat-{tag}"),
            job_subject: "jobs.cpu.vector_add",
            result_prefix: "results.vector_add.",
            results: client.subscribe("results.vector_add.>").await?,
            echo: None,
            count: 0,
        })
    }

    async fn floor(
        client: &async_nats::Client,
        js: &jetstream::Context,
        tag: &str,
    ) -> anyhow::Result<Self> {
        let jobs = echo_consumer(js).await?;
        let results = client.subscribe("bench.latency.results.>").await?;
        let echo = tokio::spawn(echo(js.clone(), jobs, result_bytes()?));
        Ok(Side {
            name: "floor",
            tag: format!("floor-{tag}"),
            job_subject: "bench.latency.jobs.x",
            result_prefix: "bench.latency.results.",
            results,
            echo: Some(echo),
            count: 0,
        })
    }

    /// Send `n` jobs one at a time; record each round trip and its stages in `into`.
    async fn time(
        &mut self,
        js: &jetstream::Context,
        n: u64,
        mut into: Option<&mut Timings>,
    ) -> anyhow::Result<()> {
        for _ in 0..n {
            self.count += 1;
            let id = format!("{}-{}", self.tag, self.count);
            let want = format!("{}{id}", self.result_prefix);
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MSG_ID, id.as_str());
            let started = Instant::now();
            let sent_at = time::OffsetDateTime::now_utc();
            js.publish_with_headers(self.job_subject, headers, body(&id).into())
                .await?
                .await?;
            let result = loop {
                let next = tokio::time::timeout(Duration::from_secs(30), self.results.next());
                let message =
                    next.await.ok().flatten().with_context(|| {
                        format!("{}: no result for {id} within 30 s", self.name)
                    })?;
                if message.subject.as_str() == want {
                    break message;
                }
            };
            let us = started.elapsed().as_micros() as u64;
            let received_at = time::OffsetDateTime::now_utc();
            let Some(into) = into.as_deref_mut() else {
                continue;
            };
            into.total.saturating_record(us.max(1));
            let [stored, taken, computed] = if self.echo.is_some() {
                echoed_times(&result.payload)
            } else {
                let event: ResultEvent = serde_json::from_slice(&result.payload)
                    .with_context(|| format!("kiln's result for {id}"))?;
                Some([event.enqueued_at, event.started_at, event.finished_at])
            }
            .with_context(|| format!("{}: no times in the result of {id}", self.name))?;
            let at = [sent_at, stored, taken, computed, received_at];
            for (h, pair) in into.stages.iter_mut().zip(at.windows(2)) {
                let us = (pair[1] - pair[0]).whole_microseconds().max(1) as u64;
                h.saturating_record(us);
            }
        }
        Ok(())
    }

    async fn stop(self, js: &jetstream::Context) {
        if let Some(echo) = self.echo {
            echo.abort();
        }
        for name in ["BENCH_LAT_JOBS", "BENCH_LAT_RESULTS"] {
            let _ = js.delete_stream(name).await;
        }
    }
}

/// The floor's streams, made afresh, and the messages of its echo consumer.
async fn echo_consumer(js: &jetstream::Context) -> anyhow::Result<pull::Stream> {
    crate::pipeline::fresh_streams(
        js,
        [
            ("BENCH_LAT_JOBS", "bench.latency.jobs.>"),
            ("BENCH_LAT_RESULTS", "bench.latency.results.>"),
        ],
        false,
    )
    .await?;
    Ok(js
        .get_stream("BENCH_LAT_JOBS")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench-echo".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?
        .messages()
        .await?)
}

/// The floor's worker: for each job, publish a result of `result_bytes` under the job's id
/// (with a message id), wait for its PubAck, and ack the job.
async fn echo(js: jetstream::Context, mut jobs: pull::Stream, result_bytes: usize) {
    while let Some(Ok(message)) = jobs.next().await {
        // When the job was stored and when the echo had it, as kiln's result says them, in
        // the first bytes of a body of kiln's result size.
        let had_it = time::OffsetDateTime::now_utc();
        let stored = message.info().map(|i| i.published).unwrap_or(had_it);
        let mut body = format!(
            "{} {} ",
            stored.unix_timestamp_nanos(),
            had_it.unix_timestamp_nanos()
        )
        .into_bytes();
        body.resize(result_bytes.max(body.len()), b'r');
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, format!("result-{id}").as_str());
        let subject = format!("bench.latency.results.{id}");
        if let Ok(ack) = js.publish_with_headers(subject, headers, body.into()).await {
            let _ = ack.await;
        }
        let _ = message.ack().await;
    }
}

/// When the echo's job was stored and taken, from the start of its result; taken twice (the
/// echo computes nothing).
fn echoed_times(body: &[u8]) -> Option<[time::OffsetDateTime; 3]> {
    let mut words = std::str::from_utf8(&body[..body.len().min(64)])
        .ok()?
        .split(' ');
    let mut at = || {
        let ns = words.next()?.parse::<i128>().ok()?;
        time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok()
    };
    let (stored, taken) = (at()?, at()?);
    Some([stored, taken, taken])
}

/// The size of kiln's result for one of these jobs (a vector_add of 16 floats).
fn result_bytes() -> anyhow::Result<usize> {
    crate::pipeline::sample_result_bytes(16)
}
