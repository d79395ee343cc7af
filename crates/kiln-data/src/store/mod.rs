//! The `KILN_DATA` object store: reading an object into a tensor, image, dataset or model as
//! it streams in, and storing tensors, models and files.
//!
//! Every read checks the object's size against the caller's budget and, when the reference
//! asks for it, its SHA-256 before downloading a byte; every read goes to the object's end,
//! where its size and stored digest are checked ([`Bucket`] says why kiln reads the chunks).

mod chunks;
mod entries;
mod listing;
mod names;
mod put;
mod readers;
mod sizes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::object_store::{ObjectInfo, PutError, PutErrorKind};
use base64::Engine as _;
use kiln_proto::{BUCKET_DATA, ObjectDescriptor, ObjectRef};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use async_nats::jetstream::object_store::ObjectStore;

pub use chunks::CHUNK_PATIENCE;
pub use entries::remove;
pub use listing::{Listed, Listing, Orphan, Purged, list, orphans, remove_orphans, usage};
pub use names::{MAX_OBJECT_NAME, stored_size};
pub use sizes::{Measured, load_size};

use self::names::{bad_name, described, stored_info, usable_name};

use self::readers::{Prefixed, Verified, read_error, read_full};
use crate::formats::{self, DataError, Format};
use crate::{Dataset, HostTensor, Model};

/// Chunk size of the objects kiln stores. Putting then getting a 64 MiB object on a local
/// nats-server 2.15.1 (file storage, 2 cores shared with a build; median of 7 rounds):
/// 128 KiB (the client's default) 330 ms, 256 KiB 318 ms, 512 KiB 259 ms (1000 KiB: 235 ms,
/// too close to the server's 1 MiB max_payload to be worth it).
pub const CHUNK_SIZE: usize = 512 * 1024;

/// How many first bytes of an object are read to tell its format (and, on a put, the shape
/// of a `.npy`, one-tensor safetensors file or PNG it holds).
const PEEK: usize = 4096;

/// What a job wants an object to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A tensor: `.npy` or safetensors (one entry, picked by the reference's `tensor`).
    Tensor,
    /// An image: PNG or JPEG, or a tensor of shape [C, H, W], [B, C, H, W] (a batch) or
    /// [H, W]; loads as a [`Loaded::Tensor`] of shape [C, H, W] or [B, C, H, W].
    Image,
    /// A labelled dataset: CSV or safetensors with `x` and `y`.
    Dataset,
    /// A model: every tensor of a safetensors file.
    Model,
}

impl Want {
    fn describe(self) -> &'static str {
        match self {
            Want::Tensor => "a tensor (.npy or safetensors)",
            Want::Image => "an image (PNG, JPEG or a [H, W], [C, H, W] or [B, C, H, W] tensor)",
            Want::Dataset => "a dataset (CSV, or safetensors with x and y)",
            Want::Model => "a model (safetensors)",
        }
    }
}

/// An object as a job uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// What [`Want::Tensor`] and [`Want::Image`] load.
    Tensor(HostTensor),
    /// What [`Want::Dataset`] loads.
    Dataset(Dataset),
    /// What [`Want::Model`] loads.
    Model(Model),
}

/// A stored object as `kiln get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its name in `KILN_DATA`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// The `KILN_DATA` object store, and the stream under it: kiln reads an object's chunks from
/// the stream itself (`store/chunks.rs`), because the client's reader follows links without end (an
/// object linked to itself overflowed the worker's stack, and took it down again at every
/// redelivery) and waits for ever for chunks that are gone (an object put again while a job
/// read it held that job, and with it a slot of its worker, until the worker stopped). It
/// writes them itself too, several in flight at once, and removes the chunks of a put that
/// fails (the client's put left them behind, filling the bucket). Everything else is the
/// client's object store, which this dereferences to.
#[derive(Clone)]
pub struct Bucket {
    store: ObjectStore,
    stream: jetstream::stream::Stream,
    js: jetstream::Context,
    patience: Duration,
}

