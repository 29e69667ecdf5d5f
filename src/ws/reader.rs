//! The read side of a session's socket, holding no buffer while the client is silent.
//!
//! fastwebsockets 0.10 keeps an 8 KiB read buffer for the life of a connection (allocated
//! in `after_handshake`, not configurable); at tens of thousands of idle sessions that
//! buffer is most of a session's memory. So the session does not keep the crate's reader.
//! [`FrameReader::readable`] waits for the first bytes of the next frame with a buffer on
//! the stack, keeps what arrived (usually the whole frame) in `pending`, and
//! [`FrameReader::read_frame`] lets a short-lived fastwebsockets reader parse exactly one
//! frame through [`OneFrame`], a view of the stream that ends where the frame ends (learned
//! from its header as the bytes pass). Nothing is read ahead into the crate's buffer, so
//! dropping that reader after the frame loses nothing; bytes of a later frame stay in
//! `pending`, which is freed once empty. Parsing, unmasking, UTF-8 and close-code checks stay
//! the crate's.
//!
//! `readable` is cancel-safe (bytes move into `pending` in the same poll that reads them),
//! so a session can race it against its queue and timers; `read_frame`, like the crate's, is
//! not, and runs to completion (or ends the session).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes taken from the socket per readiness probe: more than a heartbeat or an ack frame,
/// so those cost one read each.
const PROBE: usize = 1024;

/// One frame off the wire, owned.
#[derive(Debug)]
pub struct Incoming {
    pub opcode: OpCode,
    pub fin: bool,
    pub payload: Vec<u8>,
}

/// What a read produced: the frame (or error), and the close frame the protocol obliges
/// the server to send back, if any (the echo of a peer's close, or 1002 for a bad code).
pub struct Read {
    pub frame: Result<Incoming, WebSocketError>,
    pub reply: Option<Vec<u8>>,
}

pub struct FrameReader<R> {
    io: R,
    /// Bytes read but not yet parsed; no capacity while empty.
    pending: BytesMut,
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader { io, pending: BytesMut::new(), eof: false }
    }

    /// Resolves once the next frame has begun to arrive, or the stream ended (then
    /// `read_frame` reports it). Cancel-safe.
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if !self.pending.is_empty() || self.eof {
                return Poll::Ready(Ok(()));
            }
            let mut probe = [0u8; PROBE];
            let mut buf = ReadBuf::new(&mut probe);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                self.eof = true;
            }
            self.pending.extend_from_slice(buf.filled());
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Reads and drops whatever the peer still sends, until it closes. After the server
    /// closed on a bad frame, the rest of that frame may still be unread, and closing a
    /// socket with unread input resets the connection, which can destroy the close frame
    /// before the client reads it. The caller bounds the wait.
    pub async fn discard(&mut self) {
        self.pending = BytesMut::new();
        std::future::poll_fn(|cx| {
            let mut sink = [0u8; PROBE];
            loop {
                let mut buf = ReadBuf::new(&mut sink);
                match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                    Ok(()) if !buf.filled().is_empty() => continue,
                    _ => return Poll::Ready(()),
                }
            }
        })
        .await;
        self.eof = true;
    }

    /// Reads one whole frame; refuses payloads of `max_payload` bytes or more before reading
    /// them. Not cancel-safe: a caller that gives up on it must not read again.
    pub async fn read_frame(&mut self, max_payload: usize) -> Read {
        let view = OneFrame { reader: self, boundary: Boundary::default() };
        let (mut ws, _) = fastwebsockets::after_handshake_split(view, tokio::io::sink(), Role::Server);
        ws.set_auto_pong(false);
        ws.set_max_message_size(max_payload);
        let mut reply = None;
        let mut obligated = |frame: Frame<'_>| {
            reply = Some(frame.payload.to_vec());
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        let frame = ws.read_frame(&mut obligated).await.map(|f| Incoming {
            opcode: f.opcode,
            fin: f.fin,
            payload: f.payload.to_vec(),
        });
        drop(ws);
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        Read { frame, reply }
    }
}

/// The stream as far as the current frame reaches.
struct OneFrame<'a, R> {
    reader: &'a mut FrameReader<R>,
    boundary: Boundary,
}

