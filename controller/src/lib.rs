//! meshdoctor-controller: tasks -> rounds -> plans -> reports -> judged round reports.
//!
//! The pure core knows nothing of HTTP, files or Kubernetes, so both backends share it:
//! [`task_table`] (which tasks run, their status), [`schedule`] (when rounds start),
//! [`round`] (a round planned and closed, matching the task kind once) over [`mesh`], [`join`],
//! [`judge`] and [`localize`] for NetReach and [`apps`] for AppHttpHealthy and NetDns.
//!
//! Around it, one part per job: the agent [`roster`], the open-round [`mailbox`], the
//! [`sinks`] of closed rounds (report store, metrics, findings), and the [`driver`], the async
//! loops that tie them together. The standalone backend's IO: [`tasks_dir`] (task files) and
//! [`api_server`] (the HTTP API); the Kubernetes backend is [`kubernetes`], both behind
//! [`backend`].

pub mod api_server;
pub mod apps;
pub mod backend;
pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod join;
pub mod judge;
pub mod kubernetes;
pub mod localize;
pub mod mailbox;
pub mod mesh;
pub mod roster;
pub mod round;
pub mod schedule;
pub mod sinks;
pub mod task_table;
pub mod tasks_dir;

/// Wall-clock now in Unix milliseconds; plans and reports carry wall-clock times because
/// agents on different hosts only share that clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
