//! Localization: from the lost probes of many pair-paths to the few places that explain them
//! (docs/architecture.md, "Localization").
//!
//! A place is a node's interface, in one family and direction, on its link side or its stack
//! side. The join says in which segment each lost probe was lost; each segment can only have
//! lost it at one of one or two places. A faulty place shows as loss on every pair crossing it,
//! while each of its peers' places shows it on one pair only, so a greedy set cover (as in
//! 007 and NetBouncer) that keeps taking the place explaining the most unexplained loss names
//! the faulty interface once instead of blaming each pair. Every path crossing a place counts
//! in its probe totals, lossy or not, so its loss ratio is the interface's, not the pairs'.
//!
//! When the agents are in topology domains (zones), the way from one domain to another is a
//! place too: the links between them, crossed by the requests of every path from a node of
//! the one to a node of the other and by the replies of every path back. Loss there shows on
//! every pair across, while each node's interface shows it on its own pairs across only, so the
//! cover names the domain pair once instead of every interface of the domain.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashSet, HashSetExt as _};

use meshdoctor_api::{
    Direction, Evidence, Family, Finding, Interval, Packet, PathResult, PathSegment, PathState,
    ReasonCount, Segment, clopper_pearson,
};

use crate::join::PathLoss;

/// When a place's loss is worth a finding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalizeConfig {
    /// Fewest lost probes a place must explain: one or two losses in a round are noise.
    pub min_lost: u32,
    /// Fewest node pairs its loss must show on, when that many cross it: loss on a single
    /// pair is that pair's problem (a peer, a route), not the interface's.
    pub min_pairs: usize,
    /// Coverage of the loss ratio's confidence interval.
    pub level: f64,
}

impl Default for LocalizeConfig {
    fn default() -> Self {
        Self {
            min_lost: 3,
            min_pairs: 2,
            level: 0.99,
        }
    }
}

/// A sum that saturates: counts come from agents' reports, which are not trusted to stay small.
fn total(counts: impl Iterator<Item = u32>) -> u32 {
    counts.fold(0, u32::saturating_add)
}

/// A place where probe packets can be lost; ordered so that ties break the same way each time.
/// The way between two domains is `node`: the domain packets leave, `interface`: the network,
/// `to_domain`: the domain they go to, in the egress direction on the link side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Place<'a> {
    node: &'a str,
    interface: &'a str,
    to_domain: Option<&'a str>,
    family: Family,
    direction: Direction,
    segment: Segment,
}

/// A node pair, as its two (node, interface) ends in order: both directions are one pair.
type Pair<'a> = [(&'a str, &'a str); 2];

fn pair(p: &PathResult) -> Pair<'_> {
    let mut ends = [
        (p.src_node.as_str(), p.src_interface.as_str()),
        (p.dst_node.as_str(), p.dst_interface.as_str()),
    ];
    ends.sort_unstable();
    ends
}

const SEGMENTS: [PathSegment; 5] = [
    PathSegment::SrcSend,
    PathSegment::Forward,
    PathSegment::DstStack,
    PathSegment::Reply,
    PathSegment::SrcReceive,
];

/// Probes of `p` that reached the start of `segment`: the ones it could lose.
fn through(p: &PathResult, segment: PathSegment) -> u32 {
    match segment {
        PathSegment::SrcSend => p.sent.saturating_add(p.send_failed),
        PathSegment::Forward => p.hooks.src_egress,
        PathSegment::DstStack => p.hooks.dst_ingress,
        PathSegment::Reply => p.hooks.dst_egress,
        PathSegment::SrcReceive => p.hooks.src_ingress,
        PathSegment::Beyond => p.hooks.src_egress,
    }
}

