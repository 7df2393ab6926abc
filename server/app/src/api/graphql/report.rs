//! `tenantReport(tenantId, month)`: a tenant's month as data, beside the documents
//! (`pdfUrl`, `htmlUrl`) that show the same report (`services::reports`, `upkeep_core::report`).

use super::ctx::Ctx;
use super::enums::{Compliance, SessionStatus};
use super::parse_id;
use super::scalars::DateTime;
use super::types::View;
use crate::services::reports::Report;
use async_graphql::{ComplexObject, Context, ID, Object, Result, SimpleObject};
use std::sync::Arc;
use upkeep_core::domain::{Computer, Id, Tenant};
use upkeep_core::session::Session;

/// The report of `tenant_id` for `month`, for a caller who may read the tenant.
pub async fn tenant_report(c: &Ctx<'_>, tenant_id: &ID, month: &str) -> Result<TenantReport> {
    let tenant: Tenant = c.load(parse_id("tenantId", tenant_id)?).await?;
    // The permit ends here: GraphQL draws no document.
    let (r, _permit) = c.app.tenant_report(tenant, month).await?;
    let base = format!(
        "{}/api/v1/tenants/{}/reports/{}",
        c.app.public_url, r.tenant.id, r.report.month
    );
    Ok(TenantReport {
        r: Arc::new(r),
        base,
    })
}

/// What maintenance did to one tenant's computers in one calendar month of the tenant's time
/// zone: the same report as the PDF and HTML documents at `pdfUrl` and `htmlUrl`. Lists are
/// cut at 5 000 lines (newest first); the totals beside them count everything.
pub struct TenantReport {
    r: Arc<Report>,
    /// The documents' URL without the extension.
    base: String,
}

async fn session(ctx: &Context<'_>, id: Id) -> Result<Option<View<Session>>> {
    Ok(Ctx::new(ctx)?.find::<Session>(id).await?.map(View))
}

/// Whether computers complied at the report's end.
#[derive(SimpleObject)]
pub struct ReportCompliance {
    /// Compliant computers.
    pub compliant: i64,
    /// Computers that were not.
    pub non_compliant: i64,
    /// Computers no finished session speaks for (never maintained, or cancelled only).
    pub unknown: i64,
    /// All the tenant's computers enrolled before the report's end.
    pub total: i64,
}

/// How many of the month's sessions ended one way.
#[derive(SimpleObject)]
pub struct ReportOutcome {
    /// `PASSED`, `FAILED` or `CANCELLED`.
    pub status: SessionStatus,
    /// How many finished so in the month.
    pub count: i64,
}

/// One computer and its compliance at the report's end.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ReportComputer {
    #[graphql(skip)]
    pub id: Id,
    /// Its name.
    pub name: String,
    /// Its operating system.
    pub os: String,
    /// `null`: no finished session says.
    pub compliance: Option<Compliance>,
    /// When the session that says finished.
    pub as_of: Option<DateTime>,
    /// Its sessions that finished in the month.
    pub sessions: i64,
}

#[ComplexObject]
impl ReportComputer {
    /// The computer.
    async fn computer(&self, ctx: &Context<'_>) -> Result<Option<View<Computer>>> {
        Ok(Ctx::new(ctx)?.find::<Computer>(self.id).await?.map(View))
    }
}

/// A software's changes in the month (those that succeeded).
#[derive(SimpleObject)]
pub struct ReportSoftware {
    /// Its name.
    pub name: String,
    /// Installations.
    pub installed: i64,
    /// Upgrades.
    pub updated: i64,
    /// Removals.
    pub removed: i64,
    /// On how many computers.
    pub computers: i64,
    /// The versions it brought, in the order first seen.
    pub versions: Vec<String>,
}

/// A task whose set script brought computers back to compliance in the month.
#[derive(SimpleObject)]
pub struct ReportTask {
    /// Its name.
    pub name: String,
    /// How many times.
    pub remediated: i64,
    /// On how many computers.
    pub computers: i64,
}

