//! Schedules: cron occurrences in a time zone, turned into sessions on time.
//!
//! For each occurrence `o` of a schedule (per tenant zone for cross-tenant schedules), the
//! scheduler starts sessions at `o - detectionLeadMinutes`: detection runs at once, the
//! before-mail follows detection, and execution waits for `o`. Execution may start only in the
//! window `[o, o + windowMinutes)`; starts are spread over its first half.
//!
//! Rules (documented in README): targets are resolved when the occurrence fires. A computer
//! whose session could not start executing inside the window (online, but the window passed —
//! e.g. the server was down) ends `CANCELLED` ("the maintenance window ended …"); an offline
//! computer follows `offlineBehavior`. The next occurrence is persisted per schedule and zone;
//! after a restart an occurrence whose window is still open fires once, older ones are skipped
//! and logged. A computer that still has an unfinished session of the same schedule has it
//! cancelled ("superseded"); one with another unfinished session is skipped and logged.

use crate::clock::Clock;
use crate::error::{ApiError, ApiResult};
use crate::services::runtime::{StartGuard, StartRequest};
use chrono::Duration;
use chrono_tz::Tz;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::session::SessionTrigger;
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey, TxError};

use upkeep_core::calendar::{self, CursorMove, Tick};
pub use upkeep_core::calendar::{OWN_ZONE, business_hours_end};

/// The zone a schedule runs in for `tenant` (see `upkeep_core::calendar::zone_for`).
pub fn zone_for(s: &Schedule, tenant: Option<&Tenant>) -> ApiResult<Tz> {
    upkeep_core::calendar::zone_for(s, tenant).map_err(|e| ApiError::bad("timeZone", e.to_string()))
}

/// What the scheduler asks of the session runtime: which session a computer has, and starting
/// and cancelling sessions. (The runtime implements it on `Arc<App>`, the composition root.)
#[async_trait::async_trait]
pub trait Sessions: Send + Sync {
    /// The computer's unfinished session, if it has one.
    fn active_session_of(&self, computer: Id) -> Option<Id>;
    async fn cancel(&self, session: Id, reason: &str) -> ApiResult<()>;
    /// Starts sessions in one batch, skipping computers that are busy; `guard` commits with the
    /// first sessions or stops the batch (see `App::start_sessions_guarded`).
    async fn start(
        &self,
        reqs: Vec<StartRequest>,
        guard: Option<&StartGuard<'_>>,
    ) -> ApiResult<Vec<upkeep_core::session::Session>>;
}

