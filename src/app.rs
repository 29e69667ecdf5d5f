//! One node: built from a [`Config`], then run on listeners handed in by the caller (so tests
//! bind port 0) until its lifecycle reaches `Stopped`.
//!
//! Shutdown is the drain of docs/lifecycle.md: the phase turns `Draining` (readiness fails, upgrades
//! get 503), sessions get `goodbye` + 1001 at `--drain-close-rate` per second, whatever is
//! still open at `--drain-timeout` is cut, in-flight REST calls finish, recorded delivery
//! positions are written, and `run` returns.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::backplane::{
    Backplane, BackplaneError, Event, MemoryBackplane, MemoryBus, NatsBackplane, Partitions, RedisBackplane,
    RedisClusterBackplane,
};
use crate::commit::Commits;
use crate::config::Config;
use crate::http::{self, Listener};
use crate::hub::Hub;
use crate::inbox::{self, Inbox, InboxError, Recorder, SqlInbox};
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::reads::HandshakeReads;
use crate::routing::{self, Keyspace, StoreDirectory};
use crate::state::AppState;
use crate::store::{Database, Dialect, SqlStore, Store, StoreError};
use crate::tls::Trust;
use crate::ws::protocol::close;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Inbox(#[from] InboxError),
    #[error("{0}")]
    Backplane(#[from] BackplaneError),
    #[error("{0}")]
    Tls(String),
    /// The fleet on this Redis routes in another mode: a configuration error, not an outage.
    #[error("{0}")]
    Routing(String),
}

pub struct App {
    state: Arc<AppState>,
    /// Keeps the fleet's routing mode claimed in Redis while the node runs.
    agreeing: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        let node = config.node_name();
        let metrics = Arc::new(Metrics::new(&node));
        metrics.drain_timeout_seconds.set(i64::try_from(config.drain_timeout.as_secs()).unwrap_or(i64::MAX));
        let trust = Trust::load(config.tls_ca_file.as_deref()).map_err(StartError::Tls)?;
        let db = Database::connect(&trust.mysql_url(&config.database_url)).await?;
        // Work that spreads over cores (commit shards, fan-out lanes) gets one lane per two
        // cores: on a small machine the hand-over to another task costs more than it saves.
        let lanes = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        // SQLite has one writer, so one commit shard. MySQL commits shards in parallel: each
        // commit costs the database about the same whatever its size, so fewer, fuller
        // batches are cheaper per message (docs/benchmarks.md measures both).
        let shards = match db.dialect {
            Dialect::Sqlite => 1,
            Dialect::MySql => lanes,
        };
        let store: Arc<dyn Store> = Arc::new(SqlStore::new(db.clone(), metrics.clone()));
        let inbox: Arc<dyn Inbox> = match &config.mongodb_url {
            Some(url) => Arc::new(inbox::MongoInbox::connect(url, &trust, metrics.clone()).await?),
            None => Arc::new(SqlInbox::new(db, metrics.clone())),
        };
        let (events_tx, events_rx) = mpsc::channel(4096);
        let redis = match &config.redis_url {
            Some(url) => Some(trust.redis_client(url).map_err(BackplaneError::from)?),
            None => None,
        };
        // The presence store's Redis (`--routing node`): its own, else the backplane's.
        let presence_redis = match &config.presence_redis_url {
            Some(url) => Some(trust.redis_client(url).map_err(BackplaneError::from)?),
            None => redis.clone(),
        };
        let cluster = match config.redis_cluster_urls.as_slice() {
            [] => None,
            urls => Some(trust.redis_cluster(urls).and_then(|b| b.build()).map_err(BackplaneError::from)?),
        };
        let prefix = config.channel_prefix.clone();
        let mut agreeing = None;
        // The fleet's routing mode is kept in the backplane's Redis (or Redis Cluster), or
        // with NATS in the presence Redis if there is one; NATS alone has nowhere to keep it
        // (no check).
        let keyspace = match (&redis, cluster, &presence_redis) {
            (Some(client), _, _) => Some(Keyspace::Redis(client.clone())),
            (None, Some(client), _) => Some(Keyspace::Cluster(client)),
            (None, None, Some(client)) => Some(Keyspace::Redis(client.clone())),
            (None, None, None) => None,
        };
        if let Some(keys) = &keyspace {
            routing::agree(keys, &prefix, config.routing).await.map_err(|e| StartError::Routing(e.to_string()))?;
            let keep = routing::keep_agreeing(keys.clone(), prefix.clone(), config.routing);
            agreeing = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(keep)));
        }
        // The presence store (`--routing node`): the presence Redis if set, else the
        // backplane's Redis or Redis Cluster.
        let presence_keys = match (&presence_redis, &keyspace) {
            (Some(client), _) => Some(Keyspace::Redis(client.clone())),
            (None, Some(Keyspace::Cluster(client))) => Some(Keyspace::Cluster(client.clone())),
            _ => None,
        };
        let nats = config.nats_urls();
        // The transport: Redis pub/sub, a Redis Cluster's sharded pub/sub, NATS, or the
        // in-process bus of a single node.
        let transport = |events: mpsc::Sender<Event>| -> Result<Arc<dyn Backplane>, BackplaneError> {
            Ok(match &redis {
                Some(client) => Arc::new(RedisBackplane::connect(client.clone(), &prefix, events, metrics.clone())?),
                None if !config.redis_cluster_urls.is_empty() => {
                    let partitions = Partitions::new(&prefix, config.shard_partitions);
                    Arc::new(RedisClusterBackplane::connect(
                        trust.redis_cluster(&config.redis_cluster_urls)?,
                        partitions,
                        events,
                        metrics.clone(),
                    )?)
                }
                None if !nats.is_empty() => {
                    let ca = config.tls_ca_file.as_deref();
                    Arc::new(NatsBackplane::connect(&nats, &prefix, ca, events, metrics.clone())?)
                }
                None => Arc::new(MemoryBackplane::new(MemoryBus::new(), events)),
            })
        };
        let setup = routing::Setup {
            mode: config.routing,
            redis: presence_keys.as_ref(),
            prefix: &prefix,
            node: &node,
            presence: config.presence(),
            directory: Arc::new(StoreDirectory(store.clone())),
            metrics: metrics.clone(),
        };
        let routing::Routed { backplane, presence } = routing::build(setup, events_tx, transport)?;
        let hub = Hub::new(backplane.clone(), metrics.clone());
        tokio::spawn(hub.clone().run(events_rx, lanes));
        let recorder = Recorder::spawn(inbox.clone(), config.position_flush, metrics.clone());
        let send_limiter = RateLimiter::new(config.send_rate, config.send_burst);
        let reads = HandshakeReads::spawn(store.clone(), inbox.clone());
        let commit_interval = config.commit_interval;
        let commits = Commits::spawn(store.clone(), backplane, shards, commit_interval, metrics.clone());
        let tokens = config
            .token_secret
            .as_deref()
            .map(|secret| Tokens::new(secret, config.token_verify_secret.as_deref(), config.token_ttl.as_secs()));
        let state = AppState {
            send_limiter,
            commits,
            tokens,
            presence,
            config,
            node,
            store,
            inbox,
            hub,
            recorder,
            reads,
            metrics,
            lifecycle: Lifecycle::new(),
            sessions: TaskTracker::new(),
        };
        Ok(App { state: Arc::new(state), agreeing })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.state.lifecycle.clone()
    }

    /// Serves until a drain (signal, admin call, agent or `lifecycle().drain()`) completes.
    pub async fn run(self, public: TcpListener, admin: TcpListener, agent: Option<TcpListener>) {
        let state = self.state;
        let stop = CancellationToken::new();
        let servers = [
            tokio::spawn(http::serve(public, state.clone(), Listener::Public, stop.clone())),
            tokio::spawn(http::serve(admin, state.clone(), Listener::Admin, stop.clone())),
        ];
        if let Some(agent) = agent {
            tokio::spawn(crate::agent::serve(agent, state.lifecycle.clone(), stop.clone()));
        }
        let phase_gauge = tokio::spawn(export_phase(state.clone()));
        let upkeep = tokio::spawn(upkeep(state.clone()));
        state.lifecycle.advance(Phase::Ready);
        tracing::info!(node = %state.node, "node ready");

        state.lifecycle.draining().await;
        drain_sessions(&state).await;
        stop.cancel();
        for server in servers {
            let _ = server.await;
        }
        upkeep.abort();
        if let Some(presence) = &state.presence {
            presence.retire().await;
        }
        state.recorder.flush().await;
        state.lifecycle.advance(Phase::Stopped);
        drop(self.agreeing);
        let _ = phase_gauge.await;
        tracing::info!(node = %state.node, "node stopped");
    }
}