/// A failed action (or a session that failed as a whole) and what was done about it.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ReportFailure {
    #[graphql(skip)]
    pub session_id: Id,
    #[graphql(skip)]
    pub resolved_by_id: Option<Id>,
    /// The computer's name.
    pub computer_name: String,
    /// The software or task; `null` when the session failed as a whole.
    pub item: Option<String>,
    /// When the failing session ended.
    pub at: DateTime,
    /// What went wrong.
    pub message: String,
    /// When the later session of the month that set it right ended (`null`: not within the
    /// month).
    pub resolved_at: Option<DateTime>,
}

#[ComplexObject]
impl ReportFailure {
    /// The session that failed.
    async fn session(&self, ctx: &Context<'_>) -> Result<Option<View<Session>>> {
        session(ctx, self.session_id).await
    }
    /// The later session of the month in which the same deployment ended compliant (or, for a
    /// session that failed as a whole, the next that passed).
    async fn resolved_by(&self, ctx: &Context<'_>) -> Result<Option<View<Session>>> {
        match self.resolved_by_id {
            Some(id) => session(ctx, id).await,
            None => Ok(None),
        }
    }
}

/// A session of the month that was postponed.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ReportPostpone {
    #[graphql(skip)]
    pub session_id: Id,
    /// The computer's name.
    pub computer_name: String,
    /// Postpones the end user made through the e-mail's link.
    pub by_end_user: i64,
    /// Postpones by anyone.
    pub total: i64,
    /// When the session ended.
    pub finished_at: DateTime,
    /// How it ended.
    pub status: SessionStatus,
}

#[ComplexObject]
impl ReportPostpone {
    /// The session.
    async fn session(&self, ctx: &Context<'_>) -> Result<Option<View<Session>>> {
        session(ctx, self.session_id).await
    }
}

/// A session of the month whose record the server signed.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ReportAttestation {
    #[graphql(skip)]
    pub session_id: Id,
    /// The computer's name.
    pub computer_name: String,
    /// When the session ended.
    pub finished_at: DateTime,
    /// How it ended.
    pub status: SessionStatus,
    /// The signed head of its event chain (hex).
    pub chain_head: String,
    /// The key that signed it (base64url).
    pub public_key: String,
}

