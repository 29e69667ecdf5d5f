//! `--routing node`: each node subscribes only its own channel, `node:{incarnation}`. The
//! hub still subscribes logical channels; here a user channel's 0↔1 edges become the
//! node's presence entry for that user, and group channels cost nothing (the hub's local
//! map does the fan-out by group). A publish looks up the nodes of every recipient (group
//! members, or the user) in one pipelined round trip, and goes once to each of those nodes.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Directory, Presence, pump, wrap};
use crate::backplane::{Backplane, BackplaneError, Channel, Event};
use crate::model::UserId;

pub struct NodeBackplane {
    inner: Arc<dyn Backplane>,
    presence: Arc<Presence>,
    directory: Arc<dyn Directory>,
}

impl NodeBackplane {
    /// Wraps `inner`, whose events arrive on `inner_events`, and delivers to `events`. After
    /// the transport reconnects (Redis may have restarted empty), the node's presence is
    /// written again before the hub hears `Resynced`, so the catch-up that follows is not
    /// overtaken by publishes still routed past this node.
    pub fn new(
        inner: Arc<dyn Backplane>,
        inner_events: mpsc::Receiver<Event>,
        events: mpsc::Sender<Event>,
        presence: Arc<Presence>,
        directory: Arc<dyn Directory>,
    ) -> Self {
        inner.subscribe(Channel::Node(presence.incarnation()));
        let p = presence.clone();
        tokio::spawn(pump(inner_events, events, move || {
            let p = p.clone();
            async move { p.register_again().await }
        }));
        Self { inner, presence, directory }
    }

    /// Each message's recipients: a group's members, or the user.
    async fn recipients(&self, messages: &[(Channel, Bytes)]) -> Vec<Vec<UserId>> {
        let mut out = Vec::with_capacity(messages.len());
        let mut members: HashMap<i64, Vec<UserId>> = HashMap::new();
        for (channel, _) in messages {
            out.push(match *channel {
                Channel::Group(g) => match members.get(&g) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.directory.members(g).await.unwrap_or_default();
                        members.insert(g, m.clone());
                        m
                    }
                },
                Channel::User(u) => vec![u],
                Channel::Node(_) | Channel::Broadcast => Vec::new(),
            });
        }
        out
    }
}

#[async_trait]
impl Backplane for NodeBackplane {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        let recipients = self.recipients(messages).await;
        let mut everyone: Vec<UserId> = recipients.iter().flatten().copied().collect();
        everyone.sort_unstable();
        everyone.dedup();
        // A lookup that partly failed (a master failing over) still routes what it found;
        // recipients it missed read the store when the next message of their group shows the
        // hole, or on `Resynced`. The failure is returned once the rest is published.
        let (located, failed) = self.presence.locate_all(&everyone).await;
        let mut out = Vec::new();
        for ((channel, payload), users) in messages.iter().zip(&recipients) {
            let mut nodes: Vec<u64> = users.iter().filter_map(|u| located.get(u)).flatten().copied().collect();
            nodes.sort_unstable();
            nodes.dedup();
            if nodes.is_empty() {
                continue;
            }
            let wrapped = wrap(*channel, payload);
            out.extend(nodes.into_iter().map(|n| (Channel::Node(n), wrapped.clone())));
        }
        if !out.is_empty() {
            self.inner.publish(&out).await?;
        }
        failed.map_or(Ok(()), Err)
    }

    fn subscribe(&self, channel: Channel) {
        if let Channel::User(u) = channel {
            self.presence.arrive(u);
        }
    }

    fn unsubscribe(&self, channel: Channel) {
        if let Channel::User(u) = channel {
            self.presence.leave(u);
        }
    }

    /// Presence written (or known to have failed, followed by a re-registration and
    /// `Resynced`), and the node channel subscribed.
    async fn barrier(&self) {
        self.presence.barrier().await;
        self.inner.barrier().await;
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        self.inner.ping().await
    }
}
