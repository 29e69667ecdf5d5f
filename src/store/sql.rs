//! `Store` over sqlx's `Any` driver: one implementation for MySQL and SQLite. Statements
//! use `?` placeholders, which both accept; the few that differ live in [`Dialect`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use sqlx::AnyConnection;
use sqlx::AnyPool;
use sqlx::any::{AnyQueryResult, AnyRow};
use sqlx::{AssertSqlSafe, Row};

use super::{NewMessage, Page, Store, StoreError};
use crate::metrics::Metrics;
use crate::model::{Group, GroupId, Message, MessageId, User, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    /// `INSERT` that skips rows colliding with a unique key.
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::MySql => "INSERT IGNORE",
            Dialect::Sqlite => "INSERT OR IGNORE",
        }
    }
}

/// A connection pool and the dialect spoken over it; shared by the store and the SQL inbox.
#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Database {
    /// Opens the pool for `url` (creating the database if needed) and runs its migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            Ok(Database { pool: super::sqlite::connect(url).await?, dialect: Dialect::Sqlite })
        } else {
            Ok(Database { pool: super::mysql::connect(url).await?, dialect: Dialect::MySql })
        }
    }
}

pub struct SqlStore {
    db: Database,
    metrics: Arc<Metrics>,
    /// Members of groups already read. Membership never changes once a group exists (there
    /// is no API to add or remove members), so the cache needs no invalidation; it is only
    /// bounded.
    members: DashMap<GroupId, Arc<[UserId]>>,
    /// Users already read (users are never renamed or deleted): a reconnect storm checks its
    /// users without the database.
    users: DashMap<UserId, User>,
}

/// Users kept in memory before the cache starts over.
const USER_CACHE: usize = 200_000;

/// Groups whose members are kept in memory before the cache starts over.
const MEMBER_CACHE_GROUPS: usize = 100_000;

impl SqlStore {
    pub fn new(db: Database, metrics: Arc<Metrics>) -> Self {
        Self { db, metrics, members: DashMap::new(), users: DashMap::new() }
    }

    fn pool(&self) -> &AnyPool {
        &self.db.pool
    }

