//! One `Store` conformance suite, run against every backend: SQLite under a plain
//! `cargo test`, MySQL (MariaDB) too under `scripts/test` (`--include-ignored`). Each part of
//! the contract is its own test on a fresh store (`sqlite::batch_insert`, `mysql::...`).

mod common;

use std::sync::Arc;

use common::step;
use switchboard::metrics::Metrics;
use switchboard::model::{Group, Message, User};
use switchboard::store::{Database, NewMessage, Page, SqlStore, Store, StoreError};

async fn open(url: &str) -> Arc<dyn Store> {
    let db = Database::connect(url).await.expect("connect and migrate");
    Arc::new(SqlStore::new(db, Arc::new(Metrics::new("test"))))
}

fn msg(group: i64, sender: i64, content: &str, client: Option<&str>) -> NewMessage {
    NewMessage {
        group_id: group,
        sender_id: sender,
        content: content.into(),
        client_msg_id: client.map(Into::into),
        sent_at_ms: switchboard::model::now_ms(),
    }
}

/// One message: a batch of one.
async fn insert_one(store: &dyn Store, message: NewMessage) -> Result<(Message, bool), StoreError> {
    store.insert_messages(vec![message]).await.pop().expect("one result per message")
}

/// The contract, one test per part, each on a fresh store of every backend: SQLite
/// (`sqlite::*`), and, ignored under a plain `cargo test`, MySQL (`mysql::*`) and MySQL where
/// one multi-row insert may not get consecutive ids (`mysql_without_consecutive_ids::*`,
/// InnoDB's `innodb_autoinc_lock_mode = 2`: ids are read back by (group, seq)). A test that
/// needs what earlier parts created runs them first, as named steps.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let (url, _dir) = crate::common::sqlite_url();
                    super::$test(&crate::open(&url).await).await;
                }
            )*
        }

        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs MariaDB; scripts/test runs it"]
                async fn $test() {
                    super::$test(&crate::open(&crate::common::mysql_url()).await).await;
                }
            )*
        }

        mod mysql_without_consecutive_ids {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs MariaDB; scripts/test runs it"]
                async fn $test() {
                    let url = crate::common::mysql_url();
                    let mut db = switchboard::store::Database::connect(&url).await.expect("connect and migrate");
                    assert!(db.consecutive_ids, "MariaDB's default lock mode gives consecutive ids");
                    db.consecutive_ids = false;
                    let store: std::sync::Arc<dyn switchboard::store::Store> = std::sync::Arc::new(
                        switchboard::store::SqlStore::new(db, std::sync::Arc::new(switchboard::metrics::Metrics::new("test"))),
                    );
                    super::$test(&store).await;
                }
            )*
        }
    };
}

on_every_backend!(
    ping_and_users,
    one_group_per_pair,
    create_group_race,
    larger_groups_and_listings,
    messages_and_history_pages,
    batch_insert,
    concurrent_senders_get_unique_ids,
    group_logs_and_catch_up_reads,
);

async fn ping_and_users(store: &Arc<dyn Store>) {
    store.ping().await.expect("ping");
    users(store).await;
}

async fn one_group_per_pair(store: &Arc<dyn Store>) {
    let (alice, bob, _) = users(store).await;
    pair_group(store, &alice, &bob).await;
}

async fn create_group_race(store: &Arc<dyn Store>) {
    race(store).await;
}

async fn larger_groups_and_listings(store: &Arc<dyn Store>) {
    let (alice, bob, carol) = users(store).await;
    let g = pair_group(store, &alice, &bob).await;
    larger_groups(store, &alice, &bob, &carol, &g).await;
}

async fn messages_and_history_pages(store: &Arc<dyn Store>) {
    let (alice, bob, _) = users(store).await;
    let g = pair_group(store, &alice, &bob).await;
    messages(store, &alice, &bob, &g).await;
}

async fn batch_insert(store: &Arc<dyn Store>) {
    let (alice, bob, carol) = users(store).await;
    let g = pair_group(store, &alice, &bob).await;
    let big = larger_groups(store, &alice, &bob, &carol, &g).await;
    step("messages", messages(store, &alice, &bob, &g)).await;
    batch(store, &alice, &bob, &carol, &g, &big).await;
}

