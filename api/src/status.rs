//! Task status as kdoctor shows it (its printer columns expectedRound, doneRound, finish,
//! lastRoundStatus, plus finishTimestamp) and a bounded round history, newest first, folded
//! from closed round reports; plus Kubernetes-style conditions and a digest of the latest round.
//!
//! It lives in the api crate because three programs share it: the controller folds round
//! reports into it, the Kubernetes backend writes it to the task CRs' status subresource (so
//! it has a JSON schema with the `crd` feature), and a CLI reads it back (so it deserializes).
//! Times are Unix ms in Rust and RFC 3339 UTC timestamps in JSON, both ways.
//!
//! A task whose spec changes while the controller runs restarts its schedule: its status
//! [`restarts`](TaskStatus::restart) (expectedRound from the new spec, doneRound and finish
//! reset) but keeps its history and lastRoundStatus. kdoctor forbids spec changes instead.
//! Rounds of the old spec that close afterwards are still written to the history (they ran),
//! without counting toward the new spec's doneRound.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    Direction, Family, Finding, RoundReport, RoundStatus, Segment, routes,
    time::{format_duration, format_timestamp_ms},
};

/// Round history entries kept per task by default, newest first (kdoctor's `crdMaxHistory`).
pub const DEFAULT_MAX_HISTORY: usize = 10;
/// Findings kept in [`RoundDigest::findings`], worst first: enough to name every faulty
/// interface of a bad round while keeping the CR small (the full report has them all).
pub const MAX_DIGEST_FINDINGS: usize = 10;

/// The verdict of the last round that closed, kdoctor's `lastRoundStatus` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum LastRoundStatus {
    Succeed,
    Fail,
    /// No round closed yet.
    Unknown,
}

impl std::fmt::Display for LastRoundStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Succeed => "succeed",
            Self::Fail => "fail",
            Self::Unknown => "unknown",
        })
    }
}

/// What a task has done so far: the CR status of the Kubernetes backend, the controller API's
/// `status` of a task elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(transform = crate::crd_schema::plain_docs)
)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// `roundNumber`; -1 runs forever.
    #[cfg_attr(feature = "crd", schemars(range(min = -1)))]
    pub expected_round: i64,
    /// Rounds of the current spec that closed.
    pub done_round: u64,
    /// `doneRound` reached `expectedRound`.
    pub finish: bool,
    /// When the task finished (the end of its last round).
    #[serde(
        rename = "finishTimestamp",
        with = "opt_timestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub finish_ms: Option<u64>,
    pub last_round_status: LastRoundStatus,
    /// Newest first, at most the controller's `--max-history` entries.
    #[serde(default)]
    pub history: VecDeque<HistoryEntry>,
    /// Kubernetes-style conditions, one per type; see [`TaskStatus::set_condition`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "crd",
        schemars(extend(
            "x-kubernetes-list-type" = "map",
            "x-kubernetes-list-map-keys" = ["type"]
        ))
    )]
    pub conditions: Vec<Condition>,
    /// The last round that closed, condensed: what `kubectl get -o yaml` shows without a
    /// trip to the controller API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_round: Option<RoundDigest>,
    /// The controller's setting, not part of the status: a status read back keeps the default.
    #[serde(skip, default = "default_max_history")]
    max_history: usize,
}

fn default_max_history() -> usize {
    DEFAULT_MAX_HISTORY
}

/// One closed round (kdoctor's `StatusHistoryRecord`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub round_number: u32,
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::round_status"))]
    pub status: RoundStatus,
    /// Why the round failed, one sentence each; empty when it succeeded.
    pub failure_reasons: Vec<String>,
    /// Start of the round (its scheduled start, or later when the controller was late).
    #[serde(rename = "startTimestamp", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub start_ms: u64,
    /// When the controller closed the round.
    #[serde(rename = "endTimestamp", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub end_ms: u64,
    /// End minus start, as a duration string (`2.5s`, `1m3s`).
    #[serde(rename = "duration", with = "duration")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::duration"))]
    pub duration_ms: u64,
    /// When the controller stopped waiting for reports: start + durationInSecond +
    /// perRequestTimeoutInMS + the report grace, at most the round deadline
    /// (start + roundTimeoutMinute, capped at the next round's start). Agents that had not
    /// reported by then are `notReportedAgents`.
    #[serde(rename = "deadline", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub deadline_ms: u64,
    /// Number of agents that had a plan (kdoctor's `expectedActorNumber`).
    pub expected_agents: u32,
    /// Agents that reported. A NetReach verdict is over the whole mesh, not per agent, so
    /// there is no succeeded/failed split of agents as in kdoctor.
    pub reported_agents: Vec<String>,
    pub not_reported_agents: Vec<String>,
}

