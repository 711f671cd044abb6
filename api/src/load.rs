//! Statistics of a round of application requests (AppHttpHealthy, NetDns), as one agent
//! measured them against one target. kdoctor's fields, with its defects fixed: latency in
//! microseconds from an exact histogram, the mean over successful requests only, and requests
//! not sent counted apart from failures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadStats {
    /// Requests the pacing called for: qps x duration.
    pub planned: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests whose reply met the expectation (status code, rcode).
    pub successes: u64,
    /// Planned requests not sent because the concurrency bound was reached or the duration
    /// ended: the prober's own shortfall, not the target's failure.
    pub not_sent: u64,
    /// Replies by HTTP status code or DNS rcode.
    pub codes: BTreeMap<String, u64>,
    /// Failed requests without a usable reply, by kind (`timeout`, `connect`, `tls`, ...).
    pub errors: BTreeMap<String, u64>,
    /// For each kind in `errors`, the message of its first error (at most 200 characters, `…`
    /// marking a cut), e.g. `connect` → `Connection refused (os error 111)`. Absent from
    /// reports of older agents; always written, as agents' postcard reports need every field.
    #[serde(default)]
    pub error_examples: BTreeMap<String, String>,
    /// Bytes received.
    pub bytes: u64,
    /// Requests sent per second over the round, from the first send to the last reply.
    pub tps: f64,
    /// Latency of successful requests; `None` when none succeeded.
    pub latency: Option<LatencyUs>,
    /// Wall time of the round, first send to last reply, in milliseconds.
    pub duration_ms: u64,
}

/// Latency summary in microseconds, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyUs {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_examples_are_optional_on_the_wire() {
        // A report of an agent that predates error examples still parses.
        let old = r#"{"planned":2,"requests":2,"successes":0,"notSent":0,"codes":{},
            "errors":{"connect":2},"bytes":0,"tps":1.0,"latency":null,"durationMs":2000}"#;
        let s: LoadStats = serde_json::from_str(old).unwrap();
        assert_eq!(s.errors["connect"], 2);
        assert!(s.error_examples.is_empty());

        let new = LoadStats {
            errors: [("connect".into(), 2)].into(),
            error_examples: [("connect".into(), "Connection refused".into())].into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(
            json.contains(r#""errorExamples":{"connect":"Connection refused"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<LoadStats>(&json).unwrap(), new);
        // Without errors the field is an empty map (postcard reports write every field).
        let json = serde_json::to_string(&LoadStats::default()).unwrap();
        assert!(json.contains(r#""errorExamples":{}"#), "{json}");
    }
}
