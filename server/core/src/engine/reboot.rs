//! The reboot after execution: whether it is wanted, held by business hours, sent, and whether the
//! computer came back in time.

use super::*;

impl Machine<'_> {
    /// Whether the session reboots after its steps, by its reboot preference (logging a pending
    /// reboot it takes over, or a required one it suppresses).
    pub(super) fn wants_reboot(&mut self) -> bool {
        match self.s.options.reboot_preference {
            RebootPreference::Force => true,
            RebootPreference::Normal | RebootPreference::Prompt => {
                // The reboot before execution already did what a held one waited for.
                let held = self.env.reboot_pending && self.s.pre_rebooted_at.is_none();
                if held && !self.s.reboot_required {
                    self.log("A reboot held after an earlier session is still pending");
                }
                self.s.reboot_required || held
            }
            RebootPreference::Suppress => {
                if self.s.reboot_required {
                    self.log("A reboot is required but suppressed by the session's options");
                }
                false
            }
        }
    }

    /// `RebootHeld`: reboot now, or leave the reboot to its own job when business hours hold it.
    pub(super) fn reboot_held(&mut self) -> Flow {
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
            return Flow::Wait;
        }
        if !self.env.online {
            self.s.wake_at = None;
            return Flow::Wait;
        }
        if self.s.options.reboot_preference == RebootPreference::Prompt && !self.s.prompted {
            self.prompt_reboot(false);
            return Flow::Again;
        }
        self.s.status_reason = Some("rebooting".into());
        self.log("Rebooting the computer");
        self.s.stage = Stage::Rebooting {
            sent_at: self.now(),
        };
        self.dispatch(JobPurpose::Reboot, JobKind::Reboot {});
        Flow::Again
    }

    pub(super) fn on_rebooted(&mut self, outcome: JobOutcome) {
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

    /// `PROMPT`: tell the people at the computer, then reboot `reboot_prompt_minutes` later
    /// (`before`: the reboot before execution).
    pub(super) fn prompt_reboot(&mut self, before: bool) {
        let at = self.now() + Duration::minutes(i64::from(self.s.options.reboot_prompt_minutes));
        let when = self.local(at);
        self.s.prompted = true;
        self.s.status_reason = Some(format!("reboot at {when}"));
        self.log(format!(
            "Telling the computer's users that it restarts at {when} unless the maintenance is postponed"
        ));
        self.s.stage = Stage::RebootPrompted {
            reboot_at: at,
            before,
        };
        let message =
            format!("This computer restarts at {when} for maintenance. Please save your work.");
        self.dispatch(JobPurpose::Prompt, JobKind::Prompt { message });
    }

    pub(super) fn on_prompted(&mut self, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Prompt { shown: true, .. } => {
                self.log("The users were told about the reboot");
            }
            JobOutcome::Prompt { error, .. } => self.log(format!(
                "The reboot prompt could not be shown: {}; the reboot runs as announced",
                error.unwrap_or_default()
            )),
            JobOutcome::Failed { error } => self.log(format!(
                "The reboot prompt could not be shown: {error}; the reboot runs as announced"
            )),
            other => self.log(format!("Unexpected prompt result: {}", kind_name(&other))),
        }
    }

    /// `RebootPrompted`: wait for the announced time, then reboot (the reboot after execution
    /// goes through `RebootHeld` again, so business hours and presence still count).
    pub(super) fn reboot_prompted(&mut self, reboot_at: Time, before: bool) -> Flow {
        if reboot_at > self.now() {
            self.s.wake_at = Some(reboot_at);
            return Flow::Wait;
        }
        if !before {
            self.s.stage = Stage::RebootHeld;
            return Flow::Again;
        }
        if !self.env.online {
            self.s.wake_at = None;
            return Flow::Wait;
        }
        // The reboot after execution, if one is needed, is announced on its own.
        self.s.prompted = false;
        self.send_pre_reboot();
        Flow::Again
    }

    /// A postpone while a prompted reboot waits: the reboot after execution becomes a held
    /// reboot (it runs on its own `hours` later, the session ends now); the reboot before
    /// execution postpones the whole session.
    pub(super) fn postpone_prompted_reboot(
        &mut self,
        hours: Option<u32>,
        by: &str,
        before: bool,
    ) -> Result<(), EngineError> {
        if let Some(p) = self.s.pending_job.take() {
            self.out.push(Effect::Abandon { job: p.id });
        }
        self.s.prompted = false;
        if before {
            self.s.stage = Stage::AwaitExecute;
            return self.postpone(hours, by);
        }
        if !self.s.options.allow_postpone {
            return Err(EngineError::PostponeNotAllowed);
        }
        let hours = hours.unwrap_or(self.s.options.postpone_hours);
        let until = self.now() + Duration::hours(i64::from(hours));
        self.s.reboot_held_until = Some(until);
        self.log(format!(
            "{by} postponed the reboot to {}: it runs on its own then",
            self.local(until)
        ));
        self.start_verify();
        Ok(())
    }

    /// While verification waits for a rebooted computer: true when it did not come back in time
    /// (verification then fails and the session ends); otherwise the session wakes at the deadline.
    pub(super) fn reboot_return_overdue(&mut self) -> bool {
        let (Stage::Verifying, Some(at)) = (&self.s.stage, self.s.rebooted_at) else {
            return false;
        };
        if !matches!(
            self.s.pending_job,
            Some(PendingJob {
                purpose: JobPurpose::Verify,
                ..
            })
        ) {
            return false;
        }
        let deadline = at + Duration::minutes(REBOOT_RETURN_MINUTES);
        if self.now() >= deadline {
            let job = self.s.pending_job.take().map(|p| p.id);
            if let Some(job) = job {
                self.out.push(Effect::Abandon { job });
            }
            self.on_verified(JobOutcome::Failed {
                error: format!("the computer did not come back within {REBOOT_RETURN_MINUTES} minutes after the reboot"),
            });
            return true;
        }
        self.s.wake_at = Some(deadline);
        false
    }
}