/// The status value of a [`Condition`], as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A Kubernetes condition (the shape of `metav1.Condition`), so that `kubectl wait
/// --for=condition=...` and generic tooling understand the task's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, CamelCase (e.g. `Ready`); unique within a status.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "crd", schemars(length(min = 1, max = 316)))]
    pub type_: String,
    pub status: ConditionStatus,
    /// Why the condition last changed, CamelCase, for machines.
    #[cfg_attr(
        feature = "crd",
        schemars(
            length(min = 1, max = 1024),
            regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
        )
    )]
    pub reason: String,
    /// Why, for people.
    #[cfg_attr(feature = "crd", schemars(length(max = 32768)))]
    pub message: String,
    /// When `status` last changed (not when the condition was last written).
    #[serde(rename = "lastTransitionTime", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub last_transition_ms: u64,
    /// The task's `metadata.generation` the condition was computed from (Kubernetes backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 0)))]
    pub observed_generation: Option<i64>,
}

/// The latest closed round, condensed from its [`RoundReport`]: its verdict, its counts and
/// its worst findings, with the controller API path of the full report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RoundDigest {
    pub round_number: u32,
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::round_status"))]
    pub status: RoundStatus,
    #[serde(rename = "startTimestamp", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub start_ms: u64,
    #[serde(rename = "endTimestamp", with = "timestamp")]
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::timestamp"))]
    pub end_ms: u64,
    /// The round's totals ([`crate::RoundSummary`]); in an application round they count
    /// requests: `sent` requests, `received` successes, `lost` failures, `paths` 0.
    pub paths: u32,
    pub lossy_paths: u32,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub success_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_rtt_ms: Option<f64>,
    /// Why the round failed, one sentence each; empty when it succeeded.
    pub failure_reasons: Vec<String>,
    /// The round's worst findings, at most [`MAX_DIGEST_FINDINGS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingDigest>,
    /// Findings of the round left out of `findings`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_findings: u32,
    /// Application rounds (AppHttpHealthy, NetDns): the load's target and aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppDigest>,
    /// The controller API path of the full round report: `/v1/tasks/{task}/rounds/{n}`.
    pub report: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One faulty interface of a round ([`Finding`]), without its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FindingDigest {
    pub node: String,
    pub interface: String,
    pub network: String,
    pub family: Family,
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::direction"))]
    pub direction: Direction,
    #[cfg_attr(feature = "crd", schemars(schema_with = "schema::segment"))]
    pub segment: Segment,
    pub loss_ratio: f64,
    pub lost: u32,
    pub probes: u32,
    /// The most frequent kernel drop reason, `REASON@function` (e.g.
    /// `NETFILTER_DROP@nft_do_chain`); absent for link loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_drop_reason: Option<String>,
}

/// The application part of a [`RoundDigest`]: what [`crate::AppRoundReport`] has beyond the
/// round's request counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AppDigest {
    /// The target, as the plans named it (e.g. `GET http://192.0.2.254:8080/`).
    pub target: String,
    /// Replies that count as success: `200`, `2xx or 3xx`, `NOERROR`.
    pub expected: String,
    /// Agents with a plan, and those whose report arrived.
    pub agents: u32,
    pub reported: u32,
    /// Requests the pacing called for, and those the agents did not send.
    pub planned: u64,
    pub not_sent: u64,
    /// Requests per second, summed over the agents.
    pub tps: f64,
    /// Replies by HTTP status or DNS rcode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub codes: BTreeMap<String, u64>,
    /// Requests without a usable reply, by error kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
    /// Agents with the most failed or unsent requests, worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst_agents: Vec<String>,
}

