//! Where one session stands in each of its groups' logs (docs/delivery.md).
//!
//! Per group a session keeps `written`, the sequence number up to which every message was
//! written to its socket, in order, and `delivered`, up to which every message reached the
//! client: flushed to a client that never acks, acknowledged by one that does. `delivered`
//! is what the session stores as its user's position, so it is a safe low-water mark: it
//! never passes a message that did not arrive, even when publishes land out of order.
//!
//! A live message one past `written` is written at once. A repeat is dropped (no duplicate
//! within a session). A message further ahead is held: the hole before it is a message
//! whose publish is still on its way, or was lost with a node or a Redis outage. When the
//! hole has not filled after [`GAP_WAIT`], the session reads it from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::hub::Delivery;
use crate::model::{GroupId, MessageId, Seq};

/// How long a live message waits for the hole before it to fill by itself.
pub const GAP_WAIT: Duration = Duration::from_millis(25);

#[derive(Default)]
struct Cursor {
    written: Seq,
    delivered: Seq,
    /// Acknowledged sequence numbers above `delivered` (acks may come out of order).
    acked: BTreeSet<Seq>,
    /// Live messages past a hole.
    held: BTreeMap<Seq, Arc<Delivery>>,
    /// When the oldest held message arrived.
    held_since: Option<Instant>,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Write,
    /// Already written in this session.
    Repeat,
    /// Past a hole; kept until the hole fills or is read from the store.
    Held,
}

/// Cursors by group, in a sorted vector: most sessions follow a handful of groups, and a
/// hash map's smallest table is four times the size of one entry (docs/benchmarks.md,
/// "Memory per connection").
#[derive(Default)]
struct ByGroup(Vec<(GroupId, Cursor)>);

impl ByGroup {
    fn get(&self, group: &GroupId) -> Option<&Cursor> {
        let i = self.0.binary_search_by_key(group, |(g, _)| *g).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, group: &GroupId) -> Option<&mut Cursor> {
        let i = self.0.binary_search_by_key(group, |(g, _)| *g).ok()?;
        Some(&mut self.0[i].1)
    }

    fn contains_key(&self, group: &GroupId) -> bool {
        self.get(group).is_some()
    }

    fn or_insert_with(&mut self, group: GroupId, new: impl FnOnce() -> Cursor) -> &mut Cursor {
        let i = match self.0.binary_search_by_key(&group, |(g, _)| *g) {
            Ok(i) => i,
            Err(i) => {
                // Exact growth for the first few (a vector's first allocation holds four).
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (group, new()));
                i
            }
        };
        &mut self.0[i].1
    }
}

#[derive(Default)]
pub struct Cursors {
    groups: ByGroup,
    /// Written but not yet acknowledged (clients that ack).
    unacked: HashMap<MessageId, (GroupId, Seq)>,
    /// Groups written to since the last flush, with the last seq written (clients that
    /// never ack; a session that starts acking stays so, so these precede any unacked).
    dirty: Vec<(GroupId, Seq)>,
    /// Groups holding messages.
    holding: Vec<GroupId>,
}

impl Cursors {
    /// Starts tracking `group` at the user's stored position (kept if already tracked).
    pub fn track(&mut self, group: GroupId, position: Seq) {
        self.groups.or_insert_with(group, || Cursor { written: position, delivered: position, ..Cursor::default() });
    }

