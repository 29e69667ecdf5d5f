//! The presence store of `--routing node`, in Redis (docs/routing.md, "Presence"):
//!
//! - `presence:{user}` is a hash `{incarnation: 1}` with a field per node incarnation that
//!   holds a session of the user. A node writes and deletes only its own fields, on its
//!   hub's 0↔1 edges for the user (the hub counts the sessions), in order, pipelined.
//! - `alive:{incarnation}` holds the node's name with a TTL of `--presence-ttl`,
//!   refreshed at a third of it. A field whose incarnation has no liveness key is ignored,
//!   so a crashed node stops receiving traffic within the TTL (plus the cache below) with
//!   nobody sweeping. Its fields stay behind as garbage, ignored, until the user's hash is
//!   emptied.
//! - An incarnation is a random 63-bit number drawn at start: a node restarted under the
//!   same name never edits, erases or revives its previous life's fields.
//!
//! On a Redis Cluster the keys carry hash tags, `{tag}presence:{user}` and
//! `{alive}:{incarnation}`, so every batch of commands splits into a few single-slot pipelines
//! (a pipeline must stay within one slot), sent all at once; on a single Redis a batch is
//! one pipeline. See [`Keys`].
//!
//! Lookups are pipelined (one HKEYS per user not cached, then one EXISTS per incarnation not
//! cached) and cached for `--presence-cache`. The cache is never invalidated; instead
//! its staleness is bounded and covered: an entry is used at most that long after its
//! lookup was sent, so a publish made later than that after this node's entry was written
//! sees it. A session whose presence was just written may have missed publishes routed by
//! older entries, so once that time has passed its node asks it to catch up from the
//! store ([`Event::CatchUp`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::join_all;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Keyspace;
use crate::backoff::{Backoff, Jitter};
use crate::backplane::{BackplaneError, Channel, Event, IO_TIMEOUT, Partitions, slot};
use crate::metrics::Metrics;
use crate::model::UserId;

/// Pause between two tries at writing everything again: 100 ms doubling to 500 ms.
const REWRITE: Backoff =
    Backoff { base: Duration::from_millis(100), cap: Duration::from_millis(500), jitter: Jitter::None };
/// Cached users before the cache starts over.
const CACHE_USERS: usize = 200_000;
/// Fields written per batch when the whole presence is written again.
const CHUNK: usize = 1000;
/// On a Redis Cluster: the hash tags users' hashes are spread over. A lookup of many users
/// costs at most this many pipelines; the tags fall in equal slot ranges, so a cluster of
/// up to this many masters holds some on each. Every node of a fleet must use the same.
const USER_PARTITIONS: u16 = 16;
/// On a Redis Cluster: the hash tag of every liveness key, so a lookup's EXISTS batch is one
/// pipeline.
const ALIVE_TAG: &str = "alive";

#[derive(Clone, Copy, Debug)]
pub struct PresenceConfig {
    /// Lifetime of the liveness key without a refresh.
    pub ttl: Duration,
    /// How long a lookup's answer is reused; zero looks up on every publish.
    pub cache: Duration,
}

/// The presence keys' names, and the slot each one's commands are grouped by.
///
/// - Single Redis: `{prefix}presence:{user}` and `{prefix}alive:{incarnation}` (the names of
///   earlier versions, so a fleet can be upgraded node by node), all in one group: a batch
///   is one pipeline.
/// - Redis Cluster: `{prefix}{tag}presence:{user}`, where `tag` is one of
///   [`USER_PARTITIONS`] tags of [`Partitions`] (the user's partition, as its `user:{id}`
///   channel's), and `{prefix}{alive}:{incarnation}`. A batch is one pipeline per slot.
#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
    /// On a cluster: the tags users are spread over.
    users: Option<Partitions>,
}

/// A key and the slot it hashes to (0 for every key on a single Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    name: String,
    slot: u16,
}

impl Keys {
    fn new(prefix: &str, cluster: bool) -> Self {
        Self { prefix: prefix.into(), users: cluster.then(|| Partitions::new(prefix, USER_PARTITIONS)) }
    }

