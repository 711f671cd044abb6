//! Task status as kdoctor shows it (expectedRound, doneRound, finish, lastRoundStatus) plus a
//! bounded round history, folded from closed round reports.

use std::collections::VecDeque;

use meshdoctor_api::{RoundReport, RoundStatus};
use serde::Serialize;

/// Round history entries kept per task, newest first (kdoctor's `crdMaxHistory`).
pub const MAX_HISTORY: usize = 10;

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
    pub done_round: u64,
    pub finish: bool,
    pub last_round_status: LastRoundStatus,
    pub history: VecDeque<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub round: u32,
    pub status: RoundStatus,
    pub start_ms: u64,
    pub end_ms: u64,
    pub failure_reasons: Vec<String>,
    pub not_reported: Vec<String>,
    /// Number of agents that had a plan (the names are in the round report).
    pub expected_agents: u32,
}

impl TaskStatus {
    pub fn new(expected_round: i64) -> Self {
        Self {
            expected_round,
            done_round: 0,
            finish: false,
            last_round_status: LastRoundStatus::Unknown,
            history: VecDeque::new(),
        }
    }

    /// Folds in a closed round.
    pub fn record(&mut self, report: &RoundReport) {
        self.done_round += 1;
        self.finish = self.expected_round >= 0 && self.done_round >= self.expected_round as u64;
        self.last_round_status = match report.status {
            RoundStatus::Succeed => LastRoundStatus::Succeed,
            RoundStatus::Fail => LastRoundStatus::Fail,
        };
        self.history.push_front(HistoryEntry {
            round: report.round,
            status: report.status,
            start_ms: report.start_ms,
            end_ms: report.end_ms,
            failure_reasons: report.failure_reasons.clone(),
            not_reported: report.not_reported.clone(),
            expected_agents: report.expected_agents.len() as u32,
        });
        self.history.truncate(MAX_HISTORY);
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
        let mut s = TaskStatus::new(2);
        assert_eq!(s.last_round_status, LastRoundStatus::Unknown);
        s.record(&mk_round(1, RoundStatus::Fail));
        assert!(!s.finish);
        s.record(&mk_round(2, RoundStatus::Succeed));
        assert!(s.finish);
        assert_eq!(
            (s.done_round, s.last_round_status),
            (2, LastRoundStatus::Succeed)
        );
        assert_eq!(s.history[0].round, 2);
        assert_eq!(s.history[1].expected_agents, 2);
    }

    #[test]
    fn forever_never_finishes_and_history_is_bounded() {
        let mut s = TaskStatus::new(-1);
        (1..=25).for_each(|r| s.record(&mk_round(r, RoundStatus::Succeed)));
        assert!(!s.finish);
        assert_eq!(s.history.len(), MAX_HISTORY);
        assert_eq!((s.history[0].round, s.history[9].round), (25, 16));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["lastRoundStatus"], "succeed");
        assert_eq!(json["history"][0]["status"], "succeed");
    }
}
