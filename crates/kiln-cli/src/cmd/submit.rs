//! `kiln submit`, and the publishing and result-collecting pieces `demo` and `bench` share.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_kernels::{JobMeta, KindEntry};
use kiln_proto::{Codec, DeviceClass, HEADER_MSG_ID, ResultEvent, Status, subject};

use crate::cli::{NatsArgs, SubmitArgs};

/// A job ready to publish.
pub struct JobSpec {
    pub id: String,
    pub subject: String,
    pub body: Vec<u8>,
    pub codec: Codec,
}

impl JobSpec {
    /// Build a job of `kind` for `class` from JSON parameters (checked by the kind).
    pub fn new(
        kind: &KindEntry,
        class: DeviceClass,
        params: serde_json::Value,
        id: String,
        seed: u64,
        timeout_ms: Option<u64>,
        codec: Codec,
    ) -> anyhow::Result<Self> {
        let body = kind
            .encode_job(
                params,
                JobMeta {
                    id: Some(id.clone()),
                    seed: Some(seed),
                    timeout_ms,
                },
                codec,
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(JobSpec {
            id,
            subject: subject::job(class, kind.name),
            body,
            codec,
        })
    }
}

/// Most publishes awaiting their PubAck at once.
const PUBLISH_WINDOW: usize = 1024;

/// Publish jobs with pipelined acknowledgements; fails on the first job the server refuses
/// (a full stream, for instance). Returns how many were stored as duplicates. With
/// `track`, each job's `queued` state goes to `KILN_STATE` too (`kiln status <id>`), pipelined
/// the same way; the pipeline benchmark publishes without it, as plain NATS clients do.
pub async fn publish_all(
    js: &jetstream::Context,
    jobs: impl IntoIterator<Item = JobSpec>,
    progress: Option<&ProgressBar>,
    track: bool,
) -> anyhow::Result<u64> {
    let mut states = FuturesUnordered::new();
    let mut pending = FuturesUnordered::new();
    let mut duplicates = 0;
    let mut settle =
        |result: (String, Result<jetstream::publish::PublishAck, _>)| -> anyhow::Result<()> {
            let (id, ack) = result;
            let ack: jetstream::publish::PublishAck = ack.map_err(|e: jetstream::context::PublishError| {
            anyhow::anyhow!(
                "the server refused job {id}: {e} (if the KILN_JOBS stream is full, wait for \
                 workers to catch up or raise its limits)"
            )
        })?;
            if ack.duplicate {
                duplicates += 1;
            }
            if let Some(p) = progress {
                p.inc(1);
            }
            Ok(())
        };
    for job in jobs {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, job.id.as_str());
        headers.insert("Content-Type", job.codec.content_type());
        // Tracing on: each job is the root of its own trace, its context in the headers.
        let span = submit_span(&job);
        if let Some(span) = &span {
            span.inject(&mut headers);
        }
        let ack = js
            .publish_with_headers(job.subject.clone(), headers, job.body.into())
            .await
            .with_context(|| format!("publishing job {} on {}", job.id, job.subject))?;
        if track && let Ok(subject) = kiln_proto::JobSubject::parse(&job.subject) {
            let state = kiln_proto::JobState::queued(subject.kind, subject.class);
            let ack = js
                .publish(
                    kiln_proto::state_subject(&job.id),
                    serde_json::to_vec(&state)?.into(),
                )
                .await
                .with_context(|| format!("recording job {} as queued", job.id))?;
            states.push(std::future::IntoFuture::into_future(ack));
            while states.len() >= PUBLISH_WINDOW && states.next().await.is_some() {}
        }
        let id = job.id;
        pending.push(async move {
            let ack = ack.await;
            drop(span);
            (id, ack)
        });
        if pending.len() >= PUBLISH_WINDOW
            && let Some(done) = pending.next().await
        {
            settle(done)?;
        }
    }
    while let Some(done) = pending.next().await {
        settle(done)?;
    }
    // A state that was not stored only makes `kiln status` less precise; the jobs are in.
    while let Some(stored) = states.next().await {
        if let Err(e) = stored {
            tracing::debug!(error = %e, "a queued state was not stored");
        }
    }
    Ok(duplicates)
}

/// The span of one job's publish (until its PubAck), when tracing is on.
fn submit_span(job: &JobSpec) -> Option<kiln_telemetry::trace::TraceSpan> {
    use kiln_telemetry::trace::{Context, KeyValue, SpanKind, TraceSpan};
    if !kiln_telemetry::trace::enabled() {
        return None;
    }
    TraceSpan::start(
        "kiln.submit",
        SpanKind::Producer,
        &Context::new(),
        None,
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", job.subject.clone()),
            KeyValue::new("kiln.job.id", job.id.clone()),
        ],
    )
}

/// Collects result events for known job ids. Subscribe before publishing, so that none
/// is missed.
pub struct ResultCollector {
    subscriber: async_nats::Subscriber,
}

impl ResultCollector {
    pub async fn subscribe(
        client: &async_nats::Client,
        kind: Option<&str>,
    ) -> anyhow::Result<Self> {
        let subject = kind.map_or_else(|| "results.>".to_owned(), subject::result);
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        Ok(Self { subscriber })
    }

