//! The monthly report as documents: one view ([`ReportView`], every figure and line already
//! worded and formatted in the tenant's time zone) rendered as HTML by the Handlebars template
//! `templates/tenant-report.html.hbs` and as PDF in-process by [`pdf`] (printpdf, with the
//! DejaVu Sans faces embedded: no browser and no system font at run time).
//!
//! Invariant: both documents show the same view, so what one says the other says.

pub mod pdf;

use crate::mail::render::{
    AttestationRow, Brand, ComputerRow, FailureRow, Figure, PostponeRow, ReportView, SoftwareRow,
    TaskRow,
};
use crate::services::reports::Report;
use upkeep_core::domain::{Compliance, Time};
use upkeep_core::localtime;
use upkeep_core::session::SessionStatus;

/// "PASSED" as people read it.
pub fn outcome(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Passed => "Passed",
        SessionStatus::Failed => "Failed",
        SessionStatus::Cancelled => "Cancelled",
        _ => "Unfinished",
    }
}

/// The view of `r` under `brand`.
pub fn view(r: &Report, brand: Brand) -> ReportView {
    let rep = &r.report;
    let day = |t: Time| t.with_timezone(&r.zone).format("%-d %B %Y").to_string();
    let when = |t: Time| localtime::short(t, r.zone);
    let last_day = if rep.complete {
        rep.to - chrono::Duration::seconds(1)
    } else {
        rep.to
    };
    let period = format!(
        "{} – {}{}",
        day(rep.from),
        day(last_day),
        if rep.complete {
            ""
        } else {
            " (month in progress)"
        }
    );
    ReportView {
        title: format!("Maintenance report, {}", rep.month.title()),
        month: rep.month.to_string(),
        period,
        complete: rep.complete,
        time_zone: r.zone.name().to_owned(),
        generated_at: when(r.generated_at),
        summary: summary(r),
        computers: computer_rows(r),
        computers_omitted: rep.compliance.total() - rep.computers.len() as u64,
        software: rep
            .software
            .iter()
            .map(|s| SoftwareRow {
                name: s.name.clone(),
                installed: s.installed,
                updated: s.updated,
                removed: s.removed,
                computers: s.computers,
                versions: s.versions.join(", "),
            })
            .collect(),
        tasks: rep
            .tasks
            .iter()
            .map(|t| TaskRow {
                name: t.name.clone(),
                remediated: t.remediated,
                computers: t.computers,
            })
            .collect(),
        failures: failure_rows(r),
        failures_omitted: rep.failures_total - rep.failures.len() as u64,
        postpones: rep
            .postpones
            .iter()
            .map(|p| PostponeRow {
                computer: p.computer_name.clone(),
                by_end_user: p.by_end_user,
                total: p.total,
                finished: when(p.finished_at),
                outcome: outcome(p.status).to_owned(),
            })
            .collect(),
        postpones_by_end_users: rep.postpones_by_end_users,
        attestations: rep
            .attestations
            .iter()
            .map(|a| AttestationRow {
                session: a.session_id.to_string(),
                computer: a.computer_name.clone(),
                finished: when(a.finished_at),
                outcome: outcome(a.status).to_owned(),
                chain_head: a.chain_head.clone(),
            })
            .collect(),
        attestations_omitted: rep.attestations_total - rep.attestations.len() as u64,
        signing_keys: rep.signing_keys.clone(),
        brand,
    }
}

fn computer_rows(r: &Report) -> Vec<ComputerRow> {
    r.report
        .computers
        .iter()
        .map(|c| {
            let (compliance, state) = compliance_words(c.compliance);
            ComputerRow {
                name: c.name.clone(),
                os: c.os.clone(),
                compliance: compliance.to_owned(),
                state,
                as_of: c
                    .as_of
                    .map(|t| localtime::short(t, r.zone))
                    .unwrap_or_default(),
                sessions: c.sessions,
            }
        })
        .collect()
}

fn compliance_words(c: Option<Compliance>) -> (&'static str, &'static str) {
    match c {
        Some(Compliance::Compliant) => ("Compliant", "ok"),
        Some(Compliance::NonCompliant) => ("Not compliant", "bad"),
        Some(Compliance::Unknown) | None => ("Unknown", "unknown"),
    }
}

fn summary(r: &Report) -> Vec<Figure> {
    let rep = &r.report;
    let c = rep.compliance;
    let total = c.total();
    let percent = (c.compliant * 100)
        .checked_div(total)
        .map(|p| format!(" ({p} %)"))
        .unwrap_or_default();
    let count = |s: SessionStatus| {
        rep.outcomes
            .iter()
            .find(|(o, _)| *o == s)
            .map_or(0, |(_, n)| *n)
    };
    let sessions: u64 = rep.outcomes.iter().map(|(_, n)| n).sum();
    let changes: u64 = rep
        .software
        .iter()
        .map(|s| s.installed + s.updated + s.removed)
        .sum();
    let resolved = rep.failures_resolved;
    let fig = |label: &str, value: String| Figure {
        label: label.to_owned(),
        value,
    };
    vec![
        fig(
            "Compliant computers",
            format!("{} of {total}{percent}", c.compliant),
        ),
        fig(
            "Maintenance sessions",
            format!(
                "{sessions}: {} passed, {} failed, {} cancelled",
                count(SessionStatus::Passed),
                count(SessionStatus::Failed),
                count(SessionStatus::Cancelled)
            ),
        ),
        fig(
            "Software installed, updated or removed",
            changes.to_string(),
        ),
        fig(
            "Settings remediated by tasks",
            rep.tasks
                .iter()
                .map(|t| t.remediated)
                .sum::<u64>()
                .to_string(),
        ),
        fig(
            "Failures",
            if rep.failures_total == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{}, {resolved} resolved within the month",
                    rep.failures_total
                )
            },
        ),
        fig(
            "Postponed by end users",
            rep.postpones_by_end_users.to_string(),
        ),
        fig("Signed session records", rep.attestations_total.to_string()),
    ]
}

fn failure_rows(r: &Report) -> Vec<FailureRow> {
    let when = |t: Time| localtime::short(t, r.zone);
    r.report
        .failures
        .iter()
        .map(|f| FailureRow {
            when: when(f.at),
            computer: f.computer_name.clone(),
            item: f.item.clone().unwrap_or_else(|| "Session".into()),
            message: one_line(&f.message, 300),
            resolution: match f.resolved_by {
                Some((session, at)) => format!("Resolved {} (session {session})", when(at)),
                None if r.report.complete => "Open at the end of the month".into(),
                None => "Open".into(),
            },
            resolved: f.resolved_by.is_some(),
            session: f.session_id.to_string(),
        })
        .collect()
}

/// The first line of `s`, cut at `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests;
