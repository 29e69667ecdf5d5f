//! Batches inbox removals. Sessions hand over `(user, message)` pairs without waiting; one
//! task deletes them in multi-row statements. A failed batch is retried: until it succeeds
//! the entries stay pending, which can only cause a re-delivery that clients de-duplicate by
//! id, never a loss.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Inbox;
use crate::model::{MessageId, UserId};

const BATCH: usize = 1024;
/// Pending removals kept while the inbox is down; beyond this the oldest are dropped (they
/// would be re-delivered and de-duplicated, not lost).
const MAX_BACKLOG: usize = 200_000;

#[derive(Clone)]
pub struct Remover {
    tx: mpsc::UnboundedSender<(UserId, MessageId)>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Remover {
    pub fn spawn(inbox: Arc<dyn Inbox>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(inbox, rx, stop.clone()));
        Self { tx, stop, task: Arc::new(Mutex::new(Some(task))) }
    }

    /// Queues the removal of a delivered entry.
    pub fn remove(&self, user: UserId, message: MessageId) {
        // Fails only after `flush`, when late removals no longer matter.
        let _ = self.tx.send((user, message));
    }

    /// Writes every queued removal (one retry pass at most) and stops the task.
    pub async fn flush(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(inbox: Arc<dyn Inbox>, mut rx: mpsc::UnboundedReceiver<(UserId, MessageId)>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = Duration::from_millis(100);
    loop {
        if batch.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                () = stop.cancelled() => break,
            }
        } else {
            // Gather whatever else is ready so one statement covers it.
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        match inbox.remove(&batch).await {
            Ok(()) => {
                batch.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = batch.len(), "inbox removal failed; retrying");
                if batch.len() > MAX_BACKLOG {
                    batch.drain(..batch.len() - MAX_BACKLOG);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Final flush on shutdown.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
    }
    for chunk in batch.chunks(BATCH) {
        if let Err(e) = inbox.remove(chunk).await {
            tracing::warn!(error = %e, left = batch.len(), "final inbox flush failed; entries will be re-delivered");
            break;
        }
    }
}