impl<R: AsyncRead + Unpin> AsyncRead for OneFrame<'_, R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = this.boundary.wanted().min(buf.remaining());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let reader = &mut *this.reader;
        if !reader.pending.is_empty() {
            let n = want.min(reader.pending.len());
            this.boundary.passed(&reader.pending[..n]);
            buf.put_slice(&reader.pending[..n]);
            reader.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        if reader.eof {
            return Poll::Ready(Ok(()));
        }
        // The rest of a frame larger than the probe: straight from the socket, no further
        // than the frame's end.
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut reader.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        this.boundary.passed(limited.filled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Tracks a frame's header as it passes, to know where the frame ends.
#[derive(Default)]
struct Boundary {
    header: [u8; 14],
    /// Bytes of the frame passed so far.
    seen: u64,
}

impl Boundary {
    fn header_len(&self) -> u64 {
        if self.seen < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        }
    }

    /// How many more bytes belong to the frame, as far as its header tells so far (0 once
    /// it is complete).
    fn wanted(&self) -> usize {
        let header = self.header_len();
        if self.seen < header {
            return (header - self.seen) as usize;
        }
        let end = header.saturating_add(self.payload_len());
        usize::try_from(end - self.seen).unwrap_or(usize::MAX)
    }

    /// Never more than `wanted()` bytes at a time, so a call never spans two header stages.
    fn passed(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let at = self.seen as usize + i;
            if at < self.header.len() && (at as u64) < self.header_len() {
                self.header[at] = *b;
            }
        }
        self.seen += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A client frame: masked, as browsers send them.
    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    async fn next(r: &mut FrameReader<tokio::io::DuplexStream>) -> Read {
        r.readable().await.expect("readable");
        r.read_frame(1 << 20).await
    }

    #[tokio::test]
    async fn frames_sent_back_to_back_come_out_one_by_one_and_nothing_is_kept() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(server);
        let big = vec![b'x'; 70_000];
        let mut wire = masked(0x1, true, b"{\"type\":\"heartbeat\"}");
        wire.extend(masked(0x9, true, b"p"));
        wire.extend(masked(0x1, true, &big));
        wire.extend(masked(0x1, false, b"he"));
        wire.extend(masked(0x0, true, b"llo"));
        client.write_all(&wire).await.expect("write");

        let f = next(&mut r).await.frame.expect("text");
        assert_eq!((f.opcode, f.fin, f.payload.as_slice()), (OpCode::Text, true, &b"{\"type\":\"heartbeat\"}"[..]));
        let f = next(&mut r).await.frame.expect("ping");
        assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Ping, &b"p"[..]));
        let f = next(&mut r).await.frame.expect("big");
        assert_eq!(f.payload, big);
        let f = next(&mut r).await.frame.expect("first fragment");
        assert_eq!((f.opcode, f.fin, f.payload.as_slice()), (OpCode::Text, false, &b"he"[..]));
        let f = next(&mut r).await.frame.expect("continuation");
        assert_eq!((f.opcode, f.fin, f.payload.as_slice()), (OpCode::Continuation, true, &b"llo"[..]));
        assert_eq!(r.pending.capacity(), 0, "an idle reader holds no buffer");
    }

    #[tokio::test]
    async fn a_frame_split_across_writes_is_read_whole() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(server);
        let wire = masked(0x1, true, &vec![b'y'; 300]);
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(7) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let f = next(&mut r).await.frame.expect("text");
        assert_eq!(f.payload, vec![b'y'; 300]);
        drop(writer.await);
    }

    #[tokio::test]
    async fn readable_loses_nothing_when_cancelled() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = FrameReader::new(server);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), r.readable()).await;
        assert!(waited.is_err(), "nothing to read yet");
        client.write_all(&masked(0x1, true, b"after")).await.expect("write");
        assert_eq!(next(&mut r).await.frame.expect("text").payload, b"after");
    }

    #[tokio::test]
    async fn close_frames_are_echoed_and_oversized_ones_refused_before_their_payload() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(server);
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        client.write_all(&masked(0x8, true, &close)).await.expect("write");
        let read = next(&mut r).await;
        assert_eq!(read.frame.expect("close").opcode, OpCode::Close);
        assert_eq!(read.reply.as_deref(), Some(&close[..]), "the echo carries the peer's code");

        // Only the header of an oversized frame is sent: it is refused without waiting.
        let header = &masked(0x1, true, &vec![0; 5000])[..8];
        client.write_all(header).await.expect("write");
        r.readable().await.expect("readable");
        assert!(matches!(r.read_frame(4096).await.frame, Err(WebSocketError::FrameTooLarge)));
    }

    #[tokio::test]
    async fn a_closed_stream_reads_as_eof() {
        let (client, server) = tokio::io::duplex(64);
        let mut r = FrameReader::new(server);
        drop(client);
        r.readable().await.expect("readable");
        assert!(matches!(r.read_frame(64).await.frame, Err(WebSocketError::UnexpectedEOF)));
    }
}
