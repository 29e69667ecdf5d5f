//! The ordered queue between a backplane's callers and its subscriber task: subscribe and
//! unsubscribe only enqueue (callers never wait on a dead server), and a barrier waits until
//! everything enqueued before it has been applied (docs/routing.md).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{BackplaneError, Channel};

pub(super) enum Wish {
    Subscribe(Channel),
    Unsubscribe(Channel),
    /// Answered once every wish before it is confirmed, or the task knows it is cut off.
    Barrier(oneshot::Sender<()>),
}

/// The callers' end of the queue.
pub(super) struct Wishes(mpsc::UnboundedSender<Wish>);

impl Wishes {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Wish>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn subscribe(&self, channel: Channel) {
        let _ = self.0.send(Wish::Subscribe(channel));
    }

    pub fn unsubscribe(&self, channel: Channel) {
        let _ = self.0.send(Wish::Unsubscribe(channel));
    }

    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Wish::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Bound on one round trip to the backplane's server; a dead server must not hang a request.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// `PING` on a Redis connection within [`IO_TIMEOUT`].
pub(super) async fn ping<C: redis::aio::ConnectionLike + Send>(conn: &mut C) -> Result<(), BackplaneError> {
    match tokio::time::timeout(IO_TIMEOUT, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(res) => res.map(|_| ()).map_err(Into::into),
        Err(_) => Err(BackplaneError::Timeout),
    }
}
