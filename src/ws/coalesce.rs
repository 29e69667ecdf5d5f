//! A write buffer for a session's socket that exists only while there is something to
//! write. Frames written back to back (a burst of fan-out, a replay) leave in one syscall at
//! the next flush; an idle session holds no buffer at all, which keeps the memory of tens of
//! thousands of idle connections small (a `BufWriter` would keep its capacity forever).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

/// Bytes gathered before the buffer is written out even without a flush.
const CAP: usize = 64 * 1024;

pub struct Coalesce<W> {
    inner: W,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken so far.
    written: usize,
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, buf: Vec::new(), written: 0 }
    }

    /// Writes the whole buffer out, then frees it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalesce<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > CAP {
            ready!(this.poll_drain(cx))?;
            if data.len() >= CAP {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Takes a frame's header and payload together (the session writes every frame this
    /// way, so fastwebsockets never keeps a staging buffer of its own).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > CAP {
            ready!(this.poll_drain(cx))?;
            if total >= CAP {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn nothing_leaves_before_a_flush_and_everything_after() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(client);
        w.write_all(b"one").await.expect("write");
        let two = [io::IoSlice::new(b"t"), io::IoSlice::new(b"wo")];
        assert_eq!(w.write_vectored(&two).await.expect("vectored"), 3);
        let mut buf = [0u8; 16];
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut buf)).await.is_err());
        w.flush().await.expect("flush");
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"onetwo");
        assert_eq!(w.buf.capacity(), 0, "the buffer is freed after a flush");
        // Larger than the cap goes straight through.
        let big = vec![7u8; CAP + 10];
        w.write_all(&big).await.expect("big");
        w.flush().await.expect("flush");
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.expect("read big");
        assert_eq!(got, big);
    }
}
