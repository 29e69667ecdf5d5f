//! What every networked transport keeps between the hub and its connection: the ordered
//! subscribe/unsubscribe/barrier commands, and the set of channels the node wants whether
//! or not the server has them right now (the set subscribed again after a reconnect).

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};

use super::Channel;

pub(super) enum Command {
    Subscribe(Channel),
    Unsubscribe(Channel),
    Barrier(oneshot::Sender<()>),
}

/// The callers' side: enqueues commands, in order, for the transport's subscriber task.
pub(super) struct Commands(mpsc::UnboundedSender<Command>);

impl Commands {
    pub(super) fn channel() -> (Self, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub(super) fn subscribe(&self, channel: Channel) {
        let _ = self.0.send(Command::Subscribe(channel));
    }

    pub(super) fn unsubscribe(&self, channel: Channel) {
        let _ = self.0.send(Command::Unsubscribe(channel));
    }

    /// Resolves once the task released the barrier (or is gone).
    pub(super) async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Command::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The channels this node wants.
#[derive(Default)]
pub(super) struct Wanted {
    channels: HashSet<Channel>,
}

impl Wanted {
    /// Records the wish of a subscribe or unsubscribe; whether it changed the set. A
    /// barrier is handed back, for the caller to release when it is due.
    pub(super) fn apply(&mut self, cmd: Command) -> Result<(Channel, bool), oneshot::Sender<()>> {
        match cmd {
            Command::Subscribe(c) => Ok((c, self.channels.insert(c))),
            Command::Unsubscribe(c) => Ok((c, self.channels.remove(&c))),
            Command::Barrier(done) => Err(done),
        }
    }

    /// While disconnected: remember the wish and release barriers at once (the resubscribe
    /// on reconnect covers them, followed by `Resynced`).
    pub(super) fn apply_offline(&mut self, cmd: Command) {
        if let Err(done) = self.apply(cmd) {
            let _ = done.send(());
        }
    }

    pub(super) fn contains(&self, channel: &Channel) -> bool {
        self.channels.contains(channel)
    }

    pub(super) fn len(&self) -> usize {
        self.channels.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Channel> + '_ {
        self.channels.iter().copied()
    }
}
