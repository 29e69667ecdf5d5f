//! Shared test helpers: real backends (MariaDB, Redis, the MongoDB stand-in) with a fresh
//! database per test, in-process nodes on port 0, and node processes for tests that need a
//! real process (signals, kill -9).
//!
//! # Which tests run where (contributing note)
//!
//! A plain `cargo test` runs the embedded tests (SQLite, the in-process backplane, in-process
//! nodes) and lists every test that needs a real service or program (MariaDB, Redis, the
//! MongoDB stand-in, HAProxy, Prometheus, Chromium, `redis-server`/`mariadbd` binaries, ...)
//! as ignored: each carries `#[ignore = "needs <service>; scripts/test runs it"]`.
//! `scripts/test` starts the services and runs everything with
//! `cargo test -- --include-ignored`; ignored tests alone run with a filter, e.g.
//! `cargo test --test api -- --include-ignored mysql_and_redis::`.
//!
//! Inside an ignored test a missing service is a plain failure: the helpers below
//! ([`mysql_url`], [`redis_url`], [`mongo_url`], [`require`], [`require_program`]) panic with
//! what is missing. A new test that needs a service gets the `ignore` attribute; one that
//! covers an embedded backend and a real one is two tests, so the embedded half still runs
//! under a plain `cargo test`. Prefer one test function per behaviour where setup is cheap
//! (`tests/api.rs` runs each on both backends); suites with costly or shared setup name their
//! steps with [`step`] instead, so a failure says which step failed.
#![allow(dead_code)]

pub mod fleet;
pub mod services;
pub mod traffic;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchboard::client::Api;
use switchboard::lifecycle::Lifecycle;
use switchboard::{App, AppState, Config};
use tokio::net::TcpListener;

pub const MYSQL_ROOT: &str = "mysql://root@127.0.0.1:3306";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const MONGO: &str = "mongodb://127.0.0.1:27017";

fn reachable(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(300)).is_ok()
}

/// Fails the test unless the service `name` answers at `addr`.
pub fn require(name: &str, addr: &str) {
    assert!(
        reachable(addr),
        "{name} at {addr} is not reachable; this test needs it (scripts/services.sh starts it, scripts/test runs it)"
    );
}

/// Fails the test unless the program `name` is installed.
pub fn require_program(name: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{name} is not installed; this test needs it (scripts/services.sh installs it)");
}

/// Runs one named step of a long test: prints the step's name as it starts, and when the
/// step panics, panics again with the step's name in the message.
pub async fn step<T>(name: &str, body: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    eprintln!("step: {name}");
    match std::panic::AssertUnwindSafe(body).catch_unwind().await {
        Ok(value) => value,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("step `{name}` failed: {message}")
        }
    }
}

pub fn unique(prefix: &str) -> String {
    use rand::RngExt;
    format!("{prefix}_{}_{:08x}", std::process::id(), rand::rng().random::<u32>())
}

/// A fresh MySQL database URL on the shared MariaDB; fails the test when it is not there.
pub fn mysql_url() -> String {
    require("MariaDB", "127.0.0.1:3306");
    format!("{MYSQL_ROOT}/{}", unique("sbtest"))
}

/// The shared Redis; fails the test when it is not there.
pub fn redis_url() -> String {
    require("Redis", "127.0.0.1:6379");
    REDIS.to_owned()
}

/// A fresh database on the shared MongoDB stand-in; fails the test when it is not there.
pub fn mongo_url() -> String {
    require("MongoDB stand-in", "127.0.0.1:27017");
    format!("{MONGO}/{}", unique("sbtest"))
}

/// A SQLite file URL in a fresh temp dir (kept for the test's life by the returned guard).
pub fn sqlite_url() -> (String, TempDir) {
    let dir = TempDir::new();
    (format!("sqlite://{}/switchboard.db", dir.path), dir)
}

pub struct TempDir {
    pub path: String,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("switchboard"));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self { path: path.to_string_lossy().into_owned() }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A node running in this process on 127.0.0.1:0.
