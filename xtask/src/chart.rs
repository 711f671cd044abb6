//! `cargo xtask chart`: brings charts/meshdoctor's copies of deploy/'s files up to date (the
//! CRDs, the alert rules and the Grafana dashboards, which Helm can only read from inside the
//! chart) and packages the chart with Helm's SDK into `target/chart/meshdoctor-<version>.tgz`.
//! tests/deploy.rs checks the copies.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use clap::Args;

use crate::{output, step, target_dir, workspace_root};

pub const CHART: &str = "charts/meshdoctor";

#[derive(Args)]
pub struct ChartArgs {}

pub fn run(_args: ChartArgs) -> Result<()> {
    crate::setup::run()?;
    sync()?;
    let archive = package()?;
    println!("chart {}", archive.display());
    Ok(())
}

/// Copies deploy/'s files into the chart: the CRDs (without their kustomization), the alert
/// rules and the dashboards.
pub fn sync() -> Result<()> {
    let root = workspace_root();
    let chart = root.join(CHART);
    for entry in fs::read_dir(root.join("deploy/crds"))? {
        let path = entry?.path();
        let name = path.file_name().context("a CRD file")?;
        if name != "kustomization.yaml" {
            write(chart.join("crds").join(name), &fs::read(&path)?)?;
        }
    }
    let monitoring = root.join("deploy/monitoring");
    let rule = fs::read(monitoring.join("prometheusrule.yaml"))?;
    write(chart.join("files/prometheusrule.yaml"), &rule)?;
    for entry in fs::read_dir(monitoring.join("dashboards"))? {
        let path = entry?.path();
        let name = path.file_name().context("a dashboard file")?;
        write(chart.join("files/dashboards").join(name), &fs::read(&path)?)?;
    }
    Ok(())
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<()> {
    if fs::read(&path).is_ok_and(|have| have == bytes) {
        return Ok(());
    }
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Packages the chart as it is in the tree (tests/deploy.rs fails on stale copies, so a
/// release or a test run never syncs them behind its back); the archive's path.
pub fn package() -> Result<PathBuf> {
    step(&format!("package {CHART}"));
    let dest = target_dir().join("chart");
    fs::create_dir_all(&dest)?;
    let python = meshdoctor_lab::venv_dir().join("bin/python");
    let archive = output(Command::new(&python).args([
        "-c",
        "import sys, helm_python as h; print(h.package(sys.argv[1], destination=sys.argv[2]))",
        &workspace_root().join(CHART).display().to_string(),
        &dest.display().to_string(),
    ]))?;
    Ok(PathBuf::from(archive))
}
