//! The security model as a client meets it: token mode on every user-scoped route (401 for a
//! missing, forged or expired token, 403 for another user's, rotation with two secrets),
//! invalid UTF-8 refused in every field, and refusals that a client reads instead of a reset.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::auth::Tokens;
use switchboard::client::{Api, ClientError, WsEvent, connect_ws_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "the-current-secret-0123";
const PREVIOUS: &str = "the-previous-secret-456";

/// Status and body of a request with `token` as bearer (or none).
async fn call(api: &Api, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
    let mut req = hyper::Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).expect("request");
    let (status, body) = api.request(req).await.expect("answered");
    (status.as_u16(), body)
}

async fn ws_status(addr: std::net::SocketAddr, user: i64, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    match connect_ws_with(addr, &format!("/ws/{user}"), &headers).await {
        Ok(mut ws) => {
            assert!(matches!(ws.next(Duration::from_secs(5)).await, Some(WsEvent::Json(v)) if v["type"] == "hello"));
            (101, Value::Null)
        }
        Err(ClientError::Status { status, body }) => (status.as_u16(), body),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_guards_every_user_scoped_route() {
    let node =
        common::embedded(&["--token-secret", SECRET, "--token-verify-secret", PREVIOUS, "--token-ttl", "1h"]).await;
    let api = node.api();
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (status, body) =
            call(&api, "POST", "/register", Some(json!({ "username": common::unique(name) })), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["token_expires_at"].is_string(), "{body}");
        ids.push(body["user_id"].as_i64().expect("id"));
        tokens.push(body["token"].as_str().expect("token").to_owned());
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let (ta, tb, tc) = (tokens[0].as_str(), tokens[1].as_str(), tokens[2].as_str());
    let (status, group) =
        call(&api, "POST", "/create_group", Some(json!({ "created_by": a, "user_ids": [b] })), Some(ta)).await;
    assert_eq!(status, 200, "{group}");
    let g = group["group_id"].as_i64().expect("group");

    let now = switchboard::model::now_ms() / 1000;
    let expired = Tokens::new(SECRET, None, 60).issue(a, now - 3600).0;
    let forged = format!("{}{}", &ta[..ta.len() - 1], if ta.ends_with('0') { '1' } else { '0' });
    let unknown_key = Tokens::new("a-secret-no-node-has-0", None, 60).issue(a, now).0;
    // Rotation: a token of the previous secret is still good, and distinct by its key id.
    let previous = Tokens::new(PREVIOUS, None, 60).issue(a, now).0;
    assert_ne!(previous.split('.').next(), ta.split('.').next());

    // Each route acts for alice; bob is another user (carol, for the history, a non-member).
    let send = json!({ "sender_id": a, "group_id": g, "content": "hi" });
    let create = json!({ "created_by": a, "user_ids": [b, c] });
    let routes: [(&str, String, Option<Value>, &str); 4] = [
        ("POST", "/send_message".into(), Some(send), tb),
        ("POST", "/create_group".into(), Some(create), tb),
        ("GET", format!("/users/{a}/groups"), None, tb),
        ("GET", format!("/groups/{g}/messages"), None, tc),
    ];
    for (method, path, body, other) in &routes {
        for (token, status, code) in [
            (None, 401, "missing_token"),
            (Some(forged.as_str()), 401, "invalid_token"),
            (Some(unknown_key.as_str()), 401, "invalid_token"),
            (Some("not.a.token"), 401, "invalid_token"),
            (Some(expired.as_str()), 401, "token_expired"),
            (Some(*other), 403, if path.contains("messages") { "not_a_member" } else { "wrong_user" }),
        ] {
            let (got, reply) = call(&api, method, path, body.clone(), token).await;
            assert_eq!((got, reply["code"].as_str()), (status, Some(code)), "{method} {path} with {token:?}: {reply}");
        }
        for good in [ta, previous.as_str()] {
            let (got, reply) = call(&api, method, path, body.clone(), Some(good)).await;
            assert_eq!(got, 200, "{method} {path}: {reply}");
        }
    }
    // bob, a member, may read the history; the token may also come as a field or parameter.
    assert_eq!(call(&api, "GET", &format!("/groups/{g}/messages?token={tb}"), None, None).await.0, 200);
    let send = json!({ "sender_id": b, "group_id": g, "content": "yo", "token": tb });
    assert_eq!(call(&api, "POST", "/send_message", Some(send), None).await.0, 200);

    // The WebSocket.
    for (token, status, code) in [
        (None, 401, "missing_token"),
        (Some(forged.as_str()), 401, "invalid_token"),
        (Some(expired.as_str()), 401, "token_expired"),
        (Some(tb), 403, "wrong_user"),
    ] {
        let (got, body) = ws_status(node.addr, a, token).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "ws with {token:?}");
    }
    assert_eq!(ws_status(node.addr, a, Some(ta)).await.0, 101);
    assert_eq!(ws_status(node.addr, a, Some(&previous)).await.0, 101);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_expire_after_the_ttl() {
    let node = common::embedded(&["--token-secret", SECRET, "--token-ttl", "1s"]).await;
    let api = node.api();
    let (_, alice) = call(&api, "POST", "/register", Some(json!({ "username": common::unique("a") })), None).await;
    let (a, ta) = (alice["user_id"].as_i64().expect("id"), alice["token"].as_str().expect("token").to_owned());
    assert_eq!(call(&api, "GET", &format!("/users/{a}/groups"), None, Some(&ta)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = call(&api, "GET", &format!("/users/{a}/groups"), None, Some(&ta)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("token_expired")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_beyond_loopback_logs_a_warning_at_start() {
    let port = common::free_port();
    let admin = common::free_port();
    let dir = common::TempDir::new();
    let start = |extra: &[&str]| {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--listen", &format!("0.0.0.0:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--database-url", &format!("sqlite://{}/sb.db", dir.path)])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The warning comes before the node is ready; give it a moment, then stop it.
        std::thread::sleep(Duration::from_millis(2500));
        let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
        let out = child.wait_with_output().expect("output");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let open = start(&[]);
    assert!(open.contains("beyond loopback without --token-secret"), "no warning in: {open}");
    let guarded = start(&["--token-secret", SECRET]);
    assert!(!guarded.contains("beyond loopback"), "warned with a secret: {guarded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_a_400_in_every_field() {
    let node = common::embedded(&[]).await;
    let api = node.api();
    let u = common::users(&api, 2).await;
    let g = api.create_group(u[0], &[u[1]]).await.expect("group");
    let form = |path: &str, body: String| {
        hyper::Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("request")
    };
    let send = format!("sender_id={}&group_id={g}&content=hi", u[0]);
    let cases = [
        form("/register", "username=%ff%fe".into()),
        form("/register", "username=ok&%ff=1".into()),
        form("/create_group", format!("created_by={}&user_ids={}&name=%c3", u[0], u[1])),
        form("/send_message", format!("sender_id={}&group_id={g}&content=%ff%fe", u[0])),
        form("/send_message", format!("{send}&client_msg_id=%e2%82")),
        form("/send_message", format!("{send}&token=%80")),
        hyper::Request::get(format!("/groups/{g}/messages?after=%ff"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
        hyper::Request::get(format!("/users/{}/groups?x=%fe", u[0]))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
    ];
    for req in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, body) = api.request(req).await.expect("answered");
        assert_eq!((status.as_u16(), body["code"].as_str()), (400, Some("invalid_encoding")), "{what}: {body}");
    }
    match connect_ws_with(node.addr, &format!("/ws/{}?ack=%ff", u[0]), &[]).await {
        Err(ClientError::Status { status, body }) => {
            assert_eq!((status.as_u16(), body["code"].as_str()), (400, Some("invalid_encoding")))
        }
        other => panic!("websocket with invalid UTF-8 accepted: {:?}", other.is_ok()),
    }
    // Nothing was stored in place of what the client sent.
    let (_, history) = api.get(&format!("/groups/{g}/messages")).await.expect("history");
    assert_eq!(history, json!([]));
    node.stop().await;
}

/// Posts `body` to `path` the way httpx does (the whole body is written before the response
/// is read), in `chunk`-sized writes `pace` apart, and returns the answer's status line.
async fn post_then_read(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    chunk: usize,
    pace: Duration,
) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    for part in body.chunks(chunk) {
        stream.write_all(part).await?;
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_are_answered_not_reset() {
    let node = common::embedded(&["--token-secret", SECRET]).await;
    let addr = node.addr;
    let big = vec![b'a'; 10 * 1024 * 1024];
    let started = Instant::now();
    // All at once, 100 times: 10 MB with its length declared, refused before it is read.
    let mut ok = 0;
    for i in 0..100 {
        let head = format!(
            "POST /register HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n",
            big.len()
        );
        match post_then_read(addr, &head, &big, big.len(), Duration::ZERO).await {
            Ok(line) if line.starts_with("HTTP/1.1 413") => ok += 1,
            other => eprintln!("try {i}: {other:?}"),
        }
    }
    let all_at_once = started.elapsed();
    assert_eq!(ok, 100, "10 MB body: the 413 was read {ok} times in 100");
    // Streamed slowly and chunked (no length to refuse on): refused after the limit is read.
    let head = "POST /send_message HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut chunked = Vec::new();
    for part in vec![b'a'; 2 * 1024 * 1024].chunks(16 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for _ in 0..3 {
        let line = post_then_read(addr, head, &chunked, 16 * 1024 + 8, Duration::from_millis(8)).await.expect("slow");
        assert!(line.starts_with("HTTP/1.1 413"), "slow chunked upload: {line}");
    }
    // A media type refused before reading, and a 401, each with a body behind it.
    let head = format!(
        "POST /register HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let line = post_then_read(addr, &head, &big, 64 * 1024, Duration::ZERO).await.expect("415");
    assert!(line.starts_with("HTTP/1.1 415"), "{line}");
    let body = json!({ "created_by": 1, "user_ids": [2], "name": "x".repeat(60_000) }).to_string();
    let head = format!(
        "POST /create_group HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let line = post_then_read(addr, &head, body.as_bytes(), 1024, Duration::from_millis(1)).await.expect("401");
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
    eprintln!("100 x 10 MB refused and read in {all_at_once:?}");
    node.stop().await;
}
