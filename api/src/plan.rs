//! The agent <-> controller contract before a round: who the agent is, and what it must probe.
//!
//! An agent learns everything from its plan (peers, addresses, interfaces, pace); it never asks
//! Kubernetes. That keeps the agent free of RBAC and makes the plan the single cap on what an
//! agent will send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// What an agent tells the controller when it starts, and again whenever it re-registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistration {
    /// Node name: agents are identified by node, as in kdoctor.
    pub node: String,
    pub interfaces: Vec<InterfaceInfo>,
    /// How this agent timestamps probes (eBPF at TC, or the socket fallback).
    pub timestamping: crate::Timestamping,
    /// Port of its UDP probe responder on every address; `None` when it runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
}

/// One interface an agent can probe from and answer on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceInfo {
    /// Name inside the agent's network namespace (`eth0`, `net1`).
    pub name: String,
    /// Network the interface belongs to (the multus network name; the interface name if unknown).
    /// Full meshes pair interfaces of the same network.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

impl InterfaceInfo {
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.map(IpAddr::V4),
            Family::Ipv6 => self.ipv6.map(IpAddr::V6),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}

/// NetReach probe protocol (`spec.request.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// ICMP / ICMPv6 echo, answered by the peer's kernel.
    #[default]
    Icmp,
    /// A UDP datagram answered by the peer agent's responder: crosses port-based policy,
    /// conntrack and a user-space receiver, which ICMP does not.
    Udp,
}

/// One round of one task, as one agent must run it.
///
/// Every agent of the round gets a plan, also one with no targets: the plan arms its eBPF
/// observers with the round tag so that it records the probes it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundPlan {
    pub task: String,
    pub round: u32,
    /// Unique per round across the controller's lifetime; the top 32 bits of every probe id.
    pub round_tag: u32,
    pub protocol: Protocol,
    /// Wall-clock start (Unix milliseconds); agents wait for it so that all are armed first.
    pub start_at_ms: u64,
    pub duration_ms: u64,
    /// Probes per second per target.
    pub qps: u32,
    pub timeout_ms: u64,
    /// The controller stops waiting for this agent's report at this wall-clock time.
    pub report_deadline_ms: u64,
    pub targets: Vec<PlannedTarget>,
}

impl RoundPlan {
    /// Probes planned per target: `qps x duration`, at least one.
    pub fn probes_per_target(&self) -> u32 {
        ((u64::from(self.qps) * self.duration_ms) / 1000).max(1) as u32
    }
}

/// One directed pair-path: from this agent's interface to a peer's interface, in one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedTarget {
    /// Index of the pair-path within the round; bits 16..32 of its probe ids.
    pub path: u16,
    pub dst_node: String,
    pub src_interface: String,
    pub dst_interface: String,
    pub network: String,
    pub family: Family,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    /// UDP probes: the destination agent's responder port; `None` when it runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
}

/// Most probes one pair-path can carry in one round (the sequence number is 16 bits).
pub const MAX_PROBES_PER_PATH: u32 = 1 << 16;

/// The 64-bit probe id carried in every probe's payload: round tag, path, sequence.
pub fn probe_id(round_tag: u32, path: u16, seq: u16) -> u64 {
    (u64::from(round_tag) << 32) | (u64::from(path) << 16) | u64::from(seq)
}

/// Splits a probe id into (round tag, path, sequence).
pub fn probe_id_parts(id: u64) -> (u32, u16, u16) {
    ((id >> 32) as u32, (id >> 16) as u16, id as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_id_round_trips() {
        let id = probe_id(0xdead_beef, 513, 65535);
        assert_eq!(probe_id_parts(id), (0xdead_beef, 513, 65535));
    }

    #[test]
    fn probes_per_target_is_qps_times_duration() {
        let plan = RoundPlan {
            task: "t".into(),
            round: 1,
            round_tag: 1,
            protocol: Protocol::Icmp,
            start_at_ms: 0,
            duration_ms: 2500,
            qps: 10,
            timeout_ms: 500,
            report_deadline_ms: 0,
            targets: vec![],
        };
        assert_eq!(plan.probes_per_target(), 25);
    }
}
