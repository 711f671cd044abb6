//! `cargo xtask lab`: the main job in one command. Builds the lab (with the `--fault`s in place),
//! runs a full-mesh task, prints the round's findings and report (and with `--prometheus` the
//! alerts deploy/monitoring's rules raise) and tears everything down.

use meshdoctor_api::TaskSpec as _;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meshdoctor_api::{NetReach, Protocol, RoundReport, RoundStatus};
use meshdoctor_lab::{
    Containers, DEFAULT_QPS, DEFAULT_SECS, Fault, Lab, LabConfig, LabError, MeshTask,
    PROMETHEUS_ADDR, Prometheus, SECCOMP_ROOT, alert_rules, cleanup_leftovers,
};
use meshdoctor_table as table;

use crate::{cargo, setup, sh, step, teardown_on_signal, workspace_root};

/// Slack on top of the task's own deadline when waiting for a round report: controller start,
/// agent registration and the join.
const REPORT_SLACK: Duration = Duration::from_secs(30);
/// How long `--prometheus` waits for its targets and its rules.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(20);
/// Scrapes and rule evaluations (each every second) between the round report and the alerts.
const ALERT_SETTLE: Duration = Duration::from_secs(3);

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    action: Option<LabAction>,
    /// Number of nodes (agents).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Split the nodes into this many topology zones (consecutive blocks zone-1, zone-2, ...;
    /// agents started with --zone), for the topology mesh and domain-pair findings.
    #[arg(long, default_value_t = 0, value_name = "N")]
    zones: usize,
    /// Mesh shape of the default task: full, sampled, topology or auto (the controller picks
    /// within its probe budget).
    #[arg(long, default_value = "full", value_parser = ["full", "sampled", "topology", "auto"])]
    mesh: String,
    /// Leave the lab running after the report (stop it with `cargo xtask lab down`).
    #[arg(long)]
    keep: bool,
    /// Print the round report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Run this NetReach task file instead of the default full-mesh task.
    #[arg(long, value_name = "FILE", conflicts_with = "protocol")]
    task: Option<PathBuf>,
    /// Probe protocol of the default task: icmp, udp, tcp or http (default: the protocol the
    /// faults name, else icmp).
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<Protocol>,
    /// Lab directory: tasks, data, logs and the token.
    #[arg(long, default_value = "/run/meshdoctor-lab")]
    dir: PathBuf,
    /// Inject a fault before the agents start (repeatable): random loss of probe packets at
    /// one place, made with nftables.
    ///
    /// SPEC is NODE:IFACE:DIR:FAMILY:RATE[:link|stack][:requests|replies][:PROTOCOL]:
    ///   NODE     node-N or N (1..=--nodes)
    ///   IFACE    eth0 or net1
    ///   DIR      ingress (packets reaching the node) or egress (packets it sends)
    ///   FAMILY   ipv4 or ipv6 (or 4, 6, v4, v6)
    ///   RATE     loss in percent, 0 < RATE <= 100, in steps of 0.1: 30, 30%, 2.5
    ///   link     (default) lost between the node and the switch: the packet left one node
    ///            and never arrives (dropped in mdlab-sw, at the node's switch port)
    ///   stack    lost inside the node, after the interface (ingress) or before it (egress)
    ///   requests | replies: only requests or only replies (default: both)
    ///   PROTOCOL icmp (default: echo), udp (probe datagrams), tcp or http (SYN / SYN-ACK of
    ///            probe connections)
    ///
    /// Examples: `--fault node-2:net1:egress:ipv6:30`,
    /// `--fault 3:eth0:ingress:4:2.5:stack:requests`. The round's findings (which interface
    /// loses what) are printed above the pair table.
    #[arg(long = "fault", value_name = "SPEC", verbatim_doc_comment)]
    faults: Vec<Fault>,
    /// Also run Prometheus in the lab (in mdlab-ctl on [::1]:9090), scraping the controller
    /// and the agents every second and evaluating deploy/monitoring's alert rules with every
    /// `for` set to 0s (a lab run lasts seconds); the alerts firing after the round are
    /// printed. It stops with the command, with --keep too.
    #[arg(long)]
    prometheus: bool,
    /// Run the agents and the controller as podman containers of the image (built first, as
    /// `cargo xtask image` does), each inside its lab node's network namespace with the
    /// security context of its workload in the --manifests rendering: capabilities, seccomp
    /// profile, read-only root, user, tracefs mount.
    #[arg(long)]
    containers: bool,
    /// The kustomization whose DaemonSet and Deployment give the containers' security
    /// contexts (with --containers). The default, the seccomp-localhost overlay, runs the agent
    /// under the shipped profile deploy/seccomp/meshdoctor/agent.json; `deploy` runs it under
    /// the runtime's default profile, which on podman refuses bpf() without CAP_SYS_ADMIN.
    #[arg(
        long,
        default_value = "deploy/overlays/seccomp-localhost",
        value_name = "DIR"
    )]
    manifests: PathBuf,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("expected icmp, udp, tcp or http, got {s:?}"))
}

