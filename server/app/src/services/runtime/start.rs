//! Starting sessions: which deployments a session covers, frozen into plan items.

use crate::error::{ApiError, ApiResult};
use crate::services::App;
use futures_util::StreamExt;
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_core::types::{Stored, TimeZone};
use upkeep_store::records::IdempotencyRecord;
use upkeep_store::{Tx, TxError};

/// A check and change that must commit in the same transaction as a call's first sessions, or
/// the call starts nothing: a schedule occurrence's cursor move (`services::scheduler`), so
/// that of several replicas firing one occurrence, one starts its sessions.
pub type StartGuard<'a> = dyn Fn(&mut Tx<'_>) -> Result<(), TxError<ApiError>> + Send + Sync + 'a;

/// Everything a new session is made from (the API, schedules and onboarding all come here).
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub computer: Computer,
    pub trigger: SessionTrigger,
    pub detection_only: bool,
    pub execute_at: Option<Time>,
    pub window_end: Option<Time>,
    pub deployment_ids: Option<Vec<Id>>,
    pub options: MaintenanceOptions,
    pub schedule_id: Option<Id>,
    pub created_by: String,
    /// The rollout wave starting it (`services::rollouts`).
    pub rollout: Option<RolloutRef>,
}

impl App {
    /// The plan items for a session: enabled deployments matching the computer, filtered by
    /// enforcement (`ONBOARDING` only in onboarding sessions, `AD_HOC` only when named), resolved
    /// per software or task, exceptions dropped, in run order.
    pub async fn plan_items(
        &self,
        computer: &Computer,
        trigger: SessionTrigger,
        named: Option<&[Id]>,
    ) -> ApiResult<Vec<PlanItem>> {
        let all = self.catalogue_deployments_for(computer.tenant_id).await?;
        let applicable: Vec<Deployment> = all
            .into_iter()
            .filter(|d| upkeep_core::engine::plan::applies(d, trigger, named))
            .collect();
        // The planner is pure: read what it may ask for first.
        let mut software = std::collections::HashMap::new();
        let mut tasks = std::collections::HashMap::new();
        for d in &applicable {
            if let Some(sid) = d.software_id
                && !software.contains_key(&sid)
            {
                let snapshot = match self.store.get::<Software>(&sid).await? {
                    Some(sw) => Some(self.software_snapshot(sw).await?),
                    None => None,
                };
                software.insert(sid, snapshot);
            }
            if let Some(tid) = d.maintenance_task_id
                && !tasks.contains_key(&tid)
            {
                let task = self.store.get::<MaintenanceTask>(&tid).await?;
                tasks.insert(tid, task.map(task_snapshot));
            }
        }
        self.load_prerequisites(&mut software).await?;
        let mut items = upkeep_core::engine::plan::freeze_items(
            computer,
            &applicable,
            |sid| Ok::<_, ApiError>(software.get(&sid).cloned().flatten()),
            |tid| Ok(tasks.get(&tid).cloned().flatten()),
        )?;
        // A secret that does not open (the key file was replaced) fails its item now, named,
        // rather than reach a script empty.
        for item in items.iter_mut().filter(|i| i.invalid.is_none()) {
            if let Err(e) = self.secrets.open_parameters(&item.parameters) {
                item.invalid = Some(e.to_string());
            }
        }
        Ok(items)
    }

    /// Adds the snapshots of every prerequisite the loaded software needs, transitively (the
    /// planner is pure and asks only for what was read; `MAX_PREREQUISITES` bounds a chain).
    pub(crate) async fn load_prerequisites(
        &self,
        software: &mut std::collections::HashMap<Id, Option<SoftwareSnapshot>>,
    ) -> ApiResult<()> {
        let mut todo: Vec<Id> = software
            .values()
            .flatten()
            .flat_map(|s| s.depends_on.iter().copied())
            .collect();
        let mut loaded = 0;
        while let Some(id) = todo.pop() {
            if software.contains_key(&id) {
                continue;
            }
            loaded += 1;
            if loaded > 4 * upkeep_core::engine::plan::MAX_PREREQUISITES {
                break;
            }
            let snapshot = match self.store.get::<Software>(&id).await? {
                Some(sw) => Some(self.software_snapshot(sw).await?),
                None => None,
            };
            if let Some(s) = &snapshot {
                todo.extend(s.depends_on.iter().copied());
            }
            software.insert(id, snapshot);
        }
        Ok(())
    }

