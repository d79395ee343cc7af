//! Hand-backs: a job this worker gives up through no fault of the job's goes back to the
//! queue without spending one of its deliveries.

use std::sync::atomic::Ordering;

use kiln_proto::{HEADER_HANDBACKS, HEADER_MSG_ID, JobError};

use crate::arrival::Arrival;
use crate::shared::Shared;

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
/// counts, `Kiln-Enqueued-At` keeps its submission time, `Nats-Msg-Id` is a
/// [`kiln_proto::copy_msg_id`]) and
/// this delivery is acked once the copy is stored. The copy joins the back of the queue.
/// Returns false when that was not possible (the queue is full, the server did not answer,
/// [`MAX_HANDBACKS`] reached): the caller then hands the job back the usual way.
pub(crate) async fn hand_back(
    shared: &Shared,
    arrival: &Arrival,
    id: &str,
    error: &JobError,
) -> bool {
    let message = &arrival.message;
    let handbacks = arrival.envelope.handbacks;
    if handbacks >= MAX_HANDBACKS {
        tracing::warn!(%id, handbacks, "job handed back too often; retrying it as a failed attempt");
        return false;
    }
    let mut headers = arrival.envelope.copy_headers(message.headers.as_ref(), id);
    headers.insert(HEADER_HANDBACKS, (handbacks + 1).to_string().as_str());
    let msg_id = kiln_proto::copy_msg_id("handback", arrival.stream_sequence, id);
    headers.insert(HEADER_MSG_ID, msg_id.as_str());
    let copy = arrival.copy_subject();
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
    tracing::info!(%id, attempt = arrival.attempt, handbacks = handbacks + 1, reason = %error.message, "job handed back without spending a delivery");
    shared.counters.handed_back.fetch_add(1, Ordering::Relaxed);
    shared.config.metrics.job(&arrival.kind, "handed_back");
    if let Some(trace) = &arrival.trace {
        trace.outcome("handed_back", Some(error));
    }
    // Acked and confirmed: the worker is stopping, and an ack still in the client's buffer
    // when the process exits would leave this delivery to come back beside its copy.
    if let Err(e) = message.double_ack().await {
        // The delivery comes back after the ack wait and runs twice; its result is stored
        // once (a job id is answered once).
        tracing::warn!(%id, error = %e, "ack of a handed-back job failed; it may run twice");
    }
    true
}
