//! The loss-localization scenario suite (issue 3, and issue 4's protocols): faults injected
//! into the lab with nftables, found by the controller as interface findings, for ICMP, TCP,
//! HTTP and UDP probes.
//!
//! Each scenario brings up a 4-node lab with its faults in place before the agents start, then
//! reads rounds until the controller's findings are exactly the injected faults (or gives up
//! after [`MAX_ROUNDS`]). Every round's findings must be a subset of the injected faults: a
//! finding that names anything else is a false positive, whenever it shows up. The suite prints
//! precision, recall and the rounds each fault took to detect, then asserts both are 1.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use meshdoctor_api::{
    Direction, Family, Finding, Packet, Protocol, RoundReport, Segment, stats::clopper_pearson,
};
use meshdoctor_e2e::can_run;
use meshdoctor_lab::{Fault, Lab, LabConfig, MeshTask};

/// Rounds a scenario may take to show its faults.
const MAX_ROUNDS: u32 = 3;
/// Probes per pair-path and round: 50/s for 2 s.
const QPS: u32 = 50;
const SECS: u32 = 2;
/// Coverage of the interval the test checks the injected rate against. The findings carry a
/// 99% interval; over a suite of ~20 estimates that would fail one run in five by chance, so
/// the assertion uses a wider exact interval around the same counts.
const CHECK_LEVEL: f64 = 0.9999;

struct Scenario {
    name: &'static str,
    faults: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "healthy control",
        faults: &[],
    },
    Scenario {
        name: "eth0 egress link, IPv4, 100%",
        faults: &["node-2:eth0:egress:ipv4:100:link"],
    },
    Scenario {
        name: "net1 ingress link, IPv6, 100%",
        faults: &["node-3:net1:ingress:ipv6:100:link"],
    },
    Scenario {
        name: "net1 ingress stack, IPv4, 100%",
        faults: &["node-1:net1:ingress:ipv4:100:stack"],
    },
    Scenario {
        name: "eth0 egress stack, IPv6, 100%",
        faults: &["node-4:eth0:egress:ipv6:100:stack"],
    },
    Scenario {
        name: "net1 egress link, IPv4, 30%",
        faults: &["node-2:net1:egress:ipv4:30:link"],
    },
    Scenario {
        name: "eth0 ingress stack, IPv6, 50%",
        faults: &["node-3:eth0:ingress:ipv6:50:stack"],
    },
    Scenario {
        name: "eth0 ingress link, IPv4, 2%",
        faults: &["node-1:eth0:ingress:ipv4:2:link"],
    },
    Scenario {
        name: "net1 egress stack, IPv4, 5%",
        faults: &["node-4:net1:egress:ipv4:5:stack"],
    },
    Scenario {
        name: "eth0 ingress link, IPv6, 10%",
        faults: &["node-2:eth0:ingress:ipv6:10:link"],
    },
    Scenario {
        name: "reply path only: net1 egress link, IPv4, 100% of replies",
        faults: &["node-4:net1:egress:ipv4:100:link:replies"],
    },
    Scenario {
        name: "requests only: eth0 ingress stack, IPv6, 40% of requests",
        faults: &["node-1:eth0:ingress:ipv6:40:stack:requests"],
    },
    Scenario {
        name: "two faults, other interface and family",
        faults: &[
            "node-1:eth0:ingress:ipv4:100:stack",
            "node-3:net1:egress:ipv6:30:link",
        ],
    },
    Scenario {
        name: "tcp: SYNs into eth0, link, IPv4, 100%",
        faults: &["node-2:eth0:ingress:ipv4:100:link:tcp"],
    },
    Scenario {
        name: "tcp: SYN-ACKs out of net1, stack, IPv6, 100%",
        faults: &["node-3:net1:egress:ipv6:100:stack:replies:tcp"],
    },
    Scenario {
        name: "http: SYNs into eth0, stack, IPv6, 30%",
        faults: &["node-1:eth0:ingress:ipv6:30:stack:requests:http"],
    },
    Scenario {
        name: "udp: net1 egress link, IPv4, 30%",
        faults: &["node-4:net1:egress:ipv4:30:link:udp"],
    },
    Scenario {
        name: "two faults on the same network and family",
        faults: &[
            "node-1:eth0:egress:ipv4:100:link",
            "node-3:eth0:ingress:ipv4:50:stack",
        ],
    },
];

