//! The session engine: a pure state machine. `step(session, env, event)` changes the session
//! and returns effects (jobs to hand out, events to publish, mails to queue); the runtime
//! persists the session and its effects in one transaction and only then publishes or sends.
//! No I/O, no clock: `now` and the facts the engine needs come in through [`Env`].

mod detect;
mod execute;
mod finish;
pub mod plan;
mod preflight;
mod reboot;
mod verify;
mod waiting;

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
/// A session without a maintenance window retries failing preflight checks this long.
pub const PREFLIGHT_GIVE_UP_HOURS: i64 = 24;

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
    /// The computer's agent says a reboot is pending there (an update waits for it): a session
    /// reboots before it changes anything (`preflight.rs`).
    pub agent_reboot_pending: bool,
    /// When the computer last started, as its inventory says.
    pub last_boot_at: Option<Time>,
    /// What the versions scripts of the session's software last said (read by the caller
    /// while the session detects; empty otherwise): a fresh answer spares running the script.
    pub versions_cache: std::collections::BTreeMap<Id, crate::versions::VersionsCache>,
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
    /// A versions script answered: keep its versions for the software's cache minutes.
    VersionsFound {
        software: Id,
        versions: Vec<crate::versions::Discovered>,
    },
    /// Detection (or verification) found these, per item's software or task: kept per computer
    /// as its last detection (`impact::Detection`), which impact previews plan from.
    Detected(Vec<(Subject, plan::Found)>),
}

/// Why the engine refused an event. Callers pick their answer from the variant (the postpone
/// page shows "already used", "too late" or "limit reached" pages); the text is for people and
/// may change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A command (cancel, postpone, update now, run now) on a session that already ended.
    #[error("the session has already ended ({})", status_name(*.0))]
    Ended(SessionStatus),
    /// Postponing before detection finished, or a detection-only session.
    #[error("only a session waiting to execute can be postponed")]
    NotPostponable,
    /// Updating now before detection finished, or a detection-only session.
    #[error("the session is not waiting to execute")]
    NotWaitingToExecute,
    /// Running now a session that is not SCHEDULED or POSTPONED and waiting to execute.
    #[error("only a SCHEDULED or POSTPONED session can run now; this one is {}", status_name(*.0))]
    NotRunnable(SessionStatus),
    /// The session's options forbid postponing.
    #[error("postponing is not allowed for this session")]
    PostponeNotAllowed,
    /// The session was postponed as often as its options allow.
    #[error("the session was already postponed {0} time(s), the limit")]
    PostponeLimit(u32),
    /// The session's options forbid updating now.
    #[error("updating now is not allowed for this session")]
    UpdateNowNotAllowed,
    /// The postpone or update-now link was already used (each works once).
    #[error("this link was already used")]
    LinkUsed,
}

impl EngineError {
    /// Whether the refusal is about the session's state, which changes over time (a conflict),
    /// rather than about what this session or link may ever do.
    pub fn is_conflict(&self) -> bool {
        match self {
            EngineError::Ended(_)
            | EngineError::NotPostponable
            | EngineError::NotWaitingToExecute
            | EngineError::NotRunnable(_) => true,
            EngineError::PostponeNotAllowed
            | EngineError::PostponeLimit(_)
            | EngineError::UpdateNowNotAllowed
            | EngineError::LinkUsed => false,
        }
    }
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

/// Whether `advance` can go on to the session's next stage now or has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Again,
    Wait,
}

