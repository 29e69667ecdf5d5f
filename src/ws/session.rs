//! One WebSocket session: a reader task and a writer (this task).
//!
//! The reader owns the read half and is the only caller of `read_frame`, which is not
//! cancel-safe: it is never raced in a `select!`. Its heartbeat timeout wraps `read_frame`,
//! but when that timer fires the session ends, so the interrupted read is never polled again.
//! It turns client frames into [`Control`] items for the writer.
//!
//! The writer owns the write half and follows the connect order of docs/delivery.md:
//! register with the hub, subscribe the user's groups and wait for confirmation, say
//! `hello`, catch up on every group whose log passed the user's position, then go live. Its
//! [`Cursors`] drop repeats, hold messages that arrive past a hole, and say which positions
//! to record once messages are delivered.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::coalesce::Coalesce;
use super::cursor::{Cursors, Offer};
use super::protocol::{self, ClientFrame, MAX_ACK_IDS, close};
use crate::app::AppState;
use crate::hub::{Delivery, Outbound, SessionHandle};
use crate::model::{GroupId, Message, MessageId, Seq, UserId, now_ms, now_us};

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
    /// The client acknowledged these messages.
    Ack(Vec<MessageId>),
    /// The connection dropped without a close frame.
    Gone,
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

    let (control_tx, control_rx) = mpsc::channel(32);
    let (live_tx, live) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_loop(read, control_tx, live, state.clone(), user_id));
    let mut writer = Writer {
        ws: write,
        cursors: Cursors::default(),
        state: state.clone(),
        handle: handle.clone(),
        acking: ack_mode,
        live: Some(live_tx),
    };
    let reason = writer.run(queue, control_rx).await;
    // The reader may sit in read_frame; the session is over, so it is dropped mid-read and
    // never polled again.
    reader.abort();
    state.hub.detach(&handle);
    // The client may reconnect at once, elsewhere: let it find its positions written.
    state.recorder.nudge();
    metrics.ws_connections.dec();
    if state.lifecycle.is_draining() {
        metrics.drain_sessions_remaining.set(state.hub.session_count() as i64);
    }
    metrics.ws_disconnects.with_label_values(&[reason]).inc();
    tracing::info!(session = handle.id, user_id, reason, node = %state.node, "session disconnected");
}

