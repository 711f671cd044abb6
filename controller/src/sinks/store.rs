//! Round reports on local disk: `<data-dir>/reports/<task>/<round>.json`, written atomically
//! (temp file + rename) so a reader or a crash never sees half a report.

use std::{
    io,
    path::{Path, PathBuf},
};

use meshdoctor_api::{RoundReport, routes::RoundRef};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Task names become directory names; anything that could escape the reports directory
    /// is refused.
    #[error("invalid task name {0:?}")]
    BadName(String),
    #[error("cannot encode the round report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the stored report of task {task:?} is unreadable: {source}")]
    Decode {
        task: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ReportStore {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl ReportStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("reports"),
        }
    }

    fn task_dir(&self, task: &str) -> Result<PathBuf, StoreError> {
        let safe = !task.is_empty()
            && !task.starts_with('.')
            && task
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !safe {
            return Err(StoreError::BadName(task.into()));
        }
        Ok(self.root.join(task))
    }

    /// Writes a report, replacing any earlier one of the same round; returns its path.
    pub async fn write(&self, report: &RoundReport) -> Result<PathBuf, StoreError> {
        let dir = self.task_dir(&report.task)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        let path = dir.join(format!("{}.json", report.round));
        let tmp = dir.join(format!(".{}.json.tmp", report.round));
        let json = serde_json::to_vec_pretty(report)?;
        tokio::fs::write(&tmp, json).await.map_err(io_err(&tmp))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io_err(&path))?;
        Ok(path)
    }

    /// The stored JSON of a round, `None` when there is none.
    pub async fn read(&self, task: &str, round: RoundRef) -> Result<Option<Vec<u8>>, StoreError> {
        let round = match round {
            RoundRef::Number(n) => n,
            RoundRef::Latest => match self.latest_round(task).await? {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        let path = self.task_dir(task)?.join(format!("{round}.json"));
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Highest round number stored for a task. A restarted controller numbers its rounds
    /// after it, so that it never overwrites an earlier run's reports.
    pub async fn latest_round(&self, task: &str) -> Result<Option<u32>, StoreError> {
        let dir = self.task_dir(task)?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut latest = None;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            let name = entry.file_name();
            let round = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok());
            latest = latest.max(round);
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::RoundStatus;

    use super::*;
    use crate::fixtures::temp_dir;

    fn mk_round(round: u32) -> RoundReport {
        RoundReport::test("mesh", round, RoundStatus::Succeed)
    }

    #[tokio::test]
    async fn writes_reads_and_finds_latest() {
        let dir = temp_dir("store");
        let store = ReportStore::new(&dir);
        assert_eq!(store.latest_round("mesh").await.unwrap(), None);
        for r in [2, 10, 9] {
            store.write(&mk_round(r)).await.unwrap();
        }
        assert_eq!(store.latest_round("mesh").await.unwrap(), Some(10));
        let latest = store.read("mesh", RoundRef::Latest).await.unwrap().unwrap();
        let back: RoundReport = serde_json::from_slice(&latest).unwrap();
        assert_eq!(back, mk_round(10));
        assert!(
            store
                .read("mesh", RoundRef::Number(3))
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            store.read("../etc", RoundRef::Latest).await,
            Err(StoreError::BadName(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
