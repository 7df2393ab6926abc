//! Engine tests: sessions built by hand, driven by events, answered with agent-protocol results.
//! No I/O, no clock, no sleeps. Every step of every test goes through [`Run::apply`], which
//! checks the invariants the property tests check (legal status transitions, every status change
//! emitted, one job at a time, nothing changes after the end, ...).

use super::*;
use chrono::TimeZone;
use proptest::prelude::*;
use std::collections::BTreeMap;
use upkeep_agent_protocol::{ProbeResult, ScriptOutcome};

// ---------------------------------------------------------------------------------------------
// Fixtures

fn t0() -> Time {
    chrono::Utc.with_ymd_and_hms(2025, 6, 2, 20, 0, 0).unwrap()
}

/// `t0` plus `m` minutes.
fn mins(m: i64) -> Time {
    t0() + Duration::minutes(m)
}

thread_local! {
    /// The next id this thread's engine steps get; [`Run::new`] starts it over, so a run (and a
    /// failing property case) replays byte for byte.
    static NEXT_ID: std::cell::Cell<u128> = const { std::cell::Cell::new(1 << 64) };
}

fn test_ids() -> IdSource {
    IdSource::new(|| {
        NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id + 1);
            Id::from_u128(id)
        })
    })
}

fn env_at(now: Time) -> Env {
    Env {
        ids: test_ids(),
        now,
        online: true,
        slot_available: true,
        reboot_held_until: None,
        reboot_pending: false,
        agent_reboot_pending: false,
        last_boot_at: None,
        versions_cache: BTreeMap::new(),
        limits: Limits::default(),
    }
}

fn offline_at(now: Time) -> Env {
    Env {
        online: false,
        ..env_at(now)
    }
}

fn script(body: &str) -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body: body.into(),
    }
}

fn task(name: &str, with_set_script: bool) -> TaskSnapshot {
    TaskSnapshot {
        id: Id::new(),
        name: name.into(),
        test_script: script(&format!("test {name}")),
        set_script: with_set_script.then(|| script(&format!("set {name}"))),
        get_script: None,
        parameters: vec![],
    }
}

/// Software whose scripts say what they are: `detect App`, `install App 1.10.0`, `uninstall App`.
fn software(name: &str, versions: &[&str]) -> SoftwareSnapshot {
    SoftwareSnapshot {
        id: Id::new(),
        name: name.into(),
        detection_script: script(&format!("detect {name}")),
        versions: versions
            .iter()
            .map(|v| SoftwareVersion {
                version: v.to_string(),
                install_script: script(&format!("install {name} {v}")),
                upgrade_script: None,
                installer: None,
            })
            .collect(),
        uninstall_script: Some(script(&format!("uninstall {name}"))),
        configuration_task: None,
        versions_script: None,
        versions_cache_minutes: 60,
        install_script: None,
        upgrade_script: None,
        depends_on: vec![],
        versions_note: None,
    }
}

/// "1.9.2" sorts after "1.10.0" as text; the latest is 1.10.0.
fn app() -> SoftwareSnapshot {
    software("App", &["1.9.2", "1.10.0", "1.2.0"])
}

fn item(what: ItemWhat) -> PlanItem {
    PlanItem {
        deployment_id: Id::new(),
        order: DeploymentOrder::Unordered,
        position: 0,
        enforcement: Enforcement::Required,
        parameters: BTreeMap::new(),
        invalid: None,
        what,
        rule: "only matching deployment (ALL_COMPUTERS)".into(),
        prerequisites: vec![],
        needed_by: None,
    }
}

fn sw_item(
    software: SoftwareSnapshot,
    desired: DesiredSoftwareState,
    version: Option<&str>,
) -> PlanItem {
    item(ItemWhat::Software {
        software,
        desired,
        version: version.map(String::from),
    })
}

fn task_item(task: TaskSnapshot, mode: TaskMode) -> PlanItem {
    item(ItemWhat::Task { task, mode })
}

/// A new session as `startMaintenanceSession` makes it: waiting to detect.
fn session(items: Vec<PlanItem>, options: MaintenanceOptions) -> Session {
    Session {
        id: Id::new(),
        tenant_id: Id::new(),
        computer_id: Id::new(),
        schedule_id: None,
        status: SessionStatus::Pending,
        status_reason: None,
        trigger: SessionTrigger::Manual,
        detection_only: false,
        options,
        created_by: "tech@msp.example".into(),
        created_at: t0(),
        started_at: None,
        finished_at: None,
        execute_at: None,
        window_end: None,
        postpone_count: 0,
        end_user_postpones: 0,
        reboot_required: false,
        rebooted_at: None,
        compliance: None,
        items,
        actions: vec![],
        stage: Stage::AwaitDetect,
        pending_job: None,
        wake_at: None,
        offline_since: None,
        last_sequence: 0,
        before_mail_sent: false,
        after_mail_sent: false,
        deployment_ids: None,
        used_tokens: vec![],
        offline_in_window: false,
        queued: false,
        time_zone: crate::types::TimeZone::UTC.into(),
        mail_siblings: vec![],
        reboot_held_until: None,
        preflight: vec![],
        preflight_since: None,
        preflight_message: None,
        pre_rebooted_at: None,
        prompted: false,
        revision: 0,
        rollout: None,
    }
}

fn out(code: i32, stdout: &str) -> ScriptOutcome {
    ScriptOutcome {
        exit_code: Some(code),
        stdout: stdout.into(),
        ..Default::default()
    }
}

/// Detection output of an installed version.
fn installed(version: &str) -> ScriptOutcome {
    out(0, &format!("{version}\n"))
}

/// Detection output of software that is not there.
fn absent() -> ScriptOutcome {
    out(1, "")
}

fn step_result(code: i32) -> JobOutcome {
    JobOutcome::Step {
        outcome: out(code, ""),
    }
}

fn json(s: &Session) -> serde_json::Value {
    serde_json::to_value(s).unwrap()
}

fn dispatched(effects: &[Effect]) -> Vec<&JobKind> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch { kind, .. } => Some(kind),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The invariants every step keeps

/// The status changes the contract allows (§5: a session detects, may wait, executes, verifies,
/// ends once). Staying in the same status is always allowed.
fn allowed(from: SessionStatus, to: SessionStatus) -> bool {
    use SessionStatus::*;
    from == to
        || match from {
            Pending => matches!(to, Detecting | Postponed | Executing | Cancelled),
            Detecting => matches!(
                to,
                Pending | Scheduled | Executing | Passed | Failed | Cancelled
            ),
            Scheduled => matches!(to, Pending | Postponed | Executing | Cancelled),
            Postponed => matches!(to, Pending | Executing | Cancelled),
            Executing => matches!(to, Verifying | Cancelled | PendingPreflight),
            PendingPreflight => matches!(to, Executing | Cancelled),
            Verifying => matches!(to, Passed | Failed | Cancelled),
            Passed | Failed | Cancelled => false,
        }
}

fn stage_rank(stage: &Stage) -> u8 {
    match stage {
        Stage::AwaitDetect => 0,
        Stage::Detecting => 1,
        Stage::AwaitExecute => 2,
        Stage::Executing
        | Stage::Preflight { .. }
        | Stage::PreReboot { .. }
        | Stage::RebootPrompted { before: true, .. } => 3,
        Stage::RebootHeld | Stage::RebootPrompted { before: false, .. } => 4,
        Stage::Rebooting { .. } => 5,
        Stage::Verifying => 6,
        Stage::Done => 7,
    }
}

/// What must hold of a session between steps.
// Long on purpose: a flat list of independent invariants, each one assertion; it reads best whole.
fn assert_consistent(s: &Session) {
    use SessionStatus as S;
    let stage_fits = match s.status {
        S::Pending => matches!(s.stage, Stage::AwaitDetect | Stage::AwaitExecute),
        S::Detecting => s.stage == Stage::Detecting,
        S::Scheduled | S::Postponed => s.stage == Stage::AwaitExecute,
        S::Executing => matches!(
            s.stage,
            Stage::Executing
                | Stage::RebootHeld
                | Stage::Rebooting { .. }
                | Stage::Preflight { retry_at: None }
                | Stage::PreReboot { .. }
                | Stage::RebootPrompted { .. }
        ),
        S::PendingPreflight => matches!(s.stage, Stage::Preflight { .. }),
        S::Verifying => s.stage == Stage::Verifying,
        S::Passed | S::Failed | S::Cancelled => s.stage == Stage::Done,
    };
    assert!(stage_fits, "status {:?} in stage {:?}", s.status, s.stage);
    let job_stage = matches!(
        s.stage,
        Stage::Detecting | Stage::Executing | Stage::Rebooting { .. } | Stage::Verifying
    );
    // These stages wait with or without their job (for the agent, a retry, the prompt time).
    let optional_job = matches!(
        s.stage,
        Stage::Preflight { retry_at: None }
            | Stage::PreReboot { .. }
            | Stage::RebootPrompted { .. }
    );
    assert!(
        optional_job || s.pending_job.is_some() == job_stage,
        "a job is pending exactly in stage {:?}",
        s.stage
    );
    if let Some(p) = &s.pending_job {
        let purpose_fits = match p.purpose {
            JobPurpose::Detect => s.stage == Stage::Detecting,
            JobPurpose::Step { .. } | JobPurpose::StepTest { .. } => s.stage == Stage::Executing,
            JobPurpose::Reboot => matches!(s.stage, Stage::Rebooting { .. }),
            JobPurpose::Verify => s.stage == Stage::Verifying,
            JobPurpose::Preflight => s.stage == Stage::Preflight { retry_at: None },
            JobPurpose::PreReboot => matches!(s.stage, Stage::PreReboot { .. }),
            JobPurpose::Prompt => matches!(s.stage, Stage::RebootPrompted { .. }),
        };
        assert!(
            purpose_fits,
            "job {:?} pending in stage {:?}",
            p.purpose, s.stage
        );
    }
    if matches!(s.status, S::Scheduled | S::Postponed) {
        assert_eq!(
            s.wake_at, s.execute_at,
            "a waiting session wakes at its execution time"
        );
    }
    if s.queued {
        assert_eq!(s.status, S::Pending);
        assert_eq!(s.status_reason.as_deref(), Some("queued"));
    }
    assert!(s.postpone_count <= s.options.max_postpones);
    for a in &s.actions {
        if plan::is_audit(&s.items[a.item]) {
            assert_ne!(
                a.status,
                ActionStatus::Failed,
                "an AUDIT task never fails: {a:?}"
            );
        }
    }
    if !s.status.is_terminal() {
        assert!(s.finished_at.is_none());
        return;
    }
    assert!(
        s.finished_at.is_some() && s.wake_at.is_none() && !s.queued && s.status_reason.is_some()
    );
    let statuses: Vec<ActionStatus> = s.actions.iter().map(|a| a.status).collect();
    match s.status {
        S::Cancelled => assert!(
            statuses
                .iter()
                .all(|a| !matches!(a, ActionStatus::Pending | ActionStatus::Running)),
            "a cancelled session leaves no action pending or running: {statuses:?}"
        ),
        _ if s.detection_only => {
            assert!(
                statuses
                    .iter()
                    .all(|a| matches!(a, ActionStatus::Pending | ActionStatus::DetectionFailed)),
                "detection only runs nothing"
            );
            if statuses.contains(&ActionStatus::DetectionFailed) {
                assert_eq!(s.status, S::Failed, "a failed detection fails the session");
            }
            if s.status == S::Failed {
                assert!(
                    s.actions.is_empty() || statuses.contains(&ActionStatus::DetectionFailed),
                    "detection only fails only when detection failed"
                );
            }
        }
        S::Passed => assert!(
            statuses.iter().all(|a| *a == ActionStatus::Succeeded),
            "{statuses:?}"
        ),
        _ => {
            // FAILED: detection failed (no actions, or for an action) or some action failed;
            // an action whose prerequisite failed was skipped.
            assert!(statuses.iter().all(|a| matches!(
                a,
                ActionStatus::Succeeded
                    | ActionStatus::Failed
                    | ActionStatus::DetectionFailed
                    | ActionStatus::Skipped
            )));
            assert!(
                s.actions.is_empty()
                    || statuses.contains(&ActionStatus::Failed)
                    || statuses.contains(&ActionStatus::DetectionFailed),
                "{statuses:?}"
            );
        }
    }
    for a in &s.actions {
        if a.status == ActionStatus::DetectionFailed {
            assert_eq!(a.compliance, Compliance::Unknown, "{a:?}");
            assert_eq!(
                a.next_step, 0,
                "nothing runs after a failed detection: {a:?}"
            );
        }
        if a.status == ActionStatus::Running {
            assert!(
                !a.step_failed && a.next_step < a.steps.len(),
                "RUNNING only while a step is still to run: {a:?}"
            );
        }
    }
    if s.status != S::Cancelled && !s.actions.is_empty() {
        assert_eq!(s.compliance, Some(s.compliance_of_actions()));
    }
}

