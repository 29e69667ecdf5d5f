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
//! Lookups are pipelined (one HKEYS per user not cached, then one EXISTS per incarnation not
//! cached) and cached for `--presence-cache`. The cache is never invalidated; instead
//! its staleness is bounded and covered: an entry is used at most that long after its
//! lookup was sent, so a publish made later than that after this node's entry was written
//! sees it. A session whose presence was just written may have missed publishes routed by
//! older entries, so once that time has passed its node asks it to catch up from the
//! store ([`Event::CatchUp`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
use crate::backplane::{BackplaneError, Event};
use crate::metrics::Metrics;
use crate::model::UserId;

/// Bound on one Redis round trip.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two tries at writing everything again: 100 ms doubling to 500 ms.
const REWRITE: Backoff =
    Backoff { base: Duration::from_millis(100), cap: Duration::from_millis(500), jitter: Jitter::None };
/// Cached users before the cache starts over.
const CACHE_USERS: usize = 200_000;
/// Fields written per pipeline when the whole presence is written again.
const CHUNK: usize = 1000;

#[derive(Clone, Copy, Debug)]
pub struct PresenceConfig {
    /// Lifetime of the liveness key without a refresh.
    pub ttl: Duration,
    /// How long a lookup's answer is reused; zero looks up on every publish.
    pub cache: Duration,
}

#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    fn user(&self, u: UserId) -> String {
        format!("{}presence:{u}", self.prefix)
    }

    fn alive(&self, incarnation: u64) -> String {
        format!("{}alive:{incarnation}", self.prefix)
    }
}

enum Op {
    Arrive(UserId),
    Leave(UserId),
    Barrier(oneshot::Sender<()>),
    /// Write every wanted field again (Redis may have restarted empty).
    Again(oneshot::Sender<()>),
    /// Redis lost (or may lack) this node's entries: the liveness key was found gone, or a
    /// write failed. Write them again, then catch the users up (publishes were routed past
    /// them meanwhile).
    Lost,
}

pub struct Presence {
    conn: ConnectionManager,
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
        client: redis::Client,
        (prefix, node): (&str, &str),
        config: PresenceConfig,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<Event>,
    ) -> Result<Arc<Self>, BackplaneError> {
        use rand::RngExt;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        let incarnation = rand::rng().random_range(1..i64::MAX as u64);
        let (ops, rx) = mpsc::unbounded_channel();
        let keys = Keys { prefix: prefix.into() };
        let stop = CancellationToken::new();
        let liveness = Liveness { key: keys.alive(incarnation), node: node.to_owned(), ttl: config.ttl };
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
        let mut conn = self.conn.clone();
        let del = redis::cmd("DEL").arg(self.keys.alive(self.incarnation)).to_owned();
        let _ = tokio::time::timeout(IO_TIMEOUT, del.query_async::<()>(&mut conn)).await;
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
    /// incarnations not cached, if any.
    pub async fn locate(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<u64>>, BackplaneError> {
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
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for &u in &missing {
                pipe.cmd("HKEYS").arg(self.keys.user(u));
            }
            let fields: Vec<Vec<String>> = self.query(&pipe).await?;
            self.bound_cache();
            for (u, fields) in missing.into_iter().zip(fields) {
                let incarnations: Arc<[u64]> = fields.iter().filter_map(|f| f.parse().ok()).collect();
                if !self.config.cache.is_zero() {
                    self.users.insert(u, (now, incarnations.clone()));
                }
                found.insert(u, incarnations);
            }
        }
        let alive = self.alive_of(found.values().flat_map(|i| i.iter().copied()), now).await?;
        Ok(found
            .into_iter()
            .map(|(u, i)| (u, i.iter().copied().filter(|i| alive.contains(i)).collect::<Vec<_>>()))
            .filter(|(_, i)| !i.is_empty())
            .collect())
    }

    /// Which of these incarnations have a liveness key.
    async fn alive_of(
        &self,
        incarnations: impl Iterator<Item = u64>,
        now: Instant,
    ) -> Result<HashSet<u64>, BackplaneError> {
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
            return Ok(alive);
        }
        let mut pipe = redis::pipe();
        for &i in &missing {
            pipe.cmd("EXISTS").arg(self.keys.alive(i));
        }
        let exists: Vec<bool> = self.query(&pipe).await?;
        for (i, up) in missing.into_iter().zip(exists) {
            if !self.config.cache.is_zero() {
                self.alive.insert(i, (now, up));
            }
            if up {
                alive.insert(i);
            }
        }
        Ok(alive)
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BackplaneError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(res) => res.map_err(Into::into),
            Err(_) => Err(BackplaneError::Timeout),
        }
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

