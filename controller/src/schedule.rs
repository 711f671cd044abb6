//! When rounds start and when the controller stops waiting for their reports: pure functions
//! over a parsed [`Schedule`], shared by every backend.
//!
//! kdoctor semantics: round 1 starts at the schedule's first time after the schedule clock
//! starts (`"M N"`: M minutes later; `@every`: at once; cron: its next fire time, in UTC), and
//! every later round from the previous round's *scheduled* start (not its end), so a slow round
//! never shifts the ones after it. The clock starts when the task is loaded (and its agents are
//! there); a changed task restarts it.

use std::time::Duration;

use meshdoctor_api::task::{RequestLoad, Schedule};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Scheduled start (Unix ms) of round 1 for a clock started at `clock_start_ms`; `None` when a
/// cron schedule never fires again.
pub fn first_start_ms(schedule: &Schedule, clock_start_ms: u64) -> Option<u64> {
    match schedule.cron() {
        Some(cron) => cron.next_after_ms(clock_start_ms),
        None => Some(clock_start_ms.saturating_add(ms(schedule.first_after))),
    }
}

/// Scheduled start of the round after the one scheduled at `previous_ms`.
pub fn next_start_ms(schedule: &Schedule, previous_ms: u64) -> Option<u64> {
    match schedule.cron() {
        Some(cron) => cron.next_after_ms(previous_ms),
        None => Some(previous_ms.saturating_add(ms(schedule.every))),
    }
}

/// Scheduled starts of rounds 1, 2, ... (endless for `-1`; take `roundNumber` of them).
pub fn round_starts(schedule: &Schedule, clock_start_ms: u64) -> impl Iterator<Item = u64> + '_ {
    std::iter::successors(first_start_ms(schedule, clock_start_ms), move |&prev| {
        next_start_ms(schedule, prev)
    })
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

/// A round's deadline (kdoctor's `deadLineTimeStamp`): `start + round_timeout`, capped at the
/// next round's scheduled start when there is one, so that rounds never overlap. The cap is
/// what bounds `@every` and cron rounds; `"M N"` rounds fit by validation. Never before the
/// start.
pub fn round_deadline_ms(
    start_ms: u64,
    round_timeout: Duration,
    next_start_ms: Option<u64>,
) -> u64 {
    let deadline = start_ms.saturating_add(ms(round_timeout));
    next_start_ms
        .map_or(deadline, |next| deadline.min(next))
        .max(start_ms)
}

