//! Times (round trips, stack times) as a log-linear histogram: what an agent reports of a
//! path's probes instead of one time per probe.
//!
//! Below 8 ns every value has a bucket of its own; above, every doubling `[2^e, 2^(e+1))` is
//! split into 8 equal buckets. A bucket is then at most 1/8 of its lower bound wide, and a
//! value read back as its bucket's midpoint is within 1/16 (6.25 %) of a measured one: finer
//! than the spread of real RTTs, and 496 buckets cover every `u64` of nanoseconds. Count, sum,
//! min and max are exact. Histograms merge by adding buckets, so the controller sums a path's
//! times into an interface's or a round's without seeing a probe (HdrHistogram's layout with
//! three significant bits).
//!
//! On the wire a histogram is one flat array, `[min, max, sum, first, c0, c1, ...]`: the exact
//! minimum, maximum and sum in ns, then the counts of the buckets from `first` to the last
//! non-empty one; `[]` when empty. A path whose probes took about the same time costs a few
//! numbers, however many probes it had.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// Bits of a value kept below its leading one: 8 buckets per doubling.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed for every `u64`: the one of `u64::MAX` is the last.
pub const BUCKETS: u32 = bucket(u64::MAX) + 1;

/// The bucket of `v`.
const fn bucket(v: u64) -> u32 {
    if v < SUB {
        v as u32
    } else {
        let e = 63 - v.leading_zeros();
        let mantissa = (v >> (e - SUB_BITS)) & (SUB - 1);
        ((e - SUB_BITS + 1) << SUB_BITS) | mantissa as u32
    }
}

/// The bounds of bucket `b`, `[low, high)`, high saturating at `u64::MAX`.
fn bounds(b: u32) -> (u64, u64) {
    if u64::from(b) < SUB {
        return (u64::from(b), u64::from(b) + 1);
    }
    let shift = (b >> SUB_BITS) - 1;
    let low = (SUB | u64::from(b) & (SUB - 1)) << shift;
    (low, low.saturating_add(1 << shift))
}

/// Durations in nanoseconds, bucketed (see the module).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    min: u64,
    max: u64,
    sum: u64,
    /// The bucket of `counts[0]`.
    first: u32,
    /// From the bucket of `min` to the bucket of `max`; empty when nothing was recorded.
    counts: Vec<u64>,
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Records `n` values of `ns`.
    pub fn record_n(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        let b = bucket(ns);
        if self.counts.is_empty() {
            (self.min, self.max, self.first) = (ns, ns, b);
            self.counts.push(0);
        }
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        self.sum = self.sum.saturating_add(ns.saturating_mul(n));
        let slot = self.slot(b);
        *slot = slot.saturating_add(n);
    }

    /// The counter of bucket `b`, growing the range to hold it.
    fn slot(&mut self, b: u32) -> &mut u64 {
        if b < self.first {
            let grow = (self.first - b) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = b;
        }
        let i = (b - self.first) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        &mut self.counts[i]
    }

    /// Adds `other`'s values to this one's.
    pub fn merge(&mut self, other: &Histogram) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other.clone();
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = self.sum.saturating_add(other.sum);
        // Grow once to the union of both ranges, then add.
        self.slot(other.first);
        self.slot(other.first + other.counts.len() as u32 - 1);
        let offset = (other.first - self.first) as usize;
        for (mine, theirs) in self.counts[offset..].iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    pub fn min(&self) -> u64 {
        self.min
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The mean in ns; 0 when empty.
    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum as f64 / n as f64,
        }
    }

    /// The nearest-rank `q`-quantile (`q` in 0..=1) as the midpoint of its bucket, kept within
    /// the exact min and max (and exactly those at the lowest and highest rank); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        self.quantiles([q])[0]
    }

    /// [`Self::quantile`] of each of `qs`, ascending, in one pass over the buckets: a round
    /// summarizes every path's histograms.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        debug_assert!(qs.is_sorted(), "quantiles {qs:?} must ascend");
        let count = self.count();
        let mut out = [0; N];
        if count == 0 {
            return out;
        }
        let rank = |q: f64| ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut buckets = self.buckets();
        let (mut seen, mut current) = (0u64, None);
        for (i, q) in qs.into_iter().enumerate() {
            let rank = rank(q);
            out[i] = if rank == count {
                self.max
            } else if rank == 1 {
                self.min
            } else {
                // Ranks ascend with `qs`: the walk goes on from where the last one stopped.
                while seen < rank {
                    let Some((low, high, n)) = buckets.next() else {
                        break;
                    };
                    seen = seen.saturating_add(n);
                    current = Some((low + (high - low) / 2).clamp(self.min, self.max));
                }
                match current {
                    Some(mid) if seen >= rank => mid,
                    _ => self.max,
                }
            };
        }
        out
    }

    /// The non-empty buckets, `(low, high, count)`, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .zip(self.first..)
            .filter(|(n, _)| **n > 0)
            .map(|(&n, b)| {
                let (low, high) = bounds(b);
                (low, high, n)
            })
    }
}

impl FromIterator<u64> for Histogram {
    fn from_iter<I: IntoIterator<Item = u64>>(values: I) -> Self {
        let mut h = Self::default();
        values.into_iter().for_each(|v| h.record(v));
        h
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_empty() {
            // A sequence, not an empty array: serde writes arrays as tuples, which a binary
            // format (postcard) writes without the length a sequence reads back.
            return s.collect_seq(std::iter::empty::<u64>());
        }
        let head = [self.min, self.max, self.sum, u64::from(self.first)];
        s.collect_seq(head.iter().chain(&self.counts))
    }
}

