//! Routing one auto job: decide its class, publish its copy to `jobs.<class>.<kind>.copy`,
//! and settle the original once the server has answered for the copy (ack it, hold it for
//! room, hand it back, or answer it `failed`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use kiln_kernels::DecodedJob;
use kiln_proto::streams::STREAM_JOBS;
use kiln_proto::{
    Codec, DeviceClass, Envelope, ErrorKind, HEADER_MSG_ID, HEADER_ROUTING, JobError, JobSubject,
    ResultEvent, Routing, Status, subject,
};

use super::{Scheduler, SchedulerConfig};

/// A routed copy on its way: the original is acked once the server has stored the copy
/// ([`settle`]).
pub(super) struct Routed {
    pub(super) message: jetstream::Message,
    id: String,
    kind: String,
    class: DeviceClass,
    pub(super) target: String,
    reason: String,
    enqueued_at: time::OffsetDateTime,
    /// The job's work, as its result reports it (0 when it does not decode).
    flops: f64,
    span: Option<kiln_telemetry::trace::TraceSpan>,
    /// Since when, and how patiently, the job has waited for room in `KILN_JOBS`.
    hold: Option<Hold>,
    /// The copy's headers, to send it again under the same message id.
    pub(super) headers: async_nats::HeaderMap,
}

impl Routed {
    /// The job as the scheduler answers it itself.
    fn unrouted(&self) -> Unrouted<'_> {
        Unrouted {
            message: &self.message,
            kind: &self.kind,
            id: &self.id,
            enqueued_at: self.enqueued_at,
            flops: self.flops,
        }
    }
}

/// How long a job whose copy `KILN_JOBS` has no room for is held (its delivery kept with
/// progress acks, not handed back: every nak spends one of its deliveries, and five refusals
/// in five seconds dead-lettered accepted jobs as if workers had crashed on them) before it is
/// answered `failed`. Room comes back as workers finish jobs; a stream full of nothing but
/// auto jobs waiting to be routed never makes any.
const HOLD_PATIENCE: Duration = Duration::from_secs(120);

/// A job waiting for room for its copy: since when, and the pause before its next try.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
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

/// Jobs held for room, in the order they are due to be tried again (a job's place: when it is
/// due, and a count that keeps jobs due at the same instant apart and in order).
pub(super) struct Held<M = jetstream::Message> {
    jobs: BTreeMap<(tokio::time::Instant, u64), (M, Hold)>,
    pushed: u64,
}

impl<M> Default for Held<M> {
    fn default() -> Self {
        Held {
            jobs: BTreeMap::new(),
            pushed: 0,
        }
    }
}

