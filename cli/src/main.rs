//! meshdoctor: the operator's command line against a controller's HTTP API.
//!
//! `meshdoctor report mesh` prints the latest round of task `mesh` as a pair table and exits
//! non-zero when that round failed, so it can gate a script or a CI job.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use meshdoctor_api::{RoundReport, RoundStatus, table};

#[derive(Debug, Parser)]
#[command(name = "meshdoctor", version, about)]
struct Args {
    /// Controller base URL.
    #[arg(
        long,
        env = "MESHDOCTOR_CONTROLLER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    controller: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let failed = rt.block_on(run(&args))?;
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the command; `Ok(true)` means "printed, but the checked thing failed".
async fn run(args: &Args) -> anyhow::Result<bool> {
    let base = args.controller.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = http
                .get(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach the controller at {url}"))?;
            let status = resp.status();
            let body = resp
                .text()
                .await
                .with_context(|| format!("reading {url}"))?;
            if !status.is_success() {
                bail!("{url}: HTTP {status}: {body}");
            }
            serde_json::from_str::<serde_json::Value>(&body)
                .with_context(|| format!("{url}: the controller's answer is not JSON"))
        }
    };
    match &args.command {
        Command::Report { task, round } => {
            let which = round.map_or_else(|| "latest".to_string(), |r| r.to_string());
            let value = get(format!("/v1/tasks/{task}/rounds/{which}")).await?;
            let report: RoundReport =
                serde_json::from_value(value.clone()).context("the round report does not parse")?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
                Output::Table => {
                    print!("{}", table::render_table(&report));
                    println!("{}", table::summary_line(&report));
                }
            }
            Ok(report.status == RoundStatus::Fail)
        }
        Command::Tasks => print_value(args.output, get("/v1/tasks".into()).await?, task_row),
        Command::Agents => print_value(args.output, get("/v1/agents".into()).await?, agent_row),
    }
}

fn print_value(
    output: Output,
    value: serde_json::Value,
    row: fn(&serde_json::Value) -> String,
) -> anyhow::Result<bool> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Table => {
            for item in value.as_array().into_iter().flatten() {
                println!("{}", row(item));
            }
        }
    }
    Ok(false)
}

fn task_row(t: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    match t.get("error") {
        Some(e) if !e.is_null() => format!("{}  INVALID  {}", s(&t["name"]), s(e)),
        _ => {
            let st = &t["status"];
            format!(
                "{}  done {}/{}  last {}  finished {}",
                s(&t["name"]),
                st["doneRound"],
                st["expectedRound"],
                s(&st["lastRoundStatus"]),
                st["finish"]
            )
        }
    }
}

fn agent_row(a: &serde_json::Value) -> String {
    let ifaces: Vec<String> = a["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let addrs: Vec<&str> = ["ipv4", "ipv6"]
                .iter()
                .filter_map(|f| i[*f].as_str())
                .collect();
            format!(
                "{}({}: {})",
                i["name"].as_str().unwrap_or("?"),
                i["network"].as_str().unwrap_or("?"),
                addrs.join(", ")
            )
        })
        .collect();
    format!(
        "{}  {}  {}",
        a["node"].as_str().unwrap_or("?"),
        a["timestamping"].as_str().unwrap_or("?"),
        ifaces.join("  ")
    )
}
