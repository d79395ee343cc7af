//! A job's answer: hand it back for another attempt, or publish its result (and, after its
//! last attempt, a dead letter), then ack it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use kiln_proto::{Disposition, ErrorKind, JobError, ResultEvent, Status};
use time::OffsetDateTime;

use crate::arrival::Arrival;
use crate::publish::{Answer, Fitted, dead_letter, fitted, publish_result};
use crate::shared::Shared;

/// How long a worker keeps retrying to store a computed result (holding the job with
/// progress acks) before it hands the job back.
const RESULT_PATIENCE: Duration = Duration::from_secs(60);

/// What a job came to on this worker.
pub(crate) struct Outcome {
    /// Its output, or why there is none.
    pub result: Result<serde_json::Value, JobError>,
    /// Time it spent computing (0: it never started).
    pub compute_ms: f64,
    /// The floating-point operations it was planned at.
    pub flops: f64,
    /// How long it waited on this worker for a compute slot: queue time.
    pub waited: Duration,
}

/// Publish the answer (or hand the job back), then ack.
pub(crate) async fn finish(shared: &Shared, arrival: &Arrival, id: String, outcome: Outcome) {
    if retried(shared, arrival, &id, &outcome.result).await {
        return;
    }
    let fitted = fitted(
        shared.client.max_payload(),
        result_event(shared, arrival, id, outcome),
    );
    let event = &fitted.event;
    if let Some(error) = &event.error {
        tracing::info!(id = %event.id, kind = %event.kind, error = %error, "job failed");
    }
    let message = &arrival.message;
    // A job that failed for good after its last attempt is also kept as a dead letter, unless
    // another run of it answered it already (a slow run whose job was delivered again, then
    // finished first): that job needs no replay.
    if event
        .error
        .as_ref()
        .is_some_and(|e| e.kind.disposition() == Disposition::Retry)
        && !Box::pin(has_result(shared, &event.kind, &event.id, event.replay)).await
        // Boxed: rare, and its publishes would otherwise widen every job's future.
        && let Err(e) = Box::pin(dead_letter(
            &shared.js,
            event,
            message.subject.as_str(),
            message.headers.as_ref().unwrap_or(&HeaderMap::new()),
            &message.payload,
        ))
        .await
    {
        tracing::error!(id = %event.id, error = %e, "could not dead-letter job; handing it back");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        return;
    }
    match store(shared, arrival, &fitted).await {
        Some(Answer::Now) => {}
        // Another run answered the job: this one is no answer, and is not counted as one.
        Some(Answer::Before) => {
            tracing::info!(id = %event.id, "job answered by another run before this one; this run's result is dropped");
            if let Some(trace) = &arrival.trace {
                trace.outcome("answered_before", None);
            }
            return shared.acks.ack(message, &event.id).await;
        }
        None => return,
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
    if let Some(trace) = &arrival.trace {
        trace.outcome(status, event.error.as_ref());
    }
    shared.acks.ack(message, &event.id).await;
}

/// Whether the job already has a stored result ([`crate::publish::has_result`]), looked up
/// within a third of the ack wait (no less than 100 ms, as progress acks) so that the lookup
/// does not let the job be delivered again.
pub(crate) async fn has_result(shared: &Shared, kind: &str, id: &str, replay: u32) -> bool {
    let within = (shared.ack_wait.current() / 3).max(Duration::from_millis(100));
    crate::publish::has_result(&shared.js, (kind, id, replay), within).await
}

/// Ack a job delivered again whose result another run already stored, without running it: a
/// long job whose worker stored its result and stopped before its ack reached the server
/// would otherwise run again in full, for a result that is then dropped.
pub(crate) async fn already_answered(shared: &Shared, arrival: &Arrival, id: &str) {
    tracing::info!(%id, attempt = arrival.attempt, "job delivered again after it was answered; acked without running it");
    if let Some(trace) = &arrival.trace {
        trace.id(id);
        trace.outcome("answered_before", None);
    }
    shared.acks.ack(&arrival.message, id).await;
}

/// Hand a job that failed in a way worth retrying back for another attempt, after a
/// backoff, unless this was its last delivery; whether it was handed back.
async fn retried(
    shared: &Shared,
    arrival: &Arrival,
    id: &str,
    result: &Result<serde_json::Value, JobError>,
) -> bool {
    // -1 (or 0) on the consumer: no delivery limit. The consumer's as last read, not this
    // worker's at start: an operator may have changed it since.
    let max_deliver = match shared.ack_wait.max_deliver() {
        n if n >= 1 => n as u64,
        _ => u64::MAX,
    };
    let Err(error) = result else { return false };
    // A delivery made meanwhile of the job this run holds (left to this run) was spent too.
    let spent = shared.deliveries(arrival.stream_sequence, arrival.attempt);
    if error.kind.disposition() != Disposition::Retry || spent >= max_deliver {
        return false;
    }
    let delay = retry_delay(arrival.attempt);
    tracing::warn!(%id, attempt = arrival.attempt, error = %error, ?delay, "job failed; handing it back for another attempt");
    shared.counters.retried.fetch_add(1, Ordering::Relaxed);
    shared.config.metrics.job(&arrival.kind, "retried");
    if let Some(trace) = &arrival.trace {
        trace.outcome("retried", Some(error));
    }
    let _ = arrival.message.ack_with(AckKind::Nak(Some(delay))).await;
    true
}

/// The result event that answers the job.
fn result_event(shared: &Shared, arrival: &Arrival, id: String, outcome: Outcome) -> ResultEvent {
    let finished_at = OffsetDateTime::now_utc();
    let ms = |d: time::Duration| d.as_seconds_f64().max(0.0) * 1000.0;
    let (status, output, error) = match outcome.result {
        Ok(output) => (Status::Succeeded, output, None),
        Err(error) => (
            Status::Failed,
            serde_json::Value::Null,
            Some(error.bounded()),
        ),
    };
    let device = match &error {
        Some(e) if outcome.compute_ms == 0.0 && e.kind != ErrorKind::Internal => "none".to_owned(),
        _ => shared.config.device.to_string(),
    };
    let envelope = &arrival.envelope;
    // Waiting here for a compute slot is queueing, not running.
    let started_at = (arrival.started_at + outcome.waited).min(finished_at);
    ResultEvent {
        id,
        kind: arrival.kind.clone(),
        status,
        device,
        class: arrival.class,
        worker: shared.config.name.clone(),
        attempt: arrival.attempt,
        enqueued_at: envelope.enqueued_at,
        started_at,
        finished_at,
        queue_ms: ms(started_at - envelope.enqueued_at),
        compute_ms: outcome.compute_ms,
        total_ms: ms(finished_at - envelope.enqueued_at),
        output,
        error,
        flops: outcome.flops,
        routing: envelope.routing.clone(),
        replay: envelope.replay,
    }
}

/// Delete an object this run stored for nobody (best effort).
async fn delete_object(shared: &Shared, name: String) {
    if let Ok(bucket) = crate::data::bucket(shared).await {
        let _ = kiln_data::store::remove(bucket, &name).await;
    }
}

/// Store the result. The result is computed; when the server cannot store it right now (a
/// stream leader election in a cluster, a server restart) keep the job, tell the server it is
/// still in progress, and try again: handing it back would spend one of its deliveries on a
/// fault that is not the job's. Only after [`RESULT_PATIENCE`] is it handed back, and this
/// returns `None`; else whether this run's result is the job's answer or one was stored
/// before it.
async fn store(shared: &Shared, arrival: &Arrival, fitted: &Fitted) -> Option<Answer> {
    let (message, event) = (&arrival.message, &fitted.event);
    let patience = tokio::time::Instant::now() + RESULT_PATIENCE;
    let mut pause = Duration::from_millis(200);
    // A publish whose answer was lost may have stored the result: then a later try finds
    // "answered before", and the answer is this run's own (it was not counted, and its
    // stored output was removed from under it).
    let mut maybe_stored = false;
    loop {
        let trace = arrival.trace.as_ref();
        match publish_result(
            &shared.js,
            shared.result_ids,
            fitted,
            Some(&arrival.trace_context),
            trace,
        )
        .await
        {
            Ok(Answer::Now) => return Some(Answer::Now),
            Ok(Answer::Before) => {
                if maybe_stored {
                    match crate::publish::stored_result(&shared.js, event).await {
                        Some(stored) if stored == fitted.body => return Some(Answer::Now),
                        Some(_) => {}
                        // Whose it is cannot be told: its output, maybe named by it, stays.
                        None => return Some(Answer::Before),
                    }
                }
                // This run's stored output is nobody's answer.
                if let Some(name) = stored_object_name(event) {
                    // Boxed: the object store's futures are large and this is rare.
                    Box::pin(delete_object(shared, name)).await;
                }
                return Some(Answer::Before);
            }
            Err(e) if tokio::time::Instant::now() + pause < patience => {
                tracing::warn!(id = %event.id, error = %e, ?pause, "could not publish result; retrying");
                maybe_stored = true;
                let _ = message.ack_with(AckKind::Progress).await;
                // The pause grows to 5 s, past a short ack wait: progress acks go on meanwhile.
                let progress = shared.ack_wait.progress();
                crate::data::with_progress(message, progress, tokio::time::sleep(pause)).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                // The result is not stored: hand the job back so that it is answered later.
                tracing::error!(id = %event.id, error = %e, "could not publish result; handing job back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return None;
            }
        }
    }
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

/// Backoff before attempt `attempt + 1`: 1 s, 4 s, 9 s … capped at one minute.
fn retry_delay(attempt: u64) -> Duration {
    Duration::from_secs((attempt * attempt).min(60))
}
