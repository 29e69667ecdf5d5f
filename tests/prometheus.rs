//! The Grafana dashboard and the Prometheus rules against a live fleet (docs/operations.md): two node
//! processes on MariaDB and Redis, scraped every second by a real Prometheus that also loads
//! `prometheus/rules/switchboard.yml`. After ~10 s of traffic (sessions on both nodes,
//! cross-node messages, heartbeats, 4xx answers, refused upgrades and several kinds of
//! disconnect), every query of every dashboard panel and every rule expression is run
//! through Prometheus' HTTP API:
//!
//! - each one parses and evaluates (`status: success`);
//! - every panel query returns data, except the few listed in [`MAY_BE_EMPTY`];
//! - the recording rules produce series and every rule evaluates with health `ok`;
//! - every metric an expression names (`switchboard_*`, `process_*`) is in the `/metrics`
//!   output of both nodes, so a panel or alert cannot query a metric the node does not
//!   export.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`) besides MariaDB and Redis, so
//! it is ignored under a plain `cargo test` (`scripts/test` runs it); its steps are named,
//! so a failure says which one. Reading the dashboard and the rules needs nothing and runs
//! always (`dashboard_and_rules_have_queries`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use switchboard::client::{Api, ClientError, WsConn, WsEvent, connect_ws, connect_ws_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/dashboards/switchboard.json");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/rules/switchboard.yml");
/// What `$__rate_interval` becomes: four scrapes at the test's 1 s interval, with margin.
const RATE_INTERVAL: &str = "15s";
const WAIT: Duration = Duration::from_secs(10);
/// How long the main burst of traffic lasts.
const TRAFFIC: Duration = Duration::from_secs(10);
const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
const HEARTBEAT_TIMEOUT_MS: u64 = 3_000;
/// Pairs of users, one user of each pair on each node.
const PAIRS: usize = 10;

/// Dashboard queries allowed to return nothing on a healthy fleet that is not draining,
/// as (panel title, legend format).
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    // `time() - (drain_started > 0)`: only while a node drains.
    ("Drain elapsed vs TTL", "elapsed {{instance}}"),
];

/// A Prometheus server in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    api: Api,
    dir: common::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job `switchboard`) every second and evaluating
    /// the project's rules every second.
    fn start(targets: &[SocketAddr]) -> Self {
        let dir = common::TempDir::new();
        let port = common::free_port();
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{RULES}'\n\
             scrape_configs:\n  - job_name: switchboard\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{targets}]\n"
        );
        let config_path = format!("{}/prometheus.yml", dir.path);
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(format!("{}/prometheus.log", dir.path)).expect("log file");
        let spawned = Command::new(std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into()))
            .arg(format!("--config.file={config_path}"))
            .arg(format!("--storage.tsdb.path={}/data", dir.path))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn();
        let child =
            spawned.unwrap_or_else(|e| panic!("prometheus cannot start: {e} (scripts/services.sh installs it)"));
        let api = Api::new(format!("127.0.0.1:{port}").parse().expect("addr"));
        Prometheus { child, api, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/prometheus.log", self.dir.path)).unwrap_or_default()
    }

    async fn ready(&mut self) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            if let Ok((status, _)) = self.api.get("/-/ready").await
                && status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus never became ready:\n{}", self.log());
    }

    /// Runs an instant query; returns Prometheus' whole answer.
    async fn query(&self, expr: &str) -> Value {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (_, body) = self.api.get(&format!("/api/v1/query?query={q}")).await.expect("prometheus answers");
        body
    }

    /// Runs an instant query that must evaluate; returns its result vector.
    async fn vector(&self, expr: &str) -> Vec<Value> {
        let body = self.query(expr).await;
        assert_eq!(body["status"], "success", "query failed: {expr}\n{body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an instant-vector sample.
fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn label<'a>(sample: &'a Value, name: &str) -> &'a str {
    sample["metric"][name].as_str().unwrap_or_default()
}

