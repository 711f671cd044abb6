//! NetReach's Service targets (kdoctor's `clusterIP`, `nodePort`, `loadBalancer`, `ingress`):
//! the agent Service and Ingress turned into listed addresses that every agent probes besides
//! the mesh (pure; the watcher in [`super`] keeps the objects).
//!
//! The agents' probe responders stand behind the Service, so these probes test the whole
//! Service path (kube-proxy or the CNI's load balancing, the node ports, the cloud load
//! balancer, the ingress controller) down to some agent. Like any listed address, only the
//! source's hooks see them: a loss past the source is `beyond`, never placed on an interface.
//!
//! - `clusterIP`: every cluster IP of the Service in the task's families, at the probe port of
//!   the probe protocol (TCP for tcp and http, UDP for udp);
//! - `nodePort`: every node running an agent (its pod's host IPs) at that port's node port;
//! - `loadBalancer`: the Service's load-balancer ingress IPs at the probe port;
//! - `ingress`: the Ingress's load-balancer IPs at port 80 (tcp and http only).
//!
//! No ping reaches a Service port (kube-proxy does not answer pings to cluster IPs), so an
//! icmp task probes its Service targets over http, as kdoctor does, while its mesh stays icmp:
//! the targets carry their protocol and say so in their label (`clusterIP 10.96.0.10:9091 over
//! http`). A udp task skips the Ingress (it serves HTTP). A target that is asked for but does
//! not exist (no Service, no load-balancer address yet) is a problem that fails the round with
//! a reason naming the field, instead of silently probing less.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, networking::v1::Ingress};
use meshdoctor_api::{Family, NetReach, Protocol, task::ListedAddress};

/// Port the Ingress serves (HTTP).
pub const INGRESS_PORT: u16 = 80;

/// What the agent Service and Ingress offer, read from their objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceEndpoints {
    /// `namespace/name` of the Service, for messages; `None` when it does not exist.
    pub service: Option<String>,
    pub cluster_ips: Vec<IpAddr>,
    /// The Service's (port, nodePort) for TCP and for UDP.
    pub tcp: Option<(u16, Option<u16>)>,
    pub udp: Option<(u16, Option<u16>)>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `namespace/name` of the Ingress; `None` when it does not exist.
    pub ingress: Option<String>,
    pub ingress_ips: Vec<IpAddr>,
}

/// Reads the agent Service and Ingress (either may be absent).
pub fn service_endpoints(service: Option<&Service>, ingress: Option<&Ingress>) -> ServiceEndpoints {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        )
    };
    let ips = |list: Vec<&str>| -> Vec<IpAddr> {
        list.into_iter().filter_map(|ip| ip.parse().ok()).collect()
    };
    let mut out = ServiceEndpoints::default();
    if let Some(svc) = service {
        out.service = Some(name(&svc.metadata));
        let spec = svc.spec.as_ref();
        out.cluster_ips = ips(spec
            .and_then(|s| s.cluster_ips.as_ref())
            .map(|l| l.iter().map(String::as_str).collect())
            .or_else(|| {
                spec.and_then(|s| s.cluster_ip.as_deref())
                    .map(|ip| vec![ip])
            })
            .unwrap_or_default());
        for port in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            let (Ok(p), node_port) = (
                u16::try_from(port.port),
                port.node_port.and_then(|n| u16::try_from(n).ok()),
            ) else {
                continue;
            };
            let slot = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => &mut out.tcp,
                "UDP" => &mut out.udp,
                _ => continue,
            };
            slot.get_or_insert((p, node_port));
        }
        out.load_balancer_ips = ips(svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|l| l.iter().filter_map(|i| i.ip.as_deref()).collect())
            .unwrap_or_default());
    }
    if let Some(ing) = ingress {
        out.ingress = Some(name(&ing.metadata));
        out.ingress_ips = ips(ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|l| l.iter().filter_map(|i| i.ip.as_deref()).collect())
            .unwrap_or_default());
    }
    out
}

