//! Fault injection against real processes: two node processes on a private MariaDB, Redis
//! and MongoDB stand-in, a steady stream of sends between pairs of users spread over both
//! nodes, and one fault per scenario. Each ends with the checker reporting 0 lost among
//! accepted sends, 0 duplicates within a connection, and per-sender order kept in every
//! group. Refused sends are retried with the same `client_msg_id` and counted apart.

mod common;

use std::time::Duration;

use common::services::{self, RedisCluster, Service};
use common::traffic::Workload;
use common::{Proc, unique};

/// Scenarios share machine-wide resources (CPU, ports); run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAIRS: usize = 8;
const INTERVAL: Duration = Duration::from_millis(150);

struct Fleet {
    db: Service,
    redis: Service,
    mongo: Service,
    nodes: Vec<Proc>,
}

async fn fleet() -> Fleet {
    fleet_with(&[]).await
}

/// Two node processes with `extra` flags on private MariaDB, Redis and MongoDB.
async fn fleet_with(extra: &[&str]) -> Fleet {
    for program in ["mariadb-install-db", "redis-server", "secantusd-py"] {
        common::require_program(program);
    }
    let (db, redis, mongo) = (services::mariadb().await, services::redis().await, services::mongo().await);
    let database = format!("mysql://root@127.0.0.1:{}/{}", db.port, unique("faults"));
    let env = vec![
        ("DATABASE_URL".to_owned(), database),
        ("REDIS_URL".to_owned(), redis.url()),
        ("MONGODB_URL".to_owned(), mongo.url()),
    ];
    let mut nodes = Vec::new();
    for name in ["f1", "f2"] {
        let mut args = vec!["--node-id".to_owned(), name.to_owned()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = Proc::spawn(&args, &env);
        node.ready().await;
        nodes.push(node);
    }
    Fleet { db, redis, mongo, nodes }
}

/// Two node processes on a private MariaDB (which also holds the inbox) and a 3-server
/// NATS cluster; each node is given every server (NATS_URL is the list) and picks one.
struct NatsFleet {
    _db: Service,
    cluster: services::NatsCluster,
    nodes: Vec<Proc>,
}

async fn nats_fleet() -> NatsFleet {
    for program in ["mariadb-install-db", "nats-server"] {
        common::require_program(program);
    }
    let cluster = services::nats_cluster(3).await;
    let db = services::mariadb().await;
    let database = format!("mysql://root@127.0.0.1:{}/{}", db.port, unique("faults"));
    let env = vec![("DATABASE_URL".to_owned(), database), ("NATS_URL".to_owned(), cluster.urls())];
    let mut nodes = Vec::new();
    for name in ["f1", "f2"] {
        let mut node = Proc::spawn(&["--node-id".to_owned(), name.to_owned()], &env);
        node.ready().await;
        nodes.push(node);
    }
    NatsFleet { _db: db, cluster, nodes }
}

impl Fleet {
    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    async fn traffic(&self) -> Workload {
        Workload::start(&self.addrs(), PAIRS, INTERVAL).await
    }
}

async fn verdict(name: &str, w: Workload) {
    let reconnects = w.reconnects.clone();
    let report = w.finish(Duration::from_secs(40)).await;
    println!("{name}: {report} reconnects={}", reconnects.load(std::sync::atomic::Ordering::SeqCst));
    assert!(report.accepted > 50, "{name}: too little traffic: {report}");
    assert!(report.clean(), "{name}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn a_node_killed_with_sigkill_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut f = fleet().await;
    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.nodes[1].signal("KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.nodes[1].restart();
    f.nodes[1].ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    verdict("kill -9 node", w).await;
}

/// Positions are written late on purpose (never, within the test): a node killed with
/// SIGKILL takes every position its sessions recorded with it. Its clients reconnect to the
/// other node, which reads their older positions and delivers again from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn a_node_killed_before_writing_positions_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut f = fleet_with(&["--position-flush", "10m"]).await;
    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.nodes[0].signal("KILL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.nodes[0].restart();
    f.nodes[0].ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    verdict("kill -9 before positions were written", w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn a_redis_restart_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut f = fleet().await;
    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.redis.stop().await;
    // Sends keep being accepted while the backplane is away.
    let before = w.checker.report().accepted;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = w.checker.report().accepted;
    assert!(during > before + 10, "sends stalled while Redis was down ({before} -> {during})");
    f.redis.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    verdict("redis restart", w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn a_mysql_outage_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut f = fleet().await;
    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.db.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Not ready while the store is away.
    let (status, _) = switchboard::client::Api::new(f.nodes[0].admin).get("/readyz").await.expect("readyz");
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.db.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    verdict("mysql outage", w).await;
    assert_eq!(switchboard::client::Api::new(f.nodes[0].admin).get("/readyz").await.expect("readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn a_mongodb_outage_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut f = fleet().await;
    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.mongo.stop().await;
    // Sends never touch the inbox, so they go on; position writes fail and wait, and
    // clients that reconnect meanwhile are refused (1011) until it is back, then catch up.
    w.chaos(true);
    let before = w.checker.report().accepted;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = w.checker.report().accepted;
    assert!(during > before + 10, "sends stalled while MongoDB was down ({before} -> {during})");
    w.chaos(false);
    f.mongo.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    verdict("mongodb outage", w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn random_socket_drops_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let f = fleet().await;
    let w = f.traffic().await;
    w.chaos(true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.chaos(false);
    assert!(w.reconnects.load(std::sync::atomic::Ordering::SeqCst) > 10, "chaos dropped too few sockets");
    verdict("random socket drops", w).await;
}

/// `--routing node` (docs/routing.md): a node killed with SIGKILL stops being routed to once
/// its presence TTL (plus the presence cache) has passed, its users reconnect to the other
/// node and lose nothing, and when it comes back under the same name (a new incarnation)
/// every user's presence counts exactly the one session it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and MongoDB stand-in binaries; scripts/test runs it"]
async fn node_mode_a_node_killed_with_sigkill_stops_being_routed_to_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let flags = ["--routing", "node", "--presence-ttl", "1500ms", "--presence-cache", "500ms"];
    let mut f = fleet_with(&flags).await;
    let api = switchboard::client::Api::new(f.nodes[0].addr);
    let presence = |user: i64| {
        let api = api.clone();
        async move {
            let (status, body) = api.get(&format!("/users/{user}/presence")).await.expect("presence");
            assert_eq!(status, 200, "{body}");
            body["nodes"].as_u64().expect("nodes")
        }
    };
    // A user with one session on node 2 and a client that never reconnects.
    let pinned = api.register(&unique("pinned")).await.expect("register");
    let mut ws = switchboard::client::connect_ws(f.nodes[1].addr, pinned, false).await.expect("connect");
    assert!(matches!(ws.next(Duration::from_secs(10)).await, Some(switchboard::client::WsEvent::Json(_))));
    assert_eq!(presence(pinned).await, 1);

    let w = f.traffic().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.nodes[1].signal("KILL");
    // TTL + cache + a margin for the last refresh and the lookup.
    tokio::time::sleep(Duration::from_millis(1500 + 500 + 700)).await;
    assert_eq!(presence(pinned).await, 0, "the dead node is still routed to");
    f.nodes[1].restart();
    f.nodes[1].ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(presence(pinned).await, 0, "the restarted node revived an old entry");
    for &user in &w.users {
        assert_eq!(presence(user).await, 1, "user {user} has one session");
    }
    verdict("kill -9 node, node routing", w).await;
}

/// `--routing sharded` on a 3-master Redis Cluster: a master killed with SIGKILL under
/// traffic fails over to its replica, both nodes resubscribe there by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and MariaDB; scripts/test runs it"]
async fn a_redis_cluster_master_killed_under_traffic_fails_over_and_loses_nothing() {
    redis_cluster_master_killed("sharded").await;
}

/// `--routing node` on a 3-master Redis Cluster, the same: the node whose channel moved
/// resubscribes, and every node writes again the presence the replica may lack (it may not
/// have finished its first sync: the cluster was just made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and MariaDB; scripts/test runs it"]
async fn node_mode_a_redis_cluster_master_killed_under_traffic_loses_nothing() {
    redis_cluster_master_killed("node").await;
}

async fn redis_cluster_master_killed(routing: &str) {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start().await;
    let database = format!("{}/{}", common::MYSQL_ROOT, unique("cluster"));
    let env = vec![
        ("DATABASE_URL".to_owned(), database),
        ("REDIS_CLUSTER_URLS".to_owned(), cluster.urls_arg()),
        ("SWITCHBOARD_ROUTING".to_owned(), routing.to_owned()),
    ];
    let mut nodes = Vec::new();
    for name in ["c1", "c2"] {
        let mut node = Proc::spawn(&["--node-id".to_owned(), name.to_owned()], &env);
        node.ready().await;
        nodes.push(node);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let w = Workload::start(&addrs, PAIRS, INTERVAL).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = metric(&nodes[0], "switchboard_backplane_resubscribe_commands_total").await;
    // The master of slot 0 (another node's view of who is master may lag just after the start).
    let victim = cluster.owner_of(0);
    cluster.kill(victim);
    cluster.wait_failover(victim).await;
    // Traffic goes on through the new master.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = metric(&nodes[0], "switchboard_backplane_resubscribe_commands_total").await;
    println!("resubscribe commands on c1 after the failover: {}", after - before);
    // In node mode c1 holds one subscription, on any master: it may have nothing to redo.
    assert!(after > before || routing == "node", "the node never resubscribed after the failover");
    verdict(&format!("redis cluster master killed with SIGKILL, {routing} routing"), w).await;
}

async fn metric(node: &Proc, name: &str) -> f64 {
    common::fleet::metric(node.admin, name, "").await.unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The NATS backplane (docs/routing.md): under traffic between two nodes, the NATS server
/// holding the most node connections is killed with SIGKILL; those nodes move to another
/// server of the cluster and resync. The server comes back, another one is killed, the
/// nodes move again, and the checker reports 0 lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and mariadbd; scripts/test runs it"]
async fn a_nats_server_killed_with_sigkill_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let NatsFleet { _db, mut cluster, nodes } = nats_fleet().await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let w = Workload::start(&addrs, PAIRS, INTERVAL).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cluster.clients_named("switchboard").await;
    assert_eq!(before.iter().sum::<usize>(), 2, "each node holds one NATS connection: {before:?}");
    let victim = (0..before.len()).max_by_key(|&i| before[i]).expect("a server");
    cluster.kill(victim);
    let accepted = w.checker.report().accepted;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.clients_named("switchboard").await;
    println!("nats kill: node connections per server {before:?} -> {after:?} (killed server {victim})");
    assert_eq!(after.iter().sum::<usize>(), 2, "the nodes did not move to the other servers: {after:?}");
    assert!(w.checker.report().accepted > accepted + 10, "sends stalled after the NATS server died");
    // The dead server comes back and rejoins; then the server holding the most node
    // connections dies too: the nodes move once more.
    cluster.restart(victim).await;
    let before = cluster.clients_named("switchboard").await;
    let second = (0..before.len()).max_by_key(|&i| before[i]).expect("a server");
    cluster.kill(second);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.clients_named("switchboard").await;
    println!("nats kill again: {before:?} -> {after:?} (killed server {second})");
    assert_eq!(after.iter().sum::<usize>(), 2, "the nodes did not move again: {after:?}");
    verdict("kill -9 NATS server, twice", w).await;
}
