//! The join: both ends' sides of every planned pair-path, folded from the agents' reports as
//! they arrived ([`fold`]), matched by path index and, for the probes that did not make it, by
//! sequence number ([`path`]), into per-path results and a round summary.
//!
//! The plan is the authority on what should have happened (which paths, how many probes);
//! agents' reports only say what did. Anything an agent reports beyond its plan is ignored,
//! and a missing report makes its paths `notReported`, never loss.

pub mod fold;
mod path;

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt as _};

use meshdoctor_api::{
    AgentReport, Histogram, Name, Packet, PathId, PathResult, PathSegment, PathState, ProbeDrop,
    RoundPlan, RoundSummary, RttStats, Timestamping, agent_report::TOLERATED_STALL_MS,
};

use self::{
    fold::{NodeTimes, Received},
    path::{Drops, Ends, Observed, join_path, ratio},
};
use crate::ByNode;

/// The joined round, before judging.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub paths: Vec<PathResult>,
    /// Per path (same index as `paths`), the per-probe detail localization votes with and the
    /// report does not keep.
    pub losses: Vec<PathLoss>,
    /// The times behind the metrics' histograms.
    pub times: RoundTimes,
    pub summary: RoundSummary,
    /// Nodes with a plan but no report, sorted.
    pub not_reported: Vec<String>,
    /// What the agents' observers could not do this round, one sentence per kind.
    pub warnings: Vec<String>,
}

/// Most nodes a warning names; it counts the rest.
const NAMED: usize = 5;

/// "node-1, node-2 and 3 more".
fn some_of(nodes: &[&str]) -> String {
    let mut s = nodes[..nodes.len().min(NAMED)].join(", ");
    if nodes.len() > NAMED {
        s += &format!(" and {} more", nodes.len() - NAMED);
    }
    s
}

/// One warning per kind of observer trouble in `reports`: a round the observers could not
/// follow whole, a ring buffer too small for the round's rate of events.
fn observer_warnings(reports: &ByNode<AgentReport>) -> Vec<String> {
    let incomplete: Vec<&str> = reports
        .iter()
        .filter(|(_, r)| r.observer.incomplete)
        .map(|(n, _)| n.as_str())
        .collect();
    let short: Vec<(&str, u64)> = reports
        .iter()
        .filter_map(|(n, r)| Some((n.as_str(), r.observer.stall_covered_ms?)))
        .filter(|&(_, ms)| ms < TOLERATED_STALL_MS)
        .collect();
    let mut warnings = Vec::new();
    if !incomplete.is_empty() {
        warnings.push(format!(
            "the eBPF observers of {} could not follow every probe of this round (more TCP \
             probe paths than the agent's map grew to (--tcp-paths, grown from plans up to 65,536), a \
             map not yet grown while other rounds ran, or too many rounds at once): their \
             missing hooks are unobserved, not loss",
            some_of(&incomplete)
        ));
    }
    if let Some(least) = short.iter().map(|&(_, ms)| ms).min() {
        let nodes: Vec<&str> = short.iter().map(|&(n, _)| n).collect();
        warnings.push(format!(
            "the event ring buffer of {} absorbs only {least} ms of reader stall at this \
             round's probe rate (under {TOLERATED_STALL_MS} ms): raise the agent's \
             --event-buffer-kib (agents grow it from plans up to 64 MiB, at a round \
             that starts alone) or lower the rate",
            some_of(&nodes)
        ));
    }
    warnings
}

/// What localization needs of one path beyond its [`PathResult`]: which of its counts can be
/// trusted, and its lost probes split finely enough to pick candidate places.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathLoss {
    /// Both ends' observers saw every event, so the hook counts past the source's send are
    /// real traffic figures (else those segments' losses are `unobserved`, and their probe
    /// counts must not dilute a ratio either).
    pub hooks_observed: bool,
    /// Lost probes by segment; `unobserved` ones are not here.
    pub buckets: Vec<LossBucket>,
}