impl Bucket {
    /// A reader of the object `info` describes (resolved by `stored_info`), and the flag it
    /// raises when the bytes do not match the object's size and digest.
    fn read(&self, info: &ObjectInfo) -> (Verified, Arc<AtomicBool>) {
        let chunks = chunks::chunks(
            self.stream.clone(),
            self.js.client().new_inbox(),
            info.clone(),
            self.patience,
        );
        Verified::new(chunks)
    }

    /// A reader of the object `info` describes whose one chunk, `only`, was read already
    /// (measuring it): no consumer, no second download.
    fn read_whole(&self, info: &ObjectInfo, only: bytes::Bytes) -> (Verified, Arc<AtomicBool>) {
        Verified::new(chunks::whole(info, only))
    }
}

impl Bucket {
    /// How long a read waits for an object's next chunk ([`CHUNK_PATIENCE`] unless set).
    pub fn with_chunk_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }
}

impl std::ops::Deref for Bucket {
    type Target = ObjectStore;

    fn deref(&self) -> &ObjectStore {
        &self.store
    }
}

/// The `KILN_DATA` bucket (`kiln init` creates it).
pub async fn open(js: &jetstream::Context) -> Result<Bucket, DataError> {
    let store = open_store(js).await?;
    let stream = js
        .get_stream(format!("OBJ_{BUCKET_DATA}"))
        .await
        .map_err(|e| {
            DataError::Io(format!(
                "could not open the stream of {BUCKET_DATA} ({e}); check the connection to NATS"
            ))
        })?;
    Ok(Bucket {
        store,
        stream,
        js: js.clone(),
        patience: CHUNK_PATIENCE,
    })
}

async fn open_store(js: &jetstream::Context) -> Result<ObjectStore, DataError> {
    js.get_object_store(BUCKET_DATA).await.map_err(|e| {
        let missing = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<jetstream::context::GetStreamError>())
            .is_some_and(|s| {
                matches!(s.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            });
        if missing {
            DataError::Invalid(format!(
                "object store {BUCKET_DATA} does not exist on this server: run `kiln init`"
            ))
        } else {
            DataError::Io(format!(
                "could not open object store {BUCKET_DATA} ({e}); check the connection to NATS"
            ))
        }
    })
}

