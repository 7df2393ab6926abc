//! Verification: detection again after execution, deciding each action's outcome.

use super::*;

impl Machine<'_> {
    pub(super) fn start_verify(&mut self) {
        self.s.stage = Stage::Verifying;
        self.set_status(SessionStatus::Verifying, None);
        let probes = self.detection_probes(false);
        self.dispatch(JobPurpose::Verify, JobKind::Probe { probes });
    }

    pub(super) fn on_verified(&mut self, outcome: JobOutcome) {
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
        if let Some(r) = &results {
            self.note_detected(r);
        }
        let now = self.now();
        for i in 0..self.s.actions.len() {
            let item = self.s.items[self.s.actions[i].item].clone();
            let a = &mut self.s.actions[i];
            if matches!(
                a.status,
                ActionStatus::Cancelled | ActionStatus::DetectionFailed | ActionStatus::Skipped
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
                    if f.current_value.is_some() {
                        a.current_value = f.current_value.clone();
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
}
