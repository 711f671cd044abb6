//! What the controller's read routes answer ([`crate::routes`]): the roster, the tasks and the
//! latest findings, as the controller serializes them and the CLI decodes them; and the body of
//! every error answer.

use serde::{Deserialize, Serialize};

use crate::{AgentRegistration, Finding, TaskKind, TaskStatus};

/// An agent of the roster, as `GET /v1/agents` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(flatten)]
    pub registration: AgentRegistration,
    /// When it last asked for plans (Unix ms); 0 when the answer does not say.
    #[serde(default)]
    pub last_seen_ms: u64,
}

/// A task, as `GET /v1/tasks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub name: String,
    /// Where the task is defined: its file (standalone), or `netreaches/NAME` and the like
    /// (Kubernetes).
    pub file: String,
    /// `None` when the definition is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    /// `spec.schedule.schedule` (kdoctor's `schedule` printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Why the definition is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Accepted fields that are not acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

/// The faulty interfaces of a task's latest round, as `GET /v1/findings` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFindings {
    pub task: String,
    pub round: u32,
    pub findings: Vec<Finding>,
}

/// The body of every error answer of the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
