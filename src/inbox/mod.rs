//! The offline inbox: one self-contained pending entry per recipient and message, written
//! before `send_message` answers 200 and removed once the message reached the user (ack, or
//! socket write for a client that never acks). Replay on connect reads only the inbox, never
//! the store. Entries expire after a TTL and each user's inbox is bounded; past those limits
//! a client falls back to the history API.
//!
//! Backends: `sql` (a table in the store's database: the embedded default and the MySQL
//! deployment) and `mongo` (MongoDB, the seed's production choice).

mod mongo;
mod remover;
mod sql;

use async_trait::async_trait;
use thiserror::Error;

use crate::model::{Message, MessageId, UserId};

pub use mongo::MongoInbox;
pub use remover::Remover;
pub use sql::SqlInbox;

#[derive(Debug, Error)]
pub enum InboxError {
    #[error("inbox unavailable: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("inbox unavailable: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// The batch this append was part of failed.
    #[error("inbox unavailable: {0}")]
    Batch(String),
}

/// How long entries live and how many a user may have pending.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub ttl_ms: i64,
    pub max_per_user: u32,
}

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Adds a pending entry of each message for each of its recipients, as one write (group
    /// commit of concurrent sends). Idempotent per (user, message), so a retried send may
    /// append again.
    async fn append_batch(&self, batch: &[(Message, Vec<UserId>)]) -> Result<(), InboxError>;
    /// One message: a batch of one.
    async fn append(&self, message: &Message, recipients: &[UserId]) -> Result<(), InboxError> {
        self.append_batch(&[(message.clone(), recipients.to_vec())]).await
    }
    /// Up to `limit` unexpired pending messages of `user`, in id order.
    async fn pending(&self, user: UserId, limit: u32) -> Result<Vec<Message>, InboxError>;
    /// Removes delivered entries (batched by [`Remover`]).
    async fn remove(&self, delivered: &[(UserId, MessageId)]) -> Result<(), InboxError>;
    /// Removes every entry of one message: compensation when a send fails half-way.
    async fn remove_message(&self, message: MessageId) -> Result<(), InboxError>;
    /// Deletes expired entries and trims users over the bound; returns entries removed.
    async fn sweep(&self) -> Result<u64, InboxError>;
    /// Number of pending entries in total (for the `inbox_pending` gauge).
    async fn pending_total(&self) -> Result<u64, InboxError>;
    async fn ping(&self) -> Result<(), InboxError>;
}
