//! A Rust client of the gateway, used by the integration tests and the load tools: REST calls
//! over pooled HTTP/1.1 connections, and WebSocket connections whose frames arrive on a
//! channel (so a caller can wait with a timeout without cancelling a frame read).
//!
//! [`handshake`] upgrades a TCP connection the caller opened and gives the two halves,
//! [`WsReader`] and [`WsWriter`]: the load tool binds its sockets to chosen source addresses
//! and reads frames inline, parsing them with [`ServerFrame`] (no `serde_json::Value`).
//!
//! [`backoff`] is the reconnect delay of docs/protocol.md: `min(cap, base * 2^attempt) + random(0,
//! 1000 ms)`. [`reconnects`] tells which close codes mean "come back".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::backoff::{Backoff, Jitter};
use crate::model::{GroupId, MessageId, UserId};
use crate::ws::protocol::close;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("upgrade: {0}")]
    Upgrade(hyper::Error),
    #[error("websocket: {0}")]
    Ws(#[from] WebSocketError),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: StatusCode, body: Value },
}

/// The reconnect delay for `attempt` (0-based): [`Backoff`] with up to 1 s of jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    Backoff { base, cap, jitter: Jitter::UpTo(Duration::from_secs(1)) }.delay(attempt)
}

/// Whether a client should reconnect after the server closed with `code`.
pub fn reconnects(code: Option<u16>) -> bool {
    !matches!(code, Some(close::NORMAL | close::POLICY))
}

type Pool = Arc<std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>>;

/// REST client of one node (or of HAProxy).
#[derive(Clone)]
pub struct Api {
    addr: SocketAddr,
    pool: Pool,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, pool: Arc::default() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        loop {
            let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
            match pooled {
                Some(s) if !s.is_closed() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends a request and returns status and JSON body (Null when the body is not JSON).
    pub async fn request(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Value), ClientError> {
        self.request_with_headers(req).await.map(|(status, _, body)| (status, body))
    }

    /// Like `request`, with the response headers (Retry-After and friends).
    pub async fn request_with_headers(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Value), ClientError> {
        let mut sender = self.sender().await?;
        sender.ready().await?;
        let res = sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        if sender.is_ready()
            && let Ok(mut pool) = self.pool.lock()
        {
            pool.push(sender);
        }
        Ok((parts.status, parts.headers, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Result<(StatusCode, Value), ClientError> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let req = Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))?;
        self.request(req).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), ClientError> {
        let req = Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        self.request(req).await
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        let req = Request::get(path).header("host", self.addr.to_string()).body(Full::new(Bytes::new()))?;
        self.request(req).await
    }

    fn expect_ok((status, body): (StatusCode, Value)) -> Result<Value, ClientError> {
        if status == StatusCode::OK { Ok(body) } else { Err(ClientError::Status { status, body }) }
    }

    pub async fn register(&self, username: &str) -> Result<UserId, ClientError> {
        let body = Self::expect_ok(self.post_form("/register", &[("username", username)]).await?)?;
        Ok(body["user_id"].as_i64().unwrap_or_default())
    }

    /// Opens (or finds) the conversation of `created_by` with `others`.
    pub async fn create_group(&self, created_by: UserId, others: &[UserId]) -> Result<GroupId, ClientError> {
        let ids = others.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let by = created_by.to_string();
        let body =
            self.post_form("/create_group", &[("name", "chat"), ("created_by", &by), ("user_ids", &ids)]).await?;
        Ok(Self::expect_ok(body)?["group_id"].as_i64().unwrap_or_default())
    }

    /// Sends to a group; returns the raw answer so callers can see 4xx/5xx.
    pub async fn send(
        &self,
        sender: UserId,
        group: GroupId,
        content: &str,
        client_msg_id: Option<&str>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let (s, g) = (sender.to_string(), group.to_string());
        let mut fields = vec![("sender_id", s.as_str()), ("group_id", g.as_str()), ("content", content)];
        if let Some(id) = client_msg_id {
            fields.push(("client_msg_id", id));
        }
        self.post_form("/send_message", &fields).await
    }
}

type Io = TokioIo<Upgraded>;

/// The write half of a WebSocket, shared by whoever sends on it (heartbeats, acks) and by the
/// reader's obligated replies (pong, close echo). Cheap to clone.
#[derive(Clone)]
pub struct WsWriter(Arc<Mutex<WebSocketWrite<WriteHalf<Io>>>>);

impl WsWriter {
    pub async fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.send_frame(Frame::text(Payload::Borrowed(text.as_bytes()))).await
    }

    pub async fn send_frame(&self, frame: Frame<'_>) -> Result<(), ClientError> {
        Ok(self.0.lock().await.write_frame(frame).await?)
    }

    pub async fn ack(&self, ids: &[MessageId]) -> Result<(), ClientError> {
        self.send_text(&serde_json::json!({ "type": "ack", "message_ids": ids }).to_string()).await
    }

    /// Closes with 1000.
    pub async fn close(&self) {
        let _ = self.send_frame(Frame::close(close::NORMAL, b"bye")).await;
    }
}

/// A frame as it arrives, before any JSON parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    /// The payload of a text frame.
    Text(Vec<u8>),
    /// The server closed (with its code), or the connection dropped (`None`).
    Closed(Option<u16>),
}

