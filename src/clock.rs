//! Wall-clock time as stepgate reads and writes it: Unix seconds or milliseconds, and
//! RFC 3339 in UTC with millisecond precision.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    to_unix_ms(OffsetDateTime::now_utc())
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    unix_ms() / 1_000
}

/// Milliseconds since the Unix epoch of `at` (0 before the epoch).
pub fn to_unix_ms(at: OffsetDateTime) -> u64 {
    (at.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Now, e.g. `2026-11-25T04:33:32.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339_from_unix_ms(unix_ms())
}

/// A Unix time in milliseconds as RFC 3339, e.g. `2026-11-25T04:33:32.123Z`.
pub fn rfc3339_from_unix_ms(unix_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_from_unix_ms(1_795_584_219_905),
            "2026-11-25T05:23:39.905Z"
        );
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00Z");
    }
}
