//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` under libFuzzer (cargo-fuzz; the stable
//! toolchain takes its `-Z` flags through `RUSTC_BOOTSTRAP`), one after the other, each for a
//! number of executions or a time, then a table of what each did. A target that crashes (a
//! panic, an overflow: debug assertions are on) stops the run and names the input libFuzzer
//! saved. `cargo xtask test` runs each briefly: every target builds and survives a few
//! thousand inputs.
//!
//! No sanitizer: the parsers are safe Rust, so what a fuzzer can find in them is a panic, which
//! libFuzzer catches without one, at several times the speed.

use std::{process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, workspace_root};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Targets to run (default: every target of fuzz/).
    targets: Vec<String>,
    /// Executions per target (libFuzzer's -runs).
    #[arg(long, default_value_t = 10_000_000)]
    runs: u64,
    /// Longest time per target, in seconds (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 1800)]
    seconds: u64,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let targets = if args.targets.is_empty() {
        targets()?
    } else {
        args.targets
    };
    fuzz(&targets, args.runs, args.seconds)
}

/// Every target, 200,000 inputs (or 30 s) each: part of `cargo xtask test`.
pub fn smoke() -> Result<()> {
    fuzz(&targets()?, 200_000, 30)
}

/// Installs cargo-fuzz when it is missing (`cargo xtask setup` calls it).
pub fn install() -> Result<()> {
    if let Ok(version) = output(cargo().args(["fuzz", "--version"])) {
        eprintln!("cargo-fuzz: present ({version})");
        return Ok(());
    }
    eprintln!("cargo-fuzz: missing, installing");
    crate::sh(cargo().args(["install", "--locked", "cargo-fuzz"]))
}

/// The targets fuzz/ defines.
fn targets() -> Result<Vec<String>> {
    let listed = output(fuzz_command().arg("list"))?;
    Ok(listed.lines().map(str::to_string).collect())
}

/// `cargo fuzz`, from the workspace root, on the stable toolchain, without the eBPF build (the
/// targets need the agent's parsers, not its eBPF object).
fn fuzz_command() -> Command {
    let mut cmd = cargo();
    cmd.arg("fuzz")
        .current_dir(workspace_root())
        .env("RUSTC_BOOTSTRAP", "1")
        .env("AYA_BUILD_SKIP", "1");
    cmd
}

/// What one target did.
struct Ran {
    target: String,
    runs: u64,
    seconds: f64,
}

/// The flags of every build and run: no sanitizer (see the module), overflow checks on.
const FLAGS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

fn fuzz(targets: &[String], runs: u64, seconds: u64) -> Result<()> {
    crate::sh(fuzz_command().arg("build").args(FLAGS))?;
    let mut ran = Vec::new();
    // The binaries `cargo fuzz build` wrote, run as `cargo fuzz run` would (which would build
    // each again first): the target's corpus grows in fuzz/corpus/, crashes go to
    // fuzz/artifacts/.
    let fuzz_dir = workspace_root().join("fuzz");
    let bins = fuzz_dir.join("target").join(host_triple()?).join("release");
    for target in targets {
        eprintln!("fuzz {target}: up to {runs} runs or {seconds} s");
        let corpus = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let started = Instant::now();
        let out = Command::new(bins.join(target))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-runs={runs}"))
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .arg(&corpus)
            .output()
            .with_context(|| format!("running fuzz target {}", bins.join(target).display()))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); libFuzzer saved the input under {}:\n{}",
                out.status,
                artifacts.display(),
                tail.join("\n")
            );
        }
        ran.push(Ran {
            target: target.clone(),
            runs: executions(&log).with_context(|| {
                format!("fuzz {target}: no stat::number_of_executed_units in its output")
            })?,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    println!(
        "{:<20} {:>12} {:>9} {:>12}",
        "target", "executions", "seconds", "per second"
    );
    for r in &ran {
        println!(
            "{:<20} {:>12} {:>9.1} {:>12.0}",
            r.target,
            r.runs,
            r.seconds,
            r.runs as f64 / r.seconds.max(1e-3)
        );
    }
    Ok(())
}

/// The host's target triple, the directory cargo fuzz builds into.
fn host_triple() -> Result<String> {
    let verbose = output(Command::new("rustc").arg("-vV"))?;
    verbose
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// libFuzzer's final count of executions (`-print_final_stats=1`).
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_execution_count_is_read_from_the_final_stats() {
        let log = "#2 INITED\nDone 1000 runs in 2 second(s)\nstat::number_of_executed_units: 1000\n\
                   stat::average_exec_per_sec:     500\n";
        assert_eq!(super::executions(log), Some(1000));
        assert_eq!(super::executions("Done 1000 runs"), None);
    }
}
