//! The runtime applies the engine's effects: it persists each step (session, events, jobs,
//! mails) in one store transaction, flushes, and only then hands jobs to agents, publishes
//! events and wakes the mailer. Per-session locks serialise steps of one session; sessions of
//! different computers step in parallel. No task per idle session: waiting sessions are a
//! timer entry and an index entry.
//!
//! Architecture invariant: every state change is persisted and flushed before it is
//! published, mailed or acknowledged — `commit` writes a step's session, events, jobs, mails,
//! deliveries and output in one transaction, awaits `Store::flush`, and only then calls
//! `after_commit` (broadcast, job queues, wake-ups).

mod group_mail;
pub mod mailer;
mod reboot;
mod shared;
mod start;

pub use reboot::RebootNow;
use shared::StepError;
pub(crate) use start::task_snapshot;
pub use start::{Busy, StartGuard, StartRequest};

use crate::error::{ApiError, ApiResult};
use crate::services::App;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upkeep_core::domain::*;
use upkeep_core::engine::{self, Effect, Env, Event};
use upkeep_core::queue::Board;
use upkeep_core::session::*;
use upkeep_store::records::ACTIVE_SESSIONS;
use upkeep_store::{Encoded, IndexKey, TxError};

const LOCK_STRIPES: usize = 256;
/// How many times a step is planned again after other replicas moved its session first.
const STEP_ATTEMPTS: usize = 8;

pub struct SessionRuntime {
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Slots, the queue, timers and held reboots: the rules are `upkeep_core::queue::Board`.
    board: Mutex<Board>,
    /// Serialises session creation so "one unfinished session per computer" holds.
    pub(crate) create_lock: tokio::sync::Mutex<()>,
    idempotency_lock: tokio::sync::Mutex<()>,
    mail_locks: group_mail::MailLocks,
    /// The decoded plans of sessions being stepped: a step reads and decodes only the hot
    /// record of its session.
    pub(crate) plans: upkeep_store::PlanCache,
    /// Cluster mode: replicas share the store, so a step checks the session's revision, the
    /// running slots and the computer's start marker in its transaction (`shared.rs`).
    shared: bool,
    max_running: usize,
}

impl SessionRuntime {
    pub fn new(max_running: usize) -> SessionRuntime {
        SessionRuntime {
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            board: Mutex::new(Board::new(max_running)),
            create_lock: tokio::sync::Mutex::new(()),
            idempotency_lock: tokio::sync::Mutex::new(()),
            mail_locks: group_mail::MailLocks::default(),
            plans: upkeep_store::PlanCache::default(),
            shared: false,
            max_running,
        }
    }

    /// Cluster mode: steps and starts guard themselves in the shared store (see `shared`).
    pub fn share(&mut self) {
        self.shared = true;
    }

    fn lock_for(&self, id: Id) -> &tokio::sync::Mutex<()> {
        let b = id.as_bytes();
        let h = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        &self.locks[(h % LOCK_STRIPES as u64) as usize]
    }

    fn st(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialises idempotent starts, so two concurrent calls with one key start one set.
    /// Holds off session starts: a delete of a computer or tenant checks for unfinished
    /// sessions and removes under it, and a start reads its computer again under it.
    pub async fn hold_session_starts(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.create_lock.lock().await
    }

    pub async fn create_lock_for_idempotency(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.idempotency_lock.lock().await
    }

    pub fn active_session_of(&self, computer: Id) -> Option<Id> {
        self.st().active_session_of(computer)
    }

    pub fn active_count(&self) -> usize {
        self.st().active_count()
    }

    pub fn running_count(&self) -> usize {
        self.st().running_count()
    }

    pub fn queued_count(&self) -> usize {
        self.st().queued_count()
    }

    fn try_slot(&self, id: Id) -> bool {
        self.st().try_slot(id)
    }

    /// Records the session's new state; returns the queued session to tick because a slot is
    /// free (see `Board::note`).
    fn note(&self, s: &Session) -> Option<Id> {
        self.st().note(s)
    }

    /// A session as stored, whoever stored it: like `note`, and one in a slot-holding stage
    /// holds a slot here too (cluster mode: the board then counts every replica's sessions).
    fn learn(&self, s: &Session) -> Option<Id> {
        self.st().recover(s)
    }

    fn stepping(&self, id: Id) {
        self.st().stepping(id);
    }

    fn due_timers(&self, now: Time) -> Vec<Id> {
        self.st().due_timers(now)
    }
}

impl App {
    /// Loads every unfinished session into the in-memory indexes, re-queues its open jobs,
    /// and ticks it: after a crash or restart each continues where it stood.
    pub async fn recover_sessions(self: &Arc<Self>) -> anyhow::Result<usize> {
        let idx = IndexKey::new(ACTIVE_SESSIONS, []);
        let mut ids = Vec::new();
        let mut sessions = std::pin::pin!(self.store.by_index::<Session>(&idx, None));
        while let Some(s) = sessions.next().await {
            let s = s?;
            self.runtime.st().recover(&s);
            ids.push(s.id);
        }
        let t = std::time::Instant::now();
        self.agents.requeue_open_jobs(&self.store).await?;
        tracing::info!(
            sessions = ids.len(),
            open_jobs_ms = t.elapsed().as_millis() as u64,
            "sessions and open jobs recovered"
        );
        // Held reboots wait for the end of business hours: their timers may come back a few
        // seconds after the server serves (a million computers are read for them, ~3 s).
        tokio::spawn(self.clone().recover_held_reboots_in_background());
        for id in &ids {
            self.tick(*id).await;
        }
        Ok(ids.len())
    }

