//! Where a closed round goes, each a small module of its own: the report [`store`] on disk, the
//! Prometheus [`metrics`], and the latest [`findings`] of each task. (Its fourth destination,
//! the task's status, is the task table's: [`crate::task_table::TaskTable::record`].)

pub mod findings;
pub mod metrics;
pub mod store;

use std::sync::{Arc, Mutex};

use meshdoctor_api::{RoundReport, RoundStatus, views::TaskFindings};
use tracing::{info, warn};

use self::{findings::Findings, metrics::Metrics, store::ReportStore};
use crate::round::Closed;

/// The sinks of closed rounds.
pub struct Sinks {
    pub store: ReportStore,
    pub metrics: Metrics,
    pub findings: Findings,
    /// Why the latest report could not be stored, until one is: readiness says so.
    store_failure: Mutex<Option<String>>,
}

impl Sinks {
    pub fn new(store: ReportStore, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            findings: Findings::default(),
            store_failure: Mutex::default(),
        }
    }

    /// Why the latest report could not be stored, if it could not and the store still cannot
    /// take a write (checked with a page written and removed, so readiness comes back once the
    /// disk has room again, without waiting for a round).
    pub async fn store_failure(&self) -> Option<String> {
        let failure = crate::lock(&self.store_failure).clone()?;
        if self.store.probe().await.is_ok() {
            *crate::lock(&self.store_failure) = None;
            return None;
        }
        Some(failure)
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

    /// Stores the report of a round already [accounted](Self::account); the report as stored,
    /// or, when it could not be stored, as failed for that reason: a status must not count a
    /// round as succeeded whose report cannot be read.
    pub async fn store(&self, report: RoundReport) -> Arc<RoundReport> {
        let mut report = Arc::new(report);
        let written = self.store.write(report.clone()).await;
        let (task, round) = (&report.task, report.round);
        match written {
            Ok((path, usage)) => {
                self.metrics.stored(usage);
                *crate::lock(&self.store_failure) = None;
                info!(
                    task, round, status = ?report.status, reasons = ?report.failure_reasons,
                    path = %path.display(), "round closed"
                );
            }
            Err(e) => {
                self.metrics.store_failed();
                let why = format!("the round's report could not be stored: {e}");
                warn!(task, round, "{why}");
                *crate::lock(&self.store_failure) = Some(why.clone());
                // Recorded as failed: not to be taken for interrupted after a restart.
                self.store.unmark(task, round).await;
                let failed = Arc::make_mut(&mut report);
                failed.status = RoundStatus::Fail;
                failed.failure_reasons.push(why);
            }
        }
        report
    }
}
