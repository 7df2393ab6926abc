//! Cron tests: oracle vectors from cronsim, DST cases, parsing.

use super::*;

fn cron(s: &str) -> CronExpr {
    match CronExpr::parse(s) {
        Ok(expr) => expr,
        Err(e) => panic!("'{s}' should parse: {e}"),
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(e) => panic!("bad test time '{s}': {e}"),
    }
}

fn zone(name: &str) -> Tz {
    match crate::types::TimeZone::parse(name) {
        Ok(tz) => tz.tz(),
        Err(e) => panic!("{e}"),
    }
}

/// The next `count` occurrences, as RFC 3339 UTC strings.
fn runs(expr: &str, tz: &str, after: &str, count: usize) -> Vec<String> {
    cron(expr)
        .upcoming(zone(tz), utc(after), count)
        .iter()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect()
}

fn parse_err(s: &str) -> String {
    match CronExpr::parse(s) {
        Ok(expr) => panic!("'{s}' should not parse, got {expr:?}"),
        Err(e) => e.0,
    }
}

#[test]
fn cron_serde_is_the_source_text() {
    let c = crate::types::tests::round_trip::<CronExpr>("\"0 2 * * 1-5\"");
    assert_eq!(c.get().unwrap().source(), "0 2 * * 1-5");
    crate::types::tests::round_trip::<CronExpr>("\"@daily\"");
    let bad = crate::types::tests::round_trip::<CronExpr>("\"61 * * * *\"");
    assert_eq!(bad.text(), "61 * * * *");
    assert!(bad.get().is_err());
    let v = crate::types::Stored::new(CronExpr::parse(" 5 4 * * * ").unwrap());
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"5 4 * * *\"");
}

