//! Agents as the DaemonSet's pods: which node each runs on, its interfaces and the networks they
//! belong to, read from the pod (pure; the watcher in [`super`] feeds it).
//!
//! An agent still registers with the controller over HTTP (it reports what it sees: interface
//! names, addresses, timestamping, probe port), but in Kubernetes the pod is the authority on
//! membership and networks:
//! - only agents whose pod exists, is scheduled, running, not terminating and has an IP take part
//!   in rounds, so a deleted pod leaves the mesh at once instead of being reported missing;
//! - an interface's network is the multus network name from the pod's
//!   `k8s.v1.cni.cncf.io/network-status` annotation (`default/macvlan-conf`), so that full meshes
//!   pair each pod's `net1` with the other pods' interfaces of the same network whatever the
//!   interface is called there.
//!
//! A malformed annotation is not fatal: the pod takes part with the networks the agent named
//! itself, and the problem is reported (an event on the pod), never a crash loop.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;
use meshdoctor_api::{AgentRegistration, task::PRIMARY_INTERFACE};
use serde::Deserialize;

/// The multus annotation that lists a pod's attachments as the CNI set them up.
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// An agent pod that can take part in rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct PodAgent {
    /// The pod's name, for events and the agents view.
    pub pod: String,
    pub node: String,
    /// `status.podIPs`: the primary interface's addresses.
    pub pod_ips: Vec<IpAddr>,
    /// `status.hostIPs`: the node's addresses, where NodePort targets answer.
    pub host_ips: Vec<IpAddr>,
    /// Attachments from the network-status annotation; empty without multus.
    pub attachments: Vec<Attachment>,
    /// What was wrong with the pod's metadata but did not keep it out (a malformed
    /// annotation), one sentence naming the field.
    pub problems: Vec<String>,
}

/// One entry of the network-status annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The multus network (`namespace/name`, or the cluster network's name for the default).
    pub network: String,
    /// The interface inside the pod.
    pub interface: String,
    pub ips: Vec<IpAddr>,
    /// The cluster's default network (the primary interface).
    pub default: bool,
}

/// Why a pod of the DaemonSet is not (yet) an agent; shown in the agents view, not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAgent {
    #[error("pod {0} is not scheduled to a node yet")]
    Unscheduled(String),
    #[error("pod {0} is terminating")]
    Terminating(String),
    #[error("pod {pod} is {phase}, not Running")]
    NotRunning { pod: String, phase: String },
    #[error("pod {0} has no IP yet (status.podIPs is empty)")]
    NoIp(String),
}

/// Reads an agent pod. A pod without a node, without IPs, not running or terminating is no
/// agent yet (it becomes one with a later update of the pod).
pub fn pod_agent(pod: &Pod) -> Result<PodAgent, NotAgent> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(NotAgent::Terminating(name));
    }
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Err(NotAgent::Unscheduled(name));
    };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase != "Running" {
        return Err(NotAgent::NotRunning {
            pod: name,
            phase: if phase.is_empty() {
                "without a phase".into()
            } else {
                phase
            },
        });
    }
    let mut problems = Vec::new();
    let mut ips = |field: &str, list: Vec<&str>| -> Vec<IpAddr> {
        list.into_iter()
            .filter_map(|ip| match ip.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    problems.push(format!("{field}: {ip:?} is not an IP address"));
                    None
                }
            })
            .collect()
    };
    let pod_ips = ips(
        "status.podIPs",
        status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|l| l.iter().map(|p| p.ip.as_str()).collect())
            .or_else(|| status.and_then(|s| s.pod_ip.as_deref()).map(|ip| vec![ip]))
            .unwrap_or_default(),
    );
    let host_ips = ips(
        "status.hostIPs",
        status
            .and_then(|s| s.host_ips.as_ref())
            .map(|l| l.iter().map(|p| p.ip.as_str()).collect())
            .or_else(|| status.and_then(|s| s.host_ip.as_deref()).map(|ip| vec![ip]))
            .unwrap_or_default(),
    );
    if pod_ips.is_empty() {
        return Err(NotAgent::NoIp(name));
    }
    let attachments = match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS))
    {
        None => vec![],
        Some(text) => parse_network_status(text).unwrap_or_else(|e| {
            problems.push(format!(
                "metadata.annotations[{NETWORK_STATUS}]: {e}; the agent's own network names \
                 are used"
            ));
            vec![]
        }),
    };
    Ok(PodAgent {
        pod: name,
        node,
        pod_ips,
        host_ips,
        attachments,
        problems,
    })
}

