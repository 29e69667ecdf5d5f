//! `chat`: open-loop messaging. `--pairs` groups of `--group-size` members; member 0 of each
//! group sends, the others are connected receivers. A scheduler hands out `--rate` messages
//! per second round-robin to the groups' senders; each sender sends one at a time (so the
//! checker's ordering rule holds) and retries 5xx with the same `client_msg_id`. The content
//! carries the scheduled and the actual send start time, so receivers measure delivery
//! latency from send start (and, coordinated-omission corrected, from the schedule).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard::checker::Checker;
use switchboard::client::{Api, RawEvent, ServerFrame, ws_path};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::common::{Count, CpuWatch, Failures, Group, Target, UserId, now_us, scrape};
use super::dial;
use super::hist::{Histogram, ms};
use super::progress::{Progress, Snapshot};

pub struct ChatOpts {
    pub target: Target,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub ack: bool,
    pub max_backlog: usize,
    pub linger: Duration,
    pub content_bytes: usize,
    /// Between progress lines on stderr (zero: none).
    pub progress: Duration,
}

#[derive(Default)]
struct Stats {
    scheduled: Count,
    skipped: Count,
    accepted: Count,
    accepted_measured: Count,
    rejected: Count,
    errors: Failures,
    deliveries: Count,
    deliveries_measured: Count,
    reconnects: Failures,
    send: Histogram,
    delivery: Histogram,
    from_schedule: Histogram,
    last_accept_us: AtomicI64,
    last_delivery_us: AtomicI64,
    online: AtomicUsize,
    /// Sends scheduled before this (unix us) are warm-up and not measured.
    measure_from: AtomicI64,
    /// This run's first scheduled send (unix us).
    run_start: AtomicI64,
}