impl HistoryEntry {
    /// The history record of a closed round whose controller stopped waiting at `deadline_ms`.
    pub fn from_report(report: &RoundReport, deadline_ms: u64) -> Self {
        let reported_agents = report
            .expected_agents
            .iter()
            .filter(|a| !report.not_reported.contains(a))
            .cloned()
            .collect();
        Self {
            round_number: report.round,
            status: report.status,
            failure_reasons: report.failure_reasons.clone(),
            start_ms: report.start_ms,
            end_ms: report.end_ms,
            duration_ms: report.end_ms.saturating_sub(report.start_ms),
            deadline_ms,
            expected_agents: u32::try_from(report.expected_agents.len()).unwrap_or(u32::MAX),
            reported_agents,
            not_reported_agents: report.not_reported.clone(),
        }
    }
}

impl RoundDigest {
    /// The digest of a closed round.
    pub fn from_report(report: &RoundReport) -> Self {
        let s = &report.summary;
        let kept = report.findings.len().min(MAX_DIGEST_FINDINGS);
        Self {
            round_number: report.round,
            status: report.status,
            start_ms: report.start_ms,
            end_ms: report.end_ms,
            paths: s.paths,
            lossy_paths: s.lossy_paths,
            sent: s.sent,
            received: s.received,
            lost: s.lost,
            success_rate: s.success_rate,
            mean_rtt_ms: s.mean_rtt_ms,
            failure_reasons: report.failure_reasons.clone(),
            findings: report.findings[..kept]
                .iter()
                .map(FindingDigest::from_finding)
                .collect(),
            more_findings: u32::try_from(report.findings.len() - kept).unwrap_or(u32::MAX),
            app: report.app.as_ref().map(|app| AppDigest {
                target: app.target.clone(),
                expected: app.expected.clone(),
                agents: app.summary.agents,
                reported: app.summary.reported,
                planned: app.summary.planned,
                not_sent: app.summary.not_sent,
                tps: app.summary.tps,
                codes: app.summary.codes.clone(),
                errors: app.summary.errors.clone(),
                worst_agents: app.summary.worst_agents.clone(),
            }),
            report: routes::task_round(&report.task, routes::RoundRef::Number(report.round)),
        }
    }
}

impl FindingDigest {
    fn from_finding(f: &Finding) -> Self {
        Self {
            node: f.node.clone(),
            interface: f.interface.clone(),
            network: f.network.clone(),
            family: f.family,
            direction: f.direction,
            segment: f.segment,
            loss_ratio: f.loss_ratio,
            lost: f.lost,
            probes: f.probes,
            // The kernel function without its offset, as the report table shows it: it names
            // the dropping subsystem and is stable across kernel builds.
            top_drop_reason: f.drop_reasons.first().map(|r| {
                let function = r.location.split('+').next().unwrap_or_default();
                format!("{}@{function}", r.reason)
            }),
        }
    }
}

impl TaskStatus {
    /// A task that has run no round, keeping at most `max_history` (at least 1) entries.
    pub fn new(expected_round: i64, max_history: usize) -> Self {
        Self {
            expected_round,
            done_round: 0,
            finish: false,
            finish_ms: None,
            last_round_status: LastRoundStatus::Unknown,
            history: VecDeque::new(),
            conditions: Vec::new(),
            latest_round: None,
            max_history: max_history.max(1),
        }
    }

    /// Folds in a closed round. `current` says whether it belongs to the current spec; a round
    /// of a replaced spec goes into the history, lastRoundStatus and latestRound but not into
    /// doneRound.
    pub fn record(&mut self, report: &RoundReport, deadline_ms: u64, current: bool) {
        if current {
            self.done_round += 1;
            let finish =
                self.expected_round >= 0 && self.done_round >= self.expected_round.unsigned_abs();
            if finish && !self.finish {
                self.finish_ms = Some(report.end_ms);
            }
            self.finish = finish;
        }
        self.last_round_status = match report.status {
            RoundStatus::Succeed => LastRoundStatus::Succeed,
            RoundStatus::Fail => LastRoundStatus::Fail,
        };
        self.history
            .push_front(HistoryEntry::from_report(report, deadline_ms));
        self.history.truncate(self.max_history);
        self.latest_round = Some(RoundDigest::from_report(report));
    }

