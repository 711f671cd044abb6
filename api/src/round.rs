//! The controller's joined view of one round: every directed pair-path with both ends' data,
//! judged against the task's `expect`.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    Family, LoadStats, Name, Packet, PathId, PlannedTarget, RttStats, TaskKind, kinds::MeshMode,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RoundStatus {
    Succeed,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundReport {
    pub task: String,
    pub round: u32,
    pub round_tag: u32,
    pub status: RoundStatus,
    /// Why the round failed, one sentence each; empty when it succeeded.
    pub failure_reasons: Vec<String>,
    /// Scheduled start, Unix milliseconds.
    pub start_ms: u64,
    /// When the controller closed the round, Unix milliseconds.
    pub end_ms: u64,
    /// Nodes that had a plan in this round.
    pub expected_agents: Vec<String>,
    /// Nodes whose report did not arrive by the deadline. Their paths are `notReported`, never
    /// counted as loss; the other agents' data is kept.
    pub not_reported: Vec<String>,
    pub summary: RoundSummary,
    /// Interfaces that explain the round's loss, worst first; empty for a healthy mesh.
    #[serde(default)]
    pub findings: Vec<Finding>,
    pub paths: Vec<PathResult>,
    /// Application rounds (AppHttpHealthy, NetDns): every agent's load and the aggregate.
    /// `None` for NetReach, whose reports are unchanged by this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRoundReport>,
    /// NetReach: the mesh the round probed (its shape resolved for the roster and budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshSummary>,
    /// What the round did although it should not have, one sentence each (a mesh above the
    /// probe budget); the round still succeeds or fails on its results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The agents' topology domains (the value of the task's `mesh.topologyKey` label), by
    /// node; agents without the label are not here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, String>,
}

/// The mesh a NetReach round probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSummary {
    /// `full`, `sampled` or `topology`, as `auto` resolved.
    pub mode: MeshMode,
    /// Sampled: peers per agent, network and family; topology: the same across domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u32>,
    /// Rounds until every pair is probed once: 1 for the full mesh.
    pub coverage_rounds: u32,
    /// The most probe packets per second (sent and received) the plans asked of one agent.
    pub max_agent_rate: u64,
    /// The controller's probe budget (probe packets per second per agent).
    pub budget: u32,
}

/// The application part of a round report: kdoctor's per-agent `roundTaskDetail` and an
/// aggregate over the agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRoundReport {
    pub kind: TaskKind,
    /// The target, as the plans named it (e.g. `GET http://192.0.2.254:8080/`).
    pub target: String,
    /// Replies that count as success: `200`, `2xx or 3xx`, `NOERROR`.
    pub expected: String,
    pub summary: AppSummary,
    /// One entry per agent that had a plan, sorted by node.
    pub agents: Vec<AgentApp>,
}

/// Where one agent's load stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentAppState {
    /// Every planned request was sent and succeeded.
    Ok,
    /// Some requests failed or were not sent.
    Failures,
    /// The agent could not run the load at all (see `error`).
    Error,
    /// No report by the deadline: nothing is known, and nothing is counted.
    NotReported,
}

/// One agent's part of an application round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentApp {
    pub node: String,
    pub state: AgentAppState,
    /// Why it could not run the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// successes / requests; `None` without requests.
    pub success_rate: Option<f64>,
    /// Its failed requests in one phrase, e.g. `40 of 40 requests failed: codes 404 (40),
    /// expected 200`; `None` without failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<String>,
    /// What it measured; `None` when it did not report.
    pub stats: Option<LoadStats>,
}

