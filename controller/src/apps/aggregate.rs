//! An application round's aggregate (pure): the agents' load statistics summed into the
//! round's [`AppRoundReport`], with what the judge needs besides: who did not report or could
//! not run the load, who sent less than planned, who was slowest.

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentApp, AgentAppState, AgentReport, AppResult, AppRoundReport, AppSummary, LatencyUs,
    LoadStats, RoundPlan, RoundSummary, TaskKind,
};

use super::{AppExpect, SuccessCodes};

/// Agents named as the worst, worst first.
pub const WORST_AGENTS: usize = 3;

/// An aggregated application round, before judging.
#[derive(Debug, Clone, PartialEq)]
pub struct AppAggregate {
    pub app: AppRoundReport,
    /// The round's totals in the shared summary (requests as `sent`, successes as `received`).
    pub summary: RoundSummary,
    /// Nodes with a plan but no report, sorted.
    pub not_reported: Vec<String>,
    /// Agents that reported but could not run the load, `node: why`, in node order.
    pub agent_errors: Vec<String>,
    /// Every agent with failures, worst first, `node: what failed` (the summary names only
    /// the [`WORST_AGENTS`] first).
    pub failing: Vec<String>,
    /// Requests not sent, by node.
    pub unsent: Vec<(String, u64)>,
    /// The agents' in-flight bound.
    pub max_in_flight: Option<u32>,
    /// The slowest agent and its mean latency of successes in µs.
    pub slowest: Option<(String, f64)>,
    /// Agents that had a plan.
    pub planned_agents: usize,
}