    /// Applies `event` to session `id`: engine step, persist, flush, then publish. Returns the
    /// new session. Engine refusals come back as API errors.
    ///
    /// In cluster mode a step is stored only if no other replica stored one since it read the
    /// session (`shared::Guard`): a stale tick is dropped (the other replica's step was that
    /// tick), any other event is planned again from the stored session, [`STEP_ATTEMPTS`]
    /// times at most; a step that found every running slot taken is planned again without one.
    pub async fn apply(self: &Arc<Self>, id: Id, event: Event) -> ApiResult<Session> {
        let _guard = self.runtime.lock_for(id).lock().await;
        let mut no_slot = false;
        for _ in 0..STEP_ATTEMPTS {
            let r = self.step_once(id, event.clone(), no_slot).await;
            tracing::debug!(replica = %self.replica_tag(), session = %id, event = ?std::mem::discriminant(&event), ok = ?r.as_ref().ok().map(|s| (s.status, &s.stage, s.revision, s.wake_at, s.offline_since)), err = ?r.as_ref().err(), "step");
            match r {
                Ok(s) => return Ok(s),
                Err(StepError::Api(e)) => return Err(e),
                Err(StepError::NoSlot) => no_slot = true,
                Err(StepError::Stale) => {
                    self.metrics
                        .session_steps_stale
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if matches!(event, Event::Tick) {
                        return self
                            .store
                            .get::<Session>(&id)
                            .await?
                            .ok_or_else(|| ApiError::not_found("maintenance session", id));
                    }
                }
            }
        }
        tracing::warn!(session = %id, "a session step kept conflicting with other replicas");
        Err(ApiError::Conflict(format!(
            "maintenance session {id} kept changing on other replicas; try again"
        )))
    }

