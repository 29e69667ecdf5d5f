//! `loadgen`: load tool for what k6 cannot reach on a small machine: tens of thousands of
//! WebSockets from a few processes, open-loop chat at thousands of messages per second with
//! delivery latency and the loss/duplicate checker, and reconnect storms.
//!
//! ```text
//! loadgen connections --target 127.0.0.1:8000 --count 19000 --procs 2 --hold 30 --heartbeat \
//!     --admin 127.0.0.1:9000 --node-pid $(pgrep -n switchboard) [--sources 127.0.0.1,127.0.0.2]
//! loadgen chat --target 127.0.0.1:8000 --pairs 100 --rate 1000 --duration 20 [--group-size 100]
//! loadgen storm --target 127.0.0.1:8000 --count 19000 --procs 2 --admin 127.0.0.1:9000
//! loadgen fleet --nodes 10,50,200 --users 5000 --rate 200 --duration 20
//! ```
//!
//! `fleet` needs no node: it simulates a fleet's backplane on a Redis of its own
//! (docs/routing.md).
//!
//! Each run ends with one `loadgen <command> key=value ...` line for scripts, after a
//! human-readable table; while it runs, a progress line goes to stderr every `--progress`
//! seconds. Users and groups are registered once and cached in
//! `--users-file` (default `target/loadgen/<command>-<port>-<groups>x<size>.users`), so
//! repeated runs against the same database skip the setup.
//!
//! File descriptors: the crate forbids `unsafe`, so the tool cannot raise its own limit.
//! `--procs N` splits the clients over N child processes (keep each under the soft limit,
//! `ulimit -n`, minus a few hundred). Above ~28k connections from one source address to one
//! destination the ephemeral ports run out: `--sources 127.0.0.1,127.0.0.2,...` binds client
//! sockets to several loopback addresses, round-robin.

