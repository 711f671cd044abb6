//! meshdoctor-controller. Standalone backend (default): tasks from a directory of YAML files,
//! agents over HTTP, round reports on local disk. Kubernetes backend (`--backend kubernetes`):
//! tasks are custom resources, agents the agent DaemonSet's pods, status written to the tasks,
//! one leader among the replicas (a Lease); agents still talk to the controller over HTTP.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use meshdoctor_api::{
    DEFAULT_MAX_HISTORY,
    allow::{AllowList, Allowed},
    time::parse_duration,
};
use meshdoctor_controller::{
    access::{Access, AgentAuth},
    api_server::{self, Serving},
    backend::Standalone,
    driver::{Controller, DEFAULT_TLS_DIR, Settings},
    kubernetes::{self, leader_label, lease, token_review::Reviewer},
    limits::Limits,
    mesh::shape::Budget,
    sinks::store::{ReportStore, Retention},
    status_files::StatusFiles,
    tasks_dir::TasksDir,
};
use meshdoctor_ops::{
    credential::{NodeKey, read_token},
    http::Bounds,
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
    /// Round reports are stored as DIR/reports/<task>/<round>.msgpack.zst.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the HTTP API (agents, reports, status, metrics).
    #[arg(long, default_value = "[::]:7070")]
    listen: SocketAddr,
    #[command(flatten)]
    auth: AuthArgs,
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
    /// The only directory whose files tasks may name as TLS files (tlsCaFile, tlsCertFile,
    /// tlsKeyFile): the controller reads them and ships them to every agent, so a task must not
    /// be able to name the token or /proc.
    #[arg(long, default_value = DEFAULT_TLS_DIR, value_name = "DIR")]
    tls_dir: PathBuf,
    /// Destinations tasks may name (listed addresses, Service and remote agents, application
    /// targets), comma-separated or repeated: CIDRs, addresses or host names (`*.suffix` for a
    /// domain). A round naming another fails at once. Without it, any destination.
    #[arg(long, value_delimiter = ',', value_name = "CIDR|HOST")]
    allow_targets: Vec<Allowed>,
    /// Most probes or requests per second per target a task may ask for (spec.request.qps):
    /// a round above it fails at once. Without it, no limit beyond the task's own validation.
    #[arg(long, value_name = "QPS")]
    max_qps: Option<u32>,
    /// Most connections the API holds at once, agents' plan long-polls among them (so more
    /// than the nodes); fewer if the open-file limit leaves less room. Further ones are closed
    /// at once.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    max_connections: usize,
    /// Time a client has to send a request's head (request line and headers) before its
    /// connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
}

/// Who may call the API, and its TLS (docs/security.md). A kind of caller without its
/// credential is let in unauthenticated, with a warning at start.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// Standalone agents' key (at least 32 bytes): each agent presents the credential this key
    /// makes for its node (`meshdoctor agent-credential`), good for that node only. Without it
    /// (or --agent-token-audience), agents are not authenticated.
    #[arg(long, value_name = "FILE", conflicts_with = "agent_token_audience")]
    agent_key_file: Option<PathBuf>,
    /// Kubernetes: agents present their pod's projected service-account token for this
    /// audience, verified with a TokenReview; its pod's node is the only one it may act for.
    /// Without it: see --agent-key-file.
    #[arg(long, value_name = "AUDIENCE")]
    agent_token_audience: Option<String>,
    /// File holding the admin token: task writes (and reads). Without it, anyone may write
    /// tasks.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File holding the reader token: reports, findings, agents and tasks. Without it (and
    /// without an admin token), reads are open.
    #[arg(long, value_name = "FILE")]
    reader_token_file: Option<PathBuf>,
    /// /metrics needs the reader (or admin) token too.
    #[arg(long)]
    metrics_need_reader: bool,
    /// PEM certificate chain the API is served with over TLS (re-read when it changes);
    /// without it the API is plain HTTP.
    #[arg(long, value_name = "FILE", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// PEM private key of --api-tls-cert (without it, no TLS).
    #[arg(long, value_name = "FILE", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
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
    /// The agents' service account (their tokens' identity, with --agent-token-audience).
    #[arg(long, default_value = "meshdoctor-agent")]
    agent_service_account: String,
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

