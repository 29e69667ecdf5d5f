//! Domain types shared by the store, the inbox, the hub and the HTTP layer, and the one
//! place where a message becomes its wire frame.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

pub type UserId = i64;
pub type GroupId = i64;
pub type MessageId = i64;
/// A message's position in its group's log: 1, 2, 3, ... with no gap, assigned at commit.
pub type Seq = i64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub user_id: UserId,
    pub username: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub group_id: GroupId,
    pub name: String,
    pub created_by: UserId,
    /// Sorted member ids.
    pub members: Vec<UserId>,
}

/// A persisted message. `sent_at_ms` is milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub message_id: MessageId,
    pub group_id: GroupId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub content: String,
    pub sent_at_ms: i64,
}

/// The `message` frame of the WebSocket protocol (docs/protocol.md), also the history API's item.
#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: MessageId,
    group_id: GroupId,
    seq: Seq,
    sender_id: UserId,
    content: &'a str,
    timestamp: String,
}

impl Message {
    /// JSON object of the message as clients see it, live, replayed or in history.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "message_id": self.message_id,
            "group_id": self.group_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "content": self.content,
            "timestamp": rfc3339_millis(self.sent_at_ms),
        })
    }

    /// The serialized `message` frame. Built once per message and shared by every recipient.
    pub fn frame(&self) -> Bytes {
        let frame = MessageFrame {
            kind: "message",
            message_id: self.message_id,
            group_id: self.group_id,
            seq: self.seq,
            sender_id: self.sender_id,
            content: &self.content,
            timestamp: rfc3339_millis(self.sent_at_ms),
        };
        // Serializing plain strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&frame).unwrap_or_default())
    }
}

impl Group {
    /// JSON object of the group as clients see it. `members` stays the list of ids that
    /// existing clients read; `member_users` names the same members, in the same order, from
    /// `users` (sorted by id, as [`crate::store::Store::users`] returns them).
    pub fn to_json(&self, users: &[User]) -> serde_json::Value {
        let named: Vec<&User> = self
            .members
            .iter()
            .filter_map(|id| users.binary_search_by_key(id, |u| u.user_id).ok().map(|i| &users[i]))
            .collect();
        serde_json::json!({
            "group_id": self.group_id,
            "name": self.name,
            "groupName": self.name,
            "created_by": self.created_by,
            "members": self.members,
            "member_users": named,
        })
    }
}

/// A positive 64-bit id from its decimal text (surrounding blanks aside): the one parser of
/// ids in paths, fields and tokens.
pub fn parse_id(text: &str) -> Option<i64> {
    let s = text.trim();
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|id| *id > 0)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Microseconds since the Unix epoch; used to measure delivery latency across nodes.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T00:33:45.123Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_764_290_025_123), "2025-11-28T00:33:45.123Z");
    }

    #[test]
    fn frame_carries_the_seed_fields() {
        let m = Message { message_id: 7, group_id: 3, seq: 2, sender_id: 1, content: "hi \"x\"".into(), sent_at_ms: 0 };
        let v: serde_json::Value = serde_json::from_slice(&m.frame()).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["message_id"], 7);
        assert_eq!(v["group_id"], 3);
        assert_eq!(v["seq"], 2);
        assert_eq!(v["sender_id"], 1);
        assert_eq!(v["content"], "hi \"x\"");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn group_json_names_its_members_beside_the_ids() {
        let g = Group { group_id: 3, name: "ab".into(), created_by: 2, members: vec![2, 5] };
        let users = [
            User { user_id: 1, username: "other".into() },
            User { user_id: 2, username: "ann".into() },
            User { user_id: 5, username: "bob".into() },
        ];
        let v = g.to_json(&users);
        assert_eq!(v["members"], serde_json::json!([2, 5]));
        assert_eq!(
            v["member_users"],
            serde_json::json!([{ "user_id": 2, "username": "ann" }, { "user_id": 5, "username": "bob" }])
        );
    }
}