    /// Wait until every id in `ids` has a result, or `timeout` passes; returns what came.
    pub async fn collect(
        &mut self,
        mut ids: HashSet<String>,
        timeout: Duration,
        progress: Option<&ProgressBar>,
        mut on_result: impl FnMut(&ResultEvent),
    ) -> HashMap<String, ResultEvent> {
        let mut results = HashMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !ids.is_empty() {
            let message = match tokio::time::timeout_at(deadline, self.subscriber.next()).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => break,
            };
            let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload) else {
                continue;
            };
            if ids.remove(&event.id) {
                if let Some(p) = progress {
                    p.inc(1);
                }
                on_result(&event);
                results.insert(event.id.clone(), event);
            }
        }
        results
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Parse `-p key=value` pairs and `--params JSON` into one JSON object.
pub fn parse_params(pairs: &[String], json: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let mut params = match json {
        Some(text) => {
            let value: serde_json::Value =
                serde_json::from_str(text).context("--params must be a JSON object")?;
            anyhow::ensure!(
                value.is_object(),
                "--params must be a JSON object, got {value}"
            );
            value
        }
        None => serde_json::json!({}),
    };
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("-p {pair:?}: write parameters as key=value"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        params[key.trim()] = value;
    }
    Ok(params)
}

pub async fn run(nats: &NatsArgs, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let kind = kiln_kernels::find(&args.kind).with_context(|| {
        format!(
            "unknown job kind {:?}; known kinds: {}",
            args.kind,
            kiln_kernels::kind_names().join(", ")
        )
    })?;
    let class: DeviceClass = args.device.parse()?;
    let params = parse_params(&args.params, args.params_json.as_deref())?;
    // A dtype only GPUs compute would come back refused from a CPU worker: say so now.
    if class == DeviceClass::Cpu
        && kind
            .check_params(params.clone(), &kiln_proto::Limits::UNLIMITED)
            .is_ok_and(|plan| plan.gpu_only)
    {
        anyhow::bail!(
            "{} with dtype {} runs on GPU workers only (CPU workers compute f32): submit it with \
             --device gpu or --device auto",
            kind.name,
            params["dtype"]
        );
    }
    let codec = if args.bincode {
        Codec::Bincode
    } else {
        Codec::Json
    };
    let base_id = args.id.clone().unwrap_or_else(kiln_proto::new_job_id);
    anyhow::ensure!(
        kiln_proto::valid_job_id(&base_id),
        "--id {base_id:?}: use 1 to {} printable characters without spaces",
        kiln_proto::MAX_ID_LEN
    );
    anyhow::ensure!(args.count >= 1, "--count must be at least 1");
    let jobs = (0..args.count)
        .map(|i| {
            let id = if args.count == 1 {
                base_id.clone()
            } else {
                format!("{base_id}-{i}")
            };
            JobSpec::new(
                kind,
                class,
                params.clone(),
                id,
                args.seed + i,
                args.timeout_ms,
                codec,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ids: HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();

    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client.clone());
    kiln_proto::streams::ensure_all(&js, &super::topology(nats)).await?;
    warn_if_unserved(&js, class).await;
    let mut collector = if args.wait {
        Some(ResultCollector::subscribe(&client, Some(kind.name)).await?)
    } else {
        None
    };
    let bar = (args.count > 1).then(|| progress_bar(args.count, "submitted"));
    let duplicates = publish_all(&js, jobs, bar.as_ref(), true).await?;
    if let Some(bar) = &bar {
        bar.finish();
    }
    if duplicates > 0 {
        eprintln!(
            "{duplicates} job id(s) were already submitted in the last 10 minutes; the server dropped the resubmission"
        );
    }
    let Some(collector) = collector.as_mut() else {
        if args.count == 1 {
            println!("{base_id}");
        } else {
            println!(
                "submitted {} jobs: {base_id}-0 .. {base_id}-{}",
                args.count,
                args.count - 1
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let bar = (args.count > 1).then(|| progress_bar(args.count, "finished"));
    let single = args.count == 1;
    let results = collector
        .collect(
            ids.clone(),
            Duration::from_secs(args.wait_timeout_s),
            bar.as_ref(),
            |event| {
                if single {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(event).unwrap_or_default()
                    );
                } else if let Ok(line) = serde_json::to_string(event) {
                    println!("{line}");
                }
            },
        )
        .await;
    if let Some(bar) = &bar {
        bar.finish();
    }
    let failed = results
        .values()
        .filter(|r| r.status == Status::Failed)
        .count();
    let missing = ids.len() - results.len();
    if missing > 0 {
        eprintln!(
            "{missing} of {} result(s) did not arrive within {} s; `kiln result <id>` looks them up later",
            ids.len(),
            args.wait_timeout_s
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} job(s) failed", ids.len());
    }
    Ok(if failed == 0 && missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Say so when nothing is pulling from the class's consumer: the jobs are safe in KILN_JOBS,
/// but they will wait until a worker (or, for auto, the scheduler) runs.
async fn warn_if_unserved(js: &jetstream::Context, class: DeviceClass) {
    let Ok(stream) = js.get_stream(kiln_proto::streams::STREAM_JOBS).await else {
        return;
    };
    if let Ok(info) = stream.consumer_info(class.consumer()).await
        && info.num_waiting == 0
        && info.num_ack_pending == 0
    {
        let who = match class {
            DeviceClass::Auto => "a scheduler runs (this version of kiln has none yet)",
            DeviceClass::Gpu => "a GPU worker runs (`kiln worker --device cuda`)",
            DeviceClass::Cpu => "a CPU worker runs (`kiln worker --device cpu`)",
        };
        eprintln!(
            "note: nothing is pulling from consumer {} right now; the jobs wait in KILN_JOBS until {who}",
            class.consumer()
        );
    }
}
