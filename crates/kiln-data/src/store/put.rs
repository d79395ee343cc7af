//! Storing an object in `KILN_DATA`, in kiln rather than through the client's `put`: that one
//! waits for each chunk's ack before it sends the next (a round trip per chunk), and a put
//! that fails part-way (a full bucket, a lost connection) leaves the chunks it stored behind,
//! where they count against `--data-max-bytes` until they age out: a worker whose output did
//! not fit left another partial copy at every attempt, filling the bucket further. Here a few
//! chunks are in flight at once, and a put that fails removes its chunks before it returns
//! (not one whose task is cancelled mid-write, nor, when the server cannot say whether its
//! info was stored, one whose info ack was lost: those age out).
//! What is stored is what the client stores (chunks on `$O.<bucket>.C.<nuid>`, then the
//! object's info on `$O.<bucket>.M.<name in base64>`, rolled up), so every NATS client reads it.

use std::collections::VecDeque;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::object_store::{ObjectInfo, ObjectOptions, PutError, PutErrorKind};
use base64::Engine as _;
use bytes::BytesMut;
use kiln_proto::BUCKET_DATA;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::chunks::{NameHolds, chunk_subject, name_holds};
use super::entries::{ATTEMPTS, last_entry, publish_over, read_again};
use super::{Bucket, CHUNK_SIZE};

/// Chunks sent before the first of them must be acknowledged: 4 MiB in flight.
pub(crate) const WINDOW: usize = 8;

/// Store everything `reader` yields as object `name` (its name checked by the caller), with
/// `description` (the file it came from),
/// replacing the object of that name, whose chunks are then removed. On failure nothing of
/// this put is left in the bucket, as far as the server can still be told.
pub(crate) async fn put(
    bucket: &Bucket,
    name: &str,
    reader: &mut (impl AsyncRead + Unpin),
    description: Option<String>,
) -> Result<ObjectInfo, PutError> {
    let nuid = nuid::next().to_string();
    let chunks = chunk_subject(&nuid);
    let written = match write_chunks(bucket, &chunks, reader).await {
        Ok(written) => written,
        Err(error) => {
            forget(bucket, &chunks).await;
            return Err(error);
        }
    };
    let info = ObjectInfo {
        name: name.to_owned(),
        description,
        metadata: Default::default(),
        headers: None,
        options: Some(ObjectOptions {
            link: None,
            max_chunk_size: Some(CHUNK_SIZE),
        }),
        bucket: BUCKET_DATA.to_owned(),
        nuid,
        size: written.size,
        chunks: written.chunks,
        modified: Some(time::OffsetDateTime::now_utc()),
        digest: Some(format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(written.digest)
        )),
        deleted: false,
    };
    let replaced = match publish_info(bucket, &info).await {
        Ok(replaced) => replaced,
        // The info may have been stored though its ack was lost: then the put happened, over
        // the entry last read. The chunks go only when the stream (its leader, not a
        // replica that may lag) shows the name holding another object or none.
        Err((error, over)) => match name_holds(&bucket.stream, &info).await {
            Some(NameHolds::It) => over,
            Some(NameHolds::Another | NameHolds::Nothing) => {
                forget(bucket, &chunks).await;
                return Err(error);
            }
            None => return Err(error),
        },
    };
    if let Some(previous) = replaced.filter(|p| *p != info.nuid) {
        let old = chunk_subject(&previous);
        if let Err(e) = bucket.stream.purge().filter(&old).await {
            // The object is stored; what it replaced ages out with --data-max-age.
            tracing::warn!(object = name, error = %e, "could not remove the chunks of the object this one replaced");
        }
    }
    Ok(info)
}

/// What [`write_chunks`] stored.
struct Written {
    size: usize,
    chunks: usize,
    digest: [u8; 32],
}