    /// Messages already stored under these (sender, client_msg_id) keys.
    async fn stored_by_client_id(
        &self,
        keys: &[(UserId, &str)],
    ) -> Result<HashMap<(UserId, String), Message>, sqlx::Error> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(200) {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS}, client_msg_id FROM messages WHERE {}",
                vec!["(sender_id = ? AND client_msg_id = ?)"; chunk.len()].join(" OR ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (sender, client_id) in chunk {
                q = q.bind(*sender).bind(*client_id);
            }
            for row in q.fetch_all(self.pool()).await? {
                let m = message_from_row(&row)?;
                found.insert((m.sender_id, row.try_get::<String, _>("client_msg_id")?), m);
            }
        }
        Ok(found)
    }

    /// Writes a batch in one transaction. Ids increase in commit order within each group: on
    /// MySQL the batch first locks its groups' rows (in id order, so concurrent batches cannot
    /// deadlock); SQLite has a single writer. A retried `client_msg_id` returns the stored
    /// message, also when the first attempt is in the same batch.
    async fn write_batch(&self, batch: &[NewMessage]) -> Result<Vec<Result<(Message, bool), StoreError>>, sqlx::Error> {
        let key = |m: &NewMessage| m.client_msg_id.as_ref().map(|c| (m.sender_id, c.clone()));
        let keys: Vec<(UserId, &str)> =
            batch.iter().filter_map(|m| m.client_msg_id.as_deref().map(|c| (m.sender_id, c))).collect();
        let mut known = if keys.is_empty() { HashMap::new() } else { self.stored_by_client_id(&keys).await? };
        let same = |found: &Message, m: &NewMessage| {
            if found.group_id == m.group_id && found.content == m.content {
                Ok((found.clone(), false))
            } else {
                Err(StoreError::ClientMsgIdReused)
            }
        };
        let mut results: Vec<Option<Result<(Message, bool), StoreError>>> = Vec::with_capacity(batch.len());
        let mut tx = self.pool().begin().await?;
        if self.db.dialect == Dialect::MySql {
            let mut groups: Vec<GroupId> = batch.iter().map(|m| m.group_id).collect();
            groups.sort_unstable();
            groups.dedup();
            let sql =
                format!("SELECT id FROM `groups` WHERE id IN ({}) ORDER BY id FOR UPDATE", placeholders(groups.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for g in &groups {
                q = q.bind(*g);
            }
            q.execute(&mut *tx).await?;
        }
        for m in batch {
            if let Some(found) = key(m).and_then(|k| known.get(&k)) {
                results.push(Some(same(found, m)));
                continue;
            }
            let res = sqlx::query(
                "INSERT INTO messages (group_id, sender_id, content, sent_at_ms, client_msg_id) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(m.group_id)
            .bind(m.sender_id)
            .bind(&m.content)
            .bind(m.sent_at_ms)
            .bind(&m.client_msg_id)
            .execute(&mut *tx)
            .await;
            match res {
                Ok(done) => {
                    let message = Message {
                        message_id: inserted_id(&done, &mut tx).await?,
                        group_id: m.group_id,
                        sender_id: m.sender_id,
                        content: m.content.clone(),
                        sent_at_ms: m.sent_at_ms,
                    };
                    if let Some(k) = key(m) {
                        known.insert(k, message.clone());
                    }
                    results.push(Some(Ok((message, true))));
                }
                // A concurrent retry on another connection won; read it after the commit.
                Err(e) if is_unique_violation(&e) => results.push(None),
                Err(e) => return Err(e),
            }
        }
        tx.commit().await?;
        let mut out = Vec::with_capacity(batch.len());
        for (m, result) in batch.iter().zip(results) {
            out.push(match result {
                Some(r) => r,
                None => {
                    let (sender, client_id) = (m.sender_id, m.client_msg_id.as_deref().unwrap_or_default());
                    match self.stored_by_client_id(&[(sender, client_id)]).await?.into_values().next() {
                        Some(found) => same(&found, m),
                        None => Err(StoreError::Unavailable(sqlx::Error::RowNotFound)),
                    }
                }
            });
        }
        Ok(out)
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        let sql = format!("SELECT id FROM users WHERE id IN ({})", placeholders(ids.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(*id);
        }
        let found: Vec<i64> = q.fetch_all(self.pool()).await?.iter().map(|r| r.get::<i64, _>(0)).collect();
        Ok(ids.iter().copied().filter(|id| !found.contains(id)).collect())
    }

    /// Keeps a user read from the database (users are never renamed or deleted).
    fn remember(&self, user: &User) {
        if self.users.len() >= USER_CACHE {
            self.users.clear();
        }
        self.users.insert(user.user_id, user.clone());
    }
}

/// `?, ?, ?` for an IN list of `n` values (n >= 1).
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

fn message_from_row(r: &AnyRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        message_id: r.try_get("id")?,
        group_id: r.try_get("group_id")?,
        sender_id: r.try_get("sender_id")?,
        content: r.try_get("content")?,
        sent_at_ms: r.try_get("sent_at_ms")?,
    })
}

/// The id a statement just inserted. The Any driver reports it for MySQL; for SQLite it is
/// read on the same connection.
async fn inserted_id(done: &AnyQueryResult, conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    match done.last_insert_id() {
        Some(id) => Ok(id),
        None => sqlx::query("SELECT last_insert_rowid()").fetch_one(conn).await?.try_get(0),
    }
}

/// A deadlock or serialization failure: the transaction was rolled back and can simply run
/// again (concurrent group-commit batches may collide in InnoDB's index locks).
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001") || db.message().contains("Deadlock"))
}

/// Runs `attempt` again (up to three times in all) while it fails with a retryable error.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e) if is_retryable(&e) && tries < 2 => tries += 1,
            other => return other,
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

