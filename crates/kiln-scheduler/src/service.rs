//! The scheduler service: pull `jobs.auto.>`, decide with the [`CostModel`], republish to
//! `jobs.gpu.<kind>.copy` or `jobs.cpu.<kind>.copy` (the subjects only kiln's own roles may
//! publish to, whose headers workers believe), ack once the routed copy is stored.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kiln_kernels::DecodedJob;
use kiln_proto::streams::{self, STREAM_JOBS};
use kiln_proto::{
    Codec, DeviceClass, Envelope, ErrorKind, HEADER_MSG_ID, HEADER_ROUTING, JobError, JobSubject,
    Limits, ResultEvent, Routing, Status, Topology, subject,
};

use crate::model::{ClassState, CostModel};

/// The `kiln scheduler` settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Name recorded in routing decisions.
    pub name: String,
    /// Stream sizes and replicas, for the streams and consumers it creates if missing.
    pub topology: Topology,
    /// How often backlogs and live workers are re-read from the server.
    pub refresh: Duration,
    /// Prometheus metrics (register them to serve them).
    pub metrics: kiln_telemetry::SchedulerMetrics,
    /// Readiness for `/readyz`.
    pub health: kiln_telemetry::Health,
}

impl SchedulerConfig {
    /// The defaults, under `name`: re-read the classes every 250 ms.
    pub fn new(name: String) -> Self {
        Self {
            name,
            topology: Topology::default(),
            refresh: Duration::from_millis(250),
            metrics: kiln_telemetry::SchedulerMetrics::default(),
            health: kiln_telemetry::Health::default(),
        }
    }
}

/// What a scheduler did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Auto jobs it routed to the GPU class.
    pub routed_gpu: u64,
    /// Auto jobs it routed to the CPU class.
    pub routed_cpu: u64,
}

/// Errors that stop the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stream, consumer or bucket could not be created or opened.
    #[error(transparent)]
    Setup(#[from] streams::SetupError),
    /// Something on the server could not be read.
    #[error("could not read {what}: {message}")]
    Read {
        /// What: `the jobs stream`, `auto jobs`, ….
        what: &'static str,
        /// The server's or client's error.
        message: String,
    },
}

/// The classes' state as last read, plus the jobs routed since (so that a burst between two
/// reads does not all land on one class), less those of them whose results have come back.
#[derive(Debug, Default)]
struct Classes {
    gpu: ClassState,
    cpu: ClassState,
    /// The jobs this scheduler routed since the last read, by id, with their class. Only
    /// these come off a backlog when their result arrives: the read itself counted the
    /// others, and a duplicate result, another scheduler's job or one submitted to a class
    /// directly must not take a job off twice or take off one never counted.
    routed_since: HashMap<String, DeviceClass>,
    /// When the live workers were last read (`None`: never).
    workers_read_at: Option<std::time::Instant>,
}

/// How long a read of the live workers stands while new reads fail: as long as a worker's
/// heartbeat lives by default (three of two seconds). Past it the classes count no workers,
/// as they would once the heartbeats had expired.
const WORKERS_STAND_FOR: Duration = Duration::from_secs(6);

impl Classes {
    fn state(&mut self, class: DeviceClass) -> &mut ClassState {
        match class {
            DeviceClass::Gpu => &mut self.gpu,
            _ => &mut self.cpu,
        }
    }
}