/// Drives one session and checks every step.
struct Run {
    s: Session,
    now: Time,
    /// Every job handed out.
    jobs: BTreeMap<Id, JobKind>,
    /// Jobs the engine gave up on.
    abandoned: Vec<Id>,
    /// Every status the session was in, in order.
    history: Vec<SessionStatus>,
    finished: usize,
}

impl Run {
    fn new(s: Session) -> Run {
        assert_consistent(&s);
        NEXT_ID.with(|n| n.set(1 << 64));
        Run {
            history: vec![s.status],
            s,
            now: t0(),
            jobs: BTreeMap::new(),
            abandoned: vec![],
            finished: 0,
        }
    }

    fn env(&self) -> Env {
        env_at(self.now)
    }

    /// One engine step with `env` (whose `now` becomes the run's time), checked.
    fn apply(&mut self, env: &Env, event: Event) -> Result<Vec<Effect>, EngineError> {
        assert!(
            env.now >= self.now,
            "time only moves forward in these tests"
        );
        self.now = env.now;
        let before = self.s.clone();
        let may_refuse = matches!(
            event,
            Event::Cancel { .. }
                | Event::Postpone { .. }
                | Event::UpdateNow { .. }
                | Event::RunNow { .. }
        );
        let settled = match &event {
            Event::JobDone { job, .. } | Event::JobLost { job, .. } => Some(*job),
            _ => None,
        };
        let late = settled.is_some_and(|j| self.abandoned.contains(&j));
        let result = step(&mut self.s, env, event);
        match &result {
            Err(e) => {
                assert!(may_refuse, "only commands may be refused, not {e:?}");
                assert_eq!(
                    json(&before),
                    json(&self.s),
                    "a refused event changes nothing"
                );
            }
            Ok(effects) => {
                if late {
                    assert!(
                        effects.is_empty(),
                        "a late result for an abandoned job does nothing: {effects:?}"
                    );
                    assert_eq!(
                        json(&before),
                        json(&self.s),
                        "a late result changes nothing"
                    );
                }
                self.check(&before, settled, effects);
            }
        }
        result
    }

    // Long on purpose: a flat list of independent checks of one step, each commented; it reads best whole.
    fn check(&mut self, before: &Session, settled: Option<Id>, effects: &[Effect]) {
        let after = &self.s.clone();
        if before.status.is_terminal() {
            assert!(
                effects.is_empty(),
                "a finished session does nothing: {effects:?}"
            );
            assert_eq!(
                json(before),
                json(after),
                "a finished session never changes"
            );
            return;
        }
        // Every status change is emitted with the new status, in a legal order.
        let mut status = before.status;
        for e in effects {
            if let Effect::Emit {
                status: to, log, ..
            } = e
                && *to != status
            {
                assert!(
                    allowed(status, *to),
                    "illegal transition {status:?} -> {to:?}"
                );
                assert!(log.is_some(), "a status change says what happened");
                self.history.push(*to);
                status = *to;
            }
        }
        assert_eq!(
            status, after.status,
            "the status change to {:?} was emitted",
            after.status
        );
        let finished = effects
            .iter()
            .filter(|e| matches!(e, Effect::Finished))
            .count();
        assert_eq!(
            finished,
            usize::from(after.status.is_terminal()),
            "Finished once, when it ends"
        );
        self.finished += finished;
        assert!(self.finished <= 1);
        assert!(
            stage_rank(&after.stage) >= stage_rank(&before.stage)
                // Postponing at the prompt before a pending reboot postpones the session.
                || after.status == SessionStatus::Postponed,
            "{:?} -> {:?}",
            before.stage,
            after.stage
        );
        assert!(after.postpone_count >= before.postpone_count);

        // One job at a time; none is dropped silently.
        let before_job = before.pending_job.as_ref().map(|p| p.id);
        let after_job = after.pending_job.as_ref().map(|p| p.id);
        let mut new_jobs = vec![];
        for e in effects {
            match e {
                Effect::Dispatch { job, kind, .. } => {
                    assert!(
                        self.jobs.insert(*job, kind.clone()).is_none(),
                        "job ids are fresh"
                    );
                    new_jobs.push(*job);
                }
                Effect::Abandon { job } => {
                    assert_eq!(
                        Some(*job),
                        before_job,
                        "only the outstanding job is abandoned"
                    );
                    assert_ne!(
                        Some(*job),
                        settled,
                        "a job that just reported is not abandoned"
                    );
                    self.abandoned.push(*job);
                }
                _ => {}
            }
        }
        assert!(new_jobs.len() <= 1, "one job at a time: {effects:?}");
        match new_jobs.first() {
            Some(j) => assert_eq!(after_job, Some(*j)),
            None => assert!(after_job.is_none() || after_job == before_job),
        }
        if let Some(j) = before_job
            && after_job != Some(j)
        {
            assert!(
                settled == Some(j) || self.abandoned.contains(&j),
                "job {j} was dropped"
            );
        }
        if let Some(p) = &after.pending_job {
            let kind = &self.jobs[&p.id];
            let fits = match p.purpose {
                JobPurpose::Detect | JobPurpose::Verify | JobPurpose::StepTest { .. } => {
                    matches!(kind, JobKind::Probe { .. })
                }
                JobPurpose::Step { .. } => matches!(kind, JobKind::Step { .. }),
                JobPurpose::Reboot | JobPurpose::PreReboot => matches!(kind, JobKind::Reboot {}),
                JobPurpose::Preflight => matches!(kind, JobKind::Probe { .. }),
                JobPurpose::Prompt => matches!(kind, JobKind::Prompt { .. }),
            };
            assert!(fits, "{:?} job for {:?}", kind, p.purpose);
        }
        if after.detection_only {
            assert!(
                self.jobs.len() <= 1,
                "detection only sends the detection job and nothing else"
            );
            assert!(
                self.jobs
                    .values()
                    .all(|k| matches!(k, JobKind::Probe { .. }))
            );
        }
        assert_consistent(after);
    }

    fn ok(&mut self, event: Event) -> Vec<Effect> {
        let env = self.env();
        self.apply(&env, event).unwrap()
    }

    fn ok_with(&mut self, env: Env, event: Event) -> Vec<Effect> {
        self.apply(&env, event).unwrap()
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.ok(Event::Tick)
    }

    fn tick_with(&mut self, env: Env) -> Vec<Effect> {
        self.ok_with(env, Event::Tick)
    }

    fn pending(&self) -> (Id, JobPurpose, JobKind) {
        let p = self.s.pending_job.clone().expect("a job is pending");
        let kind = self.jobs[&p.id].clone();
        (p.id, p.purpose, kind)
    }

    fn answer(&mut self, outcome: JobOutcome) -> Vec<Effect> {
        let (job, _, _) = self.pending();
        self.ok(Event::JobDone { job, outcome })
    }

    fn answer_with(&mut self, env: Env, outcome: JobOutcome) -> Vec<Effect> {
        let (job, _, _) = self.pending();
        self.ok_with(env, Event::JobDone { job, outcome })
    }

    /// Answers the pending probe job; every probe must be listed.
    fn probes(&mut self, answers: &[(&str, ScriptOutcome)]) -> Vec<Effect> {
        let (_, _, kind) = self.pending();
        self.answer(probe_answer(&kind, answers))
    }

    /// Label and script body of the pending step job.
    fn step_job(&self) -> (String, String) {
        match self.pending() {
            (_, JobPurpose::Step { .. }, JobKind::Step { label, script, .. }) => {
                (label, script.body)
            }
            other => panic!("no step job pending: {other:?}"),
        }
    }

    /// Probe ids and script bodies of the pending probe job.
    fn probe_job(&self) -> Vec<(String, String)> {
        match self.pending() {
            (_, _, JobKind::Probe { probes }) => probes
                .into_iter()
                .map(|p| (p.probe_id, p.script.body))
                .collect(),
            other => panic!("no probe job pending: {other:?}"),
        }
    }

    fn purpose(&self) -> JobPurpose {
        self.pending().1
    }

    fn action(&self, i: usize) -> &Action {
        &self.s.actions[i]
    }
}

fn probe_answer(kind: &JobKind, answers: &[(&str, ScriptOutcome)]) -> JobOutcome {
    let JobKind::Probe { probes } = kind else {
        panic!("not a probe job: {kind:?}");
    };
    assert_eq!(
        probes.len(),
        answers.len(),
        "answer every probe of {probes:?}"
    );
    let results = probes
        .iter()
        .map(|p| {
            let (_, o) = answers
                .iter()
                .find(|(id, _)| *id == p.probe_id)
                .unwrap_or_else(|| panic!("no answer for probe {}", p.probe_id));
            ProbeResult {
                probe_id: p.probe_id.clone(),
                outcome: o.clone(),
            }
        })
        .collect();
    JobOutcome::Probe { results }
}

/// A session of `items` with default options, detected (online, slot free) with `answers`.
fn detected(items: Vec<PlanItem>, answers: &[(&str, ScriptOutcome)]) -> Run {
    let mut run = Run::new(session(items, MaintenanceOptions::default()));
    run.tick();
    assert_eq!(run.purpose(), JobPurpose::Detect);
    run.probes(answers);
    run
}

