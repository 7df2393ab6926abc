//! Five-field cron expressions evaluated in an IANA time zone.
//!
//! Occurrences follow Debian's cron as the `cronsim` Python library reproduces it (the oracle
//! the contract names; the test vectors below come from it):
//!
//! - `minute hour day-of-month month day-of-week`, with lists, ranges, `*`, steps (`*/n`,
//!   `a-b/n`, and `a/n` meaning `a-max/n`), month names `JAN`..`DEC` and day names `SUN`..`SAT`
//!   in any case; day-of-week `0` and `7` are both Sunday. `@hourly`, `@daily`, `@midnight`,
//!   `@weekly`, `@monthly`, `@yearly` and `@annually` are shorthands.
//! - When neither day field *starts with* `*`, a day matches when either field does; otherwise
//!   both must (so `*/2` counts as a star).
//! - When neither the minute nor the hour field starts with `*` (a "fixed-time" job), a local
//!   time skipped by a daylight-saving gap runs once at the first minute after the gap, and a
//!   repeated local time runs once, in its first pass. Other jobs follow the wall clock: skipped
//!   minutes do not occur and repeated ones occur in both passes.
//!
//! Evaluation is pure: the caller passes the zone and the instant to search from. The search
//! skips whole months, days and hours that cannot match, so a call costs microseconds.
//!
//! Where we knowingly differ from cronsim 2.8 (found by comparing thousands of random cases):
//! - A search starting in the second pass of a repeated hour never returns a fixed-time run
//!   from the first pass; cronsim returns that earlier time (and can even loop).
//! - In zones whose changes or offsets are not whole hours (`Australia/Lord_Howe`,
//!   `Pacific/Chatham`), cronsim steps an hour at a time and skips some wall-clock minutes that
//!   exist; we follow the wall clock exactly.
//! - When a wall-clock job's matching day starts with a skipped midnight, cronsim sometimes
//!   yields the nonexistent 00:00 (i.e. 01:00); we treat it as skipped, like any other minute.
//! - cronsim's extensions (`L`, `LW`, `#`, a leading seconds field) are not cron and are refused.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime,
    Offset, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::types::ParseError;

/// A cron expression the user wrote that we cannot use. The message is a sentence
/// a person reads: it names the field and the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

/// A parsed, valid cron expression. Holding one proves the text parsed; the source text is kept
/// so it can be stored and shown exactly as the user wrote it (trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    source: String,
    /// Bit `n` set when minute `n` (0-59) matches.
    minutes: u64,
    /// Bit `n` set when hour `n` (0-23) matches.
    hours: u64,
    /// Bit `n` set when day-of-month `n` (1-31) matches.
    days: u64,
    /// Bit `n` set when month `n` (1-12) matches.
    months: u64,
    /// Bit `n` set when weekday `n` (0 = Sunday .. 6) matches; `7` is folded into bit 0.
    weekdays: u64,
    day_rule: DayRule,
    dst_rule: DstRule,
}

/// How the day-of-month and day-of-week fields combine (Debian cron looks at the field text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DayRule {
    /// One of the two fields starts with `*`: a day must match both.
    Both,
    /// Neither starts with `*`: a day matching either field matches.
    Either,
}

/// What happens to local times that daylight-saving changes skip or repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DstRule {
    /// Neither minute nor hour starts with `*`: a skipped time runs at the end of the gap, a
    /// repeated one runs in its first pass only.
    FixedTime,
    /// Occurrences are the instants whose wall-clock time matches.
    WallClock,
}

/// How far ahead a search looks before concluding that an expression never fires. Every
/// expression `parse` accepts fires well within it: the rarest kind, a given weekday on
/// 29 February (`0 0 29 2 */7`), recurs within 40 years. cronsim gives up after 50 years too.
const SEARCH_DAYS: u64 = 50 * 366;

