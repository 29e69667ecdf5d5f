//! One WebSocket session: a reader task and a writer (this task).
//!
//! The reader owns the read half and is the only caller of `read_frame`, which is not
//! cancel-safe: it is never raced in a `select!`. Its heartbeat timeout wraps `read_frame`,
//! but when that timer fires the session ends, so the interrupted read is never polled again.
//! It turns client frames into [`Control`] items for the writer and hands acks to the inbox
//! remover directly.
//!
//! The writer owns the write half and follows DESIGN §4 on connect: register with the hub,
//! subscribe the user's groups and wait for confirmation, say `hello`, replay the inbox in id
//! order, then go live, dropping any live message whose id it already wrote.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::coalesce::Coalesce;
use super::protocol::{self, ClientFrame, close};
use crate::app::AppState;
use crate::hub::{Delivery, Outbound, SessionHandle};
use crate::model::{MessageId, UserId, now_us};

type Io = TokioIo<Upgraded>;

/// Queued items handled per write before a flush.
const BATCH: usize = 64;

/// What the reader asks the writer to do.
enum Control {
    HeartbeatAck,
    Pong(Vec<u8>),
    /// The peer sent a close frame: echo it (payload ready-made) and finish.
    CloseEcho(Vec<u8>),
    /// Close with this code (protocol violation, too large, heartbeat timeout).
    Close(u16),
    /// The connection dropped without a close frame.
    Gone,
}

/// Ids recently written to this session, to drop duplicates (replay overlapping live,
/// resync replays, republished retries). Allocates only once messages flow.
#[derive(Default)]
struct Recent {
    ids: VecDeque<MessageId>,
}

impl Recent {
    const CAP: usize = 1024;

    /// Records `id`; false if it was already written.
    fn insert(&mut self, id: MessageId) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        if self.ids.len() == Self::CAP {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
        true
    }
}

/// Runs a session on an upgraded connection until it closes.
pub async fn run(state: Arc<AppState>, ws: WebSocket<Io>, user_id: UserId, ack_mode: bool) {
    let (read, write) = ws.split(|io| {
        let (read, write) = tokio::io::split(io);
        (read, Coalesce::new(write))
    });
    let (handle, queue) = SessionHandle::new(state.hub.next_session_id(), user_id, state.config.session_queue);
    let metrics = &state.metrics;
    metrics.ws_connects.inc();
    metrics.ws_connections.inc();
    tracing::info!(session = handle.id, user_id, node = %state.node, "session connected");

    let acking = Arc::new(AtomicBool::new(ack_mode));
    let (control_tx, control_rx) = mpsc::channel(32);
    let (live_tx, live) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_loop(read, control_tx, live, state.clone(), user_id, acking.clone()));
    let mut writer = Writer {
        ws: write,
        recent: Recent::default(),
        unflushed: Vec::new(),
        state: state.clone(),
        handle: handle.clone(),
        acking,
        live: Some(live_tx),
    };
    let reason = writer.run(queue, control_rx).await;
    // The reader may sit in read_frame; the session is over, so it is dropped mid-read and
    // never polled again.
    reader.abort();
    state.hub.detach(&handle);
    metrics.ws_connections.dec();
    if state.lifecycle.is_draining() {
        metrics.drain_sessions_remaining.set(state.hub.session_count() as i64);
    }
    metrics.ws_disconnects.with_label_values(&[reason]).inc();
    tracing::info!(session = handle.id, user_id, reason, node = %state.node, "session disconnected");
}

struct Writer {
    ws: WebSocketWrite<Coalesce<WriteHalf<Io>>>,
    recent: Recent,
    /// Messages in the write buffer whose inbox entries go once a flush succeeds
    /// (non-acking clients only).
    unflushed: Vec<MessageId>,
    /// Fired once `hello` is out: the client's heartbeat clock starts there, so a slow
    /// session setup (a storm, a slow backend) is not mistaken for a silent client.
    live: Option<tokio::sync::oneshot::Sender<()>>,
    state: Arc<AppState>,
    handle: Arc<SessionHandle>,
    acking: Arc<AtomicBool>,
}

