//! `spec.schedule`: when rounds start, how many run, and how long each may take.
//!
//! Three forms of `schedule.schedule`:
//! - `"M N"` (kdoctor's interval form): the first round M minutes after the task is loaded,
//!   then every N minutes.
//! - a standard 5-field cron (`minute hour day-of-month month day-of-week`, with lists, ranges,
//!   steps and `JAN`/`MON` names, as kdoctor's robfig/cron `ParseStandard`), **evaluated in
//!   UTC**. Parsed by `croner`, which also takes its extensions (`L`, `W`, `#`, `+`). A day
//!   matches when its day of month *or* its day of week matches, unless one of them is `*`
//!   (Vixie cron, as kdoctor).
//! - `"@every <duration>"` (meshdoctor's extension for continuous monitoring, e.g.
//!   `@every 10s`, `@every 1m30s`): the first round at once, then one per duration.
//!
//! Round k+1 starts from round k's *scheduled* start (not its end), as kdoctor does, so a slow
//! round never shifts the ones after it.
//!
//! `roundTimeoutMinute` is each round's deadline after its start. kdoctor's CRD defaults it to
//! 60 and requires it to be at most N for `"M N"`, so its own default rejects `"0 1"`; here an
//! omitted value is 60 capped at N. For `@every` and cron the deadline is also capped at the next
//! round's start (so rounds never overlap), and `request` must fit in what is left.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::time::{format_duration, parse_duration};

/// `roundTimeoutMinute` when omitted (kdoctor's CRD default), before the caps above.
pub const DEFAULT_ROUND_TIMEOUT_MINUTE: u64 = 60;
/// Largest number of minutes anywhere in a schedule (M, N, roundTimeoutMinute): a year.
pub const MAX_MINUTES: u64 = 365 * 24 * 60;

/// Cron gaps are measured over the fire times after this fixed instant (Monday 2024-01-01
/// 00:00 UTC, in a leap year), so that validation does not depend on when a file is read.
const CRON_SAMPLE_FROM_MS: u64 = 1_704_067_200_000;
/// At most this many fire times are sampled ...
const CRON_SAMPLE_FIRES: usize = 1500;
/// ... within this span after the sample start.
const CRON_SAMPLE_SPAN_MS: u64 = 400 * 24 * 3600 * 1000;

/// `spec.schedule`, as written (kdoctor's `SchedulePlan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "crd",
    schemars(extend("x-kubernetes-validations" = [{
        "rule": "!has(self.roundTimeoutMinute) || !self.schedule.matches('^[[:space:]]*[0-9]+[[:space:]]+[0-9]+[[:space:]]*$') || self.roundTimeoutMinute <= int(self.schedule.findAll('[0-9]+')[1])",
        "message": "roundTimeoutMinute must be at most N of an \"M N\" schedule: rounds would overlap",
        "fieldPath": ".roundTimeoutMinute",
    }]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulePlan {
    /// `"M N"`, a 5-field cron, or `"@every <duration>"`. Required when `schedule` is given;
    /// a task without a `schedule` block gets `"0 1"` (kdoctor's webhook default).
    #[cfg_attr(
        feature = "crd",
        schemars(length(max = MAX_SCHEDULE_LEN), regex(pattern = SCHEDULE_PATTERN))
    )]
    pub schedule: String,
    /// Deadline of each round in minutes; see [`SchedulePlan::round_timeout`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "crd", schemars(range(min = 1, max = MAX_MINUTES)))]
    pub round_timeout_minute: Option<u64>,
    /// Rounds to run; -1 runs forever; 0 is rejected.
    #[serde(default = "default_round_number")]
    #[cfg_attr(
        feature = "crd",
        schemars(
            range(min = -1),
            extend("x-kubernetes-validations" = [{
                "rule": "self != 0",
                "message": "must be -1 (forever) or at least 1",
            }])
        )
    )]
    pub round_number: i64,
}

