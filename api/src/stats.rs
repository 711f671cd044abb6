//! Compact numeric building blocks of reports: per-probe presence bitmaps and RTT summaries.

use serde::{Deserialize, Serialize};

/// One bit per probe sequence number of a pair-path: "this hook saw probe `seq`".
///
/// Reports carry one bitmap per hook instead of one record per probe, so a round of 10,000
/// probes costs about 1.2 KiB per hook and path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bitmap(Vec<u64>);

impl Bitmap {
    /// An empty bitmap able to hold `len` bits without growing.
    pub fn with_len(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    pub fn set(&mut self, bit: usize) {
        let word = bit / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (bit % 64);
    }

    pub fn get(&self, bit: usize) -> bool {
        self.0
            .get(bit / 64)
            .is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    pub fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// Summary of a set of round-trip (or stack) times, in microseconds with sub-µs precision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RttStats {
    pub count: u32,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl RttStats {
    /// Summarises durations in nanoseconds; `None` when there are none.
    ///
    /// Percentiles use the nearest-rank method, so every reported value is a measured one.
    pub fn from_ns(samples: impl IntoIterator<Item = u64>) -> Option<Self> {
        let mut v: Vec<u64> = samples.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let rank = |p: f64| {
            let r = (p / 100.0 * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
        Some(Self {
            count: v.len() as u32,
            min_us: us(v[0]),
            mean_us: sum as f64 / v.len() as f64 / 1000.0,
            p50_us: us(rank(50.0)),
            p90_us: us(rank(90.0)),
            p99_us: us(rank(99.0)),
            max_us: us(v[v.len() - 1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sets_counts_and_grows() {
        let mut b = Bitmap::with_len(10);
        b.set(3);
        b.set(64);
        b.set(3);
        assert!(b.get(3) && b.get(64) && !b.get(4) && !b.get(1000));
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn rtt_stats_nearest_rank() {
        let s = RttStats::from_ns((1..=100).map(|i| i * 1000)).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.max_us, 100.0);
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert!(RttStats::from_ns([]).is_none());
        let one = RttStats::from_ns([7]).unwrap();
        assert_eq!(one.p99_us, 0.007);
    }
}