/// One step in progress: the session as it changes and the effects so far. Its methods are
/// spread over the stage modules (`detect`, `waiting`, `execute`, `reboot`, `verify`, `finish`).
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
                | Event::RunNow { .. } => Err(EngineError::Ended(self.s.status)),
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
                let by_link = token.is_some();
                let count = self.s.postpone_count;
                self.use_token(token)?;
                match self.s.stage {
                    Stage::RebootPrompted { before, .. } => {
                        self.postpone_prompted_reboot(hours, &by, before)?
                    }
                    _ => self.postpone(hours, &by)?,
                }
                // A postpone of the maintenance (also one a reboot prompt led to) through the
                // end user's link.
                if by_link && self.s.postpone_count > count {
                    self.s.end_user_postpones += 1;
                }
            }
            Event::UpdateNow { by, token } => {
                self.use_token(token)?;
                if self.s.stage != Stage::AwaitExecute || self.s.detection_only {
                    return Err(EngineError::NotWaitingToExecute);
                }
                if !self.s.options.allow_update_now {
                    return Err(EngineError::UpdateNowNotAllowed);
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
                    return Err(EngineError::NotRunnable(self.s.status));
                }
                self.s.execute_at = Some(self.now());
                self.s.window_end = None;
                self.log(format!("{by} started the maintenance now"));
            }
        }
        self.advance();
        Ok(())
    }

    fn on_result(&mut self, purpose: JobPurpose, outcome: JobOutcome) {
        match purpose {
            JobPurpose::Detect => self.on_detected(outcome),
            JobPurpose::Step { action, step } => self.on_step(action, step, outcome),
            JobPurpose::StepTest { action, step } => self.on_step_test(action, step, outcome),
            JobPurpose::Reboot => self.on_rebooted(outcome),
            JobPurpose::Verify => self.on_verified(outcome),
            JobPurpose::Preflight => self.on_preflight(outcome),
            JobPurpose::PreReboot => self.on_pre_rebooted(outcome),
            JobPurpose::Prompt => self.on_prompted(outcome),
        }
    }

    fn use_token(&mut self, token: Option<String>) -> Result<(), EngineError> {
        if let Some(t) = token {
            if self.s.used_tokens.contains(&t) {
                return Err(EngineError::LinkUsed);
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
            JobKind::Step {
                script, installer, ..
            } => {
                let download = installer
                    .as_ref()
                    .map_or(0, |_| proto::INSTALLER_DOWNLOAD_SECONDS);
                script.timeout_seconds + download + slack
            }
            JobKind::Reboot {} | JobKind::Prompt { .. } => slack,
        };
        self.s.pending_job = Some(PendingJob { id: job, purpose });
        self.out.push(Effect::Dispatch {
            job,
            kind,
            lease_seconds,
        });
    }

    /// Moves the session as far as it can go now: each stage either moves on (`Flow::Again`) or
    /// has to wait for a job, a timer, a slot or the computer (`Flow::Wait`).
    fn advance(&mut self) {
        self.s.wake_at = None;
        if self.reboot_return_overdue() {
            return;
        }
        loop {
            if self.s.status.is_terminal() || self.s.pending_job.is_some() {
                return;
            }
            let flow = match self.s.stage.clone() {
                Stage::AwaitDetect => self.start_detection(),
                // A job is pending or results are being applied.
                Stage::Detecting | Stage::Verifying => Flow::Wait,
                Stage::AwaitExecute => self.await_execute(),
                Stage::Executing => self.execute(),
                Stage::RebootHeld => self.reboot_held(),
                Stage::Preflight { retry_at } => self.preflight(retry_at),
                Stage::PreReboot { sent_at } => self.pre_reboot_wait(sent_at),
                Stage::RebootPrompted { reboot_at, before } => {
                    self.reboot_prompted(reboot_at, before)
                }
                Stage::Rebooting { .. } | Stage::Done => Flow::Wait,
            };
            if flow == Flow::Wait {
                return;
            }
        }
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
            | Stage::Preflight { .. }
            | Stage::PreReboot { .. }
            | Stage::RebootPrompted { .. }
    )
}

/// Stages in which the session needs its agent; used to decide which sessions to wake when a
/// computer comes online.
pub fn waits_for_agent(s: &Session) -> bool {
    !s.status.is_terminal()
        && (s.offline_since.is_some()
            || matches!(
                s.stage,
                Stage::RebootHeld
                    | Stage::PreReboot { .. }
                    | Stage::Preflight { .. }
                    | Stage::RebootPrompted { .. }
            ))
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
            ScriptLanguage::Cmd => proto::ScriptLanguage::Cmd,
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
        JobOutcome::Prompt { .. } => "prompt",
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
        SessionStatus::PendingPreflight => "PENDING_PREFLIGHT",
    }
}

#[cfg(test)]
mod tests;
