//! One job, from delivery to ack: decode → validate → compute → publish result → ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use kiln_kernels::{Checkpoint, ComputeDevice, DecodedJob, Progress};
use kiln_proto::{
    Codec, DeviceClass, Disposition, Envelope, ErrorKind, HEADER_DLQ_REASON, HEADER_DLQ_SUBJECT,
    HEADER_HANDBACKS, HEADER_JOB_ID, HEADER_MSG_ID, JobError, JobSubject, ResultEvent, Status,
    subject,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::config::WorkerConfig;

/// The kind a job is answered under when its subject names no kind this build runs.
const UNKNOWN_KIND: &str = "unknown";

/// How long a worker keeps retrying to store a computed result (holding the job with
/// progress acks) before it hands the job back.
const RESULT_PATIENCE: Duration = Duration::from_secs(60);
use crate::worker::Counters;

/// State every job task of one worker shares.
pub(crate) struct Shared {
    pub js: jetstream::Context,
    /// What the kinds with a choice run on, as the worker chose at start.
    pub engines: kiln_kernels::Engines,
    pub compute: Arc<Semaphore>,
    /// Memory jobs hold while they run, in MiB (see [`kiln_kernels::MemoryBudget`]).
    pub memory_mib: Arc<Semaphore>,
    pub memory: kiln_kernels::MemoryBudget,
    pub counters: Counters,
    /// The recent pace of jobs, which decides how many the pull loop holds.
    pub pace: crate::worker::Pace,
    /// Signalled each time a job's task ends (its slot is free).
    pub finished: tokio::sync::Notify,
    /// Set when a shutdown ran out of patience: checkpoints then hand jobs back.
    pub stopping: AtomicBool,
    /// Set (with the reason) when the device stopped working: the worker stops pulling,
    /// hands back what it holds, and exits with an error.
    pub poisoned: std::sync::OnceLock<String>,
    /// Jobs cancelled with `kiln cancel`.
    pub cancelled: crate::cancel::Cancellations,
    /// Jobs held now, by id, for the heartbeat (`kiln status <id>`).
    pub running: std::sync::Mutex<std::collections::HashMap<String, kiln_proto::RunningJob>>,
    /// The `KILN_DATA` object store, opened when a job first needs it.
    pub data: tokio::sync::OnceCell<jetstream::object_store::ObjectStore>,
    pub config: WorkerConfig,
}

impl Shared {
    /// Note a job as held (or no longer held) for the heartbeat.
    fn track(&self, id: &str, delivery: &Delivery, holding: bool) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if holding {
            running.insert(
                id.to_owned(),
                kiln_proto::RunningJob {
                    id: id.to_owned(),
                    kind: delivery.kind.clone(),
                    attempt: delivery.attempt,
                },
            );
        } else {
            running.remove(id);
        }
    }
}

/// Where the job came from, read off the delivery.
struct Delivery {
    kind: String,
    class: DeviceClass,
    attempt: u64,
    started_at: OffsetDateTime,
    /// What the job's subject and headers say, checked.
    envelope: Envelope,
    stream_sequence: u64,
    /// The job's spans, when tracing is on.
    trace: Option<crate::trace::JobTrace>,
}

