//! A session is stored in two records under its id: the hot state (status, stage, sequence,
//! the actions' outcomes: a few hundred bytes to a few KB) in `sessions`, and its frozen plan
//! (the plan items with their scripts, the preflight checks, the actions' steps) in
//! `session_plans`. Every step rewrites the hot state; the plan is written when it changes —
//! at the start, and when detection plans the actions (and versions scripts fill in versions) —
//! which the hot state's `plan_digest` (SHA-256 of the stored plan, first 16 bytes, hex) tells
//! a put without reading the plan back.
//!
//! Records written before the split hold everything in `sessions` and no plan record: they
//! are read as they are (their items and steps are in the hot record), and the first put
//! after splits them (migration on write; nothing is rewritten at start).

use crate::{StoreError, codec};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_core::types::{Stored, TimeZone};

/// The plan part as stored (borrowed for encoding).
#[derive(Serialize)]
struct PlanRef<'a> {
    items: &'a [PlanItem],
    preflight: &'a [Script],
    /// Each action's steps, in action order.
    steps: Vec<&'a [Step]>,
}

/// The plan part as read.
#[derive(Deserialize, Clone)]
struct PlanOwned {
    items: Vec<PlanItem>,
    #[serde(default)]
    preflight: Vec<Script>,
    #[serde(default)]
    steps: Vec<Vec<Step>>,
}

/// The two parts of a session, encoded.
pub(crate) struct Parts {
    pub hot: Vec<u8>,
    pub plan: Vec<u8>,
    pub digest: String,
}

pub(crate) fn encode(s: &Session) -> Result<Parts, StoreError> {
    let plan = codec::encode(&PlanRef {
        items: &s.items,
        preflight: &s.preflight,
        steps: s.actions.iter().map(|a| a.steps.as_slice()).collect(),
    })?;
    let digest = part_digest(&plan);
    let hot = codec::encode(&HotSession::of(s, &digest))?;
    Ok(Parts { hot, plan, digest })
}

/// The digest a hot record names its plan by (SHA-256, first 16 bytes, hex). Readers outside a
/// transaction read the two parts one after the other; comparing this with the hot record's
/// `plan_digest` tells a pair taken from two different writes.
pub(crate) fn part_digest(plan: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(plan)[..16])
}

/// How often a reader reads a session's two parts again when a write came between them.
pub(crate) const JOIN_ATTEMPTS: usize = 8;

/// The session from its hot record and, when stored, its plan record (absent: a record
/// written before the split, whole in itself).
pub(crate) fn decode(hot: &[u8], plan: Option<&[u8]>) -> Result<Session, StoreError> {
    let mut s: Session = codec::decode(hot)?;
    if let Some(plan) = plan {
        codec::decode::<PlanOwned>(plan)?.join(&mut s)?;
    }
    Ok(s)
}

impl PlanOwned {
    fn join(self, s: &mut Session) -> Result<(), StoreError> {
        if !self.steps.is_empty() && self.steps.len() != s.actions.len() {
            return Err(StoreError::Corrupt(format!(
                "session {}: its plan has steps for {} actions, the session has {}",
                s.id,
                self.steps.len(),
                s.actions.len()
            )));
        }
        s.items = self.items;
        s.preflight = self.preflight;
        for (a, steps) in s.actions.iter_mut().zip(self.steps) {
            a.steps = steps;
        }
        Ok(())
    }
}

/// Decoded plans of the sessions a process steps, by session and plan digest, so that a step
/// reads and decodes only the hot record (`Db::get_session_cached`). A digest names one plan's
/// bytes, so an entry is never stale: a plan another process rewrote has another digest and is
/// read again.
#[derive(Default)]
pub struct PlanCache {
    plans: std::sync::Mutex<std::collections::HashMap<Id, (String, std::sync::Arc<PlanOwned>)>>,
}

/// Entries a [`PlanCache`] holds at most; past it, it starts over (active sessions come back
/// one read each).
const PLAN_CACHE_MAX: usize = 20_000;

