//! The reads of a session's handshake, batched across concurrent handshakes.
//!
//! Every handshake reads its user's group heads (after its subscriptions are confirmed) and,
//! when a group has messages, its positions. In a reconnect storm thousands of sessions do
//! this at once, and each statement costs the database far more than each row, so a read
//! queues its user and one worker per kind reads every queued user in one statement (the
//! [`Batcher`]: a lone read waits for nothing; under load the next batch gathers while one
//! is read). Batching only delays a read, never moves it before the caller's subscription,
//! so the connect order of docs/delivery.md is unchanged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::batch::Batcher;
use crate::inbox::Inbox;
use crate::model::{GroupId, Seq, UserId};
use crate::store::Store;

/// Users per batched read at most.
const BATCH: usize = 256;

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

pub struct HandshakeReads {
    heads: Batcher<UserId, Result<Heads, ReadError>>,
    positions: Batcher<UserId, Result<Positions, ReadError>>,
}

impl HandshakeReads {
    pub fn spawn(store: Arc<dyn Store>, inbox: Arc<dyn Inbox>) -> Self {
        let heads = Batcher::spawn(BATCH, 1, move |users: Vec<UserId>| {
            let store = store.clone();
            async move { per_user(&users, store.group_heads(&users).await) }
        });
        let positions = Batcher::spawn(BATCH, 1, move |users: Vec<UserId>| {
            let inbox = inbox.clone();
            async move { per_user(&users, inbox.positions(&users).await) }
        });
        HandshakeReads { heads, positions }
    }

    /// The user's groups with their last sequence numbers.
    pub async fn heads(&self, user: UserId) -> Result<Heads, ReadError> {
        self.heads.submit(0, user).await.unwrap_or_else(|| Err(stopped()))
    }

    /// The user's delivery positions.
    pub async fn positions(&self, user: UserId) -> Result<Positions, ReadError> {
        self.positions.submit(0, user).await.unwrap_or_else(|| Err(stopped()))
    }
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