pub(crate) async fn handle(shared: &Arc<Shared>, message: jetstream::Message) {
    let started_at = OffsetDateTime::now_utc();
    let (attempt, published, stream_sequence) = match message.info() {
        Ok(info) => (
            info.delivered.max(1) as u64,
            info.published,
            info.stream_sequence,
        ),
        Err(e) => {
            tracing::warn!(error = %e, subject = %message.subject, "job without JetStream metadata; ignoring");
            return;
        }
    };
    let job_subject = JobSubject::parse(message.subject.as_str());
    // A routed or handed-back copy counts from the job's submission; kiln's own headers are
    // believed only on a copy's subject.
    let copy = job_subject.as_ref().is_ok_and(|s| s.copy);
    let envelope = Envelope::read(copy, message.headers.as_ref(), published);
    // A kind this build does not run is answered as `unknown` (the error names it): result
    // subjects, metrics subjects and Prometheus labels stay one per real kind, whatever
    // subjects people publish to.
    let (kind, class) = match &job_subject {
        Ok(s) if kiln_kernels::find(s.kind).is_some() => (s.kind.to_owned(), s.class),
        Ok(s) => (UNKNOWN_KIND.to_owned(), s.class),
        Err(_) => (UNKNOWN_KIND.to_owned(), shared.config.class),
    };
    let mut delivery = Delivery {
        kind,
        class,
        attempt,
        started_at,
        envelope,
        stream_sequence,
        trace: None,
    };
    delivery.trace = crate::trace::JobTrace::start(
        &message,
        &delivery.kind,
        delivery.class,
        attempt,
        published,
        started_at,
        &shared.config,
    );

    let outcome = match decode(shared, &message, job_subject) {
        Ok(mut job) => {
            let id = delivery.envelope.id(job.id.as_deref(), stream_sequence);
            let flops = job.plan.flops;
            if shared.cancelled.contains(&id) {
                let error = JobError::new(
                    ErrorKind::Cancelled,
                    "cancelled by `kiln cancel` before it ran",
                );
                (id, Err(error), 0.0, flops)
            } else if let Err(error) = crate::data::load(shared, &message, &mut job).await {
                (id, Err(error), 0.0, flops)
            } else {
                let flops = job.plan.flops;
                let output_mode = job.output;
                shared.track(&id, &delivery, true);
                let Ran {
                    mut result,
                    compute_ms,
                    handed_back,
                    stored,
                } = compute(shared, &message, job, &id).await;
                // An output too large to travel in the result goes to the object store.
                if let (Ok(output), Some(stored)) = (&mut result, stored) {
                    let format = crate::data::format_of(&stored, output_mode);
                    let name = kiln_proto::output_object_name(
                        &id,
                        delivery.envelope.replay,
                        delivery.stream_sequence,
                        delivery.attempt,
                        format,
                    );
                    if let Err(error) =
                        crate::data::store_output(shared, &message, &name, format, stored, output)
                            .await
                    {
                        result = Err(error);
                    }
                }
                shared.track(&id, &delivery, false);
                shared
                    .config
                    .metrics
                    .compute(&delivery.kind, compute_ms / 1000.0);
                if let Some(trace) = &delivery.trace {
                    trace.compute(compute_ms, &result);
                }
                if let (true, Err(error)) = (handed_back, &result) {
                    if let Some(trace) = &delivery.trace {
                        trace.id(&id);
                    }
                    if hand_back(shared, &message, &delivery, &id, error).await {
                        return;
                    }
                } else if compute_ms > 0.0 {
                    shared.pace.record(compute_ms);
                }
                (id, result, compute_ms, flops)
            }
        }
        Err(error) => (fallback_id(&message, &delivery), Err(error), 0.0, 0.0),
    };
    let (id, result, compute_ms, flops) = outcome;
    if let Some(trace) = &delivery.trace {
        trace.id(&id);
    }
    finish(shared, &message, &delivery, id, result, compute_ms, flops).await;
}

/// Decode and validate the job; every problem becomes a specific [`JobError`].
fn decode(
    shared: &Shared,
    message: &jetstream::Message,
    job_subject: Result<JobSubject<'_>, kiln_proto::Error>,
) -> Result<DecodedJob, JobError> {
    let job_subject = job_subject.map_err(|e| JobError::invalid_input(e.to_string()))?;
    let entry = kiln_kernels::find(job_subject.kind).ok_or_else(|| {
        JobError::invalid_input(format!(
            "unknown job kind {:?}; known kinds: {}",
            job_subject.kind,
            kiln_kernels::kind_names().join(", ")
        ))
    })?;
    let codec = Codec::from_headers(message.headers.as_ref())
        .map_err(|e| JobError::invalid_input(e.to_string()))?;
    let job = entry.decode(codec, &message.payload, &shared.config.limits)?;
    shared.memory.check(entry.name, job.plan.elements)?;
    Ok(job)
}

