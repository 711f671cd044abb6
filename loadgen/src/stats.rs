//! Summing request outcomes into [`LoadStats`].
//!
//! One [`Collector`] per round, owned by the runner's task: every completed request is recorded
//! there without locks or per-request allocation (a counter map gets a new key only the first
//! time a status code or error kind shows up). Latency goes into an HDR histogram in
//! microseconds with 3 significant digits, so percentiles are exact to 0.1% whatever the spread
//! (kdoctor kept whole milliseconds, or every sample in a slice). Only successful requests are
//! timed: a refused connection answers in microseconds and a timeout takes the whole timeout,
//! and neither says how fast the target serves.
//!
//! Each error kind keeps the detail of its first occurrence, cut to [`EXAMPLE_CHARS`]
//! characters, so a report can say what `connect` errors were without carrying one message per
//! request.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use meshdoctor_api::{LatencyUs, LoadStats};

use crate::Outcome;

/// Significant decimal digits the latency histogram keeps.
const SIGFIG: u8 = 3;

/// Most characters of an error example kept (an ellipsis marks a cut).
pub const EXAMPLE_CHARS: usize = 200;

/// Running totals of one round.
#[derive(Debug)]
pub(crate) struct Collector {
    requests: u64,
    successes: u64,
    bytes: u64,
    codes: BTreeMap<String, u64>,
    errors: BTreeMap<&'static str, u64>,
    /// The first error's detail of each kind, bounded.
    examples: BTreeMap<&'static str, String>,
    /// Auto-resizing, so a round of sub-millisecond replies stays a few KiB.
    latency: Histogram<u64>,
    /// Exact sum, min and max of successful latencies in nanoseconds: the histogram's own are
    /// rounded to its buckets.
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Collector {
    pub(crate) fn new() -> Self {
        Self {
            requests: 0,
            successes: 0,
            bytes: 0,
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
            latency: Histogram::new(SIGFIG).expect("3 significant digits are valid"),
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Records one request that completed (with a reply or an error) after `elapsed`.
    pub(crate) fn record(&mut self, outcome: &Outcome, elapsed: Duration) {
        self.requests += 1;
        match outcome {
            Outcome::Reply {
                code,
                success,
                bytes,
            } => {
                self.bytes += bytes;
                match self.codes.get_mut(code.as_str()) {
                    Some(n) => *n += 1,
                    None => {
                        self.codes.insert(code.clone(), 1);
                    }
                }
                if *success {
                    self.success(elapsed);
                }
            }
            Outcome::Error { kind, detail } => self.error(kind, || bounded(detail)),
        }
    }

    /// Records a request that produced no reply, such as one the runner timed out; `detail` is
    /// called only for the first error of its kind.
    pub(crate) fn record_error(&mut self, kind: &'static str, detail: impl FnOnce() -> String) {
        self.requests += 1;
        self.error(kind, || bounded(&detail()));
    }

    fn error(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind, 1);
                self.examples.insert(kind, example());
            }
        }
    }

    fn success(&mut self, elapsed: Duration) {
        self.successes += 1;
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        // Auto-resize makes every sane value recordable; clamp the insane rather than panic
        // (`saturating_record` alone would clamp to the current size, without resizing).
        if self.latency.record(ns / 1_000).is_err() {
            self.latency.saturating_record(ns / 1_000);
        }
    }