// ---------------------------------------------------------------------------------------------
// Detection only

#[test]
fn detection_only_plans_actions_and_passes_with_the_detected_compliance() {
    let mut s = session(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            task_item(task("Firewall", true), TaskMode::Enforce),
        ],
        MaintenanceOptions::default(),
    );
    s.detection_only = true;
    let mut run = Run::new(s);
    let effects = run.tick();
    assert_eq!(run.s.status, SessionStatus::Detecting);
    assert_eq!(dispatched(&effects).len(), 1);
    assert_eq!(
        run.probe_job(),
        vec![
            ("d0".to_string(), "detect App".to_string()),
            ("t1".into(), "test Firewall".into())
        ]
    );

    let effects = run.probes(&[("d0", installed("1.9.2")), ("t1", out(1, ""))]);
    assert!(
        dispatched(&effects).is_empty(),
        "detection only changes nothing on the computer"
    );
    assert!(effects.contains(&Effect::Finished));
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(
        run.s
            .status_reason
            .as_deref()
            .unwrap()
            .starts_with("detection only"),
        "{:?}",
        run.s.status_reason
    );
    assert_eq!(run.s.compliance, Some(Compliance::NonCompliant));
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::Upgrade,
            ActionStatus::Pending,
            Compliance::NonCompliant
        )
    );
    assert_eq!(a.reason, "1.9.2 installed, latest is 1.10.0");
    assert_eq!(a.detected_version.as_deref(), Some("1.9.2"));
    let a = run.action(1);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::RunTask,
            ActionStatus::Pending,
            Compliance::NonCompliant
        )
    );
    assert_eq!(
        run.history,
        [
            SessionStatus::Pending,
            SessionStatus::Detecting,
            SessionStatus::Passed
        ]
    );
}

#[test]
fn detection_only_fails_when_a_test_could_not_decide() {
    let mut s = session(
        vec![task_item(task("Disk", true), TaskMode::Enforce)],
        MaintenanceOptions::default(),
    );
    s.detection_only = true;
    let mut run = Run::new(s);
    run.tick();
    run.probes(&[("t0", out(2, "oops"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("detection failed: Disk")
    );
    assert_eq!(run.s.compliance, Some(Compliance::Unknown));
    assert_eq!(run.action(0).status, ActionStatus::DetectionFailed);
}

#[test]
fn detection_only_fails_only_when_the_detection_job_failed() {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    );
    s.detection_only = true;
    let mut run = Run::new(s);
    run.tick();
    let effects = run.answer(JobOutcome::Failed {
        error: "the agent restarted".into(),
    });
    assert!(effects.contains(&Effect::Finished));
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("detection failed: the agent restarted")
    );
    assert!(run.s.actions.is_empty());
}

#[test]
fn lost_detection_job_fails_a_full_session() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    let (job, _, _) = run.pending();
    run.ok(Event::JobLost {
        job,
        reason: "agent did not report back".into(),
    });
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert!(
        run.s
            .status_reason
            .as_deref()
            .unwrap()
            .contains("agent did not report back")
    );
}

// ---------------------------------------------------------------------------------------------
// Software states

#[test]
fn installed_latest_not_installed_installs_the_numerically_highest_version_and_verifies() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    assert_eq!(run.s.started_at, Some(t0()));
    let effects = run.probes(&[("d0", absent())]);
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert_eq!(dispatched(&effects).len(), 1);
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.status),
        (ActionKind::Install, ActionStatus::Running)
    );
    assert_eq!(a.reason, "not installed; latest is 1.10.0");
    assert_eq!(a.desired_version.as_deref(), Some("1.10.0"));
    assert_eq!(
        run.step_job(),
        (
            "install App 1.10.0".to_string(),
            "install App 1.10.0".to_string()
        )
    );
    let Effect::Dispatch { lease_seconds, .. } = effects
        .iter()
        .find(|e| matches!(e, Effect::Dispatch { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(*lease_seconds, STEP_TIMEOUT_SECONDS + LEASE_SLACK_SECONDS);

    run.answer(step_result(0));
    assert_eq!(run.s.status, SessionStatus::Verifying);
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(
        run.probe_job(),
        vec![("d0".to_string(), "detect App".to_string())]
    );

    let effects = run.probes(&[("d0", installed("1.10.0"))]);
    assert!(effects.contains(&Effect::Finished));
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 1 actions succeeded")
    );
    assert_eq!(run.s.compliance, Some(Compliance::Compliant));
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Succeeded, Compliance::Compliant)
    );
    assert_eq!(a.detected_version.as_deref(), Some("1.10.0"));
    assert!(a.started_at.is_some() && a.finished_at.is_some());
    assert_eq!(
        run.history,
        [
            SessionStatus::Pending,
            SessionStatus::Detecting,
            SessionStatus::Executing,
            SessionStatus::Verifying,
            SessionStatus::Passed
        ]
    );
}

#[test]
fn older_version_is_upgraded_with_the_upgrade_script() {
    let mut sw = app();
    sw.versions[1].upgrade_script = Some(script("upgrade App 1.10.0"));
    let mut run = detected(
        vec![sw_item(sw, DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", installed("1.9.2"))],
    );
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::Upgrade);
    assert_eq!(a.reason, "1.9.2 installed, latest is 1.10.0");
    assert_eq!(a.detected_version.as_deref(), Some("1.9.2"));
    assert_eq!(
        run.step_job(),
        (
            "upgrade App to 1.10.0".to_string(),
            "upgrade App 1.10.0".to_string()
        )
    );
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
}

#[test]
fn install_and_upgrade_steps_carry_their_version_installer_and_a_failed_fetch_fails_the_action() {
    let installer = Installer {
        sha256: "ab".repeat(32),
        size: Some(3),
        url: None,
        file_name: Some("app.msi".into()),
    };
    let mut sw = app();
    sw.versions[1].installer = Some(installer.clone());
    for found in [absent(), installed("1.2.0")] {
        let mut run = detected(
            vec![sw_item(
                sw.clone(),
                DesiredSoftwareState::InstalledLatest,
                None,
            )],
            &[("d0", found)],
        );
        let JobKind::Step {
            installer: sent, ..
        } = run.pending().2
        else {
            panic!("no step job pending");
        };
        assert_eq!(
            sent,
            Some(proto::InstallerRef {
                sha256: installer.sha256.clone(),
                size: Some(3),
                url: None,
                file_name: Some("app.msi".into()),
            })
        );
        // What the agent answers when the file does not match: the action fails with it.
        let error = format!(
            "installer hash mismatch: expected {}, got {}",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        run.answer(JobOutcome::Failed {
            error: error.clone(),
        });
        run.probes(&[("d0", absent())]);
        let a = run.action(0);
        assert_eq!(a.status, ActionStatus::Failed);
        assert!(
            a.result_message
                .as_deref()
                .is_some_and(|m| m.ends_with(&error)),
            "{a:?}"
        );
    }
    // Another version without one sends none.
    let run = detected(
        vec![sw_item(
            sw,
            DesiredSoftwareState::InstalledVersion,
            Some("1.9.2"),
        )],
        &[("d0", absent())],
    );
    assert!(matches!(
        run.pending().2,
        JobKind::Step {
            installer: None,
            ..
        }
    ));
}

#[test]
fn upgrade_without_an_upgrade_script_runs_the_install_script() {
    let run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", installed("1.2.0"))],
    );
    assert_eq!(run.step_job().1, "install App 1.10.0");
}

#[test]
fn installed_version_above_the_wanted_one_uninstalls_then_installs() {
    let mut run = detected(
        vec![sw_item(
            app(),
            DesiredSoftwareState::InstalledVersion,
            Some("1.9.2"),
        )],
        &[("d0", installed("1.10.0"))],
    );
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::Install);
    assert_eq!(a.desired_version.as_deref(), Some("1.9.2"));
    assert!(
        a.reason.contains("newer than the wanted 1.9.2"),
        "{}",
        a.reason
    );
    assert_eq!(
        run.step_job(),
        (
            "uninstall App 1.10.0".to_string(),
            "uninstall App".to_string()
        )
    );
    run.answer(step_result(0));
    assert_eq!(
        run.step_job(),
        (
            "install App 1.9.2".to_string(),
            "install App 1.9.2".to_string()
        )
    );
    run.answer(step_result(0));
    assert_eq!(run.purpose(), JobPurpose::Verify);
    run.probes(&[("d0", installed("1.9.2"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.action(0).compliance, Compliance::Compliant);
}

#[test]
fn installed_version_below_the_wanted_one_upgrades_to_it_not_to_latest() {
    let run = detected(
        vec![sw_item(
            app(),
            DesiredSoftwareState::InstalledVersion,
            Some("1.9.2"),
        )],
        &[("d0", installed("1.2.0"))],
    );
    assert_eq!(run.action(0).kind, ActionKind::Upgrade);
    assert_eq!(run.action(0).reason, "1.2.0 installed, 1.9.2 wanted");
    assert_eq!(run.step_job().1, "install App 1.9.2");
}

#[test]
fn installed_at_least() {
    let ok = detected(
        vec![sw_item(
            app(),
            DesiredSoftwareState::InstalledAtLeast,
            Some("1.5"),
        )],
        &[("d0", installed("1.9.2"))],
    );
    assert_eq!(ok.action(0).kind, ActionKind::NoAction);
    assert_eq!(ok.action(0).reason, "1.9.2 installed, at least 1.5 wanted");
    assert_eq!(ok.s.status, SessionStatus::Passed);

    let low = detected(
        vec![sw_item(
            app(),
            DesiredSoftwareState::InstalledAtLeast,
            Some("1.5"),
        )],
        &[("d0", installed("1.2.0"))],
    );
    assert_eq!(low.action(0).kind, ActionKind::Upgrade);
    assert_eq!(
        low.action(0).reason,
        "1.2.0 installed, below the minimum 1.5; latest is 1.10.0"
    );
    assert_eq!(low.step_job().1, "install App 1.10.0");

    let missing = detected(
        vec![sw_item(
            app(),
            DesiredSoftwareState::InstalledAtLeast,
            Some("1.5"),
        )],
        &[("d0", absent())],
    );
    assert_eq!(missing.action(0).kind, ActionKind::Install);
}

#[test]
fn installed_any() {
    let any = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledAny, None)],
        &[("d0", installed("0.1"))],
    );
    assert_eq!(any.action(0).kind, ActionKind::NoAction);
    assert_eq!(any.action(0).reason, "0.1 installed; any version will do");
    assert_eq!(any.s.status, SessionStatus::Passed);

    let none = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledAny, None)],
        &[("d0", absent())],
    );
    assert_eq!(none.action(0).kind, ActionKind::Install);
    assert_eq!(none.step_job().1, "install App 1.10.0");
}

