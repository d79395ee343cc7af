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
use kiln_proto::{Codec, DeviceClass, HEADER_MSG_ID, OutputMode, ResultEvent, Status, subject};

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
        let meta = JobMeta {
            id: Some(id),
            seed: Some(seed),
            timeout_ms,
            output: OutputMode::Auto,
        };
        Self::build(kind, class, params, meta, codec)
    }

    /// [`JobSpec::new`] with every envelope field given; `meta.id` is required.
    pub fn build(
        kind: &KindEntry,
        class: DeviceClass,
        params: serde_json::Value,
        meta: JobMeta,
        codec: Codec,
    ) -> anyhow::Result<Self> {
        let id = meta.id.clone().context("a job needs an id")?;
        let body = kind
            .encode_job(params, meta, codec)
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
/// (a full stream, for instance). Returns the ids the server dropped as duplicates (submitted
/// within its duplicate window), in submission order.
///
/// With `track`, each job not dropped is recorded as `queued` in `KILN_STATE` too (`kiln status
/// <id>` says so until its result is stored), once its PubAck says it was stored; a
/// duplicate's record is left as it is. The writes are pipelined the same way; the pipeline
/// benchmark publishes without them, as plain NATS clients do.
pub async fn publish_all(
    js: &jetstream::Context,
    jobs: impl IntoIterator<Item = JobSpec>,
    progress: Option<&ProgressBar>,
    track: bool,
) -> anyhow::Result<Vec<String>> {
    let mut published = Published {
        js,
        track,
        progress,
        states: FuturesUnordered::new(),
        duplicates: Vec::new(),
    };
    let mut pending = FuturesUnordered::new();
    for (order, job) in jobs.into_iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, job.id.as_str());
        headers.insert("Content-Type", job.codec.content_type());
        // Tracing on: each job is the root of its own trace, its context in the headers.
        let span = submit_span(&job);
        if let Some(span) = &span {
            span.inject(&mut headers);
        }
        let size = job.body.len();
        let ack = match js
            .publish_with_headers(job.subject.clone(), headers, job.body.into())
            .await
        {
            Ok(ack) => ack,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                anyhow::bail!(
                    "job {} is {size} bytes, over the NATS server's max_payload ({} bytes): \
                     give sizes and let the worker generate the inputs (`kiln kinds`), or \
                     raise max_payload in the server's configuration",
                    job.id,
                    js.client().server_info().max_payload
                )
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("publishing job {} on {}", job.id, job.subject));
            }
        };
        let sent = Sent {
            order,
            id: job.id,
            subject: job.subject,
        };
        pending.push(async move {
            let ack = ack.await;
            drop(span);
            (sent, ack)
        });
        if pending.len() >= PUBLISH_WINDOW
            && let Some((sent, ack)) = pending.next().await
        {
            published.settle(sent, ack).await?;
        }
    }
    while let Some((sent, ack)) = pending.next().await {
        published.settle(sent, ack).await?;
    }
    // A state that was not stored only makes `kiln status` less precise; the jobs are in.
    while let Some(stored) = published.states.next().await {
        if let Err(e) = stored {
            tracing::debug!(error = %e, "a queued state was not stored");
        }
    }
    let mut duplicates = published.duplicates;
    duplicates.sort_unstable_by_key(|(order, _)| *order);
    Ok(duplicates.into_iter().map(|(_, id)| id).collect())
}

/// A job published, its PubAck not yet in.
struct Sent {
    /// Its place in the submission.
    order: usize,
    id: String,
    subject: String,
}

/// What [`publish_all`] does with each PubAck.
struct Published<'a> {
    js: &'a jetstream::Context,
    track: bool,
    progress: Option<&'a ProgressBar>,
    states: FuturesUnordered<<jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture>,
    duplicates: Vec<(usize, String)>,
}