/// `SHA-256=<base64url>`, as the object store keeps digests, in lowercase hex.
pub fn sha256_hex(digest: &str) -> Option<String> {
    let encoded = digest.strip_prefix("SHA-256=")?;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    // The Go client writes URL-safe base64; accept the standard alphabet too.
    let bytes = engine
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(encoded))
        .ok()?;
    (bytes.len() == 32).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn put_error(name: &str, error: PutError) -> DataError {
    let text = format!(
        "{error} {}",
        std::error::Error::source(&error)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    match error.kind() {
        PutErrorKind::InvalidName => bad_name(name),
        _ if text.contains("maximum bytes exceeded") => DataError::TooLarge(format!(
            "could not store object {name}: {BUCKET_DATA} has no room for it within its \
             --data-max-bytes (it is full, or the object alone is larger than the limit); \
             remove objects it no longer needs (`kiln rm NAME`), wait for old ones to age out \
             (--data-max-age), or raise the limit with `kiln init --data-max-bytes`"
        )),
        _ if text.contains("max payload") => DataError::Invalid(format!(
            "could not store object {name}: the server's max_payload is under the {} KiB \
             chunks kiln stores objects in (and their headers); raise it (the server's \
             default, 1 MiB, is enough) ({error})",
            CHUNK_SIZE / 1024
        )),
        _ => DataError::Io(format!(
            "could not store object {name} in {BUCKET_DATA} ({error}); check the connection to \
             NATS and try again"
        )),
    }
}

fn corrupt(name: &str) -> DataError {
    DataError::Invalid(format!(
        "object {name} is corrupt: its bytes do not match its stored SHA-256 digest; put it again"
    ))
}

/// Load the object `reference` names as `want`.
///
/// Refused before anything is downloaded: a missing object, one over `max_bytes`
/// (`TooLarge`), one whose digest is not the reference's `sha256`. Tensors stream from the
/// store into f32 values (never held as bytes too) and are refused over `max_elements` from
/// their header; images, datasets and models are read whole (at most `max_bytes`) and decoded
/// off the async executor.
pub async fn fetch(
    store: &Bucket,
    reference: &ObjectRef,
    want: Want,
    max_bytes: u64,
    max_elements: u64,
) -> Result<Loaded, DataError> {
    let info = stored_info(store, reference.object.as_str()).await?;
    fetch_info(store, reference, &info, None, want, max_bytes, max_elements).await
}

/// [`fetch`] the object [`load_size`] measured: the bytes it measured, with no second look
/// at the object's info (see [`Measured`]).
pub async fn fetch_measured(
    store: &Bucket,
    reference: &ObjectRef,
    measured: &Measured,
    want: Want,
    max_bytes: u64,
    max_elements: u64,
) -> Result<Loaded, DataError> {
    let (info, whole) = (&measured.info, measured.whole.clone());
    fetch_info(store, reference, info, whole, want, max_bytes, max_elements).await
}

/// Load the object `info` describes; `whole`: its bytes, when they were read already (an
/// object of one chunk, measured).
async fn fetch_info(
    store: &Bucket,
    reference: &ObjectRef,
    info: &ObjectInfo,
    whole: Option<bytes::Bytes>,
    want: Want,
    max_bytes: u64,
    max_elements: u64,
) -> Result<Loaded, DataError> {
    let name = reference.object.as_str();
    let what = described(name, info);
    let size = info.size as u64;
    check_size(&what, size, max_bytes)?;
    if let Some(expected) = &reference.sha256 {
        check_digest(&what, info, expected)?;
    }
    let key = reference.tensor.clone();
    let drop_key = |kind: &str| {
        DataError::Invalid(format!(
            "{what} is {kind}: \"tensor\" picks an entry of a safetensors tensor file; drop \
             \"tensor\""
        ))
    };

    let object = Peeked::open(store, name, info, whole).await?;
    match (want, object.format()) {
        (Want::Tensor | Want::Image, Some(Format::Npy | Format::Safetensors)) => {
            let tensor = object.stream_tensor(&what, key, max_elements).await?;
            let tensor = if want == Want::Image {
                as_image(&what, tensor)?
            } else {
                tensor
            };
            Ok(Loaded::Tensor(tensor))
        }
        (Want::Image, Some(kind @ (Format::Png | Format::Jpeg))) => {
            if key.is_some() {
                return Err(drop_key(Format::describe(Some(kind))));
            }
            let bytes = object.read_whole().await?;
            // The object's bytes count against the budget too (held while it decodes).
            decode_blocking(move || formats::decode_image(&what, &bytes, max_elements, max_bytes))
                .await
                .map(Loaded::Tensor)
        }
        (Want::Dataset, Some(Format::Csv | Format::Safetensors)) => {
            if key.is_some() {
                return Err(drop_key("a dataset"));
            }
            let bytes = object.read_whole().await?;
            decode_blocking(move || formats::decode_dataset(&what, &bytes, max_elements))
                .await
                .map(Loaded::Dataset)
        }
        (Want::Model, Some(Format::Safetensors)) => {
            if key.is_some() {
                return Err(drop_key("a model"));
            }
            let bytes = object.read_whole().await?;
            decode_blocking(move || formats::decode_model(&what, &bytes, max_elements))
                .await
                .map(Loaded::Model)
        }
        (want, format) => Err(not_wanted(&what, format, want, &object.prefix)),
    }
}

/// The error for an object `what` in `format`, which starts with `prefix`, that a job
/// wanted as `want`.
fn not_wanted(what: &str, format: Option<Format>, want: Want, prefix: &[u8]) -> DataError {
    if format.is_none() && prefix.is_empty() {
        return DataError::Invalid(format!(
            "{what} is empty, but this job wants {}",
            want.describe()
        ));
    }
    DataError::Invalid(format!(
        "{what} is {}, but this job wants {}; store it in {}{}",
        Format::describe(format),
        want.describe(),
        match want {
            Want::Model => "that format",
            _ => "one of those formats",
        },
        match (format, want) {
            (None, Want::Tensor | Want::Image) => formats::not_a_tensor_format_hint(prefix),
            (None, Want::Dataset | Want::Model) => formats::not_a_format_hint(prefix),
            (Some(_), _) => "",
        }
    ))
}

/// Refuse an object of `size` bytes over the caller's `max_bytes`; `what` names it (as
/// [`Measured::what`] does).
pub fn check_size(what: &str, size: u64, max_bytes: u64) -> Result<(), DataError> {
    if size > max_bytes {
        return Err(DataError::TooLarge(format!(
            "{what} is {} MiB, over this worker's memory budget of {} MiB; send a \
             smaller object or run a worker with more memory",
            formats::mib(size),
            formats::mib(max_bytes)
        )));
    }
    Ok(())
}

/// Refuse an object whose stored digest is not the `expected` SHA-256 a job asks for.
pub(super) fn check_digest(what: &str, info: &ObjectInfo, expected: &str) -> Result<(), DataError> {
    let expected = expected.trim();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DataError::Invalid(format!(
            "{what}: \"sha256\" {expected:?} is not 64 hex digits; give the object's \
             SHA-256 as `kiln put` prints it"
        )));
    }
    match info.digest.as_deref().and_then(sha256_hex) {
        Some(actual) if actual.eq_ignore_ascii_case(expected) => Ok(()),
        Some(actual) => Err(DataError::Invalid(format!(
            "{what} has SHA-256 {actual}, not the {expected} the job asks for; put the \
             right object or fix \"sha256\""
        ))),
        None => Err(DataError::Invalid(format!(
            "{what} has no stored SHA-256 digest, so \"sha256\" cannot be checked; put \
             it again"
        ))),
    }
}