/// The places that can lose a probe of `p` in `segment`, with the packet they would lose. In
/// the destination's stack the drop record, when there is one, says which way the probe was
/// going: the request in, or the reply out. Between nodes of different `zones` (by node), the
/// way between their domains can lose it too.
fn places<'a>(
    p: &'a PathResult,
    segment: PathSegment,
    dropped: Option<Packet>,
    zones: &'a Zones,
) -> Vec<(Place<'a>, Packet)> {
    let src = |direction, segment| Place {
        node: p.src_node.as_str(),
        interface: p.src_interface.as_str(),
        to_domain: None,
        family: p.family,
        direction,
        segment,
    };
    let dst = |direction, segment| Place {
        node: p.dst_node.as_str(),
        interface: p.dst_interface.as_str(),
        to_domain: None,
        family: p.family,
        direction,
        segment,
    };
    let across = |from: &str, to: &str, packet| {
        let (from, to) = (zones.get(from)?, zones.get(to)?);
        let place = Place {
            node: from.as_str(),
            interface: p.network.as_str(),
            to_domain: Some(to.as_str()),
            family: p.family,
            direction: Direction::Egress,
            segment: Segment::Link,
        };
        (from != to).then_some((place, packet))
    };
    use Direction::{Egress, Ingress};
    use Packet::{Reply, Request};
    use Segment::{Link, Stack};
    match segment {
        PathSegment::SrcSend => vec![(src(Egress, Stack), Request)],
        PathSegment::Forward => [(src(Egress, Link), Request), (dst(Ingress, Link), Request)]
            .into_iter()
            .chain(across(&p.src_node, &p.dst_node, Request))
            .collect(),
        PathSegment::DstStack => {
            let ingress = (dst(Ingress, Stack), Request);
            let egress = (dst(Egress, Stack), Reply);
            match dropped {
                Some(Request) => vec![ingress],
                Some(Reply) => vec![egress],
                None => vec![ingress, egress],
            }
        }
        PathSegment::Reply => [(dst(Egress, Link), Reply), (src(Ingress, Link), Reply)]
            .into_iter()
            .chain(across(&p.dst_node, &p.src_node, Reply))
            .collect(),
        PathSegment::SrcReceive => vec![(src(Ingress, Stack), Reply)],
        // Toward a listed address: past the source's hooks nothing says where, and the
        // target is not a place of the mesh.
        PathSegment::Beyond => vec![],
    }
}

/// One path-segment passing a place: `through` probes of kind `packet` reached it.
struct Crossing {
    path: usize,
    segment: PathSegment,
    packet: Packet,
    through: u32,
}

/// A place with every path-segment that crosses it.
struct Candidate<'a> {
    place: Place<'a>,
    network: &'a str,
    crossings: Vec<Crossing>,
    /// Only counted: a hash set, as the crossings of a busy place number in the thousands.
    pairs: HashSet<Pair<'a>>,
}

/// Lost probes of one path-segment, and the places (by candidate index) that could have lost
/// them, with the packet each would have lost.
struct Bucket {
    path: usize,
    segment: PathSegment,
    lost: u32,
    places: Vec<(usize, Packet)>,
}

/// Agents' topology domains, by node ([`meshdoctor_api::RoundReport::zones`]).
pub type Zones = BTreeMap<String, String>;

/// The places that explain the round's loss, worst (most lost probes) first; empty for a
/// healthy round. `losses` is the join's, index for index with `paths`; `zones` the agents'
/// domains (empty: no domain pairs).
pub fn localize(
    paths: &[PathResult],
    losses: &[PathLoss],
    zones: &Zones,
    cfg: &LocalizeConfig,
) -> Vec<Finding> {
    let reported = || {
        paths
            .iter()
            .zip(losses)
            .enumerate()
            .filter(|(_, (p, _))| p.state != PathState::NotReported)
    };
    // Only a place that could have lost some probe can explain loss: the candidates are those
    // of the lossy paths' buckets, and every other path only adds its crossings of them. A
    // healthy mesh of thousands of nodes so costs a set lookup per path.
    let mut wanted: HashSet<Place<'_>> = HashSet::new();
    for (_, (p, loss)) in reported() {
        for b in loss.buckets.iter().filter(|b| b.lost > 0) {
            wanted.extend(
                places(p, b.segment, b.dropped, zones)
                    .into_iter()
                    .map(|(place, _)| place),
            );
        }
    }
    let nodes: HashSet<&str> = wanted
        .iter()
        .filter(|place| place.to_domain.is_none())
        .map(|place| place.node)
        .collect();
    let domains: HashSet<(&str, &str)> = wanted
        .iter()
        .filter_map(|place| Some((place.node, place.to_domain?)))
        .collect();
    let across = |p: &PathResult| -> bool {
        let (Some(a), Some(b)) = (
            zones.get(p.src_node.as_str()),
            zones.get(p.dst_node.as_str()),
        ) else {
            return false;
        };
        domains.contains(&(a.as_str(), b.as_str())) || domains.contains(&(b.as_str(), a.as_str()))
    };
    let mut by_place: BTreeMap<Place<'_>, Candidate<'_>> = BTreeMap::new();
    for (i, (p, loss)) in reported() {
        if !nodes.contains(p.src_node.as_str())
            && !nodes.contains(p.dst_node.as_str())
            && !across(p)
        {
            continue;
        }
        // Past the source's send, the counts of a path whose observers may have missed events
        // are not traffic figures: its losses there are unobserved, its probes not counted.
        let observed = SEGMENTS
            .into_iter()
            .filter(|&s| s == PathSegment::SrcSend || loss.hooks_observed);
        for segment in observed {
            for (place, packet) in places(p, segment, None, zones) {
                if !wanted.contains(&place) {
                    continue;
                }
                let c = by_place.entry(place).or_insert_with(|| Candidate {
                    place,
                    network: &p.network,
                    crossings: Vec::new(),
                    pairs: HashSet::new(),
                });
                c.crossings.push(Crossing {
                    path: i,
                    segment,
                    packet,
                    through: through(p, segment),
                });
                c.pairs.insert(pair(p));
            }
        }
    }
    let index: BTreeMap<Place<'_>, usize> =
        by_place.keys().enumerate().map(|(i, &k)| (k, i)).collect();
    let candidates: Vec<Candidate<'_>> = by_place.into_values().collect();

    let mut buckets = Vec::new();
    for (i, (p, loss)) in reported() {
        for b in loss.buckets.iter().filter(|b| b.lost > 0) {
            // A place without a crossing is a segment the path's observers could not vouch
            // for: not evidence.
            let places: Vec<(usize, Packet)> = places(p, b.segment, b.dropped, zones)
                .into_iter()
                .filter_map(|(place, packet)| index.get(&place).map(|&c| (c, packet)))
                .collect();
            if !places.is_empty() {
                buckets.push(Bucket {
                    path: i,
                    segment: b.segment,
                    lost: b.lost,
                    places,
                });
            }
        }
    }

    let accepted = cover(paths, &candidates, &buckets, cfg);
    let mut findings: Vec<(Place<'_>, Finding)> = accepted
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let f = finding(paths, &candidates, &buckets, &accepted, k, zones, cfg);
            (candidates[c].place, f)
        })
        .collect();
    findings.sort_by(|(pa, a), (pb, b)| {
        b.lost
            .cmp(&a.lost)
            .then(b.loss_ratio.total_cmp(&a.loss_ratio))
            .then(pa.cmp(pb))
    });
    findings.into_iter().map(|(_, f)| f).collect()
}

