//! Builders of report types for tests (the `testing` feature, and this crate's own tests): one
//! healthy value of each, which a test changes with struct update syntax or the builder
//! methods, instead of spelling out every field again.

use crate::{
    AnsweredPath, Direction, Evidence, Family, Finding, Histogram, Interval, LossSegments,
    LostProbe, Packet, PathId, PathResult, PathSegment, PathState, PlannedTarget, Protocol,
    ReasonCount, RoundPlan, RoundReport, RoundStatus, RoundSummary, Segment, SentPath,
};

impl PlannedTarget {
    /// Path `path` from node-1's eth0 (192.0.2.1) to node-2's (192.0.2.2) on the default
    /// network, IPv4, probed with the round's protocol.
    pub fn test(path: PathId) -> Self {
        Self {
            path,
            dst_node: "node-2".into(),
            src_interface: "eth0".into(),
            dst_interface: "eth0".into(),
            network: "default".into(),
            family: Family::Ipv4,
            src_addr: "192.0.2.1".parse().expect("an IPv4 address"),
            dst_addr: "192.0.2.2".parse().expect("an IPv4 address"),
            dst_port: None,
            external: false,
            protocol: None,
        }
    }
}

impl RoundPlan {
    /// Round 1 of task `mesh` (round tag 77): one second of ICMP at `qps` to each of
    /// `targets`, 100 ms timeout, starting at once.
    pub fn test(qps: u32, targets: Vec<PlannedTarget>) -> Self {
        Self {
            task: "mesh".into(),
            round: 1,
            round_tag: 77,
            protocol: Protocol::Icmp,
            start_at_ms: 0,
            duration_ms: 1000,
            qps,
            timeout_ms: 100,
            report_deadline_ms: 0,
            targets,
            incoming: Vec::new(),
            app: None,
        }
    }
}

impl PathResult {
    /// A clean pair-path between agents: `probes` sent and received over `interface` of both
    /// nodes on `network`, nothing observed, no RTTs.
    pub fn test(
        src: &str,
        dst: &str,
        (interface, network): (&str, &str),
        family: Family,
        probes: u32,
    ) -> Self {
        let addr = match family {
            Family::Ipv4 => "192.0.2.1".parse().expect("an IPv4 address"),
            Family::Ipv6 => "2001:db8::1".parse().expect("an IPv6 address"),
        };
        let target = PlannedTarget {
            path: 0,
            dst_node: dst.into(),
            src_interface: interface.into(),
            dst_interface: interface.into(),
            network: network.into(),
            family,
            src_addr: addr,
            dst_addr: addr,
            dst_port: None,
            external: false,
            protocol: None,
        };
        Self {
            state: PathState::Ok,
            sent: probes,
            received: probes,
            ..Self::planned(&src.into(), &target, probes, true)
        }
    }

    /// The same path with `lost` of its probes lost where `segments` says: received, ratio and
    /// state follow.
    pub fn with_loss(self, lost: u32, segments: LossSegments) -> Self {
        Self {
            state: if lost == 0 {
                PathState::Ok
            } else {
                PathState::Lossy
            },
            received: self.sent - lost,
            lost,
            loss_ratio: f64::from(lost) / f64::from(self.sent),
            segments,
            ..self
        }
    }
}

impl RoundReport {
    /// A succeeded or failed round of `task` with no paths, started at `round` seconds and
    /// closed 500 ms later, with agents `a` and `b`.
    pub fn test(task: &str, round: u32, status: RoundStatus) -> Self {
        Self {
            task: task.into(),
            round,
            round_tag: round,
            status,
            failure_reasons: vec![],
            start_ms: u64::from(round) * 1000,
            end_ms: u64::from(round) * 1000 + 500,
            expected_agents: vec!["a".into(), "b".into()],
            not_reported: vec![],
            findings: vec![],
            summary: RoundSummary::default(),
            paths: vec![],
            app: None,
            mesh: None,
            warnings: vec![],
            zones: Default::default(),
        }
    }
}

impl Evidence {
    /// 15 of 75 probes lost forward from `src`'s net1 to `dst`'s net1.
    pub fn test(src: &str, dst: &str) -> Self {
        Self {
            path: 0,
            src_node: src.into(),
            src_interface: "net1".into(),
            dst_node: dst.into(),
            dst_interface: "net1".into(),
            segment: PathSegment::Forward,
            lost: 15,
            probes: 75,
        }
    }
}

impl Finding {
    /// 30 lost of 150 probes arriving on `node`'s net1 (network `sec`, IPv4 link), dropped for
    /// `NETFILTER_DROP`, with evidence from node-a and node-b.
    pub fn test(node: &str) -> Self {
        Self {
            node: node.into(),
            interface: "net1".into(),
            zone: String::new(),
            to_zone: None,
            network: "sec".into(),
            family: Family::Ipv4,
            direction: Direction::Ingress,
            segment: Segment::Link,
            packets: vec![Packet::Request],
            lost: 30,
            probes: 150,
            loss_ratio: 0.2,
            interval: Interval {
                low: 0.12,
                high: 0.3,
                level: 0.99,
            },
            drop_reasons: vec![ReasonCount {
                reason: "NETFILTER_DROP".into(),
                location: "nft_do_chain+0x4c1".into(),
                count: 30,
            }],
            evidence: vec![
                Evidence::test("node-a", node),
                Evidence::test("node-b", node),
            ],
        }
    }
}

impl SentPath {
    /// `n` probes sent on `path`, `back` of them answered: seen at both of the source's hooks
    /// (the others lost on the way back), each answer taking `kernel`, `user` and `stack`
    /// nanoseconds (kernel RTT, user-space RTT, the source's own stack).
    pub fn test(path: PathId, n: u32, back: u32, [kernel, user, stack]: [u64; 3]) -> Self {
        let times = |ns: u64| {
            let mut h = Histogram::default();
            h.record_n(ns, back.into());
            h
        };
        Self {
            path,
            planned: n,
            sent: n,
            received: back,
            send_errors: vec![],
            failures: vec![],
            withheld: vec![],
            src_egress: n,
            src_ingress: back,
            unsent: vec![],
            lost: (back..n)
                .map(|seq| LostProbe {
                    seq: seq as u16,
                    src_egress: true,
                    src_ingress: false,
                })
                .collect(),
            kernel_rtt: times(kernel),
            user_rtt: times(user),
            src_stack: times(stack),
        }
    }
}

impl AnsweredPath {
    /// `n` probes of `path` answered on `interface`, each in `stack` nanoseconds.
    pub fn test(path: PathId, n: u32, stack: u64, interface: &str) -> Self {
        let mut h = Histogram::default();
        h.record_n(stack, n.into());
        Self {
            path,
            span: n,
            ingress_missed: vec![],
            egress_missed: vec![],
            stack: h,
            interfaces: vec![interface.into()],
        }
    }
}