#[test]
fn chatty_detection_output_counts_by_its_version_token() {
    let run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", installed("Chatty version 1.9.2"))],
    );
    assert_eq!(run.action(0).kind, ActionKind::Upgrade);
    assert_eq!(run.step_job().1, "install App 1.10.0");

    let current = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", installed("<b>1.10.0</b>"))],
    );
    assert_eq!(current.action(0).kind, ActionKind::NoAction);
    assert_eq!(current.s.status, SessionStatus::Passed);
}

#[test]
fn detection_without_a_version_is_unknown_and_never_compliant_with_a_requirement() {
    for (desired, version) in [
        (DesiredSoftwareState::InstalledLatest, None),
        (DesiredSoftwareState::InstalledVersion, Some("1.9.2")),
        (DesiredSoftwareState::InstalledAtLeast, Some("1.5")),
        (DesiredSoftwareState::UpdateIfFound, None),
    ] {
        let run = detected(
            vec![sw_item(app(), desired, version)],
            &[("d0", installed("<b>Chatty</b>"))],
        );
        let a = run.action(0);
        assert_eq!(a.kind, ActionKind::Upgrade, "{desired:?}");
        assert_eq!(a.compliance, Compliance::NonCompliant, "{desired:?}");
        assert!(
            a.reason.contains("detection printed no version"),
            "{desired:?}: {}",
            a.reason
        );
        // The exact version wanted, or else the latest.
        let want = match desired {
            DesiredSoftwareState::InstalledVersion => version.unwrap_or("?"),
            _ => "1.10.0",
        };
        assert_eq!(
            run.step_job().1,
            format!("install App {want}"),
            "{desired:?}"
        );
    }
    // Any version will do: an unknown one is still installed.
    let any = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledAny, None)],
        &[("d0", installed("<b>Chatty</b>"))],
    );
    assert_eq!(any.action(0).kind, ActionKind::NoAction);
}

#[test]
fn update_if_found_leaves_absent_software_alone_and_updates_found_software() {
    let absent_run = detected(
        vec![sw_item(app(), DesiredSoftwareState::UpdateIfFound, None)],
        &[("d0", absent())],
    );
    let a = absent_run.action(0);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::Succeeded,
            Compliance::Compliant
        )
    );
    assert_eq!(a.reason, "not installed; only updated where found");
    assert_eq!(absent_run.s.status, SessionStatus::Passed);
    assert_eq!(absent_run.jobs.len(), 1, "only the detection job");

    // An empty first line is "not installed" too, even with exit 0.
    let empty = detected(
        vec![sw_item(app(), DesiredSoftwareState::UpdateIfFound, None)],
        &[("d0", out(0, "\n"))],
    );
    assert_eq!(empty.action(0).kind, ActionKind::NoAction);

    let found = detected(
        vec![sw_item(app(), DesiredSoftwareState::UpdateIfFound, None)],
        &[("d0", installed("1.9.2"))],
    );
    assert_eq!(found.action(0).kind, ActionKind::Upgrade);
    assert_eq!(found.action(0).reason, "1.9.2 installed, latest is 1.10.0");
}

#[test]
fn uninstalled_removes_found_software() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::Uninstalled, None)],
        &[("d0", installed("1.9.2"))],
    );
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::Uninstall);
    assert_eq!(a.reason, "1.9.2 installed; should not be");
    assert_eq!(
        run.step_job(),
        ("uninstall App".to_string(), "uninstall App".to_string())
    );
    run.answer(step_result(0));
    run.probes(&[("d0", absent())]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.action(0).compliance, Compliance::Compliant);
    assert_eq!(run.action(0).detected_version, None);

    let gone = detected(
        vec![sw_item(app(), DesiredSoftwareState::Uninstalled, None)],
        &[("d0", absent())],
    );
    assert_eq!(gone.action(0).kind, ActionKind::NoAction);
    assert_eq!(gone.action(0).reason, "not installed, as desired");
    assert_eq!(gone.s.status, SessionStatus::Passed);
}

#[test]
fn software_still_wrong_after_execution_fails_its_action() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.9.2"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 1 actions failed")
    );
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Failed, Compliance::NonCompliant)
    );
    assert_eq!(
        a.result_message.as_deref(),
        Some("still not compliant after execution")
    );
}

#[test]
fn failed_verification_job_leaves_compliance_unknown() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    run.answer(step_result(0));
    run.answer(JobOutcome::Failed {
        error: "the agent restarted".into(),
    });
    assert_eq!(run.s.status, SessionStatus::Failed);
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Failed, Compliance::Unknown)
    );
    assert_eq!(run.s.compliance, Some(Compliance::Unknown));
}

// ---------------------------------------------------------------------------------------------
// Tasks

#[test]
fn enforce_task_sets_when_the_test_fails_and_tests_again() {
    let mut run = detected(
        vec![task_item(task("Firewall", true), TaskMode::Enforce)],
        &[("t0", out(1, ""))],
    );
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::RunTask);
    assert_eq!(a.reason, "test failed: the set script will run");
    assert_eq!(
        run.step_job(),
        ("run Firewall".to_string(), "set Firewall".to_string())
    );
    run.answer(step_result(0));
    assert_eq!(
        run.probe_job(),
        vec![("t0".to_string(), "test Firewall".to_string())]
    );
    run.probes(&[("t0", out(0, ""))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Succeeded, Compliance::Compliant)
    );
}

#[test]
fn enforce_task_still_failing_its_test_fails() {
    let mut run = detected(
        vec![task_item(task("Firewall", true), TaskMode::Enforce)],
        &[("t0", out(1, ""))],
    );
    run.answer(step_result(0));
    run.probes(&[("t0", out(1, ""))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(0).status, ActionStatus::Failed);
}

#[test]
fn enforce_task_without_a_set_script_is_audit_only() {
    let run = detected(
        vec![task_item(task("Firewall", false), TaskMode::Enforce)],
        &[("t0", out(1, ""))],
    );
    let a = run.action(0);
    assert_eq!(a.reason, "test failed; no set script, so audit only");
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::Succeeded,
            Compliance::NonCompliant
        )
    );
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.jobs.len(), 1, "nothing to run");
}

#[test]
fn audit_task_only_reports_never_fails() {
    // Non-compliant audit alone: nothing to run.
    let run = detected(
        vec![task_item(task("Bitlocker", true), TaskMode::Audit)],
        &[("t0", out(1, ""))],
    );
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.s.compliance, Some(Compliance::NonCompliant));
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::Succeeded,
            Compliance::NonCompliant
        )
    );
    assert_eq!(a.reason, "audit: test failed; audit only reports");
    assert!(
        !run.jobs.values().any(|k| matches!(k, JobKind::Step { .. })),
        "an audit never runs its set script"
    );

    // Next to a change: verified, reported, still not a failure.
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            task_item(task("Bitlocker", true), TaskMode::Audit),
        ],
        &[("d0", absent()), ("t1", out(1, ""))],
    );
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.10.0")), ("t1", out(1, ""))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.s.compliance, Some(Compliance::NonCompliant));
    let a = run.action(1);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Succeeded, Compliance::NonCompliant)
    );
    assert_eq!(a.result_message.as_deref(), Some("audit: not compliant"));

    // A broken audit test is a failed detection (CONTRACT §12), not an audit failure.
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            task_item(task("Bitlocker", true), TaskMode::Audit),
        ],
        &[("d0", absent()), ("t1", out(2, ""))],
    );
    assert_eq!(run.action(1).status, ActionStatus::DetectionFailed);
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.10.0")), ("t1", out(2, "boom"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(0).status, ActionStatus::Succeeded);
    assert_eq!(run.action(1).compliance, Compliance::Unknown);
}

#[test]
fn configuration_task_of_installed_software_tests_then_sets() {
    let mut sw = app();
    sw.configuration_task = Some(task("AppConfig", true));
    let mut run = detected(
        vec![sw_item(sw, DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", installed("1.10.0")), ("c0", out(1, ""))],
    );
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::RunTask);
    assert_eq!(
        a.reason,
        "1.10.0 installed, latest is 1.10.0; configuration task AppConfig is not compliant"
    );
    // The TestThenSet step first tests (a probe job) ...
    assert!(matches!(run.purpose(), JobPurpose::StepTest { .. }));
    assert_eq!(
        run.probe_job(),
        vec![("c0".to_string(), "test AppConfig".to_string())]
    );
    run.probes(&[("c0", out(1, ""))]);
    // ... and runs the set script as a step job when the test says "not compliant".
    assert_eq!(
        run.step_job(),
        ("run AppConfig".to_string(), "set AppConfig".to_string())
    );
    run.answer(step_result(0));
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(
        run.probe_job(),
        vec![
            ("d0".to_string(), "detect App".to_string()),
            ("c0".into(), "test AppConfig".into())
        ]
    );
    run.probes(&[("d0", installed("1.10.0")), ("c0", out(0, ""))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.action(0).compliance, Compliance::Compliant);
}

#[test]
fn configuration_task_after_an_install_skips_the_set_script_when_compliant() {
    let mut sw = app();
    sw.configuration_task = Some(task("AppConfig", true));
    let mut run = detected(
        vec![sw_item(sw, DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent()), ("c0", out(1, ""))],
    );
    assert_eq!(run.action(0).kind, ActionKind::Install);
    assert_eq!(run.step_job().0, "install App 1.10.0");
    run.answer(step_result(0));
    assert!(matches!(run.purpose(), JobPurpose::StepTest { .. }));
    run.probes(&[("c0", out(0, ""))]);
    assert_eq!(
        run.purpose(),
        JobPurpose::Verify,
        "compliant: the set script does not run"
    );
    run.probes(&[("d0", installed("1.10.0")), ("c0", out(0, ""))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    let steps = run
        .jobs
        .values()
        .filter(|k| matches!(k, JobKind::Step { .. }))
        .count();
    assert_eq!(steps, 1);
}

// ---------------------------------------------------------------------------------------------
// Failures and reboots

#[test]
fn a_failed_install_fails_its_action_and_the_others_still_run() {
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            sw_item(
                software("Tool", &["2.0"]),
                DesiredSoftwareState::InstalledLatest,
                None,
            ),
        ],
        &[("d0", absent()), ("d1", absent())],
    );
    assert_eq!(run.step_job().0, "install App 1.10.0");
    run.answer(JobOutcome::Step {
        outcome: ScriptOutcome {
            exit_code: Some(1),
            stderr: "downloading\ndisk full\n".into(),
            ..Default::default()
        },
    });
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert_eq!(
        run.step_job().0,
        "install Tool 2.0",
        "the next action still runs"
    );
    run.answer(step_result(0));
    run.probes(&[("d0", absent()), ("d1", installed("2.0"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 2 actions failed")
    );
    assert_eq!(run.action(0).status, ActionStatus::Failed);
    assert_eq!(
        run.action(0).result_message.as_deref(),
        Some("install App 1.10.0 exited 1: disk full")
    );
    assert_eq!(run.action(1).status, ActionStatus::Succeeded);
}

#[test]
fn a_failed_step_fails_its_action_even_when_verification_finds_it_compliant() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    let (job, _, _) = run.pending();
    run.ok(Event::JobLost {
        job,
        reason: "agent did not report back".into(),
    });
    assert_eq!(run.purpose(), JobPurpose::Verify);
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Failed, Compliance::Compliant)
    );
    assert_eq!(
        a.result_message.as_deref(),
        Some("install App 1.10.0: agent did not report back")
    );
}

#[test]
fn reboot_initiated_1641_leads_to_the_reboot_step_like_3010() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    let effects = run.answer(step_result(proto::EXIT_REBOOT_INITIATED));
    assert!(run.s.reboot_required && run.action(0).reboot_required);
    assert_eq!(dispatched(&effects), [&JobKind::Reboot {}]);
    assert_eq!(run.s.status_reason.as_deref(), Some("rebooting"));
}

#[test]
fn reboot_required_with_normal_preference_reboots_before_verification() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    let effects = run.answer(step_result(proto::EXIT_REBOOT_REQUIRED));
    assert!(run.s.reboot_required);
    assert!(run.action(0).reboot_required);
    assert_eq!(dispatched(&effects), [&JobKind::Reboot {}]);
    assert_eq!(run.purpose(), JobPurpose::Reboot);
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert_eq!(run.s.status_reason.as_deref(), Some("rebooting"));

    run.now = mins(5);
    run.answer(JobOutcome::Reboot {
        started: true,
        error: None,
    });
    assert_eq!(run.s.rebooted_at, Some(mins(5)));
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(
        run.s.wake_at,
        Some(mins(5 + REBOOT_RETURN_MINUTES)),
        "waits for the computer to come back"
    );

    run.now = mins(9);
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(run.s.reboot_required);
}

