//! Closing a connection so that the client reads the answer.
//!
//! A request refused before its body was read (413 on a 10 MB upload, 415, 401) leaves the
//! rest of the body on the way. Closing the socket with unread bytes in its receive buffer
//! makes the kernel send a RST, and a RST that arrives before the client read the response
//! destroys it: clients that write the whole body before reading (Python's httpx, h11) see
//! "connection reset" instead of the 413. So hyper gets a duplicate of the socket's
//! descriptor, and when hyper is done with the connection this side half-closes (FIN after
//! the response) and reads and discards what the client still sends, until the client
//! closes, a bounded amount was discarded, or it goes quiet. Only then is the socket closed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes discarded after the answer: several times the largest upload a client is
/// likely to try, small enough that a client streaming forever cannot hold the task.
const MAX_DISCARD: u64 = 64 * 1024 * 1024;
/// A client that sends nothing for this long is not finishing an upload.
const IDLE: Duration = Duration::from_secs(2);
/// The longest a connection lingers in all.
const MAX_LINGER: Duration = Duration::from_secs(10);

/// Splits an accepted socket into the stream hyper serves and a handle on the same socket
/// for [`linger`]. Either closing its descriptor leaves the socket open for the other.
pub fn split(stream: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let std = stream.into_std()?;
    let handle = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(handle)?))
}

/// Half-closes and drains `socket` once hyper has answered and let go of it.
pub async fn linger(mut socket: TcpStream) {
    // hyper already shut its write side down after a clean close; doing it again is a no-op
    // then, and sends the FIN after the response when hyper ended on an error.
    let _ = socket.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut discarded = 0u64;
        while discarded < MAX_DISCARD {
            match tokio::time::timeout(IDLE, socket.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => discarded += n as u64,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(MAX_LINGER, drain).await;
}
