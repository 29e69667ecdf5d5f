//! One `Backplane` conformance suite, run against the in-process backplane (two nodes on one
//! bus) and Redis (two nodes on one server); plus Redis-only recovery after the pub/sub
//! connection is killed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard::backplane::{Backplane, Channel, Event, MemoryBackplane, MemoryBus, RedisBackplane};
use switchboard::metrics::Metrics;
use tokio::sync::mpsc;

type Node = (Arc<dyn Backplane>, mpsc::Receiver<Event>);

async fn next_payload(rx: &mut mpsc::Receiver<Event>, within: Duration) -> Option<(Channel, Bytes)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await.ok()?? {
            Event::Payload { channel, payload } => return Some((channel, payload)),
            Event::Resynced => continue,
        }
    }
}

/// Waits (up to 10 s) for the next `Resynced`.
async fn resynced(rx: &mut mpsc::Receiver<Event>) -> bool {
    let wait = async {
        while let Some(event) = rx.recv().await {
            if matches!(event, Event::Resynced) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or(false)
}

fn random_id() -> i64 {
    use rand::RngExt;
    rand::rng().random_range(1_000_000..i64::MAX / 2)
}

async fn suite((a, mut a_rx): Node, (b, mut b_rx): Node) {
    a.ping().await.expect("ping");
    let g = Channel::Group(random_id());
    let other = Channel::User(random_id());

    // Subscribed twice, delivered once; the publisher's node does not get it.
    b.subscribe(g);
    b.subscribe(g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"one"))]).await.expect("publish");
    assert_eq!(next_payload(&mut b_rx, Duration::from_secs(3)).await, Some((g, Bytes::from_static(b"one"))));
    assert_eq!(next_payload(&mut b_rx, Duration::from_millis(300)).await, None, "delivered twice");
    assert_eq!(next_payload(&mut a_rx, Duration::from_millis(100)).await, None, "unsubscribed node got it");

    // Publishing where nobody listens is fine; other channels stay separate.
    a.publish(&[(other, Bytes::from_static(b"nobody"))]).await.expect("publish");
    assert_eq!(next_payload(&mut b_rx, Duration::from_millis(200)).await, None);

    // Order is kept, within a pipelined batch and across publishes.
    for i in 0..100u32 {
        a.publish(&[(g, Bytes::from(i.to_string()))]).await.expect("publish");
    }
    let batch: Vec<(Channel, Bytes)> =
        (100..200u32).flat_map(|i| [(g, Bytes::from(i.to_string())), (other, Bytes::from_static(b"x"))]).collect();
    a.publish(&batch).await.expect("pipelined publish");
    for i in 0..200u32 {
        let (_, p) = next_payload(&mut b_rx, Duration::from_secs(3)).await.expect("ordered payload");
        assert_eq!(p, Bytes::from(i.to_string()));
    }

    // Unsubscribe, then subscribe again in the same breath: the last wish wins.
    b.unsubscribe(g);
    b.subscribe(g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"still"))]).await.expect("publish");
    assert_eq!(
        next_payload(&mut b_rx, Duration::from_secs(3)).await.map(|(_, p)| p),
        Some(Bytes::from_static(b"still"))
    );
    b.unsubscribe(g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"gone"))]).await.expect("publish");
    assert_eq!(next_payload(&mut b_rx, Duration::from_millis(300)).await, None, "delivered after unsubscribe");
}

fn memory_pair() -> (Node, Node) {
    let bus = MemoryBus::new();
    let (ta, ra) = mpsc::channel(1024);
    let (tb, rb) = mpsc::channel(1024);
    let a: Arc<dyn Backplane> = Arc::new(MemoryBackplane::new(bus.clone(), ta));
    let b: Arc<dyn Backplane> = Arc::new(MemoryBackplane::new(bus, tb));
    ((a, ra), (b, rb))
}

fn redis_node(url: &str) -> Node {
    let (tx, rx) = mpsc::channel(1024);
    let client = redis::Client::open(url).expect("redis url");
    let b: Arc<dyn Backplane> =
        Arc::new(RedisBackplane::connect(client, "conformance:", tx, Arc::new(Metrics::new("t"))).expect("redis"));
    (b, rx)
}

#[tokio::test]
async fn memory_backplane_conforms() {
    let (a, b) = memory_pair();
    suite(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backplane_conforms() {
    let Some(url) = common::redis_url() else { return };
    suite(redis_node(&url), redis_node(&url)).await;
}

/// Killing the pub/sub connection makes the backplane reconnect, resubscribe, say
/// `Resynced`, and deliver again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backplane_resubscribes_after_a_lost_connection() {
    if common::redis_url().is_none() {
        return;
    }
    // A private Redis: killing every pub/sub connection must not disturb the other tests.
    let redis = common::services::redis().await;
    let url = redis.url();
    let (a, _a_rx) = redis_node(&url);
    let (b, mut b_rx) = redis_node(&url);
    let g = Channel::Group(random_id());
    b.subscribe(g);
    b.barrier().await;
    // The first connect also says Resynced (sessions may have arrived before it).
    assert!(resynced(&mut b_rx).await, "no Resynced after the first connect");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.expect("client kill");
    assert!(killed >= 1);
    assert!(resynced(&mut b_rx).await, "no Resynced after the pub/sub connection was killed");
    a.publish(&[(g, Bytes::from_static(b"after"))]).await.expect("publish");
    assert_eq!(
        next_payload(&mut b_rx, Duration::from_secs(3)).await.map(|(_, p)| p),
        Some(Bytes::from_static(b"after"))
    );
}