const MESSAGE_COLUMNS: &str = "id, group_id, sender_id, content, sent_at_ms";

#[async_trait]
impl Store for SqlStore {
    async fn create_user(&self, username: &str) -> Result<User, StoreError> {
        let _t = self.metrics.time_query("create_user");
        let res = sqlx::query("INSERT INTO users (username, created_at_ms) VALUES (?, ?)")
            .bind(username)
            .bind(crate::model::now_ms())
            .execute(self.pool())
            .await;
        match res {
            Ok(done) => {
                let user_id = match done.last_insert_id() {
                    Some(id) => id,
                    None => sqlx::query("SELECT id FROM users WHERE username = ?")
                        .bind(username)
                        .fetch_one(self.pool())
                        .await?
                        .try_get(0)?,
                };
                Ok(User { user_id, username: username.to_owned() })
            }
            Err(e) if is_unique_violation(&e) => Err(StoreError::UsernameTaken),
            Err(e) => Err(e.into()),
        }
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.users.get(&id) {
            return Ok(Some(user.clone()));
        }
        let _t = self.metrics.time_query("get_user");
        let row =
            sqlx::query("SELECT id, username FROM users WHERE id = ?").bind(id).fetch_optional(self.pool()).await?;
        let Some(r) = row else { return Ok(None) };
        let user = User { user_id: r.try_get(0)?, username: r.try_get(1)? };
        if self.users.len() >= USER_CACHE {
            self.users.clear();
        }
        self.users.insert(id, user.clone());
        Ok(Some(user))
    }