/// Route auto jobs until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    config: SchedulerConfig,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<SchedulerStats, Error> {
    config.health.watch(&client);
    let js = jetstream::new(client.clone());
    streams::ensure_all(&js, &config.topology).await?;
    let mut inputs = Inputs::open(&client, &js).await?;
    let mut scheduler = Scheduler::start(js, config, inputs.max_deliver).await;
    let mut ticker = tokio::time::interval(scheduler.config.refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Copies published and awaiting the server's acknowledgement.
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => refresh(&scheduler.js, &mut scheduler.classes).await,
            Some(message) = inputs.results.next() => {
                learn(&mut scheduler.model, &mut scheduler.classes, &message.payload);
            }
            Some((routed, stored)) = in_flight.next(), if !in_flight.is_empty() => {
                scheduler.settled(routed, stored).await;
            }
            _ = tokio::time::sleep_until(scheduler.held.next_due()), if !scheduler.held.is_empty() => {
                for (message, hold) in scheduler.held.due() {
                    if let Some((routed, ack)) = scheduler.route(message, Some(hold)).await {
                        in_flight.push(stored(routed, ack));
                    }
                }
            }
            next = inputs.jobs.next(), if in_flight.len() < ROUTING_IN_FLIGHT => match next {
                Some(Ok(message)) => {
                    if let Some((routed, ack)) = scheduler.route(message, None).await {
                        in_flight.push(stored(routed, ack));
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "error while pulling auto jobs"),
                None => break,
            },
        }
    }
    // The copies already published: ack their originals (or hand them back) before leaving.
    while let Some((routed, stored)) = in_flight.next().await {
        scheduler.settled(routed, stored).await;
    }
    // Jobs held for room: back to the queue at once, for another scheduler.
    for (message, _) in std::mem::take(&mut scheduler.held).all() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    Ok(scheduler.stop())
}

/// What the scheduler reads: the auto jobs, and the result events it learns from.
struct Inputs {
    jobs: jetstream::consumer::pull::Stream,
    results: async_nats::Subscriber,
    /// The scheduler consumer's deliveries per job (0 or less: no limit).
    max_deliver: i64,
}

impl Inputs {
    async fn open(client: &async_nats::Client, js: &jetstream::Context) -> Result<Self, Error> {
        let read = |what: &'static str| move |e: String| Error::Read { what, message: e };
        let consumer: PullConsumer = js
            .get_stream(STREAM_JOBS)
            .await
            .map_err(|e| read("the jobs stream")(e.to_string()))?
            .get_consumer(DeviceClass::Auto.consumer())
            .await
            .map_err(|e| read("the scheduler consumer")(e.to_string()))?;
        let max_deliver = consumer.cached_info().config.max_deliver;
        let jobs = consumer
            .stream()
            .max_messages_per_batch(256)
            .messages()
            .await
            .map_err(|e| read("auto jobs")(e.to_string()))?;
        // Every result teaches the model how long a kind takes on a class.
        let results = client
            .subscribe("results.>")
            .await
            .map_err(|e| read("result events")(e.to_string()))?;
        Ok(Inputs {
            jobs,
            results,
            max_deliver,
        })
    }
}

/// Wait for the server to store a routed copy; the copy, and whether it was stored.
async fn stored(
    routed: Routed,
    ack: jetstream::context::PublishAckFuture,
) -> (Routed, Result<(), String>) {
    let stored = ack.await.map(|_| ()).map_err(|e| e.to_string());
    (routed, stored)
}

/// A scheduler at work: what it has learned and read, and what it has routed.
struct Scheduler {
    js: jetstream::Context,
    config: SchedulerConfig,
    model: CostModel,
    classes: Classes,
    limits: Limits,
    stats: SchedulerStats,
    /// Jobs whose copies `KILN_JOBS` had no room for, waiting to be routed again.
    held: Held,
    /// The scheduler consumer's deliveries per job (0 or less: no limit).
    max_deliver: i64,
}

impl Scheduler {
    /// Read the classes once, then report ready.
    async fn start(js: jetstream::Context, config: SchedulerConfig, max_deliver: i64) -> Self {
        let mut classes = Classes::default();
        refresh(&js, &mut classes).await;
        let scheduler = Scheduler {
            js,
            config,
            model: CostModel::default(),
            classes,
            limits: Limits {
                max_elements: u64::MAX,
                ..Limits::default()
            },
            stats: SchedulerStats::default(),
            held: Held::default(),
            max_deliver,
        };
        tracing::info!(scheduler = %scheduler.config.name, "scheduler routing jobs.auto.>");
        scheduler.config.health.serving();
        scheduler
    }