/// Longest `schedule.schedule`: a 5-field cron with long lists still fits, and the CRD's CEL
/// rule that reads the string has a small cost bound.
pub const MAX_SCHEDULE_LEN: usize = 256;
/// The shape of the three schedule forms, for the CRD schema (the parser checks the rest):
/// `@every <duration>`, `"M N"`, or five whitespace-separated cron fields.
#[cfg(feature = "crd")]
const SCHEDULE_PATTERN: &str =
    r"^\s*(@every\s*([0-9]+(ms|s|m|h))+|[0-9]+\s+[0-9]+|\S+(\s+\S+){4})\s*$";

impl Default for SchedulePlan {
    fn default() -> Self {
        Self {
            schedule: "0 1".into(),
            round_timeout_minute: None,
            round_number: default_round_number(),
        }
    }
}

fn default_round_number() -> i64 {
    1
}

/// When rounds start, parsed from `spec.schedule.schedule`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// How long round 1 waits after the schedule clock starts: M minutes for `"M N"`, zero for
    /// `@every`. For cron, at most this long (the longest gap between its fire times): round 1
    /// is at the first fire time.
    pub first_after: Duration,
    /// Time between round starts: N minutes, or the `@every` duration. For cron, the shortest
    /// gap between its fire times: rounds are at the fire times.
    pub every: Duration,
    pub form: ScheduleForm,
}

/// Which of the three forms a schedule was written in.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleForm {
    /// `"M N"`: round 1 `first_after` the clock starts, then one per `every`.
    Minutes,
    /// `"@every D"`: round 1 at once, then one per `every`.
    Every,
    /// A 5-field cron in UTC: each round at the first fire time after the previous round's
    /// scheduled start (round 1: after the clock starts).
    Cron(CronSchedule),
}

/// A parsed 5-field cron expression, evaluated in UTC.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Box<Cron>,
    /// Shortest and longest gap between consecutive fire times, sampled once at parse time.
    gaps: Option<(Duration, Duration)>,
}

impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cron({:?})", self.expr)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl CronSchedule {
    /// Parses exactly five fields.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "a cron schedule has 5 fields (minute hour day-of-month month day-of-week), \
                 got {fields} in {expr:?}"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // robfig/cron (kdoctor) reads `5/15` as `5-59/15`.
            .sloppy_ranges(true)
            .build()
            .parse(expr)
            .map_err(|e| format!("invalid cron schedule {expr:?}: {e}"))?;
        let mut schedule = Self {
            expr: expr.trim().to_string(),
            cron: Box::new(cron),
            gaps: None,
        };
        if schedule.next_after_ms(CRON_SAMPLE_FROM_MS).is_none() {
            return Err(format!("cron schedule {expr:?} never fires"));
        }
        schedule.gaps = schedule.sample_gaps();
        Ok(schedule)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `after_ms` (Unix milliseconds), in Unix
    /// milliseconds; `None` when there is none (croner searches up to the year 5000).
    pub fn next_after_ms(&self, after_ms: u64) -> Option<u64> {
        let after = DateTime::<Utc>::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// The shortest time between two consecutive fire times, measured over up to 1500 fire
    /// times within 400 days of a fixed instant (which covers every minute, hour, weekday and
    /// month pattern; a gap that only occurs in some other year is not seen). `None` when fewer
    /// than two fire times fall in that span (a yearly schedule).
    pub fn min_gap(&self) -> Option<Duration> {
        self.gaps.map(|(min, _)| min)
    }

    /// The longest time between two consecutive fire times, measured as [`Self::min_gap`].
    pub fn max_gap(&self) -> Option<Duration> {
        self.gaps.map(|(_, max)| max)
    }

    fn sample_gaps(&self) -> Option<(Duration, Duration)> {
        let end = CRON_SAMPLE_FROM_MS + CRON_SAMPLE_SPAN_MS;
        let mut prev = self.next_after_ms(CRON_SAMPLE_FROM_MS)?;
        let mut gaps: Option<(u64, u64)> = None;
        for _ in 1..CRON_SAMPLE_FIRES {
            let Some(next) = self.next_after_ms(prev).filter(|&n| n <= end) else {
                break;
            };
            let gap = next - prev;
            gaps = Some(gaps.map_or((gap, gap), |(lo, hi)| (lo.min(gap), hi.max(gap))));
            prev = next;
        }
        gaps.map(|(lo, hi)| (Duration::from_millis(lo), Duration::from_millis(hi)))
    }
}

