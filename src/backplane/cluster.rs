//! Redis Cluster backplane: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis 7) for
//! `--routing sharded`, and the node channels of `--routing node` on a cluster (docs/routing.md,
//! "`sharded` mode: sharded pub/sub on a Redis Cluster").
//!
//! A sharded channel lives on the master that owns its slot, so publishes and subscriptions
//! spread over the cluster instead of every message reaching every node. One `SSUBSCRIBE`
//! may only name channels of one slot, so channel names carry a hash tag:
//! `{prefix}{tag}group:42`. There are P partition tags (`--shard-partitions`, 128 by
//! default); a channel's partition is a hash of its logical name. The tags are chosen at
//! start so that partition `i` falls in the `i`-th of P equal slot ranges: a cluster whose
//! masters own equal contiguous ranges (what `redis-cli --cluster create` makes) holds P /
//! masters partitions on each. Subscribing and resubscribing then costs one command per
//! partition, however many channels it holds.
//!
//! The `redis` crate's cluster connection routes publishes and subscriptions and follows
//! MOVED and failovers. Its own resubscription after a reconnect or a topology change is
//! not used: it sends one `SSUBSCRIBE` per node with every channel that node owns, which
//! Redis refuses with CROSSSLOT as soon as they span several slots (redis 1.8.1;
//! `tests/redis_cluster.rs` checks it). Instead a watcher runs every second, and soon after
//! the crate reports a dropped connection or Redis unsubscribes us from a migrated slot:
//! it reads the slot owners (`CLUSTER SLOTS`) and each master's count of our shard
//! subscriptions (`CLIENT INFO`, `ssub`), resubscribes the partitions that moved or were
//! lost, one command per partition, and then emits [`Event::Resynced`] so sessions catch up
//! on what was published meanwhile.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::IO_TIMEOUT;
use super::redis::ping;
use super::wanted::{Command, Commands};
use super::{Backplane, BackplaneError, Channel, Event};
use crate::metrics::Metrics;

/// How often the watcher compares the topology and the subscriptions with what is wanted.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How soon the watcher looks after a sign of trouble (the crate needs a moment to notice
/// the new topology itself).
const CHECK_SOON: Duration = Duration::from_millis(200);
/// How long a master may take to accept a TCP connection before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// The slot of a key, as Redis Cluster computes it (CRC16/XMODEM of the key, or of its hash
/// tag, modulo 16384).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|b| *b == b'}').filter(|close| *close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// Channel names on the cluster: prefix, partition tag, logical channel.
#[derive(Clone)]
pub struct Partitions {
    prefix: Arc<str>,
    /// Each partition's hash tag, and its slot.
    tags: Arc<[(String, u16)]>,
}

impl Partitions {
    /// `count` tags, the `i`-th hashing into the `i`-th of `count` equal slot ranges.
    pub fn new(prefix: &str, count: u16) -> Self {
        let count = count.clamp(1, SLOTS);
        let tags = (0..count)
            .map(|i| {
                let range = (u32::from(i) * u32::from(SLOTS) / u32::from(count)) as u16
                    ..(u32::from(i + 1) * u32::from(SLOTS) / u32::from(count)) as u16;
                (0u32..)
                    .map(|n| if n == 0 { format!("{i}") } else { format!("{i}.{n}") })
                    .map(|tag| {
                        let s = slot(tag.as_bytes());
                        (tag, s)
                    })
                    .find(|(_, s)| range.contains(s))
                    .expect("every slot range has a tag")
            })
            .collect();
        Self { prefix: prefix.into(), tags }
    }

    pub fn count(&self) -> usize {
        self.tags.len()
    }

    /// The partition a logical channel belongs to.
    pub fn of(&self, channel: Channel) -> usize {
        usize::from(slot(channel.to_string().as_bytes())) % self.tags.len()
    }

    /// The slot every channel of partition `p` hashes to.
    pub fn slot(&self, p: usize) -> u16 {
        self.tags[p].1
    }

    pub fn name(&self, channel: Channel) -> String {
        self.tagged(self.of(channel), channel)
    }

