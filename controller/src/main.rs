//! meshdoctor-controller. Standalone backend (default): tasks from a directory of YAML files,
//! agents over HTTP, round reports on local disk. Kubernetes backend (`--backend kubernetes`):
//! tasks are custom resources, agents the agent DaemonSet's pods, status written to the tasks,
//! one leader among the replicas (a Lease); agents still talk to the controller over HTTP.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use meshdoctor_api::{DEFAULT_MAX_HISTORY, time::parse_duration};
use meshdoctor_controller::{
    api_server::{self, Serving},
    driver::{Controller, Settings},
    kubernetes::{self, leader_label, lease},
    mesh::shape::Budget,
    sinks::store::{ReportStore, Retention},
    tasks_dir::TasksDir,
};
use tracing::{info, warn};

/// How often the tasks directory is re-read for added, changed and removed files.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Tasks from --tasks-dir, every registered agent takes part.
    Standalone,
    /// Tasks, agents, Service targets and status from the Kubernetes API (in-cluster config or
    /// KUBECONFIG).
    Kubernetes,
}

#[derive(Debug, Parser)]
#[command(version = meshdoctor_ops::VERSION, about = "meshdoctor controller")]
struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Standalone)]
    backend: Backend,
    /// Directory of task files (*.yaml, *.yml; NetReach, AppHttpHealthy, NetDns), one task per
    /// file, re-read every 2 s: added, changed and removed files take effect while running.
    /// Standalone backend only (required there; none with the Kubernetes backend).
    #[arg(long, required_if_eq("backend", "standalone"))]
    tasks_dir: Option<PathBuf>,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    log: meshdoctor_ops::LogArgs,
    /// Round reports are stored as DIR/reports/<task>/<round>.json.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the HTTP API (agents, reports, status, metrics).
    #[arg(long, default_value = "[::]:7070")]
    listen: SocketAddr,
    /// File holding the bearer token agents must present (overrides MESHDOCTOR_TOKEN; with
    /// none, the API takes no token).
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
    /// Stored round reports kept per task, newest first (the newest round of every task always
    /// stays).
    #[arg(long, default_value_t = Retention::default().rounds as u64, value_parser = clap::value_parser!(u64).range(1..))]
    keep_rounds: u64,
    /// Stored round reports older than this are removed.
    #[arg(long, default_value = "7d", value_parser = parse_age)]
    keep_for: Duration,
    /// Bytes all stored round reports may take (e.g. 768Mi, 2Gi, 500M): the oldest are removed
    /// beyond it. Keep it below the data volume (the manifests' emptyDir is 1Gi).
    #[arg(long, default_value = "768Mi", value_parser = parse_bytes)]
    keep_bytes: u64,
    /// Also export the loss ratio of every agent-to-agent pair-path
    /// (meshdoctor_pair_loss_ratio): nodes² series, for small clusters or a short
    /// investigation.
    #[arg(long)]
    pair_metrics: bool,
    /// Most probe packets per second a NetReach round may ask of one agent, sent and received
    /// (requests and replies of its own probes and of those it answers): the auto mesh samples
    /// peers to stay within it, and a mesh above it is a warning in the round report.
    #[arg(long, default_value_t = Budget::default().packets_per_sec, value_name = "PACKETS")]
    probe_budget: u32,
    /// Most pair-paths a round may have (the controller keeps a record of each while the round
    /// runs): a round above it fails at once, naming the limit.
    #[arg(long, default_value_t = Budget::default().max_paths, value_name = "PATHS")]
    max_round_paths: u64,
}

/// The Kubernetes backend's settings.
#[derive(Debug, clap::Args)]
struct KubeArgs {
    /// Namespace of the agent pods, Service and Ingress and of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshdoctor")]
    namespace: String,
    /// This replica's name (the pod name): the Lease holder identity.
    #[arg(long, env = "POD_NAME", default_value = "meshdoctor-controller")]
    identity: String,
    /// Label selector of the agent DaemonSet's pods.
    #[arg(long, default_value = "app.kubernetes.io/name=meshdoctor-agent")]
    agent_selector: String,
    /// The agent Service (NetReach clusterIP, nodePort and loadBalancer targets).
    #[arg(long, default_value = "meshdoctor-agent")]
    agent_service: String,
    /// The agent Ingress (NetReach ingress targets).
    #[arg(long, default_value = "meshdoctor-agent")]
    agent_ingress: String,
    /// The Lease the replicas elect a leader with.
    #[arg(long, default_value = "meshdoctor-controller")]
    lease: String,
    /// How long a leader's lease lasts without renewal (the longest leaderless time after a
    /// crash); renewed every third of it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_ttl: Duration,
}

/// A duration as `parse_duration` takes it, or a number of days: `7d`.
fn parse_age(s: &str) -> Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) if days > 0 => Ok(Duration::from_secs(days.saturating_mul(86_400))),
        _ => parse_duration(s),
    }
}

