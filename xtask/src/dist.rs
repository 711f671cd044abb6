//! `cargo xtask dist`: the release artifacts of this version, in `target/dist/`:
//!
//! - `meshdoctor-<v>-<target>.tar.gz`: `bin/` with the agent, the controller, the CLI and
//!   `kubectl-meshdoctor` (a link to it: kubectl runs it as `kubectl meshdoctor`), LICENSE,
//!   README.md, CHANGELOG.md and the agent's seccomp profile;
//! - `meshdoctor-<v>-image.oci.tar`: the image (`cargo xtask image`), for `podman load` or
//!   `skopeo copy` to a registry;
//! - `meshdoctor-<v>-manifests*.yaml`: `deploy/` and each overlay, rendered;
//! - `meshdoctor-<v>.tgz`: the Helm chart;
//! - `meshdoctor-krew.yaml`: the krew plugin manifest, with the tarball's SHA-256;
//! - `meshdoctor-<v>.cdx.json`: a CycloneDX SBOM of the shipped binaries' dependencies
//!   (cargo-cyclonedx);
//! - `SHA256SUMS` of all of them.
//!
//! tests/dist.rs checks them and what is inside.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshdoctor_ops::RELEASE;

use crate::{cargo, chart, commit_time, image, output, sh, step, target_dir, workspace_root};

/// cargo-cyclonedx, pinned: writes the SBOM from cargo's own dependency resolution.
const CYCLONEDX: &str = "cargo-cyclonedx";
const CYCLONEDX_VERSION: &str = "0.5.9";

/// The kustomizations rendered into the release, with the suffix of their file.
const RENDERINGS: [(&str, &str); 4] = [
    ("deploy", ""),
    ("deploy/overlays/hostnetwork", "-hostnetwork"),
    ("deploy/overlays/multus", "-multus"),
    ("deploy/overlays/seccomp-localhost", "-seccomp-localhost"),
];

/// Where releases are downloaded from (the krew manifest's URIs).
const RELEASES: &str = "https://github.com/meshdoctor/meshdoctor/releases/download";

#[derive(Args)]
pub struct DistArgs {}

pub fn run(_args: DistArgs) -> Result<()> {
    crate::setup::run()?;
    let dir = build()?;
    println!("{}", fs::read_to_string(dir.join("SHA256SUMS"))?.trim_end());
    Ok(())
}

/// Builds every artifact; the directory holding them.
pub fn build() -> Result<PathBuf> {
    let built = image::build()?;
    let chart = chart::package()?;
    let dir = target_dir().join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    step(&format!("release artifacts in {}", dir.display()));
    let root = workspace_root();

    let tarball = tarball(&dir)?;
    fs::copy(
        &built.archive,
        dir.join(format!("meshdoctor-{RELEASE}-image.oci.tar")),
    )?;
    for (kustomization, suffix) in RENDERINGS {
        let yaml = meshdoctor_lab::render(&root.join(kustomization))?;
        fs::write(
            dir.join(format!("meshdoctor-{RELEASE}-manifests{suffix}.yaml")),
            yaml,
        )?;
    }
    let chart_name = chart.file_name().context("the chart archive's name")?;
    fs::copy(&chart, dir.join(chart_name))?;
    krew_manifest(&dir, &tarball)?;
    sbom(&dir)?;

    let mut names: Vec<String> = fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let sums = output(Command::new("sha256sum").args(&names).current_dir(&dir))?;
    fs::write(dir.join("SHA256SUMS"), sums + "\n")?;
    Ok(dir)
}

/// The host target triple: the binaries are built for it.
fn host_target() -> Result<String> {
    let verbose = output(Command::new("rustc").arg("-vV"))?;
    verbose
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(String::from)
        .context("rustc -vV names no host")
}

/// The binaries tarball; its path.
fn tarball(dir: &Path) -> Result<PathBuf> {
    let name = format!("meshdoctor-{RELEASE}-{}", host_target()?);
    let stage = target_dir().join("dist-stage").join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let bin = stage.join("bin");
    fs::create_dir_all(&bin)?;
    let release = target_dir().join("release");
    for (_, binary) in image::BINARIES {
        fs::copy(release.join(binary), bin.join(binary))
            .with_context(|| format!("copying {binary}"))?;
    }
    std::os::unix::fs::symlink("meshdoctor", bin.join("kubectl-meshdoctor"))?;
    let root = workspace_root();
    for doc in ["LICENSE", "README.md", "CHANGELOG.md"] {
        fs::copy(root.join(doc), stage.join(doc))?;
    }
    fs::copy(
        root.join(meshdoctor_lab::SECCOMP_ROOT)
            .join("meshdoctor/agent.json"),
        stage.join("seccomp-agent.json"),
    )?;
    let path = dir.join(format!("{name}.tar.gz"));
    // Owner, order and times fixed: the same commit makes the same archive.
    sh(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", commit_time()))
        .arg("-czf")
        .arg(&path)
        .arg("-C")
        .arg(stage.parent().context("the staging directory")?)
        .arg(&name))?;
    Ok(path)
}

