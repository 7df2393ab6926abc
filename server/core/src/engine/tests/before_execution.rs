//! The start of execution: preflight checks, the reboot a computer already waits for, and
//! `PROMPT` reboots.

use super::*;

fn check(body: &str) -> Script {
    script(body)
}

/// A session of one software item, detected absent, whose execution starts at once.
fn detected_with(options: MaintenanceOptions, preflight: Vec<Script>, env: Env) -> Run {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        options,
    );
    s.preflight = preflight;
    let mut run = Run::new(s);
    run.tick();
    run.answer_with(env, probe_answer(&run.pending().2, &[("d0", absent())]));
    run
}

fn reboot_started() -> JobOutcome {
    JobOutcome::Reboot {
        started: true,
        error: None,
    }
}

fn pending_env(run: &Run) -> Env {
    Env {
        agent_reboot_pending: true,
        ..run.env()
    }
}

#[test]
fn a_pending_reboot_runs_first_and_execution_waits_for_the_computer() {
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    let env = pending_env(&run);
    run.answer_with(env, probe_answer(&run.pending().2, &[("d0", absent())]));
    assert_eq!(run.purpose(), JobPurpose::PreReboot);
    assert_eq!(run.s.status, SessionStatus::Executing);
    run.answer_with(pending_env(&run), reboot_started());
    assert!(run.s.pre_rebooted_at.is_some());
    assert!(
        run.s.pending_job.is_none(),
        "no step before the computer is back"
    );
    // Still pending a minute later: it waits, waking at the return deadline.
    run.now = mins(1);
    run.tick_with(pending_env(&run));
    assert!(run.s.pending_job.is_none());
    assert_eq!(
        run.s.wake_at,
        Some(t0() + Duration::minutes(REBOOT_RETURN_MINUTES))
    );
    // Back without the pending reboot: the steps run.
    run.now = mins(3);
    let effects = run.tick();
    assert!(matches!(run.purpose(), JobPurpose::Step { .. }));
    assert!(logged(&effects, "The computer is back after its reboot"));
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(run.s.rebooted_at.is_none(), "no reboot after execution");
}

#[test]
fn a_held_reboot_is_not_done_twice_after_the_reboot_before_execution() {
    let both = |run: &Run| Env {
        agent_reboot_pending: true,
        reboot_pending: true,
        ..run.env()
    };
    let mut run = detected_with(
        MaintenanceOptions::default(),
        vec![],
        Env {
            agent_reboot_pending: true,
            ..env_at(t0())
        },
    );
    run.answer_with(both(&run), reboot_started());
    run.tick();
    let env = Env {
        reboot_pending: true,
        ..run.env()
    };
    run.answer_with(env, step_result(0));
    assert_eq!(run.purpose(), JobPurpose::Verify, "no second reboot");
}

#[test]
fn a_boot_after_the_reboot_counts_as_back_even_if_still_pending() {
    let mut run = detected_with(
        MaintenanceOptions::default(),
        vec![],
        Env {
            agent_reboot_pending: true,
            ..env_at(t0())
        },
    );
    run.answer_with(pending_env(&run), reboot_started());
    run.now = mins(4);
    let env = Env {
        last_boot_at: Some(mins(2)),
        ..pending_env(&run)
    };
    run.tick_with(env);
    assert!(matches!(run.purpose(), JobPurpose::Step { .. }));
}

#[test]
fn a_computer_that_does_not_come_back_cancels_the_session_before_any_change() {
    let mut run = detected_with(
        MaintenanceOptions::default(),
        vec![],
        Env {
            agent_reboot_pending: true,
            ..env_at(t0())
        },
    );
    run.answer_with(pending_env(&run), reboot_started());
    run.now = mins(REBOOT_RETURN_MINUTES);
    run.tick_with(offline_at(run.now));
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert!(
        run.s
            .status_reason
            .as_deref()
            .unwrap_or("")
            .contains("did not come back")
    );
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Step { .. })));
}

