//! One `Inbox` conformance suite, run against every backend: the SQL inbox on SQLite and
//! on MySQL, and the MongoDB inbox on the wire-compatible stand-in.

mod common;

use std::sync::Arc;

use switchboard::inbox::{Inbox, Limits, MongoInbox, SqlInbox};
use switchboard::metrics::Metrics;
use switchboard::model::{Message, now_ms};
use switchboard::store::Database;
use switchboard::tls::Trust;

const LIMITS: Limits = Limits { ttl_ms: 60_000, max_per_user: 5 };

fn message(id: i64, sent_at_ms: i64) -> Message {
    Message { message_id: id, group_id: 7, sender_id: 1, content: format!("m{id} 'quoted' \u{2603}"), sent_at_ms }
}

async fn sql(url: &str) -> Arc<dyn Inbox> {
    let db = Database::connect(url).await.expect("connect");
    Arc::new(SqlInbox::new(db, LIMITS, Arc::new(Metrics::new("t"))))
}

async fn suite(inbox: Arc<dyn Inbox>) {
    inbox.ping().await.expect("ping");
    let now = now_ms();
    // Appended out of order, replayed in id order; entries are self-contained.
    for id in [3, 1, 2] {
        inbox.append(&message(id, now), &[10, 11]).await.expect("append");
    }
    // Idempotent: a retried send appends again without error or duplicates.
    inbox.append(&message(2, now), &[10, 11]).await.expect("append again");
    let pending = inbox.pending(10, 100).await.expect("pending");
    assert_eq!(pending.iter().map(|m| m.message_id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(pending[0], message(1, now));
    assert_eq!(inbox.pending(10, 2).await.expect("limited").len(), 2);
    assert_eq!(inbox.pending(99, 10).await.expect("nobody").len(), 0);
    assert_eq!(inbox.pending_total().await.expect("total"), 6);

    // Removal is per (user, message).
    inbox.remove(&[(10, 1), (10, 3), (11, 2), (12, 1)]).await.expect("remove");
    assert_eq!(inbox.pending(10, 10).await.expect("p").iter().map(|m| m.message_id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(inbox.pending(11, 10).await.expect("p").iter().map(|m| m.message_id).collect::<Vec<_>>(), vec![1, 3]);

    // Compensation removes a message for everyone.
    inbox.remove_message(3).await.expect("remove message");
    assert_eq!(inbox.pending(11, 10).await.expect("p").iter().map(|m| m.message_id).collect::<Vec<_>>(), vec![1]);

    // Expired entries are never replayed and the sweep deletes them; the per-user bound
    // keeps the newest.
    inbox.append(&message(4, now - LIMITS.ttl_ms - 1), &[20]).await.expect("old");
    assert!(inbox.pending(20, 10).await.expect("p").is_empty(), "expired entry replayed");
    for id in 100..108 {
        inbox.append(&message(id, now), &[30]).await.expect("many");
    }
    let removed = inbox.sweep().await.expect("sweep");
    assert_eq!(removed, 1 + 3, "one expired entry and three over the bound of five");
    let kept: Vec<i64> = inbox.pending(30, 100).await.expect("p").iter().map(|m| m.message_id).collect();
    assert_eq!(kept, vec![103, 104, 105, 106, 107]);

    // Big fan-out (more than one statement's worth of rows).
    let many: Vec<i64> = (1000..1700).collect();
    inbox.append(&message(500, now), &many).await.expect("fan-out");
    assert_eq!(inbox.pending(1699, 10).await.expect("p").len(), 1);
    let delivered: Vec<(i64, i64)> = many.iter().map(|u| (*u, 500)).collect();
    inbox.remove(&delivered).await.expect("bulk remove");
    assert!(inbox.pending(1000, 10).await.expect("p").is_empty());
}

#[tokio::test]
async fn sql_inbox_on_sqlite_conforms() {
    let (url, _dir) = common::sqlite_url();
    suite(sql(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_inbox_on_mysql_conforms() {
    let Some(url) = common::mysql_url() else { return };
    suite(sql(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_inbox_conforms() {
    let Some(url) = common::mongo_url() else { return };
    let inbox = MongoInbox::connect(&url, &Trust::default(), LIMITS, Arc::new(Metrics::new("t"))).await.expect("mongo");
    suite(Arc::new(inbox)).await;
}
