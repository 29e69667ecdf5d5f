//! How every simulated client opens its WebSocket: a TCP connection bound to a chosen source
//! address (so one machine can open more than the ~28k connections its ephemeral port range
//! allows per source IP), upgraded by the library's client (`switchboard::client::handshake`),
//! and a failure label for the tables.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchboard::client::{ClientError, WsReader, WsWriter, handshake};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection attempt failed, as a short label for the failure table.
#[derive(Debug)]
pub struct ConnectError {
    pub kind: &'static str,
    pub detail: String,
}

impl ConnectError {
    pub fn new(kind: &'static str, detail: impl ToString) -> Self {
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
async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else { return TcpStream::connect(addr).await };
    let mut tries = 0;
    let socket = loop {
        let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        match socket.bind(SocketAddr::new(ip, next_port())) {
            Ok(()) => break socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 1000 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    socket.connect(addr).await
}

/// Opens `path` (e.g. `/ws/42`) on `addr` from `source`, bounded by `within`.
pub async fn open(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    within: Duration,
) -> Result<(WsReader, WsWriter), ConnectError> {
    let opened = async {
        let stream = tcp(addr, source).await.map_err(|e| {
            let kind = match e.raw_os_error() {
                Some(99) => "addr_not_available",
                Some(111) => "refused",
                Some(24) => "too_many_files",
                _ => "connect",
            };
            ConnectError::new(kind, e)
        })?;
        handshake(stream, path, &[]).await.map_err(|e| ConnectError::new(failure_kind(&e), e))
    };
    match tokio::time::timeout(within, opened).await {
        Ok(res) => res,
        Err(_) => Err(ConnectError::new("timeout", format!("no upgrade within {within:?}"))),
    }
}

/// The label of a failed upgrade.
fn failure_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Status { status, .. } => match status.as_u16() {
            503 => "http_503",
            404 => "http_404",
            400 => "http_400",
            s if s >= 500 => "http_5xx",
            _ => "http_other",
        },
        ClientError::Io(_) => "connect",
        ClientError::Http(_) => "http",
        ClientError::Request(_) => "request",
        ClientError::Upgrade(_) | ClientError::Ws(_) => "upgrade",
    }
}

/// Waits for a write (`writer.send_text(..)`, `writer.ack(..)`); false when it failed or took
/// more than 5 s.
pub async fn sent(write: impl Future<Output = Result<(), ClientError>>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), write).await.is_ok_and(|r| r.is_ok())
}

/// The failure-table label of a connection the server closed with `code` (`None`: dropped).
pub fn close_label(code: Option<u16>) -> String {
    code.map_or("dropped".to_owned(), |c| c.to_string())
}

/// Closes with 1000, waiting at most 2 s.
pub async fn close(writer: &WsWriter) {
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.close()).await;
}
