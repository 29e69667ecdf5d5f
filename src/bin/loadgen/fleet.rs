//! `loadgen fleet`: the routing modes of docs/routing.md on N simulated nodes sharing one
//! real Redis. A simulated node is the real backplane of its mode (`routing::build` on
//! `RedisBackplane`) and the real hub, with sessions whose queues are drained and timed
//! instead of written to sockets: everything a node does for routing, nothing of
//! WebSockets or the store.
//!
//! Membership: `--users` users, each in two 1:1 conversations on average, and one group of
//! 10 to 100 members per 50 users; 5% of users have a second session (another device) on
//! another node; nodes are picked at random, as a load balancer would. Traffic: `--rate`
//! messages/s, a share `--group-share` of them to groups, from a random member's node.
//! Churn: `--churn` sessions/s move to another node (disconnect, reconnect elsewhere).
//!
//! The parent runs each (mode, nodes) pair in a child process of its own, with a Redis of
//! its own on `--redis-port`, so CPU from /proc belongs to one run; it prints the table.
//! `sharded` runs on a Redis Cluster of its own instead (3 masters, 3 replicas, from
//! `scripts/redis-cluster.sh`, on the six ports from `--redis-port`), and its outage is a
//! master killed with SIGKILL rather than a restart of the one Redis.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rand::RngExt;
use rand::seq::IndexedRandom;
use switchboard::backplane::{
    Backplane, BackplaneError, Channel, Envelope, Event, Partitions, RedisBackplane, RedisClusterBackplane,
};
use switchboard::hub::{Hub, Outbound, SessionHandle};
use switchboard::metrics::Metrics;
use switchboard::model::{GroupId, UserId, now_us};
use switchboard::routing::{self, Directory, Keyspace, PresenceConfig, Routing, Setup};
use tokio::sync::mpsc;

use super::bloom;
use super::common::{cpu_of, fields};
use super::hist::{Histogram, ms};
use super::procs::emit;
use super::progress::{Progress, Snapshot};

pub struct FleetOpts {
    pub modes: Vec<Routing>,
    pub nodes: Vec<usize>,
    pub users: usize,
    pub rate: f64,
    pub duration: Duration,
    pub churn: f64,
    pub group_share: f64,
    pub payload: usize,
    pub redis_port: u16,
    pub presence_cache_ms: u64,
    /// Between progress lines on stderr (zero: none).
    pub progress: Duration,
    /// Child: run this one `mode:nodes`.
    pub one: Option<String>,
}

pub async fn run(opts: FleetOpts) -> Result<(), String> {
    match &opts.one {
        Some(one) => {
            let (mode, nodes) = one.split_once(':').ok_or("--one MODE:NODES")?;
            let mode = <Routing as clap::ValueEnum>::from_str(mode, true)?;
            let nodes = nodes.parse().map_err(|_| "--one MODE:NODES")?;
            let row = simulate(&opts, mode, nodes).await?;
            emit("row", &row);
            Ok(())
        }
        None => parent(&opts),
    }
}

/// Runs every (mode, nodes) pair in a child and prints the table.
fn parent(opts: &FleetOpts) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for &n in &opts.nodes {
        for &mode in &opts.modes {
            eprintln!("fleet: {} mode, {n} nodes ...", mode.name());
            let out = Command::new(&exe)
                .args(std::env::args().skip(1))
                .arg("--one")
                .arg(format!("{}:{n}", mode.name()))
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().find_map(|l| l.strip_prefix("@ row ")) {
                Some(row) => rows.push(fields(row)),
                None => return Err(format!("{} mode, {n} nodes: no result ({})", mode.name(), out.status)),
            }
        }
    }
    print_table(opts, &rows);
    Ok(())
}

