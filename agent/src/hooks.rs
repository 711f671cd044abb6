//! Kernel hook times of the probes of one round, as the eBPF observers reported them.
//!
//! One agent sees two kinds of probe: its own (request leaving, reply arriving) and its peers'
//! (request arriving, reply leaving). The (kind, hook) pair of an event says which of the four
//! hooks of the loss-attribution model it is, so no other bookkeeping is needed.

use std::collections::{BTreeMap, HashMap, HashSet};

use meshdoctor_agent_common::{Hook, Kind, ProbeEvent};
use meshdoctor_api::{AnsweredPath, Histogram, Packet, PathId, probe_id_parts};

/// Kernel times (CLOCK_MONOTONIC ns) of one probe at the hooks this agent can see; 0 = unseen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookTimes {
    pub src_egress: u64,
    pub src_ingress: u64,
    pub dst_ingress: u64,
    pub dst_egress: u64,
    /// Interface the request arrived on, when this agent answered it.
    pub dst_ifindex: u32,
}

impl HookTimes {
    /// src ingress - src egress, when both were seen in order.
    pub fn kernel_rtt(&self) -> Option<u64> {
        positive_delta(self.src_egress, self.src_ingress)
    }

    /// dst egress - dst ingress: time the request and reply spent in this host's stack.
    pub fn stack_time(&self) -> Option<u64> {
        positive_delta(self.dst_ingress, self.dst_egress)
    }
}

fn positive_delta(from: u64, to: u64) -> Option<u64> {
    (from != 0 && to > from).then(|| to - from)
}

/// A probe packet the kernel freed as a drop in this agent's netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelDrop {
    pub probe_id: u64,
    pub packet: Packet,
    /// `enum skb_drop_reason` value, or `UNKNOWN_REASON`.
    pub reason: u32,
    /// Kernel address of the dropping code.
    pub location: u64,
    /// 0 when the packet was on no device.
    pub ifindex: u32,
}

/// Hook times of every probe of one round seen by this agent's observers.
#[derive(Debug, Default)]
pub struct RoundHooks {
    /// The round's per-probe timeout in ns (0: none): a reply that crosses a hook later than
    /// this after its request crossed the paired hook of the same node is not counted.
    timeout_ns: u64,
    probes: HashMap<u64, HookTimes>,
    /// Kernel drops, first per (probe, packet): a clone freed after the original adds nothing.
    drops: Vec<KernelDrop>,
    dropped: HashSet<(u64, Packet)>,
    events: u64,
}

impl RoundHooks {
    /// Hooks of a round whose probes time out after `timeout_ns`.
    ///
    /// A reply is late when it leaves the destination (or reaches the source) more than the
    /// timeout after its request arrived (or left): the probe is already lost. Counting it
    /// would place that loss after a hook that in time saw nothing; TCP makes such replies
    /// routinely, as a server retransmits its SYN-ACK a second after the first.
    pub fn with_timeout(timeout_ns: u64) -> Self {
        Self {
            timeout_ns,
            ..Self::default()
        }
    }

    /// Records one event. The first sighting at a hook wins: a packet that crosses the same
    /// hook twice (it should not) keeps its earliest time.
    pub fn record(&mut self, ev: &ProbeEvent) {
        self.events += 1;
        if ev.hook == Hook::Drop as u8 {
            let packet = if ev.kind == Kind::Request as u8 {
                Packet::Request
            } else {
                Packet::Reply
            };
            if self.dropped.insert((ev.probe_id, packet)) {
                self.drops.push(KernelDrop {
                    probe_id: ev.probe_id,
                    packet,
                    reason: ev.reason,
                    location: ev.location,
                    ifindex: ev.ifindex,
                });
            }
            return;
        }
        let t = self.probes.entry(ev.probe_id).or_default();
        let late = |request_at: u64| {
            self.timeout_ns != 0
                && request_at != 0
                && ev.ktime_ns.saturating_sub(request_at) > self.timeout_ns
        };
        let slot = match (ev.kind, ev.hook) {
            (k, h) if k == Kind::Request as u8 && h == Hook::Egress as u8 => &mut t.src_egress,
            (k, h) if k == Kind::Reply as u8 && h == Hook::Ingress as u8 => {
                if late(t.src_egress) {
                    return;
                }
                &mut t.src_ingress
            }
            (k, h) if k == Kind::Request as u8 && h == Hook::Ingress as u8 => {
                if t.dst_ifindex == 0 {
                    t.dst_ifindex = ev.ifindex;
                }
                &mut t.dst_ingress
            }
            (k, h) if k == Kind::Reply as u8 && h == Hook::Egress as u8 => {
                if late(t.dst_ingress) {
                    return;
                }
                &mut t.dst_egress
            }
            _ => return,
        };
        if *slot == 0 {
            *slot = ev.ktime_ns;
        }
    }

    pub fn get(&self, probe_id: u64) -> HookTimes {
        self.probes.get(&probe_id).copied().unwrap_or_default()
    }

