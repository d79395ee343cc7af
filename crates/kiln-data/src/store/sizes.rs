//! What loading an object takes, told before it is downloaded (see [`formats::load_size`]).

use async_nats::jetstream::object_store::ObjectInfo;
use kiln_proto::ObjectRef;

use super::{Bucket, PEEK, Want, chunks, stored_info};
use crate::formats::{self, DataError};

/// An object measured before it is downloaded: its info (a link's target's) and what loading
/// it takes. [`super::fetch_measured`] then reads those very bytes, never loaded past what was
/// reserved for it: an object of one chunk from the chunk read here; one of several, put
/// again in between, is refused as it is read.
#[derive(Debug, Clone)]
pub struct Measured {
    pub(super) info: ObjectInfo,
    /// What loading it holds.
    pub load: formats::LoadSize,
    /// Its bytes, when its first chunk read to measure it is all of it (an object of one
    /// chunk, at most [`super::CHUNK_SIZE`]): loading it reads nothing more.
    pub(super) whole: Option<bytes::Bytes>,
}

impl Measured {
    /// Its stored size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size as u64
    }

    /// How messages name it: `object NAME`, with the file it was stored from where its
    /// description records one (`object inputs/…/x (file data.csv)`).
    pub fn what(&self, name: &str) -> String {
        super::described(name, &self.info)
    }
}

/// What loading the object `reference` names (a link's target) as `want` holds, told from its
/// stored size and first chunk (one request; the rest is not read): what a worker reserves
/// out of its memory budget before it downloads the object.
pub async fn load_size(
    store: &Bucket,
    reference: &ObjectRef,
    want: Want,
) -> Result<Measured, DataError> {
    let name = reference.object.as_str();
    let info = stored_info(store, name).await?;
    // A digest the job pins is checked before anything of the object is read or waited for:
    // a stale object is told as such, not as whatever its first bytes make it look.
    if let Some(expected) = &reference.sha256 {
        super::check_digest(&super::described(name, &info), &info, expected)?;
    }
    let size = info.size as u64;
    let first = match info.chunks {
        0 => bytes::Bytes::new(),
        _ => {
            let subject = chunks::chunk_subject(&info.nuid);
            match store
                .stream
                .get_first_raw_message_by_subject(subject, 1)
                .await
            {
                Ok(message) => message.payload,
                // Nothing told: the whole budget (the download says what went wrong).
                Err(_) => {
                    return Ok(Measured {
                        info,
                        load: formats::LoadSize::UNKNOWN,
                        whole: None,
                    });
                }
            }
        }
    };
    // A first chunk too short to hold a header (a client that stores tiny chunks): nothing
    // told either, rather than a PNG counted at its stored bytes.
    let load = if (first.len() as u64) < size.min(PEEK as u64) {
        formats::LoadSize::UNKNOWN
    } else {
        let key = reference.tensor.as_deref();
        // A `.npy` or safetensors object whose header declares more than it holds (cut
        // short, or a header made up) is answered for what it is, before its declared size
        // is weighed against the memory budget: otherwise "too large" for 144 bytes.
        // (A dataset or model read with an entry named is the loader's to refuse as such.)
        let one_tensor = matches!(want, Want::Tensor | Want::Image) || key.is_none();
        if one_tensor
            && matches!(
                formats::Format::sniff(&first),
                Some(formats::Format::Npy | formats::Format::Safetensors)
            )
        {
            formats::check_start(&super::described(name, &info), &first, size, key)?;
        }
        formats::load_size(&first, size, want, key)
    };
    let whole = (info.chunks == 1 && first.len() as u64 == size).then_some(first);
    Ok(Measured { info, load, whole })
}
