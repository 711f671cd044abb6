//! The simulated agents of `cargo xtask bench scale` (pure): their registrations, the reports
//! real agents would post for their plans when some interfaces lose probes, and how the
//! controller's findings score against those faults.

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentRegistration, AgentReport, AnsweredPath, Direction, Family, Finding, Histogram,
    InterfaceInfo, LostProbe, ObserverStats, RoundPlan, SentPath, Timestamping,
};

/// The interfaces every simulated agent has: the pod network and a multus secondary.
pub const INTERFACES: [(&str, &str); 2] = [("eth0", "default"), ("net1", "net1")];

/// Agent `i` (1-based): `node-i` with eth0 and net1, each with an IPv4 and an IPv6 address.
pub fn registration(i: u32) -> AgentRegistration {
    let (hi, lo) = ((i >> 8) as u8, i as u8);
    let interfaces = INTERFACES
        .iter()
        .zip(1u8..)
        .map(|(&(name, network), net)| InterfaceInfo {
            name: name.into(),
            network: network.into(),
            ipv4: Some([10, net, hi, lo].into()),
            ipv6: Some(
                format!("fd00:{net}::{i:x}")
                    .parse()
                    .expect("an IPv6 address"),
            ),
        })
        .collect();
    AgentRegistration {
        node: format!("node-{i}"),
        interfaces,
        timestamping: Timestamping::Ebpf,
        probe_port: Some(9091),
        labels: Default::default(),
    }
}

/// A node's interface losing `rate` of the probe packets that cross its link in `direction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub node: String,
    pub interface: String,
    pub family: Family,
    pub direction: Direction,
    pub rate: f64,
}

impl Fault {
    fn hits(&self, node: &str, interface: &str, family: Family, direction: Direction) -> bool {
        self.node == node
            && self.interface == interface
            && self.family == family
            && self.direction == direction
    }

    /// Whether `finding` names this fault's place.
    pub fn found_by(&self, f: &Finding) -> bool {
        f.segment == meshdoctor_api::Segment::Link
            && self.hits(&f.node, &f.interface, f.family, f.direction)
    }
}

/// `k` faults spread over `nodes` nodes: every interface, family and direction in turn, 30% of
/// the packets each.
pub fn faults(nodes: u32, k: u32) -> Vec<Fault> {
    (0..k)
        .map(|j| Fault {
            node: format!(
                "node-{}",
                u64::from(j) * u64::from(nodes) / u64::from(k.max(1)) + 1
            ),
            interface: INTERFACES[(j % 2) as usize].0.into(),
            family: if j / 2 % 2 == 0 {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            direction: if j / 4 % 2 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            rate: 0.3,
        })
        .collect()
}

/// A uniform draw in [0, 1) fixed by `key` (splitmix64), so that a run is reproducible.
fn chance(key: u64) -> f64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

/// Whether a packet crossing the places `at` (node, interface, direction) is lost, drawn once
/// per place from `key`.
fn lost(faults: &[Fault], family: Family, at: [(&str, &str, Direction); 2], key: u64) -> bool {
    at.iter().zip(0u64..).any(|(&(node, iface, dir), k)| {
        faults
            .iter()
            .find(|f| f.hits(node, iface, family, dir))
            .is_some_and(|f| chance(key ^ (k << 62)) < f.rate)
    })
}

/// The report each agent of `plans` posts when `faults` lose probe packets on their links:
/// every probe sent, seen where it went, timed where it came back.
pub fn reports(plans: &BTreeMap<String, RoundPlan>, faults: &[Fault]) -> Vec<AgentReport> {
    let mut answered: BTreeMap<&str, Vec<AnsweredPath>> = BTreeMap::new();
    let mut out = Vec::with_capacity(plans.len());
    for (src, plan) in plans {
        let n = plan.probes_per_target() as usize;
        let mut sent = Vec::with_capacity(plan.targets.len());
        for t in &plan.targets {
            let mut s = SentPath {
                path: t.path,
                planned: n as u32,
                sent: n as u32,
                received: 0,
                send_errors: vec![],
                failures: vec![],
                src_egress: n as u32,
                src_ingress: 0,
                unsent: vec![],
                lost: vec![],
                kernel_rtt: Histogram::default(),
                user_rtt: Histogram::default(),
                src_stack: Histogram::default(),
            };
            let mut a = AnsweredPath {
                path: t.path,
                span: n as u32,
                ingress_missed: vec![],
                egress_missed: vec![],
                stack: Histogram::default(),
                interfaces: vec![t.dst_interface.clone()],
            };
            for seq in 0..n {
                let key =
                    (u64::from(plan.round_tag) << 40) ^ (u64::from(t.path) << 16) ^ seq as u64;
                let request = [
                    (src.as_str(), t.src_interface.as_str(), Direction::Egress),
                    (
                        t.dst_node.as_str(),
                        t.dst_interface.as_str(),
                        Direction::Ingress,
                    ),
                ];
                let reply = [
                    (
                        t.dst_node.as_str(),
                        t.dst_interface.as_str(),
                        Direction::Egress,
                    ),
                    (src.as_str(), t.src_interface.as_str(), Direction::Ingress),
                ];
                let lost_probe = LostProbe {
                    seq: seq as u16,
                    src_egress: true,
                    src_ingress: false,
                };
                if lost(faults, t.family, request, key) {
                    a.ingress_missed.push(seq as u16);
                    a.egress_missed.push(seq as u16);
                    s.lost.push(lost_probe);
                    continue;
                }
                a.stack.record(20_000);
                if lost(faults, t.family, reply, key ^ 1) {
                    s.lost.push(lost_probe);
                    continue;
                }
                let kernel = 80_000 + (seq as u64 % 7) * 1_000;
                s.received += 1;
                s.src_ingress += 1;
                s.kernel_rtt.record(kernel);
                s.user_rtt.record(kernel + 40_000);
                s.src_stack.record(40_000);
            }
            if !t.external {
                answered.entry(&t.dst_node).or_default().push(a);
            }
            sent.push(s);
        }
        out.push(AgentReport {
            sent,
            observer: ObserverStats {
                ringbuf_drops: 0,
                events: 0,
                drop_tracer: true,
            },
            ..AgentReport::on_plan(src.clone(), plan, Timestamping::Ebpf)
        });
    }
    for report in &mut out {
        report.answered = answered.remove(report.node.as_str()).unwrap_or_default();
    }
    out
}

/// How the findings of a round score against the injected faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Findings that name an injected fault, of all findings (1 without findings).
    pub precision: f64,
    /// Injected faults named by a finding (1 without faults).
    pub recall: f64,
}