mod bloom;
mod chat;
mod client;
mod common;
mod connections;
mod dial;
mod fleet;
mod hist;
mod procs;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for Switchboard (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Node(s) for WebSockets, comma-separated; clients are spread round-robin.
    #[arg(long, default_value = "127.0.0.1:8000")]
    target: String,
    /// Node(s) for REST calls (register, create_group, send_message); default: --target.
    #[arg(long)]
    api: Option<String>,
    /// Admin listener(s) of the node(s): /metrics for RSS, ws_connections and deliveries.
    #[arg(long)]
    admin: Option<String>,
    /// Pid of the node, for VmRSS and CPU from /proc (more exact than /metrics).
    #[arg(long)]
    node_pid: Option<u32>,
    /// More pids whose CPU use is reported (e.g. mariadbd, redis-server), comma-separated.
    #[arg(long)]
    watch: Option<String>,
    /// Local addresses to bind client sockets to, round-robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long)]
    sources: Option<String>,
    /// Cache of registered users and groups (reused when it fits the target).
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    progress: u64,
    /// Internal: this process is child I of N.
    #[arg(long, hide = true)]
    shard: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N idle WebSockets, hold them with heartbeats, report rates, latency and RSS.
    Connections {
        #[command(flatten)]
        common: Common,
        /// WebSockets to open, all processes together.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Send a heartbeat every 5 s (without it the node closes idle sockets after 15 s).
        #[arg(long)]
        heartbeat: bool,
        /// Handshakes in flight per process during the ramp.
        #[arg(long, default_value_t = 256)]
        ramp: usize,
        /// Child processes to spread the sockets over.
        #[arg(long, default_value_t = 1)]
        procs: usize,
        /// Users come in groups of this size (so each handshake subscribes a group); 1 = none.
        #[arg(long, default_value_t = 2)]
        group_size: usize,
        /// Seconds a connection attempt (TCP, upgrade, hello) may take before it counts as failed.
        #[arg(long, default_value_t = 30)]
        connect_timeout: u64,
    },
    /// Open-loop chat: P groups, R messages/s in total, delivery latency and the checker.
    Chat {
        #[command(flatten)]
        common: Common,
        /// Number of groups (pairs when --group-size is 2); member 0 of each sends.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Members per group: one sender and group-size - 1 connected receivers.
        #[arg(long, default_value_t = 2)]
        group_size: usize,
        /// Messages per second, all groups together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Seconds at the start that are sent and checked but not measured.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Receivers ack (at-least-once mode) instead of relying on written = delivered.
        #[arg(long)]
        ack: bool,
        /// Messages queued per sender before new ones are skipped (counted as skipped).
        #[arg(long, default_value_t = 1000)]
        max_backlog: usize,
        /// Seconds to wait after the last send for every message to arrive.
        #[arg(long, default_value_t = 10)]
        linger: u64,
        /// Approximate message content size in bytes (min ~40: the timestamps).
        #[arg(long, default_value_t = 64)]
        content_bytes: usize,
    },
    /// Reconnect storm: connect N, drop all at once, send what they miss, measure recovery.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Clients that connect, drop and come back, all processes together.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Users per group; one message to a group reaches size-1 absent clients.
        #[arg(long, default_value_t = 10)]
        group_size: usize,
        /// Messages sent to each group while its members are away.
        #[arg(long, default_value_t = 1)]
        missed: usize,
        /// Handshakes in flight per process during the initial ramp.
        #[arg(long, default_value_t = 256)]
        ramp: usize,
        /// Child processes to spread the clients over.
        #[arg(long, default_value_t = 1)]
        procs: usize,
        /// Fixed part of the reconnect delay in ms: each client waits base + random(0, jitter)
        /// (docs/protocol.md uses random(0, 1000)).
        #[arg(long, default_value_t = 0)]
        base_ms: u64,
        /// Upper bound of the random part of the reconnect delay, in ms.
        #[arg(long, default_value_t = 1000)]
        jitter_ms: u64,
        /// Seconds to wait for recovery before reporting it as not reached.
        #[arg(long, default_value_t = 60)]
        recover_timeout: u64,
        /// Seconds a connection attempt (TCP, upgrade, hello) may take before it counts as failed.
        #[arg(long, default_value_t = 30)]
        connect_timeout: u64,
    },
    /// Routing modes compared on simulated nodes sharing one real Redis (docs/routing.md).
    Fleet {
        /// Routing modes, comma-separated (`sharded` runs on a Redis Cluster of its own).
        #[arg(long, default_value = "group,node,broadcast,sharded", value_parser = fleet::parse_modes)]
        modes: std::vec::Vec<switchboard::routing::Routing>,
        /// Fleet sizes, comma-separated; each is run in every mode.
        #[arg(long, default_value = "10,50,200", value_parser = fleet::parse_counts)]
        nodes: std::vec::Vec<usize>,
        /// Simulated users (at least 100), placed on random nodes.
        #[arg(long, default_value_t = 5000)]
        users: usize,
        /// Messages per second, the whole fleet together.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds of traffic per run.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Sessions per second that move to another node.
        #[arg(long, default_value_t = 20.0)]
        churn: f64,
        /// Share of messages sent to groups (the rest go to 1:1 conversations).
        #[arg(long, default_value_t = 0.2)]
        group_share: f64,
        /// Message frame size in bytes.
        #[arg(long, default_value_t = 200)]
        payload: usize,
        /// Port of the private Redis each run starts (and restarts); `sharded` runs start a
        /// cluster on this port and the next five.
        #[arg(long, default_value_t = 6390)]
        redis_port: u16,
        /// `--presence-cache` of the simulated nodes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        presence_cache_ms: u64,
        /// Seconds between progress lines on stderr (0: none).
        #[arg(long, default_value_t = 5)]
        progress: u64,
        /// Internal: this child runs one `mode:nodes`.
        #[arg(long, hide = true)]
        one: Option<String>,
    },
}

