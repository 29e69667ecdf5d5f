//! Group commit: concurrent callers submit one item each, a few workers take whatever has
//! queued up and handle it as one batch (one transaction, one multi-row statement), and each
//! caller gets its own result back. Batches form by themselves under load: while a batch is
//! being written, the next one gathers. A lone request waits for nothing.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

type Job<T, R> = (T, oneshot::Sender<R>);

pub struct Batcher<T, R> {
    tx: mpsc::Sender<Job<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `workers` tasks running `run` on batches of at most `max` items. `run` returns
    /// one result per item, in order.
    pub fn spawn<F, Fut>(max: usize, workers: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (tx, rx) = mpsc::channel::<Job<T, R>>(max * workers * 4);
        let rx = Arc::new(Mutex::new(rx));
        let run = Arc::new(run);
        for _ in 0..workers {
            let (rx, run) = (rx.clone(), run.clone());
            tokio::spawn(async move {
                let mut jobs = Vec::with_capacity(max);
                loop {
                    {
                        // One worker gathers at a time; it lets go before writing, so the next
                        // batch gathers while this one is written.
                        let mut rx = rx.lock().await;
                        if rx.recv_many(&mut jobs, max).await == 0 {
                            return;
                        }
                    }
                    let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = jobs.drain(..).unzip();
                    let results = run(items).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The caller may have gone away (request cancelled); nothing to do.
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Self { tx }
    }

    /// Submits one item and waits for its result; `None` if the workers are gone.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, result) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_keep_their_results() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Arc::new(Batcher::spawn(50, 1, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(items.len());
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        }));
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.expect("join");
            assert_eq!(r, Some(i * 2));
        }
        let sizes = sizes.lock().expect("lock");
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.len() < 200, "no batching happened: {sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 50));
    }
}
