//! The reads of a session's handshake, batched across concurrent handshakes.
//!
//! Every handshake checks that its user exists (before the upgrade; known users come from
//! the store's cache), reads its user's group heads (after its subscriptions are confirmed),
//! when a group has messages its positions, and when a group passed its position the
//! catch-up. In a reconnect storm thousands of sessions do this at once, and each statement
//! costs the database far more than each row, so a read queues and one worker per kind
//! answers every queued read with one statement (the [`Batcher`]: a lone read waits for
//! nothing; under load the next batch gathers while one is read). Batching only delays a
//! read, never moves it before the caller's subscription, so the connect order of
//! docs/delivery.md is unchanged.
//!
//! A batch of catch-ups reads each group once from the lowest position asked, with the sum
//! of the limits, and gives each caller the messages above its own positions (a gap-free
//! run per group, as [`Store::messages_after`] promises). When that read was cut by the
//! limit, a caller that did not get a full page cannot tell whether it has everything, and
//! reads alone.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::Batcher;
use crate::inbox::Inbox;
use crate::model::{GroupId, Message, Seq, UserId};
use crate::store::Store;

/// Users per batched read at most.
const BATCH: usize = 256;

/// Catch-ups per batched read at most.
const CATCH_UPS: usize = 64;

/// A failed batched read, shared by every handshake of the batch.
#[derive(Clone, Debug)]
pub struct ReadError(Arc<str>);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Heads = Vec<(GroupId, Seq)>;
type Positions = HashMap<GroupId, Seq>;

/// One session's catch-up read: [`Store::messages_after`]'s arguments.
pub struct CatchUp {
    pub after: Vec<(GroupId, Seq)>,
    pub since_ms: i64,
    pub limit: u32,
}

pub struct HandshakeReads {
    exists: Batcher<UserId, Result<bool, ReadError>>,
    heads: Batcher<UserId, Result<Heads, ReadError>>,
    positions: Batcher<UserId, Result<Positions, ReadError>>,
    catch_ups: Batcher<CatchUp, Result<Vec<Message>, ReadError>>,
}

impl HandshakeReads {
    pub fn spawn(store: Arc<dyn Store>, inbox: Arc<dyn Inbox>) -> Self {
        let store_for_catch_up = store.clone();
        let store_for_users = store.clone();
        let exists = Batcher::spawn(BATCH, 1, Duration::ZERO, move |ids: Vec<UserId>| {
            let store = store_for_users.clone();
            async move {
                let found = store.users(&ids).await.map(|users| users.into_iter().map(|u| (u.user_id, true)).collect());
                per_user(&ids, found)
            }
        });
        let heads = Batcher::spawn(BATCH, 1, Duration::ZERO, move |users: Vec<UserId>| {
            let store = store.clone();
            async move { per_user(&users, store.group_heads(&users).await) }
        });
        let positions = Batcher::spawn(BATCH, 1, Duration::ZERO, move |users: Vec<UserId>| {
            let inbox = inbox.clone();
            async move { per_user(&users, inbox.positions(&users).await) }
        });
        let catch_ups = Batcher::spawn(CATCH_UPS, 1, Duration::ZERO, move |reads: Vec<CatchUp>| {
            let store = store_for_catch_up.clone();
            async move { catch_ups(&*store, reads).await }
        });
        HandshakeReads { exists, heads, positions, catch_ups }
    }

    /// Whether the user exists.
    pub async fn user_exists(&self, user: UserId) -> Result<bool, ReadError> {
        self.exists.submit(0, user).await.unwrap_or_else(|| Err(stopped()))
    }

    /// The user's groups with their last sequence numbers.
    pub async fn heads(&self, user: UserId) -> Result<Heads, ReadError> {
        self.heads.submit(0, user).await.unwrap_or_else(|| Err(stopped()))
    }

    /// The user's delivery positions.
    pub async fn positions(&self, user: UserId) -> Result<Positions, ReadError> {
        self.positions.submit(0, user).await.unwrap_or_else(|| Err(stopped()))
    }

    /// The messages of a catch-up page, as [`Store::messages_after`] returns them.
    pub async fn catch_up(&self, read: CatchUp) -> Result<Vec<Message>, ReadError> {
        self.catch_ups.submit(0, read).await.unwrap_or_else(|| Err(stopped()))
    }
}

