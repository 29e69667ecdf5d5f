//! Redis pub/sub backplane. Publishes go through a `ConnectionManager` (multiplexed, it
//! reconnects by itself). Subscriptions live on one dedicated pub/sub connection owned by a
//! task that keeps the wanted channel set, applies subscribe/unsubscribe commands in order,
//! and after a lost connection reconnects with backoff, subscribes the whole set again and
//! emits [`Event::Resynced`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::wanted::{Command, Commands, Wanted};
use super::{Backplane, BackplaneError, Channel, Event, IO_TIMEOUT};
use crate::metrics::Metrics;

/// Most channels named by one SUBSCRIBE.
const SUBSCRIBE_CHUNK: usize = 1000;
/// How often an idle pub/sub connection is pinged to notice a half-open socket.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Channel names on Redis: the configured prefix, then `group:{id}` or `user:{id}`.
#[derive(Clone)]
struct Names {
    prefix: Arc<str>,
}

impl Names {
    fn name(&self, channel: Channel) -> String {
        format!("{}{channel}", self.prefix)
    }

    fn parse(&self, name: &str) -> Option<Channel> {
        Channel::parse(name.strip_prefix(&*self.prefix)?)
    }
}

pub struct RedisBackplane {
    names: Names,
    metrics: Arc<Metrics>,
    publisher: ConnectionManager,
    commands: Commands,
    stop: CancellationToken,
}

impl RedisBackplane {
    /// Starts the subscriber task on a client built from the URL (with its TLS trust). Does not wait for Redis: a node can
    /// start while Redis is down and catches up (Resynced) when it returns.
    /// `prefix` namespaces every channel name, so deployments sharing one Redis stay apart.
    pub fn connect(
        client: redis::Client,
        prefix: &str,
        events: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackplaneError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let (commands, rx) = Commands::channel();
        let stop = CancellationToken::new();
        let names = Names { prefix: prefix.into() };
        let subscriber =
            Subscriber { client, names: names.clone(), events, metrics: metrics.clone(), wanted: Wanted::default() };
        tokio::spawn(subscriber.run(rx, stop.clone()));
        Ok(Self { names, metrics, publisher, commands, stop })
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, messages: &[(Channel, Bytes)]) -> Result<(), BackplaneError> {
        let mut conn = self.publisher.clone();
        let mut pipe = redis::pipe();
        for (channel, payload) in messages {
            pipe.cmd("PUBLISH").arg(self.names.name(*channel)).arg(payload.as_ref()).ignore();
        }
        match tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(res) => {
                res?;
                self.metrics.backplane_published.inc_by(messages.len() as u64);
                Ok(())
            }
            Err(_) => Err(BackplaneError::Timeout),
        }
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
        ping(&mut self.publisher.clone()).await
    }
}

struct Subscriber {
    client: redis::Client,
    names: Names,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    /// Every channel this node wants, whether or not Redis currently has it.
    wanted: Wanted,
}

