//! One `Backplane` conformance suite, run in every routing mode (docs/routing.md) against
//! the in-process backplane (two nodes on one bus), Redis (two nodes on one server) and a
//! Redis Cluster (`sharded` and `node` mode); plus recovery after the pub/sub connection is
//! killed, in `node` mode after Redis restarts empty, and on the cluster after a master
//! fails over (in `node` mode with the presence store lost). The same suite runs on NATS: a
//! 3-server cluster with the two nodes on different servers, and recovery when a node's
//! server is killed with SIGKILL.
//!
//! What a node asks for it gets, once per publish and in order, in every mode. `group` and
//! `node` mode are also exact (a node gets nothing it did not ask for); `broadcast` is not,
//! by design: its hub filters. In `node` mode interest in a group is a member's presence:
//! the test directory makes user `g` the one member of group `g`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::services::RedisCluster;
use switchboard::backplane::{
    Backplane, Channel, Event, MemoryBackplane, MemoryBus, NatsBackplane, Partitions, RedisBackplane,
    RedisClusterBackplane, slot,
};
use switchboard::metrics::Metrics;
use switchboard::model::{GroupId, UserId};
use switchboard::routing::{self, Directory, Keyspace, PresenceConfig, Routing, Setup};
use tokio::sync::mpsc;

type Node = (Arc<dyn Backplane>, mpsc::Receiver<Event>);

async fn next_payload(rx: &mut mpsc::Receiver<Event>, within: Duration) -> Option<(Channel, Bytes)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await.ok()?? {
            Event::Payload { channel, payload } => return Some((channel, payload)),
            Event::Resynced | Event::CatchUp(_) => continue,
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

/// The users of the next `CatchUp`, if one comes `within`.
async fn catch_up(rx: &mut mpsc::Receiver<Event>, within: Duration) -> Option<Vec<UserId>> {
    let wait = async {
        while let Some(event) = rx.recv().await {
            if let Event::CatchUp(users) = event {
                return Some(users);
            }
        }
        None
    };
    tokio::time::timeout(within, wait).await.ok().flatten()
}

fn random_id() -> i64 {
    use rand::RngExt;
    rand::rng().random_range(1_000_000..i64::MAX / 2)
}

/// How a node of `mode` asks for a channel's publishes.
fn interest(mode: Routing, channel: Channel) -> Channel {
    match (mode, channel) {
        (Routing::Node, Channel::Group(g)) => Channel::User(g),
        _ => channel,
    }
}

async fn suite(mode: Routing, (a, mut a_rx): Node, (b, mut b_rx): Node) {
    a.ping().await.expect("ping");
    let exact = mode != Routing::Broadcast;
    let g = Channel::Group(random_id());
    let other = Channel::User(random_id());
    let wants_g = interest(mode, g);

    // Subscribed twice, delivered once; the publisher's node does not get it.
    b.subscribe(wants_g);
    b.subscribe(wants_g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"one"))]).await.expect("publish");
    assert_eq!(next_payload(&mut b_rx, Duration::from_secs(3)).await, Some((g, Bytes::from_static(b"one"))));
    assert_eq!(next_payload(&mut b_rx, Duration::from_millis(300)).await, None, "delivered twice");
    if exact {
        assert_eq!(next_payload(&mut a_rx, Duration::from_millis(100)).await, None, "unsubscribed node got it");
    }

    // Publishing where nobody listens is fine; other channels stay separate.
    a.publish(&[(other, Bytes::from_static(b"nobody"))]).await.expect("publish");
    if exact {
        assert_eq!(next_payload(&mut b_rx, Duration::from_millis(200)).await, None);
    } else {
        let got = next_payload(&mut b_rx, Duration::from_secs(3)).await;
        assert_eq!(got, Some((other, Bytes::from_static(b"nobody"))), "broadcast carries the logical channel");
    }

    // Order is kept, within a pipelined batch and across publishes.
    for i in 0..100u32 {
        a.publish(&[(g, Bytes::from(i.to_string()))]).await.expect("publish");
    }
    let batch: Vec<(Channel, Bytes)> =
        (100..200u32).flat_map(|i| [(g, Bytes::from(i.to_string())), (other, Bytes::from_static(b"x"))]).collect();
    a.publish(&batch).await.expect("pipelined publish");
    let mut i = 0u32;
    while i < 200 {
        let (c, p) = next_payload(&mut b_rx, Duration::from_secs(3)).await.expect("ordered payload");
        if c == other {
            assert!(!exact, "got a channel it did not ask for");
            continue;
        }
        assert_eq!((c, p), (g, Bytes::from(i.to_string())));
        i += 1;
    }
    // Whatever a broadcast node got besides is behind it now.
    while !exact && next_payload(&mut b_rx, Duration::from_millis(200)).await.is_some() {}

    // Unsubscribe, then subscribe again in the same breath: the last wish wins.
    b.unsubscribe(wants_g);
    b.subscribe(wants_g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"still"))]).await.expect("publish");
    assert_eq!(
        next_payload(&mut b_rx, Duration::from_secs(3)).await.map(|(_, p)| p),
        Some(Bytes::from_static(b"still"))
    );
    b.unsubscribe(wants_g);
    b.barrier().await;
    a.publish(&[(g, Bytes::from_static(b"gone"))]).await.expect("publish");
    if exact {
        assert_eq!(next_payload(&mut b_rx, Duration::from_millis(300)).await, None, "delivered after unsubscribe");
    }
}