fn sha256(path: &Path) -> Result<String> {
    let line = output(Command::new("sha256sum").arg(path))?;
    line.split_whitespace()
        .next()
        .map(String::from)
        .with_context(|| format!("sha256sum {}", path.display()))
}

/// The krew plugin manifest for the tarball (Linux amd64).
fn krew_manifest(dir: &Path, tarball: &Path) -> Result<()> {
    let file = tarball
        .file_name()
        .context("the tarball's name")?
        .to_string_lossy();
    let prefix = file.trim_end_matches(".tar.gz");
    let manifest = format!(
        r#"# krew plugin manifest: `kubectl krew install --manifest=meshdoctor-krew.yaml`
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: meshdoctor
spec:
  version: v{RELEASE}
  homepage: https://github.com/meshdoctor/meshdoctor
  shortDescription: Check pod-to-pod reachability and find where packets are lost
  description: |
    Runs meshdoctor checks against the meshdoctor controller of the current context: a mesh
    round now over every pod interface and family, the faulty interfaces (node, interface,
    direction, kernel drop reason), round reports and findings, followed with --watch.
  platforms:
    - selector:
        matchLabels:
          os: linux
          arch: amd64
      uri: {RELEASES}/v{RELEASE}/{file}
      sha256: {sha}
      files:
        - from: {prefix}/bin/meshdoctor
          to: .
        - from: {prefix}/LICENSE
          to: .
      bin: meshdoctor
"#,
        sha = sha256(tarball)?,
    );
    fs::write(dir.join("meshdoctor-krew.yaml"), manifest)?;
    Ok(())
}

/// The CycloneDX SBOM of the three shipped packages' resolved dependencies, merged into one
/// file; cargo-cyclonedx is installed (pinned) when missing.
fn sbom(dir: &Path) -> Result<()> {
    let have = output(Command::new("cargo").args(["cyclonedx", "--version"]))
        .is_ok_and(|v| v.contains(CYCLONEDX_VERSION));
    if !have {
        step(&format!("install {CYCLONEDX} {CYCLONEDX_VERSION}"));
        sh(cargo().args([
            "install",
            "--locked",
            CYCLONEDX,
            "--version",
            CYCLONEDX_VERSION,
        ]))?;
    }
    let root = workspace_root();
    let name = format!("meshdoctor-{RELEASE}.cdx");
    sh(cargo().args([
        "cyclonedx",
        "--format",
        "json",
        "--spec-version",
        "1.5",
        "--target",
        &host_target()?,
        "--override-filename",
        &name,
    ]))?;
    // It writes one file next to every workspace member's Cargo.toml: all taken out at once,
    // the shipped packages' (by the BOM's own component) merged.
    let mut boms = Vec::new();
    for entry in fs::read_dir(&root)? {
        let written = entry?.path().join(format!("{name}.json"));
        let Ok(text) = fs::read_to_string(&written) else {
            continue;
        };
        fs::remove_file(&written)?;
        let bom: serde_json::Value = serde_json::from_str(&text)?;
        let package = bom["metadata"]["component"]["name"].as_str();
        if image::BINARIES.iter().any(|(p, _)| Some(*p) == package) {
            boms.push(bom);
        }
    }
    if boms.len() != image::BINARIES.len() {
        bail!(
            "cargo cyclonedx wrote {} of the {} shipped packages' SBOMs",
            boms.len(),
            image::BINARIES.len()
        );
    }
    fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&merge(boms)?)?,
    )?;
    Ok(())
}

/// One BOM of several: the first's metadata, every component once (by bom-ref), every
/// dependency entry once.
fn merge(mut boms: Vec<serde_json::Value>) -> Result<serde_json::Value> {
    if boms.is_empty() {
        bail!("no SBOM to merge");
    }
    let mut refs = std::collections::BTreeSet::new();
    let key = |c: &serde_json::Value| c["bom-ref"].as_str().unwrap_or_default().to_string();
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    for bom in &boms {
        // Each package's own root component is a component of the merged release.
        let root = &bom["metadata"]["component"];
        for c in std::iter::once(root).chain(bom["components"].as_array().into_iter().flatten()) {
            if !c.is_null() && refs.insert(key(c)) {
                components.push(c.clone());
            }
        }
        dependencies.extend(bom["dependencies"].as_array().cloned().unwrap_or_default());
    }
    dependencies.sort_by_key(|d| d["ref"].as_str().unwrap_or_default().to_string());
    dependencies.dedup();
    let mut merged = boms.swap_remove(0);
    merged["metadata"]["component"] = serde_json::json!({
        "type": "application",
        "bom-ref": format!("meshdoctor@{RELEASE}"),
        "name": "meshdoctor",
        "version": RELEASE,
    });
    merged["components"] = serde_json::Value::Array(components);
    merged["dependencies"] = serde_json::Value::Array(dependencies);
    Ok(merged)
}