#[derive(Subcommand)]
enum LabAction {
    /// Stop a lab left running with --keep (or by a crash).
    Down,
}

pub fn run(args: LabArgs) -> Result<()> {
    if !meshdoctor_lab::is_root() {
        bail!("the lab needs root: run `sudo -E cargo xtask lab`");
    }
    if let Some(LabAction::Down) = args.action {
        cleanup_leftovers()?;
        eprintln!("lab is down");
        return Ok(());
    }
    teardown_on_signal()?;
    let (file_name, yaml) = match &args.task {
        Some(path) => {
            let yaml = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .context("--task needs a file")?
                .to_string_lossy()
                .into_owned();
            (name, yaml)
        }
        None => {
            let protocol = args
                .protocol
                .or_else(|| args.faults.first().map(|f| f.protocol))
                .unwrap_or_default();
            let task = MeshTask {
                protocol: protocol.name(),
                mesh: &args.mesh,
                ..MeshTask::new("mesh", DEFAULT_QPS, DEFAULT_SECS)
            };
            ("mesh.yaml".to_string(), task.yaml())
        }
    };
    let task = NetReach::from_yaml(&file_name, &yaml)?;
    for fault in &args.faults {
        match fault.check(args.nodes) {
            Err(LabError::BadFault { fault, reason }) => bail!("--fault {fault}: {reason}"),
            other => other?,
        }
    }

    step("setup");
    setup::run()?;
    // Containers run the image's release binaries; processes the debug ones.
    let containers = if args.containers {
        let image = crate::image::build()?;
        let manifests = workspace_root().join(&args.manifests);
        let rendered = meshdoctor_lab::render(&manifests)?;
        Some(Containers::from_manifests(
            &image.name,
            &rendered,
            &workspace_root().join(SECCOMP_ROOT),
        )?)
    } else {
        step("build the agent, the controller and the CLI");
        sh(cargo().args([
            "build",
            "-p",
            "meshdoctor-agent",
            "-p",
            "meshdoctor-controller",
            "-p",
            "meshdoctor-cli",
        ]))?;
        None
    };

    step(&format!("lab with {} nodes", args.nodes));
    let started = Instant::now();
    let mut cfg = LabConfig::new(args.nodes);
    cfg.dir = args.dir.clone();
    cfg.tasks = vec![(file_name, yaml)];
    cfg.faults = args.faults.clone();
    cfg.zones = args.zones;
    cfg.containers = containers;
    if !args.faults.is_empty() {
        eprintln!("faults, in place before the first probe:");
        for f in &args.faults {
            eprintln!(
                "  {f}  (nft table {} {} in {})",
                f.nft_family(),
                f.table(),
                f.namespace()
            );
        }
    }
    let lab = Lab::up(cfg)?;
    // Declared after the lab: dropped (stopped) before it.
    let prometheus = if args.prometheus {
        Some(start_prometheus(&lab)?)
    } else {
        None
    };
    let up_after = started.elapsed();
    eprintln!(
        "lab up in {:.1} s: controller and {} agents registered; waiting for round 1 of {}",
        up_after.as_secs_f64(),
        args.nodes,
        task.name()
    );
    let timeout = task.schedule().first_after + task.round_timeout() + REPORT_SLACK;
    let report = lab.wait_round(task.name(), 1, timeout)?;
    let report_after = started.elapsed();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        // Where first (the faulty interfaces), then what (every pair-path). Application
        // rounds have agents, not pair-paths, and no findings.
        if report.app.is_none() {
            print!("{}", table::render_findings(&report.findings));
            println!();
        }
        print!("{}", table::render_table(&report));
    }
    eprintln!("{}", summary(&report, up_after, report_after));
    // The ground truth next to the findings: what each fault really dropped (so far).
    for f in &args.faults {
        match lab.fault_drops(f) {
            Ok(n) => eprintln!("fault {f}: nft dropped {n} packets"),
            Err(e) => eprintln!("fault {f}: cannot read its nft counter: {e}"),
        }
    }

    if let Some(prometheus) = prometheus {
        print_alerts(&prometheus)?;
    }

    if args.keep {
        let dir = lab.dir().display().to_string();
        lab.keep();
        eprintln!(
            "\nthe lab keeps running:\n  \
             controller API: ip netns exec mdlab-ctl curl --cacert {dir}/api-tls/ca.pem \
             -H \"Authorization: Bearer $(cat {dir}/reader-token)\" https://[::1]:7070/v1/tasks\n  \
             one-shot check: ip netns exec mdlab-ctl target/debug/meshdoctor --controller \
             https://[::1]:7070 --ca-file {dir}/api-tls/ca.pem --token-file {dir}/admin-token check\n  \
             agent metrics:  ip netns exec mdlab-n1 curl http://127.0.0.1:9090/metrics\n  \
             logs:           {dir}/logs/\n  \
             stop it with:   cargo xtask lab down"
        );
        for f in &args.faults {
            eprintln!(
                "  fault {f} stays on; remove it with: ip netns exec {} nft delete table {} {}",
                f.namespace(),
                f.nft_family(),
                f.table()
            );
        }
    } else {
        lab.down();
    }
    if report.status == RoundStatus::Fail {
        bail!("round 1 of {} failed", task.name());
    }
    Ok(())
}

