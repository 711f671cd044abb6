//! `cargo xtask bench http|dns`: meshdoctor's load engine side by side with its peers (wrk and
//! hey for HTTP, dnsperf for DNS) against the same local server, at the same concurrency and
//! duration, in one run, printing requests per second, CPU seconds per 1,000 requests and peak
//! memory of each client, and meshdoctor's ratio to each peer.
//!
//! The server is pinned to CPU 0 and every client to CPU 1 (one core each, `wrk -t1`,
//! `meshdoctor-load --threads 1`), so the comparison is per core. Machines are noisy: compare
//! the ratios of one run, not absolute figures across runs.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use meshdoctor_lab::{UnboundConfig, nginx_config};

use crate::{cargo, setup, sh, step};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
    /// Seconds each client runs.
    #[arg(long, global = true, default_value_t = 5)]
    secs: u32,
    /// Requests in flight (connections for wrk and hey, outstanding queries for dnsperf).
    #[arg(long, global = true, default_value_t = 64)]
    concurrency: u32,
}

#[derive(Subcommand)]
enum What {
    /// HTTP/1.1 GETs to nginx: meshdoctor-load, wrk, hey.
    Http,
    /// UDP A queries to unbound: meshdoctor-load, dnsperf.
    Dns,
    /// The controller (release build) against N simulated agents over its HTTP API: per round
    /// plan and report bytes, CPU, peak memory, close time, storage, findings' precision and
    /// recall.
    Scale(crate::scale::ScaleArgs),
}

/// What one client did.
struct Run {
    client: &'static str,
    requests: u64,
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_1k(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.requests.max(1) as f64
    }
}

/// The loads measured against a peer.
enum Load {
    Http,
    Dns,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let what = match args.what {
        What::Scale(scale) => return crate::scale::run(scale),
        What::Http => Load::Http,
        What::Dns => Load::Dns,
    };
    step("setup");
    setup::run()?;
    step("build meshdoctor-load (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "meshdoctor-loadgen",
        "--bin",
        "meshdoctor-load",
    ]))?;
    let load = crate::target_dir().join("release/meshdoctor-load");
    let dir = std::env::temp_dir().join(format!("meshdoctor-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let (secs, conc) = (args.secs.to_string(), args.concurrency.to_string());
    // A rate no client reaches: meshdoctor-load then refills every free slot at once, as the
    // closed-loop peers do.
    let ours = |target: &[&str]| {
        let mut c = client(&load, &[]);
        c.args([
            "--qps",
            "10000000",
            "--duration",
            &secs,
            "--concurrency",
            &conc,
            "--threads",
            "1",
        ]);
        c.args(target);
        c
    };
    let runs = match what {
        Load::Http => {
            let port = free_tcp_port()?;
            let _server = Server::nginx(&dir, port)?;
            let url = format!("http://127.0.0.1:{port}/");
            step(&format!(
                "HTTP: {secs} s at {conc} connections against nginx on CPU 0"
            ));
            vec![
                measure("meshdoctor-load", ours(&["http", &url]), |out| {
                    json_u64(out, "requests")
                })?,
                measure(
                    "wrk",
                    client(
                        "wrk",
                        &["-t1", "-c", &conc, "-d", &format!("{secs}s"), &url],
                    ),
                    |out| {
                        out.lines()
                            .find(|l| l.contains(" requests in "))
                            .and_then(|l| l.split_whitespace().next()?.parse().ok())
                    },
                )?,
                measure(
                    "hey",
                    client("hey", &["-c", &conc, "-z", &format!("{secs}s"), &url]),
                    |out| {
                        Some(
                            out.lines()
                                .filter(|l| l.trim_start().starts_with('['))
                                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                                .sum(),
                        )
                    },
                )?,
            ]
        }
        Load::Dns => {
            let port = free_udp_port()?;
            let _server = Server::unbound(&dir, port)?;
            let server = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
            let queries = dir.join("queries");
            fs::write(&queries, "a.meshdoctor.test A\n")?;
            step(&format!(
                "DNS: {secs} s at {conc} outstanding queries against unbound on CPU 0"
            ));
            vec![
                measure(
                    "meshdoctor-load",
                    ours(&["dns", &server, "a.meshdoctor.test"]),
                    |out| json_u64(out, "requests"),
                )?,
                measure(
                    "dnsperf",
                    client(
                        "dnsperf",
                        &[
                            "-s",
                            "127.0.0.1",
                            "-p",
                            &port.to_string(),
                            "-d",
                            &queries.display().to_string(),
                            "-l",
                            &secs,
                            "-q",
                            &conc,
                            "-c",
                            "1",
                            "-T",
                            "1",
                        ],
                    ),
                    |out| {
                        out.lines()
                            .find(|l| l.contains("Queries completed:"))
                            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
                    },
                )?,
            ]
        }
    };
    print_table(&runs);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A client pinned to CPU 1.
fn client(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1"]).arg(program).args(args);
    c
}

/// Runs `cmd` (a [`client`]), waits for it with `wait4` to get its own CPU time and peak RSS,
/// and reads the requests it completed from its output.
fn measure(
    name: &'static str,
    mut cmd: Command,
    requests: impl Fn(&str) -> Option<u64>,
) -> Result<Run> {
    eprintln!("  {name} ...");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    let (status, usage) = wait4(&child)?;
    let wall = start.elapsed();
    if !status {
        bail!("{name} failed: {err}{out}");
    }
    let requests = requests(&out)
        .with_context(|| format!("cannot read {name}'s request count from: {out}"))?;
    Ok(Run {
        client: name,
        requests,
        wall,
        cpu: usage.0,
        max_rss_kib: usage.1,
    })
}

/// Reaps `child`: (success, (user + system CPU time, peak RSS in KiB)).
fn wait4(child: &Child) -> Result<(bool, (Duration, u64))> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our child's pid with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Ok((
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        (cpu, usage.ru_maxrss as u64),
    ))
}