/// The longest daylight-saving or date-line gap in the tz database is a day (Samoa skipped
/// 2011-12-30); a fixed-time job inside one runs at its end.
const MAX_GAP_MINUTES: u32 = 3 * 24 * 60;

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// Longest length of each month (index 1-12), February counted as 29 like cronsim does.
const LONGEST_MONTH: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl CronExpr {
    /// Parses five whitespace-separated fields or one of the `@` shorthands.
    pub fn parse(s: &str) -> Result<CronExpr, CronError> {
        let source = s.trim();
        let expanded = if source.starts_with('@') {
            expand_shorthand(source)?
        } else {
            source
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.is_empty() {
            return Err(CronError(
                "the cron expression is empty: expected 5 fields \
                 (minute hour day-of-month month day-of-week)"
                    .to_string(),
            ));
        }
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {} in '{}'",
                fields.len(),
                source
            )));
        };

        let minutes = parse_field(Field::Minute, minute)?;
        let hours = parse_field(Field::Hour, hour)?;
        let days = parse_field(Field::DayOfMonth, day)?;
        let months = parse_field(Field::Month, month)?;
        let mut weekdays = parse_field(Field::DayOfWeek, weekday)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }

        let day_rule = if day.starts_with('*') || weekday.starts_with('*') {
            DayRule::Both
        } else {
            DayRule::Either
        };
        if day_rule == DayRule::Both {
            // Like cronsim, refuse an expression that can never fire (`0 0 30 2 *`) rather
            // than accept a schedule that silently never runs.
            let first_day = days.trailing_zeros();
            let longest = (1..=12u32)
                .filter(|&m| has(months, m))
                .map(|m| LONGEST_MONTH[m as usize])
                .max()
                .unwrap_or(0);
            if first_day > longest {
                return Err(CronError(format!(
                    "day-of-month: no selected month has a day {first_day}, \
                     so '{source}' would never run"
                )));
            }
        }
        let dst_rule = if minute.starts_with('*') || hour.starts_with('*') {
            DstRule::WallClock
        } else {
            DstRule::FixedTime
        };

        Ok(CronExpr {
            source: source.to_string(),
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_rule,
            dst_rule,
        })
    }

    /// The expression as the user wrote it (surrounding whitespace removed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the wall-clock minute containing `local` matches every field (seconds are
    /// ignored). Daylight-saving adjustments are not this function's concern: see `next_after`.
    pub fn matches(&self, local: NaiveDateTime) -> bool {
        has(self.months, local.month())
            && self.day_matches(local.date())
            && has(self.hours, local.hour())
            && has(self.minutes, local.minute())
    }

    /// First occurrence strictly after `after`, evaluated in `tz`. `None` only when there is
    /// none within 50 years, which no expression `parse` accepts should reach.
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.dst_rule {
            DstRule::FixedTime => self.next_fixed_time(tz, after),
            DstRule::WallClock => self.next_wall_clock(tz, after),
        }
    }

    /// Up to `count` occurrences strictly after `after`, in increasing order.
    pub fn upcoming(&self, tz: Tz, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(tz, after), |&t| self.next_after(tz, t))
            .take(count)
            .collect()
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = has(self.days, date.day());
        let dow = has(self.weekdays, date.weekday().num_days_from_sunday());
        match self.day_rule {
            DayRule::Both => dom && dow,
            DayRule::Either => dom || dow,
        }
    }

    /// Earliest matching local minute at or after `from` (whose seconds are ignored), on or
    /// before `until`. Skips whole months and days that cannot match, then finds hour and
    /// minute with bit operations.
    fn next_local_match(&self, from: NaiveDateTime, until: NaiveDate) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let (mut hour, mut minute) = (from.hour(), from.minute());
        while date <= until {
            if !has(self.months, date.month()) {
                date = first_of_next_month(date)?;
            } else {
                if self.day_matches(date)
                    && let Some((h, m)) = self.time_at_or_after(hour, minute)
                {
                    return date.and_hms_opt(h, m, 0);
                }
                date = date.succ_opt()?;
            }
            (hour, minute) = (0, 0);
        }
        None
    }

    /// Earliest matching (hour, minute) of a day at or after `hour:minute`.
    fn time_at_or_after(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        if has(self.hours, hour)
            && let Some(m) = next_bit(self.minutes, minute)
        {
            return Some((hour, m));
        }
        let h = next_bit(self.hours, hour + 1)?;
        Some((h, next_bit(self.minutes, 0)?))
    }

    /// Fixed-time jobs: walk matching local times in calendar order, as cron's clock does, and
    /// map each to the instant it first happens (or the end of its gap).
    fn next_fixed_time(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let until = horizon(local.date());
        let mut from = next_minute(local)?;
        loop {
            let found = self.next_local_match(from, until)?;
            let (resume, at) = match tz.from_local_datetime(&found) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => (found, t),
                LocalResult::None => first_after_gap(tz, found)?,
            };
            let at = at.with_timezone(&Utc);
            // A time before `after` happens when `after` lies in the second pass of a repeated
            // hour: that time already ran in the first pass. (cronsim would return it.)
            if at > after {
                return Some(at);
            }
            // Times inside a gap all collapse into its end: continue after it.
            from = resume.checked_add_signed(TimeDelta::minutes(1))?;
        }
    }

    /// Wall-clock jobs: the earliest instant after `after` whose local time matches. Days
    /// without an offset change map local times to instants monotonically, so the first local
    /// match is the answer; a day with a change is enumerated whole, because a repeated hour
    /// makes local order differ from instant order.
    fn next_wall_clock(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let until = horizon(local.date());
        let mut day = local.date();
        let mut from = next_minute(local)?;
        while day <= until {
            match steady_offset(tz, day) {
                Some(offset) => {
                    let found = self.next_local_match(from, until)?;
                    if found.date() == day {
                        let at = offset.from_local_datetime(&found).single()?;
                        return Some(at.with_timezone(&Utc));
                    }
                    // Days in between have no matching minute; the found day may be irregular.
                    day = found.date();
                    from = found;
                }
                None => {
                    if let Some(at) = self.earliest_on_day(tz, day, after) {
                        return Some(at);
                    }
                    day = day.succ_opt()?;
                    from = day.and_time(NaiveTime::MIN);
                }
            }
        }
        None
    }

    /// Earliest instant after `after` on local `day` whose wall-clock time matches, trying
    /// every matching minute of the day: skipped ones give no instant, repeated ones two.
    fn earliest_on_day(
        &self,
        tz: Tz,
        day: NaiveDate,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !has(self.months, day.month()) || !self.day_matches(day) {
            return None;
        }
        let mut best: Option<DateTime<Utc>> = None;
        for hour in bits(self.hours) {
            for minute in bits(self.minutes) {
                let Some(local) = day.and_hms_opt(hour, minute, 0) else {
                    continue;
                };
                let instants = match tz.from_local_datetime(&local) {
                    LocalResult::Single(t) => [Some(t), None],
                    LocalResult::Ambiguous(first, second) => [Some(first), Some(second)],
                    LocalResult::None => [None, None],
                };
                for at in instants.into_iter().flatten() {
                    let at = at.with_timezone(&Utc);
                    if at > after && best.is_none_or(|b| at < b) {
                        best = Some(at);
                    }
                }
            }
        }
        best
    }
}

