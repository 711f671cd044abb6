//! `cargo xtask image`: the one OCI image of the agent, the controller and the CLI, built with
//! buildah from scratch (no base image: none can be pulled here, and none is needed). Its root
//! holds the three release binaries in /usr/local/bin, the shared libraries they link (found
//! by `ldd`, copied at the same paths), and an /etc/passwd naming the controller's non-root
//! user. The image is committed to the local containers-storage under
//! [`meshdoctor_ops::image`] and written as an OCI archive to `target/image/`.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cargo, commit_time, output, sh, step, target_dir};

/// The shipped binaries (in the image and the release tarball), by package.
pub const BINARIES: [(&str, &str); 3] = [
    ("meshdoctor-agent", "meshdoctor-agent"),
    ("meshdoctor-controller", "meshdoctor-controller"),
    ("meshdoctor-cli", "meshdoctor"),
];

/// The controller's user (the Deployment's runAsUser), which owns its data directory.
const NONROOT: u32 = 65532;

#[derive(Args)]
pub struct ImageArgs {}

/// What was built.
pub struct Built {
    /// `ghcr.io/meshdoctor/meshdoctor:<release>`.
    pub name: String,
    pub id: String,
    pub archive: PathBuf,
}

pub fn run(_args: ImageArgs) -> Result<()> {
    crate::setup::run()?;
    let built = build()?;
    println!("image {} ({})", built.name, &built.id[..12]);
    println!("archive {}", built.archive.display());
    Ok(())
}

/// Builds the release binaries and the image from them.
pub fn build() -> Result<Built> {
    step("build the release binaries");
    let mut build = cargo();
    build.args(["build", "--release"]);
    for (package, _) in BINARIES {
        build.args(["-p", package]);
    }
    sh(&mut build)?;

    let dir = target_dir().join("image");
    let root = dir.join("rootfs");
    step(&format!("assemble {}", root.display()));
    assemble(&root, &target_dir().join("release"))?;

    let name = meshdoctor_ops::image();
    step(&format!("buildah: {name}"));
    let previous = output(Command::new("buildah").args(["images", "-q", "--noheading", &name]))
        .unwrap_or_default();
    let ctr = output(Command::new("buildah").args(["from", "scratch"]))?;
    let committed = commit(&ctr, &root, &name);
    // The working container goes whether or not the commit worked.
    let _ = output(Command::new("buildah").args(["rm", &ctr]));
    let id = committed?;
    // A rebuild retags: the image it replaced would only take space.
    if !previous.is_empty() && !id.starts_with(previous.trim()) {
        let _ = output(Command::new("buildah").args(["rmi", previous.trim()]));
    }

    let archive = dir.join(format!("meshdoctor-{}.oci.tar", meshdoctor_ops::RELEASE));
    let _ = fs::remove_file(&archive);
    sh(Command::new("buildah").args([
        "push",
        "--quiet",
        &name,
        &format!("oci-archive:{}:{name}", archive.display()),
    ]))?;
    Ok(Built { name, id, archive })
}

/// Copies the root into the working container, configures and commits it; the image id.
fn commit(ctr: &str, root: &Path, name: &str) -> Result<String> {
    sh(Command::new("buildah").args(["copy", "--quiet", ctr, &root.display().to_string(), "/"]))?;
    let mut config = Command::new("buildah");
    config.arg("config");
    for (key, value) in annotations() {
        config.args(["--annotation", &format!("{key}={value}")]);
        config.args(["--label", &format!("{key}={value}")]);
    }
    config.args([
        "--env",
        "PATH=/usr/local/bin",
        "--workingdir",
        "/",
        // No entrypoint: the manifests name the binary (`command: [meshdoctor-agent]`).
        "--cmd",
        "meshdoctor --help",
        ctr,
    ]);
    sh(&mut config)?;
    // The commit's time, not now: the same source builds the same image metadata.
    output(Command::new("buildah").args([
        "commit",
        "--quiet",
        "--timestamp",
        &commit_time(),
        ctr,
        name,
    ]))
}

/// The OCI annotations (and the same labels, which `podman inspect` shows) of the image.
fn annotations() -> Vec<(&'static str, String)> {
    vec![
        ("org.opencontainers.image.title", "meshdoctor".into()),
        (
            "org.opencontainers.image.description",
            "eBPF-assisted data-plane prober for Kubernetes: meshdoctor-agent, \
             meshdoctor-controller and the meshdoctor CLI"
                .into(),
        ),
        (
            "org.opencontainers.image.version",
            meshdoctor_ops::RELEASE.into(),
        ),
        (
            "org.opencontainers.image.revision",
            meshdoctor_ops::COMMIT.into(),
        ),
        ("org.opencontainers.image.licenses", "Apache-2.0".into()),
        (
            "org.opencontainers.image.source",
            "https://github.com/meshdoctor/meshdoctor".into(),
        ),
    ]
}

/// Writes the image's root: binaries, the libraries they link, users, and the directories
/// the manifests mount over.
fn assemble(root: &Path, release: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let bin = root.join("usr/local/bin");
    fs::create_dir_all(&bin)?;
    let mut libraries = Vec::new();
    for (_, name) in BINARIES {
        let from = release.join(name);
        fs::copy(&from, bin.join(name)).with_context(|| format!("copying {}", from.display()))?;
        libraries.extend(linked_libraries(&from)?);
    }
    libraries.sort();
    libraries.dedup();
    for lib in &libraries {
        let to = root.join(lib.strip_prefix("/").unwrap_or(lib));
        fs::create_dir_all(to.parent().unwrap_or(root))?;
        // The file a symlink names, under the symlink's own name (the name the loader asks for).
        fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let etc = root.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/:/sbin/nologin\n"
        ),
    )?;
    fs::write(
        etc.join("group"),
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
    )?;
    // Mount points of the manifests' volumes, and a /tmp for what wants one.
    for dir in ["etc/meshdoctor/token", "sys/kernel/tracing", "proc", "dev"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let data = root.join("var/lib/meshdoctor");
    fs::create_dir_all(&data)?;
    chown(&data, Some(NONROOT), Some(NONROOT))
        .with_context(|| format!("chown {}", data.display()))?;
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader included, by `ldd`.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    parse_ldd(&listing).with_context(|| format!("ldd {}", binary.display()))
}

/// Paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(listing: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let file = file.split(" (").next().unwrap_or_default().trim();
        if file.starts_with('/') {
            paths.push(PathBuf::from(file));
        } else if line.contains("not found") {
            bail!("a library is missing: {line}");
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lists_libraries_and_the_loader_not_the_vdso() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f02)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_ldd(listing).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert!(
            parse_ldd(missing)
                .unwrap_err()
                .to_string()
                .contains("libfoo")
        );
    }
}
