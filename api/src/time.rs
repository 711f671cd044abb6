//! Durations and timestamps as tasks, flags and status write them: Go-style durations
//! (`500ms`, `1m30s`), RFC 3339 UTC timestamps with milliseconds. A leaf of the crate, shared by
//! the task specs, the status and the controller's flags.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses a duration: one or more `<integer><unit>` parts with units `ms`, `s`, `m`, `h`, e.g.
/// `500ms`, `10s`, `1m30s`, `2h`. Zero is rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 500ms, 10s, 1m30s or 1h, got {s:?}");
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "missing unit after {n} in {s:?}; use ms, s, m or h"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown duration unit {unit:?} in {s:?}; use ms, s, m or h"
                ));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
    }
    if total.is_zero() {
        return Err(format!("duration {s:?} must be above zero"));
    }
    Ok(total)
}

/// Formats a duration as kdoctor's (Go's) duration strings: `450ms`, `2.5s`, `1m30s`,
/// `2h0m5s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// Formats Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds, as Kubernetes
/// shows times: `2024-01-01T00:00:00.000Z`.
pub fn format_timestamp_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map_or_else(
            || format!("{ms}ms"),
            |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("2s500ms").unwrap(),
            Duration::from_millis(2500)
        );
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(
            parse_duration("9999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(format_duration(Duration::from_millis(450)), "450ms");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_millis(2005)), "2.005s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7205)), "2h0m5s");
        assert_eq!(
            format_timestamp_ms(1_704_067_200_001),
            "2024-01-01T00:00:00.001Z"
        );
    }
}
