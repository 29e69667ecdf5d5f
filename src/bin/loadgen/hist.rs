//! A small lock-free log-linear histogram (no extra dependency): values in microseconds,
//! 64 sub-buckets per power of two, so every bucket is within 1.6% of the values it holds.
//! The largest value is kept exactly beside the buckets. Histograms merge and travel between
//! processes as a sparse `idx:count,...` string, with `max:<us>` first.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 us (12 days): plenty.
const BUCKETS: usize = (SUB as usize) * 36;

pub struct Histogram {
    buckets: Vec<AtomicU64>,
    /// The largest value recorded, exactly (a bucket only bounds it).
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (((e - SUB_BITS + 1) as u64 * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB + u64::from(SUB_BITS) - 1;
    let sub = i % SUB;
    let shift = e - u64::from(SUB_BITS);
    let low = (SUB + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn new() -> Self {
        Self { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max: AtomicU64::new(0) }
    }

    pub fn record(&self, us: u64) {
        self.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn merge(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            let n = b.load(Ordering::Relaxed);
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.max.fetch_max(other.max(), Ordering::Relaxed);
    }

    /// The value at quantile `q` (0..=1), in microseconds (never above the exact maximum); 0
    /// when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return value(i).min(self.max());
            }
        }
        0
    }

    /// The largest value recorded, exactly; 0 when empty.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let sum: f64 =
            self.buckets.iter().enumerate().map(|(i, b)| b.load(Ordering::Relaxed) as f64 * value(i) as f64).sum();
        sum / total as f64
    }

    pub fn encode(&self) -> String {
        let buckets = self.buckets.iter().enumerate().filter_map(|(i, b)| {
            let n = b.load(Ordering::Relaxed);
            (n > 0).then(|| format!("{i}:{n}"))
        });
        let parts: Vec<String> = std::iter::once(format!("max:{}", self.max())).chain(buckets).collect();
        if parts.len() == 1 { "-".into() } else { parts.join(",") }
    }

    pub fn decode(s: &str) -> Histogram {
        let h = Histogram::new();
        for part in s.split(',') {
            let Some((i, n)) = part.split_once(':') else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            if i == "max" {
                h.max.fetch_max(n, Ordering::Relaxed);
            } else if let Ok(i) = i.parse::<usize>()
                && i < BUCKETS
            {
                h.buckets[i].fetch_add(n, Ordering::Relaxed);
            }
        }
        h
    }

    /// `p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..` with `prefix` before each key.
    pub fn summary(&self, prefix: &str) -> String {
        format!(
            "{prefix}p50_ms={:.2} {prefix}p90_ms={:.2} {prefix}p99_ms={:.2} {prefix}p999_ms={:.2} {prefix}max_ms={:.2}",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            ms(self.max())
        )
    }

    /// A human-readable percentile table.
    pub fn table(&self, title: &str) -> String {
        let mut out = format!("  {title} (n={}, mean {:.2} ms)\n", self.count(), ms(self.mean() as u64));
        for (label, q) in [("p50", 0.5), ("p75", 0.75), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p99.9", 0.999)] {
            out.push_str(&format!("    {label:>6}  {:>10.2} ms\n", ms(self.quantile(q))));
        }
        out.push_str(&format!("    {:>6}  {:>10.2} ms\n", "max", ms(self.max())));
        out
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_close_and_merge() {
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1000, 12_345, 1_000_000, 60_000_000] {
            let got = value(index(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 0.02, "{v} -> {got}");
        }
        let a = Histogram::new();
        for v in 1..=1000 {
            a.record(v * 10);
        }
        let b = Histogram::decode(&a.encode());
        assert_eq!(b.count(), 1000);
        let p50 = b.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() < 100.0, "{p50}");
        a.merge(&b);
        assert_eq!(a.count(), 2000);
    }

    #[test]
    fn max_is_the_largest_value_not_its_bucket() {
        // 12,301 us lies in the bucket 12,288..12,416, whose middle is 12,352.
        let h = Histogram::new();
        for v in [5, 70, 9_990, 12_301] {
            h.record(v);
        }
        assert_ne!(value(index(12_301)), 12_301, "the test value must not be a bucket's own value");
        assert_eq!(h.max(), 12_301);
        assert!(h.quantile(1.0) <= 12_301);
        // The exact max survives the trip between processes and merging.
        let back = Histogram::decode(&h.encode());
        assert_eq!(back.max(), 12_301);
        let merged = Histogram::new();
        merged.record(12);
        merged.merge(&back);
        assert_eq!(merged.max(), 12_301);
        assert!(merged.summary("").ends_with("max_ms=12.30"), "{}", merged.summary(""));
        assert_eq!(Histogram::new().max(), 0);
        assert_eq!(Histogram::new().encode(), "-");
    }
}
