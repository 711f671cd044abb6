//! `cargo xtask`: the project's own commands, so a fresh machine needs nothing but cargo.
//!
//! - `setup` installs what the build and the lab need (idempotent, quick when done);
//! - `lab` builds the network-namespace lab, runs a full-mesh task and prints the report;
//! - `test` builds everything and runs every test, the root end-to-end tests included;
//! - `crds` writes the task CRDs generated from the api types to `deploy/crds/`;
//! - `image` builds the OCI image of the agent, the controller and the CLI with buildah;
//! - `chart` syncs charts/meshdoctor with deploy/ and packages it;
//! - `dist` writes the release artifacts with their checksums and SBOM;
//! - `fuzz` runs the fuzz targets for as long as asked;
//! - `soak` runs the lab for an hour and checks that no process's memory grows.

mod bench;
mod chart;
mod crds;
mod dist;
mod fuzz;
mod image;
#[cfg(test)]
mod import_cycles;
mod lab;
mod scale;
mod setup;
mod soak;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use meshdoctor_lab::command_line;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "meshdoctor's development commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install rust-src, a bpf-linker matching rustc's LLVM, the system tools the lab uses, and
    /// the offline manifest checkers (kubernetes-validate, a kubectl with kustomize v5).
    Setup,
    /// Build the lab, run a full-mesh task, print its round report and tear the lab down.
    Lab(lab::LabArgs),
    /// Benchmark meshdoctor's HTTP or DNS load engine side by side with wrk and hey, or
    /// dnsperf, against a local nginx or unbound; prints the ratios.
    Bench(bench::BenchArgs),
    /// Write the task CRDs generated from the api types to deploy/crds/ (`--check`: only
    /// compare them with the committed files).
    Crds(crds::CrdsArgs),
    /// Build the release binaries and the OCI image of all three with buildah: committed to
    /// the local containers-storage as ghcr.io/meshdoctor/meshdoctor:<version> and written to
    /// target/image/meshdoctor-<version>.oci.tar.
    Image(image::ImageArgs),
    /// Copy deploy/'s CRDs, alert rules and dashboards into charts/meshdoctor and package the
    /// chart with Helm's SDK into target/chart/meshdoctor-<version>.tgz.
    Chart(chart::ChartArgs),
    /// Write the release artifacts to target/dist: the binaries tarball (with the kubectl
    /// plugin link), the image archive, the rendered manifests, the packaged chart, the krew
    /// manifest, a CycloneDX SBOM and SHA256SUMS.
    Dist(dist::DistArgs),
    /// Run the fuzz targets of fuzz/ (cargo-fuzz, installed by setup) one after the other and
    /// print each one's executions and rate.
    Fuzz(fuzz::FuzzArgs),
    /// Run the lab (release binaries) with ICMP, UDP and TCP meshes for an hour, sampling the
    /// controller's and the agents' resident memory; fails when one grew more than 5 % from
    /// minute 10 to the end, or when a round failed.
    Soak(soak::SoakArgs),
    /// Build the workspace and run every test (the end-to-end tests need root), then a short
    /// run of every fuzz target.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter, `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Lab(args) => lab::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Crds(args) => crds::run(args),
        Cmd::Image(args) => image::run(args),
        Cmd::Chart(args) => chart::run(args),
        Cmd::Dist(args) => dist::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Test { args } => test(&args),
    }
}

/// `setup`, `cargo build`, the release artifacts (the image among them), `cargo test` and a
/// short run of every fuzz target, each under a header; the first failure stops it.
fn test(args: &[String]) -> Result<()> {
    teardown_on_signal()?;
    step("setup");
    setup::run()?;
    step("cargo build");
    sh(cargo().arg("build"))?;
    // tests/containers.rs runs the image, as users would, and tests/dist.rs checks the
    // release artifacts: release binaries, the image built with buildah, the chart.
    dist::build()?;
    step("cargo test");
    // The api crate's CRD tests (drift of deploy/crds, the CEL rules) need its crd feature.
    // The test results are this command's report: on stdout.
    sh_passthrough(
        cargo()
            .args(["test", "--features", "meshdoctor-api/crd"])
            .args(args)
            .env("MESHDOCTOR_BIN_DIR", meshdoctor_lab::default_bin_dir()),
    )?;
    // A filtered run is someone after one test, not the whole suite.
    if args.is_empty() {
        step("fuzz smoke");
        fuzz::smoke()?;
    }
    Ok(())
}

/// On Ctrl-C or SIGTERM, remove whatever lab exists and exit: the lab's daemons run in their
/// own process group, so nothing else would stop them.
fn teardown_on_signal() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the lab down");
        // A lab of a child (a test binary) stays locked until the signal has ended that child:
        // give it a moment. A lab of an unrelated process is left alone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match meshdoctor_lab::cleanup_leftovers() {
                Err(meshdoctor_lab::LabError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(()) | Err(meshdoctor_lab::LabError::Busy { .. }) => break,
                Err(e) => {
                    eprintln!("teardown failed: {e}");
                    break;
                }
            }
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// A `kB` field of a process's /proc status (`VmRSS`, `VmHWM`), in KiB: what the soak and
/// the scale benchmark measure memory by.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("{path}: the process is gone"))?;
    status_field_kib(&status, field).with_context(|| format!("{path} has no {field}"))
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Where cargo builds the workspace: `$CARGO_TARGET_DIR`, else `target/` in the root.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The time of the commit checked out, in Unix seconds ("0" outside a git checkout): what the
/// image and the release tarball are dated with, so that the same commit builds the same
/// artifacts.
fn commit_time() -> String {
    output(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(workspace_root()),
    )
    .unwrap_or_else(|_| "0".into())
}

/// The cargo that runs us (`$CARGO`), in the workspace root.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

fn step(title: &str) {
    eprintln!("\n==> {title}");
}

/// Runs a command whose output is progress, not a result (an installer, a build), echoing it
/// first; a non-zero exit is an error. Its stdout goes to our stderr, so that our stdout carries
/// only what a command reports (`cargo xtask lab --json`), also on a first run that installs
/// packages.
fn sh(cmd: &mut Command) -> Result<()> {
    sh_passthrough(cmd.stdout(std::io::stderr()))
}

/// Runs a command with inherited stdio, echoing it first; a non-zero exit is an error.
fn sh_passthrough(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; a non-zero exit is an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh` runs prints on stderr, never on stdout: checked in a child test process
    /// (this test again), whose two streams are captured apart.
    #[test]
    fn commands_print_progress_on_stderr() {
        const MARK: &str = "installer-output";
        if std::env::var_os("XTASK_SH_CHILD").is_some() {
            sh(Command::new("sh").args(["-c", &format!("echo {MARK}")])).unwrap();
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::commands_print_progress_on_stderr",
                "--nocapture",
            ])
            .env("XTASK_SH_CHILD", "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(!stdout.contains(MARK), "on stdout:\n{stdout}");
        assert!(stderr.contains(MARK), "not on stderr:\n{stderr}");
    }
}
