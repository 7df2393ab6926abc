//! The session engine: a pure state machine. `step(session, env, event)` changes the session
//! and returns effects (jobs to hand out, events to publish, mails to queue); the runtime
//! persists the session and its effects in one transaction and only then publishes or sends.
//! No I/O, no clock: `now` and the facts the engine needs come in through [`Env`].

pub mod plan;

use crate::domain::*;
use crate::session::*;
use chrono::Duration;
use upkeep_agent_protocol::{self as proto, JobKind, JobOutcome, Probe};

/// Probe scripts (detection, tests) may run this long.
pub const PROBE_TIMEOUT_SECONDS: u32 = 300;
/// Change scripts (install, upgrade, uninstall, set) may run this long.
pub const STEP_TIMEOUT_SECONDS: u32 = 1800;
/// Lease slack beyond a job's own time limits (transfer, queueing on the agent).
pub const LEASE_SLACK_SECONDS: u32 = 120;
/// How long a rebooted computer may take to come back.
pub const REBOOT_RETURN_MINUTES: i64 = 30;
/// The postpone link is offered only when execution is at least this far after the mail.
pub const MIN_POSTPONE_LEAD_MINUTES: i64 = 15;

/// What the engine needs to know about the world at this step.
#[derive(Debug, Clone)]
pub struct Env {
    pub now: Time,
    /// The computer's agent is polling.
    pub online: bool,
    /// A running slot is free for this session (or it already holds one).
    pub slot_available: bool,
    /// When a reboot is not allowed now (business hours), the instant it becomes allowed.
    pub reboot_held_until: Option<Time>,
    /// An earlier session's reboot, held by business hours, is still pending on the computer:
    /// a session that executes does it (unless reboots are suppressed).
    pub reboot_pending: bool,
    pub limits: Limits,
    /// Fresh ids for jobs and actions.
    pub ids: IdSource,
}

/// Where fresh ids come from: the server mints UUIDv7s from its clock and random source; tests
/// count, so a failing case replays byte for byte.
#[derive(Clone)]
pub struct IdSource(std::sync::Arc<dyn Fn() -> Id + Send + Sync>);

impl IdSource {
    pub fn new(f: impl Fn() -> Id + Send + Sync + 'static) -> IdSource {
        IdSource(std::sync::Arc::new(f))
    }

    /// `start`, `start + 1`, … (as 128-bit numbers).
    pub fn counter(start: u128) -> IdSource {
        let next = std::sync::atomic::AtomicU64::new(0);
        IdSource::new(move || {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Id::from_u128(start + u128::from(n))
        })
    }

    pub fn next(&self) -> Id {
        (self.0)()
    }
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdSource")
    }
}

/// Script time limits and lease slack (configurable so tests can use short ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub probe_timeout_seconds: u32,
    pub step_timeout_seconds: u32,
    pub lease_slack_seconds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            probe_timeout_seconds: PROBE_TIMEOUT_SECONDS,
            step_timeout_seconds: STEP_TIMEOUT_SECONDS,
            lease_slack_seconds: LEASE_SLACK_SECONDS,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Re-evaluate: timers, agent presence, free slots. Also the first event of a new session.
    Tick,
    JobDone {
        job: Id,
        outcome: JobOutcome,
    },
    /// The agent did not report back within the lease (after the gateway's retries).
    JobLost {
        job: Id,
        reason: String,
    },
    Cancel {
        by: String,
    },
    /// `token`: the postpone link's unique id, usable once.
    Postpone {
        hours: Option<u32>,
        by: String,
        token: Option<String>,
    },
    UpdateNow {
        by: String,
        token: Option<String>,
    },
    /// A technician runs a `SCHEDULED` or `POSTPONED` session now (ImmyBot's "resume"): no
    /// end-user option applies and no postpone is used up.
    RunNow {
        by: String,
    },
    /// A piece of a running step script's output, already masked (`output::StreamMask`):
    /// logged for the action whose step `job` runs, ignored otherwise.
    Output {
        job: Id,
        stream: proto::OutputStream,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand a job to the computer's agent.
    Dispatch {
        job: Id,
        kind: JobKind,
        lease_seconds: u32,
    },
    /// The job is no longer wanted (its result will be acknowledged and ignored).
    Abandon { job: Id },
    /// Append to the session's event stream.
    Emit {
        action: Option<(Id, ActionStatus)>,
        log: Option<String>,
        status: SessionStatus,
    },
    /// Queue a session mail.
    Mail(crate::mail::MailKind),
    /// Store what action `action`'s change script said (beside the session, not in it).
    Output {
        action: usize,
        output: crate::output::ActionOutput,
    },
    /// The session reached a terminal status.
    Finished,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotAllowed(String),
}

/// Applies one event. On `Err` the session is unchanged.
pub fn step(session: &mut Session, env: &Env, event: Event) -> Result<Vec<Effect>, EngineError> {
    let mut m = Machine {
        s: session.clone(),
        env,
        out: Vec::new(),
    };
    m.handle(event)?;
    *session = m.s;
    Ok(m.out)
}

