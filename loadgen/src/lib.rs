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

/// Entry points of the fuzz targets (`fuzz/`, which cargo-fuzz builds with `--cfg fuzzing`):
/// the parsers of what servers send, fed hostile bytes.
#[cfg(fuzzing)]
pub mod fuzzing {
    use crate::http1::ResponseParser;

    /// Feeds `data` to an HTTP/1 response parser as a connection would: in pieces (their size
    /// and whether the request was a HEAD chosen by the first byte) appended to a buffer whose
    /// consumed bytes are dropped, then the end of the connection.
    pub fn http1_response(data: &[u8]) {
        let Some((&first, rest)) = data.split_first() else {
            return;
        };
        let piece = usize::from(first & 0x3f) + 1;
        let mut parser = ResponseParser::new(first & 0x40 != 0);
        let mut buf = Vec::new();
        for chunk in rest.chunks(piece) {
            buf.extend_from_slice(chunk);
            while !parser.is_done() {
                match parser.feed(&buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        assert!(n <= buf.len(), "consumed {n} of {} bytes", buf.len());
                        buf.drain(..n);
                    }
                    Err(_) => return,
                }
            }
            if parser.is_done() {
                let _ = parser.reply();
                return;
            }
        }
        let _ = parser.eof();
    }
}

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
