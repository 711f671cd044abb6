//! Task specs: kdoctor's three kinds, `NetReach`, `AppHttpHealthy` and `NetDns`, with kdoctor's
//! fields, parsed strictly so that a typo is an error naming the file and the field, not a
//! silent default. Every error reads `file: field.path: reason`.
//!
//! A kdoctor manifest ports as is: `apiVersion` may be `meshdoctor.io/v1beta1` or kdoctor's
//! `kdoctor.io/v1beta1`, the DNS kind may be spelled `NetDns` or kdoctor's `Netdns`, and
//! kdoctor's fields that meshdoctor does not act on (`agentSpec`, NetReach's Service targets,
//! Netdns's `sourceAgentNodeSelector`) are accepted and reported by [`Task::warnings`].
//!
//! Defaults follow kdoctor's CRD except where kdoctor is wrong:
//! - `perRequestTimeoutInMS` defaults to 500 ms (kdoctor's CRD says 5 ms, its docs 500);
//! - an omitted `roundTimeoutMinute` fits the `"M N"` interval instead of failing kdoctor's own
//!   rule (see [`schedule`]);
//! - booleans keep their documented defaults when omitted (kdoctor's `omitempty` bools lose
//!   a `true` default);
//! - AppHttpHealthy headers are split on the first `:` only, so values may contain `:`.
//!
//! The kinds live in [`netreach`], [`apphttp`] and [`netdns`]; [`Task`] is any of them, parsed
//! from one YAML document by its `kind`.
//!
//! With the `crd` feature each kind's spec also derives its Kubernetes custom resource
//! (`NetReachResource`, `AppHttpHealthyResource`, `NetDnsResource`: group `meshdoctor.io`,
//! version `v1beta1`, cluster-scoped, status [`crate::status::TaskStatus`]), and `crd_files`
//! renders their CRDs. The schemas carry the fixed bounds of the validation below as
//! `minimum`/`maximum`, and its cross-field checks as CEL rules (`x-kubernetes-validations`),
//! so the apiserver rejects most of what a task file would fail on; the checks that need
//! parsing (URLs, IP addresses, cron expressions, round windows) are the Rust validation's only.

pub mod apphttp;
pub mod mesh;
pub mod netdns;
pub mod netreach;
pub mod schedule;

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

#[cfg(feature = "crd")]
pub use apphttp::AppHttpHealthyResource;
pub use apphttp::{
    AppHttpHealthy, AppHttpHealthySpec, AppHttpHealthyTarget, HttpSuccessCondition, NetHttpRequest,
};
pub use mesh::{DEFAULT_TOPOLOGY_KEY, MeshSpec};
#[cfg(feature = "crd")]
pub use netdns::NetDnsResource;
pub use netdns::{
    DEFAULT_DNS_DOMAIN, NetDns, NetDnsRequest, NetDnsSpec, NetDnsTarget, NetDnsTargetDns,
    NetDnsTargetUser,
};
#[cfg(feature = "crd")]
pub use netreach::NetReachResource;
pub use netreach::{
    ListedAddress, NetReach, NetReachRequest, NetReachSpec, NetReachTarget, PRIMARY_INTERFACE,
    PairPath, RemoteAgent,
};
pub use schedule::{
    CronSchedule, MAX_SCHEDULE_LEN, RoundWindow, Schedule, ScheduleForm, SchedulePlan,
};

use crate::{TaskKind, time::format_duration};

/// meshdoctor's API group and version.
pub const API_VERSION: &str = "meshdoctor.io/v1beta1";
/// kdoctor's, accepted too so that a kdoctor manifest ports unchanged.
pub const KDOCTOR_API_VERSION: &str = "kdoctor.io/v1beta1";

