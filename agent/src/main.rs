//! meshdoctor-agent: the per-node prober. It registers with the controller, runs the round
//! plans it is given (NetReach: paced echo probes over the planned interfaces, timestamped in
//! the kernel by eBPF TC observers; AppHttpHealthy and NetDns: paced HTTP or DNS requests to
//! the plan's target), and posts what it saw.

mod app;
mod caps;
mod client;
mod drops;
mod hooks;
mod icmp;
mod interfaces;
mod metrics;
mod observer;
mod round;
mod runtime;
mod sockets;
mod tcp;
#[cfg(test)]
mod testnet;
mod udp;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use axum::{Router, extract::State, routing::get};
use clap::Parser;
use meshdoctor_api::{RoundPlan, task::DEFAULT_TOPOLOGY_KEY};
use tracing::{error, info, warn};

use crate::{
    client::{ClientError, ControllerClient},
    drops::DropTracer,
    interfaces::InterfaceArg,
    observer::{LoadOptions, Observer},
    runtime::Agent,
};

#[derive(Debug, Parser)]
#[command(version = meshdoctor_ops::VERSION, about)]
struct Args {
    /// Node name this agent reports as (Kubernetes: the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Controller base URL, e.g. http://meshdoctor-controller:7070.
    #[arg(long, env = "MESHDOCTOR_CONTROLLER")]
    controller: String,
    /// File holding the bearer token shared with the controller (none: requests carry no
    /// token, for a controller without one).
    #[arg(long, env = "MESHDOCTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Interface to probe over, as NAME or NAME=NETWORK (repeatable; default: every interface
    /// that is up and not loopback, its network named after it).
    #[arg(long = "interface", value_name = "NAME[=NETWORK]")]
    interfaces: Vec<InterfaceArg>,
    /// Address of the health and metrics endpoint.
    #[arg(long, default_value = "[::]:9090")]
    listen: SocketAddr,
    /// Port of the responders that answer peers' UDP, TCP and HTTP probes on every address,
    /// the same number for UDP and TCP (0: none; then this node is no target of those tasks).
    #[arg(long, default_value_t = 9091, value_name = "PORT")]
    probe_port: u16,
    /// Size of the ring buffer that carries probe events from the kernel, in KiB: a power of
    /// two, at least the page size. Events that do not fit are counted and make the round's
    /// missing hooks 'unobserved' instead of loss; raise it for very high probe rates.
    #[arg(long, default_value_t = 256, value_name = "KIB", value_parser = parse_event_buffer)]
    event_buffer_kib: u32,
    /// Most TCP probe paths (its own and those toward it) the observers follow at once. A
    /// round with more is reported 'incomplete': its missing hooks are unobserved, not loss.
    /// A full TCP mesh of N nodes needs 2 x (N - 1) per interface pair and family.
    #[arg(long, default_value_t = 16384, value_name = "PATHS")]
    max_tcp_paths: u32,
    /// Do not load eBPF: user-space timestamps only, no per-hook loss attribution. Needs only
    /// CAP_NET_RAW.
    #[arg(long)]
    no_ebpf: bool,
    /// A label of this node, KEY=VALUE (repeatable; none by default), where a NetReach's mesh.topologyKey
    /// finds its topology domain. Standalone only: in Kubernetes the controller reads the
    /// Node's labels.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// This node's zone: the label topology.kubernetes.io/zone=ZONE (none by default).
    #[arg(long, value_name = "ZONE")]
    zone: Option<String>,
    #[command(flatten)]
    log: meshdoctor_ops::LogArgs,
}

/// `KEY=VALUE`, neither part empty nor with whitespace.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let ok = |x: &str| !x.is_empty() && !x.contains(char::is_whitespace);
    match s.split_once('=') {
        Some((k, v)) if ok(k) && ok(v) => Ok((k.into(), v.into())),
        _ => Err(format!("expected KEY=VALUE without spaces, got {s:?}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    if let Some(msg) = caps::missing(
        caps::effective().context("reading capabilities")?,
        !args.no_ebpf,
    ) {
        bail!(msg);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let interfaces = interfaces::discover(&args.interfaces)?;
    let token = args
        .token_file
        .as_ref()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("reading token file {}", f.display()))
        })
        .transpose()?;
    let (observer, drop_tracer) = if args.no_ebpf {
        (None, None)
    } else {
        match load_observer(
            &interfaces,
            args.event_buffer_kib * 1024,
            args.max_tcp_paths,
        ) {
            Ok((o, t)) => (Some(o), t),
            Err(e) => {
                let error = format!("{e:#}");
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let hint = caps::seccomp_hint(&status, &error)
                    .map(|h| format!(". {h}"))
                    .unwrap_or_default();
                warn!(
                    "eBPF observers unavailable, falling back to user-space timestamps \
                     (reports say timestamping: socket): {error}{hint}"
                );
                (None, None)
            }
        }
    };
    let mut agent = Agent::new(args.node.clone(), interfaces, observer, drop_tracer);
    agent.probe_port = start_responders(args.probe_port);
    agent.labels = args.labels.into_iter().collect();
    if let Some(zone) = args.zone {
        agent.labels.insert(DEFAULT_TOPOLOGY_KEY.into(), zone);
    }
    let agent = Arc::new(agent);
    if let Some(events) = agent.take_events() {
        tokio::spawn(agent.clone().dispatch_events(events));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(a): State<Arc<Agent>>| async move { a.render_metrics() }),
        )
        .with_state(agent.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("metrics endpoint stopped: {e}");
        }
    });
    info!(
        node = %agent.node,
        interfaces = ?agent.interfaces.iter().map(|i| &i.info.name).collect::<Vec<_>>(),
        timestamping = ?agent.timestamping,
        "agent started"
    );
    let client = Arc::new(ControllerClient::new(&args.controller, token)?);
    tokio::select! {
        () = follow_plans(agent, client) => Ok(()),
        r = shutdown_signal() => r,
    }
}

