//! The state file `check` writes and `resume` reads: netctl's resume.json, but with the exact
//! task document that was run, so that `resume` re-probes with the same protocol, rate and
//! expectation.

use std::path::Path;

use anyhow::Context as _;
use meshdoctor_api::NetReach;
use serde::{Deserialize, Serialize};

use crate::output::FailedPath;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The task of the last run (without `spec.pairPaths`); its name is replaced on every
    /// run.
    pub task: NetReach,
    /// The controller's name of the last run.
    pub last_task: String,
    /// What failed in the last run; empty once clean.
    pub failed_paths: Vec<FailedPath>,
}

impl State {
    /// Reads the state file; a missing file is a clear error that says to run `check` first.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "{}: no state file: run `meshdoctor check` first (or give --state)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a meshdoctor state file", path.display()))
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}