    /// Kernel drops of this round's probes, in arrival order.
    pub fn drops(&self) -> &[KernelDrop] {
        &self.drops
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The destination side of every path this agent answered, i.e. of probes whose path is not
    /// one of `own_paths`. `ifname` names interfaces by index.
    pub fn answered(
        &self,
        own_paths: &HashSet<PathId>,
        ifname: impl Fn(u32) -> String,
    ) -> Vec<AnsweredPath> {
        let mut by_path: BTreeMap<PathId, Vec<(u16, &HookTimes)>> = BTreeMap::new();
        for (&id, t) in &self.probes {
            let (_, path, seq) = probe_id_parts(id);
            if !own_paths.contains(&path) && (t.dst_ingress != 0 || t.dst_egress != 0) {
                by_path.entry(path).or_default().push((seq, t));
            }
        }
        by_path
            .into_iter()
            .map(|(path, mut probes)| {
                probes.sort_unstable_by_key(|(seq, _)| *seq);
                let span = probes.last().map_or(0, |(s, _)| u32::from(*s) + 1);
                let mut a = AnsweredPath {
                    path,
                    span,
                    ingress_missed: Vec::new(),
                    egress_missed: Vec::new(),
                    stack: Histogram::default(),
                    interfaces: Vec::new(),
                };
                let mut ifindexes = HashSet::new();
                // The next sequence number not yet accounted for (u32: past u16::MAX).
                let mut next = 0u32;
                for (seq, t) in probes {
                    if u32::from(seq) < next {
                        continue; // the same probe of another round: its first stands
                    }
                    // Sequence numbers nobody saw, between the last seen and this one.
                    a.ingress_missed.extend(next as u16..seq);
                    a.egress_missed.extend(next as u16..seq);
                    next = u32::from(seq) + 1;
                    if t.dst_ingress != 0 {
                        ifindexes.insert(t.dst_ifindex);
                    } else {
                        a.ingress_missed.push(seq);
                    }
                    if t.dst_egress == 0 {
                        a.egress_missed.push(seq);
                    }
                    if let Some(stack) = t.stack_time() {
                        a.stack.record(stack);
                    }
                }
                a.interfaces = ifindexes.into_iter().map(&ifname).collect();
                a.interfaces.sort();
                a
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meshdoctor_api::probe_id;

    /// An ICMP IPv4 event of probe `id` at `hook`, at kernel time `t`.
    pub(crate) fn ev(id: u64, kind: Kind, hook: Hook, t: u64) -> ProbeEvent {
        ProbeEvent {
            probe_id: id,
            ktime_ns: t,
            location: 0,
            netns: 1,
            ifindex: 3,
            reason: 0,
            hook: hook as u8,
            kind: kind as u8,
            family: 4,
            proto: meshdoctor_agent_common::PROTO_ICMP,
        }
    }

    #[test]
    fn drops_are_kept_once_per_probe_and_packet() {
        let mut h = RoundHooks::default();
        let id = probe_id(9, 1, 0);
        let drop = |kind, reason| ProbeEvent {
            reason,
            location: 0xffff_1234,
            ..ev(id, kind, Hook::Drop, 5)
        };
        h.record(&drop(Kind::Request, 12));
        h.record(&drop(Kind::Request, 99)); // a clone of the same request
        h.record(&drop(Kind::Reply, 12));
        assert_eq!(h.drops().len(), 2);
        assert_eq!(h.drops()[0].reason, 12);
        assert_eq!(h.drops()[1].packet, Packet::Reply);
        // A drop is not a hook sighting.
        assert_eq!(h.get(id), HookTimes::default());
    }

    #[test]
    fn own_probe_gives_kernel_rtt() {
        let mut h = RoundHooks::default();
        let id = probe_id(9, 1, 0);
        h.record(&ev(id, Kind::Request, Hook::Egress, 1000));
        h.record(&ev(id, Kind::Reply, Hook::Ingress, 1700));
        h.record(&ev(id, Kind::Reply, Hook::Ingress, 9999)); // duplicate keeps the first
        assert_eq!(h.get(id).kernel_rtt(), Some(700));
        assert_eq!(h.get(probe_id(9, 1, 1)), HookTimes::default());
        assert_eq!(h.events(), 3);
    }

    #[test]
    fn replies_later_than_the_timeout_are_not_counted() {
        let mut h = RoundHooks::with_timeout(500);
        let (own, peer) = (probe_id(9, 1, 0), probe_id(9, 2, 0));
        h.record(&ev(own, Kind::Request, Hook::Egress, 1000));
        // A retransmitted SYN-ACK, a second later: the probe was lost before it.
        h.record(&ev(own, Kind::Reply, Hook::Ingress, 1501));
        h.record(&ev(peer, Kind::Request, Hook::Ingress, 2000));
        h.record(&ev(peer, Kind::Reply, Hook::Egress, 2501));
        assert_eq!(h.get(own).src_ingress, 0);
        assert_eq!(h.get(peer).dst_egress, 0);
        // In time, at the limit.
        h.record(&ev(own, Kind::Reply, Hook::Ingress, 1500));
        h.record(&ev(peer, Kind::Reply, Hook::Egress, 2500));
        assert_eq!(h.get(own).kernel_rtt(), Some(500));
        assert_eq!(h.get(peer).stack_time(), Some(500));
    }

    #[test]
    fn answered_groups_peer_probes_by_path() {
        let mut h = RoundHooks::default();
        h.record(&ev(probe_id(9, 4, 0), Kind::Request, Hook::Ingress, 100));
        h.record(&ev(probe_id(9, 4, 0), Kind::Reply, Hook::Egress, 130));
        h.record(&ev(probe_id(9, 4, 2), Kind::Request, Hook::Ingress, 200));
        h.record(&ev(probe_id(9, 1, 0), Kind::Request, Hook::Egress, 1)); // own path 1
        let own = HashSet::from([1]);
        let a = h.answered(&own, |i| format!("if{i}"));
        assert_eq!(a.len(), 1);
        let p = &a[0];
        assert_eq!(p.path, 4);
        assert_eq!(p.span, 3);
        assert_eq!(p.ingress_missed, [1]);
        assert_eq!(p.egress_missed, [1, 2]);
        assert_eq!(p.stack, Histogram::from_iter([30]));
        assert_eq!(p.interfaces, vec!["if3".to_string()]);
    }
}
