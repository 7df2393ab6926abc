//! Execution: the actions' steps, one job at a time, and what their results and output say.

use super::*;

impl Machine<'_> {
    /// `Executing`: run the next step; when none is left, reboot if wanted, else verify.
    pub(super) fn execute(&mut self) -> Flow {
        while let Some((ai, si)) = self.next_step() {
            if si == 0 && self.skip_for_prerequisite(ai) {
                continue;
            }
            self.run_step(ai, si);
            return Flow::Again;
        }
        if self.wants_reboot() && self.s.rebooted_at.is_none() {
            self.s.stage = Stage::RebootHeld;
            return Flow::Again;
        }
        self.start_verify();
        Flow::Again
    }

    /// An action whose prerequisite failed, could not be detected or was skipped is skipped
    /// itself, before it changes anything; true when it was.
    fn skip_for_prerequisite(&mut self, ai: usize) -> bool {
        let needs = &self.s.items[self.s.actions[ai].item].prerequisites;
        let failed = self.s.actions.iter().find(|a| {
            (a.status == ActionStatus::Skipped
                || a.status == ActionStatus::DetectionFailed
                || a.step_failed)
                && matches!(self.s.items[a.item].subject(),
                    Subject::Software(id) if needs.contains(&id))
        });
        let Some(failed) = failed else {
            return false;
        };
        let message = format!(
            "not run: its prerequisite {} did not succeed",
            self.s.item_name(failed.item)
        );
        let now = self.now();
        let a = &mut self.s.actions[ai];
        a.status = ActionStatus::Skipped;
        a.next_step = a.steps.len();
        a.result_message = Some(message);
        a.started_at = Some(now);
        a.finished_at = Some(now);
        self.action_changed(ai, None);
        true
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
            Step::Script {
                label,
                script,
                version,
                installer,
            } => {
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
                        version,
                        installer: installer.map(|i| proto::InstallerRef {
                            sha256: i.sha256,
                            size: i.size,
                            url: i.url,
                            file_name: i.file_name,
                        }),
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

    pub(super) fn on_step(&mut self, ai: usize, si: usize, outcome: JobOutcome) {
        let label = match &self.s.actions[ai].steps.get(si) {
            Some(Step::Script { label, .. }) => label.clone(),
            Some(Step::TestThenSet { task }) => format!("run {}", task.name),
            None => return,
        };
        match outcome {
            JobOutcome::Step { outcome } => {
                let secrets = {
                    let item = &self.s.items[self.s.actions[ai].item];
                    crate::output::Secrets::of(&item.parameters).without(&item.shown_values())
                };
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
            // 3010 "reboot required" and 1641 "reboot initiated" both lead to the reboot step.
            Some(code) if proto::means_reboot(code) => {
                self.s.actions[ai].reboot_required = true;
                self.s.reboot_required = true;
                self.log(format!("Done: {label} (reboot required)"));
            }
            _ => self.fail_step(ai, plan::describe_failure(label, &outcome)),
        }
    }

    pub(super) fn on_step_test(&mut self, ai: usize, si: usize, outcome: JobOutcome) {
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
                        version: None,
                        installer: None,
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
                let secrets = {
                    let item = &self.s.items[self.s.actions[ai].item];
                    crate::output::Secrets::of(&item.parameters).without(&item.shown_values())
                };
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

    pub(super) fn log_output(&mut self, job: Id, stream: proto::OutputStream, text: &str) {
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
}
