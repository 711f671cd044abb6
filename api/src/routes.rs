//! The controller's HTTP routes, spelled once for the server (axum patterns) and for its
//! clients (the agent, the CLI, the lab): the paths, the plan long-poll's query and which round
//! of a task a path names. A leaf of the crate; the bodies are in [`crate::views`] and the other
//! wire types.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// `POST` an [`crate::AgentRegistration`] (agents); `GET` the roster as
/// [`crate::views::AgentView`]s.
pub const AGENTS: &str = "/v1/agents";
/// `GET` the plans of an agent's node, long-polled ([`PlansQuery`]).
pub const AGENT_PLANS: &str = "/v1/agents/{node}/plans";
/// `POST` an agent's [`crate::AgentReport`] on the round tagged `{tag}`: the controller knows
/// from the path which plan the report answers, so it refuses one larger than that plan can
/// justify ([`crate::agent_report::max_report_bytes`]) before reading it.
pub const AGENT_REPORT: &str = "/v1/agents/{node}/reports/{tag}";
/// `GET` every task as a [`crate::views::TaskView`].
pub const TASKS: &str = "/v1/tasks";
/// `PUT` a task document, `DELETE` the task (standalone controller).
pub const TASK: &str = "/v1/tasks/{name}";
/// `GET` one [`crate::RoundReport`] of a task ([`RoundRef`]).
pub const TASK_ROUND: &str = "/v1/tasks/{name}/rounds/{round}";
/// `GET` the latest findings of every task as [`crate::views::TaskFindings`].
pub const FINDINGS: &str = "/v1/findings";
pub const HEALTHZ: &str = "/healthz";
/// 200 once the controller serves, on every replica (agents reach the Kubernetes leader by
/// the label it puts on its pod, which the controller Service selects).
pub const READYZ: &str = "/readyz";
/// In Kubernetes, the label (value `"true"`) the leading controller replica puts on its own
/// pod: the controller Service selects it, so these routes are the leader's.
pub const LEADER_LABEL: &str = "meshdoctor.io/leader";
pub const METRICS: &str = "/metrics";

/// [`AGENT_PLANS`] of `node`, with the query.
pub fn agent_plans(node: &str, query: &PlansQuery) -> String {
    format!(
        "/v1/agents/{node}/plans?after={}&waitMs={}",
        query.after, query.wait_ms
    )
}

/// [`AGENT_REPORT`] of `node` on round `tag`.
pub fn agent_report(node: &str, tag: u32) -> String {
    format!("/v1/agents/{node}/reports/{tag}")
}

/// [`TASK`] of `name`.
pub fn task(name: &str) -> String {
    format!("/v1/tasks/{name}")
}

/// [`TASK_ROUND`] of `name` and `round`.
pub fn task_round(name: &str, round: RoundRef) -> String {
    format!("/v1/tasks/{name}/rounds/{round}")
}

/// The plan long-poll's query: plans of rounds tagged above `after`, waiting up to `wait_ms`
/// for one when there is none yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlansQuery {
    #[serde(default)]
    pub after: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

/// Which round of a task a path names: a number, or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundRef {
    Number(u32),
    Latest,
}

impl FromStr for RoundRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(Self::Latest),
            n => n
                .parse()
                .map(Self::Number)
                .map_err(|_| format!("round must be a number or \"latest\", got {n:?}")),
        }
    }
}

impl fmt::Display for RoundRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Latest => f.write_str("latest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_the_patterns() {
        let fill = |pattern: &str, args: &[(&str, &str)]| {
            args.iter().fold(pattern.to_string(), |p, (k, v)| {
                p.replace(&format!("{{{k}}}"), v)
            })
        };
        assert_eq!(task("mesh"), fill(TASK, &[("name", "mesh")]));
        assert_eq!(
            agent_report("node-1", 7),
            fill(AGENT_REPORT, &[("node", "node-1"), ("tag", "7")])
        );
        assert_eq!(
            task_round("mesh", RoundRef::Number(3)),
            fill(TASK_ROUND, &[("name", "mesh"), ("round", "3")])
        );
        let q = PlansQuery {
            after: 7,
            wait_ms: 100,
        };
        assert_eq!(
            agent_plans("node-1", &q),
            fill(AGENT_PLANS, &[("node", "node-1")]) + "?after=7&waitMs=100"
        );
        assert_eq!("latest".parse::<RoundRef>(), Ok(RoundRef::Latest));
        assert_eq!(
            task_round("t", RoundRef::Latest),
            "/v1/tasks/t/rounds/latest"
        );
        assert!("x".parse::<RoundRef>().is_err());
    }
}
