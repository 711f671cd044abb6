//! Round reports on local disk: `<data-dir>/reports/<task>/<round>.msgpack.zst`, MessagePack
//! with field names compressed with zstd, written off the async workers and atomically (temp
//! file + rename), so a reader or a crash never sees half a report, and read back as a stream,
//! never whole. A mesh round's report repeats the same keys, node and interface names on every
//! pair-path: zstd at level 1 makes it about 7x smaller. MessagePack rather than JSON because a
//! report is written every round and read now and then: it costs 40% less CPU to write (no
//! number formatting, no string escaping), and being self-describing it is served as JSON by
//! transcoding it a value at a time ([`StoredReport::write_json`]), byte for byte what
//! serde_json writes of the report. Reports of earlier versions (`<round>.json.zst`,
//! `<round>.json`) are still read, served and pruned. After each write the store is pruned
//! to its [`Retention`]: the newest rounds of each task, for a time, within a byte budget; the
//! newest round of every task always stays (the findings and `latest` are read from it).

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use meshdoctor_api::{RoundReport, routes::RoundRef};
use serde::Serialize as _;

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
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the stored report of task {task:?} is unreadable: {source}")]
    Decode {
        task: String,
        #[source]
        source: DecodeError,
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

/// How a stored report is encoded: by its file name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// MessagePack with field names, zstd: what this version writes.
    MessagePack,
    /// Compact JSON, zstd, as earlier versions wrote it.
    JsonZstd,
    /// JSON, as the first versions wrote it.
    Json,
}

/// The suffix after the round number of each format, the one written first.
const FORMATS: [(&str, Format); 3] = [
    (".msgpack.zst", Format::MessagePack),
    (".json.zst", Format::JsonZstd),
    (".json", Format::Json),
];

/// zstd's fastest level: the report compresses well at any level, and the round closes sooner.
const LEVEL: i32 = 1;

/// Read-ahead of a decompressed report: the MessagePack decoder reads a few bytes at a time.
const READ_AHEAD: usize = 64 << 10;

/// Suffix of a running round's mark: `.<round>.running`.
const RUNNING: &str = ".running";

fn running_mark(dir: &Path, round: u32) -> PathBuf {
    dir.join(format!(".{round}{RUNNING}"))
}

/// The round of a report file name, `None` for anything else (temp files among them).
fn round_of(name: &str) -> Option<u32> {
    FORMATS
        .iter()
        .find_map(|(suffix, _)| name.strip_suffix(suffix))?
        .parse()
        .ok()
}

/// A stored report that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("MessagePack: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A stored report, open: read it as JSON ([`StoredReport::write_json`]) or as a type
/// ([`StoredReport::decode`]), a piece at a time. Blocking reads: use it off the async
/// workers.
#[derive(Debug)]
pub struct StoredReport {
    file: fs::File,
    format: Format,
}

impl StoredReport {
    /// Writes the report to `out` as compact JSON, as the API serves it.
    pub fn write_json(self, out: &mut impl io::Write) -> Result<(), DecodeError> {
        match self.format {
            Format::MessagePack => {
                let mut from =
                    rmp_serde::Deserializer::new(self.decompressed()?).with_human_readable();
                let mut to = serde_json::Serializer::new(out);
                serde_transcode::transcode(&mut from, &mut to)?;
            }
            Format::JsonZstd => {
                io::copy(&mut zstd::Decoder::new(self.file)?, out)?;
            }
            Format::Json => {
                io::copy(&mut io::BufReader::new(self.file), out)?;
            }
        }
        Ok(())
    }

    /// The report read as a `T`: a type with only the fields the caller needs skips the rest
    /// without keeping them.
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, DecodeError> {
        Ok(match self.format {
            Format::MessagePack => {
                let mut from =
                    rmp_serde::Deserializer::new(self.decompressed()?).with_human_readable();
                T::deserialize(&mut from)?
            }
            Format::JsonZstd => serde_json::from_reader(io::BufReader::with_capacity(
                READ_AHEAD,
                zstd::Decoder::new(self.file)?,
            ))?,
            Format::Json => serde_json::from_reader(io::BufReader::new(self.file))?,
        })
    }