/// What running a job came to.
struct Ran {
    result: Result<serde_json::Value, JobError>,
    compute_ms: f64,
    /// The worker gave the job up through no fault of the job's: it was shutting down past
    /// its drain timeout, or its device stopped working. Such a job goes back to the queue
    /// without spending one of its deliveries ([`hand_back`]).
    handed_back: bool,
    /// What the job left to store in `KILN_DATA` (its full output, a model).
    stored: Option<kiln_kernels::Stored>,
}

/// Run the job on a compute slot, off the async executor, with progress acks meanwhile.
async fn compute(
    shared: &Arc<Shared>,
    message: &jetstream::Message,
    job: DecodedJob,
    id: &str,
) -> Ran {
    if runs_inline(&shared.config, &job) {
        let start = Instant::now();
        let handed_back = AtomicBool::new(false);
        let guard = Guard {
            start,
            timeout: job.timeout_ms.map(Duration::from_millis),
            stopping: &shared.stopping,
            handed_back: &handed_back,
            id,
            cancelled: &shared.cancelled,
        };
        let device = &shared.config.device;
        let result =
            crate::warmup::run_guarded(device, || job.run_with(device, shared.engines, &guard));
        return Ran {
            result,
            compute_ms: start.elapsed().as_secs_f64() * 1000.0,
            handed_back: handed_back.into_inner(),
            stored: job.take_stored(),
        };
    }
    let ack_wait = shared.config.topology.ack_wait;
    let progress_every = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    // A compute slot, and the job's memory: jobs that fit the budget alone but not beside
    // the ones running wait for them instead of running out of memory together.
    let bytes = job
        .plan
        .elements
        .saturating_mul(kiln_kernels::BYTES_PER_ELEMENT);
    let permit = {
        let compute = shared.compute.clone();
        let memory = shared.memory_mib.clone();
        let acquire = async move {
            let memory = memory.acquire_many_owned(crate::worker::mib(bytes)).await;
            let compute = compute.acquire_owned().await;
            (compute, memory)
        };
        tokio::pin!(acquire);
        // A worker stopping past its drain timeout hands back the jobs still waiting here too.
        let mut stopping = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                (compute, memory) = &mut acquire => {
                    break (compute.expect("semaphore is never closed"), memory.expect("semaphore is never closed"));
                }
                _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                _ = stopping.tick() => if shared.stopping.load(Ordering::Relaxed) {
                    return Ran {
                        result: Err(JobError::internal("worker shutting down before the job started; job handed back")),
                        compute_ms: 0.0,
                        handed_back: true,
                        stored: None,
                    };
                }
            }
        }
    };
    let device = shared.config.device.clone();
    let timeout = job.timeout_ms.map(Duration::from_millis);
    let shared_for_task = shared.clone();
    let id = id.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let start = Instant::now();
        let handed_back = AtomicBool::new(false);
        let guard = Guard {
            start,
            timeout,
            stopping: &shared_for_task.stopping,
            handed_back: &handed_back,
            id: &id,
            cancelled: &shared_for_task.cancelled,
        };
        if let Some(reason) = shared_for_task.poisoned.get() {
            let message = format!("device {device} is unusable ({reason}); job handed back");
            return Ran {
                result: Err(JobError::internal(message)),
                compute_ms: 0.0,
                handed_back: true,
                stored: None,
            };
        }
        let result = crate::warmup::run_guarded(&device, || {
            guard.checkpoint(Progress { done: 0, total: 1 })?;
            job.run_with(&device, shared_for_task.engines, &guard)
        });
        // A GPU that failed may be broken for every job that follows: probe it, and if it
        // no longer computes, stop this worker (it exits non-zero for its supervisor).
        if let Err(e) = &result
            && device != ComputeDevice::Cpu
            && matches!(e.kind, ErrorKind::OutOfMemory | ErrorKind::Internal)
            && let Err(reason) = crate::warmup::probe(&device, shared_for_task.engines)
        {
            let _ = shared_for_task
                .poisoned
                .set(format!("after {}: {reason}", e.message));
        }
        let slowdown = shared_for_task.config.slowdown;
        if slowdown > 1.0 {
            std::thread::sleep(start.elapsed().mul_f64(slowdown - 1.0));
        }
        std::thread::sleep(shared_for_task.config.sim_overhead);
        Ran {
            result,
            compute_ms: start.elapsed().as_secs_f64() * 1000.0,
            handed_back: handed_back.into_inner(),
            stored: job.take_stored(),
        }
    });
    tokio::pin!(task);
    loop {
        tokio::select! {
            joined = &mut task => {
                return joined.unwrap_or_else(|e| Ran {
                    result: Err(JobError::internal(format!("compute task failed: {e}"))),
                    compute_ms: 0.0,
                    handed_back: false,
                    stored: None,
                });
            }
            _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
        }
    }
}

