//! The join: both ends' reports of every planned pair-path, matched by path index and probe
//! sequence number, into per-path results and a round summary.
//!
//! The plan is the authority on what should have happened (which paths, how many probes);
//! agents' reports only say what did. Anything an agent reports beyond its plan is ignored,
//! and a missing report makes its paths `notReported`, never loss.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshdoctor_api::{
    AgentReport, AnsweredPath, Bitmap, DropCount, LossSegments, Packet, PathResult, PathSegment,
    PathState, PlannedTarget, ProbeDrop, ProbeSample, RoundPlan, RoundSummary, RttStats, SentPath,
    Timestamping, round::HookCounts,
};

/// The joined round, before judging.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub paths: Vec<PathResult>,
    /// Per path (same index as `paths`), the per-probe detail localization votes with and the
    /// report does not keep.
    pub losses: Vec<PathLoss>,
    pub summary: RoundSummary,
    /// Nodes with a plan but no report, sorted.
    pub not_reported: Vec<String>,
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

/// What is known of a path's source side.
enum SrcSide<'a> {
    /// The source agent did not report at all.
    NotReported,
    /// It reported; `None` when its report has no entry for this path (nothing sent).
    Reported(Option<&'a SentPath>),
}

/// One agent's report indexed by path; the first entry wins when a path appears twice.
struct Indexed<'a> {
    sent: HashMap<u16, &'a SentPath>,
    answered: HashMap<u16, &'a AnsweredPath>,
    drops: HashMap<u16, Vec<&'a ProbeDrop>>,
    /// Its eBPF observers ran and lost no event: a hook it did not report really did not see
    /// the packet.
    observed_all: bool,
}

impl<'a> Indexed<'a> {
    fn new(report: &'a AgentReport) -> Self {
        let mut sent = HashMap::new();
        for s in &report.sent {
            sent.entry(s.path).or_insert(s);
        }
        let mut answered = HashMap::new();
        for a in &report.answered {
            answered.entry(a.path).or_insert(a);
        }
        let mut drops: HashMap<u16, Vec<&ProbeDrop>> = HashMap::new();
        for d in &report.drops {
            drops.entry(d.path).or_default().push(d);
        }
        Self {
            sent,
            answered,
            drops,
            observed_all: report.timestamping == Timestamping::Ebpf
                && report.observer.ringbuf_drops == 0,
        }
    }

    fn drops_of(&self, path: u16) -> &[&'a ProbeDrop] {
        self.drops.get(&path).map_or(&[], Vec::as_slice)
    }
}

/// Joins the plans of a round (by source node) with the reports that arrived (by node).
pub fn join(
    plans: &BTreeMap<String, RoundPlan>,
    reports: &BTreeMap<String, AgentReport>,
) -> Joined {
    let index: HashMap<&str, Indexed<'_>> = reports
        .iter()
        .map(|(node, r)| (node.as_str(), Indexed::new(r)))
        .collect();

    let mut paths = Vec::new();
    let mut losses = Vec::new();
    for (src, plan) in plans {
        let planned = plan.probes_per_target();
        let src_index = index.get(src.as_str());
        for target in &plan.targets {
            let src_side = match src_index {
                None => SrcSide::NotReported,
                Some(i) => SrcSide::Reported(i.sent.get(&target.path).copied()),
            };
            let dst_index = index.get(target.dst_node.as_str());
            let dst = dst_index.and_then(|i| i.answered.get(&target.path).copied());
            let observed = Observed {
                src: src_index.is_some_and(|i| i.observed_all),
                dst: dst_index.is_some_and(|i| i.observed_all),
                external: target.external,
            };
            // Only the path's own ends can have dropped its probes.
            let drops = Drops {
                src: src_index.map_or(&[][..], |i| i.drops_of(target.path)),
                dst: dst_index.map_or(&[][..], |i| i.drops_of(target.path)),
            };
            let ends = Ends {
                src: src_side,
                dst,
                dst_reported: dst_index.is_some(),
                observed,
                drops,
            };
            let (path, loss) = join_path(src, target, planned, ends);
            paths.push(path);
            losses.push(loss);
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
        summary: summarize(&paths, unobserved),
        paths,
        losses,
        not_reported,
    }
}

/// Whether each end's hooks can be trusted to have seen every packet that passed them.
#[derive(Debug, Clone, Copy)]
struct Observed {
    src: bool,
    dst: bool,
    /// The destination is a listed address: it has no hooks, the source's own decide.
    external: bool,
}

/// Drop records of one path from each of its ends' reports.
#[derive(Clone, Copy)]
struct Drops<'a> {
    src: &'a [&'a ProbeDrop],
    dst: &'a [&'a ProbeDrop],
}

