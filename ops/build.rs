//! Embeds the git commit the binaries are built from, for `--version`, the build info metric
//! and the image's annotations to agree on. A build outside a git checkout (a source tarball)
//! says "unknown" rather than failing; `MESHDOCTOR_GIT_COMMIT` overrides both.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MESHDOCTOR_GIT_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    // A new commit moves HEAD or the ref it names: rebuild then, not on every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    let commit = std::env::var("MESHDOCTOR_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHDOCTOR_GIT_COMMIT={commit}");
}
