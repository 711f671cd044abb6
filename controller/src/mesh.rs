//! Round planning: the full mesh of a NetReach task over a roster snapshot, one plan per agent.
//!
//! Every ordered pair of distinct agents is probed over every pair of their interfaces on the
//! same network, in every enabled family both ends have an address for. Each such directed
//! pair-path gets a round-unique 16-bit index that agents put in their probe ids, which is how
//! both ends' reports are joined later.
//!
//! The agents of another cluster in `spec.target.remoteAgents` are peers like the local ones,
//! probed from every local agent by the same rules, but they take no part in the round: their
//! targets are `external` (no destination report is expected) and they get no plan.
//!
//! A task's `spec.pairPaths` narrows the round to the mesh's pair-paths it matches (and drops
//! the listed addresses and Service targets): the re-probe of what failed.

use std::collections::BTreeMap;

use meshdoctor_api::{
    AgentRegistration, Family, IncomingPath, InterfaceInfo, NetReach, PlannedTarget, Protocol,
    RoundPlan,
    task::{ListedAddress, NetReachTarget, PRIMARY_INTERFACE, RemoteAgent},
};

use meshdoctor_api::plan::MAX_PATHS;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeshError {
    #[error(
        "the full mesh has {paths} pair-paths but a round carries at most {MAX_PATHS} \
         (16-bit path index); narrow spec.target.interfaces, the families or \
         spec.target.remoteAgents"
    )]
    TooManyPaths { paths: usize },
    /// Reports could not tell the two apart (the task cannot know the roster when loaded).
    #[error(
        "spec.target.remoteAgents names {node:?}, which is also a registered agent of this \
         cluster: prefix remote agents with their cluster's name"
    )]
    RemoteIsLocal { node: String },
}

/// An agent a local agent probes: another agent of the roster, or one of
/// `spec.target.remoteAgents` (`external`: it has no plan and sends no report).
struct Peer<'a> {
    node: &'a str,
    interfaces: &'a [InterfaceInfo],
    probe_port: Option<u16>,
    external: bool,
}

/// What all plans of one round share besides the task spec. The round tag is not among them:
/// the mailbox sets it when it opens the round ([`crate::mailbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundMeta<'a> {
    pub task: &'a str,
    pub round: u32,
    pub start_at_ms: u64,
    pub report_deadline_ms: u64,
}

