//! Where a closed round goes, each a small module of its own: the report [`store`] on disk, the
//! Prometheus [`metrics`], and the latest [`findings`] of each task. (Its fourth destination,
//! the task's status, is the task table's: [`crate::task_table::TaskTable::record`].)

pub mod findings;
pub mod metrics;
pub mod store;

use std::sync::Arc;

use meshdoctor_api::{RoundReport, views::TaskFindings};
use tracing::{info, warn};

use self::{findings::Findings, metrics::Metrics, store::ReportStore};
use crate::round::Closed;

/// The sinks of closed rounds.
pub struct Sinks {
    pub store: ReportStore,
    pub metrics: Metrics,
    pub findings: Findings,
}

impl Sinks {
    pub fn new(store: ReportStore, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            findings: Findings::default(),
        }
    }

    /// Accounts the round in the metrics and remembers its findings: CPU work over every
    /// path, for the caller to run off the async workers.
    pub fn account(&self, closed: &Closed) {
        self.metrics.round_closed(closed);
        let report = &closed.report;
        // Application rounds localize nothing: they have no findings entry.
        if report.app.is_none() {
            self.findings.remember(TaskFindings {
                task: report.task.clone(),
                round: report.round,
                findings: report.findings.clone(),
            });
        }
    }

    /// Stores the report of a round already [accounted](Self::account); the report as stored.
    pub async fn store(&self, report: RoundReport) -> Arc<RoundReport> {
        let report = Arc::new(report);
        let (task, round) = (&report.task, report.round);
        match self.store.write(report.clone()).await {
            Ok((path, usage)) => {
                self.metrics.stored(usage);
                info!(
                    task, round, status = ?report.status, reasons = ?report.failure_reasons,
                    path = %path.display(), "round closed"
                );
            }
            Err(e) => {
                self.metrics.store_failed();
                warn!(
                    task,
                    round, "round closed but its report was not stored: {e}"
                );
            }
        }
        report
    }
}
