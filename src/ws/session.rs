//! One WebSocket session, one task.
//!
//! The task follows the connect order of docs/delivery.md: register with the hub,
//! subscribe the user's groups and wait for confirmation, say `hello`, catch up on every
//! group whose log passed the user's position, then go live. Its [`Cursors`] drop repeats,
//! hold messages that arrive past a hole, and say which positions to record once messages
//! are delivered.
//!
//! Live, it waits on three cancel-safe things at once: its queue (which also carries close
//! requests), the socket becoming readable ([`FrameReader::readable`]) and its timers. A
//! frame is then read to completion outside the `select!`, because a frame read is not
//! cancel-safe; it is bounded by the heartbeat deadline, and when that fires the session
//! ends, so the interrupted read is never polled again. An idle session holds no read
//! buffer, no queue storage and no second task: see docs/benchmarks.md, "Memory per
//! connection".

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::coalesce::Coalesce;
use super::cursor::{Cursors, Offer};
use super::protocol::{self, ClientFrame, Disconnect, MAX_ACK_IDS, close};
use super::reader::{FrameReader, Incoming};
use crate::hub::{Delivery, Outbound, SessionHandle};
use crate::model::{GroupId, Message, Seq, UserId, now_ms, now_us};
use crate::reads::CatchUp;
use crate::state::AppState;

type Io = TokioIo<Upgraded>;

/// Queued items handled per write before a flush.
const BATCH: usize = 64;

/// What woke the live session.
enum Wake {
    Queue,
    Readable,
    Silent,
    Gap,
}

/// Runs a session on an upgraded connection until it closes.
pub async fn run(state: Arc<AppState>, ws: WebSocket<Io>, user_id: UserId, ack_mode: bool) {
    // The session reads through its own FrameReader, so fastwebsockets' reader (and its
    // 8 KiB buffer) is dropped here; only its writer is kept.
    let (read, write) = tokio::io::split(ws.into_inner());
    let (_, mut write) = fastwebsockets::after_handshake_split(tokio::io::empty(), Coalesce::new(write), Role::Server);
    // Every frame with a payload goes out as header + payload into the Coalesce buffer,
    // which is freed after each flush; below the threshold fastwebsockets would first copy
    // the frame into a staging vector that it keeps for the life of the connection.
    write.set_writev_threshold(0);
    let handle = SessionHandle::new(state.hub.next_session_id(), user_id, state.config.session_queue);
    let metrics = &state.metrics;
    metrics.ws_connects.inc();
    metrics.ws_connections.inc();
    tracing::info!(session = handle.id, user_id, node = %state.node, "session connected");

    let mut session = Session {
        ws: write,
        reader: FrameReader::new(read),
        fragments: None,
        cursors: Cursors::default(),
        state: state.clone(),
        handle: handle.clone(),
        acking: ack_mode,
    };
    let reason = session.run().await;
    drop(session);
    state.hub.detach(&handle);
    // The client may reconnect at once, elsewhere: let it find its positions written.
    state.recorder.nudge();
    metrics.ws_connections.dec();
    if state.lifecycle.is_draining() {
        metrics.drain_sessions_remaining.set(state.hub.session_count() as i64);
    }
    metrics.ws_disconnects.with_label_values(&[reason.as_str()]).inc();
    tracing::info!(session = handle.id, user_id, reason = reason.as_str(), node = %state.node, "session disconnected");
}

struct Session {
    ws: WebSocketWrite<Coalesce<WriteHalf<Io>>>,
    reader: FrameReader<ReadHalf<Io>>,
    /// A fragmented text message being collected.
    fragments: Option<Vec<u8>>,
    cursors: Cursors,
    state: Arc<AppState>,
    handle: Arc<SessionHandle>,
    /// The client acknowledges messages (`?ack=1` or its first ack); stays so once set.
    acking: bool,
}