struct Machine<'a> {
    s: Session,
    env: &'a Env,
    out: Vec<Effect>,
}

impl Machine<'_> {
    fn now(&self) -> Time {
        self.env.now
    }

    /// An instant as people read it: the tenant's local time with its abbreviation.
    fn local(&self, t: Time) -> String {
        crate::localtime::in_zone(t, &self.s.time_zone, crate::localtime::short)
    }

    /// The end of a full session that ran (or found nothing to run): `FAILED` when an action
    /// failed or its detection did (named in the reason), else `PASSED`.
    fn finish_counted(&mut self, passed_reason: String) {
        let n = self.s.actions.len();
        let failed = self
            .s
            .actions
            .iter()
            .filter(|a| a.status == ActionStatus::Failed)
            .count();
        let undetected: Vec<String> = self
            .s
            .actions
            .iter()
            .filter(|a| a.status == ActionStatus::DetectionFailed)
            .map(|a| self.s.item_name(a.item).to_string())
            .collect();
        let held = self.s.reboot_held_until.map(|until| {
            format!(
                "; reboot pending, held until {}",
                crate::localtime::in_zone(until, &self.s.time_zone, crate::localtime::clock)
            )
        });
        if failed + undetected.len() == 0 {
            let reason = passed_reason + held.as_deref().unwrap_or("");
            self.finish(SessionStatus::Passed, reason);
            return;
        }
        let mut reason = format!("{} of {n} actions failed", failed + undetected.len());
        if !undetected.is_empty() {
            reason.push_str(&format!(" (detection failed: {})", undetected.join(", ")));
        }
        reason.push_str(held.as_deref().unwrap_or(""));
        self.finish(SessionStatus::Failed, reason);
    }

    /// After a step job: an action whose steps are all done is no longer RUNNING (it shows
    /// its outcome so far; verification may still fail it), and a cancel keeps that outcome.
    fn settle_action(&mut self, ai: usize) {
        let now = self.now();
        let a = &mut self.s.actions[ai];
        if a.status != ActionStatus::Running {
            return;
        }
        if a.step_failed {
            a.status = ActionStatus::Failed;
        } else if a.next_step >= a.steps.len() {
            a.status = ActionStatus::Succeeded;
        } else {
            return;
        }
        a.finished_at = Some(now);
        self.action_changed(ai, None);
    }

    fn log(&mut self, line: impl Into<String>) {
        self.out.push(Effect::Emit {
            action: None,
            log: Some(line.into()),
            status: self.s.status,
        });
    }

    fn set_status(&mut self, status: SessionStatus, reason: Option<String>) {
        if self.s.status == status && self.s.status_reason == reason {
            return;
        }
        let changed = self.s.status != status;
        self.s.status = status;
        self.s.status_reason = reason.clone();
        if changed {
            let name = status_name(status);
            let line = match &reason {
                Some(r) => format!("{name} – {r}"),
                None => name.to_string(),
            };
            self.out.push(Effect::Emit {
                action: None,
                log: Some(line),
                status,
            });
        }
    }

    fn action_changed(&mut self, i: usize, log: Option<String>) {
        let a = &self.s.actions[i];
        self.out.push(Effect::Emit {
            action: Some((a.id, a.status)),
            log,
            status: self.s.status,
        });
    }

    fn handle(&mut self, event: Event) -> Result<(), EngineError> {
        if self.s.status.is_terminal() {
            return match event {
                Event::Cancel { .. }
                | Event::Postpone { .. }
                | Event::UpdateNow { .. }
                | Event::RunNow { .. } => Err(EngineError::Conflict(format!(
                    "the session already ended {:?}",
                    self.s.status
                ))),
                // Late results and ticks of a finished session change nothing.
                _ => Ok(()),
            };
        }
        match event {
            Event::Tick => {}
            Event::JobDone { job, outcome } => {
                if let Some(p) = self.take_pending(job) {
                    self.on_result(p, outcome);
                }
            }
            Event::JobLost { job, reason } => {
                if let Some(p) = self.take_pending(job) {
                    self.on_result(p, JobOutcome::Failed { error: reason });
                }
            }
            Event::Cancel { by } => {
                self.cancel(format!("cancelled by {by}"));
                return Ok(());
            }
            Event::Output { job, stream, text } => {
                // Output changes no state: no `advance`, the wake time stays.
                self.log_output(job, stream, &text);
                return Ok(());
            }
            Event::Postpone { hours, by, token } => {
                self.use_token(token)?;
                self.postpone(hours, &by)?;
            }
            Event::UpdateNow { by, token } => {
                self.use_token(token)?;
                if self.s.stage != Stage::AwaitExecute || self.s.detection_only {
                    return Err(EngineError::Conflict(
                        "the session is not waiting to execute".into(),
                    ));
                }
                if !self.s.options.allow_update_now {
                    return Err(EngineError::NotAllowed(
                        "updating now is not allowed for this session".into(),
                    ));
                }
                self.s.execute_at = Some(self.now());
                self.s.window_end = None;
                self.log(format!("{by} asked to update now"));
            }
            Event::RunNow { by } => {
                if !matches!(
                    self.s.status,
                    SessionStatus::Scheduled | SessionStatus::Postponed
                ) || self.s.stage != Stage::AwaitExecute
                {
                    return Err(EngineError::Conflict(format!(
                        "only a SCHEDULED or POSTPONED session can run now; this one is {}",
                        status_name(self.s.status)
                    )));
                }
                self.s.execute_at = Some(self.now());
                self.s.window_end = None;
                self.log(format!("{by} started the maintenance now"));
            }
        }
        self.advance();
        Ok(())
    }

    fn log_output(&mut self, job: Id, stream: proto::OutputStream, text: &str) {
        let Some(PendingJob {
            id,
            purpose: JobPurpose::Step { action, .. },
        }) = &self.s.pending_job
        else {
            return;
        };
        if *id != job {
            return;
        }
        let Some(a) = self.s.actions.get(*action) else {
            return;
        };
        let name = self.s.item_name(a.item);
        let stream = match stream {
            proto::OutputStream::Stdout => "stdout",
            proto::OutputStream::Stderr => "stderr",
        };
        let lines: Vec<String> = crate::output::log_pieces(text)
            .into_iter()
            .map(|piece| format!("{name} [{stream}] {piece}"))
            .collect();
        for line in lines {
            self.log(line);
        }
    }

    fn use_token(&mut self, token: Option<String>) -> Result<(), EngineError> {
        if let Some(t) = token {
            if self.s.used_tokens.contains(&t) {
                return Err(EngineError::NotAllowed("this link was already used".into()));
            }
            self.s.used_tokens.push(t);
        }
        Ok(())
    }

    fn take_pending(&mut self, job: Id) -> Option<JobPurpose> {
        match &self.s.pending_job {
            Some(p) if p.id == job => {
                let purpose = p.purpose.clone();
                self.s.pending_job = None;
                Some(purpose)
            }
            _ => None,
        }
    }

    fn dispatch(&mut self, purpose: JobPurpose, kind: JobKind) {
        let job = self.env.ids.next();
        let slack = self.env.limits.lease_slack_seconds;
        let lease_seconds = match &kind {
            JobKind::Probe { probes } => {
                probes.iter().map(|p| p.script.timeout_seconds).sum::<u32>() + slack
            }
            JobKind::Step { script, .. } => script.timeout_seconds + slack,
            JobKind::Reboot {} => slack,
        };
        self.s.pending_job = Some(PendingJob { id: job, purpose });
        self.out.push(Effect::Dispatch {
            job,
            kind,
            lease_seconds,
        });
    }

    /// Moves the session as far as it can go now.
    fn advance(&mut self) {
        self.s.wake_at = None;
        if let (Stage::Verifying, Some(at)) = (&self.s.stage, self.s.rebooted_at)
            && matches!(
                self.s.pending_job,
                Some(PendingJob {
                    purpose: JobPurpose::Verify,
                    ..
                })
            )
        {
            let deadline = at + Duration::minutes(REBOOT_RETURN_MINUTES);
            if self.now() >= deadline {
                let job = self.s.pending_job.take().map(|p| p.id);
                if let Some(job) = job {
                    self.out.push(Effect::Abandon { job });
                }
                self.on_verified(JobOutcome::Failed {
                    error: format!("the computer did not come back within {REBOOT_RETURN_MINUTES} minutes after the reboot"),
                });
                return;
            }
            self.s.wake_at = Some(deadline);
        }
        loop {
            if self.s.status.is_terminal() || self.s.pending_job.is_some() {
                return;
            }
            match self.s.stage.clone() {
                Stage::AwaitDetect => {
                    if !self.ready_for_agent() {
                        return;
                    }
                    self.s.started_at.get_or_insert(self.env.now);
                    self.s.stage = Stage::Detecting;
                    self.set_status(SessionStatus::Detecting, None);
                    let probes = self.detection_probes();
                    self.log(format!(
                        "Detecting the state of {} item(s)",
                        self.s.items.len()
                    ));
                    self.dispatch(JobPurpose::Detect, JobKind::Probe { probes });
                }
                Stage::Detecting | Stage::Verifying => return, // a job is pending or results are being applied
                Stage::AwaitExecute => {
                    if let Some(at) = self.s.execute_at
                        && at > self.now()
                    {
                        if !matches!(
                            self.s.status,
                            SessionStatus::Scheduled | SessionStatus::Postponed
                        ) {
                            let when = self.local(at);
                            self.set_status(
                                SessionStatus::Scheduled,
                                Some(format!("executes at {when}")),
                            );
                        }
                        self.s.wake_at = Some(at);
                        return;
                    }
                    if let Some(end) = self.s.window_end
                        && self.now() >= end
                        && self.s.offline_since.is_none()
                    {
                        if !self.runs_after_window() {
                            self.cancel(
                                "the maintenance window ended before execution could start".into(),
                            );
                            return;
                        }
                        // The computer missed its window offline: it runs now, and says so (a
                        // before-mail of this step then announces now, not a time long past).
                        self.s.execute_at = Some(self.now());
                        self.s.window_end = None;
                        self.log(
                            "The computer was offline during the maintenance window: running now that it is back",
                        );
                    }
                    if !self.ready_for_agent() {
                        return;
                    }
                    self.s.stage = Stage::Executing;
                    self.set_status(SessionStatus::Executing, None);
                }
                Stage::Executing => {
                    if let Some((ai, si)) = self.next_step() {
                        self.run_step(ai, si);
                        continue;
                    }
                    let wants_reboot = match self.s.options.reboot_preference {
                        RebootPreference::Force => true,
                        RebootPreference::Normal => {
                            if self.env.reboot_pending && !self.s.reboot_required {
                                self.log("A reboot held after an earlier session is still pending");
                            }
                            self.s.reboot_required || self.env.reboot_pending
                        }
                        RebootPreference::Suppress => {
                            if self.s.reboot_required {
                                self.log(
                                    "A reboot is required but suppressed by the session's options",
                                );
                            }
                            false
                        }
                    };
                    if wants_reboot && self.s.rebooted_at.is_none() {
                        self.s.stage = Stage::RebootHeld;
                        continue;
                    }
                    self.start_verify();
                }
                Stage::RebootHeld => {
                    if let Some(until) = self.env.reboot_held_until
                        && !self.s.options.allow_reboot_during_business_hours
                    {
                        // The session does not wait for the hours to end (that kept it open
                        // and the computer locked for hours): it verifies and ends, and the
                        // reboot runs as its own job at `until` (`Computer.rebootPending`).
                        self.s.reboot_held_until = Some(until);
                        self.log(format!(
                            "Reboot held until {} (business hours): it runs on its own then",
                            self.local(until)
                        ));
                        self.start_verify();
                        return;
                    }
                    if !self.env.online {
                        self.s.wake_at = None;
                        return;
                    }
                    self.s.status_reason = Some("rebooting".into());
                    self.log("Rebooting the computer");
                    self.s.stage = Stage::Rebooting {
                        sent_at: self.now(),
                    };
                    self.dispatch(JobPurpose::Reboot, JobKind::Reboot {});
                }
                Stage::Rebooting { .. } => return,
                Stage::Done => return,
            }
        }
    }

    /// True when the agent is there and a slot is free; otherwise records why the session
    /// waits (and ends it when `SKIP` ran out of grace).
    fn ready_for_agent(&mut self) -> bool {
        if !self.env.slot_available {
            if !self.s.queued {
                self.s.queued = true;
            }
            self.set_status(SessionStatus::Pending, Some("queued".into()));
            return false;
        }
        self.s.queued = false;
        if self.env.online {
            if let Some(since) = self.s.offline_since.take() {
                self.log("The computer is online");
                // Offline at some point inside the window (it began before the computer came
                // back): remembered, because the reconnect clears `offline_since` before the
                // window check runs (detection comes first).
                if self.s.execute_at.is_none_or(|start| start < self.now())
                    && self.s.window_end.is_some_and(|end| since < end)
                {
                    self.s.offline_in_window = true;
                }
            }
            return true;
        }
        let since = *self.s.offline_since.get_or_insert(self.env.now);
        match self.s.options.offline_behavior {
            OfflineBehavior::Skip => {
                // The grace counts from the start of execution, not from detection: a laptop
                // offline at a 14:00 detection still gets its 22:00 run.
                let start = self.s.execute_at.map_or(since, |at| at.max(since));
                let grace =
                    start + Duration::minutes(i64::from(self.s.options.offline_grace_minutes));
                let deadline = match self.s.window_end {
                    Some(end) if end < grace && end > since => end,
                    _ => grace,
                };
                if self.now() >= deadline {
                    let reason = if self.s.window_end == Some(deadline) {
                        "computer offline through the window".to_string()
                    } else if start > since {
                        format!(
                            "computer offline for {} minutes after the planned start",
                            self.s.options.offline_grace_minutes
                        )
                    } else {
                        format!(
                            "computer offline for {} minutes",
                            self.s.options.offline_grace_minutes
                        )
                    };
                    self.cancel(reason);
                    return false;
                }
                self.set_status(
                    SessionStatus::Pending,
                    Some(format!(
                        "waiting for the computer to come online (until {})",
                        crate::localtime::in_zone(
                            deadline,
                            &self.s.time_zone,
                            crate::localtime::clock
                        )
                    )),
                );
                self.s.wake_at = Some(deadline);
            }
            OfflineBehavior::ApplyOnConnect => {
                self.set_status(
                    SessionStatus::Pending,
                    Some("waiting for the computer to come online".into()),
                );
            }
        }
        false
    }

    fn detection_probes(&self) -> Vec<Probe> {
        let timeout = self.env.limits.probe_timeout_seconds;
        let mut probes = Vec::new();
        for (i, item) in self.s.items.iter().enumerate() {
            let (d, c, t) = plan::probe_ids(i);
            let params = item.parameters.clone();
            match &item.what {
                ItemWhat::Software { software, .. } => {
                    probes.push(probe(d, &software.detection_script, &params, timeout));
                    if let Some(task) = &software.configuration_task {
                        probes.push(probe(c, &task.test_script, &params, timeout));
                    }
                }
                ItemWhat::Task { task, .. } => {
                    probes.push(probe(t, &task.test_script, &params, timeout))
                }
            }
        }
        probes
    }

    fn on_result(&mut self, purpose: JobPurpose, outcome: JobOutcome) {
        match purpose {
            JobPurpose::Detect => self.on_detected(outcome),
            JobPurpose::Step { action, step } => self.on_step(action, step, outcome),
            JobPurpose::StepTest { action, step } => self.on_step_test(action, step, outcome),
            JobPurpose::Reboot => {
                match outcome {
                    JobOutcome::Reboot { started: true, .. } => {
                        self.s.rebooted_at = Some(self.now());
                        self.log("Reboot started");
                    }
                    JobOutcome::Reboot { error, .. } => {
                        self.log(format!("Reboot failed: {}", error.unwrap_or_default()));
                    }
                    JobOutcome::Failed { error } => self.log(format!("Reboot failed: {error}")),
                    other => self.log(format!("Unexpected reboot result: {other:?}")),
                }
                // The rebooted computer answers the verification job when it is back.
                self.start_verify();
            }
            JobPurpose::Verify => self.on_verified(outcome),
        }
    }

    fn on_detected(&mut self, outcome: JobOutcome) {
        let results = match outcome {
            JobOutcome::Probe { results } => plan::results_map(&results),
            JobOutcome::Failed { error } => {
                self.finish(SessionStatus::Failed, format!("detection failed: {error}"));
                return;
            }
            other => {
                self.finish(
                    SessionStatus::Failed,
                    format!("detection failed: unexpected result {}", kind_name(&other)),
                );
                return;
            }
        };
        self.s.actions = self
            .s
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| plan::plan(i, item, &plan::found(i, &results), self.env.ids.next()))
            .collect();
        for i in 0..self.s.actions.len() {
            if self.s.actions[i].status == ActionStatus::DetectionFailed {
                self.s.actions[i].finished_at = Some(self.env.now);
            }
            let a = &self.s.actions[i];
            let line = format!(
                "{}: {} ({})",
                self.s.item_name(a.item),
                if a.status == ActionStatus::DetectionFailed {
                    "detection failed"
                } else {
                    kind_words(a.kind)
                },
                a.reason
            );
            self.action_changed(i, Some(line));
        }
        let compliance = self.s.compliance_of_actions();
        self.s.compliance = Some(compliance);
        if self.s.detection_only {
            let undetected: Vec<String> = self
                .s
                .actions
                .iter()
                .filter(|a| a.status == ActionStatus::DetectionFailed)
                .map(|a| self.s.item_name(a.item).to_string())
                .collect();
            if undetected.is_empty() {
                self.finish(
                    SessionStatus::Passed,
                    format!("detection only: {}", compliance_words(compliance, &self.s)),
                );
            } else {
                self.finish(
                    SessionStatus::Failed,
                    format!("detection failed: {}", undetected.join(", ")),
                );
            }
            return;
        }
        let work = self
            .s
            .actions
            .iter()
            .any(|a| plan::needs_execution(a) || a.step_failed);
        if !work {
            for i in 0..self.s.actions.len() {
                let a = &mut self.s.actions[i];
                if a.status == ActionStatus::DetectionFailed {
                    continue;
                }
                if a.compliance == Compliance::Compliant || plan::is_audit(&self.s.items[a.item]) {
                    a.status = ActionStatus::Succeeded;
                    // A non-compliant audit is reported as such, not as "already compliant".
                    let message = if a.compliance == Compliance::Compliant {
                        "already compliant"
                    } else {
                        "audit: not compliant"
                    };
                    a.result_message.get_or_insert_with(|| message.into());
                } else {
                    a.status = ActionStatus::Failed;
                }
                a.finished_at = Some(self.env.now);
                self.action_changed(i, None);
            }
            if self.s.options.notify_before
                && self.s.options.notify_when_compliant
                && !self.s.before_mail_sent
            {
                self.s.before_mail_sent = true;
                self.out.push(Effect::Mail(crate::mail::MailKind::Before));
            }
            self.finish_counted("already compliant: nothing to do".into());
            return;
        }
        self.s.stage = Stage::AwaitExecute;
        if self.s.options.notify_before && !self.s.before_mail_sent {
            self.s.before_mail_sent = true;
            self.out.push(Effect::Mail(crate::mail::MailKind::Before));
        }
    }

    /// The first (action, step) still to run, in plan order.
    fn next_step(&self) -> Option<(usize, usize)> {
        self.s.actions.iter().enumerate().find_map(|(i, a)| {
            (a.status != ActionStatus::Cancelled && !a.step_failed && a.next_step < a.steps.len())
                .then_some((i, a.next_step))
        })
    }

    fn run_step(&mut self, ai: usize, si: usize) {
        let params = self.s.items[self.s.actions[ai].item].parameters.clone();
        if self.s.actions[ai].status == ActionStatus::Pending {
            self.s.actions[ai].status = ActionStatus::Running;
            self.s.actions[ai].started_at = Some(self.now());
            let name = self.s.item_name(self.s.actions[ai].item).to_string();
            self.action_changed(
                ai,
                Some(format!("{name}: {}", kind_words(self.s.actions[ai].kind))),
            );
        }
        match self.s.actions[ai].steps[si].clone() {
            Step::Script { label, script } => {
                self.log(format!("Running: {label}"));
                self.dispatch(
                    JobPurpose::Step {
                        action: ai,
                        step: si,
                    },
                    JobKind::Step {
                        label,
                        script: proto_script(&script, self.env.limits.step_timeout_seconds),
                        parameters: params,
                    },
                );
            }
            Step::TestThenSet { task } => {
                self.log(format!("Testing: {}", task.name));
                let probes = vec![probe(
                    format!("c{}", self.s.actions[ai].item),
                    &task.test_script,
                    &params,
                    self.env.limits.probe_timeout_seconds,
                )];
                self.dispatch(
                    JobPurpose::StepTest {
                        action: ai,
                        step: si,
                    },
                    JobKind::Probe { probes },
                );
            }
        }
    }

    fn on_step(&mut self, ai: usize, si: usize, outcome: JobOutcome) {
        let label = match &self.s.actions[ai].steps.get(si) {
            Some(Step::Script { label, .. }) => label.clone(),
            Some(Step::TestThenSet { task }) => format!("run {}", task.name),
            None => return,
        };
        match outcome {
            JobOutcome::Step { outcome } => {
                let secrets =
                    crate::output::Secrets::of(&self.s.items[self.s.actions[ai].item].parameters);
                self.out.push(Effect::Output {
                    action: ai,
                    output: crate::output::ActionOutput::from_outcome(&outcome, &secrets),
                });
                self.on_step_outcome(ai, &label, secrets.mask_outcome(&outcome));
            }
            JobOutcome::Failed { error } => self.fail_step(ai, format!("{label}: {error}")),
            other => self.fail_step(
                ai,
                format!("{label}: unexpected result {}", kind_name(&other)),
            ),
        }
        self.s.actions[ai].next_step = si + 1;
        self.settle_action(ai);
    }

    fn on_step_outcome(&mut self, ai: usize, label: &str, outcome: proto::ScriptOutcome) {
        match outcome.exit_code {
            Some(0) => self.log(format!("Done: {label}")),
            Some(proto::EXIT_REBOOT_REQUIRED) => {
                self.s.actions[ai].reboot_required = true;
                self.s.reboot_required = true;
                self.log(format!("Done: {label} (reboot required)"));
            }
            _ => self.fail_step(ai, plan::describe_failure(label, &outcome)),
        }
    }

    fn on_step_test(&mut self, ai: usize, si: usize, outcome: JobOutcome) {
        self.on_step_test_result(ai, si, outcome);
        self.settle_action(ai);
    }

    fn on_step_test_result(&mut self, ai: usize, si: usize, outcome: JobOutcome) {
        let Some(Step::TestThenSet { task }) = self.s.actions[ai].steps.get(si).cloned() else {
            return;
        };
        let code = match &outcome {
            JobOutcome::Probe { results } => results
                .first()
                .map(|r| (r.outcome.exit_code, r.outcome.clone())),
            _ => None,
        };
        match code {
            Some((Some(0), _)) => {
                self.log(format!("{}: compliant", task.name));
                self.s.actions[ai].next_step = si + 1;
            }
            Some((Some(1), _)) => match &task.set_script {
                Some(set) => {
                    // Replace the test step by the set script; verification tests again.
                    self.s.actions[ai].steps[si] = Step::Script {
                        label: format!("run {}", task.name),
                        script: set.clone(),
                    };
                }
                None => {
                    self.fail_step(
                        ai,
                        format!("{} is not compliant and has no set script", task.name),
                    );
                    self.s.actions[ai].next_step = si + 1;
                }
            },
            Some((_, o)) => {
                let secrets =
                    crate::output::Secrets::of(&self.s.items[self.s.actions[ai].item].parameters);
                self.fail_step(
                    ai,
                    plan::describe_failure(
                        &format!("{} test", task.name),
                        &secrets.mask_outcome(&o),
                    ),
                );
                self.s.actions[ai].next_step = si + 1;
            }
            None => {
                let why = match outcome {
                    JobOutcome::Failed { error } => error,
                    other => format!("unexpected result {}", kind_name(&other)),
                };
                self.fail_step(ai, format!("{} test: {why}", task.name));
                self.s.actions[ai].next_step = si + 1;
            }
        }
    }

    fn fail_step(&mut self, ai: usize, message: String) {
        let a = &mut self.s.actions[ai];
        a.step_failed = true;
        a.result_message = Some(message.clone());
        self.log(format!("Failed: {message}"));
    }

    fn start_verify(&mut self) {
        self.s.stage = Stage::Verifying;
        self.set_status(SessionStatus::Verifying, None);
        let probes = self.detection_probes();
        self.dispatch(JobPurpose::Verify, JobKind::Probe { probes });
    }

    fn on_verified(&mut self, outcome: JobOutcome) {
        let results = match outcome {
            JobOutcome::Probe { results } => Some(plan::results_map(&results)),
            JobOutcome::Failed { error } => {
                self.log(format!("Verification failed: {error}"));
                None
            }
            other => {
                self.log(format!(
                    "Verification failed: unexpected result {}",
                    kind_name(&other)
                ));
                None
            }
        };
        let now = self.now();
        for i in 0..self.s.actions.len() {
            let item = self.s.items[self.s.actions[i].item].clone();
            let a = &mut self.s.actions[i];
            if matches!(
                a.status,
                ActionStatus::Cancelled | ActionStatus::DetectionFailed
            ) {
                continue;
            }
            match &results {
                Some(r) => {
                    let f = plan::found(a.item, r);
                    a.compliance = plan::compliance(&item, &f);
                    if let ItemWhat::Software { .. } = item.what {
                        a.detected_version = f.version.clone();
                        a.detected_version_after = f.version.clone();
                    }
                }
                None => a.compliance = Compliance::Unknown,
            }
            let audit = plan::is_audit(&item);
            a.status = if a.step_failed {
                ActionStatus::Failed
            } else if audit || a.compliance == Compliance::Compliant {
                ActionStatus::Succeeded
            } else {
                a.result_message.get_or_insert_with(|| match a.compliance {
                    Compliance::Unknown => "could not verify: detection did not run".to_string(),
                    _ => "still not compliant after execution".to_string(),
                });
                ActionStatus::Failed
            };
            if a.status == ActionStatus::Succeeded && a.result_message.is_none() {
                // Audit actions are NO_ACTION too: test `audit` first, or a non-compliant audit
                // would read "already compliant".
                a.result_message = Some(match a.kind {
                    _ if audit => format!(
                        "audit: {}",
                        if a.compliance == Compliance::Compliant {
                            "compliant"
                        } else {
                            "not compliant"
                        }
                    ),
                    ActionKind::NoAction => "already compliant".into(),
                    _ => "done and verified".into(),
                });
            }
            a.finished_at = Some(now);
            a.started_at.get_or_insert(now);
            self.action_changed(i, None);
        }
        self.s.compliance = Some(self.s.compliance_of_actions());
        let n = self.s.actions.len();
        self.finish_counted(format!("{n} of {n} actions succeeded"));
    }

    fn postpone(&mut self, hours: Option<u32>, by: &str) -> Result<(), EngineError> {
        if self.s.stage != Stage::AwaitExecute || self.s.detection_only {
            return Err(EngineError::Conflict(
                "only a session waiting to execute can be postponed".into(),
            ));
        }
        if !self.s.options.allow_postpone {
            return Err(EngineError::NotAllowed(
                "postponing is not allowed for this session".into(),
            ));
        }
        if self.s.postpone_count >= self.s.options.max_postpones {
            return Err(EngineError::NotAllowed(format!(
                "the session was already postponed {} time(s), the limit",
                self.s.postpone_count
            )));
        }
        let hours = hours.unwrap_or(self.s.options.postpone_hours);
        let base = self.s.execute_at.unwrap_or(self.now()).max(self.now());
        let at = base + Duration::hours(i64::from(hours));
        self.s.execute_at = Some(at);
        self.s.window_end = None;
        self.s.postpone_count += 1;
        // Until its new time the session waits for neither a slot nor its computer: it leaves
        // the queue (the runtime serves the queue's head only, so staying would block every
        // other session), and an offline computer gets its full grace again from the new time.
        self.s.queued = false;
        self.s.offline_since = None;
        self.set_status(
            SessionStatus::Postponed,
            Some(format!("postponed by {by} to {}", self.local(at))),
        );
        // The end user hears of the new time in a fresh before-mail, whose links (issued for
        // this postpone count) replace the earlier mail's: that is how a second postpone, up to
        // `maxPostpones`, is reached.
        if self.s.options.notify_before {
            self.s.before_mail_sent = true;
            self.out.push(Effect::Mail(crate::mail::MailKind::Before));
        }
        Ok(())
    }

    /// A session whose window ended before it could execute runs all the same only under
    /// `APPLY_ON_CONNECT`, and only when its computer was offline during the window (CONTRACT
    /// §5: it runs when the agent next polls, even after the window).
    fn runs_after_window(&self) -> bool {
        self.s.options.offline_behavior == OfflineBehavior::ApplyOnConnect
            && self.s.offline_in_window
    }

    fn cancel(&mut self, reason: String) {
        // No mail about maintenance that will not happen: a before-mail planned earlier in
        // this very step (detection that finished after the window) is dropped.
        let before = self.out.len();
        self.out
            .retain(|e| *e != Effect::Mail(crate::mail::MailKind::Before));
        if self.out.len() != before {
            self.s.before_mail_sent = false;
        }
        if let Some(p) = self.s.pending_job.take() {
            if let JobPurpose::Step { action, step } = p.purpose
                && let Some(Step::Script { label, .. }) =
                    self.s.actions.get(action).and_then(|a| a.steps.get(step))
            {
                let line = format!("Stopping the running script ({label}): the agent kills it");
                self.log(line);
            }
            self.out.push(Effect::Abandon { job: p.id });
        }
        let now = self.now();
        for i in 0..self.s.actions.len() {
            let a = &mut self.s.actions[i];
            if matches!(a.status, ActionStatus::Pending | ActionStatus::Running) {
                a.status = ActionStatus::Cancelled;
                a.finished_at = Some(now);
                self.action_changed(i, None);
            }
        }
        self.finish(SessionStatus::Cancelled, reason);
    }

    fn finish(&mut self, status: SessionStatus, reason: String) {
        if let Some(p) = self.s.pending_job.take() {
            self.out.push(Effect::Abandon { job: p.id });
        }
        self.s.stage = Stage::Done;
        self.s.finished_at = Some(self.now());
        self.s.wake_at = None;
        self.s.queued = false;
        self.set_status(status, Some(reason));
        let any_change = self
            .s
            .actions
            .iter()
            .any(|a| a.kind != ActionKind::NoAction);
        if self.s.options.notify_after
            && !self.s.after_mail_sent
            && !self.s.detection_only
            && status != SessionStatus::Cancelled
            && (any_change || self.s.options.notify_when_compliant)
        {
            self.s.after_mail_sent = true;
            self.out.push(Effect::Mail(crate::mail::MailKind::After));
        }
        self.out.push(Effect::Finished);
    }
}