    /// The round's statistics. `span` runs from the first send to the last completion.
    pub(crate) fn finish(self, planned: u64, not_sent: u64, span: Duration) -> LoadStats {
        let secs = span.as_secs_f64();
        let latency = (self.successes > 0).then(|| LatencyUs {
            min: self.min_ns / 1_000,
            mean: self.sum_ns as f64 / self.successes as f64 / 1_000.0,
            max: self.max_ns / 1_000,
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p95: self.percentile(95.0),
            p99: self.percentile(99.0),
        });
        LoadStats {
            planned,
            requests: self.requests,
            successes: self.successes,
            not_sent,
            codes: self.codes,
            errors: self
                .errors
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            error_examples: self
                .examples
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            bytes: self.bytes,
            tps: if secs > 0.0 {
                self.requests as f64 / secs
            } else {
                0.0
            },
            latency,
            duration_ms: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The percentile's bucket value, clamped into the exact [min, max] so that rounding to the
    /// bucket never reports a p99 above the max.
    fn percentile(&self, p: f64) -> u64 {
        self.latency
            .value_at_percentile(p)
            .clamp(self.min_ns / 1_000, self.max_ns / 1_000)
    }
}

/// `detail` cut to [`EXAMPLE_CHARS`] characters (on a character boundary), with `…` when cut.
fn bounded(detail: &str) -> String {
    match detail.char_indices().nth(EXAMPLE_CHARS) {
        Some((end, _)) => format!("{}…", &detail[..end]),
        None => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: &str, success: bool) -> Outcome {
        Outcome::Reply {
            code: code.into(),
            success,
            bytes: 10,
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut c = Collector::new();
        for ms in 1..=1000u64 {
            c.record(&reply("200", true), Duration::from_millis(ms));
        }
        let s = c.finish(1000, 0, Duration::from_secs(2));
        let l = s.latency.unwrap();
        assert_eq!((l.min, l.max), (1_000, 1_000_000));
        assert!((l.mean - 500_500.0).abs() < 1e-6, "{}", l.mean);
        for (got, want) in [
            (l.p50, 500_000),
            (l.p90, 900_000),
            (l.p95, 950_000),
            (l.p99, 990_000),
        ] {
            assert!(got.abs_diff(want) <= want / 1000, "{got} vs {want}");
        }
        assert_eq!((s.requests, s.successes, s.bytes), (1000, 1000, 10_000));
        assert_eq!(s.tps, 500.0);
        assert_eq!(s.duration_ms, 2000);
    }

    #[test]
    fn failures_are_counted_but_not_timed() {
        let mut c = Collector::new();
        c.record(&reply("200", true), Duration::from_micros(100));
        c.record(&reply("200", true), Duration::from_micros(300));
        c.record(&reply("503", false), Duration::from_secs(9));
        c.record(
            &Outcome::Error {
                kind: "connect",
                detail: "refused".into(),
            },
            Duration::from_secs(9),
        );
        c.record_error("timeout", || "no reply within 1000 ms".into());
        c.record(
            &Outcome::Error {
                kind: "connect",
                detail: "unreachable".into(),
            },
            Duration::from_secs(9),
        );
        let s = c.finish(6, 0, Duration::from_secs(1));
        let l = s.latency.unwrap();
        assert_eq!((l.min, l.max, l.mean), (100, 300, 200.0));
        assert_eq!(s.requests, 6);
        assert_eq!(s.successes, 2);
        assert_eq!(
            s.codes,
            BTreeMap::from([("200".into(), 2), ("503".into(), 1)])
        );
        assert_eq!(
            s.errors,
            BTreeMap::from([("connect".into(), 2), ("timeout".into(), 1)])
        );
        // The first detail of each kind.
        assert_eq!(
            s.error_examples,
            BTreeMap::from([
                ("connect".into(), "refused".into()),
                ("timeout".into(), "no reply within 1000 ms".into())
            ])
        );
    }

    #[test]
    fn examples_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(EXAMPLE_CHARS + 5);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), EXAMPLE_CHARS + 1);
        assert!(cut.ends_with("é…"), "{cut}");
        let exact = "x".repeat(EXAMPLE_CHARS);
        assert_eq!(bounded(&exact), exact);
        assert_eq!(bounded(""), "");
    }

    #[test]
    fn no_success_no_latency() {
        let mut c = Collector::new();
        c.record_error("timeout", String::new);
        let s = c.finish(1, 3, Duration::ZERO);
        assert_eq!(s.latency, None);
        assert_eq!((s.tps, s.not_sent, s.planned), (0.0, 3, 1));
    }
}
