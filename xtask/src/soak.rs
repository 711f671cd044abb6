//! `cargo xtask soak`: the lab on release binaries running ICMP, UDP and TCP meshes without
//! end for an hour (`--minutes`), sampling the resident memory of the controller and of every
//! agent (`--every` seconds). It prints each sample and, per process, the growth from the
//! median of the five minutes after minute `--from` to the median of the last five minutes
//! (medians: a process's RSS moves within a round, and a sample can fall anywhere in one). It
//! fails when a process grew by more than `--max-growth` percent, or when a round failed: a
//! healthy lab has no reason to fail one, and a soak that hides failures hides leaks of
//! another kind. Not part of `cargo xtask test`: it takes an hour.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshdoctor_api::{RoundStatus, routes, views::TaskView};
use meshdoctor_lab::{Lab, LabConfig, MeshTask};

use crate::{cargo, setup, sh, step, teardown_on_signal};

/// The window each end of the run is summarized over.
const WINDOW: Duration = Duration::from_secs(5 * 60);

#[derive(Args)]
pub struct SoakArgs {
    /// Minutes to run.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Minute the growth is measured from, once start-up and the first rounds' allocations
    /// have settled.
    #[arg(long, default_value_t = 10)]
    from: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Number of nodes (agents).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Largest growth allowed for any process, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth: f64,
}

/// The tasks of the soak: three meshes, each a round every `every` for ever.
fn tasks() -> Vec<(String, String)> {
    [
        ("soak-icmp", "icmp", "@every 20s"),
        ("soak-udp", "udp", "@every 30s"),
        ("soak-tcp", "tcp", "@every 40s"),
    ]
    .into_iter()
    .map(|(name, protocol, schedule)| {
        let task = MeshTask {
            schedule,
            rounds: -1,
            protocol,
            ..MeshTask::new(name, 10, 10)
        };
        (format!("{name}.yaml"), task.yaml())
    })
    .collect()
}

pub fn run(args: SoakArgs) -> Result<()> {
    if args.from * 60 + WINDOW.as_secs() > args.minutes * 60 {
        bail!(
            "--minutes {} leaves no {}-minute window after --from {}",
            args.minutes,
            WINDOW.as_secs() / 60,
            args.from
        );
    }
    teardown_on_signal()?;
    step("setup");
    setup::run()?;
    step("build meshdoctor-agent and meshdoctor-controller (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "meshdoctor-agent",
        "-p",
        "meshdoctor-controller",
    ]))?;
    let mut cfg = LabConfig::new(args.nodes);
    cfg.bin_dir = crate::target_dir().join("release");
    cfg.tasks = tasks();
    step(&format!(
        "soak: {} nodes for {} minutes, a sample every {} s",
        args.nodes, args.minutes, args.every
    ));
    let lab = Lab::up(cfg)?;
    let names: Vec<String> = std::iter::once("controller".to_string())
        .chain((1..=args.nodes).map(meshdoctor_lab::plan::node_name))
        .collect();
    let pids = names
        .iter()
        .map(|name| Ok((name.clone(), program_pid(lab.pid(name)?)?)))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "{:>6}  {}  rounds (failed)",
        "minute",
        names.iter().map(|n| format!("{n:>10}")).collect::<String>()
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(args.minutes * 60);
    let mut samples: Vec<(Duration, Vec<u64>)> = Vec::new();
    let mut rounds = Rounds::default();
    let mut csv = format!("seconds,{}\n", names.join(","));
    loop {
        let at = started.elapsed();
        let rss = pids
            .iter()
            .map(|(name, pid)| {
                crate::status_kib(*pid, "VmRSS").with_context(|| format!("{name} (pid {pid})"))
            })
            .collect::<Result<Vec<_>>>()?;
        rounds.update(&lab)?;
        let _ = writeln!(
            csv,
            "{},{}",
            at.as_secs(),
            rss.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        );
        println!(
            "{:>6.1}  {}  {} ({})",
            at.as_secs_f64() / 60.0,
            rss.iter()
                .map(|k| format!("{:>8}Ki", k))
                .collect::<String>(),
            rounds.done(),
            rounds.failed.len()
        );
        samples.push((at, rss));
        let next = started + Duration::from_secs(args.every) * samples.len() as u32;
        if next > end {
            break;
        }
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    drop(lab);
    let out = crate::target_dir().join("soak");
    fs::create_dir_all(&out)?;
    let file = out.join("rss.csv");
    fs::write(&file, csv).with_context(|| file.display().to_string())?;

    let from = Duration::from_secs(args.from * 60);
    let last = samples.last().map_or(Duration::ZERO, |(at, _)| *at);
    let window = |lo: Duration, hi: Duration, i: usize| {
        median(
            samples
                .iter()
                .filter(|(at, _)| (lo..=hi).contains(at))
                .map(|(_, rss)| rss[i])
                .collect(),
        )
    };
    println!(
        "\nRSS growth: median of minutes {}-{} to median of the last {} minutes (samples in {})",
        args.from,
        args.from + WINDOW.as_secs() / 60,
        WINDOW.as_secs() / 60,
        file.display()
    );
    let mut grew = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let before = window(from, from + WINDOW, i);
        let after = window(last.saturating_sub(WINDOW), last, i);
        let growth = (after as f64 - before as f64) * 100.0 / before.max(1) as f64;
        println!("{name:>12}: {before:>8} KiB -> {after:>8} KiB  {growth:+.2} %");
        if growth > args.max_growth {
            grew.push(format!("{name} {growth:+.2} %"));
        }
    }
    println!(
        "rounds: {} closed, {} failed",
        rounds.done(),
        rounds.failed.len()
    );
    for ((task, round), why) in &rounds.failed {
        println!("  {task} round {round}: {why}");
    }
    if !grew.is_empty() {
        bail!("grew more than {} %: {}", args.max_growth, grew.join(", "));
    }
    if !rounds.failed.is_empty() {
        bail!("{} rounds failed", rounds.failed.len());
    }
    Ok(())
}