    pub(crate) async fn software_snapshot(&self, sw: Software) -> ApiResult<SoftwareSnapshot> {
        let configuration_task = match sw.configuration_task_id {
            Some(t) => self
                .store
                .get::<MaintenanceTask>(&t)
                .await?
                .map(task_snapshot),
            None => None,
        };
        Ok(SoftwareSnapshot {
            id: sw.id,
            name: sw.name,
            detection_script: sw.detection_script,
            versions: sw.versions,
            uninstall_script: sw.uninstall_script,
            configuration_task,
            versions_script: sw.versions_script,
            versions_cache_minutes: sw.versions_cache_minutes,
            install_script: sw.install_script,
            upgrade_script: sw.upgrade_script,
            depends_on: sw.depends_on,
            versions_note: None,
        })
    }

    /// Creates a session and takes its first step. `CONFLICT` when the computer already has an
    /// unfinished one.
    pub async fn start_session(self: &Arc<Self>, req: StartRequest) -> ApiResult<Session> {
        let mut started = self.start_sessions(vec![req], Busy::Fail, None).await?;
        started
            .pop()
            .ok_or_else(|| ApiError::internal("no session was started"))
    }

    /// Creates sessions for several computers and takes their first steps.
    ///
    /// The sessions, their `created` events and the idempotency record (when `idempotency`,
    /// a scoped key and the request's hash, is given) are written in one transaction per [`START_CHUNK`] sessions and flushed once
    /// before anything is published; the first steps then run side by side, so their flushes
    /// share fsyncs. A computer that already has an unfinished session (or appears twice)
    /// fails the whole call with `CONFLICT` before anything is written (`Busy::Fail`), or is
    /// left out (`Busy::Skip`, for schedules).
    pub async fn start_sessions(
        self: &Arc<Self>,
        reqs: Vec<StartRequest>,
        busy: Busy,
        idempotency: Option<(String, String)>,
    ) -> ApiResult<Vec<Session>> {
        self.start_sessions_guarded(reqs, busy, idempotency, None)
            .await
    }

