//! A Bloom filter over group ids, for `loadgen fleet`'s evaluation of a common
//! proposal: a bit array checked before the exact map of local groups, so that a
//! `broadcast` node would skip the map lookup for most messages it has no session for.
//! docs/routing.md has the numbers; the node does not use it.

use std::collections::HashSet;
use std::time::Instant;

use dashmap::DashMap;

pub struct Bloom {
    bits: Vec<u64>,
    hashes: u32,
}

/// splitmix64: a cheap, well-mixed hash of an id.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Bloom {
    /// About 1% false positives: 10 bits and 3 hashes per item.
    pub fn with_items(items: &HashSet<i64>) -> Bloom {
        let words = (items.len() * 10).div_ceil(64).max(1);
        let mut bloom = Bloom { bits: vec![0; words], hashes: 3 };
        for &i in items {
            let bits: Vec<usize> = bloom.positions(i).collect();
            for bit in bits {
                bloom.bits[bit / 64] |= 1 << (bit % 64);
            }
        }
        bloom
    }

    fn positions(&self, item: i64) -> impl Iterator<Item = usize> + '_ {
        let h = mix(item as u64);
        let (h1, h2) = (h as u32 as u64, h >> 32);
        let m = (self.bits.len() * 64) as u64;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn may_contain(&self, item: i64) -> bool {
        self.positions(item).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// What the evaluation found on one node's received stream.
pub struct Verdict {
    pub exact_ns: f64,
    pub bloom_ns: f64,
    pub false_positive_pct: f64,
    pub useful_pct: f64,
}

/// Times the hub's exact lookup (a DashMap, as in the hub) against the Bloom filter in front
/// of it, over `stream` (the group ids one node received) replayed `rounds` times.
pub fn evaluate(local: &HashSet<i64>, stream: &[i64], rounds: usize) -> Verdict {
    let exact: DashMap<i64, ()> = local.iter().map(|g| (*g, ())).collect();
    let bloom = Bloom::with_items(local);
    let n = (stream.len() * rounds).max(1) as f64;
    let started = Instant::now();
    let mut hits = 0u64;
    for _ in 0..rounds {
        for g in stream {
            hits += u64::from(exact.contains_key(std::hint::black_box(g)));
        }
    }
    let exact_ns = started.elapsed().as_nanos() as f64 / n;
    let started = Instant::now();
    let (mut bloom_hits, mut maybes) = (0u64, 0u64);
    for _ in 0..rounds {
        for g in stream {
            if bloom.may_contain(*std::hint::black_box(g)) {
                maybes += 1;
                bloom_hits += u64::from(exact.contains_key(g));
            }
        }
    }
    let bloom_ns = started.elapsed().as_nanos() as f64 / n;
    debug_assert_eq!(hits, bloom_hits, "a Bloom filter has no false negatives");
    let misses = (n as u64).saturating_sub(hits).max(1);
    Verdict {
        exact_ns,
        bloom_ns,
        false_positive_pct: 100.0 * (maybes - bloom_hits) as f64 / misses as f64,
        useful_pct: 100.0 * hits as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let items: HashSet<i64> = (0..1000).map(|i| i * 7).collect();
        let bloom = Bloom::with_items(&items);
        assert!(items.iter().all(|i| bloom.may_contain(*i)));
        let fp = (100_000..200_000).filter(|i| bloom.may_contain(*i)).count();
        assert!(fp < 4_000, "{fp} false positives in 100000");
    }
}
