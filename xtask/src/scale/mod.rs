//! `cargo xtask bench scale`: the real controller binary (release build) over its real HTTP
//! API against simulated agents ([`sim`]): N of them register (eth0 and net1, both families,
//! optionally in Z zones), long-poll their plans and post, each, the report a real agent would
//! post for its plan, with K interface faults and J zone-pair faults injected. Per round it
//! prints the mesh the controller chose (shape, peers, the most probe packets/s it asks of an
//! agent), what the controller costs: plan and report bytes (reports in postcard, as agents
//! post them), CPU seconds, peak RSS, the time from the
//! last report to the round report, stored bytes, and the findings' precision and recall
//! against the faults, in that round and over the rounds so far (a sampled mesh meets a fault
//! on some of its paths each round).
//!
//! CPU is the controller's user + system time from the end of the previous round (registration
//! for the first) until it has stored this one's report, read from /proc; serving that report
//! to one reader afterwards (the benchmark reads it for the findings) is its own column, as a
//! report is read by whoever wants it, not once per round. Peak RSS is its VmHWM over both,
//! reset at the start of each round (`clear_refs`). Compare runs on one machine.

mod sim;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures_util::{StreamExt as _, stream};
use meshdoctor_api::{
    RoundPlan, RoundReport,
    agent_report::{REPORT_CONTENT_TYPE, encode_report},
    routes::{self, PlansQuery, RoundRef},
    views::TaskView,
};

use crate::{cargo, setup, sh, step};

#[derive(Args)]
pub struct ScaleArgs {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 128)]
    nodes: u32,
    /// Interface faults to inject (30% of the packets each).
    #[arg(long, default_value_t = 0)]
    faults: u32,
    /// Topology zones the nodes are split into (consecutive blocks; 0: none).
    #[arg(long, default_value_t = 0)]
    zones: u32,
    /// Zone-pair faults to inject: zone-1 -> zone-2, zone-2 -> zone-3, ... (30% each).
    #[arg(long, default_value_t = 0)]
    zone_faults: u32,
    /// The task's mesh shape: full, sampled, topology or auto (within the probe budget).
    #[arg(long, default_value = "auto", value_parser = ["full", "sampled", "topology", "auto"])]
    mesh: String,
    /// Rounds to run.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Probes per second per pair-path (50 probes per path over the 5 s of a round).
    #[arg(long, default_value_t = 10)]
    qps: u32,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 30)]
    every: u32,
}

/// HTTP requests in flight to the controller at once.
const CONCURRENCY: usize = 64;
const TASK: &str = "scale";

/// What one round cost.
struct Row {
    round: u32,
    agents: usize,
    paths: usize,
    plan_bytes: u64,
    report_bytes: u64,
    /// The round's CPU: registration (first round), plans, reports, closing, storing.
    cpu: Duration,
    /// Serving the stored report to one reader, after the round.
    serve_cpu: Duration,
    peak_rss_kib: u64,
    close: Duration,
    stored_bytes: u64,
    findings: usize,
    score: sim::Score,
    /// Recall over this round and the ones before.
    recall_so_far: f64,
    mesh: String,
    max_agent_rate: u64,
}