    pub fn is_tracked(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// `(group, written)` for each tracked group whose log goes past what was written:
    /// where a catch-up must read.
    pub fn behind(&self, heads: &[(GroupId, Seq)]) -> Vec<(GroupId, Seq)> {
        heads
            .iter()
            .filter_map(|&(g, head)| {
                let written = self.groups.get(&g).map_or(0, |c| c.written);
                (head > written).then_some((g, written))
            })
            .collect()
    }

    /// Decides about a live message (an untracked group starts at 0: its members joined
    /// when it was created, so nothing of it was delivered before).
    pub fn offer(&mut self, d: &Arc<Delivery>, now: Instant) -> Offer {
        let c = self.groups.or_insert_with(d.group_id, Cursor::default);
        if d.seq <= c.written {
            return Offer::Repeat;
        }
        if d.seq == c.written + 1 {
            return Offer::Write;
        }
        if c.held.is_empty() {
            c.held_since = Some(now);
            self.holding.push(d.group_id);
        }
        c.held.entry(d.seq).or_insert_with(|| d.clone());
        Offer::Held
    }

    /// Whether a message read from the store is new to this session.
    pub fn is_new(&self, group: GroupId, seq: Seq) -> bool {
        self.groups.get(&group).is_none_or(|c| seq > c.written)
    }

    /// Records that a message was put in the socket's write buffer.
    pub fn wrote(&mut self, group: GroupId, seq: Seq, id: MessageId, acking: bool) {
        let c = self.groups.or_insert_with(group, Cursor::default);
        c.written = c.written.max(seq);
        if acking {
            self.unacked.insert(id, (group, seq));
        } else if let Some(entry) = self.dirty.iter_mut().find(|(g, _)| *g == group) {
            entry.1 = entry.1.max(seq);
        } else {
            self.dirty.push((group, seq));
        }
    }

    /// The held message that is now next in `group`, if any; drops held repeats.
    pub fn next_held(&mut self, group: GroupId) -> Option<Arc<Delivery>> {
        let c = self.groups.get_mut(&group)?;
        while let Some(entry) = c.held.first_entry() {
            let seq = *entry.key();
            if seq <= c.written {
                entry.remove();
            } else if seq == c.written + 1 {
                return Some(entry.remove());
            } else {
                break;
            }
        }
        if c.held.is_empty() {
            c.held_since = None;
            self.holding.retain(|g| *g != group);
        }
        None
    }

    /// After the store was read up to its end for `group`: whatever hole is still left
    /// before the held messages is not in the store (expired), so they go out in order.
    pub fn skip_hole(&mut self, group: GroupId) -> Vec<Arc<Delivery>> {
        let Some(c) = self.groups.get_mut(&group) else { return Vec::new() };
        let held = std::mem::take(&mut c.held);
        c.held_since = None;
        self.holding.retain(|g| *g != group);
        held.into_iter().filter(|(seq, _)| *seq > c.written).map(|(_, d)| d).collect()
    }

    /// When the oldest hole stops waiting.
    pub fn gap_deadline(&self) -> Option<Instant> {
        self.holding.iter().filter_map(|g| self.groups.get(g)?.held_since).min().map(|t| t + GAP_WAIT)
    }

    /// Groups whose hole waited long enough, with where to read from.
    pub fn overdue(&self, now: Instant) -> Vec<(GroupId, Seq)> {
        self.holding
            .iter()
            .filter_map(|g| {
                let c = self.groups.get(g)?;
                (c.held_since? + GAP_WAIT <= now).then_some((*g, c.written))
            })
            .collect()
    }

    /// The socket was flushed: for a client that never acks, what was written is
    /// delivered. Returns the positions that moved.
    pub fn flushed(&mut self) -> Vec<(GroupId, Seq)> {
        let mut moved = Vec::with_capacity(self.dirty.len());
        for (g, seq) in self.dirty.drain(..) {
            if let Some(c) = self.groups.get_mut(&g)
                && seq > c.delivered
            {
                c.delivered = seq;
                moved.push((g, seq));
            }
        }
        moved
    }

    /// The client acknowledged `ids`. Returns the positions that moved.
    pub fn acked(&mut self, ids: &[MessageId]) -> Vec<(GroupId, Seq)> {
        let mut touched: Vec<GroupId> = Vec::new();
        for id in ids {
            let Some((g, seq)) = self.unacked.remove(id) else { continue };
            if let Some(c) = self.groups.get_mut(&g)
                && seq > c.delivered
            {
                c.acked.insert(seq);
                if !touched.contains(&g) {
                    touched.push(g);
                }
            }
        }
        let mut moved = Vec::new();
        for g in touched {
            let Some(c) = self.groups.get_mut(&g) else { continue };
            let before = c.delivered;
            while c.acked.remove(&(c.delivered + 1)) {
                c.delivered += 1;
            }
            if c.delivered > before {
                moved.push((g, c.delivered));
            }
        }
        moved
    }

    /// Messages written and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d(group: GroupId, seq: Seq) -> Arc<Delivery> {
        Arc::new(Delivery {
            message_id: group * 1000 + seq,
            group_id: group,
            seq,
            sender_id: 1,
            accepted_us: 0,
            frame: Bytes::new(),
        })
    }

