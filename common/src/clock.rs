//! Timestamps: unix milliseconds inside memring, RFC 3339 (UTC, millisecond precision) on the wire.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// Milliseconds since the unix epoch, now.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats unix milliseconds as RFC 3339 in UTC, e.g. `2026-11-25T10:18:40.123Z`.
pub fn format_millis(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let (date, clock) = (t.date(), t.time());
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                date.year(),
                u8::from(date.month()),
                date.day(),
                clock.hour(),
                clock.minute(),
                clock.second(),
                clock.millisecond()
            )
        }
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp (any offset) into unix milliseconds.
pub fn parse_rfc3339(field: &str, raw: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| {
            ApiError::invalid(format!(
                "{field} {raw:?} is not an RFC 3339 timestamp ({e}); write e.g. \"2026-11-25T10:18:40Z\""
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_millisecond_precision() {
        let ms = 1_795_000_123_456;
        let text = format_millis(ms);
        assert!(text.ends_with(".456Z"), "{text}");
        assert_eq!(parse_rfc3339("t", &text).expect("parses"), ms);
    }

    #[test]
    fn offsets_are_honoured() {
        let utc = parse_rfc3339("t", "2026-01-01T12:00:00Z").expect("utc");
        let plus2 = parse_rfc3339("t", "2026-01-01T14:00:00+02:00").expect("offset");
        assert_eq!(utc, plus2);
    }

    #[test]
    fn garbage_is_a_400() {
        assert_eq!(parse_rfc3339("created_after", "yesterday").expect_err("bad").status(), 400);
    }
}
