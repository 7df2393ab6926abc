//! A tenant's monthly report (CONTRACT §16, `tenantReport`): what maintenance did to the
//! tenant's computers in one calendar month of the tenant's time zone, as a document an MSP can
//! send to its client. Pure: the caller reads the tenant's computers, its sessions that finished
//! before the report's end (newest first is fine; any order is) and their attestations, and
//! passes `now`.
//!
//! Rules, so the same month always gives the same document once it has ended:
//! - A session is the month's when it *finished* in it (`finished_at` in `[from, to)`).
//! - A computer's compliance at the month's end is that of its last session that finished
//!   before the end and was not cancelled (the caller reads, for each computer, at least that
//!   session: [`ReportInput::sessions`]); "unknown" when there is none.
//! - A failure is "resolved" by a later session of the month on the same computer in which the
//!   same deployment's action ended compliant (or, for a session that failed as a whole, any
//!   later passed session): resolutions after the month's end are not the month's.
//! - Lists are cut at [`MAX_ROWS`] lines each, newest first; the counts above them are whole.

use crate::attest::Attestation;
use crate::domain::{Compliance, Computer, Id, Time};
use crate::session::{ActionKind, ActionStatus, Session, SessionStatus};
use chrono::{Datelike, LocalResult, NaiveDate, TimeZone as _};
use chrono_tz::Tz;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// Most lines in each list of a report (computers, failures, postpones, attestations).
pub const MAX_ROWS: usize = 5_000;

/// How far before the month's start the caller reads sessions, for the compliance of computers
/// with no session in the month. A session lasts hours to days; one created earlier than this
/// that finished in the month is still counted if the caller read it.
pub const LOOKBACK_DAYS: i64 = 45;

/// A calendar month, "2026-11".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    year: i32,
    month: u32,
}

/// Not a month the report can cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MonthError(String);