/// What identifies a finding: where, which way, which packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    node: String,
    interface: String,
    family: Family,
    direction: Direction,
    segment: Segment,
    packets: Vec<Packet>,
}

impl Place {
    fn of_fault(f: &Fault) -> Self {
        Self {
            node: format!("node-{}", f.node),
            interface: f.interface.clone(),
            family: f.family,
            direction: f.direction,
            segment: f.segment,
            packets: match f.packets {
                Some(p) => vec![p],
                None => vec![Packet::Request, Packet::Reply],
            },
        }
    }

    fn of_finding(f: &Finding) -> Self {
        let mut packets = f.packets.clone();
        packets.sort();
        Self {
            node: f.node.clone(),
            interface: f.interface.clone(),
            family: f.family,
            direction: f.direction,
            segment: f.segment,
            packets,
        }
    }
}

/// A multi-round full-mesh task over `protocol`: a round every 4 s, [`MAX_ROUNDS`] of them.
///
/// TCP probes time out after 500 ms, below the kernel's 1 s initial retransmission timeout:
/// a probe is then one SYN and one SYN-ACK, so its loss rate is the fault's packet loss rate.
/// (With a longer timeout a retransmission rescues some probes, as it would a real client's
/// connection, and the probe loss rate drops toward the rate squared.)
fn task_yaml(protocol: Protocol) -> String {
    MeshTask {
        schedule: "@every 4s",
        rounds: MAX_ROUNDS.into(),
        protocol: protocol.name(),
        timeout_ms: if protocol.is_tcp() { 500 } else { 1000 },
        ..MeshTask::new("mesh", QPS, SECS)
    }
    .yaml()
}

/// The outcome of one scenario.
#[derive(Default)]
struct Outcome {
    /// Per fault: the round it was first found in.
    detected_in: Vec<Option<u32>>,
    false_positives: Vec<String>,
    /// Checks of the findings that failed (ratio, reasons, evidence).
    problems: Vec<String>,
    lines: Vec<String>,
}

fn run(s: &Scenario) -> Outcome {
    let faults: Vec<Fault> = s.faults.iter().map(|f| f.parse().unwrap()).collect();
    let expected: Vec<Place> = faults.iter().map(Place::of_fault).collect();
    let mut cfg = LabConfig::new(4);
    // A scenario's faults drop the probes of one protocol: the task probes with it.
    let protocol = faults.first().map_or(Protocol::Icmp, |f| f.protocol);
    cfg.tasks = vec![("mesh.yaml".into(), task_yaml(protocol))];
    cfg.faults = faults.clone();
    let lab = Lab::up(cfg).expect("lab up");
    let mut out = Outcome {
        detected_in: vec![None; faults.len()],
        ..Outcome::default()
    };
    for round in 1..=MAX_ROUNDS {
        let report = lab
            .wait_round("mesh", round, Duration::from_secs(60))
            .expect("round report");
        let found: Vec<(Place, &Finding)> = report
            .findings
            .iter()
            .map(|f| (Place::of_finding(f), f))
            .collect();
        for (place, finding) in &found {
            match expected.iter().position(|e| e == place) {
                Some(i) => {
                    out.detected_in[i].get_or_insert(round);
                    check_finding(&faults[i], &faults, finding, &report, &mut out);
                }
                None => out.false_positives.push(format!(
                    "round {round}: {place:?} ({:.3})",
                    finding.loss_ratio
                )),
            }
        }
        if round == 1 || !found.is_empty() {
            out.lines.push(format!(
                "    round {round}: {}",
                meshdoctor_table::render_findings(&report.findings)
                    .lines()
                    .collect::<Vec<_>>()
                    .join("\n             ")
            ));
        }
        let all: BTreeSet<_> = found.iter().map(|(p, _)| p.clone()).collect();
        if all == expected.iter().cloned().collect() {
            break;
        }
    }
    out
}

