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

    /// The `reason` label of `ws_disconnects_total` for a server-chosen close code.
    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "draining",
            POLICY => "protocol_error",
            TOO_LARGE => "too_large",
            HEARTBEAT_TIMEOUT => "heartbeat_timeout",
            SLOW_CONSUMER => "slow_consumer",
            INTERNAL => "error",
            _ => "other",
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
    #[error("binary frames are not part of the protocol")]
    Binary,
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

/// Parses a client text frame: the original prototype's plain `heartbeat`, or a JSON object.
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