/// Ticks that matter for a waiting session: the engine asked to be woken at `wake_at`.
pub fn due(s: &Session, now: Time) -> bool {
    s.wake_at.is_some_and(|w| w <= now)
}

/// Stages that hold one of the `--max-concurrent-sessions` slots.
pub fn holds_slot(s: &Session) -> bool {
    matches!(
        s.stage,
        Stage::Detecting
            | Stage::Executing
            | Stage::RebootHeld
            | Stage::Rebooting { .. }
            | Stage::Verifying
    )
}

/// Stages in which the session needs its agent; used to decide which sessions to wake when a
/// computer comes online.
pub fn waits_for_agent(s: &Session) -> bool {
    !s.status.is_terminal() && (s.offline_since.is_some() || s.stage == Stage::RebootHeld)
}

fn probe(
    id: String,
    script: &Script,
    params: &std::collections::BTreeMap<String, String>,
    timeout: u32,
) -> Probe {
    Probe {
        probe_id: id,
        script: proto_script(script, timeout),
        parameters: params.clone(),
    }
}

pub fn proto_script(s: &Script, timeout_seconds: u32) -> proto::Script {
    proto::Script {
        language: match s.language {
            ScriptLanguage::Shell => proto::ScriptLanguage::Shell,
            ScriptLanguage::Powershell => proto::ScriptLanguage::Powershell,
            ScriptLanguage::Python => proto::ScriptLanguage::Python,
        },
        body: s.body.clone(),
        timeout_seconds,
    }
}

