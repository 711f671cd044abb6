//! The release artifacts `cargo xtask dist` writes to target/dist (which `cargo xtask test`
//! builds first): every file summed in SHA256SUMS, and what each holds. The binaries of the
//! tarball run (`kubectl meshdoctor` through kubectl's own plugin lookup); the image archive's
//! config names this version and commit; the manifests and the chart name the image; the krew
//! manifest sums the tarball; the SBOM lists the dependencies meshdoctor is built on.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use meshdoctor_e2e::{setup_has_run, workspace_root};
use meshdoctor_ops::{COMMIT, RELEASE};
use serde_json::Value;

fn dist_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("dist")
}

/// The artifacts' directory, or `None` (skipped) before a `cargo xtask dist`; under
/// `cargo xtask test`, which builds them, missing artifacts fail.
fn artifacts(test: &str) -> Option<PathBuf> {
    let dir = dist_dir();
    let built = dir.join("SHA256SUMS").is_file();
    if !built {
        let msg = format!("{test}: no {}: run `cargo xtask dist`", dir.display());
        assert!(!setup_has_run(), "{msg} (cargo xtask test builds it)");
        eprintln!("skipped {msg}");
    }
    built.then_some(dir)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `archive` (tar, gzipped or not: tar tells) unpacked into a fresh directory named `name`.
fn unpack(archive: &Path, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshdoctor-dist-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&dir));
    dir
}

#[test]
fn every_artifact_is_summed_and_holds_what_it_says() {
    let test = "every_artifact_is_summed_and_holds_what_it_says";
    let Some(dir) = artifacts(test) else {
        return;
    };
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut listed: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    listed.sort_unstable();
    let mut present: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    present.sort();
    assert_eq!(listed, present, "SHA256SUMS lists every artifact");
    run(Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(&dir));

    let name = |suffix: &str| dir.join(format!("meshdoctor-{RELEASE}{suffix}"));
    let tarball = present
        .iter()
        .find(|n| n.ends_with(".tar.gz"))
        .map(|n| dir.join(n))
        .expect("a binaries tarball");

    // The binaries: each says this version and commit; kubectl finds the plugin link.
    let unpacked = unpack(&tarball, "tarball");
    let top = fs::read_dir(&unpacked)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bin = top.join("bin");
    let version = format!("{RELEASE} (commit {COMMIT})");
    for binary in ["meshdoctor", "meshdoctor-agent", "meshdoctor-controller"] {
        let said = run(Command::new(bin.join(binary)).arg("--version"));
        assert_eq!(said.trim(), format!("{binary} {version}"));
    }
    assert_eq!(
        fs::read_link(bin.join("kubectl-meshdoctor")).unwrap(),
        Path::new("meshdoctor")
    );
    for doc in ["LICENSE", "README.md", "CHANGELOG.md", "seccomp-agent.json"] {
        assert!(top.join(doc).is_file(), "the tarball lacks {doc}");
    }
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let plugin = run(Command::new(meshdoctor_lab::kubectl())
        .args(["meshdoctor", "--version"])
        .env("PATH", path));
    assert_eq!(
        plugin.trim(),
        format!("meshdoctor {version}"),
        "kubectl meshdoctor"
    );

    // The image archive: an OCI layout whose config labels this version and commit.
    let image = unpack(&name("-image.oci.tar"), "image");
    let blob = |digest: &str| {
        image
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = json(&image.join("index.json"));
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], RELEASE);
    assert_eq!(labels["org.opencontainers.image.revision"], COMMIT);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.version"],
        RELEASE
    );

    // The manifests and the chart name that image.
    let image_ref = meshdoctor_ops::image();
    for suffix in ["", "-hostnetwork", "-multus", "-seccomp-localhost"] {
        let yaml = fs::read_to_string(name(&format!("-manifests{suffix}.yaml"))).unwrap();
        assert!(
            yaml.contains(&format!("image: {image_ref}")),
            "manifests{suffix} name {image_ref}"
        );
    }
    let chart = unpack(&name(".tgz"), "chart");
    let meta = fs::read_to_string(chart.join("meshdoctor/Chart.yaml")).unwrap();
    assert!(meta.contains(&format!("version: {RELEASE}")), "{meta}");
    assert!(chart.join("meshdoctor/crds/netreach.yaml").is_file());

    // krew: the tarball's URI and sum, and a file of the tarball as the plugin.
    let krew = fs::read_to_string(dir.join("meshdoctor-krew.yaml")).unwrap();
    let sum = sums
        .lines()
        .find(|l| l.ends_with(".tar.gz"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(krew.contains(&format!("sha256: {sum}")), "{krew}");
    let file = tarball.file_name().unwrap().to_string_lossy();
    assert!(krew.contains(&format!("/v{RELEASE}/{file}")), "{krew}");
    let top_name = top.file_name().unwrap().to_string_lossy();
    assert!(
        krew.contains(&format!("from: {top_name}/bin/meshdoctor")),
        "{krew}"
    );

    // The SBOM: CycloneDX, this version, the dependencies the agent and controller run on.
    let sbom = json(&name(".cdx.json"));
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["metadata"]["component"]["version"], RELEASE);
    let components: Vec<&str> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for needed in [
        "aya",
        "tokio",
        "kube",
        "socket2",
        "hickory-proto",
        "prometheus-client",
        "clap",
        "meshdoctor-agent",
        "meshdoctor-controller",
        "meshdoctor-cli",
    ] {
        assert!(components.contains(&needed), "the SBOM lacks {needed}");
    }
    for d in [unpacked, image, chart] {
        let _ = fs::remove_dir_all(d);
    }
}