    /// [`App::start_sessions`], with `guard` applied in the transaction that writes the first
    /// sessions (also when there are none): when it aborts, nothing is written or started and
    /// its error is returned.
    pub async fn start_sessions_guarded(
        self: &Arc<Self>,
        reqs: Vec<StartRequest>,
        busy: Busy,
        idempotency: Option<(String, String)>,
        guard: Option<&StartGuard<'_>>,
    ) -> ApiResult<Vec<Session>> {
        let mut planned = Vec::with_capacity(reqs.len());
        for req in reqs {
            let items = self
                .plan_items(&req.computer, req.trigger, req.deployment_ids.as_deref())
                .await?;
            planned.push((req, items));
        }
        let now = self.clock.now();
        let zones = self
            .tenant_zones(planned.iter().map(|(req, _)| &req.computer))
            .await?;
        let sessions = {
            let _g = self.runtime.create_lock.lock().await;
            let mut seen = std::collections::HashSet::new();
            let mut new = Vec::with_capacity(planned.len());
            let mut people: Vec<(Id, Option<Id>)> = Vec::with_capacity(planned.len());
            for (req, items) in planned {
                if self.skip_busy(&req.computer, &mut seen, busy).await? {
                    continue;
                }
                let (zone, tenant_checks) = zones
                    .get(&req.computer.tenant_id)
                    .cloned()
                    .unwrap_or_else(|| (TimeZone::UTC.into(), vec![]));
                let checks = self.preflight_of(tenant_checks, req.schedule_id, req.detection_only);
                let person = req.computer.primary_person_id;
                let (mut s, created) = new_session(req, items, now);
                (s.time_zone, s.preflight) = (zone, checks.await?);
                people.push((s.id, person));
                let deliveries = self.webhooks.created(&s).await?;
                new.push((s, created, deliveries));
            }
            link_mail_siblings(&mut new, &people);
            self.write_starts_unless_busy(&mut new, idempotency.as_ref(), busy, now, guard)
                .await?;
            self.store.flush().await?;
            let mut webhooks = false;
            let mut sessions = Vec::with_capacity(new.len());
            for (s, created, deliveries) in new {
                self.runtime.note(&s);
                self.publish_event(created);
                webhooks |= !deliveries.is_empty();
                sessions.push(s);
            }
            if webhooks {
                self.webhooks.wake();
            }
            sessions
        };
        let stepped = futures_util::stream::iter(sessions)
            .map(|s| async move {
                let id = s.id;
                match self.apply(id, upkeep_core::engine::Event::Tick).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "first step failed");
                        s
                    }
                }
            })
            .buffered(FIRST_STEPS_AT_ONCE)
            .collect()
            .await;
        Ok(stepped)
    }

    /// Whether to leave `computer` out of this call because it is busy (`Busy::Skip`); with
    /// `Busy::Fail`, a busy computer fails the whole call.
    async fn skip_busy(
        &self,
        computer: &Computer,
        seen: &mut std::collections::HashSet<Id>,
        busy: Busy,
    ) -> ApiResult<bool> {
        // Read again under the start lock, which a delete holds too: a computer deleted since
        // the caller read it gets no session.
        if self.store.get::<Computer>(&computer.id).await?.is_none() {
            return match busy {
                Busy::Fail => Err(ApiError::not_found("computer", computer.id)),
                Busy::Skip => Ok(true),
            };
        }
        let Some(msg) = self.busy(computer, seen).await else {
            return Ok(false);
        };
        match busy {
            Busy::Fail => Err(ApiError::Conflict(msg)),
            Busy::Skip => {
                tracing::info!(computer = %computer.id, "session not started: {msg}");
                Ok(true)
            }
        }
    }

    /// Why `computer` cannot get a new session in this call: it has an unfinished one, or the
    /// call names it twice (`seen` holds the computers already taken).
    async fn busy(
        &self,
        computer: &Computer,
        seen: &mut std::collections::HashSet<Id>,
    ) -> Option<String> {
        if let Some(a) = self.unfinished_session_of(computer.id).await {
            return Some(format!(
                "computer {} already has an unfinished maintenance session {a}",
                computer.name
            ));
        }
        (!seen.insert(computer.id)).then(|| format!("computer {} is named twice", computer.name))
    }

    /// Each tenant's time zone, read once per start call (sessions keep it for their texts).
    /// Per tenant of `computers`: its time zone and its preflight checks.
    async fn tenant_zones<'c>(
        &self,
        computers: impl Iterator<Item = &'c Computer>,
    ) -> ApiResult<std::collections::HashMap<Id, TenantFacts>> {
        let mut zones = std::collections::HashMap::new();
        for computer in computers {
            if let std::collections::hash_map::Entry::Vacant(e) = zones.entry(computer.tenant_id) {
                let facts = self
                    .store
                    .get::<Tenant>(&computer.tenant_id)
                    .await?
                    .map(|t| (t.time_zone, t.preflight_scripts))
                    .unwrap_or_else(|| (TimeZone::UTC.into(), vec![]));
                e.insert(facts);
            }
        }
        Ok(zones)
    }

    /// A session's preflight checks, frozen at its start: the server's (`--preflight-script`),
    /// then the tenant's, then its schedule's. A detection-only session changes nothing and
    /// runs none.
    async fn preflight_of(
        &self,
        tenant: Vec<Script>,
        schedule: Option<Id>,
        detection_only: bool,
    ) -> ApiResult<Vec<Script>> {
        if detection_only {
            return Ok(vec![]);
        }
        let mut all = self.config.preflight_scripts.clone();
        all.extend(tenant);
        if let Some(id) = schedule
            && let Some(s) = self.store.get::<Schedule>(&id).await?
        {
            all.extend(s.preflight_scripts);
        }
        Ok(all)
    }

    /// Writes the call's sessions ([`App::write_starts`]). In cluster mode a computer another
    /// replica started a session on meanwhile fails the call (`Busy::Fail`) or is left out and
    /// the rest written again (`Busy::Skip`).
    async fn write_starts_unless_busy(
        &self,
        new: &mut Vec<(Session, SessionEvent, Vec<upkeep_core::webhook::Delivery>)>,
        idempotency: Option<&(String, String)>,
        busy: Busy,
        now: Time,
        guard: Option<&StartGuard<'_>>,
    ) -> ApiResult<()> {
        loop {
            let record = idempotency.map(|(key, request_hash)| IdempotencyRecord {
                key: key.clone(),
                created_at: now,
                session_ids: new.iter().map(|(s, _, _)| s.id).collect(),
                request_hash: Some(request_hash.clone()),
            });
            match self.write_starts(new, record.as_ref(), guard).await {
                Ok(()) => return Ok(()),
                Err(StartAbort::Api(e)) => return Err(e),
                Err(StartAbort::Busy(computers)) => match busy {
                    Busy::Fail => {
                        return Err(ApiError::Conflict(format!(
                            "computer {} already has an unfinished maintenance session",
                            computers[0]
                        )));
                    }
                    Busy::Skip => {
                        tracing::info!(computers = ?computers, "sessions not started: their computers have unfinished sessions");
                        new.retain(|(s, _, _)| !computers.contains(&s.computer_id));
                    }
                },
            }
        }
    }

    /// Writes a call's new sessions, their `created` events and deliveries, and the idempotency
    /// record, in transactions of [`START_CHUNK`] sessions; `guard` goes with the first.
    async fn write_starts(
        &self,
        new: &[(Session, SessionEvent, Vec<upkeep_core::webhook::Delivery>)],
        record: Option<&IdempotencyRecord>,
        guard: Option<&StartGuard<'_>>,
    ) -> Result<(), StartAbort> {
        // No sessions still writes the idempotency record (a call that started nothing).
        let chunks: Vec<&[_]> = if new.is_empty() {
            vec![&[]]
        } else {
            new.chunks(START_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            // The idempotency record lands with the last sessions it names: a retry after a
            // crash either finds it (and every session) or starts afresh.
            let record = if i == last { record } else { None };
            let guard = if i == 0 { guard } else { None };
            self.store
                .write(|tx| {
                    if let Some(guard) = guard {
                        guard(tx).map_err(|e| match e {
                            TxError::Abort(a) => TxError::Abort(StartAbort::Api(a)),
                            TxError::Store(e) => TxError::Store(e),
                            TxError::Conflict => TxError::Conflict,
                        })?;
                    }
                    if self.runtime.shared {
                        // One unfinished session per computer across replicas.
                        let mut busy = Vec::new();
                        for (s, _, _) in chunk {
                            if !super::shared::claim_computer(tx, s)? {
                                busy.push(s.computer_id);
                            }
                        }
                        if !busy.is_empty() {
                            return Err(TxError::Abort(StartAbort::Busy(busy)));
                        }
                    }
                    for (s, created, deliveries) in chunk {
                        tx.put(s)?;
                        tx.put(created)?;
                        for d in deliveries {
                            tx.put(d)?;
                        }
                    }
                    if let Some(r) = record {
                        tx.put(r)?;
                    }
                    Ok::<_, TxError<StartAbort>>(())
                })
                .await
                .map_err(|e| match e {
                    upkeep_store::WriteError::Abort(a) => a,
                    upkeep_store::WriteError::Store(e) => StartAbort::Api(e.into()),
                })?;
        }
        Ok(())
    }
}