#[test]
fn parse_errors_name_field_and_token() {
    let cases = [
        (
            "* * * * FRX",
            "day-of-week: 'FRX' is not a number or day name",
        ),
        ("* * * foo *", "month: 'foo' is not a number or month name"),
        ("MON * * * *", "minute: 'MON' is not a number"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("*/0 * * * *", "minute: step in '*/0' must be at least 1"),
        ("*/x * * * *", "minute: step 'x' in '*/x' is not a number"),
        ("1-/2 * * * *", "minute: '1-/2' is missing a number"),
        (
            "* 5-2 * * *",
            "hour: range '5-2' runs backwards (start after end)",
        ),
        ("1,,2 * * * *", "minute: empty list item in '1,,2'"),
        ("-1 * * * *", "minute: '-1' is missing a number"),
        ("1-2-3 * * * *", "minute: '2-3' is not a number"),
        (
            "99999999999 * * * *",
            "minute: 99999999999 is out of range 0-59",
        ),
    ];
    for (expr, message) in cases {
        assert_eq!(parse_err(expr), message, "for '{expr}'");
    }
    assert_eq!(
        parse_err("* * * * MON-SUN"),
        "day-of-week: range 'MON-SUN' runs backwards (start after end); \
         write Sunday as 7 to end a range with it"
    );
}

#[test]
fn parse_rejects_wrong_shapes() {
    assert_eq!(
        parse_err("* * * *"),
        "expected 5 fields (minute hour day-of-month month day-of-week), found 4 in '* * * *'"
    );
    assert!(parse_err("0 * * * * *").contains("found 6"));
    assert!(parse_err("   ").contains("empty"));
    assert!(parse_err("@reboot").starts_with("unknown cron shorthand '@reboot'"));
    // cronsim's non-Debian extensions and Quartz syntax are not cron.
    for expr in [
        "0 0 L * *",
        "0 0 * * 5L",
        "0 0 * * MON#2",
        "0 0 LW * *",
        "0 0 ? * *",
    ] {
        assert!(CronExpr::parse(expr).is_err(), "'{expr}' should not parse");
    }
    // An expression that can never fire is refused, as cronsim does.
    assert_eq!(
        parse_err("0 0 30 2 *"),
        "day-of-month: no selected month has a day 30, so '0 0 30 2 *' would never run"
    );
    assert!(CronExpr::parse("0 0 31 4,6 *").is_err());
    assert!(CronExpr::parse("0 0 31 4,5 *").is_ok());
    // With the OR rule the day-of-week still fires.
    assert!(CronExpr::parse("0 0 30 2 MON").is_ok());
}

#[test]
fn parse_fields_names_and_steps() {
    let e = cron("0-10/5,58 1/8 */10 jan-Mar,DEC mon-fri");
    assert_eq!(e.minutes, 1 | 1 << 5 | 1 << 10 | 1 << 58);
    assert_eq!(e.hours, 1 << 1 | 1 << 9 | 1 << 17);
    assert_eq!(e.days, 1 << 1 | 1 << 11 | 1 << 21 | 1 << 31);
    assert_eq!(e.months, 0b1_0000_0000_1110);
    assert_eq!(e.weekdays, 0b011_1110);
    assert_eq!(e.day_rule, DayRule::Both);
    assert_eq!(e.dst_rule, DstRule::FixedTime);

    // 0 and 7 are both Sunday; `a/n` runs to the field maximum, which is 7 here.
    assert_eq!(cron("0 0 * * 7").weekdays, 1);
    assert_eq!(cron("0 0 * * 1/2").weekdays, 1 | 1 << 1 | 1 << 3 | 1 << 5);
    assert_eq!(cron("0 0 * * */7").weekdays, 1);
    assert_eq!(cron("0 0 * * SAT-7").weekdays, 1 | 1 << 6);
    assert_eq!(cron("0 0 1 * 1").day_rule, DayRule::Either);
    assert_eq!(cron("0 0 */2 * 1").day_rule, DayRule::Both);
    assert_eq!(cron("0 0 1 * *").dst_rule, DstRule::FixedTime);
    assert_eq!(cron("0 */2 * * *").dst_rule, DstRule::WallClock);
    assert_eq!(cron("0 0-23/2 * * *").dst_rule, DstRule::FixedTime);
    assert_eq!(cron("*/100 * * * *").minutes, 1);
}

#[test]
fn shorthands_and_source() {
    let expr = cron("  @Weekly ");
    assert_eq!(expr.source(), "@Weekly");
    assert_eq!(expr.to_string(), "@Weekly");
    assert_eq!(expr.weekdays, 1);
    assert_eq!((expr.minutes, expr.hours), (1, 1));
    for (short, long) in [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ] {
        let (a, b) = (cron(short), cron(long));
        assert_eq!(
            (
                a.minutes, a.hours, a.days, a.months, a.weekdays, a.day_rule, a.dst_rule
            ),
            (
                b.minutes, b.hours, b.days, b.months, b.weekdays, b.day_rule, b.dst_rule
            ),
            "{short}"
        );
    }
    assert_eq!(
        "0 12 * * *".parse::<CronExpr>().map(|e| e.hours),
        Ok(1 << 12)
    );
}

#[test]
fn day_of_month_or_day_of_week() {
    // Neither field starts with `*`: the 13th or any Friday.
    assert_eq!(
        runs("0 0 13 * FRI", "UTC", "2026-02-01T00:00:00Z", 4),
        [
            "2026-02-06T00:00:00Z",
            "2026-02-13T00:00:00Z",
            "2026-02-20T00:00:00Z",
            "2026-02-27T00:00:00Z"
        ]
    );
    assert_eq!(
        runs("0 0 13 * FRI", "UTC", "2026-02-28T00:00:00Z", 2),
        ["2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z"]
    );
    // `*/1` starts with `*`, so both must match: every 13th (any weekday) ...
    assert_eq!(
        runs("0 0 13 * */1", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-13T00:00:00Z"]
    );
    // ... and every Friday.
    assert_eq!(
        runs("0 0 */1 * FRI", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-02T00:00:00Z"]
    );
    assert_eq!(
        runs("0 0 13 * 5", "UTC", "2026-03-14T00:00:00Z", 1),
        ["2026-03-20T00:00:00Z"]
    );
    let thirteenth_or_friday = cron("0 0 13 * FRI");
    assert!(thirteenth_or_friday.matches(utc("2026-03-20T00:00:00Z").naive_utc()));
    assert!(!thirteenth_or_friday.matches(utc("2026-03-19T00:00:00Z").naive_utc()));
}

#[test]
fn new_york_spring_forward() {
    // 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00Z).
    let ny = "America/New_York";
    // Fixed time in the gap: once, at the end of the gap.
    assert_eq!(
        runs("30 2 * * *", ny, "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    // Several fixed times in the gap collapse into one run, and 03:00 is not repeated.
    assert_eq!(
        runs("0,30 2,3 * * *", ny, "2026-03-08T06:00:00Z", 3),
        [
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z",
            "2026-03-09T06:00:00Z"
        ]
    );
    // Wall clock: the skipped minutes just do not happen.
    assert_eq!(
        runs("*/30 * * * *", ny, "2026-03-08T06:00:00Z", 3),
        [
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z"
        ]
    );
    assert_eq!(
        runs("0 * * * *", ny, "2026-03-08T05:30:00Z", 3),
        [
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
    assert_eq!(
        runs("*/15 2 * * *", ny, "2026-03-07T08:00:00Z", 1),
        ["2026-03-09T06:00:00Z"]
    );
}

#[test]
fn new_york_fall_back() {
    // 2026-11-01 02:00 EDT falls back to 01:00 EST; 01:00-01:59 happens twice
    // (05:00Z-05:59Z EDT, then 06:00Z-06:59Z EST).
    let ny = "America/New_York";
    // Fixed time: first pass only.
    assert_eq!(
        runs("30 1 * * *", ny, "2026-10-31T12:00:00Z", 3),
        [
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
            "2026-11-03T06:30:00Z"
        ]
    );
    // Starting inside the second pass: today's run already happened.
    assert_eq!(
        runs("30 1 * * *", ny, "2026-11-01T06:10:00Z", 1),
        ["2026-11-02T06:30:00Z"]
    );
    assert_eq!(
        runs("0 1-3 * * *", ny, "2026-11-01T04:30:00Z", 3),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z"
        ]
    );
    // Wall clock: both passes.
    assert_eq!(
        runs("*/30 * * * *", ny, "2026-11-01T04:45:00Z", 5),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z"
        ]
    );
    assert_eq!(
        runs("0 * * * *", ny, "2026-11-01T04:30:00Z", 4),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z"
        ]
    );
    // From inside the first pass, the second pass still comes.
    assert_eq!(
        runs("15 * * * *", ny, "2026-11-01T05:45:00Z", 2),
        ["2026-11-01T06:15:00Z", "2026-11-01T07:15:00Z"]
    );
}

#[test]
fn berlin_and_sydney() {
    // Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z); 2026-10-25 03:00 -> 02:00.
    let berlin = "Europe/Berlin";
    assert_eq!(
        runs("30 2 * * *", berlin, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    );
    assert_eq!(
        runs("30 2 * * *", berlin, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    assert_eq!(
        runs("30 * * * *", berlin, "2026-10-24T23:45:00Z", 3),
        [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:30:00Z"
        ]
    );
    assert_eq!(
        runs("0 9 * * MON-FRI", berlin, "2026-07-03T08:00:00Z", 2),
        ["2026-07-06T07:00:00Z", "2026-07-07T07:00:00Z"]
    );
    // Sydney (southern hemisphere): 2026-04-05 03:00 AEDT -> 02:00 AEST,
    // 2026-10-04 02:00 AEST -> 03:00 AEDT (16:00Z the day before).
    let sydney = "Australia/Sydney";
    assert_eq!(
        runs("30 2 * * *", sydney, "2026-04-04T00:00:00Z", 2),
        ["2026-04-04T15:30:00Z", "2026-04-05T16:30:00Z"]
    );
    assert_eq!(
        runs("30 2 * * *", sydney, "2026-10-03T00:00:00Z", 2),
        ["2026-10-03T16:00:00Z", "2026-10-04T15:30:00Z"]
    );
    assert_eq!(
        runs("*/30 2 * * *", sydney, "2026-04-04T12:00:00Z", 4),
        [
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:30:00Z",
            "2026-04-04T16:00:00Z",
            "2026-04-04T16:30:00Z"
        ]
    );
}

#[test]
fn month_ends_and_leap_days() {
    assert_eq!(
        runs("0 0 31 * *", "UTC", "2026-01-31T00:00:00Z", 4),
        [
            "2026-03-31T00:00:00Z",
            "2026-05-31T00:00:00Z",
            "2026-07-31T00:00:00Z",
            "2026-08-31T00:00:00Z"
        ]
    );
    assert_eq!(
        runs("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z", 3),
        [
            "2028-02-29T00:00:00Z",
            "2032-02-29T00:00:00Z",
            "2036-02-29T00:00:00Z"
        ]
    );
    // 2100 is not a leap year.
    assert_eq!(
        runs("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z", 1),
        ["2104-02-29T00:00:00Z"]
    );
    // A Sunday 29 February is 28 years apart, still found.
    assert_eq!(
        runs("0 0 29 2 */7", "UTC", "2004-01-01T00:00:00Z", 2),
        ["2004-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // Local midnight of the 1st of the month in Tokyo is the day before in UTC.
    assert_eq!(
        runs("@monthly", "Asia/Tokyo", "2026-01-15T00:00:00Z", 2),
        ["2026-01-31T15:00:00Z", "2026-02-28T15:00:00Z"]
    );
}

#[test]
fn strictly_after_and_sub_minute_starts() {
    let every = cron("* * * * *");
    let at = utc("2026-05-05T10:00:00Z");
    assert_eq!(
        every.next_after(Tz::UTC, at),
        Some(utc("2026-05-05T10:01:00Z"))
    );
    let inside = utc("2026-05-05T10:00:59.999Z");
    assert_eq!(
        every.next_after(Tz::UTC, inside),
        Some(utc("2026-05-05T10:01:00Z"))
    );
    assert_eq!(every.upcoming(Tz::UTC, at, 0), Vec::<DateTime<Utc>>::new());
    // India is +05:30: local minute boundaries are still whole UTC minutes.
    assert_eq!(
        runs("0 9 * * *", "Asia/Kolkata", "2026-05-05T03:30:00Z", 1),
        ["2026-05-06T03:30:00Z"]
    );
}

/// Expected runs computed with cronsim 2.8 (`list(islice(CronSim(expr, start), n))`, start
/// an aware datetime in the zone, results converted to UTC), tz database 2025b on both sides.
// One case per line, as the oracle printed them.
#[rustfmt::skip]
const CRONSIM_VECTORS: &[(&str, &str, &str, &[&str])] = &[
    ("11 0 * * *", "Africa/Cairo", "2038-04-29T11:18:33.236967Z", &["2038-04-29T22:00:00Z", "2038-04-30T21:11:00Z", "2038-05-01T21:11:00Z", "2038-05-02T21:11:00Z"]),
    ("*/30 * * * *", "Africa/Cairo", "2028-10-25T21:39:46.937013Z", &["2028-10-25T22:00:00Z", "2028-10-25T22:30:00Z", "2028-10-25T23:00:00Z", "2028-10-25T23:30:00Z"]),
    ("25 2 1-31 * *", "Africa/Casablanca", "2030-12-21T06:16:26Z", &["2030-12-22T01:25:00Z", "2030-12-23T02:25:00Z", "2030-12-24T02:25:00Z", "2030-12-25T02:25:00Z"]),
    ("0 * * * *", "Africa/Casablanca", "2036-11-22T16:40:27Z", &["2036-11-22T17:00:00Z", "2036-11-22T18:00:00Z", "2036-11-22T19:00:00Z", "2036-11-22T20:00:00Z"]),
    ("39 0/4 * * *", "America/Asuncion", "2023-09-30T13:31:11Z", &["2023-09-30T16:39:00Z", "2023-09-30T20:39:00Z", "2023-10-01T00:39:00Z", "2023-10-01T04:00:00Z"]),
    ("*/20 23-23 * * *", "America/Asuncion", "2015-10-03T22:42:32Z", &["2015-10-04T03:00:00Z", "2015-10-04T03:20:00Z", "2015-10-04T03:40:00Z", "2015-10-05T02:00:00Z"]),
    ("15 0 * * *", "America/Godthab", "2038-03-27T15:38:27.768376Z", &["2038-03-28T01:15:00Z", "2038-03-29T01:15:00Z", "2038-03-30T01:15:00Z", "2038-03-31T01:15:00Z"]),
    ("39 * * * *", "America/Godthab", "2034-10-27T21:51:55Z", &["2034-10-27T22:39:00Z", "2034-10-27T23:39:00Z", "2034-10-28T00:39:00Z", "2034-10-28T01:39:00Z"]),
    ("40 0 * * 0-6", "America/Havana", "2027-03-13T16:24:59Z", &["2027-03-14T05:00:00Z", "2027-03-15T04:40:00Z", "2027-03-16T04:40:00Z", "2027-03-17T04:40:00Z"]),
    ("*/5 23 * * *", "America/Havana", "2018-03-11T03:44:25Z", &["2018-03-11T04:00:00Z", "2018-03-11T04:05:00Z", "2018-03-11T04:10:00Z", "2018-03-11T04:15:00Z"]),
    ("25 3,5 * * SUN", "America/New_York", "2038-03-14T01:04:43Z", &["2038-03-14T07:25:00Z", "2038-03-14T09:25:00Z", "2038-03-21T07:25:00Z", "2038-03-21T09:25:00Z"]),
    ("*/15 1-1 * * *", "America/New_York", "2021-11-07T05:58:04Z", &["2021-11-07T06:00:00Z", "2021-11-07T06:15:00Z", "2021-11-07T06:30:00Z", "2021-11-07T06:45:00Z"]),
    ("0 23 * * *", "America/Santiago", "2018-08-11T14:46:55Z", &["2018-08-12T03:00:00Z", "2018-08-13T02:00:00Z", "2018-08-14T02:00:00Z", "2018-08-15T02:00:00Z"]),
    ("0 * * * *", "America/Santiago", "2031-09-06T17:50:59Z", &["2031-09-06T18:00:00Z", "2031-09-06T19:00:00Z", "2031-09-06T20:00:00Z", "2031-09-06T21:00:00Z"]),
    ("15 0 * * *", "America/Sao_Paulo", "2018-11-04T00:30:14.736845Z", &["2018-11-04T03:00:00Z", "2018-11-05T02:15:00Z", "2018-11-06T02:15:00Z", "2018-11-07T02:15:00Z"]),
    ("30 */2 * * *", "America/Sao_Paulo", "2016-02-20T06:34:25Z", &["2016-02-20T08:30:00Z", "2016-02-20T10:30:00Z", "2016-02-20T12:30:00Z", "2016-02-20T14:30:00Z"]),
    ("11 3,4 * * SUN", "America/St_Johns", "2025-03-08T19:41:18Z", &["2025-03-09T05:41:00Z", "2025-03-09T06:41:00Z", "2025-03-16T05:41:00Z", "2025-03-16T06:41:00Z"]),
    ("*/15 * * * *", "America/St_Johns", "2037-03-08T00:32:55Z", &["2037-03-08T00:45:00Z", "2037-03-08T01:00:00Z", "2037-03-08T01:15:00Z", "2037-03-08T01:30:00Z"]),
    ("11 23 * * *", "Asia/Beirut", "2017-03-25T05:48:06Z", &["2017-03-25T21:11:00Z", "2017-03-26T20:11:00Z", "2017-03-27T20:11:00Z", "2017-03-28T20:11:00Z"]),
    ("*/5 23-23 * * *", "Asia/Beirut", "2036-10-24T18:23:55Z", &["2036-10-24T20:00:00Z", "2036-10-24T20:05:00Z", "2036-10-24T20:10:00Z", "2036-10-24T20:15:00Z"]),
    ("43 0 * * *", "Asia/Gaza", "2021-03-25T17:10:36.531484Z", &["2021-03-25T22:43:00Z", "2021-03-26T22:00:00Z", "2021-03-27T21:43:00Z", "2021-03-28T21:43:00Z"]),
    ("42 * * * *", "Asia/Gaza", "2015-10-22T06:04:12Z", &["2015-10-22T06:42:00Z", "2015-10-22T07:42:00Z", "2015-10-22T08:42:00Z", "2015-10-22T09:42:00Z"]),
    ("18 0/1 * * *", "Asia/Tehran", "2018-03-21T17:05:18.396665Z", &["2018-03-21T17:48:00Z", "2018-03-21T18:48:00Z", "2018-03-21T19:48:00Z", "2018-03-21T20:30:00Z"]),
    ("15 */3 * * *", "Asia/Tehran", "2018-03-21T04:46:02.455494Z", &["2018-03-21T05:45:00Z", "2018-03-21T08:45:00Z", "2018-03-21T11:45:00Z", "2018-03-21T14:45:00Z"]),
    ("37 3 * * *", "Australia/Lord_Howe", "2022-04-02T02:26:11Z", &["2022-04-02T17:07:00Z", "2022-04-03T17:07:00Z", "2022-04-04T17:07:00Z", "2022-04-05T17:07:00Z"]),
    ("*/5 * * * *", "Australia/Lord_Howe", "2020-10-03T14:21:46Z", &["2020-10-03T14:25:00Z", "2020-10-03T14:30:00Z", "2020-10-03T14:35:00Z", "2020-10-03T14:40:00Z"]),
    ("47 4 1-31 * *", "Australia/Sydney", "2039-04-01T22:17:57Z", &["2039-04-02T18:47:00Z", "2039-04-03T18:47:00Z", "2039-04-04T18:47:00Z", "2039-04-05T18:47:00Z"]),
    ("30 */1 * * *", "Australia/Sydney", "2030-10-04T21:48:01Z", &["2030-10-04T22:30:00Z", "2030-10-04T23:30:00Z", "2030-10-05T00:30:00Z", "2030-10-05T01:30:00Z"]),
    ("53 1 1-31 * *", "Europe/Berlin", "2019-03-30T09:40:35Z", &["2019-03-31T00:53:00Z", "2019-03-31T23:53:00Z", "2019-04-01T23:53:00Z", "2019-04-02T23:53:00Z"]),
    ("30 */1 * * *", "Europe/Berlin", "2017-10-27T20:45:53Z", &["2017-10-27T21:30:00Z", "2017-10-27T22:30:00Z", "2017-10-27T23:30:00Z", "2017-10-28T00:30:00Z"]),
    ("0 0 * * *", "Europe/Dublin", "2018-10-27T07:54:05.587098Z", &["2018-10-27T23:00:00Z", "2018-10-29T00:00:00Z", "2018-10-30T00:00:00Z", "2018-10-31T00:00:00Z"]),
    ("0 * * * *", "Europe/Dublin", "2038-03-27T16:13:33.952664Z", &["2038-03-27T17:00:00Z", "2038-03-27T18:00:00Z", "2038-03-27T19:00:00Z", "2038-03-27T20:00:00Z"]),
    ("24 3 * * *", "Pacific/Apia", "2020-09-25T12:32:45Z", &["2020-09-25T14:24:00Z", "2020-09-26T14:00:00Z", "2020-09-27T13:24:00Z", "2020-09-28T13:24:00Z"]),
    ("15 */3 * * *", "Pacific/Apia", "2016-04-01T12:30:45Z", &["2016-04-01T13:15:00Z", "2016-04-01T16:15:00Z", "2016-04-01T19:15:00Z", "2016-04-01T22:15:00Z"]),
    ("19 2/1 * * *", "Pacific/Chatham", "2018-09-29T12:29:16Z", &["2018-09-29T13:34:00Z", "2018-09-29T14:00:00Z", "2018-09-29T14:34:00Z", "2018-09-29T15:34:00Z"]),
    ("45 */2 * * *", "Pacific/Chatham", "2015-04-03T11:40:58Z", &["2015-04-03T13:00:00Z", "2015-04-03T15:00:00Z", "2015-04-03T17:00:00Z", "2015-04-03T19:00:00Z"]),
    ("*/41,19,30-34/15 */12 *,* 3 7,Tue/7", "America/Havana", "2000-10-27T23:06:10.130455Z", &["2001-03-04T05:00:00Z", "2001-03-04T05:19:00Z", "2001-03-04T05:30:00Z", "2001-03-04T05:41:00Z"]),
    ("15 *,* * */9 *,MON-Wed/6", "America/St_Johns", "2034-02-06T07:58:10.484986Z", &["2034-10-01T02:45:00Z", "2034-10-01T03:45:00Z", "2034-10-01T04:45:00Z", "2034-10-01T05:45:00Z"]),
    ("9-59/4 5 3-24,* 9-oct,* 7", "Asia/Tehran", "2024-09-03T19:03:48Z", &["2024-09-04T01:39:00Z", "2024-09-04T01:43:00Z", "2024-09-04T01:47:00Z", "2024-09-04T01:51:00Z"]),
    ("42,* 7/19 25-29 7-8/6,* */2", "America/Sao_Paulo", "2005-01-04T13:34:37.092646Z", &["2005-01-25T09:00:00Z", "2005-01-25T09:01:00Z", "2005-01-25T09:02:00Z", "2005-01-25T09:03:00Z"]),
    ("47,*/13 *,8,* * * *", "Africa/Cairo", "2009-09-12T07:29:12Z", &["2009-09-12T07:39:00Z", "2009-09-12T07:47:00Z", "2009-09-12T07:52:00Z", "2009-09-12T08:00:00Z"]),
    ("*,*,3-53 * 7-23/9 7-SEP *", "Africa/Cairo", "2038-06-03T04:51:56Z", &["2038-07-06T21:00:00Z", "2038-07-06T21:01:00Z", "2038-07-06T21:02:00Z", "2038-07-06T21:03:00Z"]),
    ("*/15 0 * * *", "America/Havana", "2026-03-07T12:00:00Z", &["2026-03-09T04:00:00Z", "2026-03-09T04:15:00Z", "2026-03-09T04:30:00Z", "2026-03-09T04:45:00Z"]),
    ("*/20 0-1 * * *", "America/Havana", "2026-03-07T12:00:00Z", &["2026-03-08T05:00:00Z", "2026-03-08T05:20:00Z", "2026-03-08T05:40:00Z", "2026-03-09T04:00:00Z"]),
    ("30 0 * * *", "America/Havana", "2026-03-07T12:00:00Z", &["2026-03-08T05:00:00Z", "2026-03-09T04:30:00Z", "2026-03-10T04:30:00Z", "2026-03-11T04:30:00Z"]),
];

#[test]
fn agrees_with_cronsim() {
    for &(expr, tz, after, expected) in CRONSIM_VECTORS {
        assert_eq!(
            runs(expr, tz, after, expected.len()),
            expected,
            "{expr} in {tz} after {after}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const ZONES: [Tz; 10] = [
        Tz::UTC,
        Tz::America__New_York,
        Tz::Europe__Berlin,
        Tz::Australia__Sydney,
        Tz::Australia__Lord_Howe,
        Tz::Asia__Kolkata,
        Tz::America__Santiago,
        Tz::Pacific__Chatham,
        Tz::Europe__London,
        Tz::America__Havana,
    ];

    fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
        let item = prop_oneof![
            3 => Just("*".to_string()),
            2 => (1..=max).prop_map(|n| format!("*/{n}")),
            3 => (min..=max).prop_map(|v| v.to_string()),
            1 => (min..=max, min..=max)
                .prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            1 => (min..=max, min..=max, 1..=max)
                .prop_map(|(a, b, n)| format!("{}-{}/{n}", a.min(b), a.max(b))),
            1 => (min..=max, 1..=max).prop_map(|(a, n)| format!("{a}/{n}")),
        ];
        prop::collection::vec(item, 1..=3).prop_map(|items| items.join(","))
    }

    fn expression() -> impl Strategy<Value = String> {
        (
            field(0, 59),
            field(0, 23),
            field(1, 31),
            field(1, 12),
            field(0, 7),
        )
            .prop_map(|(mi, h, d, mo, w)| format!("{mi} {h} {d} {mo} {w}"))
    }

    /// Dense expressions (every day) so that short brute-force windows see occurrences.
    fn daily_expression() -> impl Strategy<Value = String> {
        (field(0, 59), field(0, 23)).prop_map(|(mi, h)| format!("{mi} {h} * * *"))
    }

    /// Anywhere in 2000-2040, or close to the spring and autumn changes of either
    /// hemisphere.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let uniform = (946_684_800i64..2_208_988_800, 0u32..1_000_000_000);
        let near_change = (
            2000i32..2040,
            prop::sample::select(vec![3u32, 4, 9, 10, 11]),
            1u32..=28,
            0i64..86_400,
        );
        prop_oneof![
            uniform.prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap_or_default()),
            near_change.prop_map(|(y, m, d, s)| {
                NaiveDate::from_ymd_opt(y, m, d)
                    .and_then(|date| date.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc() + TimeDelta::seconds(s))
                    .unwrap_or_default()
            }),
        ]
    }

    /// The transition a fixed-time run was moved to: the zone's offset changes exactly
    /// at `at`.
    fn is_offset_change(tz: Tz, at: DateTime<Utc>) -> bool {
        let before = tz.offset_from_utc_datetime(&(at - TimeDelta::seconds(1)).naive_utc());
        let now = tz.offset_from_utc_datetime(&at.naive_utc());
        before.fix() != now.fix()
    }

    /// Reference: first whole minute after `after` (within `minutes`) whose wall-clock
    /// time matches, found by trying every minute.
    fn brute_force(
        expr: &CronExpr,
        tz: Tz,
        after: DateTime<Utc>,
        minutes: i64,
    ) -> Option<DateTime<Utc>> {
        let start = DateTime::from_timestamp(after.timestamp() / 60 * 60, 0)?;
        (1..=minutes)
            .map(|i| start + TimeDelta::minutes(i))
            .find(|t| *t > after && expr.matches(t.with_timezone(&tz).naive_local()))
    }

    proptest! {
        #[test]
        fn upcoming_is_increasing_and_matches(
            text in expression(),
            tz in prop::sample::select(ZONES.to_vec()),
            after in instant(),
        ) {
            // Rarely, a random expression can never fire (`0 0 31 2 *`) and is refused.
            let Ok(expr) = CronExpr::parse(&text) else { return Ok(()) };
            let runs = expr.upcoming(tz, after, 6);
            let mut previous = after;
            for &run in &runs {
                prop_assert!(run > previous, "{text} in {tz}: {run} after {previous}");
                prop_assert_eq!(expr.next_after(tz, previous), Some(run));
                let local = run.with_timezone(&tz).naive_local();
                prop_assert_eq!(local.second(), 0);
                if !expr.matches(local) {
                    prop_assert!(
                        expr.dst_rule == DstRule::FixedTime && is_offset_change(tz, run),
                        "{text} in {tz}: {run} ({local} local) does not match"
                    );
                }
                previous = run;
            }
            // Every accepted expression fires within the horizon.
            prop_assert!(!runs.is_empty(), "{text} in {tz} never runs after {after}");
        }

        #[test]
        fn next_after_is_later(
            text in expression(),
            tz in prop::sample::select(ZONES.to_vec()),
            after in instant(),
        ) {
            // Rarely, a random expression can never fire (`0 0 31 2 *`) and is refused.
            let Ok(expr) = CronExpr::parse(&text) else { return Ok(()) };
            if let Some(next) = expr.next_after(tz, after) {
                prop_assert!(next > after);
            }
        }

        #[test]
        fn wall_clock_matches_brute_force(
            text in prop_oneof![daily_expression(), expression()],
            tz in prop::sample::select(ZONES.to_vec()),
            after in instant(),
        ) {
            // Rarely, a random expression can never fire (`0 0 31 2 *`) and is refused.
            let Ok(expr) = CronExpr::parse(&text) else { return Ok(()) };
            // Without daylight saving both rules are the wall clock.
            let tz = if expr.dst_rule == DstRule::FixedTime { Tz::UTC } else { tz };
            let window = 3 * 24 * 60;
            let next = expr.next_after(tz, after);
            match brute_force(&expr, tz, after, window) {
                Some(expected) => prop_assert_eq!(next, Some(expected), "{} in {}", text, tz),
                None => prop_assert!(
                    next.is_none_or(|t| t > after + TimeDelta::minutes(window)),
                    "{text} in {tz}: {next:?} missed by brute force"
                ),
            }
        }

        #[test]
        fn fixed_time_runs_once_per_day(
            minute in 0u32..60,
            hour in 0u32..24,
            tz in prop::sample::select(ZONES.to_vec()),
            after in instant(),
        ) {
            let expr = cron(&format!("{minute} {hour} * * *"));
            let runs = expr.upcoming(tz, after, 4);
            prop_assert_eq!(runs.len(), 4);
            let days: Vec<NaiveDate> = runs
                .iter()
                .map(|t| t.with_timezone(&tz).date_naive())
                .collect();
            for pair in days.windows(2) {
                prop_assert!(pair[0] < pair[1], "{} in {}: {:?}", expr.source(), tz, runs);
            }
        }
    }
}
