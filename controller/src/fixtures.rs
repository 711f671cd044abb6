//! Builders shared by the controller's tests (unit tests, and its integration tests through the
//! `testing` feature); the report types' own builders are the api's (`PathResult::test`, ...).

use std::path::PathBuf;

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

/// Removes a [`temp_dir`] that a stopped task may still be writing into for a moment (a
/// running mark whose write began before the task was stopped): retries for up to 2 s.
pub fn remove_temp_dir(dir: &std::path::Path) {
    for _ in 0..40 {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} kept being written to", dir.display());
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
        labels: Default::default(),
    }
}

/// The in-memory API server of the Kubernetes backend's scenarios.
#[cfg(test)]
pub use meshdoctor_fake_apiserver::{FakeApiServer, Write};
