//! A progress line on stderr every few seconds, so a long run shows that it is alive and how
//! it goes: `loadgen: <label> +15s sent=.. received=.. errors=.. rate=../s recv_rate=../s`,
//! the rates over the last interval. Stdout (the result lines scripts read) is untouched.

use std::time::{Duration, Instant};

/// The counters of a run at one moment.
pub struct Snapshot {
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    /// More `key=value` fields, or empty.
    pub extra: String,
}

/// Prints the progress line until dropped.
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    /// Every `every` (never when zero), the line of `read()`.
    pub fn start(label: String, every: Duration, read: impl Fn() -> Snapshot + Send + 'static) -> Self {
        if every.is_zero() {
            return Self(None);
        }
        Self(Some(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let (mut last_sent, mut last_received, mut last_t) = (0, 0, t0);
            loop {
                tick.tick().await;
                let s = read();
                let secs = last_t.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "loadgen: {label} +{:.0}s sent={} received={} errors={} rate={:.0}/s recv_rate={:.0}/s{}{}",
                    t0.elapsed().as_secs_f64(),
                    s.sent,
                    s.received,
                    s.errors,
                    s.sent.saturating_sub(last_sent) as f64 / secs,
                    s.received.saturating_sub(last_received) as f64 / secs,
                    if s.extra.is_empty() { "" } else { " " },
                    s.extra
                );
                (last_sent, last_received, last_t) = (s.sent, s.received, Instant::now());
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
