//! NATS backplane (core NATS, no JetStream), on the `async-nats` client. docs/routing.md,
//! "The NATS transport", says the same for operators.
//!
//! **Subjects.** A channel is the subject `{prefix}group.{id}`, `{prefix}user.{id}`,
//! `{prefix}node.{incarnation}` or `{prefix}broadcast`. NATS separates a subject's tokens
//! with `.`, so `{prefix}group.>` matches every group of a deployment (handy with
//! `nats sub` while debugging). The prefix is used as given: `chat.` gives `chat.group.7`,
//! and the tests' `db_name:` gives `db_name:group.7` (`:` is a valid subject character).
//!
//! **Subscriptions.** One NATS subscription per wanted channel: the hub subscribes a channel
//! once per node, on its 0→1 edge, so this is exactly Redis's channel set. Each
//! subscription's stream is tagged with its channel and merged into one `SelectAll` drained
//! by the subscriber task; wake-ups are per subscription, so thousands of idle ones cost
//! nothing. Unsubscribing aborts that stream (nothing more is delivered from it) and drops
//! it, which sends the UNSUB. A wildcard would not do for `group` mode (it would be
//! `broadcast`); `node` and `broadcast` mode hold one subscription anyway.
//!
//! **Confirmation is an echo.** `async_nats::Client::flush` only writes the socket; it does
//! not wait for the server. The server handles one connection's protocol in order, so the
//! node keeps a subscription on a private inbox subject, and a *probe* (a publish there
//! carrying a token) is confirmed when it comes back: the server has then processed
//! everything the connection sent before it (SUB, UNSUB, PUB). A barrier is a probe after
//! the pending subscriptions; a publish is the whole batch, then one probe: one round trip.
//!
//! **Reconnects are resyncs.** async-nats reconnects by itself, to any server of the URL
//! list or of the cluster's advertised ones, and subscribes its live subscriptions again;
//! but what was published while the node was away is lost for it. So the gap is treated
//! like a Redis outage: on each `Connected` event the subscriber task subscribes what was
//! wanted meanwhile, confirms it all with a probe, and only then sends `Resynced`, so every
//! session catches up from the store (after the first connect too: sessions that arrived
//! before it were released without a subscription). A `Disconnected` event fails every
//! probe in flight: barriers are released (a `Resynced` follows) and publishes fail (the
//! commit path retries once). A publish waits up to [`RECONNECT_GRACE`] for the client to
//! be back (a failover to another server takes milliseconds) and fails at once when the
//! node has been disconnected longer, so sends are still accepted during a NATS outage. A
//! probe unanswered for [`IO_TIMEOUT`] (a half-open socket) forces a reconnect. A slow
//! consumer (async-nats dropped messages because the hub fell behind) is a gap too, and
//! also answered with `Resynced`.
//!
//! **Cluster propagation.** A subscription confirmed by the node's server reaches the
//! cluster's other servers on its own (route interest propagation): a publish made on
//! another server before that misses this node. The tests see that window right after a
//! reconnect (a publish made the instant `Resynced` arrived was lost about every other run).
//! So in a cluster, a barrier that covers new subscriptions and the `Resynced` after a
//! reconnect both wait [`PROPAGATION`] (50 ms) more after the echo. That is a margin, not
//! a confirmation (core NATS gives a client none); a message that still slips through is
//! read from the store when the session sees the hole at the group's next message.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{AbortHandle, Abortable, SelectAll, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wanted::{Command, Commands, Wanted};
use super::{Backplane, BackplaneError, Channel, Event, IO_TIMEOUT};
use crate::metrics::Metrics;

/// How often the client pings an idle connection (two unanswered pings drop it).
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a publish waits for a lost connection to come back before failing.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(1);
/// Time given to a cluster's other servers to learn of new subscriptions (route interest
/// travels on its own) before a barrier or `Resynced` says they are in place.
pub const PROPAGATION: Duration = Duration::from_millis(50);

/// Subject names: the configured prefix, then `group.{id}`, `user.{id}`, `node.{id}` or
/// `broadcast`.
#[derive(Clone)]
struct Subjects {
    prefix: Arc<str>,
}

