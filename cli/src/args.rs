//! The command line: global flags, the subcommands and their options.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use meshdoctor_api::Protocol;

/// The default state file of `check` and `resume`, in the current directory as netctl's.
pub const DEFAULT_STATE: &str = "meshdoctor-resume.json";

#[derive(Debug, Parser)]
#[command(name = "meshdoctor", version, about)]
pub struct Args {
    /// Controller base URL.
    #[arg(
        long,
        env = "MESHDOCTOR_CONTROLLER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub controller: String,
    /// File holding the API token the write endpoints need (MESHDOCTOR_TOKEN gives the value
    /// itself).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Output format: tables for humans, JSON or YAML for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one NetReach round now (the full mesh by default) and prints the faulty
    /// interfaces, the failed pair-paths and a summary. Exits 1 when the expectation failed.
    Check(CheckArgs),
    /// Re-checks only the pair-paths that failed in the last check or resume (the state file).
    /// Exits 0 once they are clean.
    Resume(StateArgs),
    /// A round report of a task: the pair table and a summary. Exits 1 when the round failed.
    Report {
        task: String,
        /// Round number; the latest when omitted.
        #[arg(long)]
        round: Option<u32>,
    },
    /// The tasks the controller runs, with their status.
    Tasks,
    /// The registered agents and their interfaces.
    Agents,
    /// Deletes every `meshdoctor-check-*` task on the controller and the state file.
    Clean(StateArgs),
    /// Prints a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, ClapArgs)]
pub struct StateArgs {
    /// Where check writes the failed pair-paths and resume reads them.
    #[arg(long, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// Keep the check's task on the controller (`meshdoctor clean` removes it).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct CheckArgs {
    /// A NetReach task file (YAML or JSON) instead of the flags below; its name is replaced.
    #[arg(long, short, conflicts_with_all = [
        "protocol", "interfaces", "ipv4", "no_ipv4", "ipv6", "no_ipv6", "qps", "duration",
        "success_rate",
    ])]
    pub file: Option<PathBuf>,
    /// Probe protocol.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Networks (or interface names) to mesh over, comma-separated; all when omitted.
    #[arg(long, visible_alias = "networks", value_delimiter = ',')]
    pub interfaces: Option<Vec<String>>,
    /// Probe IPv4 (the default).
    #[arg(long, overrides_with = "no_ipv4")]
    pub ipv4: bool,
    /// Do not probe IPv4.
    #[arg(long)]
    pub no_ipv4: bool,
    /// Probe IPv6.
    #[arg(long, overrides_with = "no_ipv6")]
    pub ipv6: bool,
    /// Do not probe IPv6 (the default).
    #[arg(long)]
    pub no_ipv6: bool,
    /// Probes per second per pair-path.
    #[arg(long)]
    pub qps: Option<u32>,
    /// Seconds of probing.
    #[arg(long)]
    pub duration: Option<u32>,
    /// The round fails when fewer probes than this ratio (0..=1) come back.
    #[arg(long)]
    pub success_rate: Option<f64>,
    #[command(flatten)]
    pub state: StateArgs,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("expected icmp, tcp, udp or http, got {s:?}"))
}
