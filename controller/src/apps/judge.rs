//! An application round judged against its `expect` (pure): every reason names its cause.

use super::{
    AppExpect,
    aggregate::{AppAggregate, WORST_AGENTS},
};

/// Why the aggregated round fails; empty when it succeeds. Agents that did not report or
/// could not run come first, then a round that ran nothing, then the expectations.
pub fn judge(expect: &AppExpect, agg: &AppAggregate) -> Vec<String> {
    let s = &agg.app.summary;
    let mut reasons = Vec::new();
    if !agg.not_reported.is_empty() {
        reasons.push(format!(
            "agents did not report: {}",
            agg.not_reported.join(", ")
        ));
    }
    reasons.extend(agg.agent_errors.iter().cloned());
    if agg.planned_agents == 0 {
        reasons.push("no agent ran the round (none registered)".into());
    } else if s.requests == 0 && reasons.is_empty() {
        reasons.push(format!(
            "no request was sent ({} planned over {} agents)",
            s.planned, s.reported
        ));
    }
    if let Some(rate) = s.success_rate
        && rate < expect.success_rate
    {
        let mut detail = agg
            .failing
            .iter()
            .take(WORST_AGENTS)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if agg.failing.len() > WORST_AGENTS {
            detail.push_str(&format!(
                "; +{} more agents",
                agg.failing.len() - WORST_AGENTS
            ));
        }
        reasons.push(format!(
            "success rate {rate:.4} is below the expected {}: {} of {} requests succeeded ({detail})",
            expect.success_rate, s.successes, s.requests
        ));
    }
    if s.not_sent > 0 {
        let by_node: Vec<String> = agg
            .unsent
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect();
        let bound = agg
            .max_in_flight
            .map_or_else(String::new, |m| format!(" of {m}"));
        reasons.push(format!(
            "{} of {} planned requests were not sent: the agents reached their in-flight \
             bound{bound} or fell behind their pace (the prober's shortfall, not the target's \
             failures): {}",
            s.not_sent,
            s.planned,
            by_node.join(", ")
        ));
    }
    if let Some(mean) = s.mean_latency_ms
        && mean > expect.mean_access_delay_in_ms as f64
    {
        let slow = agg.slowest.as_ref().map_or_else(String::new, |(node, us)| {
            format!(" (slowest: {node} {:.3} ms)", us / 1000.0)
        });
        reasons.push(format!(
            "mean latency {mean:.3} ms is above the expected {} ms{slow}",
            expect.mean_access_delay_in_ms
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use meshdoctor_api::{
        AgentAppState, AgentReport, AppResult, LatencyUs, LoadStats, RoundPlan, Task, Timestamping,
    };

    use super::*;
    use crate::{
        apps::{
            SuccessCodes,
            aggregate::aggregate,
            target::{app_target, build_app_plans},
            tests::{dns_task, http_task},
        },
        mesh::tests::{mk_agent, mk_meta},
    };

    fn stats(requests: u64, ok: u64, codes: &[(&str, u64)], errors: &[(&str, u64)]) -> LoadStats {
        LoadStats {
            planned: 20,
            requests,
            successes: ok,
            not_sent: 20 - requests,
            codes: codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            errors: errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            bytes: 0,
            tps: requests as f64 / 2.0,
            latency: (ok > 0).then_some(LatencyUs {
                min: 200,
                mean: 1000.0,
                max: 3000,
                p50: 900,
                p90: 1500,
                p95: 2000,
                p99: 2900,
            }),
            duration_ms: 2000,
            error_examples: BTreeMap::new(),
        }
    }

    fn report(node: &str, plan: &RoundPlan, app: Option<AppResult>) -> AgentReport {
        AgentReport {
            app,
            ..AgentReport::on_plan(node, plan, Timestamping::Ebpf)
        }
    }

    fn result(s: LoadStats) -> Option<AppResult> {
        Some(AppResult {
            target: "GET http://web/".into(),
            error: None,
            stats: s,
        })
    }

    /// A judged application round: the aggregate's report parts and the judge's reasons.
    struct AppJudged {
        app: meshdoctor_api::AppRoundReport,
        summary: meshdoctor_api::RoundSummary,
        not_reported: Vec<String>,
        reasons: Vec<String>,
    }

    /// Judges `task` with node-i reporting `results[i-1]` (`None`: no report).
    fn judged(task: &Task, results: Vec<Option<Option<AppResult>>>) -> AppJudged {
        let target = app_target(task, None).unwrap();
        let roster: Vec<_> = (1..=results.len() as u8).map(mk_agent).collect();
        let plans = build_app_plans(task, &target, &roster, mk_meta());
        let reports = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let node = format!("node-{}", i + 1);
                r.map(|app| (node.clone(), report(&node, &plans[&node], app)))
            })
            .collect();
        let expect = match task {
            Task::AppHttpHealthy(t) => AppExpect::http(t),
            Task::NetDns(t) => AppExpect::dns(t),
            Task::NetReach(_) => unreachable!("an application task"),
        };
        let agg = aggregate(&expect, &target.label(), &plans, &reports);
        AppJudged {
            reasons: judge(&expect, &agg),
            app: agg.app,
            summary: agg.summary,
            not_reported: agg.not_reported,
        }
    }

    /// Agents' counts are claims from the network: sums stop at u64::MAX instead of wrapping
    /// (or panicking in a debug build), successes never exceed requests, and floats JSON
    /// cannot carry become 0, so the report can be stored and read back.
    #[test]
    fn hostile_counts_neither_wrap_nor_break_the_report() {
        let task = http_task(", host: web", "");
        let mut huge = stats(20, 20, &[("200", u64::MAX)], &[("timeout", u64::MAX)]);
        (huge.requests, huge.successes, huge.planned) = (u64::MAX, u64::MAX, u64::MAX);
        huge.tps = f64::NAN;
        huge.latency.as_mut().unwrap().mean = f64::INFINITY;
        let mut lying = stats(10, 20, &[("200", 20)], &[]);
        lying.tps = -5.0;
        let j = judged(
            &task,
            vec![
                Some(result(huge.clone())),
                Some(result(huge)),
                Some(result(lying)),
            ],
        );
        let s = &j.app.summary;
        assert_eq!(
            (s.planned, s.requests, s.successes),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!((s.codes["200"], s.errors["timeout"]), (u64::MAX, u64::MAX));
        assert_eq!(s.tps, 0.0);
        let lying = &j.app.agents[2].stats.as_ref().unwrap();
        assert_eq!((lying.requests, lying.successes, lying.tps), (10, 10, 0.0));
        assert!(j.summary.success_rate <= 1.0);
        let json = serde_json::to_string(&j.app).unwrap();
        assert!(
            !json.contains("\"tps\":null") && !json.contains("\"mean\":null"),
            "{json}"
        );
        assert!(
            serde_json::from_str::<meshdoctor_api::AppRoundReport>(&json).is_ok(),
            "{json}"
        );
    }

    #[test]
    fn healthy_round_aggregates_every_agent() {
        let task = http_task(", host: web", "");
        let ok = || Some(result(stats(20, 20, &[("200", 20)], &[])));
        let j = judged(&task, vec![ok(), ok(), ok()]);
        assert!(j.reasons.is_empty(), "{:?}", j.reasons);
        let s = &j.app.summary;
        assert_eq!(
            (s.agents, s.reported, s.planned, s.requests, s.successes),
            (3, 3, 60, 60, 60)
        );
        assert_eq!((s.success_rate, s.mean_latency_ms), (Some(1.0), Some(1.0)));
        assert_eq!(
            (s.min_latency_us, s.max_latency_us),
            (Some(200), Some(3000))
        );
        assert_eq!(s.codes["200"], 60);
        assert!(s.worst_agents.is_empty());
        assert!(j.app.agents.iter().all(|a| a.state == AgentAppState::Ok));
        assert_eq!(j.app.expected, "2xx or 3xx");
        assert_eq!(
            (j.summary.sent, j.summary.received, j.summary.lost),
            (60, 60, 0)
        );
    }

    #[test]
    fn refused_connections_name_the_agents_and_error_kinds() {
        let task = http_task(", host: web", "");
        // node-1 says what its first connect error was; node-2, an older agent, does not.
        let refused = stats(20, 0, &[], &[("connect", 20)]);
        let with_example = LoadStats {
            error_examples: [(
                "connect".to_string(),
                "Connection refused (os error 111)".to_string(),
            )]
            .into(),
            ..refused.clone()
        };
        let j = judged(
            &task,
            vec![Some(result(with_example)), Some(result(refused))],
        );
        assert_eq!(
            j.reasons,
            [
                "success rate 0.0000 is below the expected 1: 0 of 40 requests succeeded \
                 (node-1: 20 of 20 requests failed: connect errors (20: Connection refused \
                 (os error 111)); node-2: 20 of 20 requests failed: connect errors (20))"
            ]
        );
        assert_eq!(j.app.summary.mean_latency_ms, None);
        assert_eq!(j.app.summary.worst_agents, ["node-1", "node-2"]);
        assert_eq!(j.app.agents[0].state, AgentAppState::Failures);
    }

    #[test]
    fn wrong_status_and_rcode_name_the_codes() {
        let task = http_task(", host: web", ", statusCode: 200");
        let j = judged(
            &task,
            vec![Some(result(LoadStats {
                error_examples: [
                    ("timeout".into(), "no reply within 1000 ms".into()),
                    // An example of a kind without errors is not shown.
                    ("tls".into(), "unused".into()),
                ]
                .into(),
                ..stats(20, 0, &[("404", 18)], &[("timeout", 2)])
            }))],
        );
        assert_eq!(
            j.app.agents[0].failures.as_deref(),
            Some(
                "20 of 20 requests failed: timeout errors (2: no reply within 1000 ms); \
                 codes 404 (18), expected 200"
            )
        );
        assert!(j.reasons[0].contains("node-1: 20 of 20 requests failed"));

        let dns = dns_task("{targetUser: {server: 192.0.2.254}}");
        let nx = || Some(result(stats(20, 0, &[("NXDOMAIN", 20)], &[])));
        let j = judged(&dns, vec![nx()]);
        assert!(
            j.reasons[0].contains(
                "node-1: 20 of 20 requests failed: rcode NXDOMAIN (20), expected NOERROR"
            ),
            "{:?}",
            j.reasons
        );
    }

    #[test]
    fn a_lenient_success_rate_lets_some_failures_pass() {
        let task = http_task(", host: web", "").clone();
        let Task::AppHttpHealthy(mut t) = task else {
            unreachable!()
        };
        t.spec.expect.success_rate = 0.9;
        let task = Task::AppHttpHealthy(t);
        let j = judged(
            &task,
            vec![
                Some(result(stats(20, 19, &[("200", 19), ("500", 1)], &[]))),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        assert!(j.reasons.is_empty(), "{:?}", j.reasons);
        assert_eq!(j.app.summary.worst_agents, ["node-1"]);
        assert_eq!(
            j.app.agents[0].failures.as_deref(),
            Some("1 of 20 requests failed: codes 500 (1), expected 2xx or 3xx")
        );
    }

    #[test]
    fn unsent_requests_fail_with_their_own_reason() {
        let task = http_task(", host: web", "");
        let j = judged(
            &task,
            vec![
                Some(result(stats(17, 17, &[("200", 17)], &[]))),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        assert_eq!(
            j.reasons,
            [
                "3 of 40 planned requests were not sent: the agents reached their in-flight \
                 bound of 10 or fell behind their pace (the prober's shortfall, not the \
                 target's failures): node-1 (3)"
            ]
        );
        assert_eq!(j.app.agents[0].state, AgentAppState::Failures);
    }

    #[test]
    fn slow_round_fails_on_the_mean_of_successes() {
        let task = http_task(", host: web", ", meanAccessDelayInMs: 1");
        let mut slow = stats(20, 10, &[("200", 10)], &[("timeout", 10)]);
        slow.latency.as_mut().unwrap().mean = 4000.0;
        let j = judged(
            &task,
            vec![
                Some(result(slow)),
                Some(result(stats(20, 20, &[("200", 20)], &[]))),
            ],
        );
        // (4 ms x 10 + 1 ms x 20) / 30 successes; the timeouts are not in the mean.
        assert_eq!(j.app.summary.mean_latency_ms, Some(2.0));
        assert_eq!(
            j.reasons[1],
            "mean latency 2.000 ms is above the expected 1 ms (slowest: node-1 4.000 ms)"
        );
    }

    #[test]
    fn agents_that_did_not_report_or_could_not_run_are_named() {
        let task = http_task(", host: web", "");
        let broken = Some(AppResult {
            target: "GET http://web/".into(),
            error: Some("tls ca.crt: no certificate in PEM".into()),
            stats: LoadStats {
                planned: 20,
                ..Default::default()
            },
        });
        let j = judged(&task, vec![None, Some(broken), Some(None)]);
        assert_eq!(
            j.reasons,
            [
                "agents did not report: node-1",
                "node-2: cannot run the load: tls ca.crt: no certificate in PEM",
                "node-3: its report has no application result (an agent too old for \
                 application rounds?)",
            ]
        );
        assert_eq!(j.not_reported, ["node-1"]);
        let states: Vec<_> = j.app.agents.iter().map(|a| a.state).collect();
        assert_eq!(
            states,
            [
                AgentAppState::NotReported,
                AgentAppState::Error,
                AgentAppState::Error
            ]
        );
        assert_eq!(j.app.summary.worst_agents, ["node-2", "node-3"]);
        assert_eq!((j.app.summary.reported, j.app.summary.planned), (2, 40));
    }

    #[test]
    fn nothing_sent_or_no_agent_fails() {
        let task = http_task(", host: web", "");
        let idle = Some(result(LoadStats {
            planned: 20,
            ..Default::default()
        }));
        let j = judged(&task, vec![idle]);
        assert_eq!(
            j.reasons,
            ["no request was sent (20 planned over 1 agents)"]
        );
        let j = judged(&task, vec![]);
        assert_eq!(j.reasons, ["no agent ran the round (none registered)"]);
    }

    #[test]
    fn success_codes() {
        assert!(SuccessCodes::HttpOk.is_success("204") && SuccessCodes::HttpOk.is_success("301"));
        assert!(!SuccessCodes::HttpOk.is_success("404") && !SuccessCodes::HttpOk.is_success("2"));
        assert!(SuccessCodes::HttpStatus(404).is_success("404"));
        assert!(!SuccessCodes::HttpStatus(200).is_success("201"));
        assert!(!SuccessCodes::DnsNoError.is_success("NXDOMAIN"));
    }
}