/// The rounds seen closed, by task, and why those that failed did.
#[derive(Default)]
struct Rounds {
    done: BTreeMap<String, u64>,
    failed: BTreeMap<(String, u32), String>,
}

impl Rounds {
    /// Reads every task's status. Each status keeps its latest rounds, more than close
    /// between two samples, so none is missed.
    fn update(&mut self, lab: &Lab) -> Result<()> {
        let views: Vec<TaskView> = serde_json::from_value(lab.controller_get(routes::TASKS)?)?;
        for view in views {
            let Some(status) = view.status else { continue };
            self.done.insert(view.name.clone(), status.done_round);
            for h in status.history {
                if h.status == RoundStatus::Fail {
                    self.failed
                        .entry((view.name.clone(), h.round_number))
                        .or_insert_with(|| h.failure_reasons.join("; "));
                }
            }
        }
        Ok(())
    }

    fn done(&self) -> u64 {
        self.done.values().sum()
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The process of the program a lab process runs: itself when `ip netns exec` exec'd it, its
/// only child otherwise.
fn program_pid(pid: u32) -> Result<u32> {
    let comm = |pid: u32| fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm(pid).starts_with("meshdoctor") {
        return Ok(pid);
    }
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| comm(c).starts_with("meshdoctor"))
        .with_context(|| {
            format!(
                "no meshdoctor program under pid {pid} ({})",
                comm(pid).trim()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_and_medians() {
        let status = "Name:\tmeshdoctor-agen\nVmPeak:\t  100 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(crate::status_field_kib(status, "VmRSS"), Some(20480));
        assert_eq!(crate::status_field_kib("Name: x\n", "VmRSS"), None);
        assert_eq!(median(vec![5, 1, 3]), 3);
        assert_eq!(median(vec![]), 0);
        // This process has a resident set.
        assert!(crate::status_kib(std::process::id(), "VmRSS").unwrap() > 0);
    }

    #[test]
    fn the_soak_tasks_parse() {
        for (file, yaml) in tasks() {
            meshdoctor_api::NetReach::from_yaml(&file, &yaml).unwrap();
        }
    }
}
