//! The inbox on MongoDB, the seed's "MongoDB for offline message storage".
//!
//! One document per (recipient, message), self-contained so replay needs no SQL. `_id` is
//! `"{user}:{message}"`, which makes appends idempotent and removals a plain `$in`. Indexes:
//! `(user_id, message_id)` for ordered replay, a TTL index on `expires_at`, and `message_id`
//! for the rare compensation delete. Expiry is also enforced by the sweep and by replay's
//! filter, so correctness never waits on the server's TTL monitor.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Collection, IndexModel};

use super::{Inbox, InboxError, Limits};
use crate::metrics::Metrics;
use crate::model::{Message, MessageId, UserId, now_ms};
use crate::tls::Trust;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;
/// Ids per removal statement.
const CHUNK: usize = 1000;

pub struct MongoInbox {
    coll: Collection<Document>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

fn key(user: UserId, message: MessageId) -> String {
    format!("{user}:{message}")
}

impl MongoInbox {
    /// Connects and ensures the indexes. The database is the URL's, else `switchboard`.
    pub async fn connect(url: &str, trust: &Trust, limits: Limits, metrics: Arc<Metrics>) -> Result<Self, InboxError> {
        let mut options = ClientOptions::parse(url).await?;
        let ca_bundle = trust.mongo(&mut options).map_err(mongodb::error::Error::from)?;
        // Fail fast while MongoDB is away, so a send answers 503 instead of hanging.
        options.server_selection_timeout = Some(Duration::from_secs(2));
        options.connect_timeout = Some(Duration::from_secs(2));
        options.app_name = Some("switchboard".into());
        let client = mongodb::Client::with_options(options)?;
        drop(ca_bundle);
        let db = client.default_database().unwrap_or_else(|| client.database("switchboard"));
        let coll = db.collection::<Document>("inbox");
        let inbox = Self { coll, limits, metrics };
        inbox.ensure_indexes().await?;
        Ok(inbox)
    }

    async fn ensure_indexes(&self) -> Result<(), InboxError> {
        let indexes = [
            IndexModel::builder().keys(doc! { "user_id": 1, "message_id": 1 }).build(),
            IndexModel::builder().keys(doc! { "message_id": 1 }).build(),
            IndexModel::builder()
                .keys(doc! { "expires_at": 1 })
                .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                .build(),
        ];
        self.coll.create_indexes(indexes).await?;
        Ok(())
    }
}

fn message_from_doc(d: &Document) -> Option<Message> {
    Some(Message {
        message_id: d.get_i64("message_id").ok()?,
        group_id: d.get_i64("group_id").ok()?,
        sender_id: d.get_i64("sender_id").ok()?,
        content: d.get_str("content").ok()?.to_owned(),
        sent_at_ms: d.get_i64("sent_at_ms").ok()?,
    })
}

#[async_trait]
impl Inbox for MongoInbox {
    async fn append_batch(&self, batch: &[(Message, Vec<UserId>)]) -> Result<(), InboxError> {
        let docs: Vec<Document> = batch
            .iter()
            .flat_map(|(m, users)| {
                let expires = DateTime::from_millis(m.sent_at_ms + self.limits.ttl_ms);
                users.iter().map(move |&user| {
                    doc! {
                        "_id": key(user, m.message_id),
                        "user_id": user,
                        "message_id": m.message_id,
                        "group_id": m.group_id,
                        "sender_id": m.sender_id,
                        "content": &m.content,
                        "sent_at_ms": m.sent_at_ms,
                        "expires_at": expires,
                    }
                })
            })
            .collect();
        if docs.is_empty() {
            return Ok(());
        }
        let _t = self.metrics.time_query("inbox_append");
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // Entries already there (a retried send) are what we wanted.
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure.write_errors.as_ref().is_some_and(|w| w.iter().all(|x| x.code == DUPLICATE_KEY)) =>
                {
                    Ok(())
                }
                _ => Err(e.into()),
            },
        }
    }

    async fn pending(&self, user: UserId, limit: u32) -> Result<Vec<Message>, InboxError> {
        let _t = self.metrics.time_query("inbox_pending");
        let filter = doc! { "user_id": user, "expires_at": { "$gt": DateTime::from_millis(now_ms()) } };
        let docs: Vec<Document> =
            self.coll.find(filter).sort(doc! { "message_id": 1 }).limit(i64::from(limit)).await?.try_collect().await?;
        let mut out: Vec<Message> = docs.iter().filter_map(message_from_doc).collect();
        out.sort_unstable_by_key(|m| m.message_id);
        Ok(out)
    }

    async fn remove(&self, delivered: &[(UserId, MessageId)]) -> Result<(), InboxError> {
        let _t = self.metrics.time_query("inbox_remove");
        for chunk in delivered.chunks(CHUNK) {
            let ids: Vec<Bson> = chunk.iter().map(|(u, m)| Bson::String(key(*u, *m))).collect();
            self.coll.delete_many(doc! { "_id": { "$in": ids } }).await?;
        }
        Ok(())
    }

    async fn remove_message(&self, message: MessageId) -> Result<(), InboxError> {
        self.coll.delete_many(doc! { "message_id": message }).await?;
        Ok(())
    }

    async fn sweep(&self) -> Result<u64, InboxError> {
        let _t = self.metrics.time_query("inbox_sweep");
        let now = DateTime::from_millis(now_ms());
        let mut removed = self.coll.delete_many(doc! { "expires_at": { "$lte": now } }).await?.deleted_count;
        let max = i64::from(self.limits.max_per_user);
        let over: Vec<Document> = self
            .coll
            .aggregate([
                doc! { "$group": { "_id": "$user_id", "n": { "$sum": 1 } } },
                doc! { "$match": { "n": { "$gt": max } } },
            ])
            .await?
            .try_collect()
            .await?;
        for row in over {
            let Ok(user) = row.get_i64("_id") else {
                continue;
            };
            let newest: Vec<Document> = self
                .coll
                .find(doc! { "user_id": user })
                .sort(doc! { "message_id": -1 })
                .skip((max - 1) as u64)
                .limit(1)
                .await?
                .try_collect()
                .await?;
            let Some(keep_from) = newest.first().and_then(|d| d.get_i64("message_id").ok()) else {
                continue;
            };
            removed += self
                .coll
                .delete_many(doc! { "user_id": user, "message_id": { "$lt": keep_from } })
                .await?
                .deleted_count;
        }
        Ok(removed)
    }

    async fn pending_total(&self) -> Result<u64, InboxError> {
        Ok(self.coll.estimated_document_count().await?)
    }

    async fn ping(&self) -> Result<(), InboxError> {
        self.coll.find_one(doc! { "_id": "ping" }).await?;
        Ok(())
    }
}