impl Subjects {
    fn subject(&self, channel: Channel) -> String {
        let p = &self.prefix;
        match channel {
            Channel::Group(id) => format!("{p}group.{id}"),
            Channel::User(id) => format!("{p}user.{id}"),
            Channel::Node(id) => format!("{p}node.{id}"),
            Channel::Broadcast => format!("{p}broadcast"),
        }
    }
}

/// Whether the client is connected, or since when it is not.
#[derive(Clone, Copy)]
enum Link {
    Up,
    Down(Instant),
}

/// Probes in flight: token → who waits for its echo, and when it was sent. A waiter
/// whose sender is dropped unconfirmed knows the connection was lost.
#[derive(Default)]
struct Probes {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, (Instant, oneshot::Sender<()>)>>,
}

impl Probes {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, oneshot::Sender<()>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, done: oneshot::Sender<()>) -> u64 {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting().insert(token, (Instant::now(), done));
        token
    }

    fn confirm(&self, token: u64) {
        if let Some((_, done)) = self.waiting().remove(&token) {
            let _ = done.send(());
        }
    }

    fn forget(&self, token: u64) {
        self.waiting().remove(&token);
    }

    fn fail_all(&self) {
        self.waiting().clear();
    }

    /// Drops the probes older than [`IO_TIMEOUT`]; whether there were any.
    fn expire(&self) -> bool {
        let now = Instant::now();
        let mut waiting = self.waiting();
        let before = waiting.len();
        waiting.retain(|_, (at, _)| now.saturating_duration_since(*at) < IO_TIMEOUT);
        waiting.len() != before
    }
}

/// What the connection's event callback, the tasks and the callers share.
struct Shared {
    inbox: String,
    probes: Probes,
    link: watch::Sender<Link>,
}

impl Shared {
    /// Sends a probe; `done` is answered by its echo, or dropped if it cannot be.
    async fn probe(&self, client: &Client, done: oneshot::Sender<()>) {
        let token = self.probes.register(done);
        let sent = client.publish(self.inbox.clone(), Bytes::copy_from_slice(&token.to_be_bytes()));
        if !matches!(tokio::time::timeout(IO_TIMEOUT, sent).await, Ok(Ok(()))) {
            self.probes.forget(token);
        }
    }
}

pub struct NatsBackplane {
    subjects: Subjects,
    shared: Arc<Shared>,
    /// Set as soon as the client exists (right after `connect`), connected or not.
    client: Arc<OnceLock<Client>>,
    metrics: Arc<Metrics>,
    commands: Commands,
    stop: CancellationToken,
}

