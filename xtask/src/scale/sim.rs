//! The simulated agents of `cargo xtask bench scale` (pure): their registrations (in zones),
//! the reports real agents would post for their plans when some interfaces, or the ways
//! between some zones, lose probes, and how the controller's findings score against those
//! faults.

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentRegistration, AgentReport, AnsweredPath, Direction, Family, Finding, Histogram,
    InterfaceInfo, LostProbe, ObserverStats, RoundPlan, SentPath, Timestamping,
    task::DEFAULT_TOPOLOGY_KEY,
};

/// The interfaces every simulated agent has: the pod network and a multus secondary.
pub const INTERFACES: [(&str, &str); 2] = [("eth0", "default"), ("net1", "net1")];

/// Agent `i` (1-based) of `nodes` in `zones` zones: `node-i` with eth0 and net1, each with an
/// IPv4 and an IPv6 address, labelled with its zone.
pub fn registration(i: u32, nodes: u32, zones: u32) -> AgentRegistration {
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
        // Zones as the lab makes them: consecutive blocks.
        labels: meshdoctor_lab::plan::zone_of(i as usize, nodes as usize, zones as usize)
            .map(|z| (DEFAULT_TOPOLOGY_KEY.to_string(), z))
            .into_iter()
            .collect(),
    }
}

/// The zones of registered agents, by node.
pub type Zones = BTreeMap<String, String>;

pub fn zones(registrations: &[AgentRegistration]) -> Zones {
    registrations
        .iter()
        .filter_map(|r| Some((r.node.clone(), r.labels.get(DEFAULT_TOPOLOGY_KEY)?.clone())))
        .collect()
}

/// Where probe packets are lost: 30% (`rate`) of those crossing it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A node's interface, on its link, in `direction`.
    Interface {
        node: String,
        interface: String,
        family: Family,
        direction: Direction,
        rate: f64,
    },
    /// The way from zone `from` to zone `to` on `network` (the links between two zones): the
    /// requests of paths from `from` to `to` and the replies of paths back.
    Zones {
        from: String,
        to: String,
        network: String,
        family: Family,
        rate: f64,
    },
}

/// A packet on its way: the family and network, and the (node, interface) it leaves and the
/// one it reaches.
struct Hop<'a> {
    family: Family,
    network: &'a str,
    from: (&'a str, &'a str),
    to: (&'a str, &'a str),
}

impl Fault {
    /// This fault's loss rate for `hop`, if it crosses it.
    fn rate_on(&self, hop: &Hop<'_>, zones: &Zones) -> Option<f64> {
        match self {
            Self::Interface {
                node,
                interface,
                family,
                direction,
                rate,
            } => {
                // The packet leaves `hop.from` (egress there) and reaches `hop.to` (ingress).
                let end = match direction {
                    Direction::Egress => hop.from,
                    Direction::Ingress => hop.to,
                };
                (end == (node.as_str(), interface.as_str()) && *family == hop.family)
                    .then_some(*rate)
            }
            Self::Zones {
                from,
                to,
                network,
                family,
                rate,
            } => (*family == hop.family
                && network == hop.network
                && zones.get(hop.from.0) == Some(from)
                && zones.get(hop.to.0) == Some(to))
            .then_some(*rate),
        }
    }

    /// Whether `finding` names this fault's place.
    pub fn found_by(&self, f: &Finding) -> bool {
        match self {
            Self::Interface {
                node,
                interface,
                family,
                direction,
                ..
            } => {
                f.segment == meshdoctor_api::Segment::Link
                    && f.to_zone.is_none()
                    && (&f.node, &f.interface, f.family, f.direction)
                        == (node, interface, *family, *direction)
            }
            Self::Zones {
                from,
                to,
                network,
                family,
                ..
            } => {
                f.to_zone.as_ref() == Some(to)
                    && (&f.zone, &f.network, f.family) == (from, network, *family)
            }
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Interface {
                node,
                interface,
                family,
                direction,
                rate,
            } => write!(
                out,
                "{node} {interface} {family} {direction} {:.0}%",
                rate * 100.0
            ),
            Self::Zones {
                from,
                to,
                network,
                family,
                rate,
            } => write!(
                out,
                "{from} -> {to} {network} {family} {:.0}%",
                rate * 100.0
            ),
        }
    }
}

