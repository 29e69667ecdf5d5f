//! Hardening: every configurable limit just under and just over, hostile input classes, the
//! slowloris guard (with other clients served meanwhile) and Origin checks. Token mode is in
//! `security.rs`.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::client::{ClientError, WsConn, WsEvent, connect_ws, connect_ws_path, connect_ws_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

fn refused(res: Result<WsConn, ClientError>) -> (u16, Value) {
    match res {
        Err(ClientError::Status { status, body }) => (status.as_u16(), body),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade was accepted"),
    }
}

async fn hello(ws: &mut WsConn) {
    assert!(matches!(ws.next(WAIT).await, Some(WsEvent::Json(v)) if v["type"] == "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_rate_limit_answers_429_with_retry_after() {
    let node = common::embedded(&["--send-rate", "5", "--send-burst", "5"]).await;
    let api = node.api();
    let u = common::users(&api, 3).await;
    let g = api.create_group(u[0], &[u[1]]).await.expect("group");
    for i in 0..5 {
        assert_eq!(
            api.send(u[0], g, &format!("ok {i}"), None).await.expect("send").0,
            200,
            "send {i} within the burst"
        );
    }
    let req = hyper::Request::post("/send_message")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!("sender_id={}&group_id={g}&content=over", u[0]))))
        .expect("req");
    let (status, headers, _) = api.request_with_headers(req).await.expect("send");
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_some(), "429 without Retry-After");
    // Others are not affected, and the user gets a token back after 1/rate.
    let g2 = api.create_group(u[1], &[u[2]]).await.expect("group");
    assert_eq!(api.send(u[1], g2, "other user", None).await.expect("send").0, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(api.send(u[0], g, "after the wait", None).await.expect("send").0, 200);
    assert_eq!(node.state.metrics.limit_rejections.with_label_values(&["send_rate"]).get(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_node_and_per_user() {
    let node = common::embedded(&["--max-connections", "3", "--max-connections-per-user", "2"]).await;
    let u = common::users(&node.api(), 3).await;
    let mut a1 = connect_ws(node.addr, u[0], false).await.expect("a1");
    hello(&mut a1).await;
    let mut a2 = connect_ws(node.addr, u[0], false).await.expect("a2");
    hello(&mut a2).await;
    let (status, body) = refused(connect_ws(node.addr, u[0], false).await);
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_connections")));
    let mut b1 = connect_ws(node.addr, u[1], false).await.expect("b1");
    hello(&mut b1).await;
    let (status, body) = refused(connect_ws(node.addr, u[2], false).await);
    assert_eq!((status, body["code"].as_str()), (503, Some("over_capacity")));
    // Room again once a session leaves.
    a1.close().await;
    drop(a1);
    let mut ok = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(ws) = connect_ws(node.addr, u[2], false).await {
            ok = Some(ws);
            break;
        }
    }
    hello(ok.as_mut().expect("a slot freed up")).await;
    let m = &node.state.metrics;
    assert_eq!(m.limit_rejections.with_label_values(&["connections_per_user"]).get(), 1);
    assert!(m.limit_rejections.with_label_values(&["connections"]).get() >= 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_member_limits_just_under_and_over() {
    let node = common::embedded(&[
        "--max-group-members",
        "3",
        "--max-body-bytes",
        "1024",
        "--max-message-bytes",
        "512",
        "--max-frame-bytes",
        "2048",
    ])
    .await;
    let api = node.api();
    let u = common::users(&api, 4).await;
    let by = u[0].to_string();
    let three = format!("{},{}", u[1], u[2]);
    let four = format!("{},{},{}", u[1], u[2], u[3]);
    let (status, g) = api.post_form("/create_group", &[("created_by", &by), ("user_ids", &three)]).await.expect("3");
    assert_eq!(status, 200, "{g}");
    let (status, body) = api.post_form("/create_group", &[("created_by", &by), ("user_ids", &four)]).await.expect("4");
    assert_eq!((status.as_u16(), body["code"].as_str()), (400, Some("too_many_members")));
    let g = g["group_id"].as_i64().expect("gid");
    assert_eq!(api.send(u[0], g, &"x".repeat(512), None).await.expect("512").0, 200);
    let (status, body) = api.send(u[0], g, &"x".repeat(513), None).await.expect("513");
    assert_eq!((status.as_u16(), body["code"].as_str()), (413, Some("message_too_large")));
    // The body limit counts the whole request body.
    let pad = |n: usize| json!({ "username": "x", "pad": "p".repeat(n) });
    let base = pad(0).to_string().len();
    let (status, body) = api.post_json("/register", &pad(1024 - base)).await.expect("at limit");
    assert_eq!(status, 200, "a body of exactly the limit is read: {body}");
    let (status, body) = api.post_json("/register", &pad(1025 - base)).await.expect("over");
    assert_eq!((status.as_u16(), body["code"].as_str()), (413, Some("body_too_large")));
    // A client frame of exactly the limit is fine; one byte more closes with 1009.
    let frame = |n: usize| {
        let mut v = br#"{"type":"heartbeat","pad":""#.to_vec();
        v.resize(n - 2, b'p');
        v.extend_from_slice(br#""}"#);
        String::from_utf8(v).expect("utf8")
    };
    let mut ws = connect_ws(node.addr, u[0], false).await.expect("ws");
    hello(&mut ws).await;
    ws.send_text(&frame(2048)).await.expect("send");
    assert_eq!(ws.next(WAIT).await, Some(WsEvent::Json(json!({ "type": "heartbeat_ack" }))));
    ws.send_text(&frame(2049)).await.expect("send");
    assert_eq!(ws.next_non_ack(WAIT).await, Some(WsEvent::Closed(Some(1009))));
    let m = &node.state.metrics;
    for limit in ["group_members", "message_size", "body_size", "ws_frame_size"] {
        assert_eq!(m.limit_rejections.with_label_values(&[limit]).get(), 1, "{limit}");
    }
    node.stop().await;
}

/// A catch-up reads `--replay-limit` messages per query and goes on page after page until
/// nothing is left; an acknowledged catch-up is not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_pages_through_everything_missed() {
    let node = common::embedded(&["--replay-limit", "3", "--position-flush", "50ms"]).await;
    let api = node.api();
    let u = common::users(&api, 2).await;
    let g = api.create_group(u[0], &[u[1]]).await.expect("group");
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(api.send(u[0], g, &format!("m{i}"), None).await.expect("send").1["message_id"].as_i64().expect("id"));
    }
    let received = |mut ws: WsConn| async move {
        let mut got = Vec::new();
        while let Some(WsEvent::Json(v)) = ws.next_non_ack(Duration::from_millis(400)).await {
            got.push(v["message_id"].as_i64().expect("id"));
        }
        (ws, got)
    };
    let mut ws = connect_ws(node.addr, u[1], true).await.expect("ws");
    hello(&mut ws).await;
    let (ws, got) = received(ws).await;
    assert_eq!(got, ids, "three pages, in order");
    ws.ack(&got).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.close().await;
    let mut ws = connect_ws(node.addr, u[1], true).await.expect("ws");
    hello(&mut ws).await;
    let (_ws, rest) = received(ws).await;
    assert_eq!(rest, Vec::<i64>::new(), "acknowledged messages came again");
    node.stop().await;
}

/// Many connections that trickle their headers are cut at the header timeout, while
/// everyone else keeps being served quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_others_are_served() {
    let node = common::embedded(&["--header-read-timeout", "700ms"]).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(node.addr).await.expect("connect");
        s.write_all(b"POST /register HTTP/1.1\r\nHost: x\r\n").await.expect("partial");
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        // One more header byte every 100 ms, never finishing.
        let started = Instant::now();
        let mut cut = vec![None; slow.len()];
        while started.elapsed() < Duration::from_secs(4) && cut.iter().any(Option::is_none) {
            for (i, s) in slow.iter_mut().enumerate() {
                if cut[i].is_none() && s.write_all(b"X").await.is_err() {
                    cut[i] = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A cut connection reads EOF.
        let mut eof = 0;
        for s in &mut slow {
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await
                && (n == 0 || buf.starts_with(b"HTTP/1.1 408"))
            {
                eof += 1;
            }
        }
        eof
    });
    // Meanwhile, normal clients get quick answers.
    let api = node.api();
    for i in 0..20 {
        let t = Instant::now();
        let (status, _) =
            api.post_form("/register", &[("username", &common::unique(&format!("ok{i}")))]).await.expect("ok");
        assert_eq!(status, 200);
        assert!(t.elapsed() < Duration::from_millis(500), "request {i} took {:?} during the abuse", t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = trickle.await.expect("join");
    assert!(closed >= 190, "only {closed} of 200 slow connections were cut");
    assert!(node.state.metrics.limit_rejections.with_label_values(&["header_timeout"]).get() >= 190);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origins_can_be_restricted() {
    let node = common::embedded(&["--allowed-origins", "https://chat.example.com,http://localhost:8000"]).await;
    let u = common::users(&node.api(), 1).await;
    let path = format!("/ws/{}", u[0]);
    let (status, body) = refused(connect_ws_with(node.addr, &path, &[("origin", "https://evil.example")]).await);
    assert_eq!((status, body["code"].as_str()), (403, Some("origin_not_allowed")));
    let mut ok = connect_ws_with(node.addr, &path, &[("origin", "https://chat.example.com")]).await.expect("allowed");
    hello(&mut ok).await;
    let mut no_origin = connect_ws_path(node.addr, &path).await.expect("non-browser client");
    hello(&mut no_origin).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_stored_and_returned_verbatim() {
    let node = common::embedded(&["--send-rate", "1000"]).await;
    let api = node.api();
    let hostile = [
        "'; DROP TABLE messages; --",
        "\" OR 1=1 --",
        "Robert'); DELETE FROM users WHERE ('1'='1",
        "<script>alert(1)</script>",
        "%00%27 \\x00 \\' \u{202e}rtl \u{1F600}",
    ];
    let u = common::users(&api, 2).await;
    for (i, text) in hostile.iter().enumerate() {
        let name = format!("{}{text}", common::unique("h"));
        let (status, body) = api.post_form("/register", &[("username", &name)]).await.expect("register");
        assert_eq!((status.as_u16(), body["username"].as_str()), (200, Some(name.as_str())));
        let (status, g) = api
            .post_json("/create_group", &json!({ "name": text, "created_by": u[0], "user_ids": [body["user_id"]] }))
            .await
            .expect("group");
        assert_eq!((status.as_u16(), g["name"].as_str()), (200, Some(*text)), "group {i}");
        let g = g["group_id"].as_i64().expect("gid");
        let client_id = format!("c{i}{text}");
        let (status, _) = api.send(u[0], g, text, Some(&client_id[..client_id.len().min(60)])).await.expect("send");
        assert_eq!(status, 200);
        let (_, history) = api.get(&format!("/groups/{g}/messages")).await.expect("history");
        assert_eq!(history[0]["content"], *text);
        let (_, groups) = api.get(&format!("/users/{}/groups", u[0])).await.expect("groups");
        assert!(groups.as_array().expect("array").iter().any(|x| x["name"] == *text));
    }
    // Control characters in names and invalid UTF-8 bodies are client errors.
    let (status, body) = api
        .post_json("/create_group", &json!({ "name": "a\u{1b}[31m", "created_by": u[0], "user_ids": [u[1]] }))
        .await
        .expect("ctl");
    assert_eq!((status.as_u16(), body["code"].as_str()), (400, Some("invalid_name")));
    let req = hyper::Request::post("/register")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"username=\xff\xfe")))
        .expect("req");
    assert_eq!(api.request(req).await.expect("utf8").0, 400);
    let (status, _) = api.get("/users/99999999999999999999999/groups").await.expect("overflow");
    assert_eq!(status, 400);
    node.stop().await;
}
