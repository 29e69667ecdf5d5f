//! One `Inbox` conformance suite, run against every backend: positions in a SQL table on
//! SQLite and on MySQL, and in MongoDB on the wire-compatible stand-in.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard::inbox::{Inbox, MongoInbox, Position, Recorder, SqlInbox};
use switchboard::metrics::Metrics;
use switchboard::store::Database;
use switchboard::tls::Trust;

fn at(user_id: i64, group_id: i64, seq: i64) -> Position {
    Position { user_id, group_id, seq }
}

async fn sql(url: &str) -> Arc<dyn Inbox> {
    let db = Database::connect(url).await.expect("connect");
    Arc::new(SqlInbox::new(db, Arc::new(Metrics::new("t"))))
}

async fn suite(inbox: Arc<dyn Inbox>) {
    inbox.ping().await.expect("ping");
    positions_start_at_zero_and_only_move_forward(&*inbox).await;
    large_batches_are_written_whole(&*inbox).await;
    the_recorder_coalesces_and_writes_on_its_tick(inbox).await;
}

/// One user's positions.
async fn of(inbox: &dyn Inbox, user: i64) -> HashMap<i64, i64> {
    inbox.positions(&[user]).await.expect("positions").remove(&user).unwrap_or_default()
}

async fn positions_start_at_zero_and_only_move_forward(inbox: &dyn Inbox) {
    assert!(of(inbox, 10).await.is_empty());
    inbox.advance(&[at(10, 1, 5), at(10, 2, 3), at(11, 1, 7)]).await.expect("advance");
    assert_eq!(of(inbox, 10).await, HashMap::from([(1, 5), (2, 3)]));
    // A late or repeated write never moves a position back; a later one moves it on.
    inbox.advance(&[at(10, 1, 4), at(10, 2, 9), at(11, 1, 7)]).await.expect("mixed");
    assert_eq!(of(inbox, 10).await, HashMap::from([(1, 5), (2, 9)]));
    assert_eq!(of(inbox, 11).await, HashMap::from([(1, 7)]));
    // Many users in one read: each gets its own, one without positions is absent.
    let both = inbox.positions(&[11, 10, 12, 10]).await.expect("many");
    assert_eq!(both, HashMap::from([(10, HashMap::from([(1, 5), (2, 9)])), (11, HashMap::from([(1, 7)]))]));
}

async fn large_batches_are_written_whole(inbox: &dyn Inbox) {
    let many: Vec<Position> = (0..2500).map(|u| at(1000 + u, 3, u + 1)).collect();
    inbox.advance(&many).await.expect("bulk");
    assert_eq!(of(inbox, 1000).await, HashMap::from([(3, 1)]));
    assert_eq!(of(inbox, 3499).await, HashMap::from([(3, 2500)]));
}

async fn the_recorder_coalesces_and_writes_on_its_tick(inbox: Arc<dyn Inbox>) {
    let metrics = Arc::new(Metrics::new("t"));
    let recorder = Recorder::spawn(inbox.clone(), Duration::from_millis(100), metrics.clone());
    for seq in 1..=50 {
        recorder.record(20, 4, seq);
    }
    recorder.record(20, 5, 2);
    let want = HashMap::from([(4, 50), (5, 2)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while of(&*inbox, 20).await != want {
        assert!(tokio::time::Instant::now() < deadline, "positions not written within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A tick may fall between the records, so two or three writes, never one per delivery.
    assert!(metrics.positions_written.get() <= 3, "50 deliveries cost {} rows", metrics.positions_written.get());
    // What is still recorded at shutdown is written by the final flush.
    recorder.record(20, 4, 60);
    recorder.flush().await;
    assert_eq!(of(&*inbox, 20).await[&4], 60);
}

#[tokio::test]
async fn sql_inbox_on_sqlite_conforms() {
    let (url, _dir) = common::sqlite_url();
    suite(sql(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB; scripts/test runs it"]
async fn sql_inbox_on_mysql_conforms() {
    let url = common::mysql_url();
    suite(sql(&url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the MongoDB stand-in; scripts/test runs it"]
async fn mongo_inbox_conforms() {
    let url = common::mongo_url();
    let inbox = MongoInbox::connect(&url, &Trust::default(), Arc::new(Metrics::new("t"))).await.expect("mongo");
    suite(Arc::new(inbox)).await;
}