async fn concurrent_senders_get_unique_ids(store: &Arc<dyn Store>) {
    let (alice, bob, _) = users(store).await;
    let g = pair_group(store, &alice, &bob).await;
    concurrent_senders(store, &alice, &bob, &g).await;
}

/// After every kind of write above, each group's log is gap-free and catch-up reads agree.
async fn group_logs_and_catch_up_reads(store: &Arc<dyn Store>) {
    let (alice, bob, carol) = step("users", users(store)).await;
    let g = step("pair group", pair_group(store, &alice, &bob)).await;
    let big = step("larger groups", larger_groups(store, &alice, &bob, &carol, &g)).await;
    step("messages", messages(store, &alice, &bob, &g)).await;
    step("batch insert", batch(store, &alice, &bob, &carol, &g, &big)).await;
    step("concurrent senders", concurrent_senders(store, &alice, &bob, &g)).await;
    step("group logs are gap-free", group_log_is_gap_free(store, g.group_id, big.group_id)).await;
    step("catch-up reads", catch_up_reads_above_positions(store, bob.user_id, g.group_id, big.group_id)).await;
}

async fn users(store: &Arc<dyn Store>) -> (User, User, User) {
    let alice = store.create_user(&common::unique("alice")).await.expect("alice");
    let bob = store.create_user(&common::unique("bob")).await.expect("bob");
    let carol = store.create_user(&common::unique("carol")).await.expect("carol");
    assert!(bob.user_id > alice.user_id);
    assert!(matches!(store.create_user(&alice.username).await, Err(StoreError::UsernameTaken)));
    assert_eq!(store.user(alice.user_id).await.expect("get"), Some(alice.clone()));
    assert_eq!(store.user(i64::MAX).await.expect("get"), None);
    let odd = "Robert'); DROP TABLE users;-- ☃";
    assert_eq!(store.create_user(odd).await.expect("verbatim").username, odd);

    // By exact name (no case folding, no padding, no prefix), and many by id at once.
    assert_eq!(store.user_by_name(&bob.username).await.expect("by name"), Some(bob.clone()));
    assert_eq!(store.user_by_name(odd).await.expect("odd").map(|u| u.username), Some(odd.to_owned()));
    for near in [bob.username.to_uppercase(), format!("{} ", bob.username), bob.username[..5].to_owned()] {
        assert_eq!(store.user_by_name(&near).await.expect("near"), None, "{near:?}");
    }
    let named = store.users(&[carol.user_id, alice.user_id, i64::MAX, carol.user_id]).await.expect("users");
    assert_eq!(named, vec![alice.clone(), carol.clone()]);
    assert_eq!(store.users(&[]).await.expect("no ids"), vec![]);
    (alice, bob, carol)
}

/// A pair gets one conversation, however it is asked for.
async fn pair_group(store: &Arc<dyn Store>, alice: &User, bob: &User) -> Group {
    let (g, created) = store.create_group("chat", alice.user_id, &[bob.user_id]).await.expect("group");
    assert!(created);
    assert_eq!(g.members, vec![alice.user_id, bob.user_id]);
    let (again, created) = store.create_group("other name", bob.user_id, &[alice.user_id]).await.expect("again");
    assert!(!created);
    assert_eq!(again.group_id, g.group_id);
    assert_eq!(again.name, "chat");
    g
}