pub async fn run(opts: ChatOpts, groups: Vec<Group>) -> Result<(), String> {
    let o = Arc::new(opts);
    let stats = Arc::new(Stats::default());
    stats.measure_from.store(i64::MAX, Ordering::Relaxed);
    stats.run_start.store(now_us(), Ordering::Relaxed);
    let checker = Checker::new();
    let stop = CancellationToken::new();
    // Receivers first; sends start once every one of them said hello.
    let mut receivers = Vec::new();
    let mut index = 0usize;
    for g in &groups {
        for &user in &g.members[1..] {
            let addr = o.target.ws_addr(index);
            index += 1;
            receivers.push(tokio::spawn(receiver(o.clone(), stats.clone(), checker.clone(), user, addr, stop.clone())));
        }
    }
    let want = receivers.len();
    let t = Instant::now();
    while stats.online.load(Ordering::Relaxed) < want {
        if t.elapsed() > Duration::from_secs(60) {
            stop.cancel();
            return Err(format!("only {}/{want} receivers connected", stats.online.load(Ordering::Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "loadgen: {want} receivers online in {:.2}s; sending {} msgs/s for {:?}",
        t.elapsed().as_secs_f64(),
        o.rate,
        o.duration
    );

    let run_id = format!("{:x}", now_us());
    let start_us = now_us() + 20_000;
    let measure_from = start_us + o.warmup.as_micros() as i64;
    stats.measure_from.store(measure_from, Ordering::Relaxed);
    let mut queues = Vec::new();
    let mut senders = Vec::new();
    let backlog: Arc<Vec<AtomicUsize>> = Arc::new(groups.iter().map(|_| AtomicUsize::new(0)).collect());
    for (gi, g) in groups.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<(u64, i64)>();
        queues.push(tx);
        let api = o.target.api(gi);
        senders.push(tokio::spawn(sender(
            o.clone(),
            stats.clone(),
            checker.clone(),
            api,
            g.clone(),
            rx,
            backlog.clone(),
            gi,
            format!("{run_id}-{gi}"),
            measure_from,
        )));
    }
    let rss0 = o.target.node_rss().await;
    let mut watched = o.target.watched();
    watched.push(std::process::id());
    let cpu = CpuWatch::start(&watched);
    let delivered0 = server_delivered(&o.target.admin).await;

    let progress = Progress::start("chat".into(), o.progress, {
        let s = stats.clone();
        move || Snapshot {
            sent: s.accepted.get(),
            received: s.deliveries.get(),
            errors: s.errors.total(),
            extra: format!("skipped={} receiver_reconnects={}", s.skipped.get(), s.reconnects.total()),
        }
    });

    // The open-loop schedule: message k is due at start + k / rate.
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    let step_us = 1e6 / o.rate;
    tokio::time::sleep(Duration::from_micros((start_us - now_us()).max(0) as u64)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut k = 0u64;
    while k < total {
        tick.tick().await;
        let now = now_us();
        while k < total {
            let due = start_us + (k as f64 * step_us) as i64;
            if due > now {
                break;
            }
            let g = (k as usize) % groups.len();
            stats.scheduled.add(1);
            if backlog[g].load(Ordering::Relaxed) >= o.max_backlog {
                stats.skipped.add(1);
            } else {
                backlog[g].fetch_add(1, Ordering::Relaxed);
                let _ = queues[g].send((k, due));
            }
            k += 1;
        }
    }
    let schedule_end = now_us();
    drop(queues);
    let drained = tokio::time::timeout(Duration::from_secs(120), async {
        for s in senders {
            let _ = s.await;
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("loadgen: senders still busy 120 s after the schedule ended");
    }
    let sends_done = now_us();
    let cpu_line = cpu.report(Some(stats.accepted.get()));
    // Wait for what was accepted to arrive.
    let deadline = Instant::now() + o.linger;
    let mut report = checker.report();
    while report.lost > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = checker.report();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    report = checker.report();
    drop(progress);
    let rss1 = o.target.node_rss().await;
    let delivered1 = server_delivered(&o.target.admin).await;
    stop.cancel();
    for r in receivers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }

    let s = &stats;
    let accept_window = (s.last_accept_us.load(Ordering::Relaxed).max(measure_from + 1) - measure_from) as f64 / 1e6;
    let delivery_window =
        (s.last_delivery_us.load(Ordering::Relaxed).max(measure_from + 1) - measure_from) as f64 / 1e6;
    let accepted_per_s = s.accepted_measured.get() as f64 / accept_window;
    let deliveries_per_s = s.deliveries_measured.get() as f64 / delivery_window;
    let group_size = groups.first().map_or(0, |g| g.members.len());
    println!(
        "chat: {} groups of {group_size}, target {} msgs/s for {:?} (warm-up {:?})",
        groups.len(),
        o.rate,
        o.duration,
        o.warmup
    );
    println!(
        "  scheduled {}  skipped (sender backlog full) {}  accepted {}  retried {}  errors {}",
        s.scheduled.get(),
        s.skipped.get(),
        s.accepted.get(),
        s.rejected.get(),
        s.errors.encode()
    );
    println!(
        "  accepted/s {accepted_per_s:.0}  deliveries/s {deliveries_per_s:.0}  schedule ended +{:.1}s, last send done +{:.1}s",
        (schedule_end - start_us) as f64 / 1e6,
        (sends_done - start_us) as f64 / 1e6
    );
    print!("{}", s.send.table("send_message round trip"));
    print!("{}", s.delivery.table("delivery latency, send start -> frame received"));
    print!(
        "{}",
        s.from_schedule.table("delivery latency from the scheduled send time (coordinated-omission corrected)")
    );
    println!("  checker: {report}");
    println!("  receiver reconnects: {}", s.reconnects.encode());
    if let (Some(a), Some(b)) = (rss0, rss1) {
        println!("  node RSS {:.1} MiB -> {:.1} MiB", a as f64 / 1048576.0, b as f64 / 1048576.0);
    }
    let server_deliveries = match (delivered0, delivered1) {
        (Some(a), Some(b)) => format!(" server_delivered={:.0}", b - a),
        _ => String::new(),
    };
    println!(
        "loadgen chat groups={} group_size={group_size} rate={} duration_s={} sent={} accepted={} skipped={} retried={} errors={} accepted_per_s={accepted_per_s:.0} deliveries={} deliveries_per_s={deliveries_per_s:.0} {} send_p50_ms={:.2} send_p99_ms={:.2} sched_p99_ms={:.2} lost={} dup={} out_of_order={} reconnects={}{server_deliveries} {cpu_line}",
        groups.len(),
        o.rate,
        o.duration.as_secs(),
        s.scheduled.get(),
        s.accepted.get(),
        s.skipped.get(),
        s.rejected.get(),
        s.errors.total(),
        s.deliveries.get(),
        s.delivery.summary(""),
        ms(s.send.quantile(0.5)),
        ms(s.send.quantile(0.99)),
        ms(s.from_schedule.quantile(0.99)),
        report.lost,
        report.duplicated,
        report.out_of_order,
        s.reconnects.total(),
    );
    Ok(())
}

async fn server_delivered(admin: &[SocketAddr]) -> Option<f64> {
    let mut total = 0.0;
    for a in admin {
        total +=
            scrape(*a, &["switchboard_messages_delivered_total"]).await.get("switchboard_messages_delivered_total")?;
    }
    (!admin.is_empty()).then_some(total)
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    o: Arc<ChatOpts>,
    s: Arc<Stats>,
    checker: Checker,
    api: Api,
    group: Group,
    mut queue: mpsc::UnboundedReceiver<(u64, i64)>,
    backlog: Arc<Vec<AtomicUsize>>,
    gi: usize,
    prefix: String,
    measure_from: i64,
) {
    let recipients: Vec<UserId> = group.members[1..].to_vec();
    let from = group.members[0];
    let pad = "x".repeat(o.content_bytes.saturating_sub(40));
    while let Some((k, sched)) = queue.recv().await {
        backlog[gi].fetch_sub(1, Ordering::Relaxed);
        let start = now_us();
        let content = format!("lg {sched} {start} {k} {pad}");
        let client_id = format!("{prefix}-{k}");
        let measured = sched >= measure_from;
        for attempt in 0..20u32 {
            match api.send(from, group.id, &content, Some(&client_id)).await {
                Ok((status, body)) if status == 200 => {
                    let now = now_us();
                    if let Some(id) = body["message_id"].as_i64() {
                        checker.accepted(id, &recipients);
                    }
                    s.accepted.add(1);
                    if measured {
                        s.accepted_measured.add(1);
                        s.send.record((now - start).max(0) as u64);
                        s.last_accept_us.fetch_max(now, Ordering::Relaxed);
                    }
                    break;
                }
                Ok((status, _)) if status.is_server_error() => {
                    s.rejected.add(1);
                    s.errors.add(&format!("http_{}", status.as_u16()), 1);
                }
                Ok((status, body)) => {
                    s.errors.add(&format!("http_{}", status.as_u16()), 1);
                    if attempt == 0 {
                        eprintln!("loadgen: send refused with {status}: {body}");
                    }
                    break;
                }
                Err(e) => {
                    s.rejected.add(1);
                    s.errors.add("io", 1);
                    if attempt == 0 {
                        eprintln!("loadgen: send failed: {e}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
        }
    }
}

async fn receiver(
    o: Arc<ChatOpts>,
    s: Arc<Stats>,
    checker: Checker,
    user: UserId,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    let path = ws_path(user, o.ack);
    let mut attempt = 0u32;
    let mut first = true;
    while !stop.is_cancelled() {
        let opened = tokio::select! {
            r = dial::open(addr, None, &path, Duration::from_secs(30)) => r,
            () = stop.cancelled() => return,
        };
        let (mut reader, writer) = match opened {
            Ok(x) => x,
            Err(e) => {
                s.reconnects.add(e.kind, 1);
                attempt += 1;
                tokio::time::sleep(switchboard::client::backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(3),
                ))
                .await;
                continue;
            }
        };
        attempt = 0;
        let acks = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
        let acks_w = acks.clone();
        let ack = o.ack;
        // Heartbeats and acks go out from a side task; the frames are handled inline below.
        let side = tokio::spawn(async move {
            let mut hb = tokio::time::interval(Duration::from_secs(5));
            let mut flush = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = hb.tick() => { if !dial::sent(writer.send_text("heartbeat")).await { return; } }
                    _ = flush.tick(), if ack => {
                        let ids = std::mem::take(&mut *acks_w.lock().unwrap_or_else(|p| p.into_inner()));
                        if !ids.is_empty() && !dial::sent(writer.ack(&ids)).await { return; }
                    }
                }
            }
        });
        let mut conn = checker.connection(user);
        let closed = loop {
            let ev = tokio::select! {
                ev = reader.next() => ev,
                // Dropping the read mid-frame is fine here: the connection is abandoned.
                () = stop.cancelled() => break None,
            };
            match ev {
                RawEvent::Text(t) => {
                    let Some(f) = ServerFrame::parse(&t) else { continue };
                    match f.kind {
                        "hello" if first => {
                            first = false;
                            s.online.fetch_add(1, Ordering::Relaxed);
                        }
                        "message" => {
                            let now = now_us();
                            let (Some(id), Some(g), Some(from)) = (f.message_id, f.group_id, f.sender_id) else {
                                continue;
                            };
                            conn.received(id, g, from);
                            if o.ack {
                                acks.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                            }
                            let mut parts = f.content.as_deref().unwrap_or("").split(' ');
                            let (Some("lg"), Some(Ok(sched)), Some(Ok(start))) = (
                                parts.next(),
                                parts.next().map(str::parse::<i64>),
                                parts.next().map(str::parse::<i64>),
                            ) else {
                                continue;
                            };
                            // Replays of earlier runs (same users, inbox kept) are not this run's.
                            if sched < s.run_start.load(Ordering::Relaxed) {
                                continue;
                            }
                            s.deliveries.add(1);
                            if sched >= s.measure_from.load(Ordering::Relaxed) {
                                s.delivery.record((now - start).max(0) as u64);
                                s.from_schedule.record((now - sched).max(0) as u64);
                                s.deliveries_measured.add(1);
                                s.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
                RawEvent::Closed(code) => break Some(code),
            }
        };
        side.abort();
        match closed {
            None => return,
            Some(code) => {
                s.reconnects.add(&dial::close_label(code), 1);
                tokio::time::sleep(switchboard::client::backoff(0, Duration::from_millis(100), Duration::from_secs(3)))
                    .await;
            }
        }
    }
}