    /// The spec changed and its schedule restarts: count rounds afresh against the new
    /// `roundNumber`, keep the history and the last round's status.
    pub fn restart(&mut self, expected_round: i64) {
        self.expected_round = expected_round;
        self.done_round = 0;
        self.finish = false;
        self.finish_ms = None;
    }

    /// Sets the condition of `cond`'s type, replacing the previous one. As Kubernetes does,
    /// `lastTransitionTime` is when the status value last changed: when it is unchanged, the
    /// previous condition's time is kept (reason, message and generation are updated).
    pub fn set_condition(&mut self, mut cond: Condition) {
        match self.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
            Some(old) => {
                if old.status == cond.status {
                    cond.last_transition_ms = old.last_transition_ms;
                }
                *old = cond;
            }
            None => self.conditions.push(cond),
        }
    }
}

/// Unix ms as an RFC 3339 UTC timestamp (`2024-01-01T00:00:02.500Z`), both ways.
mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::format_timestamp_ms;

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "expected an RFC 3339 timestamp after 1970, got {text:?}"
                ))
            })
    }
}

/// An optional [`timestamp`]; absent fields are `None` through `#[serde(default)]`.
mod opt_timestamp {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::timestamp::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::timestamp")] u64);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(ms)| ms))
    }
}

/// Milliseconds as the Go duration strings [`format_duration`] writes (`450ms`, `2.5s`,
/// `1m3s`, `2h0m5s`), both ways.
mod duration {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(std::time::Duration::from_millis(
            *ms,
        )))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        parse_ms(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "expected a duration such as 450ms, 2.5s or 1m3s, got {text:?}"
            ))
        })
    }

    /// Parts of `<number>[.<fraction>]<unit>`, units `h`, `m`, `s`, `ms`; fractions below a
    /// millisecond are dropped.
    pub(super) fn parse_ms(text: &str) -> Option<u64> {
        if text.is_empty() {
            return None;
        }
        let mut rest = text;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            let (number, tail) = rest.split_at(number_len);
            let (unit_ms, unit_len) = if tail.starts_with("ms") {
                (1, 2)
            } else if tail.starts_with('s') {
                (1_000, 1)
            } else if tail.starts_with('m') {
                (60_000, 1)
            } else if tail.starts_with('h') {
                (3_600_000, 1)
            } else {
                return None;
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut part = whole.parse::<u64>().ok()?.checked_mul(unit_ms)?;
            // Each fraction digit is worth a tenth of the one before it.
            let mut scale = unit_ms;
            for digit in fraction.bytes() {
                scale /= 10;
                part = part.checked_add(u64::from(digit - b'0') * scale)?;
            }
            total = total.checked_add(part)?;
            rest = &tail[unit_len..];
        }
        Some(total)
    }
}

/// Schemas of the fields whose JSON is not their Rust type's: timestamps and durations are
/// strings, and the enums of [`crate::round`] (which derives no `JsonSchema`) are spelled by
/// serializing their variants, so the schema cannot drift from their serde names.
#[cfg(feature = "crd")]
mod schema {
    use schemars::{Schema, SchemaGenerator, json_schema};
    use serde::Serialize;

    use crate::{Direction, RoundStatus, Segment};

    fn string_enum<T: Serialize>(variants: &[T]) -> Schema {
        let names: Vec<serde_json::Value> = variants
            .iter()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect();
        json_schema!({"type": "string", "enum": names})
    }

    pub fn round_status(_: &mut SchemaGenerator) -> Schema {
        string_enum(&[RoundStatus::Succeed, RoundStatus::Fail])
    }

    pub fn direction(_: &mut SchemaGenerator) -> Schema {
        string_enum(&[Direction::Ingress, Direction::Egress])
    }

    pub fn segment(_: &mut SchemaGenerator) -> Schema {
        string_enum(&[Segment::Link, Segment::Stack])
    }

    pub fn timestamp(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time"})
    }

    pub fn duration(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AppRoundReport, AppSummary, Interval, Packet, ReasonCount, RoundSummary, TaskKind,
    };

    /// A round of task `t` with no paths, started at `round` s and closed 500 ms later, with
    /// agents `a` and `b`.
    fn mk_round(round: u32, status: RoundStatus) -> RoundReport {
        RoundReport::test("t", round, status)
    }

