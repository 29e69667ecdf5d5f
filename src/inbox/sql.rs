//! The inbox as a table (`inbox`) in the store's database.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};

use super::{Inbox, InboxError, Limits};
use crate::metrics::Metrics;
use crate::model::{Message, MessageId, UserId, now_ms};
use crate::store::{Database, placeholders, retrying};

/// Rows per multi-row statement; keeps each statement well under placeholder limits.
const CHUNK: usize = 500;

pub struct SqlInbox {
    db: Database,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl SqlInbox {
    pub fn new(db: Database, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self { db, limits, metrics }
    }

    /// `DELETE FROM inbox WHERE term OR term ...` with the terms' values in order.
    async fn delete_where(&self, terms: &[String], binds: &[i64]) -> Result<(), sqlx::Error> {
        let sql = format!("DELETE FROM inbox WHERE {}", terms.join(" OR "));
        retrying(|| {
            let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
            for value in binds {
                q = q.bind(*value);
            }
            q.execute(&self.db.pool)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Inbox for SqlInbox {
    async fn append_batch(&self, batch: &[(Message, Vec<UserId>)]) -> Result<(), InboxError> {
        let _t = self.metrics.time_query("inbox_append");
        let mut rows: Vec<(&Message, UserId)> =
            batch.iter().flat_map(|(m, users)| users.iter().map(move |u| (m, *u))).collect();
        // Key order, so concurrent batches take index locks in the same order.
        rows.sort_unstable_by_key(|(m, user)| (*user, m.message_id));
        // Multi-row statements; if a later chunk fails, the sender's compensation removes
        // what earlier chunks wrote for its message.
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "{} INTO inbox (user_id, message_id, group_id, sender_id, content, sent_at_ms, expires_at_ms) VALUES {}",
                self.db.dialect.insert_ignore(),
                vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            retrying(|| {
                let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
                for (m, user) in chunk {
                    q = q
                        .bind(*user)
                        .bind(m.message_id)
                        .bind(m.group_id)
                        .bind(m.sender_id)
                        .bind(&m.content)
                        .bind(m.sent_at_ms)
                        .bind(m.sent_at_ms + self.limits.ttl_ms);
                }
                q.execute(&self.db.pool)
            })
            .await?;
        }
        Ok(())
    }

    async fn pending(&self, user: UserId, limit: u32) -> Result<Vec<Message>, InboxError> {
        let _t = self.metrics.time_query("inbox_pending");
        let rows = sqlx::query(
            "SELECT message_id, group_id, sender_id, content, sent_at_ms FROM inbox \
             WHERE user_id = ? AND expires_at_ms > ? ORDER BY message_id LIMIT ?",
        )
        .bind(user)
        .bind(now_ms())
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Message {
                    message_id: r.try_get(0)?,
                    group_id: r.try_get(1)?,
                    sender_id: r.try_get(2)?,
                    content: r.try_get(3)?,
                    sent_at_ms: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn remove(&self, delivered: &[(UserId, MessageId)]) -> Result<(), InboxError> {
        let _t = self.metrics.time_query("inbox_remove");
        // Grouped by message: a group message is delivered to all its members at about the
        // same time, so one `message_id = ? AND user_id IN (...)` term covers them all, which
        // is far cheaper for the database to plan than one OR term per entry.
        let mut by_message: BTreeMap<MessageId, Vec<UserId>> = BTreeMap::new();
        for (user, message) in delivered {
            by_message.entry(*message).or_default().push(*user);
        }
        let mut terms = Vec::new();
        let mut binds: Vec<i64> = Vec::new();
        for (message, users) in by_message {
            for users in users.chunks(CHUNK) {
                terms.push(format!("(message_id = ? AND user_id IN ({}))", placeholders(users.len())));
                binds.push(message);
                binds.extend_from_slice(users);
                if binds.len() >= CHUNK {
                    self.delete_where(&std::mem::take(&mut terms), &std::mem::take(&mut binds)).await?;
                }
            }
        }
        if !terms.is_empty() {
            self.delete_where(&terms, &binds).await?;
        }
        Ok(())
    }

    async fn remove_message(&self, message: MessageId) -> Result<(), InboxError> {
        sqlx::query("DELETE FROM inbox WHERE message_id = ?").bind(message).execute(&self.db.pool).await?;
        Ok(())
    }

    async fn sweep(&self) -> Result<u64, InboxError> {
        let _t = self.metrics.time_query("inbox_sweep");
        let pool = &self.db.pool;
        let mut removed = sqlx::query("DELETE FROM inbox WHERE expires_at_ms <= ?")
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected();
        let over = sqlx::query("SELECT user_id FROM inbox GROUP BY user_id HAVING COUNT(*) > ?")
            .bind(i64::from(self.limits.max_per_user))
            .fetch_all(pool)
            .await?;
        for row in over {
            let user: UserId = row.try_get(0)?;
            // The oldest id to keep; everything older goes. Two statements because MySQL
            // cannot read the table it deletes from in a subquery.
            let keep_from: MessageId =
                sqlx::query("SELECT message_id FROM inbox WHERE user_id = ? ORDER BY message_id DESC LIMIT 1 OFFSET ?")
                    .bind(user)
                    .bind(i64::from(self.limits.max_per_user) - 1)
                    .fetch_one(pool)
                    .await?
                    .try_get(0)?;
            removed += sqlx::query("DELETE FROM inbox WHERE user_id = ? AND message_id < ?")
                .bind(user)
                .bind(keep_from)
                .execute(pool)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }

    async fn pending_total(&self) -> Result<u64, InboxError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM inbox").fetch_one(&self.db.pool).await?.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    async fn ping(&self) -> Result<(), InboxError> {
        sqlx::query("SELECT 1").execute(&self.db.pool).await?;
        Ok(())
    }
}
