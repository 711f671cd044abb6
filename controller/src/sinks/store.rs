//! Round reports on local disk: `<data-dir>/reports/<task>/<round>.json.zst`, compact JSON
//! compressed with zstd, written off the async workers and atomically (temp file + rename), so
//! a reader or a crash never sees half a report, and read back as a stream, never whole. A
//! mesh round's report repeats the same keys, node and interface names on every pair-path: zstd
//! at level 1 makes it about 8x smaller for a fraction of the CPU its encoding as JSON takes.
//! Reports of earlier versions (`<round>.json`) are still read, served and pruned. After each write the store is pruned
//! to its [`Retention`]: the newest rounds of each task, for a time, within a byte budget; the
//! newest round of every task always stays (the findings and `latest` are read from it).

use std::{
    fs, io,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
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
    #[error("the store's writer stopped: {0}")]
    Join(String),
}

/// What the store keeps (the controller's `--keep-rounds`, `--keep-for`, `--keep-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest rounds kept per task.
    pub rounds: usize,
    /// Reports older than this are removed.
    pub age: Duration,
    /// The reports of all tasks together stay within this many bytes (oldest removed first).
    pub bytes: u64,
}

impl Default for Retention {
    /// Fits the manifests' 1 GiB emptyDir, with room for the report being written.
    fn default() -> Self {
        Self {
            rounds: 100,
            age: Duration::from_secs(7 * 24 * 3600),
            bytes: 768 << 20,
        }
    }
}

/// The store after a write: its size, and what the write pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub reports: u64,
    pub pruned: u64,
}