impl Schedule {
    /// Parses `"M N"`, a 5-field cron or `"@every <duration>"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(d) = s.strip_prefix("@every") {
            let every = parse_duration(d.trim()).map_err(|e| format!("@every: {e}"))?;
            return Ok(Self {
                first_after: Duration::ZERO,
                every,
                form: ScheduleForm::Every,
            });
        }
        if s.starts_with('@') {
            return Err(format!(
                "unknown schedule {s:?}: the only @ form is \"@every <duration>\"; write \
                 @hourly and the like as 5-field crons"
            ));
        }
        let fields: Vec<&str> = s.split_whitespace().collect();
        match fields[..] {
            [m, n] => {
                let minutes = |x: &str, what: &str| match x.parse::<u64>() {
                    Ok(v) if v <= MAX_MINUTES => Ok(v),
                    Ok(_) => Err(format!(
                        "{what} must be at most {MAX_MINUTES} minutes, got {x}"
                    )),
                    Err(_) => Err(format!(
                        "{what} must be a whole number of minutes in \"M N\", got {x:?}"
                    )),
                };
                let (m, n) = (
                    minutes(m, "M (minutes before the first round)")?,
                    minutes(n, "N (minutes between rounds)")?,
                );
                if n == 0 {
                    return Err("N (minutes between rounds) must be at least 1".into());
                }
                Ok(Self {
                    first_after: Duration::from_secs(m * 60),
                    every: Duration::from_secs(n * 60),
                    form: ScheduleForm::Minutes,
                })
            }
            [_, _, _, _, _] => {
                let cron = CronSchedule::parse(s)?;
                // A yearly cron has no sampled gap: a year bounds it.
                let year = Duration::from_secs(MAX_MINUTES * 60);
                Ok(Self {
                    first_after: cron.max_gap().unwrap_or(year),
                    every: cron.min_gap().unwrap_or(year),
                    form: ScheduleForm::Cron(cron),
                })
            }
            _ => Err(format!(
                "expected \"M N\" (first round after M minutes, then every N minutes), a 5-field \
                 cron such as \"*/5 * * * *\", or \"@every <duration>\", got {s:?}"
            )),
        }
    }

    /// The fixed time between round starts; `None` for cron.
    pub fn interval(&self) -> Option<Duration> {
        match self.form {
            ScheduleForm::Minutes | ScheduleForm::Every => Some(self.every),
            ScheduleForm::Cron(_) => None,
        }
    }

    /// The cron expression, for a cron schedule.
    pub fn cron(&self) -> Option<&CronSchedule> {
        match &self.form {
            ScheduleForm::Cron(cron) => Some(cron),
            _ => None,
        }
    }
}

/// How long a round may take, and why: the limit `spec.request` must fit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundWindow {
    pub limit: Duration,
    /// Says where the limit comes from, for error messages.
    pub why: String,
}

impl SchedulePlan {
    /// The parsed schedule; valid once the task passed validation.
    pub fn parsed(&self) -> Schedule {
        Schedule::parse(&self.schedule).unwrap_or(Schedule {
            first_after: Duration::ZERO,
            every: Duration::from_secs(60),
            form: ScheduleForm::Minutes,
        })
    }

