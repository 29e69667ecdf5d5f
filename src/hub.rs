//! The node's hub: which local sessions exist, which groups they follow, and the fan-out of
//! backplane events to them.
//!
//! A group channel is subscribed once per node, when its first local session joins, and
//! unsubscribed when its last one leaves (reference counting under the map's entry lock, so
//! the subscribe/unsubscribe order matches the membership order). Fan-out never awaits: it
//! pushes into each session's bounded queue and closes a session whose queue is full
//! with 4008; that client catches up from the store when it reconnects.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::backplane::{Backplane, Channel, Envelope, Event};
use crate::metrics::Metrics;
use crate::model::{GroupId, MessageId, Seq, UserId};
use crate::outbox::{Full, Outbox};
use crate::ws::protocol::close;

/// One message on its way to local sessions; shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    pub message_id: MessageId,
    pub group_id: GroupId,
    pub seq: Seq,
    pub sender_id: UserId,
    /// When `send_message` accepted it, for the delivery latency histogram.
    pub accepted_us: i64,
    pub frame: Bytes,
}

#[derive(Debug)]
pub enum Outbound {
    Message(Arc<Delivery>),
    /// The user was added to a group (the node is subscribed): write the `group_joined`
    /// frame, then catch up on the group.
    Joined {
        group_id: GroupId,
        frame: Bytes,
    },
    /// The backplane lost publishes: catch up on every group from the store.
    Resync,
}

/// The hub's handle on one WebSocket session.
pub struct SessionHandle {
    pub id: u64,
    pub user_id: UserId,
    outbox: Outbox<Outbound>,
    close_code: AtomicU16,
    /// Groups this session is in; `None` once detached, so a late join cannot leak it.
    groups: Mutex<Option<HashSet<GroupId>>>,
}

impl SessionHandle {
    pub fn new(id: u64, user_id: UserId, queue: usize) -> Arc<Self> {
        Arc::new(SessionHandle {
            id,
            user_id,
            outbox: Outbox::new(queue),
            close_code: AtomicU16::new(0),
            groups: Mutex::new(Some(HashSet::new())),
        })
    }

    /// Queues an item without waiting. A full queue closes the session as a slow consumer;
    /// returns true only for the push that did so.
    pub fn push(&self, item: Outbound) -> bool {
        match self.outbox.push(item) {
            Ok(()) => false,
            Err(Full) => self.close(close::SLOW_CONSUMER),
        }
    }

    /// The oldest queued item.
    pub fn pop(&self) -> Option<Outbound> {
        self.outbox.pop()
    }

    /// Wakes the session again if items are left (it handles a bounded batch per wake-up).
    pub fn rearm(&self) {
        if !self.outbox.is_empty() {
            self.outbox.wake();
        }
    }

    /// Resolves after a push or a close request (cancel-safe; see [`Outbox::woken`]).
    pub async fn woken(&self) {
        self.outbox.woken().await
    }

    /// Asks the session to close with `code`; the first code wins. Returns true if this call
    /// set it.
    pub fn close(&self, code: u16) -> bool {
        let first = self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok();
        self.outbox.wake();
        first
    }

    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.close_code().is_some()
    }
}

/// Users whose groups are remembered before the memory starts over.
const KNOWN_GROUP_USERS: usize = 200_000;

pub struct Hub {
    backplane: Arc<dyn Backplane>,
    users: DashMap<UserId, Vec<Arc<SessionHandle>>>,
    groups: DashMap<GroupId, Vec<Arc<SessionHandle>>>,
    /// Groups each user was seen to be in, so a reconnecting session can subscribe them
    /// before reading anything. Membership never changes once a group exists, so a known
    /// group is never wrong; a group not known yet is found by the session's heads read
    /// after its subscriptions (docs/delivery.md). Bounded; starts over when full.
    known_groups: DashMap<UserId, Box<[GroupId]>>,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
}