#[test]
fn a_computer_that_does_not_come_back_after_the_reboot_fails_verification() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    run.answer(step_result(proto::EXIT_REBOOT_REQUIRED));
    run.answer(JobOutcome::Reboot {
        started: true,
        error: None,
    });
    let (verify, _, kind) = run.pending();
    run.now = mins(REBOOT_RETURN_MINUTES - 1);
    run.tick();
    assert_eq!(run.s.status, SessionStatus::Verifying);
    run.now = mins(REBOOT_RETURN_MINUTES);
    let effects = run.tick();
    assert!(effects.contains(&Effect::Abandon { job: verify }));
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(0).compliance, Compliance::Unknown);
    // The agent answers after all: too late, nothing changes.
    let late = run.ok(Event::JobDone {
        job: verify,
        outcome: probe_answer(&kind, &[("d0", installed("1.10.0"))]),
    });
    assert!(late.is_empty());
    assert_eq!(run.s.status, SessionStatus::Failed);
}

#[test]
fn suppressed_reboot_sends_no_reboot_job() {
    let options = MaintenanceOptions {
        reboot_preference: RebootPreference::Suppress,
        ..Default::default()
    };
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    ));
    run.tick();
    run.probes(&[("d0", absent())]);
    run.answer(step_result(proto::EXIT_REBOOT_REQUIRED));
    assert!(run.s.reboot_required);
    assert_eq!(run.purpose(), JobPurpose::Verify);
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Reboot {})));
    assert!(run.s.rebooted_at.is_none());
}

#[test]
fn forced_reboot_happens_without_a_3010() {
    let options = MaintenanceOptions {
        reboot_preference: RebootPreference::Force,
        ..Default::default()
    };
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    ));
    run.tick();
    run.probes(&[("d0", absent())]);
    run.answer(step_result(0));
    assert_eq!(run.purpose(), JobPurpose::Reboot);
    // A reboot that did not start is logged; verification goes on.
    run.answer(JobOutcome::Reboot {
        started: false,
        error: Some("not permitted".into()),
    });
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert!(run.s.rebooted_at.is_none());
}

#[test]
fn a_reboot_held_by_business_hours_ends_the_session_with_the_reboot_pending() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    let held_until = mins(600);
    let effects = run.answer_with(
        Env {
            reboot_held_until: Some(held_until),
            ..run.env()
        },
        step_result(proto::EXIT_REBOOT_REQUIRED),
    );
    assert!(
        matches!(dispatched(&effects)[..], [JobKind::Probe { .. }]),
        "no reboot: straight to verification"
    );
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(run.s.reboot_held_until, Some(held_until));
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(run.s.reboot_required && run.s.rebooted_at.is_none());
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 1 actions succeeded; reboot pending, held until 06:00 UTC")
    );
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Reboot {})));
}

#[test]
fn reboot_allowed_during_business_hours_is_not_held() {
    let options = MaintenanceOptions {
        allow_reboot_during_business_hours: true,
        ..Default::default()
    };
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    ));
    run.tick();
    run.probes(&[("d0", absent())]);
    let env = Env {
        reboot_held_until: Some(mins(600)),
        ..run.env()
    };
    run.answer_with(env, step_result(proto::EXIT_REBOOT_REQUIRED));
    assert_eq!(run.purpose(), JobPurpose::Reboot);
}

#[test]
fn a_pending_held_reboot_is_done_by_the_next_session_that_executes() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[("d0", absent())],
    );
    let env = Env {
        reboot_pending: true,
        ..run.env()
    };
    run.answer_with(env, step_result(0));
    assert_eq!(run.purpose(), JobPurpose::Reboot);
}

// ---------------------------------------------------------------------------------------------
// Already compliant

#[test]
fn already_compliant_runs_nothing_and_a_rerun_is_a_no_op() {
    let items = || {
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            task_item(task("Firewall", true), TaskMode::Enforce),
        ]
    };
    // The first session brings the computer into shape ...
    let mut first = detected(items(), &[("d0", absent()), ("t1", out(0, ""))]);
    first.answer(step_result(0));
    first.probes(&[("d0", installed("1.10.0")), ("t1", out(0, ""))]);
    assert_eq!(first.s.status, SessionStatus::Passed);

    // ... so a rerun finds nothing to do.
    let rerun = detected(items(), &[("d0", installed("1.10.0")), ("t1", out(0, ""))]);
    assert_eq!(rerun.s.status, SessionStatus::Passed);
    assert_eq!(
        rerun.s.status_reason.as_deref(),
        Some("already compliant: nothing to do")
    );
    assert_eq!(rerun.s.compliance, Some(Compliance::Compliant));
    assert_eq!(rerun.jobs.len(), 1, "only the detection job");
    for a in &rerun.s.actions {
        assert_eq!(
            (a.kind, a.status),
            (ActionKind::NoAction, ActionStatus::Succeeded)
        );
        assert_eq!(a.result_message.as_deref(), Some("already compliant"));
    }
    assert_eq!(
        rerun.history,
        [
            SessionStatus::Pending,
            SessionStatus::Detecting,
            SessionStatus::Passed
        ]
    );
}

#[test]
fn software_detection_that_could_not_run_fails_without_execution() {
    let run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        &[(
            "d0",
            ScriptOutcome {
                exit_code: None,
                timed_out: true,
                ..Default::default()
            },
        )],
    );
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::DetectionFailed,
            Compliance::Unknown
        )
    );
    assert_eq!(
        a.reason,
        "detection could not run: detection script timed out"
    );
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 1 actions failed (detection failed: App)")
    );
    assert_eq!(run.jobs.len(), 1, "only the detection job");
}

#[test]
fn a_missing_detection_result_is_unknown_not_absent() {
    // The agent answers a probe job with fewer results than probes: the software it did not
    // report on must not be taken for "not installed" (and installed over, or verified gone).
    let mut run = Run::new(session(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            sw_item(
                software("Tool", &["2.0"]),
                DesiredSoftwareState::Uninstalled,
                None,
            ),
        ],
        MaintenanceOptions::default(),
    ));
    run.tick();
    run.answer(JobOutcome::Probe {
        results: vec![ProbeResult {
            probe_id: "d1".into(),
            outcome: installed("2.0"),
        }],
    });
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.compliance),
        (ActionKind::NoAction, Compliance::Unknown)
    );
    assert!(
        a.reason.starts_with("detection could not run"),
        "{}",
        a.reason
    );
    assert_eq!(run.step_job().0, "uninstall Tool");
    run.answer(step_result(0));
    // Verification misses Tool's result: unknown, so not verified gone.
    run.answer(JobOutcome::Probe {
        results: vec![ProbeResult {
            probe_id: "d0".into(),
            outcome: installed("1.10.0"),
        }],
    });
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(0).status, ActionStatus::DetectionFailed);
    let a = run.action(1);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Failed, Compliance::Unknown)
    );
}

#[test]
fn an_undecidable_enforce_test_is_a_failed_detection() {
    let run = detected(
        vec![task_item(task("Disk", true), TaskMode::Enforce)],
        &[("t0", out(2, "boom"))],
    );
    let a = run.action(0);
    assert_eq!(
        a.reason,
        "test could not decide: test script exited 2: boom"
    );
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::DetectionFailed, Compliance::Unknown)
    );
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 1 actions failed (detection failed: Disk)")
    );
    assert_eq!(run.jobs.len(), 1, "only the detection job");
}

#[test]
fn a_detection_script_failing_with_stderr_installs_nothing() {
    // Non-zero with stderr: failed, not "absent". Non-zero and silent: absent, as before.
    let failing = ScriptOutcome {
        exit_code: Some(3),
        stderr: "access denied".into(),
        ..Default::default()
    };
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            sw_item(
                software("Tool", &["2.0"]),
                DesiredSoftwareState::InstalledLatest,
                None,
            ),
        ],
        &[("d0", failing), ("d1", out(1, ""))],
    );
    let a = run.action(0);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::DetectionFailed,
            Compliance::Unknown
        )
    );
    assert_eq!(run.action(1).kind, ActionKind::Install);
    assert_eq!(run.step_job().0, "install Tool 2.0");
    run.answer(step_result(0));
    assert_eq!(
        run.action(1).status,
        ActionStatus::Succeeded,
        "not RUNNING after its last step is done"
    );
    run.probes(&[("d0", out(3, "")), ("d1", installed("2.0"))]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(0).status, ActionStatus::DetectionFailed);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("1 of 2 actions failed (detection failed: App)")
    );
}

#[test]
fn an_action_done_before_a_cancel_keeps_its_outcome() {
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            sw_item(
                software("Tool", &["2.0"]),
                DesiredSoftwareState::InstalledLatest,
                None,
            ),
        ],
        &[("d0", absent()), ("d1", absent())],
    );
    run.answer(step_result(0));
    assert_eq!(run.step_job().0, "install Tool 2.0");
    run.ok(Event::Cancel { by: "tech".into() });
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(run.action(0).status, ActionStatus::Succeeded);
    assert_eq!(run.action(1).status, ActionStatus::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// Offline computers and the queue

#[test]
fn apply_on_connect_waits_pending_and_detects_when_the_agent_polls() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    let effects = run.tick_with(offline_at(t0()));
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.s.status, SessionStatus::Pending);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("waiting for the computer to come online")
    );
    assert_eq!(run.s.offline_since, Some(t0()));
    assert!(waits_for_agent(&run.s));

    // Days later, still waiting: APPLY_ON_CONNECT never gives up by itself.
    run.tick_with(offline_at(mins(3 * 24 * 60)));
    assert_eq!(run.s.status, SessionStatus::Pending);

    let effects = run.tick_with(env_at(mins(3 * 24 * 60 + 1)));
    assert_eq!(dispatched(&effects).len(), 1);
    assert_eq!(run.s.status, SessionStatus::Detecting);
    assert_eq!(run.s.offline_since, None);
}

