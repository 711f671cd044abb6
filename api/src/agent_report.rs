//! What an agent posts at the end of a round: what it sent, and what its observers saw of the
//! probes it answered. The controller joins both ends by path index and sequence number.

use serde::{Deserialize, Serialize};

use crate::Bitmap;

/// How an agent timestamps probe packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timestamping {
    /// eBPF TC observers on every probed interface, `bpf_ktime_get_ns`.
    #[default]
    Ebpf,
    /// No eBPF: user-space timestamps only, no per-hook presence.
    Socket,
}

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
}