impl Subscriber {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, stop: CancellationToken) {
        let mut failures = 0;
        let mut connected_before = false;
        loop {
            // Connect, applying commands meanwhile so callers never wait on a dead Redis.
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                res = tokio::time::timeout(IO_TIMEOUT, self.client.get_async_pubsub()) => res,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(Ok(p)) => p.split(),
                failed => {
                    let backoff = RECONNECT.delay(failures);
                    if let Ok(Err(e)) = failed {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis pub/sub connect failed");
                    }
                    self.metrics.backend_up.with_label_values(&["backplane"]).set(0);
                    let deadline = tokio::time::sleep(backoff);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            () = &mut deadline => break,
                            () = stop.cancelled() => return,
                            cmd = commands.recv() => match cmd {
                                Some(cmd) => self.wanted.apply_offline(cmd),
                                None => return,
                            },
                        }
                    }
                    failures += 1;
                    continue;
                }
            };
            let all: Vec<String> = self.wanted.iter().map(|c| self.names.name(c)).collect();
            if !all.is_empty() && subscribe_all(&mut sink, &all).await.is_err() {
                continue;
            }
            failures = 0;
            self.metrics.backend_up.with_label_values(&["backplane"]).set(1);
            self.metrics.backplane_subscriptions.set(self.wanted.len() as i64);
            if connected_before {
                self.metrics.backplane_reconnects.inc();
                self.metrics.backplane_resubscribes.inc_by(all.len().div_ceil(SUBSCRIBE_CHUNK) as u64);
                tracing::info!(channels = all.len(), "redis pub/sub reconnected and resubscribed");
            }
            connected_before = true;
            // Also after the first connect: sessions that arrived before it were released
            // without a subscription, and must replay what was published meanwhile.
            if self.events.send(Event::Resynced).await.is_err() {
                return;
            }

            let mut ping = tokio::time::interval(PING_EVERY);
            ping.reset();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    msg = stream.next() => {
                        let Some(msg) = msg else { break };
                        let Some(channel) = self.names.parse(msg.get_channel_name()) else { continue };
                        self.metrics.backplane_received.inc();
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        if self.events.send(Event::Payload { channel, payload }).await.is_err() {
                            return;
                        }
                    }
                    cmd = commands.recv() => {
                        let Some(cmd) = cmd else { return };
                        let mut batch = vec![cmd];
                        while let Ok(more) = commands.try_recv() {
                            batch.push(more);
                        }
                        if self.apply_online(&mut sink, batch).await.is_err() {
                            break;
                        }
                    }
                    _ = ping.tick() => {
                        let alive = tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            self.metrics.backend_up.with_label_values(&["backplane"]).set(0);
        }
    }

    /// Applies a batch in order with one SUBSCRIBE and one UNSUBSCRIBE per run of commands.
    /// Barriers are released after everything before them is confirmed.
    async fn apply_online(&mut self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), ()> {
        let mut subs: Vec<String> = Vec::new();
        let mut unsubs: Vec<String> = Vec::new();
        let mut barriers = Vec::new();
        let mut failed = false;
        for cmd in batch {
            match self.wanted.apply(cmd) {
                Ok((c, changed)) => {
                    // The last wish for a channel wins within the batch.
                    let name = self.names.name(c);
                    let (to, from) =
                        if self.wanted.contains(&c) { (&mut subs, &mut unsubs) } else { (&mut unsubs, &mut subs) };
                    from.retain(|n| *n != name);
                    if changed {
                        to.push(name);
                    }
                }
                Err(done) => {
                    if !failed {
                        failed = self.flush(sink, &mut subs, &mut unsubs).await.is_err();
                    }
                    barriers.push(done);
                }
            }
        }
        if !failed {
            failed = self.flush(sink, &mut subs, &mut unsubs).await.is_err();
        }
        self.metrics.backplane_subscriptions.set(self.wanted.len() as i64);
        for done in barriers {
            let _ = done.send(());
        }
        if failed { Err(()) } else { Ok(()) }
    }

    async fn flush(&self, sink: &mut PubSubSink, subs: &mut Vec<String>, unsubs: &mut Vec<String>) -> Result<(), ()> {
        if !unsubs.is_empty() {
            let names = std::mem::take(unsubs);
            timed(sink.unsubscribe(&names)).await?;
        }
        if !subs.is_empty() {
            let names = std::mem::take(subs);
            subscribe_all(sink, &names).await?;
        }
        Ok(())
    }
}

async fn subscribe_all(sink: &mut PubSubSink, names: &[String]) -> Result<(), ()> {
    // Large sets go in slices so one command stays a reasonable size.
    for chunk in names.chunks(SUBSCRIBE_CHUNK) {
        timed(sink.subscribe(chunk)).await?;
    }
    Ok(())
}

async fn timed<F: std::future::Future<Output = redis::RedisResult<()>>>(f: F) -> Result<(), ()> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis subscription command failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}

/// Reconnect delay: 100 ms doubling to 5 s, plus up to 50% jitter so that a fleet does not
/// reconnect in lockstep.
const RECONNECT: crate::backoff::Backoff = crate::backoff::Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
    jitter: crate::backoff::Jitter::Percent(50),
};

/// `PING` on a Redis connection within [`IO_TIMEOUT`].
pub(super) async fn ping<C: redis::aio::ConnectionLike + Send>(conn: &mut C) -> Result<(), BackplaneError> {
    match tokio::time::timeout(IO_TIMEOUT, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(res) => res.map(|_| ()).map_err(Into::into),
        Err(_) => Err(BackplaneError::Timeout),
    }
}