    /// Writes `d` if offered, then whatever held messages follow it; returns seqs written.
    fn live(c: &mut Cursors, m: Arc<Delivery>, acking: bool) -> Vec<Seq> {
        let mut out = Vec::new();
        if c.offer(&m, Instant::now()) == Offer::Write {
            c.wrote(m.group_id, m.seq, m.message_id, acking);
            out.push(m.seq);
            while let Some(next) = c.next_held(m.group_id) {
                c.wrote(next.group_id, next.seq, next.message_id, acking);
                out.push(next.seq);
            }
        }
        out
    }

    #[test]
    fn in_order_messages_are_written_and_repeats_dropped() {
        let mut c = Cursors::default();
        c.track(7, 2);
        assert_eq!(c.offer(&d(7, 2), Instant::now()), Offer::Repeat);
        assert_eq!(live(&mut c, d(7, 3), false), vec![3]);
        assert_eq!(live(&mut c, d(7, 4), false), vec![4]);
        assert_eq!(c.offer(&d(7, 4), Instant::now()), Offer::Repeat);
        assert_eq!(c.flushed(), vec![(7, 4)]);
        assert_eq!(c.flushed(), vec![], "nothing new");
    }

    #[test]
    fn a_hole_holds_later_messages_until_it_fills() {
        let mut c = Cursors::default();
        c.track(1, 0);
        assert_eq!(live(&mut c, d(1, 2), false), Vec::<Seq>::new());
        assert_eq!(live(&mut c, d(1, 3), false), Vec::<Seq>::new());
        assert!(c.gap_deadline().is_some());
        assert_eq!(live(&mut c, d(1, 1), false), vec![1, 2, 3]);
        assert!(c.gap_deadline().is_none());
        // The position never passed the hole while it was open.
        assert_eq!(c.flushed(), vec![(1, 3)]);
    }

    #[test]
    fn an_overdue_hole_is_read_from_where_the_session_stands() {
        let mut c = Cursors::default();
        c.track(1, 5);
        let t0 = Instant::now();
        assert_eq!(c.offer(&d(1, 8), t0), Offer::Held);
        assert!(c.overdue(t0).is_empty());
        assert_eq!(c.overdue(t0 + GAP_WAIT), vec![(1, 5)]);
        // The store has 6 and 7: written from there, then 8 follows from the held set.
        for seq in [6, 7] {
            assert!(c.is_new(1, seq));
            c.wrote(1, seq, seq, false);
        }
        assert_eq!(c.next_held(1).map(|m| m.seq), Some(8));
        assert!(c.next_held(1).is_none());
        assert!(c.overdue(t0 + GAP_WAIT * 2).is_empty());
    }

    #[test]
    fn an_expired_hole_is_skipped_after_the_store_was_read() {
        let mut c = Cursors::default();
        c.track(1, 0);
        c.offer(&d(1, 3), Instant::now());
        c.offer(&d(1, 4), Instant::now());
        assert!(c.next_held(1).is_none());
        assert_eq!(c.skip_hole(1).iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert!(c.gap_deadline().is_none());
    }

    #[test]
    fn acks_move_the_position_only_over_contiguous_runs() {
        let mut c = Cursors::default();
        c.track(1, 0);
        for seq in 1..=4 {
            live(&mut c, d(1, seq), true);
        }
        assert_eq!(c.flushed(), vec![], "an acking client's flush proves nothing");
        assert_eq!(c.acked(&[1002, 1004]), vec![], "1 is missing");
        assert_eq!(c.acked(&[1001]), vec![(1, 2)]);
        assert_eq!(c.acked(&[1003, 999]), vec![(1, 4)]);
        assert_eq!(c.unacked(), 0);
    }

    #[test]
    fn behind_lists_groups_whose_log_passed_what_was_written() {
        let mut c = Cursors::default();
        c.track(1, 3);
        c.track(2, 9);
        let mut b = c.behind(&[(1, 3), (2, 12), (3, 1)]);
        b.sort_unstable();
        assert_eq!(b, vec![(2, 9), (3, 0)]);
    }
}