/// The segment of one lost probe: the first hook that did not see it (docs/architecture.md,
/// "Where a lost probe was lost"); `None` (unobserved) when the end owning that hook may have
/// missed the event.
fn classify(seen: [bool; 4], observed: Observed) -> Option<PathSegment> {
    let [src_egress, dst_ingress, dst_egress, src_ingress] = seen;
    match () {
        () if !observed.src => None,
        () if !src_egress => Some(PathSegment::SrcSend),
        () if observed.external && !src_ingress => Some(PathSegment::Beyond),
        () if observed.external => Some(PathSegment::SrcReceive),
        () if !observed.dst => None,
        () if !dst_ingress => Some(PathSegment::Forward),
        () if !dst_egress => Some(PathSegment::DstStack),
        () if !src_ingress => Some(PathSegment::Reply),
        () => Some(PathSegment::SrcReceive),
    }
}

/// The counter of `segment` (`None`: unobserved).
pub(crate) fn slot(segments: &mut LossSegments, segment: Option<PathSegment>) -> &mut u32 {
    match segment {
        None => &mut segments.unobserved,
        Some(PathSegment::SrcSend) => &mut segments.src_send,
        Some(PathSegment::Forward) => &mut segments.forward,
        Some(PathSegment::DstStack) => &mut segments.dst_stack,
        Some(PathSegment::Reply) => &mut segments.reply,
        Some(PathSegment::SrcReceive) => &mut segments.src_receive,
        Some(PathSegment::Beyond) => &mut segments.beyond,
    }
}

/// The drop records of lost probes (sequence within the plan, not delivered), one per node,
/// probe and packet, counted by node, packet, reason and location, most first; and the packet
/// the destination dropped per probe.
///
/// A destination that answered a probe (its reply left, `dst_egress`, or it recorded dropping
/// the reply) had taken its first request in: a request drop it records for that probe is a
/// retransmission's (a client retransmits a SYN whose SYN-ACK was lost; the server drops the
/// duplicate), not how the probe was lost, and it is left out.
fn lost_probe_drops(
    src: &str,
    dst: &str,
    drops: Drops<'_>,
    planned: usize,
    delivered: &Bitmap,
    dst_egress: &Bitmap,
) -> (Vec<DropCount>, HashMap<u16, Packet>) {
    let dst_answered: BTreeSet<u16> = drops
        .dst
        .iter()
        .filter(|d| d.packet == Packet::Reply)
        .map(|d| d.seq)
        .chain(
            (0..planned)
                .filter(|&i| dst_egress.get(i))
                .map(|i| i as u16),
        )
        .collect();
    let mut seen = BTreeSet::new();
    let mut counts: BTreeMap<(&str, Packet, &str, &str), u32> = BTreeMap::new();
    let mut dst_dropped: HashMap<u16, Packet> = HashMap::new();
    for (node, records) in [(src, drops.src), (dst, drops.dst)] {
        for d in records {
            let i = usize::from(d.seq);
            let retransmitted =
                node == dst && d.packet == Packet::Request && dst_answered.contains(&d.seq);
            if i >= planned
                || delivered.get(i)
                || retransmitted
                || !seen.insert((node, d.seq, d.packet))
            {
                continue;
            }
            *counts
                .entry((node, d.packet, &d.reason, &d.location))
                .or_default() += 1;
            if node == dst {
                dst_dropped.insert(d.seq, d.packet);
            }
        }
    }
    let mut out: Vec<DropCount> = counts
        .into_iter()
        .map(|((node, packet, reason, location), count)| DropCount {
            node: node.into(),
            packet,
            reason: reason.into(),
            location: location.into(),
            count,
        })
        .collect();
    // Stable: equal counts stay in (node, packet, reason, location) order.
    out.sort_by_key(|d| std::cmp::Reverse(d.count));
    (out, dst_dropped)
}