#[test]
fn skip_cancels_after_the_offline_grace() {
    let options = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        ..Default::default()
    };
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    ));
    run.tick_with(offline_at(t0()));
    assert_eq!(run.s.status, SessionStatus::Pending);
    assert!(
        run.s
            .status_reason
            .as_deref()
            .unwrap()
            .contains("until 20:30 UTC"),
        "{:?}",
        run.s.status_reason
    );
    assert_eq!(run.s.wake_at, Some(mins(30)));

    run.tick_with(offline_at(mins(29)));
    assert_eq!(run.s.status, SessionStatus::Pending);

    let effects = run.tick_with(offline_at(mins(31)));
    assert!(effects.contains(&Effect::Finished));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("computer offline for 30 minutes")
    );
    assert!(run.jobs.is_empty());
}

#[test]
fn skip_keeps_a_computer_that_comes_back_within_the_grace() {
    let options = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        ..Default::default()
    };
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    ));
    run.tick_with(offline_at(t0()));
    run.tick_with(env_at(mins(10)));
    assert_eq!(run.s.status, SessionStatus::Detecting);
}

#[test]
fn skip_after_a_postpone_waits_the_grace_again_from_the_new_time() {
    // Scheduled, offline when due, postponed through the link while still offline: at the new
    // time the computer gets its full grace again.
    let options = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        ..Default::default()
    };
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    );
    s.execute_at = Some(mins(60));
    let mut run = Run::new(s);
    run.tick();
    run.probes(&[("d0", absent())]);
    assert_eq!(run.s.status, SessionStatus::Scheduled);
    run.tick_with(offline_at(mins(60)));
    assert_eq!(run.s.status, SessionStatus::Pending);
    run.ok_with(
        offline_at(mins(70)),
        Event::Postpone {
            hours: None,
            by: "user@customer.example".into(),
            token: Some("link-1".into()),
        },
    );
    assert_eq!(run.s.status, SessionStatus::Postponed);
    let due = mins(70 + 24 * 60);
    assert_eq!(run.s.execute_at, Some(due));
    run.tick_with(offline_at(due));
    assert_eq!(
        run.s.status,
        SessionStatus::Pending,
        "{:?}",
        run.s.status_reason
    );
    assert_eq!(run.s.wake_at, Some(due + Duration::minutes(30)));
    run.tick_with(offline_at(due + Duration::minutes(31)));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
}

#[test]
fn a_window_that_ends_before_execution_cancels() {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    );
    s.execute_at = Some(mins(60));
    s.window_end = Some(mins(180));
    let mut run = Run::new(s);
    run.tick();
    run.probes(&[("d0", absent())]);
    // Online through the window but never a free slot.
    run.tick_with(Env {
        slot_available: false,
        ..env_at(mins(60))
    });
    assert_eq!(run.s.status, SessionStatus::Pending);
    run.tick_with(Env {
        slot_available: false,
        ..env_at(mins(180))
    });
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("the maintenance window ended before execution could start")
    );
}

/// A scheduled session: detection at `t0`, execution at `exec` minutes, window until `end`.
fn windowed(exec: i64, end: i64, options: MaintenanceOptions) -> Run {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    );
    s.execute_at = Some(mins(exec));
    s.window_end = Some(mins(end));
    Run::new(s)
}

#[test]
fn apply_on_connect_runs_a_computer_that_was_offline_through_detection_and_window() {
    let notify = MaintenanceOptions {
        notify_before: true,
        ..Default::default()
    };
    let mut run = windowed(60, 180, notify);
    run.tick_with(offline_at(t0()));
    assert_eq!(run.s.status, SessionStatus::Pending);
    // Back long after the window: detection, then execution — not "the window ended".
    let effects = run.tick_with(env_at(mins(300)));
    assert_eq!(dispatched(&effects).len(), 1);
    let effects = run.probes(&[("d0", absent())]);
    assert_eq!(
        run.s.status,
        SessionStatus::Executing,
        "{:?}",
        run.s.status_reason
    );
    assert_eq!(run.purpose(), JobPurpose::Step { action: 0, step: 0 });
    // The before-mail announces now, not the time long past.
    assert!(effects.contains(&Effect::Mail(crate::mail::MailKind::Before)));
    assert_eq!(run.s.execute_at, Some(mins(300)));
}

#[test]
fn skip_does_not_run_after_the_window() {
    let skip = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        offline_grace_minutes: 600,
        ..Default::default()
    };
    let mut run = windowed(60, 180, skip);
    run.tick_with(offline_at(t0()));
    run.tick_with(offline_at(mins(181)));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("computer offline through the window")
    );
}

#[test]
fn skip_counts_the_grace_from_the_planned_start_not_from_detection() {
    let skip = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        ..Default::default()
    };
    // Detection at 20:00, execution at 04:00, window of two hours.
    let mut run = windowed(8 * 60, 10 * 60, skip);
    run.tick_with(offline_at(t0()));
    assert_eq!(run.s.status, SessionStatus::Pending);
    assert_eq!(run.s.wake_at, Some(mins(8 * 60 + 30)));
    run.tick_with(offline_at(mins(31)));
    assert_eq!(
        run.s.status,
        SessionStatus::Pending,
        "not cancelled 30 minutes after detection"
    );
    // Back inside the grace after the planned start: it runs.
    run.tick_with(env_at(mins(8 * 60 + 10)));
    assert_eq!(run.s.status, SessionStatus::Detecting);
    run.probes(&[("d0", absent())]);
    assert_eq!(run.s.status, SessionStatus::Executing);

    let skip = MaintenanceOptions {
        offline_behavior: OfflineBehavior::Skip,
        ..Default::default()
    };
    let mut run = windowed(8 * 60, 10 * 60, skip);
    run.tick_with(offline_at(t0()));
    run.tick_with(offline_at(mins(8 * 60 + 31)));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("computer offline for 30 minutes after the planned start")
    );
}

#[test]
fn no_before_mail_for_a_session_cancelled_in_the_same_step() {
    // Online all along, but detection finished only after the window: cancelled, and the
    // before-mail that detection planned is not sent.
    let notify = MaintenanceOptions {
        notify_before: true,
        ..Default::default()
    };
    let mut run = windowed(60, 180, notify);
    run.tick();
    let answer = probe_answer(&run.pending().2, &[("d0", absent())]);
    let effects = run.answer_with(env_at(mins(200)), answer);
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert!(
        !effects.contains(&Effect::Mail(crate::mail::MailKind::Before)),
        "{effects:?}"
    );
    assert!(!run.s.before_mail_sent);
}

#[test]
fn postponing_a_queued_session_takes_it_out_of_the_queue() {
    // The runtime hands slots to the head of the queue only: a postponed session left
    // `queued` would block every other session until its new time.
    let mut run = scheduled_at(60, MaintenanceOptions::default());
    let no_slot = |now| Env {
        slot_available: false,
        ..env_at(now)
    };
    run.tick_with(no_slot(mins(60)));
    assert!(run.s.queued);
    run.ok_with(no_slot(mins(61)), postpone("user", None));
    assert_eq!(run.s.status, SessionStatus::Postponed);
    assert!(!run.s.queued);
}

#[test]
fn without_a_slot_the_session_waits_queued() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    let effects = run.tick_with(Env {
        slot_available: false,
        ..env_at(t0())
    });
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.s.status, SessionStatus::Pending);
    assert_eq!(run.s.status_reason.as_deref(), Some("queued"));
    assert!(run.s.queued);

    let effects = run.tick_with(env_at(mins(1)));
    assert_eq!(dispatched(&effects).len(), 1);
    assert_eq!(run.s.status, SessionStatus::Detecting);
    assert!(!run.s.queued);
}

// ---------------------------------------------------------------------------------------------
// Scheduling, postponing, updating now

fn scheduled_at(minutes: i64, options: MaintenanceOptions) -> Run {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    );
    s.execute_at = Some(mins(minutes));
    let mut run = Run::new(s);
    run.tick();
    run.probes(&[("d0", absent())]);
    run
}

fn postpone(by: &str, token: Option<&str>) -> Event {
    Event::Postpone {
        hours: None,
        by: by.into(),
        token: token.map(String::from),
    }
}

#[test]
fn a_later_execute_at_detects_at_once_and_waits_scheduled() {
    let mut run = scheduled_at(120, MaintenanceOptions::default());
    assert_eq!(run.s.status, SessionStatus::Scheduled);
    assert_eq!(run.s.wake_at, Some(mins(120)));
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("executes at 2025-06-02 22:00 UTC")
    );
    assert_eq!(run.s.stage, Stage::AwaitExecute);

    let effects = run.tick_with(env_at(mins(119)));
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.s.status, SessionStatus::Scheduled);

    let effects = run.tick_with(env_at(mins(120)));
    assert_eq!(dispatched(&effects).len(), 1);
    assert_eq!(run.s.status, SessionStatus::Executing);
}

#[test]
fn the_before_mail_is_queued_right_after_detection() {
    let options = MaintenanceOptions {
        notify_before: true,
        ..Default::default()
    };
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    );
    s.execute_at = Some(mins(120));
    let mut run = Run::new(s);
    run.tick();
    let effects = run.probes(&[("d0", absent())]);
    assert!(effects.contains(&Effect::Mail(crate::mail::MailKind::Before)));
    assert!(run.s.before_mail_sent);
}

#[test]
fn a_postpone_mails_the_new_time_when_the_user_is_notified() {
    let notify = MaintenanceOptions {
        notify_before: true,
        ..Default::default()
    };
    let mut run = scheduled_at(120, notify);
    let effects = run.ok(postpone("user@customer.example", Some("link-1")));
    assert!(effects.contains(&Effect::Mail(crate::mail::MailKind::Before)));
    let mut quiet = scheduled_at(120, MaintenanceOptions::default());
    let effects = quiet.ok(postpone("user@customer.example", Some("link-1")));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Mail(_))));
}

#[test]
fn run_now_executes_a_waiting_session_without_using_a_postpone() {
    let options = MaintenanceOptions {
        allow_update_now: false,
        ..Default::default()
    };
    let mut run = scheduled_at(120, options);
    run.ok(postpone("user@customer.example", None));
    assert_eq!(run.s.status, SessionStatus::Postponed);
    run.ok(Event::RunNow {
        by: "tech@msp.example".into(),
    });
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert_eq!(run.s.postpone_count, 1);
    // Not waiting any more: a conflict, and nothing changes.
    let refused = run.apply(
        &run.env(),
        Event::RunNow {
            by: "tech@msp.example".into(),
        },
    );
    assert!(
        refused == Err(EngineError::NotRunnable(SessionStatus::Executing)),
        "{refused:?}"
    );
}