/// Application requests over every agent that reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    /// Agents with a plan.
    pub agents: u32,
    /// Agents whose report arrived.
    pub reported: u32,
    /// Requests the pacing called for (qps x duration per agent), over the reporting agents.
    pub planned: u64,
    pub requests: u64,
    pub successes: u64,
    /// requests - successes: errors and replies with an unexpected code.
    pub failures: u64,
    /// Planned requests the agents did not send (their own shortfall, apart from failures).
    pub not_sent: u64,
    /// successes / requests; `None` when no request was sent.
    pub success_rate: Option<f64>,
    /// Mean latency of the successful requests of every agent, in ms.
    pub mean_latency_ms: Option<f64>,
    /// Fastest and slowest successful request of any agent, in µs.
    pub min_latency_us: Option<u64>,
    pub max_latency_us: Option<u64>,
    /// Requests per second, summed over the agents.
    pub tps: f64,
    /// Replies by HTTP status or DNS rcode, summed.
    pub codes: BTreeMap<String, u64>,
    /// Requests without a usable reply by error kind, summed.
    pub errors: BTreeMap<String, u64>,
    /// Agents with the most failed or unsent requests, worst first (at most 3).
    pub worst_agents: Vec<String>,
}

/// The round's totals. In an application round the counts are requests, not probes: `sent` is
/// requests sent, `received` successes, `lost` failures, `mean_rtt_ms` the mean latency of
/// successes, and `paths` 0 (the detail is in [`RoundReport::app`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundSummary {
    pub paths: u32,
    pub lossy_paths: u32,
    /// Probes the sources attempted, including those whose `sendto` failed (which are lost):
    /// so that `lost / sent` is the round's loss.
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// received / sent over the paths whose source reported.
    pub success_rate: f64,
    /// Mean user-space RTT over received probes, in ms (what an application sees).
    pub mean_rtt_ms: Option<f64>,
    /// Probe events the observers dropped (full ring buffer), summed over agents.
    pub unobserved_events: u64,
    /// Kernel RTT over every probe of the round that came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_rtt: Option<RttStats>,
    /// User-space RTT over every probe of the round that came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_rtt: Option<RttStats>,
}

/// Where a pair-path stands after the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathState {
    /// Every probe sent came back.
    Ok,
    /// Some probes were lost.
    Lossy,
    /// The source agent did not report: nothing is known.
    NotReported,
}

/// One directed pair-path of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathResult {
    pub path: PathId,
    pub src_node: Name,
    pub dst_node: Name,
    pub src_interface: Name,
    pub dst_interface: Name,
    pub network: Name,
    pub family: Family,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    /// Toward a listed address, not an agent: `dst_node` is the address and nobody reports
    /// the destination's side.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    pub state: PathState,
    pub planned: u32,
    pub sent: u32,
    pub received: u32,
    /// Probes lost, including `send_failed`: a probe the source's own stack refused is lost
    /// there, not merely unsent.
    pub lost: u32,
    /// lost / (sent + send_failed): over every probe the source attempted.
    pub loss_ratio: f64,
    /// Probes whose `sendto` failed (e.g. EPERM from an nftables OUTPUT drop): lost at
    /// `srcSend`, counted in `lost`. Probes neither sent nor failed (the agent stopped early)
    /// are in neither.
    #[serde(default)]
    pub send_failed: u32,
    /// Whether the destination agent reported its side (dst hooks).
    pub dst_reported: bool,
    /// Probes seen at each hook: src egress, dst ingress, dst egress, src ingress.
    pub hooks: HookCounts,
    /// Where the lost probes were lost: the first hook that did not see each one; absent
    /// when nothing was lost.
    #[serde(default, skip_serializing_if = "LossSegments::is_none")]
    pub segments: LossSegments,
    /// Kernel RTT: src ingress - src egress.
    pub kernel_rtt: Option<RttStats>,
    /// User-space RTT: socket receive - send.
    pub user_rtt: Option<RttStats>,
    /// Network RTT: kernel RTT less the destination's mean stack time.
    pub network_rtt: Option<RttStats>,
    /// Destination stack time: dst egress - dst ingress.
    pub dst_stack: Option<RttStats>,
    /// Kernel drops of this path's lost probes (kfree_skb), by node, packet, reason and
    /// location. Drops of probes that came back anyway (e.g. a raw-socket clone) are not here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DropCount>,
    /// What the source's sockets said of its lost probes, by message, most first: send errors
    /// ("Operation not permitted") and failures of sent probes ("connection refused",
    /// "HTTP status 503"); also why the source withheld probes under its own limits
    /// ("refused: ... --allow-targets"), which are neither sent nor lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<(String, u32)>,
    /// Every lost probe sent (not `send_failed` ones) and where it was lost, by sequence
    /// number: whether losses came in a burst or spread over the round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_probes: Vec<LostSample>,
}