/// The finding of `fault` says what the fault is: its rate within the interval around the
/// counts, kernel drop reasons exactly for stack faults, evidence from every peer that `all`
/// (the scenario's faults) leaves able to reach it.
fn check_finding(
    fault: &Fault,
    all: &[Fault],
    f: &Finding,
    report: &RoundReport,
    out: &mut Outcome,
) {
    let rate = fault.rate / 100.0;
    let (lo, hi) = clopper_pearson(f.lost, f.probes, CHECK_LEVEL);
    if !(lo..=hi).contains(&rate) {
        out.problems.push(format!(
            "{fault}: ratio {}/{} = {:.4} has {CHECK_LEVEL} interval [{lo:.4}, {hi:.4}] without {rate}",
            f.lost, f.probes, f.loss_ratio
        ));
    }
    if !(f.interval.low <= f.loss_ratio && f.loss_ratio <= f.interval.high) {
        out.problems.push(format!(
            "{fault}: ratio outside its own interval {:?}",
            f.interval
        ));
    }
    match fault.segment {
        Segment::Stack => {
            if f.drop_reasons.is_empty()
                || f.drop_reasons.iter().any(|r| r.reason != "NETFILTER_DROP")
            {
                out.problems.push(format!(
                    "{fault}: a stack fault must come with NETFILTER_DROP, got {:?}",
                    f.drop_reasons
                ));
            }
        }
        Segment::Link => {
            if !f.drop_reasons.is_empty() {
                out.problems.push(format!(
                    "{fault}: link loss happens outside every node, yet reasons {:?}",
                    f.drop_reasons
                ));
            }
        }
    }
    // Every peer's pair-paths over this interface and family are evidence: the three peers,
    // each once per packet kind lost (fewer only when a low rate spared a pair).
    let node = format!("node-{}", fault.node);
    let peers: BTreeSet<&str> = f
        .evidence
        .iter()
        .map(|e| {
            if e.src_node == node {
                e.dst_node.as_str()
            } else {
                e.src_node.as_str()
            }
        })
        .collect();
    // A peer whose own interface drops everything of this family never gets a packet to or
    // from this one: its pairs cannot be evidence.
    let cut_off: BTreeSet<String> = all
        .iter()
        .filter(|o| {
            o.node != fault.node
                && o.interface == fault.interface
                && o.family == fault.family
                && o.rate >= 100.0
                && o.packets.is_none()
        })
        .map(|o| format!("node-{}", o.node))
        .collect();
    let expected: BTreeSet<String> = (1..=4)
        .map(|n| format!("node-{n}"))
        .filter(|n| *n != node && !cut_off.contains(n))
        .collect();
    let peers: BTreeSet<String> = peers.into_iter().map(str::to_string).collect();
    // Low rates may spare a pair in a round; from 30% on every reachable peer shows.
    if fault.rate >= 30.0 && peers != expected {
        out.problems.push(format!(
            "{fault}: evidence from peers {peers:?}, expected {expected:?}"
        ));
    }
    let network = report
        .paths
        .iter()
        .find(|p| p.src_interface == fault.interface)
        .map(|p| p.network.to_string());
    if network.as_ref() != Some(&f.network) {
        out.problems.push(format!(
            "{fault}: network {:?}, the interface's is {network:?}",
            f.network
        ));
    }
}

