//! Request load for the application probes (AppHttpHealthy, NetDns): requests paced at a fixed
//! rate with bounded concurrency, each one timed, summed into [`meshdoctor_api::LoadStats`].
//!
//! A protocol is a [`Requester`]: it knows how to send one request and judge its reply. The
//! runner ([`run()`]) owns everything else (pacing, concurrency, timeouts, statistics), so HTTP
//! and DNS share it.

use std::future::Future;

mod conn;
pub mod dns;
pub mod http;
mod http1;
mod run;
mod stats;

pub use run::{LoadSpec, run};

/// How one request ended, as the protocol judges it. Latency is measured by the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply arrived. `code` is the HTTP status (`"200"`) or the DNS rcode (`"NOERROR"`);
    /// `success` is the protocol's verdict against the task's expectation.
    Reply {
        code: String,
        success: bool,
        /// Response body (HTTP) or message (DNS) bytes received.
        bytes: u64,
    },
    /// No usable reply. `kind` is a short stable label counted in the statistics (`connect`,
    /// `tls`, `reset`, `protocol`, `io`, ...); `timeout` is counted by the runner itself.
    Error { kind: &'static str, detail: String },
}

/// One protocol's way of sending a request. Implementations are shared by every in-flight
/// request (`&self`), so they hold connection pools or sockets behind interior mutability.
pub trait Requester: Send + Sync + 'static {
    fn request(&self) -> impl Future<Output = Outcome> + Send;
}
