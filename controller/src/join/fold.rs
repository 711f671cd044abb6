//! What a round received from its agents, folded per planned path as each report arrives.
//!
//! A report is taken apart on arrival: its source and destination sides go to the records of
//! the paths they belong to, and what is left of it (observer health, drop records, an
//! application result) is kept by node. A round so holds one compact record per path rather
//! than every report whole, and the join ([`super::join`]) reads the records in plan order.
//! Taking a report apart ([`Layout::sort`]) needs only the round's fixed [`Layout`], not its
//! records, so the mailbox does it without holding the round's lock and then only
//! [places](Received::place) the result.
//!
//! The plan is the authority: a side is taken only from the agent at that end of the path,
//! sequence numbers and times beyond the plan are dropped, and lists come out sorted and unique,
//! so the join can trust what it reads.

use std::{collections::BTreeMap, sync::Arc};

use foldhash::HashMap;

use meshdoctor_api::{
    AgentReport, AnsweredPath, Family, Histogram, LostProbe, PathId, RoundPlan, RttStats, SentPath,
};

use crate::ByNode;

/// Both ends' sides of one planned path, as far as they reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathSides {
    pub sent: Option<Sent>,
    pub answered: Option<Answered>,
}

/// The source's side of a path, as reported and trimmed to the plan, in the least memory a
/// healthy path needs: its counts, its kernel RTT histogram (the metrics' network RTT subtracts
/// the destination's stack time from it, known once both ends reported), its user RTT
/// summarized (the histogram went to the node's [`NodeTimes`], with its stack times), and the
/// lists only a path with trouble fills, boxed apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent {
    pub sent: u32,
    pub received: u32,
    pub src_egress: u32,
    pub src_ingress: u32,
    pub kernel_rtt: Histogram,
    pub user_rtt: Option<RttStats>,
    trouble: Option<Box<Trouble>>,
}

/// What [`SentPath`] lists of a path's probes that did not make it: empty on a healthy path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trouble {
    pub send_errors: Vec<(String, u32)>,
    pub failures: Vec<(String, u32)>,
    pub withheld: Vec<(String, u32)>,
    pub unsent: Vec<u16>,
    pub lost: Vec<LostProbe>,
}

/// No trouble.
const NO_TROUBLE: &Trouble = &Trouble {
    send_errors: Vec::new(),
    failures: Vec::new(),
    withheld: Vec::new(),
    unsent: Vec::new(),
    lost: Vec::new(),
};

impl Sent {
    pub fn trouble(&self) -> &Trouble {
        self.trouble.as_deref().unwrap_or(NO_TROUBLE)
    }
}

/// What the destination's hooks saw of a path: how far its sequence numbers reach and which
/// below that each hook missed (trimmed to the plan; boxed apart, as only a path with trouble
/// has any), and its stack times summarized (their histogram went to the node's
/// [`NodeTimes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answered {
    pub span: u32,
    missed: Option<Box<[Vec<u16>; 2]>>,
    pub stack: Option<RttStats>,
}

impl Answered {
    /// The sequence numbers the destination's ingress and egress hooks missed.
    pub fn missed(&self) -> (&[u16], &[u16]) {
        self.missed
            .as_deref()
            .map_or((&[], &[]), |[ingress, egress]| (ingress, egress))
    }
}

/// Which end's stack a stack time was measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StackSide {
    Source,
    Destination,
}

/// The times one node reported, added up over its paths as they arrived: its kernel and user
/// RTTs (the round summary's) and stack times by family and side (the metrics').
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTimes {
    pub kernel_rtt: Histogram,
    pub user_rtt: Histogram,
    pub stack: BTreeMap<(Family, StackSide), Histogram>,
}

/// Which agents may report a path's sides, and how many probes it planned.
#[derive(Debug, Clone, PartialEq)]
struct Owners {
    src: u32,
    /// The path's place in its source's block of sides.
    offset: u32,
    /// `None` for a destination that is no agent of the round (a listed address, a remote
    /// agent): nobody reports that side.
    dst: Option<u32>,
    planned: u32,
    family: Family,
}

const NO_SLOT: u32 = u32::MAX;

/// Which agents may report which sides of a round's paths: fixed when the round opens and
/// shared, so that a report is taken apart ([`Layout::sort`], most of a fold's work) without
/// the lock of the round it goes to.
#[derive(Debug, Default, PartialEq)]
pub struct Layout {
    /// Node ids: plan order.
    node_ids: HashMap<String, u32>,
    /// Path id -> index in `owners` (`NO_SLOT` for none). A table rather than a map: the mesh
    /// numbers a round's paths from 0 (`mesh::build_plans`), and a report's 1,000 lookups
    /// into a hash map of a big round's 65,000 paths missed the cache each.
    slots: Vec<u32>,
    owners: Vec<Owners>,
    /// Paths ending at each node (by node id): the sides it may report as answered.
    toward: Vec<u32>,
}