#[test]
fn postpone_moves_execution_by_postpone_hours() {
    let mut run = scheduled_at(120, MaintenanceOptions::default());
    let effects = run.ok(postpone("user@customer.example", Some("link-1")));
    assert_eq!(run.s.status, SessionStatus::Postponed);
    assert_eq!(run.s.postpone_count, 1);
    assert_eq!(run.s.execute_at, Some(mins(120 + 24 * 60)));
    assert_eq!(run.s.wake_at, run.s.execute_at);
    assert!(
        run.s
            .status_reason
            .as_deref()
            .unwrap()
            .starts_with("postponed by user@customer.example")
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Emit {
            status: SessionStatus::Postponed,
            ..
        }
    )));

    // Explicit hours.
    run.ok(Event::Postpone {
        hours: Some(2),
        by: "tech@msp.example".into(),
        token: None,
    });
    assert_eq!(run.s.execute_at, Some(mins(120 + 26 * 60)));
    assert_eq!(run.s.postpone_count, 2);
    // Only the postpone through the e-mail link was the end user's.
    assert_eq!(run.s.end_user_postpones, 1);

    // The old time passes: still postponed.
    let effects = run.tick_with(env_at(mins(130)));
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.s.status, SessionStatus::Postponed);
}

#[test]
fn postpones_are_limited() {
    let options = MaintenanceOptions {
        max_postpones: 2,
        ..Default::default()
    };
    let mut run = scheduled_at(120, options);
    run.ok(postpone("a", None));
    run.ok(postpone("a", None));
    let err = run.apply(&run.env(), postpone("a", None)).unwrap_err();
    assert_eq!(err, EngineError::PostponeLimit(2));
    assert!(!err.is_conflict());
    assert_eq!(run.s.postpone_count, 2);
    assert_eq!(run.s.execute_at, Some(mins(120 + 48 * 60)));
}

#[test]
fn postpone_can_be_forbidden() {
    let options = MaintenanceOptions {
        allow_postpone: false,
        ..Default::default()
    };
    let mut run = scheduled_at(120, options);
    let err = run.apply(&run.env(), postpone("a", None)).unwrap_err();
    assert_eq!(err, EngineError::PostponeNotAllowed);
}

#[test]
fn a_postpone_link_works_once() {
    let mut run = scheduled_at(120, MaintenanceOptions::default());
    run.ok(postpone("user", Some("link-1")));
    let err = run
        .apply(&run.env(), postpone("user", Some("link-1")))
        .unwrap_err();
    assert_eq!(err, EngineError::LinkUsed);
    let update_now = Event::UpdateNow {
        by: "user".into(),
        token: Some("link-1".into()),
    };
    assert!(run.apply(&run.env(), update_now).is_err());
    assert_eq!(run.s.postpone_count, 1);
    // Another link still works.
    run.ok(postpone("user", Some("link-2")));
    assert_eq!(run.s.postpone_count, 2);
}

#[test]
fn a_refused_command_does_not_use_up_its_link() {
    let options = MaintenanceOptions {
        max_postpones: 0,
        ..Default::default()
    };
    let mut run = scheduled_at(120, options);
    assert!(
        run.apply(&run.env(), postpone("user", Some("link-1")))
            .is_err()
    );
    assert!(run.s.used_tokens.is_empty());
    run.ok(Event::UpdateNow {
        by: "user".into(),
        token: Some("link-1".into()),
    });
    assert_eq!(run.s.status, SessionStatus::Executing);
}

#[test]
fn postpone_before_detection_or_of_detection_only_is_a_conflict() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    let err = run.apply(&run.env(), postpone("a", None)).unwrap_err();
    assert_eq!(err, EngineError::NotPostponable);
    assert!(err.is_conflict());
    run.tick();
    let err = run.apply(&run.env(), postpone("a", None)).unwrap_err();
    assert_eq!(err, EngineError::NotPostponable);
}

#[test]
fn update_now_executes_at_once() {
    let mut run = scheduled_at(120, MaintenanceOptions::default());
    run.ok(postpone("user", None));
    run.now = mins(5);
    let effects = run.ok(Event::UpdateNow {
        by: "user@customer.example".into(),
        token: Some("link-9".into()),
    });
    assert_eq!(dispatched(&effects).len(), 1);
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert_eq!(run.s.execute_at, Some(mins(5)));
    assert_eq!(run.step_job().0, "install App 1.10.0");
}

#[test]
fn update_now_can_be_forbidden() {
    let options = MaintenanceOptions {
        allow_update_now: false,
        ..Default::default()
    };
    let mut run = scheduled_at(120, options);
    let err = run
        .apply(
            &run.env(),
            Event::UpdateNow {
                by: "u".into(),
                token: None,
            },
        )
        .unwrap_err();
    assert_eq!(err, EngineError::UpdateNowNotAllowed);
    assert_eq!(run.s.status, SessionStatus::Scheduled);
}

// ---------------------------------------------------------------------------------------------
// Cancelling

#[test]
fn cancel_abandons_the_pending_job_and_cancels_unfinished_actions() {
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            sw_item(
                software("Tool", &["2.0"]),
                DesiredSoftwareState::InstalledLatest,
                None,
            ),
        ],
        &[("d0", absent()), ("d1", absent())],
    );
    let (job, _, _) = run.pending();
    assert_eq!(run.action(0).status, ActionStatus::Running);
    let effects = run.ok(Event::Cancel {
        by: "tech@msp.example".into(),
    });
    assert!(effects.contains(&Effect::Abandon { job }));
    assert!(effects.contains(&Effect::Finished));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("cancelled by tech@msp.example")
    );
    assert!(
        run.s
            .actions
            .iter()
            .all(|a| a.status == ActionStatus::Cancelled)
    );
    assert!(run.s.pending_job.is_none());

    // The agent reports the abandoned job anyway: nothing changes.
    let snapshot = json(&run.s);
    let late = run.ok(Event::JobDone {
        job,
        outcome: step_result(0),
    });
    assert!(late.is_empty());
    assert_eq!(json(&run.s), snapshot);

    // Commands on a finished session are conflicts.
    let err = run
        .apply(&run.env(), Event::Cancel { by: "x".into() })
        .unwrap_err();
    assert!(matches!(err, EngineError::Ended(_)), "{err:?}");
    assert!(err.is_conflict());
    let err = run.apply(&run.env(), postpone("x", None)).unwrap_err();
    assert!(matches!(err, EngineError::Ended(_)), "{err:?}");
}

#[test]
fn cancel_of_a_passed_session_is_a_conflict() {
    let mut run = detected(
        vec![sw_item(app(), DesiredSoftwareState::InstalledAny, None)],
        &[("d0", installed("1.0"))],
    );
    assert_eq!(run.s.status, SessionStatus::Passed);
    let err = run
        .apply(&run.env(), Event::Cancel { by: "tech".into() })
        .unwrap_err();
    assert_eq!(err, EngineError::Ended(SessionStatus::Passed));
    assert_eq!(run.s.status, SessionStatus::Passed);
}

#[test]
fn cancel_while_detecting_or_waiting() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    let (job, _, _) = run.pending();
    let effects = run.ok(Event::Cancel { by: "api".into() });
    assert!(effects.contains(&Effect::Abandon { job }));
    assert_eq!(run.s.status, SessionStatus::Cancelled);

    let mut run = scheduled_at(120, MaintenanceOptions::default());
    let effects = run.ok(Event::Cancel { by: "api".into() });
    assert!(!effects.iter().any(|e| matches!(e, Effect::Abandon { .. })));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(run.action(0).status, ActionStatus::Cancelled);
}

#[test]
fn a_result_for_an_unknown_job_changes_nothing_of_a_waiting_session() {
    let mut run = scheduled_at(120, MaintenanceOptions::default());
    let before = json(&run.s);
    let effects = run.ok(Event::JobDone {
        job: Id::new(),
        outcome: step_result(0),
    });
    assert!(effects.is_empty());
    assert_eq!(json(&run.s), before);
}

// ---------------------------------------------------------------------------------------------
// Events