impl App {
    /// The computer's unfinished session. The in-memory index is updated just after a step is
    /// stored, so a session a caller has already seen finish may still be listed for a moment:
    /// the stored status decides (a rerun right after `PASSED` is not a `CONFLICT`).
    pub async fn unfinished_session_of(&self, computer: Id) -> Option<Id> {
        let id = self.runtime.active_session_of(computer)?;
        match self.store.get::<Session>(&id).await {
            Ok(Some(s)) if s.status.is_terminal() => None,
            _ => Some(id),
        }
    }
}

/// Sessions of one start call (or schedule occurrence) whose computers share a primary person
/// know each other: that person gets one mail per run and execution time, listing each
/// computer (the recipient is checked again when mailing).
fn link_mail_siblings<A, B>(new: &mut [(Session, A, B)], people: &[(Id, Option<Id>)]) {
    let people: std::collections::HashMap<Id, Option<Id>> = people.iter().copied().collect();
    let person_of = |sid: Id| people.get(&sid).copied().flatten();
    let mut by_person: std::collections::HashMap<Id, Vec<Id>> = std::collections::HashMap::new();
    for (s, _, _) in new.iter() {
        if let Some(p) = person_of(s.id) {
            by_person.entry(p).or_default().push(s.id);
        }
    }
    for (s, _, _) in new.iter_mut() {
        if let Some(ids) = person_of(s.id).and_then(|p| by_person.get(&p))
            && ids.len() > 1
        {
            s.mail_siblings = ids.iter().copied().filter(|id| *id != s.id).collect();
        }
    }
}

