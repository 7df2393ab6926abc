//! What the server does with what agents say: enrollment and re-enrollment, results, lost
//! jobs, presence written back, inventory and the primary person. The gateway state is
//! `services::agents`; the HTTP side is `api::agent`.

use crate::auth::{new_secret, secret_hash};
use crate::error::ApiError;
use crate::logsafe::log_value;
use crate::services::App;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upkeep_agent_protocol::{self as proto};
use upkeep_core::domain::*;
use upkeep_core::engine::Event;
use upkeep_core::inventory::InventoryRecord;
use upkeep_core::session::{JobRecord, JobState, SessionTrigger};
use upkeep_store::records::*;
use upkeep_store::{IndexKey, TxError};

use super::agents::*;
use super::cluster::Note;

/// Computers per `lastSeenAt` write-back batch.
const LAST_SEEN_BATCH: usize = 4096;
/// How long a changed `lastSeenAt` waits before it is written back: polls in between cost no
/// write (the store's value is at most this much behind; presence has the live one).
const LAST_SEEN_DELAY: Duration = Duration::from_secs(30);
/// Batches one presence tick writes at most (256 Ki computers; ~8 400 are due per tick with a
/// million agents polling once a minute).
const LAST_SEEN_BATCHES_PER_TICK: usize = 64;

/// What an agent token names (see [`App::agent_for_token`]).
pub(crate) enum TokenCheck {
    Agent(Id),
    Unknown,
    /// Cluster mode: not looked up, the budget for unknown tokens is spent (answer 429).
    Busy,
}

/// What agents report about themselves ends up in names, mails and logs: control characters
/// become spaces.
pub(crate) fn clean_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

impl App {
    /// Whether `key` is an enrollment key of some tenant (valid or not: revoked and expired
    /// keys get their own answer from [`enroll`](Self::enroll)).
    pub(crate) async fn enrollment_key_known(&self, key: &str) -> bool {
        let hash = secret_hash(key.trim());
        matches!(
            self.store
                .unique::<EnrollmentKey>(&IndexKey::new(ENROLLMENT_KEY_HASH, &hash))
                .await,
            Ok(Some(_))
        )
    }

    pub(crate) async fn enroll(
        self: &Arc<Self>,
        r: &proto::EnrollRequest,
        address: Option<std::net::IpAddr>,
    ) -> Result<proto::EnrollResponse, ApiError> {
        let now = self.clock.now();
        let key = self.usable_key(&r.enrollment_key, now).await?;
        let token = new_secret("uat_");
        let token_hash = secret_hash(&token);
        let machine = IndexKey::new(
            MACHINE_ID,
            machine_value(key.tenant_id, r.machine_id.trim()),
        );
        let existing: Option<Computer> = self.store.unique(&machine).await?;
        let is_new = existing.is_none();
        let computer = enrolled_computer(existing, &key, r, &token_hash, now);
        let event = if is_new {
            upkeep_core::webhook::WebhookEvent::ComputerEnrolled
        } else {
            upkeep_core::webhook::WebhookEvent::ComputerReenrolled
        };
        let deliveries = self
            .webhooks
            .deliveries(
                computer.tenant_id,
                event,
                serde_json::json!({"id": computer.id.to_string(), "name": computer.name, "hostname": computer.hostname, "enrollmentKeyId": key.id.to_string()}),
            ).await?;
        let audit = crate::audit::enrollment(&computer, &key, !is_new, address, now);
        let released = self
            .write_enrollment(
                &computer,
                key.id,
                &machine,
                &token_hash,
                &audit,
                &deliveries,
                now,
            )
            .await?;
        self.store.flush().await?;
        self.after_enrollment(
            &computer,
            key.id,
            is_new,
            &token_hash,
            released,
            !deliveries.is_empty(),
        )
        .await?;
        Ok(proto::EnrollResponse {
            computer_id: computer.id.to_string(),
            agent_token: token,
            poll_wait_seconds: POLL_WAIT_SECONDS,
        })
    }

