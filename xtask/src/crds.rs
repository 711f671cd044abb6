//! `cargo xtask crds`: writes the task CRDs, generated from the api types, to `deploy/crds/`
//! (and the chart's copies);
//! `--check` only compares, for CI and for a developer who changed a spec type.
//!
//! The YAML itself comes from [`meshdoctor_api::task::crd_files`], which the api crate's drift
//! test also calls, so the command and the test can never disagree on what is current.

use std::{fs, path::Path};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct CrdsArgs {
    /// Compare the committed files with the generated ones instead of writing them; fails
    /// naming the files that differ.
    #[arg(long)]
    check: bool,
}

pub fn run(args: CrdsArgs) -> Result<()> {
    let dir = crate::workspace_root().join("deploy/crds");
    let files = meshdoctor_api::task::crd_files().context("serializing the CRDs to YAML")?;
    if args.check {
        return check(&dir, &files);
    }
    for (name, yaml) in &files {
        let path = dir.join(name);
        fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    // The chart carries the same files.
    crate::chart::sync()
}

/// Fails when a committed file is missing or differs, showing the first differing line of each.
fn check(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    let mut stale = Vec::new();
    for (name, want) in files {
        let shown = format!("deploy/crds/{name}");
        let have = match fs::read_to_string(dir.join(name)) {
            Ok(have) => have,
            Err(e) => {
                stale.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        if let Some(diff) = first_difference(&have, want) {
            stale.push(format!("{shown}: {diff}"));
        }
    }
    if !stale.is_empty() {
        bail!(
            "the committed CRDs differ from the api types; run `cargo xtask crds`:\n{}",
            stale.join("\n")
        );
    }
    eprintln!("deploy/crds is up to date");
    Ok(())
}

/// The first line where `have` and `want` differ, as `line N:` then `- have` and `+ want`;
/// `None` when they are equal.
fn first_difference(have: &str, want: &str) -> Option<String> {
    if have == want {
        return None;
    }
    let mut lines = have.lines().zip(want.lines()).enumerate();
    let line = match lines.find(|(_, (h, w))| h != w) {
        Some((i, (h, w))) => (i + 1, h, w),
        // One file is the other plus some lines, or they differ in the final newline only.
        None => {
            let (h, w) = (have.lines().count(), want.lines().count());
            if h == w {
                return Some("the files differ in their final newline only".into());
            }
            let n = h.min(w);
            fn nth(text: &str, n: usize) -> &str {
                text.lines().nth(n).unwrap_or("(end of file)")
            }
            (n + 1, nth(have, n), nth(want, n))
        }
    };
    Some(format!("line {}:\n  - {}\n  + {}", line.0, line.1, line.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(
            first_difference("a\nb\n", "a\nc\n").as_deref(),
            Some("line 2:\n  - b\n  + c")
        );
        assert_eq!(
            first_difference("a\n", "a\nb\n").as_deref(),
            Some("line 2:\n  - (end of file)\n  + b")
        );
        assert_eq!(
            first_difference("a", "a\n").as_deref(),
            Some("the files differ in their final newline only")
        );
    }
}