impl PathLoss {
    /// From lost-probe counts by (segment, packet the destination dropped).
    pub(crate) fn new(
        hooks_observed: bool,
        counts: BTreeMap<(PathSegment, Option<Packet>), u32>,
    ) -> Self {
        Self {
            hooks_observed,
            buckets: counts
                .into_iter()
                .map(|((segment, dropped), lost)| LossBucket {
                    segment,
                    dropped,
                    lost,
                })
                .collect(),
        }
    }
}

/// Lost probes of one path that share a segment and, in the destination's stack, the packet
/// its kernel recorded dropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossBucket {
    pub segment: PathSegment,
    /// For `DstStack`: whether the destination dropped the request (on its way in) or the
    /// reply (on its way out); `None` without a drop record, or in any other segment.
    pub dropped: Option<Packet>,
    pub lost: u32,
}

/// A round's times for the metrics' histograms: what their series add up, kept apart from
/// the paths' summaries ([`RttStats`]) in the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundTimes {
    /// Per path (same index as [`Joined::paths`]), when its destination measured stack times.
    pub network: Vec<Option<NetworkTimes>>,
    /// Each reporting node's times, added up over its paths.
    pub nodes: ByNode<NodeTimes>,
}

/// A path's network RTT at its source: its kernel RTTs, each less the destination's mean stack
/// time (the two ends report their times apart, so a probe's own stack time is not known where
/// its RTT is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkTimes {
    pub kernel_rtt: Histogram,
    pub less_ns: f64,
}

/// Drop records by node and path.
type DropIndex<'a> = HashMap<&'a str, HashMap<PathId, Vec<&'a ProbeDrop>>>;

/// Joins the plans of a round (by source node) with what it `received`.
pub fn join(plans: &ByNode<RoundPlan>, received: Received) -> Joined {
    let (reports, sides, node_times) = received.into_paths();
    let mut drops: DropIndex<'_> = HashMap::new();
    for (node, r) in &reports {
        let by_path = drops.entry(node.as_str()).or_default();
        for d in &r.drops {
            by_path.entry(d.path).or_default().push(d);
        }
    }
    let drops_of = |node: &str, path: PathId| -> &[&ProbeDrop] {
        drops
            .get(node)
            .and_then(|p| p.get(&path))
            .map_or(&[], Vec::as_slice)
    };
    // Its eBPF observers ran and lost no event: a hook it did not report really did not see
    // the packet.
    let observed_all = |node: &str| {
        reports.get(node).is_some_and(|r| {
            r.timestamping == Timestamping::Ebpf
                && r.observer.ringbuf_drops == 0
                && !r.observer.incomplete
        })
    };

    let mut blocks = sides.into_iter();
    // The plans say how many paths there are: sized once rather than grown by doubling.
    let total: usize = plans.values().map(|p| p.targets.len()).sum();
    let (mut paths, mut losses, mut network) = (
        Vec::with_capacity(total),
        Vec::with_capacity(total),
        Vec::with_capacity(total),
    );
    for (src, plan) in plans {
        let planned = plan.probes_per_target();
        // Named once, shared by the source's paths.
        let src_name = Name::from(src);
        // The fold keeps each source's sides in its plan's order, a block per source, dropped
        // here once joined: the round never holds every path's sides and results at once.
        let mut sides = blocks.next().unwrap_or_default().into_iter();
        for target in &plan.targets {
            let side = sides.next().unwrap_or_default();
            let dst = target.dst_node.as_str();
            let ends = Ends {
                src_reported: reports.contains_key(src),
                sent: side.sent,
                dst_reported: reports.contains_key(dst),
                answered: side.answered,
                observed: Observed {
                    src: observed_all(src),
                    dst: observed_all(dst),
                    external: target.external,
                },
                // Only the path's own ends can have dropped its probes.
                drops: Drops {
                    src: drops_of(src, target.path),
                    dst: drops_of(dst, target.path),
                },
            };
            let (path, loss, times) = join_path(&src_name, target, planned, ends);
            paths.push(path);
            losses.push(loss);
            network.push(times);
        }
    }

    let not_reported = plans
        .keys()
        .filter(|node| !reports.contains_key(*node))
        .cloned()
        .collect();
    let unobserved = reports
        .values()
        .fold(0u64, |acc, r| acc.saturating_add(r.observer.ringbuf_drops));
    Joined {
        warnings: observer_warnings(&reports),
        summary: summarize(&paths, node_times.values(), unobserved),
        paths,
        losses,
        times: RoundTimes {
            network,
            nodes: node_times,
        },
        not_reported,
    }
}

