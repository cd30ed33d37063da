//! Wall-clock time as stepgate writes it: RFC 3339, UTC, millisecond precision.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, e.g. `2026-11-25T04:33:32.123Z`.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_default()
}