fn json_u64(out: &str, field: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(out)
        .ok()?
        .get(field)?
        .as_u64()
}

fn print_table(runs: &[Run]) {
    println!(
        "{:<16} {:>12} {:>10} {:>14} {:>14}",
        "CLIENT", "REQUESTS/S", "CPU S", "CPU S/1000 REQ", "PEAK RSS MiB"
    );
    for r in runs {
        println!(
            "{:<16} {:>12.0} {:>10.2} {:>14.5} {:>14.1}",
            r.client,
            r.rps(),
            r.cpu.as_secs_f64(),
            r.cpu_per_1k(),
            r.max_rss_kib as f64 / 1024.0
        );
    }
    let ours = &runs[0];
    for peer in &runs[1..] {
        println!(
            "meshdoctor-load vs {}: requests/s {:.2}x, requests per CPU second {:.2}x, peak memory {:.2}x",
            peer.client,
            ours.rps() / peer.rps(),
            peer.cpu_per_1k() / ours.cpu_per_1k(),
            ours.max_rss_kib as f64 / peer.max_rss_kib.max(1) as f64,
        );
    }
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server process pinned to CPU 0, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// nginx answering `GET /` with a short 200, one process, no access log.
    fn nginx(dir: &Path, port: u16) -> Result<Self> {
        let conf = dir.join("nginx.conf");
        let http = format!(
            "  access_log off;\n  server {{ listen 127.0.0.1:{port}; \
             location / {{ return 200 \"ok\\n\"; }} }}\n"
        );
        fs::write(&conf, nginx_config(dir, "nginx", &http))?;
        let child = Command::new("taskset")
            .args(["-c", "0", "nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let server = Self(child);
        wait_for(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "nginx",
        )?;
        Ok(server)
    }

    /// unbound serving the static zone `meshdoctor.test.` only.
    fn unbound(dir: &Path, port: u16) -> Result<Self> {
        let conf = dir.join("unbound.conf");
        let config = UnboundConfig {
            dir: dir.to_path_buf(),
            addr: Ipv4Addr::LOCALHOST.into(),
            port,
            tls: None,
            allow: vec!["127.0.0.0/8".into()],
            zone: "meshdoctor.test.".into(),
            records: vec!["a.meshdoctor.test. A 192.0.2.7".into()],
        };
        fs::write(&conf, config.render())?;
        let child = Command::new("taskset")
            .args(["-c", "0", "unbound", "-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting unbound")?;
        let server = Self(child);
        wait_for(|| dns_answers(port), "unbound")?;
        Ok(server)
    }
}

/// Whether a DNS server on 127.0.0.1:`port` answers a query (any reply).
fn dns_answers(port: u16) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    // id 1, RD, one question: a.meshdoctor.test A IN.
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["a", "meshdoctor", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut buf = [0u8; 512];
    sock.send_to(&q, ("127.0.0.1", port)).is_ok() && sock.recv(&mut buf).is_ok()
}

fn wait_for(ready: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = std::io::stderr().flush();
    bail!("{what} did not come up within 10 s")
}