/// Publish `reader`'s bytes in chunks of [`CHUNK_SIZE`] on `subject`, at most [`WINDOW`] of
/// them not yet acknowledged, and wait for every ack (also after a failure).
async fn write_chunks(
    bucket: &Bucket,
    subject: &str,
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Written, PutError> {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    let mut written = send_chunks(bucket, subject, reader, &mut in_flight).await;
    // Every chunk sent is waited for, also after a failure (their acks fail fast on a full
    // bucket), so that none is stored after a failed put's chunks are removed.
    for ack in in_flight {
        let stored = acked(ack).await;
        if let (Ok(_), Err(error)) = (&written, stored) {
            written = Err(error);
        }
    }
    written
}

async fn send_chunks(
    bucket: &Bucket,
    subject: &str,
    reader: &mut (impl AsyncRead + Unpin),
    in_flight: &mut VecDeque<PublishAckFuture>,
) -> Result<Written, PutError> {
    let mut digest = sha2::Sha256::new();
    let (mut size, mut chunks) = (0, 0);
    loop {
        let chunk = read_chunk(reader).await?;
        if chunk.is_empty() {
            break;
        }
        digest.update(&chunk);
        size += chunk.len();
        chunks += 1;
        if in_flight.len() == WINDOW
            && let Some(oldest) = in_flight.pop_front()
        {
            acked(oldest).await?;
        }
        let ack = bucket
            .js
            .publish(subject.to_owned(), chunk.freeze())
            .await
            .map_err(|e| failed(PutErrorKind::PublishChunks, "chunk publish", e))?;
        in_flight.push_back(ack);
    }
    Ok(Written {
        size,
        chunks,
        digest: digest.finalize().into(),
    })
}

/// Up to [`CHUNK_SIZE`] bytes from `reader`: a full chunk unless the data ends; empty at the
/// end.
async fn read_chunk(reader: &mut (impl AsyncRead + Unpin)) -> Result<BytesMut, PutError> {
    let mut chunk = BytesMut::with_capacity(CHUNK_SIZE);
    while chunk.len() < CHUNK_SIZE {
        let n = reader
            .read_buf(&mut chunk)
            .await
            .map_err(|e| PutError::with_source(PutErrorKind::ReadChunks, e))?;
        if n == 0 {
            break;
        }
    }
    Ok(chunk)
}

async fn acked(ack: PublishAckFuture) -> Result<(), PutError> {
    ack.await
        .map(drop)
        .map_err(|e| failed(PutErrorKind::PublishChunks, "chunk ack", e))
}

/// Publish the object's info over the entry its name holds (read again while other clients
/// write it, see [`entries`](super::entries)): the chunk name of the entry it replaced; on
/// failure, also that of the entry it last tried to replace.
async fn publish_info(
    bucket: &Bucket,
    info: &ObjectInfo,
) -> Result<Option<String>, (PutError, Option<String>)> {
    let body = serde_json::to_vec(info)
        .map_err(|e| (PutError::with_source(PutErrorKind::Other, e), None))?;
    let mut over = None;
    for _ in 0..ATTEMPTS {
        let previous = last_entry(bucket, &info.name).await.map_err(|e| {
            let error = PutError::with_source(PutErrorKind::PublishMetadata, e.to_string());
            (error, over.clone())
        })?;
        over = previous.nuid();
        match publish_over(bucket, &info.name, body.clone(), previous.seq).await {
            Ok(()) => return Ok(over),
            Err(e) if read_again(&e).await => continue,
            Err(e) => {
                let error = failed(PutErrorKind::PublishMetadata, "info publish", e);
                return Err((error, over));
            }
        }
    }
    let error = failed(
        PutErrorKind::PublishMetadata,
        "info publish",
        "other clients kept writing the name",
    );
    Err((error, over))
}

fn failed(kind: PutErrorKind, what: &str, error: impl std::fmt::Display) -> PutError {
    PutError::with_source(kind, format!("failed {what}: {error}"))
}

/// Remove the chunks a failed put stored (best effort: when the server cannot be told, they
/// age out with `--data-max-age`).
async fn forget(bucket: &Bucket, chunk_subject: &str) {
    if let Err(e) = bucket.stream.purge().filter(chunk_subject).await {
        tracing::warn!(subject = chunk_subject, error = %e, "could not remove the chunks of a failed put");
    }
}