fn kind_name(o: &JobOutcome) -> &'static str {
    match o {
        JobOutcome::Probe { .. } => "probe",
        JobOutcome::Step { .. } => "step",
        JobOutcome::Reboot { .. } => "reboot",
        JobOutcome::Failed { .. } => "failed",
    }
}

pub fn kind_words(k: ActionKind) -> &'static str {
    match k {
        ActionKind::Install => "install",
        ActionKind::Upgrade => "upgrade",
        ActionKind::Uninstall => "uninstall",
        ActionKind::RunTask => "run task",
        ActionKind::NoAction => "no action",
    }
}

fn compliance_words(c: Compliance, s: &Session) -> String {
    let non = s
        .actions
        .iter()
        .filter(|a| a.compliance == Compliance::NonCompliant)
        .count();
    match c {
        Compliance::Compliant => "compliant".into(),
        Compliance::NonCompliant => format!("{non} of {} items not compliant", s.actions.len()),
        Compliance::Unknown => "compliance unknown for some items".into(),
    }
}

pub fn status_name(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Pending => "PENDING",
        SessionStatus::Detecting => "DETECTING",
        SessionStatus::Scheduled => "SCHEDULED",
        SessionStatus::Postponed => "POSTPONED",
        SessionStatus::Executing => "EXECUTING",
        SessionStatus::Verifying => "VERIFYING",
        SessionStatus::Passed => "PASSED",
        SessionStatus::Failed => "FAILED",
        SessionStatus::Cancelled => "CANCELLED",
    }
}

#[cfg(test)]
mod tests;
