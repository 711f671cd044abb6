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
    AgentRegistration, AppTarget, RoundPlan, RoundReport, RoundStatus, Task, TlsMaterial,
    task::ListedAddress,
};

use crate::{
    apps::{self, AppExpect, aggregate::aggregate},
    join::join,
    judge::failure_reasons,
    localize::{LocalizeConfig, localize},
    mailbox::Collected,
    mesh::{RoundMeta, build_plans},
};

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
    pub tls: Result<Option<TlsMaterial>, String>,
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
}

/// Plans round `meta.round` of `task`: the round, and every agent's plan by node (tagged when
/// the mailbox opens the round) or why the round cannot run.
pub fn plan(
    task: &Task,
    inputs: Inputs,
    meta: RoundMeta<'_>,
) -> (Round, Result<BTreeMap<String, RoundPlan>, String>) {
    let Inputs {
        roster,
        service_targets,
        target_problems,
        tls,
    } = inputs;
    let (plans, problems, target) = match task {
        Task::NetReach(t) => (
            build_plans(t, &roster, &service_targets, meta).map_err(|e| e.to_string()),
            target_problems,
            None,
        ),
        Task::AppHttpHealthy(_) | Task::NetDns(_) => {
            let resolved = tls.and_then(|tls| apps::target::app_target(task, tls));
            let label = resolved
                .as_ref()
                .map_or_else(|_| apps::target::spec_label(task), AppTarget::label);
            let plans = resolved.map(|t| apps::target::build_app_plans(task, &t, &roster, meta));
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
    };
    (round, plans)
}

/// The report of `round` of `task` at `now_ms`, from what it collected, or from why it could
/// not be planned (then it never started: it starts and ends now).
pub fn close(
    task: &Task,
    round: Round,
    collected: Result<Collected, String>,
    now_ms: u64,
) -> RoundReport {
    let Round {
        task: name,
        round,
        start_ms,
        expected_agents,
        problems,
        target,
    } = round;
    let ran = collected.is_ok();
    let (collected, mut reasons, start_ms) = match collected {
        Ok(c) => (c, problems, start_ms),
        Err(e) => (Collected::default(), vec![e], start_ms.min(now_ms)),
    };
    let mut report = RoundReport {
        task: name,
        round,
        round_tag: collected.tag,
        status: RoundStatus::Succeed,
        failure_reasons: vec![],
        start_ms,
        end_ms: now_ms.max(start_ms),
        expected_agents,
        not_reported: vec![],
        summary: Default::default(),
        findings: vec![],
        paths: vec![],
        app: None,
    };
    let Collected { plans, reports, .. } = &collected;
    let app = |expect: AppExpect| {
        let label = target.unwrap_or_else(|| apps::target::spec_label(task));
        let agg = aggregate(&expect, &label, plans, reports);
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
            let joined = join(plans, reports);
            reasons.extend(failure_reasons(&t.spec.expect, &joined));
            report.findings = localize(&joined.paths, &joined.losses, &LocalizeConfig::default());
            report.not_reported = joined.not_reported;
            report.summary = joined.summary;
            report.paths = joined.paths;
        }
    }
    if !reasons.is_empty() {
        report.status = RoundStatus::Fail;
    }
    report.failure_reasons = reasons;
    report
}
