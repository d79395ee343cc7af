//! Jobs the server gave up on: when a job has been delivered `max_deliver` times and never
//! acknowledged (its workers crashed or stalled on every attempt), nats-server publishes a
//! max-deliveries advisory and stops delivering it, leaving it in `KILN_JOBS`. Nobody would
//! ever answer it. The advisories are captured in `KILN_ADVISORIES` (so none is missed while
//! no worker listens); every worker serves them from the `dead-letters` consumer: it reads
//! the job back, answers it with a `failed` result, keeps a copy in `KILN_DLQ`, removes it
//! from `KILN_JOBS`, and only then acks the advisory. Each step is idempotent (message ids,
//! delete-if-present), so an advisory handled twice still yields one result and one letter.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, stream::LastRawMessageErrorKind};
use futures::StreamExt as _;
use kiln_proto::streams::{CONSUMER_DEAD_LETTERS, STREAM_ADVISORIES, STREAM_JOBS};
use kiln_proto::{
    DeviceClass, ErrorKind, JobError, JobSubject, MaxDeliveriesAdvisory, ResultEvent, Status,
};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::publish::ResultIds;

/// Serve the `dead-letters` consumer until `stop` turns true; results carry message ids as
/// `ids` says (the worker's reading of `KILN_RESULTS` at start).
pub(crate) async fn serve(
    js: jetstream::Context,
    (worker, ids): (String, ResultIds),
    mut stop: watch::Receiver<bool>,
) {
    let consumer: jetstream::consumer::PullConsumer = match async {
        js.get_stream(STREAM_ADVISORIES)
            .await
            .map_err(|e| e.to_string())?
            .get_consumer(CONSUMER_DEAD_LETTERS)
            .await
            .map_err(|e| e.to_string())
    }
    .await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            // Without it this worker still serves jobs; another worker (or a restart with
            // the right permissions) answers the jobs the server gave up on.
            tracing::warn!(error = %e, "cannot read {STREAM_ADVISORIES}/{CONSUMER_DEAD_LETTERS}; this worker will not dead-letter jobs the server gave up on");
            return;
        }
    };
    let jobs = match js.get_stream(STREAM_JOBS).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open {STREAM_JOBS} for dead-lettering");
            return;
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = consumer
            .batch()
            .max_messages(16)
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pulling max-deliveries advisories failed; retrying in 1 s");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                next = batch.next() => next,
            };
            let Some(Ok(advisory)) = next else { break };
            match answer(&js, &jobs, (&worker, ids), &advisory.payload).await {
                Ok(()) => {
                    let _ = advisory.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not dead-letter a job the server gave up on; retrying in 5 s");
                    let _ = advisory
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
    }
}

/// Turn one advisory into a failed result and a dead letter, and remove the job.
async fn answer(
    js: &jetstream::Context,
    jobs: &jetstream::stream::Stream,
    (worker, ids): (&str, ResultIds),
    body: &[u8],
) -> Result<(), String> {
    let advisory: MaxDeliveriesAdvisory = match serde_json::from_slice(body) {
        Ok(advisory) => advisory,
        Err(e) => {
            // Not the server's: nothing to answer, and retrying cannot help.
            tracing::warn!(error = %e, "ignoring a malformed max-deliveries advisory");
            return Ok(());
        }
    };
    if advisory.stream != STREAM_JOBS {
        return Ok(());
    }
    if advisory.stream_seq == 0 {
        // No message has sequence 0 (the server answers a read of it `bad request` every
        // time): not the server's, and retrying cannot help.
        tracing::warn!("ignoring a max-deliveries advisory for stream sequence 0");
        return Ok(());
    }
    let job = match jobs.get_raw_message(advisory.stream_seq).await {
        Ok(job) => job,
        // Acked after all (a stalled worker finished late), or already dead-lettered.
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => return Ok(()),
        Err(e) => return Err(format!("reading job {}: {e}", advisory.stream_seq)),
    };
    let event = given_up(&job, &advisory, worker);
    // Its last run stored its result and stopped before its ack reached the server: the job
    // is answered, and needs no dead letter (a replay would run it again), only removing. A
    // lookup that fails (a worker user without the get, a slow server) dead-letters it as
    // before rather than hold the advisory for ever: a spare dead letter, not a lost job.
    let answered = (event.kind.as_str(), event.id.as_str(), event.replay);
    if crate::publish::has_result(js, answered, Duration::from_secs(1)).await {
        tracing::info!(id = %event.id, kind = %event.kind, deliveries = advisory.deliveries, "the server gave up on a job another run answered; removing it without a dead letter");
        return remove(jobs, advisory.stream_seq).await;
    }
    tracing::warn!(id = %event.id, kind = %event.kind, deliveries = advisory.deliveries, consumer = %advisory.consumer, "the server gave up on a job; answering it as failed and dead-lettering it");
    crate::publish::dead_letter(js, &event, job.subject.as_str(), &job.headers, &job.payload)
        .await?;
    let fitted = crate::publish::fitted(js.client().max_payload(), event);
    crate::publish::publish_result(js, ids, &fitted, Some(&job.headers), None).await?;
    remove(jobs, advisory.stream_seq).await
}