/// A tenant's time zone and preflight checks, as a session starts with them.
type TenantFacts = (Stored<TimeZone>, Vec<Script>);

/// Why a start transaction did not commit.
enum StartAbort {
    Api(ApiError),
    /// Cluster mode: these computers' start markers name unfinished sessions.
    Busy(Vec<Id>),
}

/// What [`App::start_sessions`] does with a computer that already has an unfinished session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Fail,
    Skip,
}

/// Sessions written per transaction when many start at once.
const START_CHUNK: usize = 500;
/// First steps taken side by side when many sessions start at once.
const FIRST_STEPS_AT_ONCE: usize = 64;

/// A new session for `req` and its first event.
fn new_session(req: StartRequest, items: Vec<PlanItem>, now: Time) -> (Session, SessionEvent) {
    let s = Session {
        id: crate::ids::fresh(),
        tenant_id: req.computer.tenant_id,
        computer_id: req.computer.id,
        schedule_id: req.schedule_id,
        status: SessionStatus::Pending,
        status_reason: None,
        trigger: req.trigger,
        detection_only: req.detection_only,
        options: req.options,
        created_by: req.created_by,
        created_at: now,
        started_at: None,
        finished_at: None,
        execute_at: req.execute_at,
        window_end: req.window_end,
        postpone_count: 0,
        end_user_postpones: 0,
        reboot_required: false,
        rebooted_at: None,
        compliance: None,
        items,
        actions: vec![],
        stage: Stage::AwaitDetect,
        pending_job: None,
        wake_at: None,
        offline_since: None,
        last_sequence: 1,
        before_mail_sent: false,
        after_mail_sent: false,
        deployment_ids: req.deployment_ids,
        queued: false,
        used_tokens: vec![],
        offline_in_window: false,
        time_zone: TimeZone::UTC.into(),
        mail_siblings: vec![],
        reboot_held_until: None,
        preflight: vec![],
        preflight_since: None,
        preflight_message: None,
        pre_rebooted_at: None,
        prompted: false,
        revision: 0,
        rollout: req.rollout,
    };
    let created = SessionEvent {
        session_id: s.id,
        tenant_id: s.tenant_id,
        sequence: 1,
        at: now,
        status: SessionStatus::Pending,
        action_id: None,
        action_status: None,
        log_line: Some(format!(
            "Session created ({}) by {} for {} with {} deployment(s)",
            s.trigger.name(),
            s.created_by,
            req.computer.name,
            s.items.len()
        )),
    };
    (s, created)
}

pub(crate) fn task_snapshot(t: MaintenanceTask) -> TaskSnapshot {
    TaskSnapshot {
        id: t.id,
        name: t.name,
        test_script: t.test_script,
        set_script: t.set_script,
        get_script: t.get_script,
        parameters: t.parameters,
    }
}
