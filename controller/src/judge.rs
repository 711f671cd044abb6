//! Judging a joined round against the task's `expect`, kdoctor's rules plus the ones kdoctor
//! leaves silent: agents that did not report, and rounds that proved nothing.

use meshdoctor_api::{PathResult, PathState, task::SuccessCondition};

use crate::join::Joined;

/// Lossy paths named in a success-rate failure, worst first.
const WORST_PATHS: usize = 3;

/// Why the round fails, one sentence each; empty when it succeeds.
pub fn failure_reasons(expect: &SuccessCondition, joined: &Joined) -> Vec<String> {
    let mut reasons = Vec::new();
    let s = &joined.summary;
    if !joined.not_reported.is_empty() {
        reasons.push(format!(
            "agents did not report: {}",
            joined.not_reported.join(", ")
        ));
    }
    if s.sent == 0 {
        reasons.push(format!(
            "no probe was sent over the {} planned paths",
            s.paths
        ));
    }
    // Probes neither sent nor refused by the source's stack (those are loss): the agent
    // stopped early, or skipped them.
    let unattempted = |p: &PathResult| p.planned.saturating_sub(p.sent + p.send_failed);
    let unsent: Vec<&PathResult> = joined
        .paths
        .iter()
        .filter(|p| p.state != PathState::NotReported && unattempted(p) > 0)
        .collect();
    if !unsent.is_empty() {
        let missing: u64 = unsent.iter().map(|p| u64::from(unattempted(p))).sum();
        reasons.push(format!(
            "{missing} planned probes were never sent, on {} paths (first: {})",
            unsent.len(),
            describe(unsent[0])
        ));
    }
    if s.sent > 0 && s.success_rate < expect.success_rate {
        let mut lossy: Vec<&PathResult> = joined
            .paths
            .iter()
            .filter(|p| p.state == PathState::Lossy)
            .collect();
        lossy.sort_by(|a, b| b.loss_ratio.total_cmp(&a.loss_ratio));
        let worst: Vec<String> = lossy
            .iter()
            .take(WORST_PATHS)
            .map(|p| {
                let attempted = p.sent + p.send_failed;
                format!("{} lost {}/{attempted}", describe(p), p.lost)
            })
            .collect();
        reasons.push(format!(
            "success rate {:.4} is below the expected {} ({} of {} probes lost; worst paths: {})",
            s.success_rate,
            expect.success_rate,
            s.lost,
            s.sent,
            worst.join("; ")
        ));
    }
    if let Some(mean) = s.mean_rtt_ms
        && mean > expect.mean_access_delay_in_ms as f64
    {
        reasons.push(format!(
            "mean RTT {mean:.3} ms is above the expected {} ms",
            expect.mean_access_delay_in_ms
        ));
    }
    reasons
}

fn describe(p: &PathResult) -> String {
    format!(
        "{}/{} -> {}/{} {}",
        p.src_node, p.src_interface, p.dst_node, p.dst_interface, p.family
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::join::tests::{join_reports, mk_plans, mk_report, mk_reports};

    fn judged(
        expect: SuccessCondition,
        lost1: &[usize],
        tweak: impl FnOnce(&mut Joined),
    ) -> Vec<String> {
        let plans = mk_plans();
        let reports = mk_reports(vec![
            mk_report(&plans, "node-1", lost1),
            mk_report(&plans, "node-2", &[]),
        ]);
        let mut j = join_reports(&plans, &reports);
        tweak(&mut j);
        failure_reasons(&expect, &j)
    }

    #[test]
    fn clean_round_succeeds() {
        assert!(judged(SuccessCondition::default(), &[], |_| {}).is_empty());
    }

    #[test]
    fn low_success_rate_names_worst_paths() {
        let r = judged(SuccessCondition::default(), &[0, 1], |_| {});
        assert_eq!(r.len(), 1);
        assert!(
            r[0].starts_with("success rate 0.9500 is below the expected 1"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("node-1/eth0 -> node-2/eth0 ipv4 lost 2/20"),
            "{}",
            r[0]
        );
        let lenient = SuccessCondition {
            success_rate: 0.9,
            ..Default::default()
        };
        assert!(judged(lenient, &[0, 1], |_| {}).is_empty());
    }

    #[test]
    fn slow_round_fails() {
        let strict = SuccessCondition {
            success_rate: 1.0,
            mean_access_delay_in_ms: 1,
        };
        assert!(judged(strict.clone(), &[], |_| {}).is_empty());
        let r = judged(strict, &[], |j| j.summary.mean_rtt_ms = Some(1.5));
        assert_eq!(r, ["mean RTT 1.500 ms is above the expected 1 ms"]);
    }

    #[test]
    fn silent_agent_fails_without_loss() {
        let plans = mk_plans();
        let j = join_reports(&plans, &mk_reports(vec![mk_report(&plans, "node-2", &[])]));
        assert_eq!(
            failure_reasons(&SuccessCondition::default(), &j),
            ["agents did not report: node-1"]
        );
    }

    #[test]
    fn nothing_sent_fails() {
        let j = join_reports(&mk_plans(), &BTreeMap::new());
        let r = failure_reasons(&SuccessCondition::default(), &j);
        assert_eq!(r[1], "no probe was sent over the 2 planned paths");
        let empty = join_reports(&BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            failure_reasons(&SuccessCondition::default(), &empty),
            ["no probe was sent over the 0 planned paths"]
        );
    }

    #[test]
    fn unsent_probes_are_counted() {
        let r = judged(SuccessCondition::default(), &[], |j| {
            j.paths[1].sent = 15;
            j.paths[1].received = 15;
        });
        assert_eq!(
            r,
            [
                "5 planned probes were never sent, on 1 paths (first: node-2/eth0 -> node-1/eth0 ipv4)"
            ]
        );
    }

    #[test]
    fn refused_sends_are_loss_not_unsent() {
        let plans = mk_plans();
        let mut r1 = mk_report(&plans, "node-1", &[]);
        // 4 of 20 sendto calls failed: 16 sent, all came back.
        let s = &mut r1.sent[0];
        (s.sent, s.received) = (16, 16);
        s.send_errors = vec![("Operation not permitted".into(), 4)];
        let j = join_reports(
            &plans,
            &mk_reports(vec![r1, mk_report(&plans, "node-2", &[])]),
        );
        let r = failure_reasons(&SuccessCondition::default(), &j);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("success rate 0.9000 is below the expected 1 (4 of 40 probes lost"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("node-1/eth0 -> node-2/eth0 ipv4 lost 4/20"),
            "{}",
            r[0]
        );
    }
}