/// Highest NetReach `request.qps` (probes per second per agent and target path): the cap that
/// keeps an agent from being turned into a traffic cannon. kdoctor's default cap is 20.
pub const MAX_QPS: u32 = 1000;
/// Highest AppHttpHealthy `request.qps` (requests per second per agent). kdoctor's default cap
/// is 100, configurable; its own benchmark reaches ~30 000 on 3 cores. This cap leaves room for
/// benchmarks against wrk and hey and still catches a typo'd extra zero or two.
pub const MAX_APP_HTTP_QPS: u32 = 50_000;
/// Highest NetDns `request.qps` (queries per second per agent and server), for the same
/// reasons (kdoctor: cap 100, benchmark ~30 000).
pub const MAX_DNS_QPS: u32 = 50_000;
/// Longest `request.durationInSecond`.
pub const MAX_DURATION_IN_SECOND: u32 = 3600;
/// Longest `request.perRequestTimeoutInMS`.
pub const MAX_PER_REQUEST_TIMEOUT_IN_MS: u32 = 60_000;
/// What a round must leave its agents, after the probing and the last probe's timeout, to
/// report before the round's deadline (the next round's start for `@every` and cron
/// schedules): a schedule that leaves less is refused rather than run and failed every time.
pub const REPORT_TIME: Duration = Duration::from_secs(1);

/// The CRD files `cargo xtask crds` writes to `deploy/crds/`, one CRD each, as
/// `(file name, YAML)`: generated here, from the same types the task files parse into, so the
/// Kubernetes schema and the file schema cannot drift apart.
#[cfg(feature = "crd")]
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt as _;
    const HEADER: &str =
        "# Generated from the meshdoctor-api task types by `cargo xtask crds`; do not edit.\n";
    [
        ("netreach.yaml", NetReachResource::crd()),
        ("apphttphealthy.yaml", AppHttpHealthyResource::crd()),
        ("netdns.yaml", NetDnsResource::crd()),
    ]
    .into_iter()
    .map(|(file, mut crd)| {
        for version in &mut crd.spec.versions {
            version.additional_printer_columns = Some(printer_columns());
        }
        Ok((file, format!("{HEADER}{}", serde_yaml::to_string(&crd)?)))
    })
    .collect()
}

/// The columns `kubectl get` shows for every kind: kdoctor's (finish, expectedRound, doneRound,
/// lastRoundStatus, schedule), then Age. Set here once rather than in each kind's derive.
#[cfg(feature = "crd")]
fn printer_columns()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition>
{
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;
    let column = |name: &str, type_: &str, json_path: &str, described: bool| {
        CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            description: described.then(|| name.into()),
            ..Default::default()
        }
    };
    vec![
        column("finish", "boolean", ".status.finish", true),
        column("expectedRound", "integer", ".status.expectedRound", true),
        column("doneRound", "integer", ".status.doneRound", true),
        column("lastRoundStatus", "string", ".status.lastRoundStatus", true),
        column("schedule", "string", ".spec.schedule.schedule", true),
        column("Age", "date", ".metadata.creationTimestamp", false),
    ]
}

/// A task file could not be used. Every variant names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema: a wrong type, a missing required field, an unknown
    /// field. `field` is the path into the document, e.g. `spec.request.qps`.
    #[error("{file}: {field}: {reason}")]
    Parse {
        file: String,
        field: String,
        reason: String,
    },
    /// The YAML fits the schema but a value is out of range or inconsistent.
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },
}

/// A validation failure before the file name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// A DNS subdomain name, unique among the loaded tasks. Other metadata (labels,
    /// annotations) is accepted and ignored.
    pub name: String,
}

/// kdoctor's `expect` (`NetSuccessCondition`) for NetReach and NetDns; AppHttpHealthy's adds
/// `statusCode` ([`HttpSuccessCondition`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessCondition {
    /// The round fails when successes / requests is below this (0..=1).
    #[serde(default = "default_success_rate")]
    #[cfg_attr(feature = "crd", schemars(range(min = 0, max = 1)))]
    pub success_rate: f64,
    /// The round fails when the mean latency of successful requests is above this.
    #[serde(default = "default_mean_delay")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1)))]
    pub mean_access_delay_in_ms: u64,
}

impl Default for SuccessCondition {
    fn default() -> Self {
        Self {
            success_rate: default_success_rate(),
            mean_access_delay_in_ms: default_mean_delay(),
        }
    }
}