/// One query of the dashboard or the rules file.
struct Expr {
    /// Where it comes from, for messages.
    origin: String,
    /// As written.
    raw: String,
    /// Ready to run: Grafana variables substituted.
    promql: String,
}

fn dashboard_exprs(dashboard: &Value) -> Vec<(Expr, String, String)> {
    fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in panels {
            out.push(p);
            walk(p["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), out);
        }
    }
    let mut panels = Vec::new();
    walk(dashboard["panels"].as_array().expect("dashboard has panels"), &mut panels);
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let raw = t["expr"].as_str().expect("target has expr").to_owned();
            let legend = t["legendFormat"].as_str().unwrap_or_default().to_owned();
            let promql = raw.replace("$__rate_interval", RATE_INTERVAL).replace("$node", ".*");
            assert!(!promql.contains('$'), "panel {title:?}: unknown Grafana variable in {raw}");
            let origin = format!("panel {title:?} ({legend})");
            out.push((Expr { origin, raw, promql }, title.clone(), legend));
        }
    }
    out
}

/// The `expr` of every rule in a Prometheus rules file, with the rule's `record` or `alert`
/// name. Handles plain `expr: ...`, quoted scalars and block scalars (`expr: |`, `|2`,
/// `>-`, ...), and skips the block scalars of other keys (runbooks), which is all a rules
/// file uses. Not a general YAML parser.
fn rule_exprs(yaml: &str) -> Vec<(String, Expr)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.trim_start().starts_with('#') {
            continue;
        }
        let body = line.trim_start().trim_start_matches("- ").trim_start();
        let col = line.len() - body.len();
        let Some((key, value)) = body.split_once(':') else { continue };
        let value = value.trim();
        let text = if value.starts_with(['|', '>']) {
            // A block scalar: every following line indented deeper than the key, or blank.
            let mut block = Vec::new();
            while i < lines.len() {
                let next = lines[i];
                let indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && indent <= col {
                    break;
                }
                block.push(next.trim());
                i += 1;
            }
            let sep = if value.starts_with('>') { " " } else { "\n" };
            block.into_iter().filter(|l| !l.is_empty()).collect::<Vec<_>>().join(sep)
        } else if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"')) || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value[1..value.len() - 1].to_owned()
        } else {
            value.to_owned()
        };
        match key {
            "record" | "alert" => name = format!("{key} {text}"),
            "expr" => {
                assert!(!text.is_empty(), "{name}: empty expr");
                out.push((name.clone(), Expr { origin: name.clone(), raw: text.clone(), promql: text }));
            }
            _ => {}
        }
    }
    out
}

/// Metric names an expression refers to: identifiers starting `switchboard_` or `process_`,
/// outside string literals. Recording-rule names (with a colon) are left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if !escaped && d == c {
                    break;
                }
                escaped = c != '`' && !escaped && d == '\\';
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = start + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let ident = &expr[start..end];
            if (ident.starts_with("switchboard_") || ident.starts_with("process_")) && !ident.contains(':') {
                names.insert(ident.to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number or duration (`5m`, `0.25`, `1e3`): skip the whole token.
            while let Some(&(_, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '.' {
                    chars.next();
                } else {
                    break;
                }
            }
        }
    }
    names
}

/// Sample names and metric types of a Prometheus text exposition.
struct Exposition {
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut samples = BTreeSet::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                samples.insert(name.to_owned());
            }
        }
        Exposition { samples, types }
    }

    /// Why `name` cannot be queried on this node, or None if it can.
    fn problem(&self, name: &str) -> Option<String> {
        let histogram_base = ["_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| self.types.get(*base).is_some_and(|t| t == "histogram"));
        if self.types.get(name).is_some_and(|t| t == "histogram") {
            return Some(format!("{name} is a histogram: query {name}_bucket, _count or _sum"));
        }
        if name.ends_with("_bucket") && histogram_base.is_none() {
            return Some(format!("{name} is used as histogram buckets but no histogram of that name is exported"));
        }
        if !self.samples.contains(name) {
            let declared = histogram_base.is_some() || self.types.contains_key(name);
            return Some(if declared {
                format!("{name} is declared but has no series (no label values yet)")
            } else {
                format!("{name} is not exported")
            });
        }
        None
    }
}