    /// Writes an enrollment in one transaction: the computer (claiming its machine id and its
    /// new token, releasing the token it had), the key's use, the audit record and the webhook
    /// deliveries. Returns the token hash it released.
    #[allow(clippy::too_many_arguments)] // the parts of one write, each named
    async fn write_enrollment(
        &self,
        computer: &Computer,
        key: Id,
        machine: &IndexKey,
        token_hash: &str,
        audit: &upkeep_core::audit::AuditEvent,
        deliveries: &[upkeep_core::webhook::Delivery],
        now: Time,
    ) -> Result<Option<String>, ApiError> {
        let released = self.store.write(|tx| {
            tx.put(audit)?;
            if !tx.claim_unique(machine, &computer.key_bytes())? {
                return Err(TxError::Abort(ApiError::Conflict(
                    "another computer claimed this machine id".into(),
                )));
            }
            // Read again inside the transaction: a parallel re-enrollment (or an admin's change)
            // may have written the computer since it was read above. Its token now is the one
            // to release, and only the agent's own fields change.
            let stored: Option<Computer> = tx.get(&computer.id)?;
            let released = stored.as_ref().and_then(|c| c.agent_token_hash.clone());
            let record = match stored {
                Some(mut c) => {
                    if let Some(old) = &released {
                        tx.release_unique(&IndexKey::new(AGENT_TOKEN, old))?;
                    }
                    c.hostname = computer.hostname.clone();
                    c.os = computer.os.clone();
                    c.agent_version = computer.agent_version.clone();
                    c.agent_token_hash = Some(token_hash.to_string());
                    c.last_seen_at = Some(now);
                    c
                }
                None => computer.clone(),
            };
            tx.claim_unique(
                &IndexKey::new(AGENT_TOKEN, token_hash),
                &computer.key_bytes(),
            )?;
            tx.put(&record)?;
            let mut k: EnrollmentKey = tx.get(&key)?.ok_or_else(|| {
                TxError::Abort(ApiError::Forbidden("the enrollment key was deleted".into()))
            })?;
            // Checked again inside the transaction: two enrollments racing for the last use
            // cannot both have it.
            if k.revoked || k.max_uses.is_some_and(|m| k.uses >= m) {
                return Err(TxError::Abort(ApiError::Forbidden(
                    "the enrollment key has reached its maximum uses".into(),
                )));
            }
            k.uses += 1;
            tx.put(&k)?;
            for d in deliveries {
                tx.put(d)?;
            }
            Ok(released)
        });
        Ok(released.await?)
    }

