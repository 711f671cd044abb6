//! Controller metrics (prometheus-client). Labels stay per task, never per pair, so
//! cardinality does not grow with the square of the node count.

use std::sync::atomic::AtomicI64;

use meshdoctor_api::{RoundReport, RoundStatus};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    task: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

pub struct Metrics {
    registry: Registry,
    rounds: Family<RoundLabels, Counter>,
    sent: Family<TaskLabels, Counter>,
    lost: Family<TaskLabels, Counter>,
    agents: Gauge<i64, AtomicI64>,
    late_reports: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let (rounds, sent, lost) = (Family::default(), Family::default(), Family::default());
        let (agents, late_reports) = (Gauge::default(), Counter::default());
        let mut registry = Registry::default();
        registry.register(
            "meshdoctor_rounds",
            "Rounds closed, by task and status",
            rounds.clone(),
        );
        registry.register(
            "meshdoctor_probes_sent",
            "Probes sent by agents that reported",
            sent.clone(),
        );
        registry.register(
            "meshdoctor_probes_lost",
            "Probes sent whose reply did not come back in time",
            lost.clone(),
        );
        registry.register("meshdoctor_agents", "Registered agents", agents.clone());
        registry.register(
            "meshdoctor_reports_late",
            "Agent reports that arrived for no open round (late or unknown)",
            late_reports.clone(),
        );
        Self {
            registry,
            rounds,
            sent,
            lost,
            agents,
            late_reports,
        }
    }
}

impl Metrics {
    pub fn round_closed(&self, report: &RoundReport) {
        let status = match report.status {
            RoundStatus::Succeed => "succeed",
            RoundStatus::Fail => "fail",
        };
        self.rounds
            .get_or_create(&RoundLabels {
                task: report.task.clone(),
                status: status.into(),
            })
            .inc();
        let task = TaskLabels {
            task: report.task.clone(),
        };
        self.sent.get_or_create(&task).inc_by(report.summary.sent);
        self.lost.get_or_create(&task).inc_by(report.summary.lost);
    }

    pub fn set_agents(&self, n: usize) {
        self.agents.set(n as i64);
    }

    pub fn late_report(&self) {
        self.late_reports.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
