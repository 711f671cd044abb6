//! meshdoctor-controller: tasks -> rounds -> plans -> reports -> judged round reports.
//!
//! The pure core ([`schedule`], [`mesh`], [`join`], [`judge`], [`localize`], and [`apps`] for
//! AppHttpHealthy and NetDns rounds, which only reads the TLS files; the task status it folds
//! rounds into is `meshdoctor_api::status`) knows nothing of HTTP, files or Kubernetes, so the
//! Kubernetes backend can reuse it as is. The standalone backend's IO sits around it: [`tasks`]
//! (task files), [`store`] (report files), [`rounds`] (the tokio round driver and shared
//! state), [`api_server`] (axum routes) and [`metrics`].

pub mod api_server;
pub mod apps;
pub mod backend;
#[cfg(test)]
mod fixtures;
pub mod join;
pub mod judge;
pub mod kubernetes;
pub mod localize;
pub mod mesh;
pub mod metrics;
pub mod rounds;
pub mod schedule;
pub mod store;
pub mod tasks;

/// Wall-clock now in Unix milliseconds; plans and reports carry wall-clock times because
/// agents on different hosts only share that clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