    /// One attempt of [`App::apply`], under the session's lock. `no_slot`: a running slot was
    /// not to be had in the shared store, so the engine is told none is free.
    // long: one engine step from reading the session to publishing it, with every way out
    // giving back what the step reserved; splitting it would scatter that bookkeeping.
    async fn step_once(
        self: &Arc<Self>,
        id: Id,
        event: Event,
        no_slot: bool,
    ) -> Result<Session, StepError> {
        self.runtime.stepping(id);
        let Some(mut s) = self
            .store
            .get_session_cached(&id, &self.runtime.plans)
            .await?
        else {
            return Err(ApiError::not_found("maintenance session", id).into());
        };
        let guard = self.runtime.shared.then(|| shared::Guard::of(&s));
        let unchanged = guard.as_ref().map(|_| Encoded::new(&s)).transpose()?;
        let before_status = s.status;
        let decided_before = [
            group_mail::decided(&s, upkeep_core::mail::MailKind::Before),
            group_mail::decided(&s, upkeep_core::mail::MailKind::After),
        ];
        let settle = match &event {
            Event::JobDone { job, .. } | Event::JobLost { job, .. } => Some(*job),
            _ => None,
        };
        let slot_needed =
            !s.status.is_terminal() && matches!(s.stage, Stage::AwaitDetect | Stage::AwaitExecute);
        let reboot_held_until = self.reboot_hold(&s).await?;
        let (reboot_pending, last_boot_at) = self.reboot_facts(&s).await?;
        let versions_cache = self.versions_cache(&s).await?;
        // From here on a reserved slot must be given back on every way out (`note`).
        let env = Env {
            now: self.clock.now(),
            online: self.agents.is_online(s.computer_id),
            slot_available: if slot_needed {
                !no_slot && self.runtime.try_slot(id)
            } else {
                true
            },
            reboot_held_until,
            reboot_pending,
            agent_reboot_pending: self.agents.reboot_pending(s.computer_id),
            last_boot_at,
            versions_cache,
            limits: self.config.limits(),
            ids: crate::ids::source(),
        };
        let effects = match engine::step(&mut s, &env, event) {
            Ok(e) => e,
            Err(e) => {
                // Give back a slot reserved for a step that did not happen.
                let _ = self.runtime.note(&s);
                return Err(ApiError::Refused(e).into());
            }
        };
        if effects.is_empty() && s.status == before_status && settle.is_none() {
            // Nothing happened (a tick while waiting); keep the wake time current.
            // Persisted without a flush: nothing was acknowledged or published. In cluster
            // mode a session that did not change at all is not written (nor announced).
            let same = match &unchanged {
                Some(before) => before.same_bytes(&Encoded::new(&s)?),
                None => false,
            };
            if !same {
                if let Some(g) = &guard {
                    s.revision = g.next();
                }
                let r = self
                    .store
                    .write(|tx| {
                        if let Some(g) = &guard {
                            g.check(tx, &s, self.runtime.max_running)?;
                        }
                        tx.put(&s)?;
                        Ok::<_, TxError<StepError>>(())
                    })
                    .await;
                if let Err(e) = r {
                    self.renote_stored(id).await;
                    return Err(e.into());
                }
                self.announce_session(s.id);
            }
            let wake = self.runtime.note(&s);
            self.spawn_tick(wake.filter(|w| !(no_slot && *w == id)));
            return Ok(s);
        }
        let committed = match self
            .commit(
                &mut s,
                &effects,
                before_status,
                settle,
                decided_before,
                guard,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.renote_stored(id).await;
                return Err(e);
            }
        };
        let wake = self.runtime.note(&s);
        self.after_commit(&s, committed);
        self.spawn_tick(wake.filter(|w| !(no_slot && *w == id)));
        Ok(s)
    }

    /// What a step needs to know about reboots on the session's computer: whether a held one
    /// is pending (read only while executing), and when the computer last started (read only
    /// while waiting for it to come back from a reboot).
    async fn reboot_facts(&self, s: &Session) -> ApiResult<(bool, Option<Time>)> {
        let held = s.stage == Stage::Executing
            && self
                .store
                .get::<Computer>(&s.computer_id)
                .await?
                .is_some_and(|c| c.held_reboot.is_some());
        let last_boot_at = match s.stage {
            Stage::PreReboot { .. } => self
                .store
                .get::<upkeep_core::inventory::InventoryRecord>(&s.computer_id)
                .await?
                .and_then(|i| i.last_boot_at),
            _ => None,
        };
        Ok((held, last_boot_at))
    }

    /// What the versions scripts of the session's software last printed: read only while the
    /// session detects (the engine asks for it when it sends the probes and when it plans).
    async fn versions_cache(
        &self,
        s: &Session,
    ) -> ApiResult<std::collections::BTreeMap<Id, upkeep_core::versions::VersionsCache>> {
        let mut out = std::collections::BTreeMap::new();
        if !matches!(s.stage, Stage::AwaitDetect | Stage::Detecting) {
            return Ok(out);
        }
        for item in &s.items {
            if let ItemWhat::Software { software, .. } = &item.what
                && software.versions_script.is_some()
                && let Some(c) = self
                    .store
                    .get_by_key::<upkeep_core::versions::VersionsCache>(
                        &upkeep_store::records::versions_key(s.tenant_id, software.id),
                    )
                    .await?
            {
                out.insert(software.id, c);
            }
        }
        Ok(out)
    }