#[ComplexObject]
impl ReportAttestation {
    /// The session.
    async fn session(&self, ctx: &Context<'_>) -> Result<Option<View<Session>>> {
        session(ctx, self.session_id).await
    }
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What maintenance did to one tenant's computers in one calendar month of the tenant's time
/// zone: the same report as the PDF and HTML documents at `pdfUrl` and `htmlUrl`. Lists are
/// cut at 5 000 lines (newest first); the totals beside them count everything.
#[Object]
impl TenantReport {
    /// The tenant.
    async fn tenant(&self) -> View<Tenant> {
        View(self.r.tenant.clone())
    }
    /// The month, "2026-11".
    async fn month(&self) -> String {
        self.r.report.month.to_string()
    }
    /// The month's first instant (local midnight in the tenant's time zone).
    async fn from(&self) -> DateTime {
        DateTime(self.r.report.from)
    }
    /// The month's end, or the time of the report while the month lasts.
    async fn to(&self) -> DateTime {
        DateTime(self.r.report.to)
    }
    /// False while the month lasts: the figures are those so far.
    async fn complete(&self) -> bool {
        self.r.report.complete
    }
    /// When the report was made.
    async fn generated_at(&self) -> DateTime {
        DateTime(self.r.generated_at)
    }
    /// The report as PDF (`GET`, signed in as for GraphQL).
    async fn pdf_url(&self) -> String {
        format!("{}.pdf", self.base)
    }
    /// The report as a standalone HTML page.
    async fn html_url(&self) -> String {
        format!("{}.html", self.base)
    }
    /// Compliance at the report's end.
    async fn compliance(&self) -> ReportCompliance {
        let c = self.r.report.compliance;
        ReportCompliance {
            compliant: n(c.compliant),
            non_compliant: n(c.non_compliant),
            unknown: n(c.unknown),
            total: n(c.total()),
        }
    }
    /// The computers, those that need attention first.
    async fn computers(&self) -> Vec<ReportComputer> {
        self.r
            .report
            .computers
            .iter()
            .map(|c| ReportComputer {
                id: c.computer_id,
                name: c.name.clone(),
                os: c.os.clone(),
                compliance: c.compliance.map(Into::into),
                as_of: c.as_of.map(DateTime),
                sessions: n(c.sessions),
            })
            .collect()
    }
    /// The month's sessions by outcome.
    async fn sessions_by_outcome(&self) -> Vec<ReportOutcome> {
        self.r
            .report
            .outcomes
            .iter()
            .map(|(s, c)| ReportOutcome {
                status: (*s).into(),
                count: n(*c),
            })
            .collect()
    }
    /// Software installed, updated or removed, by name.
    async fn software(&self) -> Vec<ReportSoftware> {
        self.r
            .report
            .software
            .iter()
            .map(|s| ReportSoftware {
                name: s.name.clone(),
                installed: n(s.installed),
                updated: n(s.updated),
                removed: n(s.removed),
                computers: n(s.computers),
                versions: s.versions.clone(),
            })
            .collect()
    }
    /// Tasks that remediated computers, by name.
    async fn tasks(&self) -> Vec<ReportTask> {
        self.r
            .report
            .tasks
            .iter()
            .map(|t| ReportTask {
                name: t.name.clone(),
                remediated: n(t.remediated),
                computers: n(t.computers),
            })
            .collect()
    }
    /// Failures, newest first, with what was done about them.
    async fn failures(&self) -> Vec<ReportFailure> {
        self.r
            .report
            .failures
            .iter()
            .map(|f| ReportFailure {
                session_id: f.session_id,
                resolved_by_id: f.resolved_by.map(|(id, _)| id),
                computer_name: f.computer_name.clone(),
                item: f.item.clone(),
                at: DateTime(f.at),
                message: f.message.clone(),
                resolved_at: f.resolved_by.map(|(_, at)| DateTime(at)),
            })
            .collect()
    }
    /// How many failures the month had (the list may be cut).
    async fn failures_total(&self) -> i64 {
        n(self.r.report.failures_total)
    }
    /// Postponed sessions, newest first.
    async fn postpones(&self) -> Vec<ReportPostpone> {
        self.r
            .report
            .postpones
            .iter()
            .map(|p| ReportPostpone {
                session_id: p.session_id,
                computer_name: p.computer_name.clone(),
                by_end_user: n(p.by_end_user),
                total: n(p.total),
                finished_at: DateTime(p.finished_at),
                status: p.status.into(),
            })
            .collect()
    }
    /// Postpones end users made through their e-mail links in the month.
    async fn postpones_by_end_users(&self) -> i64 {
        n(self.r.report.postpones_by_end_users)
    }
    /// The month's signed session records, newest first.
    async fn attestations(&self) -> Vec<ReportAttestation> {
        self.r
            .report
            .attestations
            .iter()
            .map(|a| ReportAttestation {
                session_id: a.session_id,
                computer_name: a.computer_name.clone(),
                finished_at: DateTime(a.finished_at),
                status: a.status.into(),
                chain_head: a.chain_head.clone(),
                public_key: a.public_key.clone(),
            })
            .collect()
    }
    /// How many of the month's sessions have a signed record (the list may be cut).
    async fn attestations_total(&self) -> i64 {
        n(self.r.report.attestations_total)
    }
    /// The public keys that signed the month's records.
    async fn signing_keys(&self) -> Vec<String> {
        self.r.report.signing_keys.clone()
    }
}
