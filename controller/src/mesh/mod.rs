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

pub mod shape;

use std::collections::{BTreeMap, BTreeSet};

use meshdoctor_api::{
    AgentRegistration, Family, IncomingPath, InterfaceInfo, MeshMode, MeshSummary, Names, NetReach,
    PathId, PlannedTarget, Protocol, RoundPlan,
    task::{ListedAddress, MeshSpec, NetReachTarget, PRIMARY_INTERFACE, RemoteAgent},
};

use self::shape::{Budget, Load};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeshError {
    #[error(
        "the round would have about {paths} pair-paths, above the controller's limit of {max} \
         (--max-round-paths): narrow spec.target.interfaces or the families, or sample the \
         mesh (spec.target.mesh)"
    )]
    TooManyPaths { paths: u64, max: u64 },
    /// Reports could not tell the two apart (the task cannot know the roster when loaded).
    #[error(
        "spec.target.remoteAgents names {node:?}, which is also a registered agent of this \
         cluster: prefix remote agents with their cluster's name"
    )]
    RemoteIsLocal { node: String },
}

/// An agent a local agent probes: another agent of the roster (`agent` is its index), or one
/// of `spec.target.remoteAgents` (`external`: it has no plan and sends no report).
struct Peer<'a> {
    node: &'a str,
    interfaces: &'a [InterfaceInfo],
    probe_port: Option<u16>,
    agent: Option<usize>,
}

/// What all plans of one round share besides the task spec. The round tag is not among them:
/// the mailbox sets it when it opens the round ([`crate::mailbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundMeta<'a> {
    pub task: &'a str,
    pub round: u32,
    pub start_at_ms: u64,
    pub report_deadline_ms: u64,
    /// The controller's limits on a round's mesh.
    pub budget: Budget,
}

/// A round's plans, with the mesh they make.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub plans: BTreeMap<String, RoundPlan>,
    pub mesh: MeshSummary,
    /// Why the mesh exceeds the probe budget, if it does.
    pub warning: Option<String>,
    /// The agents' topology domains by node (those with the task's topology label).
    pub zones: BTreeMap<String, String>,
}

/// Per network and family, how many of `agent`'s selected interfaces are there.
fn slots<'a>(
    target: &NetReachTarget,
    families: &[Family],
    interfaces: &'a [InterfaceInfo],
) -> BTreeMap<(&'a str, Family), u64> {
    let mut slots = BTreeMap::new();
    for i in interfaces.iter().filter(|i| selected(target, i)) {
        for &family in families.iter().filter(|&&f| i.addr(f).is_some()) {
            *slots.entry((i.network.as_str(), family)).or_default() += 1;
        }
    }
    slots
}

