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
