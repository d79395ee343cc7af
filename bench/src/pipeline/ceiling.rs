//! The raw JetStream ceilings `kiln-bench pipeline` measures kiln against: kiln's message flow
//! (publish a job, pull it, publish a result and wait for its PubAck, ack the job, pull and ack
//! the result) with no kiln logic, in the bench process.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use kiln_proto::{DeviceClass, HEADER_MSG_ID, Topology, streams};

use kiln_cli::cmd::submit::progress_bar;

/// The ceiling: kiln's message sizes, its three roles on one connection.
pub(super) const CEILING_SAME: &str = "ceiling, same bytes";

/// The ceiling with 16-byte jobs and results.
pub(super) const CEILING_SMALL: &str = "ceiling, 16-byte messages";

/// The ceiling's side whose results are stored as `KILN_RESULTS` stores kiln's: a subject per
/// result, one message per subject (what issue 9's one-answer-per-job rule costs the server).
pub(super) const CEILING_PER_JOB: &str = "ceiling, same bytes, a subject per result";

/// The ceiling whose publisher, worker and consumer of results each have a connection of
/// their own, as kiln's publisher, worker and aggregator processes do (the server reads,
/// writes and wakes for three clients where the other ceilings have it serve one).
pub(super) const CEILING_THREE: &str = "ceiling, same bytes, three connections";

/// The ceiling on streams and consumers set up as kiln sets up its own (under other names):
/// `KILN_JOBS`'s work queue with its limits and a consumer per device class, `KILN_RESULTS`'s
/// subject per result with its limits, and the aggregator's cumulative-ack consumer. Its
/// clients behave as the other ceilings' do, so the difference between this side and
/// [`CEILING_PER_JOB`] is what kiln's stream settings cost the server, and the difference
/// between this side and kiln is what kiln's clients do differently.
pub(super) const CEILING_KILN_STREAMS: &str = "ceiling, same bytes, kiln's stream settings";

/// The connections a ceiling's roles use: one, shared, or one each.
pub(crate) struct Roles {
    pub publisher: jetstream::Context,
    pub worker: jetstream::Context,
    pub results: jetstream::Context,
}

impl Roles {
    pub(crate) fn shared(js: &jetstream::Context) -> Self {
        Roles {
            publisher: js.clone(),
            worker: js.clone(),
            results: js.clone(),
        }
    }
}

/// What one ceiling run moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub jobs: u64,
    pub job_bytes: usize,
    pub result_bytes: usize,
    pub streams: Streams,
}

/// How a ceiling's streams are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Streams {
    /// Results on one subject, each with a message id.
    Plain,
    /// Results on a subject each, one message per subject (as in `KILN_RESULTS`).
    SubjectPerResult,
    /// Streams and consumers configured as kiln's ([`CEILING_KILN_STREAMS`]).
    Kiln,
}

impl Streams {
    /// The subject jobs are published on.
    fn jobs_subject(self) -> &'static str {
        match self {
            Streams::Kiln => "bench.kjobs.cpu.vector_add",
            _ => "bench.jobs.x",
        }
    }

    /// The subject of the result of the job with stream sequence `seq`, and whether it is
    /// published as kiln's are (only onto an empty subject, without a message id).
    fn result_subject(self, seq: u64) -> (String, bool) {
        match self {
            Streams::Plain => ("bench.results.x".to_owned(), false),
            Streams::SubjectPerResult => (format!("bench.results.r-{seq}"), true),
            Streams::Kiln => (format!("bench.kresults.vector_add.r-{seq}"), true),
        }
    }
}