    /// Each round's deadline after its start, before the cap at the next round's start that
    /// applies to cron rounds: `roundTimeoutMinute` (default 60 minutes), capped at N for
    /// `"M N"` (default only; an explicit larger value is rejected) and at the interval for
    /// `@every`.
    pub fn round_timeout(&self) -> Duration {
        let given = self
            .round_timeout_minute
            .unwrap_or(DEFAULT_ROUND_TIMEOUT_MINUTE)
            .min(MAX_MINUTES);
        let timeout = Duration::from_secs(given * 60);
        let schedule = self.parsed();
        match schedule.form {
            ScheduleForm::Minutes | ScheduleForm::Every => timeout.min(schedule.every),
            ScheduleForm::Cron(_) => timeout,
        }
    }

    /// The time a round can have: [`Self::round_timeout`], for cron also capped at the
    /// shortest gap between fire times.
    pub fn round_window(&self) -> RoundWindow {
        let timeout = self.round_timeout();
        let minutes = self
            .round_timeout_minute
            .map_or(format!("default {DEFAULT_ROUND_TIMEOUT_MINUTE}"), |m| {
                m.to_string()
            });
        let plain = || RoundWindow {
            limit: timeout,
            why: format!(
                "the round timeout of {} (roundTimeoutMinute {minutes})",
                format_duration(timeout)
            ),
        };
        let schedule = self.parsed();
        let every = schedule.every;
        match &schedule.form {
            ScheduleForm::Every if every <= timeout => RoundWindow {
                limit: every,
                why: format!(
                    "the {} between @every rounds (each round ends before the next starts)",
                    format_duration(every)
                ),
            },
            ScheduleForm::Minutes if self.round_timeout_minute.is_none() => RoundWindow {
                limit: timeout,
                why: format!(
                    "the round timeout of {} (roundTimeoutMinute defaults to the \"M N\" \
                         interval, at most {DEFAULT_ROUND_TIMEOUT_MINUTE} minutes; N is {})",
                    format_duration(timeout),
                    format_duration(every)
                ),
            },
            ScheduleForm::Cron(cron) => match cron.min_gap() {
                Some(gap) if gap < timeout => RoundWindow {
                    limit: gap,
                    why: format!(
                        "the {} between the closest rounds of cron {:?} (each round ends before \
                         the next starts)",
                        format_duration(gap),
                        cron.expr()
                    ),
                },
                _ => plain(),
            },
            _ => plain(),
        }
    }