/// Parses the network-status annotation: a JSON list of `{name, interface, ips, default}`.
/// Entries multus writes without an interface are the default network's on `eth0`, or are
/// skipped when not default (nothing to match them to). The error says what was expected.
fn parse_network_status(text: &str) -> Result<Vec<Attachment>, String> {
    #[derive(Deserialize)]
    struct Entry {
        name: String,
        #[serde(default)]
        interface: Option<String>,
        #[serde(default)]
        ips: Vec<String>,
        #[serde(default)]
        default: bool,
    }
    let entries: Vec<Entry> = serde_json::from_str(text).map_err(|e| {
        format!("expected a JSON list of {{\"name\", \"interface\", \"ips\"}} objects: {e}")
    })?;
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let interface = match (e.interface, e.default) {
            (Some(i), _) if !i.is_empty() => i,
            (_, true) => PRIMARY_INTERFACE.to_string(),
            _ => continue,
        };
        let ips = e
            .ips
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| format!("entry {i} ({}): {ip:?} is not an IP address", e.name))
            })
            .collect::<Result<_, _>>()?;
        out.push(Attachment {
            network: e.name,
            interface,
            ips,
            default: e.default,
        });
    }
    Ok(out)
}

impl PodAgent {
    /// The agent's registration as rounds use it: the registered interfaces, each renamed to
    /// the network its attachment names (matched by interface name), with only the addresses
    /// the pod vouches for ([`unvouched`](Self::unvouched) lists the others).
    pub fn apply_to(&self, registration: &AgentRegistration) -> AgentRegistration {
        let mut merged = registration.clone();
        for iface in &mut merged.interfaces {
            if let Some(a) = self.attachments.iter().find(|a| a.interface == iface.name) {
                iface.network = a.network.clone();
            }
            if let Some(vouched) = self.addresses_of(&iface.name) {
                iface.ipv4 = iface.ipv4.filter(|ip| vouched.contains(&IpAddr::V4(*ip)));
                iface.ipv6 = iface.ipv6.filter(|ip| vouched.contains(&IpAddr::V6(*ip)));
            }
        }
        merged
    }

    /// The registered addresses the pod does not vouch for, by interface: they are left out of
    /// rounds. An agent's word alone would let a compromised agent register a victim's address
    /// and have every peer probe it.
    pub fn unvouched(&self, registration: &AgentRegistration) -> Vec<(String, IpAddr)> {
        let mut out = Vec::new();
        for iface in &registration.interfaces {
            let Some(vouched) = self.addresses_of(&iface.name) else {
                continue;
            };
            let registered = [iface.ipv4.map(IpAddr::V4), iface.ipv6.map(IpAddr::V6)];
            for ip in registered.into_iter().flatten() {
                if !vouched.contains(&ip) {
                    out.push((iface.name.clone(), ip));
                }
            }
        }
        out
    }

    /// What the pod says an interface's addresses are: the primary interface's are
    /// `status.podIPs` (the node's own under hostNetwork), a multus interface's its
    /// attachment's `ips`; `None` for an interface the pod says nothing of (a second host
    /// interface under hostNetwork), which keeps the addresses its agent registered.
    fn addresses_of(&self, interface: &str) -> Option<&[IpAddr]> {
        if let Some(a) = self.attachments.iter().find(|a| a.interface == interface) {
            return Some(&a.ips);
        }
        (interface == PRIMARY_INTERFACE).then_some(self.pod_ips.as_slice())
    }
}

