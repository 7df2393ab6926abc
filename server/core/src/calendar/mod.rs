//! The schedule calendar: cron occurrences in a zone, business hours, and the scheduler's
//! decision for one schedule and zone at one instant. Pure: the caller passes `now`.

// The cron parser and evaluator is a top-level module (domain records hold its `CronExpr`,
// and the calendar reads domain records); `calendar::cron` stays its name for callers.
pub use crate::cron;

use crate::domain::{BusinessHours, Schedule, Tenant, Time, Weekday};
use crate::types::Unreadable;
use chrono::{Datelike, Duration, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use cron::CronExpr;

/// Key of a single-zone schedule's cursor in `Schedule::next_fire`.
pub const OWN_ZONE: &str = "-";

/// The zone a schedule runs in for `tenant` (cross-tenant schedules without a zone use each
/// tenant's own; UTC when there is no tenant either). An error names the stored zone that no
/// longer reads.
pub fn zone_for(s: &Schedule, tenant: Option<&Tenant>) -> Result<Tz, Unreadable> {
    let zone = match (&s.time_zone, tenant) {
        (Some(z), _) => z,
        (None, Some(t)) => &t.time_zone,
        (None, None) => return Ok(Tz::UTC),
    };
    zone.get().map(|z| z.tz()).map_err(Clone::clone)
}

/// The key of `s`'s cursor for `tenant` in `Schedule::next_fire`.
pub fn cursor_key(s: &Schedule, tenant: &Tenant) -> String {
    if s.tenant_id.is_some() && s.time_zone.is_some() {
        OWN_ZONE.to_string()
    } else {
        tenant.id.to_string()
    }
}

/// When `now` falls inside the tenant's business hours, the instant they end; else `None`.
pub fn business_hours_end(bh: &BusinessHours, tz: Tz, now: Time) -> Option<Time> {
    let local = now.with_timezone(&tz);
    let day = Weekday::from_chrono(local.weekday());
    if !bh.days.contains(&day) {
        return None;
    }
    let minute = local.hour() * 60 + local.minute();
    if minute < bh.start_minute || minute >= bh.end_minute {
        return None;
    }
    let end = NaiveTime::from_hms_opt(bh.end_minute / 60, bh.end_minute % 60, 0)?;
    let naive = local.date_naive().and_time(end);
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// What the scheduler does for one schedule in one zone at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No occurrence ever (a cron that cannot match again): nothing to do.
    Never,
    /// First look: remember `first` as the cursor; nothing fires yet.
    Start { first: Time },
    /// The next occurrence's detection has not begun.
    Wait,
    /// The occurrence's window closed unseen (the server was down): skip to `next`, the first
    /// occurrence whose window is still open, and fire nothing.
    Missed { occurrence: Time, next: Time },
    /// Fire `occurrence`; the cursor moves to `next` in the same transaction that writes the
    /// occurrence's first sessions ([`CursorMove`]), so it fires once however many replicas
    /// tick.
    Fire { occurrence: Time, next: Time },
}

/// Moving one schedule's cursor (for one zone) from where a replica read it to the next
/// occurrence. Applied inside the store transaction that acts on the occurrence: when another
/// replica moved the cursor first, the move fails and this replica does nothing with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorMove {
    /// The key in `Schedule::next_fire` ([`cursor_key`]).
    pub key: String,
    /// The cursor as read (`None` before the first look).
    pub from: Option<Time>,
    pub to: Time,
    /// When the occurrence fired (`Schedule::last_run_at`), if it fires.
    pub ran: Option<Time>,
}

/// The cursor was no longer where it was read: another replica (or pass) acted on this
/// occurrence first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the schedule's cursor moved from {expected:?} to {found:?} meanwhile")]
pub struct CursorMoved {
    pub expected: Option<Time>,
    pub found: Option<Time>,
}

impl CursorMove {
    /// Applies the move to the schedule as stored now.
    pub fn apply(&self, s: &mut Schedule) -> Result<(), CursorMoved> {
        let found = s.next_fire.get(&self.key).copied();
        if found != self.from {
            return Err(CursorMoved {
                expected: self.from,
                found,
            });
        }
        s.next_fire.insert(self.key.clone(), self.to);
        if self.ran.is_some() {
            s.last_run_at = self.ran;
        }
        Ok(())
    }
}