const COLUMNS: [(&str, &str); 19] = [
    ("mode", "mode"),
    ("nodes", "nodes"),
    ("subs_node", "subs/node"),
    ("redis_channels", "Redis channels"),
    ("sub_s", "(un)subs/s"),
    ("recv_node_s", "msgs recv/node/s"),
    ("kb_node_s", "KB recv/node/s"),
    ("useful_pct", "useful %"),
    ("pubs_msg", "PUBLISH/msg"),
    ("presence_s", "presence ops/s"),
    ("redis_out_kb_s", "Redis out KB/s"),
    ("redis_us", "Redis CPU µs/deliv"),
    ("node_us", "node CPU µs/deliv"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("resub_ms", "resubscribe ms"),
    ("subs_master", "subs/master"),
    ("resub_cmds", "resub cmds/node"),
    ("resub_unbatched", "resub cmds/node, one per channel"),
];

fn print_table(opts: &FleetOpts, rows: &[HashMap<String, String>]) {
    println!(
        "\nfleet: {} users, {} msgs/s ({}% to groups), {} session moves/s, {} s per run, {} B payloads\n",
        opts.users,
        opts.rate,
        (opts.group_share * 100.0).round(),
        opts.churn,
        opts.duration.as_secs(),
        opts.payload
    );
    println!("| {} |", COLUMNS.map(|(_, h)| h).join(" | "));
    println!("|{}", COLUMNS.map(|_| "---|").concat());
    for r in rows {
        let cells: Vec<&str> = COLUMNS.iter().map(|(k, _)| r.get(*k).map_or("-", String::as_str)).collect();
        println!("| {} |", cells.join(" | "));
    }
    println!("\nDelivered / expected (every member session online at send time), and the Bloom evaluation:");
    for r in rows {
        let mut line = format!(
            "  {} {:>3} nodes: delivered {} of {} ({}%)",
            r["mode"], r["nodes"], r["delivered"], r["expected"], r["delivered_pct"]
        );
        if let Some(exact) = r.get("bloom_exact_ns") {
            line += &format!(
                "; filter: exact map {exact} ns/msg, Bloom + map {} ns/msg, {}% false positives",
                r["bloom_ns"], r["bloom_fp_pct"]
            );
        }
        println!("{line}");
    }
    for r in rows {
        let mut pairs: Vec<String> = r.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        println!("loadgen fleet {}", pairs.join(" "));
    }
}

/// Conversations (1:1 pairs first, then groups) and each user's.
struct World {
    conversations: Vec<Vec<UserId>>,
    pairs: usize,
    of_user: Vec<Vec<GroupId>>,
}

impl World {
    fn generate(users: usize) -> World {
        let mut rng = rand::rng();
        let mut conversations: Vec<Vec<UserId>> = Vec::new();
        let mut seen = HashSet::new();
        while conversations.len() < users {
            let a = rng.random_range(1..=users as UserId);
            let b = rng.random_range(1..=users as UserId);
            if a != b && seen.insert((a.min(b), a.max(b))) {
                conversations.push(vec![a, b]);
            }
        }
        let pairs = conversations.len();
        for _ in 0..(users / 50).max(1) {
            let size = rng.random_range(10..=100).min(users);
            let ids: Vec<UserId> = (1..=users as UserId).collect();
            conversations.push(ids.sample(&mut rng, size).copied().collect());
        }
        let mut of_user = vec![Vec::new(); users + 1];
        for (i, members) in conversations.iter().enumerate() {
            for &u in members {
                of_user[u as usize].push(i as GroupId + 1);
            }
        }
        World { conversations, pairs, of_user }
    }

    fn members(&self, g: GroupId) -> &[UserId] {
        &self.conversations[g as usize - 1]
    }
}

struct Members(Arc<World>);

#[async_trait]
impl Directory for Members {
    async fn members(&self, group: GroupId) -> Option<Vec<UserId>> {
        Some(self.0.members(group).to_vec())
    }
}

/// The transport, counting what reaches Redis.
struct Counted {
    inner: Arc<dyn Backplane>,
    subs: AtomicU64,
    publishes: AtomicU64,
}

#[async_trait]
impl Backplane for Counted {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        self.publishes.fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.inner.publish(messages).await
    }

    fn subscribe(&self, channel: Channel) {
        self.subs.fetch_add(1, Ordering::Relaxed);
        self.inner.subscribe(channel);
    }

    fn unsubscribe(&self, channel: Channel) {
        self.subs.fetch_add(1, Ordering::Relaxed);
        self.inner.unsubscribe(channel);
    }

    async fn barrier(&self) {
        self.inner.barrier().await;
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        self.inner.ping().await
    }
}

/// What reaches one node's hub.
#[derive(Default)]
struct Tap {
    received: AtomicU64,
    bytes: AtomicU64,
    resyncs: AtomicU64,
    /// Messages delivered to at least one local session.
    useful: Mutex<HashSet<i64>>,
    /// Group ids received, for the Bloom evaluation.
    stream: Mutex<Vec<GroupId>>,
}

