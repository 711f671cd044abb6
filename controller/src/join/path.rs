//! One pair-path joined: its two sides (folded from the reports of its ends) and the drop
//! records of its lost probes, into its result, what localization needs of its losses, and its
//! times.

use std::collections::BTreeMap;

use meshdoctor_api::{
    DropCount, LostSample, Name, Packet, PathResult, PathSegment, PathState, PlannedTarget,
    ProbeDrop, RttStats, round::HookCounts,
};

use super::{
    NetworkTimes, PathLoss,
    fold::{Answered, Sent, Trouble},
};

/// Whether each end's hooks can be trusted to have seen every packet that passed them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed {
    pub src: bool,
    pub dst: bool,
    /// The destination is a listed address: it has no hooks, the source's own decide.
    pub external: bool,
}

/// Drop records of one path from each of its ends' reports.
#[derive(Clone, Copy)]
pub(super) struct Drops<'a> {
    pub src: &'a [&'a ProbeDrop],
    pub dst: &'a [&'a ProbeDrop],
}

/// Everything known of one path's ends.
pub(super) struct Ends<'a> {
    /// The source agent reported (its side may still be absent: it sent nothing).
    pub src_reported: bool,
    pub sent: Option<Sent>,
    /// The destination agent reported ...
    pub dst_reported: bool,
    /// ... and this is its side of the path, if it had one.
    pub answered: Option<Answered>,
    pub observed: Observed,
    pub drops: Drops<'a>,
}

/// What the destination's hooks saw of a path, by sequence number (trimmed by the fold).
struct DstView<'a> {
    span: u32,
    ingress_missed: &'a [u16],
    egress_missed: &'a [u16],
}

impl<'a> DstView<'a> {
    fn of(answered: Option<&'a Answered>) -> Self {
        answered.map_or(
            Self {
                span: 0,
                ingress_missed: &[],
                egress_missed: &[],
            },
            |a| {
                let (ingress_missed, egress_missed) = a.missed();
                Self {
                    span: a.span,
                    ingress_missed,
                    egress_missed,
                }
            },
        )
    }

    fn seen(&self, seq: u16, missed: &[u16]) -> bool {
        u32::from(seq) < self.span && missed.binary_search(&seq).is_err()
    }

    fn ingress(&self, seq: u16) -> bool {
        self.seen(seq, self.ingress_missed)
    }

    fn egress(&self, seq: u16) -> bool {
        self.seen(seq, self.egress_missed)
    }
}