/// Twenty racing calls for a new pair agree on one group, enforced by the database.
async fn race(store: &Arc<dyn Store>) {
    let (dave, erin) = (
        store.create_user(&common::unique("dave")).await.expect("dave").user_id,
        store.create_user(&common::unique("erin")).await.expect("erin").user_id,
    );
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let (by, other) = if i % 2 == 0 { (dave, erin) } else { (erin, dave) };
            tokio::spawn(async move { store.create_group("race", by, &[other]).await.expect("race").0.group_id })
        })
        .collect();
    let mut ids = Vec::new();
    for r in racers {
        ids.push(r.await.expect("join"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "racing create_group calls made {ids:?}");
    assert_eq!(store.group_members(ids[0]).await.expect("members"), Some(vec![dave, erin]));
}

/// Larger groups are never deduplicated; unknown members are named; listings and heads.
async fn larger_groups(store: &Arc<dyn Store>, alice: &User, bob: &User, carol: &User, g: &Group) -> Group {
    let (big, _) = store.create_group("trio", alice.user_id, &[bob.user_id, carol.user_id]).await.expect("trio");
    let (big2, _) = store.create_group("trio", alice.user_id, &[bob.user_id, carol.user_id]).await.expect("trio2");
    assert_ne!(big.group_id, big2.group_id);
    match store.create_group("x", alice.user_id, &[i64::MAX - 1]).await {
        Err(StoreError::UnknownUsers(ids)) => assert_eq!(ids, vec![i64::MAX - 1]),
        other => panic!("expected UnknownUsers, got {other:?}"),
    }
    assert_eq!(store.group_members(i64::MAX).await.expect("none"), None);
    assert_eq!(
        store.group(g.group_id).await.expect("group").map(|g| g.members),
        Some(vec![alice.user_id, bob.user_id])
    );

    let groups = store.user_groups(alice.user_id).await.expect("user groups");
    let ids: Vec<i64> = groups.iter().map(|g| g.group_id).collect();
    assert_eq!(ids, vec![g.group_id, big.group_id, big2.group_id]);
    assert_eq!(groups[1].members.len(), 3);
    let mut heads = store.group_heads(&[bob.user_id, alice.user_id]).await.expect("heads");
    let mut bobs = heads.remove(&bob.user_id).unwrap_or_default();
    bobs.sort_unstable();
    assert_eq!(bobs, vec![(g.group_id, 0), (big.group_id, 0), (big2.group_id, 0)]);
    assert_eq!(heads.remove(&alice.user_id).map(|h| h.len()), Some(3), "each user gets their own");
    big
}

/// Messages: ids increase, client_msg_id is idempotent, history pages in id order.
async fn messages(store: &Arc<dyn Store>, alice: &User, bob: &User, g: &Group) {
    let mut sent = Vec::new();
    for i in 0..10 {
        let (m, created) =
            insert_one(&**store, msg(g.group_id, alice.user_id, &format!("m{i}"), None)).await.expect("insert");
        assert!(created);
        sent.push(m);
    }
    assert!(sent.windows(2).all(|w| w[0].message_id < w[1].message_id));
    let (first, created) =
        insert_one(&**store, msg(g.group_id, bob.user_id, "once", Some("c-1"))).await.expect("first");
    assert!(created);
    let (retry, created) =
        insert_one(&**store, msg(g.group_id, bob.user_id, "once", Some("c-1"))).await.expect("retry");
    assert!(!created);
    assert_eq!(retry, first);
    assert!(matches!(
        insert_one(&**store, msg(g.group_id, bob.user_id, "different", Some("c-1"))).await,
        Err(StoreError::ClientMsgIdReused)
    ));
    // Another sender may use the same client id.
    assert!(insert_one(&**store, msg(g.group_id, alice.user_id, "once", Some("c-1"))).await.expect("other").1);

    let all = store.messages(g.group_id, Page { after: None, before: None, limit: 500 }).await.expect("all");
    assert_eq!(all.len(), 12);
    assert!(all.windows(2).all(|w| w[0].message_id < w[1].message_id));
    let latest = store.messages(g.group_id, Page { after: None, before: None, limit: 3 }).await.expect("latest");
    assert_eq!(
        latest.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        all[9..].iter().map(|m| m.message_id).collect::<Vec<_>>()
    );
    let after = store
        .messages(g.group_id, Page { after: Some(sent[2].message_id), before: None, limit: 2 })
        .await
        .expect("after");
    assert_eq!(after.iter().map(|m| &m.content[..]).collect::<Vec<_>>(), vec!["m3", "m4"]);
    let before = store
        .messages(g.group_id, Page { after: None, before: Some(sent[2].message_id), limit: 10 })
        .await
        .expect("before");
    assert_eq!(before.iter().map(|m| &m.content[..]).collect::<Vec<_>>(), vec!["m0", "m1"]);
    let weird = "'; DELETE FROM messages; -- <script>alert(1)</script> \u{1F600}";
    let (w, _) = insert_one(&**store, msg(g.group_id, alice.user_id, weird, None)).await.expect("weird");
    let rest = store.messages(g.group_id, Page { after: None, before: None, limit: 500 }).await.expect("rest");
    assert_eq!(rest.last().map(|m| m.content.as_str()), Some(weird));
    assert_eq!(rest.last().map(|m| m.message_id), Some(w.message_id));
}

/// A batch (group commit) across groups: one result per message, in order; a client_msg_id
/// repeated inside the batch returns the first, a reused one (bob's `c-1` of [`messages`]) is
/// refused.
async fn batch(store: &Arc<dyn Store>, alice: &User, bob: &User, carol: &User, g: &Group, big: &Group) {
    // A batch (group commit) across groups: one result per message, in order; a
    // client_msg_id repeated inside the batch returns the first, a reused one is refused.
    let batch = vec![
        msg(g.group_id, alice.user_id, "b1", Some("batch-1")),
        msg(big.group_id, carol.user_id, "b2", None),
        msg(g.group_id, alice.user_id, "b1", Some("batch-1")),
        msg(g.group_id, bob.user_id, "changed", Some("c-1")),
        msg(big.group_id, bob.user_id, "b3", Some("batch-3")),
    ];
    let results = store.insert_messages(batch).await;
    assert_eq!(results.len(), 5);
    let first = results[0].as_ref().expect("b1");
    assert!(first.1);
    let again = results[2].as_ref().expect("b1 again");
    assert_eq!((again.0.message_id, again.1), (first.0.message_id, false));
    assert!(matches!(results[3], Err(StoreError::ClientMsgIdReused)));
    let (b2, b3) = (results[1].as_ref().expect("b2"), results[4].as_ref().expect("b3"));
    assert!(first.0.message_id < b2.0.message_id && b2.0.message_id < b3.0.message_id);
    assert_eq!(b3.0.group_id, big.group_id);
}

/// Concurrent senders in one group: every id unique.
async fn concurrent_senders(store: &Arc<dyn Store>, alice: &User, bob: &User, g: &Group) {
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let gid = g.group_id;
            let sender = if i % 2 == 0 { alice.user_id } else { bob.user_id };
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for j in 0..10 {
                    ids.push(
                        insert_one(&*store, msg(gid, sender, &format!("c{i}-{j}"), None))
                            .await
                            .expect("insert")
                            .0
                            .message_id,
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for w in writers {
        ids.extend(w.await.expect("join"));
    }
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

/// Every group's log is numbered 1, 2, 3, ... in id order, whatever the batching,
/// retries and concurrency above did; the group's head is its last number.
async fn heads_of(store: &Arc<dyn Store>, user: i64) -> Vec<(i64, i64)> {
    store.group_heads(&[user]).await.expect("heads").remove(&user).unwrap_or_default()
}

async fn group_log_is_gap_free(store: &Arc<dyn Store>, pair: i64, trio: i64) {
    for group in [pair, trio] {
        let log = store.messages(group, Page { after: None, before: None, limit: 500 }).await.expect("log");
        let seqs: Vec<i64> = log.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>(), "group {group}");
        let heads = heads_of(store, log[0].sender_id).await;
        assert!(heads.contains(&(group, log.len() as i64)), "head of {group} in {heads:?}");
    }
}

/// `messages_after` returns, in id order, each group's messages above its given position,
/// a gap-free prefix when cut by the limit, and nothing older than the window.
async fn catch_up_reads_above_positions(store: &Arc<dyn Store>, user: i64, pair: i64, trio: i64) {
    let log = |g| async move { store.messages(g, Page { after: None, before: None, limit: 500 }).await.expect("log") };
    let (pair_log, trio_log) = (log(pair).await, log(trio).await);
    let after = [(pair, pair_log.len() as i64 - 3), (trio, 0)];
    let got = store.messages_after(&after, 0, 1000).await.expect("after");
    let mut want: Vec<_> = pair_log[pair_log.len() - 3..].iter().chain(&trio_log).cloned().collect();
    want.sort_unstable_by_key(|m| m.message_id);
    assert_eq!(got, want);
    let cut = store.messages_after(&after, 0, 2).await.expect("cut");
    assert_eq!(cut, want[..2]);
    assert!(store.messages_after(&after, switchboard::model::now_ms() + 1, 10).await.expect("window").is_empty());
    assert!(store.messages_after(&[(pair, pair_log.len() as i64)], 0, 10).await.expect("none").is_empty());
    let heads = heads_of(store, user).await;
    assert!(heads.contains(&(pair, pair_log.len() as i64)));
}

/// A failing step names itself in the test's failure message.
#[tokio::test]
#[should_panic(expected = "step `the named step` failed: inner failure 7")]
async fn a_failing_step_is_named() {
    step("the named step", async { panic!("inner failure {}", 7) }).await;
}