    /// Report stopped; what it routed.
    fn stop(self) -> SchedulerStats {
        self.config.health.stopping();
        tracing::info!(
            gpu = self.stats.routed_gpu,
            cpu = self.stats.routed_cpu,
            "scheduler stopped"
        );
        self.stats
    }

    /// [`settle`] a routed copy: count it if it went to a class, hold it if there was no
    /// room for it.
    async fn settled(&mut self, routed: Routed, stored: Result<(), String>) {
        let last_delivery = self.max_deliver > 0
            && routed
                .message
                .info()
                .is_ok_and(|info| info.delivered >= self.max_deliver);
        let stored = match stored {
            // A copy whose PubAck did not come may be stored all the same. Before the job is
            // answered for it, the copy goes again under the same message id: the server
            // acknowledges it as a duplicate when it was stored.
            Err(e) if last_delivery && e.contains("timed out") => {
                let again = self
                    .js
                    .publish_with_headers(
                        routed.target.clone(),
                        routed.headers.clone(),
                        routed.message.payload.clone(),
                    )
                    .await;
                match again {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            other => other,
        };
        match settle(&self.js, &self.config, routed, stored, last_delivery).await {
            Settled::Routed(DeviceClass::Gpu) => self.stats.routed_gpu += 1,
            Settled::Routed(_) => self.stats.routed_cpu += 1,
            Settled::Held(message, hold) => self.held.push(*message, hold),
            Settled::Done => {}
        }
    }
}

/// Re-read each class's backlog (pending + in flight on its consumer) and live workers. A
/// read that fails (a slow or restarting server) keeps what the last one found, for up to
/// [`WORKERS_STAND_FOR`]: a worker does not vanish from the model because one read of the
/// workers bucket timed out, which routed every auto job away from a live GPU class until
/// the next read.
async fn refresh(js: &jetstream::Context, classes: &mut Classes) {
    match streams::live_workers(js).await {
        Ok(workers) => {
            let (mut gpu, mut cpu) = (Workers::default(), Workers::default());
            for w in workers.iter().filter(|w| w.state == "serving") {
                let class = if w.class == DeviceClass::Gpu {
                    &mut gpu
                } else {
                    &mut cpu
                };
                class.live += 1;
                class.capacity += w.capacity;
            }
            gpu.set(&mut classes.gpu);
            cpu.set(&mut classes.cpu);
            classes.workers_read_at = Some(std::time::Instant::now());
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read live workers; keeping the last read");
            if classes
                .workers_read_at
                .is_none_or(|at| at.elapsed() > WORKERS_STAND_FOR)
            {
                Workers::default().set(&mut classes.gpu);
                Workers::default().set(&mut classes.cpu);
            }
        }
    }
    let Ok(stream) = js.get_stream(STREAM_JOBS).await else {
        return;
    };
    for class in [DeviceClass::Gpu, DeviceClass::Cpu] {
        // The jobs routed since are in the backlog just read; after a failed read they are
        // still counted in the one kept, and come off it when their results arrive.
        if let Ok(info) = stream.consumer_info(class.consumer()).await {
            classes.state(class).backlog = info.num_pending + info.num_ack_pending as u64;
            classes.routed_since.retain(|_, routed| *routed != class);
        }
    }
}

/// The live workers of one class, as one read of the workers bucket found them.
#[derive(Default)]
struct Workers {
    live: usize,
    capacity: usize,
}

impl Workers {
    fn set(self, state: &mut ClassState) {
        state.live_workers = self.live;
        state.capacity = self.capacity;
    }
}

/// The fields of a result event the model learns from.
#[derive(serde::Deserialize)]
struct Observed {
    id: String,
    kind: String,
    class: DeviceClass,
    status: kiln_proto::Status,
    compute_ms: f64,
    #[serde(default)]
    flops: f64,
}

/// Learn from a result event; a job this scheduler routed since the last read comes off its
/// class's backlog at once, rather than pricing the class's queue until the next read.
fn learn(model: &mut CostModel, classes: &mut Classes, payload: &[u8]) {
    let Ok(o) = serde_json::from_slice::<Observed>(payload) else {
        return;
    };
    if let Some(class) = classes.routed_since.remove(&o.id) {
        let state = classes.state(class);
        state.backlog = state.backlog.saturating_sub(1);
    }
    if o.status == kiln_proto::Status::Succeeded && kiln_kernels::find(&o.kind).is_some() {
        model.observe(&o.kind, o.class, o.flops, o.compute_ms);
    }
}

/// A routed copy on its way: the original is acked once the server has stored the copy
/// ([`settle`]).
struct Routed {
    message: jetstream::Message,
    id: String,
    kind: String,
    class: DeviceClass,
    target: String,
    reason: String,
    enqueued_at: time::OffsetDateTime,
    span: Option<kiln_telemetry::trace::TraceSpan>,
    /// Since when, and how patiently, the job has waited for room in `KILN_JOBS`.
    hold: Option<Hold>,
    /// The copy's headers, to send it again under the same message id.
    headers: async_nats::HeaderMap,
}

/// How long a job whose copy `KILN_JOBS` has no room for is held (its delivery kept with
/// progress acks, not handed back: every nak spends one of its deliveries, and five refusals
/// in five seconds dead-lettered accepted jobs as if workers had crashed on them) before it is
/// answered `failed`. Room comes back as workers finish jobs; a stream full of nothing but
/// auto jobs waiting to be routed never makes any.
const HOLD_PATIENCE: Duration = Duration::from_secs(120);

/// A job waiting for room for its copy: since when, and the pause before its next try.
#[derive(Debug, Clone, Copy)]
struct Hold {
    since: tokio::time::Instant,
    pause: Duration,
}

impl Hold {
    /// The next hold after a refusal: first 250 ms, then doubling up to 5 s (well inside the
    /// scheduler consumer's ack wait, which each try's progress ack restarts).
    fn after(previous: Option<Hold>) -> Hold {
        match previous {
            None => Hold {
                since: tokio::time::Instant::now(),
                pause: Duration::from_millis(250),
            },
            Some(h) => Hold {
                since: h.since,
                pause: (h.pause * 2).min(Duration::from_secs(5)),
            },
        }
    }
}

/// Jobs held for room, with when each is tried again.
#[derive(Default)]
struct Held(Vec<(tokio::time::Instant, jetstream::Message, Hold)>);

impl Held {
    fn push(&mut self, message: jetstream::Message, hold: Hold) {
        let due = tokio::time::Instant::now() + hold.pause;
        self.0.push((due, message, hold));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// When the first held job is due (now when none is held).
    fn next_due(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        self.0.iter().map(|(due, ..)| *due).min().unwrap_or(now)
    }

    /// The held jobs that are due, taken out.
    fn due(&mut self) -> Vec<(jetstream::Message, Hold)> {
        let now = tokio::time::Instant::now();
        let (due, later) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.0 = later;
        due.into_iter().map(|(_, m, h)| (m, h)).collect()
    }

    /// Every held job, taken out.
    fn all(self) -> Vec<(jetstream::Message, Hold)> {
        self.0.into_iter().map(|(_, m, h)| (m, h)).collect()
    }
}

/// What became of a routed copy's original.
enum Settled {
    /// Acked: its copy is stored for this class.
    Routed(DeviceClass),
    /// Kept, to be routed again when the hold is over: `KILN_JOBS` had no room for its copy.
    Held(Box<jetstream::Message>, Hold),
    /// Answered, or handed back.
    Done,
}

/// Most routed copies awaiting the server's acknowledgement at once: routing does not wait
/// for one copy to be stored before deciding the next.
const ROUTING_IN_FLIGHT: usize = 512;

impl Scheduler {
    /// Decide and publish the routed copy; returns it with its acknowledgement to wait for,
    /// or `None` when the job was answered or handed back already.
    async fn route(
        &mut self,
        message: jetstream::Message,
        hold: Option<Hold>,
    ) -> Option<(Routed, jetstream::context::PublishAckFuture)> {
        let Ok(info) = message.info() else {
            return None;
        };
        let (sequence, published) = (info.stream_sequence, info.published);
        let kind = auto_kind(&message).await?;
        // The job's work, from its kind; a job that does not decode goes wherever a worker
        // can answer it with a failed result.
        let decoded = kiln_kernels::find(&kind).and_then(|entry| {
            let codec = Codec::from_headers(message.headers.as_ref()).ok()?;
            entry.decode(codec, &message.payload, &self.limits).ok()
        });
        // kiln's own headers are believed only on a copy (a replay from the dead-letter queue).
        let copy = JobSubject::parse(message.subject.as_str()).is_ok_and(|s| s.copy);
        let envelope = Envelope::read(copy, message.headers.as_ref(), published);
        let id = envelope.id(decoded.as_ref().and_then(|job| job.id.as_deref()), sequence);
        let routing = self.decide(&kind, decoded.as_ref());
        let mut headers = envelope.copy_headers(message.headers.as_ref(), &id);
        // Tracing on: a `kiln.route` span under the submitter's, whose context the routed copy
        // carries (replacing the submitter's). Off: the copy keeps the trace headers as they
        // came.
        let span = trace_route(&message, &id, &kind, &routing);
        if let Some(span) = &span {
            span.inject(&mut headers);
        }
        // The original holds `<id>` in this stream's duplicate window: the routed copy goes by
        // `routed-<sequence of the original>-<id>`, which makes a second routing of the same
        // message (a redelivery to another scheduler) a duplicate the server drops, while a
        // replay of the job from the dead-letter queue (a new message) is routed again, and no
        // job submitted with the id `routed-<id>` can take the copy's place.
        headers.insert(HEADER_MSG_ID, format!("routed-{sequence}-{id}").as_str());
        if let Ok(routing) = serde_json::to_string(&routing) {
            headers.insert(HEADER_ROUTING, routing.as_str());
        }
        let routed = Routed {
            message,
            id,
            target: subject::job_copy(routing.chosen, &kind),
            kind,
            class: routing.chosen,
            reason: routing.reason,
            enqueued_at: envelope.enqueued_at,
            span,
            hold,
            headers: headers.clone(),
        };
        self.publish(routed, headers).await
    }

    /// Where the job goes, by the model and the classes as last read; `job` is `None` when it
    /// does not decode.
    fn decide(&self, kind: &str, job: Option<&DecodedJob>) -> Routing {
        let flops = job.map_or(0.0, |job| job.plan.flops);
        let decision = if job.is_some_and(|job| job.plan.gpu_only) {
            self.model.decide_gpu_only(kind, flops, &self.classes.gpu)
        } else {
            self.model
                .decide(kind, flops, &self.classes.gpu, &self.classes.cpu)
        };
        Routing {
            chosen: decision.chosen,
            by: self.config.name.clone(),
            predicted_gpu_ms: decision.gpu.as_ref().map(|p| p.total_ms),
            predicted_cpu_ms: decision.cpu.as_ref().map(|p| p.total_ms),
            reason: decision.reason,
        }
    }

    /// Publish the routed copy and count it against its class; a copy the server refuses at
    /// once is settled here.
    async fn publish(
        &mut self,
        routed: Routed,
        headers: async_nats::HeaderMap,
    ) -> Option<(Routed, jetstream::context::PublishAckFuture)> {
        let published = self
            .js
            .publish_with_headers(
                routed.target.clone(),
                headers,
                routed.message.payload.clone(),
            )
            .await;
        match published {
            Ok(ack) => {
                // Count it against its class until its result arrives or the next refresh
                // reads the consumer again.
                self.classes.state(routed.class).backlog += 1;
                self.classes
                    .routed_since
                    .insert(routed.id.clone(), routed.class);
                Some((routed, ack))
            }
            Err(e) => {
                self.settled(routed, Err(e.to_string())).await;
                None
            }
        }
    }
}

/// The kind of an auto job, from its subject. A kind that is no kiln kind name
/// (`jobs.auto.mat+mul`) is routed all the same: the worker that takes it answers it
/// `invalid_input`, so it is not dropped unanswered. `None` (the message terminated) for a
/// subject that is no auto job's.
async fn auto_kind(message: &jetstream::Message) -> Option<String> {
    match JobSubject::parse(message.subject.as_str()) {
        Ok(job_subject) => Some(job_subject.kind.to_owned()),
        Err(_) => match message.subject.as_str().strip_prefix("jobs.auto.") {
            Some(token) if !token.is_empty() && !token.contains('.') => Some(token.to_owned()),
            _ => {
                // KILN_JOBS stores no other subject on this consumer's filter.
                let _ = message.ack_with(AckKind::Term).await;
                None
            }
        },
    }
}

/// Ack the original once its copy is stored; else answer it `too_large` (a copy that could
/// never fit), hold it (no room for its copy in `KILN_JOBS` yet) or hand it back; on its
/// `last_delivery`, answer it `failed` with the refusal rather than let the server give up
/// on it (whose dead letter would blame workers that never saw it).
async fn settle(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    routed: Routed,
    stored: Result<(), String>,
    last_delivery: bool,
) -> Settled {
    let Routed {
        message,
        id,
        kind,
        class,
        target,
        reason,
        enqueued_at,
        span,
        hold,
        ..
    } = routed;
    let answer = |error| answer_and_ack(js, config, &message, &kind, &id, enqueued_at, error);
    match &stored {
        // A job too close to max_payload for its copy's headers can never be routed: answered
        // `too_large` instead of going round for ever.
        Err(e) if kiln_proto::refused_for_size(e) => {
            tracing::warn!(%id, %target, error = %e, "job too large to route; answering it too_large");
            answer(JobError::too_large(format!(
                "the job's {} bytes leave no room for the headers of its routed copy ({e}); \
                 send large inputs as objects (`kiln put`, {{\"object\": NAME}})",
                message.payload.len()
            )))
            .await;
            return Settled::Done;
        }
        Err(e) if kiln_proto::refused_for_room(e) => {
            config.metrics.route_failures.inc();
            let first_refusal = hold.is_none();
            let hold = Hold::after(hold);
            if hold.since.elapsed() >= HOLD_PATIENCE {
                tracing::warn!(%id, %target, error = %e, "no room to route the job for {HOLD_PATIENCE:?}; answering it failed");
                answer(no_room(e)).await;
                return Settled::Done;
            }
            if first_refusal {
                tracing::warn!(%id, %target, error = %e, "no room in {STREAM_JOBS} for the routed copy; holding the job and trying again");
            }
            let _ = message.ack_with(AckKind::Progress).await;
            return Settled::Held(Box::new(message), hold);
        }
        Err(e) => {
            config.metrics.route_failures.inc();
            if let Some(span) = &span {
                span.error(e);
            }
            if last_delivery {
                tracing::warn!(%id, %target, error = %e, "could not route the job on its last delivery; answering it failed");
                answer(refused(&target, class, &kind, e)).await;
            } else {
                tracing::warn!(%id, %target, error = %e, "could not route the job; handing it back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            return Settled::Done;
        }
        Ok(()) => {}
    }
    let _ = message.ack().await;
    drop(span);
    config.metrics.routed(&kind, &class.to_string());
    tracing::debug!(%id, %target, %reason, "routed");
    Settled::Routed(class)
}

/// The answer to a job whose routed copy `KILN_JOBS` had no room for, for too long.
fn no_room(e: &str) -> JobError {
    JobError::new(
        ErrorKind::Internal,
        format!(
            "{STREAM_JOBS} had no room for its routed copy for {}s ({e}): the queue is full of \
             jobs waiting to be routed or run; raise `kiln init --max-queued-jobs` or submit \
             fewer at once, then submit it again",
            HOLD_PATIENCE.as_secs()
        ),
    )
}

/// The answer to a job whose routed copy to `target` the server refused on every delivery.
fn refused(target: &str, class: DeviceClass, kind: &str, e: &str) -> JobError {
    JobError::new(
        ErrorKind::Internal,
        format!(
            "the scheduler could not store the job's routed copy on {target}, on any of its \
             deliveries: {e}; submit it again once the server accepts jobs there (or to \
             jobs.{class}.{kind} directly)"
        ),
    )
}

/// Answer a job that cannot be routed with a failure, and ack it; hand it back when the
/// answer is not stored.
async fn answer_and_ack(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    message: &jetstream::Message,
    kind: &str,
    id: &str,
    enqueued_at: time::OffsetDateTime,
    error: JobError,
) {
    match answer_failed(js, config, message, kind, id, enqueued_at, error).await {
        Ok(()) => {
            let _ = message.ack().await;
        }
        Err(e) => {
            tracing::warn!(%id, error = %e, "could not answer the job; handing it back");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// Answer a job that cannot be routed with a failure.
async fn answer_failed(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    message: &jetstream::Message,
    kind: &str,
    id: &str,
    enqueued_at: time::OffsetDateTime,
    error: JobError,
) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc();
    let waited = (now - enqueued_at).as_seconds_f64().max(0.0) * 1000.0;
    let kind = if kiln_kernels::find(kind).is_some() {
        kind
    } else {
        "unknown"
    };
    // A replay from the dead-letter queue is a run of its own, answered on its own subject
    // (the failed run's result is there already, and would refuse this one).
    let copy = JobSubject::parse(message.subject.as_str()).is_ok_and(|s| s.copy);
    let replay = Envelope::read(copy, message.headers.as_ref(), now).replay;
    let event = ResultEvent {
        id: id.to_owned(),
        kind: kind.to_owned(),
        status: Status::Failed,
        device: "none".into(),
        class: DeviceClass::Auto,
        worker: config.name.clone(),
        attempt: message.info().map_or(1, |i| i.delivered.max(1) as u64),
        enqueued_at,
        started_at: now,
        finished_at: now,
        queue_ms: waited,
        compute_ms: 0.0,
        total_ms: waited,
        output: serde_json::Value::Null,
        error: Some(error.bounded()),
        flops: 0.0,
        routing: None,
        replay,
    };
    let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_MSG_ID, event.msg_id().as_str());
    headers.insert("Content-Type", kiln_proto::CONTENT_TYPE_JSON);
    kiln_proto::expect_no_result(&mut headers);
    let stored = js
        .publish_with_headers(
            subject::result_of(&event.kind, id, replay),
            headers,
            body.into(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await;
    match stored {
        Ok(_) => Ok(()),
        // Answered before (this is a redelivery): nothing more to do.
        Err(e) if kiln_proto::already_answered(&e.to_string()) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The span of one routing decision, when tracing is on.
fn trace_route(
    message: &jetstream::Message,
    id: &str,
    kind: &str,
    routing: &Routing,
) -> Option<kiln_telemetry::trace::TraceSpan> {
    use kiln_telemetry::trace::{self, KeyValue, SpanKind, TraceSpan};
    if !trace::enabled() {
        return None;
    }
    let parent = trace::extract(message.headers.as_ref());
    let mut attributes = vec![
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.destination.name", message.subject.to_string()),
        KeyValue::new("kiln.job.id", id.to_owned()),
        KeyValue::new("kiln.job.kind", kind.to_owned()),
        KeyValue::new("kiln.route.chosen", routing.chosen.to_string()),
        KeyValue::new("kiln.route.reason", routing.reason.clone()),
    ];
    if let Some(ms) = routing.predicted_ms() {
        attributes.push(KeyValue::new("kiln.route.predicted_ms", ms));
    }
    TraceSpan::start("kiln.route", SpanKind::Consumer, &parent, None, attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, class: &str, status: &str) -> Vec<u8> {
        serde_json::json!({
            "id": id, "kind": "matmul", "class": class, "status": status,
            "compute_ms": 40.0, "flops": 2.0e9,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn results_take_only_the_jobs_routed_since_the_last_read_off_their_backlog() {
        let mut model = CostModel::default();
        let mut classes = Classes::default();
        // The last read counted 3 gpu jobs; this scheduler routed two more since, one per class.
        classes.gpu.backlog = 4;
        classes.cpu.backlog = 1;
        classes.routed_since.insert("a".into(), DeviceClass::Gpu);
        classes.routed_since.insert("b".into(), DeviceClass::Cpu);
        let before = model.estimate("matmul", DeviceClass::Gpu, 2.0e9);

        learn(&mut model, &mut classes, &event("a", "gpu", "succeeded"));
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 1));
        let taught = model.estimate("matmul", DeviceClass::Gpu, 2.0e9);
        assert!(taught > before, "{before} -> {taught}");

        // A duplicate of that result, a job the last read counted, and one another scheduler
        // routed or that was submitted to the class directly: no change to the backlogs.
        for id in ["a", "counted-by-the-read", "elsewhere"] {
            learn(&mut model, &mut classes, &event(id, "gpu", "succeeded"));
        }
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 1));

        // A failed job left its queue too, but its time teaches nothing.
        let cpu_before = model.estimate("matmul", DeviceClass::Cpu, 2.0e9);
        learn(&mut model, &mut classes, &event("b", "cpu", "failed"));
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 0));
        assert_eq!(
            model.estimate("matmul", DeviceClass::Cpu, 2.0e9),
            cpu_before
        );
        assert!(classes.routed_since.is_empty());

        // What does not parse changes nothing.
        learn(&mut model, &mut classes, b"not json");
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 0));
    }

    /// A heartbeat of a serving worker of `class` with `capacity` compute slots.
    fn heartbeat(name: &str, class: DeviceClass, capacity: usize) -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc();
        serde_json::to_vec(&kiln_proto::WorkerInfo {
            name: name.into(),
            class,
            device: "cpu".into(),
            backend: "ndarray".into(),
            engines: Default::default(),
            capacity,
            max_in_flight: 64,
            in_flight: 0,
            succeeded: 0,
            failed: 0,
            state: "serving".into(),
            running: Vec::new(),
            version: "test".into(),
            started_at: now,
            updated_at: now,
        })
        .expect("a heartbeat")
    }

    /// Store a heartbeat of a serving worker in the workers bucket.
    async fn beat(js: &jetstream::Context, name: &str, class: DeviceClass, capacity: usize) {
        let kv = js
            .get_key_value(kiln_proto::BUCKET_WORKERS)
            .await
            .expect("bucket");
        kv.put(name, heartbeat(name, class, capacity).into())
            .await
            .expect("put");
    }

    /// A read of the workers bucket that fails keeps the classes as the last read found
    /// them; a read that succeeds and finds no worker empties them.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_read_keeps_the_last_live_workers() {
        let server = kiln_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        let topology = kiln_proto::Topology::default();
        streams::ensure_all(&js, &topology).await.expect("streams");
        beat(&js, "g", DeviceClass::Gpu, 2).await;
        beat(&js, "c", DeviceClass::Cpu, 1).await;
        let mut classes = Classes::default();
        refresh(&js, &mut classes).await;
        let seen = |c: &Classes| {
            (
                (c.gpu.live_workers, c.gpu.capacity),
                (c.cpu.live_workers, c.cpu.capacity),
            )
        };
        assert_eq!(seen(&classes), ((1, 2), (1, 1)));

        // The bucket cannot be read: the last read stands, for as long as a heartbeat would.
        js.delete_key_value(kiln_proto::BUCKET_WORKERS)
            .await
            .expect("delete bucket");
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((1, 2), (1, 1)));
        classes.workers_read_at = classes
            .workers_read_at
            .and_then(|at| at.checked_sub(WORKERS_STAND_FOR + Duration::from_secs(1)));
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((0, 0), (0, 0)), "a read too old to stand");

        // Readable again, with one worker back.
        streams::ensure_all(&js, &topology).await.expect("streams");
        beat(&js, "g", DeviceClass::Gpu, 3).await;
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((1, 3), (0, 0)));
    }
}
