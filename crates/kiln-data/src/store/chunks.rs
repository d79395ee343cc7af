//! Reading an object of `KILN_DATA` from its chunks, in kiln rather than through the client's
//! reader: that one follows links without end (an object linked to itself overflowed the
//! worker's stack, at every redelivery) and waits for ever for chunks that are gone (an object
//! put again while a job read it held the job, and a slot of its worker, until the worker
//! stopped). Here a read stops at what the object's info says, waits a bounded time for each
//! chunk, and checks size and SHA-256 as the last chunk comes.

use std::io::{Error, ErrorKind};
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig, OrderedErrorKind};
use async_nats::jetstream::object_store::ObjectInfo;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use futures::StreamExt as _;
use kiln_proto::BUCKET_DATA;
use sha2::Digest as _;

/// How long a read waits for an object's next chunk before it gives up. A healthy server
/// sends them milliseconds apart; chunks that never come were removed (the object was put
/// again or deleted while the job read it), and the job is better retried (`internal`), which
/// reads what the name holds then, than held until its worker stops.
pub const CHUNK_PATIENCE: Duration = Duration::from_secs(20);

/// How often a read whose next chunk does not come looks whether its object is still the one
/// it reads.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The chunks' bytes, in order.
pub(crate) type Chunks = Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// The chunks of the object `info` describes (resolved, not a link), from an ordered consumer
/// on its chunks' subject delivering to `inbox`. Errors: `InvalidData` when the object holds
/// more than its info says, or its size or SHA-256 do not match at the last chunk;
/// `NotFound` when none of its chunks is stored; `TimedOut` when a chunk does not come within
/// `patience`.
pub(crate) fn chunks(
    stream: Stream,
    inbox: String,
    info: ObjectInfo,
    patience: Duration,
) -> Chunks {
    let reading = Reading {
        stream,
        inbox,
        info,
        patience,
        messages: None,
        done: false,
        chunks: 0,
        bytes: 0,
        digest: sha2::Sha256::new(),
    };
    Box::pin(futures::stream::try_unfold(reading, |mut r| async move {
        if r.info.chunks == 0 {
            return r.check().map(|()| None);
        }
        if r.done {
            return Ok(None);
        }
        let payload = r.next_chunk().await?;
        Ok(Some((payload, r)))
    }))
}

/// The chunks of an object of one chunk whose bytes, `only`, are already here (read to
/// measure it): checked against its info as [`chunks`] checks the last chunk, without a
/// consumer.
pub(crate) fn whole(info: &ObjectInfo, only: bytes::Bytes) -> Chunks {
    let checked = verify(info, 1, only.len() as u64, sha2::Sha256::digest(&only)).map(|()| only);
    Box::pin(futures::stream::once(async move { checked }))
}

/// One object being read.
struct Reading {
    stream: Stream,
    inbox: String,
    info: ObjectInfo,
    patience: Duration,
    messages: Option<Ordered>,
    /// Its last chunk came (and was checked).
    done: bool,
    chunks: usize,
    bytes: u64,
    digest: sha2::Sha256,
}

impl Reading {
    /// The next chunk, counted and checked against the object's info.
    async fn next_chunk(&mut self) -> std::io::Result<bytes::Bytes> {
        let message = self.next_message().await?;
        self.digest.update(&message.payload);
        self.chunks += 1;
        self.bytes += message.payload.len() as u64;
        // Never more than the object's info says (chunks added behind its back would grow a
        // whole read past the memory budget it was checked against).
        if self.chunks > self.info.chunks || self.bytes > self.info.size as u64 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "it holds more than its info says",
            ));
        }
        // The last chunk is checked as it comes, so that a reader that stops at the object's
        // end gets the error too.
        self.done = message.info().map_err(Error::other)?.pending == 0;
        if self.done {
            self.check()?;
        }
        Ok(message.payload.clone())
    }

    /// The next message on the chunks' subject, within the patience. While none comes, the
    /// object's info is looked at every [`LOOK_EVERY`]: an object put again or deleted as it
    /// was read ends the read at once (its chunks are gone), rather than after the patience.
    async fn next_message(&mut self) -> std::io::Result<async_nats::jetstream::Message> {
        let patience = self.patience;
        let (chunk, of) = (self.chunks + 1, self.info.chunks);
        self.messages().await?;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Some(messages) = self.messages.as_mut() else {
                return Err(Error::other("no consumer"));
            };
            let look = deadline.min(tokio::time::Instant::now() + LOOK_EVERY);
            match tokio::time::timeout_at(look, messages.next()).await {
                Ok(Some(Ok(message))) => return Ok(message),
                // The ordered consumer makes itself again after a missed heartbeat.
                Ok(Some(Err(e))) if e.kind() == OrderedErrorKind::MissingHeartbeat => {}
                Ok(Some(Err(e))) => return Err(Error::other(e)),
                Ok(None) => return Err(Error::other("the object's chunks stopped coming")),
                Err(_) if look < deadline => {
                    let now = match name_holds(&self.stream, &self.info).await {
                        Some(NameHolds::Another) => Some("put again"),
                        Some(NameHolds::Nothing) => Some("deleted"),
                        Some(NameHolds::It) | None => None,
                    };
                    if let Some(now) = now {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "chunk {chunk} of {of} will not come: the object was {now} as it was read"
                            ),
                        ));
                    }
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "chunk {chunk} of {of} did not come within {patience:?}: the \
                             object was put again or deleted while it was read, or the server \
                             is overloaded"
                        ),
                    ));
                }
            }
        }
    }

    /// The consumer of the chunks, made on first use; `NotFound` when none is stored.
    async fn messages(&mut self) -> std::io::Result<&mut Ordered> {
        if self.messages.is_none() {
            let consumer = self
                .stream
                .create_consumer(OrderedConfig {
                    deliver_subject: self.inbox.clone(),
                    filter_subject: chunk_subject(&self.info.nuid),
                    ..Default::default()
                })
                .await
                .map_err(Error::other)?;
            if consumer.cached_info().num_pending == 0 {
                let chunks = self.info.chunks;
                // Its name still holds it, and the stream's leader has no chunk of it either
                // (the consumer's count may come from a replica that lags): the chunks are
                // gone for good (aged out before the info, which is stored after them, or
                // purged), and no retry finds them.
                if name_holds(&self.stream, &self.info).await == Some(NameHolds::It)
                    && no_chunk_stored(&self.stream, &self.info.nuid).await
                {
                    return Err(Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "none of its {chunks} chunks is stored, though its name still holds \
                             it (they aged out with the bucket's maximum age, or were purged)"
                        ),
                    ));
                }
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "none of its {chunks} chunks is stored: the object was put again or \
                         deleted as it was read"
                    ),
                ));
            }
            self.messages = Some(consumer.messages().await.map_err(Error::other)?);
        }
        self.messages
            .as_mut()
            .ok_or_else(|| Error::other("no consumer"))
    }

    /// The object read whole: as many chunks and bytes as its info says, and its digest.
    fn check(&mut self) -> std::io::Result<()> {
        verify(
            &self.info,
            self.chunks,
            self.bytes,
            self.digest.finalize_reset(),
        )
    }
}