impl Writer {
    /// Returns the disconnect reason label.
    async fn run(&mut self, mut queue: mpsc::Receiver<Outbound>, mut control: mpsc::Receiver<Control>) -> &'static str {
        match self.start().await {
            Ok(true) => {}
            Ok(false) => return self.close_requested(&mut control).await,
            Err(_) => return "error",
        }
        loop {
            // All three branches are cancel-safe (token, mpsc receivers); writes happen in
            // the branch bodies, never inside the select.
            let step = tokio::select! {
                biased;
                () = self.handle.closed() => return self.close_requested(&mut control).await,
                c = control.recv() => self.control(c.unwrap_or(Control::Gone)).await,
                item = queue.recv() => match item {
                    Some(item) => self.outbound_batch(item, &mut queue).await.map(|()| None),
                    None => Ok(Some("error")),
                },
            };
            let step = match step {
                Ok(None) => self.flush().await.map(|()| None),
                other => other,
            };
            match step {
                Ok(None) => {}
                Ok(Some(reason)) => return reason,
                // A failed write: the peer is gone, or stuck after we asked it to close.
                Err(_) => return self.handle.close_code().map_or("client_gone", close::reason),
            }
        }
    }

    /// Hello, hub registration, group subscriptions, inbox replay. Ok(false) if the session
    /// was asked to close meanwhile.
    async fn start(&mut self) -> Result<bool, WebSocketError> {
        self.state.hub.attach(&self.handle).await;
        let groups = match self.state.store.user_group_ids(self.handle.user_id).await {
            Ok(groups) => groups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load groups; closing session");
                self.handle.close(close::INTERNAL);
                return Ok(false);
            }
        };
        self.state.hub.join(&self.handle, &groups).await;
        if self.handle.is_closed() {
            return Ok(false);
        }
        // `hello` goes out once the session is live: every message published after the
        // client sees it reaches this socket, whatever other sessions of the user do.
        let cfg = &self.state.config;
        let hello =
            protocol::hello(self.handle.id, &self.state.node, cfg.heartbeat_interval_ms, cfg.heartbeat_timeout_ms);
        self.send(&hello).await?;
        if let Some(live) = self.live.take() {
            let _ = live.send(());
        }
        self.replay().await?;
        self.flush().await?;
        Ok(!self.handle.is_closed())
    }

    /// Writes pending inbox entries not yet written in this session, in id order.
    async fn replay(&mut self) -> Result<(), WebSocketError> {
        let user = self.handle.user_id;
        let pending = match self.state.inbox.pending(user, self.state.config.replay_limit).await {
            Ok(p) => p,
            Err(e) => {
                // Without the inbox nothing can be promised; the client retries with backoff.
                tracing::warn!(error = %e, user_id = user, "inbox replay failed; closing session");
                self.handle.close(close::INTERNAL);
                return Ok(());
            }
        };
        if pending.len() >= self.state.config.replay_limit as usize {
            // More may be waiting; they come with the next replay or the history API.
            self.state.metrics.limit_rejections.with_label_values(&["replay"]).inc();
        }
        for m in pending {
            if self.recent.insert(m.message_id) {
                self.send(&m.frame()).await?;
                self.state.metrics.messages_delivered.with_label_values(&["replay"]).inc();
                self.written(m.message_id, m.sender_id);
            }
        }
        Ok(())
    }

    /// Handles `first` and whatever else is already queued (up to a bound), so a burst
    /// leaves in one write at the next flush.
    async fn outbound_batch(
        &mut self,
        first: Outbound,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), WebSocketError> {
        self.outbound(first).await?;
        for _ in 0..BATCH {
            match queue.try_recv() {
                Ok(item) => self.outbound(item).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn outbound(&mut self, item: Outbound) -> Result<(), WebSocketError> {
        match item {
            Outbound::Message(d) => self.deliver(&d).await,
            Outbound::Frame(frame) => self.send(&frame).await,
            Outbound::Replay => {
                // Group announcements made while the backplane was away were missed too:
                // pick up new groups before replaying.
                if let Ok(groups) = self.state.store.user_group_ids(self.handle.user_id).await {
                    self.state.hub.join(&self.handle, &groups).await;
                }
                self.replay().await
            }
        }
    }

    async fn deliver(&mut self, d: &Delivery) -> Result<(), WebSocketError> {
        if !self.recent.insert(d.message_id) {
            return Ok(());
        }
        self.send(&d.frame).await?;
        let m = &self.state.metrics;
        m.messages_delivered.with_label_values(&["live"]).inc();
        m.delivery_latency.observe((now_us() - d.accepted_us).max(0) as f64 / 1e6);
        tracing::debug!(
            message_id = d.message_id,
            group_id = d.group_id,
            user_id = self.handle.user_id,
            node = %self.state.node,
            "delivered"
        );
        self.written(d.message_id, d.sender_id);
        Ok(())
    }

    /// A frame went into the write buffer. For a client that never acks, the flush that
    /// hands it to the socket makes it delivered.
    fn written(&mut self, message_id: MessageId, sender_id: UserId) {
        if !self.acking.load(Ordering::Relaxed) && sender_id != self.handle.user_id {
            self.unflushed.push(message_id);
        }
    }

    async fn control(&mut self, c: Control) -> Result<Option<&'static str>, WebSocketError> {
        match c {
            Control::HeartbeatAck => self.send(protocol::HEARTBEAT_ACK).await.map(|()| None),
            Control::Pong(payload) => self.ws.write_frame(Frame::pong(Payload::Owned(payload))).await.map(|()| None),
            Control::CloseEcho(payload) => {
                let echo = async {
                    self.ws.write_frame(Frame::close_raw(Payload::Owned(payload))).await?;
                    self.ws.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), echo).await;
                Ok(Some("client_close"))
            }
            Control::Close(code) => {
                self.write_close(code).await;
                Ok(Some(close::reason(code)))
            }
            Control::Gone => Ok(Some("client_gone")),
        }
    }

    /// The hub or the lifecycle asked this session to close. A drain (1001) says goodbye and
    /// then waits for the client's close reply, so the client leaves on its own terms; one
    /// that ignores the close stays until the drain deadline cuts it (the enforced TTL).
    async fn close_requested(&mut self, control: &mut mpsc::Receiver<Control>) -> &'static str {
        let code = self.handle.close_code().unwrap_or(close::GOING_AWAY);
        if code == close::GOING_AWAY {
            let _ = self.send(protocol::GOODBYE_DRAINING).await;
        }
        self.write_close(code).await;
        if code == close::GOING_AWAY {
            let cut = self.state.lifecycle.cut_token();
            let answered = async {
                while let Some(c) = control.recv().await {
                    if matches!(c, Control::CloseEcho(_) | Control::Close(_) | Control::Gone) {
                        return;
                    }
                }
            };
            tokio::select! {
                () = answered => {}
                () = cut.cancelled() => return "drain_timeout",
            }
        }
        close::reason(code)
    }

    async fn write_close(&mut self, code: u16) {
        let reason: &[u8] = match code {
            close::GOING_AWAY => b"going away",
            close::HEARTBEAT_TIMEOUT => b"heartbeat timeout",
            close::SLOW_CONSUMER => b"slow consumer",
            close::TOO_LARGE => b"frame too large",
            close::POLICY => b"protocol violation",
            _ => b"",
        };
        // Bounded, in case the peer stopped reading: a close must not hang the drain.
        let write = async {
            self.ws.write_frame(Frame::close(code, reason)).await?;
            self.ws.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }

    /// Queues a text frame in the write buffer (bounded by the write timeout, in case the
    /// buffer is full and must go out first).
    async fn send(&mut self, payload: &[u8]) -> Result<(), WebSocketError> {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.ws.write_frame(Frame::text(Payload::Borrowed(payload)))).await {
            Ok(res) => res,
            Err(_) => Err(WebSocketError::IoError(std::io::ErrorKind::TimedOut.into())),
        }
    }

    /// Sends the buffered frames, bounded by the write timeout: a client that stopped
    /// reading must not pin its session.
    async fn flush(&mut self) -> Result<(), WebSocketError> {
        match tokio::time::timeout(self.write_timeout(), self.ws.flush()).await {
            Ok(res) => res?,
            Err(_) => return Err(WebSocketError::IoError(std::io::ErrorKind::TimedOut.into())),
        }
        for id in self.unflushed.drain(..) {
            self.state.remover.remove(self.handle.user_id, id);
        }
        Ok(())
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.state.config.write_timeout_ms)
    }
}

