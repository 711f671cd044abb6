//! Compact numeric building blocks of reports: per-probe presence bitmaps, RTT summaries and
//! the confidence interval of a loss ratio.

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

/// Log of one binomial tail, `ln P(X >= k)` (`upper`) or `ln P(X <= k)`, for X ~ Bin(n, p).
///
/// Summed in log space from `k` outwards, so that neither a tiny term nor a huge binomial
/// coefficient over- or underflows. Terms past the mode that fall 50 e-folds under the largest
/// one are left out: together they change the sum by less than an f64 can show.
fn ln_tail(k: u32, n: u32, p: f64, upper: bool) -> f64 {
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let m = k.min(n - k);
    // ln C(n, k), then stepped to ln C(n, k ± 1) term by term.
    let mut ln_choose: f64 = (1..=m)
        .map(|i| (f64::from(n - m + i) / f64::from(i)).ln())
        .sum();
    let mode = p * f64::from(n);
    let (mut max, mut scaled) = (f64::NEG_INFINITY, 0.0);
    let mut j = k;
    loop {
        let term = ln_choose + f64::from(j) * ln_p + f64::from(n - j) * ln_q;
        if term > max {
            scaled = scaled * (max - term).exp() + 1.0;
            max = term;
        } else {
            scaled += (term - max).exp();
        }
        let past_mode = if upper {
            f64::from(j) > mode
        } else {
            f64::from(j) < mode
        };
        let negligible = past_mode && term < max - 50.0;
        match (upper, negligible) {
            (_, true) => break,
            (true, false) if j < n => {
                ln_choose += (f64::from(n - j) / f64::from(j + 1)).ln();
                j += 1;
            }
            (false, false) if j > 0 => {
                ln_choose += (f64::from(j) / f64::from(n - j + 1)).ln();
                j -= 1;
            }
            _ => break,
        }
    }
    max + scaled.ln()
}

/// The `p` in (0, 1) where the monotone `f` crosses `target`, by bisection; `rising` says
/// which way `f` goes. Bisection because the binomial tail is monotone in `p` but steep and
/// flat in turns, where Newton steps overshoot.
fn bisect(target: f64, rising: bool, f: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    // 60 halvings of [0, 1] reach f64 resolution near the interval's ends.
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if (f(mid) < target) == rising {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The exact (Clopper-Pearson) confidence interval of a loss ratio `lost / n` at coverage
/// `level` (e.g. 0.99), as `(low, high)`.
///
/// Exact rather than normal-approximated because findings are made of few lost probes (3 of
/// 600 is a real 0.5% fault), where the Wald interval is far too narrow or goes below 0; the
/// interval is conservative, never claiming more certainty than the probes give. `lost` above
/// `n` counts as `n`; with no probe, or a `level` of 1 or more (or NaN), nothing is known:
/// `(0, 1)`.
pub fn clopper_pearson(lost: u32, n: u32, level: f64) -> (f64, f64) {
    if n == 0 || level.is_nan() || level >= 1.0 {
        return (0.0, 1.0);
    }
    let lost = lost.min(n);
    let ln_half_alpha = ((1.0 - level.max(0.0)) / 2.0).ln();
    // low: the p at which `lost` or more losses have probability alpha/2 (rising in p).
    let low = if lost == 0 {
        0.0
    } else {
        bisect(ln_half_alpha, true, |p| ln_tail(lost, n, p, true))
    };
    // high: the p at which `lost` or fewer losses have probability alpha/2 (falling in p).
    let high = if lost == n {
        1.0
    } else {
        bisect(ln_half_alpha, false, |p| ln_tail(lost, n, p, false))
    };
    (low, high)
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

    /// Reference values: the beta quantiles computed with mpmath at 50 digits.
    #[test]
    fn clopper_pearson_matches_exact_beta_quantiles() {
        let cases = [
            (0, 10, 0.99, 0.0, 0.411295981347525),
            (10, 10, 0.99, 0.588704018652475, 1.0),
            (5, 10, 0.99, 0.128310553935083, 0.871689446064917),
            (5, 10, 0.95, 0.187086028447399, 0.812913971552601),
            (20, 600, 0.99, 0.0173814697306686, 0.0570738308284548),
            (1, 1000, 0.99, 5.01252926077751e-6, 0.00740628693835294),
            (150, 500, 0.99, 0.248345205477931, 0.355540457306309),
        ];
        for (lost, n, level, low, high) in cases {
            let (l, h) = clopper_pearson(lost, n, level);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.max(1e-3);
            assert!(
                close(l, low) && close(h, high),
                "{lost}/{n} at {level}: got [{l}, {h}], want [{low}, {high}]"
            );
        }
    }

    #[test]
    fn clopper_pearson_edges_never_panic() {
        assert_eq!(clopper_pearson(0, 0, 0.99), (0.0, 1.0));
        assert_eq!(clopper_pearson(3, 10, f64::NAN), (0.0, 1.0));
        assert_eq!(clopper_pearson(3, 10, 1.0), (0.0, 1.0));
        // More lost than probes (untrusted counts) is all lost.
        assert_eq!(clopper_pearson(12, 10, 0.99), clopper_pearson(10, 10, 0.99));
        // A large round: finite, ordered, around the point estimate, and fast.
        let (l, h) = clopper_pearson(30_000, 3_000_000, 0.99);
        assert!(l < 0.01 && 0.01 < h && h - l < 0.001, "[{l}, {h}]");
        // Wider at higher coverage.
        let (l95, h95) = clopper_pearson(5, 10, 0.95);
        let (l99, h99) = clopper_pearson(5, 10, 0.99);
        assert!(l99 < l95 && h95 < h99);
    }
}