/// Plans of one round by node; `service_targets` are probed like listed addresses. Every
/// agent of the roster gets one, also without targets (none of its pair-paths selected by
/// `spec.pairPaths`): the plan arms its observers so that it records the probes it answers.
/// Remote agents get none.
pub fn build_plans(
    task: &NetReach,
    roster: &[AgentRegistration],
    service_targets: &[ListedAddress],
    meta: RoundMeta<'_>,
) -> Result<BTreeMap<String, RoundPlan>, MeshError> {
    let target = &task.spec.target;
    // Sorted and de-duplicated by node, so path indexes are stable for a given roster.
    let agents: BTreeMap<&str, &AgentRegistration> =
        roster.iter().map(|a| (a.node.as_str(), a)).collect();
    let remotes: BTreeMap<&str, &RemoteAgent> = target
        .remotes()
        .iter()
        .map(|r| (r.node.as_str(), r))
        .collect();
    if let Some(&node) = remotes.keys().find(|n| agents.contains_key(*n)) {
        return Err(MeshError::RemoteIsLocal { node: node.into() });
    }
    // The local mesh (with endpoint), then the remote agents.
    let local_peers = agents.values().filter(|_| target.endpoint).map(|a| Peer {
        node: &a.node,
        interfaces: &a.interfaces,
        probe_port: a.probe_port,
        external: false,
    });
    let remote_peers = remotes.values().map(|r| Peer {
        node: &r.node,
        interfaces: &r.interfaces,
        probe_port: r.probe_port,
        external: true,
    });
    let peers: Vec<Peer<'_>> = local_peers.chain(remote_peers).collect();
    let families = families(target);

    let protocol = task.spec.request.protocol;
    // Validated when the task was loaded; the Service targets probe the same way.
    let mut listed = task.listed_addresses();
    listed.extend_from_slice(service_targets);
    let mut per_src: BTreeMap<&str, Vec<PlannedTarget>> = BTreeMap::new();
    let mut paths = 0usize;
    let mut push = |targets: &mut Vec<PlannedTarget>, t: PlannedTarget| {
        if paths < MAX_PATHS {
            targets.push(PlannedTarget {
                path: paths as u16,
                ..t
            });
        }
        paths += 1;
    };
    for (&src, src_agent) in &agents {
        let targets = per_src.entry(src).or_default();
        for dst in peers.iter().filter(|p| p.node != src) {
            for si in src_agent.interfaces.iter().filter(|i| selected(target, i)) {
                for di in dst.interfaces.iter().filter(|i| selected(target, i)) {
                    if si.network != di.network {
                        continue;
                    }
                    for &family in &families {
                        let (Some(src_addr), Some(dst_addr)) = (si.addr(family), di.addr(family))
                        else {
                            continue;
                        };
                        if !task.selects_pair_path(src, dst.node, &si.network, family) {
                            continue;
                        }
                        let dst_port = match protocol {
                            Protocol::Icmp => None,
                            _ => dst.probe_port,
                        };
                        push(
                            targets,
                            PlannedTarget {
                                path: 0,
                                dst_node: dst.node.to_string(),
                                src_interface: si.name.clone(),
                                dst_interface: di.name.clone(),
                                network: si.network.clone(),
                                family,
                                src_addr,
                                dst_addr,
                                dst_port,
                                external: dst.external,
                                protocol: None,
                            },
                        );
                    }
                }
            }
        }
        // Listed addresses: from every agent, over the selected interfaces (the primary one
        // by default) that have an address of the listed one's family; none when the round
        // is limited to spec.pairPaths.
        let listed = if task.spec.pair_paths.is_empty() {
            &listed[..]
        } else {
            &[]
        };
        let sources = src_agent
            .interfaces
            .iter()
            .filter(|i| match &target.interfaces {
                Some(_) => selected(target, i),
                None => i.name == PRIMARY_INTERFACE,
            });
        for si in sources {
            for a in listed {
                let family = Family::of(&a.ip);
                let Some(src_addr) = si.addr(family) else {
                    continue;
                };
                push(
                    targets,
                    PlannedTarget {
                        path: 0,
                        dst_node: a.label.clone(),
                        src_interface: si.name.clone(),
                        dst_interface: "-".into(),
                        network: si.network.clone(),
                        family,
                        src_addr,
                        dst_addr: a.ip,
                        dst_port: a.port,
                        external: true,
                        protocol: a.protocol,
                    },
                );
            }
        }
    }
    if paths > MAX_PATHS {
        return Err(MeshError::TooManyPaths { paths });
    }

    let rq = &task.spec.request;
    let mut incoming: BTreeMap<String, Vec<IncomingPath>> = BTreeMap::new();
    if rq.protocol.is_tcp() {
        for t in per_src.values().flatten().filter(|t| !t.external) {
            incoming
                .entry(t.dst_node.clone())
                .or_default()
                .push(IncomingPath {
                    path: t.path,
                    src_addr: t.src_addr,
                    dst_addr: t.dst_addr,
                });
        }
    }
    Ok(per_src
        .into_iter()
        .map(|(node, targets)| {
            let plan = RoundPlan {
                task: meta.task.to_string(),
                round: meta.round,
                round_tag: 0,
                protocol: rq.protocol,
                start_at_ms: meta.start_at_ms,
                duration_ms: u64::from(rq.duration_in_second) * 1000,
                qps: rq.qps,
                timeout_ms: u64::from(rq.per_request_timeout_in_ms),
                report_deadline_ms: meta.report_deadline_ms,
                targets,
                incoming: incoming.remove(node).unwrap_or_default(),
                app: None,
            };
            (node.to_string(), plan)
        })
        .collect())
}

fn families(target: &NetReachTarget) -> Vec<Family> {
    [(target.ipv4, Family::Ipv4), (target.ipv6, Family::Ipv6)]
        .into_iter()
        .filter_map(|(on, family)| on.then_some(family))
        .collect()
}

