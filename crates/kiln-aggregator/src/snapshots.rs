//! Storing metrics snapshots: each on the condition that its subject's last message is the one
//! this aggregator read or wrote, each named by the aggregator run that stored it.

use async_nats::HeaderMap;
use async_nats::jetstream;
use kiln_proto::streams;
use kiln_proto::{HEADER_MSG_ID, MetricsSnapshot, subject};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::service::Sequences;

/// Publish snapshots, each on the condition that its subject's last message is the one in
/// `sequences`, and wait until the server has stored every one (`sequences` then holds
/// theirs).
pub(crate) async fn store(
    js: &jetstream::Context,
    snapshots: &[MetricsSnapshot],
    (now, instance): (OffsetDateTime, &str),
    sequences: &mut Sequences,
) -> Result<()> {
    let mut acks = Vec::with_capacity(ACK_WINDOW);
    for snapshot in snapshots {
        let subject = subject::metrics(&snapshot.kind, &snapshot.class);
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_MSG_ID,
            format!("{subject}-{}", now.unix_timestamp_nanos()).as_str(),
        );
        headers.insert(HEADER_AGGREGATOR, instance);
        let last = sequences.get(&subject).copied().unwrap_or(0);
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last.to_string().as_str(),
        );
        acks.push(publish(js, subject, headers, snapshot).await?);
        if acks.len() >= ACK_WINDOW {
            stored(&mut acks, sequences).await?;
        }
    }
    stored(&mut acks, sequences).await
}

/// Publishes a store has in flight at most before it waits for their acknowledgements:
/// async-nats lets a client have 5,000 unacknowledged publishes and then makes the next one
/// wait for a free slot, so a store that published the states of more results than that
/// before awaiting any would wait for ever.
const ACK_WINDOW: usize = 1000;

/// Wait until the server has stored every publish in `acks`.
async fn stored(
    acks: &mut Vec<(String, jetstream::context::PublishAckFuture)>,
    sequences: &mut Sequences,
) -> Result<()> {
    // Every ack is read, also after a refusal: a sequence not recorded would make this
    // aggregator's own next snapshot there look like another's.
    let mut first_error = None;
    for (subject, ack) in acks.drain(..) {
        let error = match ack.await {
            Ok(ack) => {
                sequences.insert(subject, ack.sequence);
                continue;
            }
            Err(e) if e.to_string().contains("wrong last sequence") => {
                Error::Superseded { subject }
            }
            Err(e) => Error::Publish {
                subject,
                message: e.to_string(),
            },
        };
        first_error.get_or_insert(error);
    }
    first_error.map_or(Ok(()), Err)
}

/// The last message on a snapshot subject, when this aggregator may write over it.
pub(crate) enum Last {
    /// No metrics snapshot (published by hand, or forged), at this sequence.
    NoSnapshot(u64),
    /// One of this aggregator's own snapshots ([`HEADER_AGGREGATOR`]), at this sequence.
    Ours(u64),
}

/// What the last message on snapshot subject `subject` is, when the aggregator named
/// `instance` may write over it (`None` when it is another aggregator's snapshot, or cannot
/// be read).
pub(crate) async fn last_message(
    js: &jetstream::Context,
    subject: &str,
    instance: &str,
) -> Option<Last> {
    let stream = js.get_stream(streams::STREAM_METRICS).await.ok()?;
    let message = stream.get_last_raw_message_by_subject(subject).await.ok()?;
    if serde_json::from_slice::<MetricsSnapshot>(&message.payload).is_err() {
        return Some(Last::NoSnapshot(message.sequence));
    }
    let by = message.headers.get(HEADER_AGGREGATOR).map(|v| v.as_str());
    (by == Some(instance)).then_some(Last::Ours(message.sequence))
}

/// The header naming the aggregator run that stored a snapshot (a name unique to the run),
/// so that a snapshot it stored itself is told from another aggregator's.
const HEADER_AGGREGATOR: &str = "Kiln-Aggregator";

/// Publish `body` as JSON without waiting for the server's acknowledgement (returned).
async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    body: &impl serde::Serialize,
) -> Result<(String, jetstream::context::PublishAckFuture)> {
    let error = |e: &dyn std::fmt::Display| Error::Publish {
        subject: subject.clone(),
        message: e.to_string(),
    };
    let body = serde_json::to_vec(body).map_err(|e| error(&e))?;
    let ack = js
        .publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(|e| error(&e))?;
    Ok((subject, ack))
}
