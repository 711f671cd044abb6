//! Controller metrics (prometheus-client), documented in deploy/monitoring/README.md.
//!
//! Series grow with nodes x interfaces x families, never with node pairs: a round's pair-paths
//! are summed into their two ends (`role` source and destination), so a faulty interface shows
//! as the end with the highest loss ratio. Per-pair series are opt-in (`--pair-metrics`).

use std::{
    hash::Hash,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use foldhash::{HashMap, HashSet};
use meshdoctor_api::{
    Family as IpFamily, Finding, Packet, PathResult, PathState, RoundReport, RoundStatus,
};

use self::time_histogram::TimeHistogram;
use super::store::Usage;
use crate::{
    join::{NetworkTimes, RoundTimes, fold::StackSide},
    round::Closed,
};

mod time_histogram;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets},
    registry::Registry,
};

type GaugeF64 = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, TimeHistogram, fn() -> TimeHistogram>;

/// Histogram buckets: 14 from 10 µs by a factor of 2.5 (to 1.5 s), wide enough for a veth
/// pair's microseconds and a WAN path's hundreds of milliseconds.
fn histogram() -> TimeHistogram {
    TimeHistogram::new(exponential_buckets(1e-5, 2.5, 14))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    task: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathStateLabels {
    task: String,
    state: String,
}

/// One end of the round's pair-paths: an interface of an agent, as sender or receiver.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    #[prometheus(flatten)]
    interface: InterfaceLabels,
    /// `source` or `destination`.
    role: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SegmentLabels {
    task: String,
    network: String,
    family: String,
    segment: String,
}

/// A source interface (network RTT).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    task: String,
    node: String,
    interface: String,
    network: String,
    family: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StackLabels {
    task: String,
    node: String,
    family: String,
    /// `source` (the prober's send and receive paths) or `destination` (answering).
    side: String,
}

/// A finding's place: what an alert names.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabels {
    task: String,
    node: String,
    interface: String,
    /// The node's topology domain ("" without one): few values, for grouping.
    zone: String,
    network: String,
    family: String,
    direction: String,
    segment: String,
}

/// A domain-pair finding's place: the way from `zone` to `to_zone`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    task: String,
    zone: String,
    to_zone: String,
    network: String,
    family: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    task: String,
    src_node: String,
    dst_node: String,
    network: String,
    family: String,
}

/// Distinct drop reasons given their own series: the kernel has about a hundred
/// (`enum skb_drop_reason`).
const MAX_DROP_REASONS: usize = 256;

/// The drop reasons seen so far, which agents report as text: a reason shaped like none the
/// agent writes (a kernel name such as `NETFILTER_DROP`, `unknown`, `reason 77`) is `invalid`,
/// and beyond [`MAX_DROP_REASONS`] distinct ones a new reason is `other`, so a broken or
/// forged report cannot add series without end.
#[derive(Debug, Default)]
struct DropReasons(std::sync::Mutex<std::collections::BTreeSet<String>>);

