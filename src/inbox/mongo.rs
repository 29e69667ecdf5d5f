//! Positions on MongoDB, the production store for offline delivery.
//!
//! One small document per (user, group): `{_id: "user:group", user_id, group_id, seq}`,
//! indexed by `user_id` so a connecting session reads its user's positions in one query.
//! A batch of advances is one `update` command of many upserts with `$max`, so a late or
//! repeated write can never move a position back.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Collection, Database, IndexModel};
use std::sync::Arc;

use super::{Inbox, InboxError, Position};
use crate::metrics::Metrics;
use crate::model::{GroupId, Seq, UserId};
use crate::tls::Trust;

const COLLECTION: &str = "positions";
/// Upserts per `update` command.
const CHUNK: usize = 1000;

pub struct MongoInbox {
    db: Database,
    coll: Collection<Document>,
    metrics: Arc<Metrics>,
}

impl MongoInbox {
    /// Connects and ensures the index. The database is the URL's, else `switchboard`.
    pub async fn connect(url: &str, trust: &Trust, metrics: Arc<Metrics>) -> Result<Self, InboxError> {
        let mut options = ClientOptions::parse(url).await?;
        let ca_bundle = trust.mongo(&mut options).map_err(mongodb::error::Error::from)?;
        // Fail fast while MongoDB is away, so a connecting client hears 1011 and retries
        // instead of hanging.
        options.server_selection_timeout = Some(Duration::from_secs(2));
        options.connect_timeout = Some(Duration::from_secs(2));
        options.app_name = Some("switchboard".into());
        let client = mongodb::Client::with_options(options)?;
        drop(ca_bundle);
        let db = client.default_database().unwrap_or_else(|| client.database("switchboard"));
        let coll = db.collection::<Document>(COLLECTION);
        coll.create_index(IndexModel::builder().keys(doc! { "user_id": 1 }).build()).await?;
        Ok(Self { db, coll, metrics })
    }

    /// One `update` command; returns how many of its upserts failed.
    async fn upsert_max(&self, chunk: &[Position]) -> Result<usize, InboxError> {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|p| {
                // The filter names the user (a sharded collection's key, docs/scaling.md);
                // an insert takes `user_id` and `group_id` from it.
                doc! {
                    "q": { "_id": format!("{}:{}", p.user_id, p.group_id), "user_id": p.user_id, "group_id": p.group_id },
                    "u": { "$max": { "seq": p.seq } },
                    "upsert": true,
                }
            })
            .collect();
        let reply = self.db.run_command(doc! { "update": COLLECTION, "updates": updates, "ordered": false }).await?;
        if reply.get("writeConcernError").is_some() {
            return Err(InboxError::Refused(format!("write concern: {reply}")));
        }
        Ok(match reply.get("writeErrors") {
            Some(Bson::Array(errors)) => errors.len(),
            _ => 0,
        })
    }
}

#[async_trait]
impl Inbox for MongoInbox {
    async fn positions(&self, users: &[UserId]) -> Result<HashMap<UserId, HashMap<GroupId, Seq>>, InboxError> {
        let _t = self.metrics.time_query("inbox_positions");
        let mut positions: HashMap<UserId, HashMap<GroupId, Seq>> = HashMap::new();
        for chunk in users.chunks(CHUNK) {
            let docs: Vec<Document> = self.coll.find(doc! { "user_id": { "$in": chunk } }).await?.try_collect().await?;
            for d in &docs {
                if let (Ok(u), Ok(g), Ok(seq)) = (d.get_i64("user_id"), d.get_i64("group_id"), d.get_i64("seq")) {
                    positions.entry(u).or_default().insert(g, seq);
                }
            }
        }
        Ok(positions)
    }

    async fn advance(&self, positions: &[Position]) -> Result<(), InboxError> {
        let _t = self.metrics.time_query("inbox_advance");
        for chunk in positions.chunks(CHUNK) {
            // Two upserts of one new key may race (duplicate key); the second try finds the
            // document and applies `$max` to it.
            if self.upsert_max(chunk).await? > 0 && self.upsert_max(chunk).await? > 0 {
                return Err(InboxError::Refused("position upserts failed twice".into()));
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), InboxError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}
