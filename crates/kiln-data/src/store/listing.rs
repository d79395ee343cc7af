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
    /// The chunk names (`nuid`s) of every info stored, whatever its name or form: chunks
    /// these name are never orphans.
    named: HashSet<String>,
}

/// Chunks that no stored info names.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The name the chunks are stored under.
    pub nuid: String,
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
    }
    listing
        .objects
        .sort_by(|a, b| a.info.name.cmp(&b.info.name));
    listing.unreadable.sort();
    Ok(listing)
}

impl Listing {
    fn add(&mut self, subject: &str, payload: &[u8], stored: OffsetDateTime, prefix: &str) {
        match serde_json::from_slice::<ObjectInfo>(payload) {
            Ok(info) if info.deleted => {}
            Ok(info) => {
                self.named.insert(info.nuid.clone());
                if info.name.starts_with(prefix) {
                    self.objects.push(Listed { info, stored });
                }
            }
            Err(_) if deleted_mark(payload) => {}
            Err(_) => {
                let raw = serde_json::from_slice::<serde_json::Value>(payload).ok();
                let field = |key: &str| {
                    raw.as_ref()
                        .and_then(|r| r.get(key))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                if let Some(nuid) = field("nuid") {
                    self.named.insert(nuid);
                }
                let name = field("name").unwrap_or_else(|| name_of(subject));
                if name.starts_with(prefix) {
                    self.unreadable.push(name);
                }
            }
        }
    }
}

/// The object name an info's subject encodes (`$O.KILN_DATA.M.<base64 name>`).
fn name_of(subject: &str) -> String {
    use base64::Engine as _;
    let encoded = subject.rsplit('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| subject.to_owned())
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
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| io("read the chunks of", e))?;
        let nuid = subject.rsplit('.').next().unwrap_or_default().to_owned();
        if listing.named.contains(&nuid) {
            continue;
        }
        let last = store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| io("read the chunks of", e))?;
        found.push(Orphan {
            nuid,
            chunks: count as u64,
            newest: last.time,
        });
    }
    found.sort_by_key(|o| o.newest);
    Ok(found)
}

/// Purge the chunks of each orphan whose newest chunk is older than `older_than` (an upload
/// that stored nothing for that long is not coming back); the ones purged.
pub async fn remove_orphans(
    store: &Bucket,
    orphans: Vec<Orphan>,
    older_than: Duration,
) -> Result<Vec<Orphan>, DataError> {
    let now = OffsetDateTime::now_utc();
    let mut removed = Vec::new();
    for orphan in orphans {
        if now - orphan.newest < older_than {
            continue;
        }
        store
            .stream
            .purge()
            .filter(chunk_subject(&orphan.nuid))
            .await
            .map_err(|e| io("purge chunks from", e))?;
        removed.push(orphan);
    }
    Ok(removed)
}

/// Bytes the bucket's stream holds now, and the most it may (`None`: no limit).
pub async fn usage(store: &Bucket) -> Result<(u64, Option<u64>), DataError> {
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| io("read the size of", e))?;
    let max = u64::try_from(info.config.max_bytes).ok();
    Ok((info.state.bytes, max))
}
