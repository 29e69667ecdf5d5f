//! A steady chat workload for fault and fleet tests: pairs of users spread over nodes, each
//! user a reconnecting, acking WebSocket client, each side of a pair a sender that retries
//! refused sends with the same `client_msg_id`. Everything is recorded in a
//! [`Checker`], whose report is the verdict.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::checker::{Checker, Report};
use switchboard::client::{Api, ClientError, WsEvent, backoff, connect_ws, reconnects};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Workload {
    pub checker: Checker,
    /// Every user of the workload, each with one reconnecting session.
    pub users: Vec<i64>,
    /// Sockets dropped by the client on purpose (chaos) or closed by a server.
    pub reconnects: Arc<AtomicU64>,
    /// Connections established (first ones included).
    pub connects: Arc<AtomicU64>,
    /// Server closes with 1001 Going Away (drains).
    pub going_away: Arc<AtomicU64>,
    chaos: Arc<AtomicBool>,
    stop_senders: CancellationToken,
    stop_receivers: CancellationToken,
    senders: Vec<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Registers `2 * pairs` users, opens their conversations, connects every user to its
    /// home node (`nodes[i % n]`) and starts senders that each send one message per
    /// `interval`.
    pub async fn start(nodes: &[SocketAddr], pairs: usize, interval: Duration) -> Workload {
        let apis: Vec<Api> = nodes.iter().map(|a| Api::new(*a)).collect();
        let mut users = Vec::new();
        for _ in 0..pairs * 2 {
            users.push(apis[0].register(&super::unique("w")).await.expect("register"));
        }
        let mut groups = Vec::new();
        for p in 0..pairs {
            groups.push(apis[0].create_group(users[2 * p], &[users[2 * p + 1]]).await.expect("group"));
        }
        let checker = Checker::new();
        let chaos = Arc::new(AtomicBool::new(false));
        let stop_receivers = CancellationToken::new();
        let reconnects = Arc::new(AtomicU64::new(0));
        let connects = Arc::new(AtomicU64::new(0));
        let going_away = Arc::new(AtomicU64::new(0));
        let online = Arc::new(AtomicUsize::new(0));
        let receivers = users
            .iter()
            .enumerate()
            .map(|(i, &user)| {
                let r = Receiver {
                    user,
                    nodes: nodes.to_vec(),
                    home: i % nodes.len(),
                    checker: checker.clone(),
                    chaos: chaos.clone(),
                    stop: stop_receivers.clone(),
                    reconnects: reconnects.clone(),
                    connects: connects.clone(),
                    going_away: going_away.clone(),
                    online: online.clone(),
                };
                tokio::spawn(r.run())
            })
            .collect();
        for _ in 0..300 {
            if online.load(Ordering::SeqCst) >= users.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(online.load(Ordering::SeqCst) >= users.len(), "not every client connected");
        let stop_senders = CancellationToken::new();
        let mut senders = Vec::new();
        for p in 0..pairs {
            for (from, to) in [(users[2 * p], users[2 * p + 1]), (users[2 * p + 1], users[2 * p])] {
                let s = Sender {
                    from,
                    to,
                    group: groups[p],
                    apis: apis.clone(),
                    home: (2 * p) % apis.len(),
                    interval,
                    checker: checker.clone(),
                    stop: stop_senders.clone(),
                };
                senders.push(tokio::spawn(s.run()));
            }
        }
        Workload {
            checker,
            users,
            reconnects,
            connects,
            going_away,
            chaos,
            stop_senders,
            stop_receivers,
            senders,
            receivers,
        }
    }

    /// Clients drop their sockets at random while on.
    pub fn chaos(&self, on: bool) {
        self.chaos.store(on, Ordering::SeqCst);
    }

    /// Stops sending, waits up to `within` for every accepted message to arrive, stops the
    /// clients and returns the checker's report.
    pub async fn finish(self, within: Duration) -> Report {
        self.chaos(false);
        self.stop_senders.cancel();
        for s in self.senders {
            let _ = s.await;
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.checker.report().lost > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A little longer, so late duplicates would be seen.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop_receivers.cancel();
        for r in self.receivers {
            let _ = r.await;
        }
        self.checker.report()
    }
}

struct Sender {
    from: i64,
    to: i64,
    group: i64,
    apis: Vec<Api>,
    home: usize,
    interval: Duration,
    checker: Checker,
    stop: CancellationToken,
}

impl Sender {
    async fn run(self) {
        let mut seq = 0u64;
        let mut node = self.home;
        while !self.stop.is_cancelled() {
            seq += 1;
            let client_id = format!("{}-{seq}", self.from);
            let content = format!("m{seq} from {}", self.from);
            // Retry the same client_msg_id until accepted (or the run is over).
            loop {
                let res = self.apis[node].send(self.from, self.group, &content, Some(&client_id)).await;
                match res {
                    Ok((status, body)) if status == 200 => {
                        let id = body["message_id"].as_i64().expect("message_id");
                        self.checker.accepted(id, &[self.to]);
                        break;
                    }
                    Ok((status, body)) if status.is_server_error() => {
                        let _ = body;
                        self.checker.rejected();
                    }
                    Ok((status, body)) => panic!("send refused with {status}: {body}"),
                    Err(ClientError::Status { status, body }) => panic!("send refused with {status}: {body}"),
                    Err(_) => {
                        self.checker.rejected();
                        node = (node + 1) % self.apis.len();
                    }
                }
                if self.stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }
}

struct Receiver {
    user: i64,
    nodes: Vec<SocketAddr>,
    home: usize,
    checker: Checker,
    chaos: Arc<AtomicBool>,
    stop: CancellationToken,
    reconnects: Arc<AtomicU64>,
    connects: Arc<AtomicU64>,
    going_away: Arc<AtomicU64>,
    online: Arc<AtomicUsize>,
}

impl Receiver {
    async fn run(self) {
        let mut attempt = 0u32;
        let mut first = true;
        while !self.stop.is_cancelled() {
            let node = self.nodes[(self.home + attempt as usize) % self.nodes.len()];
            let mut ws = match connect_ws(node, self.user, true).await {
                Ok(ws) => ws,
                Err(_) => {
                    attempt += 1;
                    self.pause(attempt).await;
                    continue;
                }
            };
            let mut conn = self.checker.connection(self.user);
            let mut acks = Vec::new();
            let mut heartbeat = tokio::time::interval(Duration::from_secs(4));
            let mut flush = tokio::time::interval(Duration::from_millis(100));
            let mut chaos = tokio::time::interval(Duration::from_millis(500));
            let closed = loop {
                tokio::select! {
                    () = self.stop.cancelled() => break false,
                    ev = ws.events.recv() => match ev {
                        Some(WsEvent::Json(v)) if v["type"] == "hello" => {
                            attempt = 0;
                            self.connects.fetch_add(1, Ordering::SeqCst);
                            if first {
                                first = false;
                                self.online.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Some(WsEvent::Json(v)) => {
                            conn.frame(&v);
                            if let Some(id) = v["message_id"].as_i64() {
                                acks.push(id);
                            }
                        }
                        Some(WsEvent::Text(_)) => {}
                        Some(WsEvent::Closed(code)) => {
                            if code == Some(1001) {
                                self.going_away.fetch_add(1, Ordering::SeqCst);
                            }
                            // 1000 and 1008 mean "stop": this client then misses what follows,
                            // and the checker reports it.
                            if !reconnects(code) {
                                return;
                            }
                            break true;
                        }
                        None => break true,
                    },
                    _ = heartbeat.tick() => { let _ = ws.send_text("heartbeat").await; }
                    _ = flush.tick() => if !acks.is_empty() {
                        let _ = ws.ack(&acks).await;
                        acks.clear();
                    },
                    _ = chaos.tick() => if self.chaos.load(Ordering::SeqCst) && rand_bool(0.15) {
                        break true;
                    },
                }
            };
            if !closed {
                ws.close().await;
                return;
            }
            self.reconnects.fetch_add(1, Ordering::SeqCst);
            attempt += 1;
            self.pause(attempt).await;
        }
    }

    async fn pause(&self, attempt: u32) {
        let wait = backoff(attempt.saturating_sub(1), Duration::from_millis(50), Duration::from_millis(800));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

fn rand_bool(p: f64) -> bool {
    use rand::RngExt;
    rand::rng().random_bool(p)
}