/// A tensor loaded as an image: [C, H, W] and a batch [B, C, H, W] as they are, [H, W] as one
/// channel.
fn as_image(what: &str, mut tensor: HostTensor) -> Result<HostTensor, DataError> {
    match tensor.shape.len() {
        3 | 4 => {}
        2 => tensor.shape.insert(0, 1),
        _ => {
            return Err(DataError::Invalid(format!(
                "{what} is a tensor of shape {:?}, not an image; give a [C, H, W], \
                 [B, C, H, W] or [H, W] tensor, or a PNG or JPEG",
                tensor.shape
            )));
        }
    }
    Ok(tensor)
}

/// An object opened for reading, its first bytes read to tell its format.
struct Peeked<'a> {
    name: &'a str,
    size: u64,
    prefix: Vec<u8>,
    reader: Verified,
    corrupt_flag: Arc<AtomicBool>,
}

impl<'a> Peeked<'a> {
    /// Open object `name` (`size` bytes) and read its first [`PEEK`] bytes.
    async fn open(
        store: &Bucket,
        name: &'a str,
        info: &ObjectInfo,
        whole: Option<bytes::Bytes>,
    ) -> Result<Self, DataError> {
        let size = info.size as u64;
        let (mut reader, corrupt_flag) = match whole {
            Some(only) => store.read_whole(info, only),
            None => store.read(info),
        };
        let mut prefix = vec![0u8; PEEK];
        let n = read_full(&mut reader, &mut prefix)
            .await
            .map_err(|e| read_error(name, &corrupt_flag, &e))?;
        prefix.truncate(n);
        Ok(Peeked {
            name,
            size,
            prefix,
            reader,
            corrupt_flag,
        })
    }

    fn format(&self) -> Option<Format> {
        Format::sniff(&self.prefix)
    }

