//! Types shared by the meshdoctor controller, agent and CLI: the wire and file formats.
//!
//! The data flows one way, and the modules follow it: a [`task`] spec becomes a round [`plan`]
//! per agent, each agent answers with an [`agent_report`], and the controller joins those into a
//! [`round`] report, folded into the task's [`status`]. The controller's HTTP API is [`routes`]
//! and [`views`]. Leaves every stage shares: [`kinds`] (the small enums: task kind, family,
//! protocols), [`histogram`], [`stats`] and [`load`] (numbers), [`time`] (durations and timestamps),
//! [`name`] (the names a round repeats on its paths), [`allow`] (where probes may go).

pub mod agent_report;
pub mod allow;
#[cfg(feature = "crd")]
mod crd_schema;
pub mod histogram;
pub mod kinds;
pub mod load;
pub mod name;
pub mod plan;
pub mod round;
pub mod routes;
pub mod stats;
pub mod status;
pub mod task;
#[cfg(any(test, feature = "testing"))]
mod testing;
pub mod time;
pub mod views;

pub use agent_report::{
    AgentReport, AnsweredPath, AppResult, LostProbe, ObserverStats, Packet, ProbeDrop, SentPath,
};
pub use histogram::Histogram;
pub use kinds::{
    DnsProtocol, Family, HttpHeader, HttpMethod, MeshMode, Protocol, TaskKind, Timestamping,
};
pub use load::{LatencyUs, LoadStats};
pub use meshdoctor_agent_common::{PathId, probe_id, probe_id_parts, probe_tag};
pub use name::{Name, Names};
pub use plan::{
    AgentRegistration, AppPlan, AppTarget, DnsPlan, DnsRecord, HttpPlan, IncomingPath,
    InterfaceInfo, MAX_APP_IN_FLIGHT, MAX_TCP_PROBES_PER_PATH, PlannedTarget, RoundPlan,
    TCP_PROBE_PORT_BASE, TlsMaterial, app_max_in_flight,
};
pub use round::{
    AgentApp, AgentAppState, AppRoundReport, AppSummary, Direction, DropCount, Evidence, Finding,
    HookCounts, Interval, LossSegments, LostSample, MeshSummary, PathResult, PathSegment,
    PathState, ReasonCount, RoundReport, RoundStatus, RoundSummary, Segment,
};
pub use stats::{RttStats, clopper_pearson};
pub use status::{
    Condition, ConditionStatus, DEFAULT_MAX_HISTORY, HistoryEntry, LastRoundStatus, RoundDigest,
    TaskStatus,
};
pub use task::{AppHttpHealthy, NetDns, NetReach, Task, TaskError, TaskSpec};