/// The scheduler service: its store handle, clock and pass lock; it reaches sessions only
/// through [`Sessions`].
pub struct Scheduler {
    store: Db,
    clock: Clock,
    /// One pass at a time (the loop, or a caller driving one): two passes reading one cursor
    /// could fire an occurrence twice.
    pass_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl Scheduler {
    pub fn new(store: Db, clock: Clock, shutdown: CancellationToken) -> Scheduler {
        Scheduler {
            store,
            clock,
            pass_lock: tokio::sync::Mutex::new(()),
            shutdown,
        }
    }

    /// Background loop: fires due occurrences (every few seconds, and at once when a test
    /// moves the clock).
    pub async fn run(self: Arc<Self>, sessions: Arc<dyn Sessions>) {
        let mut moved = self.clock.subscribe_moves();
        loop {
            if let Err(e) = self.pass(&*sessions).await {
                tracing::error!(error = %e, "scheduler pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = moved.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One pass over every enabled schedule: fires what is due. Passes never overlap.
    pub async fn pass(&self, sessions: &dyn Sessions) -> ApiResult<()> {
        let _one_at_a_time = self.pass_lock.lock().await;
        let schedules: Vec<Schedule> = self.store.scan::<Schedule>(None).try_collect::<_>().await?;
        for s in schedules.into_iter().filter(|s| s.enabled) {
            let tenants: Vec<Tenant> = match s.tenant_id {
                Some(t) => self.store.get::<Tenant>(&t).await?.into_iter().collect(),
                None => self.store.scan::<Tenant>(None).try_collect::<_>().await?,
            };
            for t in tenants {
                if exclusion(&t, None).is_some() {
                    continue;
                }
                if let Err(e) = self.schedule_tick(sessions, &s, &t).await {
                    tracing::warn!(schedule = %s.id, tenant = %t.id, error = %e, "schedule occurrence failed");
                }
            }
        }
        Ok(())
    }

    async fn schedule_tick(
        &self,
        sessions: &dyn Sessions,
        s: &Schedule,
        tenant: &Tenant,
    ) -> ApiResult<()> {
        let now = self.clock.now();
        let tz = zone_for(s, Some(tenant))?;
        let expr = s
            .cron
            .get()
            .map_err(|e| ApiError::bad("cron", e.to_string()))?;
        let key = calendar::cursor_key(s, tenant);
        // First look (for this zone): the first occurrence whose detection starts after the
        // timing was set, or after the tenant joined.
        let since = s
            .timing_since
            .unwrap_or(s.created_at)
            .max(tenant.created_at);
        let lead = Duration::minutes(i64::from(s.detection_lead_minutes));
        let window = Duration::minutes(i64::from(s.window_minutes));
        let at = |cursor| calendar::tick(expr, tz, cursor, since, lead, window, now);
        let mut cursor = s.next_fire.get(&key).copied();
        let mut tick = at(cursor);
        if let Tick::Start { first } = tick {
            // The first occurrence is remembered, then judged like any other at once.
            let first_look = CursorMove {
                key: key.clone(),
                from: None,
                to: first,
                ran: None,
            };
            if !self.move_cursor(s.id, &first_look).await? {
                return Ok(());
            }
            cursor = Some(first);
            tick = at(cursor);
        }
        let step = |to, ran| CursorMove {
            key: key.clone(),
            from: cursor,
            to,
            ran,
        };
        match tick {
            Tick::Never | Tick::Wait | Tick::Start { .. } => Ok(()),
            Tick::Missed { occurrence, next } => {
                if self.move_cursor(s.id, &step(next, None)).await? {
                    tracing::warn!(schedule = %s.id, tenant = %tenant.id, %occurrence, "occurrence missed: its window closed while the server was not running; skipped");
                }
                Ok(())
            }
            Tick::Fire { occurrence, next } => {
                let cursor = step(next, Some(now));
                match self
                    .fire_occurrence(sessions, s, tenant, occurrence, &cursor)
                    .await
                {
                    Ok(Some(started)) => {
                        tracing::info!(schedule = %s.id, tenant = %tenant.id, %occurrence, sessions = started.len(), "schedule fired");
                        Ok(())
                    }
                    Ok(None) => {
                        tracing::debug!(schedule = %s.id, tenant = %tenant.id, %occurrence, "occurrence fired by another replica");
                        Ok(())
                    }
                    Err(e) => {
                        // As on one node before: an occurrence that cannot start is skipped,
                        // not tried again on every pass through its window.
                        self.move_cursor(s.id, &cursor).await?;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Applies `m` to the stored schedule in one transaction: `false` (nothing written) when
    /// the cursor was no longer where it was read, or the schedule is gone.
    async fn move_cursor(&self, id: Id, m: &CursorMove) -> ApiResult<bool> {
        let moved = self
            .store
            .write(|tx| {
                let Some(mut s) = tx.get::<Schedule, ApiError>(&id)? else {
                    return Ok(false);
                };
                if m.apply(&mut s).is_err() {
                    return Ok(false);
                }
                tx.put(&s)?;
                Ok::<_, TxError<ApiError>>(true)
            })
            .await?;
        Ok(moved)
    }

    /// Fires occurrence `o` of `s` for `tenant` with `cursor` moved in the transaction of its
    /// first sessions. `None`: the cursor had moved (another replica fired it) and nothing
    /// started.
    async fn fire_occurrence(
        &self,
        sessions: &dyn Sessions,
        s: &Schedule,
        tenant: &Tenant,
        occurrence: Time,
        cursor: &CursorMove,
    ) -> ApiResult<Option<Vec<upkeep_core::session::Session>>> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let id = s.id;
        // Set by the guard's last run when it found the cursor moved.
        let moved = AtomicBool::new(false);
        let guard: &StartGuard<'_> = &|tx| {
            moved.store(false, Ordering::Relaxed);
            let Some(mut stored) = tx.get::<Schedule, ApiError>(&id)? else {
                return Err(TxError::Abort(ApiError::not_found("schedule", id)));
            };
            if let Err(e) = cursor.apply(&mut stored) {
                moved.store(true, Ordering::Relaxed);
                return Err(TxError::Abort(ApiError::Conflict(e.to_string())));
            }
            tx.put(&stored)
        };
        let reqs = self
            .requests(sessions, s, tenant, occurrence, "schedule")
            .await?;
        match sessions.start(reqs, Some(guard)).await {
            Ok(started) => Ok(Some(started)),
            Err(_) if moved.load(Ordering::Relaxed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts the sessions of one occurrence `o` of `s` for `tenant`'s computers. With
    /// `spread`, executions are spread over the first half of the window.
    pub async fn fire(
        &self,
        sessions: &dyn Sessions,
        s: &Schedule,
        tenant: &Tenant,
        occurrence: Time,
        by: &str,
    ) -> ApiResult<Vec<upkeep_core::session::Session>> {
        let reqs = self.requests(sessions, s, tenant, occurrence, by).await?;
        // One batch: written together, flushed once, first steps side by side.
        sessions.start(reqs, None).await
    }

    /// What one occurrence `o` of `s` starts for `tenant`'s computers (superseded sessions of
    /// earlier occurrences are cancelled here).
    async fn requests(
        &self,
        sessions: &dyn Sessions,
        s: &Schedule,
        tenant: &Tenant,
        occurrence: Time,
        by: &str,
    ) -> ApiResult<Vec<StartRequest>> {
        let now = self.clock.now();
        let window_end = occurrence + Duration::minutes(i64::from(s.window_minutes));
        let computers = self.schedule_targets(s, tenant).await?;
        let n = computers.len();
        let immediate = by != "schedule";
        // Starts are spread over the first half of the window, but a person's computers share
        // the slot of the first of them: they run together, and that person gets one mail per
        // run listing each (`runtime/group_mail.rs` groups by execution time).
        let mut slot_of_person: std::collections::HashMap<Id, usize> =
            std::collections::HashMap::new();
        let mut reqs = Vec::new();
        for (i, c) in computers.into_iter().enumerate() {
            let i = match c.primary_person_id {
                Some(p) => *slot_of_person.entry(p).or_insert(i),
                None => i,
            };
            if let Some(why) = exclusion(tenant, Some(&c)) {
                tracing::info!(schedule = %s.id, computer = %c.id, "{why}; skipped");
                continue;
            }
            if let Some(active) = sessions.active_session_of(c.id) {
                // A session of this very occurrence (another replica fired it) is not
                // superseded by it.
                let same_schedule = self
                    .store
                    .get::<upkeep_core::session::Session>(&active)
                    .await?
                    .is_some_and(|x| {
                        x.schedule_id == Some(s.id) && x.window_end != Some(window_end)
                    });
                if same_schedule && !immediate {
                    let _ = sessions
                        .cancel(active, "a newer occurrence of its schedule (superseded)")
                        .await;
                } else {
                    tracing::info!(schedule = %s.id, computer = %c.id, session = %active, "computer has an unfinished session; skipped");
                    continue;
                }
            }
            let (execute_at, window_end) = if immediate {
                (None, None)
            } else {
                let at = calendar::spread(occurrence, s.window_minutes, i, n);
                (if at > now { Some(at) } else { None }, Some(window_end))
            };
            let req = StartRequest {
                computer: c.clone(),
                trigger: SessionTrigger::Schedule,
                detection_only: s.detection_only,
                execute_at,
                window_end,
                deployment_ids: None,
                options: s.options.clone(),
                schedule_id: Some(s.id),
                created_by: format!("{by} {}", s.name),
                rollout: None,
            };
            reqs.push(req);
        }
        Ok(reqs)
    }

    /// The computers a schedule targets in `tenant`, resolved now.
    pub async fn schedule_targets(
        &self,
        s: &Schedule,
        tenant: &Tenant,
    ) -> ApiResult<Vec<Computer>> {
        let idx = match s.target.kind {
            TargetKind::Tag => IndexKey::new(
                TAG_COMPUTERS,
                tag_value(tenant.id, s.target.value.as_deref().unwrap_or("")),
            ),
            _ => IndexKey::new(TENANT_COMPUTERS, tenant.id.as_bytes()),
        };
        let mut out = Vec::new();
        let mut computers = std::pin::pin!(self.store.by_index::<Computer>(&idx, None));
        while let Some(c) = computers.next().await {
            let c = c?;
            if s.target.matches(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }
}