/// A report taken apart against its round's [`Layout`]: its sides trimmed to the plan and
/// summarized, by slot, its node's times, and the rest of it.
#[derive(Debug)]
pub struct Sorted {
    node: u32,
    sent: Vec<(usize, Sent)>,
    answered: Vec<(usize, Answered)>,
    times: NodeTimes,
    report: AgentReport,
}

impl Layout {
    fn new(plans: &ByNode<RoundPlan>) -> Self {
        let node_ids: HashMap<String, u32> = plans
            .keys()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let ids = plans.values().flat_map(|p| &p.targets).map(|t| t.path);
        let mut slots = vec![NO_SLOT; ids.max().map_or(0, |id| id as usize + 1)];
        let mut owners = Vec::new();
        for (src, plan) in plans.values().enumerate() {
            let planned = plan.probes_per_target();
            for (offset, t) in plan.targets.iter().enumerate() {
                slots[t.path as usize] = owners.len() as u32;
                owners.push(Owners {
                    src: src as u32,
                    offset: offset as u32,
                    dst: node_ids
                        .get(t.dst_node.as_str())
                        .copied()
                        .filter(|_| !t.external),
                    planned,
                    family: t.family,
                });
            }
        }
        let mut toward = vec![0; node_ids.len()];
        for dst in owners.iter().filter_map(|o| o.dst) {
            toward[dst as usize] += 1;
        }
        Self {
            node_ids,
            slots,
            owners,
            toward,
        }
    }

    /// Where path `id` is in `owners`, if planned.
    fn slot(&self, id: PathId) -> Option<usize> {
        let slot = *self.slots.get(id as usize)?;
        (slot != NO_SLOT).then_some(slot as usize)
    }

    /// How many planned paths end at `node`.
    pub fn paths_toward(&self, node: &str) -> usize {
        self.node_ids
            .get(node)
            .map_or(0, |&id| self.toward[id as usize] as usize)
    }

    /// `report` taken apart: the sides its node is the planned end of, the first of each path
    /// when it repeats one, trimmed and summarized. `None` for a node without a plan.
    pub fn sort(&self, mut report: AgentReport) -> Option<Sorted> {
        let node = *self.node_ids.get(&report.node)?;
        let mut sent: Vec<(usize, SentPath)> = std::mem::take(&mut report.sent)
            .into_iter()
            .filter_map(|s| Some((self.slot(s.path)?, s)))
            .filter(|(i, _)| self.owners[*i].src == node)
            .collect();
        let mut answered: Vec<(usize, AnsweredPath)> = std::mem::take(&mut report.answered)
            .into_iter()
            .filter_map(|a| Some((self.slot(a.path)?, a)))
            .filter(|(i, _)| self.owners[*i].dst == Some(node))
            .collect();
        // Stable: the first of a repeated path stays.
        sent.sort_by_key(|(i, _)| *i);
        sent.dedup_by_key(|(i, _)| *i);
        answered.sort_by_key(|(i, _)| *i);
        answered.dedup_by_key(|(i, _)| *i);
        let mut times = NodeTimes::default();
        let sent = sent
            .into_iter()
            .map(|(i, s)| {
                let o = &self.owners[i];
                (i, times.take_sent(trim_sent(s, o.planned), o.family))
            })
            .collect();
        let answered = answered
            .into_iter()
            .map(|(i, a)| {
                let o = &self.owners[i];
                (
                    i,
                    times.take_answered(trim_answered(a, o.planned), o.family),
                )
            })
            .collect();
        Some(Sorted {
            node,
            sent,
            answered,
            times,
            report,
        })
    }
}

/// Reports of one round, folded (see the module).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// Every report without its paths, by node.
    pub nodes: ByNode<AgentReport>,
    layout: Arc<Layout>,
    /// By source node id, in its plan's target order: one block per source, which the join
    /// drops once it has joined the source's paths.
    paths: Vec<Vec<PathSides>>,
    /// By node id: the times of the sides taken from its report.
    times: Vec<NodeTimes>,
}

impl Received {
    /// Nothing received yet of a round planned as `plans`.
    pub fn new(plans: &ByNode<RoundPlan>) -> Self {
        Self {
            nodes: ByNode::new(),
            layout: Arc::new(Layout::new(plans)),
            paths: plans
                .values()
                .map(|p| vec![PathSides::default(); p.targets.len()])
                .collect(),
            times: vec![NodeTimes::default(); plans.len()],
        }
    }