/// Plans of one round by node; `service_targets` are probed like listed addresses. Every
/// agent of the roster gets one, also without targets (none of its pair-paths selected by
/// `spec.pairPaths`, or the sampled mesh gave it none): the plan arms its observers so that it
/// records the probes it answers. Remote agents get none.
pub fn build_plans(
    task: &NetReach,
    roster: &[AgentRegistration],
    service_targets: &[ListedAddress],
    meta: RoundMeta<'_>,
) -> Result<Planned, MeshError> {
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
    let local_peers = agents
        .values()
        .enumerate()
        .filter(|_| target.endpoint)
        .map(|(i, a)| Peer {
            node: &a.node,
            interfaces: &a.interfaces,
            probe_port: a.probe_port,
            agent: Some(i),
        });
    let remote_peers = remotes.values().map(|r| Peer {
        node: &r.node,
        interfaces: &r.interfaces,
        probe_port: r.probe_port,
        agent: None,
    });
    let peers: Vec<Peer<'_>> = local_peers.chain(remote_peers).collect();
    // The local peers come first, at their agents' indexes.
    let local_count = peers.iter().take_while(|p| p.agent.is_some()).count();
    let families = families(target);

    let protocol = task.spec.request.protocol;
    // Validated when the task was loaded; the Service targets probe the same way.
    let mut listed = task.listed_addresses();
    listed.extend_from_slice(service_targets);
    // Listed addresses: from every agent, over the selected interfaces (the primary one by
    // default) that have an address of the listed one's family; none when the round is
    // limited to spec.pairPaths.
    let listed = if task.spec.pair_paths.is_empty() {
        &listed[..]
    } else {
        &[]
    };
    let sources = |a: &'_ AgentRegistration| {
        a.interfaces
            .iter()
            .filter(|i| match &target.interfaces {
                Some(_) => selected(target, i),
                None => i.name == PRIMARY_INTERFACE,
            })
            .cloned()
            .collect::<Vec<_>>()
    };

    // The shape, from what the roster asks of the budget.
    let key = target.mesh.topology_key();
    let zones: BTreeMap<String, String> = agents
        .iter()
        .filter_map(|(node, a)| Some((node.to_string(), a.labels.get(key)?.clone())))
        .collect();
    let agent_slots: Vec<_> = agents
        .values()
        .map(|a| slots(target, &families, &a.interfaces))
        .collect();
    let remote_pairs = |mine: &BTreeMap<(&str, Family), u64>| -> u64 {
        remotes
            .values()
            .map(|r| {
                let theirs = slots(target, &families, &r.interfaces);
                mine.iter()
                    .map(|(k, n)| n * theirs.get(k).copied().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    };
    let load = Load {
        pairs_per_peer: agent_slots
            .iter()
            .map(|s| s.values().map(|n| n * n).sum::<u64>())
            .max()
            .unwrap_or(0)
            * u64::from(target.endpoint),
        listed: agents
            .values()
            .zip(&agent_slots)
            .map(|(a, s)| {
                let from = sources(a);
                let listed_paths = listed
                    .iter()
                    .map(|l| {
                        from.iter()
                            .filter(|i| i.addr(Family::of(&l.ip)).is_some())
                            .count()
                    })
                    .sum::<usize>() as u64;
                listed_paths + remote_pairs(s)
            })
            .max()
            .unwrap_or(0),
        qps: task.spec.request.qps,
    };
    // A re-probe of spec.pairPaths probes exactly those: over the full mesh.
    let spec = if task.spec.pair_paths.is_empty() {
        target.mesh.clone()
    } else {
        MeshSpec {
            mode: MeshMode::Full,
            ..MeshSpec::default()
        }
    };
    let nodes: Vec<&str> = agents.keys().copied().collect();
    let (shape, warning) = shape::resolve(&spec, &nodes, &zones, load, meta.budget);
    let estimate = nodes.len() as u64 * (shape.each_way() * load.pairs_per_peer + load.listed);
    if estimate > meta.budget.max_paths {
        return Err(MeshError::TooManyPaths {
            paths: estimate,
            max: meta.budget.max_paths,
        });
    }

    let mut per_src: BTreeMap<&str, Vec<PlannedTarget>> = BTreeMap::new();
    // Tens of thousands of targets name a few hundred nodes and interfaces: shared.
    let mut names = Names::default();
    let mut paths: PathId = 0;
    let mut push = |targets: &mut Vec<PlannedTarget>, t: PlannedTarget| {
        targets.push(PlannedTarget { path: paths, ..t });
        paths += 1;
    };
    for (i, (&src, src_agent)) in agents.iter().enumerate() {
        let targets = per_src.entry(src).or_default();
        // The (peer, network, family) the shape picks for this source; all in a full mesh.
        let chosen: Option<BTreeSet<(usize, &str, Family)>> =
            (shape.mode != MeshMode::Full).then(|| {
                agent_slots[i]
                    .keys()
                    .flat_map(|&(network, family)| {
                        shape
                            .peers_of(i, meta.round, shape::salt(network, family))
                            .into_iter()
                            .map(move |p| (p, network, family))
                    })
                    .collect()
            });
        // Only the chosen peers (and the remote agents) are candidates: going over every peer
        // for every source would make a sampled round of thousands of nodes quadratic.
        let candidates: Vec<&Peer<'_>> = match &chosen {
            Some(chosen) => {
                let local: BTreeSet<usize> = chosen
                    .iter()
                    .map(|&(p, _, _)| p)
                    .filter(|&p| p < local_count)
                    .collect();
                let local = local.into_iter().map(|p| &peers[p]);
                local.chain(&peers[local_count..]).collect()
            }
            None => peers.iter().collect(),
        };
        for dst in candidates.into_iter().filter(|p| p.node != src) {
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
                        let picked = match (&chosen, dst.agent) {
                            (Some(chosen), Some(p)) => {
                                chosen.contains(&(p, si.network.as_str(), family))
                            }
                            _ => true,
                        };
                        if !picked || !task.selects_pair_path(src, dst.node, &si.network, family) {
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
                                dst_node: names.get(dst.node),
                                src_interface: names.get(&si.name),
                                dst_interface: names.get(&di.name),
                                network: names.get(&si.network),
                                family,
                                src_addr,
                                dst_addr,
                                dst_port,
                                external: dst.agent.is_none(),
                                protocol: None,
                            },
                        );
                    }
                }
            }
        }
        // An address of the source's own is skipped: its packets never leave the node (the
        // kernel loops them back), so they say nothing of the network and no hook sees them.
        let own = |ip: &std::net::IpAddr| {
            let family = Family::of(ip);
            src_agent
                .interfaces
                .iter()
                .any(|i| i.addr(family) == Some(*ip))
        };
        for si in sources(src_agent) {
            for a in listed.iter().filter(|a| !own(&a.ip)) {
                let family = Family::of(&a.ip);
                let Some(src_addr) = si.addr(family) else {
                    continue;
                };
                push(
                    targets,
                    PlannedTarget {
                        path: 0,
                        dst_node: names.get(&a.label),
                        src_interface: names.get(&si.name),
                        dst_interface: names.get("-"),
                        network: names.get(&si.network),
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

    let rq = &task.spec.request;
    let mut incoming: BTreeMap<String, Vec<IncomingPath>> = BTreeMap::new();
    let mut toward: BTreeMap<&str, u64> = BTreeMap::new();
    for t in per_src.values().flatten().filter(|t| !t.external) {
        *toward.entry(t.dst_node.as_str()).or_default() += 1;
        if rq.protocol.is_tcp() {
            incoming
                .entry(t.dst_node.to_string())
                .or_default()
                .push(IncomingPath {
                    path: t.path,
                    src_addr: t.src_addr,
                    dst_addr: t.dst_addr,
                });
        }
    }
    let max_agent_rate = per_src
        .iter()
        .map(|(node, t)| {
            let paths = t.len() as u64 + toward.get(node).copied().unwrap_or(0);
            2 * u64::from(rq.qps) * paths
        })
        .max()
        .unwrap_or(0);
    let mesh = shape.summary(max_agent_rate, meta.budget);
    let plans = per_src
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
        .collect();
    Ok(Planned {
        plans,
        mesh,
        warning,
        zones,
    })
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
            labels: Default::default(),
        }
    }

    pub(crate) fn mk_meta() -> RoundMeta<'static> {
        RoundMeta {
            task: "mesh",
            round: 1,
            start_at_ms: 1_000,
            report_deadline_ms: 9_000,
            budget: Budget::default(),
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
        let plans = build_plans(&mk_task(""), &roster, &[], mk_meta())
            .unwrap()
            .plans;
        assert_eq!(plans.len(), 4);
        let targets = all_targets(&plans);
        // 4 x 3 ordered pairs x 2 same-network interface pairs x 2 families.
        assert_eq!(targets.len(), 48);
        let indexes: HashSet<PathId> = targets.iter().map(|t| t.path).collect();
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
            let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let indexes: HashSet<PathId> = targets.iter().map(|t| t.path).collect();
        assert_eq!(indexes.len(), 30);

        // An agent's own address (node-2's net1) is probed by the others only.
        task.spec.target.addresses = Some(vec!["10.2.0.2".into()]);
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
        let listed: Vec<_> = all_targets(&plans)
            .into_iter()
            .filter(|t| t.external)
            .map(|t| t.src_addr.to_string())
            .collect();
        assert_eq!(listed, ["10.1.0.1", "10.1.0.3"]);

        // Without the mesh, over the named networks, with ports; no incoming paths.
        task.spec.target.endpoint = false;
        task.spec.target.interfaces = Some(vec!["pod".into(), "sec".into()]);
        task.spec.target.addresses = Some(vec!["192.0.2.10:80".into()]);
        task.spec.request.protocol = Protocol::Tcp;
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let targets_v4 = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
            let plans = build_plans(&mk_task(filter), &roster, &[], mk_meta())
                .unwrap()
                .plans;
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
        let plans = build_plans(&mk_task(""), &[a1, mk_agent(2), lonely], &[], mk_meta())
            .unwrap()
            .plans;
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
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let indexes: Vec<PathId> = all_targets(&plans).iter().map(|t| t.path).collect();
        assert_eq!(indexes, (0..7).collect::<Vec<PathId>>());

        // Service targets are dropped too; without pairPaths the whole mesh is back.
        let service = task.listed_addresses();
        let plans = build_plans(&task, &roster, &service, mk_meta())
            .unwrap()
            .plans;
        assert!(all_targets(&plans).iter().all(|t| !t.external));
        task.spec.pair_paths.clear();
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
        assert_eq!(all_targets(&plans).len(), 24 + 3);
    }

    #[test]
    fn too_many_paths_is_an_error_before_any_is_built() {
        let roster: Vec<_> = (1..=4).map(mk_agent).collect();
        let mut meta = mk_meta();
        meta.budget.max_paths = 47;
        // 4 x 3 ordered pairs x 2 interface pairs x 2 families.
        let err = build_plans(&mk_task(""), &roster, &[], meta).unwrap_err();
        assert_eq!(err, MeshError::TooManyPaths { paths: 48, max: 47 });
        assert!(err.to_string().contains("--max-round-paths"), "{err}");
        // Remote pair-paths count too: 4 local agents x 4 interface pairs toward one remote.
        let mut task = mk_task("");
        task.spec.target.endpoint = false;
        task.spec.target.remote_agents = Some(vec![RemoteAgent {
            node: "dst/node-1".into(),
            interfaces: roster[0].interfaces.clone(),
            probe_port: None,
        }]);
        meta.budget.max_paths = 15;
        let err = build_plans(&task, &roster, &[], meta).unwrap_err();
        assert_eq!(err, MeshError::TooManyPaths { paths: 16, max: 15 });
        meta.budget.max_paths = 16;
        assert_eq!(
            build_plans(&task, &roster, &[], meta).unwrap().plans.len(),
            4
        );
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
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let indexes: HashSet<PathId> = targets.iter().map(|t| t.path).collect();
        assert_eq!(indexes.len(), 33);

        // Over icmp, no port; narrowed by spec.target.interfaces on both ends.
        task.spec.request.protocol = Protocol::Icmp;
        task.spec.target.interfaces = Some(vec!["sec".into()]);
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
        let paths: Vec<PathId> = targets.iter().map(|t| t.path).collect();
        assert_eq!(paths, (0..18).collect::<Vec<PathId>>());
        task.spec.target.remote_agents = Some(vec![mk_remote(8), mk_remote(9)]);
        assert_eq!(
            build_plans(&task, &roster, &[], mk_meta()).unwrap().plans,
            plans
        );
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
            let plans = build_plans(&task, &roster, &[], mk_meta()).unwrap().plans;
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