    async fn create_group(
        &self,
        name: &str,
        created_by: UserId,
        members: &[UserId],
    ) -> Result<(Group, bool), StoreError> {
        let _t = self.metrics.time_query("create_group");
        let mut members: Vec<UserId> = members.iter().copied().chain([created_by]).collect();
        members.sort_unstable();
        members.dedup();
        let missing = self.missing_users(&members).await?;
        if !missing.is_empty() {
            return Err(StoreError::UnknownUsers(missing));
        }
        let pair_key = (members.len() == 2).then(|| format!("{}:{}", members[0], members[1]));
        let now = crate::model::now_ms();
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "{} INTO `groups` (name, created_by, pair_key, created_at_ms) VALUES (?, ?, ?, ?)",
            self.db.dialect.insert_ignore()
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .bind(created_by)
            .bind(&pair_key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            let group_id = match done.last_insert_id() {
                Some(id) => id,
                None => sqlx::query("SELECT MAX(id) FROM `groups`").fetch_one(&mut *tx).await?.try_get(0)?,
            };
            let sql = format!(
                "INSERT INTO group_members (group_id, user_id) VALUES {}",
                vec!["(?, ?)"; members.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for m in &members {
                q = q.bind(group_id).bind(*m);
            }
            q.execute(&mut *tx).await?;
            tx.commit().await?;
            let group = Group { group_id, name: name.to_owned(), created_by, members };
            return Ok((group, true));
        }
        // The pair already has its conversation (maybe committed a moment ago by a racing
        // call, which the unique key made us wait for). Read it outside the transaction so the
        // read sees the latest commit.
        tx.rollback().await?;
        let id: GroupId = sqlx::query("SELECT id FROM `groups` WHERE pair_key = ?")
            .bind(&pair_key)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        let group = self.group(id).await?.ok_or(sqlx::Error::RowNotFound)?;
        Ok((group, false))
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>, StoreError> {
        let _t = self.metrics.time_query("get_group");
        let Some(row) = sqlx::query("SELECT id, name, created_by FROM `groups` WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        let members = self.group_members(id).await?.unwrap_or_default();
        Ok(Some(Group { group_id: row.try_get(0)?, name: row.try_get(1)?, created_by: row.try_get(2)?, members }))
    }

    async fn group_members(&self, id: GroupId) -> Result<Option<Vec<UserId>>, StoreError> {
        if let Some(members) = self.members.get(&id) {
            return Ok(Some(members.to_vec()));
        }
        let _t = self.metrics.time_query("group_members");
        let rows = sqlx::query("SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        // Every group has at least two members, so no rows means no group.
        if rows.is_empty() {
            return Ok(None);
        }
        let members: Vec<UserId> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        if self.members.len() >= MEMBER_CACHE_GROUPS {
            self.members.clear();
        }
        self.members.insert(id, members.as_slice().into());
        Ok(Some(members))
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>, StoreError> {
        let _t = self.metrics.time_query("user_groups");
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.created_by, m2.user_id FROM group_members m \
             JOIN `groups` g ON g.id = m.group_id \
             JOIN group_members m2 ON m2.group_id = g.id \
             WHERE m.user_id = ? ORDER BY g.id, m2.user_id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?;
        let mut groups: Vec<Group> = Vec::new();
        for r in &rows {
            let id: GroupId = r.try_get(0)?;
            let member: UserId = r.try_get(3)?;
            match groups.last_mut() {
                Some(g) if g.group_id == id => g.members.push(member),
                _ => groups.push(Group {
                    group_id: id,
                    name: r.try_get(1)?,
                    created_by: r.try_get(2)?,
                    members: vec![member],
                }),
            }
        }
        Ok(groups)
    }

    async fn user_group_ids(&self, user: UserId) -> Result<Vec<GroupId>, StoreError> {
        let _t = self.metrics.time_query("user_group_ids");
        let rows = sqlx::query("SELECT group_id FROM group_members WHERE user_id = ?")
            .bind(user)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn insert_messages(&self, batch: Vec<NewMessage>) -> Vec<Result<(Message, bool), StoreError>> {
        let _t = self.metrics.time_query("insert_messages");
        match retrying(|| self.write_batch(&batch)).await {
            Ok(results) => results,
            // The whole transaction failed: every message in it gets the error.
            Err(e) => {
                batch.iter().map(|_| Err(StoreError::Unavailable(sqlx::Error::Protocol(e.to_string())))).collect()
            }
        }
    }

    async fn delete_message(&self, id: MessageId) -> Result<(), StoreError> {
        let _t = self.metrics.time_query("delete_message");
        sqlx::query("DELETE FROM messages WHERE id = ?").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    async fn messages(&self, group: GroupId, page: Page) -> Result<Vec<Message>, StoreError> {
        let _t = self.metrics.time_query("messages");
        let after = page.after.unwrap_or(0);
        let before = page.before.unwrap_or(i64::MAX);
        let order = if page.after.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE group_id = ? AND id > ? AND id < ? ORDER BY id {order} LIMIT ?"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(group)
            .bind(after)
            .bind(before)
            .bind(i64::from(page.limit))
            .fetch_all(self.pool())
            .await?;
        let mut out = rows.iter().map(message_from_row).collect::<Result<Vec<_>, _>>()?;
        out.sort_unstable_by_key(|m| m.message_id);
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let _t = self.metrics.time_query("user_by_name");
        let row = sqlx::query("SELECT id, username FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let user = User { user_id: r.try_get(0)?, username: r.try_get(1)? };
        // MySQL's PAD SPACE collations compare `bob ` equal to `bob`; the name must be exact.
        if user.username != username {
            return Ok(None);
        }
        self.remember(&user);
        Ok(Some(user))
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.users.get(id) {
                Some(user) => found.push(user.clone()),
                None => missing.push(*id),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let _t = self.metrics.time_query("get_users");
            for chunk in missing.chunks(500) {
                let sql = format!("SELECT id, username FROM users WHERE id IN ({})", placeholders(chunk.len()));
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(self.pool()).await? {
                    let user = User { user_id: r.try_get(0)?, username: r.try_get(1)? };
                    self.remember(&user);
                    found.push(user);
                }
            }
        }
        found.sort_unstable_by_key(|u| u.user_id);
        found.dedup_by_key(|u| u.user_id);
        Ok(found)
    }
}
