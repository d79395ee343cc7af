//! What `KILN_DATA` holds (`kiln ls`), and the chunks no object names (`kiln rm --orphans`):
//! an upload killed before it stored its object's info leaves its chunks under no name, counted
//! against the bucket's `max_bytes` until they age out with its maximum age.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::object_store::ObjectInfo;
use futures::StreamExt as _;
use kiln_proto::BUCKET_DATA;
use time::OffsetDateTime;

use super::Bucket;
use super::chunks::{chunk_subject, deleted_mark};
use crate::formats::DataError;

/// One object in a [`Listing`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its info, as stored.
    pub info: ObjectInfo,
    /// When its info was stored (the stream's time, whatever the info says).
    pub stored: OffsetDateTime,
}

/// The live objects of `KILN_DATA` whose names start with a prefix, by name.
#[derive(Debug, Default)]
pub struct Listing {
    /// The objects, by name.
    pub objects: Vec<Listed>,
    /// Names whose stored info another client wrote in a form kiln cannot read (no object
    /// kiln can fetch; `kiln rm` removes them).
    pub unreadable: Vec<String>,
    /// Entries on subjects that encode no name as kiln addresses names (another client wrote
    /// them), by subject: left alone, since they may be objects of a client that encodes names
    /// otherwise.
    pub stray: Vec<String>,
    /// The chunk names (`nuid`s) of every info stored, whatever its name or form: chunks
    /// these name are never orphans.
    named: HashSet<String>,
}

/// Chunks that no stored info names.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The subject the chunks are stored on.
    pub subject: String,
    /// The sequence of the newest of them.
    pub last_seq: u64,
    /// How many there are.
    pub chunks: u64,
    /// When the newest of them was stored.
    pub newest: OffsetDateTime,
}

/// How long the listing waits for each info once the server said more are coming.
const PATIENCE: Duration = Duration::from_secs(10);

fn io(what: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Io(format!(
        "could not {what} {BUCKET_DATA} ({e}); check the connection to NATS"
    ))
}

