//! Detection: the probes sent when the session starts, and the plan made from their results.

use super::*;
use std::collections::BTreeMap;
use upkeep_agent_protocol::ScriptOutcome;

impl Machine<'_> {
    /// `AwaitDetect`: once the agent is there and a slot is free, send the detection probes.
    pub(super) fn start_detection(&mut self) -> Flow {
        if !self.ready_for_agent() {
            return Flow::Wait;
        }
        self.s.started_at.get_or_insert(self.env.now);
        self.s.stage = Stage::Detecting;
        self.set_status(SessionStatus::Detecting, None);
        let probes = self.detection_probes(true);
        self.log(format!(
            "Detecting the state of {} item(s)",
            self.s.items.len()
        ));
        self.dispatch(JobPurpose::Detect, JobKind::Probe { probes });
        Flow::Again
    }

    /// The probes of a detection (`with_versions`: and the versions scripts whose cached answer
    /// is not fresh) or of a verification.
    pub(super) fn detection_probes(&self, with_versions: bool) -> Vec<Probe> {
        let timeout = self.env.limits.probe_timeout_seconds;
        let mut probes = Vec::new();
        for (i, item) in self.s.items.iter().enumerate() {
            if item.invalid.is_some() {
                // Its scripts would run without the values they need.
                continue;
            }
            let (d, c, t) = plan::probe_ids(i);
            let params = item.parameters.clone();
            match &item.what {
                ItemWhat::Software { software, .. } => {
                    probes.push(probe(d, &software.detection_script, &params, timeout));
                    if let Some(task) = &software.configuration_task {
                        probes.push(probe(c, &task.test_script, &params, timeout));
                    }
                    if let Some(script) = &software.versions_script
                        && with_versions
                        && !self
                            .env
                            .versions_cache
                            .get(&software.id)
                            .is_some_and(|c| c.fresh(self.env.now, software.versions_cache_minutes))
                    {
                        probes.push(probe(plan::versions_probe_id(i), script, &params, timeout));
                    }
                }
                ItemWhat::Task { task, mode } => {
                    probes.push(probe(t, &task.test_script, &params, timeout));
                    if let Some(get) = &task.get_script
                        && *mode != TaskMode::Ignore
                    {
                        probes.push(probe(plan::get_probe_id(i), get, &params, timeout));
                    }
                }
            }
        }
        probes
    }

    pub(super) fn on_detected(&mut self, outcome: JobOutcome) {
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
        self.plan_actions(&results);
        self.note_detected(&results);
        let compliance = self.s.compliance_of_actions();
        self.s.compliance = Some(compliance);
        if self.s.detection_only {
            self.finish_detection_only(compliance);
            return;
        }
        let work = self
            .s
            .actions
            .iter()
            .any(|a| plan::needs_execution(a) || a.step_failed);
        if !work {
            self.finish_nothing_to_do();
            return;
        }
        self.s.stage = Stage::AwaitExecute;
        if self.s.options.notify_before && !self.s.before_mail_sent {
            self.s.before_mail_sent = true;
            self.out.push(Effect::Mail(crate::mail::MailKind::Before));
        }
    }

    /// What detection (or verification) found, per item whose probes ran: the computer's last
    /// detection of each software and task (`Effect::Detected`).
    pub(super) fn note_detected(&mut self, results: &BTreeMap<String, ScriptOutcome>) {
        let found: Vec<_> = self
            .s
            .items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.invalid.is_none())
            .map(|(i, item)| (item.subject(), plan::found(i, results)))
            .collect();
        if !found.is_empty() {
            self.out.push(Effect::Detected(found));
        }
    }

    /// Each software item with a versions script takes, for this session, the versions the
    /// script printed now (kept for the cache), or those it printed last; when it failed, the
    /// static versions stay, and the log says so.
    fn apply_versions(&mut self, results: &BTreeMap<String, ScriptOutcome>) {
        for i in 0..self.s.items.len() {
            let ItemWhat::Software { software, .. } = &self.s.items[i].what else {
                continue;
            };
            if software.versions_script.is_none() {
                continue;
            }
            let (found, note) = match results.get(&plan::versions_probe_id(i)) {
                Some(o) => match versions_answer(o) {
                    Ok(v) => {
                        self.out.push(Effect::VersionsFound {
                            software: software.id,
                            versions: v.clone(),
                        });
                        let note = found_note(&v, "");
                        (Some(v), note)
                    }
                    Err(e) => (
                        None,
                        format!("versions script failed ({e}); the static versions stand"),
                    ),
                },
                None => match self.env.versions_cache.get(&software.id) {
                    Some(c) => (
                        Some(c.versions.clone()),
                        found_note(&c.versions, " (cached)"),
                    ),
                    None => (
                        None,
                        "versions script did not run; the static versions stand".into(),
                    ),
                },
            };
            let ItemWhat::Software { software, .. } = &mut self.s.items[i].what else {
                continue;
            };
            if let Some(v) = found
                .as_deref()
                .and_then(|f| crate::versions::effective(software, f))
            {
                software.versions = v;
            }
            software.versions_note = Some(note.clone());
            let line = format!("{}: {note}", software.name);
            self.log(line);
        }
    }

    /// One action per item, planned from the detection results, each announced with its reason.
    fn plan_actions(&mut self, results: &BTreeMap<String, ScriptOutcome>) {
        self.apply_versions(results);
        self.s.actions = self
            .s
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| plan::plan(i, item, &plan::found(i, results), self.env.ids.next()))
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
    }

    /// A detection-only session ends with its detection: `PASSED` with the compliance found,
    /// `FAILED` naming the items whose detection failed.
    fn finish_detection_only(&mut self, compliance: Compliance) {
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
    }

    /// Nothing to execute: every action ends now (compliant ones and audits succeed), and the
    /// before-mail goes out only when the session asked to hear about compliant computers too.
    fn finish_nothing_to_do(&mut self) {
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
    }
}

/// A versions script's answer: the versions it printed, or why they cannot be used.
fn versions_answer(o: &ScriptOutcome) -> Result<Vec<crate::versions::Discovered>, String> {
    if o.exit_code != Some(0) || o.timed_out {
        return Err(plan::describe_failure("it", o));
    }
    if o.truncated {
        return Err("its output was cut short".into());
    }
    crate::versions::parse(&o.stdout)
}

fn found_note(v: &[crate::versions::Discovered], how: &str) -> String {
    format!(
        "{} version(s) from its versions script{how}, newest {}",
        v.len(),
        crate::versions::newest(v).unwrap_or("none")
    )
}