    /// The enrollment key `raw` names, if it may enroll a computer now. Re-enrolling a known
    /// machine takes over its agent token and jobs: it needs a key that could enroll a new
    /// computer, and uses it up like one (CONTRACT §11).
    async fn usable_key(&self, raw: &str, now: Time) -> Result<EnrollmentKey, ApiError> {
        let key_hash = secret_hash(raw.trim());
        let key: Option<EnrollmentKey> = self
            .store
            .unique(&IndexKey::new(ENROLLMENT_KEY_HASH, &key_hash))
            .await?;
        let Some(key) = key else {
            return Err(ApiError::Unauthenticated("unknown enrollment key".into()));
        };
        if key.revoked {
            return Err(ApiError::Forbidden("the enrollment key was revoked".into()));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::Forbidden("the enrollment key has expired".into()));
        }
        if key.max_uses.is_some_and(|m| key.uses >= m) {
            return Err(ApiError::Forbidden(
                "the enrollment key has reached its maximum uses".into(),
            ));
        }
        Ok(key)
    }

    /// After an enrollment is stored: the gateway learns the computer's one valid token, the
    /// webhook worker wakes, the log says what happened, and a new computer of a tenant with
    /// auto-onboarding gets its onboarding session.
    async fn after_enrollment(
        self: &Arc<Self>,
        computer: &Computer,
        key: Id,
        is_new: bool,
        token_hash: &str,
        released: Option<String>,
        delivered: bool,
    ) -> Result<(), ApiError> {
        // The token the store holds now is the computer's only one (of racing re-enrollments,
        // the last written wins; the others' tokens must not work).
        let current = self
            .store
            .get::<Computer>(&computer.id)
            .await?
            .and_then(|c| c.agent_token_hash);
        let own = (current.as_deref() != Some(token_hash)).then_some(token_hash);
        self.agents
            .set_token(released.as_deref(), current.as_deref(), computer.id);
        if let Some(lost) = own {
            self.agents.set_token(Some(lost), None, computer.id);
        }
        if !is_new {
            // Other replicas may hold the token this one replaced.
            self.tell_replicas(Note::AgentToken {
                computer: computer.id,
            });
        }
        if delivered {
            self.webhooks.wake();
        }
        if is_new {
            tracing::info!(computer = %computer.id, tenant = %computer.tenant_id, hostname = %log_value(&computer.hostname), key = %key, "agent enrolled");
        } else {
            tracing::warn!(computer = %computer.id, tenant = %computer.tenant_id, hostname = %log_value(&computer.hostname), key = %key, "computer re-enrolled: its previous agent token no longer works");
        }
        if is_new {
            let tenant = self
                .store
                .get::<Tenant>(&computer.tenant_id)
                .await
                .ok()
                .flatten();
            if tenant.is_some_and(|t| {
                t.auto_onboarding && upkeep_core::exclusion::exclusion(&t, Some(computer)).is_none()
            }) {
                let app = self.clone();
                let c = computer.clone();
                tokio::spawn(async move {
                    let req = crate::services::runtime::StartRequest {
                        computer: c.clone(),
                        trigger: SessionTrigger::Onboarding,
                        detection_only: false,
                        execute_at: None,
                        window_end: None,
                        deployment_ids: None,
                        options: MaintenanceOptions::default(),
                        schedule_id: None,
                        created_by: "onboarding".into(),
                        rollout: None,
                    };
                    if let Err(e) = app.start_session(req).await {
                        tracing::warn!(computer = %c.id, error = %e, "onboarding session not started");
                    }
                });
            }
        }
        Ok(())
    }

    /// Revokes a computer's agent token: its polls answer 401 at once.
    pub async fn revoke_agent(&self, computer: Id) -> Result<(), ApiError> {
        let old = self
            .store
            .write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(None);
                };
                let old = c.agent_token_hash.take();
                if let Some(o) = &old {
                    tx.release_unique(&IndexKey::new(AGENT_TOKEN, o))?;
                }
                tx.put(&c)?;
                Ok(old)
            })
            .await?;
        self.store.flush().await?;
        self.agents.set_token(old.as_deref(), None, computer);
        self.tell_replicas(Note::AgentToken { computer });
        Ok(())
    }

    /// Background loop: expires leases, writes coalesced `lastSeenAt`, notices computers going
    /// offline.
    pub async fn run_presence(self: Arc<Self>) {
        let mut ticks = 0u64;
        // When a failed write-back was last logged: once a minute while the store refuses.
        let mut warned: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.cancelled() => {
                    if let Err(e) = self.write_last_seen(true).await {
                        tracing::warn!(error = %e, "could not write lastSeenAt at shutdown");
                    }
                    return;
                }
            }
            if self.cluster.is_some() {
                self.cluster_presence_tick(&mut ticks).await;
            } else {
                self.expire_leases();
            }
            if let Err(e) = self.write_last_seen(false).await
                && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                warned = Some(Instant::now());
                tracing::warn!(error = %e, "could not write lastSeenAt");
            }
        }
    }

    /// One node: leases that ran out end here (a probe is offered again, another job is lost).
    fn expire_leases(self: &Arc<Self>) {
        for (job, reoffered) in self.agents.expire_leases() {
            if reoffered {
                tracing::info!(job = %job, "lease ran out; probe job offered again");
                continue;
            }
            tracing::warn!(job = %job, "lease ran out; job failed");
            let app = self.clone();
            tokio::spawn(async move {
                app.job_lost(job, "the agent did not report back within the job's lease")
                    .await
            });
        }
    }

    /// One half-second of the presence loop in cluster mode: agents seen here are told to the
    /// other replicas each second (`Note::Seen`) and leases that ran out are ended from the
    /// store every 2 s (in-memory leases only go); `run_presence` writes `lastSeenAt` back.
    async fn cluster_presence_tick(self: &Arc<Self>, ticks: &mut u64) {
        *ticks += 1;
        self.agents.drop_ended_leases();
        if (*ticks).is_multiple_of(2) {
            let computers = self.agents.take_to_announce();
            if !computers.is_empty() {
                self.tell_replicas(Note::Seen { computers });
            }
        }
        if (*ticks).is_multiple_of(4) {
            self.sweep_leases().await;
        }
    }

    /// Cluster mode: ends the leases that ran out, as the store's `LEASED_JOBS` index lists
    /// them. Each is claimed in one transaction (`end_lease`), so of replicas sweeping at once
    /// one ends it: a probe is offered again (to every replica), another job is lost.
    pub async fn sweep_leases(self: &Arc<Self>) {
        // Leases end by the wall clock every replica shares, not the test clock.
        let now = chrono::Utc::now();
        let ended = match self.store.leases_ended_by(now, 256).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "leases not swept");
                return;
            }
        };
        for job in ended {
            match self.end_lease(job, now).await {
                Ok(Some((j, true))) => {
                    tracing::info!(job = %job, "lease ran out; probe job offered again");
                    self.agents.forget_job(job);
                    self.offer_job(&j);
                }
                Ok(Some((_, false))) => {
                    tracing::warn!(job = %job, "lease ran out; job failed");
                    let app = self.clone();
                    tokio::spawn(async move {
                        app.job_lost(job, "the agent did not report back within the job's lease")
                            .await
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(job = %job, error = %e, "lease not ended"),
            }
        }
    }

    /// Claims the end of `job`'s lease if it ran out by `now`: a probe with hand-outs left goes
    /// back to `Queued` (true); any other job keeps a short lease of this replica's while its
    /// loss is applied (false), which marks it done; should this replica stop first, that
    /// lease runs out too and another replica ends it. `None`: not leased, or not ended.
    async fn end_lease(&self, job: Id, now: Time) -> Result<Option<(JobRecord, bool)>, ApiError> {
        let ended = self
            .store
            .write(|tx| {
                let Some(mut j) = tx.get::<JobRecord, ApiError>(&job)? else {
                    return Ok(None);
                };
                let JobState::Leased { until, .. } = j.state else {
                    return Ok(None);
                };
                if until > now {
                    return Ok(None);
                }
                let again = matches!(j.job, proto::JobKind::Probe { .. })
                    && j.attempts < MAX_PROBE_ATTEMPTS;
                j.state = if again {
                    JobState::Queued
                } else {
                    JobState::Leased {
                        until: now + chrono::Duration::seconds(60),
                        losing: true,
                    }
                };
                tx.put(&j)?;
                Ok(Some((j, again)))
            })
            .await?;
        self.store.flush().await?;
        Ok(ended)
    }

    /// The computer an agent token names. Memory first; in cluster mode a token missing there
    /// (enrolled through another replica) is looked up in the store, unless it was found
    /// unknown a moment ago or the look-up budget is spent (`agent_tokens`).
    pub(crate) async fn agent_for_token(&self, token: &str) -> Result<TokenCheck, ApiError> {
        use crate::services::agent_tokens::Miss;
        if let Some(c) = self.agents.computer_for_token(token) {
            return Ok(TokenCheck::Agent(c));
        }
        if self.cluster.is_none() {
            // One node: memory holds every valid token.
            return Ok(TokenCheck::Unknown);
        }
        let hash = secret_hash(token);
        match self.agents.misses.on_miss(&hash, Instant::now()) {
            Miss::KnownUnknown => return Ok(TokenCheck::Unknown),
            Miss::OverBudget => return Ok(TokenCheck::Busy),
            Miss::LookUp => {}
        }
        let found: Option<Computer> = self
            .store
            .unique(&IndexKey::new(AGENT_TOKEN, &hash))
            .await?;
        match found {
            Some(c) if c.agent_token_hash.as_deref() == Some(hash.as_str()) => {
                self.agents.set_token(None, Some(&hash), c.id);
                Ok(TokenCheck::Agent(c.id))
            }
            _ => {
                self.agents.misses.found_unknown(hash, Instant::now());
                Ok(TokenCheck::Unknown)
            }
        }
    }

    /// The jobs to hand out to `computer` in answer to its poll. One node: the queue's. Cluster
    /// mode: those of the queue this replica claims in the store (`Queued` → `Leased`, one
    /// transaction), so a job queued on every replica is handed out once; the rest leave the
    /// queue. A claim that fails leaves the queue as it was (the next poll tries again).
    pub(crate) async fn hand_out(&self, computer: Id) -> Vec<proto::Job> {
        if self.cluster.is_none() {
            return self.agents.take_jobs(computer);
        }
        let queued = self.agents.queued_for(computer);
        if queued.is_empty() {
            return vec![];
        }
        let ids: Vec<(Id, Option<Time>)> = queued
            .iter()
            .filter_map(|(j, reoffer)| Some((j.id.parse().ok()?, *reoffer)))
            .collect();
        let offered: Vec<proto::Job> = queued.into_iter().map(|(j, _)| j).collect();
        match self.claim_jobs(computer, &ids).await {
            Ok(claimed) => {
                tracing::debug!(replica = %self.replica_tag(), offered = ?ids, claimed = ?claimed, "hand out");
                self.agents.lease_claimed(computer, offered, &claimed)
            }
            Err(e) => {
                tracing::warn!(computer = %computer, error = %e, "jobs not claimed; offered at the next poll");
                vec![]
            }
        }
    }

    /// Cluster mode, at the start of a poll: queues here the jobs the store holds `Queued` for
    /// `computer` that no note brought (a note is a doorbell; a late or lost one must not
    /// leave a job unseen until the replica restarts). One index read per poll.
    pub(crate) async fn queue_stored_jobs(&self, computer: Id) {
        if self.cluster.is_none() {
            return;
        }
        let idx = IndexKey::new(OPEN_JOBS, computer.as_bytes());
        let mut jobs = std::pin::pin!(self.store.by_index::<JobRecord>(&idx, None));
        while let Some(j) = jobs.next().await {
            match j {
                Ok(j) if j.state == JobState::Queued && j.computer_id == computer => {
                    if self.agents.enqueue_if_missing(&j) {
                        tracing::debug!(replica = %self.replica_tag(), job = %j.id, "a stored job no note brought was queued");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(computer = %computer, error = %e, "open jobs not read");
                    return;
                }
            }
        }
    }

    /// Cluster mode: claims the `offered` jobs still queued in the store for `computer`, and
    /// those recovered at start-up under a lease the store still holds unexpired (a replica
    /// killed between its claim and the agent reading the answer would otherwise leave the
    /// step waiting out the whole lease). Returns them with their hand-outs so far: claiming a
    /// lease again is the same hand-out offered again, not another attempt.
    async fn claim_jobs(
        &self,
        computer: Id,
        offered: &[(Id, Option<Time>)],
    ) -> Result<Vec<(Id, u32)>, ApiError> {
        // Leases end by the wall clock every replica shares, not the test clock.
        let now = chrono::Utc::now();
        let claimed = self
            .store
            .write(|tx| {
                let mut won = Vec::new();
                for (id, reoffer) in offered {
                    let Some(mut j) = tx.get::<JobRecord, ApiError>(id)? else {
                        continue;
                    };
                    let again = match j.state {
                        JobState::Queued => false,
                        JobState::Leased {
                            until,
                            losing: false,
                        } if *reoffer == Some(until) && until > now => true,
                        JobState::Leased { .. } | JobState::Done { .. } => continue,
                    };
                    if j.computer_id != computer {
                        continue;
                    }
                    j.state = JobState::Leased {
                        until: now + chrono::Duration::seconds(i64::from(j.lease_seconds)),
                        losing: false,
                    };
                    if !again {
                        j.attempts += 1;
                    }
                    tx.put(&j)?;
                    won.push((j.id, j.attempts));
                }
                Ok(won)
            })
            .await?;
        self.store.flush().await?;
        Ok(claimed)
    }

    /// Writes back the `lastSeenAt` values that changed at least [`LAST_SEEN_DELAY`] ago
    /// (every one of them with `all`, at shutdown), [`LAST_SEEN_BATCH`] computers per batch
    /// with a yield between batches. Called every half second, it writes each computer at most
    /// once per delay, as its polls come in: a million agents polling once a minute are
    /// ~8 400 entries per call, not a burst of half a million every 30 s that held up the polls
    /// behind it.
    ///
    /// A failed batch is dropped (each computer is queued again by its next poll) and ends
    /// the call with the store's error.
    async fn write_last_seen(&self, all: bool) -> Result<(), upkeep_store::StoreError> {
        let age = if all { Duration::ZERO } else { LAST_SEEN_DELAY };
        // A tick writes at most this many batches (a million at shutdown), so a slow store
        // does not hold the presence loop (leases, cluster presence) for long.
        let batches = if all {
            usize::MAX
        } else {
            LAST_SEEN_BATCHES_PER_TICK
        };
        for _ in 0..batches {
            let batch = self.agents.take_unwritten_seen(age, LAST_SEEN_BATCH);
            if batch.is_empty() {
                break;
            }
            self.store.put_last_seen(&batch).await?;
            self.agents.written_back(batch.len());
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn job_lost(self: &Arc<Self>, job: Id, reason: &str) {
        let rec = match self.store.get::<JobRecord>(&job).await {
            Ok(Some(r)) => r,
            _ => return,
        };
        if matches!(rec.state, JobState::Done { .. }) {
            return;
        }
        match self.held_reboot_result(&rec, None).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(job = %job, error = %e, "lost held reboot not applied"),
        }
        if let Err(e) = self
            .apply(
                rec.session_id,
                Event::JobLost {
                    job,
                    reason: reason.to_string(),
                },
            )
            .await
        {
            tracing::warn!(job = %job, error = %e, "lost job not applied");
        }
    }

    /// Applies an agent's result once: the job record flips to done in the same step as the
    /// session consumes it (`apply` persists both before we acknowledge).
    pub(crate) async fn job_result(
        self: &Arc<Self>,
        computer: Id,
        job: Id,
        outcome: proto::JobOutcome,
    ) -> Result<bool, ApiError> {
        let Some(rec) = self.store.get::<JobRecord>(&job).await? else {
            return Ok(false);
        };
        if rec.computer_id != computer {
            return Err(ApiError::NotFound(format!("job {job}")));
        }
        let _g = self.runtime_result_lock(job).lock().await;
        let Some(rec) = self.store.get::<JobRecord>(&job).await? else {
            return Ok(false);
        };
        if matches!(rec.state, JobState::Done { .. }) {
            self.agents.settle(job);
            return Ok(false);
        }
        self.agents.settle(job);
        self.metrics
            .job_results
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Secrets are masked at the door: neither the engine, nor the store, nor a log line
        // sees what a script printed of them. Only a job with parameters has any: the
        // session (its plan from the runtime's cache) is read for those alone.
        let shown: Vec<String> = if crate::secrets::job_has_parameters(&rec.job) {
            match self
                .store
                .get_session_cached(&rec.session_id, &self.runtime.plans)
                .await?
            {
                Some(s) => s
                    .items
                    .iter()
                    .flat_map(upkeep_core::session::PlanItem::shown_values)
                    .collect(),
                None => vec![],
            }
        } else {
            vec![]
        };
        let outcome = self.secrets.mask_outcome(&rec.job, outcome, &shown);
        if self.held_reboot_result(&rec, Some(&outcome)).await? {
            return Ok(true);
        }
        // `apply` marks the job done in the same transaction as the session's step, and
        // flushes before we acknowledge.
        let r = self
            .apply(rec.session_id, Event::JobDone { job, outcome })
            .await;
        tracing::debug!(replica = %self.replica_tag(), job = %job, ok = ?r.as_ref().map(|s| (s.status, s.revision)), err = ?r.as_ref().err(), "job result applied");
        match r {
            Ok(_) => Ok(true),
            // Cluster mode: another replica applied an answer to this job first (checked in
            // the step's transaction): this one is the repeat.
            Err(_) if self.cluster.is_some() && self.job_answered(job).await? => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn job_answered(&self, job: Id) -> Result<bool, ApiError> {
        Ok(self
            .store
            .get::<JobRecord>(&job)
            .await?
            .is_some_and(|r| matches!(r.state, JobState::Done { .. })))
    }

    fn runtime_result_lock(&self, job: Id) -> &tokio::sync::Mutex<()> {
        static LOCKS: std::sync::OnceLock<Vec<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
        let locks = LOCKS.get_or_init(|| (0..64).map(|_| tokio::sync::Mutex::new(())).collect());
        &locks[usize::from(job.as_bytes()[15]) % locks.len()]
    }

    /// Stores a changed inventory: the computer's own facts (name, OS, agent version, user)
    /// in its record when they changed, the rest in its inventory record when that changed.
    pub(crate) fn note_inventory(self: &Arc<Self>, computer: Id, inv: proto::Inventory) {
        let app = self.clone();
        tokio::spawn(async move {
            let now = app.clock.now();
            let r = app.store.write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(());
                };
                let before = (c.hostname.clone(), c.os.clone(), c.agent_version.clone());
                let user_before = c.logged_on_user.clone();
                c.hostname = clean_text(&inv.hostname);
                c.os = clean_text(&inv.os);
                c.agent_version = clean_text(&inv.agent_version);
                c.logged_on_user = inv.logged_on_user.as_deref().map(clean_text);
                if before != (c.hostname.clone(), c.os.clone(), c.agent_version.clone())
                    || user_before != c.logged_on_user
                {
                    tx.put(&c)?;
                }
                let record = InventoryRecord::from_report(computer, c.tenant_id, &inv.details, now)
                    .map_err(|e| {
                        TxError::Abort(ApiError::BadInput {
                            field: "inventory".into(),
                            message: e.to_string(),
                        })
                    })?;
                let stored: Option<InventoryRecord> = tx.get(&computer)?;
                if stored.is_none_or(|s| !s.same_facts(&record)) {
                    tx.put(&record)?;
                }
                Ok(())
            });
            if let Err(e) = r.await {
                // The next report is stored whatever it says.
                app.agents.forget_inventory(computer);
                tracing::warn!(computer = %computer, error = %e, "inventory not saved");
                return;
            }
            if let Some(user) = inv.logged_on_user.as_deref() {
                app.match_person(computer, user).await;
            }
        });
    }

    /// Gives a computer without a primary person the person whose usernames include `user`.
    async fn match_person(&self, computer: Id, user: &str) {
        let Ok(Some(c)) = self.store.get::<Computer>(&computer).await else {
            return;
        };
        if c.primary_person_id.is_some() {
            return;
        }
        let short = user.rsplit(['\\', '/']).next().unwrap_or(user);
        let idx = IndexKey::new(TENANT_PERSONS, c.tenant_id.as_bytes());
        let found = self
            .store
            .by_index::<Person>(&idx, None)
            .filter_map(|p| std::future::ready(p.ok()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .find(|p| {
                p.usernames
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(user) || u.eq_ignore_ascii_case(short))
            });
        if let Some(p) = found {
            let r = self.store.write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(());
                };
                if c.primary_person_id.is_none() {
                    c.primary_person_id = Some(p.id);
                    tx.put(&c)?;
                }
                Ok(())
            });
            if r.await.is_ok() {
                tracing::info!(computer = %computer, person = %p.id, user = %log_value(user), "primary person set from logged-on user");
            }
        }
    }
}

