//! The backplane carries messages between nodes: `group:{id}` channels for messages and
//! `user:{id}` channels for membership changes (docs/delivery.md). Which channels a node
//! really subscribes and publishes on is the routing mode's choice (docs/routing.md): the
//! [`routing`](crate::routing) decorators map these logical channels onto `node:{id}` or
//! `broadcast` and back, so the hub and the send path only ever see logical channels.
//!
//! A node subscribes a channel once, however many local sessions want it; the [`Hub`]
//! counts references and calls `subscribe`/`unsubscribe` on the 0↔1 edges. Those calls only
//! enqueue, in order, so that a racing unsubscribe and re-subscribe reach Redis in the order
//! they happened. [`Backplane::barrier`] waits until everything enqueued before it is
//! confirmed, which is how a session knows it will see every later publish.
//!
//! The transports are [`MemoryBackplane`] (one process), [`RedisBackplane`] (Redis pub/sub)
//! and [`NatsBackplane`] (core NATS, a cluster of servers).
//!
//! Incoming payloads and [`Event::Resynced`] (the connection was lost and every channel has
//! been subscribed again) flow one way, into the hub's event channel.
//!
//! [`Hub`]: crate::hub::Hub

mod cluster;
mod envelope;
mod memory;
mod nats;
mod redis;
mod wanted;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

use crate::model::{GroupId, UserId};

/// Bound on one round trip to a backplane or presence server: a dead server must not hang a
/// request or a subscriber task.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub use cluster::{Partitions, RedisClusterBackplane, slot};
pub use envelope::Envelope;
pub use memory::{MemoryBackplane, MemoryBus};
pub use nats::NatsBackplane;
pub use redis::RedisBackplane;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Group(GroupId),
    User(UserId),
    /// One node incarnation's own channel (`--routing node`).
    Node(u64),
    /// The one channel every node receives (`--routing broadcast`).
    Broadcast,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Group(id) => write!(f, "group:{id}"),
            Channel::User(id) => write!(f, "user:{id}"),
            Channel::Node(id) => write!(f, "node:{id}"),
            Channel::Broadcast => f.write_str("broadcast"),
        }
    }
}

impl Channel {
    pub fn parse(name: &str) -> Option<Channel> {
        if name == "broadcast" {
            return Some(Channel::Broadcast);
        }
        let (kind, id) = name.split_once(':')?;
        match kind {
            "group" => Some(Channel::Group(id.parse().ok()?)),
            "user" => Some(Channel::User(id.parse().ok()?)),
            "node" => Some(Channel::Node(id.parse().ok()?)),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Payload {
        channel: Channel,
        payload: Bytes,
    },
    /// The backplane reconnected and resubscribed everything; publishes made while it was
    /// away were missed, so every local session must catch up from the store.
    Resynced,
    /// Publishes to these users may have been routed past this node until now (other
    /// nodes' presence caches had not seen them here yet): their sessions catch up.
    CatchUp(Vec<UserId>),
}

#[derive(Debug, Error)]
pub enum BackplaneError {
    #[error("backplane unavailable: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("backplane unavailable: {0}")]
    Nats(String),
    #[error("backplane timed out")]
    Timeout,
    #[error("backplane not connected yet")]
    NotConnected,
    #[error("--routing node needs a Redis for its presence store")]
    NeedsRedis,
}

#[async_trait]
pub trait Backplane: Send + Sync {
    /// Publishes each payload on its channel, in order, as one pipelined round trip.
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError>;
    /// Enqueues a subscription (ordered, never blocks).
    fn subscribe(&self, channel: Channel);
    /// Enqueues an unsubscription (ordered, never blocks).
    fn unsubscribe(&self, channel: Channel);
    /// Resolves once every subscription enqueued before this call is confirmed, or once the
    /// backplane knows it is disconnected (a `Resynced` event then follows its return).
    async fn barrier(&self);
    async fn ping(&self) -> Result<(), BackplaneError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for c in [Channel::Group(42), Channel::User(7), Channel::Node(3), Channel::Broadcast] {
            assert_eq!(Channel::parse(&c.to_string()), Some(c));
        }
        assert_eq!(Channel::Group(3).to_string(), "group:3");
        assert_eq!(Channel::parse("group:x"), None);
        assert_eq!(Channel::parse("room:1"), None);
    }
}
