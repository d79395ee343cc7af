//! The readers an object passes through: its chunks checked against its info, and a prefix
//! read ahead (to tell a format) put back in front.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use kiln_proto::BUCKET_DATA;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::formats::DataError;

/// An object being read from its chunks, noting when its bytes do not match its stored
/// digest or size (reported as `InvalidData` after the last chunk).
pub(super) struct Verified {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    corrupt: Arc<AtomicBool>,
}

impl Verified {
    /// A reader of `chunks`, and the flag it raises when they do not match the object.
    pub(super) fn new(chunks: super::chunks::Chunks) -> (Self, Arc<AtomicBool>) {
        let reader = tokio_util::io::StreamReader::new(chunks);
        let corrupt = Arc::new(AtomicBool::new(false));
        let verified = Verified {
            reader: Box::pin(reader),
            corrupt: corrupt.clone(),
        };
        (verified, corrupt)
    }
}

impl AsyncRead for Verified {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let result = self.reader.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &result
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            self.corrupt.store(true, Ordering::Relaxed);
        }
        result
    }
}

/// `prefix`, then `inner`: in one read where `inner` is ready, so a store's chunks stay whole.
pub(super) struct Prefixed<R> {
    prefix: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R> Prefixed<R> {
    pub(super) fn new(prefix: Vec<u8>, inner: R) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if buf.remaining() > 0
                && let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_read(cx, buf)
            {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Read until `buf` is full or the input ends; the number of bytes read.
pub(super) async fn read_full(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A failed read of object `name`: corrupt when the digest did not match, else I/O.
pub(super) fn read_error(
    name: &str,
    corrupt_flag: &AtomicBool,
    error: &std::io::Error,
) -> DataError {
    if corrupt_flag.load(Ordering::Relaxed) {
        DataError::Invalid(format!("object {name} is corrupt: {error}; put it again"))
    } else {
        let advice = match error.kind() {
            // Its chunks are gone or stopped coming: the connection is not the suspect.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::TimedOut => "try again",
            _ => "check the connection to NATS",
        };
        DataError::Io(format!(
            "reading object {name} from {BUCKET_DATA} failed ({error}); {advice}"
        ))
    }
}
