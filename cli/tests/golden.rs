//! Golden tests of what `check` prints: the tables and the JSON, built from a fixed round
//! report with a faulty interface and lossy pair-paths. The files in tests/golden/ are
//! compared byte for byte; `UPDATE_GOLDEN=1 cargo test -p meshdoctor-cli` rewrites them.

use std::path::PathBuf;

use meshdoctor_api::{
    DropCount, Evidence, Family, Finding, Histogram, HookCounts, Interval, LossSegments, MeshMode,
    MeshSummary, Packet, PathId, PathResult, ReasonCount, RoundReport, RoundStatus, RoundSummary,
    RttStats,
};
use meshdoctor_cli::{args::Output, output::CheckOutput};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (UPDATE_GOLDEN=1 cargo test -p meshdoctor-cli writes it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// A pair-path over `iface` of 50 probes, `lost` of them lost `segments`-wise.
fn path(
    n: PathId,
    src: &str,
    dst: &str,
    iface: &str,
    lost: u32,
    segments: LossSegments,
) -> PathResult {
    let octet = |node: &str| node.trim_start_matches("node-").parse::<u8>().unwrap();
    let (net, network) = if iface == "eth0" {
        (1, "pod")
    } else {
        (2, "storage")
    };
    PathResult {
        path: n,
        src_addr: format!("10.{net}.0.{}", octet(src)).parse().unwrap(),
        dst_addr: format!("10.{net}.0.{}", octet(dst)).parse().unwrap(),
        hooks: HookCounts {
            src_egress: 50,
            dst_ingress: 50 - segments.forward,
            dst_egress: 50 - segments.forward - segments.dst_stack,
            src_ingress: 50 - lost,
            delivered: 50 - lost,
        },
        kernel_rtt: RttStats::from_histogram(&Histogram::from_iter([40_000, 50_000, 120_000])),
        user_rtt: RttStats::from_histogram(&Histogram::from_iter([90_000, 100_000, 200_000])),
        ..PathResult::test(src, dst, (iface, network), Family::Ipv4, 50).with_loss(lost, segments)
    }
}

fn evidence(path: PathId, src: &str, dst: &str, lost: u32) -> Evidence {
    Evidence {
        path,
        lost,
        probes: 50,
        ..Evidence::test(src, dst)
    }
}

/// Three nodes on eth0 (network pod) and net1 (network storage); node-3's net1 drops a fifth
/// of what it receives, and nftables on node-3 drops some of it in its stack.
fn faulty_round() -> RoundReport {
    let forward = |n| LossSegments {
        forward: n,
        ..Default::default()
    };
    let mut paths = Vec::new();
    let nodes = ["node-1", "node-2", "node-3"];
    for src in nodes {
        for dst in nodes.iter().filter(|d| **d != src) {
            for iface in ["eth0", "net1"] {
                let lost = match (dst, iface) {
                    (&"node-3", "net1") if src == "node-1" => 10,
                    (&"node-3", "net1") => 12,
                    _ => 0,
                };
                let n = paths.len() as PathId;
                paths.push(path(n, src, dst, iface, lost, forward(lost)));
            }
        }
    }
    // node-2 -> node-3 over net1: 4 of its 12 lost in node-3's stack, by nftables.
    let p = paths
        .iter_mut()
        .find(|p| p.src_node == "node-2" && p.dst_node == "node-3" && p.network == "storage")
        .unwrap();
    p.segments = LossSegments {
        forward: 8,
        dst_stack: 4,
        ..Default::default()
    };
    p.drops = vec![DropCount {
        node: "node-3".into(),
        packet: Packet::Request,
        reason: "NETFILTER_DROP".into(),
        location: "nft_do_chain+0x4c1".into(),
        count: 4,
    }];
    let finding = Finding {
        network: "storage".into(),
        lost: 22,
        probes: 100,
        loss_ratio: 0.22,
        interval: Interval {
            low: 0.124,
            high: 0.345,
            level: 0.99,
        },
        drop_reasons: vec![ReasonCount {
            reason: "NETFILTER_DROP".into(),
            location: "nft_do_chain+0x4c1".into(),
            count: 4,
        }],
        evidence: vec![
            evidence(3, "node-1", "node-3", 10),
            evidence(7, "node-2", "node-3", 12),
        ],
        ..Finding::test("node-3")
    };
    let sent = 50 * paths.len() as u64;
    RoundReport {
        task: "meshdoctor-check-1700000000".into(),
        round: 1,
        round_tag: 1,
        status: RoundStatus::Fail,
        failure_reasons: vec!["success rate 96.33% is below the expected 100.00%".into()],
        start_ms: 1_700_000_000_000,
        end_ms: 1_700_000_003_000,
        expected_agents: nodes.map(String::from).to_vec(),
        not_reported: Vec::new(),
        summary: RoundSummary {
            paths: paths.len() as u32,
            lossy_paths: 2,
            sent,
            received: sent - 22,
            lost: 22,
            success_rate: (sent - 22) as f64 / sent as f64,
            mean_rtt_ms: Some(0.1),
            unobserved_events: 0,
            ..Default::default()
        },
        findings: vec![finding],
        paths,
        app: None,
        mesh: Some(MeshSummary {
            mode: MeshMode::Full,
            peers: None,
            coverage_rounds: 1,
            max_agent_rate: 400,
            budget: 1000,
        }),
        warnings: vec![],
        zones: Default::default(),
    }
}

fn healthy_round() -> RoundReport {
    let mut report = faulty_round();
    for p in &mut report.paths {
        *p = path(
            p.path,
            &p.src_node,
            &p.dst_node,
            &p.src_interface,
            0,
            LossSegments::default(),
        );
    }
    report.status = RoundStatus::Succeed;
    report.failure_reasons.clear();
    report.findings.clear();
    report.summary.lossy_paths = 0;
    report.summary.received = report.summary.sent;
    report.summary.lost = 0;
    report.summary.success_rate = 1.0;
    report
}

#[test]
fn check_table_of_a_faulty_round() {
    let out = CheckOutput::new("meshdoctor-check-1700000000", faulty_round());
    assert!(out.failed());
    golden("check-faulty.txt", &out.render(Output::Table).unwrap());
}

#[test]
fn check_json_of_a_faulty_round() {
    let out = CheckOutput::new("meshdoctor-check-1700000000", faulty_round());
    let json = out.render(Output::Json).unwrap();
    golden("check-faulty.json", &json);
    // The machine output reads back as what was printed.
    let back: CheckOutput = serde_json::from_str(&json).unwrap();
    assert_eq!(back, out);
    let yaml: CheckOutput = serde_yaml::from_str(&out.render(Output::Yaml).unwrap()).unwrap();
    assert_eq!(yaml, out);
}

#[test]
fn check_table_of_a_healthy_round() {
    let out = CheckOutput::new("meshdoctor-check-1700000000", healthy_round());
    assert!(!out.failed());
    golden("check-healthy.txt", &out.render(Output::Table).unwrap());
}

#[test]
fn failed_paths_select_themselves_again() {
    let out = CheckOutput::new("t", faulty_round());
    let pp: Vec<_> = out
        .failed_paths
        .iter()
        .map(|p| serde_json::to_value(p.pair_path()).unwrap())
        .collect();
    assert_eq!(
        pp,
        [
            serde_json::json!({"srcNode": "node-1", "dstNode": "node-3", "network": "storage", "family": "ipv4"}),
            serde_json::json!({"srcNode": "node-2", "dstNode": "node-3", "network": "storage", "family": "ipv4"}),
        ]
    );
    assert_eq!(out.failed_paths[1].segment.as_deref(), Some("forward"));
    assert_eq!(
        out.failed_paths[1].reason.as_deref(),
        Some("NETFILTER_DROP")
    );
}
