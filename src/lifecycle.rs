//! The node's lifecycle as an explicit state machine: `Starting -> Ready -> Draining ->
//! Stopped`, broadcast on a `watch` channel so that every listener, the readiness probe, the
//! HAProxy agent and the session tasks react to the same transition.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopped = 3,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// Shared handle on the phase. Transitions only move forward, so a late `set_ready` after a
/// drain began cannot undo the drain.
#[derive(Clone)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// Cancelled when the drain deadline passes or a second signal asks to finish now: every
    /// session still open is cut.
    cut: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self { phase: watch::Sender::new(Phase::Starting), cut: CancellationToken::new() }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves to `next` if it is later than the current phase; returns whether it moved.
    pub fn advance(&self, next: Phase) -> bool {
        self.phase.send_if_modified(|p| {
            if next > *p {
                tracing::info!(from = p.as_str(), to = next.as_str(), "lifecycle transition");
                *p = next;
                true
            } else {
                false
            }
        })
    }

    /// Starts a drain (idempotent). Returns true for the call that started it.
    pub fn drain(&self) -> bool {
        self.advance(Phase::Draining)
    }

    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves once a drain has started (cancel-safe).
    pub async fn draining(&self) {
        let mut rx = self.phase.subscribe();
        // The sender lives as long as `self`, so wait_for cannot fail here.
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    pub fn cut_token(&self) -> CancellationToken {
        self.cut.clone()
    }

    /// Cuts every remaining session at once (drain deadline or a second signal).
    pub fn cut_now(&self) {
        self.drain();
        self.cut.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let l = Lifecycle::new();
        assert!(l.advance(Phase::Ready));
        assert!(l.drain());
        assert!(!l.drain(), "second drain is a no-op");
        assert!(!l.advance(Phase::Ready), "cannot go back to ready");
        assert_eq!(l.phase(), Phase::Draining);
        assert!(l.advance(Phase::Stopped));
    }

    #[tokio::test]
    async fn draining_future_resolves_on_transition() {
        let l = Lifecycle::new();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.draining().await }
        });
        l.advance(Phase::Ready);
        assert!(!waiter.is_finished());
        l.drain();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.expect("resolves").expect("joins");
    }
}
