//! Builders shared by the controller's unit tests.

use std::path::PathBuf;

use meshdoctor_api::{
    Direction, Evidence, Family, Finding, Interval, Packet, PathSegment, ReasonCount, RoundReport,
    RoundStatus, RoundSummary, Segment,
};

/// A fresh directory under the system's temp dir, unique per test and process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshdoctor-{tag}-{}-{}",
        std::process::id(),
        crate::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A finding of 30 lost of 150 probes arriving on `node`'s net1 (IPv4 link), dropped for
/// `NETFILTER_DROP`, with evidence from two peers.
pub fn mk_finding(node: &str) -> Finding {
    let evidence = |src: &str| Evidence {
        path: 0,
        src_node: src.into(),
        src_interface: "net1".into(),
        dst_node: node.into(),
        dst_interface: "net1".into(),
        segment: PathSegment::Forward,
        lost: 15,
        probes: 75,
    };
    Finding {
        node: node.into(),
        interface: "net1".into(),
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
        evidence: vec![evidence("node-a"), evidence("node-b")],
    }
}

/// A round report of `task` with no paths: what status and storage tests need.
pub fn mk_round(task: &str, round: u32, status: RoundStatus) -> RoundReport {
    RoundReport {
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
        summary: RoundSummary {
            paths: 0,
            lossy_paths: 0,
            sent: 0,
            received: 0,
            lost: 0,
            success_rate: 0.0,
            mean_rtt_ms: None,
            unobserved_events: 0,
        },
        paths: vec![],
        app: None,
    }
}
