//! Publishing what a worker answers: result events on `results.<kind>.<id>`, and dead letters
//! in `KILN_DLQ`. Both are idempotent: their message ids come from the job id.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use kiln_proto::{
    HEADER_DLQ_REASON, HEADER_DLQ_SUBJECT, HEADER_JOB_ID, HEADER_MSG_ID, JobError, ResultEvent,
    Status, subject,
};

/// Whether result events carry a `Nats-Msg-Id`. `KILN_RESULTS` keeps one message per subject
/// (`results.<kind>.<id>`: one per job) and every result is published only onto an empty
/// subject ([`kiln_proto::expect_no_result`]), which is what makes a result stored once
/// however often its job is delivered; a message id on top would only make the server keep
/// every result's id for the 10-minute duplicate window: a map insert per result, which took
/// kiln / the JetStream ceiling in `kiln-bench pipeline` from 0.687 down to 0.518 (medians of
/// five A/B runs). A results stream made by an older kiln without that limit still gets the
/// ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultIds {
    /// The stream keeps one result per subject: no message id.
    Omitted,
    /// The stream does not: each result carries [`ResultEvent::msg_id`].
    Sent,
}

impl ResultIds {
    /// What `KILN_RESULTS` as it is on the server needs (ids, when it cannot be read).
    pub(crate) async fn of(js: &jetstream::Context) -> Self {
        let Ok(mut stream) = js.get_stream(kiln_proto::streams::STREAM_RESULTS).await else {
            return ResultIds::Sent;
        };
        let Ok(info) = stream.info().await else {
            return ResultIds::Sent;
        };
        if info.config.discard == jetstream::stream::DiscardPolicy::New {
            tracing::warn!(
                "{} was made by an older kiln: once it holds --results-max-bytes it refuses \
                 every new result, and jobs wait until old results age out; `kiln init` lets \
                 the oldest results make room instead",
                kiln_proto::streams::STREAM_RESULTS
            );
        }
        match info.config.max_messages_per_subject {
            1 => ResultIds::Omitted,
            _ => ResultIds::Sent,
        }
    }
}

