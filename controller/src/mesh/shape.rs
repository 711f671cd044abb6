//! Which agents each agent probes in a round: the mesh shape of `spec.target.mesh` resolved for
//! a roster and the controller's probe budget (pure).
//!
//! The sampled shapes place the agents on a ring ordered by a hash of their node names and let
//! each probe the agents at a window of distances along it, shifted by `peers` every round:
//! every agent is then the source of exactly `peers` paths per network and family and the
//! destination of exactly `peers`, so no agent carries more than its share, and the windows of
//! `ceil((N - 1) / peers)` consecutive rounds cover every distance, so every ordered pair is
//! probed within that many rounds. A node joining or leaving moves only its own place on the
//! ring (the order of the others stays), as with rendezvous hashing. Each network and family
//! starts its window at a different offset, so that an agent's interfaces meet different peers.
//!
//! The topology shape probes every pair inside a domain and samples the pairs across domains
//! the same way, over the ring with the source's own domain left out.

use std::collections::{BTreeMap, BTreeSet};

use meshdoctor_api::{Family, MeshMode, MeshSummary, task::MeshSpec};

/// What a round's mesh is planned within, from the controller's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most probe packets per second an agent should send and receive while a round probes:
    /// requests out and replies in on its own paths, requests in and replies out on the paths
    /// toward it (the sampled windows give it as many of those as of its own).
    pub packets_per_sec: u32,
    /// Most pair-paths a round may have: the controller keeps a record of each.
    pub max_paths: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            packets_per_sec: 1000,
            max_paths: 4_000_000,
        }
    }
}

/// A mesh shape resolved for a roster: which peers each agent probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// `Full`, `Sampled` or `Topology`; never `Auto`.
    pub mode: MeshMode,
    /// Sampled: peers per agent, network and family; topology: the same across domains.
    pub peers: u32,
    /// Agent index -> its place on the ring.
    place: Vec<usize>,
    /// Agent indexes in ring order.
    ring: Vec<usize>,
    /// Topology: each agent's domain (an index into the distinct domains).
    domain: Vec<usize>,
    /// Topology: per domain, the ring places of the agents outside it, ascending.
    outside: Vec<Vec<usize>>,
}

/// What a roster asks of the budget: per agent, the interface pairs a peer like it adds (one
/// path each), and the paths toward listed addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Highest over the agents: the sum over networks and families of the squared count of
    /// its interfaces there (the paths toward one peer with the same interfaces).
    pub pairs_per_peer: u64,
    /// Paths from each agent toward listed addresses, Service targets and remote agents.
    pub listed: u64,
    pub qps: u32,
}

impl Load {
    /// Probe packets per second of an agent with `peers` peers each way: a request and a reply
    /// per probe, on its own paths and on those toward it.
    pub fn rate(&self, peers: u64) -> u64 {
        2 * u64::from(self.qps) * (2 * peers * self.pairs_per_peer + self.listed)
    }

    /// Most peers each way that keep an agent within `budget` packets per second (0 when
    /// not even one does).
    fn peers_within(&self, budget: u32) -> u64 {
        let per_peer = 4 * u64::from(self.qps) * self.pairs_per_peer;
        let left = u64::from(budget).saturating_sub(2 * u64::from(self.qps) * self.listed);
        left.checked_div(per_peer).unwrap_or(u64::MAX)
    }
}

