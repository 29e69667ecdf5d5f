//! The WebSocket protocol of docs/protocol.md: the frames the server writes, the frames a client
//! may send, and the close codes.

use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;

use crate::model::{Group, MessageId, User};

/// Close codes. 1000 and 1008 tell a client to stop; every other code means "reconnect
/// with backoff".
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Why a session ended: the `reason` label of `ws_disconnects_total` and of the
/// "session disconnected" log line. A close the server chose maps from its code
/// ([`Disconnect::of_close`]), which also gives the close frame its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame.
    ClientClose,
    /// The connection broke, or the client vanished without a close.
    ClientGone,
    HeartbeatTimeout,
    SlowConsumer,
    /// Closed with 1001 by the drain.
    Draining,
    /// The drain deadline cut the session before its client answered the close.
    DrainTimeout,
    ProtocolError,
    TooLarge,
    /// A failure on the server's side (1011).
    Error,
}

impl Disconnect {
    pub const ALL: [Disconnect; 9] = [
        Disconnect::ClientClose,
        Disconnect::ClientGone,
        Disconnect::HeartbeatTimeout,
        Disconnect::SlowConsumer,
        Disconnect::Draining,
        Disconnect::DrainTimeout,
        Disconnect::ProtocolError,
        Disconnect::TooLarge,
        Disconnect::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::ClientGone => "client_gone",
            Disconnect::HeartbeatTimeout => "heartbeat_timeout",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Draining => "draining",
            Disconnect::DrainTimeout => "drain_timeout",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::TooLarge => "too_large",
            Disconnect::Error => "error",
        }
    }

    /// The reason of a close the server chose with `code` (1011 and unknown codes: `Error`).
    pub fn of_close(code: u16) -> Self {
        match code {
            close::GOING_AWAY => Disconnect::Draining,
            close::POLICY => Disconnect::ProtocolError,
            close::TOO_LARGE => Disconnect::TooLarge,
            close::HEARTBEAT_TIMEOUT => Disconnect::HeartbeatTimeout,
            close::SLOW_CONSUMER => Disconnect::SlowConsumer,
            _ => Disconnect::Error,
        }
    }

    /// The text of the close frame the server sends for this reason.
    pub fn close_text(self) -> &'static [u8] {
        match self {
            Disconnect::Draining => b"going away",
            Disconnect::HeartbeatTimeout => b"heartbeat timeout",
            Disconnect::SlowConsumer => b"slow consumer",
            Disconnect::TooLarge => b"frame too large",
            Disconnect::ProtocolError => b"protocol violation",
            _ => b"",
        }
    }
}

/// Longest ack list accepted in one frame.
pub const MAX_ACK_IDS: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Heartbeat,
    Ack(Vec<MessageId>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame is not JSON or a known text command")]
    NotJson,
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("ack lists at most {MAX_ACK_IDS} positive message ids")]
    BadAck,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message_ids: Vec<i64>,
}

/// Parses a client text frame: the plain `heartbeat` of the first protocol, or a JSON object.
pub fn parse_client_text(text: &str) -> Result<ClientFrame, ProtocolError> {
    let text = text.trim();
    if text == "heartbeat" {
        return Ok(ClientFrame::Heartbeat);
    }
    let frame: Incoming = serde_json::from_str(text).map_err(|_| ProtocolError::NotJson)?;
    match frame.kind.as_str() {
        "heartbeat" => Ok(ClientFrame::Heartbeat),
        "ack" => {
            if frame.message_ids.len() > MAX_ACK_IDS || frame.message_ids.iter().any(|id| *id <= 0) {
                return Err(ProtocolError::BadAck);
            }
            Ok(ClientFrame::Ack(frame.message_ids))
        }
        other => Err(ProtocolError::UnknownType(other.chars().take(32).collect())),
    }
}

pub const HEARTBEAT_ACK: &[u8] = br#"{"type":"heartbeat_ack"}"#;
pub const GOODBYE_DRAINING: &[u8] = br#"{"type":"goodbye","reason":"draining"}"#;

pub fn hello(session_id: u64, node: &str, interval_ms: u64, timeout_ms: u64) -> Bytes {
    let v = serde_json::json!({
        "type": "hello",
        "session_id": session_id.to_string(),
        "node": node,
        "heartbeat_interval_ms": interval_ms,
        "heartbeat_timeout_ms": timeout_ms,
    });
    Bytes::from(v.to_string())
}

/// The `group_joined` frame: the group as `POST /create_group` returns it, members named
/// from `users` (sorted by id).
pub fn group_joined(group: &Group, users: &[User]) -> Bytes {
    let mut v = group.to_json(users);
    v["type"] = "group_joined".into();
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_close_codes_name_their_disconnect_reason() {
        for (code, reason) in [
            (close::GOING_AWAY, "draining"),
            (close::POLICY, "protocol_error"),
            (close::TOO_LARGE, "too_large"),
            (close::HEARTBEAT_TIMEOUT, "heartbeat_timeout"),
            (close::SLOW_CONSUMER, "slow_consumer"),
            (close::INTERNAL, "error"),
        ] {
            assert_eq!(Disconnect::of_close(code).as_str(), reason, "{code}");
        }
        assert_eq!(Disconnect::of_close(close::INTERNAL).close_text(), b"");
        assert_eq!(Disconnect::of_close(close::GOING_AWAY).close_text(), b"going away");
    }

    #[test]
    fn heartbeats_in_both_spellings() {
        assert_eq!(parse_client_text("heartbeat"), Ok(ClientFrame::Heartbeat));
        assert_eq!(parse_client_text(r#"{"type":"heartbeat"}"#), Ok(ClientFrame::Heartbeat));
    }

    #[test]
    fn acks_and_garbage() {
        assert_eq!(parse_client_text(r#"{"type":"ack","message_ids":[3,4]}"#), Ok(ClientFrame::Ack(vec![3, 4])));
        assert_eq!(parse_client_text(r#"{"type":"ack","message_ids":[-1]}"#), Err(ProtocolError::BadAck));
        assert_eq!(parse_client_text("hello"), Err(ProtocolError::NotJson));
        assert_eq!(parse_client_text("[1,2]"), Err(ProtocolError::NotJson));
        assert!(matches!(parse_client_text(r#"{"type":"nope"}"#), Err(ProtocolError::UnknownType(_))));
    }
}