/// The node's liveness key.
#[derive(Clone)]
struct Liveness {
    key: String,
    node: String,
    ttl: Duration,
}

impl Liveness {
    fn set(&self) -> redis::Cmd {
        redis::cmd("SET").arg(&self.key).arg(&self.node).arg("PX").arg(self.ttl.as_millis() as u64).to_owned()
    }

    /// Keeps the key set, at a third of its TTL, until stopped. A refresh that finds the key
    /// gone (Redis restarted, or was out of reach past the TTL) has the writer write every
    /// entry again: a presence Redis that is not the backplane's restarts unnoticed otherwise.
    async fn refresh(self, mut conn: ConnectionManager, ops: mpsc::UnboundedSender<Op>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        let mut set_before = false;
        // `SET … GET` needs Redis 6.2; an older one gets the plain SET (and no detection).
        let mut with_get = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let set = if with_get { self.set().arg("GET").to_owned() } else { self.set() };
                    match tokio::time::timeout(IO_TIMEOUT, set.query_async::<redis::Value>(&mut conn)).await {
                        Ok(Ok(previous)) => {
                            if with_get && previous == redis::Value::Nil && set_before {
                                tracing::warn!("presence liveness key was gone; writing this node's presence again");
                                let _ = ops.send(Op::Lost);
                            }
                            set_before = true;
                        }
                        Ok(Err(e)) if with_get && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
                            tracing::warn!(error = %e, "this Redis has no SET … GET; presence loss is noticed on failed writes only");
                            with_get = false;
                            tick.reset_immediately();
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "presence liveness refresh failed"),
                        Err(_) => tracing::warn!("presence liveness refresh timed out"),
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Applies presence edits in order, a batch per pipeline.
struct Writer {
    conn: ConnectionManager,
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
        let mut pipe = redis::pipe();
        let (mut arrived, mut left, mut waiting, mut again) = (Vec::new(), Vec::new(), Vec::new(), false);
        let mut lost = false;
        for op in batch {
            match op {
                Op::Arrive(u) => {
                    if self.wanted.insert(u) {
                        pipe.cmd("HSET").arg(self.keys.user(u)).arg(field).arg(1).ignore();
                        arrived.push(u);
                    }
                }
                Op::Leave(u) => {
                    if self.wanted.remove(&u) {
                        pipe.cmd("HDEL").arg(self.keys.user(u)).arg(field).ignore();
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
        let written = pipe.is_empty() || self.run_pipe(&pipe).await;
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
        let mut alive = redis::pipe();
        alive.add_command(self.liveness.set()).ignore();
        if !self.run_pipe(&alive).await {
            return false;
        }
        let leaves: Vec<UserId> = self.unwritten_leaves.drain().filter(|u| !self.wanted.contains(u)).collect();
        for chunk in leaves.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for &u in chunk {
                pipe.cmd("HDEL").arg(self.keys.user(u)).arg(field).ignore();
            }
            if !self.run_pipe(&pipe).await {
                self.unwritten_leaves.extend(chunk);
            }
        }
        let users: Vec<UserId> = self.wanted.iter().copied().collect();
        for chunk in users.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for &u in chunk {
                pipe.cmd("HSET").arg(self.keys.user(u)).arg(field).arg(1).ignore();
            }
            if !self.run_pipe(&pipe).await {
                return false;
            }
        }
        true
    }

    async fn run_pipe(&self, pipe: &redis::Pipeline) -> bool {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "presence write failed");
                false
            }
            Err(_) => {
                tracing::warn!("presence write timed out");
                false
            }
        }
    }
}