/// `spec.expect.successRate` when omitted: every probe must come back.
pub const DEFAULT_SUCCESS_RATE: f64 = 1.0;
/// `spec.request.qps` when omitted (kdoctor's default).
pub const DEFAULT_QPS: u32 = 5;
/// `spec.request.durationInSecond` when omitted (kdoctor's default).
pub const DEFAULT_DURATION_SECS: u32 = 2;

pub(crate) fn default_success_rate() -> f64 {
    DEFAULT_SUCCESS_RATE
}
pub(crate) fn default_mean_delay() -> u64 {
    5000
}
pub(crate) fn default_qps() -> u32 {
    DEFAULT_QPS
}
pub(crate) fn default_duration() -> u32 {
    DEFAULT_DURATION_SECS
}
pub(crate) fn default_timeout() -> u32 {
    500
}
pub(crate) fn yes() -> bool {
    true
}

/// The request load of a round, whatever the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLoad {
    /// Requests (probes) per second per agent and target.
    pub qps: u32,
    pub duration: Duration,
    pub per_request_timeout: Duration,
}

/// Any task, parsed from one YAML document by its `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Task {
    NetReach(NetReach),
    AppHttpHealthy(AppHttpHealthy),
    NetDns(NetDns),
}

impl Task {
    /// Reads and validates one task file.
    pub fn from_file(path: &Path) -> Result<Self, TaskError> {
        let (file, text) = read(path)?;
        Self::from_yaml(&file, &text)
    }

    /// Parses and validates a task of any kind; `file` only names the source in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, TaskError> {
        Ok(match check_head(file, text, None)? {
            TaskKind::NetReach => Self::NetReach(parse_kind(file, text)?),
            TaskKind::AppHttpHealthy => Self::AppHttpHealthy(parse_kind(file, text)?),
            TaskKind::NetDns => Self::NetDns(parse_kind(file, text)?),
        })
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            Self::NetReach(_) => TaskKind::NetReach,
            Self::AppHttpHealthy(_) => TaskKind::AppHttpHealthy,
            Self::NetDns(_) => TaskKind::NetDns,
        }
    }

    /// The kind's common part: one match here serves every accessor of [`TaskSpec`].
    pub fn spec(&self) -> &dyn TaskSpec {
        match self {
            Self::NetReach(t) => t,
            Self::AppHttpHealthy(t) => t,
            Self::NetDns(t) => t,
        }
    }

    pub fn as_net_reach(&self) -> Option<&NetReach> {
        match self {
            Self::NetReach(t) => Some(t),
            _ => None,
        }
    }
}

/// What every kind shares, written once here instead of per kind and again in [`Task`] (which
/// reaches it through [`Task::spec`]).
pub trait TaskSpec {
    fn metadata(&self) -> &Metadata;
    /// `apiVersion` as written.
    fn api_version(&self) -> &str;
    /// `spec.schedule`.
    fn schedule_plan(&self) -> &SchedulePlan;
    /// `spec.request`'s qps, durationInSecond and perRequestTimeoutInMS.
    fn request_timing(&self) -> (u32, u32, u32);
    /// Fields that were accepted (for kdoctor compatibility) but that meshdoctor does not act
    /// on, or acts on only in one backend, one sentence each naming the field.
    fn warnings(&self) -> Vec<String>;

    fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The parsed schedule; valid once the task passed validation.
    fn schedule(&self) -> Schedule {
        self.schedule_plan().parsed()
    }

    /// See [`SchedulePlan::round_timeout`].
    fn round_timeout(&self) -> Duration {
        self.schedule_plan().round_timeout()
    }

    /// `spec.request`'s rate and timing.
    fn load(&self) -> RequestLoad {
        let (qps, secs, ms) = self.request_timing();
        RequestLoad {
            qps,
            duration: Duration::from_secs(secs.into()),
            per_request_timeout: Duration::from_millis(ms.into()),
        }
    }
}

impl TaskSpec for Task {
    fn metadata(&self) -> &Metadata {
        self.spec().metadata()
    }