/// The test directory: user `g` is the one member of group `g`.
struct Mirror;

#[async_trait]
impl Directory for Mirror {
    async fn members(&self, group: GroupId) -> Option<Vec<UserId>> {
        Some(vec![group])
    }
}

/// Puts a node of `mode` on a transport built by `connect` for the events it is given; its
/// presence store (`node` mode) in `keys`.
fn routed(
    mode: Routing,
    keys: Option<Keyspace>,
    connect: impl FnOnce(mpsc::Sender<Event>) -> Arc<dyn Backplane>,
) -> Node {
    let (routed, rx) = routed_with(mode, keys, Duration::ZERO, connect);
    (routed.backplane, rx)
}

fn routed_with(
    mode: Routing,
    keys: Option<Keyspace>,
    cache: Duration,
    connect: impl FnOnce(mpsc::Sender<Event>) -> Arc<dyn Backplane>,
) -> (routing::Routed, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(1024);
    let setup = Setup {
        mode,
        redis: keys.as_ref(),
        prefix: "conformance:",
        node: "n",
        presence: PresenceConfig { ttl: Duration::from_secs(2), cache },
        directory: Arc::new(Mirror),
        metrics: Arc::new(Metrics::new("t")),
    };
    (routing::build(setup, tx, |events| Ok(connect(events))).expect("routed backplane"), rx)
}

fn single(url: &str) -> Option<Keyspace> {
    Some(Keyspace::Redis(redis::Client::open(url).expect("redis url")))
}

fn memory_pair(mode: Routing) -> (Node, Node) {
    let bus = MemoryBus::new();
    let a = routed(mode, None, |tx| Arc::new(MemoryBackplane::new(bus.clone(), tx)));
    let b = routed(mode, None, |tx| Arc::new(MemoryBackplane::new(bus.clone(), tx)));
    (a, b)
}

fn redis_transport(url: &str, events: mpsc::Sender<Event>) -> Arc<dyn Backplane> {
    let client = redis::Client::open(url).expect("redis url");
    Arc::new(RedisBackplane::connect(client, "conformance:", events, Arc::new(Metrics::new("t"))).expect("redis"))
}

fn redis_node(mode: Routing, url: &str) -> Node {
    routed(mode, single(url), |tx| redis_transport(url, tx))
}

#[tokio::test]
async fn memory_backplane_conforms() {
    let (a, b) = memory_pair(Routing::Group);
    suite(Routing::Group, a, b).await;
}

#[tokio::test]
async fn memory_backplane_conforms_in_broadcast_mode() {
    let (a, b) = memory_pair(Routing::Broadcast);
    suite(Routing::Broadcast, a, b).await;
}