impl NatsBackplane {
    /// Starts a client on the cluster's server URLs (`nats://host:port`, or `tls://`) and
    /// its subscriber task. Does not wait for NATS: a node can start while it is down and
    /// catches up (`Resynced`) when it comes. `prefix` namespaces every subject, so
    /// deployments sharing a cluster stay apart. `ca_file` is trusted besides the system
    /// roots for `tls://`.
    pub fn connect(
        urls: &[String],
        prefix: &str,
        ca_file: Option<&Path>,
        events: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackplaneError> {
        let servers = urls
            .iter()
            .map(|u| u.parse::<ServerAddr>().map_err(|e| BackplaneError::Nats(format!("{u}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(BackplaneError::Nats("no server URL".into()));
        }
        let inbox = format!("_INBOX.switchboard.{:016x}", rand::RngExt::random::<u64>(&mut rand::rng()));
        let (link, _) = watch::channel(Link::Down(Instant::now()));
        let shared = Arc::new(Shared { inbox, probes: Probes::default(), link });
        let (connection_tx, connection_rx) = mpsc::unbounded_channel();
        let mut options = ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(IO_TIMEOUT)
            .ping_interval(PING_EVERY)
            .name("switchboard")
            .event_callback({
                let shared = shared.clone();
                move |event| {
                    on_event(&shared, &connection_tx, event);
                    std::future::ready(())
                }
            });
        if let Some(path) = ca_file {
            options = options.add_root_certificates(path.to_path_buf());
        }
        let (commands, rx) = Commands::channel();
        let stop = CancellationToken::new();
        let subjects = Subjects { prefix: prefix.into() };
        let client = Arc::new(OnceLock::new());
        let start = Start {
            servers,
            options,
            shared: shared.clone(),
            subjects: subjects.clone(),
            client: client.clone(),
            events,
            metrics: metrics.clone(),
        };
        tokio::spawn(start.run(rx, connection_rx, stop.clone()));
        Ok(Self { subjects, shared, client, metrics, commands, stop })
    }

    /// The client once it is connected; waits up to [`RECONNECT_GRACE`] after the
    /// connection was lost, and fails at once after that.
    async fn ready(&self) -> Result<&Client, BackplaneError> {
        let mut link = self.shared.link.subscribe();
        loop {
            let deadline = match *link.borrow_and_update() {
                Link::Up => break,
                Link::Down(since) => since + RECONNECT_GRACE,
            };
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BackplaneError::NotConnected),
                Err(_) => return Err(BackplaneError::Nats("not connected".into())),
            }
        }
        self.client.get().ok_or(BackplaneError::NotConnected)
    }

    /// A probe round trip: everything this client sent before is processed by the server.
    async fn confirmed(&self, client: &Client) -> Result<(), BackplaneError> {
        let (done, echo) = oneshot::channel();
        self.shared.probe(client, done).await;
        echo.await.map_err(|_| BackplaneError::Nats("connection lost before the server confirmed".into()))
    }
}

impl Drop for NatsBackplane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The client's connection events, as they happen (async-nats calls this in order).
fn on_event(shared: &Shared, to_task: &mpsc::UnboundedSender<async_nats::Event>, event: async_nats::Event) {
    use async_nats::Event as E;
    match &event {
        E::Connected => {
            shared.link.send_replace(Link::Up);
        }
        E::Disconnected => {
            shared.link.send_replace(Link::Down(Instant::now()));
            shared.probes.fail_all();
        }
        E::SlowConsumer(sid) => tracing::warn!(sid, "nats dropped messages for a slow subscriber; resyncing"),
        E::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
        E::ClientError(e) => tracing::warn!(error = %e, "nats client error"),
        E::LameDuckMode => tracing::info!("nats server entering lame duck mode; the client will move"),
        E::Draining | E::Closed => {}
    }
    if matches!(event, E::Connected | E::Disconnected | E::SlowConsumer(_)) {
        let _ = to_task.send(event);
    }
}

#[async_trait]
impl Backplane for NatsBackplane {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        let client = self.ready().await?;
        let sent = async {
            for (channel, payload) in messages {
                let subject = self.subjects.subject(*channel);
                client.publish(subject, payload.clone()).await.map_err(|e| BackplaneError::Nats(e.to_string()))?;
            }
            self.confirmed(client).await
        };
        tokio::time::timeout(IO_TIMEOUT, sent).await.unwrap_or(Err(BackplaneError::Timeout))?;
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
        let client = self.ready().await?;
        tokio::time::timeout(IO_TIMEOUT, self.confirmed(client)).await.unwrap_or(Err(BackplaneError::Timeout))
    }
}

/// What the background task needs to create the client (an async call) and run.
struct Start {
    servers: Vec<ServerAddr>,
    options: ConnectOptions,
    shared: Arc<Shared>,
    subjects: Subjects,
    client: Arc<OnceLock<Client>>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl Start {
    async fn run(
        self,
        commands: mpsc::UnboundedReceiver<Command>,
        connection: mpsc::UnboundedReceiver<async_nats::Event>,
        stop: CancellationToken,
    ) {
        // With retry_on_initial_connect this returns at once; the client connects behind.
        let client = match self.options.connect(self.servers).await {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "nats client could not start");
                return;
            }
        };
        // Subscribed before any probe can be sent; async-nats resubscribes it on reconnect.
        let inbox = match client.subscribe(self.shared.inbox.clone()).await {
            Ok(inbox) => inbox,
            Err(e) => {
                tracing::error!(error = %e, "nats inbox subscription failed");
                return;
            }
        };
        let _ = self.client.set(client.clone());
        self.metrics.backend_up.with_label_values(&["backplane"]).set(0);
        tokio::spawn(echoes(self.shared.clone(), client.clone(), inbox, stop.clone()));
        let subscriber = Subscriber {
            client,
            shared: self.shared,
            subjects: self.subjects,
            events: self.events,
            metrics: self.metrics,
            wanted: Wanted::default(),
            active: HashMap::new(),
            streams: SelectAll::new(),
            touched: Vec::new(),
            subscribed: false,
            online: false,
            connected_before: false,
        };
        subscriber.run(commands, connection, stop).await;
    }
}

