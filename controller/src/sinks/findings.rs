//! The latest round's findings of each task, which `GET /v1/findings` serves: remembered as
//! rounds close, and read from the stored reports on first use, so that a restarted controller
//! still answers before its next round.

use std::{collections::BTreeMap, sync::Mutex};

use meshdoctor_api::{Finding, views::TaskFindings};
use serde::Deserialize;
use tracing::warn;

use super::store::{ReportStore, StoreError};
use meshdoctor_api::routes::RoundRef;

/// Latest findings by task name.
#[derive(Default)]
pub struct Findings {
    latest: Mutex<BTreeMap<String, TaskFindings>>,
}

impl Findings {
    /// Keeps `latest` unless a later round of its task is already known; returns the latest.
    pub fn remember(&self, latest: TaskFindings) -> TaskFindings {
        let mut findings = crate::lock(&self.latest);
        let entry = findings
            .entry(latest.task.clone())
            .or_insert_with(|| latest.clone());
        if entry.round < latest.round {
            *entry = latest;
        }
        entry.clone()
    }

    /// The latest findings of each of `tasks` that has a round. A task whose stored report
    /// cannot be read is left out (and logged), not the whole answer.
    pub async fn of(&self, tasks: Vec<String>, store: &ReportStore) -> Vec<TaskFindings> {
        let mut out = Vec::new();
        for task in tasks {
            let cached = crate::lock(&self.latest).get(&task).cloned();
            let latest = match cached {
                Some(f) => Some(f),
                None => self.stored(&task, store).await.unwrap_or_else(|e| {
                    warn!(task, "no findings: {e}");
                    None
                }),
            };
            out.extend(latest);
        }
        out
    }

    /// The findings of a task's latest stored round, remembered unless a round closed
    /// meanwhile.
    async fn stored(
        &self,
        task: &str,
        store: &ReportStore,
    ) -> Result<Option<TaskFindings>, StoreError> {
        /// Only what findings need of a stored report, which can be large (per-probe samples).
        #[derive(Deserialize)]
        struct Stored {
            round: u32,
            #[serde(default)]
            findings: Vec<Finding>,
        }
        let Some(report) = store.open(task, RoundRef::Latest).await? else {
            return Ok(None);
        };
        // Streamed: a big round's report is not read into memory whole.
        let stored: Stored = tokio::task::spawn_blocking(move || report.decode())
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
            .map_err(|source| StoreError::Decode {
                task: task.into(),
                source,
            })?;
        Ok(Some(self.remember(TaskFindings {
            task: task.into(),
            round: stored.round,
            findings: stored.findings,
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshdoctor_api::{RoundReport, RoundStatus};

    use super::*;
    use crate::fixtures::temp_dir;

    #[tokio::test]
    async fn findings_are_the_latest_round_of_each_task() {
        let dir = temp_dir("findings");
        let store = ReportStore::new(&dir);
        let mut lossy = RoundReport::test("mesh", 4, RoundStatus::Fail);
        lossy.findings = vec![Finding::test("node-3")];
        store.write(Arc::new(lossy)).await.unwrap();
        store
            .write(Arc::new(RoundReport::test("mesh", 3, RoundStatus::Succeed)))
            .await
            .unwrap();
        // A stored report of a task that is not asked for is not shown.
        store
            .write(Arc::new(RoundReport::test("gone", 1, RoundStatus::Fail)))
            .await
            .unwrap();
        let findings = Findings::default();
        let tasks = || vec!["idle".to_string(), "mesh".to_string()];

        // After a restart, from the store; tasks without a round have no entry.
        let stored = TaskFindings {
            task: "mesh".into(),
            round: 4,
            findings: vec![Finding::test("node-3")],
        };
        assert_eq!(
            findings.of(tasks(), &store).await,
            std::slice::from_ref(&stored)
        );

        // A closed round replaces them, an older one does not.
        let healthy = TaskFindings {
            round: 5,
            findings: vec![],
            ..stored.clone()
        };
        findings.remember(healthy.clone());
        findings.remember(stored);
        assert_eq!(findings.of(tasks(), &store).await, [healthy]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
