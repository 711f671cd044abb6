//! `cargo xtask setup`: everything the build and the lab need beyond cargo, installed only when
//! missing, so that `lab` and `test` can call it every time.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, sh};

/// Commands the lab and the tests run, with the Debian package providing each.
/// Commands the lab, the tests and the benchmarks run, and the Debian package of each: the
/// real servers probes are tested against (nginx, unbound) and the peers the benchmarks compare
/// with (wrk, hey, dnsperf).
const SYSTEM_TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("sysctl", "procps"),
    ("curl", "curl"),
    ("nginx", "nginx"),
    ("unbound", "unbound"),
    ("wrk", "wrk"),
    ("hey", "hey"),
    ("dnsperf", "dnsperf"),
];

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    system_tools()
}

/// agent-ebpf is built with `-Z build-std=core`, which needs the standard library's source.
fn rust_src() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let library = Path::new(&sysroot).join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        eprintln!("rust-src: present");
        return Ok(());
    }
    eprintln!("rust-src: missing, installing");
    sh(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// bpf-linker must use the same LLVM major version as rustc. Building it against rustc's own
/// libLLVM guarantees that without any system LLVM.
fn bpf_linker() -> Result<()> {
    if let Ok(version) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("bpf-linker: present ({version})");
        return Ok(());
    }
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?);
    let verbose = output(Command::new("rustc").arg("-vV"))?;
    let major = llvm_major(&verbose)
        .with_context(|| format!("no \"LLVM version\" in `rustc -vV`:\n{verbose}"))?;
    let libllvm = find_libllvm(&sysroot.join("lib"))?;

    // Persistent, not in /tmp: the installed binary keeps an rpath to this directory.
    let prefix = cargo_home()?.join("meshdoctor/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path without a file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        // Replace stale links from an older toolchain.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    eprintln!(
        "bpf-linker: missing or not working, building it against rustc's LLVM {major} ({})",
        libllvm.display()
    );
    sh(cargo()
        .args([
            "install",
            // A bpf-linker that is installed but no longer runs (its LLVM gone) is rebuilt.
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

/// The major version in rustc's "LLVM version: 22.1.2" line.
fn llvm_major(rustc_verbose: &str) -> Option<u32> {
    rustc_verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// rustc's shared LLVM, named by its soname (`libLLVM.so.22.1-rust-1.95.0-stable`).
fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this toolchain ships no shared LLVM to build bpf-linker against",
        lib.display()
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Whether `name` is an executable on PATH or in the sbin directories, where Debian puts `ip`
/// and `nft` (not always on a non-root PATH).
fn has_command(name: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(name).is_file())
}

fn system_tools() -> Result<()> {
    let missing: Vec<(&str, &str)> = SYSTEM_TOOLS
        .into_iter()
        .filter(|(cmd, _)| !has_command(cmd))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = SYSTEM_TOOLS.iter().map(|(cmd, _)| *cmd).collect();
        eprintln!("system tools: present ({})", names.join(", "));
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    if !meshdoctor_lab::is_root() {
        bail!(
            "missing {}: install the Debian packages {} (needs root)",
            missing
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
            packages.join(" ")
        );
    }
    eprintln!("system tools: installing {}", packages.join(" "));
    sh(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_verbose() {
        let v = "rustc 1.95.0 (59807616e 2026-04-14)\nhost: x86_64-unknown-linux-gnu\n\
                 release: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(v), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
