//! Private instances of the real services for fault tests, so a test can stop and restart
//! them without touching the shared ones other tests use: Redis, MariaDB (own datadir) and
//! the MongoDB stand-in (on-disk storage, so its data survives a restart).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, free_port};

pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
    command: fn(&Service) -> Command,
}

impl Service {
    fn launch(&mut self) {
        let mut cmd = (self.command)(self);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name)));
    }

    pub async fn start(&mut self) {
        self.launch();
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not open port {}", self.name, self.port);
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        match self.name {
            "redis" => format!("redis://127.0.0.1:{}", self.port),
            "mongo" => format!("mongodb://127.0.0.1:{}/switchboard", self.port),
            _ => format!("mysql://root@127.0.0.1:{}/switchboard", self.port),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn redis() -> Service {
    let mut s = Service {
        name: "redis",
        port: free_port(),
        dir: TempDir::new(),
        child: None,
        command: |s| {
            let mut c = Command::new("redis-server");
            c.args(["--bind", "127.0.0.1", "--port", &s.port.to_string(), "--save", "", "--appendonly", "no"]);
            c.current_dir(&s.dir.path);
            c
        },
    };
    s.start().await;
    s
}

pub async fn mongo() -> Service {
    let mut s = Service {
        name: "mongo",
        port: free_port(),
        dir: TempDir::new(),
        child: None,
        command: |s| {
            let mut c = Command::new("secantusd-py");
            c.args(["--host", "127.0.0.1", "--port", &s.port.to_string(), "--standalone", "--log-level", "ERROR"]);
            c.arg("--storage-path").arg(format!("{}/data", s.dir.path));
            c
        },
    };
    s.start().await;
    s
}

/// A MariaDB server with its own datadir and no grant checks (loopback only).
pub async fn mariadb() -> Service {
    let dir = TempDir::new();
    let status = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--datadir={}/data", dir.path))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db");
    assert!(status.success(), "mariadb-install-db failed");
    let mut s = Service {
        name: "mariadb",
        port: free_port(),
        dir,
        child: None,
        command: |s| {
            let mut c = Command::new("/usr/sbin/mariadbd");
            c.args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-grant-tables"])
                .arg(format!("--port={}", s.port))
                .arg(format!("--datadir={}/data", s.dir.path))
                .arg(format!("--socket={}/mysqld.sock", s.dir.path))
                .arg(format!("--pid-file={}/mysqld.pid", s.dir.path))
                .arg("--innodb-buffer-pool-size=64M");
            c
        },
    };
    s.start().await;
    s
}

/// A Redis Cluster of 3 masters and 3 replicas on loopback (`scripts/redis-cluster.sh`),
/// killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = TempDir::new();
        let base = cluster_base_port();
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster.sh"))
            .arg("start")
            .arg(&dir.path)
            .arg(base.to_string())
            .status()
            .expect("scripts/redis-cluster.sh");
        let cluster = RedisCluster { ports: (base..base + 6).collect(), dir };
        assert!(status.success(), "the Redis Cluster did not start");
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// `REDIS_CLUSTER_URLS`: every node.
    pub fn urls_arg(&self) -> String {
        self.urls().join(",")
    }

    fn live(&self) -> u16 {
        *self.ports.iter().find(|p| cli(**p, &["PING"]).contains("PONG")).expect("a live node")
    }

    /// Ports of the current masters (as a live node sees them), excluding failed ones.
    pub fn masters(&self) -> Vec<u16> {
        cli(self.live(), &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| l.split_whitespace().nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// The port of the master serving `slot`.
    pub fn owner_of(&self, slot: u16) -> u16 {
        let nodes = cli(self.live(), &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let owns = fields.iter().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                });
                owns.then(|| fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no master owns slot {slot}: {nodes}"))
    }

    /// Empties every master and waits until its replica has the emptiness too (as if the
    /// cluster had lost its data). A replica's first sync may still be on its way (Redis
    /// waits 5 s before a diskless sync), hence the tries.
    pub fn flush_masters(&self) {
        // Each node's own word (another's view of the roles may lag just after the start).
        for port in self.ports.iter().copied().filter(|p| cli(*p, &["ROLE"]).lines().next() == Some("master")) {
            let mut replies = String::new();
            let replicated = (0..30).any(|_| {
                replies = cli_stdin(port, b"FLUSHALL\nWAIT 1 500\n");
                replies.lines().last().is_some_and(|l| l.trim() == "1")
            });
            assert!(replicated, "the flush of {port} never reached its replica: {replies:?}");
        }
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let pid = std::fs::read_to_string(format!("{}/{port}/redis.pid", self.dir.path)).expect("pid file");
        let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
    }

    /// Waits until a replica has taken over the killed master's slots.
    pub async fn wait_failover(&self, killed: u16) {
        for _ in 0..300 {
            let masters = self.masters();
            if masters.len() >= 3 && !masters.contains(&killed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no failover after killing {killed}: {}", cli(self.live(), &["CLUSTER", "NODES"]));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster.sh"))
            .arg("stop")
            .arg(&self.dir.path)
            .status();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Commands on `redis-cli`'s standard input, one a line; its replies.
fn cli_stdin(port: u16, commands: &[u8]) -> String {
    use std::io::Write;
    let Ok(mut cli) =
        Command::new("redis-cli").args(["-p", &port.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()
    else {
        return String::new();
    };
    if let Some(mut stdin) = cli.stdin.take() {
        let _ = stdin.write_all(commands);
    }
    cli.wait_with_output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A base port whose next six ports and their cluster bus ports (+10000) are free.
fn cluster_base_port() -> u16 {
    use rand::RngExt;
    loop {
        let base = rand::rng().random_range(20000..50000u16);
        let free = (base..base + 6).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        });
        if free {
            return base;
        }
    }
}

/// One `nats-server` of a [`NatsCluster`].
pub struct NatsMember {
    /// Client port.
    pub port: u16,
    /// Route (cluster) port.
    pub cluster_port: u16,
    /// HTTP monitoring port (`/routez`).
    pub monitor_port: u16,
    child: Option<Child>,
}

/// `n` `nats-server` processes on loopback joined by routes into one cluster; each can be
/// killed (SIGKILL) and started again, and all stop when this is dropped.
pub struct NatsCluster {
    pub name: String,
    pub members: Vec<NatsMember>,
}

/// Starts a cluster of `n` servers and waits until every route is up.
pub async fn nats_cluster(n: usize) -> NatsCluster {
    let members = (0..n)
        .map(|_| NatsMember { port: free_port(), cluster_port: free_port(), monitor_port: free_port(), child: None })
        .collect();
    let mut cluster = NatsCluster { name: super::unique("sbnats"), members };
    for i in 0..n {
        cluster.launch(i);
    }
    cluster.wait_routes().await;
    cluster
}

impl NatsCluster {
    fn launch(&mut self, i: usize) {
        let routes: Vec<String> = (self.members.iter().enumerate())
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| format!("nats://127.0.0.1:{}", m.cluster_port))
            .collect();
        let m = &self.members[i];
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &m.port.to_string(), "-m", &m.monitor_port.to_string()])
            .args(["-n", &format!("{}-{i}", self.name), "--cluster_name", &self.name])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", m.cluster_port), "--routes", &routes.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("cannot start nats-server");
        self.members[i].child = Some(child);
    }

    /// `nats://127.0.0.1:port` of member `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.members[i].port)
    }

    /// Every member's URL, comma-separated (the form of NATS_URL).
    pub fn urls(&self) -> String {
        (0..self.members.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect()
    }

    /// Waits until every running member has a route to every other running member.
    pub async fn wait_routes(&self) {
        let running = self.running();
        for _ in 0..300 {
            let mut all = true;
            for &i in &running {
                let api = switchboard::client::Api::new(([127, 0, 0, 1], self.members[i].monitor_port).into());
                let routes = match api.get("/routez").await {
                    Ok((status, body)) if status == 200 => body["num_routes"].as_u64().unwrap_or(0),
                    _ => 0,
                };
                let open = std::net::TcpStream::connect(("127.0.0.1", self.members[i].port)).is_ok();
                all &= open && routes as usize + 1 >= running.len();
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the NATS cluster's routes did not come up");
    }

    /// How many client connections named `name` each member holds (0 for a stopped one).
    pub async fn clients_named(&self, name: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for m in &self.members {
            let mut n = 0;
            if m.child.is_some() {
                let api = switchboard::client::Api::new(([127, 0, 0, 1], m.monitor_port).into());
                if let Ok((_, body)) = api.get("/connz").await {
                    let conns = body["connections"].as_array().cloned().unwrap_or_default();
                    n = conns.iter().filter(|c| c["name"] == name).count();
                }
            }
            out.push(n);
        }
        out
    }

    /// Kills member `i` with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and waits until the cluster is whole.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_routes().await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
