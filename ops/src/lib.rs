//! What every meshdoctor binary shares for operating it: one version line (release and git
//! commit, the same in `--version`, the build info metric and the image's annotations), the
//! build info metric itself, the log format flag, the bounded HTTP server of the endpoints
//! that face the network ([`http`]), its TLS ([`tls`]) and the API's credentials
//! ([`credential`]).

pub mod credential;
pub mod http;
pub mod tls;

use clap::ValueEnum;
use std::{borrow::Cow, io::IsTerminal as _, sync::atomic::AtomicI64};

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

/// The release, from the workspace's Cargo.toml.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (12 hex digits), or "unknown" outside a git checkout.
pub const COMMIT: &str = env!("MESHDOCTOR_GIT_COMMIT");
/// What `--version` prints after the binary's name: `0.1.0 (commit 0123456789ab)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MESHDOCTOR_GIT_COMMIT"),
    ")"
);

/// Where the image of the agent, the controller and the CLI is published; tagged with
/// [`RELEASE`]. `cargo xtask image` builds it, the manifests and the chart name it.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/meshdoctor/meshdoctor";

/// The image of this release: `ghcr.io/meshdoctor/meshdoctor:0.1.0`.
pub fn image() -> String {
    format!("{IMAGE_REPOSITORY}:{RELEASE}")
}

/// How log lines are written (to stderr, filtered by `RUST_LOG`, `info` by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, target, fields), for log pipelines.
    Json,
}

/// The log flag of the agent and the controller (`#[command(flatten)]`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// Log lines as human-readable text or one JSON object each (to stderr; RUST_LOG filters,
    /// e.g. RUST_LOG=debug, or RUST_LOG=meshdoctor_controller=debug,warn for one crate's
    /// debug lines; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the process's log subscriber in this format.
    pub fn init(self) {
        init_logging(self.log_format);
    }
}

/// Installs the process's log subscriber. `RUST_LOG` takes tracing's filter directives
/// (`info`, `meshdoctor_controller=debug,warn`); without it, `info`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours for a terminal only: escape codes in a log file or a pipeline are noise.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Registers `meshdoctor_build_info{component, version, commit} 1`: which build runs where,
/// for dashboards to join on and for a rollout to be watched. A gauge, as Prometheus's own
/// `prometheus_build_info` is: the OpenMetrics `info` type fails a classic text scrape.
pub fn register_build_info(registry: &mut Registry, component: &'static str) {
    let labels = [
        ("component", component),
        ("version", RELEASE),
        ("commit", COMMIT),
    ]
    .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)));
    let info = Gauge::<i64, AtomicI64>::default();
    info.set(1);
    registry
        .sub_registry_with_labels(labels.into_iter())
        .register(
            "meshdoctor_build_info",
            "The meshdoctor build this process runs: release, git commit and component",
            info,
        );
}

/// The flags of `command` (and its subcommands) whose `--help` does not say what they take
/// or what happens without them: a flag with a value must be required, or show its default
/// or its possible values, or say in its help what its absence means ("default", "without
/// it", "when omitted", "none"). Each binary's tests call this on its own command.
pub fn unexplained_flags(command: &clap::Command) -> Vec<String> {
    const ABSENCE: [&str; 4] = ["default", "without it", "when omitted", "none"];
    let mut found = Vec::new();
    for arg in command.get_arguments() {
        let takes_value = arg.get_action().takes_values() && arg.get_long().is_some();
        if !takes_value || arg.is_required_set() || arg.is_hide_set() {
            continue;
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().to_lowercase())
            .unwrap_or_default();
        let explained = !arg.get_default_values().is_empty()
            || !arg.get_possible_values().is_empty()
            || ABSENCE.iter().any(|w| help.contains(w));
        if !explained {
            found.push(format!(
                "{} --{}",
                command.get_name(),
                arg.get_long().unwrap_or_default()
            ));
        }
    }
    for sub in command.get_subcommands() {
        found.extend(unexplained_flags(sub));
    }
    found
}

/// Fails, naming them, when [`unexplained_flags`] finds any: each binary's test.
pub fn assert_flags_explained(command: &clap::Command) {
    let found = unexplained_flags(command);
    assert!(
        found.is_empty(),
        "flags whose --help says neither a default, their values nor what their absence means: {}",
        found.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn build_info_is_one_series_naming_release_and_commit() {
        let mut registry = Registry::default();
        register_build_info(&mut registry, "agent");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let line = format!(
            "meshdoctor_build_info{{component=\"agent\",version=\"{RELEASE}\",commit=\"{COMMIT}\"}} 1"
        );
        assert!(text.contains(&line), "{text}");
        assert!(VERSION.starts_with(RELEASE) && VERSION.contains(COMMIT));
    }

    #[test]
    fn a_flag_is_explained_by_a_default_its_values_or_its_help() {
        let command = clap::Command::new("tool")
            .arg(clap::Arg::new("shown").long("shown").default_value("1"))
            .arg(
                clap::Arg::new("told")
                    .long("told")
                    .help("A file (none: no token)"),
            )
            .arg(clap::Arg::new("bare").long("bare").help("A file"))
            .arg(clap::Arg::new("needed").long("needed").required(true))
            .arg(
                clap::Arg::new("switch")
                    .long("switch")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("sub").arg(clap::Arg::new("x").long("x")));
        assert_eq!(unexplained_flags(&command), ["tool --bare", "sub --x"]);
    }
}
