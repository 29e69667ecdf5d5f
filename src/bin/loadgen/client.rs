//! One simulated client for `connections` and `storm`: connects (from its source address),
//! waits for `hello`, then heartbeats, acks and records what it receives until told to drop,
//! reconnect or stop. Every client is two tasks: this one, and a reader that forwards frames
//! over a channel (so this one can wait on several things without cancelling a frame read).

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::backoff::random_up_to as jitter;
use switchboard::checker::Checker;
use switchboard::client::{RawEvent, ServerFrame, WsConn, ws_path};
use tokio::sync::{Semaphore, watch};

use super::common::{Count, Failures, Target, UserId, now_us};
use super::dial::{self, ConnectError};
use super::hist::Histogram;

/// What every client of a process is told to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    /// Connect (initial ramp) and stay connected.
    Run,
    /// Drop the socket at once, without a close frame, and wait.
    Drop,
    /// Reconnect now (after the storm jitter); the value is the storm's start (unix us).
    Go(i64),
    /// Close politely and end.
    Stop,
}

pub struct Shared {
    pub target: Target,
    pub ack: bool,
    pub heartbeat: bool,
    /// Set when the run ends: no more heartbeats, so every one sent can be acked before
    /// the counts are read.
    pub quiet: std::sync::atomic::AtomicBool,
    pub checker: Option<Checker>,
    pub ramp: Arc<Semaphore>,
    pub connect_timeout: Duration,
    /// Extra attempts of the first connection.
    pub retries: u32,
    /// Storm reconnect: base delay plus random(0..jitter).
    pub storm_base: Duration,
    pub storm_jitter: Duration,
    // statistics
    pub handshake: Histogram,
    pub connect: Histogram,
    pub reconnect: Histogram,
    pub failures: Failures,
    pub gave_up: Count,
    pub online: Count,
    pub first_connects: Count,
    pub heartbeats: Count,
    pub heartbeat_acks: Count,
    pub messages: Count,
    pub closes: Failures,
    pub back: Count,
    /// Unix us of the latest reconnection after a `Go`.
    pub last_back_us: std::sync::atomic::AtomicI64,
    /// Unix us of the latest first connection.
    pub last_first_us: std::sync::atomic::AtomicI64,
}

