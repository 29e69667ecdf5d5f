//! `connections` and `storm`: many clients split over child processes.
//!
//! connections: open `--count` WebSockets (ramp bounded by `--ramp` handshakes in flight),
//! hold them with heartbeats, and report handshake rate, connect latency, failures and the
//! node's RSS per connection.
//!
//! storm: connect `--count` acking clients, drop every socket at once, send `--missed`
//! messages to each group while they are away, then let every client reconnect at once
//! (each after `--base-ms` + random(0, `--jitter-ms`), the reconnect delay of docs/protocol.md) and
//! measure the time until all are back and the checker finds nothing lost.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard::checker::Checker;
use tokio::sync::watch;

use super::client::{self, Phase, Shared};
use super::common::{CpuWatch, Failures, Group, Target, UserId, field, node_connections, now_us, parallel};
use super::hist::{Histogram, ms};
use super::procs::{Children, Commands, emit};
use super::progress::{Progress, Snapshot};

pub struct ConnOpts {
    pub target: Target,
    pub count: usize,
    pub ramp: usize,
    pub heartbeat: bool,
    pub hold: Duration,
    pub procs: usize,
    pub connect_timeout: Duration,
    /// Between progress lines on stderr (zero: none).
    pub progress: Duration,
    // storm only
    pub missed: usize,
    pub base: Duration,
    pub jitter: Duration,
    pub recover_timeout: Duration,
}

/// The users of shard `i` of `n`: groups dealt round-robin, the first `count` users overall.
pub fn shard_users(groups: &[Group], count: usize, shard: (usize, usize)) -> (Vec<UserId>, Vec<Group>) {
    let mut users = Vec::new();
    let mut mine = Vec::new();
    let mut seen = 0;
    for (gi, g) in groups.iter().enumerate() {
        let take = g.members.len().min(count.saturating_sub(seen));
        if gi % shard.1 == shard.0 && take > 0 {
            users.extend_from_slice(&g.members[..take]);
            mine.push(g.clone());
        }
        seen += g.members.len();
    }
    (users, mine)
}

// ---------------------------------------------------------------------------------------
// child side