fn resolve(c: &Common) -> Result<common::Target, String> {
    let ws = common::parse_addrs(&c.target)?;
    let apis = match &c.api {
        Some(a) => common::parse_addrs(a)?,
        None => ws.clone(),
    };
    let admin = match &c.admin {
        Some(a) => common::parse_addrs(a)?,
        None => Vec::new(),
    };
    let sources = match &c.sources {
        Some(s) => common::parse_ips(s)?,
        None => Vec::new(),
    };
    let watch = match &c.watch {
        Some(w) => w
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().map_err(|_| format!("bad pid {x}")))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(common::Target { ws, apis, admin, sources, node_pid: c.node_pid, watch })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            procs::emit("error", &e.replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Fleet {
            modes,
            nodes,
            users,
            rate,
            duration,
            churn,
            group_share,
            payload,
            redis_port,
            presence_cache_ms,
            progress,
            one,
        } => {
            if users < 100 || rate <= 0.0 || !(0.0..=1.0).contains(&group_share) || nodes.contains(&0) {
                return Err("fleet needs --users >= 100, --rate > 0, --group-share in 0..1 and nodes >= 1".into());
            }
            let opts = fleet::FleetOpts {
                modes,
                nodes,
                users,
                rate,
                duration: Duration::from_secs(duration),
                churn,
                group_share,
                payload,
                redis_port,
                presence_cache_ms,
                progress: Duration::from_secs(progress),
                one,
            };
            fleet::run(opts).await
        }
        Cmd::Chat { common, pairs, group_size, rate, duration, warmup, ack, max_backlog, linger, content_bytes } => {
            let target = resolve(&common)?;
            if group_size < 2 || pairs == 0 || rate <= 0.0 {
                return Err("chat needs --group-size >= 2, --pairs >= 1 and --rate > 0".into());
            }
            let cache = common
                .users_file
                .clone()
                .unwrap_or_else(|| common::default_cache("chat", pairs, group_size, target.apis[0]));
            let groups = common::setup_groups(&target.api(0), pairs, group_size, Some(&cache)).await?;
            let opts = chat::ChatOpts {
                target,
                rate,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup.min(duration.saturating_sub(1))),
                ack,
                max_backlog,
                linger: Duration::from_secs(linger),
                content_bytes,
                progress: Duration::from_secs(common.progress),
            };
            chat::run(opts, groups).await
        }
        Cmd::Connections { common, count, hold, heartbeat, ramp, procs, group_size, connect_timeout } => {
            if !heartbeat && hold >= 12 && common.shard.is_none() {
                eprintln!("loadgen: warning: without --heartbeat the node closes idle sockets after 15 s");
            }
            let opts = conn_opts(&common, count, ramp, heartbeat, hold, procs, connect_timeout)?;
            multi(common, opts, false, group_size).await
        }
        Cmd::Storm {
            common,
            count,
            group_size,
            missed,
            ramp,
            procs,
            base_ms,
            jitter_ms,
            recover_timeout,
            connect_timeout,
        } => {
            if group_size < 2 {
                return Err("storm needs --group-size >= 2 (someone must send to the absent)".into());
            }
            let mut opts = conn_opts(&common, count, ramp, true, 0, procs, connect_timeout)?;
            opts.missed = missed;
            opts.base = Duration::from_millis(base_ms);
            opts.jitter = Duration::from_millis(jitter_ms);
            opts.recover_timeout = Duration::from_secs(recover_timeout);
            multi(common, opts, true, group_size).await
        }
    }
}

fn conn_opts(
    common: &Common,
    count: usize,
    ramp: usize,
    heartbeat: bool,
    hold: u64,
    procs: usize,
    connect_timeout: u64,
) -> Result<connections::ConnOpts, String> {
    Ok(connections::ConnOpts {
        target: resolve(common)?,
        count,
        ramp,
        heartbeat,
        hold: Duration::from_secs(hold),
        procs: procs.max(1),
        connect_timeout: Duration::from_secs(connect_timeout),
        missed: 1,
        base: Duration::ZERO,
        jitter: Duration::from_millis(1000),
        recover_timeout: Duration::from_secs(60),
        progress: Duration::from_secs(common.progress),
    })
}

/// Parent: set up users, spawn children, aggregate. Child: run its shard.
async fn multi(common: Common, opts: connections::ConnOpts, storm: bool, group_size: usize) -> Result<(), String> {
    let groups_needed = opts.count.div_ceil(group_size.max(1));
    let kind = if storm { "storm" } else { "connections" };
    let cache = common
        .users_file
        .clone()
        .unwrap_or_else(|| common::default_cache(kind, groups_needed, group_size, opts.target.apis[0]));
    let api = opts.target.api(0);
    match &common.shard {
        Some(shard) => {
            let shard = procs::parse_shard(shard)?;
            // The parent wrote the cache; read it without probing the node again.
            let groups = common::setup_groups(&api, groups_needed, group_size.max(1), Some(&cache)).await?;
            connections::child(opts, storm, groups, shard).await
        }
        None => {
            common::setup_groups(&api, groups_needed, group_size.max(1), Some(&cache)).await?;
            connections::parent(opts, storm, &cache).await
        }
    }
}
