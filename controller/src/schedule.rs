//! When rounds start and when the controller stops waiting for their reports.
//!
//! kdoctor semantics: round 1 starts `first_after` after the schedule clock starts, and every
//! later round `every` after the previous round's *scheduled* start (not its end), so a slow
//! round never shifts the ones after it.

use std::time::Duration;

use meshdoctor_api::{NetReach, task::Schedule};

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Scheduled start (Unix ms) of round `n` (1-based) for a clock started at `clock_start_ms`.
pub fn round_start_ms(schedule: &Schedule, clock_start_ms: u64, n: u32) -> u64 {
    let every = u64::from(n.saturating_sub(1)).saturating_mul(ms(schedule.every));
    clock_start_ms
        .saturating_add(ms(schedule.first_after))
        .saturating_add(every)
}

/// The start a round actually gets: its scheduled start, or later when the controller is
/// already past the point where it had to publish the plans (agents need `start_delay` to arm).
pub fn effective_start_ms(scheduled_ms: u64, now_ms: u64, start_delay: Duration) -> u64 {
    scheduled_ms.max(now_ms.saturating_add(ms(start_delay)))
}

/// Whether round `n` (1-based) is within `roundNumber` (-1 runs forever).
pub fn round_wanted(round_number: i64, n: u32) -> bool {
    round_number < 0 || i64::from(n) <= round_number
}

/// When the controller stops waiting for reports: once every probe had its chance
/// (duration + per-request timeout) plus `grace` for the reports to travel, but never after
/// the task's round timeout.
pub fn report_deadline_ms(task: &NetReach, start_ms: u64, grace: Duration) -> u64 {
    let rq = &task.spec.request;
    let natural = start_ms
        + u64::from(rq.duration_in_second) * 1000
        + u64::from(rq.per_request_timeout_in_ms)
        + ms(grace);
    natural.min(start_ms.saturating_add(ms(task.round_timeout())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_task(schedule: &str, duration_s: u32, timeout_ms: u32) -> NetReach {
        let yaml = format!(
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: t}}\nspec:\n  \
             schedule: {{schedule: '{schedule}'}}\n  request: {{durationInSecond: {duration_s}, \
             perRequestTimeoutInMS: {timeout_ms}}}\n"
        );
        NetReach::from_yaml("t.yaml", &yaml).unwrap()
    }

    #[test]
    fn minutes_form_spaces_rounds_from_scheduled_starts() {
        let s = mk_task("2 5", 2, 500).schedule();
        assert_eq!(round_start_ms(&s, 1_000, 1), 1_000 + 120_000);
        assert_eq!(round_start_ms(&s, 1_000, 2), 1_000 + 120_000 + 300_000);
        assert_eq!(round_start_ms(&s, 1_000, 4), 1_000 + 120_000 + 3 * 300_000);
    }

    #[test]
    fn every_form_starts_immediately() {
        let s = mk_task("@every 10s", 2, 500).schedule();
        assert_eq!(round_start_ms(&s, 5_000, 1), 5_000);
        assert_eq!(round_start_ms(&s, 5_000, 3), 25_000);
    }

    #[test]
    fn late_rounds_keep_the_arming_delay() {
        let delay = Duration::from_secs(1);
        assert_eq!(effective_start_ms(10_000, 5_000, delay), 10_000);
        assert_eq!(effective_start_ms(10_000, 9_500, delay), 10_500);
    }

    #[test]
    fn round_number_limits_rounds() {
        assert!(round_wanted(-1, 1_000_000));
        assert!(round_wanted(2, 2));
        assert!(!round_wanted(2, 3));
    }

    #[test]
    fn deadline_is_capped_by_round_timeout() {
        let t = mk_task("@every 10s", 2, 500);
        let grace = Duration::from_secs(1);
        assert_eq!(report_deadline_ms(&t, 0, grace), 3_500);
        assert_eq!(report_deadline_ms(&t, 0, Duration::from_secs(60)), 10_000);
    }
}