/// The read half of a WebSocket. It has one owner, and [`WsReader::next`] is not
/// cancel-safe: a caller that must wait on other things too reads from a task of its own
/// ([`WsConn`] does).
pub struct WsReader {
    read: WebSocketRead<ReadHalf<Io>>,
    writer: WsWriter,
}

impl WsReader {
    /// The next text frame, or the end of the connection. Pings are answered on the way.
    pub async fn next(&mut self) -> RawEvent {
        let writer = self.writer.clone();
        let mut obligated = |frame: Frame<'_>| {
            let writer = writer.clone();
            let (opcode, payload) = (frame.opcode, frame.payload.to_vec());
            async move { writer.0.lock().await.write_frame(Frame::new(true, opcode, None, Payload::Owned(payload))).await }
        };
        loop {
            match self.read.read_frame(&mut obligated).await {
                Ok(f) if f.opcode == OpCode::Text => return RawEvent::Text(f.payload.to_vec()),
                Ok(f) if f.opcode == OpCode::Close => {
                    let code = (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    return RawEvent::Closed(code);
                }
                Ok(_) => continue,
                Err(_) => return RawEvent::Closed(None),
            }
        }
    }
}

/// The fields of a server frame a client usually reads, borrowed from the payload without
/// building a `serde_json::Value` (the load tool's receivers parse thousands a second).
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub message_id: Option<MessageId>,
    #[serde(default)]
    pub group_id: Option<GroupId>,
    #[serde(default)]
    pub sender_id: Option<UserId>,
    #[serde(default, borrow)]
    pub content: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> ServerFrame<'a> {
    /// `None` when the payload is not a JSON object with a `type`.
    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// What a WebSocket connection yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A JSON text frame.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// The server closed (with its code), or the connection dropped (`None`).
    Closed(Option<u16>),
}

impl WsEvent {
    /// The message id of a `message` frame.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            WsEvent::Json(v) if v["type"] == "message" => v["message_id"].as_i64(),
            _ => None,
        }
    }
}

impl From<RawEvent> for WsEvent {
    fn from(raw: RawEvent) -> Self {
        match raw {
            RawEvent::Text(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => WsEvent::Json(v),
                Err(_) => WsEvent::Text(String::from_utf8_lossy(&bytes).into_owned()),
            },
            RawEvent::Closed(code) => WsEvent::Closed(code),
        }
    }
}

/// An open WebSocket session whose frames arrive on a channel, so a caller can wait with a
/// timeout without cancelling a frame read. Its events are parsed into [`WsEvent`]s, or left
/// as they came with `WsConn<RawEvent>`. Dropping it drops the connection at once.
pub struct WsConn<E = WsEvent> {
    pub events: mpsc::UnboundedReceiver<E>,
    writer: WsWriter,
    reader: tokio::task::JoinHandle<()>,
}

impl<E> Drop for WsConn<E> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The session path of `user`, in at-least-once mode (`?ack=1`) when `ack`.
pub fn ws_path(user: UserId, ack: bool) -> String {
    format!("/ws/{user}{}", if ack { "?ack=1" } else { "" })
}

/// Opens `/ws/{user}` on `addr`. A refused upgrade comes back as `ClientError::Status`.
pub async fn connect_ws(addr: SocketAddr, user: UserId, ack: bool) -> Result<WsConn, ClientError> {
    connect_ws_path(addr, &ws_path(user, ack)).await
}

pub async fn connect_ws_path(addr: SocketAddr, path: &str) -> Result<WsConn, ClientError> {
    connect_ws_with(addr, path, &[]).await
}

