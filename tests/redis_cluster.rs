//! The `redis` crate's own cluster resubscription, checked on a real Redis Cluster of 3
//! masters and 3 replicas with channels in several slots of one master and that master's
//! failover: it sends one SSUBSCRIBE across slots, which Redis refuses (CROSSSLOT), so the
//! `sharded` backplane resubscribes by itself (src/backplane/cluster.rs, docs/routing.md).
//! The backplane's own behaviour on the cluster is in `backplane_conformance.rs`,
//! `multinode.rs` and `faults.rs`.

mod common;

use std::time::Duration;

use common::services::RedisCluster;
use switchboard::backplane::slot;

/// The crate's resubscription after a failover, with two channels in two slots of one
/// master: the crate sends them in one SSUBSCRIBE, Redis answers CROSSSLOT, and neither
/// channel hears a publish afterwards. If this starts failing, the crate fixed it and
/// the backplane's own resubscription could lean on the crate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; scripts/test runs it"]
async fn the_redis_crates_cluster_resubscription_fails_with_crossslot() {
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
