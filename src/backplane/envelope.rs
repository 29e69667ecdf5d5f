//! What travels on a channel: a one-line header the hub needs for routing, de-duplication and
//! latency, then the client frame exactly as it will be written to sockets. The frame is
//! serialized once by the sender and shared (as `Bytes`) by every recipient on every node.
//!
//! `M <message_id> <seq> <sender_id> <accepted_unix_us>\n<message frame>` on `group:{id}`
//! `J <group_id>\n<group_joined frame>` on `user:{id}`

use bytes::{BufMut, Bytes, BytesMut};

use crate::model::{GroupId, MessageId, Seq, UserId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Envelope {
    Message { message_id: MessageId, seq: Seq, sender_id: UserId, accepted_us: i64, frame: Bytes },
    Joined { group_id: GroupId, frame: Bytes },
}

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let (header, frame) = match self {
            Envelope::Message { message_id, seq, sender_id, accepted_us, frame } => {
                (format!("M {message_id} {seq} {sender_id} {accepted_us}\n"), frame)
            }
            Envelope::Joined { group_id, frame } => (format!("J {group_id}\n"), frame),
        };
        let mut out = BytesMut::with_capacity(header.len() + frame.len());
        out.put_slice(header.as_bytes());
        out.put_slice(frame);
        out.freeze()
    }

    /// Parses a payload; `None` for anything this version does not understand.
    pub fn decode(payload: Bytes) -> Option<Envelope> {
        let newline = payload.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&payload[..newline]).ok()?;
        let frame = payload.slice(newline + 1..);
        let mut parts = header.split(' ');
        let kind = parts.next()?;
        let mut num = || parts.next()?.parse::<i64>().ok();
        match kind {
            "M" => Some(Envelope::Message {
                message_id: num()?,
                seq: num()?,
                sender_id: num()?,
                accepted_us: num()?,
                frame,
            }),
            "J" => Some(Envelope::Joined { group_id: num()?, frame }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = Envelope::Message {
            message_id: 9,
            seq: 4,
            sender_id: 2,
            accepted_us: 123,
            frame: Bytes::from_static(b"{\"a\":\"\\n\"}"),
        };
        assert_eq!(Envelope::decode(m.encode()), Some(m));
        let j = Envelope::Joined { group_id: 4, frame: Bytes::from_static(b"{}") };
        assert_eq!(Envelope::decode(j.encode()), Some(j));
        assert_eq!(Envelope::decode(Bytes::from_static(b"M 1 2 3\n{}")), None);
        assert_eq!(Envelope::decode(Bytes::from_static(b"no newline")), None);
        assert_eq!(Envelope::decode(Bytes::from_static(b"X 1\n{}")), None);
    }
}