/// The segment of one lost probe: the first hook that did not see it (docs/architecture.md,
/// "Where a lost probe was lost"); `None` (unobserved) when the end owning that hook may have
/// missed the event.
pub(super) fn classify(seen: [bool; 4], observed: Observed) -> Option<PathSegment> {
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

/// The drop records of lost probes (sequence within the plan, not `delivered`), one per node,
/// probe and packet, counted by node, packet, reason and location, most first; and the packet
/// the destination dropped per probe.
///
/// A destination that answered a probe (its reply left, `dst_egress`, or it recorded dropping
/// the reply) had taken its first request in: a request drop it records for that probe is a
/// retransmission's (a client retransmits a SYN whose SYN-ACK was lost; the server drops the
/// duplicate), not how the probe was lost, and it is left out.
fn lost_probe_drops(
    (src, dst): (&str, &str),
    drops: Drops<'_>,
    planned: u32,
    delivered: impl Fn(u16) -> bool,
    dst_egress: impl Fn(u16) -> bool,
) -> (Vec<DropCount>, BTreeMap<u16, Packet>) {
    let answered = |seq: u16| {
        dst_egress(seq)
            || drops
                .dst
                .iter()
                .any(|d| d.seq == seq && d.packet == Packet::Reply)
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut counts: BTreeMap<(&str, Packet, &str, &str), u32> = BTreeMap::new();
    let mut dst_dropped = BTreeMap::new();
    for (node, records) in [(src, drops.src), (dst, drops.dst)] {
        for d in records {
            let retransmitted = node == dst && d.packet == Packet::Request && answered(d.seq);
            if u32::from(d.seq) >= planned
                || delivered(d.seq)
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
fn send_failures(s: &Trouble, planned: u32, sent: u32) -> u32 {
    let claimed = s
        .send_errors
        .iter()
        .fold(0u32, |acc, (_, n)| acc.saturating_add(*n));
    claimed.min(planned - sent)
}

/// The source's send errors, probe failures and what its own limits withheld, by message,
/// most first, each count capped by the plan.
fn socket_errors(s: &Trouble, planned: u32) -> Vec<(String, u32)> {
    let mut errors: BTreeMap<&str, u32> = BTreeMap::new();
    for (message, n) in s.send_errors.iter().chain(&s.failures).chain(&s.withheld) {
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

pub(super) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Pair-path `t` of `src`, `planned` probes, from what its `ends` reported; its network RTT
/// for the metrics when its destination measured stack times.
pub(super) fn join_path(
    src: &Name,
    t: &PlannedTarget,
    planned: u32,
    ends: Ends<'_>,
) -> (PathResult, PathLoss, Option<NetworkTimes>) {
    let mut result = PathResult::planned(src, t, planned, ends.dst_reported);
    if !ends.src_reported {
        return (result, PathLoss::default(), None);
    }
    let dst = DstView::of(ends.answered.as_ref());
    let sent = ends.sent.as_ref();
    let trouble = sent.map(Sent::trouble);
    let (unsent, lost) = trouble.map_or((&[][..], &[][..]), |t| (&t.unsent[..], &t.lost[..]));
    let delivered = |seq: u16| {
        sent.is_some()
            && u32::from(seq) < planned
            && unsent.binary_search(&seq).is_err()
            && lost.binary_search_by_key(&seq, |p| p.seq).is_err()
    };
    let (drops, dst_dropped) =
        lost_probe_drops((src, &t.dst_node), ends.drops, planned, delivered, |seq| {
            dst.egress(seq)
        });
    result.drops = drops;

    let mut buckets: BTreeMap<(PathSegment, Option<Packet>), u32> = BTreeMap::new();
    for p in lost {
        let seen = [
            p.src_egress,
            dst.ingress(p.seq),
            dst.egress(p.seq),
            p.src_ingress,
        ];
        let segment = classify(seen, ends.observed);
        *result.segments.count_mut(segment) += 1;
        if let Some(segment) = segment {
            let dropped = (segment == PathSegment::DstStack)
                .then(|| dst_dropped.get(&p.seq).copied())
                .flatten();
            *buckets.entry((segment, dropped)).or_default() += 1;
        }
        result.lost_probes.push(LostSample {
            seq: p.seq,
            segment,
        });
    }

    // Agents' counts are claims: none may exceed the plan, replies may not exceed requests.
    result.sent = sent.map_or(0, |s| s.sent.min(planned));
    result.received = sent.map_or(0, |s| s.received.min(result.sent));
    let span = dst.span;
    result.hooks = HookCounts {
        src_egress: sent.map_or(0, |s| s.src_egress.min(planned)),
        dst_ingress: span - dst.ingress_missed.len() as u32,
        dst_egress: span - dst.egress_missed.len() as u32,
        src_ingress: sent.map_or(0, |s| s.src_ingress.min(planned)),
        delivered: result.received,
    };
    // A probe the source's own stack refused was lost there, whatever the observers saw.
    result.send_failed = trouble.map_or(0, |t| send_failures(t, planned, result.sent));
    if result.send_failed > 0 {
        result.segments.src_send += result.send_failed;
        *buckets.entry((PathSegment::SrcSend, None)).or_default() += result.send_failed;
    }
    result.lost = result.sent - result.received + result.send_failed;
    result.errors = trouble.map_or_else(Vec::new, |t| socket_errors(t, planned));
    result.loss_ratio = ratio(
        result.lost.into(),
        u64::from(result.sent) + u64::from(result.send_failed),
    );
    result.state = if result.lost == 0 {
        PathState::Ok
    } else {
        PathState::Lossy
    };
    let loss = PathLoss::new(ends.observed.src && ends.observed.dst, buckets);
    result.dst_stack = ends.answered.and_then(|a| a.stack);
    let (kernel_rtt, user_rtt) = ends
        .sent
        .map(|s| (s.kernel_rtt, s.user_rtt))
        .unwrap_or_default();
    result.user_rtt = user_rtt;
    result.kernel_rtt = RttStats::from_histogram(&kernel_rtt);
    result.network_rtt = result
        .kernel_rtt
        .zip(result.dst_stack)
        .map(|(kernel, stack)| kernel.less(stack.mean_us));
    let network = result.dst_stack.map(|stack| NetworkTimes {
        kernel_rtt,
        less_ns: f64::from(stack.mean_us) * 1000.0,
    });
    (result, loss, network)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
