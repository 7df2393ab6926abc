//! The start of execution, before anything changes: the preflight checks ("Windows Update is
//! running", "a render is in progress"), retried until the window ends, and the reboot a
//! computer already waits for (ImmyBot's `Test-PendingReboot` step), done first so that the
//! session's installs do not land on a half-updated system.

use super::*;

/// What a preflight probe is called (`pf0`, `pf1`, …), in the job and in its results.
fn probe_id(i: usize) -> String {
    format!("pf{i}")
}

impl Machine<'_> {
    /// The session may execute now: preflight first (when it has checks), then the pending
    /// reboot, then the steps.
    pub(super) fn begin_execution(&mut self) -> Flow {
        self.set_status(SessionStatus::Executing, None);
        if self.s.preflight.is_empty() {
            return self.after_preflight();
        }
        self.s.stage = Stage::Preflight { retry_at: None };
        Flow::Again
    }

    /// The last instant a failing preflight is retried: the window's end, or a day after the
    /// first check for a session without a window.
    fn preflight_deadline(&self) -> Option<Time> {
        self.s.window_end.or_else(|| {
            self.s
                .preflight_since
                .map(|t| t + Duration::hours(PREFLIGHT_GIVE_UP_HOURS))
        })
    }

    /// `Preflight`: give up when the deadline passed, wait for the retry time and the agent,
    /// then send the checks as one probe job.
    pub(super) fn preflight(&mut self, retry_at: Option<Time>) -> Flow {
        let deadline = self.preflight_deadline();
        if let Some(end) = deadline
            && self.now() >= end
        {
            let reason = match &self.s.preflight_message {
                Some(message) => {
                    format!("preflight check still failing when the window ended: {message}")
                }
                None => "the maintenance window ended before the preflight checks could run".into(),
            };
            self.cancel(reason);
            return Flow::Wait;
        }
        if let Some(at) = retry_at
            && at > self.now()
        {
            self.s.wake_at = Some(deadline.map_or(at, |end| at.min(end)));
            return Flow::Wait;
        }
        if !self.env.online {
            if self.s.status == SessionStatus::Executing {
                self.s.status_reason = Some("waiting for the computer to come online".into());
            }
            self.s.wake_at = deadline;
            return Flow::Wait;
        }
        if self.s.status == SessionStatus::Executing {
            self.s.status_reason = Some("preflight checks".into());
        }
        self.s.preflight_since.get_or_insert(self.env.now);
        let timeout = self.env.limits.probe_timeout_seconds;
        let none = std::collections::BTreeMap::new();
        let probes: Vec<Probe> = self
            .s
            .preflight
            .iter()
            .enumerate()
            .map(|(i, script)| probe(probe_id(i), script, &none, timeout))
            .collect();
        self.log(format!("Running {} preflight check(s)", probes.len()));
        self.s.stage = Stage::Preflight { retry_at: None };
        self.dispatch(JobPurpose::Preflight, JobKind::Probe { probes });
        Flow::Again
    }

    /// The checks' results: all passed → on to the pending reboot and the steps; one failed →
    /// `PENDING_PREFLIGHT` with what it said, and again after `preflight_retry_minutes`.
    pub(super) fn on_preflight(&mut self, outcome: JobOutcome) {
        match self.preflight_failure(outcome) {
            None => {
                self.s.preflight_message = None;
                self.log("Preflight checks passed");
                self.set_status(SessionStatus::Executing, None);
                // `advance` goes on from the stage this sets.
                let _ = self.after_preflight();
            }
            Some(message) => {
                let retry = self.now()
                    + Duration::minutes(i64::from(self.s.options.preflight_retry_minutes));
                self.log(format!("Preflight check failed: {message}"));
                let reason = format!("{message} (checked again at {})", self.local(retry));
                self.s.preflight_message = Some(message);
                self.set_status(SessionStatus::PendingPreflight, Some(reason));
                self.s.stage = Stage::Preflight {
                    retry_at: Some(retry),
                };
            }
        }
    }

    /// The first failing check, said as a person reads it; `None` when every check passed.
    fn preflight_failure(&self, outcome: JobOutcome) -> Option<String> {
        let results = match outcome {
            JobOutcome::Probe { results } => results,
            JobOutcome::Failed { error } => {
                return Some(format!("the checks did not run: {error}"));
            }
            other => return Some(format!("unexpected result {}", kind_name(&other))),
        };
        (0..self.s.preflight.len()).find_map(|i| {
            let id = probe_id(i);
            let label = format!("preflight check {}", i + 1);
            match results.iter().find(|r| r.probe_id == id) {
                Some(r) if r.outcome.exit_code == Some(0) && !r.outcome.timed_out => None,
                Some(r) => Some(short_failure(&label, &r.outcome)),
                None => Some(format!("{label} did not report")),
            }
        })
    }

    /// After preflight: reboot first when the agent says one is pending (unless reboots are
    /// suppressed or business hours hold them), else run the steps.
    pub(super) fn after_preflight(&mut self) -> Flow {
        self.s.stage = Stage::Executing;
        if !self.env.agent_reboot_pending || self.s.pre_rebooted_at.is_some() {
            return Flow::Again;
        }
        if self.s.options.reboot_preference == RebootPreference::Suppress {
            self.log("A reboot is pending on the computer; reboots are suppressed, so the session goes on without it");
            return Flow::Again;
        }
        if let Some(until) = self.env.reboot_held_until
            && !self.s.options.allow_reboot_during_business_hours
        {
            self.log(format!(
                "A reboot is pending on the computer, but business hours hold reboots until {}: the session goes on without it",
                self.local(until)
            ));
            return Flow::Again;
        }
        if self.s.options.reboot_preference == RebootPreference::Prompt {
            self.prompt_reboot(true);
            return Flow::Again;
        }
        self.send_pre_reboot();
        Flow::Again
    }

    pub(super) fn send_pre_reboot(&mut self) {
        self.log("A reboot is pending on the computer: rebooting before any change");
        self.s.status_reason = Some("rebooting before maintenance".into());
        self.s.stage = Stage::PreReboot {
            sent_at: self.now(),
        };
        self.dispatch(JobPurpose::PreReboot, JobKind::Reboot {});
    }

    pub(super) fn on_pre_rebooted(&mut self, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Reboot { started: true, .. } => {
                self.s.pre_rebooted_at = Some(self.now());
                self.log("Reboot started; waiting for the computer to come back");
            }
            JobOutcome::Reboot { error, .. } => {
                self.reboot_skipped(error.unwrap_or_default());
            }
            JobOutcome::Failed { error } => self.reboot_skipped(error),
            other => self.reboot_skipped(format!("unexpected result {}", kind_name(&other))),
        }
    }

    fn reboot_skipped(&mut self, why: String) {
        self.log(format!(
            "Reboot failed: {why}; the session goes on without it"
        ));
        self.s.status_reason = None;
        self.s.stage = Stage::Executing;
    }

    /// `PreReboot` after the reboot started: the computer is back when its agent polls and no
    /// longer reports the pending reboot (or reports a boot after the reboot was sent). Not
    /// back in time: the session is cancelled, having changed nothing; back but still pending: it goes
    /// on, since another reboot would not help.
    pub(super) fn pre_reboot_wait(&mut self, sent_at: Time) -> Flow {
        let booted = self.env.last_boot_at.is_some_and(|b| b > sent_at);
        if self.env.online && (!self.env.agent_reboot_pending || booted) {
            self.log("The computer is back after its reboot");
            self.s.status_reason = None;
            self.s.stage = Stage::Executing;
            return Flow::Again;
        }
        let deadline = sent_at + Duration::minutes(REBOOT_RETURN_MINUTES);
        if self.now() < deadline {
            self.s.wake_at = Some(deadline);
            return Flow::Wait;
        }
        if self.env.online {
            self.log(format!(
                "The computer still reports a pending reboot {REBOOT_RETURN_MINUTES} minutes after the reboot: going on"
            ));
            self.s.status_reason = None;
            self.s.stage = Stage::Executing;
            return Flow::Again;
        }
        // Nothing was changed yet: like an offline computer's session, it is cancelled.
        self.cancel(format!(
            "the computer did not come back within {REBOOT_RETURN_MINUTES} minutes after the reboot before maintenance"
        ));
        Flow::Wait
    }
}

/// `plan::describe_failure` without its "exited N" head when the check said why itself.
fn short_failure(label: &str, o: &proto::ScriptOutcome) -> String {
    let said = o
        .stdout
        .lines()
        .chain(o.stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty());
    match (said, o.timed_out, &o.error) {
        (Some(line), false, None) => line.chars().take(300).collect(),
        _ => plan::describe_failure(label, o),
    }
}