impl Hub {
    pub fn new(backplane: Arc<dyn Backplane>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Hub {
            backplane,
            users: DashMap::new(),
            groups: DashMap::new(),
            known_groups: DashMap::new(),
            metrics,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.backplane
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session under its user, subscribing the user's channel if it is the
    /// first here. The session's next [`Hub::join`] waits for that subscription too, so one
    /// confirmation round trip covers the user channel and the groups.
    pub fn attach(&self, s: &Arc<SessionHandle>) {
        let mut sessions = self.users.entry(s.user_id).or_default();
        if sessions.is_empty() {
            self.backplane.subscribe(Channel::User(s.user_id));
        }
        sessions.push(s.clone());
    }

    /// The groups `user` is known to be in (maybe not all of them).
    pub fn known_groups(&self, user: UserId) -> Vec<GroupId> {
        self.known_groups.get(&user).map(|g| g.to_vec()).unwrap_or_default()
    }

    /// Remembers the groups `user` was read to be in.
    pub fn remember_groups(&self, user: UserId, groups: &[GroupId]) {
        if self.known_groups.len() >= KNOWN_GROUP_USERS {
            self.known_groups.clear();
        }
        self.known_groups.insert(user, groups.into());
    }

    /// Adds a session to groups and waits until every channel subscribed before this call
    /// (the new groups', its user's) is confirmed.
    pub async fn join(&self, s: &Arc<SessionHandle>, groups: &[GroupId]) {
        {
            let Ok(mut mine) = s.groups.lock() else {
                return;
            };
            let Some(mine) = mine.as_mut() else { return };
            for &g in groups {
                if mine.insert(g) {
                    let mut members = self.groups.entry(g).or_default();
                    if members.is_empty() {
                        self.backplane.subscribe(Channel::Group(g));
                    }
                    members.push(s.clone());
                }
            }
        }
        self.backplane.barrier().await;
    }

    /// Removes a session everywhere, unsubscribing channels nobody local needs any more.
    pub fn detach(&self, s: &SessionHandle) {
        let groups = s.groups.lock().ok().and_then(|mut g| g.take()).unwrap_or_default();
        for g in groups {
            self.groups.remove_if_mut(&g, |_, members| {
                members.retain(|m| m.id != s.id);
                let empty = members.is_empty();
                if empty {
                    self.backplane.unsubscribe(Channel::Group(g));
                }
                empty
            });
        }
        self.users.remove_if_mut(&s.user_id, |_, sessions| {
            sessions.retain(|m| m.id != s.id);
            let empty = sessions.is_empty();
            if empty {
                self.backplane.unsubscribe(Channel::User(s.user_id));
            }
            empty
        });
    }

    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.users.iter().flat_map(|e| e.value().clone()).collect()
    }

    pub fn user_session_count(&self, user: UserId) -> usize {
        self.users.get(&user).map_or(0, |s| s.len())
    }

    pub fn session_count(&self) -> usize {
        self.users.iter().map(|e| e.value().len()).sum()
    }

    /// Routes backplane events to local sessions until the backplane's sender is dropped.
    ///
    /// Fan-out wakes one session task per recipient, which is most of a node's work for
    /// large groups. With `shards` > 1 it is spread over that many tasks (so over the
    /// runtime's worker threads), each owning the groups that hash to it, which keeps every
    /// group's messages in order. With 1 it runs inline, saving a hand-over per message on a
    /// small machine.
    pub async fn run(self: Arc<Self>, mut events: mpsc::Receiver<Event>, shards: usize) {
        let lanes: Vec<mpsc::Sender<(GroupId, Bytes)>> = (0..shards)
            .filter(|_| shards > 1)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<(GroupId, Bytes)>(1024);
                let hub = self.clone();
                tokio::spawn(async move {
                    while let Some((group, payload)) = rx.recv().await {
                        hub.fan_out(group, payload);
                    }
                });
                tx
            })
            .collect();
        while let Some(event) = events.recv().await {
            match event {
                Event::Payload { channel: Channel::Group(g), payload } if lanes.is_empty() => self.fan_out(g, payload),
                Event::Payload { channel: Channel::Group(g), payload } => {
                    let lane = &lanes[(g as u64 % lanes.len() as u64) as usize];
                    if lane.send((g, payload)).await.is_err() {
                        return;
                    }
                }
                Event::Payload { channel: Channel::User(u), payload } => self.joined(u, payload),
                // The routing decorators unwrap these before they reach the hub.
                Event::Payload { channel: Channel::Node(_) | Channel::Broadcast, .. } => {}
                Event::Resynced => {
                    for s in self.sessions() {
                        self.push(&s, Outbound::Resync);
                    }
                }
                Event::CatchUp(users) => {
                    for u in users {
                        for s in self.users.get(&u).map(|s| s.clone()).unwrap_or_default() {
                            self.push(&s, Outbound::Resync);
                        }
                    }
                }
            }
        }
    }

    fn push(&self, s: &SessionHandle, item: Outbound) {
        if s.push(item) {
            self.metrics.slow_consumer_disconnects.inc();
            tracing::info!(session = s.id, user_id = s.user_id, "slow consumer closed");
        }
    }

    fn fan_out(&self, group_id: GroupId, payload: Bytes) {
        let Some(Envelope::Message { message_id, seq, sender_id, accepted_us, frame }) = Envelope::decode(payload)
        else {
            tracing::debug!(group_id, "ignoring unknown payload on group channel");
            return;
        };
        let delivery = Arc::new(Delivery { message_id, group_id, seq, sender_id, accepted_us, frame });
        // A push never awaits, so holding the shard's read guard here is fine.
        if let Some(members) = self.groups.get(&group_id) {
            for s in members.iter() {
                self.push(s, Outbound::Message(delivery.clone()));
            }
        }
    }

    fn joined(self: &Arc<Self>, user: UserId, payload: Bytes) {
        let Some(Envelope::Joined { group_id, frame }) = Envelope::decode(payload) else {
            return;
        };
        if let Some(mut known) = self.known_groups.get_mut(&user)
            && !known.contains(&group_id)
        {
            *known = known.iter().copied().chain([group_id]).collect();
        }
        let Some(sessions) = self.users.get(&user).map(|s| s.clone()) else {
            return;
        };
        let hub = self.clone();
        // Subscribing waits on the backplane, so it runs off the event loop.
        tokio::spawn(async move {
            for s in &sessions {
                hub.join(s, &[group_id]).await;
            }
            for s in &sessions {
                hub.push(s, Outbound::Joined { group_id, frame: frame.clone() });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::{MemoryBackplane, MemoryBus};

    fn hub() -> (Arc<Hub>, MemoryBus) {
        let (hub, bus, _) = hub_with_lanes(1);
        (hub, bus)
    }

    fn hub_with_lanes(lanes: usize) -> (Arc<Hub>, MemoryBus, Arc<dyn Backplane>) {
        let bus = MemoryBus::new();
        let (tx, rx) = mpsc::channel(16);
        let backplane: Arc<dyn Backplane> = Arc::new(MemoryBackplane::new(bus.clone(), tx));
        let hub = Hub::new(backplane.clone(), Arc::new(Metrics::new("t")));
        tokio::spawn(hub.clone().run(rx, lanes));
        (hub, bus, backplane)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fan_out_lanes_keep_each_groups_order() {
        let (hub, _bus, publisher) = hub_with_lanes(4);
        let mut sessions = Vec::new();
        for (id, group) in [(1, 10), (2, 11), (3, 12), (4, 10)] {
            let s = SessionHandle::new(id, 100 + id as i64, 1024);
            hub.join(&s, &[group]).await;
            sessions.push((s, group));
        }
        for seq in 1..=200 {
            let batch: Vec<(Channel, Bytes)> = [10, 11, 12]
                .iter()
                .map(|g| {
                    let m = Envelope::Message {
                        message_id: g * 1000 + seq,
                        seq,
                        sender_id: 1,
                        accepted_us: 0,
                        frame: Bytes::new(),
                    };
                    (Channel::Group(*g), m.encode())
                })
                .collect();
            publisher.publish(&batch).await.expect("publish");
        }
        for (s, group) in &sessions {
            let mut seqs = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while seqs.len() < 200 {
                match s.pop() {
                    Some(Outbound::Message(d)) => {
                        assert_eq!(d.group_id, *group);
                        seqs.push(d.seq);
                    }
                    Some(other) => panic!("expected a message of group {group}, got {other:?}"),
                    None => {
                        assert!(tokio::time::Instant::now() < deadline, "group {group}: only {} arrived", seqs.len());
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "group {group}");
        }
    }

    #[tokio::test]
    async fn one_subscription_per_group_however_many_sessions() {
        let (hub, bus) = hub();
        let a = SessionHandle::new(1, 10, 4);
        let b = SessionHandle::new(2, 11, 4);
        hub.join(&a, &[5]).await;
        hub.join(&b, &[5]).await;
        assert_eq!(hub.groups.get(&5).map(|g| g.len()), Some(2));
        hub.detach(&a);
        assert!(hub.groups.contains_key(&5), "still wanted by b");
        hub.detach(&b);
        assert!(!hub.groups.contains_key(&5));
        // A late join after detach must not resurrect the session.
        hub.join(&b, &[6]).await;
        assert!(!hub.groups.contains_key(&6));
        drop(bus);
    }

    #[tokio::test]
    async fn known_groups_grow_with_announcements() {
        let (hub, _bus) = hub();
        assert!(hub.known_groups(10).is_empty());
        hub.remember_groups(10, &[1, 2]);
        let joined = Envelope::Joined { group_id: 3, frame: Bytes::from_static(b"{}") }.encode();
        hub.joined(10, joined.clone());
        hub.joined(10, joined);
        assert_eq!(hub.known_groups(10), vec![1, 2, 3]);
        // A user never read stays unknown: an announcement alone is not the full list.
        hub.joined(11, Envelope::Joined { group_id: 3, frame: Bytes::from_static(b"{}") }.encode());
        assert!(hub.known_groups(11).is_empty());
    }

    #[tokio::test]
    async fn full_queue_closes_with_4008_and_counts_once() {
        let (hub, _bus) = hub();
        let s = SessionHandle::new(1, 10, 1);
        hub.push(&s, Outbound::Resync);
        assert!(!s.is_closed());
        hub.push(&s, Outbound::Resync);
        hub.push(&s, Outbound::Resync);
        assert_eq!(s.close_code(), Some(close::SLOW_CONSUMER));
        assert_eq!(hub.metrics.slow_consumer_disconnects.get(), 1);
    }
}