/// Resolves probes as their echoes come back, and forces a reconnect when one is overdue.
async fn echoes(shared: Arc<Shared>, client: Client, mut inbox: async_nats::Subscriber, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(IO_TIMEOUT / 4);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            msg = inbox.next() => {
                let Some(msg) = msg else { return };
                if let Ok(token) = <[u8; 8]>::try_from(msg.payload.as_ref()) {
                    shared.probes.confirm(u64::from_be_bytes(token));
                }
            }
            _ = sweep.tick() => {
                if shared.probes.expire() && matches!(*shared.link.borrow(), Link::Up) {
                    tracing::warn!("nats server did not answer a probe in time; reconnecting");
                    let _ = client.force_reconnect().await;
                }
            }
        }
    }
}

/// One subscription's messages, tagged with its channel.
type Tagged = Pin<Box<dyn Stream<Item = (Channel, Bytes)> + Send>>;

struct Subscriber {
    client: Client,
    shared: Arc<Shared>,
    subjects: Subjects,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    /// Every channel this node wants, whether or not the server has it.
    wanted: Wanted,
    /// The channels with a client subscription, and how to stop each.
    active: HashMap<Channel, AbortHandle>,
    streams: SelectAll<Tagged>,
    /// Channels whose wish changed since `active` was last brought in line.
    touched: Vec<Channel>,
    /// A subscription was sent since the last barrier.
    subscribed: bool,
    /// Connected, and everything wanted confirmed once since.
    online: bool,
    connected_before: bool,
}

