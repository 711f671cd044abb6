//! A Prometheus histogram that takes a path's bucketed times ([`Histogram`]) whole.
//!
//! The client library's histogram observes one value at a time, under a lock, with a search
//! for the bucket. A round's paths carry their probes' times already bucketed, and a mesh of a
//! thousand nodes has millions of probes per round: this one adds each of a path histogram's
//! buckets at once, with its count, at the bucket's midpoint (within 1/16 of the measured
//! times, [`Histogram::quantile`]).

use std::sync::{Arc, Mutex};

use meshdoctor_api::Histogram;
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Seconds, in the buckets `upper_bounds` (plus `+Inf`). Clones share the counts.
#[derive(Debug, Clone)]
pub struct TimeHistogram {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone), ascending, the last one `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl TimeHistogram {
    pub fn new(upper_bounds: impl IntoIterator<Item = f64>) -> Self {
        let buckets = upper_bounds
            .into_iter()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        Self {
            inner: Arc::new(Mutex::new(Inner {
                sum: 0.0,
                count: 0,
                buckets,
            })),
        }
    }

    /// Adds the times of `h` (ns), each less `less_ns` (none below 0), in seconds.
    pub fn add(&self, h: &Histogram, less_ns: f64) {
        if h.is_empty() {
            return;
        }
        let mut inner = crate::lock(&self.inner);
        for (low, high, n) in h.buckets() {
            let mid = (low + (high - low) / 2).clamp(h.min(), h.max());
            let seconds = (mid as f64 - less_ns).max(0.0) / 1e9;
            inner.sum += seconds * n as f64;
            inner.count += n;
            // The first bucket whose upper bound holds it; +Inf holds everything.
            let i = inner.buckets.partition_point(|(upper, _)| *upper < seconds);
            if let Some((_, count)) = inner.buckets.get_mut(i) {
                *count += n;
            }
        }
    }
}

impl TypedMetric for TimeHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for TimeHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = crate::lock(&self.inner);
        encoder.encode_histogram::<NoLabelSet>(inner.sum, inner.count, &inner.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(h: &TimeHistogram) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t", "times", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn buckets_take_whole_histograms() {
        let h = TimeHistogram::new([1e-4, 1e-3]);
        let mut times = Histogram::default();
        times.record_n(50_000, 30); // 50 µs
        times.record_n(500_000, 20); // 500 µs
        h.add(&times, 0.0);
        // Less 450 µs: 50 µs -> 0, 500 µs -> 50 µs: all in the first bucket.
        h.add(&times, 450_000.0);
        h.add(&Histogram::default(), 0.0);
        let text = encoded(&h);
        for line in [
            "t_count 100",
            "t_bucket{le=\"0.0001\"} 80",
            "t_bucket{le=\"0.001\"} 100",
            "t_bucket{le=\"+Inf\"} 100",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("t_sum "))
            .unwrap()
            .parse()
            .unwrap();
        let exact = 30.0 * 50e-6 + 20.0 * 500e-6 + 20.0 * 50e-6;
        assert!((sum - exact).abs() < exact / 16.0, "{sum} vs {exact}");
    }
}