/// The checkpoint kernels call: enforces `timeout_ms` and hands jobs back on shutdown.
struct Guard<'a> {
    start: Instant,
    timeout: Option<Duration>,
    stopping: &'a AtomicBool,
    /// Set when the job is stopped because the worker is stopping.
    handed_back: &'a AtomicBool,
    id: &'a str,
    cancelled: &'a crate::cancel::Cancellations,
}

impl Checkpoint for Guard<'_> {
    fn checkpoint(&self, progress: Progress) -> Result<(), JobError> {
        // Before the first step (every job passes a checkpoint just before it starts), or
        // how far it got.
        let when = || match progress.done {
            0 => "before it started".to_owned(),
            done => format!("while running ({done} of {} steps done)", progress.total),
        };
        if let Some(timeout) = self.timeout
            && self.start.elapsed() > timeout
        {
            return Err(JobError::new(
                ErrorKind::Timeout,
                format!(
                    "job ran past its timeout_ms of {}, stopped {}",
                    timeout.as_millis(),
                    when()
                ),
            ));
        }
        if self.cancelled.contains(self.id) {
            return Err(JobError::new(
                ErrorKind::Cancelled,
                format!("cancelled by `kiln cancel` {}", when()),
            ));
        }
        if self.stopping.load(Ordering::Relaxed) {
            self.handed_back.store(true, Ordering::Relaxed);
            return Err(JobError::internal("worker shutting down; job handed back"));
        }
        Ok(())
    }
}

/// Most work (floating-point operations, and tensor elements) a CPU job may have to run
/// directly on the async executor: a few microseconds, less than handing it to the blocking
/// pool costs in thread wake-ups. Everything bigger, and every GPU job, runs on the pool.
const INLINE_MAX_WORK: u64 = 1 << 16;

fn runs_inline(config: &WorkerConfig, job: &DecodedJob) -> bool {
    config.device == ComputeDevice::Cpu
        && config.slowdown <= 1.0
        && config.sim_overhead.is_zero()
        && job.plan.flops <= INLINE_MAX_WORK as f64
        && job.plan.elements <= INLINE_MAX_WORK
}

/// Most times one job is handed back without spending a delivery: a job that outlasts every
/// worker's drain timeout, deploy after deploy, is then retried like any other (and, after
/// its last delivery, answered and dead-lettered), rather than going round for ever.
const MAX_HANDBACKS: u32 = 20;

