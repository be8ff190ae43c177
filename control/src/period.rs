//! UTC calendar periods: the hour, day and month buckets of the usage history
//! and the periods quotas count over (a daily quota resets at 00:00 UTC, a
//! monthly one on the 1st). Times are Unix seconds in the store and RFC 3339
//! on the API.

use crate::error::{Error, Result};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Seconds in an hour and a day.
pub const HOUR: i64 = 3600;
/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// The start of the hour `t` falls in.
pub fn hour_start(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR
}

/// The start of the UTC day `t` falls in.
pub fn day_start(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

fn timestamp(t: i64) -> Timestamp {
    Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn utc_date(t: i64) -> Date {
    TimeZone::UTC.to_datetime(timestamp(t)).date()
}

fn midnight(date: Date) -> Option<i64> {
    TimeZone::UTC
        .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .ok()
        .map(|t| t.as_second())
}

/// The start of the UTC month `t` falls in.
pub fn month_start(t: i64) -> i64 {
    midnight(utc_date(t).first_of_month()).unwrap_or(0)
}

/// The start of the UTC month after the one `t` falls in.
pub fn next_month_start(t: i64) -> i64 {
    utc_date(t)
        .first_of_month()
        .checked_add(1.month())
        .ok()
        .and_then(midnight)
        .unwrap_or(i64::MAX)
}

/// `t` as RFC 3339 in UTC (`2026-12-07T09:00:00Z`).
pub fn rfc3339(t: i64) -> String {
    timestamp(t).to_string()
}

/// `t`'s UTC date (`2026-12-07`).
pub fn date(t: i64) -> String {
    utc_date(t).to_string()
}

/// The current time, Unix seconds.
pub fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Parses a time a client gave: RFC 3339 (`2026-12-07T09:00:00Z`) or a UTC
/// date (`2026-12-07`, its midnight).
pub fn parse_time(field: &str, text: &str) -> Result<i64> {
    match text.parse::<Timestamp>() {
        Ok(t) => Ok(t.as_second()),
        Err(_) => parse_day(field, text),
    }
}

/// Parses a UTC date (`2026-12-07`) to its midnight.
pub fn parse_day(field: &str, text: &str) -> Result<i64> {
    text.parse::<Date>().ok().and_then(midnight).ok_or_else(|| {
        Error::invalid(
            field,
            format!("{text:?} is neither RFC 3339 (2026-12-07T09:00:00Z) nor a date (2026-12-07)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        let t = parse_time("t", "2026-12-31T23:59:59Z").unwrap();
        assert_eq!(rfc3339(day_start(t)), "2026-12-31T00:00:00Z");
        assert_eq!(rfc3339(hour_start(t)), "2026-12-31T23:00:00Z");
        assert_eq!(rfc3339(month_start(t)), "2026-12-01T00:00:00Z");
        assert_eq!(rfc3339(next_month_start(t)), "2027-01-01T00:00:00Z");
        let feb = parse_time("t", "2028-02-29").unwrap();
        assert_eq!(rfc3339(next_month_start(feb)), "2028-03-01T00:00:00Z");
        assert_eq!(
            parse_time("from", "yesterday").unwrap_err().field(),
            Some("from")
        );
    }
}