    /// After a failed step: the in-memory indexes go back to what the store holds (giving back
    /// a slot reserved for the step), and the session is woken again later.
    async fn renote_stored(self: &Arc<Self>, id: Id) {
        if let Ok(Some(stored)) = self.store.get::<Session>(&id).await {
            // In cluster mode the stored session may hold a slot another replica claimed.
            let wake = if self.runtime.shared {
                self.runtime.learn(&stored)
            } else {
                self.runtime.note(&stored)
            };
            self.spawn_tick(wake);
        }
    }

    /// Cluster mode: tells the other replicas that session `id` changed. Call only after the
    /// change was stored.
    fn announce_session(&self, id: Id) {
        if let Some(bus) = &self.cluster {
            bus.send(crate::services::cluster::Note::Session { id });
        }
    }

    /// Cluster mode: another replica stored a change of session `id`. The board learns it from
    /// the store (slot, queue, timer, computer): every replica knows every unfinished session,
    /// so its timers fire and a freed slot wakes the queue's head wherever the note lands, and
    /// a session of a replica that died goes on. A session waiting for its computer is ticked
    /// at once by a replica whose agent gateway sees that computer online.
    pub async fn session_changed_elsewhere(self: &Arc<Self>, id: Id) {
        let stored = {
            // Under the session's lock: a step of this replica notes after storing, so the
            // board never goes back to an older state.
            let _guard = self.runtime.lock_for(id).lock().await;
            match self.store.get::<Session>(&id).await {
                Ok(Some(s)) => {
                    let wake = self.runtime.learn(&s);
                    tracing::debug!(replica = %self.replica_tag(), session = %id, revision = s.revision, wake = ?wake, "session changed elsewhere");
                    self.spawn_tick(wake);
                    s
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot read a session another replica changed");
                    return;
                }
            }
        };
        if !stored.status.is_terminal()
            && !stored.queued
            && stored.offline_since.is_some()
            && self.agents.is_online(stored.computer_id)
        {
            self.spawn_tick(Some(id));
        }
    }

    fn spawn_tick(self: &Arc<Self>, wake: Option<Id>) {
        if let Some(w) = wake {
            let app = self.clone();
            tokio::spawn(async move { app.tick(w).await });
        }
    }

    /// `apply(Tick)`, logging instead of returning errors (background callers).
    pub async fn tick(self: &Arc<Self>, id: Id) {
        if let Err(e) = self.apply(id, Event::Tick).await {
            tracing::warn!(session = %id, error = %e, "session tick failed");
        }
    }

    /// Persists the session with everything its effects create, in one transaction.
    async fn commit(
        self: &Arc<Self>,
        s: &mut Session,
        effects: &[Effect],
        before: SessionStatus,
        settle: Option<Id>,
        decided_before: [bool; 2],
        guard: Option<shared::Guard>,
    ) -> Result<Committed, StepError> {
        let now = self.clock.now();
        let mut c = Committed::default();
        c.abandoned.extend(settle);
        c.answered = settle;
        let mut notes = Vec::new();
        // Held until this step is stored (see `group_mails`).
        let _group_guard = self
            .group_mails(s, effects, decided_before, &mut c, &mut notes)
            .await;
        self.collect_effects(s, effects, now, &mut c, &mut notes)
            .await;
        for n in notes {
            c.events.push(new_event(s, now, s.status, None, Some(n)));
        }
        if c.finished || s.status != before {
            // The event that announced the new status (the first one carrying it).
            let sequence = c
                .events
                .iter()
                .find(|e| e.status == s.status && e.action_id.is_none())
                .map_or(s.last_sequence, |e| e.sequence);
            c.deliveries = self
                .webhooks
                .for_step(s, before, c.finished, sequence)
                .await?;
        }
        for e in effects {
            if let Effect::Dispatch {
                kind: upkeep_agent_protocol::JobKind::Prompt { message },
                ..
            } = e
            {
                c.deliveries
                    .extend(self.webhooks.reboot_prompted(s, message).await?);
            }
        }
        if let Some(g) = &guard {
            s.revision = g.next();
        }
        self.write_step(s, &c, now, guard.as_ref()).await?;
        Ok(c)
    }