    /// A name in partition `p`: prefix, the partition's hash tag, then `name`.
    pub fn tagged(&self, p: usize, name: impl std::fmt::Display) -> String {
        format!("{}{{{}}}{name}", self.prefix, self.tags[p].0)
    }

    pub fn parse(&self, name: &[u8]) -> Option<Channel> {
        let name = std::str::from_utf8(name).ok()?.strip_prefix(&*self.prefix)?;
        let (_, channel) = name.strip_prefix('{')?.split_once('}')?;
        Channel::parse(channel)
    }
}

pub struct RedisClusterBackplane {
    partitions: Partitions,
    metrics: Arc<Metrics>,
    /// The cluster connection once the first connect succeeded.
    conn: watch::Receiver<Option<ClusterConnection>>,
    commands: Commands,
    stop: CancellationToken,
}

impl RedisClusterBackplane {
    /// Starts the subscriber task on the cluster `cluster` reaches (its node URLs and TLS
    /// trust; the connection settings are added here).
    /// Does not wait for the cluster: a node can start while it is down and catches up
    /// (`Resynced`) when it comes.
    pub fn connect(
        cluster: redis::cluster::ClusterClientBuilder,
        partitions: Partitions,
        events: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackplaneError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = cluster
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            .retries(2)
            .build()?;
        let (conn_tx, conn) = watch::channel(None);
        let (commands, rx) = Commands::channel();
        let stop = CancellationToken::new();
        let subscriber = Subscriber {
            partitions: partitions.clone(),
            events,
            metrics: metrics.clone(),
            wanted: vec![HashSet::new(); partitions.count()],
            owners: vec![None; partitions.count()],
            broken: BTreeSet::new(),
            check_soon: false,
        };
        tokio::spawn(subscriber.run(client, conn_tx, rx, push_rx, stop.clone()));
        Ok(Self { partitions, metrics, conn, commands, stop })
    }

    fn connection(&self) -> Result<ClusterConnection, BackplaneError> {
        self.conn.borrow().clone().ok_or(BackplaneError::NotConnected)
    }
}

impl Drop for RedisClusterBackplane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Backplane for RedisClusterBackplane {
    /// One pipeline per partition (a pipeline must stay within one slot), all in flight at
    /// once; each channel's payloads keep their order inside its partition's pipeline.
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        let conn = self.connection()?;
        let mut pipes: HashMap<usize, redis::Pipeline> = HashMap::new();
        for (channel, payload) in messages {
            let p = self.partitions.of(*channel);
            let pipe = pipes.entry(p).or_insert_with(redis::pipe);
            pipe.cmd("SPUBLISH").arg(self.partitions.tagged(p, channel)).arg(payload.as_ref()).ignore();
        }
        let sent = pipes.into_values().map(|pipe| {
            let mut conn = conn.clone();
            async move { tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn)).await }
        });
        for result in join_all(sent).await {
            result.map_err(|_| BackplaneError::Timeout)??;
        }
        self.metrics.backplane_published.inc_by(messages.len() as u64);
        Ok(())
    }

    fn subscribe(&self, channel: Channel) {
        self.commands.subscribe(channel);
    }

    fn unsubscribe(&self, channel: Channel) {
        self.commands.unsubscribe(channel);
    }

    async fn barrier(&self) {
        self.commands.barrier().await;
    }

    async fn ping(&self) -> Result<(), BackplaneError> {
        ping(&mut self.connection()?).await
    }
}

struct Subscriber {
    partitions: Partitions,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    /// Every channel this node wants, by partition, whether or not Redis has it now.
    wanted: Vec<HashSet<Channel>>,
    /// The master each partition was last subscribed on (`host:port`).
    owners: Vec<Option<String>>,
    /// Partitions whose subscription may be incomplete: the watcher resubscribes them.
    broken: BTreeSet<usize>,
    /// A push hinted at trouble: check soon rather than at the next tick.
    check_soon: bool,
}