/// Prometheus in the lab with deploy/monitoring's alert rules (holds 0s), once it scrapes
/// every target.
fn start_prometheus(lab: &Lab) -> Result<Prometheus> {
    let manifest = workspace_root().join("deploy/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let rules = alert_rules(&text, true).with_context(|| manifest.display().to_string())?;
    let path = lab.dir().join("meshdoctor-rules.yaml");
    std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
    let prometheus = Prometheus::start(lab, &[path])?;
    prometheus.wait_targets_up(PROMETHEUS_TIMEOUT)?;
    eprintln!(
        "Prometheus: {PROMETHEUS_ADDR} in mdlab-ctl, scraping the controller and {} agents, \
         rules from {}",
        lab.nodes(),
        manifest.display()
    );
    Ok(prometheus)
}

/// The alerts firing a few scrapes and evaluations after the round, one line each:
/// `alertname severity label=value ...`.
fn print_alerts(prometheus: &Prometheus) -> Result<()> {
    std::thread::sleep(ALERT_SETTLE);
    prometheus.wait_rules_evaluated(PROMETHEUS_TIMEOUT)?;
    let firing = prometheus.firing()?;
    if firing.is_empty() {
        eprintln!("alerts: none firing");
    }
    for alert in firing {
        let mut labels = alert.labels;
        let name = labels.remove("alertname").unwrap_or_default();
        let severity = labels.remove("severity").unwrap_or_default();
        let rest: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("alert firing: {name} {severity} {}", rest.join(" "));
    }
    Ok(())
}

/// The round's verdict line with the lab's timing added.
fn summary(report: &RoundReport, up_after: Duration, report_after: Duration) -> String {
    let mut lines = table::summary_line(report);
    let timing = format!(
        "; lab up in {:.1} s, report {:.1} s after start",
        up_after.as_secs_f64(),
        report_after.as_secs_f64()
    );
    let first_end = lines.find('\n').unwrap_or(lines.len());
    lines.insert_str(first_end, &timing);
    lines
}