/// `spec.target.interfaces` names networks or interface names; omitted means all.
fn selected(target: &NetReachTarget, iface: &InterfaceInfo) -> bool {
    target.interfaces.as_ref().is_none_or(|names| {
        names
            .iter()
            .any(|n| *n == iface.network || *n == iface.name)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use meshdoctor_api::Timestamping;

    use super::*;

    pub(crate) fn mk_task(extra_target: &str) -> NetReach {
        let yaml = format!(
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: mesh}}\nspec:\n  \
             schedule: {{schedule: '@every 10s'}}\n  request: {{qps: 10, durationInSecond: 2}}\n  \
             target: {{ipv4: true, ipv6: true{extra_target}}}\n"
        );
        NetReach::from_yaml("mesh.yaml", &yaml).unwrap()
    }

    /// Agent `n` with `eth0` on network `pod` and `net1` on network `sec`, dual-stack.
    pub(crate) fn mk_agent(n: u8) -> AgentRegistration {
        let iface = |name: &str, network: &str, net: u8| InterfaceInfo {
            name: name.into(),
            network: network.into(),
            ipv4: Some([10, net, 0, n].into()),
            ipv6: Some(format!("fd00:{net}::{n}").parse().unwrap()),
        };
        AgentRegistration {
            node: format!("node-{n}"),
            interfaces: vec![iface("eth0", "pod", 1), iface("net1", "sec", 2)],
            timestamping: Timestamping::Ebpf,
            probe_port: Some(9091),
        }
    }

    pub(crate) fn mk_meta() -> RoundMeta<'static> {
        RoundMeta {
            task: "mesh",
            round: 1,
            start_at_ms: 1_000,
            report_deadline_ms: 9_000,
        }
    }

    fn all_targets(plans: &BTreeMap<String, RoundPlan>) -> Vec<&PlannedTarget> {
        plans.values().flat_map(|p| &p.targets).collect()
    }

    /// A plan's pair-paths as `spec.pairPaths` selects them: (dstNode, network, family).
    fn pair_paths_of(plan: &RoundPlan) -> Vec<(&str, &str, Family)> {
        plan.targets
            .iter()
            .map(|t| (t.dst_node.as_str(), t.network.as_str(), t.family))
            .collect()
    }

    #[test]
    fn full_mesh_dual_stack_two_networks() {
        let roster: Vec<_> = (1..=4).map(mk_agent).collect();
        let plans = build_plans(&mk_task(""), &roster, &[], mk_meta()).unwrap();
        assert_eq!(plans.len(), 4);
        let targets = all_targets(&plans);
        // 4 x 3 ordered pairs x 2 same-network interface pairs x 2 families.
        assert_eq!(targets.len(), 48);
        let indexes: HashSet<u16> = targets.iter().map(|t| t.path).collect();
        assert_eq!(indexes.len(), 48);
        assert!(targets.iter().all(|t| t.src_interface == t.dst_interface));
        let p = &plans["node-1"];
        // The mailbox tags the plans when it opens the round.
        assert_eq!(
            (p.round_tag, p.qps, p.duration_ms, p.timeout_ms),
            (0, 10, 2000, 500)
        );
        assert!(p.targets.iter().all(|t| t.dst_node != "node-1"));
        assert_eq!(p.targets.len(), 12);
    }

    #[test]
    fn tcp_rounds_tell_every_destination_its_incoming_paths() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        for (protocol, port) in [(Protocol::Icmp, None), (Protocol::Tcp, Some(9091))] {
            task.spec.request.protocol = protocol;
            let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
            let targets = all_targets(&plans);
            assert!(targets.iter().all(|t| t.dst_port == port), "{protocol:?}");
            for (node, plan) in &plans {
                let toward: Vec<IncomingPath> = targets
                    .iter()
                    .filter(|t| protocol.is_tcp() && t.dst_node == *node)
                    .map(|t| IncomingPath {
                        path: t.path,
                        src_addr: t.src_addr,
                        dst_addr: t.dst_addr,
                    })
                    .collect();
                assert_eq!(plan.incoming, toward, "{protocol:?} {node}");
            }
        }
    }

    #[test]
    fn listed_addresses_are_probed_from_every_agent_after_the_mesh() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task(", addresses: ['192.0.2.10', 'fd00:9::10']");
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        let targets = all_targets(&plans);
        // The 24-path mesh, then each agent's eth0 to both addresses.
        assert_eq!(targets.len(), 24 + 3 * 2);
        let listed: Vec<&&PlannedTarget> = targets.iter().filter(|t| t.external).collect();
        assert_eq!(listed.len(), 6);
        for t in &listed {
            assert_eq!(
                (t.src_interface.as_str(), t.dst_interface.as_str()),
                ("eth0", "-")
            );
            assert_eq!(t.dst_node, t.dst_addr.to_string());
            assert_eq!(t.family, Family::of(&t.dst_addr));
            assert_eq!(t.dst_port, None);
        }
        let indexes: HashSet<u16> = targets.iter().map(|t| t.path).collect();
        assert_eq!(indexes.len(), 30);

        // Without the mesh, over the named networks, with ports; no incoming paths.
        task.spec.target.endpoint = false;
        task.spec.target.interfaces = Some(vec!["pod".into(), "sec".into()]);
        task.spec.target.addresses = Some(vec!["192.0.2.10:80".into()]);
        task.spec.request.protocol = Protocol::Tcp;
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        let targets = all_targets(&plans);
        assert_eq!(targets.len(), 3 * 2);
        assert!(targets.iter().all(|t| t.external && t.dst_port == Some(80)));
        assert!(plans.values().all(|p| p.incoming.is_empty()));
    }

    #[test]
    fn family_filter() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        task.spec.target.ipv6 = false;
        let targets_v4 = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        let t = all_targets(&targets_v4);
        assert_eq!(t.len(), 12);
        assert!(
            t.iter()
                .all(|t| t.family == Family::Ipv4 && t.dst_addr.is_ipv4())
        );
    }

    #[test]
    fn interfaces_filter_matches_network_or_name() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        for filter in [", interfaces: [sec]", ", interfaces: [net1]"] {
            let plans = build_plans(&mk_task(filter), &roster, &[], mk_meta()).unwrap();
            let t = all_targets(&plans);
            assert_eq!(t.len(), 12, "{filter}");
            assert!(
                t.iter()
                    .all(|t| t.network == "sec" && t.src_interface == "net1")
            );
        }
    }

    #[test]
    fn missing_addresses_are_skipped_and_empty_plans_kept() {
        let mut a1 = mk_agent(1);
        a1.interfaces[0].ipv6 = None;
        a1.interfaces[1].ipv4 = None;
        let mut lonely = mk_agent(3);
        lonely.interfaces.clear();
        let plans = build_plans(&mk_task(""), &[a1, mk_agent(2), lonely], &[], mk_meta()).unwrap();
        let t = all_targets(&plans);
        // node-1 <-> node-2, both directions: eth0 v4 and net1 v6 only.
        assert_eq!(t.len(), 4);
        assert!(plans["node-3"].targets.is_empty());
        assert!(t.iter().all(|t| t.dst_node != "node-3"));
    }

    #[test]
    fn pair_paths_select_matching_mesh_paths_only() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let task = mk_task(", addresses: ['192.0.2.10']");
        let mut task = NetReach {
            spec: meshdoctor_api::task::NetReachSpec {
                pair_paths: serde_json::from_value(serde_json::json!([
                    {"srcNode": "node-1", "dstNode": "node-2"},
                    {"srcNode": "node-2", "dstNode": "node-3", "network": "sec"},
                    {"srcNode": "node-2", "dstNode": "node-1", "network": "pod", "family": "ipv6"},
                    {"srcNode": "node-3", "dstNode": "node-1", "network": "storage"},
                ]))
                .unwrap(),
                ..task.spec
            },
            ..task
        };
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        let of = |node: &str| pair_paths_of(&plans[node]);
        use Family::{Ipv4, Ipv6};
        // Both networks and families of node-1 -> node-2; no listed address.
        assert_eq!(
            of("node-1"),
            [
                ("node-2", "pod", Ipv4),
                ("node-2", "pod", Ipv6),
                ("node-2", "sec", Ipv4),
                ("node-2", "sec", Ipv6),
            ]
        );
        // Narrowed by network, and by network and family.
        assert_eq!(
            of("node-2"),
            [
                ("node-1", "pod", Ipv6),
                ("node-3", "sec", Ipv4),
                ("node-3", "sec", Ipv6),
            ]
        );
        // No path on that network: a plan without targets, still armed to answer.
        assert!(of("node-3").is_empty());
        let indexes: Vec<u16> = all_targets(&plans).iter().map(|t| t.path).collect();
        assert_eq!(indexes, (0..7).collect::<Vec<u16>>());

        // Service targets are dropped too; without pairPaths the whole mesh is back.
        let service = task.listed_addresses();
        let plans = build_plans(&task, &roster, &service, mk_meta()).unwrap();
        assert!(all_targets(&plans).iter().all(|t| !t.external));
        task.spec.pair_paths.clear();
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        assert_eq!(all_targets(&plans).len(), 24 + 3);
    }

    #[test]
    fn too_many_paths_is_an_error() {
        let mut agent = mk_agent(1);
        agent.interfaces = (0..200u16)
            .map(|i| InterfaceInfo {
                name: format!("if{i}"),
                network: "pod".into(),
                ipv4: Some([10, 0, (i >> 8) as u8, i as u8].into()),
                ipv6: None,
            })
            .collect();
        let mut other = agent.clone();
        other.node = "node-2".into();
        // 2 ordered pairs x 200 x 200 interface pairs.
        let roster = [agent, other];
        let err = build_plans(&mk_task(""), &roster, &[], mk_meta()).unwrap_err();
        assert_eq!(err, MeshError::TooManyPaths { paths: 80_000 });
        assert!(err.to_string().contains("80000 pair-paths"));
        // Remote pair-paths count too: 2 local agents x 200 x 200 toward one remote agent.
        let mut task = mk_task("");
        task.spec.target.endpoint = false;
        task.spec.target.remote_agents = Some(vec![RemoteAgent {
            node: "dst/node-1".into(),
            interfaces: roster[0].interfaces.clone(),
            probe_port: None,
        }]);
        let err = build_plans(&task, &roster, &[], mk_meta()).unwrap_err();
        assert_eq!(err, MeshError::TooManyPaths { paths: 80_000 });
    }

    /// Remote agent `dst/node-{n}`: `eth0` on network `pod` (dual-stack), `net2` on `sec`
    /// (IPv4 only), and `net9` on `storage`, a network no local agent has; responders on 7080.
    fn mk_remote(n: u8) -> RemoteAgent {
        let iface = |name: &str, network: &str, net: u8, v6: bool| InterfaceInfo {
            name: name.into(),
            network: network.into(),
            ipv4: Some([10, net, 0, n].into()),
            ipv6: v6.then(|| format!("fd00:{net}::{n}").parse().unwrap()),
        };
        RemoteAgent {
            node: format!("dst/node-{n}"),
            interfaces: vec![
                iface("eth0", "pod", 1, true),
                iface("net2", "sec", 2, false),
                iface("net9", "storage", 3, true),
            ],
            probe_port: Some(7080),
        }
    }

    /// What a plan's targets toward remote agents are: (dst, src if, dst if, network, family).
    fn remote_paths(plan: &RoundPlan) -> Vec<(&str, &str, &str, &str, Family)> {
        plan.targets
            .iter()
            .filter(|t| t.dst_node.starts_with("dst/"))
            .map(|t| {
                assert!(t.external, "{t:?}");
                let (src, dst) = (t.src_interface.as_str(), t.dst_interface.as_str());
                (t.dst_node.as_str(), src, dst, t.network.as_str(), t.family)
            })
            .collect()
    }

    #[test]
    fn remote_agents_are_probed_from_every_local_agent_as_external_targets() {
        use Family::{Ipv4, Ipv6};
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        task.spec.target.remote_agents = Some(vec![mk_remote(9)]);
        task.spec.request.protocol = Protocol::Tcp;
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        // Remote agents get no plan.
        assert_eq!(
            plans.keys().collect::<Vec<_>>(),
            ["node-1", "node-2", "node-3"]
        );
        let targets = all_targets(&plans);
        // The 24-path local mesh, then from each agent eth0 -> eth0 in both families and
        // net1 -> net2 in IPv4 (the remote's only address there); nothing over storage.
        assert_eq!(targets.len(), 24 + 3 * 3);
        for plan in plans.values() {
            assert_eq!(
                remote_paths(plan),
                [
                    ("dst/node-9", "eth0", "eth0", "pod", Ipv4),
                    ("dst/node-9", "eth0", "eth0", "pod", Ipv6),
                    ("dst/node-9", "net1", "net2", "sec", Ipv4),
                ]
            );
        }
        let remote: Vec<&&PlannedTarget> = targets.iter().filter(|t| t.external).collect();
        assert_eq!(remote.len(), 9);
        for t in &remote {
            assert_eq!(t.dst_port, Some(7080));
            let di = mk_remote(9)
                .interfaces
                .into_iter()
                .find(|i| i.name == t.dst_interface);
            assert_eq!(di.and_then(|i| i.addr(t.family)), Some(t.dst_addr));
        }
        // No destination report is expected: no incoming path toward a remote agent.
        let incoming: usize = plans.values().map(|p| p.incoming.len()).sum();
        assert_eq!(incoming, 24);
        let indexes: HashSet<u16> = targets.iter().map(|t| t.path).collect();
        assert_eq!(indexes.len(), 33);

        // Over icmp, no port; narrowed by spec.target.interfaces on both ends.
        task.spec.request.protocol = Protocol::Icmp;
        task.spec.target.interfaces = Some(vec!["sec".into()]);
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        for plan in plans.values() {
            assert_eq!(
                remote_paths(plan),
                [("dst/node-9", "net1", "net2", "sec", Ipv4)]
            );
            assert!(plan.targets.iter().all(|t| t.dst_port.is_none()));
        }
    }

    #[test]
    fn without_the_mesh_only_remote_agents_are_probed_in_a_stable_order() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        task.spec.target.endpoint = false;
        task.spec.target.remote_agents = Some(vec![mk_remote(9), mk_remote(8)]);
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
        assert_eq!(plans.len(), 3);
        let targets = all_targets(&plans);
        assert_eq!(targets.len(), 3 * 2 * 3);
        assert!(targets.iter().all(|t| t.external));
        let dst: Vec<&str> = plans["node-1"]
            .targets
            .iter()
            .map(|t| t.dst_node.as_str())
            .collect();
        assert_eq!(
            dst,
            ["dst/node-8"; 3]
                .into_iter()
                .chain(["dst/node-9"; 3])
                .collect::<Vec<_>>()
        );
        // Path indexes do not depend on the order of the list.
        let paths: Vec<u16> = targets.iter().map(|t| t.path).collect();
        assert_eq!(paths, (0..18).collect::<Vec<u16>>());
        task.spec.target.remote_agents = Some(vec![mk_remote(8), mk_remote(9)]);
        assert_eq!(build_plans(&task, &roster, &[], mk_meta()).unwrap(), plans);
    }

    #[test]
    fn pair_paths_select_remote_pair_paths() {
        use Family::{Ipv4, Ipv6};
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        task.spec.target.remote_agents = Some(vec![mk_remote(9)]);
        task.spec.pair_paths = serde_json::from_value(serde_json::json!([
            {"srcNode": "node-1", "dstNode": "dst/node-9", "network": "sec"},
            {"srcNode": "node-2", "dstNode": "dst/node-9", "family": "ipv6"},
            {"srcNode": "node-3", "dstNode": "node-1", "network": "pod", "family": "ipv4"},
        ]))
        .unwrap();
        for endpoint in [true, false] {
            task.spec.target.endpoint = endpoint;
            let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap();
            let of = |node: &str| pair_paths_of(&plans[node]);
            assert_eq!(of("node-1"), [("dst/node-9", "sec", Ipv4)]);
            assert_eq!(of("node-2"), [("dst/node-9", "pod", Ipv6)]);
            // The local pair-path only with the mesh.
            let local = if endpoint {
                &[("node-1", "pod", Ipv4)][..]
            } else {
                &[]
            };
            assert_eq!(of("node-3"), local, "endpoint: {endpoint}");
        }
    }

    #[test]
    fn a_remote_agent_named_like_a_local_one_is_an_error() {
        let roster: Vec<_> = (1..=3).map(mk_agent).collect();
        let mut task = mk_task("");
        let mut twin = mk_remote(2);
        twin.node = "node-2".into();
        task.spec.target.remote_agents = Some(vec![mk_remote(9), twin]);
        let err = build_plans(&task, &roster, &[], mk_meta()).unwrap_err();
        assert_eq!(
            err,
            MeshError::RemoteIsLocal {
                node: "node-2".into()
            }
        );
        assert!(
            err.to_string()
                .contains("prefix remote agents with their cluster's name")
        );
    }
}
