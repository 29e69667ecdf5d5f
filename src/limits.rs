//! Per-user send rate limiting: a token bucket per user, refilled at `--send-rate` per second
//! up to `--send-burst`. Limits are per node; behind a load balancer a user's effective rate
//! is at most the node count times this.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::model::UserId;

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: DashMap<UserId, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self { per_sec, burst: f64::from(burst), buckets: DashMap::new() }
    }

    /// Takes one token for `user`, or says how long until one is available.
    pub fn check(&self, user: UserId) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.entry(user).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    /// Forgets users whose bucket has been full for a while (bounded memory).
    pub fn sweep(&self) {
        let now = Instant::now();
        let full_after = Duration::from_secs_f64(self.burst / self.per_sec) + Duration::from_secs(60);
        self.buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(10.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(1, t).is_ok());
        }
        let wait = l.check_at(1, t).expect_err("burst spent");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.check_at(2, t).is_ok(), "other users are independent");
        assert!(l.check_at(1, t + Duration::from_millis(100)).is_ok(), "one token after 1/rate");
        assert!(l.check_at(1, t + Duration::from_millis(100)).is_err());
    }
}
