//! The node's shared state, below everything that serves requests: [`http`](crate::http),
//! [`ws`](crate::ws) and the [`app`](crate::app) that wires them read it, it reads none of
//! them (as mini-redis keeps its `Db` below its server and connections).
//!
//! The backend checks live here too: [`AppState::check_backends`] pings the store, the inbox
//! and the backplane and refreshes `backend_up`, and [`AppState::readiness`] adds the
//! lifecycle phase. `/readyz` and `/admin/info` only render what they return.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::commit::Commits;
use crate::config::Config;
use crate::hub::Hub;
use crate::inbox::{Inbox, Recorder};
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::reads::HandshakeReads;
use crate::routing::Presence;
use crate::store::Store;

/// How long each backend gets to answer its ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a request handler or session needs, shared by reference count.
pub struct AppState {
    pub config: Config,
    pub node: String,
    pub store: Arc<dyn Store>,
    pub inbox: Arc<dyn Inbox>,
    pub hub: Arc<Hub>,
    /// Writes delivery positions in coalesced batches.
    pub recorder: Recorder,
    /// The handshake's heads and positions reads, batched across concurrent handshakes.
    pub reads: HandshakeReads,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    /// Every WebSocket session task; the drain waits on it.
    pub sessions: TaskTracker,
    pub send_limiter: RateLimiter,
    /// Group commit of concurrent sends: store, then publish.
    pub commits: Commits,
    /// Present in signed-token mode.
    pub tokens: Option<Tokens>,
    /// Where users are connected (`--routing node` only).
    pub presence: Option<Arc<Presence>>,
}

/// Which backends answered their ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backends {
    pub store: bool,
    pub inbox: bool,
    pub backplane: bool,
}

impl Backends {
    /// Each backend by its `backend_up` label, in a fixed order.
    pub fn by_name(&self) -> [(&'static str, bool); 3] {
        [("store", self.store), ("inbox", self.inbox), ("backplane", self.backplane)]
    }

    pub fn all_up(&self) -> bool {
        self.store && self.inbox && self.backplane
    }
}

/// The node's readiness: its phase and its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub phase: Phase,
    pub backends: Backends,
}

impl Readiness {
    /// Ready: the phase is `Ready` and every backend answers.
    pub fn ready(&self) -> bool {
        self.phase == Phase::Ready && self.backends.all_up()
    }
}

impl AppState {
    /// Pings the store, the inbox and the backplane at once (each within 2 s) and refreshes
    /// `backend_up`.
    pub async fn check_backends(&self) -> Backends {
        let (store, inbox, backplane) = tokio::join!(
            tokio::time::timeout(PING_TIMEOUT, self.store.ping()),
            tokio::time::timeout(PING_TIMEOUT, self.inbox.ping()),
            tokio::time::timeout(PING_TIMEOUT, self.hub.backplane().ping()),
        );
        let backends = Backends {
            store: matches!(store, Ok(Ok(()))),
            inbox: matches!(inbox, Ok(Ok(()))),
            backplane: matches!(backplane, Ok(Ok(()))),
        };
        for (name, up) in backends.by_name() {
            self.metrics.backend_up.with_label_values(&[name]).set(i64::from(up));
        }
        backends
    }

    /// The phase and the backends (checked now, which refreshes `backend_up`).
    pub async fn readiness(&self) -> Readiness {
        let backends = self.check_backends().await;
        Readiness { phase: self.lifecycle.phase(), backends }
    }
}
