//! meshdoctor-controller, standalone backend: tasks from a directory of YAML files, agents
//! over HTTP, round reports on local disk.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use meshdoctor_api::{DEFAULT_MAX_HISTORY, task::parse_duration};
use meshdoctor_controller::{
    api_server,
    rounds::{Controller, Settings},
    store::ReportStore,
    tasks,
};
use tracing::{info, warn};

/// How often the tasks directory is re-read for added, changed and removed files.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(version, about = "meshdoctor controller (standalone backend)")]
struct Args {
    /// Directory of task files (*.yaml, *.yml; NetReach, AppHttpHealthy, NetDns), one task per
    /// file, re-read every 2 s: added, changed and removed files take effect while running.
    #[arg(long)]
    tasks_dir: PathBuf,
    /// Round reports are stored as DIR/reports/<task>/<round>.json.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the HTTP API (agents, reports, status, metrics).
    #[arg(long, default_value = "[::]:7070")]
    listen: SocketAddr,
    /// File holding the bearer token agents must present (overrides MESHDOCTOR_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Start a task's schedule clock only once this many agents registered.
    #[arg(long, default_value_t = 0)]
    wait_agents: usize,
    /// Publish plans this long before the round starts, so every agent is armed.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    start_delay: Duration,
    /// Wait for reports until start + duration + per-request timeout + this grace.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    report_grace: Duration,
    /// Round history entries kept in each task's status (kdoctor's crdMaxHistory).
    #[arg(long, default_value_t = DEFAULT_MAX_HISTORY, value_parser = history_len)]
    max_history: usize,
}

fn history_len(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=1000) => Ok(n),
        _ => Err(format!("expected 1..=1000 entries, got {s:?}")),
    }
}

fn token(args: &Args) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read token file {}", file.display()))?,
        ),
        None => std::env::var("MESHDOCTOR_TOKEN").ok(),
    };
    Ok(token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let token = token(&args)?;
    if token.is_none() {
        warn!(
            "no agent token configured (--token-file or MESHDOCTOR_TOKEN): agent endpoints are open"
        );
    }

    let settings = Settings {
        wait_agents: args.wait_agents,
        start_delay: args.start_delay,
        report_grace: args.report_grace,
        max_history: args.max_history,
    };
    let ctl = Controller::new(settings, ReportStore::new(&args.data_dir));
    let files = tasks::load_dir(&args.tasks_dir)
        .with_context(|| format!("cannot read tasks dir {}", args.tasks_dir.display()))?;
    ctl.sync_tasks(files);
    tokio::spawn(reload_tasks(ctl.clone(), args.tasks_dir.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(addr = %listener.local_addr()?, "controller listening");
    axum::serve(listener, api_server::router(ctl, token))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            info!("shutting down");
        })
        .await
        .context("HTTP server failed")
}

/// Re-reads the tasks directory periodically; a transient read error keeps the current tasks.
async fn reload_tasks(ctl: Arc<Controller>, dir: PathBuf) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || tasks::load_dir(&d)).await {
            Ok(Ok(files)) => ctl.sync_tasks(files),
            Ok(Err(e)) => warn!("cannot re-read tasks dir {}: {e}", dir.display()),
            Err(e) => warn!("task reload failed: {e}"),
        }
    }
}