/// Opens a WebSocket at `path` with extra request headers (Origin, Authorization, ...).
pub async fn connect_ws_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<WsConn, ClientError> {
    let stream = TcpStream::connect(addr).await?;
    let (reader, writer) = handshake(stream, path, headers).await?;
    Ok(WsConn::new(reader, writer))
}

/// Upgrades `path` on a TCP connection the caller opened (bound to a source address of its
/// choosing, say, to go past the ~28k ephemeral ports of one address). The Host header is
/// the peer's address. A refused upgrade comes back as `ClientError::Status`.
pub async fn handshake(
    stream: TcpStream,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsReader, WsWriter), ClientError> {
    stream.set_nodelay(true)?;
    let host = stream.peer_addr()?.to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = Request::get(path)
        .header("host", host)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", fastwebsockets::handshake::generate_key())
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let mut res = sender.send_request(req).await?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        return Err(ClientError::Status { status, body: serde_json::from_slice(&body).unwrap_or(Value::Null) });
    }
    let upgraded = hyper::upgrade::on(&mut res).await.map_err(ClientError::Upgrade)?;
    let ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    let (read, write) = ws.split(tokio::io::split);
    let writer = WsWriter(Arc::new(Mutex::new(write)));
    Ok((WsReader { read, writer: writer.clone() }, writer))
}

impl<E: From<RawEvent> + Send + 'static> WsConn<E> {
    /// A session over the halves of [`handshake`]: a task of its own reads the frames and
    /// sends them, converted, on `events`.
    pub fn new(mut reader: WsReader, writer: WsWriter) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        // The only reader of this socket; never raced, so read_frame's lack of cancel safety
        // does not matter.
        let reader = tokio::spawn(async move {
            loop {
                let raw = reader.next().await;
                let end = matches!(raw, RawEvent::Closed(_));
                if tx.send(E::from(raw)).is_err() || end {
                    return;
                }
            }
        });
        Self { events, writer, reader }
    }

    /// The write half, for a task that sends while another waits for events.
    pub fn writer(&self) -> &WsWriter {
        &self.writer
    }

    pub async fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.writer.send_text(text).await
    }

    pub async fn send_frame(&self, frame: Frame<'_>) -> Result<(), ClientError> {
        self.writer.send_frame(frame).await
    }

    pub async fn ack(&self, ids: &[MessageId]) -> Result<(), ClientError> {
        self.writer.ack(ids).await
    }

    /// The next event, or `None` if none arrives within `within`. Cancel-safe.
    pub async fn next(&mut self, within: Duration) -> Option<E> {
        tokio::time::timeout(within, self.events.recv()).await.ok().flatten()
    }

    /// Closes with 1000.
    pub async fn close(&self) {
        self.writer.close().await;
    }
}

impl WsConn {
    /// The next event that is not a heartbeat ack.
    pub async fn next_non_ack(&mut self, within: Duration) -> Option<WsEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                WsEvent::Json(v) if v["type"] == "heartbeat_ack" => continue,
                other => return Some(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_parse_without_a_value_and_raw_events_convert() {
        let text = br#"{"type":"message","message_id":7,"group_id":3,"sender_id":2,"content":"hi \"x\"","seq":7}"#;
        let f = ServerFrame::parse(text).expect("a message frame");
        assert_eq!((f.kind, f.message_id, f.group_id, f.sender_id), ("message", Some(7), Some(3), Some(2)));
        assert_eq!(f.content.as_deref(), Some("hi \"x\""));
        assert_eq!(ServerFrame::parse(br#"{"type":"heartbeat_ack"}"#).map(|f| f.kind), Some("heartbeat_ack"));
        assert!(ServerFrame::parse(b"not json").is_none());
        assert_eq!(WsEvent::from(RawEvent::Text(text.to_vec())).message_id(), Some(7));
        assert_eq!(WsEvent::from(RawEvent::Text(b"plain".to_vec())), WsEvent::Text("plain".into()));
        assert_eq!(WsEvent::from(RawEvent::Closed(Some(4000))), WsEvent::Closed(Some(4000)));
        assert_eq!(ws_path(5, true), "/ws/5?ack=1");
        assert_eq!(ws_path(5, false), "/ws/5");
    }

    #[test]
    fn only_normal_and_policy_closes_stop_the_client() {
        assert!(!reconnects(Some(1000)));
        assert!(!reconnects(Some(1008)));
        for code in [1001, 1009, 1011, 4000, 4008] {
            assert!(reconnects(Some(code)), "{code}");
        }
        assert!(reconnects(None));
    }
}