impl<M> Held<M> {
    pub(super) fn push(&mut self, message: M, hold: Hold) {
        let due = tokio::time::Instant::now() + hold.pause;
        self.pushed += 1;
        self.jobs.insert((due, self.pushed), (message, hold));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// When the first held job is due (now when none is held).
    pub(super) fn next_due(&self) -> tokio::time::Instant {
        self.jobs
            .first_key_value()
            .map_or_else(tokio::time::Instant::now, |((due, _), _)| *due)
    }

    /// Up to `most` of the held jobs that are due, the earliest first, taken out. Bounded:
    /// each is routed again as a publish whose acknowledgement the scheduler holds until the
    /// next turn of its loop, and the client lets no more than 5,000 wait at once (beyond
    /// them a publish waits for one of them, which nothing would poll: the scheduler hung).
    pub(super) fn due(&mut self, most: usize) -> Vec<(M, Hold)> {
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        while due.len() < most
            && let Some(first) = self.jobs.first_entry()
            && first.key().0 <= now
        {
            due.push(first.remove());
        }
        due
    }

    /// Every held job, taken out.
    pub(super) fn all(self) -> Vec<(M, Hold)> {
        self.jobs.into_values().collect()
    }
}

/// What became of a routed copy's original.
pub(super) enum Settled {
    /// Acked: its copy is stored for this class.
    Routed(DeviceClass),
    /// Kept, to be routed again when the hold is over: `KILN_JOBS` had no room for its copy.
    Held(Box<jetstream::Message>, Hold),
    /// Answered, or handed back.
    Done,
}

/// Most routed copies awaiting the server's acknowledgement at once: routing does not wait
/// for one copy to be stored before deciding the next.
pub(super) const ROUTING_IN_FLIGHT: usize = 512;

impl Scheduler {
    /// Decide and publish the routed copy; returns it with its acknowledgement to wait for,
    /// or `None` when the job was answered or handed back already.
    pub(super) async fn route(
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
        let copy = kiln_proto::subject::is_copy_subject(message.subject.as_str());
        let envelope = Envelope::read(copy, message.headers.as_ref(), published);
        let id = match &decoded {
            Some(job) => envelope.id(job.id.as_deref(), sequence),
            // As the worker that answers it will: the id its body gives, where its submitter
            // waits (also for the scheduler's own answer, and its copy's message id).
            None => envelope.undecoded_id(&message.payload, sequence),
        };
        let routing = self.decide(&kind, decoded.as_ref());
        let mut headers = envelope.copy_headers(message.headers.as_ref(), &id);
        // Tracing on: a `kiln.route` span under the submitter's, whose context the routed copy
        // carries (replacing the submitter's). Off: the copy keeps the trace headers as they
        // came.
        let span = trace_route(&message, &id, &kind, &routing);
        if let Some(span) = &span {
            span.inject(&mut headers);
        }
        // The original holds `<id>` in this stream's duplicate window: the copy goes by a
        // message id of its own that no submitter can know in advance (see `copy_msg_id`).
        headers.insert(
            HEADER_MSG_ID,
            kiln_proto::copy_msg_id("routed", sequence, &id).as_str(),
        );
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
            flops: decoded.as_ref().map_or(0.0, |job| job.plan.flops),
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
                self.classes
                    .routed(routed.id.clone(), routed.class, &routed.kind);
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
pub(super) async fn settle(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    marks: &CancelMarks,
    routed: Routed,
    stored: Result<(), String>,
    last_delivery: bool,
) -> Settled {
    if let Err(e) = stored {
        // Not routed, and cancelled meanwhile (`kiln cancel` of a job held for room, say): the
        // scheduler answers it as a worker would have, rather than hold it or blame the
        // server. (A copy refused otherwise, handed back for another try, is not looked up.)
        let answered_or_held =
            kiln_proto::refused_for_size(&e) || kiln_proto::refused_for_room(&e) || last_delivery;
        if answered_or_held && marks.cancel(&routed.id, routed.enqueued_at).await {
            let cancelled =
                JobError::new(ErrorKind::Cancelled, "cancelled on request before it ran");
            answer_and_ack(js, config, &routed.unrouted(), cancelled).await;
            return Settled::Done;
        }
        return not_stored(js, config, routed, &e, last_delivery).await;
    }
    let Routed {
        message,
        id,
        kind,
        class,
        target,
        reason,
        span,
        ..
    } = routed;
    let _ = message.ack().await;
    drop(span);
    // A made-up kind (`jobs.auto.<anything>`, answered invalid_input by the worker) counts
    // under `unknown`: a label per name a sender makes up would grow without bound.
    let label = match kiln_kernels::find(&kind) {
        Some(_) => kind.as_str(),
        None => "unknown",
    };
    config.metrics.routed(label, &class.to_string());
    tracing::debug!(%id, %target, %reason, "routed");
    Settled::Routed(class)
}

/// [`settle`] a job whose copy the server refused with `e`.
async fn not_stored(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    routed: Routed,
    e: &str,
    last_delivery: bool,
) -> Settled {
    config.metrics.route_failures.inc();
    let (id, target) = (&routed.id, &routed.target);
    let job = routed.unrouted();
    let answer = |error| answer_and_ack(js, config, &job, error);
    // A job too close to max_payload for its copy's headers can never be routed: answered
    // `too_large` instead of going round for ever.
    if kiln_proto::refused_for_size(e) {
        tracing::warn!(%id, %target, error = %e, "job too large to route; answering it too_large");
        answer(JobError::too_large(format!(
            "the job's {} bytes leave no room for the headers of its routed copy ({e}); send \
             large inputs as objects (`kiln put`, {{\"object\": NAME}})",
            routed.message.payload.len()
        )))
        .await;
        return Settled::Done;
    }
    if kiln_proto::refused_for_room(e) {
        let first_refusal = routed.hold.is_none();
        let hold = Hold::after(routed.hold);
        if hold.since.elapsed() >= HOLD_PATIENCE {
            tracing::warn!(%id, %target, error = %e, "no room to route the job for {HOLD_PATIENCE:?}; answering it failed");
            answer(no_room(e)).await;
            return Settled::Done;
        }
        if first_refusal {
            tracing::warn!(%id, %target, error = %e, "no room in {STREAM_JOBS} for the routed copy; holding the job and trying again");
        }
        let _ = routed.message.ack_with(AckKind::Progress).await;
        return Settled::Held(Box::new(routed.message), hold);
    }
    if let Some(span) = &routed.span {
        span.error(e);
    }
    if last_delivery {
        tracing::warn!(%id, %target, error = %e, "could not route the job on its last delivery; answering it failed");
        answer(refused(target, routed.class, &routed.kind, e)).await;
    } else {
        tracing::warn!(%id, %target, error = %e, "could not route the job; handing it back");
        let _ = routed
            .message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
    }
    Settled::Done
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

/// The `kiln cancel` marks (`KILN_CANCEL`), looked up one job at a time: only for jobs the
/// scheduler answers itself or holds for room, a few. A lookup waits at most
/// [`MARK_PATIENCE`]; one that fails turns lookups off for [`MARKS_OFF_FOR`] (the routing
/// loop waits on each: a scheduler whose user may not read the bucket, or a slow server,
/// would stall it for a timeout per held job).
#[derive(Debug)]
pub(super) struct CancelMarks {
    js: jetstream::Context,
    bucket: tokio::sync::OnceCell<jetstream::kv::Store>,
    off_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Longest a cancel mark is looked up for.
const MARK_PATIENCE: Duration = Duration::from_millis(500);

/// How long a failed lookup turns lookups off.
const MARKS_OFF_FOR: Duration = Duration::from_secs(60);

impl CancelMarks {
    pub(super) fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            bucket: tokio::sync::OnceCell::new(),
            off_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether a mark cancels job `id` enqueued at `enqueued_at` ([`kiln_proto::cancel_applies`]);
    /// `false` when the bucket cannot be read.
    pub(super) async fn cancel(&self, id: &str, enqueued_at: time::OffsetDateTime) -> bool {
        let now = tokio::time::Instant::now();
        {
            let mut off = self.off_until.lock().unwrap_or_else(|e| e.into_inner());
            if off.is_some_and(|until| now < until) {
                return false;
            }
            *off = None;
        }
        let lookup = async {
            let bucket = self
                .bucket
                .get_or_try_init(|| self.js.get_key_value(kiln_proto::BUCKET_CANCEL))
                .await
                .map_err(|e| e.to_string())?;
            bucket
                .entry(kiln_proto::job_key(id))
                .await
                .map_err(|e| e.to_string())
        };
        let entry = match tokio::time::timeout(MARK_PATIENCE, lookup).await {
            Ok(Ok(entry)) => entry,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {MARK_PATIENCE:?}"),
                };
                tracing::warn!(error = %why, "could not read {} (kiln cancel's marks): held auto jobs are not looked up for a minute", kiln_proto::BUCKET_CANCEL);
                *self.off_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(now + MARKS_OFF_FOR);
                return false;
            }
        };
        entry.is_some_and(|entry| {
            entry.operation == jetstream::kv::Operation::Put
                && kiln_proto::cancel_applies(entry.created, enqueued_at)
        })
    }
}

/// A job the scheduler answers itself: its message and what its result says of it.
struct Unrouted<'a> {
    message: &'a jetstream::Message,
    kind: &'a str,
    id: &'a str,
    enqueued_at: time::OffsetDateTime,
    flops: f64,
}

/// Answer a job that cannot be routed with a failure, and ack it; hand it back when the
/// answer is not stored.
async fn answer_and_ack(
    js: &jetstream::Context,
    config: &SchedulerConfig,
    job: &Unrouted<'_>,
    error: JobError,
) {
    let (message, id) = (job.message, job.id);
    match answer_failed(js, config, job, error).await {
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
    job: &Unrouted<'_>,
    error: JobError,
) -> Result<(), String> {
    let Unrouted {
        message,
        kind,
        id,
        enqueued_at,
        flops,
    } = *job;
    let now = time::OffsetDateTime::now_utc();
    let waited = (now - enqueued_at).as_seconds_f64().max(0.0) * 1000.0;
    let kind = if kiln_kernels::find(kind).is_some() {
        kind
    } else {
        "unknown"
    };
    // A replay from the dead-letter queue is a run of its own, answered on its own subject
    // (the failed run's result is there already, and would refuse this one).
    let copy = kiln_proto::subject::is_copy_subject(message.subject.as_str());
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
        flops,
        routing: None,
        replay,
    };
    let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    // As a worker's result: stored only where the job has none yet. (A message id here, once
    // `result-<id>`, made the server drop the answer of a second kind under the same id as a
    // duplicate of the first while reporting it stored: that job went unanswered.)
    let mut headers = async_nats::HeaderMap::new();
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

    fn hold(pause_ms: u64) -> Hold {
        Hold {
            since: tokio::time::Instant::now(),
            pause: Duration::from_millis(pause_ms),
        }
    }

    #[test]
    fn held_jobs_come_due_earliest_first_and_never_more_than_asked() {
        let mut held = Held::<u32>::default();
        held.push(6000, hold(60_000));
        assert!(held.due(512).is_empty(), "none is due yet");
        for n in 0..6000 {
            held.push(n, hold(0));
        }
        let first: Vec<u32> = held.due(512).into_iter().map(|(n, _)| n).collect();
        assert_eq!(first, (0..512).collect::<Vec<_>>());
        let mut taken = 512;
        loop {
            let due = held.due(512);
            if due.is_empty() {
                break;
            }
            assert!(due.len() <= 512);
            assert_eq!(due[0].0, taken, "in the order they came due");
            taken += due.len() as u32;
        }
        assert_eq!(taken, 6000, "every job due was taken");
        assert!(!held.is_empty(), "the later job waits");
        assert!(held.next_due() > tokio::time::Instant::now() + Duration::from_secs(59));
        assert_eq!(held.all().len(), 1);
    }
}