/// The greedy set cover: the accepted candidates in order of acceptance, each bucket going to
/// the first accepted candidate that could have lost it.
fn cover(
    paths: &[PathResult],
    candidates: &[Candidate<'_>],
    buckets: &[Bucket],
    cfg: &LocalizeConfig,
) -> Vec<usize> {
    let mut of_candidate: Vec<Vec<usize>> = vec![Vec::new(); candidates.len()];
    for (b, bucket) in buckets.iter().enumerate() {
        for &(c, _) in &bucket.places {
            of_candidate[c].push(b);
        }
    }
    let mut explained = vec![false; buckets.len()];
    let mut open: BTreeSet<usize> = (0..candidates.len())
        .filter(|&c| !of_candidate[c].is_empty())
        .collect();
    let mut accepted = Vec::new();
    loop {
        // What each open candidate would explain now: lost probes, and on how many pairs.
        let score = |c: usize| {
            let unexplained = || of_candidate[c].iter().filter(|&&b| !explained[b]);
            let lost = total(unexplained().map(|&b| buckets[b].lost));
            let pairs: BTreeSet<Pair<'_>> = unexplained()
                .map(|&b| pair(&paths[buckets[b].path]))
                .collect();
            (lost, pairs.len())
        };
        // Most lost, then most pairs, then the first place in order.
        let best = open
            .iter()
            .map(|&c| (c, score(c)))
            .filter(|&(_, (lost, _))| lost > 0)
            .max_by(|(ca, sa), (cb, sb)| sa.cmp(sb).then(cb.cmp(ca)));
        let Some((c, (lost, pairs))) = best else {
            break;
        };
        open.remove(&c);
        let crossing_pairs = candidates[c].pairs.len();
        if lost >= cfg.min_lost && pairs >= cfg.min_pairs.min(crossing_pairs) {
            for &b in &of_candidate[c] {
                explained[b] = true;
            }
            accepted.push(c);
        }
    }
    accepted
}

/// The finding of the `k`th accepted candidate. Its ratio comes from the path-segments no other
/// accepted place also crosses (the loss there cannot be split between them), unless that
/// leaves none of its loss; and only over the packets it loses.
fn finding(
    paths: &[PathResult],
    candidates: &[Candidate<'_>],
    buckets: &[Bucket],
    accepted: &[usize],
    k: usize,
    zones: &Zones,
    cfg: &LocalizeConfig,
) -> Finding {
    let c = accepted[k];
    let cand = &candidates[c];
    let others: BTreeSet<(usize, PathSegment)> = accepted
        .iter()
        .filter(|&&o| o != c)
        .flat_map(|&o| &candidates[o].crossings)
        .map(|x| (x.path, x.segment))
        .collect();
    // The buckets this finding explains: those no earlier accepted place could have lost.
    let earlier: BTreeSet<usize> = accepted[..k].iter().copied().collect();
    let mine: Vec<(&Bucket, Packet)> = buckets
        .iter()
        .filter(|b| !b.places.iter().any(|(o, _)| earlier.contains(o)))
        .filter_map(|b| {
            b.places
                .iter()
                .find(|(o, _)| *o == c)
                .map(|&(_, pk)| (b, pk))
        })
        .collect();
    let packets: BTreeSet<Packet> = mine.iter().map(|&(_, pk)| pk).collect();

    let unshared = |path, segment| !others.contains(&(path, segment));
    let unshared_lost = total(
        mine.iter()
            .filter(|(b, _)| unshared(b.path, b.segment))
            .map(|(b, _)| b.lost),
    );
    let counted = |path, segment| unshared_lost == 0 || unshared(path, segment);
    let lost = total(
        mine.iter()
            .filter(|(b, _)| counted(b.path, b.segment))
            .map(|(b, _)| b.lost),
    );
    let probes = total(
        cand.crossings
            .iter()
            .filter(|x| packets.contains(&x.packet) && counted(x.path, x.segment))
            .map(|x| x.through),
    );
    // A report claiming more losses than probes is not believed beyond "all lost".
    let probes = probes.max(lost);
    let (low, high) = clopper_pearson(lost, probes, cfg.level);

    let mut evidence: BTreeMap<(usize, PathSegment), u32> = BTreeMap::new();
    for (b, _) in &mine {
        let n = evidence.entry((b.path, b.segment)).or_default();
        *n = n.saturating_add(b.lost);
    }
    let evidence: Vec<Evidence> = evidence
        .into_iter()
        .map(|((path, segment), lost)| {
            let p = &paths[path];
            Evidence {
                path: p.path,
                src_node: p.src_node.to_string(),
                src_interface: p.src_interface.to_string(),
                dst_node: p.dst_node.to_string(),
                dst_interface: p.dst_interface.to_string(),
                segment,
                lost,
                probes: through(p, segment),
            }
        })
        .collect();

    // The kernel's reasons for the packets this place lost, from its own node's records (a
    // way between domains is links only: no kernel of ours drops there).
    let dropped: BTreeSet<(usize, Packet)> = mine
        .iter()
        .filter(|_| cand.place.to_domain.is_none())
        .map(|(b, pk)| (b.path, *pk))
        .collect();
    let mut reasons: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (path, packet) in dropped {
        for d in &paths[path].drops {
            if d.node == cand.place.node && d.packet == packet {
                let n = reasons.entry((&d.reason, &d.location)).or_default();
                *n = n.saturating_add(d.count);
            }
        }
    }
    let mut drop_reasons: Vec<ReasonCount> = reasons
        .into_iter()
        .map(|((reason, location), count)| ReasonCount {
            reason: reason.into(),
            location: location.into(),
            count,
        })
        .collect();
    drop_reasons.sort_by_key(|r| std::cmp::Reverse(r.count));

    let place = cand.place;
    let (node, interface, zone) = match place.to_domain {
        Some(_) => ("", "", Some(place.node)),
        None => (
            place.node,
            place.interface,
            zones.get(place.node).map(String::as_str),
        ),
    };
    Finding {
        node: node.into(),
        interface: interface.into(),
        zone: zone.unwrap_or_default().into(),
        to_zone: place.to_domain.map(Into::into),
        network: cand.network.into(),
        family: place.family,
        direction: place.direction,
        segment: place.segment,
        packets: packets.into_iter().collect(),
        lost,
        probes,
        loss_ratio: if probes == 0 {
            0.0
        } else {
            f64::from(lost) / f64::from(probes)
        },
        interval: Interval {
            low,
            high,
            level: cfg.level,
        },
        drop_reasons,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{DropCount, LossSegments, round::HookCounts};

    use super::*;

    use Direction::{Egress, Ingress};
    use Family::{Ipv4, Ipv6};
    use Packet::{Reply, Request};
    use Segment::{Link, Stack};

    const NODES: [&str; 4] = ["node-1", "node-2", "node-3", "node-4"];
    const INTERFACES: [(&str, &str); 2] = [("eth0", "pod"), ("net1", "net1")];
    const REASON: &str = "NETFILTER_DROP";
    const LOCATION: &str = "nft_do_chain+0x4c1";

    /// A place losing `percent`% of the `packets` crossing it, pseudo-randomly; with a drop
    /// `reason` when its kernel traces the drops (stack faults), only toward `peer` if set.
    #[derive(Clone, Copy)]
    struct Fault {
        node: &'static str,
        interface: &'static str,
        family: Family,
        direction: Direction,
        segment: Segment,
        packets: &'static [Packet],
        percent: u64,
        reason: Option<&'static str>,
        peer: Option<&'static str>,
    }

    /// A fault on both packets; traced (with a drop reason) when on the stack side.
    fn mk_fault(
        node: &'static str,
        interface: &'static str,
        family: Family,
        direction: Direction,
        segment: Segment,
        percent: u64,
    ) -> Fault {
        Fault {
            node,
            interface,
            family,
            direction,
            segment,
            packets: &[Request, Reply],
            percent,
            reason: (segment == Stack).then_some(REASON),
            peer: None,
        }
    }

    /// xorshift64: a fixed pseudo-random sequence, so every run sees the same losses.
    struct Rng(u64);

    impl Rng {
        fn percent(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % 100
        }
    }

    /// Which end of the path a stage's place is on.
    #[derive(Clone, Copy)]
    enum End {
        Src,
        Dst,
    }

    /// Where a probe may be lost: the segment, its places, and the packet then on the way.
    type Stage = (PathSegment, &'static [(End, Direction, Segment)], Packet);

    /// The places a probe passes, in order: the test's own model of the loss table
    /// (docs/architecture.md).
    const STAGES: [Stage; 6] = [
        (PathSegment::SrcSend, &[(End::Src, Egress, Stack)], Request),
        (
            PathSegment::Forward,
            &[(End::Src, Egress, Link), (End::Dst, Ingress, Link)],
            Request,
        ),
        (
            PathSegment::DstStack,
            &[(End::Dst, Ingress, Stack)],
            Request,
        ),
        (PathSegment::DstStack, &[(End::Dst, Egress, Stack)], Reply),
        (
            PathSegment::Reply,
            &[(End::Dst, Egress, Link), (End::Src, Ingress, Link)],
            Reply,
        ),
        (
            PathSegment::SrcReceive,
            &[(End::Src, Ingress, Stack)],
            Reply,
        ),
    ];

    /// A joined round of the 4-node, 2-interface, dual-stack full mesh (48 paths), `probes`
    /// probes per path, where `faults` lose packets; both ends of every path observed.
    fn mk_mesh(faults: &[Fault], probes: u32) -> (Vec<PathResult>, Vec<PathLoss>) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut paths, mut losses) = (Vec::new(), Vec::new());
        for src in NODES {
            for dst in NODES.into_iter().filter(|&d| d != src) {
                for (interface, network) in INTERFACES {
                    for family in [Ipv4, Ipv6] {
                        let route = Route {
                            path: paths.len() as meshdoctor_api::PathId,
                            src,
                            dst,
                            interface,
                            network,
                            family,
                        };
                        let (p, loss) = mk_path(route, probes, faults, &mut rng);
                        paths.push(p);
                        losses.push(loss);
                    }
                }
            }
        }
        (paths, losses)
    }

    /// One path of the mesh: its index, ends, interface (the same at both ends) and family.
    struct Route {
        path: meshdoctor_api::PathId,
        src: &'static str,
        dst: &'static str,
        interface: &'static str,
        network: &'static str,
        family: Family,
    }

    /// Runs `probes` probes over `route` through `faults`: what the join would make of them.
    fn mk_path(
        route: Route,
        probes: u32,
        faults: &[Fault],
        rng: &mut Rng,
    ) -> (PathResult, PathLoss) {
        let Route {
            path,
            src,
            dst,
            interface,
            network,
            family,
        } = route;
        let mut hooks = HookCounts::default();
        let (mut sent, mut send_failed) = (0, 0);
        let mut buckets: BTreeMap<(PathSegment, Option<Packet>), u32> = BTreeMap::new();
        let mut drops: BTreeMap<(&str, Packet), u32> = BTreeMap::new();
        'probe: for _ in 0..probes {
            for (stage, (segment, stage_places, packet)) in STAGES.into_iter().enumerate() {
                for &(end, direction, seg) in stage_places {
                    let (node, peer) = match end {
                        End::Src => (src, dst),
                        End::Dst => (dst, src),
                    };
                    let fault = faults.iter().find(|f| {
                        (f.node, f.interface, f.family, f.direction, f.segment)
                            == (node, interface, family, direction, seg)
                            && f.packets.contains(&packet)
                            && f.peer.is_none_or(|p| p == peer)
                    });
                    let Some(fault) = fault.filter(|f| rng.percent() < f.percent) else {
                        continue;
                    };
                    if fault.reason.is_some() {
                        *drops.entry((node, packet)).or_default() += 1;
                    }
                    let dropped = (segment == PathSegment::DstStack && fault.reason.is_some())
                        .then_some(packet);
                    *buckets.entry((segment, dropped)).or_default() += 1;
                    // The source's own stack refuses a request: sendto fails.
                    if segment == PathSegment::SrcSend {
                        send_failed += 1;
                    } else {
                        sent += 1;
                    }
                    continue 'probe;
                }
                match stage {
                    0 => (sent, hooks.src_egress) = (sent + 1, hooks.src_egress + 1),
                    1 => hooks.dst_ingress += 1,
                    3 => hooks.dst_egress += 1,
                    4 => hooks.src_ingress += 1,
                    5 => hooks.delivered += 1,
                    _ => {}
                }
            }
        }
        let mut segments = LossSegments::default();
        for (&(segment, _), &n) in &buckets {
            *segments.count_mut(Some(segment)) += n;
        }
        let received = hooks.delivered;
        let lost = probes - received;
        let p = PathResult {
            path,
            state: if lost == 0 {
                PathState::Ok
            } else {
                PathState::Lossy
            },
            sent,
            received,
            lost,
            loss_ratio: f64::from(lost) / f64::from(probes),
            send_failed,
            hooks,
            segments,
            drops: drops
                .into_iter()
                .map(|((node, packet), count)| DropCount {
                    node: node.into(),
                    packet,
                    reason: REASON.into(),
                    location: LOCATION.into(),
                    count,
                })
                .collect(),
            ..PathResult::test(src, dst, (interface, network), family, probes)
        };
        (p, PathLoss::new(true, buckets))
    }

    fn run(faults: &[Fault], probes: u32) -> (Vec<PathResult>, Vec<Finding>) {
        let (paths, losses) = mk_mesh(faults, probes);
        let findings = localize(&paths, &losses, &Zones::new(), &LocalizeConfig::default());
        (paths, findings)
    }

    fn place(f: &Finding) -> (&str, &str, &str, Family, Direction, Segment) {
        (
            f.node.as_str(),
            f.interface.as_str(),
            f.network.as_str(),
            f.family,
            f.direction,
            f.segment,
        )
    }

    fn covers(f: &Finding, ratio: f64) -> bool {
        f.interval.low < ratio && ratio < f.interval.high
    }

    fn mesh_lost(paths: &[PathResult]) -> u32 {
        paths.iter().map(|p| p.lost).sum()
    }

    #[test]
    fn each_kind_of_interface_fault_is_one_finding() {
        use PathSegment as S;
        // Which segments of the node's outgoing and incoming paths each fault shows in.
        let cases = [
            (Ingress, Link, [S::Reply, S::Forward]),
            (Egress, Link, [S::Forward, S::Reply]),
            (Ingress, Stack, [S::SrcReceive, S::DstStack]),
            (Egress, Stack, [S::SrcSend, S::DstStack]),
        ];
        for (direction, segment, [outgoing, incoming]) in cases {
            let fault = mk_fault("node-2", "net1", Ipv6, direction, segment, 20);
            let (paths, findings) = run(&[fault], 100);
            let what = format!("{direction:?} {segment:?}");
            assert_eq!(findings.len(), 1, "{what}: {findings:#?}");
            let f = &findings[0];
            assert_eq!(
                place(f),
                ("node-2", "net1", "net1", Ipv6, direction, segment),
                "{what}"
            );
            assert_eq!(f.packets, [Request, Reply], "{what}");
            assert_eq!(f.lost, mesh_lost(&paths), "{what}: explains every loss");
            assert!(covers(f, 0.2), "{what}: {f:#?}");
            assert!(covers(f, f.loss_ratio), "{what}");
            let mut seen: Vec<(&str, &str, PathSegment)> = f
                .evidence
                .iter()
                .map(|e| (e.src_node.as_str(), e.dst_node.as_str(), e.segment))
                .collect();
            seen.sort();
            let mut want: Vec<(&str, &str, PathSegment)> = ["node-1", "node-3", "node-4"]
                .into_iter()
                .flat_map(|peer| [("node-2", peer, outgoing), (peer, "node-2", incoming)])
                .collect();
            want.sort();
            assert_eq!(seen, want, "{what}");
            assert!(
                f.evidence.iter().all(|e| 0 < e.lost && e.lost < e.probes),
                "{what}"
            );
            if segment == Stack {
                let reasons = [ReasonCount {
                    reason: REASON.into(),
                    location: LOCATION.into(),
                    count: f.lost,
                }];
                assert_eq!(f.drop_reasons, reasons, "{what}");
            } else {
                assert_eq!(f.drop_reasons, [], "{what}");
            }
        }
    }

    #[test]
    fn reply_only_loss_is_rated_over_replies() {
        let fault = Fault {
            packets: &[Reply],
            ..mk_fault("node-4", "eth0", Ipv4, Ingress, Link, 30)
        };
        let (paths, findings) = run(&[fault], 100);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(place(f), ("node-4", "eth0", "pod", Ipv4, Ingress, Link));
        assert_eq!(f.packets, [Reply]);
        // Replies of node-4's three eth0/ipv4 paths, never the requests arriving there.
        assert_eq!(f.probes, 300);
        assert_eq!(f.lost, mesh_lost(&paths));
        assert!(covers(f, 0.3), "{f:#?}");
        assert!(
            f.evidence
                .iter()
                .all(|e| e.segment == PathSegment::Reply && e.src_node == "node-4")
        );
    }

    #[test]
    fn two_faults_on_different_nodes_are_two_findings() {
        // Both on the pod network in IPv4: node-3 -> node-2 crosses both.
        let faults = [
            mk_fault("node-2", "eth0", Ipv4, Ingress, Link, 20),
            mk_fault("node-3", "eth0", Ipv4, Egress, Link, 40),
        ];
        let (paths, findings) = run(&faults, 100);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        let (worst, other) = (&findings[0], &findings[1]);
        assert_eq!(place(worst), ("node-3", "eth0", "pod", Ipv4, Egress, Link));
        assert_eq!(place(other), ("node-2", "eth0", "pod", Ipv4, Ingress, Link));
        let explained: u32 = findings
            .iter()
            .flat_map(|f| &f.evidence)
            .map(|e| e.lost)
            .sum();
        assert_eq!(explained, mesh_lost(&paths));
        // Rated without the paths both cross, each finding's ratio is its own fault's.
        assert!(covers(worst, 0.4), "{worst:#?}");
        assert!(covers(other, 0.2), "{other:#?}");
    }

    #[test]
    fn loss_on_one_pair_only_is_no_interface_finding() {
        let fault = Fault {
            peer: Some("node-2"),
            ..mk_fault("node-1", "eth0", Ipv4, Egress, Link, 30)
        };
        let (paths, findings) = run(&[fault], 100);
        assert!(mesh_lost(&paths) > 20);
        assert_eq!(findings, []);
    }

    #[test]
    fn two_percent_loss_is_found() {
        let fault = mk_fault("node-3", "net1", Ipv6, Ingress, Link, 2);
        let (paths, findings) = run(&[fault], 50);
        let lost = mesh_lost(&paths);
        assert!((3..=12).contains(&lost), "{lost} losses");
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(place(f), ("node-3", "net1", "net1", Ipv6, Ingress, Link));
        assert_eq!(f.lost, lost);
        assert!(f.pairs() >= 2);
        assert!(covers(f, 0.02), "{f:#?}");
    }

    /// node-1 and node-2 in zone-a, node-3 and node-4 in zone-b.
    fn two_zones() -> Zones {
        NODES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    if i < 2 { "zone-a" } else { "zone-b" }.into(),
                )
            })
            .collect()
    }

    #[test]
    fn loss_between_two_zones_is_one_domain_pair_finding() {
        // The links from zone-a to zone-b lose 30% of pod-network IPv4 packets: each zone-a
        // node's eth0 loses them toward the zone-b nodes only.
        let mut faults = Vec::new();
        for node in ["node-1", "node-2"] {
            for peer in ["node-3", "node-4"] {
                faults.push(Fault {
                    peer: Some(peer),
                    ..mk_fault(node, "eth0", Ipv4, Egress, Link, 30)
                });
            }
        }
        let (paths, losses) = mk_mesh(&faults, 200);
        let zones = two_zones();
        let findings = localize(&paths, &losses, &zones, &LocalizeConfig::default());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(
            (f.zone.as_str(), f.to_zone.as_deref(), f.node.as_str()),
            ("zone-a", Some("zone-b"), "")
        );
        assert_eq!((f.network.as_str(), f.family), ("pod", Ipv4));
        assert_eq!(f.packets, [Request, Reply]);
        // Every pair across, both ways: zone-a's requests and zone-b's replies to zone-a.
        assert_eq!(f.pairs(), 4);
        assert_eq!(f.lost, mesh_lost(&paths));
        assert!(covers(f, 0.3), "{f:#?}");
        assert!(f.drop_reasons.is_empty());
        // Without zones the same loss is blamed on each zone-a interface.
        let findings = localize(&paths, &losses, &Zones::new(), &LocalizeConfig::default());
        assert!(findings.len() >= 2, "{findings:#?}");
    }

    #[test]
    fn an_interface_fault_stays_an_interface_finding_with_zones() {
        let fault = mk_fault("node-1", "eth0", Ipv4, Egress, Link, 30);
        let (paths, losses) = mk_mesh(&[fault], 200);
        let findings = localize(&paths, &losses, &two_zones(), &LocalizeConfig::default());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(place(f), ("node-1", "eth0", "pod", Ipv4, Egress, Link));
        assert_eq!((f.zone.as_str(), f.to_zone.as_deref()), ("zone-a", None));
        assert_eq!(f.lost, mesh_lost(&paths));
    }

    #[test]
    fn healthy_mesh_has_no_finding() {
        let (paths, findings) = run(&[], 100);
        assert_eq!(paths.len(), 48);
        assert_eq!(mesh_lost(&paths), 0);
        assert_eq!(findings, []);
    }

    #[test]
    fn ratio_of_a_30_percent_fault_lies_in_its_interval() {
        let fault = mk_fault("node-1", "eth0", Ipv6, Egress, Stack, 30);
        let (_, findings) = run(&[fault], 200);
        let f = &findings[0];
        assert!((f.loss_ratio - 0.3).abs() < 0.05, "{}", f.loss_ratio);
        assert!(covers(f, 0.3) && covers(f, f.loss_ratio), "{f:#?}");
        assert!(f.interval.high - f.interval.low < 0.15);
        assert_eq!(f.interval.level, 0.99);
    }

    #[test]
    fn unobserved_loss_is_never_evidence() {
        let faults = [
            mk_fault("node-2", "eth0", Ipv4, Ingress, Link, 30),
            mk_fault("node-4", "net1", Ipv4, Egress, Stack, 30),
        ];
        let (paths, mut losses) = mk_mesh(&faults, 100);
        // What the join gives when observers dropped events: only failed sends are placed.
        for loss in &mut losses {
            loss.hooks_observed = false;
            loss.buckets.retain(|b| b.segment == PathSegment::SrcSend);
        }
        let findings = localize(&paths, &losses, &Zones::new(), &LocalizeConfig::default());
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(place(f), ("node-4", "net1", "net1", Ipv4, Egress, Stack));
        assert_eq!(f.packets, [Request]);
        // Over the requests node-4 tried to send, not the unobserved replies it answered.
        assert_eq!(f.probes, 300);
        assert!(f.evidence.iter().all(|e| e.segment == PathSegment::SrcSend));
    }

    #[test]
    fn hostile_joins_do_not_panic() {
        let fault = mk_fault("node-2", "eth0", Ipv4, Ingress, Link, 30);
        let (mut paths, mut losses) = mk_mesh(&[fault], 100);
        for loss in &mut losses {
            for b in &mut loss.buckets {
                b.lost = u32::MAX;
            }
        }
        paths[0].state = PathState::NotReported;
        paths[1].hooks = HookCounts::default();
        for p in &mut paths {
            p.drops.push(DropCount {
                node: p.dst_node.to_string(),
                packet: Request,
                reason: REASON.into(),
                location: LOCATION.into(),
                count: u32::MAX,
            });
        }
        losses.truncate(40);
        let findings = localize(&paths, &losses, &Zones::new(), &LocalizeConfig::default());
        assert!(
            findings
                .iter()
                .all(|f| f.loss_ratio <= 1.0 && f.lost <= f.probes)
        );
        assert_eq!(
            localize(&paths, &[], &Zones::new(), &LocalizeConfig::default()),
            []
        );
    }

    #[test]
    fn joined_reports_with_drop_records_localize_to_the_stack() {
        use crate::join::tests::{join_reports, mk_plans, mk_report, mk_reports};
        use meshdoctor_api::ProbeDrop;

        let plans = mk_plans();
        let lost = [3, 4, 5, 6];
        let mut reports = mk_reports(vec![
            mk_report(&plans, "node-1", &lost),
            mk_report(&plans, "node-2", &[]),
        ]);
        for r in reports.values_mut() {
            r.observer.ringbuf_drops = 0;
        }
        // node-2 took the requests in and dropped them: no reply ever left it.
        let node2 = reports.get_mut("node-2").unwrap();
        let answered = node2.answered.iter_mut().find(|a| a.path == 0).unwrap();
        answered.egress_missed = lost.map(|i| i as u16).to_vec();
        for i in lost {
            node2.drops.push(ProbeDrop {
                path: 0,
                seq: i as u16,
                packet: Request,
                reason: REASON.into(),
                location: LOCATION.into(),
                interface: Some("eth0".into()),
            });
        }
        let joined = join_reports(&plans, &reports);
        let findings = localize(
            &joined.paths,
            &joined.losses,
            &Zones::new(),
            &LocalizeConfig::default(),
        );
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let f = &findings[0];
        assert_eq!(place(f), ("node-2", "eth0", "pod", Ipv4, Ingress, Stack));
        assert_eq!(
            (f.packets.as_slice(), f.lost, f.probes),
            (&[Request][..], 4, 20)
        );
        assert_eq!(
            f.drop_reasons,
            [ReasonCount {
                reason: REASON.into(),
                location: LOCATION.into(),
                count: 4
            }]
        );
        assert_eq!(f.evidence.len(), 1);
        assert_eq!(f.evidence[0].segment, PathSegment::DstStack);
    }
}