/// GET over a fresh connection, for non-JSON bodies such as /metrics.
async fn get_text(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path} on {addr}: {head}");
    body.to_owned()
}

async fn connect(addr: SocketAddr, user: i64) -> WsConn {
    let mut ws = connect_ws(addr, user, false).await.expect("connect");
    match ws.next(WAIT).await {
        Some(WsEvent::Json(v)) if v["type"] == "hello" => ws,
        other => panic!("expected hello, got {other:?}"),
    }
}

/// Waits for the server to close `ws`; returns the close code.
async fn closed(ws: &mut WsConn, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Some(WsEvent::Closed(code)) => return code,
            Some(_) => continue,
            None => panic!("session not closed within {within:?}"),
        }
    }
}

/// A live session: heartbeats every second, counts the messages it receives. Ends with
/// Err if the session ended before `stop`.
fn keep_alive(
    mut ws: WsConn,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last.elapsed() >= Duration::from_millis(HEARTBEAT_INTERVAL_MS) {
                ws.send_text("heartbeat").await.map_err(|e| format!("heartbeat: {e}"))?;
                last = Instant::now();
            }
            match ws.next(Duration::from_millis(200)).await {
                Some(WsEvent::Closed(code)) => return Err(format!("closed by the server: {code:?}")),
                Some(event) if event.message_id().is_some() => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        ws.close().await;
        Ok(())
    })
}

