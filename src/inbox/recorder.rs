//! Writes delivery positions in coalesced batches. Sessions hand over positions without
//! waiting; one task keeps the highest `seq` per (user, group) and writes them all every
//! flush interval in one statement. Many deliveries in one conversation within an interval
//! cost one row. When a session ends, [`Recorder::nudge`] writes at once instead: its
//! client is about to reconnect, maybe to another node, and should find its positions there.
//! A failed write is kept and tried again at the next tick: until then a reconnecting
//! client may get a message again, which it de-duplicates by id; nothing is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Inbox, Position};
use crate::metrics::Metrics;
use crate::model::{GroupId, Seq, UserId};

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Position>,
    now: Arc<Notify>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Recorder {
    pub fn spawn(inbox: Arc<dyn Inbox>, every: Duration, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let now = Arc::new(Notify::new());
        let task = tokio::spawn(run(inbox, rx, every, now.clone(), metrics, stop.clone()));
        Self { tx, now, stop, task: Arc::new(Mutex::new(Some(task))) }
    }

    /// Records that every message of `group` up to `seq` reached `user`.
    pub fn record(&self, user_id: UserId, group_id: GroupId, seq: Seq) {
        // Fails only after `flush`, when late positions no longer matter.
        let _ = self.tx.send(Position { user_id, group_id, seq });
    }

    /// Writes what was recorded so far without waiting for the next tick (disconnects in a
    /// burst share the writes).
    pub fn nudge(&self) {
        self.now.notify_one();
    }

    /// Writes everything recorded so far (one try) and stops the task.
    pub async fn flush(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    inbox: Arc<dyn Inbox>,
    mut rx: mpsc::UnboundedReceiver<Position>,
    every: Duration,
    now: Arc<Notify>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut pending: HashMap<(UserId, GroupId), Seq> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut received = Vec::with_capacity(1024);
    let keep = |pending: &mut HashMap<(UserId, GroupId), Seq>, p: &Position| {
        let seq = pending.entry((p.user_id, p.group_id)).or_insert(p.seq);
        *seq = (*seq).max(p.seq);
    };
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut received, 1024) => {
                if n == 0 {
                    break;
                }
                for p in received.drain(..) {
                    keep(&mut pending, &p);
                }
                metrics.positions_unflushed.set(pending.len() as i64);
            }
            _ = tick.tick() => {
                if !pending.is_empty() && write(&*inbox, &pending, &metrics).await {
                    pending.clear();
                }
            }
            () = now.notified() => {
                // Take what the ending session recorded just before its nudge.
                while let Ok(p) = rx.try_recv() {
                    keep(&mut pending, &p);
                }
                if !pending.is_empty() && write(&*inbox, &pending, &metrics).await {
                    pending.clear();
                }
            }
            () = stop.cancelled() => break,
        }
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        keep(&mut pending, &p);
    }
    if !pending.is_empty() && !write(&*inbox, &pending, &metrics).await {
        tracing::warn!(left = pending.len(), "final position flush failed; those messages will be delivered again");
    }
}

/// Writes the pending positions; true on success.
async fn write(inbox: &dyn Inbox, pending: &HashMap<(UserId, GroupId), Seq>, metrics: &Metrics) -> bool {
    let batch: Vec<Position> =
        pending.iter().map(|(&(user_id, group_id), &seq)| Position { user_id, group_id, seq }).collect();
    match inbox.advance(&batch).await {
        Ok(()) => {
            metrics.positions_written.inc_by(batch.len() as u64);
            metrics.positions_unflushed.set(0);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, pending = batch.len(), "position write failed; retrying at the next tick");
            false
        }
    }
}