async fn catch_ups(store: &dyn Store, reads: Vec<CatchUp>) -> Vec<Result<Vec<Message>, ReadError>> {
    let alone = |read: CatchUp| async move {
        store.messages_after(&read.after, read.since_ms, read.limit).await.map_err(|e| ReadError(e.to_string().into()))
    };
    if reads.len() == 1 {
        let mut out = Vec::with_capacity(1);
        for read in reads {
            out.push(alone(read).await);
        }
        return out;
    }
    let mut lowest: HashMap<GroupId, Seq> = HashMap::new();
    for (g, seq) in reads.iter().flat_map(|r| &r.after) {
        lowest.entry(*g).and_modify(|s| *s = (*s).min(*seq)).or_insert(*seq);
    }
    let lowest: Vec<(GroupId, Seq)> = lowest.into_iter().collect();
    let since = reads.iter().map(|r| r.since_ms).min().unwrap_or_default();
    let limit = reads.iter().map(|r| r.limit).fold(0u32, u32::saturating_add);
    let all = match store.messages_after(&lowest, since, limit).await {
        Ok(all) => all,
        Err(e) => {
            let e = ReadError(e.to_string().into());
            return reads.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let cut = all.len() >= limit as usize;
    let mut out = Vec::with_capacity(reads.len());
    for read in reads {
        let mine: Vec<Message> = all
            .iter()
            .filter(|m| m.sent_at_ms > read.since_ms && read.after.iter().any(|&(g, s)| g == m.group_id && m.seq > s))
            .take(read.limit as usize)
            .cloned()
            .collect();
        if cut && mine.len() < read.limit as usize {
            out.push(alone(read).await);
        } else {
            out.push(Ok(mine));
        }
    }
    out
}

fn stopped() -> ReadError {
    ReadError("handshake reads stopped".into())
}

/// One result per queued user (a user may be queued twice: two sessions).
fn per_user<T: Clone + Default, E: fmt::Display>(
    users: &[UserId],
    read: Result<HashMap<UserId, T>, E>,
) -> Vec<Result<T, ReadError>> {
    match read {
        Ok(found) => users.iter().map(|u| Ok(found.get(u).cloned().unwrap_or_default())).collect(),
        Err(e) => {
            let e = ReadError(e.to_string().into());
            users.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Database, NewMessage, SqlStore};

    /// A group of two with messages 1..=10, in SQLite in a temporary directory.
    async fn store_with_ten() -> (Arc<dyn Store>, GroupId, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("switchboard-reads-{}", crate::model::now_us()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Database::connect(&format!("sqlite://{}/db", dir.display())).await.expect("db");
        let store: Arc<dyn Store> = Arc::new(SqlStore::new(db, Arc::new(Metrics::new("t"))));
        let (a, b) = (store.create_user("a").await.expect("a"), store.create_user("b").await.expect("b"));
        let (group, _) = store.create_group("g", a.user_id, &[a.user_id, b.user_id]).await.expect("group");
        for i in 0..10 {
            let m = NewMessage {
                group_id: group.group_id,
                sender_id: a.user_id,
                content: format!("m{i}"),
                client_msg_id: None,
                sent_at_ms: crate::model::now_ms(),
            };
            store.insert_messages(vec![m]).await.pop().expect("one result").expect("insert");
        }
        (store, group.group_id, dir)
    }

    fn seqs(r: &Result<Vec<Message>, ReadError>) -> Vec<Seq> {
        r.as_ref().expect("read").iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn a_batch_of_catch_ups_gives_each_its_own_page() {
        let (store, g, dir) = store_with_ten().await;
        let read = |from, limit| CatchUp { after: vec![(g, from)], since_ms: 0, limit };
        let got = catch_ups(&*store, vec![read(0, 4), read(7, 10), read(2, 100)]).await;
        assert_eq!(
            got.iter().map(seqs).collect::<Vec<_>>(),
            vec![vec![1, 2, 3, 4], vec![8, 9, 10], (3..=10).collect()]
        );
        // The shared read (limit 3 + 3 from seq 0) stops at 6: the second caller's page
        // would be short, so it reads alone and gets a full one.
        let got = catch_ups(&*store, vec![read(0, 3), read(5, 3)]).await;
        assert_eq!(got.iter().map(seqs).collect::<Vec<_>>(), vec![vec![1, 2, 3], vec![6, 7, 8]]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_queued_user_gets_its_own_answer_or_the_shared_error() {
        let found = HashMap::from([(1, vec![(10, 3)]), (2, vec![(11, 0)])]);
        let got = per_user::<Heads, String>(&[2, 1, 2, 3], Ok(found));
        let got: Vec<Heads> = got.into_iter().map(|r| r.expect("ok")).collect();
        assert_eq!(got, vec![vec![(11, 0)], vec![(10, 3)], vec![(11, 0)], vec![]]);
        let failed = per_user::<Heads, String>(&[1, 2], Err("down".into()));
        assert!(failed.iter().all(|r| r.as_ref().is_err_and(|e| e.to_string() == "down")));
    }
}