#[test]
fn suppressed_or_held_reboots_are_not_done_first() {
    let suppress = MaintenanceOptions {
        reboot_preference: RebootPreference::Suppress,
        ..Default::default()
    };
    let run = detected_with(
        suppress,
        vec![],
        Env {
            agent_reboot_pending: true,
            ..env_at(t0())
        },
    );
    assert!(matches!(run.purpose(), JobPurpose::Step { .. }));
    let mut run = Run::new(session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    let env = Env {
        agent_reboot_pending: true,
        reboot_held_until: Some(mins(600)),
        ..run.env()
    };
    let effects = run.answer_with(env, probe_answer(&run.pending().2, &[("d0", absent())]));
    assert!(matches!(run.purpose(), JobPurpose::Step { .. }));
    assert!(logged(&effects, "business hours hold reboots"));
}

#[test]
fn a_failing_preflight_waits_and_passes_on_retry() {
    let mut run = detected_with(
        MaintenanceOptions::default(),
        vec![check("test ! -f /render.lock"), check("true")],
        env_at(t0()),
    );
    assert_eq!(run.purpose(), JobPurpose::Preflight);
    assert_eq!(
        run.probe_job()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        ["pf0", "pf1"]
    );
    run.probes(&[
        ("pf0", out(1, "a render is in progress\n")),
        ("pf1", out(0, "")),
    ]);
    assert_eq!(run.s.status, SessionStatus::PendingPreflight);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("a render is in progress (checked again at 2025-06-02 20:15 UTC)")
    );
    assert_eq!(run.s.wake_at, Some(mins(15)));
    assert!(run.s.pending_job.is_none());
    // Not yet due: nothing runs.
    run.now = mins(10);
    run.tick();
    assert!(run.s.pending_job.is_none());
    run.now = mins(15);
    run.tick();
    assert_eq!(run.purpose(), JobPurpose::Preflight);
    run.probes(&[("pf0", out(0, "")), ("pf1", out(0, ""))]);
    assert_eq!(run.s.status, SessionStatus::Executing);
    assert!(matches!(run.purpose(), JobPurpose::Step { .. }));
}

#[test]
fn a_preflight_failing_through_the_window_cancels_with_its_message() {
    let mut s = session(
        vec![sw_item(app(), DesiredSoftwareState::InstalledLatest, None)],
        MaintenanceOptions::default(),
    );
    s.preflight = vec![check("pgrep -x wuauclt && exit 1")];
    s.window_end = Some(mins(20));
    let mut run = Run::new(s);
    run.tick();
    run.probes(&[("d0", absent())]);
    run.probes(&[("pf0", out(1, "Windows Update is running"))]);
    assert_eq!(run.s.wake_at, Some(mins(15)));
    run.now = mins(15);
    run.tick();
    run.probes(&[("pf0", out(1, "Windows Update is running"))]);
    // The next retry would be after the window: it wakes at the window's end instead.
    assert_eq!(run.s.wake_at, Some(mins(20)));
    run.now = mins(20);
    run.tick();
    assert_eq!(run.s.status, SessionStatus::Cancelled);
    assert_eq!(
        run.s.status_reason.as_deref(),
        Some("preflight check still failing when the window ended: Windows Update is running")
    );
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Step { .. })));
}

#[test]
fn a_prompted_reboot_waits_the_prompt_minutes() {
    let options = MaintenanceOptions {
        reboot_preference: RebootPreference::Prompt,
        reboot_prompt_minutes: 10,
        ..Default::default()
    };
    let mut run = detected_with(options, vec![], env_at(t0()));
    run.answer(step_result(proto::EXIT_REBOOT_REQUIRED));
    let (_, purpose, kind) = run.pending();
    assert_eq!(purpose, JobPurpose::Prompt);
    assert!(
        matches!(&kind, JobKind::Prompt { message } if message.contains("20:10 UTC")),
        "{kind:?}"
    );
    run.answer(JobOutcome::Prompt {
        shown: true,
        error: None,
    });
    assert!(run.s.pending_job.is_none());
    assert_eq!(run.s.wake_at, Some(mins(10)));
    run.now = mins(10);
    run.tick();
    assert_eq!(run.purpose(), JobPurpose::Reboot);
}

#[test]
fn postponing_a_prompted_reboot_holds_it_and_ends_the_session() {
    let options = MaintenanceOptions {
        reboot_preference: RebootPreference::Prompt,
        ..Default::default()
    };
    let mut run = detected_with(options, vec![], env_at(t0()));
    run.answer(step_result(proto::EXIT_REBOOT_REQUIRED));
    run.answer(JobOutcome::Prompt {
        shown: true,
        error: None,
    });
    run.now = mins(5);
    run.ok(Event::Postpone {
        hours: Some(2),
        by: "alice@example.com".into(),
        token: None,
    });
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(run.s.reboot_held_until, Some(mins(125)));
    run.probes(&[("d0", installed("1.10.0"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Reboot {})));
}

/// Whether some log line of `effects` contains `needle`.
fn logged(effects: &[Effect], needle: &str) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Emit { log: Some(line), .. } if line.contains(needle)))
}