/// The raw JetStream ceiling: the same message flow with no kiln logic. Publish `jobs`
/// messages (with message ids, as kiln does) to a work-queue stream; a consumer pulls each,
/// publishes a result to a second stream, waits for its PubAck and acks; a second consumer
/// pulls and acks the results. Timed from the first publish to the last result acked.
pub(crate) async fn ceiling(
    roles: &Roles,
    topology: &Topology,
    shape: Shape,
    run: u32,
) -> anyhow::Result<f64> {
    let Shape {
        jobs, job_bytes, ..
    } = shape;
    let js = &roles.publisher;
    let tag = format!("{}-{run}", kiln_proto::new_job_id());
    let (workers, mut results) = match shape.streams {
        Streams::Kiln => kiln_streams(roles, topology).await?,
        streams => ceiling_streams(roles, streams == Streams::SubjectPerResult).await?,
    };
    let worker = spawn_ceiling_worker(roles.worker.clone(), workers, shape);
    let bar = progress_bar(jobs, "ceiling");
    let started = Instant::now();
    let subject = shape.streams.jobs_subject();
    let publisher = spawn_ceiling_publisher(js.clone(), (jobs, job_bytes, subject), tag);
    ack_ceiling_results(&mut results, jobs, &bar).await?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    publisher.await??;
    worker.await?;
    for name in [
        "BENCH_JOBS",
        "BENCH_RESULTS",
        "BENCH_KJOBS",
        "BENCH_KRESULTS",
    ] {
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

/// Most bytes a copy of kiln's streams reserves.
const BENCH_COPY_MAX_BYTES: i64 = 256 << 20;

/// [`CEILING_KILN_STREAMS`]'s streams, made afresh from kiln's settings under other names and
/// subjects (`bench.kjobs.<class>.<kind>`, `bench.kresults.<kind>.<id>`) with kiln's
/// consumers: the messages of the CPU workers' one (on the worker's connection) and of the
/// aggregator's (on the results').
async fn kiln_streams(
    roles: &Roles,
    topology: &Topology,
) -> anyhow::Result<(pull::Stream, pull::Stream)> {
    let js = &roles.publisher;
    let rename =
        |subject: &str, prefix: &str| subject.replacen(prefix, &format!("bench.k{prefix}"), 1);
    let mut jobs = topology.jobs_stream();
    jobs.name = "BENCH_KJOBS".into();
    jobs.subjects = jobs.subjects.iter().map(|s| rename(s, "jobs.")).collect();
    let mut results = topology.results_stream();
    results.name = "BENCH_KRESULTS".into();
    results.subjects = vec!["bench.kresults.>".into()];
    // A run holds megabytes: the copies reserve 256 MiB each, not kiln's gigabytes, which
    // beside kiln's own streams took a server on a disk with 29 GB free past its JetStream
    // storage (insufficient storage resources). The byte limit costs the server nothing per
    // message.
    for config in [&mut jobs, &mut results] {
        if config.max_bytes < 0 || config.max_bytes > BENCH_COPY_MAX_BYTES {
            config.max_bytes = BENCH_COPY_MAX_BYTES;
        }
    }
    for config in [jobs, results] {
        let _ = js.delete_stream(&config.name).await;
        js.create_stream(config).await?;
    }
    let consumer = |class: DeviceClass| {
        let filter = rename(&kiln_proto::subject::jobs_of_class(class), "jobs.");
        topology.jobs_consumer(class.consumer(), filter)
    };
    let jobs = js.get_stream("BENCH_KJOBS").await?;
    for class in [DeviceClass::Gpu, DeviceClass::Auto] {
        jobs.create_consumer(consumer(class)).await?;
    }
    let workers = pull_with(
        &roles.worker,
        "BENCH_KJOBS",
        consumer(DeviceClass::Cpu),
        256,
    )
    .await?;
    let mut aggregator = topology.aggregator_consumer();
    aggregator.filter_subject = "bench.kresults.>".into();
    let results = pull_with(&roles.results, "BENCH_KRESULTS", aggregator, 1000).await?;
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
    let config = pull::Config {
        durable_name: Some(durable.into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending,
        ..Default::default()
    };
    pull_with(js, stream, config, batch).await
}

/// The messages of a new pull consumer on `stream` made with `config`, `batch` at a time.
async fn pull_with(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
    batch: usize,
) -> anyhow::Result<pull::Stream> {
    Ok(js
        .get_stream(stream)
        .await?
        .create_consumer(config)
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
    let (jobs, layout) = (shape.jobs, shape.streams);
    tokio::spawn(async move {
        workers
            .take(jobs as usize)
            .for_each_concurrent(256, |message| {
                let js = js.clone();
                let body = result_body.clone();
                async move {
                    let Ok(message) = message else { return };
                    let mut headers = HeaderMap::new();
                    let seq = message.info().map_or(0, |i| i.stream_sequence);
                    let (subject, as_kiln) = layout.result_subject(seq);
                    // A result on a subject of its own goes as kiln's do: only onto an empty
                    // subject, without a message id.
                    match as_kiln {
                        true => kiln_proto::expect_no_result(&mut headers),
                        false => headers.insert(HEADER_MSG_ID, format!("r-{seq}").as_str()),
                    }
                    if let Ok(ack) = js.publish_with_headers(subject, headers, body).await {
                        let _ = ack.await;
                    }
                    let _ = message.ack().await;
                }
            })
            .await;
    })
}

/// The ceiling's client: publish `jobs` messages of `job_bytes` on `subject`, up to 1024
/// PubAcks pending.
fn spawn_ceiling_publisher(
    js: jetstream::Context,
    (jobs, job_bytes, subject): (u64, usize, &'static str),
    tag: String,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let job_body = bytes::Bytes::from(vec![b'j'; job_bytes]);
    tokio::spawn(async move {
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..jobs {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MSG_ID, format!("{tag}-{i}").as_str());
            let ack = js
                .publish_with_headers(subject, headers, job_body.clone())
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