/// Give back a job this worker did not finish through no fault of the job's (a shutdown past
/// the drain timeout, a device that stopped working) without spending one of its deliveries.
/// JetStream counts every nak as a delivery, and `max_deliver` of them dead-letter a job, so a
/// nak would let rolling restarts fail a long job that never failed. Instead the job is
/// published again as a new message (same subject, body and headers but the publish
/// conditions, see [`kiln_proto::copy_headers`]; `Kiln-Job-Id` keeps its id, `Kiln-Handbacks`
/// counts, `Kiln-Enqueued-At` keeps its submission time, `Nats-Msg-Id` names this copy) and
/// this delivery is acked once the copy is stored. The copy joins the back of the queue. Returns false when that was not
/// possible (the queue is full, the server did not answer, [`MAX_HANDBACKS`] reached): the
/// caller then hands the job back the usual way.
async fn hand_back(
    shared: &Shared,
    message: &jetstream::Message,
    delivery: &Delivery,
    id: &str,
    error: &JobError,
) -> bool {
    let handbacks = delivery.envelope.handbacks;
    if handbacks >= MAX_HANDBACKS {
        tracing::warn!(%id, handbacks, "job handed back too often; retrying it as a failed attempt");
        return false;
    }
    let mut headers = delivery.envelope.copy_headers(message.headers.as_ref(), id);
    headers.insert(HEADER_HANDBACKS, (handbacks + 1).to_string().as_str());
    let msg_id = format!("{id}.handback.{}", delivery.stream_sequence);
    headers.insert(HEADER_MSG_ID, msg_id.as_str());
    let Ok(job_subject) = JobSubject::parse(message.subject.as_str()) else {
        return false;
    };
    let copy = job_subject.copy_subject();
    // A copy that no longer fits in a message (the job was within a few hundred bytes of
    // max_payload) is refused by the client before it is sent: handed back the usual way.
    let stored = match shared
        .js
        .publish_with_headers(copy, headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        tracing::warn!(%id, error = %e, "could not queue the job again; handing it back as a failed attempt");
        return false;
    }
    tracing::info!(%id, attempt = delivery.attempt, handbacks = handbacks + 1, reason = %error.message, "job handed back without spending a delivery");
    shared.counters.handed_back.fetch_add(1, Ordering::Relaxed);
    shared.config.metrics.job(&delivery.kind, "handed_back");
    if let Some(trace) = &delivery.trace {
        trace.outcome("handed_back", Some(error));
    }
    // Acked and confirmed: the worker is stopping, and an ack still in the client's buffer
    // when the process exits would leave this delivery to come back beside its copy.
    if let Err(e) = message.double_ack().await {
        // The delivery comes back after the ack wait and runs twice; its result is stored
        // once (its Nats-Msg-Id comes from the job id).
        tracing::warn!(%id, error = %e, "ack of a handed-back job failed; it may run twice");
    }
    true
}