    fn user(&self, u: UserId) -> Key {
        match &self.users {
            None => Key { name: format!("{}presence:{u}", self.prefix), slot: 0 },
            Some(parts) => {
                let p = parts.of(Channel::User(u));
                Key { name: parts.tagged(p, format_args!("presence:{u}")), slot: parts.slot(p) }
            }
        }
    }

    /// On a cluster, a key per user partition that lives as long as the liveness key; none on
    /// a single Redis (a restart there drops the backplane's connection: `Resynced`).
    fn markers(&self, incarnation: u64) -> Vec<Key> {
        let Some(parts) = &self.users else { return Vec::new() };
        (0..parts.count())
            .map(|p| Key { name: parts.tagged(p, format_args!("presence-node:{incarnation}")), slot: parts.slot(p) })
            .collect()
    }

    fn alive(&self, incarnation: u64) -> Key {
        match &self.users {
            None => Key { name: format!("{}alive:{incarnation}", self.prefix), slot: 0 },
            Some(_) => {
                Key { name: format!("{}{{{ALIVE_TAG}}}:{incarnation}", self.prefix), slot: slot(ALIVE_TAG.as_bytes()) }
            }
        }
    }
}

/// Commands on presence keys, grouped by slot: one pipeline per slot.
#[derive(Default)]
struct Batch {
    /// Each slot's pipeline, and the position of each of its commands in the batch.
    pipes: BTreeMap<u16, (redis::Pipeline, Vec<usize>)>,
    len: usize,
}

