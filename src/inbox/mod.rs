//! The offline inbox, kept as delivery positions (docs/delivery.md).
//!
//! Every group has a gap-free log of its messages in the store (`seq` 1, 2, 3, ...). What a
//! user has not received yet is, per group, the log above the user's position: the highest
//! `seq` up to which every message reached them (written to a socket for a client that
//! never acks, acknowledged for one that does). Sending writes no row per recipient; a
//! session moves its user's positions forward as it delivers, and [`Recorder`] writes them
//! in coalesced batches. A position written late only means a re-delivery that clients
//! de-duplicate by `message_id`, never a loss.
//!
//! Backends: `sql` (a table in the store's database: the embedded default and the MySQL
//! deployment) and `mongo` (MongoDB, the production store for offline delivery).

mod mongo;
mod recorder;
mod sql;

use std::collections::HashMap;

use async_trait::async_trait;
use thiserror::Error;

use crate::model::{GroupId, Seq, UserId};

pub use mongo::MongoInbox;
pub use recorder::Recorder;
pub use sql::SqlInbox;

#[derive(Debug, Error)]
pub enum InboxError {
    #[error("inbox unavailable: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("inbox unavailable: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("inbox write refused: {0}")]
    Refused(String),
}

/// A user's position in one group: every message up to `seq` reached them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub user_id: UserId,
    pub group_id: GroupId,
    pub seq: Seq,
}

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Each user's stored positions; a group without one is at 0 (nothing received), a user
    /// without any is absent. Many users in one read, so concurrent handshakes share it.
    async fn positions(&self, users: &[UserId]) -> Result<HashMap<UserId, HashMap<GroupId, Seq>>, InboxError>;
    /// Raises positions, never lowers them: each becomes the larger of the stored and the
    /// given `seq`. Idempotent, so a failed batch can simply be written again.
    async fn advance(&self, positions: &[Position]) -> Result<(), InboxError>;
    async fn ping(&self) -> Result<(), InboxError>;
}
