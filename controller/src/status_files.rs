//! The standalone controller's task statuses on disk: `<data-dir>/status/<task file>.json`,
//! each written whole (temp file, fsync, rename, directory fsync) by a thread of its own as the
//! status changes, and read back when the controller starts, so that a restarted controller
//! continues each task where it was (rounds done, history, numbering) as the Kubernetes
//! backend does from the objects' status.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::mpsc,
};

use meshdoctor_api::TaskStatus;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::task_table::TaskSource;

/// One status file: the task file it belongs to and its status.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    source: String,
    status: TaskStatus,
}

/// Writes statuses in the order they change, off the caller's thread.
#[derive(Debug)]
pub struct StatusFiles {
    dir: PathBuf,
    writes: mpsc::Sender<(String, TaskStatus)>,
}

impl StatusFiles {
    /// Statuses kept in `dir` (created when needed); a thread writes them.
    pub fn new(dir: PathBuf) -> Self {
        let (writes, pending) = mpsc::channel::<(String, TaskStatus)>();
        let at = dir.clone();
        std::thread::Builder::new()
            .name("status-files".into())
            .spawn(move || {
                for (source, status) in pending {
                    if let Err(e) = write(&at, source.clone(), status) {
                        warn!(task_file = source, "cannot save the task's status: {e}");
                    }
                }
            })
            .map_err(|e| warn!("cannot start the status writer: {e}"))
            .ok();
        Self { dir, writes }
    }

    /// Saves the status of the task from `source` (a file; objects keep their own status).
    pub fn save(&self, source: &TaskSource, status: &TaskStatus) {
        if let TaskSource::File(path) = source {
            let _ = self.writes.send((path.clone(), status.clone()));
        }
    }

    /// The statuses saved so far, by source; unreadable files are skipped, with a warning.
    pub fn load(&self) -> BTreeMap<TaskSource, TaskStatus> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let text = fs::read_to_string(&p).map_err(|e| e.to_string());
                match text
                    .and_then(|t| serde_json::from_str::<Saved>(&t).map_err(|e| e.to_string()))
                {
                    Ok(saved) => Some((TaskSource::File(saved.source), saved.status)),
                    Err(e) => {
                        warn!(file = %p.display(), "skipping a saved task status: {e}");
                        None
                    }
                }
            })
            .collect()
    }
}

/// Writes one status file whole, or leaves the previous one.
fn write(dir: &Path, source: String, status: TaskStatus) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let name = Path::new(&source)
        .file_name()
        .map_or_else(|| "task".into(), |n| n.to_string_lossy().into_owned());
    let json = serde_json::to_vec(&Saved { source, status }).map_err(io::Error::other)?;
    crate::write_durably(&dir.join(format!("{name}.json")), &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::temp_dir;

    #[test]
    fn statuses_are_saved_and_loaded_by_task_file() {
        let dir = temp_dir("status-files");
        let files = StatusFiles::new(dir.join("status"));
        let mut status = TaskStatus::new(5, 10);
        status.done_round = 3;
        let source = TaskSource::File("/tasks/mesh.yaml".into());
        files.save(&source, &TaskStatus::new(5, 10));
        files.save(&source, &status);
        files.save(
            &TaskSource::Object {
                kind: meshdoctor_api::TaskKind::NetReach,
                name: "x".into(),
            },
            &status,
        );
        // The writer thread is done once the channel's end is dropped and it drained.
        drop(files);
        let started = std::time::Instant::now();
        let loaded = loop {
            let loaded = StatusFiles::new(dir.join("status")).load();
            if loaded.get(&source).is_some_and(|s| s.done_round == 3) {
                break loaded;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{loaded:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(loaded.len(), 1, "objects keep their own status");
        fs::write(dir.join("status/broken.yaml.json"), "{").unwrap();
        assert_eq!(StatusFiles::new(dir.join("status")).load().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