pub fn run(args: ScaleArgs) -> Result<()> {
    step("setup");
    setup::run()?;
    step("build meshdoctor-controller (release)");
    sh(cargo().args(["build", "--release", "-p", "meshdoctor-controller"]))?;
    let dir = std::env::temp_dir().join(format!("meshdoctor-scale-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("tasks"))?;
    fs::write(dir.join("tasks/scale.yaml"), task_yaml(&args))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let controller = Controller::start(&dir, port, args.nodes)?;
    step(&format!(
        "{} agents, {} faults, {} rounds every {} s",
        args.nodes, args.faults, args.rounds, args.every
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rows = rt.block_on(drive(&args, &base, &controller, &dir));
    drop(controller);
    let _ = fs::remove_dir_all(&dir);
    print_table(&args, &rows?);
    Ok(())
}

/// The benchmark's NetReach: both families, every interface, the mesh shape asked for.
fn task_yaml(args: &ScaleArgs) -> String {
    format!(
        "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: {TASK}}}\nspec:\n  \
         schedule: {{schedule: '@every {}s', roundNumber: {}}}\n  \
         request: {{qps: {}, durationInSecond: 5, perRequestTimeoutInMS: 500}}\n  \
         expect: {{successRate: 1}}\n  \
         target: {{ipv4: true, ipv6: true, mesh: {{mode: {}}}}}\n",
        args.every, args.rounds, args.qps, args.mesh
    )
}

/// The controller under test, killed on drop.
struct Controller {
    child: Child,
    data: PathBuf,
}

impl Controller {
    fn start(dir: &Path, port: u16, nodes: u32) -> Result<Self> {
        let bin = crate::target_dir().join("release/meshdoctor-controller");
        let log = fs::File::create(dir.join("controller.log"))?;
        let child = Command::new(&bin)
            .args(["--tasks-dir", &dir.join("tasks").display().to_string()])
            .args(["--data-dir", &dir.join("data").display().to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--wait-agents", &nodes.to_string()])
            // Time to publish every plan before the start, and to take every report.
            .args(["--start-delay", "3s", "--report-grace", "120s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            data: dir.join("data"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> Result<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').context("/proc stat")? + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    /// Peak resident memory since the last [`Self::reset_peak`], in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        crate::status_kib(self.pid(), "VmHWM")
    }

    fn reset_peak(&self) -> Result<()> {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").context("clear_refs")
    }

    fn stored_bytes(&self) -> u64 {
        fn size(p: &Path) -> u64 {
            match fs::read_dir(p) {
                Ok(entries) => entries.flatten().map(|e| size(&e.path())).sum(),
                Err(_) => fs::metadata(p).map_or(0, |m| m.len()),
            }
        }
        size(&self.data)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn drive(args: &ScaleArgs, base: &str, ctl: &Controller, dir: &Path) -> Result<Vec<Row>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    wait_healthy(&http, base, ctl, dir).await?;
    let registrations: Vec<_> = (1..=args.nodes)
        .map(|i| sim::registration(i, args.nodes, args.zones))
        .collect();
    let zones = sim::zones(&registrations);
    let mut faults = sim::faults(args.nodes, args.faults);
    faults.extend(sim::zone_faults(args.zones, args.zone_faults));
    for f in &faults {
        eprintln!("  fault: {f}");
    }
    let mut found_so_far = vec![false; faults.len()];
    let mut cpu_before = ctl.cpu()?;
    ctl.reset_peak()?;
    let registered = stream::iter(&registrations)
        .map(|r| post(&http, format!("{base}{}", routes::AGENTS), r))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    registered.into_iter().collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let mut after = 0;
    for round in 1..=args.rounds {
        let plans = poll_plans(&http, base, &registrations, after).await?;
        let plan_bytes: u64 = plans.values().map(|(_, bytes)| bytes).sum();
        let plans: BTreeMap<String, RoundPlan> = plans
            .into_iter()
            .map(|(node, (plan, _))| (node, plan))
            .collect();
        after = plans.values().map(|p| p.round_tag).max().unwrap_or(after);
        let paths = plans.values().map(|p| p.targets.len()).sum();
        let reports = sim::reports(&plans, &faults, &zones);
        let bodies: Vec<(String, Vec<u8>)> = reports
            .iter()
            .map(|r| {
                let url = format!("{base}{}", routes::agent_report(&r.node, r.round_tag));
                encode_report(r).map(|body| (url, body))
            })
            .collect::<Result<_, _>>()?;
        let report_bytes = bodies.iter().map(|(_, b)| b.len() as u64).sum();
        drop(reports);
        let posted = stream::iter(bodies)
            .map(|(url, body)| post_bytes(&http, url, body, REPORT_CONTENT_TYPE))
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        posted.into_iter().collect::<Result<Vec<_>>>()?;
        let last_report = Instant::now();
        wait_round(&http, base, round, ctl, dir).await?;
        let close = last_report.elapsed();
        let cpu_now = ctl.cpu()?;
        let report = get_report(&http, base, round).await?;
        let cpu_served = ctl.cpu()?;
        let score = sim::score(&report.findings, &faults);
        for (found, fault) in found_so_far.iter_mut().zip(&faults) {
            *found |= report.findings.iter().any(|f| fault.found_by(f));
        }
        let recall_so_far = if faults.is_empty() {
            1.0
        } else {
            found_so_far.iter().filter(|&&f| f).count() as f64 / faults.len() as f64
        };
        let (mesh, max_agent_rate) = match &report.mesh {
            Some(m) => (
                match m.peers {
                    Some(k) => format!("{} {k}", m.mode),
                    None => m.mode.to_string(),
                },
                m.max_agent_rate,
            ),
            None => ("-".into(), 0),
        };
        for w in &report.warnings {
            eprintln!("  warning: {w}");
        }
        rows.push(Row {
            round,
            agents: plans.len(),
            paths,
            plan_bytes,
            report_bytes,
            cpu: cpu_now.saturating_sub(cpu_before),
            serve_cpu: cpu_served.saturating_sub(cpu_now),
            peak_rss_kib: ctl.peak_rss_kib()?,
            close,
            stored_bytes: ctl.stored_bytes(),
            findings: report.findings.len(),
            score,
            recall_so_far,
            mesh,
            max_agent_rate,
        });
        eprintln!(
            "  round {round}: {} findings, precision {:.2}, recall {:.2}",
            report.findings.len(),
            score.precision,
            score.recall
        );
        cpu_before = cpu_served;
        ctl.reset_peak()?;
    }
    Ok(rows)
}

/// Fails with the controller's log when it is not answering.
async fn wait_healthy(
    http: &reqwest::Client,
    base: &str,
    ctl: &Controller,
    dir: &Path,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}{}", routes::HEALTHZ))
        .send()
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "the controller (pid {}) does not answer: {}",
                ctl.pid(),
                fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn post(http: &reqwest::Client, url: String, body: &impl serde::Serialize) -> Result<()> {
    post_bytes(http, url, serde_json::to_vec(body)?, "application/json").await
}

/// POSTs JSON, compressed with `encoding` when set.
async fn post_bytes(
    http: &reqwest::Client,
    url: String,
    body: Vec<u8>,
    content_type: &str,
) -> Result<()> {
    let resp = http
        .post(&url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        bail!("POST {url}: {} {}", resp.status(), resp.text().await?);
    }
    Ok(())
}

/// Every agent's plan of the next round (tagged above `after`) and its size in bytes.
async fn poll_plans(
    http: &reqwest::Client,
    base: &str,
    agents: &[meshdoctor_api::AgentRegistration],
    after: u32,
) -> Result<BTreeMap<String, (RoundPlan, u64)>> {
    let http = Arc::new(http.clone());
    let polls = stream::iter(agents)
        .map(|a| {
            let http = http.clone();
            let query = PlansQuery {
                after,
                wait_ms: 30_000,
            };
            let url = format!("{base}{}", routes::agent_plans(&a.node, &query));
            async move {
                let deadline = Instant::now() + Duration::from_secs(600);
                loop {
                    let bytes = http
                        .get(&url)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    let mut plans: Vec<RoundPlan> = serde_json::from_slice(&bytes)?;
                    if let Some(plan) = plans.pop() {
                        return Ok::<_, anyhow::Error>((
                            a.node.clone(),
                            (plan, bytes.len() as u64),
                        ));
                    }
                    if Instant::now() > deadline {
                        bail!("no plan for {} in 10 minutes", a.node);
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    polls.into_iter().collect()
}

/// Until the controller has stored round `round` and counted it in the task's status (which
/// it does after storing), polling the small task list rather than the report.
async fn wait_round(
    http: &reqwest::Client,
    base: &str,
    round: u32,
    ctl: &Controller,
    dir: &Path,
) -> Result<()> {
    let url = format!("{base}{}", routes::TASKS);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let tasks: Vec<TaskView> = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let done = tasks
            .iter()
            .find(|t| t.name == TASK)
            .and_then(|t| t.status.as_ref());
        if done.is_some_and(|s| s.done_round >= u64::from(round)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no report of round {round} in 10 minutes");
        }
        if ctl.cpu().is_err() {
            bail!(
                "the controller died: {}",
                fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Round `round`'s stored report, whole.
async fn get_report(http: &reqwest::Client, base: &str, round: u32) -> Result<RoundReport> {
    let url = format!(
        "{base}{}",
        routes::task_round(TASK, RoundRef::Number(round))
    );
    Ok(http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn print_table(args: &ScaleArgs, rows: &[Row]) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\nscale: {} nodes in {} zones, {} interface and {} zone faults, mesh {}, eth0 + net1, \
         IPv4 + IPv6, {} probes per path",
        args.nodes,
        args.zones,
        args.faults,
        args.zone_faults,
        args.mesh,
        args.qps * 5
    );
    println!(
        "{:>5} {:>6} {:>12} {:>7} {:>9} {:>10} {:>11} {:>8} {:>8} {:>9} {:>8} {:>10} {:>8} {:>9} {:>6} {:>6}",
        "round",
        "agents",
        "mesh",
        "pps",
        "paths",
        "plan MiB",
        "report MiB",
        "CPU s",
        "serve s",
        "peak MiB",
        "close s",
        "store MiB",
        "B/path",
        "findings",
        "P/R",
        "R all"
    );
    for r in rows {
        println!(
            "{:>5} {:>6} {:>12} {:>7} {:>9} {:>10.1} {:>11.1} {:>8.2} {:>8.2} {:>9.0} {:>8.2} {:>10.1} {:>8.0} {:>9} {:>3.2}/{:.2} {:>6.2}",
            r.round,
            r.agents,
            r.mesh,
            r.max_agent_rate,
            r.paths,
            mib(r.plan_bytes),
            mib(r.report_bytes),
            r.cpu.as_secs_f64(),
            r.serve_cpu.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            r.close.as_secs_f64(),
            mib(r.stored_bytes),
            r.stored_bytes as f64 / (r.paths.max(1) as f64 * f64::from(r.round)),
            r.findings,
            r.score.precision,
            r.score.recall,
            r.recall_so_far
        );
    }
}
