//! Times as users write them (RFC 3339 or unix seconds) and as Talon prints them.

use chrono::{DateTime, TimeZone, Utc};

/// Parses RFC 3339 (`2026-11-22T10:00:00Z`) or unix seconds (`1763805600`, `1763805600.5`)
/// into microseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("time {text:?} is out of range"));
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1e6) as i64);
        }
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_micros())
        .map_err(|e| format!("time {text:?} is neither RFC 3339 nor unix seconds: {e}"))
}

/// The UTC day (`YYYY-MM-DD`) of a time in microseconds.
pub fn utc_day(us: i64) -> String {
    Utc.timestamp_micros(us)
        .single()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// RFC 3339 text of a time in microseconds.
pub fn rfc3339(us: i64) -> String {
    Utc.timestamp_micros(us)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_time("10").unwrap(), 10_000_000);
        assert_eq!(parse_time("1.5").unwrap(), 1_500_000);
        assert_eq!(parse_time("1970-01-01T00:00:02Z").unwrap(), 2_000_000);
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert!(parse_time("yesterday")
            .unwrap_err()
            .contains("\"yesterday\""));
        assert_eq!(utc_day(86_400_000_000), "1970-01-02");
    }
}