/// A size in bytes with an optional SI (`K`, `M`, `G`) or binary (`Ki`, `Mi`, `Gi`) suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "expected a size like 768Mi, 2Gi or 500M, got {s:?}"
            ));
        }
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("expected a size above zero like 768Mi, got {s:?}"))
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

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads exist.
    meshdoctor_controller::tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
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
        pair_metrics: args.pair_metrics,
        budget: Budget {
            packets_per_sec: args.probe_budget,
            max_paths: args.max_round_paths,
        },
    };
    let retention = Retention {
        rounds: usize::try_from(args.keep_rounds).unwrap_or(usize::MAX),
        age: args.keep_for,
        bytes: args.keep_bytes,
    };
    let store = ReportStore::new(&args.data_dir).with_retention(retention);
    let ctl = Controller::new(settings, store);
    let mut stop_leading = None;
    let mut tasks_dir = None;
    match (args.backend, &args.tasks_dir) {
        (Backend::Standalone, Some(dir)) => {
            let dir = Arc::new(TasksDir::new(dir.clone()));
            dir.sync(&|defs| ctl.sync_tasks(defs))
                .with_context(|| format!("cannot read tasks dir {}", dir.path().display()))?;
            tokio::spawn(reload_tasks(ctl.clone(), dir.clone()));
            tasks_dir = Some(dir);
        }
        (Backend::Standalone, None) => anyhow::bail!("--tasks-dir is required (standalone)"),
        (Backend::Kubernetes, _) => {
            stop_leading = Some(start_kubernetes(&ctl, &args.kube).await?);
        }
    }
    let serving = Serving {
        ctl,
        token,
        tasks_dir,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(addr = %listener.local_addr()?, "controller listening");
    // SIGTERM is how Kubernetes stops a pod; Ctrl-C how a person does.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    axum::serve(listener, api_server::router(serving))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("shutting down");
        })
        .await
        .context("HTTP server failed")?;
    if let Some(stop) = stop_leading {
        stop.await;
    }
    Ok(())
}

/// Starts leader election and the Kubernetes backend; returns what releases the Lease on
/// shutdown, so that another replica takes over at once.
async fn start_kubernetes(
    ctl: &Arc<Controller>,
    args: &KubeArgs,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let lease_cfg = lease::LeaseConfig {
        namespace: args.namespace.clone(),
        name: args.lease.clone(),
        identity: args.identity.clone(),
        ttl: args.lease_ttl,
        renew_every: args.lease_ttl / 3,
    };
    let (leading, is_leading) = tokio::sync::watch::channel(false);
    // The leader's pod carries the label the controller Service selects: agents reach it.
    let labeller = tokio::spawn(leader_label::run(
        client.clone(),
        args.namespace.clone(),
        args.identity.clone(),
        is_leading.clone(),
    ));
    let elector = tokio::spawn(lease::run(
        client.clone(),
        lease_cfg.clone(),
        leading.clone(),
    ));
    let cfg = kubernetes::Config {
        namespace: args.namespace.clone(),
        agent_selector: args.agent_selector.clone(),
        agent_service: args.agent_service.clone(),
        agent_ingress: args.agent_ingress.clone(),
        identity: args.identity.clone(),
    };
    let watched = kubernetes::watch(client.clone(), cfg);
    tokio::spawn(kubernetes::run(
        client.clone(),
        ctl.clone(),
        watched,
        is_leading,
    ));
    Ok(async move {
        elector.abort();
        labeller.abort();
        // Unmarked before the Lease goes: agents stop coming here before another leads.
        if let Err(e) =
            leader_label::mark(&client, &lease_cfg.namespace, &lease_cfg.identity, false).await
        {
            warn!("cannot remove the leader label: {e}");
        }
        match lease::step_down(client, &lease_cfg, &leading).await {
            Ok(true) => info!("lease released"),
            Ok(false) => {}
            Err(e) => warn!("cannot release the lease: {e}"),
        }
    })
}

/// Re-reads the tasks directory periodically; a transient read error keeps the current tasks.
async fn reload_tasks(ctl: Arc<Controller>, dir: Arc<TasksDir>) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ctl, dir) = (ctl.clone(), dir.clone());
        let synced = tokio::task::spawn_blocking(move || {
            dir.sync(&|defs| ctl.sync_tasks(defs))
                .map_err(|e| format!("{}: {e}", dir.path().display()))
        });
        match synced.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("cannot re-read tasks dir {e}"),
            Err(e) => warn!("task reload failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_says_its_default_values_or_absence() {
        meshdoctor_ops::assert_flags_explained(&<Args as clap::CommandFactory>::command());
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(parse_bytes("768Mi"), Ok(768 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1Ti").unwrap_err().contains("like 768Mi"));
        assert!(parse_bytes("0").is_err() && parse_bytes("").is_err());
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_age("0d").is_err());
    }
}
