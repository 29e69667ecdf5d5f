//! The loss / duplicate / order checker shared by the fault tests and the load tools.
//!
//! Senders record every message that got a 200 with its intended recipients; each client
//! connection records every `message_id` it receives. The report counts:
//! - lost: (recipient, message) pairs accepted but never received on any connection;
//! - duplicated: a message received twice on one connection;
//! - out of order: on one connection, a message older than one already received from the
//!   same sender in the same group (each sender sends one message at a time, so its
//!   messages have increasing ids).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::model::{GroupId, MessageId, UserId};

#[derive(Default)]
struct State {
    /// message -> recipients.
    accepted: HashMap<MessageId, Vec<UserId>>,
    received: HashMap<UserId, HashSet<MessageId>>,
    rejected: u64,
    duplicated: u64,
    out_of_order: u64,
    deliveries: u64,
}

#[derive(Clone, Default)]
pub struct Checker {
    state: Arc<Mutex<State>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub accepted: u64,
    /// Sends refused (5xx, timeouts) and then retried with the same client_msg_id.
    pub rejected: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} rejected={} deliveries={} lost={} duplicated={} out_of_order={}",
            self.accepted, self.rejected, self.deliveries, self.lost, self.duplicated, self.out_of_order
        )
    }
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// A send got its 200.
    pub fn accepted(&self, message: MessageId, recipients: &[UserId]) {
        self.with(|s| s.accepted.insert(message, recipients.to_vec()));
    }

    /// A send was refused (and will be retried).
    pub fn rejected(&self) {
        self.with(|s| s.rejected += 1);
    }

    /// A new connection of `user`; record what it receives through the returned handle.
    pub fn connection(&self, user: UserId) -> Connection {
        Connection { checker: self.clone(), user, seen: HashSet::new(), last: HashMap::new() }
    }

    pub fn report(&self) -> Report {
        self.with(|s| {
            let lost = s
                .accepted
                .iter()
                .map(|(id, users)| {
                    users.iter().filter(|u| !s.received.get(u).is_some_and(|r| r.contains(id))).count() as u64
                })
                .sum();
            Report {
                accepted: s.accepted.len() as u64,
                rejected: s.rejected,
                deliveries: s.deliveries,
                lost,
                duplicated: s.duplicated,
                out_of_order: s.out_of_order,
            }
        })
    }
}

/// What one connection has received.
pub struct Connection {
    checker: Checker,
    user: UserId,
    seen: HashSet<MessageId>,
    /// (group, sender) -> newest id received on this connection.
    last: HashMap<(GroupId, UserId), MessageId>,
}

impl Connection {
    pub fn received(&mut self, message: MessageId, group: GroupId, sender: UserId) {
        let duplicate = !self.seen.insert(message);
        let newest = self.last.entry((group, sender)).or_insert(0);
        let out_of_order = !duplicate && message < *newest;
        *newest = (*newest).max(message);
        let user = self.user;
        self.checker.with(|s| {
            s.deliveries += 1;
            s.duplicated += u64::from(duplicate);
            s.out_of_order += u64::from(out_of_order);
            s.received.entry(user).or_default().insert(message);
        });
    }

    /// Records a `message` frame; ignores every other frame.
    pub fn frame(&mut self, frame: &serde_json::Value) {
        if frame["type"] != "message" {
            return;
        }
        if let (Some(id), Some(group), Some(sender)) =
            (frame["message_id"].as_i64(), frame["group_id"].as_i64(), frame["sender_id"].as_i64())
        {
            self.received(id, group, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_duplicates_and_disorder() {
        let c = Checker::new();
        c.accepted(1, &[10, 11]);
        c.accepted(2, &[10]);
        c.accepted(3, &[10]);
        let mut a = c.connection(10);
        a.received(1, 5, 20);
        a.received(3, 5, 20);
        a.received(2, 5, 20); // older than 3 from the same sender: out of order
        a.received(3, 5, 20); // twice on one connection
        let mut b = c.connection(10);
        b.received(1, 5, 20); // again, but on another connection: fine
        let r = c.report();
        assert_eq!((r.accepted, r.lost, r.duplicated, r.out_of_order), (3, 1, 1, 1), "{r}");
        assert!(!r.clean());
        c.connection(11).received(1, 5, 20);
        assert_eq!(c.report().lost, 0);
    }
}