pub async fn child(o: ConnOpts, storm: bool, groups: Vec<Group>, shard: (usize, usize)) -> Result<(), String> {
    let (users, my_groups) = shard_users(&groups, o.count, shard);
    let mut sh = Shared::new(o.target.clone(), o.ramp);
    sh.heartbeat = o.heartbeat || storm;
    sh.connect_timeout = o.connect_timeout;
    sh.storm_base = o.base;
    sh.storm_jitter = o.jitter;
    let checker = storm.then(Checker::new);
    if storm {
        sh.ack = true;
        sh.checker = checker.clone();
    }
    let sh = Arc::new(sh);
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let start_us = now_us();
    let mut tasks = Vec::with_capacity(users.len());
    for (i, &u) in users.iter().enumerate() {
        // Spread over targets and sources by global position, so shards mix them too.
        let index = i * shard.1 + shard.0;
        tasks.push(tokio::spawn(client::run(sh.clone(), u, index, phase_rx.clone())));
    }
    let label = format!("{}[{}/{}]", if storm { "storm" } else { "connections" }, shard.0, shard.1);
    let progress = Progress::start(label, o.progress, {
        let sh = sh.clone();
        move || Snapshot {
            sent: sh.heartbeats.get(),
            received: sh.heartbeat_acks.get() + sh.messages.get(),
            errors: sh.failures.total() + sh.closes.total(),
            extra: format!("online={} gave_up={}", sh.online.get(), sh.gave_up.get()),
        }
    });
    while (sh.first_connects.get() + sh.gave_up.get()) < users.len() as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emit(
        "connected",
        &format!(
            "ok={} gave_up={} start_us={start_us} end_us={} failures={} connect={} handshake={}",
            sh.first_connects.get(),
            sh.gave_up.get(),
            sh.last_first_us.load(Ordering::Relaxed).max(start_us),
            sh.failures.encode(),
            sh.connect.encode(),
            sh.handshake.encode()
        ),
    );
    let ok = sh.first_connects.get();
    let mut commands = Commands::new();
    loop {
        let cmd = commands.next().await;
        let mut words = cmd.split_whitespace();
        match words.next().unwrap_or("") {
            "drop" => {
                let _ = phase_tx.send(Phase::Drop);
                let t = Instant::now();
                while sh.online.get() > 0 && t.elapsed() < Duration::from_secs(30) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                emit("dropped", &format!("online={}", sh.online.get()));
            }
            "send" => {
                let c = checker.clone().unwrap_or_default();
                let t = Instant::now();
                let failures = Failures::default();
                let accepted = send_missed(&o, &my_groups, &c, &failures).await;
                emit(
                    "sent",
                    &format!(
                        "accepted={accepted} secs={:.3} failures={}",
                        t.elapsed().as_secs_f64(),
                        failures.encode()
                    ),
                );
            }
            "go" => {
                let t0: i64 = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(now_us);
                let _ = phase_tx.send(Phase::Go(t0));
                let deadline = Instant::now() + o.recover_timeout;
                let c = checker.clone().unwrap_or_default();
                let mut all_back_us = 0i64;
                let mut recovered_us = 0i64;
                loop {
                    let back = sh.online.get() >= ok && sh.back.get() >= ok;
                    if back && all_back_us == 0 {
                        all_back_us = sh.last_back_us.load(Ordering::Relaxed);
                    }
                    if back && c.report().lost == 0 {
                        recovered_us = now_us();
                        break;
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let r = c.report();
                emit(
                    "recovered",
                    &format!(
                        "all_back_us={all_back_us} recovered_us={recovered_us} back={} online={} lost={} reconnect={} handshake={} failures={}",
                        sh.back.get(),
                        sh.online.get(),
                        r.lost,
                        sh.reconnect.encode(),
                        sh.handshake.encode(),
                        sh.failures.encode()
                    ),
                );
            }
            "stop" => break,
            other => emit("error", &format!("unknown command {other:?}")),
        }
    }
    drop(progress);
    // Let late duplicates and the acks of the last heartbeats arrive before the verdict.
    sh.quiet.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = checker.map(|c| c.report()).unwrap_or_default();
    emit(
        "done",
        &format!(
            "online={} heartbeats={} heartbeat_acks={} messages={} closes={} lost={} dup={} out_of_order={} deliveries={}",
            sh.online.get(),
            sh.heartbeats.get(),
            sh.heartbeat_acks.get(),
            sh.messages.get(),
            sh.closes.encode(),
            r.lost,
            r.duplicated,
            r.out_of_order,
            r.deliveries
        ),
    );
    let _ = phase_tx.send(Phase::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    Ok(())
}

/// `--missed` messages to each group of this shard, from its member 0, concurrently across
/// groups and one at a time within a group.
async fn send_missed(o: &ConnOpts, groups: &[Group], checker: &Checker, failures: &Failures) -> u64 {
    let groups = Arc::new(groups.to_vec());
    let run = format!("{:x}", now_us());
    let missed = o.missed;
    let results = parallel(groups.len(), 64, |gi| {
        let g = groups[gi].clone();
        let api = o.target.api(gi);
        let checker = checker.clone();
        let failures = failures.clone();
        let run = run.clone();
        async move {
            let mut accepted = 0u64;
            for k in 0..missed {
                let id = format!("st{run}-{}-{k}", g.id);
                let content = format!("missed {k} while away");
                for attempt in 0..10u32 {
                    match api.send(g.members[0], g.id, &content, Some(&id)).await {
                        Ok((s, body)) if s == 200 => {
                            if let Some(m) = body["message_id"].as_i64() {
                                checker.accepted(m, &g.members[1..]);
                                accepted += 1;
                            }
                            break;
                        }
                        Ok((s, _)) => failures.add(&format!("http_{}", s.as_u16()), 1),
                        Err(_) => failures.add("io", 1),
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
            }
            accepted
        }
    })
    .await;
    results.into_iter().sum()
}

// ---------------------------------------------------------------------------------------
// parent side

fn merged(parts: &[std::collections::HashMap<String, String>], key: &str) -> Histogram {
    let h = Histogram::new();
    for p in parts {
        if let Some(v) = p.get(key) {
            h.merge(&Histogram::decode(v));
        }
    }
    h
}

fn merged_failures(parts: &[std::collections::HashMap<String, String>], key: &str) -> Failures {
    let f = Failures::default();
    for p in parts {
        if let Some(v) = p.get(key)
            && v != "-"
        {
            f.merge_encoded(v);
        }
    }
    f
}

fn sum(parts: &[std::collections::HashMap<String, String>], key: &str) -> u64 {
    parts.iter().map(|p| field::<u64>(p, key)).sum()
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

pub async fn parent(o: ConnOpts, storm: bool, users_file: &Path) -> Result<(), String> {
    let name = if storm { "storm" } else { "connections" };
    let rss0 = o.target.node_rss().await;
    let conns0 = node_connections(&o.target.admin).await;
    let mut kids = Children::spawn(o.procs, &["--users-file".into(), users_file.display().to_string()])?;
    let mut watched = o.target.watched();
    watched.extend(kids.pids());
    let cpu = CpuWatch::start(&watched);
    let connected = kids.expect("connected").await?;
    let cpu_ramp = cpu.report(None);
    let ok = sum(&connected, "ok");
    let gave_up = sum(&connected, "gave_up");
    let start = connected.iter().map(|p| field::<i64>(p, "start_us")).min().unwrap_or_default();
    let end = connected.iter().map(|p| field::<i64>(p, "end_us")).max().unwrap_or_default();
    let secs = ((end - start) as f64 / 1e6).max(1e-6);
    let connect = merged(&connected, "connect");
    let handshake = merged(&connected, "handshake");
    let failures = merged_failures(&connected, "failures");
    println!(
        "{name}: {ok} connected, {gave_up} gave up, in {secs:.2}s = {:.0} sessions/s ({} procs, ramp {} in flight)",
        ok as f64 / secs,
        o.procs,
        o.ramp
    );
    println!("  connect failures (retried): {}", failures.encode());
    print!("{}", handshake.table("upgrade latency (TCP connect -> 101)"));
    print!("{}", connect.table("session latency (TCP connect -> hello: user check, subscriptions, inbox)"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = o.target.node_rss().await;
    let conns1 = node_connections(&o.target.admin).await;
    // RSS is of one node (--node-pid, else the first --admin): divide by that node's sessions.
    let on_node = match o.target.admin.first() {
        Some(a) if o.target.admin.len() > 1 => node_connections(&[*a]).await.map_or(ok, |c| c as u64),
        _ => ok,
    };
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if on_node > 0 => Some((b.saturating_sub(a)) as f64 / on_node as f64),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rss0, rss1) {
        println!(
            "  node RSS {:.1} MiB idle -> {:.1} MiB with {on_node} sessions: {:.0} bytes/connection",
            mib(a),
            mib(b),
            per_conn.unwrap_or(0.0)
        );
    }
    if let (Some(a), Some(b)) = (conns0, conns1) {
        println!("  node ws_connections {a:.0} -> {b:.0}");
    }

    if !storm {
        let cpu_hold = CpuWatch::start(&watched);
        tokio::time::sleep(o.hold).await;
        let rss2 = o.target.node_rss().await;
        let conns2 = node_connections(&o.target.admin).await;
        let cpu_hold_line = cpu_hold.report(None);
        kids.tell("stop").await;
        let done = kids.expect("done").await?;
        let online = sum(&done, "online");
        let closes = merged_failures(&done, "closes");
        println!(
            "  after {:?} hold: {online} still open, heartbeats {} sent / {} acked, server closes {}, RSS {:.1} MiB, ws_connections {}",
            o.hold,
            sum(&done, "heartbeats"),
            sum(&done, "heartbeat_acks"),
            closes.encode(),
            rss2.map_or(0.0, mib),
            conns2.map_or("-".into(), |c| format!("{c:.0}"))
        );
        println!("  cpu during ramp: {cpu_ramp}; during hold: {cpu_hold_line}");
        println!(
            "loadgen connections count={} procs={} connected={ok} gave_up={gave_up} failures={} sessions_per_s={:.0} {} hs_p50_ms={:.2} hs_p99_ms={:.2} rss_idle_mib={:.1} rss_mib={:.1} rss_per_conn_bytes={:.0} open_after_hold={online} server_closes={} heartbeats={} heartbeat_acks={}",
            o.count,
            o.procs,
            failures.total(),
            ok as f64 / secs,
            connect.summary(""),
            ms(handshake.quantile(0.5)),
            ms(handshake.quantile(0.99)),
            rss0.map_or(0.0, mib),
            rss1.map_or(0.0, mib),
            per_conn.unwrap_or(0.0),
            closes.total(),
            sum(&done, "heartbeats"),
            sum(&done, "heartbeat_acks"),
        );
        kids.wait().await;
        return Ok(());
    }

    // storm
    let t_drop = Instant::now();
    kids.tell("drop").await;
    kids.expect("dropped").await?;
    // Wait until the node noticed, so the missed messages really find nobody online.
    if let Some(base) = conns0 {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match node_connections(&o.target.admin).await {
                Some(c) if c <= base => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("  dropped all {ok} sockets; node saw them go in {:.2}s", t_drop.elapsed().as_secs_f64());
    kids.tell("send").await;
    let sent = kids.expect("sent").await?;
    let accepted = sum(&sent, "accepted");
    let send_secs = sent.iter().map(|p| field::<f64>(p, "secs")).fold(0.0, f64::max);
    println!(
        "  sent {accepted} messages to the absent clients in {send_secs:.2}s ({})",
        merged_failures(&sent, "failures").encode()
    );
    let cpu_storm = CpuWatch::start(&watched);
    let t0 = now_us();
    kids.tell(&format!("go {t0}")).await;
    let rec = kids.expect("recovered").await?;
    let cpu_storm_line = cpu_storm.report(None);
    let all_back = rec.iter().map(|p| field::<i64>(p, "all_back_us")).collect::<Vec<_>>();
    let recovered = rec.iter().map(|p| field::<i64>(p, "recovered_us")).collect::<Vec<_>>();
    let back_s =
        if all_back.contains(&0) { f64::NAN } else { (all_back.iter().max().copied().unwrap_or(t0) - t0) as f64 / 1e6 };
    let rec_s = if recovered.contains(&0) {
        f64::NAN
    } else {
        (recovered.iter().max().copied().unwrap_or(t0) - t0) as f64 / 1e6
    };
    let reconnect = merged(&rec, "reconnect");
    let rhs = merged(&rec, "handshake");
    let rfail = merged_failures(&rec, "failures");
    println!(
        "  storm: all {ok} back after {back_s:.2}s; everything missed received after {rec_s:.2}s (NaN = not within --recover-timeout)"
    );
    println!("  reconnect failures (retried): {}", rfail.encode());
    print!("{}", reconnect.table("reconnect latency during the storm (TCP connect -> hello, successful attempts)"));
    println!("  cpu during the storm: {cpu_storm_line}");
    kids.tell("stop").await;
    let done = kids.expect("done").await?;
    let lost = sum(&done, "lost");
    let dup = sum(&done, "dup");
    let ooo = sum(&done, "out_of_order");
    println!(
        "loadgen storm clients={} procs={} connected={ok} missed_msgs={accepted} jitter_ms={} all_back_s={back_s:.3} recovered_s={rec_s:.3} {} reconnect_failures={} lost={lost} dup={dup} out_of_order={ooo} rss_per_conn_bytes={:.0} initial_sessions_per_s={:.0}",
        o.count,
        o.procs,
        o.jitter.as_millis(),
        reconnect.summary("reconnect_"),
        rfail.total(),
        per_conn.unwrap_or(0.0),
        ok as f64 / secs,
    );
    let _ = rhs;
    kids.wait().await;
    Ok(())
}
