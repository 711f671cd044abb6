//! Task specs: kdoctor's `NetReach` fields under the `meshdoctor.io/v1beta1` group, parsed
//! strictly so that a typo is an error naming the file and the field, not a silent default.
//!
//! Defaults follow kdoctor's CRD except where kdoctor is wrong: `perRequestTimeoutInMS`
//! defaults to 500 ms (kdoctor's CRD says 5 ms), and an omitted `roundTimeoutMinute` fits the
//! interval instead of failing kdoctor's own rule.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Protocol, plan::MAX_PROBES_PER_PATH};

pub const API_VERSION: &str = "meshdoctor.io/v1beta1";
/// Highest `request.qps` (per agent and target) a task may ask for: the cap that keeps an
/// agent from being turned into a traffic cannon.
pub const MAX_QPS: u32 = 1000;

/// A task file could not be used. Every variant names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema: a wrong type, a missing required field, an unknown
    /// field. `field` is the path into the document, e.g. `spec.request.qps`.
    #[error("{file}: {field}: {reason}")]
    Parse {
        file: String,
        field: String,
        reason: String,
    },
    /// The YAML fits the schema but a value is out of range or inconsistent.
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },
}

/// A NetReach task: probe the full mesh of agents over every interface and family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReach {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: NetReachSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachSpec {
    #[serde(default)]
    pub schedule: SchedulePlan,
    #[serde(default)]
    pub request: NetReachRequest,
    #[serde(default)]
    pub expect: SuccessCondition,
    #[serde(default)]
    pub target: NetReachTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulePlan {
    /// `"M N"`: first round M minutes after the task is loaded, then every N minutes; or
    /// `"@every <duration>"` (e.g. `@every 10s`) for continuous monitoring.
    pub schedule: String,
    /// Deadline of each round; at most the interval. Defaults to the interval, capped at 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_timeout_minute: Option<u64>,
    /// Rounds to run; -1 runs forever.
    #[serde(default = "default_round_number")]
    pub round_number: i64,
}

impl Default for SchedulePlan {
    fn default() -> Self {
        Self {
            schedule: "0 1".into(),
            round_timeout_minute: None,
            round_number: default_round_number(),
        }
    }
}

fn default_round_number() -> i64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachRequest {
    #[serde(default)]
    pub protocol: Protocol,
    /// Probes per second per agent and target.
    #[serde(default = "default_qps")]
    pub qps: u32,
    #[serde(default = "default_duration")]
    pub duration_in_second: u32,
    #[serde(default = "default_timeout", rename = "perRequestTimeoutInMS")]
    pub per_request_timeout_in_ms: u32,
}

impl Default for NetReachRequest {
    fn default() -> Self {
        Self {
            protocol: Protocol::default(),
            qps: default_qps(),
            duration_in_second: default_duration(),
            per_request_timeout_in_ms: default_timeout(),
        }
    }
}

