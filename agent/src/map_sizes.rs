//! How big the observers' maps must be for the rounds an agent is given: the event ring buffer
//! from the round's rate of probe events and the reader stall it must absorb, the TCP paths
//! map from the round's TCP probe paths. The agent starts with the sizes of its flags and
//! grows its observers when a plan needs more (`crate::runtime::Agent::arm`), so one set of
//! flags fits a 5-node lab and a 5,000-node mesh alike.

use meshdoctor_agent_common::EVENT_RECORD_BYTES;
use meshdoctor_api::{RoundPlan, agent_report::TOLERATED_STALL_MS};

/// The largest ring buffer a plan grows to: 64 MiB of locked kernel memory holds a second of
/// 1.4 million probe events, 350 times the controller's default budget of 1,000 probe
/// packets per second per agent.
pub const MAX_EVENT_BUFFER_BYTES: u32 = 64 << 20;

/// The largest TCP paths map a plan grows to: a full TCP mesh of 8,000 nodes on two interface
/// pairs and both families, about 20 MiB of kernel memory.
pub const MAX_TCP_PATHS: u32 = 1 << 16;

/// Sizes of the observers' two plan-dependent maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Ring buffer bytes: a power of two, at least a page.
    pub event_buffer_bytes: u32,
    /// Entries of the TCP paths map.
    pub tcp_paths: u32,
}

impl MapSizes {
    /// What a round of `plan` with `tcp_paths` TCP probe paths needs, never less than `self`
    /// (the agent's flags) nor more than the caps: a ring buffer that absorbs
    /// [`TOLERATED_STALL_MS`] of reader stall at the round's event rate, and a TCP entry per
    /// path.
    pub fn for_plan(self, plan: &RoundPlan, tcp_paths: usize) -> Self {
        let stall_bytes = events_per_sec(plan) * EVENT_RECORD_BYTES * TOLERATED_STALL_MS / 1000;
        let event_buffer_bytes = u32::try_from(stall_bytes.next_power_of_two())
            .unwrap_or(u32::MAX)
            .clamp(
                self.event_buffer_bytes,
                MAX_EVENT_BUFFER_BYTES.max(self.event_buffer_bytes),
            );
        let tcp_paths = u32::try_from(tcp_paths)
            .unwrap_or(u32::MAX)
            .clamp(self.tcp_paths, MAX_TCP_PATHS.max(self.tcp_paths));
        Self {
            event_buffer_bytes,
            tcp_paths,
        }
    }

    /// Whether maps of these sizes hold what `needed` asks.
    pub fn cover(self, needed: Self) -> bool {
        self.event_buffer_bytes >= needed.event_buffer_bytes && self.tcp_paths >= needed.tcp_paths
    }
}

/// Probe events per second the observers write while `plan` probes. Each probe makes two
/// events at its source (request out, reply in) and two at its destination, and the sampled
/// meshes have every agent answer as many probes as it sends.
pub fn events_per_sec(plan: &RoundPlan) -> u64 {
    let paths = plan.targets.len().max(plan.incoming.len()) as u64;
    4 * u64::from(plan.qps) * paths
}

/// How long a ring buffer of `bytes` absorbs a stall of the event reader while `plan` probes,
/// in ms; `None` for a round without probes.
pub fn stall_covered_ms(bytes: u64, plan: &RoundPlan) -> Option<u64> {
    let events = events_per_sec(plan);
    (events > 0).then(|| bytes * 1000 / (events * EVENT_RECORD_BYTES))
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::PlannedTarget;

    use super::*;

    const FLAGS: MapSizes = MapSizes {
        event_buffer_bytes: 256 << 10,
        tcp_paths: 16384,
    };

    fn plan(qps: u32, targets: usize) -> RoundPlan {
        RoundPlan::test(qps, vec![PlannedTarget::test(0); targets])
    }

    #[test]
    fn the_ring_buffer_covers_a_stall_inversely_to_the_probe_rate() {
        // 4 events x 10 qps x 100 paths = 4,000 events/s of 48 bytes: 192,000 B/s.
        assert_eq!(EVENT_RECORD_BYTES, 48);
        assert_eq!(stall_covered_ms(256 << 10, &plan(10, 100)), Some(1365));
        assert_eq!(stall_covered_ms(256 << 10, &plan(100, 100)), Some(136));
        assert_eq!(stall_covered_ms(256 << 10, &plan(100, 0)), None);
    }

    #[test]
    fn a_small_plan_keeps_the_flags_sizes() {
        assert_eq!(FLAGS.for_plan(&plan(10, 100), 200), FLAGS);
        assert!(FLAGS.cover(FLAGS.for_plan(&plan(10, 100), 200)));
    }

    #[test]
    fn a_big_plan_grows_the_ring_buffer_to_absorb_the_tolerated_stall() {
        // A 1,000-node full mesh on two interfaces and both families at 10 probes/s:
        // 4 x 10 x 7,992 events/s of 48 bytes = 15.3 MB/s, a 16 MiB buffer for one second.
        let big = plan(10, 7992);
        let sizes = FLAGS.for_plan(&big, 0);
        assert_eq!(sizes.event_buffer_bytes, 16 << 20);
        assert!(
            stall_covered_ms(sizes.event_buffer_bytes.into(), &big).unwrap() >= TOLERATED_STALL_MS
        );
        assert!(!FLAGS.cover(sizes));
    }

    #[test]
    fn tcp_paths_grow_to_the_plans_and_both_stop_at_their_caps() {
        assert_eq!(FLAGS.for_plan(&plan(1, 1), 40_000).tcp_paths, 40_000);
        let huge = FLAGS.for_plan(&plan(1000, 100_000), 10_000_000);
        assert_eq!(
            huge,
            MapSizes {
                event_buffer_bytes: MAX_EVENT_BUFFER_BYTES,
                tcp_paths: MAX_TCP_PATHS
            }
        );
        // Flags above the caps stay: the caps bound growth, not the operator.
        let large_flags = MapSizes {
            event_buffer_bytes: 128 << 20,
            tcp_paths: 1 << 20,
        };
        assert_eq!(
            large_flags.for_plan(&plan(1000, 100_000), 10_000_000),
            large_flags
        );
    }
}