impl Shared {
    pub fn new(target: Target, ramp: usize) -> Self {
        Shared {
            target,
            ack: false,
            heartbeat: true,
            quiet: std::sync::atomic::AtomicBool::new(false),
            checker: None,
            ramp: Arc::new(Semaphore::new(ramp.max(1))),
            connect_timeout: Duration::from_secs(30),
            retries: 3,
            storm_base: Duration::ZERO,
            storm_jitter: Duration::from_millis(1000),
            handshake: Histogram::new(),
            connect: Histogram::new(),
            reconnect: Histogram::new(),
            failures: Failures::default(),
            gave_up: Count::default(),
            online: Count::default(),
            first_connects: Count::default(),
            heartbeats: Count::default(),
            heartbeat_acks: Count::default(),
            messages: Count::default(),
            closes: Failures::default(),
            back: Count::default(),
            last_back_us: std::sync::atomic::AtomicI64::new(0),
            last_first_us: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

/// A live connection: frames arrive unparsed from its reader task (dropping it drops the
/// socket at once).
type Live = WsConn<RawEvent>;

/// Connects and waits for hello; records handshake (101) and connect (hello) latency.
async fn connect(sh: &Shared, user: UserId, index: usize, storm: bool) -> Result<Live, ConnectError> {
    let path = ws_path(user, sh.ack);
    let t0 = Instant::now();
    let (reader, writer) =
        dial::open(sh.target.ws_addr(index), sh.target.source(index), &path, sh.connect_timeout).await?;
    let t1 = t0.elapsed();
    let mut live = Live::new(reader, writer);
    let left = sh.connect_timeout.saturating_sub(t0.elapsed());
    let hello = tokio::time::timeout(left, async {
        loop {
            match live.events.recv().await {
                Some(RawEvent::Text(t)) => {
                    if ServerFrame::parse(&t).is_some_and(|f| f.kind == "hello") {
                        return Ok(());
                    }
                }
                Some(RawEvent::Closed(code)) => return Err(code),
                None => return Err(None),
            }
        }
    })
    .await;
    match hello {
        Ok(Ok(())) => {}
        Ok(Err(code)) => {
            return Err(ConnectError::new("closed_before_hello", format!("{code:?}")));
        }
        Err(_) => return Err(ConnectError::new("no_hello", "timeout")),
    }
    let t2 = t0.elapsed();
    sh.handshake.record(t1.as_micros() as u64);
    if storm { &sh.reconnect } else { &sh.connect }.record(t2.as_micros() as u64);
    Ok(live)
}

/// One client until `Stop`.
pub async fn run(sh: Arc<Shared>, user: UserId, index: usize, mut phase: watch::Receiver<Phase>) {
    let mut storm_started: Option<i64> = None;
    let mut first = true;
    let mut attempt = 0u32;
    loop {
        // Wait for a phase in which this client should be connected.
        loop {
            let p = *phase.borrow_and_update();
            match p {
                Phase::Run => break,
                Phase::Go(t) => {
                    if storm_started != Some(t) {
                        storm_started = Some(t);
                        let wait = sh.storm_base + jitter(sh.storm_jitter);
                        tokio::time::sleep(wait).await;
                    }
                    break;
                }
                Phase::Stop => return,
                Phase::Drop => {
                    if phase.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        // Connect, bounded by the ramp semaphore for the first connection only.
        let result = if first {
            let _permit = sh.ramp.clone().acquire_owned().await;
            connect(&sh, user, index, false).await
        } else {
            connect(&sh, user, index, storm_started.is_some()).await
        };
        let mut live = match result {
            Ok(live) => live,
            Err(e) => {
                sh.failures.add(e.kind, 1);
                attempt += 1;
                if first && attempt > sh.retries {
                    sh.gave_up.add(1);
                    // Keep the run going without this client.
                    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
                    return;
                }
                let wait =
                    switchboard::client::backoff(attempt - 1, Duration::from_millis(100), Duration::from_secs(5));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = phase.wait_for(|p| *p == Phase::Stop) => return,
                }
                continue;
            }
        };
        attempt = 0;
        if first {
            sh.first_connects.add(1);
            sh.last_first_us.fetch_max(now_us(), std::sync::atomic::Ordering::Relaxed);
        }
        if storm_started.is_some() {
            sh.back.add(1);
            sh.last_back_us.fetch_max(now_us(), std::sync::atomic::Ordering::Relaxed);
        }
        first = false;
        sh.online.add(1);
        let outcome = session(&sh, user, &mut live, &mut phase).await;
        sh.online.sub(1);
        match outcome {
            Outcome::Stop => {
                dial::close(live.writer()).await;
                return;
            }
            Outcome::Drop => drop(live),
            Outcome::Closed(code) => {
                sh.closes.add(&dial::close_label(code), 1);
                drop(live);
                let wait = switchboard::client::backoff(0, Duration::from_millis(100), Duration::from_secs(5));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = phase.wait_for(|p| *p == Phase::Stop) => return,
                }
            }
        }
    }
}

enum Outcome {
    Stop,
    Drop,
    Closed(Option<u16>),
}

async fn session(sh: &Shared, user: UserId, live: &mut Live, phase: &mut watch::Receiver<Phase>) -> Outcome {
    let mut conn = sh.checker.as_ref().map(|c| c.connection(user));
    let mut acks: Vec<i64> = Vec::new();
    let period = Duration::from_secs(5);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + jitter(period), period);
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() { return Outcome::Stop; }
                let p = *phase.borrow_and_update();
                match p {
                    Phase::Stop => return Outcome::Stop,
                    Phase::Drop => return Outcome::Drop,
                    Phase::Run | Phase::Go(_) => {}
                }
            }
            ev = live.events.recv() => match ev {
                Some(RawEvent::Text(t)) => {
                    let Some(f) = ServerFrame::parse(&t) else { continue };
                    match f.kind {
                        "heartbeat_ack" => sh.heartbeat_acks.add(1),
                        "message" => {
                            sh.messages.add(1);
                            if let (Some(id), Some(g), Some(s)) = (f.message_id, f.group_id, f.sender_id) {
                                if let Some(c) = conn.as_mut() { c.received(id, g, s); }
                                if sh.ack { acks.push(id); }
                            }
                        }
                        _ => {}
                    }
                }
                Some(RawEvent::Closed(code)) => return Outcome::Closed(code),
                None => return Outcome::Closed(None),
            },
            _ = heartbeat.tick(), if sh.heartbeat => {
                if !sh.quiet.load(std::sync::atomic::Ordering::Relaxed) && dial::sent(live.writer().send_text("heartbeat")).await {
                    sh.heartbeats.add(1);
                }
            }
            _ = flush.tick(), if sh.ack => {
                if !acks.is_empty() {
                    dial::sent(live.writer().ack(&acks)).await;
                    acks.clear();
                }
            }
        }
    }
}
