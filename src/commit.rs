//! The durable half of `send_message`: group commit of messages, then their publishes.
//!
//! Sends are batched per shard of groups ([`Batcher`], keyed by group id). A shard writes
//! its batch in one transaction, publishes every message of it in one pipelined round trip,
//! and only then answers the callers, so a 200 means stored and handed to the backplane,
//! and one node publishes a group's messages in their sequence order. A retried send (same
//! `client_msg_id`) is published again: if the first attempt died between its commit and
//! its publish, the retry is what brings it to connected recipients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backplane::{Backplane, Channel, Envelope};
use crate::batch::Batcher;
use crate::metrics::Metrics;
use crate::model::{Message, now_us};
use crate::store::{NewMessage, Store, StoreError};

/// Most messages written as one batch.
const BATCH: usize = 256;

pub type Committed = Result<(Message, bool), StoreError>;

pub struct Commits {
    /// Each send with the moment it was queued.
    batcher: Batcher<(Instant, NewMessage), Committed>,
}

impl Commits {
    /// `shards` batches commit in parallel, each at most once per `interval`; a group always
    /// lands on the same shard.
    pub fn spawn(
        store: Arc<dyn Store>,
        backplane: Arc<dyn Backplane>,
        shards: usize,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let batcher = Batcher::spawn(BATCH, shards, interval, move |batch: Vec<(Instant, NewMessage)>| {
            let (store, backplane, metrics) = (store.clone(), backplane.clone(), metrics.clone());
            async move {
                let started = Instant::now();
                metrics.commit_batch_messages.observe(batch.len() as f64);
                let batch = batch
                    .into_iter()
                    .map(|(queued, m)| {
                        metrics.commit_wait.observe(started.duration_since(queued).as_secs_f64());
                        m
                    })
                    .collect();
                commit(&*store, &*backplane, batch).await
            }
        });
        Self { batcher }
    }

    /// Stores and publishes one message; `false` when it is a retry of a stored one.
    pub async fn send(&self, message: NewMessage) -> Committed {
        let key = message.group_id as u64;
        self.batcher.submit(key, (Instant::now(), message)).await.unwrap_or(Err(StoreError::Closed))
    }
}

async fn commit(store: &dyn Store, backplane: &dyn Backplane, batch: Vec<NewMessage>) -> Vec<Committed> {
    let results = store.insert_messages(batch).await;
    let accepted_us = now_us();
    let publishes: Vec<(Channel, Bytes)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(m, _)| (Channel::Group(m.group_id), envelope(m, accepted_us)))
        .collect();
    if !publishes.is_empty() {
        // A failed publish is not the senders' problem: the messages are stored, and the
        // recipients' sessions read them from the store when their backplane resyncs or
        // the next message of the group shows the hole.
        for attempt in 0..2 {
            match backplane.publish(&publishes).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, attempt, messages = publishes.len(), "publish failed"),
            }
        }
    }
    results
}

fn envelope(m: &Message, accepted_us: i64) -> Bytes {
    Envelope::Message { message_id: m.message_id, seq: m.seq, sender_id: m.sender_id, accepted_us, frame: m.frame() }
        .encode()
}