impl crate::types::Checked for CronExpr {
    fn parse(s: &str) -> Result<Self, ParseError> {
        CronExpr::parse(s).map_err(|e| ParseError(e.0))
    }
    fn as_text(&self) -> &str {
        self.source()
    }
}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronExpr::parse(s)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn expand_shorthand(source: &str) -> Result<&'static str, CronError> {
    match source.to_ascii_lowercase().as_str() {
        "@hourly" => Ok("0 * * * *"),
        "@daily" | "@midnight" => Ok("0 0 * * *"),
        "@weekly" => Ok("0 0 * * 0"),
        "@monthly" => Ok("0 0 1 * *"),
        "@yearly" | "@annually" => Ok("0 0 1 1 *"),
        _ => Err(CronError(format!(
            "unknown cron shorthand '{source}': use @hourly, @daily, @midnight, @weekly, \
             @monthly, @yearly or @annually, or five fields"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn label(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// Smallest and largest value written in the field (day-of-week allows 7 for Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    /// The names the field accepts and the value of the first one.
    fn names(self) -> (&'static [&'static str], u32) {
        match self {
            Field::Month => (&MONTH_NAMES, 1),
            Field::DayOfWeek => (&DAY_NAMES, 0),
            _ => (&[], 0),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Field::Month => "a number or month name",
            Field::DayOfWeek => "a number or day name",
            _ => "a number",
        }
    }

    fn error(self, message: String) -> CronError {
        CronError(format!("{}: {}", self.label(), message))
    }
}

fn parse_field(field: Field, text: &str) -> Result<u64, CronError> {
    let mut set = 0;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field.error(format!("empty list item in '{text}'")));
        }
        set |= parse_item(field, item)?;
    }
    Ok(set)
}