impl Subscriber {
    async fn run(
        mut self,
        client: ClusterClient,
        conn_tx: watch::Sender<Option<ClusterConnection>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        stop: CancellationToken,
    ) {
        let mut conn = loop {
            tokio::select! {
                () = stop.cancelled() => return,
                res = tokio::time::timeout(IO_TIMEOUT, client.get_async_connection()) => match res {
                    Ok(Ok(conn)) => break conn,
                    failed => {
                        if let Ok(Err(e)) = failed {
                            tracing::warn!(error = %e, "redis cluster connect failed");
                        }
                        self.metrics.backend_up.with_label_values(&["backplane"]).set(0);
                    }
                },
            }
            // Remember wishes meanwhile and release barriers: the first check subscribes
            // everything and emits `Resynced`.
            let pause = tokio::time::sleep(CHECK_EVERY + crate::backoff::random_up_to(CHECK_EVERY / 2));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    () = stop.cancelled() => return,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => self.apply_offline(cmd),
                        None => return,
                    },
                }
            }
        };
        conn_tx.send_replace(Some(conn.clone()));
        // Everything wanted so far is unsubscribed: the first check subscribes it.
        self.broken.extend(0..self.partitions.count());
        let mut first = true;
        let mut check = tokio::time::interval(CHECK_EVERY);
        let soon = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(soon);
        let mut soon_armed = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    if self.on_push(push).await.is_err() {
                        return;
                    }
                    if std::mem::take(&mut self.check_soon) && !soon_armed {
                        soon.as_mut().reset(tokio::time::Instant::now() + CHECK_SOON);
                        soon_armed = true;
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    self.apply_online(&mut conn, batch).await;
                }
                () = &mut soon, if soon_armed => {
                    soon_armed = false;
                    if self.check(&mut conn, &mut first).await.is_err() {
                        return;
                    }
                }
                _ = check.tick() => {
                    if self.check(&mut conn, &mut first).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// A message goes to the hub; a dropped connection or a slot moved away marks
    /// partitions for the watcher.
    async fn on_push(&mut self, push: PushInfo) -> Result<(), ()> {
        match push.kind {
            PushKind::SMessage => {
                let Some(msg) = redis::Msg::from_push_info(push) else { return Ok(()) };
                let Some(channel) = self.partitions.parse(msg.get_channel_name().as_bytes()) else { return Ok(()) };
                self.metrics.backplane_received.inc();
                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                self.events.send(Event::Payload { channel, payload }).await.map_err(drop)
            }
            // Which node dropped is not said: the check finds it (its count is off, or it
            // does not answer).
            PushKind::Disconnection => {
                self.check_soon = true;
                Ok(())
            }
            // Redis unsubscribes shard channels whose slot migrated to another master.
            PushKind::SUnsubscribe => {
                if let Some(channel) = push.data.first().and_then(bytes_of).and_then(|n| self.partitions.parse(n)) {
                    let p = self.partitions.of(channel);
                    if self.wanted[p].contains(&channel) {
                        self.broken.insert(p);
                        self.check_soon = true;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn apply_offline(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(c) => {
                let p = self.partitions.of(c);
                self.wanted[p].insert(c);
            }
            Command::Unsubscribe(c) => {
                let p = self.partitions.of(c);
                self.wanted[p].remove(&c);
            }
            Command::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Applies a batch in order: per run of commands between barriers, one SUNSUBSCRIBE and
    /// one SSUBSCRIBE per partition, all in flight at once. A partition whose command fails
    /// goes to the watcher, which resubscribes it and then emits `Resynced`, so a barrier
    /// may be released early only when a `Resynced` will follow.
    async fn apply_online(&mut self, conn: &mut ClusterConnection, batch: Vec<Command>) {
        let mut subs: HashMap<usize, Vec<Channel>> = HashMap::new();
        let mut unsubs: HashMap<usize, Vec<Channel>> = HashMap::new();
        for cmd in batch {
            match cmd {
                Command::Subscribe(c) => {
                    let p = self.partitions.of(c);
                    unsubs.entry(p).or_default().retain(|x| *x != c);
                    if self.wanted[p].insert(c) {
                        subs.entry(p).or_default().push(c);
                    }
                }
                Command::Unsubscribe(c) => {
                    let p = self.partitions.of(c);
                    subs.entry(p).or_default().retain(|x| *x != c);
                    if self.wanted[p].remove(&c) {
                        unsubs.entry(p).or_default().push(c);
                    }
                }
                Command::Barrier(done) => {
                    self.flush(conn, std::mem::take(&mut subs), std::mem::take(&mut unsubs)).await;
                    let _ = done.send(());
                }
            }
        }
        self.flush(conn, subs, unsubs).await;
        self.export_count();
    }

    async fn flush(
        &mut self,
        conn: &ClusterConnection,
        subs: HashMap<usize, Vec<Channel>>,
        unsubs: HashMap<usize, Vec<Channel>>,
    ) {
        let sent = unsubs
            .into_iter()
            .map(|(p, cs)| (p, "SUNSUBSCRIBE", cs))
            .chain(subs.into_iter().map(|(p, cs)| (p, "SSUBSCRIBE", cs)))
            .filter(|(_, _, cs)| !cs.is_empty())
            .map(|(p, verb, cs)| {
                let names: Vec<String> = cs.iter().map(|c| self.partitions.tagged(p, c)).collect();
                let mut conn = conn.clone();
                async move { (p, send(&mut conn, verb, &names).await) }
            });
        for (p, result) in join_all(sent).await {
            if result.is_err() {
                self.broken.insert(p);
            }
        }
    }

    /// Compares the cluster with what is wanted and repairs the difference: partitions whose
    /// master changed, whose master holds another count of our subscriptions than it should,
    /// or that failed before. A partition whose master does not answer waits for the next
    /// check (after a failover the topology names its replica). `Resynced` follows once
    /// nothing is left to repair. Err only when the hub is gone.
    async fn check(&mut self, conn: &mut ClusterConnection, first: &mut bool) -> Result<(), ()> {
        let up = self.metrics.backend_up.with_label_values(&["backplane"]);
        let Ok(ranges) = topology(conn).await else {
            up.set(0);
            return Ok(());
        };
        let owners: Vec<Option<String>> = (0..self.partitions.count())
            .map(|p| {
                let s = self.partitions.slot(p);
                ranges.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&s)).map(|(_, _, addr)| addr.clone())
            })
            .collect();
        let mut redo = std::mem::take(&mut self.broken);
        redo.extend((0..owners.len()).filter(|p| owners[*p] != self.owners[*p]));
        let masters: BTreeSet<&String> = owners.iter().flatten().collect();
        let counts = join_all(masters.iter().map(|addr| {
            let mut conn = conn.clone();
            async move { (*addr, shard_subscriptions(&mut conn, addr).await) }
        }))
        .await;
        let mut unreachable = HashSet::new();
        for (addr, count) in counts {
            let mine = (0..owners.len()).filter(|p| owners[*p].as_ref() == Some(addr));
            let expected: usize = mine.clone().map(|p| self.wanted[p].len()).sum();
            match count {
                None => {
                    unreachable.insert(addr.clone());
                    redo.extend(mine);
                }
                Some(count) if count != expected => redo.extend(mine),
                Some(_) => {}
            }
        }
        redo.retain(|p| !self.wanted[*p].is_empty());
        // Partitions on a master that does not answer, or with no master, wait.
        let (now, later): (Vec<usize>, Vec<usize>) =
            redo.into_iter().partition(|p| owners[*p].as_ref().is_some_and(|o| !unreachable.contains(o)));
        self.broken.extend(later);
        self.owners = owners;
        let sent = now.iter().map(|p| {
            let names: Vec<String> = self.wanted[*p].iter().map(|c| self.partitions.tagged(*p, c)).collect();
            let mut conn = conn.clone();
            async move { (*p, send(&mut conn, "SSUBSCRIBE", &names).await) }
        });
        let mut restored = 0;
        for (p, result) in join_all(sent).await {
            match result {
                Ok(()) => restored += 1,
                Err(()) => {
                    self.broken.insert(p);
                }
            }
        }
        self.metrics.backplane_resubscribes.inc_by(restored);
        self.export_count();
        if !self.broken.is_empty() {
            up.set(0);
            return Ok(());
        }
        up.set(1);
        if *first {
            *first = false;
        } else if restored == 0 {
            return Ok(());
        } else {
            self.metrics.backplane_reconnects.inc();
            tracing::info!(partitions = restored, "redis cluster subscriptions restored");
        }
        self.events.send(Event::Resynced).await.map_err(drop)
    }

    fn export_count(&self) {
        self.metrics.backplane_subscriptions.set(self.wanted.iter().map(HashSet::len).sum::<usize>() as i64);
    }
}

/// One subscription command; an empty channel list sends nothing.
async fn send(conn: &mut ClusterConnection, verb: &str, names: &[String]) -> Result<(), ()> {
    if names.is_empty() {
        return Ok(());
    }
    let sent = match verb {
        "SSUBSCRIBE" => tokio::time::timeout(IO_TIMEOUT, conn.ssubscribe(names)).await,
        _ => tokio::time::timeout(IO_TIMEOUT, conn.sunsubscribe(names)).await,
    };
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, verb, "redis cluster subscription command failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}

/// The masters' slot ranges: `(first, last, "host:port")`.
async fn topology(conn: &mut ClusterConnection) -> redis::RedisResult<Vec<(u16, u16, String)>> {
    let reply: Value =
        tokio::time::timeout(IO_TIMEOUT, redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await.map_err(
            |_| redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "CLUSTER SLOTS timed out")),
        )??;
    let Value::Array(ranges) = reply else { return Ok(Vec::new()) };
    Ok(ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else { return None };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = std::str::from_utf8(bytes_of(master.first()?)?).ok()?;
            let Some(Value::Int(port)) = master.get(1) else { return None };
            Some((*lo as u16, *hi as u16, format!("{host}:{port}")))
        })
        .collect())
}

/// How many shard channels our connection to the master at `addr` holds (`CLIENT INFO`
/// runs on the very connection that carries the subscriptions); `None` when unknown.
///
/// A master that refuses a TCP connection is not asked: the crate answers a command for a
/// node it has no connection to by reconnecting to every node afresh, which would drop
/// every subscription of the healthy masters too.
async fn shard_subscriptions(conn: &mut ClusterConnection, addr: &str) -> Option<usize> {
    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    let (host, port) = addr.rsplit_once(':')?;
    let route = SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port: port.parse().ok()? };
    let info = tokio::time::timeout(
        IO_TIMEOUT,
        conn.route_command(
            redis::cmd("CLIENT").arg("INFO").clone(),
            redis::cluster_routing::RoutingInfo::SingleNode(route),
        ),
    )
    .await
    .ok()?
    .ok()?;
    let text = match &info {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::VerbatimString { text, .. } => text.as_str(),
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    text.split_ascii_whitespace().find_map(|kv| kv.strip_prefix("ssub="))?.parse().ok()
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "empty tag: the whole key");
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
    }

    #[test]
    fn partitions_spread_evenly_and_names_round_trip() {
        let parts = Partitions::new("sb:", 128);
        for p in 0..128 {
            let s = parts.slot(p);
            assert!((p as u16 * 128..(p as u16 + 1) * 128).contains(&s), "partition {p} in slot {s}");
        }
        // Three equal masters each own a third of the partitions (within one).
        for range in [0..5461u16, 5461..10923, 10923..16384] {
            let owned = (0..128).filter(|p| range.contains(&parts.slot(*p))).count();
            assert!((42..=44).contains(&owned), "{owned} partitions in {range:?}");
        }
        for c in [Channel::Group(42), Channel::User(7), Channel::Node(u64::MAX / 3), Channel::Broadcast] {
            let name = parts.name(c);
            assert!(name.starts_with("sb:{"));
            assert_eq!(slot(name.as_bytes()), parts.slot(parts.of(c)));
            assert_eq!(parts.parse(name.as_bytes()), Some(c));
        }
        assert_eq!(parts.parse(b"group:1"), None);
        // Consecutive groups land on many partitions.
        let used: HashSet<usize> = (1..1000).map(|g| parts.of(Channel::Group(g))).collect();
        assert!(used.len() > 120);
    }
}
