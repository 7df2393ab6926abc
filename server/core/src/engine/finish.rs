//! The end of a session: its final status and reason, cancelling, and the after-mail.

use super::*;

impl Machine<'_> {
    /// The end of a full session that ran (or found nothing to run): `FAILED` when an action
    /// failed or its detection did (named in the reason), else `PASSED`.
    pub(super) fn finish_counted(&mut self, passed_reason: String) {
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

    pub(super) fn cancel(&mut self, reason: String) {
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

    pub(super) fn finish(&mut self, status: SessionStatus, reason: String) {
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
