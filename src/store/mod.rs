//! The durable store of users, groups, members and messages.
//!
//! `Store` is the trait; `SqlStore` implements it once over sqlx's `Any` driver for both
//! backends, with the few statements that differ kept in [`Dialect`]. `mysql` and `sqlite`
//! open their pools and carry their own migrations folder.

mod mysql;
mod sql;
mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use thiserror::Error;

use crate::model::{Group, GroupId, Message, MessageId, Seq, User, UserId};

pub use sql::{Database, Dialect, SqlStore};
pub(crate) use sql::{MAX_SHAPE, padded, placeholders, retrying};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("username is already taken")]
    UsernameTaken,
    #[error("unknown user ids: {0:?}")]
    UnknownUsers(Vec<UserId>),
    #[error("client_msg_id was already used for a different message")]
    ClientMsgIdReused,
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("store writer stopped")]
    Closed,
}

/// A message to persist. `client_msg_id` makes a retried send return the first result.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub group_id: GroupId,
    pub sender_id: UserId,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub sent_at_ms: i64,
}

/// A window of group history. Without `after`, the newest `limit` messages before `before`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub after: Option<MessageId>,
    pub before: Option<MessageId>,
    pub limit: u32,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn create_user(&self, username: &str) -> Result<User, StoreError>;
    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Creates a group of `members` (the creator included). A group of exactly two users is
    /// their one-to-one conversation: the same pair always gets the same group back, even
    /// under concurrent calls. Returns the group and whether this call created it.
    async fn create_group(
        &self,
        name: &str,
        created_by: UserId,
        members: &[UserId],
    ) -> Result<(Group, bool), StoreError>;
    async fn group(&self, id: GroupId) -> Result<Option<Group>, StoreError>;
    /// Member ids of a group, or `None` when the group does not exist.
    async fn group_members(&self, id: GroupId) -> Result<Option<Vec<UserId>>, StoreError>;
    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>, StoreError>;
    /// Each user's groups with each one's last sequence number: what a connecting session
    /// compares with its positions to know which groups have anything to catch up. Many
    /// users in one read, so concurrent handshakes share it; a user in no group is absent.
    async fn group_heads(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<(GroupId, Seq)>>, StoreError>;
    /// Persists a batch of messages in one transaction (group commit), one result per
    /// message in order. Each message gets the next sequence number of its group (gap-free);
    /// ids and sequence numbers increase in commit order within a group. A `client_msg_id`
    /// already used by the sender returns the stored message and `false`.
    async fn insert_messages(&self, batch: Vec<NewMessage>) -> Vec<Result<(Message, bool), StoreError>>;
    async fn messages(&self, group: GroupId, page: Page) -> Result<Vec<Message>, StoreError>;
    /// Catch-up: the messages of each `(group, seq)` above `seq`, sent after `since_ms`, in id
    /// order, at most `limit`. Whatever is returned of a group is a gap-free run from its
    /// first message above `seq` (older than `since_ms` aside).
    async fn messages_after(
        &self,
        after: &[(GroupId, Seq)],
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// The user named exactly `username` (no case folding, no trimming), if any.
    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// The users among `ids` (which may repeat) that exist, once each in ascending id order:
    /// what names the members of groups. Unknown ids are left out.
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError>;
}
