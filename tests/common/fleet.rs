//! A local fleet for drain tests: node processes behind the real HAProxy, its config rendered
//! by `haproxy/fleet.sh render` from `haproxy/haproxy.cfg` with free ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Proc, TempDir, free_port};

pub struct Haproxy {
    pub addr: SocketAddr,
    pub stats: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node `i` (1-based) of a fleet: public, admin and agent ports.
pub struct Ports {
    pub public: u16,
    pub admin: u16,
    pub agent: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports { public: free_port(), admin: free_port(), agent: free_port() }
    }
}

/// Starts HAProxy with the repository's config, as `haproxy/fleet.sh render` writes it, in
/// front of `nodes` (`node1`, `node2`, ... in order).
pub async fn haproxy(nodes: &[Ports]) -> Haproxy {
    let (port, stats) = (free_port(), free_port());
    let mut render = Command::new("bash");
    render.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/haproxy/fleet.sh")).arg("render");
    render.args(["--bind", &format!("127.0.0.1:{port}"), "--stats-bind", &format!("127.0.0.1:{stats}")]);
    render.args(nodes.iter().map(|n| format!("{}:{}:{}", n.public, n.admin, n.agent)));
    let out = render.env_remove("HAPROXY_CFG").stderr(Stdio::inherit()).output().expect("run haproxy/fleet.sh render");
    assert!(out.status.success(), "haproxy/fleet.sh render failed: {}", out.status);
    let cfg = String::from_utf8(out.stdout).expect("utf-8 config");
    let servers: Vec<&str> = cfg.lines().filter(|l| l.trim_start().starts_with("server ")).collect();
    assert_eq!(servers.len(), nodes.len(), "one server line per node: {servers:?}");
    let dir = TempDir::new();
    let path = format!("{}/haproxy.cfg", dir.path);
    std::fs::write(&path, cfg).expect("write cfg");
    let child = Command::new("haproxy")
        .args(["-db", "-f", &path])
        .env("HAPROXY_RUN_DIR", &dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let hp = Haproxy {
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        stats: format!("127.0.0.1:{stats}").parse().expect("addr"),
        child,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(hp.stats).is_ok() {
            return hp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("haproxy did not start");
}

impl Haproxy {
    /// Server name -> status (`UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`, ...), from the stats CSV.
    pub async fn statuses(&self) -> Vec<(String, String)> {
        let req = hyper::Request::get("/stats;csv")
            .header("host", "stats")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("req");
        let Ok(res) = raw_get(self.stats, req).await else { return Vec::new() };
        let mut lines = res.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let status = header.iter().position(|h| *h == "status").unwrap_or(17);
        lines
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                (cols.first() == Some(&"be_switchboard") && cols.get(1).is_some_and(|s| s.starts_with("node")))
                    .then(|| (cols[1].to_owned(), cols.get(status).unwrap_or(&"").to_string()))
            })
            .collect()
    }

    pub async fn status_of(&self, server: &str) -> String {
        self.statuses().await.into_iter().find(|(n, _)| n == server).map(|(_, s)| s).unwrap_or_default()
    }

    /// Waits until every listed server is plainly `UP`.
    pub async fn wait_all_up(&self, servers: &[&str]) {
        for _ in 0..300 {
            let st = self.statuses().await;
            if servers.iter().all(|s| st.iter().any(|(n, v)| n == s && v == "UP")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("haproxy never saw {servers:?} UP: {:?}", self.statuses().await);
    }
}

async fn raw_get(addr: SocketAddr, req: hyper::Request<http_body_util::Full<bytes::Bytes>>) -> Result<String, ()> {
    // Not JSON (stats CSV, metrics text), so a plain connection instead of `Api`.
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| ())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|_| ())?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await.map_err(|_| ())?;
    use http_body_util::BodyExt;
    let body = res.into_body().collect().await.map_err(|_| ())?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Spawns a fleet node on the given ports with an agent listener.
pub fn node(name: &str, ports: &Ports, extra: &[&str], env: &[(String, String)]) -> Proc {
    let mut args: Vec<String> =
        vec!["--node-id".into(), name.into(), "--agent-listen".into(), format!("127.0.0.1:{}", ports.agent)];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn_on(ports.public, ports.admin, &args, env)
}

/// Reads one counter or gauge (summed over labels matching `filter`) from a node's metrics.
pub async fn metric(admin: SocketAddr, name: &str, filter: &str) -> Option<f64> {
    let req = hyper::Request::get("/metrics")
        .header("host", "node")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let text = raw_get(admin, req).await.ok()?;
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with(name) && (line[name.len()..].starts_with(' ') || line[name.len()..].starts_with('{')) {
            if !line.contains(filter) {
                continue;
            }
            let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}