#[derive(Debug, Clone)]
pub struct ReportStore {
    root: PathBuf,
    retention: Retention,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A stored report: its task, round, size and age.
struct Stored {
    path: PathBuf,
    task: String,
    round: u32,
    bytes: u64,
    modified: SystemTime,
}

/// A stored report's file name after its round number.
const SUFFIX: &str = ".json.zst";
/// Uncompressed reports, as earlier versions stored them.
const LEGACY_SUFFIX: &str = ".json";
/// zstd's fastest level: the report compresses well at any level, and the round closes sooner.
const LEVEL: i32 = 1;

/// The round of a report file name, `None` for anything else (temp files among them).
fn round_of(name: &str) -> Option<u32> {
    name.strip_suffix(SUFFIX)
        .or_else(|| name.strip_suffix(LEGACY_SUFFIX))?
        .parse()
        .ok()
}

/// A stored report's JSON, read as a stream.
pub type ReportReader = Box<dyn io::Read + Send>;

impl ReportStore {
    /// The store below `data_dir`, with the default [`Retention`].
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("reports"),
            retention: Retention::default(),
        }
    }

    pub fn with_retention(self, retention: Retention) -> Self {
        Self { retention, ..self }
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

    /// Writes a report, replacing any earlier one of the same round, then prunes the store;
    /// returns its path and the store's usage. Runs off the async workers: a report of a big
    /// mesh takes a while to encode. A failed write leaves no temp file behind.
    pub async fn write(&self, report: Arc<RoundReport>) -> Result<(PathBuf, Usage), StoreError> {
        let dir = self.task_dir(&report.task)?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let path = dir.join(format!("{}{SUFFIX}", report.round));
            let tmp = dir.join(format!(".{}{SUFFIX}.tmp", report.round));
            let written = (|| {
                let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
                let zstd = zstd::Encoder::new(file, LEVEL).map_err(io_err(&tmp))?;
                // serde_json writes in small pieces: buffer them before the encoder.
                let mut out = io::BufWriter::with_capacity(128 << 10, zstd);
                serde_json::to_writer(&mut out, &*report)?;
                let zstd = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
                zstd.finish()
                    .and_then(|file| file.sync_data())
                    .map_err(io_err(&tmp))?;
                fs::rename(&tmp, &path).map_err(io_err(&path))
            })();
            if written.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            written?;
            // An earlier version's report of the same round is replaced too.
            let _ = fs::remove_file(dir.join(format!("{}{LEGACY_SUFFIX}", report.round)));
            Ok((path, store.prune()))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Every stored report; unreadable entries are skipped.
    fn stored(&self) -> Vec<Stored> {
        let mut out = Vec::new();
        for task in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let Some(name) = task.file_name().to_str().map(String::from) else {
                continue;
            };
            for f in fs::read_dir(task.path()).into_iter().flatten().flatten() {
                let (Some(round), Ok(meta)) =
                    (f.file_name().to_str().and_then(round_of), f.metadata())
                else {
                    continue;
                };
                out.push(Stored {
                    path: f.path(),
                    task: name.clone(),
                    round,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out
    }

    /// Removes what the retention does not keep; the newest round of each task stays.
    fn prune(&self) -> Usage {
        let mut stored = self.stored();
        // Newest first within each task.
        stored.sort_by(|a, b| a.task.cmp(&b.task).then(b.round.cmp(&a.round)));
        let now = SystemTime::now();
        let r = self.retention;
        let mut keep = Vec::new();
        let mut remove = Vec::new();
        let mut rank = 0;
        for (i, s) in stored.iter().enumerate() {
            rank = if i > 0 && stored[i - 1].task == s.task {
                rank + 1
            } else {
                0
            };
            let old = now.duration_since(s.modified).unwrap_or_default() > r.age;
            if rank > 0 && (rank >= r.rounds || old) {
                remove.push(s);
            } else {
                keep.push((rank, s));
            }
        }
        // Within the byte budget: the oldest go first, never a task's newest.
        let mut bytes: u64 = keep.iter().map(|(_, s)| s.bytes).sum();
        keep.sort_by_key(|(_, s)| s.modified);
        for (_, s) in keep.iter().filter(|(rank, _)| *rank > 0) {
            if bytes <= r.bytes {
                break;
            }
            bytes -= s.bytes;
            remove.push(s);
        }
        let pruned = remove
            .iter()
            .filter(|s| fs::remove_file(&s.path).is_ok())
            .count() as u64;
        Usage {
            bytes,
            reports: (stored.len() - remove.len()) as u64,
            pruned,
        }
    }

    /// The stored report of a round as a stream of its JSON (blocking reads: use it off the
    /// async workers), `None` when there is none.
    pub async fn open(
        &self,
        task: &str,
        round: RoundRef,
    ) -> Result<Option<ReportReader>, StoreError> {
        let round = match round {
            RoundRef::Number(n) => n,
            RoundRef::Latest => match self.latest_round(task).await? {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        let dir = self.task_dir(task)?;
        for (suffix, compressed) in [(SUFFIX, true), (LEGACY_SUFFIX, false)] {
            let path = dir.join(format!("{round}{suffix}"));
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file.into_std().await,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let reader: ReportReader = if compressed {
                Box::new(zstd::Decoder::new(file).map_err(io_err(&path))?)
            } else {
                Box::new(io::BufReader::new(file))
            };
            return Ok(Some(reader));
        }
        Ok(None)
    }

    /// The stored JSON of a round, whole, `None` when there is none.
    pub async fn read(&self, task: &str, round: RoundRef) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut reader) = self.open(task, round).await? else {
            return Ok(None);
        };
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map_err(io_err(&root))?;
            Ok(Some(out))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
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
            latest = latest.max(entry.file_name().to_str().and_then(round_of));
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::RoundStatus;

    use super::*;
    use crate::fixtures::temp_dir;

    fn mk_round(task: &str, round: u32) -> RoundReport {
        RoundReport::test(task, round, RoundStatus::Succeed)
    }

    #[tokio::test]
    async fn writes_reads_and_finds_latest() {
        let dir = temp_dir("store");
        let store = ReportStore::new(&dir);
        assert_eq!(store.latest_round("mesh").await.unwrap(), None);
        for r in [2, 10, 9] {
            store.write(Arc::new(mk_round("mesh", r))).await.unwrap();
        }
        assert_eq!(store.latest_round("mesh").await.unwrap(), Some(10));
        let latest = store.read("mesh", RoundRef::Latest).await.unwrap().unwrap();
        // Compact JSON.
        assert!(!latest.contains(&b'\n'));
        let back: RoundReport = serde_json::from_slice(&latest).unwrap();
        assert_eq!(back, mk_round("mesh", 10));
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
        // An earlier version's uncompressed report is still read, and counts for `latest`.
        let legacy = serde_json::to_vec(&mk_round("mesh", 11)).unwrap();
        fs::write(dir.join("reports/mesh/11.json"), &legacy).unwrap();
        assert_eq!(store.latest_round("mesh").await.unwrap(), Some(11));
        let read = store.read("mesh", RoundRef::Latest).await.unwrap();
        assert_eq!(read, Some(legacy));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_mesh_report_is_stored_compressed() {
        let dir = temp_dir("store-zstd");
        let mut report = mk_round("mesh", 1);
        report.paths = (0..2000)
            .map(|i| {
                let src = format!("node-{}", i % 50);
                let dst = format!("node-{}", i / 50);
                meshdoctor_api::PathResult {
                    path: i,
                    ..meshdoctor_api::PathResult::test(
                        &src,
                        &dst,
                        ("eth0", "default"),
                        meshdoctor_api::Family::Ipv4,
                        50,
                    )
                }
            })
            .collect();
        let json = serde_json::to_vec(&report).unwrap().len() as u64;
        let (path, usage) = ReportStore::new(&dir)
            .write(Arc::new(report.clone()))
            .await
            .unwrap();
        assert!(path.to_string_lossy().ends_with("1.json.zst"));
        assert!(usage.bytes * 5 < json, "{} of {json} bytes", usage.bytes);
        let back = ReportStore::new(&dir)
            .read("mesh", RoundRef::Number(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<RoundReport>(&back).unwrap(),
            report
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn rounds(dir: &Path, task: &str) -> Vec<u32> {
        let mut r: Vec<u32> = fs::read_dir(dir.join("reports").join(task))
            .unwrap()
            .filter_map(|e| round_of(e.unwrap().file_name().to_str()?))
            .collect();
        r.sort();
        r
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_rounds_within_the_budget() {
        let dir = temp_dir("store-keep");
        let size = {
            let dir = temp_dir("store-size");
            let (path, _) = ReportStore::new(&dir)
                .write(Arc::new(mk_round("a", 1)))
                .await
                .unwrap();
            let size = fs::metadata(path).unwrap().len();
            std::fs::remove_dir_all(dir).unwrap();
            size
        };
        let store = ReportStore::new(&dir).with_retention(Retention {
            rounds: 3,
            age: Duration::from_secs(3600),
            // Five reports (compressed sizes differ by a few bytes: half a report of slack).
            bytes: 5 * size + size / 2,
        });
        // By count: the newest 3 of a task.
        for round in 1..=5 {
            store.write(Arc::new(mk_round("a", round))).await.unwrap();
        }
        assert_eq!(rounds(&dir, "a"), [3, 4, 5]);
        // By bytes: the oldest of all tasks go first; b's newest stays.
        for round in 1..=3 {
            let (_, usage) = store.write(Arc::new(mk_round("b", round))).await.unwrap();
            assert!(usage.bytes <= 5 * size + size / 2, "{usage:?}");
        }
        assert_eq!(rounds(&dir, "a").len() + rounds(&dir, "b").len(), 5);
        assert_eq!(rounds(&dir, "b"), [1, 2, 3]);
        assert_eq!(rounds(&dir, "a"), [4, 5]);
        // By age: only each task's newest is left.
        let retention = store.retention;
        let store = store.with_retention(Retention {
            age: Duration::ZERO,
            ..retention
        });
        std::thread::sleep(Duration::from_millis(20));
        let (_, usage) = store.write(Arc::new(mk_round("c", 1))).await.unwrap();
        assert_eq!((rounds(&dir, "a"), rounds(&dir, "b")), (vec![5], vec![3]));
        assert_eq!((usage.reports, usage.pruned), (3, 3));
        // A budget below one report still keeps every task's newest.
        let tiny = store.with_retention(Retention {
            bytes: 1,
            ..Retention::default()
        });
        let (_, usage) = tiny.write(Arc::new(mk_round("c", 2))).await.unwrap();
        assert_eq!(rounds(&dir, "c"), [2]);
        assert_eq!(usage.reports, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_temp_file() {
        let dir = temp_dir("store-fail");
        let store = ReportStore::new(&dir);
        // The round's file name is taken by a directory: the rename fails.
        fs::create_dir_all(dir.join("reports/mesh/1.json.zst/x")).unwrap();
        assert!(store.write(Arc::new(mk_round("mesh", 1))).await.is_err());
        let names: Vec<String> = fs::read_dir(dir.join("reports/mesh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1.json.zst"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