/// Probes whose `sendto` failed, as far as the plan leaves room for them beside `sent`.
fn send_failures(s: &SentPath, planned: u32, sent: u32) -> u32 {
    let claimed = s
        .send_errors
        .iter()
        .fold(0u32, |acc, (_, n)| acc.saturating_add(*n));
    claimed.min(planned - sent)
}

/// The source's send errors and probe failures by message, most first, each count capped by
/// the plan.
fn socket_errors(s: &SentPath, planned: u32) -> Vec<(String, u32)> {
    let mut errors: BTreeMap<&str, u32> = BTreeMap::new();
    for (message, n) in s.send_errors.iter().chain(&s.failures) {
        let count = errors.entry(message).or_default();
        *count = count.saturating_add(*n).min(planned);
    }
    let mut errors: Vec<(String, u32)> = errors
        .into_iter()
        .map(|(m, n)| (m.to_string(), n))
        .collect();
    errors.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    errors
}

/// Everything both ends reported of one path.
struct Ends<'a> {
    src: SrcSide<'a>,
    /// The destination's side; `None` when it has no entry for the path (or did not report).
    dst: Option<&'a AnsweredPath>,
    dst_reported: bool,
    observed: Observed,
    drops: Drops<'a>,
}

fn join_path(src: &str, t: &PlannedTarget, planned: u32, ends: Ends<'_>) -> (PathResult, PathLoss) {
    let mut result = PathResult::planned(src, t, planned, ends.dst_reported);
    let SrcSide::Reported(sent) = ends.src else {
        return (result, PathLoss::default());
    };
    // Sequence numbers beyond the plan cannot belong to this round's probes.
    let n = planned as usize;
    let empty = Bitmap::default();
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    let (sent_mask, src_egress, src_ingress, delivered, kernel_v, user_v) = match sent {
        Some(s) => (
            &s.sent_mask,
            &s.src_egress,
            &s.src_ingress,
            &s.delivered,
            &s.kernel_rtt_ns[..],
            &s.user_rtt_ns[..],
        ),
        None => (&empty, &empty, &empty, &empty, &[][..], &[][..]),
    };
    let (dst_ingress, dst_egress, stack_v) = match ends.dst {
        Some(d) => (&d.dst_ingress, &d.dst_egress, &d.stack_ns[..]),
        None => (&empty, &empty, &[][..]),
    };
    let (drops, dst_dropped) =
        lost_probe_drops(src, &t.dst_node, ends.drops, n, delivered, dst_egress);
    result.drops = drops;

    let mut buckets: BTreeMap<(PathSegment, Option<Packet>), u32> = BTreeMap::new();
    let (mut kernel, mut user, mut stack, mut network) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let (k, u, s) = (at(kernel_v, i), at(user_v, i), at(stack_v, i));
        if k > 0 {
            kernel.push(k);
        }
        if u > 0 {
            user.push(u);
        }
        if s > 0 {
            stack.push(s);
            if k > s {
                network.push(k - s);
            }
        }
        if sent_mask.get(i) && !delivered.get(i) {
            let seen = [src_egress, dst_ingress, dst_egress, src_ingress].map(|b| b.get(i));
            let segment = classify(seen, ends.observed);
            *slot(&mut result.segments, segment) += 1;
            if let Some(segment) = segment {
                let dropped = (segment == PathSegment::DstStack)
                    .then(|| dst_dropped.get(&(i as u16)).copied())
                    .flatten();
                *buckets.entry((segment, dropped)).or_default() += 1;
            }
        }
        if delivered.get(i) || u > 0 {
            result.probes.push(ProbeSample {
                seq: i as u16,
                kernel_rtt_ns: k,
                user_rtt_ns: u,
                dst_stack_ns: s,
            });
        }
    }

    let count = |b: &Bitmap| (0..n).filter(|&i| b.get(i)).count() as u32;
    result.hooks = HookCounts {
        src_egress: count(src_egress),
        dst_ingress: count(dst_ingress),
        dst_egress: count(dst_egress),
        src_ingress: count(src_ingress),
        delivered: count(delivered),
    };
    // Agents' counts are claims: none may exceed the plan, replies may not exceed requests.
    result.sent = sent.map_or(0, |s| s.sent.min(planned));
    result.received = sent.map_or(0, |s| s.received.min(result.sent));
    // A probe the source's own stack refused was lost there, whatever the observers saw.
    result.send_failed = sent.map_or(0, |s| send_failures(s, planned, result.sent));
    if result.send_failed > 0 {
        result.segments.src_send += result.send_failed;
        *buckets.entry((PathSegment::SrcSend, None)).or_default() += result.send_failed;
    }
    result.lost = result.sent - result.received + result.send_failed;
    result.errors = sent.map_or_else(Vec::new, |s| socket_errors(s, planned));
    result.loss_ratio = ratio(
        result.lost.into(),
        u64::from(result.sent) + u64::from(result.send_failed),
    );
    result.state = if result.lost == 0 {
        PathState::Ok
    } else {
        PathState::Lossy
    };
    result.kernel_rtt = RttStats::from_ns(kernel);
    result.user_rtt = RttStats::from_ns(user);
    result.dst_stack = RttStats::from_ns(stack);
    result.network_rtt = RttStats::from_ns(network);
    let loss = PathLoss::new(ends.observed.src && ends.observed.dst, buckets);
    (result, loss)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Totals over the paths whose source reported, counting failed sends as sent and lost so that
