//! Group commit, sharded: concurrent callers submit one item each with a key; each shard's
//! worker takes whatever has queued up on it and handles it as one batch (one transaction,
//! one multi-row statement, one pipelined publish), and each caller gets its own result
//! back. Batches form by themselves under load: while a shard writes a batch, the next one
//! gathers. A lone request waits for nothing.
//!
//! A shard may also be paced: it starts a batch at most once per `interval`. Under load
//! that makes batches fuller, and a store commit costs the database about the same whatever
//! its size, so the cost per item falls; when the last batch started longer ago than that,
//! the next item waits for nothing.
//!
//! Items with the same key always go to the same shard, and a shard handles one batch at a
//! time, so items of one key are handled in submission order (the send path keys by group:
//! per-group order holds on a node while the shards write in parallel, with no shared queue
//! or lock between them).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

type Job<T, R> = (T, oneshot::Sender<R>);

pub struct Batcher<T, R> {
    shards: Vec<mpsc::Sender<Job<T, R>>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `shards` workers running `run` on batches of at most `max` items, each starting
    /// a batch at most once per `interval`. `run` returns one result per item, in order.
    pub fn spawn<F, Fut>(max: usize, shards: usize, interval: Duration, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let run = Arc::new(run);
        let shards = (0..shards.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job<T, R>>(max * 4);
                let run = run.clone();
                tokio::spawn(async move {
                    let mut jobs = Vec::with_capacity(max);
                    let mut next = Instant::now();
                    while rx.recv_many(&mut jobs, max).await > 0 {
                        if Instant::now() < next {
                            tokio::time::sleep_until(next).await;
                            while jobs.len() < max {
                                match rx.try_recv() {
                                    Ok(job) => jobs.push(job),
                                    Err(_) => break,
                                }
                            }
                        }
                        next = Instant::now() + interval;
                        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = jobs.drain(..).unzip();
                        let results = run(items).await;
                        for (reply, result) in replies.into_iter().zip(results) {
                            // The caller may have gone away (request cancelled); nothing to do.
                            let _ = reply.send(result);
                        }
                    }
                });
                tx
            })
            .collect();
        Self { shards }
    }

    /// Submits one item on the shard of `key` and waits for its result; `None` if the
    /// workers are gone.
    pub async fn submit(&self, key: u64, item: T) -> Option<R> {
        let (reply, result) = oneshot::channel();
        let shard = &self.shards[(key % self.shards.len() as u64) as usize];
        shard.send((item, reply)).await.ok()?;
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
        let b = Arc::new(Batcher::spawn(50, 2, Duration::ZERO, move |items: Vec<u32>| {
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
                tokio::spawn(async move { (i, b.submit(u64::from(i), i).await) })
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

    #[tokio::test]
    async fn one_key_keeps_its_order_across_batches() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let b = Arc::new(Batcher::spawn(8, 4, Duration::ZERO, move |items: Vec<(u64, u32)>| {
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                log.lock().expect("lock").extend(items.iter().copied());
                items.into_iter().map(|_| ()).collect::<Vec<_>>()
            }
        }));
        // Each key's items are submitted in order by one task; other keys run concurrently.
        let tasks: Vec<_> = (0..6u64)
            .map(|key| {
                let b = b.clone();
                tokio::spawn(async move {
                    let pending: Vec<_> = (0..50u32).map(|i| b.submit(key, (key, i))).collect();
                    futures_util::future::join_all(pending).await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("join");
        }
        let seen = seen.lock().expect("lock");
        for key in 0..6u64 {
            let order: Vec<u32> = seen.iter().filter(|(k, _)| *k == key).map(|(_, i)| *i).collect();
            assert_eq!(order, (0..50).collect::<Vec<_>>(), "key {key}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_shard_starts_a_batch_at_most_once_per_interval() {
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = starts.clone();
        let b = Arc::new(Batcher::spawn(100, 1, Duration::from_millis(10), move |items: Vec<u32>| {
            let log = log.clone();
            async move {
                log.lock().expect("lock").push((Instant::now(), items.len()));
                items.into_iter().map(|_| ()).collect::<Vec<_>>()
            }
        }));
        let t0 = Instant::now();
        // A lone item goes at once.
        b.submit(0, 0).await;
        // Items arriving every millisecond are gathered into batches 10 ms apart.
        let mut pending = Vec::new();
        for i in 1..=30u32 {
            let b = b.clone();
            pending.push(tokio::spawn(async move { b.submit(0, i).await }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for p in pending {
            p.await.expect("join");
        }
        let starts = starts.lock().expect("lock");
        assert_eq!(starts[0], (t0, 1));
        assert!(starts.windows(2).all(|w| w[1].0 - w[0].0 >= Duration::from_millis(10)), "{starts:?}");
        assert!(starts.len() <= 5, "30 items in {} batches", starts.len());
        assert_eq!(starts.iter().map(|(_, n)| n).sum::<usize>(), 31);
    }
}