/// Publish the answer (or hand the job back), then ack.
async fn finish(
    shared: &Shared,
    message: &jetstream::Message,
    delivery: &Delivery,
    id: String,
    result: Result<serde_json::Value, JobError>,
    compute_ms: f64,
    flops: f64,
) {
    let trace = delivery.trace.as_ref();
    // -1 (or 0) on the consumer: no delivery limit.
    let max_deliver = match shared.config.topology.max_deliver {
        n if n >= 1 => n as u64,
        _ => u64::MAX,
    };
    if let Err(error) = &result
        && error.kind.disposition() == Disposition::Retry
        && delivery.attempt < max_deliver
    {
        let delay = retry_delay(delivery.attempt);
        tracing::warn!(%id, attempt = delivery.attempt, error = %error, ?delay, "job failed; handing it back for another attempt");
        shared.counters.retried.fetch_add(1, Ordering::Relaxed);
        shared.config.metrics.job(&delivery.kind, "retried");
        if let Some(trace) = trace {
            trace.outcome("retried", Some(error));
        }
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        return;
    }
    let finished_at = OffsetDateTime::now_utc();
    let ms = |d: time::Duration| d.as_seconds_f64().max(0.0) * 1000.0;
    let (status, output, error) = match result {
        Ok(output) => (Status::Succeeded, output, None),
        Err(error) => (
            Status::Failed,
            serde_json::Value::Null,
            Some(error.bounded()),
        ),
    };
    let device = match &error {
        Some(e) if compute_ms == 0.0 && e.kind != ErrorKind::Internal => "none".to_owned(),
        _ => shared.config.device.to_string(),
    };
    let event = ResultEvent {
        id,
        kind: delivery.kind.clone(),
        status,
        device,
        class: delivery.class,
        worker: shared.config.name.clone(),
        attempt: delivery.attempt,
        enqueued_at: delivery.envelope.enqueued_at,
        started_at: delivery.started_at,
        finished_at,
        queue_ms: ms(delivery.started_at - delivery.envelope.enqueued_at),
        compute_ms,
        total_ms: ms(finished_at - delivery.envelope.enqueued_at),
        output,
        error,
        flops,
        routing: delivery.envelope.routing.clone(),
        replay: delivery.envelope.replay,
    };
    let event = fitted(&shared.js, event);
    if let Some(error) = &event.error {
        tracing::info!(id = %event.id, kind = %event.kind, error = %error, "job failed");
    }
    // A job that failed for good after its last attempt is also kept as a dead letter.
    if event
        .error
        .as_ref()
        .is_some_and(|e| e.kind.disposition() == Disposition::Retry)
        && let Err(e) = dead_letter(
            &shared.js,
            &event,
            message.subject.as_str(),
            message.headers.as_ref().unwrap_or(&HeaderMap::new()),
            &message.payload,
        )
        .await
    {
        tracing::error!(id = %event.id, error = %e, "could not dead-letter job; handing it back");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        return;
    }
    // The result is computed; when the server cannot store it right now (a stream leader
    // election in a cluster, a server restart) keep the job, tell the server it is still in
    // progress, and try again: handing it back would spend one of its deliveries on a fault
    // that is not the job's. Only after RESULT_PATIENCE is it handed back.
    let patience = tokio::time::Instant::now() + RESULT_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match publish_result(&shared.js, &event, message.headers.as_ref(), trace).await {
            Ok(Answer::Now) => break,
            Ok(Answer::Before) => {
                // This run's stored output is nobody's answer.
                if let Some(name) = stored_object_name(&event)
                    && let Ok(bucket) = crate::data::bucket(shared).await
                {
                    let _ = bucket.delete(&name).await;
                }
                break;
            }
            Err(e) if tokio::time::Instant::now() + pause < patience => {
                tracing::warn!(id = %event.id, error = %e, ?pause, "could not publish result; retrying");
                let _ = message.ack_with(AckKind::Progress).await;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                // The result is not stored: hand the job back so that it is answered later.
                tracing::error!(id = %event.id, error = %e, "could not publish result; handing job back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        }
    }
    let status = match event.status {
        Status::Succeeded => {
            shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            "succeeded"
        }
        Status::Failed => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            "failed"
        }
    };
    shared.config.metrics.job(&event.kind, status);
    if let Some(trace) = trace {
        trace.outcome(status, event.error.as_ref());
    }
    if let Err(e) = message.ack().await {
        tracing::warn!(id = %event.id, error = %e, "ack failed; the job may be redelivered (its result is deduplicated)");
    }
}

pub(crate) async fn publish_result(
    js: &jetstream::Context,
    event: &ResultEvent,
    job_headers: Option<&HeaderMap>,
    trace: Option<&crate::trace::JobTrace>,
) -> Result<Answer, String> {
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, event.msg_id().as_str());
    headers.insert("Content-Type", kiln_proto::CONTENT_TYPE_JSON);
    let subject = subject::result_of(&event.kind, &event.id, event.replay);
    // The result carries the trace on: this worker's publish span when it traces, else the
    // job's own trace context as it came.
    let _span = match trace {
        Some(trace) => {
            let span = trace.publish(&subject);
            span.inject(&mut headers);
            Some(span)
        }
        None => {
            kiln_telemetry::trace::forward(job_headers, &mut headers);
            None
        }
    };
    let stored = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| e.to_string())?
        .await;
    match stored {
        Ok(ack) => {
            if ack.duplicate {
                tracing::debug!(id = %event.id, "result already stored; this delivery was a duplicate");
                return Ok(Answer::Before);
            }
            Ok(Answer::Now)
        }
        // The results stream keeps one result a job id, for good: this job was answered
        // before (a redelivery after a lost ack, an id used again after the duplicate window).
        Err(e) if kiln_proto::already_answered(&e.to_string()) => {
            tracing::info!(id = %event.id, "job already has a stored result; this run's result is dropped");
            Ok(Answer::Before)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a result was stored by this publish or was there before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Now,
    Before,
}

/// The object name a result's output was stored under, if it was.
fn stored_object_name(event: &ResultEvent) -> Option<String> {
    event
        .output
        .get("object")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Room kept in a message for a result's headers (message id, content type, trace context).
const RESULT_HEADROOM: usize = 4096;

/// `event`, or, when its JSON would not fit in a message beside its headers, a `too_large`
/// failure in its place: a result that cannot be stored must still answer the job, never
/// keep it going round.
pub(crate) fn fitted(js: &jetstream::Context, event: ResultEvent) -> ResultEvent {
    let max = js.client().server_info().max_payload;
    let len = serde_json::to_vec(&event).map_or(usize::MAX, |b| b.len());
    if len.saturating_add(RESULT_HEADROOM) <= max {
        return event;
    }
    tracing::warn!(id = %event.id, bytes = len, max_payload = max, "result too large for a message; answering too_large");
    ResultEvent {
        status: Status::Failed,
        output: serde_json::Value::Null,
        error: Some(JobError::too_large(format!(
            "its result of {len} bytes does not fit in a message (the server's max_payload is \
             {max} bytes); ask for its output as an object (\"output\": \"object\") or make it \
             smaller"
        ))),
        ..event
    }
}

/// Keep a copy of a job given up on in `KILN_DLQ`, with why and where it came from.
pub(crate) async fn dead_letter(
    js: &jetstream::Context,
    event: &ResultEvent,
    job_subject: &str,
    job_headers: &HeaderMap,
    payload: &bytes::Bytes,
) -> Result<(), String> {
    // Not the job's publish conditions (`Nats-Expected-Stream: KILN_JOBS` would refuse the
    // letter in KILN_DLQ), nor kiln's own headers as they came: the replay count is the
    // result's, which was read from a copy's subject only.
    let mut headers = kiln_proto::copy_headers_except(Some(job_headers), &kiln_proto::OWN_HEADERS);
    if event.replay > 0 {
        headers.insert(kiln_proto::HEADER_REPLAY, event.replay.to_string().as_str());
    }
    let reason = event
        .error
        .as_ref()
        .map(|e| e.clone().bounded().to_string())
        .unwrap_or_default();
    headers.insert(HEADER_DLQ_REASON, reason.as_str());
    headers.insert(HEADER_DLQ_SUBJECT, job_subject);
    headers.insert(HEADER_JOB_ID, event.id.as_str());
    let msg_id = match event.replay {
        0 => format!("dlq-{}", event.id),
        n => format!("dlq-{}-replay-{n}", event.id),
    };
    headers.insert(HEADER_MSG_ID, msg_id.as_str());
    let publish = |headers: HeaderMap, payload: bytes::Bytes| async move {
        js.publish_with_headers(subject::dlq(&event.kind), headers, payload)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    match publish(headers.clone(), payload.clone()).await {
        Ok(_) => Ok(()),
        // A job within a few hundred bytes of max_payload has no room for the letter's
        // headers: the letter keeps why and where, without the body (it cannot be replayed;
        // `kiln dlq` says so).
        Err(e) if kiln_proto::refused_for_size(&e) => {
            let note = format!(
                "dropped: the job's {} bytes did not fit in a letter beside its headers",
                payload.len()
            );
            headers.insert(kiln_proto::HEADER_DLQ_BODY, note.as_str());
            publish(headers, bytes::Bytes::new()).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Backoff before attempt `attempt + 1`: 1 s, 4 s, 9 s … capped at one minute.
fn retry_delay(attempt: u64) -> Duration {
    Duration::from_secs((attempt * attempt).min(60))
}

/// The id of a job whose body could not be decoded: its JSON `id` if one can be read,
/// else its `Nats-Msg-Id`, else its stream sequence.
fn fallback_id(message: &jetstream::Message, delivery: &Delivery) -> String {
    job_id_of(
        &message.payload,
        &delivery.envelope,
        delivery.stream_sequence,
    )
}

/// A job's id read off its body and envelope without decoding its parameters: the body's
/// `id` if valid, else a routed or replayed copy's `Kiln-Job-Id`, else its `Nats-Msg-Id`,
/// else its stream sequence.
pub(crate) fn job_id_of(payload: &[u8], envelope: &Envelope, sequence: u64) -> String {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let body_id = serde_json::from_slice::<IdOnly>(payload)
        .ok()
        .and_then(|b| b.id)
        .filter(|id| kiln_proto::valid_job_id(id));
    envelope.id(body_id.as_deref(), sequence)
}
