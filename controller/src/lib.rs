//! meshdoctor-controller: tasks -> rounds -> plans -> reports -> judged round reports.
//!
//! The pure core knows nothing of HTTP, files or Kubernetes, so both backends share it:
//! [`task_table`] (which tasks run, their status), [`schedule`] (when rounds start),
//! [`round`] (a round planned and closed, matching the task kind once) over [`mesh`], [`join`],
//! [`judge`] and [`localize`] for NetReach and [`apps`] for AppHttpHealthy and NetDns.
//!
//! Around it, one part per job: the agent [`roster`], the open-round [`mailbox`], the
//! [`sinks`] of closed rounds (report store, metrics, findings), and the [`driver`], the async
//! loops that tie them together; [`api_server`] serves the HTTP API of both backends, with
//! [`access`] deciding who may call what. The
//! standalone backend's own IO is [`tasks_dir`] (task files); the Kubernetes backend is
//! [`kubernetes`]; what differs between them for a round is behind [`backend`].

pub mod access;
pub mod api_server;
pub mod apps;
pub mod backend;
pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod join;
pub mod judge;
pub mod kubernetes;
pub mod limits;
pub mod localize;
pub mod mailbox;
pub mod mesh;
pub mod roster;
pub mod round;
pub mod schedule;
pub mod sinks;
pub mod status_files;
pub mod task_table;
pub mod tasks_dir;

/// Plans or reports of a round, by node name (sorted, so rounds and reports list nodes in a
/// stable order).
pub type ByNode<T> = std::collections::BTreeMap<String, T>;

/// Hands the memory a round freed back to the system. glibc keeps freed memory in the arena
/// of the thread that freed it, and a round is decoded, joined and stored on several pool
/// threads: without this, the resident size of `cargo xtask bench scale` grew by tens of MiB a
/// round. Other allocators (musl) return memory by themselves.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tunes glibc's malloc for rounds that allocate big and free big. Call it first, before any
/// thread starts.
///
/// Two arenas: glibc gives threads arenas of their own (up to eight per core) and memory freed
/// in one is not reused by another; a round's reports are parsed on whichever pool threads
/// take them, so every arena grew to a round's worth (capping them cut the peak resident size
/// of `cargo xtask bench scale` at 128 nodes by about 6% at no measurable CPU cost).
///
/// Blocks of 64 KiB and more mapped apart, whatever was freed before: glibc otherwise raises
/// that threshold to the largest block freed so far (a round's path results, tens of MiB), and
/// a block freed in the middle of a round (the fold's sides of one source, dropped once
/// joined) stays resident in the heap instead of going back while the round's results grow.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

/// Locks without panicking: a poisoned lock still holds consistent data in this crate, because
/// no section leaves a structure half-updated.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `bytes` to `path` whole or not at all, durably: a hidden temp file beside it, synced,
/// renamed over it, the directory synced. A crash leaves the old file or the new, never half.
pub(crate) fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{fs, io::Write as _};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_data()
        })
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Wall-clock now in Unix milliseconds; plans and reports carry wall-clock times because
/// agents on different hosts only share that clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