/// One list item: `*`, `v`, `a-b`, each optionally followed by `/step`; `v/step` runs to the
/// field's maximum.
fn parse_item(field: Field, item: &str) -> Result<u64, CronError> {
    let (min, max) = field.bounds();
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, item, step)?)),
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        (min, max)
    } else if let Some((low, high)) = range.split_once('-') {
        let low = parse_value(field, item, low)?;
        let high = parse_value(field, item, high)?;
        if low > high {
            let hint = if field == Field::DayOfWeek && high == 0 {
                "; write Sunday as 7 to end a range with it"
            } else {
                ""
            };
            return Err(field.error(format!(
                "range '{range}' runs backwards (start after end){hint}"
            )));
        }
        (low, high)
    } else {
        let value = parse_value(field, item, range)?;
        (value, if step.is_some() { max } else { value })
    };
    Ok((low..=high)
        .step_by(step.unwrap_or(1))
        .fold(0, |set, v| set | 1 << v))
}

fn parse_step(field: Field, item: &str, step: &str) -> Result<usize, CronError> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field.error(format!("step '{step}' in '{item}' is not a number")));
    }
    // A step longer than the field just selects the first value, as in cronsim.
    match step.parse::<usize>() {
        Ok(0) => Err(field.error(format!("step in '{item}' must be at least 1"))),
        Ok(step) => Ok(step),
        Err(_) => Ok(usize::MAX),
    }
}

fn parse_value(field: Field, item: &str, token: &str) -> Result<u32, CronError> {
    if token.is_empty() {
        return Err(field.error(format!("'{item}' is missing a number")));
    }
    let (names, first) = field.names();
    if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
        return Ok(first + index as u32);
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(field.error(format!("'{token}' is not {}", field.expected())));
    }
    let (min, max) = field.bounds();
    match token.parse::<u32>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(field.error(format!("{token} is out of range {min}-{max}"))),
    }
}

fn has(set: u64, value: u32) -> bool {
    value < 64 && set & (1 << value) != 0
}

/// Smallest member of `set` that is at least `from`.
fn next_bit(set: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = set & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

fn bits(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |&v| has(set, v))
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

/// The first whole local minute after `local`: occurrences are whole minutes and strictly
/// after the search start.
fn next_minute(local: NaiveDateTime) -> Option<NaiveDateTime> {
    local
        .date()
        .and_hms_opt(local.hour(), local.minute(), 0)?
        .checked_add_signed(TimeDelta::minutes(1))
}

fn horizon(start: NaiveDate) -> NaiveDate {
    start
        .checked_add_days(Days::new(SEARCH_DAYS))
        .unwrap_or(NaiveDate::MAX)
}

/// The day's UTC offset when it is the same from this midnight to the next (so the day has
/// no daylight-saving change); `None` for a day with a change or a skipped/repeated midnight.
fn steady_offset(tz: Tz, day: NaiveDate) -> Option<FixedOffset> {
    let start = tz
        .from_local_datetime(&day.and_time(NaiveTime::MIN))
        .single()?;
    let next = day.succ_opt()?.and_time(NaiveTime::MIN);
    let end = tz.from_local_datetime(&next).single()?;
    let offset = start.offset().fix();
    (end.offset().fix() == offset).then_some(offset)
}

/// For a local time in a gap: the first whole minute after the gap, both as local time (to
/// resume the search from) and as the instant it happens. cronsim steps minute by minute too.
fn first_after_gap(tz: Tz, skipped: NaiveDateTime) -> Option<(NaiveDateTime, DateTime<Tz>)> {
    let mut local = skipped;
    for _ in 0..MAX_GAP_MINUTES {
        local = local.checked_add_signed(TimeDelta::minutes(1))?;
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => return Some((local, t)),
            LocalResult::None => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
