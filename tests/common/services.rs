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

/// A Redis Cluster of `masters` masters with one replica each, on loopback, in its own
/// directories; every process is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Service>,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let mut s = Service {
                name: "redis-cluster",
                port: cluster_port(),
                dir: TempDir::new(),
                child: None,
                command: |s| {
                    let mut c = Command::new("redis-server");
                    c.args(["--bind", "127.0.0.1", "--port", &s.port.to_string(), "--save", "", "--appendonly", "no"]);
                    c.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1500"]);
                    // A replica fails over however fresh its copy (a test kills masters
                    // moments after the cluster formed).
                    c.args(["--cluster-replica-validity-factor", "0"]);
                    c.args(["--cluster-config-file", "nodes.conf"]);
                    c.current_dir(&s.dir.path);
                    c
                },
            };
            s.start().await;
            nodes.push(s);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// `REDIS_CLUSTER_URLS`: every node.
    pub fn urls_arg(&self) -> String {
        self.urls().join(",")
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on the masters.
    pub async fn wait_ok(&self) {
        for _ in 0..300 {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && cli(n.port, &["CLUSTER", "NODES"]).matches("master").count() >= 3
            });
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the Redis Cluster did not reach cluster_state:ok");
    }

    /// Ports of the current masters (as a live node sees them), excluding failed ones.
    pub fn masters(&self) -> Vec<u16> {
        let live = self.nodes.iter().find(|n| n.is_running()).expect("a live node");
        cli(live.port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| l.split_whitespace().nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node on that port");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a replica has taken over the killed master's slots.
    pub async fn wait_failover(&self, killed: u16) {
        for _ in 0..300 {
            let masters = self.masters();
            if masters.len() >= 3 && !masters.contains(&killed) {
                self.wait_ok().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let live = self.nodes.iter().find(|n| n.is_running()).expect("a live node");
        panic!("no failover after killing {killed}: {}", cli(live.port, &["CLUSTER", "NODES"]));
    }
}

impl Service {
    fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}
