//! `meshdoctor-load`: one round of paced HTTP or DNS load against one target, the agent's own
//! engine on the command line, printing the round's statistics as JSON.
//!
//! For one-off checks and for `cargo xtask bench`, which runs it side by side with wrk, hey and
//! dnsperf. A rate above what the target sustains makes it closed-loop: every free slot of
//! `--concurrency` is refilled at once and the shortfall is counted as not sent.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use meshdoctor_loadgen::{
    LoadSpec,
    dns::{DnsRequester, DnsTarget, RecordType, Transport},
    http::{HttpRequester, HttpTarget, TlsConfig, parse_header},
    run,
};

#[derive(Parser)]
#[command(version = meshdoctor_ops::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    target: Target,
    #[command(flatten)]
    load: Load,
}

#[derive(Args)]
struct Load {
    /// Requests per second.
    #[arg(long, global = true, default_value_t = 100)]
    qps: u32,
    /// Seconds of load.
    #[arg(long, global = true, default_value_t = 5.0)]
    duration: f64,
    /// Most requests in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    concurrency: usize,
    /// Per-request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 1000)]
    timeout_ms: u64,
    /// Runtime worker threads (1: one core, like `wrk -t1`).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
}

#[derive(Subcommand)]
enum Target {
    /// HTTP(S) requests to URL.
    Http {
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// "Key: Value" (repeatable; none by default).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Speak HTTP/2 (ALPN h2, or h2c for http://).
        #[arg(long)]
        http2: bool,
        /// CA certificate (PEM) the server must chain to (default: the webpki roots).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Status a reply must have to count as success (default: any 2xx or 3xx).
        #[arg(long)]
        expect_status: Option<u16>,
    },
    /// DNS queries for NAME to SERVER (ip:port) over UDP.
    Dns {
        server: SocketAddr,
        name: String,
        /// Ask for AAAA instead of A.
        #[arg(long)]
        aaaa: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.load.duration > 0.0 && cli.load.duration.is_finite(),
        "--duration: expected a positive number of seconds"
    );
    let spec = LoadSpec {
        qps: cli.load.qps,
        duration: Duration::from_secs_f64(cli.load.duration),
        timeout: Duration::from_millis(cli.load.timeout_ms),
        max_in_flight: cli.load.concurrency,
    };
    let rt = if cli.load.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.load.threads)
            .enable_all()
            .build()?
    };
    let stats = rt.block_on(async {
        Ok::<_, anyhow::Error>(match cli.target {
            Target::Http {
                url,
                method,
                headers,
                http2,
                ca,
                expect_status,
            } => {
                let tls = match ca {
                    Some(path) => Some(TlsConfig {
                        ca_pem: Some(
                            std::fs::read(&path)
                                .with_context(|| format!("--ca {}", path.display()))?,
                        ),
                        ..TlsConfig::default()
                    }),
                    None => None,
                };
                let target = HttpTarget {
                    url,
                    method,
                    headers: headers
                        .iter()
                        .map(|h| parse_header(h))
                        .collect::<Result<_, _>>()?,
                    body: None,
                    http2,
                    tls,
                    expect_status,
                };
                let requester = HttpRequester::new(&target, spec.max_in_flight)?;
                run(Arc::new(requester), &spec).await
            }
            Target::Dns { server, name, aaaa } => {
                let record = if aaaa {
                    RecordType::Aaaa
                } else {
                    RecordType::A
                };
                let target = DnsTarget::new(server, Transport::Udp, name, record);
                run(Arc::new(DnsRequester::new(target)?), &spec).await
            }
        })
    })?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_says_its_default_values_or_absence() {
        meshdoctor_ops::assert_flags_explained(&<Cli as clap::CommandFactory>::command());
    }
}