impl Batch {
    /// Appends `verb key`; further arguments go on the returned pipeline (`.arg(..)`).
    fn add(&mut self, key: Key, verb: &str) -> &mut redis::Pipeline {
        let (pipe, positions) = self.pipes.entry(key.slot).or_default();
        positions.push(self.len);
        self.len += 1;
        pipe.cmd(verb).arg(key.name)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The presence store's connection: a single Redis, or a Redis Cluster connected on first use.
#[derive(Clone)]
enum Conn {
    Redis(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl Conn {
    /// Does not wait for Redis: a single Redis is reconnected to by the manager, a cluster is
    /// connected to by the first command that finds it up (the connection then follows
    /// failovers and slot moves by itself).
    fn new(keys: &Keyspace) -> Result<Self, BackplaneError> {
        Ok(match keys {
            Keyspace::Redis(client) => {
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(IO_TIMEOUT))
                    .set_response_timeout(Some(IO_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Conn::Redis(ConnectionManager::new_lazy_with_config(client.clone(), manager)?)
            }
            Keyspace::Cluster(client) => {
                Conn::Cluster(Arc::new(LazyCluster { client: client.clone(), conn: OnceCell::new() }))
            }
        })
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Sends every pipeline of `batch` at once; the replies in the order of the commands.
    /// Fails if any pipeline fails (the others may have been applied).
    async fn run(&self, batch: Batch) -> Result<Vec<Value>, BackplaneError> {
        match self.send(batch).await {
            (_, Some(e)) => Err(e),
            (replies, None) => Ok(replies.into_iter().map(|r| r.unwrap_or(Value::Nil)).collect()),
        }
    }

    /// Sends every pipeline of `batch` at once; each command's reply in the order of the
    /// commands (`None` where its pipeline failed), and the first failure.
    async fn send(&self, batch: Batch) -> (Vec<Option<Value>>, Option<BackplaneError>) {
        let mut replies = vec![None; batch.len];
        let mut failed = None;
        let sent = batch.pipes.into_values().map(|(pipe, positions)| async move {
            let reply = tokio::time::timeout(IO_TIMEOUT, self.query(&pipe)).await;
            (positions, reply.unwrap_or(Err(BackplaneError::Timeout)))
        });
        for (positions, reply) in join_all(sent).await {
            match reply {
                Ok(values) => {
                    for (at, value) in positions.into_iter().zip(values) {
                        replies[at] = Some(value);
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        (replies, failed)
    }

    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, BackplaneError> {
        Ok(match self {
            Conn::Redis(conn) => pipe.query_async(&mut conn.clone()).await?,
            Conn::Cluster(lazy) => {
                let config = ClusterConfig::new().set_connection_timeout(IO_TIMEOUT).set_response_timeout(IO_TIMEOUT);
                let conn = lazy.conn.get_or_try_init(|| lazy.client.get_async_connection_with_config(config)).await?;
                pipe.query_async(&mut conn.clone()).await?
            }
        })
    }
}

enum Op {
    Arrive(UserId),
    Leave(UserId),
    Barrier(oneshot::Sender<()>),
    /// Write every wanted field again (Redis may have restarted empty).
    Again(oneshot::Sender<()>),
    /// Redis lost (or may lack) this node's entries: the liveness key or, on a cluster, a
    /// marker was found gone (a replica that lacked them took over, with no `Resynced`
    /// here), or a write failed. Write them again, then catch the users up (publishes were
    /// routed past them meanwhile).
    Lost,
}

pub struct Presence {
    conn: Conn,
    keys: Keys,
    incarnation: u64,
    config: PresenceConfig,
    metrics: Arc<Metrics>,
    ops: mpsc::UnboundedSender<Op>,
    /// User -> incarnations found in its hash, and when that lookup was sent.
    users: DashMap<UserId, (Instant, Arc<[u64]>)>,
    /// Incarnation -> alive or not, and when that lookup was sent.
    alive: DashMap<u64, (Instant, bool)>,
    stop: CancellationToken,
}

impl Presence {
    /// Draws an incarnation and starts the writer and the liveness refresher. Does not wait
    /// for Redis: entries wanted while it is away are written when it returns.
    /// Takes the key prefix and the node's name (kept in its liveness key).
    pub fn start(
        keyspace: &Keyspace,
        (prefix, node): (&str, &str),
        config: PresenceConfig,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<Event>,
    ) -> Result<Arc<Self>, BackplaneError> {
        use rand::RngExt;
        let conn = Conn::new(keyspace)?;
        let incarnation = rand::rng().random_range(1..i64::MAX as u64);
        let (ops, rx) = mpsc::unbounded_channel();
        let keys = Keys::new(prefix, conn.is_cluster());
        let stop = CancellationToken::new();
        let liveness = Liveness {
            key: keys.alive(incarnation),
            markers: keys.markers(incarnation),
            node: node.to_owned(),
            ttl: config.ttl,
        };
        let writer = Writer {
            conn: conn.clone(),
            keys: keys.clone(),
            incarnation,
            liveness: liveness.clone(),
            catch_up_after: catch_up_delay(config.cache),
            events,
            wanted: HashSet::new(),
            unwritten_leaves: HashSet::new(),
            dirty: false,
        };
        tokio::spawn(writer.run(rx, stop.clone()));
        tokio::spawn(liveness.refresh(conn.clone(), ops.clone(), stop.clone()));
        tracing::info!(incarnation, node, "presence incarnation");
        Ok(Arc::new(Self {
            conn,
            keys,
            incarnation,
            config,
            metrics,
            ops,
            users: DashMap::new(),
            alive: DashMap::new(),
            stop,
        }))
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node now holds a session of `user` (enqueued, in order).
    pub fn arrive(&self, user: UserId) {
        let _ = self.ops.send(Op::Arrive(user));
    }

    /// This node no longer holds a session of `user` (enqueued, in order).
    pub fn leave(&self, user: UserId) {
        let _ = self.ops.send(Op::Leave(user));
    }

    /// Resolves once every edit enqueued before it was written, or failed.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// After a drain: waits for the sessions' departures to be written, then deletes the
    /// liveness key, so other nodes stop routing here at once rather than after the TTL.
    pub async fn retire(&self) {
        self.barrier().await;
        self.stop.cancel();
        let mut del = Batch::default();
        del.add(self.keys.alive(self.incarnation), "DEL");
        let _ = self.conn.run(del).await;
    }

    /// Writes every entry of this node again and waits for it.
    pub async fn register_again(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Again(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The live incarnations holding sessions of each of `users` (users on no live node are
    /// left out). One pipelined round trip for the users not cached, and one for the
    /// incarnations not cached, if any (on a cluster, each a pipeline per slot, at once).
    pub async fn locate(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<u64>>, BackplaneError> {
        match self.locate_all(users).await {
            (_, Some(e)) => Err(e),
            (found, None) => Ok(found),
        }
    }

    /// [`locate`](Self::locate) that goes on past pipelines that failed (on a cluster, the
    /// slots of a master that is failing over): a user whose hash could not be read is where
    /// the cache last saw it, however long ago (left out when never seen), and an
    /// incarnation whose liveness could not be read counts as alive (a dead node's channel
    /// only has no listener). Returns what it found and the first failure.
    pub async fn locate_all(&self, users: &[UserId]) -> (HashMap<UserId, Vec<u64>>, Option<BackplaneError>) {
        let now = Instant::now();
        let fresh = |at: Instant| now.saturating_duration_since(at) < self.config.cache;
        let mut found: HashMap<UserId, Arc<[u64]>> = HashMap::with_capacity(users.len());
        let mut missing = Vec::new();
        for &u in users {
            match self.users.get(&u) {
                Some(e) if fresh(e.0) => {
                    found.insert(u, e.1.clone());
                }
                _ => missing.push(u),
            }
        }
        let m = &self.metrics.presence_lookups;
        m.with_label_values(&["cache"]).inc_by(found.len() as u64);
        m.with_label_values(&["redis"]).inc_by(missing.len() as u64);
        let mut failed = None;
        if !missing.is_empty() {
            let mut batch = Batch::default();
            for &u in &missing {
                batch.add(self.keys.user(u), "HKEYS");
            }
            let (replies, error) = self.conn.send(batch).await;
            failed = error;
            self.bound_cache();
            for (u, reply) in missing.into_iter().zip(replies) {
                let fields = reply.map(redis::from_redis_value::<Vec<String>>);
                let incarnations: Arc<[u64]> = match fields {
                    Some(Ok(fields)) => fields.iter().filter_map(|f| f.parse().ok()).collect(),
                    Some(Err(e)) => {
                        failed.get_or_insert(redis::RedisError::from(e).into());
                        continue;
                    }
                    None => match self.users.get(&u) {
                        Some(stale) => {
                            found.insert(u, stale.1.clone());
                            continue;
                        }
                        None => continue,
                    },
                };
                if !self.config.cache.is_zero() {
                    self.users.insert(u, (now, incarnations.clone()));
                }
                found.insert(u, incarnations);
            }
        }
        let (alive, error) = self.alive_of(found.values().flat_map(|i| i.iter().copied()), now).await;
        let found = found
            .into_iter()
            .map(|(u, i)| (u, i.iter().copied().filter(|i| alive.contains(i)).collect::<Vec<_>>()))
            .filter(|(_, i)| !i.is_empty())
            .collect();
        (found, failed.or(error))
    }

    /// Which of these incarnations have a liveness key (or could not be asked), and the
    /// failure if some could not.
    async fn alive_of(
        &self,
        incarnations: impl Iterator<Item = u64>,
        now: Instant,
    ) -> (HashSet<u64>, Option<BackplaneError>) {
        let mut alive = HashSet::new();
        let mut missing: Vec<u64> = Vec::new();
        for i in incarnations {
            if alive.contains(&i) || missing.contains(&i) {
                continue;
            }
            match self.alive.get(&i) {
                Some(e) if now.saturating_duration_since(e.0) < self.config.cache => {
                    if e.1 {
                        alive.insert(i);
                    }
                }
                _ => missing.push(i),
            }
        }
        if missing.is_empty() {
            return (alive, None);
        }
        let mut batch = Batch::default();
        for &i in &missing {
            batch.add(self.keys.alive(i), "EXISTS");
        }
        let (replies, mut failed) = self.conn.send(batch).await;
        for (i, reply) in missing.into_iter().zip(replies) {
            let up = match reply.map(redis::from_redis_value::<bool>) {
                Some(Ok(up)) => up,
                // Unknown: routed to, not cached.
                unknown => {
                    if let Some(Err(e)) = unknown {
                        failed.get_or_insert(redis::RedisError::from(e).into());
                    }
                    alive.insert(i);
                    continue;
                }
            };
            if !self.config.cache.is_zero() {
                self.alive.insert(i, (now, up));
            }
            if up {
                alive.insert(i);
            }
        }
        (alive, failed)
    }

    fn bound_cache(&self) {
        if self.users.len() >= CACHE_USERS {
            self.users.clear();
        }
        if self.alive.len() >= CACHE_USERS {
            self.alive.clear();
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long after its entry was written a session may still have missed publishes:
/// the cache's life, plus a margin for clocks and the lookup's own round trip. `None`
/// without a cache (every publish then sees every written entry).
fn catch_up_delay(cache: Duration) -> Option<Duration> {
    (!cache.is_zero()).then(|| cache + cache / 10 + Duration::from_millis(50))
}

/// The node's liveness key, and on a cluster its markers.
#[derive(Clone)]
struct Liveness {
    key: Key,
    /// Refreshed with the liveness key: one that vanished shows its slot lost this node's
    /// writes.
    markers: Vec<Key>,
    node: String,
    ttl: Duration,
}

impl Liveness {
    fn set(&self) -> Batch {
        let mut batch = Batch::default();
        batch.add(self.key.clone(), "SET").arg(&self.node).arg("PX").arg(self.ttl.as_millis() as u64);
        batch
    }

    /// Keeps the key (and on a cluster the markers) set, at a third of its TTL, until
    /// stopped. One found gone once all were set (Redis restarted, a replica without them
    /// took over a slot, or Redis was out of reach past the TTL) has the writer write every
    /// entry again ([`Op::Lost`]): a presence Redis that is not the backplane's, or a slot
    /// of a master that held no subscription of this node, is lost unnoticed otherwise.
    async fn refresh(self, conn: Conn, ops: mpsc::UnboundedSender<Op>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        let mut planted = false;
        // `SET … GET` needs Redis 6.2 (a cluster has 7); an older one gets the plain SET (and
        // no detection).
        let mut with_get = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut batch = Batch::default();
                    let ttl = self.ttl.as_millis() as u64;
                    let set = batch.add(self.key.clone(), "SET").arg(&self.node).arg("PX").arg(ttl);
                    if with_get {
                        set.arg("GET");
                    }
                    for marker in &self.markers {
                        batch.add(marker.clone(), "SET").arg(1).arg("PX").arg(ttl).arg("GET");
                    }
                    let (replies, failed) = conn.send(batch).await;
                    match &failed {
                        Some(BackplaneError::Redis(e))
                            if with_get
                                && self.markers.is_empty()
                                && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                        {
                            tracing::warn!(error = %e, "this Redis has no SET … GET; presence loss is noticed on failed writes only");
                            with_get = false;
                            tick.reset_immediately();
                            continue;
                        }
                        Some(e) => tracing::warn!(error = %e, "presence liveness refresh failed"),
                        None => {}
                    }
                    let gone = replies.iter().enumerate().any(|(i, r)| (i > 0 || with_get) && matches!(r, Some(Value::Nil)));
                    if planted && gone {
                        tracing::warn!("presence liveness key or marker was gone; writing this node's presence again");
                        let _ = ops.send(Op::Lost);
                    }
                    planted |= failed.is_none();
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Applies presence edits in order, a batch per pipeline.
struct Writer {
    conn: Conn,
    keys: Keys,
    incarnation: u64,
    liveness: Liveness,
    catch_up_after: Option<Duration>,
    events: mpsc::Sender<Event>,
    /// Users with a session here: what Redis should hold for this node.
    wanted: HashSet<UserId>,
    /// Deletions that failed: retried with the next full write.
    unwritten_leaves: HashSet<UserId>,
    /// A write failed: Redis may lack some of this node's entries.
    dirty: bool,
}

impl Writer {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, stop: CancellationToken) {
        loop {
            // After a failed write, everything is written again a second later (Redis may be
            // back without the subscriber having noticed it was gone).
            let retry = self.dirty;
            let first = tokio::select! {
                op = ops.recv() => match op {
                    Some(op) => op,
                    None => return,
                },
                () = tokio::time::sleep(Duration::from_secs(1)), if retry => {
                    self.apply(vec![Op::Lost]).await;
                    continue;
                }
                () = stop.cancelled() => return,
            };
            let mut batch = vec![first];
            while let Ok(more) = ops.try_recv() {
                batch.push(more);
            }
            self.apply(batch).await;
        }
    }

    async fn apply(&mut self, batch: Vec<Op>) {
        let field = self.incarnation;
        let mut edits = Batch::default();
        let (mut arrived, mut left, mut waiting, mut again) = (Vec::new(), Vec::new(), Vec::new(), false);
        let mut lost = false;
        for op in batch {
            match op {
                Op::Arrive(u) => {
                    if self.wanted.insert(u) {
                        edits.add(self.keys.user(u), "HSET").arg(field).arg(1);
                        arrived.push(u);
                    }
                }
                Op::Leave(u) => {
                    if self.wanted.remove(&u) {
                        edits.add(self.keys.user(u), "HDEL").arg(field);
                        left.push(u);
                    }
                }
                Op::Barrier(done) => waiting.push(done),
                Op::Lost => {
                    again = true;
                    lost = true;
                }
                Op::Again(done) => {
                    again = true;
                    waiting.push(done);
                }
            }
        }
        let written = edits.is_empty() || self.write(edits).await;
        if !written {
            self.unwritten_leaves.extend(left);
            self.dirty = true;
        }
        if again {
            arrived = self.write_all().await;
            self.dirty = arrived.is_empty() && !self.wanted.is_empty();
        }
        for done in waiting {
            let _ = done.send(());
        }
        if lost && !self.dirty {
            // Publishes routed past this node while its entries were gone are in the store.
            let users = self.wanted.iter().copied().collect();
            let _ = self.events.send(Event::CatchUp(users)).await;
        }
        if (written || again)
            && !arrived.is_empty()
            && let Some(delay) = self.catch_up_after
        {
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = events.send(Event::CatchUp(arrived)).await;
            });
        }
    }

    /// Writes the liveness key, every wanted field and the deletions that failed; returns
    /// the users written. A connection that broke with the restart may fail the first try.
    async fn write_all(&mut self) -> Vec<UserId> {
        for attempt in 0..5 {
            if self.try_write_all().await {
                tracing::info!(users = self.wanted.len(), "presence written again");
                return self.wanted.iter().copied().collect();
            }
            tokio::time::sleep(REWRITE.delay(attempt)).await;
        }
        // Redis went away again; the next reconnect writes everything once more.
        Vec::new()
    }

    async fn try_write_all(&mut self) -> bool {
        let field = self.incarnation;
        if !self.write(self.liveness.set()).await {
            return false;
        }
        let leaves: Vec<UserId> = self.unwritten_leaves.drain().filter(|u| !self.wanted.contains(u)).collect();
        for chunk in leaves.chunks(CHUNK) {
            let mut batch = Batch::default();
            for &u in chunk {
                batch.add(self.keys.user(u), "HDEL").arg(field);
            }
            if !self.write(batch).await {
                self.unwritten_leaves.extend(chunk);
            }
        }
        let users: Vec<UserId> = self.wanted.iter().copied().collect();
        for chunk in users.chunks(CHUNK) {
            let mut batch = Batch::default();
            for &u in chunk {
                batch.add(self.keys.user(u), "HSET").arg(field).arg(1);
            }
            if !self.write(batch).await {
                return false;
            }
        }
        true
    }

    async fn write(&self, batch: Batch) -> bool {
        match self.conn.run(batch).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "presence write failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots_of(batch: &Batch) -> Vec<(u16, usize)> {
        batch.pipes.iter().map(|(slot, (_, positions))| (*slot, positions.len())).collect()
    }

    #[test]
    fn single_redis_keeps_the_old_names_and_one_pipeline() {
        let keys = Keys::new("sb:", false);
        assert_eq!(keys.user(42), Key { name: "sb:presence:42".into(), slot: 0 });
        assert_eq!(keys.alive(7), Key { name: "sb:alive:7".into(), slot: 0 });
        let mut batch = Batch::default();
        for u in 0..500 {
            batch.add(keys.user(u), "HKEYS");
        }
        batch.add(keys.alive(1), "EXISTS");
        assert_eq!(slots_of(&batch), vec![(0, 501)]);
        let (_, positions) = &batch.pipes[&0];
        assert_eq!(positions, &(0..501).collect::<Vec<_>>());
    }

    #[test]
    fn cluster_keys_are_tagged_and_batches_split_per_slot() {
        let keys = Keys::new("sb:", true);
        // Each key's slot is the one Redis computes for its name.
        for u in [0, 1, 42, -5, i64::MAX] {
            let k = keys.user(u);
            assert!(k.name.starts_with("sb:{") && k.name.ends_with(&format!("}}presence:{u}")), "{}", k.name);
            assert_eq!(slot(k.name.as_bytes()), k.slot);
        }
        let markers = keys.markers(123);
        assert_eq!(markers.len(), usize::from(USER_PARTITIONS));
        assert!(markers.iter().all(|m| slot(m.name.as_bytes()) == m.slot && m.name.ends_with("}presence-node:123")));
        let marked: HashSet<u16> = markers.iter().map(|m| m.slot).collect();
        assert!((0..10_000).all(|u| marked.contains(&keys.user(u).slot)), "every user slot has a marker");
        assert!(Keys::new("sb:", false).markers(123).is_empty());
        let alive = keys.alive(123);
        assert_eq!(alive.name, "sb:{alive}:123");
        assert_eq!(slot(alive.name.as_bytes()), alive.slot);
        // Every liveness key in one slot; users over USER_PARTITIONS slots, a third or so on
        // each master of a 3-master cluster.
        assert!((1..1000).all(|i| keys.alive(i).slot == alive.slot));
        let user_slots: HashSet<u16> = (0..10_000).map(|u| keys.user(u).slot).collect();
        assert_eq!(user_slots.len(), usize::from(USER_PARTITIONS));
        for range in [0..5461u16, 5461..10923, 10923..16384] {
            let n = user_slots.iter().filter(|s| range.contains(s)).count();
            assert!((5..=6).contains(&n), "{n} user partitions in {range:?}");
        }
        // A batch: one pipeline per slot, each command in the pipeline of its key's slot,
        // positions covering the batch in order.
        let mut batch = Batch::default();
        let mut expected: Vec<u16> = Vec::new();
        for u in 0..300 {
            let k = keys.user(u);
            expected.push(k.slot);
            batch.add(k, "HSET").arg(9).arg(1);
        }
        expected.push(alive.slot);
        batch.add(alive.clone(), "SET").arg("n");
        assert_eq!(batch.len, 301);
        assert_eq!(batch.pipes.len(), usize::from(USER_PARTITIONS) + 1);
        let mut seen = vec![None; batch.len];
        for (pipe_slot, (pipe, positions)) in &batch.pipes {
            assert_eq!(pipe.len(), positions.len());
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "commands keep their order in a slot");
            for (cmd, at) in pipe.cmd_iter().zip(positions) {
                let Some(redis::Arg::Simple(key)) = cmd.args_iter().nth(1) else { panic!("no key") };
                assert_eq!(slot(key), *pipe_slot);
                seen[*at] = Some(*pipe_slot);
            }
        }
        assert_eq!(seen.into_iter().map(Option::unwrap).collect::<Vec<_>>(), expected);
    }
}