impl<'de> Deserialize<'de> for Histogram {
    /// Checks what a peer sent: the buckets must run from the bucket of `min` to the bucket of
    /// `max` with both ends non-empty, so that every reading of the histogram is consistent.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<u64>::deserialize(d)?;
        let [min, max, sum, first, counts @ ..] = v.as_slice() else {
            return match v.is_empty() {
                true => Ok(Self::default()),
                false => Err(D::Error::custom(
                    "histogram: expected [min, max, sum, first bucket, counts...]",
                )),
            };
        };
        let consistent = !counts.is_empty()
            && min <= max
            && u64::from(bucket(*min)) == *first
            && u64::from(bucket(*max)) == first + counts.len() as u64 - 1
            && counts[0] > 0
            && counts[counts.len() - 1] > 0;
        if !consistent {
            return Err(D::Error::custom(format!(
                "histogram: buckets {first}..+{} do not run from the bucket of min {min} to \
                 the bucket of max {max} with both ends counted",
                counts.len()
            )));
        }
        Ok(Self {
            min: *min,
            max: *max,
            sum: *sum,
            first: *first as u32,
            counts: counts.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_every_u64_within_an_eighth() {
        let mut previous_high = 0;
        for b in 0..BUCKETS {
            let (low, high) = bounds(b);
            assert_eq!(
                low,
                previous_high,
                "bucket {b} starts where {} ended",
                b - 1
            );
            assert_eq!(bucket(low), b);
            assert_eq!(bucket(high - 1), b);
            assert!((high - low) * 8 <= low.max(8), "bucket {b} is too wide");
            previous_high = high;
        }
        assert_eq!(previous_high, u64::MAX, "the last bucket saturates");
        assert_eq!(BUCKETS, 496);
    }

    #[test]
    fn exact_summary_and_close_quantiles() {
        let mut h = Histogram::default();
        let values: Vec<u64> = (1..=1000).map(|i| i * 1_000).collect();
        values.iter().for_each(|&v| h.record(v));
        assert_eq!((h.count(), h.min(), h.max()), (1000, 1_000, 1_000_000));
        assert_eq!(h.sum(), values.iter().sum::<u64>());
        for q in [0.5, 0.9, 0.99] {
            let exact = values[(q * 1000.0) as usize - 1] as f64;
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact <= 1.0 / 16.0,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 1_000_000, "kept within the max");
        assert_eq!(h.quantile(0.0), 1_000, "kept within the min");
    }

    #[test]
    fn quantiles_in_one_pass_are_each_ones_nearest_rank() {
        let mut h = Histogram::default();
        for (v, n) in [
            (3u64, 2u64),
            (900, 5),
            (70_000, 40),
            (70_500, 1),
            (9_000_000, 2),
        ] {
            h.record_n(v, n);
        }
        // The nearest rank read off the buckets one by one, as the definition says.
        let reference = |q: f64| {
            let count = h.count();
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            if rank == count {
                return h.max();
            }
            if rank == 1 {
                return h.min();
            }
            let mut seen = 0;
            h.buckets()
                .find_map(|(low, high, n)| {
                    seen += n;
                    (seen >= rank).then(|| (low + (high - low) / 2).clamp(h.min(), h.max()))
                })
                .unwrap()
        };
        let qs = [0.0, 0.02, 0.05, 0.1, 0.5, 0.9, 0.96, 0.99, 1.0];
        let got = h.quantiles(qs);
        for (q, got) in qs.into_iter().zip(got) {
            assert_eq!(got, reference(q), "q{q}");
        }
        assert_eq!(got[0], 3);
        assert_eq!(got[8], 9_000_000);
        assert_eq!(Histogram::default().quantiles([0.5, 0.9]), [0, 0]);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = Default::default();
        for (i, v) in [5u64, 900, 1_000_000, 3, 70_000, 70_001, u64::MAX]
            .into_iter()
            .enumerate()
        {
            let h: &mut Histogram = if i % 2 == 0 { &mut a } else { &mut b };
            h.record(v);
            Histogram::record(&mut all, v);
        }
        let mut merged = Histogram::default();
        merged.merge(&a);
        merged.merge(&b);
        merged.merge(&Histogram::default());
        assert_eq!(merged, all);
    }

    #[test]
    fn wire_form_round_trips_and_bad_input_is_named() {
        let mut h = Histogram::default();
        [800_000u64, 810_000, 805_000, 2_000_000]
            .into_iter()
            .for_each(|v| h.record(v));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with("[800000,2000000,4415000,"), "{json}");
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), h);
        assert_eq!(serde_json::to_string(&Histogram::default()).unwrap(), "[]");
        for bad in [
            "[1,2,3]",
            "[5,4,9,5,1]",
            "[800,800,800,0,1]",
            "[8,9,17,8,1,0]",
        ] {
            let err = serde_json::from_str::<Histogram>(bad).unwrap_err();
            assert!(err.to_string().contains("histogram"), "{bad}: {err}");
        }
    }

    #[test]
    fn quantiles_of_nothing_and_of_one_value() {
        assert_eq!(Histogram::default().quantile(0.5), 0);
        let mut h = Histogram::default();
        h.record_n(123_456, 50);
        assert_eq!(h.quantile(0.99), 123_456);
        assert_eq!(h.mean(), 123_456.0);
    }
}
