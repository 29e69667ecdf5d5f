//! WebSocket protocol tests (docs/protocol.md, docs/delivery.md) on an in-process embedded node.

mod common;

use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::Value;
use switchboard::client::{WsConn, WsEvent, connect_ws, connect_ws_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// Connects and returns the connection after its `hello`.
async fn connect(node: &common::Node, user: i64, ack: bool) -> WsConn {
    let mut ws = connect_ws(node.addr, user, ack).await.expect("connect");
    match ws.next(WAIT).await {
        Some(WsEvent::Json(v)) if v["type"] == "hello" => ws,
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn next_message(ws: &mut WsConn) -> Value {
    match ws.next_non_ack(WAIT).await {
        Some(WsEvent::Json(v)) if v["type"] == "message" => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn quiet(ws: &mut WsConn, within: Duration) {
    if let Some(e) = ws.next_non_ack(within).await {
        panic!("expected nothing, got {e:?}");
    }
}

async fn pair(node: &common::Node) -> (i64, i64, i64) {
    let users = common::users(&node.api(), 2).await;
    let group = node.api().create_group(users[0], &[users[1]]).await.expect("group");
    (users[0], users[1], group)
}

async fn send(node: &common::Node, from: i64, group: i64, text: &str) -> Value {
    let (status, body) = node.api().send(from, group, text, None).await.expect("send");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_heartbeat_and_live_delivery_with_the_seed_fields() {
    let node = common::embedded(&[]).await;
    let (alice, bob, group) = pair(&node).await;
    let mut ws = connect_ws(node.addr, bob, false).await.expect("connect");
    let Some(WsEvent::Json(hello)) = ws.next(WAIT).await else { panic!("no hello") };
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["node"], "test");
    assert_eq!(hello["heartbeat_interval_ms"], 5000);
    assert_eq!(hello["heartbeat_timeout_ms"], 15000);
    assert!(hello["session_id"].as_str().is_some());

    ws.send_text("heartbeat").await.expect("send");
    assert_eq!(ws.next(WAIT).await, Some(WsEvent::Json(serde_json::json!({ "type": "heartbeat_ack" }))));
    ws.send_text(r#"{"type":"heartbeat"}"#).await.expect("send");
    assert_eq!(ws.next(WAIT).await, Some(WsEvent::Json(serde_json::json!({ "type": "heartbeat_ack" }))));

    let sent = send(&node, alice, group, "hi <b>bob</b>").await;
    let m = next_message(&mut ws).await;
    assert_eq!(m["message_id"], sent["message_id"]);
    assert_eq!(m["group_id"].as_i64(), Some(group));
    assert_eq!(m["sender_id"].as_i64(), Some(alice));
    assert_eq!(m["content"], "hi <b>bob</b>");
    assert_eq!(m["timestamp"], sent["timestamp"]);
    assert_eq!(node.state.metrics.messages_delivered.with_label_values(&["live"]).get(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_arrive_on_reconnect_in_order_and_once() {
    let node = common::embedded(&[]).await;
    let (alice, bob, group) = pair(&node).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&node, alice, group, &format!("offline {i}")).await["message_id"].as_i64().expect("id"));
    }
    let mut ws = connect(&node, bob, false).await;
    for (i, id) in ids.iter().enumerate() {
        let m = next_message(&mut ws).await;
        assert_eq!(m["message_id"].as_i64(), Some(*id));
        assert_eq!(m["content"], format!("offline {i}"));
    }
    quiet(&mut ws, Duration::from_millis(300)).await;
    // Written means delivered for a client that never acks: a later connect replays nothing.
    ws.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connect(&node, bob, false).await;
    quiet(&mut again, Duration::from_millis(300)).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_clients_get_unacked_messages_again() {
    let node = common::embedded(&[]).await;
    let (alice, bob, group) = pair(&node).await;
    let mut ws = connect(&node, bob, true).await;
    let id = send(&node, alice, group, "ack me").await["message_id"].as_i64().expect("id");
    assert_eq!(next_message(&mut ws).await["message_id"].as_i64(), Some(id));
    ws.close().await;
    // Not acked: replayed on the next connection.
    let mut ws = connect(&node, bob, true).await;
    assert_eq!(next_message(&mut ws).await["message_id"].as_i64(), Some(id));
    ws.ack(&[id]).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.close().await;
    let mut ws = connect(&node, bob, true).await;
    quiet(&mut ws, Duration::from_millis(300)).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_while_connected_delivers_without_reconnecting() {
    let node = common::embedded(&[]).await;
    let users = common::users(&node.api(), 2).await;
    let (bob, carol) = (users[0], users[1]);
    let mut ws = connect(&node, bob, false).await;
    let group = node.api().create_group(carol, &[bob]).await.expect("group");
    match ws.next_non_ack(WAIT).await {
        Some(WsEvent::Json(v)) if v["type"] == "group_joined" => {
            assert_eq!(v["group_id"].as_i64(), Some(group));
            assert_eq!(v["members"], serde_json::json!([bob.min(carol), bob.max(carol)]));
            let mut named = Vec::new();
            for id in [bob.min(carol), bob.max(carol)] {
                named.push(node.api().get(&format!("/users/{id}")).await.expect("user").1);
            }
            assert_eq!(v["member_users"], Value::Array(named), "members named in the same order");
        }
        other => panic!("expected group_joined, got {other:?}"),
    }
    let sent = send(&node, carol, group, "new group").await;
    assert_eq!(next_message(&mut ws).await["message_id"], sent["message_id"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_a_user_receives_and_fifty_arrive_in_order() {
    let node = common::embedded(&[]).await;
    let (alice, bob, group) = pair(&node).await;
    let mut one = connect(&node, bob, false).await;
    let mut two = connect(&node, bob, false).await;
    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(send(&node, alice, group, &format!("n{i}")).await["message_id"].as_i64().expect("id"));
    }
    for ws in [&mut one, &mut two] {
        let mut got = Vec::new();
        for _ in 0..50 {
            got.push(next_message(ws).await["message_id"].as_i64().expect("id"));
        }
        assert_eq!(got, sent);
        quiet(ws, Duration::from_millis(200)).await;
    }
    // The sender's own socket gets its message too (other tabs stay in sync).
    let mut own = connect(&node, alice, false).await;
    let id = send(&node, alice, group, "echo").await["message_id"].clone();
    assert_eq!(next_message(&mut own).await["message_id"], id);
    node.stop().await;
}

/// A client that stops reading is closed as a slow consumer (4008) without slowing anyone
/// else, and catches up from its inbox when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_catches_up_from_its_inbox() {
    let node = common::embedded(&["--session-queue", "8", "--write-timeout", "300ms"]).await;
    let (alice, bob, group) = pair(&node).await;
    // A raw client that completes the handshake and then never reads, with a small receive
    // window so the server's socket buffer fills soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut raw = socket.connect(node.addr).await.expect("connect");
    let req = format!(
        "GET /ws/{bob}?ack=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(req.as_bytes()).await.expect("handshake");
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).await.expect("status line");
    assert_eq!(&head, b"HTTP/1.1 101");
    // A healthy session of the sender, to show fan-out is not held up.
    let mut healthy = connect(&node, alice, false).await;
    let big = "x".repeat(16 * 1024);
    let mut sent = Vec::new();
    for _ in 0..600 {
        sent.push(send(&node, alice, group, &big).await["message_id"].as_i64().expect("id"));
    }
    for id in &sent {
        assert_eq!(next_message(&mut healthy).await["message_id"].as_i64(), Some(*id));
    }
    let metrics = &node.state.metrics;
    for _ in 0..50 {
        if metrics.ws_disconnects.with_label_values(&["slow_consumer"]).get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{}",
        String::from_utf8_lossy(&metrics.render())
            .lines()
            .filter(|l| l.contains("disconnects"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(metrics.slow_consumer_disconnects.get(), 1);
    assert_eq!(metrics.ws_disconnects.with_label_values(&["slow_consumer"]).get(), 1);
    drop(raw);
    // Back with acks: everything arrives from the inbox, in order, once.
    let mut ws = connect(&node, bob, true).await;
    for id in &sent {
        assert_eq!(next_message(&mut ws).await["message_id"].as_i64(), Some(*id));
    }
    quiet(&mut ws, Duration::from_millis(300)).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_and_bad_frames_get_their_codes() {
    let node = common::embedded(&["--max-frame-bytes", "2048"]).await;
    let (_alice, bob, _group) = pair(&node).await;
    for (path, status) in [("/ws/abc", 400), ("/ws/0", 400), ("/ws/999999999", 404)] {
        match connect_ws_path(node.addr, path).await {
            Err(switchboard::client::ClientError::Status { status: s, body }) => {
                assert_eq!(s.as_u16(), status, "{path}: {body}");
                assert!(body["code"].is_string());
            }
            Err(e) => panic!("{path}: {e}"),
            Ok(_) => panic!("{path} upgraded"),
        }
    }
    let cases: [(Frame<'static>, u16); 4] = [
        (Frame::text(Payload::Owned(vec![b'x'; 4096])), 1009),
        (Frame::binary(Payload::Owned(b"bin".to_vec())), 1008),
        (Frame::text(Payload::Owned(br#"{"type":"launch"}"#.to_vec())), 1008),
        (Frame::text(Payload::Owned(b"not json".to_vec())), 1008),
    ];
    for (frame, code) in cases {
        let mut ws = connect(&node, bob, false).await;
        ws.send_frame(frame).await.expect("send");
        assert_eq!(ws.next_non_ack(WAIT).await, Some(WsEvent::Closed(Some(code))));
    }
    // Fragmented text is reassembled; ping is answered by the server (no close).
    let mut ws = connect(&node, bob, false).await;
    ws.send_frame(Frame::new(false, OpCode::Text, None, Payload::Owned(b"heart".to_vec()))).await.expect("frag");
    ws.send_frame(Frame::new(true, OpCode::Continuation, None, Payload::Owned(b"beat".to_vec()))).await.expect("frag");
    assert_eq!(ws.next(WAIT).await, Some(WsEvent::Json(serde_json::json!({ "type": "heartbeat_ack" }))));
    ws.send_frame(Frame::new(true, OpCode::Ping, None, Payload::Owned(b"p".to_vec()))).await.expect("ping");
    ws.send_text("heartbeat").await.expect("hb");
    assert_eq!(ws.next(WAIT).await, Some(WsEvent::Json(serde_json::json!({ "type": "heartbeat_ack" }))));
    node.stop().await;
}

/// Silence for the heartbeat timeout closes with 4000; heartbeats keep a session open.
/// Runs on paused time: no real 15 s wait.
#[tokio::test(flavor = "current_thread")]
async fn a_silent_socket_is_closed_with_4000_and_heartbeats_keep_it_open() {
    let node = common::embedded(&[]).await;
    let (_alice, bob, _group) = pair(&node).await;
    let mut silent = connect(&node, bob, false).await;
    let chatty = connect(&node, bob, false).await;
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let keepalive = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            chatty.send_text("heartbeat").await.expect("heartbeat");
        }
        chatty
    });
    assert_eq!(silent.next(Duration::from_secs(20)).await, Some(WsEvent::Closed(Some(4000))));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(14_500) && waited < Duration::from_secs(17), "closed after {waited:?}");
    let mut chatty = keepalive.await.expect("join");
    // 30 s of virtual time with heartbeats: still open, six acks.
    for _ in 0..6 {
        assert_eq!(
            chatty.next(Duration::from_secs(1)).await,
            Some(WsEvent::Json(serde_json::json!({ "type": "heartbeat_ack" })))
        );
    }
    assert_eq!(node.state.metrics.heartbeat_timeouts.get(), 1);
    tokio::time::resume();
    node.stop().await;
}

/// The design's weak point: a message committed but never published (its node died between
/// the commit and the publish). The next message of the group arrives past the hole; the
/// session holds it, reads the hole from the store, and writes both in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_was_never_published_is_read_from_the_store_in_order() {
    let node = common::embedded(&[]).await;
    let (alice, bob, group) = pair(&node).await;
    let mut ws = connect(&node, bob, false).await;
    let first = send(&node, alice, group, "published").await;
    assert_eq!(next_message(&mut ws).await["message_id"], first["message_id"]);
    let unpublished = switchboard::store::NewMessage {
        group_id: group,
        sender_id: alice,
        content: "stored, never published".into(),
        client_msg_id: None,
        sent_at_ms: switchboard::model::now_ms(),
    };
    let (lost, _) = node.state.store.insert_messages(vec![unpublished]).await.pop().expect("one").expect("insert");
    let next = send(&node, alice, group, "after the hole").await;
    let a = next_message(&mut ws).await;
    let b = next_message(&mut ws).await;
    assert_eq!((a["message_id"].as_i64(), a["seq"].as_i64()), (Some(lost.message_id), Some(2)));
    assert_eq!((b["message_id"].clone(), b["seq"].as_i64()), (next["message_id"].clone(), Some(3)));
    quiet(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(node.state.metrics.gap_fetches.get(), 1);
    node.stop().await;
}

/// The connect order (subscribe, then catch up, then live: no gap, no duplicate) under a
/// handshake storm: every receiver of 8 groups connects at once while each group is being
/// written to, and half of them drop after a few messages and come straight back while the
/// writes go on. Within every connection each group's log arrives as one run of consecutive
/// sequence numbers; a user's first connection starts at 1 (nothing was delivered before),
/// a reconnect starts no later than where the previous connection stopped, and the last one
/// ends at the last message. Each writer publishes its group's messages in order, so no
/// session may ever have to read a hole from the store: the connect order alone must have
/// delivered everything (the hole repair would otherwise hide a missed message).
async fn connect_order_under_a_handshake_storm(node: common::Node) {
    const MEMBERS: usize = 25;
    const MESSAGES: i64 = 40;
    let api = node.api();
    let users = common::users(&api, 8 * MEMBERS).await;
    let mut writers = Vec::new();
    let mut clients = Vec::new();
    for members in users.chunks(MEMBERS) {
        let (sender, receivers) = (members[0], &members[1..]);
        let group = api.create_group(sender, receivers).await.expect("group");
        for (i, &user) in receivers.iter().enumerate() {
            let addr = node.addr;
            let drop_after = (i % 2 == 1).then_some(1 + i % 7);
            clients.push(tokio::spawn(async move { receive(addr, user, drop_after).await }));
        }
        let api = node.api();
        writers.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                let (status, body) = api.send(sender, group, &format!("m{i}"), None).await.expect("send");
                assert_eq!(status, 200, "{body}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    for c in clients {
        let (user, runs) = c.await.expect("client");
        let mut stopped = 0;
        for (n, run) in runs.iter().enumerate() {
            let first = run.first().copied().unwrap_or(stopped + 1);
            if n == 0 {
                assert_eq!(first, 1, "user {user}: the first connection starts at the group's first message");
            } else {
                assert!(first <= stopped + 1, "user {user}: connection {n} skipped from {stopped} to {first}");
            }
            assert!(run.windows(2).all(|w| w[1] == w[0] + 1), "user {user}: gap or duplicate in {run:?}");
            stopped = run.last().copied().unwrap_or(stopped);
        }
        assert_eq!(stopped, MESSAGES, "user {user}: did not get everything: {runs:?}");
    }
    assert_eq!(node.state.metrics.gap_fetches.get(), 0, "a session missed a message and read it as a hole");
    node.stop().await;
}

/// One acking receiver (so only what it read counts as delivered): the `seq` of every
/// message of each of its connections. With `drop_after`, the first connection closes after
/// acknowledging that many messages and a second one reads the rest.
async fn receive(addr: std::net::SocketAddr, user: i64, drop_after: Option<usize>) -> (i64, Vec<Vec<i64>>) {
    let mut runs = Vec::new();
    for limit in [drop_after, None] {
        let mut ws = connect_ws(addr, user, true).await.expect("connect");
        let mut seqs = Vec::new();
        while let Some(event) = ws.next_non_ack(WAIT).await {
            let WsEvent::Json(v) = event else { panic!("user {user}: unexpected {event:?}") };
            if v["type"] != "message" {
                continue;
            }
            seqs.push(v["seq"].as_i64().expect("seq"));
            ws.ack(&[v["message_id"].as_i64().expect("id")]).await.expect("ack");
            if Some(seqs.len()) == limit || seqs.last() == Some(&40) {
                break;
            }
        }
        ws.close().await;
        let done = seqs.last() == Some(&40);
        runs.push(seqs);
        if done || limit.is_none() {
            break;
        }
    }
    (user, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_order_holds_under_a_handshake_storm() {
    connect_order_under_a_handshake_storm(common::embedded(&["--send-rate", "100000"]).await).await;
}

/// The same over Redis, where subscriptions take a round trip to confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis; scripts/test runs it"]
async fn the_connect_order_holds_under_a_handshake_storm_over_redis() {
    let redis = common::redis_url();
    let prefix = common::unique("storm") + ":";
    let node = common::embedded(&["--send-rate", "100000", "--redis-url", &redis, "--channel-prefix", &prefix]).await;
    connect_order_under_a_handshake_storm(node).await;
}
