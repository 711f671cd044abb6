//! `cargo xtask lab`: the main job in one command. Builds the lab, runs a full-mesh task, prints
//! the round report and tears everything down.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meshdoctor_api::{NetReach, RoundReport, RoundStatus, table};
use meshdoctor_lab::{Lab, LabConfig, cleanup_leftovers, default_task_yaml};

use crate::{cargo, setup, sh, step, teardown_on_signal};

/// Slack on top of the task's own deadline when waiting for a round report: controller start,
/// agent registration and the join.
const REPORT_SLACK: Duration = Duration::from_secs(30);

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    action: Option<LabAction>,
    /// Number of nodes (agents).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Leave the lab running after the report (stop it with `cargo xtask lab down`).
    #[arg(long)]
    keep: bool,
    /// Print the round report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Run this NetReach task file instead of the default full-mesh ICMP task.
    #[arg(long, value_name = "FILE")]
    task: Option<PathBuf>,
    /// Lab directory: tasks, data, logs and the token.
    #[arg(long, default_value = "/run/meshdoctor-lab")]
    dir: PathBuf,
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
        None => ("mesh.yaml".to_string(), default_task_yaml("mesh")),
    };
    let task = NetReach::from_yaml(&file_name, &yaml)?;

    step("setup");
    setup::run()?;
    step("build the agent and the controller");
    sh(cargo().args([
        "build",
        "-p",
        "meshdoctor-agent",
        "-p",
        "meshdoctor-controller",
    ]))?;

    step(&format!("lab with {} nodes", args.nodes));
    let started = Instant::now();
    let mut cfg = LabConfig::new(args.nodes);
    cfg.dir = args.dir.clone();
    cfg.tasks = vec![(file_name, yaml)];
    let lab = Lab::up(cfg)?;
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
        print!("{}", table::render_table(&report));
    }
    eprintln!("{}", summary(&report, up_after, report_after));

    if args.keep {
        let dir = lab.dir().display().to_string();
        lab.keep();
        eprintln!(
            "\nthe lab keeps running:\n  \
             controller API: ip netns exec mdlab-ctl curl http://[::1]:7070/v1/tasks\n  \
             agent metrics:  ip netns exec mdlab-n1 curl http://127.0.0.1:9090/metrics\n  \
             logs:           {dir}/logs/\n  \
             stop it with:   cargo xtask lab down"
        );
    } else {
        lab.down();
    }
    if report.status == RoundStatus::Fail {
        bail!("round 1 of {} failed", task.name());
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
