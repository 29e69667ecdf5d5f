//! `--routing broadcast`: one channel that every node receives. Publishing costs one
//! PUBLISH per message whatever the fleet size, subscriptions never change, and every node
//! pays for every message: the hub drops those no local session wants (an exact map
//! lookup; docs/routing.md has the numbers on a Bloom filter in front of it).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{pump, wrap};
use crate::backplane::{Backplane, BackplaneError, Channel, Event};

pub struct BroadcastBackplane {
    inner: Arc<dyn Backplane>,
}

impl BroadcastBackplane {
    /// Wraps `inner`, whose events arrive on `inner_events`, and delivers to `events`.
    pub fn new(inner: Arc<dyn Backplane>, inner_events: mpsc::Receiver<Event>, events: mpsc::Sender<Event>) -> Self {
        inner.subscribe(Channel::Broadcast);
        tokio::spawn(pump(inner_events, events, || async {}));
        Self { inner }
    }
}

#[async_trait]
impl Backplane for BroadcastBackplane {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        let wrapped: Vec<(Channel, Bytes)> = messages.iter().map(|(c, p)| (Channel::Broadcast, wrap(*c, p))).collect();
        self.inner.publish(&wrapped).await
    }

    /// Nothing to do: the node already receives everything.
    fn subscribe(&self, _channel: Channel) {}

    fn unsubscribe(&self, _channel: Channel) {}

    async fn barrier(&self) {
        self.inner.barrier().await;
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        self.inner.ping().await
    }
}