    fn api_version(&self) -> &str {
        self.spec().api_version()
    }

    fn schedule_plan(&self) -> &SchedulePlan {
        self.spec().schedule_plan()
    }

    fn request_timing(&self) -> (u32, u32, u32) {
        self.spec().request_timing()
    }

    fn warnings(&self) -> Vec<String> {
        self.spec().warnings()
    }
}

/// Implements the accessors of [`TaskSpec`] every kind has in the same place.
macro_rules! common_accessors {
    () => {
        fn metadata(&self) -> &super::Metadata {
            &self.metadata
        }

        fn api_version(&self) -> &str {
            &self.api_version
        }

        fn schedule_plan(&self) -> &super::SchedulePlan {
            &self.spec.schedule
        }

        fn request_timing(&self) -> (u32, u32, u32) {
            let r = &self.spec.request;
            (r.qps, r.duration_in_second, r.per_request_timeout_in_ms)
        }
    };
}
pub(crate) use common_accessors;

/// A kind's constructors: read a file, or parse a document whose `file` only names the source
/// in errors; another kind is an error on `kind`.
macro_rules! parsers {
    () => {
        /// Reads, parses and validates one task file of this kind.
        pub fn from_file(path: &std::path::Path) -> Result<Self, super::TaskError> {
            let (file, text) = super::read(path)?;
            Self::from_yaml(&file, &text)
        }

        /// Parses and validates a task of this kind; `file` only names the source in errors.
        pub fn from_yaml(file: &str, text: &str) -> Result<Self, super::TaskError> {
            super::parse_kind(file, text)
        }
    };
}
pub(crate) use parsers;

/// What every kind implements to be parsed by [`parse_kind`].
pub(crate) trait Kind: DeserializeOwned + TaskSpec {
    const KIND: TaskKind;
    /// Highest `spec.request.qps` of the kind.
    const MAX_QPS: u32;
    /// Fills in derived defaults, as kdoctor's mutating webhook does.
    fn normalize(&mut self);
    /// Checks values and their consistency, as kdoctor's validating webhook does.
    fn validate(&self) -> Result<(), Invalid>;
}

pub(crate) fn read(path: &Path) -> Result<(String, String), TaskError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        file: file.clone(),
        source,
    })?;
    Ok((file, text))
}

/// Strict deserialization with the path of the offending field in the error.
fn deserialize<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, TaskError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(document)".to_string(),
            p => p,
        };
        // serde_yaml already prefixes some messages with the path (or its parent's, for an
        // unknown field): say it once.
        let reason = e.into_inner().to_string();
        let reason = match reason.split_once(": ") {
            Some((path, rest))
                if field == path
                    || field.starts_with(&format!("{path}."))
                    || field.starts_with(&format!("{path}[")) =>
            {
                rest.to_string()
            }
            _ => reason,
        };
        TaskError::Parse {
            file: file.into(),
            field,
            reason,
        }
    })
}

/// Checks `apiVersion` and `kind` before the kind's own schema, so that a wrong kind is not
/// reported as a pile of unknown fields. `want` restricts the kind.
fn check_head(file: &str, text: &str, want: Option<TaskKind>) -> Result<TaskKind, TaskError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TaskDocument {
        api_version: Option<String>,
        kind: Option<String>,
    }
    let head: TaskDocument = deserialize(file, text)?;
    let invalid = |field: &str, reason: String| TaskError::Invalid {
        file: file.into(),
        field: field.into(),
        reason,
    };
    match head.api_version.as_deref() {
        Some(API_VERSION | KDOCTOR_API_VERSION) => {}
        other => {
            return Err(invalid(
                "apiVersion",
                format!(
                    "expected {API_VERSION:?} (or kdoctor's {KDOCTOR_API_VERSION:?}), got {}",
                    other.map_or("nothing".into(), |v| format!("{v:?}"))
                ),
            ));
        }
    }
    let expected = || match want {
        Some(k) => format!("{:?}", k.as_str()),
        None => "one of \"NetReach\", \"AppHttpHealthy\", \"NetDns\" (or \"Netdns\")".into(),
    };
    let got = head.kind.as_deref();
    match got.and_then(TaskKind::from_kind) {
        Some(kind) if want.is_none_or(|w| w == kind) => Ok(kind),
        _ => Err(invalid(
            "kind",
            format!(
                "expected {}, got {}",
                expected(),
                got.map_or("nothing".into(), |k| format!("{k:?}"))
            ),
        )),
    }
}