/// `k` interface faults spread over `nodes` nodes: every interface, family and direction in
/// turn, 30% of the packets each.
pub fn faults(nodes: u32, k: u32) -> Vec<Fault> {
    (0..k)
        .map(|j| Fault::Interface {
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

/// `k` zone-pair faults among `zones` zones: zone-1 -> zone-2, zone-2 -> zone-3, ... on the
/// pod network, IPv4 and IPv6 in turn, 30% each.
pub fn zone_faults(zones: u32, k: u32) -> Vec<Fault> {
    (0..k.min(zones))
        .map(|j| Fault::Zones {
            from: format!("zone-{}", j + 1),
            to: format!("zone-{}", (j + 1) % zones + 1),
            network: INTERFACES[0].1.into(),
            family: if j % 2 == 0 {
                Family::Ipv4
            } else {
                Family::Ipv6
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

/// Whether a packet on `hop` is lost, drawn once per fault it crosses from `key`.
fn lost(faults: &[Fault], zones: &Zones, hop: &Hop<'_>, key: u64) -> bool {
    faults.iter().zip(0u64..).any(|(f, k)| {
        f.rate_on(hop, zones)
            .is_some_and(|rate| chance(key ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) < rate)
    })
}

/// The report each agent of `plans` (in `zones`) posts when `faults` lose probe packets on
/// their links: every probe sent, seen where it went, timed where it came back.
pub fn reports(
    plans: &BTreeMap<String, RoundPlan>,
    faults: &[Fault],
    zones: &Zones,
) -> Vec<AgentReport> {
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
                withheld: Vec::new(),
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
                interfaces: vec![t.dst_interface.to_string()],
            };
            for seq in 0..n {
                let key =
                    (u64::from(plan.round_tag) << 40) ^ (u64::from(t.path) << 16) ^ seq as u64;
                let (here, there) = (
                    (src.as_str(), t.src_interface.as_str()),
                    (t.dst_node.as_str(), t.dst_interface.as_str()),
                );
                let hop = |from, to| Hop {
                    family: t.family,
                    network: &t.network,
                    from,
                    to,
                };
                let lost_probe = LostProbe {
                    seq: seq as u16,
                    src_egress: true,
                    src_ingress: false,
                };
                if lost(faults, zones, &hop(here, there), key) {
                    a.ingress_missed.push(seq as u16);
                    a.egress_missed.push(seq as u16);
                    s.lost.push(lost_probe);
                    continue;
                }
                // Times spread as the lab's are (ns): stack 10-40 us, network 40-200 us, the
                // sender's own stack 100-400 us, so that stored statistics differ per path as
                // real ones do (and compress no better).
                let jitter = |salt: u64, lo: f64, hi: f64| {
                    (lo + (hi - lo) * chance(key ^ salt.wrapping_mul(0xa076_1d64_78bd_642f))) as u64
                };
                let stack = jitter(2, 10_000.0, 40_000.0);
                a.stack.record(stack);
                if lost(faults, zones, &hop(there, here), key ^ 1) {
                    s.lost.push(lost_probe);
                    continue;
                }
                let kernel = stack + jitter(3, 40_000.0, 200_000.0);
                let own = jitter(4, 100_000.0, 400_000.0);
                s.received += 1;
                s.src_ingress += 1;
                s.kernel_rtt.record(kernel);
                s.user_rtt.record(kernel + own);
                s.src_stack.record(own);
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
                incomplete: false,
                stall_covered_ms: None,
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
        let (s, d) = (registration(src, 2, 0), registration(dst, 2, 0));
        let target = PlannedTarget {
            path,
            dst_node: d.node.as_str().into(),
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
        let fault = Fault::Interface {
            node: "node-2".into(),
            interface: "eth0".into(),
            family: Family::Ipv4,
            direction: Direction::Ingress,
            rate: 0.3,
        };
        let reports = reports(&plans, &[fault], &Zones::new());
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
        let places: Vec<String> = f.iter().map(ToString::to_string).collect();
        assert_eq!(
            places,
            [
                "node-1 eth0 ipv4 ingress 30%",
                "node-26 net1 ipv4 ingress 30%",
                "node-51 eth0 ipv6 ingress 30%",
                "node-76 net1 ipv6 ingress 30%"
            ]
        );
        let finding = |fault: &Fault| {
            let Fault::Interface {
                node,
                interface,
                family,
                direction,
                ..
            } = fault
            else {
                unreachable!("interface faults")
            };
            Finding {
                node: node.clone(),
                interface: interface.clone(),
                family: *family,
                direction: *direction,
                ..Finding::test("x")
            }
        };
        let findings = vec![finding(&f[0]), finding(&f[1]), Finding::test("node-99")];
        let s = score(&findings, &f);
        assert_eq!((s.precision, s.recall), (2.0 / 3.0, 0.5));
        assert_eq!(score(&[], &[]).precision, 1.0);
    }

    #[test]
    fn a_zone_fault_loses_only_across_its_zones_and_scores_its_finding() {
        // node-1 in zone-1, node-2 in zone-2; zone-1 -> zone-2 loses 30% of the pod network's
        // IPv4 packets: node-1's requests and node-2's replies to node-1.
        let regs: Vec<_> = (1..=2).map(|i| registration(i, 2, 2)).collect();
        let zones = zones(&regs);
        assert_eq!(zones["node-2"], "zone-2");
        let plans = BTreeMap::from([plan(1, 2, 0), plan(2, 1, 1)]);
        let fault = &zone_faults(2, 1)[0];
        assert_eq!(fault.to_string(), "zone-1 -> zone-2 default ipv4 30%");
        let reports = reports(&plans, std::slice::from_ref(fault), &zones);
        for r in &reports {
            let lost = 1000 - r.sent[0].received;
            assert!((230..370).contains(&lost), "{}: {lost}", r.node);
        }
        // node-1 -> node-2 loses requests (node-2 missed them), node-2 -> node-1 replies.
        assert!(!reports[1].answered[0].ingress_missed.is_empty());
        assert!(reports[0].answered[0].ingress_missed.is_empty());
        let mut f = Finding::test("");
        (f.zone, f.to_zone, f.network) = ("zone-1".into(), Some("zone-2".into()), "default".into());
        assert_eq!(score(&[f], std::slice::from_ref(fault)).recall, 1.0);
        assert_eq!(
            score(&[Finding::test("node-1")], std::slice::from_ref(fault)).recall,
            0.0
        );
    }
}
