//! What the commands print: the check result as tables (through `meshdoctor_table`, the
//! tables the lab prints too) or as JSON / YAML, and the rows of `tasks` and `agents`.

use meshdoctor_api::{
    Family, Finding, PathResult, PathState, RoundReport, RoundStatus, RoundSummary,
    task::PairPath,
    views::{AgentView, TaskFindings, TaskView},
};
use meshdoctor_table as table;
use serde::{Deserialize, Serialize};

use crate::args::Output;

/// One pair-path that did not pass: what `resume` re-probes, and a row of the failed table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedPath {
    pub src_node: String,
    pub dst_node: String,
    pub src_interface: String,
    pub dst_interface: String,
    pub network: String,
    pub family: Family,
    pub state: PathState,
    /// Probes the source attempted (failed sends included).
    pub sent: u32,
    pub lost: u32,
    pub loss_ratio: f64,
    /// Where most lost probes were lost (`LossSegments::dominant`).
    pub segment: Option<String>,
    /// The kernel's top drop reason, else the source's top send error.
    pub reason: Option<String>,
}

impl FailedPath {
    pub fn of(p: &PathResult) -> Self {
        Self {
            src_node: p.src_node.to_string(),
            dst_node: p.dst_node.to_string(),
            src_interface: p.src_interface.to_string(),
            dst_interface: p.dst_interface.to_string(),
            network: p.network.to_string(),
            family: p.family,
            state: p.state,
            sent: p.sent + p.send_failed,
            lost: p.lost,
            loss_ratio: p.loss_ratio,
            segment: p.segments.dominant().map(str::to_string),
            reason: p.top_reason().map(str::to_string),
        }
    }

    /// The task's `spec.pairPaths` entry that selects this pair-path again.
    pub fn pair_path(&self) -> PairPath {
        PairPath {
            src_node: self.src_node.clone(),
            dst_node: self.dst_node.clone(),
            network: Some(self.network.clone()),
            family: Some(self.family),
        }
    }
}

/// The pair-paths of a round that were lossy or whose source did not report.
pub fn failed_paths(report: &RoundReport) -> Vec<FailedPath> {
    report
        .paths
        .iter()
        .filter(|p| p.state != PathState::Ok)
        .map(FailedPath::of)
        .collect()
}

/// The verdict in numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckSummary {
    pub status: RoundStatus,
    pub failed_paths: usize,
    pub findings: usize,
    #[serde(flatten)]
    pub round: RoundSummary,
    pub failure_reasons: Vec<String>,
    /// The summary line the table output ends with.
    pub text: String,
}

/// Everything `check` and `resume` print: the machine output is this, serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckOutput {
    /// The task name on the controller.
    pub task: String,
    pub report: RoundReport,
    pub findings: Vec<Finding>,
    pub failed_paths: Vec<FailedPath>,
    pub summary: CheckSummary,
}

impl CheckOutput {
    pub fn new(task: &str, report: RoundReport) -> Self {
        let failed_paths = failed_paths(&report);
        let summary = CheckSummary {
            status: report.status,
            failed_paths: failed_paths.len(),
            findings: report.findings.len(),
            round: report.summary.clone(),
            failure_reasons: report.failure_reasons.clone(),
            text: table::summary_line(&report),
        };
        Self {
            task: task.to_string(),
            findings: report.findings.clone(),
            failed_paths,
            report,
            summary,
        }
    }

    pub fn failed(&self) -> bool {
        self.summary.status == RoundStatus::Fail
    }

    /// The human view: the faulty interfaces first (where), then the failed pair-paths (what),
    /// then the verdict.
    pub fn render_table(&self) -> String {
        let mut out = String::from("FAULTY INTERFACES\n");
        out.push_str(&table::render_findings(&self.findings));
        out.push_str("\nFAILED PAIR-PATHS\n");
        if self.failed_paths.is_empty() {
            out.push_str("no failed pair-path\n");
        } else {
            let mut failed = self.report.clone();
            failed.paths.retain(|p| p.state != PathState::Ok);
            out.push_str(&table::render_table(&failed));
        }
        out.push('\n');
        out.push_str(&self.summary.text);
        out.push('\n');
        out
    }

    pub fn render(&self, output: Output) -> anyhow::Result<String> {
        match output {
            Output::Table => Ok(self.render_table()),
            _ => machine(output, self),
        }
    }
}

/// `value` as pretty JSON or YAML, newline-terminated.
pub fn machine(output: Output, value: &impl Serialize) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => serde_yaml::to_string(value)?,
        _ => serde_json::to_string_pretty(value)? + "\n",
    })
}

/// A list from the controller: JSON or YAML, or one `row` per item.
pub fn render_list<T: Serialize>(
    output: Output,
    items: &[T],
    row: fn(&T) -> String,
) -> anyhow::Result<String> {
    if output != Output::Table {
        return machine(output, &items);
    }
    Ok(items.iter().map(|item| row(item) + "\n").collect())
}

/// A `tasks` row: name and rounds done, or why the task is invalid.
pub fn task_row(t: &TaskView) -> String {
    match (&t.error, &t.status) {
        (Some(e), _) => format!("{}  INVALID  {e}", t.name),
        (None, Some(st)) => format!(
            "{}  done {}/{}  last {}  finished {}",
            t.name, st.done_round, st.expected_round, st.last_round_status, st.finish
        ),
        (None, None) => format!("{}  no status yet", t.name),
    }
}

/// An `agents` row: node, timestamping, and interfaces with their network and addresses.
pub fn agent_row(a: &AgentView) -> String {
    let r = &a.registration;
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| {
            let addrs: Vec<String> = [i.ipv4.map(|a| a.to_string()), i.ipv6.map(|a| a.to_string())]
                .into_iter()
                .flatten()
                .collect();
            format!("{}({}: {})", i.name, i.network, addrs.join(", "))
        })
        .collect();
    format!("{}  {}  {}", r.node, r.timestamping, ifaces.join("  "))
}

/// `findings`: per task, its latest round and its findings table (or "healthy").
pub fn render_findings(output: Output, all: &[TaskFindings]) -> anyhow::Result<String> {
    if output != Output::Table {
        return machine(output, &all);
    }
    if all.is_empty() {
        return Ok("no NetReach round has finished yet\n".into());
    }
    let mut out = String::new();
    for t in all {
        out += &format!("{} round {}: ", t.task, t.round);
        if t.findings.is_empty() {
            out += "healthy\n";
        } else {
            out += &format!("{} finding(s)\n", t.findings.len());
            out += &table::render_findings(&t.findings);
        }
    }
    Ok(out)
}

/// A report of `report TASK`: the full pair table and the summary, or the report itself.
pub fn render_report(output: Output, report: &RoundReport) -> anyhow::Result<String> {
    if output != Output::Table {
        return machine(output, report);
    }
    let mut out = String::new();
    if report.app.is_none() {
        out.push_str(&table::render_findings(&report.findings));
        out.push('\n');
    }
    out.push_str(&table::render_table(report));
    out.push_str(&table::summary_line(report));
    out.push('\n');
    Ok(out)
}
