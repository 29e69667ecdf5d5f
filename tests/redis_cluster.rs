//! `--routing sharded` and `--routing node` on a real Redis Cluster of 3 masters and 3
//! replicas, started on loopback for each test and killed after it:
//!
//! - two gateway node processes exchange messages under steady traffic while the master
//!   holding part of the partitions is killed with SIGKILL; its replica takes over, both
//!   nodes resubscribe by themselves (in `node` mode they also write their presence
//!   again), and the checker reports 0 lost;
//! - the `redis` crate's own cluster resubscription, checked with channels in several
//!   slots of one master and that master's failover: it sends one SSUBSCRIBE across slots,
//!   which Redis refuses (CROSSSLOT), so the backplane does its own (src/backplane/cluster.rs).

mod common;

use std::time::Duration;

use common::services::RedisCluster;
use common::traffic::Workload;
use common::{Proc, unique};
use switchboard::backplane::slot;

/// Clusters are six processes each: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and MariaDB; scripts/test runs it"]
async fn a_master_killed_under_traffic_fails_over_and_loses_nothing() {
    fails_over_under_traffic("sharded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and MariaDB; scripts/test runs it"]
async fn node_mode_fails_over_under_traffic_and_loses_nothing() {
    fails_over_under_traffic("node").await;
}

async fn fails_over_under_traffic(routing: &str) {
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
    let w = Workload::start(&addrs, 8, Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = metric(&nodes[0], "switchboard_backplane_resubscribe_commands_total").await;
    // The master of slot 0 (another node's view of who is master may lag just after the start).
    let victim = cluster.owner_of(0);
    cluster.kill(victim);
    cluster.wait_failover(victim).await;
    // Traffic goes on through the new master.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = metric(&nodes[0], "switchboard_backplane_resubscribe_commands_total").await;
    let report = w.finish(Duration::from_secs(40)).await;
    println!("redis cluster master failover ({routing}): {report}; resubscribe commands on c1: {}", after - before);
    assert!(report.accepted > 50, "too little traffic: {report}");
    assert!(report.clean(), "{report}");
    // In node mode c1 holds one subscription, on any master: it may have nothing to redo.
    assert!(after > before || routing == "node", "the node never resubscribed after the failover");
}

async fn metric(node: &Proc, name: &str) -> f64 {
    common::fleet::metric(node.admin, name, "").await.unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The crate's resubscription after a failover, with two channels in two slots of one
/// master: the crate sends them in one SSUBSCRIBE, Redis answers CROSSSLOT, and neither
/// channel hears a publish afterwards. If this starts failing, the crate fixed it and
/// the backplane's own resubscription could lean on the crate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn the_redis_crates_cluster_resubscription_fails_with_crossslot() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .build()
        .expect("cluster client");
    let mut conn = client.get_async_connection().await.expect("cluster connection");
    // Two channels in two slots of the first master's range (slots 0..5460).
    let names: Vec<String> = (0..).map(|i| format!("check{i}")).filter(|n| slot(n.as_bytes()) < 5000).take(2).collect();
    assert_ne!(slot(names[0].as_bytes()), slot(names[1].as_bytes()));
    for name in &names {
        conn.ssubscribe(name).await.expect("one slot per command is fine");
    }
    let heard = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>| {
        std::iter::from_fn(|| rx.try_recv().ok()).filter(|p| p.kind == redis::PushKind::SMessage).count()
    };
    let publish = |conn: &mut redis::cluster_async::ClusterConnection| {
        let mut conn = conn.clone();
        let names = names.clone();
        async move {
            for name in &names {
                let _: Result<i64, _> = redis::cmd("SPUBLISH").arg(name).arg("x").query_async(&mut conn).await;
            }
        }
    };
    publish(&mut conn).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(heard(&mut rx), 2, "both channels deliver before the failover");

    let owner = cluster.owner_of(slot(names[0].as_bytes()));
    cluster.kill(owner);
    cluster.wait_failover(owner).await;
    // Give the crate every chance: publishes make it notice the new topology.
    for _ in 0..10 {
        publish(&mut conn).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = heard(&mut rx);
    publish(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(heard(&mut rx), 0, "the crate resubscribed across slots: its CROSSSLOT problem is gone");
}