impl Published<'_> {
    async fn settle(
        &mut self,
        sent: Sent,
        ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> anyhow::Result<()> {
        let ack = ack.map_err(|e| {
            anyhow::anyhow!(
                "the server refused job {}: {e} (if the KILN_JOBS stream is full, wait for \
                 workers to catch up or raise its limits)",
                sent.id
            )
        })?;
        if let Some(p) = self.progress {
            p.inc(1);
        }
        if ack.duplicate {
            self.duplicates.push((sent.order, sent.id));
            return Ok(());
        }
        if self.track
            && let Ok(subject) = kiln_proto::JobSubject::parse(&sent.subject)
        {
            let state = kiln_proto::JobState::queued(subject.kind, subject.class);
            let ack = self
                .js
                .publish(
                    kiln_proto::state_subject(&sent.id),
                    serde_json::to_vec(&state)?.into(),
                )
                .await
                .with_context(|| format!("recording job {} as queued", sent.id))?;
            self.states.push(ack.into_future());
            while self.states.len() >= PUBLISH_WINDOW && self.states.next().await.is_some() {}
        }
        Ok(())
    }
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
    subscriber: futures::stream::SelectAll<async_nats::Subscriber>,
}

/// Up to this many jobs, a collector subscribes to each job's own result subject, so the
/// server sends it only those results; past it, to every result of the kind (one
/// subscription, the results of other people's jobs passed over here).
const SUBSCRIBE_EACH_UP_TO: usize = 1000;

