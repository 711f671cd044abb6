//! Task status as kdoctor shows it (its printer columns expectedRound, doneRound, finish,
//! lastRoundStatus, plus finishTimestamp) and a bounded round history, newest first, folded
//! from closed round reports.
//!
//! A task whose spec changes while the controller runs restarts its schedule: its status
//! [`restarts`](TaskStatus::restart) (expectedRound from the new spec, doneRound and finish
//! reset) but keeps its history and lastRoundStatus. kdoctor forbids spec changes instead.
//! Rounds of the old spec that close afterwards are still written to the history (they ran),
//! without counting toward the new spec's doneRound.

use std::collections::VecDeque;

use meshdoctor_api::{
    RoundReport, RoundStatus,
    task::{format_duration, format_timestamp_ms},
};
use serde::{Serialize, Serializer};

/// Round history entries kept per task by default, newest first (kdoctor's `crdMaxHistory`).
pub const DEFAULT_MAX_HISTORY: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LastRoundStatus {
    Succeed,
    Fail,
    /// No round closed yet.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// `roundNumber`; -1 runs forever.
    pub expected_round: i64,
    /// Rounds of the current spec that closed.
    pub done_round: u64,
    /// `doneRound` reached `expectedRound`.
    pub finish: bool,
    /// When the task finished (the end of its last round), Unix ms.
    #[serde(
        rename = "finishTimestamp",
        serialize_with = "opt_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub finish_ms: Option<u64>,
    pub last_round_status: LastRoundStatus,
    /// Newest first, at most the controller's `--max-history` entries.
    pub history: VecDeque<HistoryEntry>,
    #[serde(skip)]
    max_history: usize,
}

/// One closed round (kdoctor's `StatusHistoryRecord`). Times are Unix ms in Rust and RFC 3339
/// UTC timestamps in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub round_number: u32,
    pub status: RoundStatus,
    /// Why the round failed, one sentence each; empty when it succeeded.
    pub failure_reasons: Vec<String>,
    /// Start of the round (its scheduled start, or later when the controller was late).
    #[serde(rename = "startTimestamp", serialize_with = "timestamp")]
    pub start_ms: u64,
    /// When the controller closed the round.
    #[serde(rename = "endTimestamp", serialize_with = "timestamp")]
    pub end_ms: u64,
    /// End minus start, as a duration string (`2.5s`, `1m3s`).
    #[serde(rename = "duration", serialize_with = "duration")]
    pub duration_ms: u64,
    /// When the controller stopped waiting for reports: start + durationInSecond +
    /// perRequestTimeoutInMS + the report grace, at most the round deadline
    /// (start + roundTimeoutMinute, capped at the next round's start). Agents that had not
    /// reported by then are `notReportedAgents`.
    #[serde(rename = "deadline", serialize_with = "timestamp")]
    pub deadline_ms: u64,
    /// Number of agents that had a plan (kdoctor's `expectedActorNumber`).
    pub expected_agents: u32,
    /// Agents that reported. A NetReach verdict is over the whole mesh, not per agent, so
    /// there is no succeeded/failed split of agents as in kdoctor.
    pub reported_agents: Vec<String>,
    pub not_reported_agents: Vec<String>,
}

fn timestamp<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp_ms(*ms))
}

fn opt_timestamp<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => timestamp(ms, s),
        None => s.serialize_none(),
    }
}

fn duration<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(std::time::Duration::from_millis(*ms)))
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
            max_history: max_history.max(1),
        }
    }

    /// Folds in a closed round. `current` says whether it belongs to the current spec; a round
    /// of a replaced spec goes into the history and lastRoundStatus but not into doneRound.
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
    }

    /// The spec changed and its schedule restarts: count rounds afresh against the new
    /// `roundNumber`, keep the history and the last round's status.
    pub fn restart(&mut self, expected_round: i64) {
        self.expected_round = expected_round;
        self.done_round = 0;
        self.finish = false;
        self.finish_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_round as mk;

    fn mk_round(round: u32, status: RoundStatus) -> RoundReport {
        mk("t", round, status)
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
        s.record(&mk_round(3, RoundStatus::Succeed), 0, true);
        s.record(&mk_round(4, RoundStatus::Succeed), 0, true);
        assert!(s.finish);
        let rounds: Vec<u32> = s.history.iter().map(|h| h.round_number).collect();
        assert_eq!(rounds, [4, 3, 2, 1]);
    }
}