/// The round roster: registered agents whose node runs an agent pod, with the pod's network
/// names. Registrations without a pod (a deleted pod, an agent outside the DaemonSet) are left
/// out, so they are neither probed nor reported missing.
pub fn roster(
    pods: &BTreeMap<String, PodAgent>,
    node_labels: impl Fn(&str) -> Option<BTreeMap<String, String>>,
    registered: impl IntoIterator<Item = AgentRegistration>,
) -> Vec<AgentRegistration> {
    registered
        .into_iter()
        .filter_map(|r| {
            let mut r = pods.get(&r.node)?.apply_to(&r);
            // The Node object is the authority on its labels, as the pod is on its networks.
            r.labels = node_labels(&r.node).unwrap_or_default();
            Some(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use meshdoctor_api::task::DEFAULT_TOPOLOGY_KEY;

    use super::*;
    use crate::fixtures::{MULTUS, mk_pod, mk_registration};

    #[test]
    fn multus_annotation_names_the_networks() {
        let agent = pod_agent(&mk_pod("a", "node-a", &["10.244.1.5"], Some(MULTUS))).unwrap();
        assert_eq!(agent.node, "node-a");
        assert!(agent.problems.is_empty(), "{:?}", agent.problems);
        assert_eq!(agent.host_ips, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(agent.attachments.len(), 2);
        assert_eq!(
            agent.attachments[1],
            Attachment {
                network: "default/macvlan-conf".into(),
                interface: "net1".into(),
                ips: vec!["192.168.1.205".parse().unwrap()],
                default: false,
            }
        );
        let merged = agent.apply_to(&mk_registration("node-a", "10.244.1.5"));
        let networks: Vec<&str> = merged.interfaces.iter().map(|i| &*i.network).collect();
        assert_eq!(networks, ["k8s-pod-network", "default/macvlan-conf"]);
        assert!(
            agent.attachments[0]
                .ips
                .contains(&"fd00::5".parse().unwrap())
        );
        assert_eq!(agent.attachments[1].interface, "net1");
    }

    #[test]
    fn a_default_entry_without_interface_is_eth0_and_others_are_skipped() {
        let a = parse_network_status(
            r#"[{"name": "cbr0", "ips": ["10.0.0.1"], "default": true},
                {"name": "other", "ips": ["10.1.0.1"]}]"#,
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!((&*a[0].interface, a[0].default), ("eth0", true));
    }

    #[test]
    fn a_malformed_annotation_is_a_problem_not_a_failure() {
        for (bad, says) in [
            ("{not json", "expected a JSON list"),
            (r#"{"name": "x"}"#, "expected a JSON list"),
            (
                r#"[{"name": "n", "interface": "net1", "ips": ["10.0.0.300"]}]"#,
                "entry 0 (n): \"10.0.0.300\" is not an IP address",
            ),
        ] {
            let agent = pod_agent(&mk_pod("a", "node-a", &["10.0.0.1"], Some(bad))).unwrap();
            assert!(agent.attachments.is_empty());
            assert_eq!(agent.problems.len(), 1, "{bad}");
            assert!(
                agent.problems[0]
                    .starts_with("metadata.annotations[k8s.v1.cni.cncf.io/network-status]: ")
                    && agent.problems[0].contains(says),
                "{}",
                agent.problems[0]
            );
            // The agent's own network names stay.
            let merged = agent.apply_to(&mk_registration("node-a", "10.244.1.5"));
            assert_eq!(merged.interfaces[1].network, "net1");
        }
    }

    #[test]
    fn pods_that_are_no_agent_yet_say_why() {
        let mut pod = mk_pod("a", "node-a", &[], None);
        assert_eq!(pod_agent(&pod), Err(NotAgent::NoIp("a".into())));
        pod.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(
            pod_agent(&pod).unwrap_err().to_string(),
            "pod a is Pending, not Running"
        );
        pod.spec.as_mut().unwrap().node_name = None;
        assert_eq!(pod_agent(&pod), Err(NotAgent::Unscheduled("a".into())));
        let mut pod = mk_pod("a", "node-a", &["10.0.0.1"], None);
        pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(pod_agent(&pod), Err(NotAgent::Terminating("a".into())));
        // A bad pod IP is a problem; with no good one left the pod is no agent.
        let pod = mk_pod("a", "node-a", &["bogus", "10.0.0.1"], None);
        let agent = pod_agent(&pod).unwrap();
        assert_eq!(
            agent.problems,
            ["status.podIPs: \"bogus\" is not an IP address"]
        );
        assert_eq!(agent.pod_ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn the_roster_is_registered_agents_with_a_pod() {
        let pods: BTreeMap<String, PodAgent> = [("node-a", MULTUS), ("node-c", "[]")]
            .into_iter()
            .map(|(node, ann)| {
                let p = pod_agent(&mk_pod(node, node, &["10.0.0.1"], Some(ann))).unwrap();
                (node.to_string(), p)
            })
            .collect();
        // node-a's Node has a zone; node-c's is not mirrored (yet): no labels, whatever the
        // agent claims.
        let zone = BTreeMap::from([(DEFAULT_TOPOLOGY_KEY.to_string(), "zone-a".to_string())]);
        let node_labels = |node: &str| (node == "node-a").then(|| zone.clone());
        let mut registered = ["node-a", "node-b", "node-c"].map(|n| mk_registration(n, "10.0.0.1"));
        registered[2].labels = BTreeMap::from([("claimed".into(), "x".into())]);
        let roster = roster(&pods, node_labels, registered);
        let nodes: Vec<&str> = roster.iter().map(|r| &*r.node).collect();
        assert_eq!(nodes, ["node-a", "node-c"]);
        assert_eq!(roster[0].labels, zone);
        assert!(roster[1].labels.is_empty());
        assert_eq!(roster[0].interfaces[1].network, "default/macvlan-conf");
        assert_eq!(roster[1].interfaces[1].network, "net1");
    }

    /// The pod vouches for the primary interface's addresses (`status.podIPs`) and for a
    /// multus interface's (its attachment); a registered address it does not list is left out
    /// of rounds. An interface the pod says nothing of keeps what the agent registered.
    #[test]
    fn only_the_addresses_the_pod_vouches_for_are_probed() {
        let agent = pod_agent(&mk_pod("a", "node-a", &["10.244.1.5"], Some(MULTUS))).unwrap();
        let honest = mk_registration("node-a", "10.244.1.5");
        assert_eq!(agent.unvouched(&honest), []);
        assert_eq!(
            agent.apply_to(&honest).interfaces[0].ipv4,
            honest.interfaces[0].ipv4
        );
        // A victim's address on eth0 and on net1.
        let mut lying = mk_registration("node-a", "10.99.0.1");
        lying.interfaces[1].ipv4 = Some("192.168.1.1".parse().unwrap());
        assert_eq!(
            agent.unvouched(&lying),
            [
                ("eth0".to_string(), "10.99.0.1".parse::<IpAddr>().unwrap()),
                ("net1".to_string(), "192.168.1.1".parse().unwrap())
            ]
        );
        let merged = agent.apply_to(&lying);
        assert_eq!(
            (merged.interfaces[0].ipv4, merged.interfaces[1].ipv4),
            (None, None)
        );
        // Without multus, the pod vouches for eth0 only: net1 keeps its address.
        let plain = pod_agent(&mk_pod("a", "node-a", &["10.99.0.1"], None)).unwrap();
        let mut other = mk_registration("node-a", "10.99.0.1");
        other.interfaces[0].ipv6 = Some("fd00::9".parse().unwrap());
        assert_eq!(
            plain.unvouched(&other),
            [("eth0".to_string(), "fd00::9".parse::<IpAddr>().unwrap())]
        );
        let merged = plain.apply_to(&other);
        assert_eq!(merged.interfaces[0].ipv6, None);
        assert_eq!(merged.interfaces[1].ipv4, other.interfaces[1].ipv4);
    }
}
