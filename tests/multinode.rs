//! Two node processes on different ports sharing MariaDB and Redis: users on different
//! nodes chat both ways, and a user who was offline gets everything on another node.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_deliver_to_each_other() {
    let (Some(db), Some(redis)) = (common::mysql_url(), common::redis_url()) else { return };
    let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis)];
    let mut n1 = common::Proc::spawn(&["--node-id".into(), "n1".into()], &env);
    let mut n2 = common::Proc::spawn(&["--node-id".into(), "n2".into()], &env);
    n1.ready().await;
    n2.ready().await;
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
    assert_eq!(b.next_non_ack(Duration::from_millis(500)).await, None, "nothing twice");
}