impl PlanCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Id, (String, std::sync::Arc<PlanOwned>)>>
    {
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the session's plan (the session finished).
    pub fn forget(&self, session: Id) {
        self.lock().remove(&session);
    }

    fn get(&self, session: Id, digest: &str) -> Option<std::sync::Arc<PlanOwned>> {
        match self.lock().get(&session) {
            Some((d, p)) if d == digest => Some(p.clone()),
            _ => None,
        }
    }

    fn put(&self, session: Id, digest: String, plan: std::sync::Arc<PlanOwned>) {
        let mut plans = self.lock();
        if plans.len() >= PLAN_CACHE_MAX {
            plans.clear();
        }
        plans.insert(session, (digest, plan));
    }
}

impl dyn crate::Store {
    /// A session, as [`get`](crate::Store) reads it, with its plan taken from `cache` when the
    /// cache holds the plan the stored session names (else read, decoded and kept there).
    pub async fn get_session_cached(
        &self,
        id: &Id,
        cache: &PlanCache,
    ) -> Result<Option<Session>, StoreError> {
        use crate::{Kind, Space};
        let mut last = None;
        for _ in 0..JOIN_ATTEMPTS {
            let Some(hot) = self
                .read(Space::Records(Kind::Session), id.as_bytes())
                .await?
            else {
                return Ok(None);
            };
            let mut s: Session = codec::decode(&hot)?;
            let digest = stored_digest(&hot)?;
            if let Some(d) = &digest
                && let Some(plan) = cache.get(*id, d)
            {
                PlanOwned::clone(&plan).join(&mut s)?;
                return Ok(Some(s));
            }
            let Some(bytes) = self
                .read(Space::Records(Kind::SessionPlan), id.as_bytes())
                .await?
            else {
                // Stored before the split: whole in its hot record.
                return Ok(Some(s));
            };
            if let Some(d) = digest {
                if part_digest(&bytes) != d {
                    // A write came between the two reads: this plan is not the hot record's.
                    last = Some(d);
                    continue;
                }
                let plan: PlanOwned = codec::decode(&bytes)?;
                cache.put(*id, d, std::sync::Arc::new(plan.clone()));
                plan.join(&mut s)?;
            } else {
                codec::decode::<PlanOwned>(&bytes)?.join(&mut s)?;
            }
            return Ok(Some(s));
        }
        Err(StoreError::Corrupt(format!(
            "session {id}: its plan never matched the digest its record names ({})",
            last.unwrap_or_default()
        )))
    }
}

/// The plan digest a stored hot record names (`None`: a record from before the split).
pub(crate) fn stored_digest(hot: &[u8]) -> Result<Option<String>, StoreError> {
    #[derive(Deserialize)]
    struct Digest {
        #[serde(default)]
        plan_digest: Option<String>,
    }
    Ok(codec::decode::<Digest>(hot)?.plan_digest)
}

/// The session without its plan, borrowed field by field. The destructuring in `of` names
/// every field of `Session` and `Action`: a field added there does not compile here until it
/// is placed in the hot record or the plan.
#[derive(Serialize)]
struct HotSession<'a> {
    id: &'a Id,
    tenant_id: &'a Id,
    computer_id: &'a Id,
    schedule_id: &'a Option<Id>,
    status: &'a SessionStatus,
    status_reason: &'a Option<String>,
    trigger: &'a SessionTrigger,
    detection_only: &'a bool,
    options: &'a MaintenanceOptions,
    created_by: &'a str,
    created_at: &'a Time,
    started_at: &'a Option<Time>,
    finished_at: &'a Option<Time>,
    execute_at: &'a Option<Time>,
    window_end: &'a Option<Time>,
    postpone_count: &'a u32,
    end_user_postpones: &'a u32,
    reboot_required: &'a bool,
    rebooted_at: &'a Option<Time>,
    compliance: &'a Option<Compliance>,
    actions: Vec<HotAction<'a>>,
    stage: &'a Stage,
    pending_job: &'a Option<PendingJob>,
    wake_at: &'a Option<Time>,
    offline_since: &'a Option<Time>,
    last_sequence: &'a u64,
    before_mail_sent: &'a bool,
    after_mail_sent: &'a bool,
    deployment_ids: &'a Option<Vec<Id>>,
    used_tokens: &'a [String],
    queued: &'a bool,
    offline_in_window: &'a bool,
    time_zone: &'a Stored<TimeZone>,
    mail_siblings: &'a [Id],
    reboot_held_until: &'a Option<Time>,
    preflight_since: &'a Option<Time>,
    preflight_message: &'a Option<String>,
    pre_rebooted_at: &'a Option<Time>,
    prompted: &'a bool,
    revision: &'a u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: &'a Option<RolloutRef>,
    plan_digest: &'a str,
}