/// Loads and attaches the TC observers, and the kfree_skb drop tracer when the kernel layout
/// resolves; without the tracer the agent still runs, its reports say `dropTracer: false`.
fn load_observer(
    interfaces: &[interfaces::Interface],
    event_buffer_bytes: u32,
    tcp_paths: u32,
) -> anyhow::Result<(Observer, Option<DropTracer>)> {
    let tracer = DropTracer::resolve()
        .map_err(|e| warn!("kernel drop reasons unavailable: {e}"))
        .ok();
    let mut obs = Observer::load(&LoadOptions {
        drops: tracer.as_ref().map(|t| t.layout),
        event_buffer_bytes: Some(event_buffer_bytes),
        tcp_paths: Some(tcp_paths),
    })?;
    for i in interfaces {
        let mode = obs.attach(&i.info.name)?;
        info!(interface = %i.info.name, ?mode, "eBPF observers attached");
    }
    let tracer = tracer.and_then(|t| match obs.trace_drops() {
        Ok(()) => {
            info!("kfree_skb drop tracer attached");
            Some(t)
        }
        Err(e) => {
            warn!("kernel drop reasons unavailable: {e}");
            None
        }
    });
    Ok((obs, tracer))
}

/// Starts the UDP probe responder on `port` (0: none); without it the agent still runs, but
/// peers cannot UDP-probe it, which the controller learns from the registration.
/// Starts the UDP and TCP probe responders on `port`; the port to announce, `None` when off
/// or when either cannot listen (peers then probe this node with ICMP only).
fn start_responders(port: u16) -> Option<u16> {
    if port == 0 {
        return None;
    }
    let sockets = udp::responder_socket(port).and_then(|u| Ok((u, tcp::responder_listener(port)?)));
    match sockets {
        Ok((udp_socket, listener)) => {
            tokio::spawn(async move {
                let e = udp::respond(udp_socket).await;
                error!(port, "UDP probe responder stopped: {e}");
            });
            tokio::spawn(async move {
                let e = tcp::respond(listener).await;
                error!(port, "TCP probe responder stopped: {e}");
            });
            info!(port, "UDP and TCP probe responders listening");
            Some(port)
        }
        Err(e) => {
            warn!(port, "no probe responders: {e}");
            None
        }
    }
}

/// `--event-buffer-kib`: the kernel wants a power-of-two multiple of the page size.
fn parse_event_buffer(s: &str) -> Result<u32, String> {
    let page = 4;
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("expected a size in KiB, got {s:?}"))?;
    if kib < page || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "expected a power of two between {page} and {} KiB, got {kib}",
            1 << 20
        ));
    }
    Ok(kib)
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    Ok(())
}

/// Registers, then runs every plan the controller publishes, forever.
async fn follow_plans(agent: Arc<Agent>, client: Arc<ControllerClient>) {
    register(&agent, &client).await;
    let mut after = 0;
    loop {
        match client.plans(&agent.node, after).await {
            Ok(plans) => {
                for plan in plans {
                    after = after.max(plan.round_tag);
                    tokio::spawn(run_plan(agent.clone(), client.clone(), plan));
                }
            }
            Err(ClientError::NotRegistered) => register(&agent, &client).await,
            Err(e) => {
                warn!("polling plans: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn register(agent: &Agent, client: &ControllerClient) {
    let reg = agent.registration();
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.register(&reg).await {
            Ok(()) => {
                info!("registered with the controller");
                return;
            }
            Err(e) => {
                warn!("registering: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one plan and posts its report, retrying until the controller's deadline for it.
async fn run_plan(agent: Arc<Agent>, client: Arc<ControllerClient>, plan: RoundPlan) {
    if now_ms() >= plan.report_deadline_ms {
        warn!(task = %plan.task, round = plan.round, "plan arrived after its report deadline; skipped");
        return;
    }
    let report = match &plan.app {
        None => {
            info!(task = %plan.task, round = plan.round, targets = plan.targets.len(), "round starts");
            round::run(&agent, &plan).await
        }
        Some(app) => {
            info!(
                task = %plan.task, round = plan.round, target = %app.target.label(), qps = plan.qps,
                "application round starts"
            );
            app::run(&agent, &plan, app).await
        }
    };
    agent.metrics.rounds.inc();
    loop {
        match client.report(&report).await {
            Ok(()) => {
                info!(task = %plan.task, round = plan.round, "report posted");
                return;
            }
            Err(e) if now_ms() < plan.report_deadline_ms => {
                warn!("posting report: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                error!(task = %plan.task, round = plan.round, "report not delivered before the deadline: {e}");
                agent.metrics.report_failures.inc();
                return;
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_says_its_default_values_or_absence() {
        meshdoctor_ops::assert_flags_explained(&<Args as clap::CommandFactory>::command());
    }
}