async fn redis_conforms(mode: Routing) {
    let url = common::redis_url();
    suite(mode, redis_node(mode, &url), redis_node(mode, &url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis; scripts/test runs it"]
async fn redis_backplane_conforms() {
    redis_conforms(Routing::Group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis; scripts/test runs it"]
async fn redis_backplane_conforms_in_node_mode() {
    redis_conforms(Routing::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis; scripts/test runs it"]
async fn redis_backplane_conforms_in_broadcast_mode() {
    redis_conforms(Routing::Broadcast).await;
}

/// Killing the pub/sub connection makes the backplane reconnect, resubscribe, say
/// `Resynced`, and deliver again; in `node` mode, so does a Redis restart that loses every
/// presence entry (the node writes its own again before saying `Resynced`).
async fn recovers(mode: Routing, restart: bool) {
    // A private Redis: killing every pub/sub connection must not disturb the other tests.
    let mut redis = common::services::redis().await;
    let url = redis.url();
    let (a, _a_rx) = redis_node(mode, &url);
    let (b, mut b_rx) = redis_node(mode, &url);
    let g = Channel::Group(random_id());
    b.subscribe(interest(mode, g));
    b.barrier().await;
    // The first connect also says Resynced (sessions may have arrived before it).
    assert!(resynced(&mut b_rx).await, "no Resynced after the first connect");
    if restart {
        redis.stop().await;
        redis.start().await;
    } else {
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("client kill");
        assert!(killed >= 1);
    }
    assert!(resynced(&mut b_rx).await, "no Resynced after the connection was lost");
    // The publisher's connection may still be finding its way back.
    let mut sent = false;
    for _ in 0..20 {
        if a.publish(&[(g, Bytes::from_static(b"after"))]).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent, "publish never succeeded again");
    assert_eq!(
        next_payload(&mut b_rx, Duration::from_secs(3)).await.map(|(_, p)| p),
        Some(Bytes::from_static(b"after"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn redis_backplane_resubscribes_after_a_lost_connection() {
    for mode in [Routing::Group, Routing::Node, Routing::Broadcast] {
        recovers(mode, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn node_mode_writes_its_presence_again_after_a_redis_restart() {
    recovers(Routing::Node, true).await;
}

/// With a presence cache, a user that arrives on a node is caught up from the store once
/// every cached lookup that could have missed it has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis; scripts/test runs it"]
async fn node_mode_catches_up_arrivals_once_the_cache_has_expired() {
    let url = common::redis_url();
    let cache = Duration::from_millis(300);
    let (b, mut rx) = routed_with(Routing::Node, single(&url), cache, |tx| redis_transport(&url, tx));
    let b = b.backplane;
    let user = random_id();
    let started = tokio::time::Instant::now();
    b.subscribe(Channel::User(user));
    b.barrier().await;
    let users = catch_up(&mut rx, Duration::from_secs(5)).await.expect("a catch-up");
    assert_eq!(users, vec![user]);
    assert!(started.elapsed() >= cache, "caught up before the cache expired");
}

const CLUSTER_PARTITIONS: u16 = 128;

/// A node of `mode` (`sharded` or `node`) on the cluster reachable at `urls`, and its node
/// channel in `node` mode.
fn cluster_node(mode: Routing, urls: &[String]) -> (Node, Option<Channel>) {
    let keys = Keyspace::Cluster(redis::cluster::ClusterClient::new(urls.to_vec()).expect("cluster client"));
    let (routed, rx) = routed_with(mode, Some(keys), Duration::ZERO, |tx| {
        let partitions = Partitions::new("conformance:", CLUSTER_PARTITIONS);
        let metrics = Arc::new(Metrics::new("t"));
        let cluster = redis::cluster::ClusterClient::builder(urls.to_vec());
        Arc::new(RedisClusterBackplane::connect(cluster, partitions, tx, metrics).expect("cluster backplane"))
    });
    let channel = routed.presence.map(|p| Channel::Node(p.incarnation()));
    ((routed.backplane, rx), channel)
}

/// Two nodes of `mode` on a 3-master Redis Cluster, each connected once (the first
/// `Resynced`); and the second one's node channel in `node` mode.
async fn cluster_pair(mode: Routing, cluster: &RedisCluster) -> (Node, Node, Option<Channel>) {
    let ((a, mut a_rx), _) = cluster_node(mode, &cluster.urls()[..1]);
    let ((b, mut b_rx), b_channel) = cluster_node(mode, &cluster.urls()[3..]);
    assert!(resynced(&mut a_rx).await && resynced(&mut b_rx).await, "no first Resynced on the cluster");
    ((a, a_rx), (b, b_rx), b_channel)
}

/// Clusters are six processes each: one test at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster_conforms(mode: Routing) {
    let _one = CLUSTER.lock().await;
    let cluster = RedisCluster::start().await;
    let (a, b, _) = cluster_pair(mode, &cluster).await;
    suite(mode, a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn redis_cluster_backplane_conforms_in_sharded_mode() {
    cluster_conforms(Routing::Sharded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn redis_cluster_backplane_conforms_in_node_mode() {
    cluster_conforms(Routing::Node).await;
}

/// One publish batch to users of every presence partition, half of them on each node: the
/// lookups split into a pipeline per slot and their answers come back to the right users,
/// so each node gets exactly its users' messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn node_mode_on_a_cluster_routes_a_batch_over_every_partition_exactly() {
    let _one = CLUSTER.lock().await;
    let cluster = RedisCluster::start().await;
    let ((a, mut a_rx), (b, mut b_rx), _) = cluster_pair(Routing::Node, &cluster).await;
    let base = random_id();
    let users: Vec<UserId> = (base..base + 200).collect();
    for u in &users {
        let node = if u % 2 == 0 { &a } else { &b };
        node.subscribe(Channel::User(*u));
    }
    a.barrier().await;
    b.barrier().await;
    let batch: Vec<(Channel, Bytes)> = users.iter().map(|u| (Channel::User(*u), Bytes::from(u.to_string()))).collect();
    a.publish(&batch).await.expect("publish");
    for (rx, parity) in [(&mut a_rx, 0), (&mut b_rx, 1)] {
        for u in users.iter().filter(|u| *u % 2 == parity) {
            let got = next_payload(rx, Duration::from_secs(3)).await;
            assert_eq!(got, Some((Channel::User(*u), Bytes::from(u.to_string()))));
        }
        assert_eq!(next_payload(rx, Duration::from_millis(300)).await, None, "a message for the other node");
    }
}

/// Killing the master that holds a channel's partition: its replica takes over, the node
/// resubscribes there by itself, says `Resynced`, and delivers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn redis_cluster_backplane_resubscribes_after_a_master_failover() {
    let _one = CLUSTER.lock().await;
    let mut cluster = RedisCluster::start().await;
    let ((a, _a_rx), (b, mut b_rx), _) = cluster_pair(Routing::Sharded, &cluster).await;
    let g = Channel::Group(random_id());
    // Subscriptions on every master, so the failover leaves some untouched.
    let others: Vec<Channel> = (0..50).map(|_| Channel::Group(random_id())).collect();
    b.subscribe(g);
    for c in &others {
        b.subscribe(*c);
    }
    b.barrier().await;
    let partitions = Partitions::new("conformance:", CLUSTER_PARTITIONS);
    let victim = cluster.owner_of(slot(partitions.name(g).as_bytes()));
    cluster.kill(victim);
    cluster.wait_failover(victim).await;
    assert!(resynced(&mut b_rx).await, "no Resynced after the failover");
    for c in std::iter::once(&g).chain(&others) {
        assert!(delivered(&a, &mut b_rx, *c).await, "{c} does not deliver after the failover");
    }
}

/// Publishes on `c` until `rx` gets it: a publish may fail while the cluster fails over, or
/// be missed when a `Resynced` follows (the contract: sessions then read the store).
async fn delivered(a: &Arc<dyn Backplane>, rx: &mut mpsc::Receiver<Event>, c: Channel) -> bool {
    for _ in 0..20 {
        if a.publish(&[(c, Bytes::from_static(b"after"))]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Payload { channel, payload })) if channel == c && payload == "after" => return true,
                Ok(Some(Event::Resynced)) => break,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return false,
            }
        }
    }
    false
}

/// `node` mode on the cluster after a master failover that lost the presence store (every
/// master flushed first, the flush replicated): the node resubscribes its channel on the
/// new master, writes its liveness key and its users' fields again, says `Resynced`, and is
/// routed to again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn node_mode_on_a_cluster_writes_its_presence_again_after_a_master_failover() {
    let _one = CLUSTER.lock().await;
    let mut cluster = RedisCluster::start().await;
    let ((a, _a_rx), (b, mut b_rx), b_channel) = cluster_pair(Routing::Node, &cluster).await;
    let user = random_id();
    b.subscribe(Channel::User(user));
    b.barrier().await;
    a.publish(&[(Channel::User(user), Bytes::from_static(b"before"))]).await.expect("publish");
    assert_eq!(next_payload(&mut b_rx, Duration::from_secs(3)).await.map(|(_, p)| p), Some("before".into()));
    cluster.flush_masters();
    let partitions = Partitions::new("conformance:", CLUSTER_PARTITIONS);
    let victim = cluster.owner_of(slot(partitions.name(b_channel.expect("node channel")).as_bytes()));
    cluster.kill(victim);
    cluster.wait_failover(victim).await;
    assert!(resynced(&mut b_rx).await, "no Resynced after the failover");
    assert!(delivered(&a, &mut b_rx, Channel::User(user)).await, "the presence was not written again");
}

/// The transport below a node, recording the logical channel of every payload it is given.
struct Recording {
    inner: Arc<dyn Backplane>,
    sent: Arc<std::sync::Mutex<Vec<Channel>>>,
}

#[async_trait]
impl Backplane for Recording {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), switchboard::backplane::BackplaneError> {
        let logical = messages.iter().filter_map(|(_, p)| {
            let line = p.split(|b| *b == b'\n').next()?;
            Channel::parse(std::str::from_utf8(line).ok()?)
        });
        self.sent.lock().expect("lock").extend(logical);
        self.inner.publish(messages).await
    }
    fn subscribe(&self, channel: Channel) {
        self.inner.subscribe(channel);
    }
    fn unsubscribe(&self, channel: Channel) {
        self.inner.unsubscribe(channel);
    }
    async fn barrier(&self) {
        self.inner.barrier().await;
    }
    async fn ping(&self) -> Result<(), switchboard::backplane::BackplaneError> {
        self.inner.ping().await
    }
}

/// While a master is down (before its replica takes over), lookups in its slots fail but the
/// others still route: a batch to users of every presence partition is handed to the
/// transport for the users whose hashes are on the other masters (printed: the crate may
/// fail every slot for a while), and the publish reports the failure. Once the replica took
/// over, and the node wrote again what the replica may have lacked, every user is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn node_mode_on_a_cluster_routes_what_it_can_while_a_master_is_down() {
    let _one = CLUSTER.lock().await;
    let mut cluster = RedisCluster::start().await;
    let urls = cluster.urls();
    let keys = Keyspace::Cluster(redis::cluster::ClusterClient::new(urls.clone()).expect("cluster client"));
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, mut a_rx) = routed_with(Routing::Node, Some(keys), Duration::ZERO, |tx| {
        let partitions = Partitions::new("conformance:", CLUSTER_PARTITIONS);
        let inner = RedisClusterBackplane::connect(
            redis::cluster::ClusterClient::builder(urls.clone()),
            partitions,
            tx,
            Arc::new(Metrics::new("t")),
        )
        .expect("cluster");
        Arc::new(Recording { inner: Arc::new(inner), sent: sent.clone() })
    });
    let ((b, mut b_rx), _) = cluster_node(Routing::Node, &cluster.urls()[3..]);
    assert!(resynced(&mut a_rx).await && resynced(&mut b_rx).await, "no first Resynced on the cluster");
    let a = a.backplane;
    let base = random_id();
    let users: Vec<UserId> = (base..base + 200).collect();
    for u in &users {
        b.subscribe(Channel::User(*u));
    }
    b.barrier().await;
    let victim = cluster.owner_of(0);
    cluster.kill(victim);
    let batch: Vec<(Channel, Bytes)> = users.iter().map(|u| (Channel::User(*u), Bytes::from_static(b"x"))).collect();
    // For a second, well before the replica takes over (the cluster notices a dead master
    // after 1.5 s; the crate may fail everything for a moment while it reconnects).
    let (mut failed, mut most) = (false, 0);
    let outage = tokio::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(1) {
        failed |= a.publish(&batch).await.is_err();
        let routed: std::collections::HashSet<Channel> = sent.lock().expect("lock").drain(..).collect();
        assert!(routed.iter().all(|c| batch.iter().any(|(b, _)| b == c)), "routed what was not published");
        most = most.max(routed.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "no lookup on the dead master failed");
    // A third of the users' hashes or so are on the dead master; the others are routed,
    // unless the crate's cluster connection fails every slot while it reconnects (it does,
    // at times, for longer than this second).
    println!("at most {most} of 200 users routed while a master was down");
    assert!(most < 200, "users on the dead master routed");
    // Once the replica took over (and b wrote again what it may have lacked), every user is
    // routed again.
    cluster.wait_failover(victim).await;
    let started = tokio::time::Instant::now();
    let mut routed = 0;
    while routed < 200 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sent.lock().expect("lock").clear();
        if a.publish(&batch).await.is_ok() {
            routed = sent.lock().expect("lock").len();
        }
    }
    assert_eq!(routed, 200, "not every user routed again after the failover");
}

fn nats_transport(urls: &[String], events: mpsc::Sender<Event>) -> Arc<dyn Backplane> {
    let metrics = Arc::new(Metrics::new("t"));
    Arc::new(NatsBackplane::connect(urls, "conformance:", None, events, metrics).expect("nats"))
}

/// A node of `mode` on NATS at `urls` (node mode keeps its presence in the shared Redis).
fn nats_node(mode: Routing, urls: &[String], presence: Option<&str>) -> Node {
    routed(mode, presence.and_then(single), |tx| nats_transport(urls, tx))
}

/// Waits for the first `Resynced` of a fresh node (its first connect).
async fn connected(node: &mut Node) {
    assert!(resynced(&mut node.1).await, "no Resynced after the first connect");
}

async fn nats_conforms(mode: Routing) {
    common::require_program("nats-server");
    let presence = (mode == Routing::Node).then(common::redis_url);
    let cluster = common::services::nats_cluster(3).await;
    // Each node knows only its own server: they talk through the cluster's routes.
    let mut a = nats_node(mode, &[cluster.url(0)], presence.as_deref());
    let mut b = nats_node(mode, &[cluster.url(1)], presence.as_deref());
    connected(&mut a).await;
    connected(&mut b).await;
    suite(mode, a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; scripts/test runs it"]
async fn nats_backplane_conforms() {
    nats_conforms(Routing::Group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and Redis; scripts/test runs it"]
async fn nats_backplane_conforms_in_node_mode() {
    nats_conforms(Routing::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; scripts/test runs it"]
async fn nats_backplane_conforms_in_broadcast_mode() {
    nats_conforms(Routing::Broadcast).await;
}

/// The server a node is connected to dies (SIGKILL): the node moves to another server of
/// the cluster, says `Resynced` once its subscriptions are back, and delivers and publishes
/// again; then the publisher's server dies too, and a publish still gets through.
async fn nats_recovers(mode: Routing) {
    let presence = (mode == Routing::Node).then(common::redis_url);
    let mut cluster = common::services::nats_cluster(3).await;
    let mut a = nats_node(mode, &[cluster.url(0)], presence.as_deref());
    let mut b = nats_node(mode, &[cluster.url(1)], presence.as_deref());
    connected(&mut a).await;
    connected(&mut b).await;
    let (a, mut a_rx) = a;
    let (b, mut b_rx) = b;
    let g = Channel::Group(random_id());
    let h = Channel::Group(random_id());
    b.subscribe(interest(mode, g));
    b.barrier().await;
    a.subscribe(interest(mode, h));
    a.barrier().await;

    // b's server dies: b moves to a server it learned from the cluster.
    cluster.kill(1);
    assert!(resynced(&mut b_rx).await, "{mode:?}: no Resynced after b's server died");
    publish_until_delivered(&*a, &mut b_rx, g, mode).await;
    // b publishes again from its new server.
    publish_until_delivered(&*b, &mut a_rx, h, mode).await;

    // a's server dies too; the cluster's last server carries both.
    cluster.kill(0);
    assert!(resynced(&mut a_rx).await, "{mode:?}: no Resynced after a's server died");
    publish_until_delivered(&*a, &mut b_rx, g, mode).await;
}

/// Publishes (retrying while the publisher finds its way back) until `to` receives it.
async fn publish_until_delivered(
    from: &dyn Backplane,
    to: &mut mpsc::Receiver<Event>,
    channel: Channel,
    mode: Routing,
) {
    let payload = Bytes::from(format!("after {}", random_id()));
    let mut sent = false;
    for _ in 0..25 {
        if from.publish(&[(channel, payload.clone())]).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent, "{mode:?}: publish never succeeded again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_payload(to, left).await {
            Some((c, p)) if c == channel && p == payload => return,
            Some(_) => continue,
            None => panic!("{mode:?}: not delivered after the server died"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and Redis; scripts/test runs it"]
async fn nats_backplane_moves_to_another_server_and_resyncs() {
    common::require_program("nats-server");
    for mode in [Routing::Group, Routing::Node, Routing::Broadcast] {
        common::step(&format!("{mode:?}"), nats_recovers(mode)).await;
    }
}

/// `node` mode on NATS keeps its presence in a Redis that is not the backplane, so the
/// backplane does not notice when that Redis restarts empty: the liveness refresh does (it
/// finds its key gone), the node writes its presence again and catches its users up, and
/// publishes reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and redis-server; scripts/test runs it"]
async fn nats_node_mode_writes_its_presence_again_after_the_presence_redis_restarts() {
    common::require_program("nats-server");
    common::require_program("redis-server");
    let mut redis = common::services::redis().await;
    let url = redis.url();
    let cluster = common::services::nats_cluster(2).await;
    let mut a = nats_node(Routing::Node, &[cluster.url(0)], Some(&url));
    let mut b = nats_node(Routing::Node, &[cluster.url(1)], Some(&url));
    connected(&mut a).await;
    connected(&mut b).await;
    let (a, _a_rx) = a;
    let (b, mut b_rx) = b;
    let user = random_id();
    b.subscribe(Channel::User(user));
    b.barrier().await;
    redis.stop().await;
    redis.start().await;
    let users = catch_up(&mut b_rx, Duration::from_secs(10)).await.expect("a catch-up after the restart");
    assert_eq!(users, vec![user]);
    publish_until_delivered(&*a, &mut b_rx, Channel::User(user), Routing::Node).await;
}

/// A node starts while NATS is down: subscriptions and barriers do not wait, a publish fails
/// within the reconnect grace, and once the server is there the node says `Resynced` and
/// delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; scripts/test runs it"]
async fn nats_backplane_starts_while_nats_is_down() {
    common::require_program("nats-server");
    let mut cluster = common::services::nats_cluster(1).await;
    cluster.kill(0);
    let (a, mut a_rx) = nats_node(Routing::Group, &[cluster.url(0)], None);
    let g = Channel::Group(random_id());
    a.subscribe(g);
    tokio::time::timeout(Duration::from_secs(1), a.barrier()).await.expect("a barrier does not wait for NATS");
    let started = tokio::time::Instant::now();
    assert!(a.publish(&[(g, Bytes::from_static(b"x"))]).await.is_err(), "published with no server");
    assert!(started.elapsed() < Duration::from_secs(3), "a publish waited {:?}", started.elapsed());
    cluster.restart(0).await;
    assert!(resynced(&mut a_rx).await, "no Resynced once NATS was up");
    publish_until_delivered(&*a, &mut a_rx, g, Routing::Group).await;
}