#[derive(Serialize)]
struct HotAction<'a> {
    id: &'a Id,
    item: &'a usize,
    kind: &'a ActionKind,
    status: &'a ActionStatus,
    compliance: &'a Compliance,
    desired_version: &'a Option<String>,
    detected_version: &'a Option<String>,
    detected_version_before: &'a Option<String>,
    detected_version_after: &'a Option<String>,
    result_message: &'a Option<String>,
    current_value: &'a Option<String>,
    reason: &'a str,
    started_at: &'a Option<Time>,
    finished_at: &'a Option<Time>,
    next_step: &'a usize,
    step_failed: &'a bool,
    reboot_required: &'a bool,
}

impl<'a> HotSession<'a> {
    // long: every field of `Session` named once on each side, on purpose (see the type).
    fn of(s: &'a Session, plan_digest: &'a str) -> HotSession<'a> {
        let Session {
            id,
            tenant_id,
            computer_id,
            schedule_id,
            status,
            status_reason,
            trigger,
            detection_only,
            options,
            created_by,
            created_at,
            started_at,
            finished_at,
            execute_at,
            window_end,
            postpone_count,
            end_user_postpones,
            reboot_required,
            rebooted_at,
            compliance,
            items: _,
            actions,
            stage,
            pending_job,
            wake_at,
            offline_since,
            last_sequence,
            before_mail_sent,
            after_mail_sent,
            deployment_ids,
            used_tokens,
            queued,
            offline_in_window,
            time_zone,
            mail_siblings,
            reboot_held_until,
            preflight: _,
            preflight_since,
            preflight_message,
            pre_rebooted_at,
            prompted,
            revision,
            rollout,
        } = s;
        HotSession {
            id,
            tenant_id,
            computer_id,
            schedule_id,
            status,
            status_reason,
            trigger,
            detection_only,
            options,
            created_by,
            created_at,
            started_at,
            finished_at,
            execute_at,
            window_end,
            postpone_count,
            end_user_postpones,
            reboot_required,
            rebooted_at,
            compliance,
            actions: actions.iter().map(HotAction::of).collect(),
            stage,
            pending_job,
            wake_at,
            offline_since,
            last_sequence,
            before_mail_sent,
            after_mail_sent,
            deployment_ids,
            used_tokens,
            queued,
            offline_in_window,
            time_zone,
            mail_siblings,
            reboot_held_until,
            preflight_since,
            preflight_message,
            pre_rebooted_at,
            prompted,
            revision,
            rollout,
            plan_digest,
        }
    }
}

impl<'a> HotAction<'a> {
    fn of(a: &'a Action) -> HotAction<'a> {
        let Action {
            id,
            item,
            kind,
            status,
            compliance,
            desired_version,
            detected_version,
            detected_version_before,
            detected_version_after,
            result_message,
            current_value,
            reason,
            started_at,
            finished_at,
            steps: _,
            next_step,
            step_failed,
            reboot_required,
        } = a;
        HotAction {
            id,
            item,
            kind,
            status,
            compliance,
            desired_version,
            detected_version,
            detected_version_before,
            detected_version_after,
            result_message,
            current_value,
            reason,
            started_at,
            finished_at,
            next_step,
            step_failed,
            reboot_required,
        }
    }
}