/// Every live object whose name starts with `prefix`, read from the last info stored under
/// each name (one ordered consumer; the infos are a few hundred bytes each).
pub async fn list(store: &Bucket, prefix: &str) -> Result<Listing, DataError> {
    let consumer = store
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: store.js.client().new_inbox(),
            filter_subject: format!("$O.{BUCKET_DATA}.M.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            description: Some("kiln ls".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| io("list", e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| io("list", e))?;
    let mut listing = Listing::default();
    while pending > 0 {
        let message = match tokio::time::timeout(PATIENCE, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(io("list", e)),
            Ok(None) => return Err(io("list", "the listing ended early")),
            Err(_) => return Err(io("list", format!("no info came within {PATIENCE:?}"))),
        };
        let meta = message.info().map_err(|e| io("list", e))?;
        pending = meta.pending;
        let stored = meta.published;
        listing.add(&message.subject, &message.payload, stored, prefix);
        if listing.stray.len() > STRAY_KEPT {
            listing.stray.truncate(STRAY_KEPT);
        }
    }
    listing
        .objects
        .sort_by(|a, b| a.info.name.cmp(&b.info.name));
    listing.unreadable.sort();
    listing.stray.sort();
    Ok(listing)
}

impl Listing {
    /// Only the objects and unreadable entries whose names start with `prefix` (one read of
    /// the bucket serves both the orphans, found against every name, and the prefix).
    pub fn named(mut self, prefix: &str) -> Listing {
        self.objects.retain(|o| o.info.name.starts_with(prefix));
        self.unreadable.retain(|name| name.starts_with(prefix));
        self
    }

    fn add(&mut self, subject: &str, payload: &[u8], stored: OffsetDateTime, prefix: &str) {
        // The name is the one the subject encodes, which every read and removal addresses
        // (another client may write an info naming something else).
        let Some(name) = name_of(subject) else {
            if let Some(nuid) = entry_nuid(payload) {
                self.named.insert(nuid);
            }
            if !deleted_mark(payload) {
                self.stray.push(subject.to_owned());
            }
            return;
        };
        match serde_json::from_slice::<ObjectInfo>(payload) {
            Ok(info) if info.deleted => {}
            Ok(mut info) => {
                self.named.insert(info.nuid.clone());
                if name.starts_with(prefix) {
                    info.name = name;
                    self.objects.push(Listed { info, stored });
                }
            }
            Err(_) if deleted_mark(payload) => {}
            Err(_) => {
                if let Some(nuid) = entry_nuid(payload) {
                    self.named.insert(nuid);
                }
                if name.starts_with(prefix) {
                    self.unreadable.push(name);
                }
            }
        }
    }
}

/// The chunk name an entry gives, where it is JSON with a string `nuid`.
fn entry_nuid(payload: &[u8]) -> Option<String> {
    let entry: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(entry.get("nuid")?.as_str()?.to_owned())
}

/// Most stray entries a listing keeps (each is one subject another client wrote).
const STRAY_KEPT: usize = 10_000;

/// The object name an info's subject encodes (`$O.KILN_DATA.M.<base64 name>`, URL-safe and
/// padded, as kiln, the Go client and nats-py write it, and as `kiln get` and `kiln rm`
/// address it), if it is written so.
fn name_of(subject: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = subject.strip_prefix(&format!("$O.{BUCKET_DATA}.M."))?;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .ok()?;
    let name = String::from_utf8(bytes).ok()?;
    (super::chunks::meta_subject(&name) == subject).then_some(name)
}

/// The chunks no info in `listing` (made with any prefix, before this call) names, oldest
/// first. A put on its way has chunks and no info yet: [`remove_orphans`] leaves recent ones.
pub async fn orphans(store: &Bucket, listing: &Listing) -> Result<Vec<Orphan>, DataError> {
    let mut subjects = store
        .stream
        .info_with_subjects(chunk_subject(">"))
        .await
        .map_err(|e| io("read the chunks of", e))?;
    let mut found = Vec::new();
    let chunks_of = chunk_subject("");
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| io("read the chunks of", e))?;
        let nuid = subject.strip_prefix(&chunks_of).unwrap_or(&subject);
        if listing.named.contains(nuid) {
            continue;
        }
        let last = store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| io("read the chunks of", e))?;
        found.push(Orphan {
            subject,
            last_seq: last.sequence,
            chunks: count as u64,
            newest: last.time,
        });
    }
    found.sort_by_key(|o| o.newest);
    Ok(found)
}

/// What [`remove_orphans`] purged.
#[derive(Debug, Default)]
pub struct Purged {
    /// Uploads whose chunks were purged.
    pub uploads: usize,
    /// Chunks purged.
    pub chunks: u64,
    /// Orphans left, their newest chunk younger than the limit.
    pub left: usize,
}

/// Purge the chunks of each orphan whose newest chunk is older than `older_than` (an upload
/// that stored nothing for that long is not coming back; measured against this machine's
/// clock), up to that newest chunk (one stored since is kept).
pub async fn remove_orphans(
    store: &Bucket,
    orphans: Vec<Orphan>,
    older_than: Duration,
) -> Result<Purged, DataError> {
    let now = OffsetDateTime::now_utc();
    let mut purged = Purged::default();
    for orphan in orphans {
        if now - orphan.newest < older_than {
            purged.left += 1;
            continue;
        }
        let purge = store.stream.purge().filter(&orphan.subject);
        let done = purge
            .sequence(orphan.last_seq + 1)
            .await
            .map_err(|e| io("purge chunks from", e))?;
        if done.purged > 0 {
            purged.uploads += 1;
            purged.chunks += done.purged;
        }
    }
    Ok(purged)
}

/// Bytes the bucket's stream holds now, and the most it may (`None`: no limit).
pub async fn usage(store: &Bucket) -> Result<(u64, Option<u64>), DataError> {
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| io("read the size of", e))?;
    let max = u64::try_from(info.config.max_bytes).ok();
    Ok((info.state.bytes, max))
}