/// FNV-1a: a hash that stays the same across builds and restarts, so the ring does too.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where a network and family start their window, so that they do not all pick the same peers.
pub fn salt(network: &str, family: Family) -> u64 {
    stable_hash(network) ^ (family as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `spec` resolved for `nodes` (the agents, sorted) with their topology `domains` (by node;
/// a node without one is in a domain of its own kind, "none"), under `budget`: the shape, and
/// why it does not keep every agent within the budget, if it does not.
pub fn resolve(
    spec: &MeshSpec,
    nodes: &[&str],
    domains: &BTreeMap<String, String>,
    load: Load,
    budget: Budget,
) -> (Shape, Option<String>) {
    let n = nodes.len() as u64;
    let others = n.saturating_sub(1);
    let fits = load.peers_within(budget.packets_per_sec);
    let domain_of = |node: &str| domains.get(node).map_or("", String::as_str);
    let distinct: BTreeSet<&str> = nodes.iter().map(|n| domain_of(n)).collect();
    let largest = distinct
        .iter()
        .map(|d| nodes.iter().filter(|n| domain_of(n) == *d).count() as u64)
        .max()
        .unwrap_or(0);
    let topology_fits = distinct.len() > 1 && fits > largest.saturating_sub(1);
    let (mode, peers) = match (spec.mode, spec.peers) {
        (MeshMode::Full, _) => (MeshMode::Full, others),
        (MeshMode::Auto, _) if fits >= others => (MeshMode::Full, others),
        (MeshMode::Auto, peers) if topology_fits => (
            MeshMode::Topology,
            peers.map_or(fits - largest.saturating_sub(1), u64::from),
        ),
        (MeshMode::Auto | MeshMode::Sampled, peers) => {
            (MeshMode::Sampled, peers.map_or(fits.max(1), u64::from))
        }
        (MeshMode::Topology, peers) => (
            MeshMode::Topology,
            peers.map_or(
                fits.saturating_sub(largest.saturating_sub(1)).max(1),
                u64::from,
            ),
        ),
    };
    // More peers than there are is the full mesh (of the domain pairs, for topology).
    let (mode, peers) = match mode {
        MeshMode::Sampled if peers >= others => (MeshMode::Full, others),
        MeshMode::Topology if distinct.len() <= 1 => (MeshMode::Full, others),
        m => (m, peers),
    };
    let shape = Shape::new(mode, peers as u32, nodes, domains);
    let rate = load.rate(shape.each_way());
    let warning = (rate > u64::from(budget.packets_per_sec)).then(|| {
        format!(
            "the {} mesh asks up to {rate} probe packets/s of an agent, above the controller's \
             budget of {} (--probe-budget): lower spec.request.qps, narrow \
             spec.target.interfaces or the families, or set spec.target.mesh.peers",
            mode.name(),
            budget.packets_per_sec
        )
    });
    (shape, warning)
}

impl Shape {
    fn new(mode: MeshMode, peers: u32, nodes: &[&str], domains: &BTreeMap<String, String>) -> Self {
        let mut ring: Vec<usize> = (0..nodes.len()).collect();
        ring.sort_by_key(|&i| (stable_hash(nodes[i]), i));
        let mut place = vec![0; nodes.len()];
        for (p, &i) in ring.iter().enumerate() {
            place[i] = p;
        }
        let names: BTreeSet<&str> = nodes
            .iter()
            .map(|n| domains.get(*n).map_or("", String::as_str))
            .collect();
        let names: Vec<&str> = names.into_iter().collect();
        let domain: Vec<usize> = nodes
            .iter()
            .map(|n| {
                let d = domains.get(*n).map_or("", String::as_str);
                names.binary_search(&d).unwrap_or(0)
            })
            .collect();
        let outside: Vec<Vec<usize>> = (0..names.len())
            .map(|d| (0..ring.len()).filter(|&p| domain[ring[p]] != d).collect())
            .collect();
        // No more peers across than any agent has outside its domain.
        let peers = match mode {
            MeshMode::Topology => {
                let most = outside.iter().map(Vec::len).max().unwrap_or(0);
                peers.min(u32::try_from(most).unwrap_or(u32::MAX))
            }
            _ => peers,
        };
        Self {
            mode,
            peers,
            place,
            ring,
            domain,
            outside,
        }
    }

    /// The most peers an agent probes (and is probed by) per network and family.
    pub fn each_way(&self) -> u64 {
        let n = self.ring.len() as u64;
        let k = u64::from(self.peers);
        match self.mode {
            MeshMode::Sampled => k.min(n.saturating_sub(1)),
            MeshMode::Topology => (0..self.outside.len())
                .map(|d| {
                    let outside = self.outside[d].len() as u64;
                    (n - outside).saturating_sub(1) + k.min(outside)
                })
                .max()
                .unwrap_or(0),
            MeshMode::Full | MeshMode::Auto => n.saturating_sub(1),
        }
    }

    /// The agents (indexes) `src` probes in `round` on the network and family of `salt`.
    pub fn peers_of(&self, src: usize, round: u32, salt: u64) -> Vec<usize> {
        let n = self.ring.len();
        match self.mode {
            MeshMode::Sampled => {
                let others: Vec<usize> = (1..n).map(|d| (self.place[src] + d) % n).collect();
                self.window(&others, round, salt)
            }
            MeshMode::Topology => {
                let mine = self.domain[src];
                let inside = (0..n).filter(|&i| i != src && self.domain[i] == mine);
                let outside = &self.outside[mine];
                // The agents outside, in ring order from the first after `src`.
                let start = outside.partition_point(|&p| p < self.place[src]);
                let rotated: Vec<usize> = (0..outside.len())
                    .map(|j| outside[(start + j) % outside.len()])
                    .collect();
                inside.chain(self.window(&rotated, round, salt)).collect()
            }
            MeshMode::Full | MeshMode::Auto => (0..n).filter(|&i| i != src).collect(),
        }
    }

    /// `peers` of the ring `places` (in order from the source), from the round's offset on.
    fn window(&self, places: &[usize], round: u32, salt: u64) -> Vec<usize> {
        let len = places.len() as u64;
        if len == 0 {
            return vec![];
        }
        let k = u64::from(self.peers).min(len);
        let start = (u64::from(round) * k + salt % len) % len;
        (0..k)
            .map(|j| self.ring[places[((start + j) % len) as usize]])
            .collect()
    }

    /// Rounds until every pair has been probed once: 1 for a full mesh.
    pub fn coverage_rounds(&self) -> u32 {
        let widest = match self.mode {
            MeshMode::Sampled => self.ring.len().saturating_sub(1),
            MeshMode::Topology => self.outside.iter().map(Vec::len).max().unwrap_or(0),
            MeshMode::Full | MeshMode::Auto => return 1,
        };
        (widest as u32).div_ceil(self.peers.max(1)).max(1)
    }

    /// The round's record of this shape, with the highest rate the plans ask of an agent.
    pub fn summary(&self, max_agent_rate: u64, budget: Budget) -> MeshSummary {
        MeshSummary {
            mode: self.mode,
            peers: (self.mode != MeshMode::Full).then_some(self.peers),
            coverage_rounds: self.coverage_rounds(),
            max_agent_rate,
            budget: budget.packets_per_sec,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    fn load(qps: u32) -> Load {
        // Two networks x two families, one interface each.
        Load {
            pairs_per_peer: 4,
            listed: 0,
            qps,
        }
    }

    fn spec(mode: MeshMode, peers: Option<u32>) -> MeshSpec {
        MeshSpec {
            mode,
            peers,
            topology_key: None,
        }
    }

    fn resolved(
        spec: &MeshSpec,
        nodes: &[String],
        domains: &BTreeMap<String, String>,
        qps: u32,
    ) -> (Shape, Option<String>) {
        let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        resolve(spec, &refs, domains, load(qps), Budget::default())
    }

    #[test]
    fn auto_is_the_full_mesh_while_it_fits_the_budget() {
        let nodes = names(10);
        // 2 x 10 qps x (2 x 9 peers x 4 pairs) = 1440 > 1000; at 5 qps, 720.
        let (shape, warning) = resolved(&spec(MeshMode::Auto, None), &nodes, &BTreeMap::new(), 5);
        assert_eq!((shape.mode, warning), (MeshMode::Full, None));
        let (shape, warning) = resolved(&spec(MeshMode::Auto, None), &nodes, &BTreeMap::new(), 10);
        // 1000 / (4 x 10 x 4) = 6 peers.
        assert_eq!(
            (shape.mode, shape.peers, warning),
            (MeshMode::Sampled, 6, None)
        );
        // Full when asked, with a warning naming the budget and the fields.
        let (shape, warning) = resolved(&spec(MeshMode::Full, None), &nodes, &BTreeMap::new(), 10);
        assert_eq!(shape.mode, MeshMode::Full);
        let warning = warning.unwrap();
        assert!(warning.contains("1440 probe packets/s") && warning.contains("budget of 1000"));
        assert!(warning.contains("spec.request.qps") && warning.contains("mesh.peers"));
    }

    #[test]
    fn sampled_peers_are_balanced_and_cover_every_pair() {
        let nodes = names(23);
        let (shape, _) = resolved(
            &spec(MeshMode::Sampled, Some(4)),
            &nodes,
            &BTreeMap::new(),
            1,
        );
        assert_eq!(shape.coverage_rounds(), 6); // ceil(22 / 4)
        let pod = salt("pod", Family::Ipv4);
        let mut seen = BTreeSet::new();
        for round in 0..shape.coverage_rounds() {
            let mut incoming = vec![0; nodes.len()];
            for src in 0..nodes.len() {
                let peers = shape.peers_of(src, round, pod);
                assert_eq!(peers.len(), 4);
                assert!(!peers.contains(&src));
                for &p in &peers {
                    incoming[p] += 1;
                    seen.insert((src, p));
                }
            }
            assert!(
                incoming.iter().all(|&n| n == 4),
                "round {round}: {incoming:?}"
            );
        }
        assert_eq!(
            seen.len(),
            23 * 22,
            "every ordered pair within the coverage rounds"
        );
        // Another network or family starts elsewhere on the ring.
        let other = salt("sec", Family::Ipv4);
        let differ =
            (0..nodes.len()).any(|s| shape.peers_of(s, 0, pod) != shape.peers_of(s, 0, other));
        assert!(differ);
    }

    #[test]
    fn a_joining_node_keeps_the_others_ring_order() {
        let before = names(30);
        let mut after = before.clone();
        after.push("node-new".into());
        after.sort();
        let order = |nodes: &[String]| {
            let (shape, _) = resolved(
                &spec(MeshMode::Sampled, Some(3)),
                nodes,
                &BTreeMap::new(),
                1,
            );
            let ring: Vec<String> = shape.ring.iter().map(|&i| nodes[i].clone()).collect();
            ring
        };
        let kept: Vec<String> = order(&after)
            .into_iter()
            .filter(|n| n != "node-new")
            .collect();
        assert_eq!(kept, order(&before));
    }

    #[test]
    fn topology_is_full_inside_domains_and_sampled_across() {
        let nodes = names(12);
        let domains: BTreeMap<String, String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), format!("zone-{}", i % 3)))
            .collect();
        let (shape, warning) = resolved(&spec(MeshMode::Topology, Some(2)), &nodes, &domains, 1);
        assert_eq!((shape.mode, warning), (MeshMode::Topology, None));
        assert_eq!(shape.coverage_rounds(), 4); // ceil(8 outside / 2)
        let pod = salt("pod", Family::Ipv6);
        let zone = |i: usize| &domains[&nodes[i]];
        let mut across = BTreeSet::new();
        for round in 0..4 {
            for src in 0..nodes.len() {
                let peers = shape.peers_of(src, round, pod);
                let (inside, outside): (Vec<usize>, Vec<usize>) =
                    peers.iter().partition(|&&p| zone(p) == zone(src));
                assert_eq!(inside.len(), 3, "the 3 others of its zone");
                assert_eq!(outside.len(), 2);
                across.extend(outside.into_iter().map(|p| (src, p)));
            }
        }
        assert_eq!(
            across.len(),
            12 * 8,
            "every cross-zone pair within 4 rounds"
        );
        // Auto takes the topology shape when it fits: 3 zone peers + as many across as fit.
        let (shape, _) = resolved(&spec(MeshMode::Auto, None), &nodes, &domains, 10);
        assert_eq!((shape.mode, shape.peers), (MeshMode::Topology, 3)); // 6 fit, 3 inside
        // Two zones of two: 2 peers across is all there is, whatever is asked.
        let small: Vec<String> = names(4);
        let halves: BTreeMap<String, String> = small
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), format!("zone-{}", i / 2)))
            .collect();
        let (shape, _) = resolved(&spec(MeshMode::Topology, Some(5)), &small, &halves, 1);
        assert_eq!((shape.peers, shape.coverage_rounds()), (2, 1));
        // One domain only: the topology mesh is the full mesh.
        let (shape, _) = resolved(&spec(MeshMode::Topology, None), &nodes, &BTreeMap::new(), 1);
        assert_eq!(shape.mode, MeshMode::Full);
    }

    #[test]
    fn too_small_a_budget_still_probes_one_peer_and_says_so() {
        let nodes = names(50);
        let (shape, warning) = resolved(&spec(MeshMode::Auto, None), &nodes, &BTreeMap::new(), 500);
        assert_eq!((shape.mode, shape.peers), (MeshMode::Sampled, 1));
        assert!(warning.unwrap().contains("8000 probe packets/s"));
        // Two agents: one peer is everyone, the full mesh.
        let (shape, _) = resolved(
            &spec(MeshMode::Auto, None),
            &names(2),
            &BTreeMap::new(),
            500,
        );
        assert_eq!(shape.mode, MeshMode::Full);
    }
}