/// Delete the job at `sequence` from `KILN_JOBS`.
async fn remove(jobs: &jetstream::stream::Stream, sequence: u64) -> Result<(), String> {
    match jobs.delete_message(sequence).await {
        Ok(_) => Ok(()),
        // Gone already: someone else finished this advisory first.
        Err(e) if e.to_string().contains("no message found") => Ok(()),
        Err(e) => Err(format!("removing job {sequence}: {e}")),
    }
}

/// The `failed` result that answers a job the server gave up on.
fn given_up(
    job: &jetstream::message::StreamMessage,
    advisory: &MaxDeliveriesAdvisory,
    worker: &str,
) -> ResultEvent {
    let subject = JobSubject::parse(job.subject.as_str());
    let copy = kiln_proto::subject::is_copy_subject(job.subject.as_str());
    let envelope = kiln_proto::Envelope::read(copy, Some(&job.headers), job.time);
    let id = envelope.undecoded_id(&job.payload, advisory.stream_seq);
    // A kind this build does not run is answered as `unknown`, as the worker does: result,
    // dead-letter and metric subjects stay one per real kind.
    let (kind, class) = crate::arrival::answered_as(&subject, DeviceClass::Cpu);
    // Its work, as its runs would have reported it (0 for a job that does not decode).
    let flops = kiln_kernels::find(&kind)
        .and_then(|entry| {
            let codec = kiln_proto::Codec::from_headers(Some(&job.headers)).ok()?;
            let limits = kiln_proto::Limits {
                max_elements: u64::MAX,
                ..kiln_proto::Limits::default()
            };
            entry.decode(codec, &job.payload, &limits).ok()
        })
        .map_or(0.0, |job| job.plan.flops);
    // The scheduler's consumer gives up on an auto job it could not route in time (it
    // stalled, or lost its connection), which no worker ever saw.
    let why = match advisory.consumer == kiln_proto::streams::CONSUMER_SCHEDULER {
        true => {
            "the scheduler routed it within the ack wait on none of them (it stalled or \
                 lost its connection; no worker saw the job)"
        }
        false => "no worker acknowledged it within the ack wait (each crashed or stalled on it)",
    };
    let error = JobError::new(
        ErrorKind::Internal,
        format!(
            "gave up after {} from {}: {why}; kept in KILN_DLQ, resubmit it with `kiln dlq \
             replay`",
            match advisory.deliveries {
                1 => "1 delivery".to_owned(),
                n => format!("{n} deliveries"),
            },
            advisory.consumer
        ),
    );
    let now = OffsetDateTime::now_utc();
    let enqueued_at = envelope.enqueued_at;
    let waited_ms = (now - enqueued_at).as_seconds_f64().max(0.0) * 1000.0;
    ResultEvent {
        id,
        kind,
        status: Status::Failed,
        device: "none".into(),
        class,
        worker: worker.to_owned(),
        attempt: advisory.deliveries,
        enqueued_at,
        started_at: now,
        finished_at: now,
        queue_ms: waited_ms,
        compute_ms: 0.0,
        total_ms: waited_ms,
        output: serde_json::Value::Null,
        error: Some(error),
        flops,
        routing: None,
        replay: envelope.replay,
    }
}
