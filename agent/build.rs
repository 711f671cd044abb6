//! Builds the eBPF observers (`meshdoctor-agent-ebpf`) and leaves the object in
//! `$OUT_DIR/meshdoctor-observer`, where `observer.rs` embeds it.
//!
//! The eBPF crate targets `bpfel-unknown-none`, which needs `-Z build-std=core`: on the stable
//! toolchain that works with `RUSTC_BOOTSTRAP=1`, plus the `rust-src` component and a
//! `bpf-linker` built against rustc's LLVM. `cargo xtask setup` installs both; this script checks
//! for them first so a missing piece gives one clear message instead of a linker error buried in
//! the child cargo's output.
//!
//! `AYA_BUILD_SKIP=1` (honoured by aya-build) skips the eBPF build, for lint/doc jobs without the
//! toolchain; an empty object is then embedded and `Observer::load` reports it at run time.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const OBJECT: &str = "meshdoctor-observer";
const EBPF_PACKAGE: &str = "meshdoctor-agent-ebpf";

fn main() {
    if let Err(msg) = run() {
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);

    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!(
            "cargo:warning=AYA_BUILD_SKIP is set: embedding an empty eBPF object, \
             the observer will not load"
        );
        return fs::write(out_dir.join(OBJECT), [])
            .map_err(|e| format!("writing placeholder {OBJECT}: {e}"));
    }

    check_bpf_linker()?;
    check_rust_src()?;

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR not set")?);
    let root_dir = manifest_dir.join("../agent-ebpf");
    let root_dir = root_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root_dir.display()))?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", root_dir.display()))?;

    // The child cargo that aya-build spawns inherits our environment: RUSTC_BOOTSTRAP lets the
    // stable toolchain accept `-Z build-std=core`. Respect an explicit setting from the caller.
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // Build with the toolchain this build runs under (rustup sets RUSTUP_TOOLCHAIN for proxied
    // commands), so the eBPF object and bpf-linker's LLVM match the rustc that was checked.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());

    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .map_err(|e| format!("building {EBPF_PACKAGE} with toolchain {toolchain}: {e:#}"))?;

    if !out_dir.join(OBJECT).is_file() {
        return Err(format!(
            "aya-build did not produce {OBJECT} in {}",
            out_dir.display()
        ));
    }
    Ok(())
}

/// bpf-linker must be on PATH and runnable (it links against a specific libLLVM).
fn check_bpf_linker() -> Result<(), String> {
    let path = env::var_os("PATH").unwrap_or_default();
    let linker = env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
        .ok_or("bpf-linker is not on PATH; run `cargo xtask setup` to install it")?;
    // Rebuild when the linker is reinstalled (e.g. for a new LLVM).
    println!("cargo:rerun-if-changed={}", linker.display());
    let out = Command::new(&linker)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "{} does not run ({e}); run `cargo xtask setup` to reinstall it",
                linker.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed ({}) {}; run `cargo xtask setup` to reinstall it",
            linker.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `-Z build-std=core` needs the `rust-src` component of the active toolchain.
fn check_rust_src() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running `{} --print sysroot`: {e}", rustc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --print sysroot` failed: {}",
            rustc.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let library = Path::new(&sysroot).join("lib/rustlib/src/rust/library");
    if !library.is_dir() {
        return Err(format!(
            "rust-src is missing ({} does not exist); run `cargo xtask setup` \
             (or `rustup component add rust-src`)",
            library.display()
        ));
    }
    Ok(())
}
