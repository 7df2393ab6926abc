//! The monthly tenant report as the templates and the PDF see it: every figure and line already
//! worded and formatted in the tenant's time zone (`crate::report` builds it).

use super::Brand;
use serde::Serialize;

/// The report as both documents show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportView {
    pub brand: Brand,
    /// "Maintenance report, November 2026".
    pub title: String,
    /// "2026-11".
    pub month: String,
    /// "1 November 2026 – 30 November 2026", or "… – 20 November 2026 (month in progress)".
    pub period: String,
    pub complete: bool,
    pub time_zone: String,
    /// "2026-12-02 09:00 CET".
    pub generated_at: String,
    pub summary: Vec<Figure>,
    pub computers: Vec<ComputerRow>,
    pub computers_omitted: u64,
    pub software: Vec<SoftwareRow>,
    pub tasks: Vec<TaskRow>,
    pub failures: Vec<FailureRow>,
    pub failures_omitted: u64,
    pub postpones: Vec<PostponeRow>,
    pub postpones_by_end_users: u64,
    pub attestations: Vec<AttestationRow>,
    pub attestations_omitted: u64,
    pub signing_keys: Vec<String>,
}

/// One headline figure: "Compliant computers", "42 of 45 (93 %)".
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub label: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputerRow {
    pub name: String,
    pub os: String,
    /// "Compliant", "Not compliant", "Unknown".
    pub compliance: String,
    /// "ok", "bad", "unknown": the HTML's class and the PDF's colour.
    pub state: &'static str,
    /// When the session that says finished ("" when none did).
    pub as_of: String,
    pub sessions: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoftwareRow {
    pub name: String,
    pub installed: u64,
    pub updated: u64,
    pub removed: u64,
    pub computers: u64,
    pub versions: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRow {
    pub name: String,
    pub remediated: u64,
    pub computers: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRow {
    pub when: String,
    pub computer: String,
    /// The software or task, or "Session" when it failed as a whole.
    pub item: String,
    pub message: String,
    /// "Resolved 2026-11-04 09:00 CET (session 0193…)" or "Open at the end of the month".
    pub resolution: String,
    pub resolved: bool,
    pub session: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostponeRow {
    pub computer: String,
    pub by_end_user: u64,
    pub total: u64,
    /// When the session finished, and how.
    pub finished: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationRow {
    pub session: String,
    pub computer: String,
    pub finished: String,
    pub outcome: String,
    /// The signed chain head, 64 hex digits.
    pub chain_head: String,
}
