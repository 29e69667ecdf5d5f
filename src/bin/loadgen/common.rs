//! What every subcommand shares: where to connect ([`Target`]), the user/group setup (cached in a file so
//! repeated runs skip registration), process and node statistics, and the line protocol
//! between a parent and its child processes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::client::Api;
use tokio::task::JoinSet;

pub type UserId = i64;
pub type GroupId = i64;

pub use switchboard::model::now_us;

pub fn parse_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Result<Vec<SocketAddr>, _> = s.split(',').filter(|p| !p.is_empty()).map(str::parse).collect();
    let addrs = addrs.map_err(|e| format!("bad address list {s:?}: {e}"))?;
    if addrs.is_empty() {
        return Err("empty address list".into());
    }
    for a in &addrs {
        if !a.ip().is_loopback() {
            return Err(format!("{a}: this tool only targets loopback addresses (127.0.0.0/8, ::1)"));
        }
    }
    Ok(addrs)
}

pub fn parse_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let ips: Result<Vec<IpAddr>, _> = s.split(',').filter(|p| !p.is_empty()).map(str::parse).collect();
    let ips = ips.map_err(|e| format!("bad source list {s:?}: {e}"))?;
    for ip in &ips {
        if !ip.is_loopback() {
            return Err(format!("{ip}: source addresses must be loopback"));
        }
    }
    Ok(ips)
}

/// Where a run connects and what it measures there, from the flags every node-facing
/// subcommand shares (`--target`, `--api`, `--admin`, `--sources`, `--node-pid`, `--watch`).
#[derive(Clone, Debug)]
pub struct Target {
    /// Nodes for WebSockets; clients are spread round-robin.
    pub ws: Vec<SocketAddr>,
    /// Nodes for REST calls.
    pub apis: Vec<SocketAddr>,
    /// Admin listeners, for /metrics.
    pub admin: Vec<SocketAddr>,
    /// Local addresses client sockets are bound to, round-robin; empty: the kernel's choice.
    pub sources: Vec<IpAddr>,
    /// The node's pid, for RSS and CPU from /proc.
    pub node_pid: Option<u32>,
    /// More pids whose CPU use is reported.
    pub watch: Vec<u32>,
}

impl Target {
    /// The WebSocket node of client `index`.
    pub fn ws_addr(&self, index: usize) -> SocketAddr {
        self.ws[index % self.ws.len()]
    }

    /// The source address of client `index`.
    pub fn source(&self, index: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    /// A REST client of the API node of sender `index`.
    pub fn api(&self, index: usize) -> Api {
        Api::new(self.apis[index % self.apis.len()])
    }

    /// The node's memory (of `--node-pid`, else of the first admin listener).
    pub async fn node_rss(&self) -> Option<u64> {
        node_rss(self.node_pid, self.admin.first().copied()).await
    }

    /// The pids whose CPU a run reports: `--watch`, then the node.
    pub fn watched(&self) -> Vec<u32> {
        self.watch.iter().copied().chain(self.node_pid).collect()
    }
}

/// A group of the workload: its id and members; member 0 is the sender.
#[derive(Clone, Debug)]
pub struct Group {
    pub id: GroupId,
    pub members: Vec<UserId>,
}

/// Runs `f(i)` for i in 0..n with at most `concurrency` at once; results in index order.
pub async fn parallel<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < concurrency.max(1) {
            let fut = f(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(Ok((i, v))) = set.join_next().await {
            out[i] = Some(v);
        }
    }
    out.into_iter().map(|v| v.expect("every task finished")).collect()
}

/// `groups` groups of `size` users each (size 1: users without a group, id 0). Reuses the
/// cache file when it holds enough groups of that size whose users still exist on `api`.
pub async fn setup_groups(api: &Api, groups: usize, size: usize, cache: Option<&Path>) -> Result<Vec<Group>, String> {
    if let Some(path) = cache
        && let Some(found) = read_cache(path, size)
        && found.len() >= groups
    {
        let found: Vec<Group> = found.into_iter().take(groups).collect();
        let mut ok = true;
        for g in [&found[0], &found[found.len() - 1]] {
            let u = g.members[size - 1];
            ok &= match api.get(&format!("/users/{u}/groups")).await {
                Ok((s, body)) if s == 200 => {
                    size == 1 || body.as_array().is_some_and(|a| a.iter().any(|x| x["group_id"] == g.id))
                }
                _ => false,
            };
        }
        if ok {
            eprintln!("loadgen: reusing {groups} groups of {size} from {}", path.display());
            return Ok(found);
        }
        eprintln!("loadgen: {} does not match this target; registering anew", path.display());
    }
    let run = format!("{:x}", now_us());
    let total = groups * size;
    let t = std::time::Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let users = parallel(total, 64, |i| {
        let api = api.clone();
        let name = format!("lg{run}-{i}");
        let done = done.clone();
        async move {
            let mut last = String::new();
            for attempt in 0..5u32 {
                match api.register(&name).await {
                    Ok(id) => {
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(5000) {
                            eprintln!("loadgen: registered {n}/{total}");
                        }
                        return Ok(id);
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(format!("register {name}: {last}"))
        }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<UserId>, String>>()?;
    eprintln!("loadgen: registered {total} users in {:.1}s", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let chunks: Vec<Vec<UserId>> = users.chunks(size).map(<[UserId]>::to_vec).collect();
    let chunks = Arc::new(chunks);
    let out = if size == 1 {
        chunks.iter().map(|m| Group { id: 0, members: m.clone() }).collect()
    } else {
        parallel(groups, 32, |g| {
            let api = api.clone();
            let chunks = chunks.clone();
            async move {
                let members = chunks[g].clone();
                let mut last = String::new();
                for attempt in 0..5u32 {
                    match api.create_group(members[0], &members[1..]).await {
                        Ok(id) => return Ok(Group { id, members }),
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(format!("create_group: {last}"))
            }
        })
        .await
        .into_iter()
        .collect::<Result<Vec<Group>, String>>()?
    };
    if size > 1 {
        eprintln!("loadgen: created {groups} groups in {:.1}s", t.elapsed().as_secs_f64());
    }
    if let Some(path) = cache {
        write_cache(path, size, &out);
    }
    Ok(out)
}

fn read_cache(path: &Path, size: usize) -> Option<Vec<Group>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let header = lines.next()?;
    if header != format!("# loadgen groups size={size}") {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        let nums: Vec<i64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if nums.len() != size + 1 {
            return None;
        }
        out.push(Group { id: nums[0], members: nums[1..].to_vec() });
    }
    (!out.is_empty()).then_some(out)
}

fn write_cache(path: &Path, size: usize, groups: &[Group]) {
    let mut text = format!("# loadgen groups size={size}\n");
    for g in groups {
        text.push_str(&g.id.to_string());
        for m in &g.members {
            text.push(' ');
            text.push_str(&m.to_string());
        }
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("loadgen: cannot write {}: {e}", path.display());
    }
}

/// Resident memory of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

pub fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| pid.to_string())
}

/// The whole machine's busy CPU seconds (all cores) and total seconds, from /proc/stat.
pub fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / 100.0, total / 100.0))
}

/// Samples CPU of watched processes over an interval: call `start`, then `report`.
pub struct CpuWatch {
    pids: Vec<u32>,
    start: Vec<Option<f64>>,
    machine: Option<(f64, f64)>,
    t: std::time::Instant,
}

impl CpuWatch {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| cpu_of(*p)).collect(),
            machine: machine_cpu(),
            t: std::time::Instant::now(),
        }
    }