async fn read_loop(
    mut ws: WebSocketRead<ReadHalf<Io>>,
    control: mpsc::Sender<Control>,
    live: tokio::sync::oneshot::Receiver<()>,
    state: Arc<AppState>,
    user_id: UserId,
    acking: Arc<AtomicBool>,
) {
    // Nothing is read before `hello`; early frames wait in the socket. If the writer gives
    // up before hello, the session is ending anyway.
    if live.await.is_err() {
        return;
    }
    ws.set_auto_pong(false);
    // fastwebsockets refuses payloads >= its limit; ours is the largest payload allowed.
    ws.set_max_message_size(state.config.max_frame_bytes + 1);
    let timeout = state.config.heartbeat_timeout();
    let max = state.config.max_frame_bytes;
    // Obligated sends of the frame reader: the echo of a peer's close frame.
    let mut obligated = |frame: Frame<'_>| {
        let control = control.clone();
        let item =
            if frame.opcode == OpCode::Close { Control::CloseEcho(frame.payload.to_vec()) } else { Control::Gone };
        async move { control.send(item).await.map_err(|_| "session closed") }
    };
    let mut fragments: Option<Vec<u8>> = None;
    let outcome = loop {
        let frame = match tokio::time::timeout(timeout, ws.read_frame(&mut obligated)).await {
            Err(_) => {
                state.metrics.heartbeat_timeouts.inc();
                break Control::Close(close::HEARTBEAT_TIMEOUT);
            }
            Ok(Err(WebSocketError::FrameTooLarge)) => {
                state.metrics.limit_rejections.with_label_values(&["ws_frame_size"]).inc();
                break Control::Close(close::TOO_LARGE);
            }
            Ok(Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_))) => {
                break Control::Gone;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, user_id, "bad frame");
                break Control::Close(close::POLICY);
            }
            Ok(Ok(frame)) => frame,
        };
        let text = match (frame.opcode, frame.fin) {
            (OpCode::Close, _) => return, // the echo already went out through `obligated`
            (OpCode::Ping, _) => {
                if control.send(Control::Pong(frame.payload.to_vec())).await.is_err() {
                    return;
                }
                continue;
            }
            (OpCode::Pong, _) => continue,
            (OpCode::Binary, _) => break Control::Close(close::POLICY),
            (OpCode::Text, true) if fragments.is_none() => frame.payload.to_vec(),
            (OpCode::Text, false) if fragments.is_none() => {
                fragments = Some(frame.payload.to_vec());
                continue;
            }
            (OpCode::Continuation, fin) => {
                let Some(buf) = fragments.as_mut() else {
                    break Control::Close(close::POLICY);
                };
                buf.extend_from_slice(&frame.payload);
                if buf.len() > max {
                    state.metrics.limit_rejections.with_label_values(&["ws_frame_size"]).inc();
                    break Control::Close(close::TOO_LARGE);
                }
                if !fin {
                    continue;
                }
                fragments.take().unwrap_or_default()
            }
            _ => break Control::Close(close::POLICY),
        };
        let Ok(text) = std::str::from_utf8(&text) else {
            break Control::Close(close::POLICY);
        };
        match protocol::parse_client_text(text) {
            Ok(ClientFrame::Heartbeat) => {
                if control.send(Control::HeartbeatAck).await.is_err() {
                    return;
                }
            }
            Ok(ClientFrame::Ack(ids)) => {
                acking.store(true, Ordering::Relaxed);
                for id in ids {
                    state.remover.remove(user_id, id);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, user_id, "protocol violation");
                break Control::Close(close::POLICY);
            }
        }
    };
    let _ = control.send(outcome).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_drops_repeats_and_forgets_the_oldest() {
        let mut r = Recent::default();
        assert!(r.insert(1));
        assert!(!r.insert(1));
        for id in 2..=(Recent::CAP as i64 + 1) {
            assert!(r.insert(id));
        }
        assert!(r.insert(1), "evicted after CAP newer ids");
    }
}