pub struct Node {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub agent: SocketAddr,
    pub state: Arc<AppState>,
    pub lifecycle: Lifecycle,
    pub task: tokio::task::JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl Node {
    pub fn api(&self) -> Api {
        Api::new(self.addr)
    }

    /// Drains and waits for the node to stop.
    pub async fn stop(self) {
        self.lifecycle.drain();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// Starts an embedded node (SQLite in a temp dir, in-process backplane) with extra flags.
pub async fn embedded(extra: &[&str]) -> Node {
    let (url, dir) = sqlite_url();
    let mut args = vec!["--database-url", url.as_str()];
    args.extend_from_slice(extra);
    let mut node = start(&args).await;
    node._dir = Some(dir);
    node
}

/// Starts a node with these flags on ephemeral ports.
pub async fn start(args: &[&str]) -> Node {
    // Tests send in bursts; the rate limit has its own tests.
    let mut all =
        vec!["--node-id", "test", "--drain-timeout", "5s", "--send-rate", "1000000", "--send-burst", "1000000"];
    all.extend_from_slice(args);
    // Tests share one Redis; a fresh database's name keeps each test's channels apart.
    let db = args.iter().position(|a| *a == "--database-url").and_then(|i| args.get(i + 1));
    let prefix = db.map(|db| format!("{}:", db.rsplit('/').next().unwrap_or("")));
    if let Some(prefix) = &prefix {
        all.extend(["--channel-prefix", prefix.as_str()]);
    }
    let config = Config::from_args(all).expect("test config parses");
    config.validate().expect("test config is valid");
    let app = App::build(config).await.expect("node builds");
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = public.local_addr().expect("addr");
    let (admin_addr, agent_addr) = (admin.local_addr().expect("addr"), agent.local_addr().expect("addr"));
    let state = app.state().clone();
    let lifecycle = app.lifecycle();
    let task = tokio::spawn(app.run(public, admin, Some(agent)));
    Node { addr, admin: admin_addr, agent: agent_addr, state, lifecycle, task, _dir: None }
}

/// Registers `n` users with unique names.
pub async fn users(api: &Api, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(api.register(&unique("u")).await.expect("register"));
    }
    out
}

/// A port that is free now, below the kernel's ephemeral range (32768+), so the thousands of
/// client sockets tests open can never take it before the node binds it. Ports are handed out
/// from a per-process sequence starting at a random offset, so parallel tests differ too.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 100) as u16 * 100, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (port - 20_000) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A node as a child process of the real binary.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl Proc {
    pub fn spawn(args: &[String], envs: &[(String, String)]) -> Proc {
        let port = free_port();
        let admin = free_port();
        Self::spawn_on(port, admin, args, envs)
    }

    pub fn spawn_on(port: u16, admin: u16, args: &[String], envs: &[(String, String)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        // Tests share one Redis; the nodes of one test share a fresh database, whose name
        // keeps their channels apart from other tests'.
        if let Some((_, db)) = envs.iter().find(|(k, _)| k == "DATABASE_URL") {
            cmd.arg("--channel-prefix").arg(format!("{}:", db.rsplit('/').next().unwrap_or("")));
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "error".into()))
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn switchboard");
        Proc {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
            args: args.to_vec(),
            envs: envs.to_vec(),
        }
    }

    /// Waits until /readyz answers 200; fails at once if the process exited.
    pub async fn ready(&mut self) {
        let api = Api::new(self.admin);
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node {} exited with {status} before it was ready", self.addr);
            }
            if let Ok((status, _)) = api.get("/readyz").await
                && status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node at {} never became ready", self.admin);
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }

    /// Starts the same node again on the same ports.
    pub fn restart(&mut self) {
        let _ = self.child.wait();
        let fresh = Proc::spawn_on(self.addr.port(), self.admin.port(), &self.args, &self.envs);
        *self = fresh;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
