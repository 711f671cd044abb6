//! One round of a task, pure: [`plan`] turns the task and what the driver gathered
//! ([`Inputs`]) into the agents' plans, and [`close`] turns what the round collected into its
//! [`RoundReport`]. Both match the task's kind once: a NetReach round is a mesh
//! ([`crate::mesh`]) that is joined ([`crate::join`]), judged ([`crate::judge`]) and localized
//! ([`crate::localize`]); an application round (AppHttpHealthy, NetDns) has every agent load one
//! target ([`crate::apps`]), aggregated and judged.
//!
//! The driver ([`crate::driver`]) does the IO around them: it reads the roster, asks the backend
//! for Service targets, reads the TLS files, publishes the plans in the mailbox, collects the
//! reports and hands the report to the sinks.

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentRegistration, AppTarget, MeshSummary, RoundPlan, RoundReport, RoundStatus, Task,
    TlsMaterial, task::ListedAddress,
};

use crate::{
    ByNode,
    apps::{self, AppExpect, aggregate::aggregate, target::TargetError},
    join::{RoundTimes, join},
    judge::failure_reasons,
    localize::{LocalizeConfig, localize},
    mailbox::Collected,
    mesh::{MeshError, RoundMeta, build_plans},
};

/// Why a round cannot be planned (it fails at once, naming the cause).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

/// What a round needs from outside the pure core, gathered by the driver.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The agents taking part.
    pub roster: Vec<AgentRegistration>,
    /// NetReach: the backend's Service targets, probed besides the mesh ...
    pub service_targets: Vec<ListedAddress>,
    /// ... and why some the task asks for cannot be probed (each fails the round).
    pub target_problems: Vec<String>,
    /// Application rounds: the PEM contents of the target's TLS files
    /// ([`apps::target::tls_files`]), or why one could not be read.
    pub tls: Result<Option<TlsMaterial>, TargetError>,
}

/// A round, planned: what [`close`] needs besides what the round collects.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub task: String,
    pub round: u32,
    /// Scheduled start, Unix ms.
    pub start_ms: u64,
    /// Nodes of the roster when the round was planned.
    pub expected_agents: Vec<String>,
    /// Why the round fails even if every agent succeeds (Service targets it cannot probe).
    pub problems: Vec<String>,
    /// Application rounds: the target's label.
    pub target: Option<String>,
    /// NetReach: the mesh the plans make ...
    pub mesh: Option<MeshSummary>,
    /// ... what it does although it should not (above the probe budget) ...
    pub warnings: Vec<String>,
    /// ... and the agents' topology domains by node.
    pub zones: BTreeMap<String, String>,
}

/// Why an interrupted round failed.
pub const INTERRUPTED: &str =
    "interrupted: the controller stopped before the round closed; nothing of it was kept";

/// The report of a round that a controller started and never closed (it stopped): failed,
/// with nothing measured, so that its number is not used again and the status says what
/// happened to it.
pub fn interrupted(task: &str, round: u32, start_ms: u64, now_ms: u64) -> RoundReport {
    RoundReport {
        task: task.into(),
        round,
        round_tag: 0,
        status: RoundStatus::Fail,
        failure_reasons: vec![INTERRUPTED.into()],
        start_ms: start_ms.min(now_ms),
        end_ms: now_ms,
        expected_agents: vec![],
        not_reported: vec![],
        summary: Default::default(),
        findings: vec![],
        paths: vec![],
        app: None,
        mesh: None,
        warnings: vec![],
        zones: BTreeMap::new(),
    }
}

/// Plans round `meta.round` of `task`: the round, and every agent's plan by node (tagged when
/// the mailbox opens the round) or why the round cannot run.
pub fn plan(
    task: &Task,
    inputs: Inputs,
    meta: RoundMeta<'_>,
) -> (Round, Result<ByNode<RoundPlan>, PlanError>) {
    let Inputs {
        roster,
        service_targets,
        target_problems,
        tls,
    } = inputs;
    let (mut mesh, mut warnings, mut zones) = (None, vec![], BTreeMap::new());
    let (plans, problems, target) = match task {
        Task::NetReach(t) => {
            let plans = build_plans(t, &roster, &service_targets, meta).map(|planned| {
                mesh = Some(planned.mesh);
                warnings.extend(planned.warning);
                zones = planned.zones;
                planned.plans
            });
            (plans.map_err(PlanError::from), target_problems, None)
        }
        Task::AppHttpHealthy(_) | Task::NetDns(_) => {
            let resolved = tls.and_then(|tls| apps::target::app_target(task, tls));
            let label = resolved
                .as_ref()
                .map_or_else(|_| apps::target::spec_label(task), AppTarget::label);
            let plans = resolved
                .map(|t| apps::target::build_app_plans(task, &t, &roster, meta))
                .map_err(PlanError::from);
            (plans, vec![], Some(label))
        }
    };
    let round = Round {
        task: meta.task.to_string(),
        round: meta.round,
        start_ms: meta.start_at_ms,
        expected_agents: roster.iter().map(|a| a.node.clone()).collect(),
        problems,
        target,
        mesh,
        warnings,
        zones,
    };
    (round, plans)
}