    fn decompressed(self) -> io::Result<impl io::Read> {
        Ok(io::BufReader::with_capacity(
            READ_AHEAD,
            zstd::Decoder::new(self.file)?,
        ))
    }
}

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
            let (suffix, _) = FORMATS[0];
            let path = dir.join(format!("{}{suffix}", report.round));
            let tmp = dir.join(format!(".{}{suffix}.tmp", report.round));
            let written = (|| {
                let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
                let zstd = zstd::Encoder::new(file, LEVEL).map_err(io_err(&tmp))?;
                // The encoder writes in small pieces: buffer them before zstd.
                let mut out = io::BufWriter::with_capacity(128 << 10, zstd);
                report.serialize(
                    &mut rmp_serde::Serializer::new(&mut out)
                        .with_struct_map()
                        .with_human_readable(),
                )?;
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
            // The rename made durable before the mark goes: a crash between the two leaves a
            // mark beside its report, which `interrupted` skips.
            let _ = fs::File::open(&dir).and_then(|d| d.sync_all());
            // The round is over: it was not interrupted.
            let _ = fs::remove_file(running_mark(&dir, report.round));
            // An earlier version's report of the same round is replaced too.
            for (suffix, _) in &FORMATS[1..] {
                let _ = fs::remove_file(dir.join(format!("{}{suffix}", report.round)));
            }
            Ok((path, store.prune()))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Marks round `round` of `task`, started at `start_ms`, as running until its report is
    /// [written](Self::write): a controller that stops before then leaves the mark, from which
    /// the next one learns that the round was interrupted ([`Self::interrupted`]) and that its
    /// number is taken.
    pub async fn mark_running(
        &self,
        task: &str,
        round: u32,
        start_ms: u64,
    ) -> Result<(), StoreError> {
        let dir = self.task_dir(task)?;
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let mark = running_mark(&dir, round);
            crate::write_durably(&mark, start_ms.to_string().as_bytes()).map_err(io_err(&mark))
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Removes the running mark of a round whose report could not be written: the round was
    /// recorded as failed, not interrupted.
    pub async fn unmark(&self, task: &str, round: u32) {
        if let Ok(dir) = self.task_dir(task) {
            let _ = tokio::fs::remove_file(running_mark(&dir, round)).await;
        }
    }

    /// The rounds of `task` marked running whose report was never written, with their
    /// starts: rounds a controller that stopped had open. A mark beside its round's report (a
    /// crash after the write) is removed instead.
    pub async fn interrupted(&self, task: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        let dir = self.task_dir(task)?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            let name = entry.file_name();
            let Some(round) = name
                .to_str()
                .and_then(|n| n.strip_prefix('.')?.strip_suffix(RUNNING)?.parse().ok())
            else {
                continue;
            };
            let stored = FORMATS
                .iter()
                .any(|(suffix, _)| dir.join(format!("{round}{suffix}")).exists());
            if stored {
                let _ = tokio::fs::remove_file(entry.path()).await;
                continue;
            }
            let start_ms = tokio::fs::read_to_string(entry.path())
                .await
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            out.push((round, start_ms));
        }
        out.sort();
        Ok(out)
    }

    /// Whether a report could be written now: a page written, synced and removed.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&root).map_err(io_err(&root))?;
            let path = root.join(".probe.tmp");
            let written = fs::File::create(&path).and_then(|mut f| {
                io::Write::write_all(&mut f, &[0u8; 4096])?;
                f.sync_data()
            });
            let _ = fs::remove_file(&path);
            written.map_err(io_err(&path))
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

    /// The stored report of a round, `None` when there is none.
    pub async fn open(
        &self,
        task: &str,
        round: RoundRef,
    ) -> Result<Option<StoredReport>, StoreError> {
        let round = match round {
            RoundRef::Number(n) => n,
            RoundRef::Latest => match self.latest_round(task).await? {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        let dir = self.task_dir(task)?;
        for (suffix, format) in FORMATS {
            let path = dir.join(format!("{round}{suffix}"));
            match tokio::fs::File::open(&path).await {
                Ok(file) => {
                    let file = file.into_std().await;
                    return Ok(Some(StoredReport { file, format }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(None)
    }

    /// The stored report of a round as JSON, whole, `None` when there is none (tests and
    /// small reports: the API streams it).
    pub async fn read(&self, task: &str, round: RoundRef) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(report) = self.open(task, round).await? else {
            return Ok(None);
        };
        let task = task.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            report
                .write_json(&mut out)
                .map_err(|source| StoreError::Decode { task, source })?;
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
        // Earlier versions' reports, compressed JSON and plain JSON, are still read, and count
        // for `latest`.
        let legacy = serde_json::to_vec(&mk_round("mesh", 11)).unwrap();
        let compressed = zstd::encode_all(&legacy[..], 1).unwrap();
        fs::write(dir.join("reports/mesh/11.json.zst"), &compressed).unwrap();
        assert_eq!(store.latest_round("mesh").await.unwrap(), Some(11));
        let read = store.read("mesh", RoundRef::Latest).await.unwrap();
        assert_eq!(read.as_ref(), Some(&legacy));
        let legacy = serde_json::to_vec(&mk_round("mesh", 12)).unwrap();
        fs::write(dir.join("reports/mesh/12.json"), &legacy).unwrap();
        assert_eq!(store.latest_round("mesh").await.unwrap(), Some(12));
        let read = store.read("mesh", RoundRef::Latest).await.unwrap();
        assert_eq!(read, Some(legacy));
        // Writing a round again replaces an earlier version's file of it.
        store.write(Arc::new(mk_round("mesh", 12))).await.unwrap();
        assert!(!dir.join("reports/mesh/12.json").exists());
        assert!(dir.join("reports/mesh/12.msgpack.zst").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_mesh_report_is_stored_compressed_and_served_as_json() {
        use meshdoctor_api::{
            DropCount, Family, Finding, Histogram, LostSample, Packet, PathResult, RttStats,
        };

        let dir = temp_dir("store-zstd");
        let mut report = mk_round("mesh", 1);
        report.paths = (0..2000)
            .map(|i| {
                let src = format!("node-{}", i % 50);
                let dst = format!("node-{}", i / 50);
                let family = [Family::Ipv4, Family::Ipv6][i as usize % 2];
                let mut path = PathResult {
                    path: i,
                    ..PathResult::test(&src, &dst, ("eth0", "default"), family, 50)
                };
                // Some of every kind of value a report holds, for the JSON served back.
                if i % 7 == 0 {
                    let rtts = Histogram::from_iter([123_456, 7_891, 1_000_000 + u64::from(i)]);
                    path.kernel_rtt = RttStats::from_histogram(&rtts);
                    path.lost_probes = vec![LostSample {
                        seq: 3,
                        segment: None,
                    }];
                    path.drops = vec![DropCount {
                        node: dst.clone(),
                        packet: Packet::Reply,
                        reason: "NETFILTER_DROP \"quoted\" é".into(),
                        location: "nft_do_chain+0x1c".into(),
                        count: 2,
                    }];
                    path.loss_ratio = 1.0 / 3.0;
                }
                path
            })
            .collect();
        report.findings = vec![Finding::test("node-1")];
        let json = serde_json::to_vec(&report).unwrap().len() as u64;
        let (path, usage) = ReportStore::new(&dir)
            .write(Arc::new(report.clone()))
            .await
            .unwrap();
        assert!(path.to_string_lossy().ends_with("1.msgpack.zst"));
        assert!(usage.bytes * 5 < json, "{} of {json} bytes", usage.bytes);
        let store = ReportStore::new(&dir);
        let back = store.read("mesh", RoundRef::Number(1)).await.unwrap();
        // Served byte for byte as serde_json writes the report.
        assert_eq!(back, Some(serde_json::to_vec(&report).unwrap()));
        let opened = store.open("mesh", RoundRef::Number(1)).await.unwrap();
        assert_eq!(opened.unwrap().decode::<RoundReport>().unwrap(), report);
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
        fs::create_dir_all(dir.join("reports/mesh/1.msgpack.zst/x")).unwrap();
        assert!(store.write(Arc::new(mk_round("mesh", 1))).await.is_err());
        let names: Vec<String> = fs::read_dir(dir.join("reports/mesh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1.msgpack.zst"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