/// a source refusing its own probes lowers the success rate. With nothing sent the success
/// rate is 0, not 1: a round that proved nothing must not look healthy (the judge fails it
/// with a reason).
fn summarize(paths: &[PathResult], unobserved_events: u64) -> RoundSummary {
    let reported = || paths.iter().filter(|p| p.state != PathState::NotReported);
    let sent: u64 = reported()
        .map(|p| u64::from(p.sent) + u64::from(p.send_failed))
        .sum();
    let received: u64 = reported().map(|p| u64::from(p.received)).sum();
    let times = |pick: fn(&ProbeSample) -> u64| {
        reported()
            .flat_map(|p| &p.probes)
            .map(pick)
            .filter(|&ns| ns > 0)
    };
    let user_rtt = RttStats::from_ns(times(|s| s.user_rtt_ns));
    let mean_rtt_ms = user_rtt.map(|u| u.mean_us / 1000.0);
    RoundSummary {
        paths: paths.len() as u32,
        lossy_paths: paths.iter().filter(|p| p.state == PathState::Lossy).count() as u32,
        sent,
        received,
        lost: sent - received,
        success_rate: ratio(received, sent),
        mean_rtt_ms,
        unobserved_events,
        kernel_rtt: RttStats::from_ns(times(|s| s.kernel_rtt_ns)),
        user_rtt,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use meshdoctor_api::{ObserverStats, Timestamping};

    use super::*;
    use crate::mesh::{
        build_plans,
        tests::{mk_agent, mk_meta, mk_task},
    };

    /// Plans of a 2-agent, eth0-only, IPv4 mesh: path 0 is node-1 -> node-2, path 1 the reverse.
    pub(crate) fn mk_plans() -> BTreeMap<String, RoundPlan> {
        let mut task = mk_task(", interfaces: [pod]");
        task.spec.target.ipv6 = false;
        build_plans(&task, &[mk_agent(1), mk_agent(2)], &[], mk_meta()).unwrap()
    }

    /// A bitmap with bits `0..n` set except `missing`.
    fn bits(n: usize, missing: &[usize]) -> Bitmap {
        let mut b = Bitmap::with_len(n);
        (0..n)
            .filter(|i| !missing.contains(i))
            .for_each(|i| b.set(i));
        b
    }

    /// A report of `node` for `plans` where every probe of its paths made it except the
    /// sequence numbers in `lost`, with 1 ms user RTT, 800 µs kernel RTT, 100 µs dst stack.
    pub(crate) fn mk_report(
        plans: &BTreeMap<String, RoundPlan>,
        node: &str,
        lost: &[usize],
    ) -> AgentReport {
        let plan = &plans[node];
        let n = plan.probes_per_target() as usize;
        let per_probe = |ns: u64| {
            (0..n)
                .map(|i| if lost.contains(&i) { 0 } else { ns })
                .collect()
        };
        let sent = plan
            .targets
            .iter()
            .map(|t| SentPath {
                path: t.path,
                planned: n as u32,
                sent: n as u32,
                received: (n - lost.len()) as u32,
                send_errors: vec![],
                failures: vec![],
                sent_mask: bits(n, &[]),
                src_egress: bits(n, &[]),
                src_ingress: bits(n, lost),
                delivered: bits(n, lost),
                kernel_rtt_ns: per_probe(800_000),
                user_rtt_ns: per_probe(1_000_000),
            })
            .collect();
        let answered = plans
            .values()
            .flat_map(|p| &p.targets)
            .filter(|t| t.dst_node == node)
            .map(|t| AnsweredPath {
                path: t.path,
                dst_ingress: bits(n, &[]),
                dst_egress: bits(n, &[]),
                stack_ns: vec![100_000; n],
                interfaces: vec![t.dst_interface.clone()],
            })
            .collect();
        AgentReport {
            sent,
            answered,
            observer: ObserverStats {
                ringbuf_drops: 2,
                events: 100,
                drop_tracer: true,
            },
            ..AgentReport::on_plan(node, plan, Timestamping::Ebpf)
        }
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
        let j = join(&plans, &reports);
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
        assert_eq!(p.probes.len(), 20);
        assert_eq!(j.summary.success_rate, 1.0);
        assert_eq!(j.summary.mean_rtt_ms, Some(1.0));
        assert_eq!(j.summary.unobserved_events, 4);
    }

    #[test]
    fn a_lost_probe_is_placed_at_the_first_hook_that_missed_it() {
        use PathSegment::*;
        let clean = Observed {
            src: true,
            dst: true,
            external: false,
        };
        assert_eq!(classify([false, false, false, false], clean), Some(SrcSend));
        assert_eq!(classify([true, false, false, false], clean), Some(Forward));
        assert_eq!(classify([true, true, false, false], clean), Some(DstStack));
        assert_eq!(classify([true, true, true, false], clean), Some(Reply));
        assert_eq!(classify([true, true, true, true], clean), Some(SrcReceive));
        // A destination that may have missed events cannot be blamed, nor cleared.
        let dst_blind = Observed {
            src: true,
            dst: false,
            external: false,
        };
        assert_eq!(classify([true, false, false, false], dst_blind), None);
        assert_eq!(
            classify([false, false, false, false], dst_blind),
            Some(SrcSend)
        );
        let src_blind = Observed {
            src: false,
            dst: true,
            external: false,
        };
        assert_eq!(classify([false, false, false, false], src_blind), None);
        // A listed address has no hooks of its own: past the source's egress the loss is
        // beyond it, unless the reply came back in.
        let listed = Observed {
            src: true,
            dst: false,
            external: true,
        };
        assert_eq!(
            classify([false, false, false, false], listed),
            Some(SrcSend)
        );
        assert_eq!(classify([true, false, false, false], listed), Some(Beyond));
        assert_eq!(
            classify([true, false, false, true], listed),
            Some(SrcReceive)
        );
        let listed_blind = Observed {
            src: false,
            ..listed
        };
        assert_eq!(classify([true, false, false, false], listed_blind), None);
    }

    #[test]
    fn lost_replies_are_unobserved_unless_both_ends_saw_every_event() {
        let plans = mk_plans();
        let mut reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        // mk_report's observers dropped events: the two lost replies cannot be placed.
        let seg = |r: &BTreeMap<String, AgentReport>| join(&plans, r).paths[0].segments;
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
    }

    #[test]
    fn loss_is_counted_per_path() {
        let plans = mk_plans();
        let reports = mk_reports(vec![
            mk_report(&plans, "node-1", &[3, 4]),
            mk_report(&plans, "node-2", &[]),
        ]);
        let j = join(&plans, &reports);
        let p = &j.paths[0];
        assert_eq!(
            (p.state, p.sent, p.received, p.lost),
            (PathState::Lossy, 20, 18, 2)
        );
        assert_eq!(p.loss_ratio, 0.1);
        assert_eq!((p.hooks.src_ingress, p.hooks.delivered), (18, 18));
        assert_eq!(p.user_rtt.unwrap().count, 18);
        assert!(p.probes.iter().all(|s| s.seq != 3 && s.seq != 4));
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
        let j = join(&plans, &reports);
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
        r1.sent[0].user_rtt_ns.resize(1000, 5);
        let mut r2 = mk_report(&plans, "node-2", &[]);
        r2.answered.clear();
        r2.sent.clear();
        let j = join(&plans, &mk_reports(vec![r1, r2]));
        let p = &j.paths[0];
        assert!(p.dst_reported);
        assert_eq!((p.received, p.lost, p.hooks.dst_ingress), (20, 0, 0));
        assert_eq!(p.user_rtt.unwrap().count, 20);
        let unsent = &j.paths[1];
        assert_eq!(
            (unsent.state, unsent.planned, unsent.sent),
            (PathState::Ok, 20, 0)
        );
    }

    #[test]
    fn nothing_sent_is_not_a_perfect_rate() {
        let j = join(&mk_plans(), &BTreeMap::new());
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

    fn mk_drop(path: u16, seq: u16, packet: Packet, reason: &str) -> ProbeDrop {
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
        s.sent_mask = bits(20, &[5, 6, 7, 8]);
        s.src_egress = s.sent_mask.clone();
        s.src_ingress = s.sent_mask.clone();
        s.delivered = s.sent_mask.clone();
        s.user_rtt_ns[5..9].fill(0);
        (s.sent, s.received) = (16, 16);
        s.send_errors = vec![("Operation not permitted".into(), 3), ("x".into(), 1)];
        let j = join(&plans, &reports);
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
        let j = join(&plans, &reports);
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
        a.dst_egress = bits(20, &[3, 4, 5]);
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
        let j = join(&plans, &reports);
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
        a.dst_egress = bits(20, &[4]);
        reports.get_mut("node-2").unwrap().drops = vec![
            mk_drop(0, 3, Packet::Request, "NOT_SPECIFIED"),
            mk_drop(0, 4, Packet::Reply, "NETFILTER_DROP"),
            mk_drop(0, 4, Packet::Request, "NOT_SPECIFIED"),
        ];
        let j = join(&plans, &reports);
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
        let j = join(&plans, &reports);
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
