//! Builders shared by the controller's unit tests.

use std::path::PathBuf;

use meshdoctor_api::{
    Direction, Evidence, Family, Finding, HookCounts, Interval, LossSegments, Packet, PathResult,
    PathSegment, PathState, ReasonCount, RoundReport, RoundStatus, RoundSummary, Segment,
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
        summary: RoundSummary::default(),
        paths: vec![],
        app: None,
    }
}

/// A clean pair-path between agents: `probes` sent and received on `interface` of both
/// nodes, nothing observed; tests change what they need with struct update syntax.
pub fn mk_path(
    src: &str,
    dst: &str,
    (interface, network): (&str, &str),
    family: Family,
    probes: u32,
) -> PathResult {
    let addr = match family {
        Family::Ipv4 => "192.0.2.1".parse().unwrap(),
        Family::Ipv6 => "2001:db8::1".parse().unwrap(),
    };
    PathResult {
        path: 0,
        src_node: src.into(),
        dst_node: dst.into(),
        src_interface: interface.into(),
        dst_interface: interface.into(),
        network: network.into(),
        family,
        src_addr: addr,
        dst_addr: addr,
        external: false,
        state: PathState::Ok,
        planned: probes,
        sent: probes,
        received: probes,
        lost: 0,
        loss_ratio: 0.0,
        send_failed: 0,
        dst_reported: true,
        hooks: HookCounts::default(),
        segments: LossSegments::default(),
        kernel_rtt: None,
        user_rtt: None,
        network_rtt: None,
        dst_stack: None,
        drops: Vec::new(),
        errors: Vec::new(),
        probes: Vec::new(),
    }
}

/// A running agent pod on `node` with `ips`, and a network-status annotation when given.
pub fn mk_pod(
    name: &str,
    node: &str,
    ips: &[&str],
    annotation: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    k8s_openapi::api::core::v1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("meshdoctor".into()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "meshdoctor-agent".to_string(),
                )]
                .into(),
            ),
            annotations: annotation.map(|a| {
                [(
                    crate::kubernetes::agents::NETWORK_STATUS.to_string(),
                    a.to_string(),
                )]
                .into()
            }),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(
                ips.iter()
                    .map(|ip| k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() })
                    .collect(),
            ),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
                ip: "192.0.2.1".into(),
            }]),
            ..Default::default()
        }),
    }
}

/// A multus network-status annotation: eth0 on the cluster network, net1 on a macvlan.
pub const MULTUS: &str = r#"[
    {"name": "k8s-pod-network", "interface": "eth0", "ips": ["10.244.1.5", "fd00::5"],
     "mac": "aa:bb:cc:dd:ee:ff", "default": true, "dns": {}},
    {"name": "default/macvlan-conf", "interface": "net1", "ips": ["192.168.1.205"],
     "mac": "86:1d:96:ff:55:0d", "dns": {}}
    ]"#;

/// An agent registered with eth0 at `ip` and net1 at 192.168.1.205, networks named after the
/// interfaces (as an agent without `--interface NAME=NETWORK` registers).
pub fn mk_registration(node: &str, ip: &str) -> meshdoctor_api::AgentRegistration {
    let iface = |name: &str, ip: &str| meshdoctor_api::InterfaceInfo {
        name: name.into(),
        network: name.into(),
        ipv4: Some(ip.parse().unwrap()),
        ipv6: None,
    };
    meshdoctor_api::AgentRegistration {
        node: node.into(),
        interfaces: vec![iface("eth0", ip), iface("net1", "192.168.1.205")],
        timestamping: meshdoctor_api::Timestamping::Ebpf,
        probe_port: Some(9091),
    }
}

/// The in-memory API server of the Kubernetes backend's scenarios.
pub use meshdoctor_fake_apiserver::{FakeApiServer, Write};