struct SimNode {
    hub: Arc<Hub>,
    backplane: Arc<dyn Backplane>,
    transport: Arc<Counted>,
    metrics: Arc<Metrics>,
    tap: Arc<Tap>,
}

/// Delivery counters shared by every session.
#[derive(Default)]
struct Deliveries {
    count: AtomicU64,
    latency: Histogram,
}

struct Session {
    handle: Arc<SessionHandle>,
    node: usize,
}

async fn start_node(
    mode: Routing,
    i: usize,
    redis: &Redis,
    world: &Arc<World>,
    cache_ms: u64,
) -> Result<SimNode, String> {
    let metrics = Arc::new(Metrics::new(&format!("sim{i}")));
    let (events_tx, mut tapped) = mpsc::channel(4096);
    let (hub_tx, hub_rx) = mpsc::channel(4096);
    let mut transport = None;
    let keyspace = redis.client().map(|client| Keyspace::Redis(client.clone()));
    let setup = Setup {
        mode,
        redis: keyspace.as_ref(),
        prefix: "fleet:",
        node: &format!("sim{i}"),
        presence: PresenceConfig { ttl: Duration::from_secs(5), cache: Duration::from_millis(cache_ms) },
        directory: Arc::new(Members(world.clone())),
        metrics: metrics.clone(),
    };
    let routed = routing::build(setup, events_tx, |events| {
        let inner: Arc<dyn Backplane> = match redis {
            Redis::Single(r) => Arc::new(RedisBackplane::connect(r.client.clone(), "fleet:", events, metrics.clone())?),
            Redis::Cluster(c) => {
                let partitions = Partitions::new("fleet:", 128);
                let cluster = redis::cluster::ClusterClient::builder(c.urls());
                Arc::new(RedisClusterBackplane::connect(cluster, partitions, events, metrics.clone())?)
            }
        };
        let counted = Arc::new(Counted { inner, subs: AtomicU64::new(0), publishes: AtomicU64::new(0) });
        transport = Some(counted.clone());
        Ok(counted as Arc<dyn Backplane>)
    })
    .map_err(|e| e.to_string())?;
    let transport = transport.ok_or("no transport")?;
    let hub = Hub::new(routed.backplane.clone(), metrics.clone());
    tokio::spawn(hub.clone().run(hub_rx, 1));
    let tap = Arc::new(Tap::default());
    let t = tap.clone();
    // Wrapped payloads carry their logical channel's name and a newline on the wire.
    let wire_extra = move |c: Channel| {
        if matches!(mode, Routing::Group | Routing::Sharded) { 0 } else { c.to_string().len() as u64 + 1 }
    };
    let record_stream = i == 0 && mode == Routing::Broadcast;
    tokio::spawn(async move {
        while let Some(event) = tapped.recv().await {
            match &event {
                Event::Payload { channel, payload } => {
                    t.received.fetch_add(1, Ordering::Relaxed);
                    t.bytes.fetch_add(payload.len() as u64 + wire_extra(*channel), Ordering::Relaxed);
                    if let (true, Channel::Group(g)) = (record_stream, channel)
                        && let Ok(mut s) = t.stream.lock()
                        && s.len() < 200_000
                    {
                        s.push(*g);
                    }
                }
                Event::Resynced => {
                    t.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                Event::CatchUp(_) => {}
            }
            if hub_tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(SimNode { hub, backplane: routed.backplane, transport, metrics, tap })
}

/// Connects a session of `user` to node `n` as a WebSocket session would: register, then
/// join its groups; its queue is drained and timed.
async fn connect(nodes: &Arc<Vec<SimNode>>, n: usize, user: UserId, world: &World, d: &Arc<Deliveries>) -> Session {
    let node = &nodes[n];
    let handle = SessionHandle::new(node.hub.next_session_id(), user, 4096);
    node.hub.attach(&handle);
    node.hub.join(&handle, &world.of_user[user as usize]).await;
    let (d, tap, queue) = (d.clone(), node.tap.clone(), handle.clone());
    tokio::spawn(async move {
        while !queue.is_closed() {
            queue.woken().await;
            while let Some(item) = queue.pop() {
                if let Outbound::Message(m) = item {
                    d.count.fetch_add(1, Ordering::Relaxed);
                    d.latency.record((now_us() - m.accepted_us).max(0) as u64);
                    if let Ok(mut u) = tap.useful.lock() {
                        u.insert(m.message_id);
                    }
                }
            }
        }
    });
    Session { handle, node: n }
}

/// Redis's counters, summed over the nodes of a cluster: INFO fields, command calls, and
/// each master's subscription counts from CLIENT LIST.
struct RedisStats {
    nodes: Vec<NodeStats>,
}

struct NodeStats {
    info: HashMap<String, String>,
    /// Every client's `sub` and `ssub` fields, summed.
    subs: HashMap<&'static str, u64>,
}

impl RedisStats {
    async fn read(ports: &[u16]) -> Result<RedisStats, String> {
        let mut nodes = Vec::new();
        for port in ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
            // A killed node has no counters any more.
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
            let text: String =
                redis::cmd("INFO").arg("everything").query_async(&mut conn).await.map_err(|e| e.to_string())?;
            let info = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect();
            let clients: String =
                redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.map_err(|e| e.to_string())?;
            let mut subs = HashMap::new();
            for field in clients.split_ascii_whitespace() {
                for key in ["sub", "ssub"] {
                    if let Some(v) = field.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                        *subs.entry(key).or_insert(0) += v.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            nodes.push(NodeStats { info, subs });
        }
        Ok(RedisStats { nodes })
    }

    fn num(&self, key: &str) -> f64 {
        self.nodes.iter().filter_map(|n| n.info.get(key)?.parse::<f64>().ok()).sum()
    }

    fn calls(&self, cmd: &str) -> f64 {
        let calls = |n: &NodeStats| -> Option<f64> {
            let stat = n.info.get(&format!("cmdstat_{cmd}"))?;
            stat.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()
        };
        self.nodes.iter().filter_map(calls).sum()
    }

    /// Subscriptions held by each master (the sum of `keys` over its clients).
    fn per_master(&self, a: &'static str, b: &'static str) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.info.get("role").is_some_and(|r| r == "master"))
            .map(|n| n.subs.get(a).copied().unwrap_or(0) + n.subs.get(b).copied().unwrap_or(0))
            .collect()
    }
}

/// The Redis of one run: a server of its own, or a cluster of its own for `sharded`.
#[allow(clippy::large_enum_variant, reason = "one per run")]
enum Redis {
    Single(RedisProc),
    Cluster(ClusterProc),
}

impl Redis {
    async fn start(mode: Routing, port: u16) -> Result<Redis, String> {
        Ok(match mode {
            Routing::Sharded => Redis::Cluster(ClusterProc::start(port)?),
            _ => Redis::Single(RedisProc::start(port).await?),
        })
    }

    /// The presence store's Redis (none on the cluster: `sharded` mode has no presence).
    fn client(&self) -> Option<&redis::Client> {
        match self {
            Redis::Single(r) => Some(&r.client),
            Redis::Cluster(_) => None,
        }
    }

    fn ports(&self) -> Vec<u16> {
        match self {
            Redis::Single(r) => vec![r.port],
            Redis::Cluster(c) => c.ports(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Redis::Single(r) => vec![r.child.id()],
            Redis::Cluster(c) => c.ports().iter().filter_map(|p| c.pid(*p)).collect(),
        }
    }

    async fn stats(&self) -> Result<RedisStats, String> {
        RedisStats::read(&self.ports()).await
    }

    /// Kills Redis (the one server, restarted empty; or the first master, for good) and
    /// returns how many subscriptions went with it.
    async fn outage(&mut self) -> Result<u64, String> {
        let stats = self.stats().await?;
        match self {
            Redis::Single(r) => {
                let lost = stats.per_master("sub", "ssub").iter().sum();
                r.kill();
                tokio::time::sleep(Duration::from_millis(200)).await;
                *r = RedisProc::start(r.port).await?;
                Ok(lost)
            }
            Redis::Cluster(c) => {
                let victim = stats
                    .nodes
                    .iter()
                    .zip(c.ports())
                    .find(|(n, _)| n.info.get("role").is_some_and(|r| r == "master"))
                    .map(|(n, port)| (n.subs.get("ssub").copied().unwrap_or(0), port));
                let (lost, port) = victim.ok_or("no master in the cluster")?;
                c.kill(port);
                Ok(lost)
            }
        }
    }
}

struct RedisProc {
    port: u16,
    client: redis::Client,
    child: Child,
    dir: String,
}

impl RedisProc {
    async fn start(port: u16) -> Result<RedisProc, String> {
        let dir = format!("{}/loadgen-fleet-{port}", std::env::temp_dir().display());
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(RedisProc { port, client, child, dir });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("redis-server did not open port {port}"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of 3 masters and 3 replicas on `port..port + 6`.
struct ClusterProc {
    port: u16,
    dir: String,
}

const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster.sh");

impl ClusterProc {
    fn start(port: u16) -> Result<ClusterProc, String> {
        let dir = format!("{}/loadgen-fleet-cluster-{port}", std::env::temp_dir().display());
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = ClusterProc { port, dir };
        let status = Command::new(CLUSTER_SCRIPT)
            .args(["start", &cluster.dir, &port.to_string()])
            .status()
            .map_err(|e| format!("{CLUSTER_SCRIPT}: {e}"))?;
        if !status.success() {
            return Err("the Redis Cluster did not start".into());
        }
        Ok(cluster)
    }

    fn ports(&self) -> Vec<u16> {
        (self.port..self.port + 6).collect()
    }

    fn urls(&self) -> Vec<String> {
        self.ports().iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    fn pid(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(format!("{}/{port}/redis.pid", self.dir)).ok()?.trim().parse().ok()
    }

    fn kill(&self, port: u16) {
        if let Some(pid) = self.pid(port) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        let _ = Command::new(CLUSTER_SCRIPT).args(["stop", &self.dir]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn simulate(opts: &FleetOpts, mode: Routing, n: usize) -> Result<String, String> {
    let mut redis = Redis::start(mode, opts.redis_port).await?;
    let world = Arc::new(World::generate(opts.users));
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(start_node(mode, i, &redis, &world, opts.presence_cache_ms).await?);
    }
    let nodes = Arc::new(nodes);
    let deliveries = Arc::new(Deliveries::default());

    // Place every user (5% twice), connecting in parallel.
    let sessions: Arc<Mutex<Vec<Vec<Session>>>> = Arc::new(Mutex::new((0..=opts.users).map(|_| Vec::new()).collect()));
    let mut placing = tokio::task::JoinSet::new();
    for user in 1..=opts.users as UserId {
        let devices = if rand::rng().random_bool(0.05) && n > 1 { 2 } else { 1 };
        let first = rand::rng().random_range(0..n);
        for k in 0..devices {
            let (nodes, world, d, sessions) = (nodes.clone(), world.clone(), deliveries.clone(), sessions.clone());
            placing.spawn(async move {
                let s = connect(&nodes, (first + k) % n, user, &world, &d).await;
                if let Ok(mut all) = sessions.lock() {
                    all[user as usize].push(s);
                }
            });
        }
        while placing.len() > 256 {
            placing.join_next().await;
        }
    }
    placing.join_all().await;
    // Presence caches and catch-ups of the placement settle.
    tokio::time::sleep(Duration::from_millis(opts.presence_cache_ms + 1500)).await;

    let before = redis.stats().await?;
    let redis_pids = redis.pids();
    let redis_cpu_now = || redis_pids.iter().filter_map(|p| cpu_of(*p)).sum::<f64>();
    let (redis_cpu0, node_cpu0) = (redis_cpu_now(), cpu_of(std::process::id()).unwrap_or(0.0));
    let snapshot = |nodes: &[SimNode]| -> (u64, u64, u64, u64) {
        nodes.iter().fold((0, 0, 0, 0), |acc, s| {
            (
                acc.0 + s.tap.received.load(Ordering::Relaxed),
                acc.1 + s.tap.bytes.load(Ordering::Relaxed),
                acc.2 + s.transport.subs.load(Ordering::Relaxed),
                acc.3 + s.transport.publishes.load(Ordering::Relaxed),
            )
        })
    };
    let start = snapshot(&nodes);
    for s in nodes.iter() {
        if let Ok(mut u) = s.tap.useful.lock() {
            u.clear();
        }
    }
    let delivered0 = deliveries.count.load(Ordering::Relaxed);
    let started = Instant::now();
    let expected = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("fleet {} {n} nodes", mode.name()), opts.progress, {
        let (sent, deliveries) = (sent.clone(), deliveries.clone());
        move || Snapshot {
            sent: sent.load(Ordering::Relaxed),
            received: deliveries.count.load(Ordering::Relaxed).saturating_sub(delivered0),
            errors: 0,
            extra: String::new(),
        }
    });

    let churn = tokio::spawn(churn_loop(
        opts.churn,
        opts.duration,
        nodes.clone(),
        sessions.clone(),
        world.clone(),
        deliveries.clone(),
    ));
    let next_id = AtomicI64::new(1);
    let payload = Bytes::from(vec![b'x'; opts.payload]);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0.0;
    while started.elapsed() < opts.duration {
        tick.tick().await;
        owed += opts.rate / 100.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let group = pick_conversation(&world, opts.group_share);
            let members = world.members(group);
            let Some(sender) = members.choose(&mut rand::rng()).copied() else { continue };
            let (home, reach) = match sessions.lock() {
                Ok(all) => (
                    all[sender as usize].first().map(|s| s.node),
                    members.iter().map(|m| all[*m as usize].len() as u64).sum::<u64>(),
                ),
                Err(_) => continue,
            };
            let Some(home) = home else { continue };
            expected.fetch_add(reach, Ordering::Relaxed);
            sent.fetch_add(1, Ordering::Relaxed);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let envelope = Envelope::Message {
                message_id: id,
                seq: id,
                sender_id: sender,
                accepted_us: now_us(),
                frame: payload.clone(),
            }
            .encode();
            let backplane = nodes[home].backplane.clone();
            tokio::spawn(async move {
                let _ = backplane.publish(&[(Channel::Group(group), envelope)]).await;
            });
        }
    }
    let _ = churn.await;
    drop(progress);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = started.elapsed().as_secs_f64();
    let end = snapshot(&nodes);
    let after = redis.stats().await?;
    let redis_cpu = redis_cpu_now() - redis_cpu0;
    let node_cpu = cpu_of(std::process::id()).unwrap_or(0.0) - node_cpu0;
    let delivered = deliveries.count.load(Ordering::Relaxed) - delivered0;
    let useful: u64 = nodes.iter().map(|s| s.tap.useful.lock().map_or(0, |u| u.len() as u64)).sum();
    let subs_node = nodes.iter().map(|s| s.metrics.backplane_subscriptions.get()).sum::<i64>() as f64 / n as f64;
    let presence_ops: f64 = ["hset", "hdel", "hkeys", "exists"].iter().map(|c| after.calls(c) - before.calls(c)).sum();
    let received = (end.0 - start.0) as f64;
    let sent = sent.load(Ordering::Relaxed) as f64;
    let expected = expected.load(Ordering::Relaxed);
    let per_delivery = |cpu: f64| if delivered == 0 { 0.0 } else { cpu * 1e6 / delivered as f64 };

    let subs_master = after.per_master("sub", "ssub").iter().map(u64::to_string).collect::<Vec<_>>().join("/");
    let resubs0: u64 = nodes.iter().map(|s| s.metrics.backplane_resubscribes.get()).sum();
    let (resub_ms, lost_channels) = resubscribe_time(&mut redis, &nodes).await?;
    let resubs = nodes.iter().map(|s| s.metrics.backplane_resubscribes.get()).sum::<u64>() - resubs0;
    let mut row = vec![
        ("mode", mode.name().to_owned()),
        ("nodes", n.to_string()),
        ("subs_node", format!("{subs_node:.1}")),
        ("redis_channels", format!("{}", after.num("pubsub_channels") + after.num("pubsubshard_channels"))),
        ("sub_s", format!("{:.1}", (end.2 - start.2) as f64 / secs)),
        ("recv_node_s", format!("{:.1}", received / n as f64 / secs)),
        ("kb_node_s", format!("{:.2}", (end.1 - start.1) as f64 / 1024.0 / n as f64 / secs)),
        ("useful_pct", format!("{:.1}", if received > 0.0 { 100.0 * useful as f64 / received } else { 0.0 })),
        ("pubs_msg", format!("{:.2}", (end.3 - start.3) as f64 / sent.max(1.0))),
        ("presence_s", format!("{:.1}", presence_ops / secs)),
        (
            "redis_out_kb_s",
            format!(
                "{:.0}",
                (after.num("total_net_output_bytes") - before.num("total_net_output_bytes")) / 1024.0 / secs
            ),
        ),
        ("redis_us", format!("{:.2}", per_delivery(redis_cpu))),
        ("node_us", format!("{:.2}", per_delivery(node_cpu))),
        ("p50_ms", format!("{:.2}", ms(deliveries.latency.quantile(0.5)))),
        ("p99_ms", format!("{:.2}", ms(deliveries.latency.quantile(0.99)))),
        ("resub_ms", resub_ms.map_or("timeout".to_owned(), |t| t.to_string())),
        ("subs_master", subs_master),
        ("resub_cmds", format!("{:.1}", resubs as f64 / n as f64)),
        ("resub_unbatched", format!("{:.1}", lost_channels as f64 / n as f64)),
        ("delivered", delivered.to_string()),
        ("expected", expected.to_string()),
        ("delivered_pct", format!("{:.2}", 100.0 * delivered as f64 / expected.max(1) as f64)),
        ("msgs", format!("{sent}")),
    ];
    if mode == Routing::Broadcast {
        let stream = nodes[0].tap.stream.lock().map(|s| s.clone()).unwrap_or_default();
        let local: HashSet<GroupId> = match sessions.lock() {
            Ok(all) => all
                .iter()
                .enumerate()
                .filter(|(_, s)| s.iter().any(|s| s.node == 0))
                .flat_map(|(u, _)| world.of_user[u].iter().copied())
                .collect(),
            Err(_) => HashSet::new(),
        };
        let v = bloom::evaluate(&local, &stream, 50);
        row.push(("bloom_exact_ns", format!("{:.1}", v.exact_ns)));
        row.push(("bloom_ns", format!("{:.1}", v.bloom_ns)));
        row.push(("bloom_fp_pct", format!("{:.2}", v.false_positive_pct)));
        row.push(("bloom_useful_pct", format!("{:.1}", v.useful_pct)));
    }
    Ok(row.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
}

fn pick_conversation(world: &World, group_share: f64) -> GroupId {
    let mut rng = rand::rng();
    let groups = world.conversations.len() - world.pairs;
    let i = if groups > 0 && rng.random_bool(group_share) {
        world.pairs + rng.random_range(0..groups)
    } else {
        rng.random_range(0..world.pairs)
    };
    i as GroupId + 1
}

/// Moves `rate` sessions per second to another node for `duration`.
async fn churn_loop(
    rate: f64,
    duration: Duration,
    nodes: Arc<Vec<SimNode>>,
    sessions: Arc<Mutex<Vec<Vec<Session>>>>,
    world: Arc<World>,
    d: Arc<Deliveries>,
) {
    if rate <= 0.0 || nodes.len() < 2 {
        return;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    while started.elapsed() < duration {
        tick.tick().await;
        let user = rand::rng().random_range(1..=world.of_user.len() - 1) as UserId;
        let Some(old) = sessions.lock().ok().and_then(|mut all| all[user as usize].pop()) else { continue };
        nodes[old.node].hub.detach(&old.handle);
        // Ends the task draining its queue.
        old.handle.close(switchboard::ws::protocol::close::NORMAL);
        let to = (old.node + rand::rng().random_range(1..nodes.len())) % nodes.len();
        let (nodes, world, d, sessions) = (nodes.clone(), world.clone(), d.clone(), sessions.clone());
        tokio::spawn(async move {
            let s = connect(&nodes, to, user, &world, &d).await;
            if let Ok(mut all) = sessions.lock() {
                all[user as usize].push(s);
            }
        });
    }
}

/// Takes Redis away and times how long until every node has resubscribed (and, in node
/// mode, written its presence again): its hub heard `Resynced`. One Redis is killed and
/// started again empty; on the cluster one master is killed and its replica takes over.
/// Also returns the subscriptions the outage cost (what one command per channel would
/// have to restore).
async fn resubscribe_time(redis: &mut Redis, nodes: &[SimNode]) -> Result<(Option<u64>, u64), String> {
    let before: Vec<u64> = nodes.iter().map(|s| s.tap.resyncs.load(Ordering::Relaxed)).collect();
    let lost = redis.outage().await?;
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(60) {
        if nodes.iter().zip(&before).all(|(s, b)| s.tap.resyncs.load(Ordering::Relaxed) > *b) {
            return Ok((Some(restarted.elapsed().as_millis() as u64), lost));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((None, lost))
}

/// Parses `group,node` into modes.
pub fn parse_modes(s: &str) -> Result<Vec<Routing>, String> {
    s.split(',').map(|m| <Routing as clap::ValueEnum>::from_str(m.trim(), true)).collect()
}

/// Parses `10,50,200` into node counts.
pub fn parse_counts(s: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|n| n.trim().parse().map_err(|_| format!("bad node count {n:?}"))).collect()
}