/// The scheduler's rule for one schedule and zone.
///
/// `cursor` is the stored next occurrence (`None` before the first look, when the first
/// occurrence whose detection starts after `since` is taken). Detection starts `lead` before
/// an occurrence; execution may start in `[o, o + window)`.
pub fn tick(
    expr: &CronExpr,
    tz: Tz,
    cursor: Option<Time>,
    since: Time,
    lead: Duration,
    window: Duration,
    now: Time,
) -> Tick {
    let next = match cursor {
        Some(n) => n,
        None => {
            return match expr.next_after(tz, since + lead - Duration::seconds(1)) {
                Some(first) => Tick::Start { first },
                None => Tick::Never,
            };
        }
    };
    if now < next - lead {
        return Tick::Wait;
    }
    let following = expr
        .next_after(tz, next)
        .unwrap_or(next + Duration::days(36500));
    if now >= next + window {
        let mut n = following;
        while now >= n + window {
            match expr.next_after(tz, n) {
                Some(x) => n = x,
                None => break,
            }
        }
        return Tick::Missed {
            occurrence: next,
            next: n,
        };
    }
    Tick::Fire {
        occurrence: next,
        next: following,
    }
}

/// When the `i`-th of `n` starts of an occurrence `o` executes: starts are spread over the
/// first half of the window.
pub fn spread(occurrence: Time, window_minutes: u32, i: usize, n: usize) -> Time {
    let half_window_ms = i64::from(window_minutes) * 60_000 / 2;
    let n = n.max(1) as i64;
    occurrence + Duration::milliseconds(half_window_ms * i as i64 / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> Time {
        s.parse::<chrono::DateTime<Utc>>().unwrap()
    }

    fn daily_2am() -> CronExpr {
        CronExpr::parse("0 2 * * *").unwrap()
    }

    const LEAD: i64 = 30;
    const WINDOW: i64 = 120;

    fn run(cursor: Option<Time>, now: Time) -> Tick {
        tick(
            &daily_2am(),
            chrono_tz::UTC,
            cursor,
            at("2026-11-01T00:00:00Z"),
            Duration::minutes(LEAD),
            Duration::minutes(WINDOW),
            now,
        )
    }

    /// A tenant and a schedule as stored before the newtypes (plain strings), with `zone`.
    fn stored(zone: &str, cron: &str) -> (Tenant, Schedule) {
        let tenant = serde_json::json!({
            "id": "0192f1a0-0000-7000-8000-000000000001", "name": "t", "company_name": null,
            "time_zone": zone, "mail_from": null, "logo_url": null, "primary_color": null,
            "auto_onboarding": false, "created_at": "2026-11-01T00:00:00Z"
        });
        let schedule = serde_json::json!({
            "id": "0192f1a0-0000-7000-8000-000000000002", "tenant_id": null, "name": "s",
            "target": {"kind": "ALL_COMPUTERS", "value": null}, "cron": cron,
            "time_zone": null, "detection_lead_minutes": 0, "window_minutes": 120,
            "options": serde_json::to_value(crate::domain::MaintenanceOptions::default()).unwrap(),
            "enabled": true, "detection_only": false, "last_run_at": null,
            "created_at": "2026-11-01T00:00:00Z"
        });
        (
            serde_json::from_value(tenant).unwrap(),
            serde_json::from_value(schedule).unwrap(),
        )
    }

    #[test]
    fn stored_zone_and_cron_read_once_and_write_back_unchanged() {
        let (t, s) = stored("Europe/Berlin", "0 2 * * MON-FRI");
        assert_eq!(zone_for(&s, Some(&t)), Ok(chrono_tz::Europe::Berlin));
        assert_eq!(s.cron.get().unwrap().source(), "0 2 * * MON-FRI");
        let again = serde_json::to_value(&s).unwrap();
        assert_eq!(again["cron"], "0 2 * * MON-FRI");
        assert_eq!(
            serde_json::to_value(&t).unwrap()["time_zone"],
            "Europe/Berlin"
        );
    }

    #[test]
    fn a_stored_zone_that_no_longer_reads_is_an_error_not_utc() {
        let (t, s) = stored("Mars/Olympus", "61 * * * *");
        let e = zone_for(&s, Some(&t)).unwrap_err();
        assert_eq!(e.text, "Mars/Olympus");
        assert!(
            e.to_string().contains("unknown time zone 'Mars/Olympus'"),
            "{e}"
        );
        assert!(s.cron.get().is_err());
        assert_eq!(s.cron.text(), "61 * * * *");
        assert_eq!(
            zone_for(&s, None),
            Ok(chrono_tz::UTC),
            "no tenant: UTC by definition"
        );
    }

    #[test]
    fn a_cursor_moves_only_from_where_it_was_read() {
        let (_, mut s) = stored("UTC", "0 2 * * *");
        let first = CursorMove {
            key: OWN_ZONE.into(),
            from: None,
            to: at("2026-11-02T02:00:00Z"),
            ran: None,
        };
        assert_eq!(first.apply(&mut s), Ok(()));
        // A second first look (another replica's) finds the cursor set and changes nothing.
        let late = CursorMove {
            to: at("2026-11-09T02:00:00Z"),
            ..first.clone()
        };
        assert_eq!(
            late.apply(&mut s),
            Err(CursorMoved {
                expected: None,
                found: Some(at("2026-11-02T02:00:00Z"))
            })
        );
        let fire = CursorMove {
            key: OWN_ZONE.into(),
            from: Some(at("2026-11-02T02:00:00Z")),
            to: at("2026-11-03T02:00:00Z"),
            ran: Some(at("2026-11-02T01:30:00Z")),
        };
        assert_eq!(fire.apply(&mut s), Ok(()));
        assert_eq!(s.last_run_at, Some(at("2026-11-02T01:30:00Z")));
        // The same occurrence fired by a replica that read the old cursor: refused, nothing
        // changes.
        let before = (s.next_fire.clone(), s.last_run_at);
        assert!(fire.apply(&mut s).is_err());
        assert_eq!((s.next_fire.clone(), s.last_run_at), before);
        // Another zone's cursor is its own.
        let other = CursorMove {
            key: "tenant".into(),
            ..first
        };
        assert_eq!(other.apply(&mut s), Ok(()));
    }

    #[test]
    fn first_look_takes_the_first_occurrence_after_since() {
        assert_eq!(
            run(None, at("2026-11-30T12:00:00Z")),
            Tick::Start {
                first: at("2026-11-01T02:00:00Z")
            }
        );
    }

    #[test]
    fn waits_until_detection_lead_then_fires_and_advances_one_day() {
        let o = at("2026-11-30T02:00:00Z");
        assert_eq!(run(Some(o), at("2026-11-30T01:29:59Z")), Tick::Wait);
        assert_eq!(
            run(Some(o), at("2026-11-30T01:30:00Z")),
            Tick::Fire {
                occurrence: o,
                next: at("2026-12-01T02:00:00Z")
            }
        );
        // Still inside the window: fires (the cursor was moved before, so only once).
        assert!(matches!(
            run(Some(o), at("2026-11-30T03:59:59Z")),
            Tick::Fire { .. }
        ));
    }

    #[test]
    fn a_closed_window_is_missed_and_the_cursor_skips_every_closed_one() {
        let o = at("2026-11-27T02:00:00Z");
        // Three days later, at 03:00: the 30th's window is still open, the 27th–29th closed.
        assert_eq!(
            run(Some(o), at("2026-11-30T03:00:00Z")),
            Tick::Missed {
                occurrence: o,
                next: at("2026-11-30T02:00:00Z")
            }
        );
        // At 04:00 the 30th's window has closed too: the cursor moves to the 1st.
        assert_eq!(
            run(Some(o), at("2026-11-30T04:00:00Z")),
            Tick::Missed {
                occurrence: o,
                next: at("2026-12-01T02:00:00Z")
            }
        );
    }

    #[test]
    fn spread_covers_the_first_half_of_the_window() {
        let o = at("2026-11-30T02:00:00Z");
        assert_eq!(spread(o, 120, 0, 4), o);
        assert_eq!(spread(o, 120, 2, 4), at("2026-11-30T02:30:00Z"));
        assert!(spread(o, 120, 3, 4) < o + Duration::minutes(60));
        assert_eq!(spread(o, 120, 0, 0), o);
    }

    #[test]
    fn business_hours_end_only_inside_them() {
        let bh = BusinessHours {
            days: vec![Weekday::Monday],
            start_minute: 8 * 60,
            end_minute: 17 * 60,
        };
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Monday 2026-11-30 10:00 Berlin = 09:00 UTC.
        assert_eq!(
            business_hours_end(&bh, berlin, at("2026-11-30T09:00:00Z")),
            Some(at("2026-11-30T16:00:00Z"))
        );
        assert_eq!(
            business_hours_end(&bh, berlin, at("2026-11-30T16:00:00Z")),
            None
        );
        assert_eq!(
            business_hours_end(&bh, berlin, at("2026-12-01T09:00:00Z")),
            None
        );
    }
}