/// When the controller stops waiting for reports: once every request had its chance
/// (duration + per-request timeout) plus `grace` for the reports to travel, but never after
/// the round's deadline.
pub fn report_deadline_ms(
    load: &RequestLoad,
    start_ms: u64,
    round_deadline_ms: u64,
    grace: Duration,
) -> u64 {
    let natural = start_ms
        .saturating_add(ms(load.duration))
        .saturating_add(ms(load.per_request_timeout))
        .saturating_add(ms(grace));
    natural.min(round_deadline_ms)
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::{NetReach, TaskSpec as _};

    use super::*;

    const MIN: u64 = 60_000;
    /// 2024-01-01T00:00:00Z, a Monday.
    const JAN1: u64 = 1_704_067_200_000;

    fn mk_task(schedule: &str, duration_s: u32, timeout_ms: u32) -> NetReach {
        let yaml = format!(
            "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {{name: t}}\nspec:\n  \
             schedule: {{schedule: '{schedule}'}}\n  request: {{durationInSecond: {duration_s}, \
             perRequestTimeoutInMS: {timeout_ms}}}\n"
        );
        NetReach::from_yaml("t.yaml", &yaml).unwrap()
    }

    fn starts(schedule: &Schedule, clock: u64, n: usize) -> Vec<u64> {
        round_starts(schedule, clock).take(n).collect()
    }

    #[test]
    fn minutes_form_spaces_rounds_from_scheduled_starts() {
        let s = mk_task("2 5", 2, 500).schedule();
        assert_eq!(
            starts(&s, 1_000, 4),
            [1, 2, 3, 4].map(|k| 1_000 + 2 * MIN + (k - 1) * 5 * MIN)
        );
    }

    #[test]
    fn every_form_starts_immediately() {
        let s = mk_task("@every 10s", 2, 500).schedule();
        assert_eq!(starts(&s, 5_000, 3), [5_000, 15_000, 25_000]);
    }

    #[test]
    fn cron_rounds_follow_fire_times_across_minute_and_hour_boundaries() {
        let s = Schedule::parse("*/20 * * * *").unwrap();
        // Loaded at 00:59:30.5: the next fire times, strictly after.
        let clock = JAN1 + 59 * MIN + 30_500;
        assert_eq!(
            starts(&s, clock, 4),
            [60, 80, 100, 120].map(|m| JAN1 + m * MIN)
        );
        // Loaded exactly on a fire time: that one has passed (kdoctor's cron.Next(now)).
        assert_eq!(first_start_ms(&s, JAN1), Some(JAN1 + 20 * MIN));
        // Named days across day boundaries: Monday 23:30, Friday, Monday.
        let s = Schedule::parse("30 23 * * FRI,MON").unwrap();
        assert_eq!(
            starts(&s, JAN1, 3),
            [1410, 4 * 1440 + 1410, 7 * 1440 + 1410].map(|m| JAN1 + m * MIN)
        );
    }

    #[test]
    fn late_rounds_keep_the_arming_delay() {
        let delay = Duration::from_secs(1);
        assert_eq!(effective_start_ms(10_000, 5_000, delay), 10_000);
        assert_eq!(effective_start_ms(10_000, 9_500, delay), 10_500);
    }

    #[test]
    fn round_number_limits_rounds() {
        assert!(round_wanted(-1, 1));
        assert!(round_wanted(-1, 1_000_000));
        assert!(round_wanted(-1, u32::MAX));
        assert!(round_wanted(2, 2));
        assert!(!round_wanted(2, 3));
        // -1: the schedule keeps producing starts.
        let s = Schedule::parse("@every 1s").unwrap();
        let far: Vec<u64> = round_starts(&s, 0).skip(99_999).take(1).collect();
        assert_eq!(far, [99_999_000]);
    }

    #[test]
    fn round_deadlines() {
        let hour = Duration::from_secs(3600);
        // "M N": start + roundTimeoutMinute (within N by validation).
        assert_eq!(
            round_deadline_ms(0, Duration::from_secs(60), Some(5 * MIN)),
            MIN
        );
        // @every / cron: capped at the next round's start ...
        assert_eq!(round_deadline_ms(0, hour, Some(10_000)), 10_000);
        // ... unless the timeout says less; the last round has no cap.
        assert_eq!(
            round_deadline_ms(0, Duration::from_secs(5), Some(10_000)),
            5_000
        );
        assert_eq!(round_deadline_ms(0, hour, None), 60 * MIN);
        // A round started late never gets a deadline before its start.
        assert_eq!(round_deadline_ms(12_000, hour, Some(10_000)), 12_000);
    }

    #[test]
    fn report_deadline_is_capped_by_the_round_deadline() {
        let t = mk_task("@every 10s", 2, 500);
        let grace = Duration::from_secs(1);
        let round = round_deadline_ms(0, t.round_timeout(), Some(10_000));
        assert_eq!(round, 10_000);
        assert_eq!(report_deadline_ms(&t.load(), 0, round, grace), 3_500);
        assert_eq!(
            report_deadline_ms(&t.load(), 0, round, Duration::from_secs(60)),
            10_000
        );
        // A cron round with the default 60-minute timeout ends at the next fire time.
        let t = mk_task("*/5 * * * *", 2, 500);
        let schedule = t.schedule();
        let cron = schedule.cron().unwrap();
        let start = cron.next_after_ms(JAN1).unwrap();
        let next = cron.next_after_ms(start);
        assert_eq!(
            round_deadline_ms(start, t.round_timeout(), next),
            start + 5 * MIN
        );
    }
}
