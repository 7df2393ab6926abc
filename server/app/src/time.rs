//! The one text form of instants the server shows: RFC 3339, UTC, milliseconds, `Z`
//! (`2026-11-30T12:00:00.000Z`), in GraphQL (`DateTime`) and webhook payloads alike.

use upkeep_core::domain::Time;

/// `2026-11-30T12:00:00.000Z`.
pub fn rfc3339(t: Time) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads an RFC 3339 date-time with any offset (converted to UTC); the error says what is
/// expected.
pub fn parse_rfc3339(text: &str) -> Result<Time, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!(
                "'{}' is not an RFC 3339 date-time ({e}); write e.g. 2026-11-30T12:00:00.000Z",
                crate::logsafe::log_value(text)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_z() {
        let t = parse_rfc3339("2026-11-30T13:00:00.123456+01:00").unwrap();
        assert_eq!(rfc3339(t), "2026-11-30T12:00:00.123Z");
        let t = parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-30T12:00:00.000Z");
    }

    #[test]
    fn errors_say_the_format() {
        let e = parse_rfc3339("30.11.2026").unwrap_err();
        assert!(
            e.contains("RFC 3339") && e.contains("2026-11-30T12:00:00.000Z"),
            "{e}"
        );
    }
}