    /// Decode a `.npy` or safetensors tensor as it streams in, off the async executor.
    async fn stream_tensor(
        self,
        what: &str,
        key: Option<String>,
        max_elements: u64,
    ) -> Result<HostTensor, DataError> {
        let Peeked {
            name,
            prefix,
            reader,
            corrupt_flag,
            ..
        } = self;
        // Dropped before its task ends (another object of the job failed), this load stops
        // the download at its next read: a blocking task cannot be cancelled, and it went on
        // filling a tensor the job's memory reservation, given back, no longer counted.
        let abandoned = Abandoned::default();
        let bridge = abandoned.reader(tokio_util::io::SyncIoBridge::new(reader));
        let task_what = what.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let mut input = std::io::Read::chain(std::io::Cursor::new(prefix), bridge);
            let result = formats::read_tensor(&task_what, &mut input, key.as_deref(), max_elements);
            if let Err(DataError::Invalid(_)) = result {
                // Read on: a corrupt object may be why it looked invalid.
                let _ = std::io::copy(&mut input, &mut std::io::sink());
            }
            result
        })
        .await
        .map_err(|e| DataError::Io(format!("{what}: decoding failed ({e}); try again")))?;
        if corrupt_flag.load(Ordering::Relaxed) {
            return Err(corrupt(name));
        }
        result
    }

    /// The whole object, its digest checked.
    async fn read_whole(mut self) -> Result<Vec<u8>, DataError> {
        let mut bytes = self.prefix;
        bytes.reserve(
            usize::try_from(self.size)
                .unwrap_or(0)
                .saturating_sub(bytes.len()),
        );
        self.reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| read_error(self.name, &self.corrupt_flag, &e))?;
        Ok(bytes)
    }
}

/// Set when it is dropped: whether the load that made it was abandoned, for the blocking
/// reader it gave out ([`Abandoned::reader`]) to stop at.
#[derive(Default)]
struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// `inner`, failing every read from the moment this is dropped.
    fn reader<R: std::io::Read>(&self, inner: R) -> Abandonable<R> {
        Abandonable {
            inner,
            abandoned: self.0.clone(),
        }
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A reader that fails once its load was abandoned.
struct Abandonable<R> {
    inner: R,
    abandoned: Arc<AtomicBool>,
}

impl<R: std::io::Read> std::io::Read for Abandonable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the load was abandoned"));
        }
        self.inner.read(buf)
    }
}

async fn decode_blocking<T: Send + 'static>(
    decode: impl FnOnce() -> Result<T, DataError> + Send + 'static,
) -> Result<T, DataError> {
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(|e| DataError::Io(format!("decoding an object failed ({e}); try again")))?
}

async fn put(
    store: &Bucket,
    name: &str,
    reader: &mut (impl AsyncRead + Unpin),
    description: Option<String>,
) -> Result<ObjectInfo, DataError> {
    if !usable_name(name) {
        return Err(bad_name(name));
    }
    put::put(store, name, reader, description)
        .await
        .map_err(|e| put_error(name, e))
}

fn descriptor(info: &ObjectInfo, format: &str, shape: Vec<u64>, dtype: &str) -> ObjectDescriptor {
    ObjectDescriptor {
        bucket: info.bucket.clone(),
        name: info.name.clone(),
        format: format.to_string(),
        size: info.size as u64,
        sha256: info
            .digest
            .as_deref()
            .and_then(sha256_hex)
            .unwrap_or_default(),
        shape,
        dtype: dtype.to_string(),
    }
}

/// Store `tensor` as the object `name` in `format`: `npy` (streamed from the tensor's
/// memory, no copy of its values), `safetensors` (one entry, `entry`; `tensor` when empty,
/// also streamed) or `png` (8-bit; shapes as [`formats::encode_png`] takes). An existing
/// object of that name is replaced.
pub async fn put_tensor(
    store: &Bucket,
    name: &str,
    tensor: &HostTensor,
    format: &str,
    entry: &str,
) -> Result<ObjectDescriptor, DataError> {
    let elements = tensor
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements != Some(tensor.data.len()) {
        return Err(DataError::Invalid(format!(
            "object {name}: a tensor of shape {:?} cannot hold {} values; fix its shape",
            tensor.shape,
            tensor.data.len()
        )));
    }
    let shape = tensor.shape.iter().map(|&d| d as u64).collect();
    let values = formats::f32_bytes(&tensor.data);
    let (info, dtype) = match format {
        "npy" => {
            let header = formats::npy_header(&tensor.shape);
            let info = put(store, name, &mut Prefixed::new(header, &values[..]), None).await?;
            (info, "f32")
        }
        "safetensors" => {
            let entry = if entry.is_empty() { "tensor" } else { entry };
            let header = formats::safetensors_header(entry, &tensor.shape)?;
            let info = put(store, name, &mut Prefixed::new(header, &values[..]), None).await?;
            (info, "f32")
        }
        "png" => {
            let owned = tensor.clone();
            let png = decode_blocking(move || formats::encode_png(&owned)).await?;
            (put(store, name, &mut &png[..], None).await?, "u8")
        }
        other => {
            return Err(DataError::Invalid(format!(
                "object {name}: output format {other:?} is not one kiln writes; use npy, \
                 safetensors or png"
            )));
        }
    };
    Ok(descriptor(&info, format, shape, dtype))
}

