//! Readers and writers of transfers in and out of `KILN_DATA`: told the bytes that pass,
//! and stopped on request.

use std::sync::atomic::{AtomicBool, Ordering};

/// Told the bytes each step of a transfer moved, as it goes (a progress bar's `inc`): how
/// `kiln` shows a large file going in or out.
pub type OnBytes<'a> = Option<&'a (dyn Fn(u64) + Send + Sync)>;

/// Set (by a SIGINT handler, say) to stop a transfer into `KILN_DATA`: its next read fails,
/// and the put removes the chunks it stored before it returns, so that an interrupted
/// upload leaves nothing behind to count against `--data-max-bytes`.
pub type Stop<'a> = Option<&'a AtomicBool>;

/// A reader or writer that tells [`OnBytes`] what passes through it; a reader also fails its
/// next read once its [`Stop`] is set.
pub(super) struct Counting<'a, T> {
    inner: T,
    on_bytes: OnBytes<'a>,
    stop: Stop<'a>,
}

impl<'a, T> Counting<'a, T> {
    pub(super) fn new(inner: T, on_bytes: OnBytes<'a>) -> Self {
        Counting {
            inner,
            on_bytes,
            stop: None,
        }
    }

    pub(super) fn stopping(self, stop: Stop<'a>) -> Self {
        Counting { stop, ..self }
    }

    fn tell(&self, bytes: usize) {
        if let (Some(on_bytes), 1..) = (self.on_bytes, bytes) {
            on_bytes(bytes as u64);
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            // Not `ErrorKind::Interrupted`, which readers retry.
            return std::task::Poll::Ready(Err(std::io::Error::other("interrupted")));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            self.tell(buf.filled().len() - before);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.tell(n);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