    /// A grouped session's mails are the group's (`group_mail.rs`): decided once per kind,
    /// under the group's lock, which the caller holds until this step is stored.
    async fn group_mails(
        &self,
        s: &Session,
        effects: &[Effect],
        decided_before: [bool; 2],
        c: &mut Committed,
        notes: &mut Vec<String>,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let kinds = [
            upkeep_core::mail::MailKind::Before,
            upkeep_core::mail::MailKind::After,
        ];
        let grouped = !s.mail_siblings.is_empty();
        let group_kinds: Vec<upkeep_core::mail::MailKind> = kinds
            .into_iter()
            .zip(decided_before)
            .filter(|(k, was)| {
                grouped
                    && ((group_mail::decided(s, *k) && !was) || effects.contains(&Effect::Mail(*k)))
            })
            .map(|(k, _)| k)
            .collect();
        let guard = if group_kinds.is_empty() {
            None
        } else {
            Some(self.runtime.mail_lock(s).lock().await)
        };
        for kind in &group_kinds {
            let word = mail_word(*kind);
            match self.group_mail(s, *kind).await {
                Ok(group_mail::GroupMail::Send { mail, computers }) => {
                    notes.push(if computers > 1 {
                        format!(
                            "{word} mail queued for {} (one mail about {computers} computers)",
                            mail.to.join(", ")
                        )
                    } else {
                        format!("{word} mail queued for {}", mail.to.join(", "))
                    });
                    c.mails.push(*mail);
                }
                Ok(group_mail::GroupMail::Wait) => {
                    if effects.contains(&Effect::Mail(*kind)) {
                        notes.push(format!(
                            "{word} mail waits for the other computers of the same person"
                        ));
                    }
                }
                Ok(group_mail::GroupMail::Nothing(Some(why))) => {
                    notes.push(format!("{word} mail not sent: {why}"))
                }
                Ok(group_mail::GroupMail::Nothing(None)) => {}
                Err(e) => notes.push(format!("{word} mail not sent: {e}")),
            }
        }
        guard
    }

