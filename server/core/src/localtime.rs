//! Times as people read them: in the tenant's zone with its abbreviation ("22:00 CET"). The
//! API and webhooks keep RFC 3339 UTC instants; only text meant for people goes through here.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::types::{Stored, TimeZone};

/// `format` (one of the functions below) in a stored zone. A stored name that no longer reads
/// cannot give local time: the text is in UTC, labelled so, and names the zone, so a reader
/// is never shown UTC as if it were their own time.
pub fn in_zone(
    t: DateTime<Utc>,
    zone: &Stored<TimeZone>,
    format: fn(DateTime<Utc>, Tz) -> String,
) -> String {
    match zone.get() {
        Ok(z) => format(t, z.tz()),
        Err(e) => format!("{} (time zone '{}' unknown)", format(t, Tz::UTC), e.text),
    }
}

/// "2026-11-30 22:00 CET": for status reasons and the console.
pub fn short(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

/// "22:00 CET": a time later the same day, for "held until".
pub fn clock(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%H:%M %Z").to_string()
}

/// "Monday, 30 November 2026 at 22:00 CET": for end users' mails.
pub fn long(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%A, %-d %B %Y at %H:%M %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn local_time_with_its_abbreviation() {
        let winter = Utc.with_ymd_and_hms(2026, 11, 30, 21, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 1, 20, 0, 0).unwrap();
        let berlin = Tz::Europe__Berlin;
        assert_eq!(short(winter, berlin), "2026-11-30 22:00 CET");
        assert_eq!(clock(summer, berlin), "22:00 CEST");
        assert_eq!(
            long(winter, berlin),
            "Monday, 30 November 2026 at 22:00 CET"
        );
        let stored = |name: &str| Stored::<crate::types::TimeZone>::read(name);
        assert_eq!(
            in_zone(winter, &stored("Europe/Berlin"), short),
            "2026-11-30 22:00 CET"
        );
        assert_eq!(
            in_zone(winter, &stored("nowhere"), short),
            "2026-11-30 21:00 UTC (time zone 'nowhere' unknown)"
        );
    }
}