impl ResultCollector {
    /// Subscribe to the results of jobs `ids` of `kind` (every result when `kind` is `None`).
    pub async fn subscribe(
        client: &async_nats::Client,
        kind: Option<&str>,
        ids: &[String],
    ) -> anyhow::Result<Self> {
        let subjects: Vec<String> = match kind {
            Some(kind) if ids.len() <= SUBSCRIBE_EACH_UP_TO => {
                ids.iter().map(|id| subject::result(kind, id)).collect()
            }
            Some(kind) => vec![subject::results_of_kind(kind)],
            None => vec!["results.>".to_owned()],
        };
        let mut subscribers = Vec::with_capacity(subjects.len());
        for subject in subjects {
            subscribers.push(
                client
                    .subscribe(subject.clone())
                    .await
                    .with_context(|| format!("subscribing to {subject}"))?,
            );
        }
        // The subscriptions are in place once the server has seen them.
        client.flush().await.context("subscribing to results")?;
        Ok(Self {
            subscriber: futures::stream::select_all(subscribers),
        })
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

/// `kiln submit`: check what was asked, publish the jobs, and with `--wait` print their
/// results as they come.
pub async fn run(nats: &NatsArgs, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut submission = Submission::parse(&args)?;
    if let Err(message) = submission.check_ids() {
        eprintln!("kiln: --id: {message}");
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client.clone());
    kiln_proto::streams::ensure_all(&js, &super::topology(nats)).await?;
    let jobs = submission.jobs(&js).await?;
    warn_if_unserved(&js, submission.class).await;
    let collector = if submission.wait {
        let kind = Some(submission.kind.name);
        Some(ResultCollector::subscribe(&client, kind, &submission.ids).await?)
    } else {
        None
    };
    let duplicates = submission.publish(&js, jobs).await?;
    match collector {
        None => {
            submission.print_submitted(&duplicates);
            Ok(ExitCode::SUCCESS)
        }
        Some(mut collector) => submission.wait(&js, &mut collector, &duplicates).await,
    }
}

/// A `kiln submit` command line, checked before connecting.
struct Submission<'a> {
    args: &'a SubmitArgs,
    kind: &'static KindEntry,
    class: DeviceClass,
    params: serde_json::Value,
    inputs: Vec<super::data::InputArg>,
    output: OutputMode,
    codec: Codec,
    /// `--id`, or a fresh one.
    base_id: String,
    /// Every job's id: `base_id` alone, or `<base_id>-<i>` with `--count`.
    ids: Vec<String>,
    /// Wait for the results (`--wait`, or `--output`).
    wait: bool,
}

impl<'a> Submission<'a> {
    fn parse(args: &'a SubmitArgs) -> anyhow::Result<Self> {
        let kind = kiln_kernels::find(&args.kind).with_context(|| {
            format!(
                "unknown job kind {:?}; known kinds: {}",
                args.kind,
                kiln_kernels::kind_names().join(", ")
            )
        })?;
        let class: DeviceClass = args.device.parse()?;
        let params = super::params::parse_params(&args.params, args.params_json.as_deref())?;
        let inputs = args
            .inputs
            .iter()
            .map(|arg| super::data::InputArg::parse(arg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let output = match (&args.output, &args.output_format) {
            (Some(path), _) => super::data::output_mode_for(path)?,
            (None, Some(name)) => super::data::output_mode_named(name)?,
            (None, None) => OutputMode::Auto,
        };
        anyhow::ensure!(
            args.output.is_none() || args.count == 1,
            "--output writes one job's output to one file: leave out --count, or use \
             --output-format and `kiln result <id> --output FILE` for each job"
        );
        check_class(kind, class, &params)?;
        let codec = if args.bincode {
            Codec::Bincode
        } else {
            Codec::Json
        };
        let base_id = args.id.clone().unwrap_or_else(kiln_proto::new_job_id);
        anyhow::ensure!(args.count >= 1, "--count must be at least 1");
        let ids: Vec<String> = match args.count {
            1 => vec![base_id.clone()],
            n => (0..n).map(|i| format!("{base_id}-{i}")).collect(),
        };
        Ok(Self {
            args,
            kind,
            class,
            params,
            inputs,
            output,
            codec,
            base_id,
            ids,
            wait: args.wait || args.output.is_some(),
        })
    }

    /// Whether the ids are valid job ids (the message says why not).
    fn check_ids(&self) -> Result<(), String> {
        // The last id is the longest.
        super::check_job_id(&self.base_id)
            .and_then(|()| super::check_job_id(self.ids.last().map_or("", String::as_str)))
    }

    /// Store the `--input` files, then build every job.
    async fn jobs(&mut self, js: &jetstream::Context) -> anyhow::Result<Vec<JobSpec>> {
        if !self.inputs.is_empty() {
            let bucket = super::data::bucket(js).await?;
            super::data::attach_inputs(&bucket, &self.base_id, &self.inputs, &mut self.params)
                .await?;
        }
        self.ids
            .iter()
            .zip(self.args.seed..)
            .map(|(id, seed)| {
                let meta = JobMeta {
                    id: Some(id.clone()),
                    seed: Some(seed),
                    timeout_ms: self.args.timeout_ms,
                    output: self.output,
                };
                JobSpec::build(self.kind, self.class, self.params.clone(), meta, self.codec)
            })
            .collect()
    }

    /// Publish the jobs (with a progress bar for more than one) and say which the server
    /// dropped as duplicates; returns those.
    async fn publish(
        &self,
        js: &jetstream::Context,
        jobs: Vec<JobSpec>,
    ) -> anyhow::Result<Vec<String>> {
        let count = self.args.count;
        let bar = (count > 1).then(|| progress_bar(count, "submitted"));
        let duplicates = publish_all(js, jobs, bar.as_ref(), true).await?;
        if let Some(bar) = &bar {
            bar.finish();
        }
        if !duplicates.is_empty() {
            eprintln!(
                "{} job id(s) were already submitted within the last {} min, so the server \
                 kept the earlier submission and dropped this one: {}",
                duplicates.len(),
                kiln_proto::streams::DUPLICATE_WINDOW.as_secs() / 60,
                super::list_ids(&duplicates)
            );
        }
        Ok(duplicates)
    }

    /// Without `--wait`: print the job id, or the range of ids.
    fn print_submitted(&self, duplicates: &[String]) {
        if !duplicates.is_empty() {
            eprintln!("`kiln status <id>` and `kiln result <id>` show the earlier submission");
        }
        let (base_id, count) = (&self.base_id, self.args.count);
        if count == 1 {
            println!("{base_id}");
        } else {
            println!(
                "submitted {count} jobs: {base_id}-0 .. {base_id}-{}",
                count - 1
            );
        }
    }

    /// With `--wait`: print each result as it comes, then say what failed or did not come
    /// and write `--output`. Exits non-zero unless every job succeeded.
    async fn wait(
        &self,
        js: &jetstream::Context,
        collector: &mut ResultCollector,
        duplicates: &[String],
    ) -> anyhow::Result<ExitCode> {
        let single = self.args.count == 1;
        let print = |event: &ResultEvent| print_result(event, single);
        let mut results = self.earlier_results(js, duplicates).await?;
        let bar = (!single).then(|| progress_bar(self.args.count, "finished"));
        for id in &self.ids {
            if let Some(event) = results.get(id) {
                print(event);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
        }
        let waiting: HashSet<String> = self
            .ids
            .iter()
            .filter(|id| !results.contains_key(*id))
            .cloned()
            .collect();
        let timeout = Duration::from_secs(self.args.wait_timeout_s);
        let arrived = collector
            .collect(waiting, timeout, bar.as_ref(), print)
            .await;
        results.extend(arrived);
        if let Some(bar) = &bar {
            bar.finish();
        }
        self.finish(js, &results).await
    }

    /// The results the duplicates already have. A duplicate's result is the earlier
    /// submission's: printed when it is in, else waited for (it comes on the same subject).
    async fn earlier_results(
        &self,
        js: &jetstream::Context,
        duplicates: &[String],
    ) -> anyhow::Result<HashMap<String, ResultEvent>> {
        let results = super::result::existing(js, duplicates, Some(self.kind.name)).await?;
        match duplicates.len() - results.len() {
            _ if duplicates.is_empty() => {}
            0 => eprintln!("their results are in (printed below)"),
            waiting => eprintln!(
                "{} of them have a result (printed below); waiting for the other {waiting}, \
                 queued or running since the earlier submission",
                results.len()
            ),
        }
        Ok(results)
    }

    /// Say which results failed or did not come, write `--output`, and give the exit status.
    async fn finish(
        &self,
        js: &jetstream::Context,
        results: &HashMap<String, ResultEvent>,
    ) -> anyhow::Result<ExitCode> {
        let ids = &self.ids;
        let failed = results
            .values()
            .filter(|r| r.status == Status::Failed)
            .count();
        let missing: Vec<&String> = ids.iter().filter(|id| !results.contains_key(*id)).collect();
        if !missing.is_empty() {
            eprintln!(
                "{} of {} result(s) did not arrive within {} s: {}; `kiln status <id>` says \
                 where each job is, `kiln result <id>` looks its result up later",
                missing.len(),
                ids.len(),
                self.args.wait_timeout_s,
                super::list_ids(&missing)
            );
        }
        if failed > 0 {
            eprintln!("{failed} of {} job(s) failed", ids.len());
        }
        if let (Some(path), Some(event)) = (&self.args.output, results.get(&self.base_id))
            && event.status == Status::Succeeded
        {
            super::data::save_output(js, event, path).await?;
        }
        Ok(if failed == 0 && missing.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// A dtype only GPUs compute would come back refused from a CPU worker: say so now.
fn check_class(
    kind: &KindEntry,
    class: DeviceClass,
    params: &serde_json::Value,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// One result on standard output: pretty JSON for a single job, else one line each.
fn print_result(event: &ResultEvent, single: bool) {
    if single {
        println!(
            "{}",
            serde_json::to_string_pretty(event).unwrap_or_default()
        );
    } else if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
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
            DeviceClass::Auto => "a scheduler runs (`kiln scheduler`)",
            DeviceClass::Gpu => "a GPU worker runs (`kiln worker --device cuda`)",
            DeviceClass::Cpu => "a CPU worker runs (`kiln worker --device cpu`)",
        };
        eprintln!(
            "note: nothing is pulling from consumer {} right now; the jobs wait in KILN_JOBS until {who}",
            class.consumer()
        );
    }
}