/// Parses, normalizes and validates one kind.
pub(crate) fn parse_kind<T: Kind>(file: &str, text: &str) -> Result<T, TaskError> {
    check_head(file, text, Some(T::KIND))?;
    let mut task: T = deserialize(file, text)?;
    task.normalize();
    task.validate().map_err(|e| TaskError::Invalid {
        file: file.into(),
        field: e.field,
        reason: e.reason,
    })?;
    Ok(task)
}

/// Whether `name` is a DNS-1123 subdomain name, as a Kubernetes object name: at most 253
/// characters, dot-separated labels of lowercase letters, digits and '-' that start and end
/// alphanumeric. Public because a task's name is also its file name and its URL path segment
/// (`PUT /v1/tasks/{name}`): such a name has no path separator and is never `.` or `..`.
pub fn is_task_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        })
}

/// `metadata.name` must be a DNS subdomain name ([`is_task_name`]).
pub(crate) fn validate_name(name: &str) -> Result<(), Invalid> {
    if is_task_name(name) {
        Ok(())
    } else {
        Err(Invalid::new(
            "metadata.name",
            format!(
                "{name:?} is not a DNS subdomain name (dot-separated labels of lowercase \
                 letters, digits and '-', each starting and ending with a letter or digit; at \
                 most 253 characters)"
            ),
        ))
    }
}

/// The checks every kind starts with: its name, its schedule, and its request load against the
/// kind's cap and the time a round has.
pub(crate) fn validate_common<T: Kind>(task: &T) -> Result<(), Invalid> {
    validate_name(&task.metadata().name)?;
    let plan = task.schedule_plan();
    plan.validate()?;
    validate_request(T::KIND, T::MAX_QPS, task.load(), plan)
}

/// Checks `spec.request`'s rate and timing against the kind's qps cap and the time a round has.
pub(crate) fn validate_request(
    kind: TaskKind,
    cap: u32,
    load: RequestLoad,
    plan: &SchedulePlan,
) -> Result<(), Invalid> {
    let field = |f: &str| format!("spec.request.{f}");
    if load.qps == 0 || load.qps > cap {
        return Err(Invalid::new(
            field("qps"),
            format!(
                "must be 1..={cap} ({kind} requests per second per agent and target), got {}",
                load.qps
            ),
        ));
    }
    let secs = load.duration.as_secs();
    if secs == 0 || secs > MAX_DURATION_IN_SECOND.into() {
        return Err(Invalid::new(
            field("durationInSecond"),
            format!("must be 1..={MAX_DURATION_IN_SECOND}, got {secs}"),
        ));
    }
    let ms = load.per_request_timeout.as_millis();
    if ms == 0 || ms > MAX_PER_REQUEST_TIMEOUT_IN_MS.into() {
        return Err(Invalid::new(
            field("perRequestTimeoutInMS"),
            format!("must be 1..={MAX_PER_REQUEST_TIMEOUT_IN_MS}, got {ms}"),
        ));
    }
    let window = plan.round_window();
    if load.duration > window.limit {
        return Err(Invalid::new(
            field("durationInSecond"),
            format!("{secs}s is longer than {}", window.why),
        ));
    }
    if load.per_request_timeout > window.limit {
        return Err(Invalid::new(
            field("perRequestTimeoutInMS"),
            format!("{ms} ms is longer than {}", window.why),
        ));
    }
    let round = load.duration + load.per_request_timeout;
    if round > window.limit {
        return Err(Invalid::new(
            field("durationInSecond"),
            format!(
                "durationInSecond plus perRequestTimeoutInMS ({}) is longer than {}",
                format_duration(round),
                window.why
            ),
        ));
    }
    // The controller stops waiting for reports at the round's deadline: a round that probes
    // until then would fail every time with agents that "did not report".
    if round + REPORT_TIME > window.limit {
        return Err(Invalid::new(
            field("durationInSecond"),
            format!(
                "durationInSecond plus perRequestTimeoutInMS ({}) leaves the agents less than {} \
                 to report within {}: shorten the probing or space the rounds further apart",
                format_duration(round),
                format_duration(REPORT_TIME),
                window.why
            ),
        ));
    }
    Ok(())
}