/// A closed round: its report, and its times for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub report: RoundReport,
    /// Network RTTs by path of `report.paths` (same index) and stack times by node; none for
    /// application rounds.
    pub times: RoundTimes,
}

/// The report of `round` of `task` at `now_ms`, from what it collected, or from why it could
/// not be planned. A round closed before its scheduled start (it could not be planned, or had
/// no agent) never started: it starts and ends when it closed.
pub fn close(
    task: &Task,
    round: Round,
    collected: Result<Collected, PlanError>,
    now_ms: u64,
) -> Closed {
    let Round {
        task: name,
        round,
        start_ms,
        expected_agents,
        problems,
        target,
        mesh,
        warnings,
        zones,
    } = round;
    let ran = collected.is_ok();
    let (collected, mut reasons) = match collected {
        Ok(c) => (c, problems),
        Err(e) => (Collected::default(), vec![e.to_string()]),
    };
    let start_ms = start_ms.min(now_ms);
    let mut report = RoundReport {
        task: name,
        round,
        round_tag: collected.tag,
        status: RoundStatus::Succeed,
        failure_reasons: vec![],
        start_ms,
        end_ms: now_ms,
        expected_agents,
        not_reported: vec![],
        summary: Default::default(),
        findings: vec![],
        paths: vec![],
        app: None,
        mesh,
        warnings,
        zones,
    };
    let Collected {
        plans, received, ..
    } = collected;
    let mut times = RoundTimes::default();
    let app = |expect: AppExpect| {
        let label = target.unwrap_or_else(|| apps::target::spec_label(task));
        let agg = aggregate(&expect, &label, &plans, &received.nodes);
        // A round that could not be planned ran nothing: its reason says why, and the empty
        // aggregate's ("no agent ran the round") would only mislead.
        if ran {
            reasons.extend(apps::judge::judge(&expect, &agg));
        }
        report.not_reported = agg.not_reported;
        report.summary = agg.summary;
        report.app = Some(agg.app);
    };
    match task {
        Task::AppHttpHealthy(t) => app(AppExpect::http(t)),
        Task::NetDns(t) => app(AppExpect::dns(t)),
        Task::NetReach(t) => {
            let joined = join(&plans, received);
            reasons.extend(failure_reasons(&t.spec.expect, &joined));
            report.findings = localize(
                &joined.paths,
                &joined.losses,
                &report.zones,
                &LocalizeConfig::default(),
            );
            report.not_reported = joined.not_reported;
            report.warnings.extend(joined.warnings);
            report.summary = joined.summary;
            report.paths = joined.paths;
            times = joined.times;
        }
    }
    if !reasons.is_empty() {
        report.status = RoundStatus::Fail;
    }
    report.failure_reasons = reasons;
    Closed { report, times }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{
        AgentReport, AppResult, LoadStats, PathState, Protocol, Timestamping, task::ListedAddress,
    };

    use super::*;
    use crate::{
        apps::tests::http_task,
        join::fold::Received,
        join::tests::mk_report,
        mesh::tests::{mk_agent, mk_meta, mk_task},
    };

    fn inputs(roster: Vec<AgentRegistration>) -> Inputs {
        Inputs {
            roster,
            service_targets: vec![],
            target_problems: vec![],
            tls: Ok(None),
        }
    }

    /// Plans a round of `task` over node-1 and node-2, as the mailbox would publish it.
    fn planned(task: &Task, inputs: Inputs) -> (Round, ByNode<RoundPlan>) {
        let (round, plans) = plan(task, inputs, mk_meta());
        let mut plans = plans.unwrap();
        plans.values_mut().for_each(|p| p.round_tag = 42);
        (round, plans)
    }

    /// `round` closed at 5 s from what it `collected`, which must succeed.
    fn succeeded(
        task: &Task,
        round: &Round,
        collected: Result<Collected, PlanError>,
    ) -> RoundReport {
        let report = close(task, round.clone(), collected, 5_000).report;
        assert_eq!(
            report.status,
            RoundStatus::Succeed,
            "{:?}",
            report.failure_reasons
        );
        report
    }

    fn collected(
        plans: ByNode<RoundPlan>,
        reports: Vec<AgentReport>,
    ) -> Result<Collected, PlanError> {
        Ok(Collected {
            tag: 42,
            received: Received::of(&plans, reports),
            plans,
        })
    }

    #[test]
    fn a_net_reach_round_is_joined_judged_and_localized() {
        let mut net_reach = mk_task(", interfaces: [pod]");
        net_reach.spec.target.ipv6 = false;
        let task = Task::NetReach(net_reach);
        let roster = vec![mk_agent(1), mk_agent(2)];
        let (round, plans) = planned(&task, inputs(roster));
        assert_eq!(round.expected_agents, ["node-1", "node-2"]);
        assert_eq!(round.target, None);

        let reports = vec![
            mk_report(&plans, "node-1", &[]),
            mk_report(&plans, "node-2", &[]),
        ];
        let report = succeeded(&task, &round, collected(plans.clone(), reports));
        assert_eq!(
            (report.task.as_str(), report.round, report.round_tag),
            ("mesh", 1, 42)
        );
        assert_eq!((report.start_ms, report.end_ms), (1_000, 5_000));
        assert_eq!(report.paths.len(), 2);
        assert!(report.paths.iter().all(|p| p.state == PathState::Ok));
        assert!(report.findings.is_empty() && report.app.is_none());

        // node-2 did not report: its paths are not loss, and the round fails saying so.
        let reports = vec![mk_report(&plans, "node-1", &[])];
        let report = close(&task, round, collected(plans, reports), 5_000).report;
        assert_eq!(report.status, RoundStatus::Fail);
        assert_eq!(report.not_reported, ["node-2"]);
        assert_eq!(report.failure_reasons[0], "agents did not report: node-2");
        assert_eq!(report.summary.lost, 0);
    }

    #[test]
    fn target_problems_fail_a_round_that_runs() {
        let task = Task::NetReach(mk_task(""));
        let service = ListedAddress {
            label: "clusterIP 10.96.0.10:9091".into(),
            ip: "10.96.0.10".parse().unwrap(),
            port: Some(9091),
            protocol: None,
        };
        let inputs = Inputs {
            service_targets: vec![service],
            target_problems: vec!["spec.target.loadBalancer: no load-balancer IP".into()],
            ..inputs(vec![mk_agent(1)])
        };
        let (round, plans) = planned(&task, inputs);
        assert_eq!(
            plans["node-1"].targets.len(),
            1,
            "the Service target is probed"
        );
        let report = close(&task, round, collected(plans, vec![]), 5_000).report;
        assert_eq!(report.status, RoundStatus::Fail);
        assert_eq!(
            report.failure_reasons[0],
            "spec.target.loadBalancer: no load-balancer IP"
        );
    }

    #[test]
    fn an_app_round_is_aggregated_and_judged() {
        let task = http_task(", host: web", "");
        let (round, plans) = planned(&task, inputs(vec![mk_agent(1), mk_agent(2)]));
        assert_eq!(round.target.as_deref(), Some("GET http://web"));
        assert!(
            plans
                .values()
                .all(|p| p.app.is_some() && p.protocol == Protocol::Icmp)
        );
        let ok = |node: &str| AgentReport {
            app: Some(AppResult {
                target: "GET http://web".into(),
                error: None,
                stats: LoadStats {
                    planned: 20,
                    requests: 20,
                    successes: 20,
                    codes: [("200".to_string(), 20)].into(),
                    ..Default::default()
                },
            }),
            ..AgentReport::on_plan(node, &plans[node], Timestamping::Ebpf)
        };
        let reports = vec![ok("node-1"), ok("node-2")];
        let report = succeeded(&task, &round, collected(plans.clone(), reports));
        let app = report.app.as_ref().unwrap();
        assert_eq!(
            (app.target.as_str(), app.summary.requests),
            ("GET http://web", 40)
        );
        assert_eq!((report.summary.sent, report.summary.received), (40, 40));
        assert!(report.paths.is_empty() && report.findings.is_empty());

        let reports = vec![ok("node-1")];
        let report = close(&task, round, collected(plans, reports), 5_000).report;
        assert_eq!(report.failure_reasons, ["agents did not report: node-2"]);
    }

    #[test]
    fn a_round_that_cannot_be_planned_fails_with_why_and_never_ends_before_it_starts() {
        let task = http_task(", host: 'https://web', tlsCaFile: /nope/ca.pem", "");
        let unreadable = TargetError::Unreadable {
            field: "tlsCaFile",
            path: "/nope/ca.pem".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        let inputs = Inputs {
            tls: Err(unreadable.clone()),
            ..inputs(vec![mk_agent(1)])
        };
        let (round, plans) = plan(&task, inputs, mk_meta());
        let why = plans.unwrap_err();
        assert_eq!(why, PlanError::Target(unreadable));
        // Planned before its scheduled start (1 000), closed at once (500).
        let report = close(&task, round, Err(why), 500).report;
        assert_eq!(report.status, RoundStatus::Fail);
        assert_eq!(
            report.failure_reasons,
            [
                "spec.target.tlsCaFile: cannot read \"/nope/ca.pem\" on the controller: No such \
                 file or directory (os error 2)"
            ]
        );
        assert_eq!(report.round_tag, 0, "never published");
        assert_eq!((report.start_ms, report.end_ms), (500, 500));
        assert_eq!(report.app.unwrap().target, "GET https://web");
    }
}