/// Publish a result event, encoded once by [`fitted`], and wait for the server to store it.
/// The result carries the trace on: this worker's publish span when it traces, else
/// `trace_context`, the job's own as it came.
pub(crate) async fn publish_result(
    js: &jetstream::Context,
    ids: ResultIds,
    fitted: &Fitted,
    trace_context: Option<&HeaderMap>,
    trace: Option<&crate::trace::JobTrace>,
) -> Result<Answer, String> {
    let (event, body) = (&fitted.event, fitted.body.clone());
    let mut headers = HeaderMap::new();
    kiln_proto::expect_no_result(&mut headers);
    if ids == ResultIds::Sent {
        headers.insert(HEADER_MSG_ID, event.msg_id().as_str());
    }
    let subject = subject::result_of(&event.kind, &event.id, event.replay);
    let _span = match trace {
        Some(trace) => {
            let span = trace.publish(&subject);
            span.inject(&mut headers);
            Some(span)
        }
        None => {
            kiln_telemetry::trace::forward(trace_context, &mut headers);
            None
        }
    };
    // A result is JSON: no Content-Type needed.
    let sent = js.publish_with_headers(subject, headers, body).await;
    let stored = sent.map_err(|e| e.to_string())?.await;
    match stored {
        Ok(ack) => {
            if ack.duplicate {
                tracing::debug!(id = %event.id, "result already stored; this delivery was a duplicate");
                return Ok(Answer::Before);
            }
            Ok(Answer::Now)
        }
        // The results stream keeps one result a job id for as long as results are kept: this
        // job was answered before (a redelivery after a lost ack, an id used again after the
        // duplicate window).
        Err(e) if kiln_proto::already_answered(&e.to_string()) => {
            tracing::info!(id = %event.id, "job already has a stored result; this run's result is dropped");
            Ok(Answer::Before)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the job (`kind`, `id`, `replay`) already has a stored result: another run answered
/// it. One get of the last message on its result subject, made only where that may be so (a
/// job delivered again, a failure on its last delivery, a job the server gave up on), and
/// given `within` (at most 1 s): a lookup that fails or takes longer says no, with a warning,
/// and the job goes on as it did before the lookup existed.
pub(crate) async fn has_result(
    js: &jetstream::Context,
    (kind, id, replay): (&str, &str, u32),
    within: Duration,
) -> bool {
    let subject = subject::result_of(kind, id, replay);
    match last_result(js, &subject, within).await {
        Ok(found) => {
            if found.is_some() {
                tracing::info!(%id, "another run of the job answered it; this one adds nothing");
            }
            found.is_some()
        }
        Err(problem) => {
            // A worker user without `$JS.API.STREAM.MSG.GET.KILN_RESULTS` (nats/secure/secure.conf
            // grants it) is refused, and the server sends no reply: hence the bound.
            tracing::warn!(%id, error = %problem, "could not look up the job's result on {subject}; going on as if it had none");
            false
        }
    }
}

/// The result stored for `event`'s job (its body), `None` when there is none or it cannot be
/// read within [`LOOKUP_AT_MOST`].
pub(crate) async fn stored_result(
    js: &jetstream::Context,
    event: &ResultEvent,
) -> Option<bytes::Bytes> {
    let subject = subject::result_of(&event.kind, &event.id, event.replay);
    last_result(js, &subject, LOOKUP_AT_MOST)
        .await
        .ok()
        .flatten()
}

/// The body of the result stored on `subject` (`None`: none is), read within `within` and
/// at most [`LOOKUP_AT_MOST`]; `Err` says why it could not be read.
async fn last_result(
    js: &jetstream::Context,
    subject: &str,
    within: Duration,
) -> Result<Option<bytes::Bytes>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let lookup = async {
        let results = js
            .get_stream_no_info(kiln_proto::streams::STREAM_RESULTS)
            .await
            .map_err(|e| e.to_string())?;
        match results.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    let within = within.min(LOOKUP_AT_MOST);
    tokio::time::timeout(within, lookup)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

/// The longest a lookup of a job's result holds the job.
const LOOKUP_AT_MOST: Duration = Duration::from_secs(1);

/// Whether a result was stored by this publish or was there before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Now,
    Before,
}

/// Room kept in a message for a result's headers (message id, trace context).
const RESULT_HEADROOM: usize = 4096;

/// A result event and its JSON, encoded once.
pub(crate) struct Fitted {
    pub event: ResultEvent,
    pub body: bytes::Bytes,
}

/// `event` with its JSON, or, when its JSON would not fit in a message of `max` bytes (the
/// server's `max_payload`, which the client keeps current) beside its headers, a `too_large`
/// failure in its place: a result that cannot be stored must still answer the job, never keep
/// it going round.
pub(crate) fn fitted(max: usize, event: ResultEvent) -> Fitted {
    // Sized for a small job's result at once (serde_json starts at 128 bytes and doubles).
    let mut body = Vec::with_capacity(1024);
    let len = match serde_json::to_writer(&mut body, &event).map(|()| body) {
        Ok(body) if body.len().saturating_add(RESULT_HEADROOM) <= max => {
            return Fitted {
                event,
                body: body.into(),
            };
        }
        Ok(body) => body.len(),
        Err(_) => usize::MAX,
    };
    tracing::warn!(id = %event.id, bytes = len, max_payload = max, "result too large for a message; answering too_large");
    let event = ResultEvent {
        status: Status::Failed,
        output: serde_json::Value::Null,
        error: Some(JobError::too_large(format!(
            "its result of {len} bytes does not fit in a message (the server's max_payload is \
             {max} bytes); ask for its output as an object (\"output\": \"object\") or make it \
             smaller"
        ))),
        ..event
    };
    // Small by construction (no output, a bounded error).
    let body = serde_json::to_vec(&event).unwrap_or_default().into();
    Fitted { event, body }
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
    // The kind too: one id sent as two kinds is two jobs, and the server's duplicate window
    // dropped the second one's letter (its job was gone from KILN_JOBS, and not replayable).
    let msg_id = match event.replay {
        0 => format!("dlq-{}.{}", event.kind, event.id),
        n => format!("dlq-{}.{}-replay-{n}", event.kind, event.id),
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