impl DropReasons {
    fn label<'a>(&self, reason: &'a str) -> &'a str {
        let kernel_name = (1..=64).contains(&reason.len())
            && reason.starts_with(|c: char| c.is_ascii_uppercase())
            && reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let numbered = reason
            .strip_prefix("reason ")
            .is_some_and(|n| (1..=10).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
        if !(kernel_name || numbered || reason == "unknown") {
            return "invalid";
        }
        let mut seen = crate::lock(&self.0);
        if seen.contains(reason) || seen.len() < MAX_DROP_REASONS {
            seen.insert(reason.to_string());
            reason
        } else {
            "other"
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    task: String,
    node: String,
    reason: String,
    /// `request` or `reply`.
    packet: String,
}

/// Application requests of a task by outcome: `success`, `failure` or `not_sent`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    task: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// A gauge family holding the values of each task's latest round only: a series the latest
/// round did not set (a place that recovered, a pair that went away) is removed instead of
/// showing its old value forever.
struct Latest<L> {
    gauges: Family<L, GaugeF64>,
    set: Mutex<HashMap<String, HashSet<L>>>,
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> Latest<L> {
    fn new(registry: &mut Registry, name: &str, help: &str) -> Self {
        let gauges = Family::default();
        registry.register(name, help, gauges.clone());
        Self {
            gauges,
            set: Mutex::default(),
        }
    }

    fn replace(&self, task: &str, values: impl IntoIterator<Item = (L, f64)>) {
        let current: HashSet<L> = values
            .into_iter()
            .map(|(labels, value)| {
                self.gauges.get_or_create(&labels).set(value);
                labels
            })
            .collect();
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = set.insert(task.into(), current);
        let current = &set[task];
        for stale in previous.unwrap_or_default().difference(current) {
            self.gauges.remove(stale);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    rounds: Family<RoundLabels, Counter>,
    round_result: Family<TaskLabels, Gauge>,
    round_end: Family<TaskLabels, GaugeF64>,
    round_paths: Family<PathStateLabels, Gauge>,
    sent: Family<EndLabels, Counter>,
    lost: Family<EndLabels, Counter>,
    lost_by_segment: Family<SegmentLabels, Counter>,
    network_rtt: HistogramFamily<InterfaceLabels>,
    stack: HistogramFamily<StackLabels>,
    loss_ratio: Latest<PlaceLabels>,
    zone_loss_ratio: Latest<DomainLabels>,
    findings: Family<TaskLabels, Gauge<i64, AtomicI64>>,
    drops: Family<DropLabels, Counter>,
    /// The drop reasons `drops` has series for: agents name them, so they are bounded here.
    drop_reasons: DropReasons,
    /// `None` unless per-pair series were asked for.
    pair_loss: Option<Latest<PairLabels>>,
    agents: Gauge<i64, AtomicI64>,
    last_report: Family<NodeLabels, GaugeF64>,
    missed_reports: Family<NodeLabels, Counter>,
    late_reports: Counter,
    stored_bytes: Gauge<i64, AtomicI64>,
    stored_reports: Gauge<i64, AtomicI64>,
    pruned_reports: Counter,
    store_failures: Counter,
    requests: Family<RequestLabels, Counter>,
    mean_latency: Family<TaskLabels, GaugeF64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

/// Registers a new metric of a `Default` type and returns it.
fn register<M: Default + Clone + prometheus_client::registry::Metric>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn register_histograms<L>(registry: &mut Registry, name: &str, help: &str) -> HistogramFamily<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = HistogramFamily::<L>::new_with_constructor(histogram);
    registry.register(name, help, family.clone());
    family
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// `pair_metrics`: also export the loss ratio of every agent-to-agent pair-path, which
    /// grows with the square of the node count.
    pub fn new(pair_metrics: bool) -> Self {
        let mut registry = Registry::default();
        meshdoctor_ops::register_build_info(&mut registry, "controller");
        let r = &mut registry;
        Self {
            rounds: register(r, "meshdoctor_rounds", "Rounds closed, by task and status"),
            round_result: register(
                r,
                "meshdoctor_round_result",
                "1 when the task's latest round succeeded, 0 when it failed",
            ),
            round_end: register(
                r,
                "meshdoctor_round_end_timestamp_seconds",
                "When the task's latest round closed (Unix time)",
            ),
            round_paths: register(
                r,
                "meshdoctor_round_paths",
                "Pair-paths of the task's latest round by state (ok, lossy, notReported)",
            ),
            sent: register(
                r,
                "meshdoctor_probes_sent",
                "Probes attempted on pair-paths with this interface at this end (role source or \
                 destination), including those the source's own stack refused",
            ),
            lost: register(
                r,
                "meshdoctor_probes_lost",
                "Probes attempted on pair-paths with this interface at this end whose reply did \
                 not come back in time",
            ),
            lost_by_segment: register(
                r,
                "meshdoctor_probes_lost_by_segment",
                "Lost probes by the path segment that lost them (srcSend, forward, dstStack, \
                 reply, srcReceive, beyond, unobserved)",
            ),
            network_rtt: register_histograms(
                r,
                "meshdoctor_network_rtt_seconds",
                "Network round trip of probes from this interface: the source's kernel RTT \
                 minus the destination's stack time (probes seen at all four hooks)",
            ),
            stack: register_histograms(
                r,
                "meshdoctor_stack_seconds",
                "Time inside a node's stack: answering a probe (side destination: ingress to \
                 egress hook) or sending and receiving one (side source: user-space RTT minus \
                 kernel RTT)",
            ),
            loss_ratio: Latest::new(
                r,
                "meshdoctor_interface_loss_ratio",
                "Estimated loss ratio of each faulty interface (place) the task's latest round \
                 localized, over the packets it loses; absent when the place is healthy",
            ),
            zone_loss_ratio: Latest::new(
                r,
                "meshdoctor_zone_loss_ratio",
                "Estimated loss ratio on the way from one topology domain to another, where the \
                 task's latest round found loss that follows domains rather than one interface; \
                 absent when healthy",
            ),
            findings: register(
                r,
                "meshdoctor_interface_findings",
                "Findings (faulty interfaces and domain pairs) of the latest round of each task (0 when \
                 healthy)",
            ),
            drops: register(
                r,
                "meshdoctor_probe_drops",
                "Lost probe packets a kernel dropped (skb:kfree_skb), by dropping node, drop \
                 reason and packet (request, reply)",
            ),
            drop_reasons: DropReasons::default(),
            pair_loss: pair_metrics.then(|| {
                Latest::new(
                    r,
                    "meshdoctor_pair_loss_ratio",
                    "Loss ratio of each agent-to-agent pair-path of the task's latest round \
                     (opt-in: --pair-metrics)",
                )
            }),
            agents: register(r, "meshdoctor_agents", "Registered agents"),
            last_report: register(
                r,
                "meshdoctor_agent_last_report_timestamp_seconds",
                "When the agent's latest round report arrived (Unix time)",
            ),
            missed_reports: register(
                r,
                "meshdoctor_agent_missed_reports",
                "Rounds that closed without this expected agent's report",
            ),
            late_reports: register(
                r,
                "meshdoctor_reports_late",
                "Agent reports that arrived for no open round (late or unknown)",
            ),
            stored_bytes: register(
                r,
                "meshdoctor_report_store_bytes",
                "Bytes of the stored round reports, after the latest write and its pruning",
            ),
            stored_reports: register(
                r,
                "meshdoctor_report_store_reports",
                "Stored round reports, after the latest write and its pruning",
            ),
            pruned_reports: register(
                r,
                "meshdoctor_report_store_pruned",
                "Stored round reports removed by the retention (--keep-rounds, --keep-for, \
                 --keep-bytes)",
            ),
            store_failures: register(
                r,
                "meshdoctor_report_store_failures",
                "Round reports that could not be stored (a full or failing disk): their rounds \
                 closed, but GET of the round answers 404",
            ),
            requests: register(
                r,
                "meshdoctor_app_requests",
                "AppHttpHealthy and NetDns requests of agents that reported, by task and result \
                 (success, failure, not_sent: planned but not sent by the agent)",
            ),
            mean_latency: register(
                r,
                "meshdoctor_app_mean_latency_seconds",
                "Mean latency of the successful requests of each application task's latest \
                 round; absent when none succeeded",
            ),
            registry,
        }
    }

    pub fn round_closed(&self, closed: &Closed) {
        let Closed { report, times } = closed;
        let task = TaskLabels {
            task: report.task.clone(),
        };
        let (status, result) = match report.status {
            RoundStatus::Succeed => ("succeed", 1),
            RoundStatus::Fail => ("fail", 0),
        };
        self.rounds
            .get_or_create(&RoundLabels {
                task: report.task.clone(),
                status: status.into(),
            })
            .inc();
        self.round_result.get_or_create(&task).set(result);
        self.round_end
            .get_or_create(&task)
            .set(report.end_ms as f64 / 1000.0);
        for node in &report.expected_agents {
            let missed = self
                .missed_reports
                .get_or_create(&NodeLabels { node: node.clone() });
            // Sorted: a binary search keeps a round of thousands of agents linear.
            if report.not_reported.binary_search(node).is_ok() {
                missed.inc();
            }
        }
        match &report.app {
            Some(app) => self.app_round_closed(&task, app),
            None => self.probe_round_closed(report, times),
        }
    }

    fn app_round_closed(&self, task: &TaskLabels, app: &meshdoctor_api::AppRoundReport) {
        let s = &app.summary;
        for (result, n) in [
            ("success", s.successes),
            ("failure", s.failures),
            ("not_sent", s.not_sent),
        ] {
            self.requests
                .get_or_create(&RequestLabels {
                    task: task.task.clone(),
                    result: result.into(),
                })
                .inc_by(n);
        }
        match s.mean_latency_ms {
            Some(ms) => {
                self.mean_latency.get_or_create(task).set(ms / 1000.0);
            }
            None => {
                self.mean_latency.remove(task);
            }
        }
    }

    fn probe_round_closed(&self, report: &RoundReport, times: &RoundTimes) {
        let task = report.task.as_str();
        let mut sums = RoundSums {
            task,
            ..RoundSums::default()
        };
        for (i, p) in report.paths.iter().enumerate() {
            sums.add(self, p, times.network.get(i).and_then(Option::as_ref));
        }
        // Stack times come added up by node, family and side: one series each.
        for (node, t) in &times.nodes {
            for (&(family, side), h) in &t.stack {
                let side = match side {
                    StackSide::Source => "source",
                    StackSide::Destination => "destination",
                };
                let labels = StackLabels {
                    task: task.into(),
                    node: node.clone(),
                    family: family.to_string(),
                    side: side.into(),
                };
                self.stack.get_or_create(&labels).add(h, 0.0);
            }
        }
        // Every state, 0 when no path is in it.
        for state in ["ok", "lossy", "notReported"] {
            self.round_paths
                .get_or_create(&PathStateLabels {
                    task: task.into(),
                    state: state.into(),
                })
                .set(sums.states.get(state).copied().unwrap_or(0));
        }
        // Created at 0 next to each other, so that `lost / sent` exists for every end.
        for ((end, role), (attempted, lost)) in sums.ends {
            let labels = EndLabels {
                interface: end.labels(task),
                role: role.into(),
            };
            self.sent.get_or_create(&labels).inc_by(attempted);
            self.lost.get_or_create(&labels).inc_by(lost);
        }
        for ((network, family, segment), n) in sums.segments {
            let labels = SegmentLabels {
                task: task.into(),
                network: network.into(),
                family: family.to_string(),
                segment: segment.into(),
            };
            self.lost_by_segment.get_or_create(&labels).inc_by(n);
        }
        for ((node, reason, packet), n) in sums.drops {
            let labels = DropLabels {
                task: task.into(),
                node: node.into(),
                reason: self.drop_reasons.label(reason).into(),
                packet: packet.to_string(),
            };
            self.drops.get_or_create(&labels).inc_by(n);
        }
        if let Some(pair_loss) = &self.pair_loss {
            pair_loss.replace(
                task,
                sums.pairs
                    .into_iter()
                    .filter(|(_, (attempted, _))| *attempted > 0)
                    .map(|((src, dst, network, family), (attempted, lost))| {
                        let labels = PairLabels {
                            task: task.into(),
                            src_node: src.into(),
                            dst_node: dst.into(),
                            network: network.into(),
                            family: family.to_string(),
                        };
                        (labels, lost as f64 / attempted as f64)
                    }),
            );
        }
        self.findings
            .get_or_create(&TaskLabels { task: task.into() })
            .set(report.findings.len() as i64);
        let (across, at): (Vec<&Finding>, Vec<&Finding>) =
            report.findings.iter().partition(|f| f.to_zone.is_some());
        self.zone_loss_ratio.replace(
            task,
            across.iter().map(|f| {
                let labels = DomainLabels {
                    task: task.into(),
                    zone: f.zone.clone(),
                    to_zone: f.to_zone.clone().unwrap_or_default(),
                    network: f.network.clone(),
                    family: f.family.to_string(),
                };
                (labels, f.loss_ratio)
            }),
        );
        self.loss_ratio.replace(
            task,
            at.iter().map(|f| {
                let labels = PlaceLabels {
                    task: task.into(),
                    node: f.node.clone(),
                    interface: f.interface.clone(),
                    zone: f.zone.clone(),
                    network: f.network.clone(),
                    family: f.family.to_string(),
                    direction: f.direction.to_string(),
                    segment: f.segment.to_string(),
                };
                (labels, f.loss_ratio)
            }),
        );
    }

    pub fn set_agents(&self, n: usize) {
        self.agents.set(n as i64);
    }

    /// An agent's report arrived (in time for its round).
    pub fn report_received(&self, node: &str) {
        self.last_report
            .get_or_create(&NodeLabels { node: node.into() })
            .set(now_s());
    }

    pub fn late_report(&self) {
        self.late_reports.inc();
    }

    /// A report was stored; the store is now `usage`.
    pub fn stored(&self, usage: Usage) {
        self.stored_bytes
            .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
        self.stored_reports
            .set(i64::try_from(usage.reports).unwrap_or(i64::MAX));
        self.pruned_reports.inc_by(usage.pruned);
    }

    pub fn store_failed(&self) {
        self.store_failures.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// One interface of one agent in a round, borrowed from the report.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct End<'a> {
    node: &'a str,
    interface: &'a str,
    network: &'a str,
    family: IpFamily,
}

impl<'a> End<'a> {
    fn source(p: &'a PathResult) -> Self {
        Self {
            node: &p.src_node,
            interface: &p.src_interface,
            network: &p.network,
            family: p.family,
        }
    }

    /// The ends of a pair-path: its source interface, and its destination interface when the
    /// destination is an agent.
    fn of_path(p: &'a PathResult) -> impl Iterator<Item = (Self, &'static str)> {
        let dst = (!p.external).then(|| {
            let end = Self {
                node: &p.dst_node,
                interface: &p.dst_interface,
                ..Self::source(p)
            };
            (end, "destination")
        });
        std::iter::once((Self::source(p), "source")).chain(dst)
    }

    fn labels(&self, task: &str) -> InterfaceLabels {
        InterfaceLabels {
            task: task.into(),
            node: self.node.into(),
            interface: self.interface.into(),
            network: self.network.into(),
            family: self.family.to_string(),
        }
    }
}

/// A round's pair-paths summed under keys borrowed from the report, so that a series' labels
/// are built once per round rather than once per path, and each histogram is looked up once.
#[derive(Default)]
struct RoundSums<'a> {
    task: &'a str,
    /// Paths by state.
    states: HashMap<&'static str, i64>,
    /// (end, role) -> (probes attempted, lost).
    ends: HashMap<(End<'a>, &'static str), (u64, u64)>,
    segments: HashMap<(&'a str, IpFamily, &'static str), u64>,
    /// (src node, dst node, network, family) -> (probes attempted, lost); with pair metrics.
    pairs: HashMap<(&'a str, &'a str, &'a str, IpFamily), (u64, u64)>,
    /// (dropping node, reason, packet) -> count.
    drops: HashMap<(&'a str, &'a str, Packet), u64>,
    /// Network RTT histograms by source interface.
    rtt: HashMap<End<'a>, TimeHistogram>,
}

impl<'a> RoundSums<'a> {
    fn add(&mut self, m: &Metrics, p: &'a PathResult, network: Option<&NetworkTimes>) {
        let state = match p.state {
            PathState::Ok => "ok",
            PathState::Lossy => "lossy",
            PathState::NotReported => "notReported",
        };
        *self.states.entry(state).or_default() += 1;
        if p.state == PathState::NotReported {
            // Nothing is known of a path whose source did not report.
            return;
        }
        let attempted = u64::from(p.sent + p.send_failed);
        let lost = u64::from(p.lost);
        for end in End::of_path(p) {
            let counts = self.ends.entry(end).or_default();
            counts.0 += attempted;
            counts.1 += lost;
        }
        for (n, segment) in p.segments.named() {
            *self
                .segments
                .entry((&p.network, p.family, segment))
                .or_default() += u64::from(n);
        }
        if m.pair_loss.is_some() && !p.external {
            let counts = self
                .pairs
                .entry((&p.src_node, &p.dst_node, &p.network, p.family))
                .or_default();
            counts.0 += attempted;
            counts.1 += lost;
        }
        for d in &p.drops {
            *self
                .drops
                .entry((&d.node, &d.reason, d.packet))
                .or_default() += u64::from(d.count);
        }
        // Network RTT at the source interface, of the probes whose hooks measured it.
        if let Some(network) = network {
            let (task, src) = (self.task, End::source(p));
            self.rtt
                .entry(src)
                .or_insert_with(|| m.network_rtt.get_or_create(&src.labels(task)).clone())
                .add(&network.kernel_rtt, network.less_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{DropCount, Family as IpFamily, Finding, LossSegments, Packet, ProbeDrop};

    use super::*;
    use crate::join::tests::{join_reports, mk_plans, mk_report, mk_reports};

    /// A failed round of `task` with findings on `nodes`, whose path 0 (node-1 to node-2)
    /// lost probes 3 and 4 to node-2's netfilter.
    fn mk_lossy_round(task: &str, round: u32, nodes: &[&str]) -> Closed {
        let plans = mk_plans();
        let mut reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let drop = |seq| ProbeDrop {
            path: 0,
            seq,
            packet: Packet::Request,
            reason: "NETFILTER_DROP".into(),
            location: "nft_do_chain+0x4c1".into(),
            interface: None,
        };
        let node2 = reports.get_mut("node-2").unwrap();
        node2.drops = vec![drop(3), drop(4)];
        // Dropped on the way in: node-2 never answered them.
        let answered = node2.answered.iter_mut().find(|a| a.path == 0).unwrap();
        answered.egress_missed = vec![3, 4];
        let mut report = RoundReport::test(task, round, RoundStatus::Fail);
        report.expected_agents = vec!["node-1".into(), "node-2".into()];
        let joined = join_reports(&plans, &reports);
        report.paths = joined.paths;
        report.findings = nodes.iter().map(|n| Finding::test(n)).collect();
        Closed {
            report,
            times: joined.times,
        }
    }

    /// A round with no path times (an application round, a test report).
    fn untimed(report: RoundReport) -> Closed {
        Closed {
            report,
            times: Default::default(),
        }
    }

    fn ratio_line(task: &str, node: &str) -> String {
        format!(
            "meshdoctor_interface_loss_ratio{{task=\"{task}\",node=\"{node}\",interface=\"net1\",\
             zone=\"\",network=\"sec\",family=\"ipv4\",direction=\"ingress\",segment=\"link\"}} 0.2\n"
        )
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    /// The value of the one series `name{labels}` (labels in exposition order).
    fn value(text: &str, series: &str) -> f64 {
        let prefix = format!("{series} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"));
        line[prefix.len()..].parse().unwrap()
    }

    #[test]
    fn findings_follow_the_latest_round_and_drops_add_up() {
        let m = Metrics::default();
        m.round_closed(&mk_lossy_round("mesh", 1, &["node-3", "node-4"]));
        m.round_closed(&mk_lossy_round("other", 1, &["node-4"]));
        let drops = "meshdoctor_probe_drops_total{task=\"mesh\",node=\"node-2\",\
                     reason=\"NETFILTER_DROP\",packet=\"request\"}";
        let text = m.encode().unwrap();
        assert_lines(
            &text,
            &[
                &ratio_line("mesh", "node-3"),
                &ratio_line("mesh", "node-4"),
                &ratio_line("other", "node-4"),
                "meshdoctor_interface_findings{task=\"mesh\"} 2\n",
                &format!("{drops} 2\n"),
            ],
        );

        // node-4 recovered in mesh: its series goes, other's stays.
        m.round_closed(&mk_lossy_round("mesh", 2, &["node-3"]));
        let text = m.encode().unwrap();
        assert!(!text.contains(&ratio_line("mesh", "node-4")), "{text}");
        assert_lines(
            &text,
            &[
                &ratio_line("mesh", "node-3"),
                &ratio_line("other", "node-4"),
                "meshdoctor_interface_findings{task=\"mesh\"} 1\n",
                &format!("{drops} 4\n"),
            ],
        );

        m.round_closed(&untimed(RoundReport::test("mesh", 3, RoundStatus::Succeed)));
        let text = m.encode().unwrap();
        assert!(!text.contains("task=\"mesh\",node=\"node-3\""), "{text}");
        assert!(text.contains("meshdoctor_interface_findings{task=\"mesh\"} 0\n"));
    }

    /// Drop reasons come from agents: a malformed one is `invalid`, and past the bound new
    /// ones share `other`, so a forged report cannot add series without end.
    #[test]
    fn drop_reasons_from_agents_are_bounded() {
        let r = DropReasons::default();
        for ok in ["NETFILTER_DROP", "NO_SOCKET", "unknown", "reason 77"] {
            assert_eq!(r.label(ok), ok);
        }
        for bad in [
            "",
            "netfilter",
            "NETFILTER DROP",
            "reason x",
            "A\"}",
            &"X".repeat(65),
        ] {
            assert_eq!(r.label(bad), "invalid", "{bad:?}");
        }
        for i in 0..MAX_DROP_REASONS {
            r.label(&format!("FORGED_{i}"));
        }
        assert_eq!(r.label("FORGED_NEW"), "other");
        // Those already seen keep their series.
        assert_eq!(r.label("NETFILTER_DROP"), "NETFILTER_DROP");
    }

    #[test]
    fn a_domain_pair_finding_is_a_zone_series_not_an_interface_one() {
        let m = Metrics::default();
        let mut round = mk_lossy_round("mesh", 1, &["node-3"]);
        round.report.findings[0].zone = "zone-b".into();
        let mut across = Finding::test("");
        across.interface.clear();
        (across.zone, across.to_zone) = ("zone-a".into(), Some("zone-b".into()));
        round.report.findings.push(across);
        m.round_closed(&round);
        let text = m.encode().unwrap();
        assert_lines(
            &text,
            &[
                "meshdoctor_zone_loss_ratio{task=\"mesh\",zone=\"zone-a\",to_zone=\"zone-b\",\
                 network=\"sec\",family=\"ipv4\"} 0.2\n",
                &ratio_line("mesh", "node-3").replace("zone=\"\"", "zone=\"zone-b\""),
                "meshdoctor_interface_findings{task=\"mesh\"} 2\n",
            ],
        );
        assert!(!text.contains("node=\"\""), "{text}");
        // Gone with the next healthy round.
        m.round_closed(&untimed(RoundReport::test("mesh", 2, RoundStatus::Succeed)));
        assert!(!m.encode().unwrap().contains("zone-a"));
    }

    #[test]
    fn both_ends_of_a_lossy_path_count_its_loss_and_the_round_its_segments() {
        let m = Metrics::default();
        let round = mk_lossy_round("mesh", 1, &[]);
        let probes = u64::from(round.report.paths[0].sent);
        assert_eq!(round.report.paths[0].lost, 2);
        m.round_closed(&round);
        let text = m.encode().unwrap();
        let end = |metric: &str, node: &str, role: &str| {
            let series = format!(
                "meshdoctor_probes_{metric}_total{{task=\"mesh\",node=\"{node}\",interface=\"eth0\",\
                 network=\"pod\",family=\"ipv4\",role=\"{role}\"}}"
            );
            value(&text, &series)
        };
        // node-1 -> node-2 lost 2 replies; node-2 -> node-1 lost none.
        assert_eq!(end("sent", "node-1", "source"), probes as f64);
        assert_eq!(end("lost", "node-1", "source"), 2.0);
        assert_eq!(end("lost", "node-2", "destination"), 2.0);
        assert_eq!(end("lost", "node-2", "source"), 0.0);
        assert_eq!(end("lost", "node-1", "destination"), 0.0);
        let segment = |name: &str| {
            value(
                &text,
                &format!(
                    "meshdoctor_probes_lost_by_segment_total{{task=\"mesh\",network=\"pod\",\
                     family=\"ipv4\",segment=\"{name}\"}}"
                ),
            )
        };
        // mk_report's observers dropped events, so the lost replies cannot be placed.
        assert_eq!(segment("unobserved"), 2.0);
        for name in [
            "srcSend",
            "forward",
            "dstStack",
            "reply",
            "srcReceive",
            "beyond",
        ] {
            assert_eq!(segment(name), 0.0, "{name}");
        }
        assert_lines(
            &text,
            &[
                "meshdoctor_round_result{task=\"mesh\"} 0\n",
                "meshdoctor_round_paths{task=\"mesh\",state=\"lossy\"} 1\n",
                "meshdoctor_round_paths{task=\"mesh\",state=\"ok\"} 1\n",
                "meshdoctor_round_paths{task=\"mesh\",state=\"notReported\"} 0\n",
                "meshdoctor_rounds_total{task=\"mesh\",status=\"fail\"} 1\n",
            ],
        );
    }

    #[test]
    fn network_rtt_and_stack_times_land_in_their_buckets() {
        let m = Metrics::default();
        let round = mk_lossy_round("mesh", 1, &[]);
        let received: u32 = round.report.paths.iter().map(|p| p.received).sum();
        m.round_closed(&round);
        let text = m.encode().unwrap();
        let rtt = |le: &str| {
            format!(
                "meshdoctor_network_rtt_seconds_bucket{{le=\"{le}\",task=\"mesh\",node=\"node-1\",\
                 interface=\"eth0\",network=\"pod\",family=\"ipv4\"}}"
            )
        };
        // mk_report: kernel RTT 800 µs, user RTT 1 ms, the destination's stack 100 µs, so
        // the network RTT is 700 µs (bucket 977 µs, not 391 µs) and the source's stack 200 µs.
        let node1 = u64::from(
            round
                .report
                .paths
                .iter()
                .find(|p| p.src_node == "node-1")
                .unwrap()
                .received,
        );
        assert_eq!(value(&text, &rtt("0.0009765625")), node1 as f64);
        assert_eq!(value(&text, &rtt("0.000390625")), 0.0);
        let stack = |node: &str, side: &str| {
            format!(
                "meshdoctor_stack_seconds_count{{task=\"mesh\",node=\"{node}\",family=\"ipv4\",\
                 side=\"{side}\"}}"
            )
        };
        let counts: f64 = ["node-1", "node-2"]
            .iter()
            .map(|n| value(&text, &stack(n, "destination")))
            .sum();
        // Every probe that reached its destination was answered there: lost replies too.
        assert!(counts >= f64::from(received), "{counts} < {received}");
        assert_eq!(
            value(&text, &stack("node-1", "source")),
            node1 as f64,
            "{text}"
        );
        let sum = value(
            &text,
            "meshdoctor_stack_seconds_sum{task=\"mesh\",node=\"node-1\",family=\"ipv4\",side=\"source\"}",
        );
        assert!((sum - node1 as f64 * 200e-6).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn pair_series_only_when_asked_and_only_for_the_latest_round() {
        let pair = "meshdoctor_pair_loss_ratio{task=\"mesh\",src_node=\"node-1\",\
                    dst_node=\"node-2\",network=\"pod\",family=\"ipv4\"}";
        let off = Metrics::default();
        off.round_closed(&mk_lossy_round("mesh", 1, &[]));
        assert!(!off.encode().unwrap().contains("meshdoctor_pair_loss_ratio"));

        let on = Metrics::new(true);
        let round = mk_lossy_round("mesh", 1, &[]);
        let ratio = 2.0 / f64::from(round.report.paths[0].sent);
        on.round_closed(&round);
        let text = on.encode().unwrap();
        assert_eq!(value(&text, pair), ratio);
        // A round whose paths are gone (e.g. the node left) removes the pair.
        on.round_closed(&untimed(RoundReport::test("mesh", 2, RoundStatus::Succeed)));
        assert!(!on.encode().unwrap().contains(pair));
    }

    #[test]
    fn agents_that_did_not_report_are_counted_by_node() {
        let m = Metrics::default();
        let mut round = RoundReport::test("mesh", 1, RoundStatus::Fail);
        round.not_reported = vec!["b".into()];
        let round = untimed(round);
        m.round_closed(&round);
        m.round_closed(&round);
        m.report_received("a");
        let text = m.encode().unwrap();
        assert_lines(
            &text,
            &[
                "meshdoctor_agent_missed_reports_total{node=\"b\"} 2\n",
                "meshdoctor_agent_missed_reports_total{node=\"a\"} 0\n",
            ],
        );
        let seen = value(
            &text,
            "meshdoctor_agent_last_report_timestamp_seconds{node=\"a\"}",
        );
        assert!((seen - now_s()).abs() < 60.0, "{seen}");
    }

    #[test]
    fn app_rounds_count_requests_not_probes() {
        let m = Metrics::default();
        let mut round = RoundReport::test("web", 1, RoundStatus::Fail);
        round.app = Some(meshdoctor_api::AppRoundReport {
            kind: meshdoctor_api::TaskKind::AppHttpHealthy,
            target: "GET http://web/".into(),
            expected: "200".into(),
            summary: meshdoctor_api::AppSummary {
                requests: 38,
                successes: 30,
                failures: 8,
                not_sent: 2,
                mean_latency_ms: Some(1.5),
                ..Default::default()
            },
            agents: vec![],
        });
        m.round_closed(&untimed(round.clone()));
        let text = m.encode().unwrap();
        assert_lines(
            &text,
            &[
                "meshdoctor_app_requests_total{task=\"web\",result=\"success\"} 30\n",
                "meshdoctor_app_requests_total{task=\"web\",result=\"failure\"} 8\n",
                "meshdoctor_app_requests_total{task=\"web\",result=\"not_sent\"} 2\n",
                "meshdoctor_app_mean_latency_seconds{task=\"web\"} 0.0015\n",
                "meshdoctor_round_result{task=\"web\"} 0\n",
            ],
        );
        assert!(
            !text.contains("meshdoctor_probes_sent_total{task=\"web\""),
            "{text}"
        );
        round.app.as_mut().unwrap().summary.mean_latency_ms = None;
        m.round_closed(&untimed(round));
        assert!(
            !m.encode()
                .unwrap()
                .contains("meshdoctor_app_mean_latency_seconds{")
        );
    }

    /// A round of a mesh of `nodes` nodes with interfaces eth0 (network default) and net1
    /// (network sec), both families: each node probes its next `peers` nodes on every
    /// interface and family, which gives every interface both roles as a full mesh would (the
    /// series are per interface, not per pair). node-1's net1 loses a reply of every path
    /// toward it, dropped by its netfilter.
    fn mk_mesh_round(nodes: usize, peers: usize) -> Closed {
        let node = |i: usize| format!("node-{}", i % nodes + 1);
        let (mut paths, mut times) = (Vec::new(), RoundTimes::default());
        for src in 0..nodes {
            for dst in (1..=peers).map(|k| src + k) {
                for (interface, network) in [("eth0", "default"), ("net1", "sec")] {
                    for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
                        let faulty = interface == "net1" && dst % nodes == 0;
                        let path = PathResult::test(
                            &node(src),
                            &node(dst),
                            (interface, network),
                            family,
                            10,
                        );
                        paths.push(PathResult {
                            path: paths.len() as meshdoctor_api::PathId,
                            state: if faulty {
                                PathState::Lossy
                            } else {
                                PathState::Ok
                            },
                            received: 10 - u32::from(faulty),
                            lost: u32::from(faulty),
                            loss_ratio: f64::from(u32::from(faulty)) / 10.0,
                            segments: LossSegments {
                                forward: u32::from(faulty),
                                ..LossSegments::default()
                            },
                            drops: faulty
                                .then(|| DropCount {
                                    node: node(dst),
                                    packet: Packet::Request,
                                    reason: "NETFILTER_DROP".into(),
                                    location: "nft_do_chain".into(),
                                    count: 1,
                                })
                                .into_iter()
                                .collect(),
                            ..path
                        });
                        let kernel_rtt = (0..9).map(|seq| 80_000 + seq * 10_000).collect();
                        times.network.push(Some(NetworkTimes {
                            kernel_rtt,
                            less_ns: 20_000.0,
                        }));
                        for (n, side, ns) in [
                            (node(src), StackSide::Source, 40_000),
                            (node(dst), StackSide::Destination, 20_000),
                        ] {
                            let node_times = times.nodes.entry(n).or_default();
                            let stack = node_times.stack.entry((family, side)).or_default();
                            stack.record_n(ns, 9);
                        }
                    }
                }
            }
        }
        let mut report = RoundReport::test("mesh", 1, RoundStatus::Fail);
        report.expected_agents = (0..nodes).map(node).collect();
        report.paths = paths;
        let mut finding = Finding::test("node-1");
        finding.family = IpFamily::Ipv4;
        report.findings = vec![finding];
        Closed { report, times }
    }

    fn series(m: &Metrics) -> usize {
        let text = m.encode().unwrap();
        text.lines().filter(|l| !l.starts_with('#')).count()
    }

    /// The controller's series for 1,000 nodes with two interfaces and two families, printed
    /// for the record (`cargo test -p meshdoctor-controller series_grow -- --nocapture`), and
    /// held to growing with the node count, not its square.
    #[test]
    fn series_grow_with_nodes_not_pairs() {
        let count = |nodes: usize, peers: usize, pairs: bool| {
            let m = Metrics::new(pairs);
            m.round_closed(&mk_mesh_round(nodes, peers));
            series(&m)
        };
        let (n500, n1000) = (count(500, 2, false), count(1000, 2, false));
        // More peers per node adds no series: they are per interface.
        assert_eq!(count(1000, 4, false), n1000);
        let growth = n1000 as f64 / n500 as f64;
        assert!((1.9..=2.1).contains(&growth), "{n500} -> {n1000}");
        let with_pairs = count(1000, 4, true);
        eprintln!(
            "controller series, one NetReach task, 1000 nodes x 2 interfaces x 2 families: \
             {n1000} ({:.1} per node); with --pair-metrics and 4 peers per node: {with_pairs} \
             (a full mesh adds 1000 x 999 x 2 x 2 = 3,996,000 pair series)",
            n1000 as f64 / 1000.0
        );
        assert_eq!(with_pairs - n1000, 1000 * 4 * 2 * 2);
    }
}
