//! WebSocket client on a pre-bound socket: `connect_ws_path` of `switchboard::client`, but the
//! TCP socket is bound to a chosen source address first, so one machine can open more than the
//! ~28k connections its ephemeral port range allows per source IP.
//!
//! One connection is two halves: [`Reader`] (owned by one task, never raced: `read_frame` is
//! not cancel-safe) and a shared [`Writer`] used for heartbeats, acks and the obligated
//! replies of the reader (pong, close echo).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketRead, WebSocketWrite};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

type Io = TokioIo<Upgraded>;
pub type Writer = Arc<Mutex<WebSocketWrite<WriteHalf<Io>>>>;

pub struct Reader {
    read: WebSocketRead<ReadHalf<Io>>,
    writer: Writer,
}

/// Why a connection attempt failed, as a short label for the failure table.
#[derive(Debug)]
pub struct ConnectError {
    pub kind: &'static str,
    pub detail: String,
}

impl ConnectError {
    fn new(kind: &'static str, detail: impl ToString) -> Self {
        Self { kind, detail: detail.to_string() }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// The ports below the kernel's ephemeral range. A port bound explicitly is withheld from
/// every process's outgoing connections (the kernel's `connect()` skips ports that have a
/// bind bucket), so taking tens of thousands of ephemeral ports would starve the nodes'
/// connections to their backends, and anyone else's on the machine. Below the range only a
/// listener on a wildcard address and the same port would be in the way.
fn source_ports() -> std::ops::Range<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    match range.split_whitespace().next().map(str::parse::<u32>) {
        Some(Ok(lo)) if lo > 10_000 => 1024..lo,
        _ => 1024..32768,
    }
}

/// The next local port to try; processes start at different places (their pid).
fn next_port() -> u16 {
    static PORTS: std::sync::OnceLock<(std::ops::Range<u32>, std::sync::atomic::AtomicU32)> =
        std::sync::OnceLock::new();
    let (range, next) = PORTS
        .get_or_init(|| (source_ports(), std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(7919))));
    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (range.start + n % (range.end - range.start)) as u16
}

/// A TCP connection to `addr`, from `source` when given. The tool picks the source port
/// itself: with tens of thousands of sockets bound to one address, the kernel's search for
/// a free port on `bind(ip, 0)` takes most of the machine (system time). A port in use (by
/// another socket, another load process, a connection in TIME_WAIT or a listener) is
/// skipped. Source addresses other than 127.0.0.1 (`--sources 127.0.0.2,...`) keep clear of
/// the ports of services listening on 127.0.0.1.
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let mut tries = 0;
            let socket = loop {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                match socket.bind(SocketAddr::new(ip, next_port())) {
                    Ok(()) => break socket,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 1000 => tries += 1,
                    Err(e) => return Err(e),
                }
            };
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What an upgrade gave: the halves, and when the 101 arrived.
pub struct Opened {
    pub reader: Reader,
    pub writer: Writer,
}

/// Opens `path` (e.g. `/ws/42`) on `addr` from `source`, bounded by `within`.
pub async fn open(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    within: Duration,
) -> Result<Opened, ConnectError> {
    match tokio::time::timeout(within, open_inner(addr, source, path)).await {
        Ok(res) => res,
        Err(_) => Err(ConnectError::new("timeout", format!("no upgrade within {within:?}"))),
    }
}

async fn open_inner(addr: SocketAddr, source: Option<IpAddr>, path: &str) -> Result<Opened, ConnectError> {
    let stream = tcp(addr, source).await.map_err(|e| {
        let kind = match e.raw_os_error() {
            Some(99) => "addr_not_available",
            Some(111) => "refused",
            Some(24) => "too_many_files",
            _ => "connect",
        };
        ConnectError::new(kind, e)
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| ConnectError::new("http", e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::get(path)
        .header("host", addr.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", fastwebsockets::handshake::generate_key())
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ConnectError::new("request", e))?;
    let mut res = sender.send_request(req).await.map_err(|e| ConnectError::new("http", e))?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let kind = match status.as_u16() {
            503 => "http_503",
            404 => "http_404",
            400 => "http_400",
            s if s >= 500 => "http_5xx",
            _ => "http_other",
        };
        return Err(ConnectError::new(kind, format!("{status} {}", String::from_utf8_lossy(&body))));
    }
    let upgraded = hyper::upgrade::on(&mut res).await.map_err(|e| ConnectError::new("upgrade", e))?;
    let ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    let (read, write) = ws.split(tokio::io::split);
    let writer: Writer = Arc::new(Mutex::new(write));
    Ok(Opened { reader: Reader { read, writer: writer.clone() }, writer })
}

/// One frame as the load tool cares about it.
pub enum Event {
    Text(Vec<u8>),
    /// Closed by the server (code) or dropped (None).
    Closed(Option<u16>),
}

impl Reader {
    /// The next text frame or the end of the connection. Not cancel-safe.
    pub async fn next(&mut self) -> Event {
        loop {
            let writer = self.writer.clone();
            let mut obligated = |frame: Frame<'_>| {
                let writer = writer.clone();
                let (opcode, payload) = (frame.opcode, frame.payload.to_vec());
                async move {
                    let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
                    writer.lock().await.write_frame(frame).await
                }
            };
            match self.read.read_frame(&mut obligated).await {
                Ok(f) if f.opcode == OpCode::Text => return Event::Text(f.payload.to_vec()),
                Ok(f) if f.opcode == OpCode::Close => {
                    let code = (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    return Event::Closed(code);
                }
                Ok(_) => continue,
                Err(_) => return Event::Closed(None),
            }
        }
    }
}

pub async fn send_text(writer: &Writer, text: &str) -> bool {
    let frame = Frame::text(Payload::Owned(text.as_bytes().to_vec()));
    tokio::time::timeout(Duration::from_secs(5), async { writer.lock().await.write_frame(frame).await })
        .await
        .is_ok_and(|r| r.is_ok())
}

pub async fn close(writer: &Writer) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        writer.lock().await.write_frame(Frame::close(1000, b"bye")).await
    })
    .await;
}

/// The fields of a server frame the tool reads, without building a `serde_json::Value`.
#[derive(serde::Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub message_id: Option<i64>,
    #[serde(default)]
    pub group_id: Option<i64>,
    #[serde(default)]
    pub sender_id: Option<i64>,
    #[serde(default, borrow)]
    pub content: Option<std::borrow::Cow<'a, str>>,
}

pub fn parse(bytes: &[u8]) -> Option<ServerFrame<'_>> {
    serde_json::from_slice(bytes).ok()
}