impl Session {
    /// Returns the disconnect reason label. The rarely taken, larger steps (setup,
    /// catch-up, closing) are boxed so that the task an idle session parks in stays small.
    async fn run(&mut self) -> Disconnect {
        match Box::pin(self.start()).await {
            Ok(true) => {}
            Ok(false) => return Box::pin(self.close_requested()).await,
            Err(_) => return Disconnect::Error,
        }
        // The client's heartbeat clock starts at `hello`, so a slow session setup (a storm,
        // a slow backend) is not mistaken for a silent client.
        let timeout = self.state.config.heartbeat_timeout;
        let silence = tokio::time::sleep(timeout);
        tokio::pin!(silence);
        loop {
            let gap = self.cursors.gap_deadline();
            // Every branch is cancel-safe (a notification, a readiness probe that keeps what
            // it read, timers); reads and writes happen after the select, never inside it.
            let wake = tokio::select! {
                biased;
                () = self.handle.woken() => Wake::Queue,
                ready = self.reader.readable() => match ready {
                    Ok(()) => Wake::Readable,
                    Err(_) => return Disconnect::ClientGone,
                },
                () = &mut silence => Wake::Silent,
                () = tokio::time::sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => Wake::Gap,
            };
            let step = match wake {
                Wake::Queue if self.handle.is_closed() => return Box::pin(self.close_requested()).await,
                Wake::Queue => Box::pin(self.outbound_batch()).await.map(|()| None),
                Wake::Readable => {
                    let step = Box::pin(self.incoming(silence.deadline())).await;
                    silence.as_mut().reset(Instant::now() + timeout);
                    step
                }
                Wake::Silent => {
                    self.state.metrics.heartbeat_timeouts.inc();
                    Ok(Some(Box::pin(self.close_with(close::HEARTBEAT_TIMEOUT)).await))
                }
                Wake::Gap => Box::pin(self.fill_holes()).await.map(|()| None),
            };
            let step = match step {
                Ok(None) => self.flush().await.map(|()| None),
                other => other,
            };
            match step {
                Ok(None) => {}
                Ok(Some(reason)) => return reason,
                // A failed write: the peer is gone, or stuck after we asked it to close.
                Err(_) => return self.handle.close_code().map_or(Disconnect::ClientGone, Disconnect::of_close),
            }
        }
    }

