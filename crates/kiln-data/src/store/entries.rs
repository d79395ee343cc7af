//! Writing an object's entry (its info on `$O.KILN_DATA.M.<name>`) only over the entry it
//! read: a put or a removal publishes with `Nats-Expected-Last-Subject-Sequence` set to the
//! sequence of the entry it replaces, and reads again when another client wrote one since.
//! So it removes the chunks of exactly the object it replaced: two puts of one name at once
//! had each removed the chunks of the object both had read, leaving the first one's chunks
//! under no name (and a put racing a removal left the put's).

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::object_store::ObjectInfo;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use kiln_proto::BUCKET_DATA;

use super::Bucket;
use super::chunks::{chunk_subject, deleted_mark, meta_subject};
use super::names::{bad_name, subject_token, usable_name};
use crate::formats::DataError;

/// How many times an entry is read again when other clients keep writing it.
pub(super) const ATTEMPTS: usize = 20;

/// The entry stored last under a name.
pub(super) struct Entry {
    /// Its stream sequence (0: none stored).
    pub(super) seq: u64,
    pub(super) payload: bytes::Bytes,
}

impl Entry {
    /// The chunk name (`nuid`) the entry gives, where it is JSON and a subject token.
    pub(super) fn nuid(&self) -> Option<String> {
        let entry: serde_json::Value = serde_json::from_slice(&self.payload).ok()?;
        let nuid = entry.get("nuid")?.as_str()?;
        subject_token(nuid).then(|| nuid.to_owned())
    }

    fn size(&self) -> u64 {
        serde_json::from_slice::<serde_json::Value>(&self.payload)
            .ok()
            .and_then(|e| e.get("size")?.as_u64())
            .unwrap_or(0)
    }
}

fn failed(what: &str, name: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Io(format!(
        "could not {what} object {name} in {BUCKET_DATA} ({e}); check the connection to NATS"
    ))
}

/// The entry stored last under `name` (an empty one, sequence 0, when none is).
pub(super) async fn last_entry(store: &Bucket, name: &str) -> Result<Entry, DataError> {
    match store
        .stream
        .get_last_raw_message_by_subject(&meta_subject(name))
        .await
    {
        Ok(message) => Ok(Entry {
            seq: message.sequence,
            payload: message.payload,
        }),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Entry {
            seq: 0,
            payload: bytes::Bytes::new(),
        }),
        Err(e) => Err(failed("look up", name, e)),
    }
}

/// Publish `body` as `name`'s entry (rolling up the ones before it), provided the last one
/// stored is still sequence `over`.
pub(super) async fn publish_over(
    store: &Bucket,
    name: &str,
    body: Vec<u8>,
    over: u64,
) -> Result<(), PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_ROLLUP, "sub");
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        over.to_string().as_str(),
    );
    store
        .js
        .publish_with_headers(meta_subject(name), headers, body.into())
        .await?
        .await
        .map(drop)
}

/// Whether a write refused by [`publish_over`] should read the entry again and retry: another
/// write came first (after a moment to commit when it was still in flight on a cluster,
/// error 10164), or the stream could not check the condition yet (error 10163).
pub(super) async fn read_again(error: &PublishError) -> bool {
    let text = error.to_string();
    let pause = match () {
        () if kiln_proto::wrong_last_sequence(&text) && text.contains("10164") => 10,
        () if kiln_proto::wrong_last_sequence(&text) => 0,
        () if kiln_proto::last_sequence_not_ready(&text) => 50,
        () => return false,
    };
    if pause > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    true
}

/// Remove object `name` (`kiln rm`; a link removes the link): its size, or `None` when it was
/// not there (never stored, or deleted by any client, nats-py's form included). An entry
/// another client wrote in a form async-nats cannot read (so cannot mark deleted) is purged,
/// with the chunks it names.
pub async fn remove(store: &Bucket, name: &str) -> Result<Option<u64>, DataError> {
    if !usable_name(name) {
        return Err(bad_name(name));
    }
    for _ in 0..ATTEMPTS {
        let entry = last_entry(store, name).await?;
        if entry.seq == 0 || deleted_mark(&entry.payload) {
            return Ok(None);
        }
        let Ok(mut info) = serde_json::from_slice::<ObjectInfo>(&entry.payload) else {
            return purge_unreadable(store, name, &entry).await.map(Some);
        };
        let size = info.size as u64;
        (info.chunks, info.size, info.deleted) = (0, 0, true);
        let body = serde_json::to_vec(&info).map_err(|e| failed("remove", name, e))?;
        match publish_over(store, name, body, entry.seq).await {
            Ok(()) => {}
            Err(e) if read_again(&e).await => continue,
            Err(e) => return Err(failed("remove", name, e)),
        }
        // The object is removed: chunks left by a failed purge are named by no live entry
        // now, for `kiln rm --orphans` (or the bucket's maximum age).
        if let Some(nuid) = entry.nuid()
            && let Err(e) = store.stream.purge().filter(chunk_subject(&nuid)).await
        {
            tracing::warn!(object = name, error = %e, "removed, but its chunks stay until `kiln rm --orphans` or they age out");
        }
        return Ok(Some(size));
    }
    Err(failed(
        "remove",
        name,
        format!("other clients wrote it {ATTEMPTS} times as it was removed"),
    ))
}

/// Purge `entry`, which does not parse as an object's info, and the chunks it names; the
/// size it gives. Only the entry read goes: one written since is kept.
async fn purge_unreadable(store: &Bucket, name: &str, entry: &Entry) -> Result<u64, DataError> {
    if let Some(nuid) = entry.nuid() {
        let purge = store.stream.purge().filter(chunk_subject(&nuid));
        purge.await.map_err(|e| failed("remove", name, e))?;
    }
    store
        .stream
        .purge()
        .filter(meta_subject(name))
        .sequence(entry.seq + 1)
        .await
        .map_err(|e| failed("remove", name, e))?;
    Ok(entry.size())
}
