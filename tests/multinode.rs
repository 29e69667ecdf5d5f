//! Two node processes on different ports sharing MariaDB and Redis, in every routing mode
//! (docs/routing.md): users on different nodes chat both ways, a user who was offline gets
//! everything on another node, and a user with sessions on both nodes gets every message on
//! both. A node started in another mode than its fleet's refuses to start. The same
//! exchanges run on a 3-server NATS cluster, the two nodes on different servers.

mod common;

use std::time::Duration;

use switchboard::client::{Api, WsConn, WsEvent, connect_ws};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: std::net::SocketAddr, user: i64) -> WsConn {
    let mut ws = connect_ws(addr, user, false).await.expect("connect");
    match ws.next(WAIT).await {
        Some(WsEvent::Json(v)) if v["type"] == "hello" => ws,
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn message(ws: &mut WsConn) -> serde_json::Value {
    loop {
        match ws.next_non_ack(WAIT).await {
            Some(WsEvent::Json(v)) if v["type"] == "message" => return v,
            Some(WsEvent::Json(v)) if v["type"] == "group_joined" => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Two ready node processes in `mode` on a fresh database and the shared Redis.
async fn pair(mode: &str) -> (common::Proc, common::Proc) {
    let backplane = vec![("REDIS_URL".to_owned(), common::redis_url())];
    pair_on(mode, [backplane.clone(), backplane]).await
}

/// Two ready node processes in `mode` on a fresh database, each with its own backplane
/// variables.
async fn pair_on(mode: &str, backplanes: [Vec<(String, String)>; 2]) -> (common::Proc, common::Proc) {
    let db = common::mysql_url();
    let args = |name: &str| ["--node-id", name, "--routing", mode].map(String::from);
    let [b1, b2] = backplanes;
    let env = |backplane: Vec<(String, String)>| {
        let mut env = vec![("DATABASE_URL".to_owned(), db.clone())];
        env.extend(backplane);
        env
    };
    let mut n1 = common::Proc::spawn(&args("n1"), &env(b1));
    let mut n2 = common::Proc::spawn(&args("n2"), &env(b2));
    n1.ready().await;
    n2.ready().await;
    (n1, n2)
}

/// Two ready node processes in `mode` on NATS, each given a different server of `cluster`
/// (they talk through its routes); `node` mode keeps its presence in the shared Redis.
async fn nats_pair(mode: &str, cluster: &common::services::NatsCluster) -> (common::Proc, common::Proc) {
    let presence = common::redis_url();
    let env = |i: usize| {
        let mut env = vec![("NATS_URL".to_owned(), cluster.url(i))];
        if mode == "node" {
            env.push(("SWITCHBOARD_PRESENCE_REDIS_URL".to_owned(), presence.clone()));
        }
        env
    };
    pair_on(mode, [env(0), env(1)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server, MariaDB and Redis; scripts/test runs it"]
async fn two_node_processes_exchange_messages_over_a_nats_cluster() {
    common::require_program("nats-server");
    let cluster = common::services::nats_cluster(3).await;
    for mode in ["group", "node", "broadcast"] {
        common::step(&format!("{mode}: both ways, and offline"), exchange(mode, nats_pair(mode, &cluster).await)).await;
        common::step(&format!("{mode}: a user on both nodes"), both_nodes(mode, nats_pair(mode, &cluster).await)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and redis-server; scripts/test runs it"]
async fn two_node_processes_exchange_messages_on_a_redis_cluster_in_sharded_mode() {
    exchange_on_a_redis_cluster("sharded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and redis-server; scripts/test runs it"]
async fn two_node_processes_exchange_messages_on_a_redis_cluster_in_node_mode() {
    exchange_on_a_redis_cluster("node").await;
}

async fn exchange_on_a_redis_cluster(mode: &str) {
    let cluster = common::services::RedisCluster::start().await;
    let backplane = || vec![("REDIS_CLUSTER_URLS".to_owned(), cluster.urls_arg())];
    common::step("both ways, and offline", exchange(mode, pair_on(mode, [backplane(), backplane()]).await)).await;
    common::step("a user on both nodes", both_nodes(mode, pair_on(mode, [backplane(), backplane()]).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and Redis; scripts/test runs it"]
async fn two_node_processes_deliver_to_each_other() {
    for mode in ["group", "node", "broadcast"] {
        deliver_to_each_other(mode).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and Redis; scripts/test runs it"]
async fn a_user_on_two_nodes_gets_every_message_on_both() {
    for mode in ["group", "node", "broadcast"] {
        sessions_on_both_nodes(mode).await;
    }
}

async fn deliver_to_each_other(mode: &str) {
    exchange(mode, pair(mode).await).await;
}

async fn exchange(mode: &str, (n1, n2): (common::Proc, common::Proc)) {
    let (api1, api2) = (Api::new(n1.addr), Api::new(n2.addr));
    let alice = api1.register(&common::unique("alice")).await.expect("alice");
    let bob = api2.register(&common::unique("bob")).await.expect("bob");

    let mut a = connect(n1.addr, alice).await;
    let mut b = connect(n2.addr, bob).await;
    // Created on node 2 while both are connected: node 1 learns of it over Redis.
    let group = api2.create_group(bob, &[alice]).await.expect("group");
    let (_, sent) = api1.send(alice, group, "from node 1", None).await.expect("send");
    let got = message(&mut b).await;
    assert_eq!(got["message_id"], sent["message_id"]);
    assert_eq!(got["content"], "from node 1");
    let (_, sent) = api2.send(bob, group, "from node 2", None).await.expect("send");
    loop {
        let got = message(&mut a).await;
        if got["message_id"] == sent["message_id"] {
            assert_eq!(got["content"], "from node 2");
            break;
        }
    }

    // Bob goes offline; alice keeps writing; bob comes back on node 1 and gets it all.
    b.close().await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, sent) = api1.send(alice, group, &format!("while away {i}"), None).await.expect("send");
        assert_eq!(status, 200);
        ids.push(sent["message_id"].as_i64().expect("id"));
    }
    let mut b = connect(n1.addr, bob).await;
    for id in &ids {
        assert_eq!(message(&mut b).await["message_id"].as_i64(), Some(*id));
    }
    assert_eq!(b.next_non_ack(Duration::from_millis(500)).await, None, "{mode}: nothing twice");
}

async fn sessions_on_both_nodes(mode: &str) {
    both_nodes(mode, pair(mode).await).await;
}

async fn both_nodes(mode: &str, (n1, n2): (common::Proc, common::Proc)) {
    let (api1, api2) = (Api::new(n1.addr), Api::new(n2.addr));
    let alice = api1.register(&common::unique("alice")).await.expect("alice");
    let bob = api1.register(&common::unique("bob")).await.expect("bob");
    let carol = api1.register(&common::unique("carol")).await.expect("carol");
    let pair = api1.create_group(alice, &[bob]).await.expect("pair");
    let trio = api1.create_group(carol, &[alice, bob]).await.expect("trio");
    let mut on1 = connect(n1.addr, bob).await;
    let mut on2 = connect(n2.addr, bob).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (api, from, group) = if i % 2 == 0 { (&api1, alice, pair) } else { (&api2, carol, trio) };
        let (status, sent) = api.send(from, group, &format!("to both {i}"), None).await.expect("send");
        assert_eq!(status, 200);
        ids.push(sent["message_id"].as_i64().expect("id"));
    }
    for (name, ws) in [("node 1", &mut on1), ("node 2", &mut on2)] {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            got.push(message(ws).await["message_id"].as_i64().expect("id"));
        }
        got.sort_unstable();
        assert_eq!(got, ids, "{mode}: the session on {name} missed messages");
        assert_eq!(ws.next_non_ack(Duration::from_millis(300)).await, None, "{mode}: nothing twice on {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB and Redis; scripts/test runs it"]
async fn a_node_in_another_mode_than_its_fleet_refuses_to_start() {
    let (n1, _n2) = pair("group").await;
    // The same database, hence the same channel prefix: the same fleet.
    let mut n3 = common::Proc::spawn(&["--node-id", "n3", "--routing", "node"].map(String::from), &n1.envs);
    for _ in 0..100 {
        if let Ok(Some(status)) = n3.child.try_wait() {
            assert_eq!(status.code(), Some(64), "refused, as a configuration error");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a node in another mode than its fleet started");
}
