//! Exponential backoff with random jitter: the one formula behind every retry and reconnect
//! (the client's reconnect delay of docs/protocol.md, the backplane's reconnect to Redis, the
//! presence store's rewrite, the load tools' reconnect storms).
//!
//! The delay of attempt `n` (0-based) is `min(cap, base * 2^n)`, plus a uniform random
//! `0..=jitter` so that a fleet of clients does not come back in lockstep.

use std::time::Duration;

use rand::RngExt;

/// A backoff schedule: `min(cap, base * 2^attempt) + random(0..=jitter)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

/// How much random delay is added to the exponential part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// None: the exponential part alone.
    None,
    /// Up to a fixed amount.
    UpTo(Duration),
    /// Up to this fraction (in percent) of the exponential part.
    Percent(u32),
}

impl Backoff {
    /// The delay before retry `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(self.cap);
        let spread = match self.jitter {
            Jitter::None => Duration::ZERO,
            Jitter::UpTo(max) => max,
            Jitter::Percent(p) => exp * p / 100,
        };
        exp + random_up_to(spread)
    }
}

/// A uniform random duration in `0..=max` (microsecond steps).
pub fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    Duration::from_micros(rand::rng().random_range(0..=max.as_micros() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_plus_jitter() {
        let b = Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            jitter: Jitter::UpTo(Duration::from_secs(1)),
        };
        for attempt in 0..30 {
            let d = b.delay(attempt);
            let floor = (b.base * 2u32.pow(attempt.min(20))).min(b.cap);
            assert!(d >= floor && d <= floor + Duration::from_secs(1), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn jitter_in_percent_of_the_delay_and_none() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5), jitter: Jitter::Percent(50) };
        for attempt in 0..10 {
            let floor = (b.base * 2u32.pow(attempt)).min(b.cap);
            let d = b.delay(attempt);
            assert!(d >= floor && d <= floor + floor / 2, "attempt {attempt}: {d:?}");
        }
        let plain = Backoff { jitter: Jitter::None, ..b };
        assert_eq!(plain.delay(0), Duration::from_millis(100));
        assert_eq!(plain.delay(3), Duration::from_millis(800));
        assert_eq!(plain.delay(9), Duration::from_secs(5));
        assert_eq!(random_up_to(Duration::ZERO), Duration::ZERO);
    }
}