/// Store `model` as a safetensors object `name` (its tensors as f32, with its metadata).
pub async fn put_model(
    store: &Bucket,
    name: &str,
    model: &Model,
) -> Result<ObjectDescriptor, DataError> {
    let bytes = formats::encode_safetensors(model)?;
    let info = put(store, name, &mut &bytes[..], None).await?;
    Ok(descriptor(&info, "safetensors", Vec::new(), "f32"))
}

/// Store everything `reader` yields as the object `name` (`kiln put FILE`). The descriptor's
/// format is what the first bytes say (empty when none kiln reads), with the shape and element
/// type of a `.npy`, a one-tensor safetensors file or a PNG.
pub async fn put_reader(
    store: &Bucket,
    name: &str,
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<ObjectDescriptor, DataError> {
    put_described(store, name, reader, None).await
}

/// [`put_reader`] for the contents of the file `file_name`: the object's description records
/// it (`file data.csv`), and messages about the object name it (`object inputs/…/x (file
/// data.csv)`), unless it is the object's name already.
pub async fn put_file_reader(
    store: &Bucket,
    name: &str,
    reader: &mut (impl AsyncRead + Unpin),
    file_name: &str,
) -> Result<ObjectDescriptor, DataError> {
    let description = (file_name != name).then(|| format!("file {file_name}"));
    put_described(store, name, reader, description).await
}

async fn put_described(
    store: &Bucket,
    name: &str,
    reader: &mut (impl AsyncRead + Unpin),
    description: Option<String>,
) -> Result<ObjectDescriptor, DataError> {
    let mut prefix = vec![0u8; PEEK];
    let n = read_full(reader, &mut prefix)
        .await
        .map_err(|e| DataError::Io(format!("object {name}: reading its data failed ({e})")))?;
    prefix.truncate(n);
    let (format, shape, dtype) = formats::describe_prefix(&prefix);
    let info = put(store, name, &mut Prefixed::new(prefix, reader), description).await?;
    let format = format.map_or("", Format::as_str);
    Ok(descriptor(&info, format, shape, &dtype))
}

/// Copy the object `name` into `writer` (`kiln get`), checking its digest at the end.
pub async fn get_to_writer(
    store: &Bucket,
    name: &str,
    writer: &mut (impl AsyncWrite + Unpin),
) -> Result<StoredObject, DataError> {
    let info = stored_info(store, name).await?;
    let (mut reader, corrupt_flag) = store.read(&info);
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| read_error(name, &corrupt_flag, &e))?;
        if n == 0 {
            break;
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|e| DataError::Io(format!("object {name}: writing it out failed ({e})")))?;
    }
    writer
        .flush()
        .await
        .map_err(|e| DataError::Io(format!("object {name}: writing it out failed ({e})")))?;
    Ok(StoredObject {
        name: name.to_string(),
        size: info.size as u64,
        sha256: info
            .digest
            .as_deref()
            .and_then(sha256_hex)
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::Abandoned;

    #[test]
    fn a_reader_stops_once_its_load_is_abandoned() {
        let abandoned = Abandoned::default();
        let mut reader = abandoned.reader(&b"0123456789"[..]);
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        // The load's future dropped (another object of the job failed): its task stops.
        drop(abandoned);
        assert!(reader.read(&mut buf).is_err());
    }
}