impl PathResult {
    /// Pair-path `t` of source `src` with `planned` probes, before anything is known of it:
    /// `notReported`, nothing counted.
    pub fn planned(src: &Name, t: &PlannedTarget, planned: u32, dst_reported: bool) -> Self {
        Self {
            path: t.path,
            src_node: src.clone(),
            dst_node: t.dst_node.clone(),
            src_interface: t.src_interface.clone(),
            dst_interface: t.dst_interface.clone(),
            network: t.network.clone(),
            family: t.family,
            src_addr: t.src_addr,
            dst_addr: t.dst_addr,
            external: t.external,
            state: PathState::NotReported,
            planned,
            sent: 0,
            received: 0,
            lost: 0,
            loss_ratio: 0.0,
            send_failed: 0,
            dst_reported,
            hooks: HookCounts::default(),
            segments: LossSegments::default(),
            kernel_rtt: None,
            user_rtt: None,
            network_rtt: None,
            dst_stack: None,
            drops: Vec::new(),
            errors: Vec::new(),
            lost_probes: Vec::new(),
        }
    }

    /// Why most of its lost probes were lost: the kernel's top drop reason, the finer one,
    /// else the source's top socket error (both lists are sorted most first).
    pub fn top_reason(&self) -> Option<&str> {
        self.drops
            .first()
            .map(|d| d.reason.as_str())
            .or_else(|| self.errors.first().map(|(e, _)| e.as_str()))
    }
}

/// Lost probes of one path that one node's kernel dropped with one reason at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCount {
    /// The node whose kernel dropped them.
    pub node: String,
    pub packet: Packet,
    pub reason: String,
    pub location: String,
    pub count: u32,
}

/// Which way a packet crosses an interface, from its node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// Where, relative to an interface, packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Segment {
    /// Between the interface and the peer: the packet left one node and never arrived.
    Link,
    /// Inside the node, between the interface and the socket or the kernel's ICMP responder.
    Stack,
}

/// The names the JSON report uses, for tables and metric labels.
impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// The names the JSON report uses, for tables and metric labels.
impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Link => "link",
            Self::Stack => "stack",
        })
    }
}

/// One path segment of the loss table (docs/architecture.md, "Where a lost probe was lost").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathSegment {
    SrcSend,
    Forward,
    DstStack,
    Reply,
    SrcReceive,
    /// Left the source and no reply came back, toward a listed address with no agent to say
    /// where: the network or the target.
    Beyond,
}

/// An exact (Clopper-Pearson) confidence interval of a loss ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    /// Coverage, e.g. 0.99.
    pub level: f64,
}

/// A faulty interface, localized across the mesh: the one place that explains the loss of
/// every pair-path crossing it in one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Empty for a domain-pair finding.
    pub node: String,
    /// Empty for a domain-pair finding.
    pub interface: String,
    /// The node's topology domain (the task's `mesh.topologyKey` label), or, for a
    /// domain-pair finding, the domain the lost packets left; empty when agents have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Set for a loss that follows domains instead of one interface: the domain the lost
    /// packets were going to (from `zone`, egress, link side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_zone: Option<String>,
    pub network: String,
    pub family: Family,
    pub direction: Direction,
    pub segment: Segment,
    /// The packets this place loses: both, or only requests or only replies (e.g. an ACL that
    /// drops one ICMP type). The ratio is over these packets only.
    pub packets: Vec<Packet>,
    /// Probes lost here, over the probes of `packets` that crossed this interface in this
    /// direction.
    pub lost: u32,
    pub probes: u32,
    pub loss_ratio: f64,
    pub interval: Interval,
    /// Kernel drop reasons of the lost probes, most frequent first; empty when the kernel did
    /// not drop them on a traced host (link loss).
    pub drop_reasons: Vec<ReasonCount>,
    /// The pair-paths whose loss this finding explains.
    pub evidence: Vec<Evidence>,
}