struct Writer {
    ws: WebSocketWrite<Coalesce<WriteHalf<Io>>>,
    cursors: Cursors,
    /// Fired once `hello` is out: the client's heartbeat clock starts there, so a slow
    /// session setup (a storm, a slow backend) is not mistaken for a silent client.
    live: Option<tokio::sync::oneshot::Sender<()>>,
    state: Arc<AppState>,
    handle: Arc<SessionHandle>,
    /// The client acknowledges messages (`?ack=1` or its first ack); stays so once set.
    acking: bool,
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
            let gap = self.cursors.gap_deadline();
            // Every branch is cancel-safe (token, mpsc receivers, a timer); writes happen in
            // the branch bodies, never inside the select.
            let step = tokio::select! {
                biased;
                () = self.handle.closed() => return self.close_requested(&mut control).await,
                c = control.recv() => self.control(c.unwrap_or(Control::Gone)).await,
                item = queue.recv() => match item {
                    Some(item) => self.outbound_batch(item, &mut queue).await.map(|()| None),
                    None => Ok(Some("error")),
                },
                () = tokio::time::sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => {
                    self.fill_holes().await.map(|()| None)
                }
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

    /// Hub registration, group subscriptions, hello, catch-up. Ok(false) if the session
    /// was asked to close meanwhile.
    async fn start(&mut self) -> Result<bool, WebSocketError> {
        self.state.hub.attach(&self.handle).await;
        let Some(heads) = self.subscribe_groups().await else { return Ok(false) };
        // Only a group with messages can have anything to catch up on.
        let positions = if heads.iter().any(|(_, head)| *head > 0) {
            match self.state.inbox.positions(self.handle.user_id).await {
                Ok(positions) => positions,
                Err(e) => return Ok(self.backend_failed("positions", &e)),
            }
        } else {
            Default::default()
        };
        for (g, _) in &heads {
            self.cursors.track(*g, positions.get(g).copied().unwrap_or(0));
        }
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
        let behind = self.cursors.behind(&heads);
        self.catch_up(behind).await?;
        self.flush().await?;
        Ok(!self.handle.is_closed())
    }

    /// Subscribes the user's groups, then reads their heads again: a message committed
    /// after that read is published after the subscription was confirmed, so it arrives
    /// live, and one committed before it is below the head the catch-up reads up to. A
    /// group that appeared in between is subscribed in turn.
    async fn subscribe_groups(&mut self) -> Option<Vec<(GroupId, Seq)>> {
        let mut joined: Vec<GroupId> = Vec::new();
        loop {
            let heads = self.heads().await?;
            let new: Vec<GroupId> = heads.iter().map(|(g, _)| *g).filter(|g| !joined.contains(g)).collect();
            if heads.is_empty() || (new.is_empty() && !joined.is_empty()) {
                return Some(heads);
            }
            self.state.hub.join(&self.handle, &new).await;
            joined.extend(new);
        }
    }

    /// The user's groups with their last sequence numbers; `None` (and a 1011 close) when
    /// the store cannot say.
    async fn heads(&mut self) -> Option<Vec<(GroupId, Seq)>> {
        match self.state.store.user_group_heads(self.handle.user_id).await {
            Ok(heads) => Some(heads),
            Err(e) => {
                self.backend_failed("groups", &e);
                None
            }
        }
    }

    /// Without its backends a session can promise nothing: close with 1011, the client
    /// retries with backoff. Returns false for `start`.
    fn backend_failed(&self, what: &str, e: &dyn std::fmt::Display) -> bool {
        tracing::warn!(error = %e, user_id = self.handle.user_id, what, "backend failed; closing session");
        self.handle.close(close::INTERNAL);
        false
    }

    /// Writes, in id order, every stored message of the given groups above the given
    /// sequence numbers (and within the catch-up window), page by page.
    async fn catch_up(&mut self, mut from: Vec<(GroupId, Seq)>) -> Result<(), WebSocketError> {
        let cfg = &self.state.config;
        let (limit, since) = (cfg.replay_limit, now_ms() - cfg.inbox_ttl as i64 * 1000);
        while !from.is_empty() {
            let page = match self.state.store.messages_after(&from, since, limit).await {
                Ok(page) => page,
                Err(e) => {
                    self.backend_failed("catch-up", &e);
                    return Ok(());
                }
            };
            for m in &page {
                if self.cursors.is_new(m.group_id, m.seq) {
                    self.write_stored(m).await?;
                }
            }
            for (g, _) in &from {
                self.write_held(*g).await?;
            }
            if page.len() < limit as usize {
                return Ok(());
            }
            from = self.cursors.behind(&from.iter().map(|(g, _)| (*g, Seq::MAX)).collect::<Vec<_>>());
        }
        Ok(())
    }

    /// Holes that did not fill by themselves: read them from the store. What the store
    /// does not have either has expired, and the held messages after it go out.
    async fn fill_holes(&mut self) -> Result<(), WebSocketError> {
        let overdue = self.cursors.overdue(Instant::now());
        if overdue.is_empty() {
            return Ok(());
        }
        self.state.metrics.gap_fetches.inc_by(overdue.len() as u64);
        let groups: Vec<GroupId> = overdue.iter().map(|(g, _)| *g).collect();
        self.catch_up(overdue).await?;
        if self.handle.is_closed() {
            return Ok(());
        }
        for g in groups {
            for d in self.cursors.skip_hole(g) {
                self.write_live(&d).await?;
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
            Outbound::Message(d) => match self.cursors.offer(&d, Instant::now()) {
                Offer::Write => {
                    self.write_live(&d).await?;
                    self.write_held(d.group_id).await
                }
                Offer::Repeat | Offer::Held => Ok(()),
            },
            Outbound::Joined { group_id, frame } => {
                self.send(&frame).await?;
                // A brand-new group: nothing of it was delivered to this user before.
                self.cursors.track(group_id, 0);
                let from = self.cursors.behind(&[(group_id, Seq::MAX)]);
                self.catch_up(from).await
            }
            Outbound::Resync => self.resync().await,
        }
    }

    /// After a backplane outage: pick up groups joined meanwhile (their announcements were
    /// lost too), then catch up on every group from where this session stands.
    async fn resync(&mut self) -> Result<(), WebSocketError> {
        let Some(heads) = self.subscribe_groups().await else { return Ok(()) };
        if heads.iter().any(|(g, _)| !self.cursors.is_tracked(*g)) {
            let positions = match self.state.inbox.positions(self.handle.user_id).await {
                Ok(p) => p,
                Err(e) => {
                    self.backend_failed("positions", &e);
                    return Ok(());
                }
            };
            for (g, _) in &heads {
                self.cursors.track(*g, positions.get(g).copied().unwrap_or(0));
            }
        }
        let behind = self.cursors.behind(&heads);
        self.catch_up(behind).await
    }

    /// Writes held messages of `group` that now follow what was written.
    async fn write_held(&mut self, group: GroupId) -> Result<(), WebSocketError> {
        while let Some(d) = self.cursors.next_held(group) {
            self.write_live(&d).await?;
        }
        Ok(())
    }

    async fn write_live(&mut self, d: &Delivery) -> Result<(), WebSocketError> {
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
        self.cursors.wrote(d.group_id, d.seq, d.message_id, self.acking);
        Ok(())
    }

    /// Writes a message read from the store. The user's own messages are passed over (the
    /// client that sent them has them; history has them for the others), as delivered.
    async fn write_stored(&mut self, m: &Message) -> Result<(), WebSocketError> {
        if m.sender_id == self.handle.user_id {
            self.cursors.wrote(m.group_id, m.seq, m.message_id, self.acking);
            if self.acking {
                // Delivered without a frame: as good as acknowledged.
                let moved = self.cursors.acked(&[m.message_id]);
                self.record(moved);
            }
            return Ok(());
        }
        self.send(&m.frame()).await?;
        self.state.metrics.messages_delivered.with_label_values(&["replay"]).inc();
        self.cursors.wrote(m.group_id, m.seq, m.message_id, self.acking);
        Ok(())
    }

    /// Records positions that moved.
    fn record(&self, moved: Vec<(GroupId, Seq)>) {
        for (g, seq) in moved {
            self.state.recorder.record(self.handle.user_id, g, seq);
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
            Control::Ack(ids) => {
                self.acking = true;
                let moved = self.cursors.acked(&ids);
                self.record(moved);
                if self.cursors.unacked() > MAX_ACK_IDS {
                    // A client that stopped acknowledging: it gets everything again from
                    // its position when it returns.
                    self.handle.close(close::SLOW_CONSUMER);
                }
                Ok(None)
            }
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
    /// reading must not pin its session. For a client that never acks, what a flush handed
    /// to the socket is delivered.
    async fn flush(&mut self) -> Result<(), WebSocketError> {
        match tokio::time::timeout(self.write_timeout(), self.ws.flush()).await {
            Ok(res) => res?,
            Err(_) => return Err(WebSocketError::IoError(std::io::ErrorKind::TimedOut.into())),
        }
        let moved = self.cursors.flushed();
        self.record(moved);
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
                if control.send(Control::Ack(ids)).await.is_err() {
                    return;
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