    /// Turns the engine's effects into the records this step writes (jobs, events, mails,
    /// output) and the jobs it gives up.
    async fn collect_effects(
        &self,
        s: &mut Session,
        effects: &[Effect],
        now: Time,
        c: &mut Committed,
        notes: &mut Vec<String>,
    ) {
        let grouped = !s.mail_siblings.is_empty();
        for e in effects {
            match e {
                Effect::Dispatch {
                    job,
                    kind,
                    lease_seconds,
                } => c.jobs.push(JobRecord {
                    id: *job,
                    session_id: s.id,
                    computer_id: s.computer_id,
                    job: kind.clone(),
                    lease_seconds: *lease_seconds,
                    created_at: now,
                    state: JobState::Queued,
                    attempts: 0,
                }),
                Effect::Abandon { job } => c.abandoned.push(*job),
                Effect::Emit {
                    action,
                    log,
                    status,
                } => {
                    c.events
                        .push(new_event(s, now, *status, *action, log.clone()));
                }
                Effect::Mail(_) if grouped => {} // the group's mail, above
                Effect::Mail(kind) => match self.compose_session_mail(s, *kind).await {
                    Ok(Ok(m)) => {
                        notes.push(format!(
                            "{} mail queued for {}",
                            mail_word(*kind),
                            m.to.join(", ")
                        ));
                        c.mails.push(m);
                    }
                    Ok(Err(why)) => {
                        notes.push(format!("{} mail not sent: {why}", mail_word(*kind)))
                    }
                    Err(e) => notes.push(format!("{} mail not sent: {e}", mail_word(*kind))),
                },
                Effect::Finished => c.finished = true,
                Effect::VersionsFound { software, versions } => {
                    c.versions.push(upkeep_core::versions::VersionsCache {
                        tenant_id: s.tenant_id,
                        software_id: *software,
                        versions: versions.clone(),
                        fetched_at: now,
                    })
                }
                Effect::Detected(found) => c.detections.extend(detections(s, found, now)),
                Effect::Output { action, output } => {
                    if let Some(a) = s.actions.get(*action) {
                        c.outputs.push(upkeep_core::output::OutputRecord {
                            session_id: s.id,
                            tenant_id: s.tenant_id,
                            action: u32::try_from(*action).unwrap_or(u32::MAX),
                            action_id: a.id,
                            at: now,
                            output: output.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Writes the step in one transaction and flushes.
    // long: one transaction's worth of records, each kind a line or two, with the cluster
    // checks that must run inside it first; splitting it would split the transaction's story.
    async fn write_step(
        &self,
        s: &Session,
        c: &Committed,
        now: Time,
        guard: Option<&shared::Guard>,
    ) -> Result<(), StepError> {
        let s_ref = s;
        let cref = c;
        // Encoded before the transaction (see `store::Encoded`). The settled jobs are read here
        // too: only a step of this session, which holds its lock, changes them.
        let session = Encoded::new(s_ref)?;
        let events = encode_all(&c.events)?;
        let jobs = encode_all(&c.jobs)?;
        let mut settled = Vec::new();
        for id in &c.abandoned {
            if let Some(mut j) = self.store.get::<JobRecord>(id).await?
                && !matches!(j.state, JobState::Done { .. })
            {
                j.state = JobState::Done { at: now };
                settled.push(Encoded::new(&j)?);
            }
        }
        // Cluster mode: another replica may have applied the same answer (a result posted to
        // two replicas, a lease ended while the result came in). Checked inside the
        // transaction, so of two such steps one commits and the other changes nothing.
        let answered = cref.answered.filter(|_| self.cluster.is_some());
        let attestation = match c.finished {
            true => self.attest(s, &c.events, now).await?,
            false => None,
        };
        self.store
            .write(|tx| {
                if let Some(job) = answered
                    && tx
                        .get::<JobRecord, StepError>(&job)?
                        .is_some_and(|j| matches!(j.state, JobState::Done { .. }))
                {
                    return Err(TxError::Abort(StepError::Api(ApiError::Conflict(format!(
                        "job {job} was answered already"
                    )))));
                }
                if let Some(g) = guard {
                    g.check(tx, s_ref, self.runtime.max_running)?;
                }
                tx.put_encoded(&session)?;
                if let Some(a) = &attestation {
                    tx.put(a)?;
                }
                for e in &events {
                    tx.put_encoded(e)?;
                }
                for e in &jobs {
                    tx.put_encoded(e)?;
                }
                for j in &settled {
                    tx.put_encoded(j)?;
                }
                for m in &cref.mails {
                    tx.put(m)?;
                }
                for o in &cref.outputs {
                    tx.put(o)?;
                }
                for d in &cref.deliveries {
                    tx.put(d)?;
                }
                for v in &cref.versions {
                    tx.put(v)?;
                }
                for d in &cref.detections {
                    tx.put(d)?;
                }
                if cref.finished
                    && let Some(mut comp) = tx.get::<Computer, StepError>(&s_ref.computer_id)?
                {
                    s_ref.finish_on(&mut comp);
                    tx.put(&comp)?;
                }
                Ok::<_, TxError<StepError>>(())
            })
            .await?;
        self.store.flush().await?;
        Ok(())
    }

    /// The signed chain of a session that ends in this step: its stored events and this step's.
    /// Only a step of this session (which holds its lock) adds events, so reading them before
    /// the step's transaction is reading what the transaction extends.
    async fn attest(
        &self,
        s: &Session,
        new: &[SessionEvent],
        now: Time,
    ) -> ApiResult<Option<upkeep_core::attest::Attestation>> {
        use futures_util::TryStreamExt as _;
        let mut events: Vec<SessionEvent> = self.events_after(s.id, 0).try_collect().await?;
        events.extend(new.iter().cloned());
        match self.attestation.attest(s.id, s.tenant_id, &events, now) {
            Ok(a) => Ok(Some(a)),
            Err(e) => {
                tracing::error!(session = %s.id, error = %e, "the session's events do not form a chain; not signed");
                Ok(None)
            }
        }
    }

    fn after_commit(&self, s: &Session, c: Committed) {
        tracing::debug!(replica = %self.replica_tag(), session = %s.id, jobs = ?c.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), abandoned = ?c.abandoned, "step committed");
        for id in &c.abandoned {
            self.agents.forget_job(*id);
        }
        for j in &c.jobs {
            self.offer_job(j);
        }
        for e in c.events {
            self.publish_event(e);
        }
        self.announce_session(s.id);
        if !c.mails.is_empty() {
            self.outbox.wake();
        }
        if !c.deliveries.is_empty() {
            self.webhooks.wake();
        }
        if c.finished
            && s.status != SessionStatus::Cancelled
            && let Some(due) = s.reboot_held_until
        {
            self.runtime.note_held_reboot(s.computer_id, due);
        }
        if c.finished
            && let Some(r) = s.rollout
        {
            self.rollouts.poke(r.id);
        }
        if c.finished {
            self.runtime.plans.forget(s.id);
            self.metrics
                .sessions_finished
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(session = %s.id, computer = %s.computer_id, status = upkeep_core::engine::status_name(s.status), reason = s.status_reason.as_deref().unwrap_or(""), "session finished");
        }
    }

    /// When a reboot may not start now, the instant it may (the end of the tenant's business
    /// hours).
    async fn reboot_hold(&self, s: &Session) -> ApiResult<Option<Time>> {
        if s.options.allow_reboot_during_business_hours
            || !matches!(s.stage, Stage::RebootHeld | Stage::Executing)
        {
            return Ok(None);
        }
        let Some(t) = self.store.get::<Tenant>(&s.tenant_id).await? else {
            return Ok(None);
        };
        let Some(bh) = &t.business_hours else {
            return Ok(None);
        };
        let tz = Self::business_zone(&t)?;
        Ok(upkeep_core::calendar::business_hours_end(
            bh,
            tz,
            self.clock.now(),
        ))
    }

    /// Background loop: ticks sessions whose timers are due (every second, and at once when a
    /// test moves the clock).
    pub async fn run_timers(self: Arc<Self>) {
        let mut moved = self.clock.subscribe_moves();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = moved.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
            for id in self.runtime.due_timers(self.clock.now()) {
                self.tick(id).await;
            }
            self.send_due_reboots().await;
        }
    }

    /// Called by the agent gateway for a poll that brought the computer back (`logged`: say
    /// so), or that said something new about a pending reboot: its session looks again.
    pub fn computer_came_online(self: &Arc<Self>, computer: Id, logged: bool) {
        if logged {
            tracing::debug!(computer = %computer, "computer online");
        }
        self.spawn_tick(self.runtime.active_session_of(computer));
    }

    /// Cancels a session (CONTRACT: a running step finishes; the rest is CANCELLED).
    pub async fn cancel_session(self: &Arc<Self>, id: Id, by: &str) -> ApiResult<Session> {
        self.apply(id, Event::Cancel { by: by.to_string() }).await
    }
}

fn encode_all<T: upkeep_store::Record>(
    records: &[T],
) -> Result<Vec<Encoded<T>>, upkeep_store::StoreError> {
    records.iter().map(Encoded::new).collect()
}

fn new_event(
    s: &mut Session,
    now: Time,
    status: SessionStatus,
    action: Option<(Id, ActionStatus)>,
    log: Option<String>,
) -> SessionEvent {
    s.last_sequence += 1;
    SessionEvent {
        session_id: s.id,
        tenant_id: s.tenant_id,
        sequence: s.last_sequence,
        at: now,
        status,
        action_id: action.map(|a| a.0),
        action_status: action.map(|a| a.1),
        log_line: log,
    }
}

fn mail_word(k: upkeep_core::mail::MailKind) -> &'static str {
    match k {
        upkeep_core::mail::MailKind::Before => "Before-maintenance",
        upkeep_core::mail::MailKind::After => "After-maintenance",
        upkeep_core::mail::MailKind::Test => "Test",
    }
}

/// The computer's last detections from what a step's detection found (failed ones left out).
fn detections(
    s: &Session,
    found: &[(Subject, upkeep_core::engine::plan::Found)],
    now: Time,
) -> Vec<upkeep_core::impact::Detection> {
    found
        .iter()
        .filter_map(|(subject, f)| {
            upkeep_core::impact::Detection::of(s.tenant_id, s.computer_id, s.id, now, *subject, f)
        })
        .collect()
}

#[derive(Default)]
struct Committed {
    jobs: Vec<JobRecord>,
    abandoned: Vec<Id>,
    /// The job whose answer (result or loss) this step applies.
    answered: Option<Id>,
    events: Vec<SessionEvent>,
    mails: Vec<upkeep_core::mail::OutboxMail>,
    deliveries: Vec<upkeep_core::webhook::Delivery>,
    outputs: Vec<upkeep_core::output::OutputRecord>,
    /// What versions scripts printed in this step, for the cache.
    versions: Vec<upkeep_core::versions::VersionsCache>,
    /// What detection found in this step: the computer's last detections.
    detections: Vec<upkeep_core::impact::Detection>,
    finished: bool,
}