    /// Hub registration, group subscriptions, hello, catch-up. Ok(false) if the session
    /// was asked to close meanwhile.
    async fn start(&mut self) -> Result<bool, WebSocketError> {
        self.state.hub.attach(&self.handle);
        let Some(heads) = self.subscribe_groups().await else { return Ok(false) };
        if !self.track(&heads).await {
            return Ok(false);
        }
        if self.handle.is_closed() {
            return Ok(false);
        }
        // `hello` goes out once the session is live: every message published after the
        // client sees it reaches this socket, whatever other sessions of the user do.
        let cfg = &self.state.config;
        let hello = protocol::hello(
            self.handle.id,
            &self.state.node,
            u64::try_from(cfg.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
            u64::try_from(cfg.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX),
        );
        self.send(&hello).await?;
        let behind = self.cursors.behind(&heads);
        self.catch_up(behind).await?;
        self.flush().await?;
        Ok(!self.handle.is_closed())
    }

    /// Subscribes the user's groups, then reads their heads: a message committed after that
    /// read is published after the subscription was confirmed, so it arrives live, and one
    /// committed before it is below the head the catch-up reads up to. The groups subscribed
    /// first are the ones the node already knows for the user (none on a first visit); a
    /// group the read finds beyond them is subscribed in turn and the heads read again.
    /// The first join also confirms the user channel `attach` subscribed, before any read,
    /// so a group created after a read is announced to this session.
    async fn subscribe_groups(&mut self) -> Option<Vec<(GroupId, Seq)>> {
        let user = self.handle.user_id;
        let mut joined = self.state.hub.known_groups(user);
        self.state.hub.join(&self.handle, &joined).await;
        loop {
            let heads = self.heads().await?;
            let new: Vec<GroupId> = heads.iter().map(|(g, _)| *g).filter(|g| !joined.contains(g)).collect();
            if new.is_empty() {
                return Some(heads);
            }
            self.state.hub.join(&self.handle, &new).await;
            joined.extend(new);
            self.state.hub.remember_groups(user, &joined);
        }
    }

    /// Starts tracking the groups of `heads` not tracked yet, at the user's stored
    /// positions. Positions are read only when one of those groups has messages: a group
    /// without any has nothing to catch up on. False (and a 1011 close) when they cannot be.
    async fn track(&mut self, heads: &[(GroupId, Seq)]) -> bool {
        let new: Vec<(GroupId, Seq)> = heads.iter().copied().filter(|(g, _)| !self.cursors.is_tracked(*g)).collect();
        let positions = if new.iter().any(|(_, head)| *head > 0) {
            match self.state.reads.positions(self.handle.user_id).await {
                Ok(positions) => positions,
                Err(e) => return self.backend_failed("positions", &e),
            }
        } else {
            Default::default()
        };
        for (g, _) in new {
            self.cursors.track(g, positions.get(&g).copied().unwrap_or(0));
        }
        true
    }

    /// The user's groups with their last sequence numbers; `None` (and a 1011 close) when
    /// the store cannot say.
    async fn heads(&mut self) -> Option<Vec<(GroupId, Seq)>> {
        match self.state.reads.heads(self.handle.user_id).await {
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
        let (limit, since) =
            (cfg.replay_limit, now_ms().saturating_sub(i64::try_from(cfg.inbox_ttl.as_millis()).unwrap_or(i64::MAX)));
        while !from.is_empty() {
            let read = CatchUp { after: from.clone(), since_ms: since, limit };
            let page = match self.state.reads.catch_up(read).await {
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

    /// Handles what is queued, up to a bound, so a burst leaves in one write at the next
    /// flush; wakes itself again if more is left.
    async fn outbound_batch(&mut self) -> Result<(), WebSocketError> {
        for _ in 0..BATCH {
            let Some(item) = self.handle.pop() else { return Ok(()) };
            self.outbound(item).await?;
        }
        self.handle.rearm();
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
                Box::pin(self.catch_up(from)).await
            }
            Outbound::Resync => Box::pin(self.resync()).await,
        }
    }

    /// After a backplane outage: pick up groups joined meanwhile (their announcements were
    /// lost too), then catch up on every group from where this session stands.
    async fn resync(&mut self) -> Result<(), WebSocketError> {
        let Some(heads) = self.subscribe_groups().await else { return Ok(()) };
        if !self.track(&heads).await {
            return Ok(());
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

    /// Reads the frame that began to arrive, by `deadline` (the heartbeat timeout), and
    /// acts on it. `Some(reason)` ends the session.
    async fn incoming(&mut self, deadline: Instant) -> Result<Option<Disconnect>, WebSocketError> {
        let max = self.state.config.max_frame_bytes;
        // fastwebsockets refuses payloads >= its limit; ours is the largest payload allowed.
        let Ok(read) = tokio::time::timeout_at(deadline, self.reader.read_frame(max + 1)).await else {
            self.state.metrics.heartbeat_timeouts.inc();
            return Ok(Some(self.close_with(close::HEARTBEAT_TIMEOUT).await));
        };
        if let Some(reply) = read.reply {
            // The peer closed (or sent a bad close code, answered with 1002): echo and end.
            let echo = async {
                self.ws.write_frame(Frame::close_raw(Payload::Owned(reply))).await?;
                self.ws.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), echo).await;
            return Ok(Some(Disconnect::ClientClose));
        }
        let frame = match read.frame {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => return Ok(Some(self.too_large().await)),
            Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                return Ok(Some(Disconnect::ClientGone));
            }
            Err(e) => {
                tracing::debug!(error = %e, user_id = self.handle.user_id, "bad frame");
                return Ok(Some(self.close_with(close::POLICY).await));
            }
        };
        if frame.opcode == OpCode::Ping {
            return self.ws.write_frame(Frame::pong(Payload::Owned(frame.payload))).await.map(|()| None);
        }
        let Some(text) = self.text(frame) else { return Ok(None) };
        let text = match text {
            Ok(text) => text,
            Err(code) if code == close::TOO_LARGE => return Ok(Some(self.too_large().await)),
            Err(code) => return Ok(Some(self.close_with(code).await)),
        };
        let parsed = std::str::from_utf8(&text).map_err(|_| ()).and_then(|t| {
            protocol::parse_client_text(t).map_err(|e| {
                tracing::debug!(error = %e, user_id = self.handle.user_id, "protocol violation");
            })
        });
        match parsed {
            Ok(ClientFrame::Heartbeat) => self.send(protocol::HEARTBEAT_ACK).await.map(|()| None),
            Ok(ClientFrame::Ack(ids)) => {
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
            Err(()) => Ok(Some(self.close_with(close::POLICY).await)),
        }
    }

    /// A whole text message once its last fragment is in; `None` while collecting or for a
    /// pong; `Err(code)` to close with.
    fn text(&mut self, frame: Incoming) -> Option<Result<Vec<u8>, u16>> {
        match (frame.opcode, frame.fin) {
            (OpCode::Pong, _) => None,
            (OpCode::Text, true) if self.fragments.is_none() => Some(Ok(frame.payload)),
            (OpCode::Text, false) if self.fragments.is_none() => {
                self.fragments = Some(frame.payload);
                None
            }
            (OpCode::Continuation, fin) => {
                let Some(buf) = self.fragments.as_mut() else { return Some(Err(close::POLICY)) };
                buf.extend_from_slice(&frame.payload);
                if buf.len() > self.state.config.max_frame_bytes {
                    return Some(Err(close::TOO_LARGE));
                }
                if !fin {
                    return None;
                }
                self.fragments.take().map(Ok)
            }
            _ => Some(Err(close::POLICY)),
        }
    }

    async fn too_large(&mut self) -> Disconnect {
        self.state.metrics.limit_rejections.with_label_values(&["ws_frame_size"]).inc();
        self.close_with(close::TOO_LARGE).await
    }

    /// Closes with `code` on the client's fault and returns the disconnect reason. Waits
    /// (briefly) for the client to hang up, so the close frame is not lost to a reset.
    async fn close_with(&mut self, code: u16) -> Disconnect {
        self.write_close(code).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.reader.discard()).await;
        Disconnect::of_close(code)
    }

    /// The hub or the lifecycle asked this session to close. A drain (1001) says goodbye and
    /// then waits for the client's close reply, so the client leaves on its own terms; one
    /// that ignores the close stays until the drain deadline cuts it (the enforced TTL).
    /// When the cut wins, a frame read may be left unfinished: the session ends there.
    async fn close_requested(&mut self) -> Disconnect {
        let code = self.handle.close_code().unwrap_or(close::GOING_AWAY);
        if code == close::GOING_AWAY {
            let _ = self.send(protocol::GOODBYE_DRAINING).await;
        }
        self.write_close(code).await;
        if code == close::GOING_AWAY {
            let cut = self.state.lifecycle.cut_token();
            let max = self.state.config.max_frame_bytes + 1;
            let reader = &mut self.reader;
            let answered = async {
                while reader.readable().await.is_ok() {
                    let read = reader.read_frame(max).await;
                    if read.reply.is_some() || !matches!(read.frame, Ok(ref f) if f.opcode != OpCode::Close) {
                        return;
                    }
                }
            };
            tokio::select! {
                () = answered => {}
                () = cut.cancelled() => return Disconnect::DrainTimeout,
            }
        }
        Disconnect::of_close(code)
    }

    async fn write_close(&mut self, code: u16) {
        let reason = Disconnect::of_close(code).close_text();
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
        self.state.config.write_timeout
    }
}