/// Whether an object read whole, `chunks` chunks of `bytes` bytes whose SHA-256 is `digest`,
/// is the one `info` describes. A stored digest that does not parse is a mismatch (the client
/// refused those too).
fn verify(
    info: &ObjectInfo,
    chunks: usize,
    bytes: u64,
    digest: sha2::digest::Output<sha2::Sha256>,
) -> std::io::Result<()> {
    let read: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let whole = chunks == info.chunks && bytes == info.size as u64;
    let digest_ok = match info.digest.as_deref() {
        None => true,
        Some(stored) => crate::store::sha256_hex(stored).is_some_and(|stored| stored == read),
    };
    if whole && digest_ok {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidData,
        match whole {
            false => format!(
                "it holds {chunks} chunks of {bytes} bytes where its info says {} of {}",
                info.chunks, info.size
            ),
            true => "its bytes do not match its stored SHA-256 digest".to_owned(),
        },
    ))
}

/// The subject of the chunks of the object version `nuid` in `KILN_DATA`.
pub(super) fn chunk_subject(nuid: &str) -> String {
    format!("$O.{BUCKET_DATA}.C.{nuid}")
}

/// The subject of object `name`'s info in `KILN_DATA` (the name in padded URL-safe base64, as
/// every NATS client writes it).
pub(super) fn meta_subject(name: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(name);
    format!("$O.{BUCKET_DATA}.M.{encoded}")
}

/// Whether the stream's leader holds no chunk under `nuid`; false when it cannot say.
async fn no_chunk_stored(stream: &Stream, nuid: &str) -> bool {
    matches!(
        stream.get_last_raw_message_by_subject(&chunk_subject(nuid)).await,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound
    )
}

/// What the name of the object `info` describes holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameHolds {
    /// That object.
    It,
    /// Another one (an info that does not parse counts as another's).
    Another,
    /// Nothing: deleted, or never stored.
    Nothing,
}

/// What `info`'s name holds now, read from the stream's last info for it (its leader's
/// answer, not a replica's that may lag); `None` when the server cannot say.
pub(super) async fn name_holds(stream: &Stream, info: &ObjectInfo) -> Option<NameHolds> {
    match stream
        .get_last_raw_message_by_subject(&meta_subject(&info.name))
        .await
    {
        Ok(message) => Some(
            match serde_json::from_slice::<ObjectInfo>(&message.payload) {
                Ok(now) if now.deleted => NameHolds::Nothing,
                Ok(now) if now.nuid == info.nuid => NameHolds::It,
                Err(_) if deleted_mark(&message.payload) => NameHolds::Nothing,
                _ => NameHolds::Another,
            },
        ),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Some(NameHolds::Nothing),
        Err(_) => None,
    }
}

/// Whether the metadata stored for object `name` marks it deleted, read as plain JSON: what
/// another client wrote there may not parse as async-nats's `ObjectInfo` (nats-py leaves
/// `"mtime": ""` on a deleted object).
pub(super) async fn marked_deleted(stream: &Stream, name: &str) -> bool {
    stream
        .get_last_raw_message_by_subject(&meta_subject(name))
        .await
        .is_ok_and(|message| deleted_mark(&message.payload))
}

pub(super) fn deleted_mark(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .is_ok_and(|info| info.get("deleted") == Some(&serde_json::Value::Bool(true)))
}
