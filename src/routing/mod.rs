//! Routing modes (docs/routing.md): which channels a node subscribes, and which channels a
//! message is published on.
//!
//! The hub and the send path speak logical channels (`group:{id}`, `user:{id}`) to a
//! [`Backplane`]. In `group` mode those are the Redis channels. The other modes are
//! decorators around the transport that keep that interface:
//!
//! - [`BroadcastBackplane`]: every payload goes on the one `broadcast` channel, wrapped
//!   with its logical channel; every node receives all of it and the hub drops what no
//!   local session wants.
//! - [`NodeBackplane`]: a node subscribes only `node:{incarnation}`; a sender's node finds
//!   the recipients' nodes in the [`Presence`] store and publishes once per target node.
//!
//! `sharded` changes the transport, not the routing: `group` mode's channels on a Redis
//! Cluster's sharded pub/sub ([`RedisClusterBackplane`](crate::backplane::RedisClusterBackplane)).
//! `node` mode runs on that transport too (its node channels spread over the shards), with
//! its presence store on the same cluster ([`Keyspace::Cluster`]).

mod agreement;
mod broadcast;
mod node;
mod presence;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use tokio::sync::mpsc;

use crate::backplane::{Backplane, BackplaneError, Channel, Event};
use crate::metrics::Metrics;
use crate::model::{GroupId, UserId};
use crate::store::Store;

pub use agreement::{Disagreement, Keyspace, agree, keep_agreeing};
pub use broadcast::BroadcastBackplane;
pub use node::NodeBackplane;
pub use presence::{Presence, PresenceConfig};

/// How messages find the nodes that hold their recipients' sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// A channel per group with local members and per user with local sessions.
    Group,
    /// `group`'s channels as sharded pub/sub on a Redis Cluster, hash-tagged into partitions.
    Sharded,
    /// A channel per node, and a presence store saying which nodes hold which users.
    Node,
    /// One channel for everything; each node filters by its local sessions.
    Broadcast,
}

impl Routing {
    pub fn name(self) -> &'static str {
        match self {
            Routing::Group => "group",
            Routing::Sharded => "sharded",
            Routing::Node => "node",
            Routing::Broadcast => "broadcast",
        }
    }
}

/// Who is in a group: what `node` mode needs to turn a group message into recipients.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The members, or `None` when they cannot be known now.
    async fn members(&self, group: GroupId) -> Option<Vec<UserId>>;
}

/// The store as a directory (its member lists are cached: membership never changes).
pub struct StoreDirectory(pub Arc<dyn Store>);

#[async_trait]
impl Directory for StoreDirectory {
    async fn members(&self, group: GroupId) -> Option<Vec<UserId>> {
        match self.0.group_members(group).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(error = %e, group_id = group, "cannot route: group members unknown");
                None
            }
        }
    }
}

/// What a node's backplane is built from, besides its transport.
pub struct Setup<'a> {
    pub mode: Routing,
    /// The presence store's Redis or Redis Cluster (`node` mode needs it).
    pub redis: Option<&'a Keyspace>,
    pub prefix: &'a str,
    /// The node's name, kept in its liveness key.
    pub node: &'a str,
    pub presence: PresenceConfig,
    pub directory: Arc<dyn Directory>,
    pub metrics: Arc<Metrics>,
}

/// A node's backplane, and its presence store in `node` mode.
pub struct Routed {
    pub backplane: Arc<dyn Backplane>,
    pub presence: Option<Arc<Presence>>,
}

/// Builds the node's backplane in `setup.mode` on the transport `connect` makes (handed the
/// sender its events must go to); the node's events arrive on `events`.
pub fn build<F>(setup: Setup<'_>, events: mpsc::Sender<Event>, connect: F) -> Result<Routed, BackplaneError>
where
    F: FnOnce(mpsc::Sender<Event>) -> Result<Arc<dyn Backplane>, BackplaneError>,
{
    if matches!(setup.mode, Routing::Group | Routing::Sharded) {
        return Ok(Routed { backplane: connect(events)?, presence: None });
    }
    let (tx, rx) = mpsc::channel(4096);
    let transport = connect(tx)?;
    match (setup.mode, setup.redis) {
        (Routing::Node, Some(keys)) => {
            let presence =
                Presence::start(keys, (setup.prefix, setup.node), setup.presence, setup.metrics, events.clone())?;
            let backplane = NodeBackplane::new(transport, rx, events, presence.clone(), setup.directory);
            Ok(Routed { backplane: Arc::new(backplane), presence: Some(presence) })
        }
        (Routing::Node, None) => Err(BackplaneError::NeedsRedis),
        _ => Ok(Routed { backplane: Arc::new(BroadcastBackplane::new(transport, rx, events)), presence: None }),
    }
}

/// A payload carried on a shared channel: its logical channel's name, a newline, then the
/// payload as `group` mode would publish it.
pub(crate) fn wrap(channel: Channel, payload: &[u8]) -> Bytes {
    let name = channel.to_string();
    let mut out = BytesMut::with_capacity(name.len() + 1 + payload.len());
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(payload);
    out.freeze()
}

/// The logical channel and payload of a wrapped payload; `None` for anything else.
pub(crate) fn unwrap(payload: &Bytes) -> Option<(Channel, Bytes)> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let channel = Channel::parse(std::str::from_utf8(&payload[..newline]).ok()?)?;
    matches!(channel, Channel::Group(_) | Channel::User(_)).then(|| (channel, payload.slice(newline + 1..)))
}

/// Moves the transport's events to the hub, unwrapping payloads of the shared channel. A
/// `Resynced` goes through `resynced` first (node mode registers its presence again).
async fn pump<F, Fut>(mut from: mpsc::Receiver<Event>, to: mpsc::Sender<Event>, resynced: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(event) = from.recv().await {
        let event = match event {
            Event::Payload { payload, .. } => match unwrap(&payload) {
                Some((channel, payload)) => Event::Payload { channel, payload },
                None => continue,
            },
            Event::Resynced => {
                resynced().await;
                Event::Resynced
            }
            other => other,
        };
        if to.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_payloads_round_trip_and_only_carry_logical_channels() {
        let p = wrap(Channel::Group(5), b"M 1 2 3 4\n{\"x\":1}");
        assert_eq!(unwrap(&p), Some((Channel::Group(5), Bytes::from_static(b"M 1 2 3 4\n{\"x\":1}"))));
        assert_eq!(unwrap(&wrap(Channel::User(9), b"")), Some((Channel::User(9), Bytes::new())));
        assert_eq!(unwrap(&wrap(Channel::Node(9), b"x")), None);
        assert_eq!(unwrap(&Bytes::from_static(b"no newline")), None);
        assert_eq!(unwrap(&Bytes::from_static(b"room:1\nx")), None);
    }
}
