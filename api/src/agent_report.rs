//! What an agent posts at the end of a round: what it sent, and what its observers saw of the
//! probes it answered. The controller joins both ends by path index and sequence number.

use serde::{Deserialize, Serialize};

use crate::{Bitmap, LoadStats, RoundPlan, Timestamping};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub node: String,
    pub task: String,
    pub round: u32,
    pub round_tag: u32,
    pub timestamping: Timestamping,
    /// One entry per planned target, in plan order.
    pub sent: Vec<SentPath>,
    /// Probes of this round that arrived at this agent, grouped by path.
    pub answered: Vec<AnsweredPath>,
    pub observer: ObserverStats,
    /// This round's probe packets the kernel dropped in this agent's network namespace
    /// (skb:kfree_skb), both its own probes and the ones it answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<ProbeDrop>,
    /// Application rounds (AppHttpHealthy, NetDns): what the load against the plan's target
    /// did. `None` in NetReach reports, whose JSON is unchanged by this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppResult>,
}

impl AgentReport {
    /// `node`'s report on `plan` with nothing in it yet: the round's identity filled in, for
    /// the caller to add what it saw.
    pub fn on_plan(node: impl Into<String>, plan: &RoundPlan, timestamping: Timestamping) -> Self {
        Self {
            node: node.into(),
            task: plan.task.clone(),
            round: plan.round,
            round_tag: plan.round_tag,
            timestamping,
            sent: Vec::new(),
            answered: Vec::new(),
            observer: ObserverStats::default(),
            drops: Vec::new(),
            app: None,
        }
    }
}

/// One agent's application load against its round's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppResult {
    /// The target as [`crate::AppTarget::label`] names it.
    pub target: String,
    /// Why the load could not run at all (a target the agent could not build a requester for:
    /// bad TLS material, a URL it rejects, a plan beyond its caps). No request was sent then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub stats: LoadStats,
}

/// The source side of one pair-path. Index `seq` of every bitmap and vector is probe `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentPath {
    pub path: u16,
    /// Probes the plan asked for.
    pub planned: u32,
    /// Probes handed to the kernel (`sendto` succeeded).
    pub sent: u32,
    /// Probes whose echo reply reached the agent's socket in time.
    pub received: u32,
    /// Send errors by message (e.g. "Network is unreachable"), counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send_errors: Vec<(String, u32)>,
    /// Probes sent whose exchange failed with an error of its own rather than silence (TCP
    /// and HTTP: "connection refused", "HTTP status 503"), counted. They are lost too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<(String, u32)>,
    /// Probes handed to the kernel (`sendto` succeeded).
    #[serde(default)]
    pub sent_mask: Bitmap,
    /// Request seen leaving at TC egress on the source interface.
    pub src_egress: Bitmap,
    /// Reply seen arriving at TC ingress on the source interface.
    pub src_ingress: Bitmap,
    /// Reply delivered to the socket before the timeout.
    pub delivered: Bitmap,
    /// Kernel RTT (src ingress - src egress) per probe in ns; 0 where not measured.
    pub kernel_rtt_ns: Vec<u64>,
    /// User-space RTT (receive - send, CLOCK_MONOTONIC) per probe in ns; 0 where not measured.
    pub user_rtt_ns: Vec<u64>,
}

/// The destination side of one pair-path, as seen by the answering agent's observers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredPath {
    pub path: u16,
    /// Request seen at TC ingress on this agent.
    pub dst_ingress: Bitmap,
    /// Reply seen at TC egress on this agent.
    pub dst_egress: Bitmap,
    /// Destination stack time (dst egress - dst ingress) per probe in ns; 0 where not measured.
    pub stack_ns: Vec<u64>,
    /// Interface names the requests arrived on (normally exactly the planned one).
    pub interfaces: Vec<String>,
}

/// Health of the agent's eBPF observers during the round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObserverStats {
    /// Probe events the kernel could not put into the full ring buffer during the round.
    /// When non-zero, missing hook bits are 'unobserved', not loss.
    pub ringbuf_drops: u64,
    /// Probe events read from the ring buffer during the round.
    pub events: u64,
    /// Whether the kfree_skb drop tracer ran, so a lost probe without a drop record was not
    /// dropped by this host's stack with a traced reason.
    #[serde(default)]
    pub drop_tracer: bool,
}

/// Echo request (source to destination) or echo reply (back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Packet {
    Request,
    Reply,
}

/// The names the JSON report uses, for tables and metric labels.
impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Reply => "reply",
        })
    }
}

/// One probe packet the kernel dropped, as the agent's kfree_skb tracer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeDrop {
    pub path: u16,
    pub seq: u16,
    pub packet: Packet,
    /// The kernel's `enum skb_drop_reason` name without its `SKB_DROP_REASON_` prefix (e.g.
    /// `NETFILTER_DROP`), named from the running kernel's BTF; `unknown` on kernels whose
    /// tracepoint carries no reason.
    pub reason: String,
    /// The dropping kernel function (`symbol+0xoff`) when kallsyms is readable, else the
    /// address in hex.
    pub location: String,
    /// The device the packet was on, when it is one of this agent's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}
