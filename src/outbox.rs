//! A session's bounded queue of outbound items that holds no memory while empty.
//!
//! A tokio `mpsc` channel allocates its first block of slots when it is created; at tens of
//! thousands of idle sessions that block is a large share of a session's memory. This queue
//! allocates on the first push and frees its storage whenever the session drains it. The
//! session waits on [`Outbox::woken`], which is also how a close request reaches it.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

pub struct Outbox<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    wake: Notify,
}

/// The queue already holds its capacity.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl<T> Outbox<T> {
    pub fn new(capacity: usize) -> Self {
        Outbox { items: Mutex::new(VecDeque::new()), capacity, wake: Notify::new() }
    }

    /// Queues an item without waiting, and wakes the session.
    pub fn push(&self, item: T) -> Result<(), Full> {
        {
            let Ok(mut items) = self.items.lock() else { return Err(Full) };
            if items.len() >= self.capacity {
                return Err(Full);
            }
            items.push_back(item);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest item; the storage is freed when this empties the queue.
    pub fn pop(&self) -> Option<T> {
        let mut items = self.items.lock().ok()?;
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 0 {
            *items = VecDeque::new();
        }
        item
    }

    pub fn is_empty(&self) -> bool {
        self.items.lock().map_or(true, |items| items.is_empty())
    }

    /// Wakes the session without queueing anything (a close request).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves after a push or `wake` since the last time it resolved; a wake-up that
    /// came while nobody waited is kept for the next call. Cancel-safe.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bounded_lazy_and_no_lost_wake_ups() {
        let q = Outbox::new(2);
        assert_eq!(q.items.lock().expect("lock").capacity(), 0, "nothing allocated before the first push");
        q.push(1).expect("room");
        q.push(2).expect("room");
        assert_eq!(q.push(3), Err(Full));
        // The pushes came before anyone waited: the wake-up was kept.
        tokio::time::timeout(Duration::from_millis(100), q.woken()).await.expect("kept wake-up");
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(1), Some(2), None));
        assert_eq!(q.items.lock().expect("lock").capacity(), 0, "storage freed once drained");
        // A wait cancelled before any push does not eat a later wake-up.
        assert!(tokio::time::timeout(Duration::from_millis(10), q.woken()).await.is_err());
        q.push(4).expect("room");
        tokio::time::timeout(Duration::from_millis(100), q.woken()).await.expect("woken");
        assert_eq!(q.pop(), Some(4));
    }
}
