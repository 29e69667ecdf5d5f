//! Positions as a table (`positions`) in the store's database.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};

use super::{Inbox, InboxError, Position};
use crate::metrics::Metrics;
use crate::model::{GroupId, Seq, UserId};
use crate::store::{Database, Dialect, MAX_SHAPE, padded, placeholders, retrying};

pub struct SqlInbox {
    db: Database,
    metrics: Arc<Metrics>,
}

impl SqlInbox {
    pub fn new(db: Database, metrics: Arc<Metrics>) -> Self {
        Self { db, metrics }
    }
}

#[async_trait]
impl Inbox for SqlInbox {
    async fn positions(&self, users: &[UserId]) -> Result<HashMap<UserId, HashMap<GroupId, Seq>>, InboxError> {
        let _t = self.metrics.time_query("inbox_positions");
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        let mut positions: HashMap<UserId, HashMap<GroupId, Seq>> = HashMap::new();
        for chunk in users.chunks(MAX_SHAPE) {
            let chunk: Vec<&UserId> = padded(chunk).collect();
            let sql = format!(
                "SELECT user_id, group_id, seq FROM positions WHERE user_id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(*u);
            }
            for r in q.fetch_all(&self.db.pool).await? {
                positions.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
            }
        }
        Ok(positions)
    }

    async fn advance(&self, positions: &[Position]) -> Result<(), InboxError> {
        let _t = self.metrics.time_query("inbox_advance");
        let mut rows = positions.to_vec();
        // Key order, so concurrent batches take row locks in the same order.
        rows.sort_unstable_by_key(|p| (p.user_id, p.group_id));
        let upsert = match self.db.dialect {
            Dialect::MySql => "ON DUPLICATE KEY UPDATE seq = GREATEST(seq, VALUES(seq))",
            Dialect::Sqlite => "ON CONFLICT (user_id, group_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        };
        for chunk in rows.chunks(MAX_SHAPE) {
            let chunk: Vec<&Position> = padded(chunk).collect();
            let sql = format!(
                "INSERT INTO positions (user_id, group_id, seq) VALUES {} {upsert}",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            retrying(|| {
                let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
                for p in &chunk {
                    q = q.bind(p.user_id).bind(p.group_id).bind(p.seq);
                }
                q.execute(&self.db.pool)
            })
            .await?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), InboxError> {
        sqlx::query("SELECT 1").execute(&self.db.pool).await?;
        Ok(())
    }
}