/// Checks `spec.expect`'s success rate and mean delay.
pub(crate) fn validate_expect(success_rate: f64, mean_delay_ms: u64) -> Result<(), Invalid> {
    if !(0.0..=1.0).contains(&success_rate) {
        return Err(Invalid::new(
            "spec.expect.successRate",
            format!("must be within 0..=1, got {success_rate}"),
        ));
    }
    if mean_delay_ms == 0 {
        return Err(Invalid::new(
            "spec.expect.meanAccessDelayInMs",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// A Kubernetes name (DNS-1123 label) used as a reference, e.g. a namespace or a Service.
pub(crate) fn validate_label(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("{value:?} is not a Kubernetes name (lowercase letters, digits, '-')"),
        ))
    }
}

/// A TLS file field: the controller reads it on its own host, so only an absolute path is
/// unambiguous.
pub(crate) fn validate_file(field: &str, path: Option<&String>) -> Result<(), Invalid> {
    match path {
        Some(p) if !Path::new(p).is_absolute() => Err(Invalid::new(
            field,
            format!("must be an absolute path (read by the controller), got {p:?}"),
        )),
        _ => Ok(()),
    }
}

/// The warning of every kind whose task sets kdoctor's `spec.agentSpec`.
pub(crate) fn agent_spec_warning() -> String {
    "spec.agentSpec: ignored: meshdoctor runs every task on all registered agents (no per-task \
     agent workload)"
        .into()
}

/// Two fields that go together: both or neither.
pub(crate) fn validate_pair(
    (a_field, a): (&str, Option<&String>),
    (b_field, b): (&str, Option<&String>),
) -> Result<(), Invalid> {
    match (a, b) {
        (Some(_), None) => Err(Invalid::new(b_field, format!("required with {a_field}"))),
        (None, Some(_)) => Err(Invalid::new(a_field, format!("required with {b_field}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error text of parsing `yaml` as any task, from `tasks/t.yaml`.
    pub(crate) fn err(yaml: &str) -> String {
        Task::from_yaml("tasks/t.yaml", yaml)
            .unwrap_err()
            .to_string()
    }

    /// Asserts that `yaml` fails on `field`, with a reason containing `says`.
    #[track_caller]
    pub(crate) fn assert_err(yaml: &str, field: &str, says: &str) {
        let e = err(yaml);
        let prefix = format!("tasks/t.yaml: {field}: ");
        assert!(e.starts_with(&prefix), "expected {prefix:?}..., got {e}");
        assert!(e.contains(says), "expected {says:?} in {e}");
    }

    #[test]
    fn dispatches_on_kind_in_both_api_versions() {
        const DNS_SPEC: &str = "{target: {targetUser: {server: 10.0.0.10}}}";
        for (api, kind, spec, want) in [
            (
                "meshdoctor.io/v1beta1",
                "NetReach",
                "{}",
                TaskKind::NetReach,
            ),
            ("kdoctor.io/v1beta1", "NetReach", "{}", TaskKind::NetReach),
            (
                "meshdoctor.io/v1beta1",
                "NetDns",
                DNS_SPEC,
                TaskKind::NetDns,
            ),
            ("kdoctor.io/v1beta1", "Netdns", DNS_SPEC, TaskKind::NetDns),
        ] {
            let yaml =
                format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: t}}\nspec: {spec}\n");
            let task = Task::from_yaml("f", &yaml).unwrap();
            assert_eq!(
                (task.kind(), task.name(), task.api_version()),
                (want, "t", api)
            );
        }
        let t = Task::from_yaml(
            "f",
            "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: web}\n\
             spec: {target: {host: example.com, method: GET}}\n",
        )
        .unwrap();
        assert_eq!(t.kind(), TaskKind::AppHttpHealthy);
        assert_eq!(
            t.load(),
            RequestLoad {
                qps: 5,
                duration: Duration::from_secs(2),
                per_request_timeout: Duration::from_millis(500)
            }
        );
        assert_eq!(t.round_timeout(), Duration::from_secs(60));
        assert!(t.as_net_reach().is_none());
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["kind"], "AppHttpHealthy");
        assert_eq!(json["spec"]["target"]["host"], "http://example.com");
    }

    #[test]
    fn head_errors_name_apiversion_and_kind() {
        assert_err(
            "apiVersion: v1\nkind: NetReach\nmetadata: {name: t}\n",
            "apiVersion",
            "expected \"meshdoctor.io/v1beta1\" (or kdoctor's \"kdoctor.io/v1beta1\"), got \"v1\"",
        );
        assert_err("kind: NetReach\n", "apiVersion", "got nothing");
        assert_err(
            "apiVersion: kdoctor.io/v1beta1\nkind: NetPing\nmetadata: {name: t}\n",
            "kind",
            "expected one of \"NetReach\", \"AppHttpHealthy\", \"NetDns\" (or \"Netdns\"), got \"NetPing\"",
        );
        assert_err("- a\n- b\n", "(document)", "invalid type: sequence");
        let e = NetReach::from_yaml(
            "n.yaml",
            "apiVersion: kdoctor.io/v1beta1\nkind: Netdns\nmetadata: {name: t}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "n.yaml: kind: expected \"NetReach\", got \"Netdns\"");
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        let long = "a".repeat(254);
        for bad in [
            "", "Mesh", "-a", "a-", "a_b", "a..b", "a.-b", "..", ".", "a/b", &long,
        ] {
            assert_eq!(
                validate_name(bad).unwrap_err().field,
                "metadata.name",
                "{bad}"
            );
        }
        assert!(validate_name("mesh-1.eu").is_ok());
        assert!(is_task_name(&"a".repeat(253)));
    }

    #[test]
    fn request_limits_name_the_field() {
        let plan = SchedulePlan::default(); // "0 1": a 60 s round.
        let load = |qps, secs, ms| RequestLoad {
            qps,
            duration: Duration::from_secs(secs),
            per_request_timeout: Duration::from_millis(ms),
        };
        let check = |l| validate_request(TaskKind::NetDns, MAX_DNS_QPS, l, &plan);
        assert!(check(load(5, 2, 500)).is_ok());
        for (l, field, says) in [
            (load(0, 2, 500), "qps", "must be 1..=50000 (NetDns requests"),
            (load(50_001, 2, 500), "qps", "got 50001"),
            (load(5, 0, 500), "durationInSecond", "must be 1..=3600"),
            (
                load(5, 61, 500),
                "durationInSecond",
                "61s is longer than the round timeout of 1m0s",
            ),
            (load(5, 2, 0), "perRequestTimeoutInMS", "must be 1..=60000"),
            (load(5, 2, 60_001), "perRequestTimeoutInMS", "got 60001"),
            (
                load(5, 60, 1),
                "durationInSecond",
                "plus perRequestTimeoutInMS (1m0.001s)",
            ),
        ] {
            let e = check(l).unwrap_err();
            assert_eq!(e.field, format!("spec.request.{field}"));
            assert!(e.reason.contains(says), "{says}: {}", e.reason);
        }
        let short = SchedulePlan {
            schedule: "@every 30s".into(),
            ..SchedulePlan::default()
        };
        let e = validate_request(TaskKind::NetDns, MAX_DNS_QPS, load(5, 2, 40_000), &short);
        let e = e.unwrap_err();
        assert_eq!(e.field, "spec.request.perRequestTimeoutInMS");
        assert!(
            e.reason
                .contains("40000 ms is longer than the 30s between @every rounds"),
            "{}",
            e.reason
        );
    }
}