/// The Service targets a NetReach task asks for, and the problems that keep some from being
/// probed (one sentence each, naming the field). `node_ips` are the host IPs of the nodes
/// running an agent.
pub fn cluster_targets(
    task: &NetReach,
    ep: &ServiceEndpoints,
    node_ips: &[IpAddr],
) -> (Vec<ListedAddress>, Vec<String>) {
    let t = &task.spec.target;
    // The protocol of the Service probes: an icmp task's are http (see the module docs).
    let (protocol, instead) = match task.spec.request.protocol {
        Protocol::Icmp => (Protocol::Http, Some(Protocol::Http)),
        p => (p, None),
    };
    let wanted = |on: Option<bool>| on == Some(true);
    let family_on = |ip: &IpAddr| t.family_enabled(Family::of(ip));
    // None asked for, or rounds limited to spec.pairPaths: not a round failure (the task's
    // mesh runs; its warnings say why these are skipped).
    if t.service_targets().next().is_none() || !task.spec.pair_paths.is_empty() {
        return (vec![], vec![]);
    }
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    // Adds the addresses in the task's families; how many it added.
    let mut add = |kind: &str, ips: &[IpAddr], port: u16| -> usize {
        let before = targets.len();
        for ip in ips.iter().filter(|ip| family_on(ip)) {
            let addr = std::net::SocketAddr::new(*ip, port);
            let over = instead.map_or_else(String::new, |p| format!(" over {}", p.name()));
            targets.push(ListedAddress {
                label: format!("{kind} {addr}{over}"),
                ip: *ip,
                port: Some(port),
                protocol: instead,
            });
        }
        targets.len() - before
    };
    let service = ep.service.as_deref().unwrap_or("the agent Service");
    let port = match protocol {
        Protocol::Udp => ep.udp,
        _ => ep.tcp,
    };
    let service_wanted = wanted(t.cluster_ip) || wanted(t.node_port) || wanted(t.load_balancer);
    let proto = if protocol == Protocol::Udp {
        "UDP"
    } else {
        "TCP"
    };
    match (&ep.service, port) {
        (None, _) if service_wanted => problems.push(
            "spec.target: the agent Service does not exist, so clusterIP, nodePort and \
             loadBalancer cannot be probed"
                .to_string(),
        ),
        (Some(_), None) if service_wanted => problems.push(format!(
            "spec.target: Service {service} has no {proto} port for {} probes",
            protocol.name()
        )),
        (Some(_), Some((port, node_port))) => {
            if wanted(t.cluster_ip) && add("clusterIP", &ep.cluster_ips, port) == 0 {
                problems.push(format!(
                    "spec.target.clusterIP: Service {service} has no cluster IP in the \
                         task's families (headless?)"
                ));
            }
            if wanted(t.node_port) {
                match node_port {
                    Some(np) => {
                        if add("nodePort", node_ips, np) == 0 {
                            problems.push(format!(
                                "spec.target.nodePort: no node running an agent has a host IP \
                                 in the task's families (Service {service})"
                            ));
                        }
                    }
                    None => problems.push(format!(
                        "spec.target.nodePort: Service {service} has no node port (type \
                         ClusterIP); make it NodePort or LoadBalancer"
                    )),
                }
            }
            if wanted(t.load_balancer) && add("loadBalancer", &ep.load_balancer_ips, port) == 0 {
                problems.push(format!(
                    "spec.target.loadBalancer: Service {service} has no load-balancer IP in \
                         the task's families yet"
                ));
            }
        }
        _ => {}
    }
    if wanted(t.ingress) && protocol != Protocol::Udp {
        match &ep.ingress {
            None => {
                problems.push("spec.target.ingress: the agent Ingress does not exist".to_string())
            }
            Some(name) => {
                if add("ingress", &ep.ingress_ips, INGRESS_PORT) == 0 {
                    problems.push(format!(
                        "spec.target.ingress: Ingress {name} has no load-balancer IP in the \
                         task's families yet"
                    ));
                }
            }
        }
    }
    (targets, problems)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{
                LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
            },
            networking::v1::{
                IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
            },
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use meshdoctor_api::Task;

    use super::*;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("meshdoctor".into()),
            ..Default::default()
        }
    }

    fn mk_service(node_ports: bool, lb: &[&str]) -> Service {
        let port = |protocol: &str, node_port: i32| ServicePort {
            name: Some(format!("probe-{}", protocol.to_lowercase())),
            port: 9091,
            protocol: Some(protocol.into()),
            node_port: node_ports.then_some(node_port),
            ..Default::default()
        };
        Service {
            metadata: meta("meshdoctor-agent"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.20".into()),
                cluster_ips: Some(vec!["10.96.0.20".into(), "fd00:96::20".into()]),
                ports: Some(vec![port("TCP", 30091), port("UDP", 30092)]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        lb.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        }
    }

    fn mk_ingress(ips: &[&str]) -> Ingress {
        Ingress {
            metadata: meta("meshdoctor-agent"),
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| IngressLoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
            }),
            ..Default::default()
        }
    }

    fn mk_task(protocol: &str, targets: &str) -> NetReach {
        let yaml = format!(
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: svc}}\n\
             spec:\n  request: {{protocol: {protocol}}}\n  target: {{ipv4: true, ipv6: true, {targets}}}\n"
        );
        match Task::from_yaml("t.yaml", &yaml).unwrap() {
            Task::NetReach(t) => t,
            _ => unreachable!(),
        }
    }

    fn labels(targets: &[ListedAddress]) -> Vec<&str> {
        targets.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn every_service_target_in_both_families() {
        let ep = service_endpoints(
            Some(&mk_service(true, &["203.0.113.5"])),
            Some(&mk_ingress(&["203.0.113.9"])),
        );
        let nodes: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let all = "clusterIP: true, nodePort: true, loadBalancer: true, ingress: true";
        let (targets, problems) = cluster_targets(&mk_task("http", all), &ep, &nodes);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            labels(&targets),
            [
                "clusterIP 10.96.0.20:9091",
                "clusterIP [fd00:96::20]:9091",
                "nodePort 192.0.2.1:30091",
                "nodePort [2001:db8::1]:30091",
                "loadBalancer 203.0.113.5:9091",
                "ingress 203.0.113.9:80",
            ]
        );
        // udp: the UDP port's node port, no ingress.
        let (targets, problems) = cluster_targets(&mk_task("udp", all), &ep, &nodes);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(targets[2].label, "nodePort 192.0.2.1:30092");
        assert!(targets.iter().all(|t| !t.label.starts_with("ingress")));
        // icmp: probed over http as kdoctor does (no ping reaches a Service port), and the
        // labels say so.
        let (targets, problems) = cluster_targets(&mk_task("icmp", all), &ep, &nodes);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(targets.len(), 6);
        assert_eq!(targets[0].label, "clusterIP 10.96.0.20:9091 over http");
        assert_eq!(targets[5].label, "ingress 203.0.113.9:80 over http");
        assert!(targets.iter().all(|t| t.protocol == Some(Protocol::Http)));
    }

    #[test]
    fn families_filter_the_addresses() {
        let ep = service_endpoints(Some(&mk_service(true, &[])), None);
        let mut task = mk_task("tcp", "clusterIP: true");
        task.spec.target.ipv6 = false;
        let (targets, _) = cluster_targets(&task, &ep, &[]);
        assert_eq!(labels(&targets), ["clusterIP 10.96.0.20:9091"]);
    }

    #[test]
    fn missing_pieces_are_problems_naming_the_field() {
        let tcp = |targets: &str| mk_task("tcp", targets);
        let none = ServiceEndpoints::default();
        let (_, p) = cluster_targets(&tcp("clusterIP: true"), &none, &[]);
        assert_eq!(
            p,
            [
                "spec.target: the agent Service does not exist, so clusterIP, nodePort and \
              loadBalancer cannot be probed"
            ]
        );
        let ep = service_endpoints(Some(&mk_service(false, &[])), None);
        let (_, p) = cluster_targets(
            &tcp("nodePort: true, loadBalancer: true, ingress: true"),
            &ep,
            &[],
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with(
                "spec.target.nodePort: Service meshdoctor/meshdoctor-agent has no node port"
            ),
            "{}",
            p[0]
        );
        assert!(p[1].starts_with("spec.target.loadBalancer: Service meshdoctor/meshdoctor-agent has no load-balancer IP"), "{}", p[1]);
        assert_eq!(
            p[2],
            "spec.target.ingress: the agent Ingress does not exist"
        );
        let ep = service_endpoints(Some(&mk_service(true, &[])), Some(&mk_ingress(&[])));
        let (_, p) = cluster_targets(&tcp("nodePort: true, ingress: true"), &ep, &[]);
        assert!(
            p[0].contains("no node running an agent has a host IP"),
            "{p:?}"
        );
        assert!(
            p[1].contains("Ingress meshdoctor/meshdoctor-agent has no load-balancer IP"),
            "{p:?}"
        );
        // A Service without a UDP port cannot take udp probes.
        let mut svc = mk_service(true, &[]);
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap().pop();
        let ep = service_endpoints(Some(&svc), None);
        let (_, p) = cluster_targets(&mk_task("udp", "clusterIP: true"), &ep, &[]);
        assert_eq!(
            p,
            ["spec.target: Service meshdoctor/meshdoctor-agent has no UDP port for udp probes"]
        );
    }
}
