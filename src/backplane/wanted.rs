//! What every networked transport keeps between the hub and its connection: the ordered
//! subscribe/unsubscribe/barrier commands, and the set of channels the node wants whether
//! or not the server has them right now (the set subscribed again after a reconnect).

use std::collections::HashSet;

use tokio::sync::oneshot;

use super::Channel;

pub(super) enum Command {
    Subscribe(Channel),
    Unsubscribe(Channel),
    Barrier(oneshot::Sender<()>),
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