    /// The round's layout, to [sort](Layout::sort) a report with before it is
    /// [placed](Self::place).
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// How many planned paths end at `node`.
    pub fn paths_toward(&self, node: &str) -> usize {
        self.layout.paths_toward(node)
    }

    /// `plans` with `reports` folded in, in order (tests and tools).
    pub fn of(plans: &ByNode<RoundPlan>, reports: impl IntoIterator<Item = AgentReport>) -> Self {
        let mut received = Self::new(plans);
        reports.into_iter().for_each(|r| received.add(r));
        received
    }

    /// Folds in `report`, replacing an earlier one of its node. A node without a plan is
    /// ignored (the mailbox refuses it first), as is a side of a path the node is not the
    /// planned end of, or the second side of a path the report repeats.
    pub fn add(&mut self, report: AgentReport) {
        if let Some(sorted) = self.layout.sort(report) {
            self.place(sorted);
        }
    }

    /// Puts a report [sorted](Layout::sort) against this round's layout in its paths,
    /// replacing an earlier one of its node.
    pub fn place(&mut self, sorted: Sorted) {
        let Sorted {
            node,
            sent,
            answered,
            times,
            report,
        } = sorted;
        if self.nodes.contains_key(&report.node) {
            self.forget(node);
        }
        for (i, s) in sent {
            self.sides(i).sent = Some(s);
        }
        for (i, a) in answered {
            self.sides(i).answered = Some(a);
        }
        self.times[node as usize] = times;
        self.nodes.insert(report.node.clone(), report);
    }

    /// The sides of the path in slot `i`.
    fn sides(&mut self, i: usize) -> &mut PathSides {
        let o = &self.layout.owners[i];
        &mut self.paths[o.src as usize][o.offset as usize]
    }

    /// Drops what `node` reported of its paths.
    fn forget(&mut self, node: u32) {
        for owners in &self.layout.owners {
            let sides = &mut self.paths[owners.src as usize][owners.offset as usize];
            if owners.src == node {
                sides.sent = None;
            }
            if owners.dst == Some(node) {
                sides.answered = None;
            }
        }
        self.times[node as usize] = NodeTimes::default();
    }

    /// The reports without their paths, the paths' sides in plan order (a block by source node,
    /// the source's targets), and each reporting node's times.
    pub fn into_paths(self) -> (ByNode<AgentReport>, Vec<Vec<PathSides>>, ByNode<NodeTimes>) {
        let mut times = self.times;
        let by_node = self
            .layout
            .node_ids
            .iter()
            .filter(|(n, _)| self.nodes.contains_key(*n))
            .map(|(n, &id)| (n.clone(), std::mem::take(&mut times[id as usize])))
            .collect();
        (self.nodes, self.paths, by_node)
    }
}

impl NodeTimes {
    fn stack(&mut self, family: Family, side: StackSide) -> &mut Histogram {
        self.stack.entry((family, side)).or_default()
    }

    /// `s` with its user RTT summarized and its RTTs and stack times added to this node's.
    fn take_sent(&mut self, s: SentPath, family: Family) -> Sent {
        self.user_rtt.merge(&s.user_rtt);
        self.kernel_rtt.merge(&s.kernel_rtt);
        if !s.src_stack.is_empty() {
            self.stack(family, StackSide::Source).merge(&s.src_stack);
        }
        let trouble = Trouble {
            send_errors: s.send_errors,
            failures: s.failures,
            withheld: s.withheld,
            unsent: s.unsent,
            lost: s.lost,
        };
        Sent {
            sent: s.sent,
            received: s.received,
            src_egress: s.src_egress,
            src_ingress: s.src_ingress,
            user_rtt: RttStats::from_histogram(&s.user_rtt),
            kernel_rtt: s.kernel_rtt,
            trouble: (trouble != *NO_TROUBLE).then(|| Box::new(trouble)),
        }
    }

    /// `a` with its stack times summarized and added to this node's.
    fn take_answered(&mut self, a: AnsweredPath, family: Family) -> Answered {
        if !a.stack.is_empty() {
            self.stack(family, StackSide::Destination).merge(&a.stack);
        }
        Answered {
            span: a.span,
            missed: (!a.ingress_missed.is_empty() || !a.egress_missed.is_empty())
                .then(|| Box::new([a.ingress_missed, a.egress_missed])),
            stack: RttStats::from_histogram(&a.stack),
        }
    }
}

/// Sorted, unique and below `planned`.
fn trim_seqs(seqs: &mut Vec<u16>, planned: u32) {
    seqs.retain(|&s| u32::from(s) < planned);
    seqs.sort_unstable();
    seqs.dedup();
}

/// Empty when it claims more times than the path planned probes.
fn trim_times(h: &mut Histogram, planned: u32) {
    if h.count() > u64::from(planned) {
        *h = Histogram::default();
    }
}