fn default_qps() -> u32 {
    5
}
fn default_duration() -> u32 {
    2
}
fn default_timeout() -> u32 {
    500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessCondition {
    /// The round fails when received/sent is below this (0..=1).
    #[serde(default = "default_success_rate")]
    pub success_rate: f64,
    /// The round fails when the mean user-space RTT of received probes is above this.
    #[serde(default = "default_mean_delay")]
    pub mean_access_delay_in_ms: u64,
}

impl Default for SuccessCondition {
    fn default() -> Self {
        Self {
            success_rate: default_success_rate(),
            mean_access_delay_in_ms: default_mean_delay(),
        }
    }
}

fn default_success_rate() -> f64 {
    1.0
}
fn default_mean_delay() -> u64 {
    5000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetReachTarget {
    #[serde(default = "yes")]
    pub ipv4: bool,
    #[serde(default)]
    pub ipv6: bool,
    /// Networks (or interface names) to mesh over; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
}

impl Default for NetReachTarget {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: false,
            interfaces: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// When rounds start, parsed from `spec.schedule.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Delay of the first round after the task is loaded.
    pub first_after: Duration,
    /// Time between round starts (from scheduled start to scheduled start, as kdoctor).
    pub every: Duration,
}

impl Schedule {
    /// Parses `"M N"` (minutes) or `"@every <duration>"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(d) = s.trim().strip_prefix("@every") {
            let every = parse_duration(d.trim())?;
            return Ok(Self {
                first_after: Duration::ZERO,
                every,
            });
        }
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [m, n] = fields[..] else {
            return Err(format!(
                "expected \"M N\" (start after M minutes, then every N minutes) or \"@every <duration>\", got {s:?}"
            ));
        };
        let minutes = |x: &str, what: &str| {
            x.parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number of minutes, got {x:?}"))
        };
        let (m, n) = (minutes(m, "M")?, minutes(n, "N")?);
        if n == 0 {
            return Err("N (minutes between rounds) must be at least 1".into());
        }
        Ok(Self {
            first_after: Duration::from_secs(m * 60),
            every: Duration::from_secs(n * 60),
        })
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 10s, 5m or 1h, got {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be above zero"));
    }
    Ok(d)
}

impl NetReach {
    /// Reads and validates one task file.
    pub fn from_file(path: &Path) -> Result<Self, TaskError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml(&file, &text)
    }

    /// Parses and validates a task; `file` only names the source in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, TaskError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let task: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." => "(document)".to_string(),
                p => p,
            };
            // serde_yaml already prefixes some messages with the path: say it once.
            let reason = e.into_inner().to_string();
            let reason = reason
                .strip_prefix(&format!("{field}: "))
                .map_or(reason.clone(), str::to_string);
            TaskError::Parse {
                file: file.into(),
                field,
                reason,
            }
        })?;
        task.validate()
            .map_err(|(field, reason)| TaskError::Invalid {
                file: file.into(),
                field: field.into(),
                reason,
            })?;
        Ok(task)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The parsed schedule; valid once the task passed validation.
    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.spec.schedule.schedule).unwrap_or(Schedule {
            first_after: Duration::ZERO,
            every: Duration::from_secs(60),
        })
    }

    /// The round deadline: `roundTimeoutMinute`, or the interval capped at an hour.
    pub fn round_timeout(&self) -> Duration {
        match self.spec.schedule.round_timeout_minute {
            Some(m) => Duration::from_secs(m * 60),
            None => self.schedule().every.min(Duration::from_secs(3600)),
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.api_version != API_VERSION {
            return Err((
                "apiVersion",
                format!("expected {API_VERSION:?}, got {:?}", self.api_version),
            ));
        }
        if self.kind != "NetReach" {
            return Err((
                "kind",
                format!("expected \"NetReach\", got {:?}", self.kind),
            ));
        }
        let name = &self.metadata.name;
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !name_ok {
            return Err((
                "metadata.name",
                format!(
                    "{name:?} is not a DNS subdomain name (lowercase letters, digits, '-', '.')"
                ),
            ));
        }
        let sp = &self.spec;
        let schedule =
            Schedule::parse(&sp.schedule.schedule).map_err(|e| ("spec.schedule.schedule", e))?;
        if let Some(t) = sp.schedule.round_timeout_minute {
            if t == 0 {
                return Err((
                    "spec.schedule.roundTimeoutMinute",
                    "must be at least 1".into(),
                ));
            }
            if Duration::from_secs(t * 60) > schedule.every {
                return Err((
                    "spec.schedule.roundTimeoutMinute",
                    format!(
                        "{t} min is longer than the {}s between rounds",
                        schedule.every.as_secs()
                    ),
                ));
            }
        }
        if sp.schedule.round_number == 0 || sp.schedule.round_number < -1 {
            return Err((
                "spec.schedule.roundNumber",
                format!(
                    "must be -1 (forever) or at least 1, got {}",
                    sp.schedule.round_number
                ),
            ));
        }
        let rq = &sp.request;
        if rq.qps == 0 || rq.qps > MAX_QPS {
            return Err((
                "spec.request.qps",
                format!("must be 1..={MAX_QPS}, got {}", rq.qps),
            ));
        }
        if rq.duration_in_second == 0 || rq.duration_in_second > 3600 {
            return Err((
                "spec.request.durationInSecond",
                format!("must be 1..=3600, got {}", rq.duration_in_second),
            ));
        }
        if u64::from(rq.qps) * u64::from(rq.duration_in_second) > u64::from(MAX_PROBES_PER_PATH) {
            return Err((
                "spec.request.qps",
                format!(
                    "qps x durationInSecond = {} probes per path; at most {MAX_PROBES_PER_PATH}",
                    u64::from(rq.qps) * u64::from(rq.duration_in_second)
                ),
            ));
        }
        if rq.per_request_timeout_in_ms == 0 || rq.per_request_timeout_in_ms > 60_000 {
            return Err((
                "spec.request.perRequestTimeoutInMS",
                format!("must be 1..=60000, got {}", rq.per_request_timeout_in_ms),
            ));
        }
        let round = Duration::from_secs(rq.duration_in_second.into())
            + Duration::from_millis(rq.per_request_timeout_in_ms.into());
        if round > self.round_timeout() {
            return Err((
                "spec.request.durationInSecond",
                format!(
                    "duration plus per-request timeout ({}s) exceeds the round timeout ({}s)",
                    round.as_secs_f64(),
                    self.round_timeout().as_secs()
                ),
            ));
        }
        let ex = &sp.expect;
        if !(0.0..=1.0).contains(&ex.success_rate) {
            return Err((
                "spec.expect.successRate",
                format!("must be within 0..=1, got {}", ex.success_rate),
            ));
        }
        if ex.mean_access_delay_in_ms == 0 {
            return Err((
                "spec.expect.meanAccessDelayInMs",
                "must be at least 1".into(),
            ));
        }
        if !sp.target.ipv4 && !sp.target.ipv6 {
            return Err((
                "spec.target",
                "at least one of ipv4 and ipv6 must be true".into(),
            ));
        }
        if sp.target.interfaces.as_ref().is_some_and(|i| i.is_empty()) {
            return Err((
                "spec.target.interfaces",
                "must name at least one network when given".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
apiVersion: meshdoctor.io/v1beta1
kind: NetReach
metadata:
  name: mesh
spec:
  schedule:
    schedule: '@every 10s'
    roundNumber: -1
  request:
    qps: 20
    durationInSecond: 3
    perRequestTimeoutInMS: 800
  expect:
    successRate: 0.99
  target:
    ipv4: true
    ipv6: true
";

    fn err(yaml: &str) -> String {
        NetReach::from_yaml("tasks/mesh.yaml", yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_with_defaults() {
        let t = NetReach::from_yaml("f", GOOD).unwrap();
        assert_eq!(t.spec.request.qps, 20);
        assert_eq!(t.spec.request.protocol, Protocol::Icmp);
        assert_eq!(t.spec.expect.mean_access_delay_in_ms, 5000);
        assert_eq!(t.schedule().every, Duration::from_secs(10));
        assert_eq!(t.round_timeout(), Duration::from_secs(10));
        let minimal =
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: m}\nspec: {}\n";
        let t = NetReach::from_yaml("f", minimal).unwrap();
        assert_eq!(t.spec.request.per_request_timeout_in_ms, 500);
        assert_eq!(t.round_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn wrong_type_names_file_and_field() {
        let e = err(&GOOD.replace("qps: 20", "qps: fast"));
        assert!(
            e.starts_with("tasks/mesh.yaml: spec.request.qps: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = err(&GOOD.replace("qps: 20", "qsp: 20"));
        assert!(e.starts_with("tasks/mesh.yaml: spec.request"), "{e}");
        assert!(e.contains("unknown field `qsp`"), "{e}");
    }

    #[test]
    fn missing_required_field_is_rejected() {
        let e = err(&GOOD.replace("schedule: '@every 10s'", "roundTimeoutMinute: 1"));
        assert!(e.starts_with("tasks/mesh.yaml: spec.schedule"), "{e}");
        assert!(e.contains("missing field `schedule`"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (from, to, field) in [
            ("qps: 20", "qps: 5000", "spec.request.qps"),
            (
                "roundNumber: -1",
                "roundNumber: 0",
                "spec.schedule.roundNumber",
            ),
            (
                "successRate: 0.99",
                "successRate: 1.5",
                "spec.expect.successRate",
            ),
            ("'@every 10s'", "'every 10s'", "spec.schedule.schedule"),
            (
                "'@every 10s'",
                "'0 1'\n    roundTimeoutMinute: 2",
                "spec.schedule.roundTimeoutMinute",
            ),
            ("ipv4: true\n    ipv6: true", "ipv4: false", "spec.target"),
            (
                "durationInSecond: 3",
                "durationInSecond: 30",
                "spec.request.durationInSecond",
            ),
        ] {
            let e = err(&GOOD.replace(from, to));
            assert!(
                e.starts_with(&format!("tasks/mesh.yaml: {field}: ")),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn schedule_forms() {
        assert_eq!(
            Schedule::parse("2 5").unwrap(),
            Schedule {
                first_after: Duration::from_secs(120),
                every: Duration::from_secs(300)
            }
        );
        assert_eq!(
            Schedule::parse("@every 500ms").unwrap().every,
            Duration::from_millis(500)
        );
        assert!(Schedule::parse("1 0").is_err());
        assert!(Schedule::parse("@every 10x").is_err());
        assert!(Schedule::parse("* * * * *").is_err());
    }
}