#[test]
fn localization_scenarios_find_exactly_the_injected_faults() {
    if !can_run("localization_scenarios_find_exactly_the_injected_faults") {
        return;
    }
    let (mut tp, mut fp, mut faults, mut problems) = (0usize, 0usize, 0usize, Vec::new());
    let mut summary = String::new();
    for s in SCENARIOS {
        let o = run(s);
        faults += s.faults.len();
        tp += o.detected_in.iter().filter(|d| d.is_some()).count();
        fp += o.false_positives.len();
        let rounds: Vec<String> = o
            .detected_in
            .iter()
            .map(|d| d.map_or("missed".into(), |r| r.to_string()))
            .collect();
        let _ = writeln!(
            summary,
            "{:<58} rounds to detect: {:<10} false positives: {}",
            s.name,
            if rounds.is_empty() {
                "-".into()
            } else {
                rounds.join(",")
            },
            o.false_positives.len()
        );
        for line in &o.lines {
            let _ = writeln!(summary, "{line}");
        }
        for fp in &o.false_positives {
            problems.push(format!("{}: false positive {fp}", s.name));
        }
        for (fault, d) in s.faults.iter().zip(&o.detected_in) {
            if d.is_none() {
                problems.push(format!(
                    "{}: {fault} not found in {MAX_ROUNDS} rounds",
                    s.name
                ));
            }
        }
        problems.extend(o.problems.into_iter().map(|p| format!("{}: {p}", s.name)));
    }
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if faults == 0 {
        1.0
    } else {
        tp as f64 / faults as f64
    };
    println!(
        "{summary}\n{} scenarios, {faults} faults: precision {precision:.3} ({tp} true, {fp} false \
         findings), recall {recall:.3}",
        SCENARIOS.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!((precision, recall), (1.0, 1.0));
}

/// A round restricted by `spec.pairPaths` (what `meshdoctor resume` runs) leaves the
/// destination agent without targets of its own: it must stay armed until the round's end to
/// see the probes it answers (it disarmed 100 ms after the start, and the loss was blamed on
/// the requests' side). With a third of node-2's echo replies dropped on its eth0 link, the
/// re-probe of the two pair-paths toward it places every lost probe on the way back and names
/// node-2's eth0 egress. (One pair-path alone could not tell node-2's egress from its peer's
/// ingress: both ends of the link explain it equally.)
#[test]
fn a_pair_paths_round_blames_the_answering_agent() {
    if !can_run("a_pair_paths_round_blames_the_answering_agent") {
        return;
    }
    let fault: Fault = "node-2:eth0:egress:ipv4:30:link:replies".parse().unwrap();
    let mut task = MeshTask {
        timeout_ms: 1000,
        ..MeshTask::new("pair", QPS, SECS)
    }
    .yaml();
    task.push_str(
        "  pairPaths:\n  - {srcNode: node-1, dstNode: node-2, network: default, family: ipv4}\n  \
         - {srcNode: node-3, dstNode: node-2, network: default, family: ipv4}\n",
    );
    let mut cfg = LabConfig::new(3);
    cfg.tasks = vec![("pair.yaml".into(), task)];
    cfg.faults = vec![fault.clone()];
    let lab = Lab::up(cfg).expect("lab up");
    let report = lab
        .wait_round("pair", 1, Duration::from_secs(60))
        .expect("round report");
    eprintln!("{}", meshdoctor_table::render_findings(&report.findings));
    assert_eq!(report.paths.len(), 2, "only the selected pair-paths");
    for path in &report.paths {
        assert!(path.lost > 0, "{path:?}");
        assert_eq!(
            path.segments.reply, path.lost,
            "every lost probe is lost on the way back: {:?}",
            path.segments
        );
    }
    let places: Vec<Place> = report.findings.iter().map(Place::of_finding).collect();
    assert_eq!(places, [Place::of_fault(&fault)], "{:?}", report.findings);
    assert_eq!(report.findings[0].packets, [Packet::Reply]);
}