/// Closes every session with `goodbye` + 1001, paced, and cuts the rest at the deadline.
async fn drain_sessions(state: &AppState) {
    let m = &state.metrics;
    m.drain_started.set(crate::model::now_ms() / 1000);
    let deadline = tokio::time::Instant::now() + state.config.drain_timeout;
    let cut = state.lifecycle.cut_token();
    // Close in ticks of 10 ms, rate/100 sessions per tick (at least one).
    let per_tick = (state.config.drain_close_rate as usize).div_ceil(100).max(1);
    let tick = Duration::from_secs(1) / state.config.drain_close_rate.clamp(1, 100);
    tracing::info!(sessions = state.hub.session_count(), rate = state.config.drain_close_rate, "drain started");
    let paced = async {
        loop {
            let open: Vec<_> = state.hub.sessions().into_iter().filter(|s| !s.is_closed()).collect();
            m.drain_sessions_remaining.set(state.hub.session_count() as i64);
            if open.is_empty() {
                break;
            }
            for batch in open.chunks(per_tick) {
                for s in batch {
                    s.close(close::GOING_AWAY);
                }
                tokio::time::sleep(tick).await;
            }
        }
        // Every session was told; wait for their clients to answer the close.
        state.sessions.close();
        state.sessions.wait().await;
    };
    tokio::select! {
        () = paced => {}
        () = tokio::time::sleep_until(deadline) => tracing::warn!(
            left = state.hub.session_count(),
            "drain timeout reached; cutting remaining sessions"
        ),
        () = cut.cancelled() => tracing::warn!("drain cut short; closing remaining sessions now"),
    }
    // The enforced TTL: whatever is still open is cut now.
    state.lifecycle.cut_now();
    for s in state.hub.sessions() {
        s.close(close::GOING_AWAY);
    }
    state.sessions.close();
    // Cut sessions end within their write timeout.
    if tokio::time::timeout(Duration::from_secs(15), state.sessions.wait()).await.is_err() {
        tracing::warn!(left = state.hub.session_count(), "sessions did not end after the cut");
    }
    m.drain_sessions_remaining.set(0);
    tracing::info!("drain finished");
}

/// Mirrors the lifecycle phase into its gauge until `Stopped`.
async fn export_phase(state: Arc<AppState>) {
    let mut phases = state.lifecycle.subscribe();
    loop {
        let phase = *phases.borrow_and_update();
        state.metrics.lifecycle_phase.set(phase as i64);
        if phase == Phase::Stopped || phases.changed().await.is_err() {
            return;
        }
    }
}

/// Periodic chores: rate-limiter buckets and backend health.
async fn upkeep(state: Arc<AppState>) {
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    let mut health = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sweep.tick() => state.send_limiter.sweep(),
            _ = health.tick() => {
                state.check_backends().await;
            }
        }
    }
}