/// `{n} of {requests} requests failed: connect errors (38: Connection refused (os error 111)),
/// timeout errors (2: no reply within 1000 ms); codes 404 (40), expected 200`, each error kind
/// with the first error's message when the agent reported one; `None` without failures.
pub fn describe_failures(kind: TaskKind, codes: SuccessCodes, s: &LoadStats) -> Option<String> {
    let failed = s.requests.saturating_sub(s.successes);
    if failed == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if !s.errors.is_empty() {
        parts.push(
            by_count(&s.errors)
                .iter()
                .map(|(kind, n)| match s.error_examples.get(*kind) {
                    Some(example) => format!("{kind} errors ({n}: {example})"),
                    None => format!("{kind} errors ({n})"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let bad: BTreeMap<String, u64> = s
        .codes
        .iter()
        .filter(|(code, _)| !codes.is_success(code))
        .map(|(c, n)| (c.clone(), *n))
        .collect();
    if !bad.is_empty() {
        let word = if kind == TaskKind::NetDns {
            "rcode"
        } else {
            "codes"
        };
        let list: Vec<String> = by_count(&bad)
            .iter()
            .map(|(code, n)| format!("{code} ({n})"))
            .collect();
        parts.push(format!("{word} {}, expected {codes}", list.join(", ")));
    }
    if parts.is_empty() {
        // Failures the agent counted but did not break down (an agent bug): say so.
        parts.push("no error kind or code recorded".into());
    }
    Some(format!(
        "{failed} of {} requests failed: {}",
        s.requests,
        parts.join("; ")
    ))
}

/// Entries most frequent first, then by key.
fn by_count(map: &BTreeMap<String, u64>) -> Vec<(&String, u64)> {
    let mut v: Vec<(&String, u64)> = map.iter().map(|(k, n)| (k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

/// Requests the pacing of `plan` calls for (as the agents' runner counts them).
fn planned_requests(plan: &RoundPlan) -> u64 {
    u64::from(plan.qps) * plan.duration_ms / 1000
}

/// Why an agent's report without an application result counts as an error.
const NO_RESULT: &str = "its report has no application result (an agent too old for application \
                         rounds?)";

/// An agent that ran no load: it did not report, or could not.
fn idle(node: &str, state: AgentAppState, error: Option<String>) -> AgentApp {
    AgentApp {
        node: node.into(),
        state,
        error,
        success_rate: None,
        failures: None,
        stats: None,
    }
}

/// An agent's load, judged on its own: its failures described, its state.
fn agent_app(node: &str, result: &AppResult, expect: &AppExpect) -> AgentApp {
    let st = &result.stats;
    let failures = describe_failures(expect.kind, expect.codes, st);
    let state = if result.error.is_some() {
        AgentAppState::Error
    } else if failures.is_some() || st.not_sent > 0 || st.requests == 0 {
        AgentAppState::Failures
    } else {
        AgentAppState::Ok
    };
    AgentApp {
        node: node.into(),
        state,
        error: result.error.clone(),
        success_rate: (st.requests > 0).then(|| st.successes as f64 / st.requests as f64),
        failures,
        stats: Some(st.clone()),
    }
}

/// An agent's stats as a round takes them, since they come from the network: no more
/// successes than requests, and no number JSON cannot carry (postcard can: NaN, infinities) or
/// that cannot be (negative) among the rates and means.
fn taken(st: &LoadStats) -> LoadStats {
    let real = |x: f64| if x.is_finite() && x >= 0.0 { x } else { 0.0 };
    LoadStats {
        successes: st.successes.min(st.requests),
        tps: real(st.tps),
        latency: st.latency.map(|l| LatencyUs {
            mean: real(l.mean),
            ..l
        }),
        ..st.clone()
    }
}

/// Adds an agent's counts to the round's; sums stop at the largest count rather than wrap.
fn add(s: &mut AppSummary, st: &LoadStats) {
    s.planned = s.planned.saturating_add(st.planned);
    s.requests = s.requests.saturating_add(st.requests);
    s.successes = s.successes.saturating_add(st.successes);
    s.not_sent = s.not_sent.saturating_add(st.not_sent);
    s.tps += st.tps;
    for (code, n) in &st.codes {
        let sum = s.codes.entry(code.clone()).or_default();
        *sum = sum.saturating_add(*n);
    }
    for (kind, n) in &st.errors {
        let sum = s.errors.entry(kind.clone()).or_default();
        *sum = sum.saturating_add(*n);
    }
    if let Some(l) = &st.latency {
        s.min_latency_us = Some(s.min_latency_us.map_or(l.min, |m| m.min(l.min)));
        s.max_latency_us = Some(s.max_latency_us.map_or(l.max, |m| m.max(l.max)));
    }
}

/// The agents with failures or errors, worst first: errors, then the most requests short.
fn worst_first(agents: &[AgentApp]) -> Vec<&AgentApp> {
    let mut worst: Vec<&AgentApp> = agents
        .iter()
        .filter(|a| matches!(a.state, AgentAppState::Failures | AgentAppState::Error))
        .collect();
    let shortfall = |a: &AgentApp| {
        a.stats.as_ref().map_or(0, |st| {
            st.requests.saturating_sub(st.successes) + st.not_sent
        })
    };
    worst.sort_by(|a, b| {
        (b.state == AgentAppState::Error)
            .cmp(&(a.state == AgentAppState::Error))
            .then_with(|| shortfall(b).cmp(&shortfall(a)))
    });
    worst
}

/// Sums the reports of an application round on `target` (its label) by the plans.
pub fn aggregate(
    expect: &AppExpect,
    target: &str,
    plans: &BTreeMap<String, RoundPlan>,
    reports: &BTreeMap<String, AgentReport>,
) -> AppAggregate {
    let mut agents = Vec::new();
    let mut not_reported = Vec::new();
    let mut agent_errors = Vec::new();
    let mut s = AppSummary {
        agents: u32::try_from(plans.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    // Sum of (mean latency x successes) in µs, for the mean over every success.
    let mut latency_sum_us = 0.0;
    let mut slowest: Option<(&str, f64)> = None;
    let mut unsent = Vec::new();
    let mut max_in_flight = None;

    for (node, plan) in plans {
        max_in_flight = max_in_flight.or(plan.app.as_ref().map(|a| a.max_in_flight));
        let app = match reports.get(node).map(|r| r.app.as_ref()) {
            None => {
                not_reported.push(node.clone());
                idle(node, AgentAppState::NotReported, None)
            }
            Some(None) => {
                s.reported += 1;
                s.planned = s.planned.saturating_add(planned_requests(plan));
                agent_errors.push(format!("{node}: {NO_RESULT}"));
                idle(node, AgentAppState::Error, Some(NO_RESULT.into()))
            }
            Some(Some(result)) => {
                s.reported += 1;
                let result = &AppResult {
                    stats: taken(&result.stats),
                    ..result.clone()
                };
                let st = &result.stats;
                add(&mut s, st);
                if let Some(l) = &st.latency {
                    latency_sum_us += l.mean * st.successes as f64;
                    if slowest.is_none_or(|(_, mean)| l.mean > mean) {
                        slowest = Some((node, l.mean));
                    }
                }
                if st.not_sent > 0 {
                    unsent.push((node.clone(), st.not_sent));
                }
                if let Some(e) = &result.error {
                    agent_errors.push(format!("{node}: cannot run the load: {e}"));
                }
                agent_app(node, result, expect)
            }
        };
        agents.push(app);
    }

    s.failures = s.requests.saturating_sub(s.successes);
    s.success_rate = (s.requests > 0).then(|| s.successes as f64 / s.requests as f64);
    s.mean_latency_ms = (s.successes > 0).then(|| latency_sum_us / s.successes as f64 / 1000.0);
    let worst = worst_first(&agents);
    s.worst_agents = worst
        .iter()
        .take(WORST_AGENTS)
        .map(|a| a.node.clone())
        .collect();
    let failing = worst
        .iter()
        .filter_map(|a| a.failures.as_ref().map(|f| format!("{}: {f}", a.node)))
        .collect();

    let summary = RoundSummary {
        paths: 0,
        lossy_paths: 0,
        sent: s.requests,
        received: s.successes,
        lost: s.failures,
        success_rate: s.success_rate.unwrap_or(0.0),
        mean_rtt_ms: s.mean_latency_ms,
        unobserved_events: 0,
        ..Default::default()
    };
    AppAggregate {
        app: AppRoundReport {
            kind: expect.kind,
            target: target.to_string(),
            expected: expect.codes.to_string(),
            summary: s,
            agents,
        },
        summary,
        not_reported,
        agent_errors,
        failing,
        unsent,
        max_in_flight,
        slowest: slowest.map(|(node, us)| (node.to_string(), us)),
        planned_agents: plans.len(),
    }
}