    /// Checks `spec.schedule`; returns the parsed schedule.
    pub(crate) fn validate(&self) -> Result<Schedule, Invalid> {
        if self.schedule.len() > MAX_SCHEDULE_LEN {
            return Err(Invalid::new(
                "spec.schedule.schedule",
                format!(
                    "must be at most {MAX_SCHEDULE_LEN} characters, got {}",
                    self.schedule.len()
                ),
            ));
        }
        let schedule = Schedule::parse(&self.schedule)
            .map_err(|e| Invalid::new("spec.schedule.schedule", e))?;
        if let Some(t) = self.round_timeout_minute {
            let field = "spec.schedule.roundTimeoutMinute";
            if t == 0 {
                return Err(Invalid::new(field, "must be at least 1 (minutes)"));
            }
            if t > MAX_MINUTES {
                return Err(Invalid::new(
                    field,
                    format!("must be at most {MAX_MINUTES} minutes (a year), got {t}"),
                ));
            }
            if schedule.form == ScheduleForm::Minutes && t * 60 > schedule.every.as_secs() {
                return Err(Invalid::new(
                    field,
                    format!(
                        "{t} minutes is longer than the {} minutes between rounds of \"{}\": \
                         rounds would overlap",
                        schedule.every.as_secs() / 60,
                        self.schedule.trim()
                    ),
                ));
            }
        }
        if self.round_number == 0 || self.round_number < -1 {
            return Err(Invalid::new(
                "spec.schedule.roundNumber",
                format!(
                    "must be -1 (forever) or at least 1, got {}",
                    self.round_number
                ),
            ));
        }
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn cron(expr: &str) -> CronSchedule {
        CronSchedule::parse(expr).unwrap()
    }

    fn ts(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn minutes_and_every_forms() {
        assert_eq!(
            Schedule::parse("2 5").unwrap(),
            Schedule {
                first_after: Duration::from_secs(120),
                every: Duration::from_secs(300),
                form: ScheduleForm::Minutes,
            }
        );
        assert_eq!(
            Schedule::parse(" @every 500ms ").unwrap(),
            Schedule {
                first_after: Duration::ZERO,
                every: Duration::from_millis(500),
                form: ScheduleForm::Every,
            }
        );
        let c = Schedule::parse("0 9 * * 1-5").unwrap();
        assert_eq!(c.cron().unwrap().expr(), "0 9 * * 1-5");
        assert_eq!(c.interval(), None);
        // Round 1 is at most the weekend away; rounds are at least a day apart.
        assert_eq!(
            (c.first_after, c.every),
            (Duration::from_secs(3 * 86_400), Duration::from_secs(86_400))
        );
        assert_eq!(
            Schedule::parse("@every 1m30s").unwrap().interval(),
            Some(Duration::from_secs(90))
        );
        for (bad, says) in [
            ("1 0", "N (minutes between rounds) must be at least 1"),
            (
                "a 1",
                "M (minutes before the first round) must be a whole number",
            ),
            ("@every 10x", "unknown duration unit \"x\""),
            ("@every 0s", "must be above zero"),
            ("@every", "expected a duration"),
            ("@hourly", "the only @ form is"),
            ("1 2 3", "got \"1 2 3\""),
            ("* * * * * *", "expected \"M N\""),
            ("0 9999999", "at most 525600"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn cron_next_times_cross_minute_hour_and_day_boundaries() {
        let every5 = cron("*/5 * * * *");
        // Strictly after: a fire time is not its own successor.
        let t = ts("2024-03-10T23:55:00Z");
        assert_eq!(every5.next_after_ms(t), Some(ts("2024-03-11T00:00:00Z")));
        assert_eq!(every5.next_after_ms(t - 1), Some(t));
        // Mid-minute, with milliseconds.
        assert_eq!(
            every5.next_after_ms(ts("2024-03-10T10:07:31.250Z")),
            Some(ts("2024-03-10T10:10:00Z"))
        );
        // Ranges, steps and names; evaluated in UTC.
        let office = cron("30 9-17/4 * * mon-fri");
        assert_eq!(
            office.next_after_ms(ts("2024-01-05T17:30:00Z")), // Friday, last of the day
            Some(ts("2024-01-08T09:30:00Z"))                  // Monday
        );
        assert_eq!(
            office.next_after_ms(ts("2024-01-08T09:30:00Z")),
            Some(ts("2024-01-08T13:30:00Z"))
        );
        let new_year = cron("0 0 1 JAN *");
        assert_eq!(
            new_year.next_after_ms(ts("2024-06-01T00:00:00Z")),
            Some(ts("2025-01-01T00:00:00Z"))
        );
        // robfig's `N/step`.
        assert_eq!(
            cron("5/20 * * * *").next_after_ms(ts("2024-01-01T00:26:00Z")),
            Some(ts("2024-01-01T00:45:00Z"))
        );
        // Day of month OR day of week when neither is `*`.
        let either = cron("0 0 13 * FRI");
        assert_eq!(
            either.next_after_ms(ts("2024-01-01T00:00:00Z")),
            Some(ts("2024-01-05T00:00:00Z"))
        );
        assert_eq!(
            either.next_after_ms(ts("2024-01-12T00:00:00Z")),
            Some(ts("2024-01-13T00:00:00Z"))
        );
    }

    #[test]
    fn cron_errors_and_gaps() {
        for (bad, says) in [
            ("61 * * * *", "invalid cron schedule"),
            ("* * * * mon-xyz", "invalid cron schedule"),
            ("0 0 30 2 *", "never fires"),
            ("* * * *", "expected \"M N\""),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(cron("* * * * *").min_gap(), Some(Duration::from_secs(60)));
        assert_eq!(cron("0,1 * * * *").min_gap(), Some(Duration::from_secs(60)));
        assert_eq!(
            cron("*/15 * * * *").min_gap(),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            cron("0 9 * * 1-5").min_gap(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            cron("0 0 1,2 * *").min_gap(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(cron("0 0 29 2 *").min_gap(), None);
        assert_eq!(cron("0 0 29 2 *").max_gap(), None);
        assert_eq!(
            cron("0,1 * * * *").max_gap(),
            Some(Duration::from_secs(59 * 60))
        );
    }

    fn plan(schedule: &str, timeout: Option<u64>) -> SchedulePlan {
        SchedulePlan {
            schedule: schedule.into(),
            round_timeout_minute: timeout,
            round_number: 1,
        }
    }

    #[test]
    fn round_timeout_defaults_and_caps() {
        let m = |min: u64| Duration::from_millis(min * MIN);
        assert_eq!(plan("0 1", None).round_timeout(), m(1));
        assert_eq!(plan("0 90", None).round_timeout(), m(60));
        assert_eq!(plan("0 90", Some(80)).round_timeout(), m(80));
        assert_eq!(
            plan("@every 10s", None).round_timeout(),
            Duration::from_secs(10)
        );
        assert_eq!(
            plan("@every 10s", Some(1)).round_timeout(),
            Duration::from_secs(10)
        );
        assert_eq!(plan("@every 2h", Some(5)).round_timeout(), m(5));
        assert_eq!(plan("*/5 * * * *", None).round_timeout(), m(60));
        assert_eq!(plan("*/5 * * * *", None).round_window().limit, m(5));
        assert_eq!(plan("*/5 * * * *", Some(2)).round_window().limit, m(2));
        let w = plan("0,1 * * * *", None).round_window();
        assert_eq!(w.limit, m(1));
        assert!(w.why.contains("closest rounds of cron"), "{}", w.why);
        assert!(
            plan("@every 10s", None)
                .round_window()
                .why
                .contains("10s between @every rounds")
        );
    }

    #[test]
    fn validation_names_the_field() {
        let err = |p: SchedulePlan| {
            let e = p.validate().unwrap_err();
            (e.field, e.reason)
        };
        let (f, r) = err(plan("0 5", Some(6)));
        assert_eq!(f, "spec.schedule.roundTimeoutMinute");
        assert!(
            r.contains("longer than the 5 minutes between rounds"),
            "{r}"
        );
        assert_eq!(
            err(plan("0 5", Some(0))).0,
            "spec.schedule.roundTimeoutMinute"
        );
        // A cron schedule's timeout is capped at runtime, as @every's.
        assert!(plan("*/5 * * * *", Some(30)).validate().is_ok());
        assert!(plan("@every 10s", Some(30)).validate().is_ok());
        assert_eq!(err(plan("*/5 * * *", None)).0, "spec.schedule.schedule");
        let long = format!("0,{} * * * *", vec!["1"; 130].join(","));
        let (f, r) = err(plan(&long, None));
        assert_eq!(f, "spec.schedule.schedule");
        assert!(
            r.starts_with("must be at most 256 characters, got 269"),
            "{r}"
        );
        for n in [0, -2] {
            let p = SchedulePlan {
                round_number: n,
                ..plan("0 1", None)
            };
            assert_eq!(err(p).0, "spec.schedule.roundNumber");
        }
        let forever = SchedulePlan {
            round_number: -1,
            ..plan("0 1", None)
        };
        assert!(forever.validate().is_ok());
    }
}