/// The API's credentials from the flags; agents' tokens reviewed by `kube` in Kubernetes.
fn access(args: &Args, kube: Option<&kube::Client>) -> anyhow::Result<Access> {
    let auth = &args.auth;
    let agents = match (&auth.agent_key_file, &auth.agent_token_audience, kube) {
        (Some(file), _, _) => AgentAuth::Key(NodeKey::read(file)?),
        (None, Some(audience), Some(client)) => AgentAuth::ServiceAccount(Arc::new(Reviewer::new(
            client.clone(),
            audience,
            &args.kube.namespace,
            &args.kube.agent_service_account,
        ))),
        (None, Some(_), None) => {
            anyhow::bail!(
                "--agent-token-audience needs --backend kubernetes (its API server reviews the tokens)"
            )
        }
        (None, None, _) => AgentAuth::Open,
    };
    let token = |file: &Option<PathBuf>| file.as_deref().map(read_token).transpose();
    if auth.metrics_need_reader
        && auth.reader_token_file.is_none()
        && auth.admin_token_file.is_none()
    {
        anyhow::bail!(
            "--metrics-need-reader needs --reader-token-file (or --admin-token-file): without \
             one, /metrics would stay open"
        );
    }
    Ok(Access {
        agents,
        admin: token(&auth.admin_token_file)?,
        reader: token(&auth.reader_token_file)?,
        metrics_need_reader: auth.metrics_need_reader,
    })
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
    let tls = match (&args.auth.api_tls_cert, &args.auth.api_tls_key) {
        (Some(cert), Some(key)) => Some(meshdoctor_ops::tls::server_config(cert, key)?),
        _ => {
            warn!("no --api-tls-cert: the API (agents' plans and reports among it) is plain HTTP");
            None
        }
    };

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
        tls_dir: args.tls_dir.clone(),
        limits: Limits {
            allow: AllowList(args.allow_targets.clone()),
            max_qps: args.max_qps,
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
    let mut kube_client = None;
    match (args.backend, &args.tasks_dir) {
        (Backend::Standalone, Some(dir)) => {
            // Each task continues from the status the previous controller saved.
            let statuses = StatusFiles::new(args.data_dir.join("status"));
            let seeds = statuses.load();
            ctl.set_backend(Arc::new(Standalone::saving(statuses)));
            let dir = Arc::new(TasksDir::new(dir.clone()));
            dir.sync(&|defs| ctl.sync_tasks_seeded(defs, seeds.clone()))
                .with_context(|| format!("cannot read tasks dir {}", dir.path().display()))?;
            tokio::spawn(reload_tasks(ctl.clone(), dir.clone()));
            tasks_dir = Some(dir);
        }
        (Backend::Standalone, None) => anyhow::bail!("--tasks-dir is required (standalone)"),
        (Backend::Kubernetes, _) => {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
            stop_leading = Some(start_kubernetes(&ctl, client.clone(), &args.kube).await?);
            kube_client = Some(client);
        }
    }
    let access = access(&args, kube_client.as_ref())?;
    for door in access.open_doors() {
        warn!("no credential configured for {door}: open to anyone who reaches the API");
    }
    let serving = Serving {
        ctl,
        access: Arc::new(access),
        tasks_dir,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(addr = %listener.local_addr()?, "controller listening");
    // SIGTERM is how Kubernetes stops a pod; Ctrl-C how a person does.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let bounds = Bounds::within_fd_limit(args.max_connections, args.header_timeout);
    info!(connections = bounds.connections, "API connection limit");
    let router = api_server::router(serving);
    meshdoctor_ops::http::serve(listener, router, bounds, tls, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutting down");
    })
    .await;
    if let Some(stop) = stop_leading {
        stop.await;
    }
    Ok(())
}

/// Starts leader election and the Kubernetes backend; returns what releases the Lease on
/// shutdown, so that another replica takes over at once.
async fn start_kubernetes(
    ctl: &Arc<Controller>,
    client: kube::Client,
    args: &KubeArgs,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
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