trait KeyBytes {
    fn key_bytes(&self) -> Vec<u8>;
}

impl KeyBytes for Computer {
    fn key_bytes(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// The computer record an enrollment writes: a known machine keeps its record and gets the
/// agent's new token and facts; a new one starts from the key's tenant, tags and person.
fn enrolled_computer(
    existing: Option<Computer>,
    key: &EnrollmentKey,
    r: &proto::EnrollRequest,
    token_hash: &str,
    now: Time,
) -> Computer {
    match existing {
        Some(mut c) => {
            c.hostname = r.hostname.clone();
            c.os = r.os.clone();
            c.agent_version = r.agent_version.clone();
            c.agent_token_hash = Some(token_hash.to_string());
            c.last_seen_at = Some(now);
            c
        }
        None => Computer {
            id: crate::ids::fresh(),
            tenant_id: key.tenant_id,
            name: r.hostname.clone(),
            hostname: r.hostname.clone(),
            machine_id: r.machine_id.trim().to_string(),
            tags: key.tags.clone(),
            primary_person_id: key.primary_person_id,
            os: r.os.clone(),
            agent_version: r.agent_version.clone(),
            last_seen_at: Some(now),
            agent_token_hash: Some(token_hash.to_string()),
            enrolled_at: now,
            excluded_from_maintenance: false,
            compliance: None,
            logged_on_user: None,
            onboarded: false,
            onboarding: None,
            held_reboot: None,
        },
    }
}