impl Finding {
    /// Distinct node pairs among the evidence (both directions of a pair count once): how
    /// widely the fault shows, which is what tells an interface fault from a pair problem.
    pub fn pairs(&self) -> usize {
        let mut pairs: Vec<[(&str, &str); 2]> = self
            .evidence
            .iter()
            .map(|e| {
                let mut ends = [
                    (e.src_node.as_str(), e.src_interface.as_str()),
                    (e.dst_node.as_str(), e.dst_interface.as_str()),
                ];
                ends.sort_unstable();
                ends
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonCount {
    pub reason: String,
    pub location: String,
    pub count: u32,
}

/// One pair-path segment's loss, as evidence for a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub path: PathId,
    pub src_node: String,
    pub src_interface: String,
    pub dst_node: String,
    pub dst_interface: String,
    pub segment: PathSegment,
    pub lost: u32,
    /// Probes that reached the start of the segment.
    pub probes: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookCounts {
    pub src_egress: u32,
    pub dst_ingress: u32,
    pub dst_egress: u32,
    pub src_ingress: u32,
    pub delivered: u32,
}

/// Lost probes of a path by the segment that lost them (docs/architecture.md, "Where a lost
/// probe was lost").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LossSegments {
    /// Never seen at the source's egress hook: the source host's send path.
    pub src_send: u32,
    /// Left the source, never reached the destination's ingress hook.
    pub forward: u32,
    /// Reached the destination, no reply left it: the destination host's stack.
    pub dst_stack: u32,
    /// The reply left the destination, never reached the source's ingress hook.
    pub reply: u32,
    /// The reply reached the source's ingress hook, never the socket: the source's receive path.
    pub src_receive: u32,
    /// Toward a listed address (no agent there): left the source, no reply reached it.
    #[serde(default)]
    pub beyond: u32,
    /// Cannot be placed: a hook that would decide it may have missed its event (ring buffer
    /// full, destination not reporting, no eBPF). Lost, but not blamed on a segment.
    pub unobserved: u32,
}

impl LossSegments {
    /// No probe lost anywhere.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// The counter of `segment` (`None`: unobserved).
    pub fn count_mut(&mut self, segment: Option<PathSegment>) -> &mut u32 {
        match segment {
            None => &mut self.unobserved,
            Some(PathSegment::SrcSend) => &mut self.src_send,
            Some(PathSegment::Forward) => &mut self.forward,
            Some(PathSegment::DstStack) => &mut self.dst_stack,
            Some(PathSegment::Reply) => &mut self.reply,
            Some(PathSegment::SrcReceive) => &mut self.src_receive,
            Some(PathSegment::Beyond) => &mut self.beyond,
        }
    }

    /// The segment that lost most probes, named as in the report; `None` without loss.
    pub fn dominant(&self) -> Option<&'static str> {
        self.named()
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, name)| name)
    }

    /// Every segment's count with its name as in the report, in path order.
    pub fn named(&self) -> [(u32, &'static str); 7] {
        [
            (self.src_send, "srcSend"),
            (self.forward, "forward"),
            (self.dst_stack, "dstStack"),
            (self.reply, "reply"),
            (self.src_receive, "srcReceive"),
            (self.beyond, "beyond"),
            (self.unobserved, "unobserved"),
        ]
    }
}

/// One lost probe of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LostSample {
    pub seq: u16,
    /// The first hook that did not see it; absent when an end that owns that hook may have
    /// missed the event (`unobserved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<PathSegment>,
}