    /// `cpu_<name>=<cores>` per watched process plus `cpu_machine=<busy cores>`; with
    /// `messages`, also `us_per_msg_<name>=<CPU microseconds per message>` for each process
    /// (the cost of one accepted message to the node and to each backend).
    pub fn report(&self, messages: Option<u64>) -> String {
        let secs = self.t.elapsed().as_secs_f64().max(1e-3);
        let mut parts = Vec::new();
        let mut per = Vec::new();
        for (pid, start) in self.pids.iter().zip(&self.start) {
            if let (Some(a), Some(b)) = (start, cpu_of(*pid)) {
                let name = comm_of(*pid).replace(' ', "_");
                parts.push(format!("cpu_{name}={:.2}", (b - a) / secs));
                if let Some(n) = messages.filter(|n| *n > 0) {
                    per.push(format!("us_per_msg_{name}={:.1}", (b - a) * 1e6 / n as f64));
                }
            }
        }
        if let (Some((busy0, total0)), Some((busy1, total1))) = (self.machine, machine_cpu()) {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
            let frac = (busy1 - busy0) / (total1 - total0).max(1e-3);
            parts.push(format!("cpu_machine={:.2}", frac * cores));
        }
        parts.extend(per);
        parts.join(" ")
    }
}

/// Values of `/metrics` on an admin listener: the sum of each named series (all labels).
pub async fn scrape(admin: SocketAddr, names: &[&str]) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let req = hyper::Request::get("/metrics")
        .header("host", admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()));
    let Ok(req) = req else { return out };
    // `Api::request` parses JSON; /metrics is text, so read it raw.
    let Ok(text) = raw_get(admin, req).await else { return out };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if names.contains(&name)
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

async fn raw_get(
    addr: SocketAddr,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The node's memory: from /proc when the pid is known, else from its admin /metrics.
pub async fn node_rss(pid: Option<u32>, admin: Option<SocketAddr>) -> Option<u64> {
    if let Some(pid) = pid {
        return rss_of(pid);
    }
    let admin = admin?;
    scrape(admin, &["process_resident_memory_bytes"]).await.get("process_resident_memory_bytes").map(|v| *v as u64)
}

pub async fn node_connections(admins: &[SocketAddr]) -> Option<f64> {
    if admins.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for a in admins {
        total += scrape(*a, &["switchboard_ws_connections"]).await.get("switchboard_ws_connections")?;
    }
    Some(total)
}

/// A counter that is cheap to share.
#[derive(Clone, Default)]
pub struct Count(Arc<AtomicU64>);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Failure kinds with counts, printed as `kind:n,kind:n`.
#[derive(Clone, Default)]
pub struct Failures(Arc<std::sync::Mutex<HashMap<String, u64>>>);

impl Failures {
    pub fn add(&self, kind: &str, n: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(kind.to_owned()).or_insert(0) += n;
        }
    }
    pub fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
    pub fn encode(&self) -> String {
        let m = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        if m.is_empty() {
            return "-".into();
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v.into_iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(",")
    }
    pub fn merge_encoded(&self, s: &str) {
        for part in s.split(',') {
            if let Some((k, n)) = part.split_once(':')
                && let Ok(n) = n.parse()
            {
                self.add(k, n);
            }
        }
    }
}

/// Parses `key=value` tokens of a line.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace().filter_map(|t| t.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

pub fn field<T: std::str::FromStr + Default>(f: &HashMap<String, String>, key: &str) -> T {
    f.get(key).and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// Where the users cache goes when the caller does not say.
pub fn default_cache(kind: &str, groups: usize, size: usize, target: SocketAddr) -> PathBuf {
    PathBuf::from(format!("target/loadgen/{kind}-{}-{groups}x{size}.users", target.port()))
}