/// Disconnects of several reasons, refused upgrades and 4xx answers on one node.
async fn misbehave(addr: SocketAddr, user: i64, group: i64) {
    let api = Api::new(addr);
    // Refused upgrades: unknown user (404) and a bad id (400).
    match connect_ws(addr, 999_999_999, false).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 404),
        other => panic!("upgrade for an unknown user: {:?}", other.map(|_| "upgraded")),
    }
    match connect_ws_path(addr, "/ws/not-a-number").await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 400),
        other => panic!("upgrade with a bad id: {:?}", other.map(|_| "upgraded")),
    }
    // 4xx on the REST routes.
    let big = "x".repeat(17 * 1024);
    type Answer = Result<(hyper::StatusCode, Value), ClientError>;
    let cases: Vec<(&str, Answer)> = vec![
        ("empty username", api.post_form("/register", &[("username", "")]).await),
        ("group of one", api.create_group(user, &[]).await.map(|g| (hyper::StatusCode::OK, g.into()))),
        ("unknown group", api.send(user, 999_999_999, "hi", None).await),
        ("empty content", api.send(user, group, " ", None).await),
        ("content too large", api.send(user, group, &big, None).await),
        ("unknown route", api.get("/nope").await),
        ("wrong method", api.get("/register").await),
    ];
    for (what, answer) in cases {
        match answer {
            Ok((status, _)) => assert!(status.is_client_error(), "{what}: {status}"),
            Err(ClientError::Status { status, .. }) => assert!(status.is_client_error(), "{what}: {status}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }

    // Disconnects: client close (1000), protocol error (1008), frame too large (1009) and
    // heartbeat timeout (4000), all at once.
    let client_close = async {
        let mut ws = connect(addr, user).await;
        ws.close().await;
        closed(&mut ws, WAIT).await;
    };
    let protocol_error = async {
        let mut ws = connect(addr, user).await;
        ws.send_text("not a frame").await.expect("send");
        assert_eq!(closed(&mut ws, WAIT).await, Some(1008));
    };
    let too_large = async {
        let mut ws = connect(addr, user).await;
        // The server may reset the connection before its close frame is read: either ends it.
        if ws.send_text(&"x".repeat(70 * 1024)).await.is_ok() {
            let code = closed(&mut ws, WAIT).await;
            assert!(matches!(code, Some(1009) | None), "too large: {code:?}");
        }
    };
    let heartbeat_timeout = async {
        let mut ws = connect(addr, user).await;
        let within = Duration::from_millis(HEARTBEAT_TIMEOUT_MS) + WAIT;
        assert_eq!(closed(&mut ws, within).await, Some(4000));
    };
    tokio::join!(client_close, protocol_error, too_large, heartbeat_timeout);
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Dashboard queries with their panel title and legend.
type DashboardExprs = Vec<(Expr, String, String)>;

/// Every query of the dashboard and every rule of the rules file (with its name), read from
/// the repository.
fn project_exprs() -> (DashboardExprs, Vec<(String, Expr)>) {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard")).expect("dashboard JSON");
    let dashboard_exprs = dashboard_exprs(&dashboard);
    let rules = rule_exprs(&std::fs::read_to_string(RULES).expect("read rules"));
    assert!(dashboard_exprs.len() >= 20, "dashboard queries found: {}", dashboard_exprs.len());
    assert!(rules.len() >= 5, "rules found: {}", rules.len());
    (dashboard_exprs, rules)
}

/// The dashboard and the rules parse and name metrics, without any service.
#[test]
fn dashboard_and_rules_have_queries() {
    let (dashboard_exprs, rules) = project_exprs();
    let named: BTreeSet<String> = dashboard_exprs
        .iter()
        .map(|(e, _, _)| e)
        .chain(rules.iter().map(|(_, e)| e))
        .flat_map(|e| metric_names(&e.raw))
        .collect();
    assert!(named.len() >= 20, "metric names found: {named:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB, Redis and Prometheus; scripts/test runs it"]
async fn dashboard_and_rules_query_live_metrics() {
    use common::step;
    let started = Instant::now();
    let (db, redis) = (common::mysql_url(), common::redis_url());
    let (dashboard_exprs, rules) = project_exprs();

    let (n1, n2, prom, fresh) = step("start two nodes and Prometheus", async {
        let env = vec![("DATABASE_URL".to_owned(), db), ("REDIS_URL".to_owned(), redis)];
        let args = |id: &str| -> Vec<String> {
            vec![
                "--node-id".into(),
                id.into(),
                "--heartbeat-interval".into(),
                format!("{HEARTBEAT_INTERVAL_MS}ms"),
                "--heartbeat-timeout".into(),
                format!("{HEARTBEAT_TIMEOUT_MS}ms"),
            ]
        };
        let mut n1 = common::Proc::spawn(&args("prom-n1"), &env);
        let mut n2 = common::Proc::spawn(&args("prom-n2"), &env);
        let mut prom = Prometheus::start(&[n1.admin, n2.admin]);
        n1.ready().await;
        n2.ready().await;
        prom.ready().await;

        // What a node exports before any traffic (for the note below).
        let fresh = Exposition::parse(&get_text(n1.admin, "/metrics").await);
        (n1, n2, prom, fresh)
    })
    .await;

    // Traffic: PAIRS pairs, one user of each pair on each node, each pair a group; every
    // session heartbeats and every user keeps writing to its partner.
    let (api1, api2) = (Api::new(n1.addr), Api::new(n2.addr));
    let pairs = step("register pairs and groups", async {
        let mut pairs = Vec::new();
        for i in 0..PAIRS {
            let a = api1.register(&common::unique("pa")).await.expect("register");
            let b = api2.register(&common::unique("pb")).await.expect("register");
            let creator = if i % 2 == 0 { &api1 } else { &api2 };
            let group = creator.create_group(a, &[b]).await.expect("group");
            pairs.push((a, b, group));
        }
        pairs
    })
    .await;
    let stop_sessions = Arc::new(AtomicBool::new(false));
    let stop_senders = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let sessions = step("open a session per user", async {
        let mut sessions = Vec::new();
        for &(a, b, _) in &pairs {
            sessions.push(keep_alive(connect(n1.addr, a).await, stop_sessions.clone(), received.clone()));
            sessions.push(keep_alive(connect(n2.addr, b).await, stop_sessions.clone(), received.clone()));
        }
        sessions
    })
    .await;
    let mut senders = Vec::new();
    for (api, first) in [(api1.clone(), true), (api2.clone(), false)] {
        let (pairs, stop, sent) = (pairs.clone(), stop_senders.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for &(a, b, group) in &pairs {
                    let from = if first { a } else { b };
                    // Errors are returned, not panicked on: a failure elsewhere that stops
                    // the nodes must not bury its message under send failures.
                    let (status, body) =
                        api.send(from, group, &format!("message {n}"), None).await.map_err(|e| e.to_string())?;
                    if status != 200 {
                        return Err(format!("send answered {status}: {body}"));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok::<(), String>(())
        }));
    }
    let traffic_start = Instant::now();
    let (a, b, group) = pairs[0];
    step("misbehave on both nodes", async {
        tokio::join!(misbehave(n1.addr, a, group), misbehave(n2.addr, b, group));
    })
    .await;
    tokio::time::sleep(TRAFFIC.saturating_sub(traffic_start.elapsed())).await;

    // Wait until Prometheus scraped both nodes after the burst, and evaluated every rule.
    step("Prometheus scrapes both nodes and evaluates every rule", async {
        let burst_end = unix_now();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ups = prom.vector(r#"timestamp(up{job="switchboard"} == 1)"#).await;
            let scrapes = prom.vector(r#"count_over_time(up{job="switchboard"}[1m])"#).await;
            let (_, rules_api) = prom.api.get("/api/v1/rules").await.expect("rules API");
            let loaded: Vec<&Value> = rules_api["data"]["groups"]
                .as_array()
                .map(|g| g.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect())
                .unwrap_or_default();
            // The rules Prometheus loaded are the ones this file's parser found.
            let names: BTreeSet<&str> = loaded.iter().filter_map(|r| r["name"].as_str()).collect();
            let parsed: BTreeSet<&str> = rules.iter().filter_map(|(n, _)| n.split_once(' ').map(|(_, n)| n)).collect();
            assert!(loaded.is_empty() || names == parsed, "rules loaded {names:?}, parsed {parsed:?}");
            let healthy = loaded.len() == rules.len() && loaded.iter().all(|r| r["health"] == "ok");
            let fresh_scrapes = ups.len() == 2 && ups.iter().all(|s| value(s) > burst_end);
            if fresh_scrapes && scrapes.iter().all(|s| value(s) >= 8.0) && healthy {
                break;
            }
            if Instant::now() > deadline {
                let bad: Vec<String> = loaded
                    .iter()
                    .filter(|r| r["health"] != "ok")
                    .map(|r| format!("{} {}: {}", r["name"], r["health"], r["lastError"]))
                    .collect();
                panic!(
                    "Prometheus did not catch up: up {ups:?}, scrapes {scrapes:?}, {} rules loaded of {} \
                 (unhealthy: {bad:?})\n{}",
                    loaded.len(),
                    rules.len(),
                    prom.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;

    // Every metric named by a panel, the node variable or a rule is exported by both nodes.
    let node_variable = "switchboard_ws_connections"; // label_values(switchboard_ws_connections, instance)
    let referenced = step("every queried metric is exported by both nodes", async {
        let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in dashboard_exprs.iter().map(|(e, _, _)| e).chain(rules.iter().map(|(_, e)| e)) {
            for name in metric_names(&e.raw) {
                referenced.entry(name).or_default().insert(e.origin.clone());
            }
        }
        referenced.entry(node_variable.to_owned()).or_default().insert("variable node".into());
        assert!(referenced.len() >= 20, "metric names found: {:?}", referenced.keys());
        let mut missing = Vec::new();
        for (node, admin) in [("n1", n1.admin), ("n2", n2.admin)] {
            let live = Exposition::parse(&get_text(admin, "/metrics").await);
            for (name, used_by) in &referenced {
                if let Some(problem) = live.problem(name) {
                    missing.push(format!("{node}: {problem}; used by {used_by:?}"));
                }
            }
        }
        assert!(missing.is_empty(), "metrics queried but not exported:\n{}", missing.join("\n"));
        let absent_when_fresh: Vec<&String> = referenced.keys().filter(|n| fresh.problem(n).is_some()).collect();
        if !absent_when_fresh.is_empty() {
            eprintln!("note: before any traffic a node has no series for {absent_when_fresh:?}");
        }
        let instances: BTreeSet<String> =
            prom.vector(node_variable).await.iter().map(|s| label(s, "instance").to_owned()).collect();
        assert_eq!(instances, BTreeSet::from([n1.admin.to_string(), n2.admin.to_string()]), "node variable values");
        referenced
    })
    .await;

    // Every dashboard query evaluates; all but MAY_BE_EMPTY return data.
    step("every dashboard query returns data", async {
        let mut results: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        let mut empty = Vec::new();
        for (e, title, legend) in &dashboard_exprs {
            let result = prom.vector(&e.promql).await;
            if result.is_empty() && !MAY_BE_EMPTY.contains(&(title.as_str(), legend.as_str())) {
                empty.push(format!("{}: {}", e.origin, e.promql));
            }
            results.insert((title.clone(), legend.clone()), result);
        }
        assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));
        let panel = |title: &str, legend: &str| -> &Vec<Value> {
            results
                .get(&(title.to_owned(), legend.to_owned()))
                .unwrap_or_else(|| panic!("no panel {title:?} / {legend:?}"))
        };
        // The main panels show what the traffic did.
        let per_instance = |samples: &Vec<Value>| -> BTreeMap<String, f64> {
            samples.iter().map(|s| (label(s, "instance").to_owned(), value(s))).collect()
        };
        let phases = per_instance(panel("Lifecycle phase", "{{instance}}"));
        assert_eq!(phases.len(), 2, "lifecycle phase per node: {phases:?}");
        assert!(phases.values().all(|p| *p == 1.0), "both nodes Ready: {phases:?}");
        let connections = per_instance(panel("Connections per node", "{{instance}}"));
        assert!(connections.len() == 2 && connections.values().all(|c| *c >= PAIRS as f64), "{connections:?}");
        assert!(value(&panel("Messages sent and delivered /s", "sent")[0]) > 0.0, "messages sent rate");
        let delivered = panel("Messages sent and delivered /s", "delivered: {{path}}");
        assert!(
            delivered.iter().any(|s| label(s, "path") == "live" && value(s) > 0.0),
            "live deliveries: {delivered:?}"
        );
        for q in ["p50", "p95", "p99"] {
            let latency = value(&panel("Delivery latency (accept to socket write)", q)[0]);
            assert!(latency.is_finite() && latency > 0.0 && latency < 5.0, "delivery latency {q}: {latency}");
        }
        let p99_per_node = panel("Delivery latency p99 per node", "{{instance}}");
        assert_eq!(p99_per_node.len(), 2, "delivery p99 per node: {p99_per_node:?}");
        let http = panel("HTTP requests /s by route and status", "{{route}} {{status}}");
        let routes: BTreeSet<(&str, &str)> = http.iter().map(|s| (label(s, "route"), label(s, "status"))).collect();
        for expected in [("/send_message", "200"), ("/register", "200"), ("/create_group", "200"), ("/metrics", "200")]
        {
            assert!(routes.contains(&expected), "HTTP rate by route lacks {expected:?}: {routes:?}");
        }
        for expected in [("/send_message", "413"), ("/ws/{user_id}", "404"), ("unknown", "404")] {
            assert!(routes.contains(&expected), "HTTP rate by route lacks {expected:?}: {routes:?}");
        }
        let subscriptions = per_instance(panel("Backplane subscriptions", "{{instance}}"));
        assert!(subscriptions.len() == 2 && subscriptions.values().all(|s| *s > 0.0), "{subscriptions:?}");
        let store_ops: BTreeSet<&str> =
            panel("Store query latency p99 by op", "{{op}}").iter().map(|s| label(s, "op")).collect();
        assert!(store_ops.len() >= 3, "store ops: {store_ops:?}");
        let reasons: BTreeSet<&str> = panel("Connects and disconnects /s by reason", "disconnect: {{reason}}")
            .iter()
            .map(|s| label(s, "reason"))
            .collect();
        for reason in ["client_close", "protocol_error", "too_large", "heartbeat_timeout"] {
            assert!(reasons.contains(reason), "disconnect reason {reason} missing: {reasons:?}");
        }
        let rejected: BTreeSet<&str> =
            panel("Upgrade rejections /s by reason", "{{reason}}").iter().map(|s| label(s, "reason")).collect();
        assert!(rejected.contains("unknown_user") && rejected.contains("bad_request"), "{rejected:?}");
        let limits: BTreeSet<&str> =
            panel("Limit rejections /s", "{{limit}}").iter().map(|s| label(s, "limit")).collect();
        assert!(limits.contains("message_size") && limits.contains("ws_frame_size"), "{limits:?}");
        for (title, legend) in [
            ("Resident memory", "{{instance}}"),
            ("Open file descriptors vs limit", "open {{instance}}"),
            ("Open file descriptors vs limit", "max {{instance}}"),
        ] {
            let samples = panel(title, legend);
            assert!(samples.len() == 2 && samples.iter().all(|s| value(s) > 0.0), "{title} {legend}: {samples:?}");
        }
    })
    .await;

    // Every rule expression evaluates; the recording rules and their outputs have data.
    step("every rule evaluates", async {
        for (name, e) in &rules {
            let result = prom.vector(&e.promql).await;
            if let Some(record) = name.strip_prefix("record ") {
                assert!(!result.is_empty(), "recording rule {record} has no data: {}", e.promql);
                assert!(!prom.vector(record).await.is_empty(), "no series recorded for {record}");
            }
        }
    })
    .await;

    // Wind down: every message sent reached its recipient's live session.
    let total = step("every message sent is received", async {
        stop_senders.store(true, Ordering::Relaxed);
        for s in senders {
            s.await.expect("sender task").expect("every send succeeds");
        }
        let total = sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + WAIT;
        while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_sessions.store(true, Ordering::Relaxed);
        for s in sessions {
            s.await.expect("session task").expect("live session stays open");
        }
        assert!(total >= 200, "messages sent: {total}");
        assert!(received.load(Ordering::Relaxed) >= total, "received {received:?} of {total}");
        total
    })
    .await;
    eprintln!(
        "prometheus test: {} dashboard queries and {} rules checked, {} metric names, {total} messages, {:?}",
        dashboard_exprs.len(),
        rules.len(),
        referenced.len(),
        started.elapsed()
    );
}

#[test]
fn rule_exprs_reads_plain_and_block_scalars() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: sum(x)\n      - alert: A\n        \
                expr: |2\n            (\n              y > 1\n            )\n          and z\n        for: 5m\n        \
                annotations:\n          runbook: |\n            expr: not this\n      - alert: B\n        expr: 'q'\n";
    let rules = rule_exprs(yaml);
    let got: Vec<(&str, &str)> = rules.iter().map(|(n, e)| (n.as_str(), e.promql.as_str())).collect();
    assert_eq!(got, vec![("record a:b", "sum(x)"), ("alert A", "(\ny > 1\n)\nand z"), ("alert B", "q")]);
}

#[test]
fn metric_names_skip_strings_durations_and_recorded_names() {
    let names = metric_names(
        r#"rate(switchboard_x_total{job="switchboard_fake",a='process_no'}[5m]) / job:switchboard_y:sum + process_open_fds 1e3"#,
    );
    assert_eq!(names, BTreeSet::from(["process_open_fds".to_owned(), "switchboard_x_total".to_owned()]));
}
