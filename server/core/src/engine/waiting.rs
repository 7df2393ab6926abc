//! Waiting to run: for a free slot, for the computer, for the execution time and its window; and
//! postponing, which moves that time.

use super::*;

impl Machine<'_> {
    /// True when the agent is there and a slot is free; otherwise records why the session
    /// waits (and ends it when `SKIP` ran out of grace).
    pub(super) fn ready_for_agent(&mut self) -> bool {
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

    /// `AwaitExecute`: wait for the execution time (or end the session when its window passed),
    /// then for the agent and a slot.
    pub(super) fn await_execute(&mut self) -> Flow {
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
            return Flow::Wait;
        }
        if let Some(end) = self.s.window_end
            && self.now() >= end
            && self.s.offline_since.is_none()
        {
            if !self.runs_after_window() {
                self.cancel("the maintenance window ended before execution could start".into());
                return Flow::Wait;
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
            return Flow::Wait;
        }
        self.begin_execution()
    }

    /// A session whose window ended before it could execute runs all the same only under
    /// `APPLY_ON_CONNECT`, and only when its computer was offline during the window (CONTRACT
    /// §5: it runs when the agent next polls, even after the window).
    fn runs_after_window(&self) -> bool {
        self.s.options.offline_behavior == OfflineBehavior::ApplyOnConnect
            && self.s.offline_in_window
    }

    pub(super) fn postpone(&mut self, hours: Option<u32>, by: &str) -> Result<(), EngineError> {
        if self.s.stage != Stage::AwaitExecute || self.s.detection_only {
            return Err(EngineError::NotPostponable);
        }
        if !self.s.options.allow_postpone {
            return Err(EngineError::PostponeNotAllowed);
        }
        if self.s.postpone_count >= self.s.options.max_postpones {
            return Err(EngineError::PostponeLimit(self.s.postpone_count));
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
}
