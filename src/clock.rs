//! Wall-clock time as stepgate reads and writes it: Unix seconds or milliseconds, and
//! RFC 3339 in UTC with millisecond precision.

use time::OffsetDateTime;

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

/// An RFC 3339 time (as [`rfc3339_from_unix_ms`] writes it) in Unix milliseconds; 0 for
/// text that is not one.
pub fn unix_ms_from_rfc3339(text: &str) -> u64 {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_or(0, to_unix_ms)
}

/// Now, e.g. `2026-11-25T04:33:32.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339_from_unix_ms(unix_ms())
}

/// A Unix time in milliseconds as RFC 3339, always with three fractional digits (e.g.
/// `2026-11-25T04:33:32.120Z`), so that times sort as text. (`time`'s own RFC 3339 drops
/// trailing zeros: `…32.12Z` would sort after `…32.123Z`.)
pub fn rfc3339_from_unix_ms(unix_ms: u64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
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
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_ms(1_795_584_219_780),
            "2026-11-25T05:23:39.780Z"
        );
        // Text order is time order.
        assert!(rfc3339_from_unix_ms(1_795_584_219_780) < rfc3339_from_unix_ms(1_795_584_219_781));
        assert!(rfc3339_from_unix_ms(1_795_584_219_800) < rfc3339_from_unix_ms(1_795_584_219_823));
    }
}