    /// A link-loss finding on `node`'s net1, or a stack one with a kernel drop reason.
    fn mk_finding(node: &str, reason: Option<&str>) -> Finding {
        Finding {
            family: Family::Ipv6,
            direction: Direction::Egress,
            segment: if reason.is_some() {
                Segment::Stack
            } else {
                Segment::Link
            },
            packets: vec![Packet::Request, Packet::Reply],
            probes: 100,
            loss_ratio: 0.3,
            interval: Interval {
                low: 0.2,
                high: 0.4,
                level: 0.99,
            },
            drop_reasons: reason
                .map(|r| ReasonCount {
                    reason: r.into(),
                    location: "nft_do_chain+0x4c1".into(),
                    count: 30,
                })
                .into_iter()
                .collect(),
            evidence: vec![],
            ..Finding::test(node)
        }
    }

    fn condition(type_: &str, status: ConditionStatus, reason: &str, at: u64) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: format!("{reason} since {at}"),
            last_transition_ms: at,
            observed_generation: Some(1),
        }
    }

    #[test]
    fn finishes_after_expected_rounds() {
        let mut s = TaskStatus::new(2, DEFAULT_MAX_HISTORY);
        assert_eq!(s.last_round_status, LastRoundStatus::Unknown);
        s.record(&mk_round(1, RoundStatus::Fail), 1_400, true);
        assert!(!s.finish);
        assert_eq!(s.finish_ms, None);
        s.record(&mk_round(2, RoundStatus::Succeed), 2_400, true);
        assert!(s.finish);
        assert_eq!(s.finish_ms, Some(2_500));
        assert_eq!(
            (s.done_round, s.last_round_status),
            (2, LastRoundStatus::Succeed)
        );
        assert_eq!(s.history[0].round_number, 2);
        assert_eq!(s.history[1].expected_agents, 2);
    }

    #[test]
    fn forever_never_finishes_and_history_is_bounded() {
        let mut s = TaskStatus::new(-1, DEFAULT_MAX_HISTORY);
        (1..=25).for_each(|r| s.record(&mk_round(r, RoundStatus::Succeed), 0, true));
        assert!(!s.finish);
        assert_eq!(s.done_round, 25);
        assert_eq!(s.history.len(), DEFAULT_MAX_HISTORY);
        assert_eq!(
            (s.history[0].round_number, s.history[9].round_number),
            (25, 16)
        );
        let mut short = TaskStatus::new(-1, 3);
        (1..=5).for_each(|r| short.record(&mk_round(r, RoundStatus::Fail), 0, true));
        let rounds: Vec<u32> = short.history.iter().map(|h| h.round_number).collect();
        assert_eq!(rounds, [5, 4, 3]);
    }

    #[test]
    fn json_has_kdoctors_columns_and_timestamps() {
        let mut s = TaskStatus::new(1, DEFAULT_MAX_HISTORY);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["lastRoundStatus"], "unknown");
        assert!(json.get("finishTimestamp").is_none());
        assert!(json.get("conditions").is_none());
        assert!(json.get("latestRound").is_none());
        let mut r = mk_round(7, RoundStatus::Fail);
        r.start_ms = 1_704_067_200_000;
        r.end_ms = r.start_ms + 2_500;
        r.not_reported = vec!["b".into()];
        r.failure_reasons = vec!["agents did not report: b".into()];
        s.record(&r, r.start_ms + 2_400, true);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "expectedRound": 1,
                "doneRound": 1,
                "finish": true,
                "finishTimestamp": "2024-01-01T00:00:02.500Z",
                "lastRoundStatus": "fail",
                "history": [{
                    "roundNumber": 7,
                    "status": "fail",
                    "failureReasons": ["agents did not report: b"],
                    "startTimestamp": "2024-01-01T00:00:00.000Z",
                    "endTimestamp": "2024-01-01T00:00:02.500Z",
                    "duration": "2.5s",
                    "deadline": "2024-01-01T00:00:02.400Z",
                    "expectedAgents": 2,
                    "reportedAgents": ["a"],
                    "notReportedAgents": ["b"],
                }],
                "latestRound": {
                    "roundNumber": 7,
                    "status": "fail",
                    "startTimestamp": "2024-01-01T00:00:00.000Z",
                    "endTimestamp": "2024-01-01T00:00:02.500Z",
                    "paths": 0,
                    "lossyPaths": 0,
                    "sent": 0,
                    "received": 0,
                    "lost": 0,
                    "successRate": 0.0,
                    "failureReasons": ["agents did not report: b"],
                    "report": "/v1/tasks/t/rounds/7",
                },
            })
        );
    }

    #[test]
    fn a_restart_keeps_history_and_old_rounds_do_not_count() {
        let mut s = TaskStatus::new(1, DEFAULT_MAX_HISTORY);
        s.record(&mk_round(1, RoundStatus::Succeed), 0, true);
        assert!(s.finish);
        // The spec changes: 2 more rounds wanted.
        s.restart(2);
        assert_eq!((s.expected_round, s.done_round, s.finish), (2, 0, false));
        assert_eq!(s.finish_ms, None);
        assert_eq!(s.last_round_status, LastRoundStatus::Succeed);
        assert_eq!(s.history.len(), 1);
        // A round of the old spec closes late: history only.
        s.record(&mk_round(2, RoundStatus::Fail), 0, false);
        assert_eq!(s.done_round, 0);
        assert_eq!(s.last_round_status, LastRoundStatus::Fail);
        assert_eq!(s.latest_round.as_ref().map(|d| d.round_number), Some(2));
        s.record(&mk_round(3, RoundStatus::Succeed), 0, true);
        s.record(&mk_round(4, RoundStatus::Succeed), 0, true);
        assert!(s.finish);
        let rounds: Vec<u32> = s.history.iter().map(|h| h.round_number).collect();
        assert_eq!(rounds, [4, 3, 2, 1]);
    }

    #[test]
    fn set_condition_keeps_the_transition_time_while_the_status_holds() {
        use ConditionStatus::{False, True};
        let mut s = TaskStatus::new(1, DEFAULT_MAX_HISTORY);
        s.set_condition(condition("Ready", False, "Scheduled", 1_000));
        s.set_condition(condition("Degraded", False, "NoLoss", 1_000));
        // Same status, new reason: the reason changes, the transition time stays.
        s.set_condition(condition("Ready", False, "RoundRunning", 2_000));
        assert_eq!(s.conditions.len(), 2);
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.reason.as_str(), ready.last_transition_ms),
            ("RoundRunning", 1_000)
        );
        assert_eq!(ready.message, "RoundRunning since 2000");
        // The status flips: a new transition time.
        s.set_condition(condition("Ready", True, "RoundSucceeded", 3_000));
        assert_eq!(
            (s.conditions[0].status, s.conditions[0].last_transition_ms),
            (True, 3_000)
        );
        assert_eq!(s.conditions[1].type_, "Degraded");
        let json = serde_json::to_value(&s.conditions[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready",
                "status": "True",
                "reason": "RoundSucceeded",
                "message": "RoundSucceeded since 3000",
                "lastTransitionTime": "1970-01-01T00:00:03.000Z",
                "observedGeneration": 1,
            })
        );
    }

    #[test]
    fn latest_round_condenses_the_report() {
        let mut r = mk_round(3, RoundStatus::Fail);
        r.task = "mesh".into();
        r.summary = RoundSummary {
            paths: 24,
            lossy_paths: 6,
            sent: 1200,
            received: 1110,
            lost: 90,
            success_rate: 0.925,
            mean_rtt_ms: Some(0.25),
            unobserved_events: 0,
            ..Default::default()
        };
        r.failure_reasons = vec!["success rate 0.925 is below 1".into()];
        r.findings = (1..=12)
            .map(|i| mk_finding(&format!("node-{i}"), (i == 1).then_some("NETFILTER_DROP")))
            .collect();
        let mut s = TaskStatus::new(-1, DEFAULT_MAX_HISTORY);
        s.record(&r, 3_400, true);
        let d = s.latest_round.as_ref().unwrap();
        assert_eq!(d.report, "/v1/tasks/mesh/rounds/3");
        assert_eq!(
            (d.paths, d.lossy_paths, d.sent, d.received, d.lost),
            (24, 6, 1200, 1110, 90)
        );
        assert_eq!((d.success_rate, d.mean_rtt_ms), (0.925, Some(0.25)));
        assert_eq!(d.failure_reasons, r.failure_reasons);
        assert_eq!(d.findings.len(), MAX_DIGEST_FINDINGS);
        assert_eq!(d.more_findings, 2);
        assert_eq!(
            d.findings[0],
            FindingDigest {
                node: "node-1".into(),
                interface: "net1".into(),
                network: "sec".into(),
                family: Family::Ipv6,
                direction: Direction::Egress,
                segment: Segment::Stack,
                loss_ratio: 0.3,
                lost: 30,
                probes: 100,
                top_drop_reason: Some("NETFILTER_DROP@nft_do_chain".into()),
            }
        );
        assert_eq!(d.findings[1].top_drop_reason, None);
        assert_eq!(d.findings[9].node, "node-10");
        assert!(d.app.is_none());

        // An application round: its target and aggregate come along.
        let mut app = mk_round(4, RoundStatus::Succeed);
        app.app = Some(AppRoundReport {
            kind: TaskKind::AppHttpHealthy,
            target: "GET http://192.0.2.254:8080/".into(),
            expected: "200".into(),
            summary: AppSummary {
                agents: 2,
                reported: 2,
                planned: 20,
                requests: 20,
                successes: 19,
                failures: 1,
                not_sent: 0,
                success_rate: Some(0.95),
                tps: 10.0,
                codes: [("200".to_string(), 19), ("503".to_string(), 1)].into(),
                worst_agents: vec!["a".into()],
                ..AppSummary::default()
            },
            agents: vec![],
        });
        s.record(&app, 4_400, true);
        let d = s.latest_round.as_ref().unwrap();
        assert_eq!((d.round_number, d.status), (4, RoundStatus::Succeed));
        let a = d.app.as_ref().unwrap();
        assert_eq!(a.target, "GET http://192.0.2.254:8080/");
        assert_eq!((a.agents, a.reported, a.planned, a.tps), (2, 2, 20, 10.0));
        assert_eq!(a.codes["503"], 1);
        assert_eq!(a.worst_agents, ["a"]);
    }

    #[test]
    fn status_json_round_trips() {
        let mut s = TaskStatus::new(3, DEFAULT_MAX_HISTORY);
        let mut r = mk_round(1, RoundStatus::Fail);
        r.start_ms = 1_704_067_200_123;
        r.end_ms = r.start_ms + 63_250;
        r.not_reported = vec!["b".into()];
        r.findings = vec![mk_finding("node-2", Some("NETFILTER_DROP"))];
        r.summary.mean_rtt_ms = Some(1.5);
        s.record(&r, r.start_ms + 60_000, true);
        for round in 2..=3 {
            s.record(&mk_round(round, RoundStatus::Succeed), 4_000, true);
        }
        s.set_condition(condition("Ready", ConditionStatus::True, "Finished", 5_000));
        assert!(s.finish);
        let json = serde_json::to_string(&s).unwrap();
        let back: TaskStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.history[2].duration_ms, 63_250);
        // A status as kdoctor-era tools write it: no history, conditions or latest round.
        let minimal: TaskStatus = serde_json::from_str(
            r#"{"expectedRound": -1, "doneRound": 0, "finish": false, "lastRoundStatus": "unknown"}"#,
        )
        .unwrap();
        assert_eq!(minimal, TaskStatus::new(-1, DEFAULT_MAX_HISTORY));
        let bad = serde_json::from_str::<TaskStatus>(&json.replace("Z\"", "\""));
        assert!(
            bad.unwrap_err().to_string().contains("RFC 3339"),
            "a malformed timestamp names the format"
        );
    }

    #[test]
    fn durations_parse_as_they_are_formatted() {
        for ms in [
            0, 1, 450, 1_000, 2_500, 63_250, 60_001, 7_205_000, 90_061_001,
        ] {
            let text = format_duration(std::time::Duration::from_millis(ms));
            assert_eq!(duration::parse_ms(&text), Some(ms), "{text}");
        }
        for bad in ["", "5", "1x", ".5s", "1.2.3s", "s"] {
            assert_eq!(duration::parse_ms(bad), None, "{bad:?}");
        }
    }
}
