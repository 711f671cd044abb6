//! Builders shared by the controller's unit tests.

use meshdoctor_api::{RoundReport, RoundStatus, RoundSummary};

/// A round report of `task` with no paths: what status and storage tests need.
pub fn mk_round(task: &str, round: u32, status: RoundStatus) -> RoundReport {
    RoundReport {
        task: task.into(),
        round,
        round_tag: round,
        status,
        failure_reasons: vec![],
        start_ms: u64::from(round) * 1000,
        end_ms: u64::from(round) * 1000 + 500,
        expected_agents: vec!["a".into(), "b".into()],
        not_reported: vec![],
        findings: vec![],
        summary: RoundSummary {
            paths: 0,
            lossy_paths: 0,
            sent: 0,
            received: 0,
            lost: 0,
            success_rate: 0.0,
            mean_rtt_ms: None,
            unobserved_events: 0,
        },
        paths: vec![],
    }
}