/// Totals over the paths whose source reported, counting failed sends as sent and lost so that
/// a source refusing its own probes lowers the success rate. With nothing sent the success
/// rate is 0, not 1: a round that proved nothing must not look healthy (the judge fails it
/// with a reason).
fn summarize<'a>(
    paths: &[PathResult],
    nodes: impl Iterator<Item = &'a NodeTimes>,
    unobserved_events: u64,
) -> RoundSummary {
    let reported = || paths.iter().filter(|p| p.state != PathState::NotReported);
    let sent: u64 = reported()
        .map(|p| u64::from(p.sent) + u64::from(p.send_failed))
        .sum();
    let received: u64 = reported().map(|p| u64::from(p.received)).sum();
    // The times of the paths whose source reported: its node's.
    let (mut kernel, mut user) = (Histogram::default(), Histogram::default());
    for t in nodes {
        kernel.merge(&t.kernel_rtt);
        user.merge(&t.user_rtt);
    }
    let user_rtt = RttStats::from_histogram(&user);
    RoundSummary {
        paths: paths.len() as u32,
        lossy_paths: paths.iter().filter(|p| p.state == PathState::Lossy).count() as u32,
        sent,
        received,
        lost: sent - received,
        success_rate: ratio(received, sent),
        mean_rtt_ms: user_rtt.map(|u| (f64::from(u.mean_us) * 1000.0).round() / 1e6),
        unobserved_events,
        kernel_rtt: RttStats::from_histogram(&kernel),
        user_rtt,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use meshdoctor_api::{
        AgentReport, AnsweredPath, LossSegments, LostProbe, SentPath, round::HookCounts,
    };
    use meshdoctor_api::{Family, ObserverStats, Timestamping};

    use super::{fold::StackSide, *};
    use crate::mesh::{
        build_plans,
        tests::{mk_agent, mk_meta, mk_task},
    };

    /// Plans of a 2-agent, eth0-only, IPv4 mesh: path 0 is node-1 -> node-2, path 1 the reverse.
    pub(crate) fn mk_plans() -> BTreeMap<String, RoundPlan> {
        let mut task = mk_task(", interfaces: [pod]");
        task.spec.target.ipv6 = false;
        build_plans(&task, &[mk_agent(1), mk_agent(2)], &[], mk_meta())
            .unwrap()
            .plans
    }

    /// A report of `node` for `plans` where every probe of its paths made it except the
    /// sequence numbers in `lost` (seen leaving, never back), with 1 ms user RTT, 800 µs
    /// kernel RTT, 100 µs dst stack.
    pub(crate) fn mk_report(
        plans: &BTreeMap<String, RoundPlan>,
        node: &str,
        lost: &[usize],
    ) -> AgentReport {
        let plan = &plans[node];
        let n = plan.probes_per_target();
        let back = n - lost.len() as u32;
        let sent = plan
            .targets
            .iter()
            .map(|t| SentPath {
                lost: lost
                    .iter()
                    .map(|&seq| LostProbe {
                        seq: seq as u16,
                        src_egress: true,
                        src_ingress: false,
                    })
                    .collect(),
                ..SentPath::test(t.path, n, back, [800_000, 1_000_000, 200_000])
            })
            .collect();
        let answered = plans
            .values()
            .flat_map(|p| &p.targets)
            .filter(|t| t.dst_node == node)
            .map(|t| AnsweredPath::test(t.path, n, 100_000, &t.dst_interface))
            .collect();
        AgentReport {
            sent,
            answered,
            observer: ObserverStats {
                ringbuf_drops: 2,
                events: 100,
                drop_tracer: true,
                ..Default::default()
            },
            ..AgentReport::on_plan(node, plan, Timestamping::Ebpf)
        }
    }

    /// The join of `plans` with `reports`, folded in node order.
    pub(crate) fn join_reports(
        plans: &BTreeMap<String, RoundPlan>,
        reports: &BTreeMap<String, AgentReport>,
    ) -> Joined {
        join(plans, Received::of(plans, reports.values().cloned()))
    }

    pub(crate) fn mk_reports(reports: Vec<AgentReport>) -> BTreeMap<String, AgentReport> {
        reports.into_iter().map(|r| (r.node.clone(), r)).collect()
    }

    #[test]
    fn clean_round_has_stats_for_every_hook() {
        let plans = mk_plans();
        let reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let j = join_reports(&plans, &reports);
        assert_eq!(j.paths.len(), 2);
        assert!(j.not_reported.is_empty());
        let p = &j.paths[0];
        assert_eq!(
            (p.state, p.planned, p.sent, p.received, p.lost),
            (PathState::Ok, 20, 20, 20, 0)
        );
        assert_eq!(
            p.hooks,
            HookCounts {
                src_egress: 20,
                dst_ingress: 20,
                dst_egress: 20,
                src_ingress: 20,
                delivered: 20
            }
        );
        assert_eq!(p.user_rtt.unwrap().mean_us, 1000.0);
        assert_eq!(p.kernel_rtt.unwrap().p99_us, 800.0);
        assert_eq!(p.dst_stack.unwrap().count, 20);
        assert_eq!(p.network_rtt.unwrap().max_us, 700.0);
        assert!(p.lost_probes.is_empty());
        // node-1 sent path 0 alone: its stack times are node-1's.
        let src_stack = &j.times.nodes["node-1"].stack[&(Family::Ipv4, StackSide::Source)];
        assert_eq!(src_stack.count(), 20);
        let network = j.times.network[0].as_ref().unwrap();
        assert_eq!(
            (network.kernel_rtt.count(), network.less_ns),
            (20, 100_000.0)
        );
        assert_eq!(j.summary.success_rate, 1.0);
        assert_eq!(j.summary.mean_rtt_ms, Some(1.0));
        assert_eq!(j.summary.unobserved_events, 4);
    }

    #[test]
    fn lost_replies_are_unobserved_unless_both_ends_saw_every_event() {
        let plans = mk_plans();
        let mut reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        // mk_report's observers dropped events: the two lost replies cannot be placed.
        let seg = |r: &BTreeMap<String, AgentReport>| join_reports(&plans, r).paths[0].segments;
        assert_eq!(
            seg(&reports),
            LossSegments {
                unobserved: 2,
                ..Default::default()
            }
        );
        for r in reports.values_mut() {
            r.observer.ringbuf_drops = 0;
        }
        // Seen at every hook but the source's ingress: lost on the way back.
        assert_eq!(
            seg(&reports),
            LossSegments {
                reply: 2,
                ..Default::default()
            }
        );
        assert_eq!(
            join_reports(&plans, &reports).warnings,
            Vec::<String>::new()
        );
        // An agent that could not arm the round whole: unobserved again, and said.
        reports.get_mut("node-2").unwrap().observer.incomplete = true;
        assert_eq!(seg(&reports).unobserved, 2);
        let warnings = join_reports(&plans, &reports).warnings;
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("the eBPF observers of node-2 could not follow"));
        assert!(warnings[0].contains("--tcp-paths"));
    }

    #[test]
    fn a_ring_buffer_short_for_the_rate_is_one_warning_naming_a_few_nodes() {
        let plans = mk_plans();
        let mut reports: ByNode<AgentReport> = (1..=8)
            .map(|i| {
                let plan = &plans["node-1"];
                let mut r = AgentReport::on_plan(format!("node-{i}"), plan, Timestamping::Ebpf);
                r.observer.stall_covered_ms = Some(100 * i);
                (r.node.clone(), r)
            })
            .collect();
        let w = observer_warnings(&reports);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "the event ring buffer of node-1, node-2, node-3, node-4, node-5 and 3 more \
                 absorbs only 100 ms"
            ),
            "{w:?}"
        );
        for r in reports.values_mut() {
            r.observer.stall_covered_ms = Some(TOLERATED_STALL_MS);
        }
        assert!(observer_warnings(&reports).is_empty());
    }

    #[test]
    fn loss_is_counted_per_path() {
        let plans = mk_plans();
        let reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let j = join_reports(&plans, &reports);
        let p = &j.paths[0];
        assert_eq!(
            (p.state, p.sent, p.received, p.lost),
            (PathState::Lossy, 20, 18, 2)
        );
        assert_eq!(p.loss_ratio, 0.1);
        assert_eq!((p.hooks.src_ingress, p.hooks.delivered), (18, 18));
        assert_eq!(p.user_rtt.unwrap().count, 18);
        let lost: Vec<u16> = p.lost_probes.iter().map(|s| s.seq).collect();
        assert_eq!(lost, [3, 4]);
        assert_eq!(
            (j.summary.sent, j.summary.lost, j.summary.lossy_paths),
            (40, 2, 1)
        );
        assert_eq!(j.summary.success_rate, 38.0 / 40.0);
    }

    #[test]
    fn silent_source_is_not_reported_not_loss() {
        let plans = mk_plans();
        let reports = mk_reports(vec![mk_report(&plans, "node-2", &[])]);
        let j = join_reports(&plans, &reports);
        assert_eq!(j.not_reported, ["node-1"]);
        let from_silent = &j.paths[0];
        assert_eq!(from_silent.state, PathState::NotReported);
        assert_eq!((from_silent.sent, from_silent.lost), (0, 0));
        assert!(from_silent.dst_reported);
        // The reverse path is known from node-2's side alone, minus node-1's hooks.
        let reverse = &j.paths[1];
        assert_eq!(reverse.state, PathState::Ok);
        assert!(!reverse.dst_reported);
        assert_eq!((reverse.hooks.dst_ingress, reverse.dst_stack), (0, None));
        assert_eq!(reverse.network_rtt, None);
        assert_eq!((j.summary.sent, j.summary.lost), (20, 0));
    }

    #[test]
    fn missing_destination_entry_and_hostile_counts() {
        let plans = mk_plans();
        let mut r1 = mk_report(&plans, "node-1", &[]);
        r1.sent[0].received = 99;
        r1.sent[0].user_rtt.record_n(5, 1000);
        let mut r2 = mk_report(&plans, "node-2", &[]);
        r2.answered.clear();
        r2.sent.clear();
        let j = join_reports(&plans, &mk_reports(vec![r1, r2]));
        let p = &j.paths[0];
        assert!(p.dst_reported);
        assert_eq!((p.received, p.lost, p.hooks.dst_ingress), (20, 0, 0));
        assert_eq!(p.user_rtt, None, "more times than probes");
        assert_eq!(p.kernel_rtt.unwrap().count, 20);
        let unsent = &j.paths[1];
        assert_eq!(
            (unsent.state, unsent.planned, unsent.sent),
            (PathState::Ok, 20, 0)
        );
    }

    #[test]
    fn nothing_sent_is_not_a_perfect_rate() {
        let j = join_reports(&mk_plans(), &BTreeMap::new());
        assert_eq!(j.summary.success_rate, 0.0);
        assert_eq!(j.summary.mean_rtt_ms, None);
        assert_eq!(j.not_reported, ["node-1", "node-2"]);
    }

    /// `mk_report`s of both nodes whose observers saw every event.
    fn mk_observed_reports(
        plans: &BTreeMap<String, RoundPlan>,
        lost1: &[usize],
    ) -> BTreeMap<String, AgentReport> {
        let mut reports = mk_reports(vec![
            mk_report(plans, "node-1", lost1),
            mk_report(plans, "node-2", &[]),
        ]);
        for r in reports.values_mut() {
            r.observer.ringbuf_drops = 0;
        }
        reports
    }

    fn mk_drop(path: PathId, seq: u16, packet: Packet, reason: &str) -> ProbeDrop {
        ProbeDrop {
            path,
            seq,
            packet,
            reason: reason.into(),
            location: "nft_do_chain+0x4c1".into(),
            interface: Some("eth0".into()),
        }
    }

    #[test]
    fn refused_sends_are_lost_at_src_send() {
        let plans = mk_plans();
        let mut reports = mk_observed_reports(&plans, &[]);
        let s = &mut reports.get_mut("node-1").unwrap().sent[0];
        // Probes 5..9 failed with EPERM: never handed to the kernel, never answered.
        s.unsent = vec![5, 6, 7, 8];
        (s.sent, s.received, s.src_egress, s.src_ingress) = (16, 16, 16, 16);
        s.send_errors = vec![("Operation not permitted".into(), 3), ("x".into(), 1)];
        let j = join_reports(&plans, &reports);
        let p = &j.paths[0];
        assert_eq!(
            (p.state, p.sent, p.send_failed, p.received, p.lost),
            (PathState::Lossy, 16, 4, 16, 4)
        );
        assert_eq!(p.loss_ratio, 0.2);
        assert_eq!(
            p.segments,
            LossSegments {
                src_send: 4,
                ..Default::default()
            }
        );
        assert_eq!(
            j.losses[0].buckets,
            [LossBucket {
                segment: PathSegment::SrcSend,
                dropped: None,
                lost: 4
            }]
        );
        assert_eq!((j.summary.sent, j.summary.lost), (40, 4));
        assert_eq!(j.summary.success_rate, 0.9);
    }

    #[test]
    fn claimed_counts_are_capped_by_the_plan() {
        let plans = mk_plans();
        let mut reports = mk_observed_reports(&plans, &[]);
        let s = &mut reports.get_mut("node-1").unwrap().sent[0];
        (s.sent, s.received) = (500, 500);
        s.send_errors = vec![("a".into(), u32::MAX), ("b".into(), u32::MAX)];
        let s = &mut reports.get_mut("node-2").unwrap().sent[0];
        s.sent = 18;
        s.send_errors = vec![("a".into(), u32::MAX)];
        let j = join_reports(&plans, &reports);
        let p = &j.paths[0];
        assert_eq!((p.sent, p.send_failed, p.received, p.lost), (20, 0, 20, 0));
        let p = &j.paths[1];
        assert_eq!((p.sent, p.send_failed, p.received, p.lost), (18, 2, 18, 2));
        assert_eq!(p.loss_ratio, 0.1);
    }

    #[test]
    fn drops_of_lost_probes_are_counted_at_the_path_ends_only() {
        let plans = mk_plans();
        // Path 0 (node-1 -> node-2) lost probes 3, 4 and 5 in node-2's stack.
        let mut reports = mk_observed_reports(&plans, &[3, 4, 5]);
        let answered = &mut reports.get_mut("node-2").unwrap().answered;
        let a = answered.iter_mut().find(|a| a.path == 0).unwrap();
        a.egress_missed = vec![3, 4, 5];
        let src_drops = vec![
            // A delivered probe's drop record is a raw-socket clone: ignored.
            mk_drop(0, 1, Packet::Reply, "NOT_SPECIFIED"),
            // Out of the plan's range, or another path that is not node-1's: ignored.
            mk_drop(0, 20, Packet::Request, "NETFILTER_DROP"),
            mk_drop(0, u16::MAX, Packet::Request, "NETFILTER_DROP"),
            mk_drop(9, 3, Packet::Request, "NETFILTER_DROP"),
        ];
        reports.get_mut("node-1").unwrap().drops = src_drops;
        reports.get_mut("node-2").unwrap().drops = vec![
            mk_drop(0, 3, Packet::Request, "NETFILTER_DROP"),
            // The same probe and packet twice: counted once.
            mk_drop(0, 3, Packet::Request, "NETFILTER_DROP"),
            mk_drop(0, 4, Packet::Request, "NETFILTER_DROP"),
            mk_drop(0, 5, Packet::Reply, "IP_OUTNOROUTES"),
        ];
        let j = join_reports(&plans, &reports);
        let p = &j.paths[0];
        let counts: Vec<(&str, Packet, &str, u32)> = p
            .drops
            .iter()
            .map(|d| (d.node.as_str(), d.packet, d.reason.as_str(), d.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("node-2", Packet::Request, "NETFILTER_DROP", 2),
                ("node-2", Packet::Reply, "IP_OUTNOROUTES", 1),
            ]
        );
        assert_eq!(p.segments.dst_stack, 3);
        let bucket = |dropped, lost| LossBucket {
            segment: PathSegment::DstStack,
            dropped,
            lost,
        };
        assert_eq!(
            j.losses[0],
            PathLoss {
                hooks_observed: true,
                buckets: vec![
                    bucket(Some(Packet::Request), 2),
                    bucket(Some(Packet::Reply), 1)
                ],
            }
        );
        // node-2's own path saw none of it.
        assert!(j.paths[1].drops.is_empty());
        assert_eq!(j.losses[1].buckets, []);
    }

    /// A TCP probe whose SYN-ACK was lost: the client retransmits the SYN, and the server,
    /// which answered the first one, drops the duplicate. That drop is not the probe's loss.
    #[test]
    fn a_retransmitted_requests_drop_keeps_the_reply_side_verdict() {
        let plans = mk_plans();
        let mut reports = mk_observed_reports(&plans, &[3, 4]);
        let answered = &mut reports.get_mut("node-2").unwrap().answered;
        let a = answered.iter_mut().find(|a| a.path == 0).unwrap();
        // Probe 3's SYN-ACK left node-2 and was lost on the way; probe 4's was dropped by
        // node-2's own stack on the way out.
        a.egress_missed = vec![4];
        reports.get_mut("node-2").unwrap().drops = vec![
            mk_drop(0, 3, Packet::Request, "NOT_SPECIFIED"),
            mk_drop(0, 4, Packet::Reply, "NETFILTER_DROP"),
            mk_drop(0, 4, Packet::Request, "NOT_SPECIFIED"),
        ];
        let j = join_reports(&plans, &reports);
        let p = &j.paths[0];
        assert_eq!((p.segments.reply, p.segments.dst_stack), (1, 1));
        let counts: Vec<(&str, Packet, &str, u32)> = p
            .drops
            .iter()
            .map(|d| (d.node.as_str(), d.packet, d.reason.as_str(), d.count))
            .collect();
        assert_eq!(counts, [("node-2", Packet::Reply, "NETFILTER_DROP", 1)]);
        assert_eq!(
            j.losses[0].buckets,
            [
                LossBucket {
                    segment: PathSegment::DstStack,
                    dropped: Some(Packet::Reply),
                    lost: 1
                },
                LossBucket {
                    segment: PathSegment::Reply,
                    dropped: None,
                    lost: 1
                },
            ]
        );
    }

    #[test]
    fn unobserved_loss_makes_no_bucket() {
        let plans = mk_plans();
        // mk_report's observers dropped events.
        let reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let j = join_reports(&plans, &reports);
        assert_eq!(j.paths[0].segments.unobserved, 2);
        assert_eq!(
            j.losses[0],
            PathLoss {
                hooks_observed: false,
                buckets: vec![]
            }
        );
    }
}
