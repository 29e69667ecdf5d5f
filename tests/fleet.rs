//! Draining and fleet operations (docs/lifecycle.md): a rolling restart of three nodes behind the
//! real HAProxy under live traffic, the drain's refusals and probes, the enforced TTL, and
//! "a second signal finishes now".

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::fleet::{self, Ports, metric};
use common::traffic::Workload;
use switchboard::client::{Api, ClientError, WsEvent, connect_ws, connect_ws_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket client that completes the handshake and then never answers anything,
/// including the server's close frame.
async fn deaf_client(addr: SocketAddr, user: i64) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("handshake");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("status");
    assert_eq!(&head, b"HTTP/1.1 101");
    s
}

/// Reads until EOF; returns everything read.
async fn read_to_eof(mut s: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_refuses_upgrades_turns_unready_and_keeps_serving() {
    let node = common::embedded(&["--drain-timeout", "3s"]).await;
    let users = common::users(&node.api(), 2).await;
    let deaf = deaf_client(node.addr, users[0]).await;
    let mut agent = TcpStream::connect(node.agent).await.expect("agent");
    let mut answer = String::new();
    agent.read_to_string(&mut answer).await.expect("agent answer");
    assert_eq!(answer, "ready\n");

    let started = Instant::now();
    node.lifecycle.drain();
    // Readiness turns off at once, on both listeners; liveness stays on.
    for addr in [node.addr, node.admin] {
        let (status, body) = Api::new(addr).get("/readyz").await.expect("readyz");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["phase"], "draining");
        assert_eq!(Api::new(addr).get("/healthz").await.expect("healthz").0, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut agent = TcpStream::connect(node.agent).await.expect("agent");
    let mut answer = String::new();
    agent.read_to_string(&mut answer).await.expect("agent answer");
    assert_eq!(answer, "drain\n");
    // New sessions go elsewhere: 503 with Retry-After.
    match connect_ws_path(node.addr, &format!("/ws/{}", users[1])).await {
        Err(ClientError::Status { status, body }) => {
            assert_eq!(status, 503);
            assert_eq!(body["code"], "draining");
        }
        other => panic!("upgrade during drain: {:?}", other.map(|_| "upgraded")),
    }
    let raw = hyper::Request::get(format!("/ws/{}", users[1]))
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let (status, headers, _) = node.api().request_with_headers(raw).await.expect("upgrade");
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some(), "no Retry-After");
    // REST still works while draining.
    let (status, _) = node.api().get(&format!("/users/{}/groups", users[0])).await.expect("rest");
    assert_eq!(status, 200);
    assert_eq!(node.state.metrics.ws_upgrade_rejected.with_label_values(&["draining"]).get(), 2);
    drop(deaf);
    node.stop().await;
}

/// A client that ignores the close frame is cut at the drain timeout; one that answers
/// leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_clients_that_ignore_the_close() {
    let node = common::embedded(&["--drain-timeout", "2s"]).await;
    let users = common::users(&node.api(), 2).await;
    let deaf = deaf_client(node.addr, users[0]).await;
    let mut polite = connect_ws(node.addr, users[1], false).await.expect("connect");
    assert!(matches!(polite.next(Duration::from_secs(5)).await, Some(WsEvent::Json(v)) if v["type"] == "hello"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    node.lifecycle.drain();
    let deaf = tokio::spawn(async move {
        let bytes = read_to_eof(deaf).await;
        (bytes, started.elapsed())
    });
    // The polite client gets goodbye, then 1001, promptly.
    let mut saw_goodbye = false;
    loop {
        match polite.next(Duration::from_secs(3)).await {
            Some(WsEvent::Json(v)) if v["type"] == "goodbye" => {
                assert_eq!(v["reason"], "draining");
                saw_goodbye = true;
            }
            Some(WsEvent::Closed(code)) => {
                assert_eq!(code, Some(1001));
                break;
            }
            Some(_) => continue,
            None => panic!("polite client was not closed"),
        }
    }
    assert!(saw_goodbye);
    assert!(started.elapsed() < Duration::from_secs(1), "polite client waited {:?}", started.elapsed());
    let (bytes, cut_after) = deaf.await.expect("join");
    assert!(String::from_utf8_lossy(&bytes).contains("\"goodbye\""), "deaf client got no goodbye");
    assert!(bytes.windows(4).any(|w| w == [0x88, 0x0c, 0x03, 0xe9]), "deaf client got no 1001 close frame");
    assert!(
        cut_after >= Duration::from_millis(1800) && cut_after < Duration::from_secs(5),
        "deaf client cut after {cut_after:?}, drain timeout is 2 s"
    );
    let m = &node.state.metrics;
    assert_eq!(m.ws_disconnects.with_label_values(&["drain_timeout"]).get(), 1);
    assert_eq!(m.ws_disconnects.with_label_values(&["draining"]).get(), 1);
    tokio::time::timeout(Duration::from_secs(10), node.task).await.expect("node stopped").expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB; scripts/test runs it"]
async fn a_second_sigterm_finishes_the_drain_now() {
    let db = common::mysql_url();
    let env = vec![("DATABASE_URL".to_owned(), db)];
    let mut node = common::Proc::spawn(&["--drain-timeout".into(), "120s".into()], &env);
    node.ready().await;
    let user = Api::new(node.addr).register(&common::unique("d")).await.expect("user");
    let deaf = deaf_client(node.addr, user).await;
    node.signal("TERM");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(node.child.try_wait().expect("wait").is_none(), "exited before its deaf client left");
    let second = Instant::now();
    node.signal("TERM");
    let status = loop {
        if let Some(status) = node.child.try_wait().expect("wait") {
            break status;
        }
        assert!(second.elapsed() < Duration::from_secs(5), "second SIGTERM did not finish the drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    drop(deaf);
}

/// Samples `ws_connects_total` of the surviving nodes every 100 ms until told to stop and
/// returns the peak number of new sessions within any one second.
async fn peak_reconnects_per_second(admins: Vec<SocketAddr>, stop: tokio_util::sync::CancellationToken) -> f64 {
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    while !stop.is_cancelled() {
        let mut total = 0.0;
        for a in &admins {
            total += metric(*a, "switchboard_ws_connects_total", "").await.unwrap_or(0.0);
        }
        samples.push((Instant::now(), total));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut peak: f64 = 0.0;
    for (i, (t, v)) in samples.iter().enumerate() {
        if let Some((_, base)) =
            samples[..i].iter().rev().find(|(t0, _)| t.duration_since(*t0) >= Duration::from_secs(1))
        {
            peak = peak.max(v - base);
        }
    }
    peak
}

/// The rolling deploy: each node in turn drained with SIGTERM and restarted while several
/// hundred clients chat through HAProxy. Node 1 closes its sessions all at once
/// (`--drain-close-rate 100000`), nodes 2 and 3 pace them at 40/s; the test prints the peak
/// reconnect rate the surviving nodes see in each case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, HAProxy and redis-server; scripts/test runs it"]
async fn a_rolling_restart_behind_haproxy_loses_nothing() {
    common::require_program("haproxy");
    let db = common::mysql_url();
    let redis = common::services::redis().await;
    let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis.url())];
    let ports = [Ports::free(), Ports::free(), Ports::free()];
    let rates = ["100000", "40", "40"];
    let names = ["node1", "node2", "node3"];
    let args = |i: usize| vec!["--drain-close-rate", rates[i], "--drain-timeout", "30s"];
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut n = fleet::node(names[i], &ports[i], &args(i), &env);
        n.ready().await;
        nodes.push(n);
    }
    let hp = fleet::haproxy(&ports).await;
    hp.wait_all_up(&names).await;

    let work = Workload::start(&[hp.addr], 150, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut drained_sessions = 0.0;
    for i in 0..3 {
        let admin = nodes[i].admin;
        let survivors: Vec<SocketAddr> = (0..3).filter(|j| *j != i).map(|j| nodes[j].admin).collect();
        let held = metric(admin, "switchboard_ws_connections", "").await.expect("sessions");
        drained_sessions += held;
        let stop = tokio_util::sync::CancellationToken::new();
        let sampler = tokio::spawn(peak_reconnects_per_second(survivors, stop.clone()));

        let t0 = Instant::now();
        nodes[i].signal("TERM");
        // Unready within a second.
        loop {
            if let Ok((503, _)) = Api::new(admin).get("/readyz").await.map(|(s, b)| (s.as_u16(), b)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(1), "{} still ready after 1 s", names[i]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unready = t0.elapsed();
        // HAProxy takes it out of rotation ("UP 1/2" is still in rotation, going down).
        while hp.status_of(names[i]).await.starts_with("UP") {
            assert!(t0.elapsed() < Duration::from_secs(5), "haproxy kept {} UP", names[i]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out_of_rotation = t0.elapsed();
        let status = hp.status_of(names[i]).await;
        // From then on it gets no new connection: neither a session nor a refused upgrade.
        let connects = metric(admin, "switchboard_ws_connects_total", "").await;
        let refused = metric(admin, "switchboard_ws_upgrade_rejected_total", "draining").await;
        let mut last = (connects, refused);
        let exit = loop {
            if let Some(status) = nodes[i].child.try_wait().expect("wait") {
                break status;
            }
            if let (Some(c), r) = (
                metric(admin, "switchboard_ws_connects_total", "").await,
                metric(admin, "switchboard_ws_upgrade_rejected_total", "draining").await,
            ) {
                last = (Some(c), r.or(last.1));
            }
            assert!(t0.elapsed() < Duration::from_secs(40), "{} did not finish draining", names[i]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(exit.success(), "{} exited with {exit}", names[i]);
        assert_eq!(last.0, connects, "{} got new sessions after HAProxy took it out", names[i]);
        assert_eq!(last.1, refused, "{} got new upgrade attempts after HAProxy took it out", names[i]);
        let drained = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        let peak = sampler.await.expect("sampler");
        println!(
            "drain {}: sessions={held} close_rate={}/s unready_after={unready:?} haproxy={status} after {out_of_rotation:?} \
             drained_after={drained:?} peak_reconnects_per_s_on_survivors={peak}",
            names[i], rates[i]
        );
        nodes[i] = fleet::node(names[i], &ports[i], &args(i), &env);
        nodes[i].ready().await;
        hp.wait_all_up(&names).await;
    }
    let going_away = work.going_away.load(Ordering::SeqCst) as f64;
    let report = work.finish(Duration::from_secs(60)).await;
    println!("rolling restart: {report} going_away={going_away} drained_sessions={drained_sessions}");
    assert!(report.clean(), "{report}");
    assert!(report.accepted > 300, "too little traffic: {report}");
    assert!(
        going_away >= drained_sessions,
        "clients saw {going_away} 1001 closes for {drained_sessions} drained sessions"
    );
}
