//! meshdoctor-agent: the per-node prober. It registers with the controller, runs the round
//! plans it is given (NetReach: paced echo probes over the planned interfaces, timestamped in
//! the kernel by eBPF TC observers; AppHttpHealthy and NetDns: paced HTTP or DNS requests to
//! the plan's target), and posts what it saw.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use axum::{Router, extract::State, routing::get};
use clap::Parser;
use meshdoctor_agent_common::DEFAULT_TCP_PATHS;
use meshdoctor_api::{RoundPlan, task::DEFAULT_TOPOLOGY_KEY};
use meshdoctor_ops::http::Bounds;
use tracing::{error, info, warn};

use meshdoctor_agent::{
    app, caps,
    client::{ClientError, ControllerClient},
    drops::DropTracer,
    guard,
    interfaces::{self, InterfaceArg},
    map_sizes::MapSizes,
    observer::{LoadOptions, Observer},
    round::{self, now_ms},
    runtime::Agent,
    tcp, udp,
};

/// The longest one report post may take: over a cut link a post would otherwise hang for the
/// client's whole timeout, past the round's deadline, instead of being retried once the link
/// is back.
const REPORT_ATTEMPT: Duration = Duration::from_secs(10);

/// Connections the health and metrics endpoint holds at once: its clients are a scraper or two
/// and the kubelet's probes.
const METRICS_CONNECTIONS: usize = 32;