impl Subscriber {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut connection: mpsc::UnboundedReceiver<async_nats::Event>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    self.apply(batch).await;
                }
                Some((channel, payload)) = self.streams.next(), if !self.streams.is_empty() => {
                    self.metrics.backplane_received.inc();
                    if self.events.send(Event::Payload { channel, payload }).await.is_err() {
                        return;
                    }
                }
                event = connection.recv() => {
                    let Some(event) = event else { return };
                    if !self.on_connection(event).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies commands in order; a barrier is a probe sent after every subscription
    /// enqueued before it, answered by its echo (or released when the connection is lost).
    async fn apply(&mut self, batch: Vec<Command>) {
        for cmd in batch {
            if !self.online {
                self.wanted.apply_offline(cmd);
                continue;
            }
            match self.wanted.apply(cmd) {
                Ok((channel, true)) => self.touched.push(channel),
                Ok((_, false)) => {}
                Err(done) => {
                    self.sync().await;
                    self.barrier(done).await;
                }
            }
        }
        self.sync().await;
        self.metrics.backplane_subscriptions.set(self.wanted.len() as i64);
    }

    /// A probe after everything sent so far; in a cluster, after new subscriptions, also
    /// [`PROPAGATION`] for the other servers to learn of them.
    async fn barrier(&mut self, done: oneshot::Sender<()>) {
        if !std::mem::take(&mut self.subscribed) || !self.clustered() {
            return self.shared.probe(&self.client, done).await;
        }
        let (confirmed, echo) = oneshot::channel();
        self.shared.probe(&self.client, confirmed).await;
        tokio::spawn(async move {
            if echo.await.is_ok() {
                tokio::time::sleep(PROPAGATION).await;
            }
            let _ = done.send(());
        });
    }

    /// Whether the server is one of a cluster (whose other servers learn late of a SUB).
    fn clustered(&self) -> bool {
        let info = self.client.server_info();
        info.cluster.is_some() || !info.connect_urls.is_empty()
    }

    /// Brings the client's subscriptions of the touched channels in line with the wish.
    async fn sync(&mut self) {
        for channel in std::mem::take(&mut self.touched) {
            match (self.wanted.contains(&channel), self.active.contains_key(&channel)) {
                (true, false) => self.start(channel).await,
                (false, true) => {
                    if let Some(handle) = self.active.remove(&channel) {
                        handle.abort();
                    }
                }
                _ => {}
            }
        }
    }

    async fn start(&mut self, channel: Channel) {
        let subject = self.subjects.subject(channel);
        match tokio::time::timeout(IO_TIMEOUT, self.client.subscribe(subject)).await {
            Ok(Ok(subscription)) => {
                let (handle, registration) = AbortHandle::new_pair();
                let tagged = Abortable::new(subscription, registration).map(move |m| (channel, m.payload));
                self.streams.push(Box::pin(tagged));
                self.active.insert(channel, handle);
                self.subscribed = true;
            }
            // Still wanted: the next reconnect subscribes it.
            Ok(Err(e)) => tracing::warn!(error = %e, %channel, "nats subscribe failed"),
            Err(_) => tracing::warn!(%channel, "nats subscribe timed out"),
        }
    }

    /// Follows the connection; `false` once the hub is gone.
    async fn on_connection(&mut self, event: async_nats::Event) -> bool {
        match event {
            async_nats::Event::Disconnected => {
                if self.online {
                    tracing::warn!("nats connection lost; reconnecting");
                }
                self.online = false;
                self.metrics.backend_up.with_label_values(&["backplane"]).set(0);
                true
            }
            async_nats::Event::Connected => self.resubscribe().await,
            // Messages were dropped: the same gap as an outage.
            _ => self.events.send(Event::Resynced).await.is_ok(),
        }
    }

    /// After a (re)connect: subscribes what was wanted meanwhile (async-nats resubscribed
    /// the rest), stops what no longer is, confirms it all, then `Resynced`.
    async fn resubscribe(&mut self) -> bool {
        let stale = self.active.keys().filter(|c| !self.wanted.contains(c));
        let missing = self.wanted.iter().filter(|c| !self.active.contains_key(c));
        let touched: Vec<Channel> = stale.copied().chain(missing).collect();
        self.touched.extend(touched);
        self.sync().await;
        let (done, echo) = oneshot::channel();
        self.shared.probe(&self.client, done).await;
        if !matches!(tokio::time::timeout(IO_TIMEOUT, echo).await, Ok(Ok(()))) {
            // Lost again, or unanswered (which forces a reconnect): the next connect retries.
            tracing::warn!("nats resubscription not confirmed; waiting for the next connect");
            return true;
        }
        if self.clustered() {
            // The cluster's other servers learn of the subscriptions on their own: a
            // catch-up that read the store before they did could miss what they routed
            // past this node meanwhile.
            tokio::time::sleep(PROPAGATION).await;
        }
        self.subscribed = false;
        self.online = true;
        self.metrics.backend_up.with_label_values(&["backplane"]).set(1);
        self.metrics.backplane_subscriptions.set(self.wanted.len() as i64);
        let server = self.client.server_info();
        if self.connected_before {
            self.metrics.backplane_reconnects.inc();
            tracing::info!(server = %server.server_name, port = server.port, channels = self.wanted.len(), "nats reconnected and resubscribed");
        }
        self.connected_before = true;
        self.events.send(Event::Resynced).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_use_dots_after_the_prefix() {
        let s = Subjects { prefix: "chat.".into() };
        assert_eq!(s.subject(Channel::Group(7)), "chat.group.7");
        assert_eq!(s.subject(Channel::User(3)), "chat.user.3");
        assert_eq!(s.subject(Channel::Node(9)), "chat.node.9");
        assert_eq!(s.subject(Channel::Broadcast), "chat.broadcast");
        let s = Subjects { prefix: "db_1:".into() };
        assert_eq!(s.subject(Channel::Group(7)), "db_1:group.7");
    }

    #[test]
    fn probes_are_confirmed_once_and_failed_on_disconnect() {
        let probes = Probes::default();
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        let ta = probes.register(a);
        let _tb = probes.register(b);
        probes.confirm(ta);
        probes.confirm(ta);
        assert_eq!(a_rx.try_recv(), Ok(()));
        probes.fail_all();
        assert!(b_rx.try_recv().is_err(), "a failed probe is not confirmed");
        assert!(!probes.expire());
    }
}
