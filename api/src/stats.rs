//! Numeric building blocks of reports: RTT summaries and the confidence interval of a loss
//! ratio.

use serde::{Deserialize, Serialize};

use crate::Histogram;

/// Summary of a set of round-trip (or stack) times, in microseconds to the nanosecond (what
/// the kernel measures; more digits would be float noise, and a big mesh stores millions).
/// Single precision: exact to the nanosecond below 16 ms and to 7 digits above, in half the
/// memory (a round of a 128-node mesh holds 260,000 of them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RttStats {
    pub count: u32,
    pub min_us: f32,
    pub mean_us: f32,
    pub p50_us: f32,
    pub p90_us: f32,
    pub p99_us: f32,
    pub max_us: f32,
}

impl RttStats {
    /// Summarises a histogram; `None` when it is empty. Count, min, mean and max are exact,
    /// the percentiles nearest-rank within 1/16 of a measured time ([`Histogram::quantile`]).
    pub fn from_histogram(h: &Histogram) -> Option<Self> {
        let count = h.count();
        if count == 0 {
            return None;
        }
        let us = |ns: u64| to_ns(ns as f64 / 1000.0);
        let [p50, p90, p99] = h.quantiles([0.50, 0.90, 0.99]);
        Some(Self {
            count: count.min(u64::from(u32::MAX)) as u32,
            min_us: us(h.min()),
            mean_us: to_ns(h.sum() as f64 / count as f64 / 1000.0),
            p50_us: us(p50),
            p90_us: us(p90),
            p99_us: us(p99),
            max_us: us(h.max()),
        })
    }

    /// Every time less `us`, none below 0: the network part of a path's kernel RTT, less the
    /// destination's mean stack time (the two ends report their times apart, so a probe's own
    /// stack time is not known where its RTT is).
    pub fn less(self, us: f32) -> Self {
        let less = |t: f32| to_ns((f64::from(t) - f64::from(us)).max(0.0));
        Self {
            count: self.count,
            min_us: less(self.min_us),
            mean_us: less(self.mean_us),
            p50_us: less(self.p50_us),
            p90_us: less(self.p90_us),
            p99_us: less(self.p99_us),
            max_us: less(self.max_us),
        }
    }
}

/// `us` rounded to the nanosecond.
fn to_ns(us: f64) -> f32 {
    ((us * 1000.0).round() / 1000.0) as f32
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
    fn rtt_stats_from_a_histogram() {
        let h: Histogram = (1..=100).map(|i| i * 1000).collect();
        let s = RttStats::from_histogram(&h).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!((s.min_us, s.max_us), (1.0, 100.0));
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        for (got, exact) in [(s.p50_us, 50.0), (s.p90_us, 90.0), (s.p99_us, 99.0)] {
            assert!((got - exact).abs() <= exact / 16.0, "{got} vs {exact}");
        }
        assert!(RttStats::from_histogram(&Histogram::default()).is_none());
        let one = RttStats::from_histogram(&[7].into_iter().collect()).unwrap();
        assert_eq!(one.p99_us, 0.007);
        let network = s.less(2.0);
        assert_eq!((network.min_us, network.max_us), (0.0, 98.0));
        // To the nanosecond: no float noise in what is stored.
        let odd: Histogram = [25_047, 66_696, 121_441].into_iter().collect();
        let s = RttStats::from_histogram(&odd).unwrap();
        assert_eq!(s.mean_us, 71.061);
        assert_eq!(s.less(22.471_04).min_us, 2.576);
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