#[derive(Debug, Parser)]
#[command(version = meshdoctor_ops::VERSION, about)]
struct Args {
    /// Node name this agent reports as (Kubernetes: the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Controller base URL, e.g. https://meshdoctor-controller:7070.
    #[arg(long, env = "MESHDOCTOR_CONTROLLER")]
    controller: String,
    /// PEM CA certificate(s) the controller's certificate must be signed by (an https
    /// controller needs it: only this CA is trusted, not the public ones). Without it, only an
    /// http:// controller is reached.
    #[arg(long, env = "MESHDOCTOR_CONTROLLER_CA", value_name = "FILE")]
    controller_ca: Option<PathBuf>,
    /// File holding this agent's credential: standalone, the one `meshdoctor
    /// agent-credential` made for this node; Kubernetes, the pod's projected service-account
    /// token. Read again for every request (the kubelet rotates it). None: requests carry no
    /// credential, for a controller that asks none of agents.
    #[arg(long, env = "MESHDOCTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Destinations this agent probes or loads, whatever its controller's plans say,
    /// comma-separated or repeated: CIDRs, addresses or host names (`*.suffix` for a domain).
    /// Others are refused and reported as such, never sent. Without it, any destination.
    #[arg(long, value_delimiter = ',', value_name = "CIDR|HOST")]
    allow_targets: Vec<meshdoctor_api::allow::Allowed>,
    /// Most probe packets (or application requests) per second the agent sends, all the rounds
    /// it runs at once together: a round is paced at what the others left it and what does not
    /// fit is reported as not sent. Without it, the plans' rates.
    #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    max_probe_rate: Option<u32>,
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
    /// Size of the ring buffer that carries probe events from the kernel, in KiB, at start: a
    /// power of two, at least the page size. A plan whose events would fill it in less than a
    /// second grows it (up to 64 MiB). Events that do not fit are counted and make the
    /// round's missing hooks 'unobserved' instead of loss.
    #[arg(long, default_value_t = 256, value_name = "KIB", value_parser = parse_event_buffer)]
    event_buffer_kib: u32,
    /// TCP probe paths (its own and those toward it) the observers can follow at once, at
    /// start; a plan with more grows the map (up to 65,536). A round that still has more is
    /// reported 'incomplete': its missing hooks are unobserved, not loss.
    #[arg(long, alias = "max-tcp-paths", default_value_t = DEFAULT_TCP_PATHS, value_name = "PATHS")]
    tcp_paths: u32,
    /// Keep the observers' maps at --event-buffer-kib and --tcp-paths whatever the plans need
    /// (plans otherwise grow them, reloading the observers between rounds).
    #[arg(long)]
    fixed_observer_maps: bool,
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
    match (controller_scheme(&args.controller)?, &args.controller_ca) {
        (Scheme::Https, None) => bail!(
            "--controller {} is https: --controller-ca must name the CA that signed its certificate",
            args.controller
        ),
        (Scheme::Http, Some(_)) => bail!(
            "--controller {} is plain http: give an https:// URL with --controller-ca",
            args.controller
        ),
        (Scheme::Http, None) => {
            warn!(controller = %args.controller, "the channel to the controller is not encrypted")
        }
        (Scheme::Https, Some(_)) => {}
    }
    let client = ControllerClient::new(
        &args.controller,
        args.token_file.clone(),
        args.controller_ca.as_deref(),
    )?;
    let (observer, drop_tracer) = if args.no_ebpf {
        (None, None)
    } else {
        match load_observer(
            &interfaces,
            MapSizes {
                event_buffer_bytes: args.event_buffer_kib * 1024,
                tcp_paths: args.tcp_paths,
            },
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
    agent.grow_maps = !args.fixed_observer_maps;
    agent.guard = guard::Guard::new(
        meshdoctor_api::allow::AllowList(args.allow_targets),
        args.max_probe_rate,
    );
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
    // Scrapers and kubelet probes: a few connections, each with a few seconds for its head.
    let bounds = Bounds::within_fd_limit(METRICS_CONNECTIONS, Duration::from_secs(5));
    tokio::spawn(meshdoctor_ops::http::serve(
        listener,
        app,
        bounds,
        None,
        std::future::pending(),
    ));
    info!(
        node = %agent.node,
        interfaces = ?agent.interfaces.iter().map(|i| &i.info.name).collect::<Vec<_>>(),
        timestamping = ?agent.timestamping,
        "agent started"
    );
    let client = Arc::new(client);
    tokio::select! {
        () = follow_plans(agent, client) => Ok(()),
        r = shutdown_signal() => r,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The scheme of the controller URL, any case.
fn controller_scheme(url: &str) -> anyhow::Result<Scheme> {
    match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
        Some(s) if s == "https" => Ok(Scheme::Https),
        Some(s) if s == "http" => Ok(Scheme::Http),
        _ => bail!("--controller {url}: expected an http:// or https:// URL"),
    }
}

/// Loads and attaches the TC observers, and the kfree_skb drop tracer when the kernel layout
/// resolves; without the tracer the agent still runs, its reports say `dropTracer: false`.
fn load_observer(
    interfaces: &[interfaces::Interface],
    sizes: MapSizes,
) -> anyhow::Result<(Observer, Option<DropTracer>)> {
    let tracer = DropTracer::resolve()
        .map_err(|e| warn!("kernel drop reasons unavailable: {e}"))
        .ok();
    let mut obs = Observer::load(&LoadOptions {
        drops: tracer.as_ref().map(|t| t.layout),
        event_buffer_bytes: Some(sizes.event_buffer_bytes),
        tcp_paths: Some(sizes.tcp_paths),
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
    for attempt in 0.. {
        let left = Duration::from_millis(plan.report_deadline_ms.saturating_sub(now_ms()));
        let error = match client.report(&report, left.min(REPORT_ATTEMPT)).await {
            Ok(()) => {
                info!(task = %plan.task, round = plan.round, "report posted");
                return;
            }
            Err(e) => e,
        };
        let left = plan.report_deadline_ms.saturating_sub(now_ms());
        if error.is_final() || left == 0 {
            error!(task = %plan.task, round = plan.round, "report not delivered: {error}");
            agent.metrics.report_failures.inc();
            return;
        }
        // Nanoseconds and the node's name: agents failing in the same millisecond still part.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let node = std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
            &agent.node,
        );
        let delay = retry_delay(attempt, left, (nanos ^ node) % 1000);
        agent.metrics.report_retries.inc();
        warn!(task = %plan.task, round = plan.round, "posting report: {error}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// The wait before retry `attempt` (from 0) of a report whose deadline is `left_ms` away:
/// doubling from 250 ms up to 8 s, so a controller that is restarting is not hammered, spread
/// over its upper half by `jitter` (0..1000) so that thousands of agents do not retry in step,
/// and never past the deadline (the last try comes just before it).
fn retry_delay(attempt: u32, left_ms: u64, jitter: u64) -> Duration {
    let ceiling = (250u64 << attempt.min(5)).min(8000);
    let spread = ceiling / 2 + ceiling / 2 * jitter.min(999) / 1000;
    Duration::from_millis(spread.min(left_ms.saturating_sub(50)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_url_says_its_scheme_in_any_case() {
        assert_eq!(
            controller_scheme("HTTPS://ctl:7070").unwrap(),
            Scheme::Https
        );
        assert_eq!(controller_scheme("http://ctl:7070").unwrap(), Scheme::Http);
        let e = controller_scheme("ctl:7070").unwrap_err().to_string();
        assert!(e.contains("expected an http:// or https:// URL"), "{e}");
    }

    #[test]
    fn report_retries_back_off_with_jitter_until_the_deadline() {
        let ms = |d: Duration| d.as_millis() as u64;
        let far = 600_000;
        assert_eq!(ms(retry_delay(0, far, 0)), 125);
        assert_eq!(ms(retry_delay(0, far, 999)), 249);
        assert_eq!(ms(retry_delay(3, far, 0)), 1000);
        // Capped at 8 s, however many attempts.
        assert_eq!(ms(retry_delay(40, far, 999)), 7996);
        // Never past the deadline.
        assert_eq!(ms(retry_delay(5, 1000, 500)), 950);
        assert_eq!(ms(retry_delay(5, 10, 500)), 1);
    }

    #[test]
    fn every_flag_says_its_default_values_or_absence() {
        meshdoctor_ops::assert_flags_explained(&<Args as clap::CommandFactory>::command());
    }
}