fn trim_sent(mut s: SentPath, planned: u32) -> SentPath {
    for h in [&mut s.kernel_rtt, &mut s.user_rtt, &mut s.src_stack] {
        trim_times(h, planned);
    }
    trim_seqs(&mut s.unsent, planned);
    s.lost.retain(|p| u32::from(p.seq) < planned);
    s.lost.sort_unstable_by_key(|p| p.seq);
    s.lost.dedup_by_key(|p| p.seq);
    // A probe not handed to the kernel was not lost in flight.
    s.lost.retain(|p| s.unsent.binary_search(&p.seq).is_err());
    s
}

fn trim_answered(mut a: AnsweredPath, planned: u32) -> AnsweredPath {
    trim_times(&mut a.stack, planned);
    a.span = a.span.min(planned);
    trim_seqs(&mut a.ingress_missed, a.span);
    trim_seqs(&mut a.egress_missed, a.span);
    a
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::LostProbe;

    use super::*;
    use crate::join::tests::{mk_plans, mk_report};

    #[test]
    fn sides_are_taken_from_the_planned_ends_only() {
        let plans = mk_plans();
        // node-1 claims node-2's path 1 as its own and as answered by it.
        let mut r1 = mk_report(&plans, "node-1", &[]);
        let mut foreign = r1.sent[0].clone();
        foreign.path = 1;
        r1.sent.insert(0, foreign);
        r1.answered.push(AnsweredPath {
            path: 0,
            ..r1.answered[0].clone()
        });
        let received = Received::of(&plans, [r1.clone()]);
        assert_eq!(
            (received.paths_toward("node-1"), received.paths_toward("x")),
            (1, 0)
        );
        let (nodes, paths, times) = received.into_paths();
        let paths: Vec<PathSides> = paths.into_iter().flatten().collect();
        assert!(nodes["node-1"].sent.is_empty(), "folded away");
        assert_eq!(paths[0].sent.as_ref().unwrap().sent, r1.sent[1].sent);
        assert_eq!(paths[1].sent, None);
        assert_eq!(paths[0].answered, None, "path 0 ends at node-2");
        assert_eq!(
            paths[1].answered.as_ref().unwrap().span,
            r1.answered[0].span
        );
        // Only the sides taken count in the node's times.
        let stack = |side| times["node-1"].stack[&(Family::Ipv4, side)].count();
        assert_eq!(stack(StackSide::Source), r1.sent[1].src_stack.count());
        assert_eq!(stack(StackSide::Destination), r1.answered[0].stack.count());
    }

    #[test]
    fn a_repeated_report_replaces_the_first() {
        let plans = mk_plans();
        let first = mk_report(&plans, "node-1", &[3]);
        let mut second = mk_report(&plans, "node-1", &[]);
        second.answered.clear();
        second.sent[0].kernel_rtt = [500_000].into_iter().collect();
        let (nodes, paths, times) = Received::of(&plans, [first, second.clone()]).into_paths();
        let paths: Vec<PathSides> = paths.into_iter().flatten().collect();
        assert_eq!(nodes.len(), 1);
        assert_eq!(paths[0].sent.as_ref().unwrap().trouble().lost, []);
        assert_eq!(
            paths[1].answered, None,
            "the second report answered nothing"
        );
        // Its times replace the first's too.
        assert_eq!(times["node-1"].kernel_rtt, second.sent[0].kernel_rtt);
        assert!(
            !times["node-1"]
                .stack
                .contains_key(&(Family::Ipv4, StackSide::Destination))
        );
    }

    #[test]
    fn sequence_numbers_are_trimmed_to_the_plan() {
        let plans = mk_plans();
        let mut r1 = mk_report(&plans, "node-1", &[]);
        let lost = |seq| LostProbe {
            seq,
            src_egress: true,
            src_ingress: false,
        };
        r1.sent[0].lost = vec![lost(7), lost(3), lost(3), lost(500), lost(4)];
        r1.sent[0].unsent = vec![4, 900, 4];
        let mut r2 = mk_report(&plans, "node-2", &[]);
        let a = &mut r2.answered[0];
        (a.span, a.ingress_missed, a.egress_missed) = (60_000, vec![9, 2, 30_000], vec![2, 2]);
        let (_, paths, _) = Received::of(&plans, [r1, r2]).into_paths();
        let paths: Vec<PathSides> = paths.into_iter().flatten().collect();
        let s = paths[0].sent.as_ref().unwrap().trouble();
        assert_eq!(s.lost, [lost(3), lost(7)]);
        assert_eq!(s.unsent, [4]);
        let a = paths[0].answered.as_ref().unwrap();
        assert_eq!((a.span, a.missed()), (20, (&[2, 9][..], &[2][..])));
    }
}
