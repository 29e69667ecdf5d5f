//! `Store` over sqlx's `Any` driver: one implementation for MySQL and SQLite. Statements
//! use `?` placeholders, which both accept; the few that differ live in [`Dialect`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use sqlx::AnyConnection;
use sqlx::AnyPool;
use sqlx::any::{AnyQueryResult, AnyRow};
use sqlx::{AssertSqlSafe, Row};

use super::{NewMessage, Page, Store, StoreError};
use crate::metrics::Metrics;
use crate::model::{Group, GroupId, Message, MessageId, Seq, User, UserId};

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
    /// One multi-row insert gets consecutive ids (see `SqlStore::assign_ids`).
    pub consecutive_ids: bool,
}

impl Database {
    /// Opens the pool for `url` (creating the database if needed) and runs its migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            Ok(Database { pool: super::sqlite::connect(url).await?, dialect: Dialect::Sqlite, consecutive_ids: true })
        } else {
            let pool = super::mysql::connect(url).await?;
            let consecutive_ids = super::mysql::consecutive_ids(&pool).await?;
            Ok(Database { pool, dialect: Dialect::MySql, consecutive_ids })
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
        for chunk in keys.chunks(MAX_SHAPE) {
            let chunk: Vec<_> = padded(chunk).collect();
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

    /// Writes a batch: one transaction of four statements, whatever its size.
    ///
    /// 1. `UPDATE groups SET last_seq = last_seq + n` for every group in the batch: this
    ///    reserves each group's next sequence numbers and holds the group rows until commit,
    ///    so ids and sequence numbers both increase in commit order within a group.
    /// 2. `SELECT last_seq` of those groups, to learn the reserved ranges.
    /// 3. One multi-row `INSERT IGNORE` of the messages with their sequence numbers.
    /// 4. `COMMIT`.
    ///
    /// Idempotency is folded into the insert: a retried `client_msg_id` makes the insert skip
    /// a row. That is rare, and a skipped row would leave a hole in its group's sequence, so
    /// the transaction is rolled back, the retries are answered from the stored messages, and
    /// the rest is written again.
    async fn write_batch(&self, batch: &[NewMessage]) -> Result<Vec<Result<(Message, bool), StoreError>>, sqlx::Error> {
        let mut results: Vec<Option<Result<(Message, bool), StoreError>>> = batch.iter().map(|_| None).collect();
        // The first of several items with one key in this batch is written; the others are
        // its retries and get its result.
        let mut first_of: HashMap<(UserId, &str), usize> = HashMap::new();
        let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match key(m).map(|k| *first_of.entry(k).or_insert(i)) {
                Some(first) if first != i => repeats.push((i, first)),
                _ => fresh.push(i),
            }
        }
        // A collision means some items are retries of stored messages: answer those from
        // the store and write the rest. Twice is enough unless retries keep racing in.
        for _ in 0..3 {
            if let Some(messages) = self.try_write(batch, &fresh).await? {
                for (i, m) in fresh.drain(..).zip(messages) {
                    results[i] = Some(Ok((m, true)));
                }
                break;
            }
            let keys: Vec<(UserId, &str)> = fresh.iter().filter_map(|i| key(&batch[*i])).collect();
            let stored = self.stored_by_client_id(&keys).await?;
            fresh.retain(|i| {
                let m = &batch[*i];
                let Some(found) = key(m).and_then(|(s, c)| stored.get(&(s, c.to_owned()))) else { return true };
                results[*i] = Some(same(found, m));
                false
            });
        }
        for (i, first) in repeats {
            results[i] = match &results[first] {
                Some(Ok((found, _))) => Some(same(found, &batch[i])),
                _ => None,
            };
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Err(StoreError::Unavailable(sqlx::Error::RowNotFound)))).collect())
    }

    /// One attempt at the transaction of [`Self::write_batch`] for `batch[i]`, `i` in
    /// `items`. `None` when a row was skipped as a retry (the transaction is rolled back).
    async fn try_write(&self, batch: &[NewMessage], items: &[usize]) -> Result<Option<Vec<Message>>, sqlx::Error> {
        if items.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut counts: BTreeMap<GroupId, i64> = BTreeMap::new();
        for i in items {
            *counts.entry(batch[*i].group_id).or_default() += 1;
        }
        let groups: Vec<(GroupId, i64)> = counts.iter().map(|(g, n)| (*g, *n)).collect();
        let shaped: Vec<&(GroupId, i64)> = padded(&groups).collect();
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "UPDATE `groups` SET last_seq = last_seq + CASE id {} END WHERE id IN ({})",
            "WHEN ? THEN ? ".repeat(shaped.len()),
            placeholders(shaped.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (g, n) in &shaped {
            q = q.bind(*g).bind(*n);
        }
        for (g, _) in &shaped {
            q = q.bind(*g);
        }
        q.execute(&mut *tx).await?;
        let sql = format!("SELECT id, last_seq FROM `groups` WHERE id IN ({})", placeholders(shaped.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (g, _) in &shaped {
            q = q.bind(*g);
        }
        // The next free sequence number of each group, handed out in batch order.
        let mut next: HashMap<GroupId, Seq> = HashMap::with_capacity(counts.len());
        for row in q.fetch_all(&mut *tx).await? {
            let (g, last): (GroupId, Seq) = (row.try_get(0)?, row.try_get(1)?);
            next.insert(g, last - counts.get(&g).copied().unwrap_or(0) + 1);
        }
        let mut messages = Vec::with_capacity(items.len());
        for i in items {
            let m = &batch[*i];
            let seq = next.get_mut(&m.group_id).ok_or(sqlx::Error::RowNotFound)?;
            messages.push(Message {
                message_id: 0,
                group_id: m.group_id,
                seq: *seq,
                sender_id: m.sender_id,
                content: m.content.clone(),
                sent_at_ms: m.sent_at_ms,
            });
            *seq += 1;
        }
        // Padding rows repeat the last message and come last, so the real rows get the first
        // (consecutive) ids and the repeats are skipped by the unique (group, seq) key.
        let rows: Vec<(usize, &Message)> = items.iter().copied().zip(&messages).collect();
        let rows: Vec<&(usize, &Message)> = padded(&rows).collect();
        let sql = format!(
            "{} INTO messages (group_id, seq, sender_id, content, sent_at_ms, client_msg_id) VALUES {}",
            self.db.dialect.insert_ignore(),
            vec!["(?, ?, ?, ?, ?, ?)"; rows.len()].join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, m) in rows {
            q = q
                .bind(m.group_id)
                .bind(m.seq)
                .bind(m.sender_id)
                .bind(&m.content)
                .bind(m.sent_at_ms)
                .bind(&batch[*i].client_msg_id);
        }
        let done = q.execute(&mut *tx).await?;
        if done.rows_affected() != items.len() as u64 {
            tx.rollback().await?;
            return Ok(None);
        }
        self.assign_ids(&done, &mut tx, &mut messages).await?;
        tx.commit().await?;
        Ok(Some(messages))
    }

    /// Fills in the ids a multi-row insert just gave `messages`. Where the database hands
    /// out consecutive ids to one statement (SQLite's single writer; InnoDB unless
    /// `innodb_autoinc_lock_mode = 2`) they follow from the last insert id; otherwise they
    /// are read back by (group, seq).
    async fn assign_ids(
        &self,
        done: &AnyQueryResult,
        tx: &mut AnyConnection,
        messages: &mut [Message],
    ) -> Result<(), sqlx::Error> {
        let n = messages.len() as i64;
        let first = match (self.db.dialect, done.last_insert_id()) {
            (Dialect::MySql, Some(first)) if self.db.consecutive_ids => Some(first),
            (Dialect::Sqlite, _) => {
                let last: i64 = sqlx::query("SELECT last_insert_rowid()").fetch_one(&mut *tx).await?.try_get(0)?;
                Some(last - n + 1)
            }
            _ => None,
        };
        if let Some(first) = first {
            for (k, m) in messages.iter_mut().enumerate() {
                m.message_id = first + k as i64;
            }
            return Ok(());
        }
        let keys: Vec<(GroupId, Seq)> = messages.iter().map(|m| (m.group_id, m.seq)).collect();
        let keys: Vec<&(GroupId, Seq)> = padded(&keys).collect();
        let sql = format!(
            "SELECT id, group_id, seq FROM messages WHERE {}",
            vec!["(group_id = ? AND seq = ?)"; keys.len()].join(" OR ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (g, seq) in keys {
            q = q.bind(*g).bind(*seq);
        }
        let mut ids: HashMap<(GroupId, Seq), MessageId> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            ids.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
        }
        for m in messages.iter_mut() {
            m.message_id = *ids.get(&(m.group_id, m.seq)).ok_or(sqlx::Error::RowNotFound)?;
        }
        Ok(())
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        let mut found: Vec<i64> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_SHAPE) {
            let chunk: Vec<&UserId> = padded(chunk).collect();
            let sql = format!("SELECT id FROM users WHERE id IN ({})", placeholders(chunk.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            found.extend(q.fetch_all(self.pool()).await?.iter().map(|r| r.get::<i64, _>(0)));
        }
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

/// The idempotency key of a send, if it has one.
fn key(m: &NewMessage) -> Option<(UserId, &str)> {
    m.client_msg_id.as_deref().map(|c| (m.sender_id, c))
}

/// The answer to a retried send: the stored message if it is the same message, else an error.
fn same(found: &Message, m: &NewMessage) -> Result<(Message, bool), StoreError> {
    if found.group_id == m.group_id && found.content == m.content {
        Ok((found.clone(), false))
    } else {
        Err(StoreError::ClientMsgIdReused)
    }
}

/// The lengths a variable-length statement (IN list, OR terms, multi-row VALUES) is rounded
/// up to. Every distinct statement text is a separate prepared statement on every pooled
/// connection; without this ladder a batch of each size prepared its own, and the
/// connection's statement cache evicted and re-prepared them all the time (more than one
/// prepare per commit, measured). The extra slots repeat the last item, which changes
/// nothing: an IN list or CASE takes the first match, INSERT IGNORE skips the identical
/// row, and the position upsert applies the same maximum twice.
const SHAPES: [usize; 16] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// Most items in one padded statement; callers chunk by it.
pub(crate) const MAX_SHAPE: usize = 256;

/// `items` padded to the next length of [`SHAPES`] by repeating the last one.
pub(crate) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let n = SHAPES.iter().copied().find(|s| *s >= items.len()).unwrap_or(items.len());
    (0..n).map(move |i| &items[i.min(items.len().saturating_sub(1))])
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
        seq: r.try_get("seq")?,
        sender_id: r.try_get("sender_id")?,
        content: r.try_get("content")?,
        sent_at_ms: r.try_get("sent_at_ms")?,
    })
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

const MESSAGE_COLUMNS: &str = "id, group_id, seq, sender_id, content, sent_at_ms";

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
        self.remember(&user);
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

    async fn group_heads(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<(GroupId, Seq)>>, StoreError> {
        let _t = self.metrics.time_query("group_heads");
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        let mut heads: HashMap<UserId, Vec<(GroupId, Seq)>> = HashMap::new();
        for chunk in users.chunks(MAX_SHAPE) {
            let chunk: Vec<&UserId> = padded(chunk).collect();
            let sql = format!(
                "SELECT m.user_id, g.id, g.last_seq FROM group_members m JOIN `groups` g ON g.id = m.group_id \
                 WHERE m.user_id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(*u);
            }
            for r in q.fetch_all(self.pool()).await? {
                heads.entry(r.try_get(0)?).or_default().push((r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(heads)
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

    async fn messages_after(
        &self,
        after: &[(GroupId, Seq)],
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let _t = self.metrics.time_query("messages_after");
        let mut out = Vec::new();
        for chunk in after.chunks(MAX_SHAPE) {
            let chunk: Vec<&(GroupId, Seq)> = padded(chunk).collect();
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE ({}) AND sent_at_ms > ? ORDER BY id LIMIT ?",
                vec!["(group_id = ? AND seq > ?)"; chunk.len()].join(" OR ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (g, seq) in chunk {
                q = q.bind(*g).bind(*seq);
            }
            let rows = q.bind(since_ms).bind(i64::from(limit)).fetch_all(self.pool()).await?;
            for r in &rows {
                out.push(message_from_row(r)?);
            }
        }
        // Each chunk is a prefix of its groups' logs in id order; so is the merged list cut
        // at `limit`.
        out.sort_unstable_by_key(|m| m.message_id);
        out.truncate(limit as usize);
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
            for chunk in missing.chunks(MAX_SHAPE) {
                let chunk: Vec<&UserId> = padded(chunk).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_come_in_few_lengths_padded_with_the_last_item() {
        let lens: std::collections::BTreeSet<usize> = (1..=MAX_SHAPE).map(|n| padded(&vec![0; n]).count()).collect();
        assert_eq!(lens.len(), SHAPES.len());
        for n in 1..=MAX_SHAPE {
            let items: Vec<usize> = (0..n).collect();
            let p: Vec<usize> = padded(&items).copied().collect();
            assert!(p.len() >= n && p.len() < n * 3 / 2 + 2, "{n} -> {}", p.len());
            assert_eq!(&p[..n], &items[..]);
            assert!(p[n..].iter().all(|x| *x == n - 1));
        }
    }
}
