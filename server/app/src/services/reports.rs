//! Monthly tenant reports (`tenantReport`, `GET /api/v1/tenants/{id}/reports/{yyyy-mm}.pdf` and
//! `.html`): reads the tenant's computers, its sessions that finished before the month's end
//! (newest first, back to [`LOOKBACK_DAYS`] before the month's start) and the month's
//! attestations, and asks `upkeep_core::report` what they say. Writes nothing.
//!
//! A report reads a month of a tenant's sessions: at most `--max-concurrent-reports` build at
//! once ([`App::reports`]), and a caller that waits longer than 30 s is told to retry
//! (`THROTTLED`).

use crate::error::{ApiError, ApiResult};
use crate::services::App;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use tokio::sync::SemaphorePermit;
use upkeep_core::attest::Attestation;
use upkeep_core::domain::{Computer, Id, Tenant, Time};
use upkeep_core::report::{LOOKBACK_DAYS, Month, ReportInput, SessionFacts, TenantReport};
use upkeep_core::session::Session;
use upkeep_store::IndexKey;
use upkeep_store::records::{COMPUTER_SESSIONS, TENANT_COMPUTERS, TENANT_SESSIONS};

/// A tenant's month, with what the documents show beside it.
pub struct Report {
    pub tenant: Tenant,
    pub report: TenantReport,
    pub generated_at: Time,
    pub zone: chrono_tz::Tz,
}

/// Most sessions read back through one computer's history for its compliance at the report's
/// end, when none of its sessions were in the month's window.
const PER_COMPUTER_READS: usize = 200;

impl App {
    /// The report of `tenant` for `month` ("2026-11"): `BAD_USER_INPUT` on `month` for a
    /// malformed month, one before the tenant's or one that has not begun, in the tenant's
    /// time zone. The permit it holds is the caller's until the documents are drawn.
    pub async fn tenant_report(
        &self,
        tenant: Tenant,
        month: &str,
    ) -> ApiResult<(Report, SemaphorePermit<'_>)> {
        let month: Month = month
            .parse()
            .map_err(|e: upkeep_core::report::MonthError| ApiError::bad("month", e.to_string()))?;
        let zone = App::tenant_zone(&tenant);
        let now = self.clock.now();
        let (from, end) = month.bounds(zone);
        if from > now {
            return Err(ApiError::bad(
                "month",
                format!("{} has not begun", month.title()),
            ));
        }
        let created = Month::of(tenant.created_at, zone);
        if month < created {
            return Err(ApiError::bad(
                "month",
                format!("the tenant was created in {}", created.title()),
            ));
        }
        let permit = self.reports.acquire().await?;
        let to = end.min(now);
        let computers: Vec<Computer> = self
            .store
            .by_index::<Computer>(&IndexKey::new(TENANT_COMPUTERS, tenant.id.as_bytes()), None)
            .try_collect()
            .await?;
        let mut sessions = self.finished_sessions(&tenant, from, to).await?;
        self.last_before(&computers, &mut sessions, to).await?;
        let mut attestations = HashMap::new();
        for s in sessions.iter().filter(|s| s.finished_at >= Some(from)) {
            if let Some(a) = self.store.get::<Attestation>(&s.id).await? {
                attestations.insert(s.id, a);
            }
        }
        let report = tokio::task::spawn_blocking(move || {
            upkeep_core::report::build(&ReportInput {
                month,
                tz: zone,
                now,
                computers: &computers,
                sessions: &sessions,
                attestations: &attestations,
            })
        })
        .await
        .map_err(ApiError::internal)?;
        let r = Report {
            tenant,
            report,
            generated_at: now,
            zone,
        };
        Ok((r, permit))
    }

    /// The tenant's sessions that finished before `to`, created at most [`LOOKBACK_DAYS`]
    /// before `from`: newest first through the tenant's index (keys order by creation), kept
    /// as the few facts a report needs.
    async fn finished_sessions(
        &self,
        tenant: &Tenant,
        from: Time,
        to: Time,
    ) -> ApiResult<Vec<SessionFacts>> {
        let floor = from - chrono::Duration::days(LOOKBACK_DAYS);
        let index = IndexKey::new(TENANT_SESSIONS, tenant.id.as_bytes());
        let mut stream = std::pin::pin!(self.store.by_index_rev::<Session>(&index, None));
        let mut out = Vec::new();
        while let Some(s) = stream.try_next().await? {
            if s.created_at < floor {
                break;
            }
            if s.status.is_terminal() && s.finished_at.is_some_and(|f| f < to) {
                out.push(SessionFacts::of(&s));
            }
        }
        Ok(out)
    }

    /// For each computer none of whose `sessions` says its compliance at `to`: its last session
    /// that finished before `to` and was not cancelled, read back through its own history (at
    /// most [`PER_COMPUTER_READS`] sessions).
    async fn last_before(
        &self,
        computers: &[Computer],
        sessions: &mut Vec<SessionFacts>,
        to: Time,
    ) -> ApiResult<()> {
        let says = |s: &SessionFacts| {
            s.status != upkeep_core::session::SessionStatus::Cancelled && s.compliance.is_some()
        };
        let known: HashSet<Id> = sessions
            .iter()
            .filter(|s| says(s))
            .map(|s| s.computer_id)
            .collect();
        let seen: HashSet<Id> = sessions.iter().map(|s| s.id).collect();
        for c in computers.iter().filter(|c| !known.contains(&c.id)) {
            let index = IndexKey::new(COMPUTER_SESSIONS, c.id.as_bytes());
            let mut stream = std::pin::pin!(
                self.store
                    .by_index_rev::<Session>(&index, None)
                    .take(PER_COMPUTER_READS)
            );
            while let Some(s) = stream.try_next().await? {
                let facts = SessionFacts::of(&s);
                if s.status.is_terminal() && s.finished_at.is_some_and(|f| f < to) && says(&facts) {
                    if !seen.contains(&s.id) {
                        sessions.push(facts);
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}
