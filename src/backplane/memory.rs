//! The in-process backplane of the embedded default. Nodes that share a [`MemoryBus`] (in
//! one process) deliver to each other exactly as Redis would, which the conformance suite
//! relies on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::{Backplane, BackplaneError, Channel, Event};

/// The nodes subscribed to one channel: (node, its event sender).
type Subscribers = Vec<(u64, mpsc::Sender<Event>)>;

/// Channel -> subscribed nodes. Cloning shares the bus.
#[derive(Clone, Default)]
pub struct MemoryBus {
    channels: Arc<DashMap<Channel, Subscribers>>,
    next_node: Arc<AtomicU64>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

pub struct MemoryBackplane {
    bus: MemoryBus,
    node: u64,
    events: mpsc::Sender<Event>,
}

impl MemoryBackplane {
    /// A backplane on `bus` delivering into `events`.
    pub fn new(bus: MemoryBus, events: mpsc::Sender<Event>) -> Self {
        let node = bus.next_node.fetch_add(1, Ordering::Relaxed);
        Self { bus, node, events }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        for (channel, payload) in messages {
            // Clone the senders out so no map guard is held across the await.
            let targets: Vec<mpsc::Sender<Event>> = match self.bus.channels.get(channel) {
                Some(subs) => subs.iter().map(|(_, tx)| tx.clone()).collect(),
                None => continue,
            };
            for tx in targets {
                // A node that shut down has dropped its receiver; that is not our failure.
                let _ = tx.send(Event::Payload { channel: *channel, payload: payload.clone() }).await;
            }
        }
        Ok(())
    }

    fn subscribe(&self, channel: Channel) {
        let mut subs = self.bus.channels.entry(channel).or_default();
        if !subs.iter().any(|(n, _)| *n == self.node) {
            subs.push((self.node, self.events.clone()));
        }
    }

    fn unsubscribe(&self, channel: Channel) {
        self.bus.channels.remove_if_mut(&channel, |_, subs| {
            subs.retain(|(n, _)| *n != self.node);
            subs.is_empty()
        });
    }

    async fn barrier(&self) {}

    async fn ping(&self) -> Result<(), BackplaneError> {
        Ok(())
    }
}