impl FromStr for Month {
    type Err = MonthError;
    fn from_str(s: &str) -> Result<Month, MonthError> {
        let bad = || {
            MonthError(format!(
                "'{s}' is not a month: write it as YYYY-MM, e.g. 2026-11"
            ))
        };
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let (year, month) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(1..=12).contains(&month) || !(2000..=9998).contains(&year) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Month {
    /// The month that holds `t` in `tz`.
    pub fn of(t: Time, tz: Tz) -> Month {
        let local = t.with_timezone(&tz);
        Month {
            year: local.year(),
            month: local.month(),
        }
    }

    fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Local midnight of the month's first day in `tz` (the first instant of the day where a
    /// DST change skips midnight).
    fn start_in(self, tz: Tz) -> Time {
        let day = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default();
        let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
        for _ in 0..4 {
            match tz.from_local_datetime(&t) {
                LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => return x.to_utc(),
                LocalResult::None => t += chrono::Duration::minutes(30),
            }
        }
        tz.from_utc_datetime(&t).to_utc()
    }

    /// `[start, end)` of the month in `tz`, as UTC instants.
    pub fn bounds(self, tz: Tz) -> (Time, Time) {
        (self.start_in(tz), self.next().start_in(tz))
    }

    /// The month's name for people: "November 2026".
    pub fn title(self) -> String {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .map(|d| d.format("%B %Y").to_string())
            .unwrap_or_else(|| self.to_string())
    }
}

/// What the report is built from.
pub struct ReportInput<'a> {
    pub month: Month,
    pub tz: Tz,
    pub now: Time,
    /// The tenant's computers.
    pub computers: &'a [Computer],
    /// The tenant's finished sessions (those that finished after the report's end are
    /// skipped), as [`SessionFacts::of`] keeps them: every one that finished in the month, and
    /// for each computer its last one before the report's end that was not cancelled.
    pub sessions: &'a [SessionFacts],
    /// Attestations by session id.
    pub attestations: &'a HashMap<Id, Attestation>,
}

/// A tenant's month.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantReport {
    pub month: Month,
    /// The month's first instant.
    pub from: Time,
    /// Its end, or `now` while the month lasts.
    pub to: Time,
    /// False while the month lasts: the figures are "so far".
    pub complete: bool,
    pub compliance: ComplianceCounts,
    pub computers: Vec<ComputerLine>,
    /// Sessions that finished in the month, by outcome (`PASSED`, `FAILED`, `CANCELLED`).
    pub outcomes: Vec<(SessionStatus, u64)>,
    pub software: Vec<SoftwareLine>,
    pub tasks: Vec<TaskLine>,
    pub failures: Vec<FailureLine>,
    pub failures_total: u64,
    /// Of `failures_total`, those a later session of the month set right.
    pub failures_resolved: u64,
    pub postpones: Vec<PostponeLine>,
    /// Postpones end users made through their e-mail links, over all the month's sessions.
    pub postpones_by_end_users: u64,
    pub attestations: Vec<AttestationLine>,
    pub attestations_total: u64,
    /// The public keys that signed the month's records.
    pub signing_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComplianceCounts {
    pub compliant: u64,
    pub non_compliant: u64,
    /// No finished session says (never maintained, or cancelled only).
    pub unknown: u64,
}

impl ComplianceCounts {
    pub fn total(&self) -> u64 {
        self.compliant + self.non_compliant + self.unknown
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComputerLine {
    pub computer_id: Id,
    pub name: String,
    pub os: String,
    /// `None`: no finished session says.
    pub compliance: Option<Compliance>,
    /// When the session that says finished.
    pub as_of: Option<Time>,
    /// Sessions of the month on this computer.
    pub sessions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftwareLine {
    pub name: String,
    pub installed: u64,
    pub updated: u64,
    pub removed: u64,
    /// Distinct computers it was installed, updated or removed on.
    pub computers: u64,
    /// The versions it brought, in the order first seen.
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLine {
    pub name: String,
    /// Times its set script brought a computer back to compliance.
    pub remediated: u64,
    pub computers: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureLine {
    pub session_id: Id,
    pub computer_id: Id,
    pub computer_name: String,
    /// The software or task that failed; `None` when the session failed as a whole.
    pub item: Option<String>,
    pub at: Time,
    pub message: String,
    /// The later session of the month that set it right, and when it finished.
    pub resolved_by: Option<(Id, Time)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostponeLine {
    pub session_id: Id,
    pub computer_id: Id,
    pub computer_name: String,
    /// Through the end user's e-mail links.
    pub by_end_user: u64,
    /// By anyone (links, technicians, API).
    pub total: u64,
    pub finished_at: Time,
    pub status: SessionStatus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttestationLine {
    pub session_id: Id,
    pub computer_name: String,
    pub finished_at: Time,
    pub status: SessionStatus,
    pub chain_head: String,
    pub public_key: String,
}

/// What the report needs of a finished session: a few hundred bytes instead of its plan and
/// scripts, so a month of a large tenant's sessions fits in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionFacts {
    pub id: Id,
    pub computer_id: Id,
    pub status: SessionStatus,
    pub created_at: Time,
    pub finished_at: Option<Time>,
    pub compliance: Option<Compliance>,
    pub status_reason: Option<String>,
    pub postpone_count: u32,
    pub end_user_postpones: u32,
    pub actions: Vec<ActionFacts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionFacts {
    /// The software's or task's name.
    pub name: String,
    pub deployment_id: Option<Id>,
    pub kind: ActionKind,
    pub status: ActionStatus,
    pub compliance: Compliance,
    pub message: Option<String>,
    /// The version an install or upgrade brought (what verification found, else the one
    /// planned).
    pub version: Option<String>,
}

impl SessionFacts {
    pub fn of(s: &Session) -> SessionFacts {
        SessionFacts {
            id: s.id,
            computer_id: s.computer_id,
            status: s.status,
            created_at: s.created_at,
            finished_at: s.finished_at,
            compliance: s.compliance,
            status_reason: s.status_reason.clone(),
            postpone_count: s.postpone_count,
            end_user_postpones: s.end_user_postpones,
            actions: s
                .actions
                .iter()
                .map(|a| ActionFacts {
                    name: s.item_name(a.item).to_owned(),
                    deployment_id: s.items.get(a.item).map(|i| i.deployment_id),
                    kind: a.kind,
                    status: a.status,
                    compliance: a.compliance,
                    message: a.result_message.clone(),
                    version: a
                        .detected_version_after
                        .clone()
                        .or_else(|| a.desired_version.clone()),
                })
                .collect(),
        }
    }
}

/// Builds the report.
pub fn build(input: &ReportInput<'_>) -> TenantReport {
    let (from, end) = input.month.bounds(input.tz);
    let complete = input.now >= end;
    let to = if complete { end } else { input.now.max(from) };
    let names: HashMap<Id, &str> = input
        .computers
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    let name_of = |id: Id| {
        names
            .get(&id)
            .map_or("(removed computer)", |n| n)
            .to_owned()
    };
    // The month's sessions, oldest first, and per computer the last that says compliance.
    let mut month: Vec<&SessionFacts> = Vec::new();
    let mut last: HashMap<Id, (Time, Compliance)> = HashMap::new();
    for s in input.sessions {
        let Some(at) = s.finished_at.filter(|&f| f < to && s.status.is_terminal()) else {
            continue;
        };
        if at >= from {
            month.push(s);
        }
        if let Some(c) = s
            .compliance
            .filter(|_| s.status != SessionStatus::Cancelled)
            && last.get(&s.computer_id).is_none_or(|(t, _)| *t < at)
        {
            last.insert(s.computer_id, (at, c));
        }
    }
    month.sort_by_key(|s| (s.finished_at, s.id));
    let (computers, compliance) = computer_lines(input, &month, &last, to);
    let (failures, failures_total, failures_resolved) = failures(&month, &name_of);
    let (postpones, postpones_by_end_users) = postpones(&month, &name_of);
    let (attestations, attestations_total, signing_keys) =
        attestation_lines(&month, input.attestations, &name_of);
    TenantReport {
        month: input.month,
        from,
        to,
        complete,
        compliance,
        computers,
        outcomes: outcomes(&month),
        software: software(&month),
        tasks: tasks(&month),
        failures,
        failures_total,
        failures_resolved,
        postpones,
        postpones_by_end_users,
        attestations,
        attestations_total,
        signing_keys,
    }
}

fn computer_lines(
    input: &ReportInput<'_>,
    month: &[&SessionFacts],
    last: &HashMap<Id, (Time, Compliance)>,
    to: Time,
) -> (Vec<ComputerLine>, ComplianceCounts) {
    let mut per: HashMap<Id, u64> = HashMap::new();
    for s in month {
        *per.entry(s.computer_id).or_default() += 1;
    }
    let mut counts = ComplianceCounts::default();
    let mut lines: Vec<ComputerLine> = input
        .computers
        .iter()
        .filter(|c| c.enrolled_at < to)
        .map(|c| {
            let (as_of, compliance) = match last.get(&c.id) {
                Some((t, k)) => (Some(*t), Some(*k)),
                None => (None, None),
            };
            match compliance {
                Some(Compliance::Compliant) => counts.compliant += 1,
                Some(Compliance::NonCompliant) => counts.non_compliant += 1,
                Some(Compliance::Unknown) | None => counts.unknown += 1,
            }
            ComputerLine {
                computer_id: c.id,
                name: c.name.clone(),
                os: c.os.clone(),
                compliance,
                as_of,
                sessions: per.get(&c.id).copied().unwrap_or(0),
            }
        })
        .collect();
    // Those that need attention first, then by name.
    lines.sort_by(|a, b| {
        rank(a.compliance)
            .cmp(&rank(b.compliance))
            .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
    });
    lines.truncate(MAX_ROWS);
    (lines, counts)
}

fn rank(c: Option<Compliance>) -> u8 {
    match c {
        Some(Compliance::NonCompliant) => 0,
        Some(Compliance::Unknown) | None => 1,
        Some(Compliance::Compliant) => 2,
    }
}

fn outcomes(month: &[&SessionFacts]) -> Vec<(SessionStatus, u64)> {
    [
        SessionStatus::Passed,
        SessionStatus::Failed,
        SessionStatus::Cancelled,
    ]
    .into_iter()
    .map(|st| (st, month.iter().filter(|s| s.status == st).count() as u64))
    .collect()
}

/// Software changes that succeeded, by software name.
fn software(month: &[&SessionFacts]) -> Vec<SoftwareLine> {
    let mut by: BTreeMap<String, (SoftwareLine, BTreeSet<Id>)> = BTreeMap::new();
    for s in month {
        for a in s
            .actions
            .iter()
            .filter(|a| a.status == ActionStatus::Succeeded)
        {
            let counter: fn(&mut SoftwareLine) = match a.kind {
                ActionKind::Install => |l: &mut SoftwareLine| l.installed += 1,
                ActionKind::Upgrade => |l: &mut SoftwareLine| l.updated += 1,
                ActionKind::Uninstall => |l: &mut SoftwareLine| l.removed += 1,
                ActionKind::RunTask | ActionKind::NoAction => continue,
            };
            let name = a.name.clone();
            let (line, computers) = by.entry(name.clone()).or_insert_with(|| {
                let line = SoftwareLine {
                    name,
                    installed: 0,
                    updated: 0,
                    removed: 0,
                    computers: 0,
                    versions: Vec::new(),
                };
                (line, BTreeSet::new())
            });
            counter(line);
            computers.insert(s.computer_id);
            if a.kind != ActionKind::Uninstall
                && let Some(v) = &a.version
                && !line.versions.contains(v)
            {
                line.versions.push(v.clone());
            }
        }
    }
    by.into_values()
        .map(|(mut l, c)| {
            l.computers = c.len() as u64;
            l
        })
        .collect()
}

/// Tasks whose set script ran and left the computer compliant, by task name.
fn tasks(month: &[&SessionFacts]) -> Vec<TaskLine> {
    let mut by: BTreeMap<String, (u64, BTreeSet<Id>)> = BTreeMap::new();
    for s in month {
        for a in s.actions.iter().filter(|a| {
            a.kind == ActionKind::RunTask
                && a.status == ActionStatus::Succeeded
                && a.compliance == Compliance::Compliant
        }) {
            let e = by.entry(a.name.clone()).or_default();
            e.0 += 1;
            e.1.insert(s.computer_id);
        }
    }
    by.into_iter()
        .map(|(name, (remediated, c))| TaskLine {
            name,
            remediated,
            computers: c.len() as u64,
        })
        .collect()
}

fn failed(a: &ActionFacts) -> bool {
    matches!(
        a.status,
        ActionStatus::Failed | ActionStatus::DetectionFailed
    )
}

/// Failed actions (and sessions that failed with no failed action), newest first, each with the
/// later session of the month that set it right; with the total and how many were set right.
fn failures(
    month: &[&SessionFacts],
    name_of: &dyn Fn(Id) -> String,
) -> (Vec<FailureLine>, u64, u64) {
    // Each computer's sessions in order, so a failure looks only at its own computer's later
    // sessions.
    let mut by_computer: HashMap<Id, Vec<&SessionFacts>> = HashMap::new();
    for s in month {
        by_computer.entry(s.computer_id).or_default().push(s);
    }
    let mut out = Vec::new();
    for sessions in by_computer.values() {
        for (i, s) in sessions.iter().enumerate() {
            failures_of(s, &sessions[i + 1..], name_of, &mut out);
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse((f.at, f.session_id)));
    let total = out.len() as u64;
    let resolved = out.iter().filter(|f| f.resolved_by.is_some()).count() as u64;
    out.truncate(MAX_ROWS);
    (out, total, resolved)
}

/// The failures of session `s`, given the same computer's later sessions of the month.
fn failures_of(
    s: &SessionFacts,
    later: &[&SessionFacts],
    name_of: &dyn Fn(Id) -> String,
    out: &mut Vec<FailureLine>,
) {
    let at = s.finished_at.unwrap_or(s.created_at);
    let done = |l: &&&SessionFacts| Some((l.id, l.finished_at?));
    let line = |item: Option<String>, message: String, fixed: Option<(Id, Time)>| FailureLine {
        session_id: s.id,
        computer_id: s.computer_id,
        computer_name: name_of(s.computer_id),
        item,
        at,
        message,
        resolved_by: fixed,
    };
    let mut any = false;
    for a in s.actions.iter().filter(|a| failed(a)) {
        any = true;
        let fixed = later.iter().find(|l| {
            l.actions.iter().any(|b| {
                b.compliance == Compliance::Compliant
                    && !failed(b)
                    && b.deployment_id == a.deployment_id
            })
        });
        let message = a
            .message
            .clone()
            .unwrap_or_else(|| format!("{:?}", a.status).to_uppercase());
        out.push(line(
            Some(a.name.clone()),
            message,
            fixed.and_then(|l| done(&l)),
        ));
    }
    if s.status == SessionStatus::Failed && !any {
        let fixed = later.iter().find(|l| l.status == SessionStatus::Passed);
        let message = s.status_reason.clone().unwrap_or_else(|| "failed".into());
        out.push(line(None, message, fixed.and_then(|l| done(&l))));
    }
}

fn postpones(month: &[&SessionFacts], name_of: &dyn Fn(Id) -> String) -> (Vec<PostponeLine>, u64) {
    let mut lines: Vec<PostponeLine> = month
        .iter()
        .rev()
        .filter(|s| s.postpone_count > 0)
        .map(|s| PostponeLine {
            session_id: s.id,
            computer_id: s.computer_id,
            computer_name: name_of(s.computer_id),
            by_end_user: u64::from(s.end_user_postpones),
            total: u64::from(s.postpone_count),
            finished_at: s.finished_at.unwrap_or(s.created_at),
            status: s.status,
        })
        .collect();
    let by_end_users = lines.iter().map(|l| l.by_end_user).sum();
    lines.truncate(MAX_ROWS);
    (lines, by_end_users)
}

fn attestation_lines(
    month: &[&SessionFacts],
    attestations: &HashMap<Id, Attestation>,
    name_of: &dyn Fn(Id) -> String,
) -> (Vec<AttestationLine>, u64, Vec<String>) {
    let mut keys = BTreeSet::new();
    let mut lines: Vec<AttestationLine> = month
        .iter()
        .rev()
        .filter_map(|s| {
            let a = attestations.get(&s.id)?;
            keys.insert(a.public_key.clone());
            Some(AttestationLine {
                session_id: s.id,
                computer_name: name_of(s.computer_id),
                finished_at: s.finished_at.unwrap_or(a.signed_at),
                status: s.status,
                chain_head: a.chain_head.clone(),
                public_key: a.public_key.clone(),
            })
        })
        .collect();
    let total = lines.len() as u64;
    lines.truncate(MAX_ROWS);
    (lines, total, keys.into_iter().collect())
}

#[cfg(test)]
mod tests;