#[test]
fn every_status_change_is_emitted_with_the_new_status() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    let mut all = vec![];
    all.extend(run.tick());
    all.extend(run.probes(&[("d0", absent())]));
    all.extend(run.answer(step_result(0)));
    all.extend(run.probes(&[("d0", installed("1.10.0"))]));
    let mut emitted = vec![];
    for e in &all {
        if let Effect::Emit { status, .. } = e
            && emitted.last() != Some(status)
        {
            emitted.push(*status);
        }
    }
    assert_eq!(
        emitted,
        [
            SessionStatus::Detecting,
            SessionStatus::Executing,
            SessionStatus::Verifying,
            SessionStatus::Passed
        ]
    );
    // The action's changes are published too.
    let action = run.action(0).id;
    let action_events: Vec<ActionStatus> = all
        .iter()
        .filter_map(|e| match e {
            Effect::Emit {
                action: Some((id, st)),
                ..
            } if *id == action => Some(*st),
            _ => None,
        })
        .collect();
    assert_eq!(
        action_events,
        [
            ActionStatus::Pending,
            ActionStatus::Running,
            ActionStatus::Succeeded,
            ActionStatus::Succeeded
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests: random event sequences

#[derive(Debug, Clone)]
enum Answer {
    /// The kind the job asked for, with these (exit code, stdout) per probe, cycled; optionally
    /// one probe result missing.
    Matching(Vec<(Option<i32>, &'static str)>, bool),
    Failed,
    /// A result of another kind than the job's.
    WrongKind,
}

#[derive(Debug, Clone)]
enum Op {
    Tick {
        minutes: i64,
        online: bool,
        slot: bool,
        held_minutes: Option<i64>,
    },
    /// A result for the pending job (if any).
    Answer(Answer),
    /// The pending job's lease ran out.
    Lose,
    /// A result for a job the session never sent.
    Stray,
    /// A result for the last abandoned job.
    Late,
    Cancel,
    Postpone {
        hours: Option<u32>,
        token: Option<u8>,
    },
    UpdateNow {
        token: Option<u8>,
    },
}

fn outcome_for(kind: &JobKind, answer: &Answer) -> JobOutcome {
    let outcome = |(code, stdout): (Option<i32>, &str)| ScriptOutcome {
        exit_code: code,
        stdout: stdout.into(),
        timed_out: code.is_none(),
        ..Default::default()
    };
    match answer {
        Answer::Failed => JobOutcome::Failed {
            error: "the agent restarted".into(),
        },
        Answer::WrongKind => match kind {
            JobKind::Reboot {} => JobOutcome::Probe { results: vec![] },
            _ => JobOutcome::Reboot {
                started: true,
                error: None,
            },
        },
        Answer::Matching(codes, drop_one) => {
            let code = |i: usize| codes[i % codes.len()];
            match kind {
                JobKind::Probe { probes } => {
                    let mut results: Vec<ProbeResult> = probes
                        .iter()
                        .enumerate()
                        .map(|(i, p)| ProbeResult {
                            probe_id: p.probe_id.clone(),
                            outcome: outcome(code(i)),
                        })
                        .collect();
                    if *drop_one {
                        results.pop();
                    }
                    JobOutcome::Probe { results }
                }
                JobKind::Step { .. } => JobOutcome::Step {
                    outcome: outcome(code(0)),
                },
                JobKind::Reboot {} => {
                    let started = code(0).0 == Some(0);
                    JobOutcome::Reboot {
                        started,
                        error: (!started).then(|| "not permitted".into()),
                    }
                }
                JobKind::Prompt { .. } => {
                    let shown = code(0).0 == Some(0);
                    JobOutcome::Prompt {
                        shown,
                        error: (!shown).then(|| "no session".into()),
                    }
                }
            }
        }
    }
}

fn arb_code() -> impl Strategy<Value = (Option<i32>, &'static str)> {
    (
        prop_oneof![
            5 => Just(Some(0)),
            3 => Just(Some(1)),
            1 => Just(Some(2)),
            1 => Just(Some(proto::EXIT_REBOOT_REQUIRED)),
            1 => Just(None),
        ],
        prop::sample::select(vec!["", "1.9.2", "1.10.0\n", "2.0", "not a version"]),
    )
}

fn arb_answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => (prop::collection::vec(arb_code(), 1..4), prop::bool::weighted(0.1)).prop_map(|(c, d)| Answer::Matching(c, d)),
        1 => Just(Answer::Failed),
        1 => Just(Answer::WrongKind),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let token = prop::option::of(0u8..3);
    prop_oneof![
        30 => (0i64..90, prop::bool::weighted(0.7), prop::bool::weighted(0.7), prop::option::weighted(0.2, 1i64..600))
            .prop_map(|(minutes, online, slot, held_minutes)| Op::Tick { minutes, online, slot, held_minutes }),
        45 => arb_answer().prop_map(Op::Answer),
        4 => Just(Op::Lose),
        4 => Just(Op::Stray),
        3 => Just(Op::Late),
        2 => Just(Op::Cancel),
        6 => (prop::option::of(1u32..=720), token.clone()).prop_map(|(hours, token)| Op::Postpone { hours, token }),
        6 => token.prop_map(|token| Op::UpdateNow { token }),
    ]
}

const DESIRED: [DesiredSoftwareState; 6] = [
    DesiredSoftwareState::InstalledLatest,
    DesiredSoftwareState::InstalledVersion,
    DesiredSoftwareState::InstalledAtLeast,
    DesiredSoftwareState::InstalledAny,
    DesiredSoftwareState::UpdateIfFound,
    DesiredSoftwareState::Uninstalled,
];

fn arb_item() -> impl Strategy<Value = PlanItem> {
    let versions = prop::sample::select(vec![vec![], vec!["1.10.0"], vec!["1.9.2", "1.10.0"]]);
    prop_oneof![
        (
            0..DESIRED.len(),
            prop::sample::select(vec![None, Some("1.9.2"), Some("1.10.0")]),
            versions,
            prop::option::of(any::<bool>()),
            any::<bool>(),
        )
            .prop_map(|(d, version, versions, config, uninstall)| {
                let mut sw = software("App", &versions);
                sw.configuration_task = config.map(|set| task("AppConfig", set));
                if !uninstall {
                    sw.uninstall_script = None;
                }
                sw_item(sw, DESIRED[d], version)
            }),
        (any::<bool>(), any::<bool>()).prop_map(|(audit, set)| {
            task_item(
                task("Task", set),
                if audit {
                    TaskMode::Audit
                } else {
                    TaskMode::Enforce
                },
            )
        }),
    ]
}

fn arb_options() -> impl Strategy<Value = MaintenanceOptions> {
    (
        prop::sample::select(vec![
            RebootPreference::Normal,
            RebootPreference::Suppress,
            RebootPreference::Force,
        ]),
        prop::sample::select(vec![OfflineBehavior::ApplyOnConnect, OfflineBehavior::Skip]),
        0u32..4,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        0u32..60,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                reboot,
                offline,
                max_postpones,
                allow_postpone,
                allow_update_now,
                grace,
                notify,
                reboot_in_hours,
            )| {
                MaintenanceOptions {
                    notify_before: notify,
                    notify_after: notify,
                    allow_postpone,
                    max_postpones,
                    allow_update_now,
                    reboot_preference: reboot,
                    offline_behavior: offline,
                    offline_grace_minutes: grace,
                    allow_reboot_during_business_hours: reboot_in_hours,
                    ..Default::default()
                }
            },
        )
}

fn arb_session() -> impl Strategy<Value = Session> {
    (
        prop::collection::vec(arb_item(), 0..4),
        arb_options(),
        prop::bool::weighted(0.2),
        prop::option::of(0i64..240),
        prop::option::weighted(0.3, 0i64..240),
    )
        .prop_map(|(items, options, detection_only, execute_in, window)| {
            let mut s = session(items, options);
            s.detection_only = detection_only;
            s.execute_at = execute_in.map(mins);
            s.window_end = execute_in.zip(window).map(|(e, w)| mins(e + w));
            s
        })
}

/// The most steps a session needs once everything cooperates: a tick, detection, per item at
/// most four jobs (uninstall, install, test, set), a reboot and verification.
fn step_bound(s: &Session) -> usize {
    4 + 4 * s.items.len() + 4
}

/// The event an operation of the random script stands for; a `Tick` also sets the world the
/// following events see (`env`).
fn event_for(run: &Run, env: &mut Env, op: Op) -> Event {
    match op {
        Op::Tick {
            minutes,
            online,
            slot,
            held_minutes,
        } => {
            let now = run.now + Duration::minutes(minutes);
            *env = Env {
                now,
                online,
                slot_available: slot,
                reboot_held_until: held_minutes.map(|m| now + Duration::minutes(m)),
                reboot_pending: minutes % 2 == 1,
                agent_reboot_pending: minutes % 3 == 1,
                last_boot_at: None,
                versions_cache: BTreeMap::new(),
                limits: Limits::default(),
                ids: test_ids(),
            };
            Event::Tick
        }
        Op::Answer(answer) => match &run.s.pending_job {
            Some(p) => Event::JobDone {
                job: p.id,
                outcome: outcome_for(&run.jobs[&p.id], &answer),
            },
            None => Event::Tick,
        },
        Op::Lose => match &run.s.pending_job {
            Some(p) => Event::JobLost {
                job: p.id,
                reason: "agent did not report back".into(),
            },
            None => Event::Tick,
        },
        Op::Stray => Event::JobDone {
            job: Id::new(),
            outcome: step_result(0),
        },
        Op::Late => match run.abandoned.last() {
            Some(job) => Event::JobDone {
                job: *job,
                outcome: step_result(0),
            },
            None => Event::Tick,
        },
        Op::Cancel => Event::Cancel {
            by: "tech@msp.example".into(),
        },
        Op::Postpone { hours, token } => Event::Postpone {
            hours,
            by: "user@customer.example".into(),
            token: token.map(|t| format!("link-{t}")),
        },
        Op::UpdateNow { token } => Event::UpdateNow {
            by: "user@customer.example".into(),
            token: token.map(|t| format!("link-{t}")),
        },
    }
}

fn play(s: Session, ops: Vec<Op>, answers: Vec<Answer>) {
    let mut run = Run::new(s);
    let mut env = env_at(t0());
    for op in ops {
        let event = event_for(&run, &mut env, op);
        // Refusals are checked inside `apply` (nothing changes).
        let _ = run.apply(&env, event);
    }

    // From here on the world cooperates: the agent is online, slots are free, no business
    // hours, time is past execute_at, and every job is answered (with some outcome).
    let bound = step_bound(&run.s);
    let mut now = run.now.max(run.s.execute_at.unwrap_or(run.now));
    for i in 0..bound {
        if run.s.status.is_terminal() {
            break;
        }
        now += Duration::minutes(1);
        let env = env_at(now);
        let event = match &run.s.pending_job {
            Some(p) => Event::JobDone {
                job: p.id,
                outcome: outcome_for(&run.jobs[&p.id], &answers[i % answers.len()]),
            },
            None => Event::Tick,
        };
        run.apply(&env, event).unwrap();
    }
    assert!(
        run.s.status.is_terminal(),
        "not finished within {bound} steps: {:?} in {:?} ({:?})",
        run.s.status,
        run.s.stage,
        run.s.status_reason
    );
    assert_eq!(run.finished, 1);
    assert_eq!(
        run.history.iter().filter(|s| s.is_terminal()).count(),
        1,
        "{:?}",
        run.history
    );
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn random_event_sequences_keep_the_session_legal_and_end_it(
        s in arb_session(),
        ops in prop::collection::vec(arb_op(), 0..40),
        answers in prop::collection::vec(arb_answer(), 1..8),
    ) {
        play(s, ops, answers);
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn cooperative_agents_finish_every_session(
        s in arb_session(),
        answers in prop::collection::vec(arb_answer(), 1..8),
    ) {
        play(s, vec![], answers);
    }
}

// ---------------------------------------------------------------------------------------------
// What the script said

#[test]
fn a_step_result_stores_its_output_masked_and_streamed_output_is_logged_for_its_step_only() {
    let mut item = sw_item(app(), DesiredSoftwareState::InstalledLatest, None);
    item.parameters = BTreeMap::from([
        ("token".to_string(), "s3cret-token".to_string()),
        ("arch".to_string(), "x64".to_string()),
    ]);
    let mut run = detected(vec![item], &[("d0", absent())]);
    let (job, _, _) = run.pending();
    // Output of the running step is logged (already masked by the gateway)...
    let effects = run.ok(Event::Output {
        job,
        stream: proto::OutputStream::Stderr,
        text: "fetching ••••••\n".into(),
    });
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Emit { log: Some(l), action: None, .. } if l == "App [stderr] fetching ••••••")));
    // ...but not for a job the session is not waiting on.
    let effects = run.ok(Event::Output {
        job: Id::new(),
        stream: proto::OutputStream::Stdout,
        text: "stray".into(),
    });
    assert!(effects.is_empty(), "{effects:?}");
    let effects = run.answer(JobOutcome::Step {
        outcome: ScriptOutcome {
            exit_code: Some(2),
            stdout: "token=s3cret-token arch=x64\n".into(),
            stderr: "s3cret-token rejected\n".into(),
            ..Default::default()
        },
    });
    let stored: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Output { action, output } => Some((*action, output.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        stored,
        vec![(
            0,
            crate::output::ActionOutput {
                stdout: "token=•••••• arch=x64\n".into(),
                stderr: "•••••• rejected\n".into(),
                exit_code: Some(2),
                truncated: false,
            }
        )]
    );
    assert_eq!(
        run.action(0).result_message.as_deref(),
        Some("install App 1.10.0 exited 2: •••••• rejected")
    );
}

mod before_execution;
mod plan_golden;
mod supply;
mod task_model;