pub fn score(findings: &[Finding], faults: &[Fault]) -> Score {
    let true_findings = findings
        .iter()
        .filter(|f| faults.iter().any(|x| x.found_by(f)))
        .count();
    let found = faults
        .iter()
        .filter(|x| findings.iter().any(|f| x.found_by(f)))
        .count();
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Score {
        precision: ratio(true_findings, findings.len()),
        recall: ratio(found, faults.len()),
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{PathId, PlannedTarget, Protocol};

    use super::*;

    fn plan(src: u32, dst: u32, path: PathId) -> (String, RoundPlan) {
        let (s, d) = (registration(src), registration(dst));
        let target = PlannedTarget {
            path,
            dst_node: d.node.clone(),
            src_interface: "eth0".into(),
            dst_interface: "eth0".into(),
            network: "default".into(),
            family: Family::Ipv4,
            src_addr: s.interfaces[0].ipv4.unwrap().into(),
            dst_addr: d.interfaces[0].ipv4.unwrap().into(),
            dst_port: None,
            external: false,
            protocol: None,
        };
        let plan = RoundPlan {
            task: "mesh".into(),
            round: 1,
            round_tag: 7,
            protocol: Protocol::Icmp,
            start_at_ms: 0,
            duration_ms: 10_000,
            qps: 100,
            timeout_ms: 500,
            report_deadline_ms: 0,
            targets: vec![target],
            incoming: vec![],
            app: None,
        };
        (s.node, plan)
    }

    #[test]
    fn a_faulty_interface_loses_its_share_where_it_sits() {
        let plans = BTreeMap::from([plan(1, 2, 0), plan(2, 1, 1)]);
        // node-2's eth0 loses 30% of what it receives: node-1's requests, node-2's own replies.
        let fault = Fault {
            node: "node-2".into(),
            interface: "eth0".into(),
            family: Family::Ipv4,
            direction: Direction::Ingress,
            rate: 0.3,
        };
        let reports = reports(&plans, &[fault]);
        let (r1, r2) = (&reports[0], &reports[1]);
        assert_eq!((r1.node.as_str(), r2.node.as_str()), ("node-1", "node-2"));
        // node-1 -> node-2: requests lost on the way in, before node-2's hooks.
        let s = &r1.sent[0];
        let lost = 1000 - s.received;
        assert!((230..370).contains(&lost), "{lost}");
        let a = &r2.answered[0];
        assert_eq!(a.span - a.ingress_missed.len() as u32, s.received);
        assert_eq!(a.stack.count(), u64::from(s.received));
        // node-2 -> node-1: node-1 answered everything, the replies were lost at node-2.
        let s = &r2.sent[0];
        assert!((230..370).contains(&(1000 - s.received)), "{}", s.received);
        let a = &r1.answered[0];
        assert_eq!((a.span, a.egress_missed.len()), (1000, 0));
        assert_eq!(s.src_ingress, s.received);
        assert_eq!(s.lost.len() as u32, 1000 - s.received);
    }

    #[test]
    fn faults_spread_and_score() {
        let f = faults(100, 4);
        let nodes: Vec<&str> = f.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(nodes, ["node-1", "node-26", "node-51", "node-76"]);
        assert_eq!(f[1].interface, "net1");
        assert_eq!(f[2].family, Family::Ipv6);
        let finding = |fault: &Fault| Finding {
            node: fault.node.clone(),
            interface: fault.interface.clone(),
            family: fault.family,
            direction: fault.direction,
            ..Finding::test("x")
        };
        let findings = vec![finding(&f[0]), finding(&f[1]), Finding::test("node-99")];
        let s = score(&findings, &f);
        assert_eq!((s.precision, s.recall), (2.0 / 3.0, 0.5));
        assert_eq!(score(&[], &[]).precision, 1.0);
    }
}
