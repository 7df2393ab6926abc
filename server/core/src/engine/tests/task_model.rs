//! The task model: MONITOR tasks, get scripts and items whose parameters cannot be resolved.

use super::*;

fn with_get(mut t: TaskSnapshot) -> TaskSnapshot {
    t.get_script = Some(script("get Zone"));
    t
}

#[test]
fn monitor_reports_without_running_the_set_script_or_failing() {
    // Non-compliant, beside a change: the set script never runs, the action succeeds and
    // reports; the session's compliance is the change's alone.
    let mut run = detected(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            task_item(task("Zone", true), TaskMode::Monitor),
        ],
        &[("d0", absent()), ("t1", out(1, ""))],
    );
    assert_eq!(
        run.action(1).reason,
        "monitor: not compliant; monitoring only reports"
    );
    run.answer(step_result(0));
    run.probes(&[("d0", installed("1.10.0")), ("t1", out(1, ""))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
    assert_eq!(run.s.compliance, Some(Compliance::Compliant));
    let a = run.action(1);
    assert_eq!(
        (a.kind, a.status, a.compliance),
        (
            ActionKind::NoAction,
            ActionStatus::Succeeded,
            Compliance::NonCompliant
        )
    );
    assert_eq!(a.result_message.as_deref(), Some("monitor: not compliant"));
    assert!(
        !run.jobs
            .values()
            .any(|k| matches!(k, JobKind::Step { label, .. } if label.contains("Zone"))),
        "a monitor never runs its set script"
    );

    // A test that cannot decide is reported, not a failed detection (unlike AUDIT).
    let run = detected(
        vec![task_item(task("Zone", true), TaskMode::Monitor)],
        &[("t0", out(2, ""))],
    );
    assert_eq!(run.s.status, SessionStatus::Passed);
    let a = run.action(0);
    assert_eq!(
        (a.status, a.compliance),
        (ActionStatus::Succeeded, Compliance::Unknown)
    );
    assert!(
        a.result_message
            .as_deref()
            .is_some_and(|m| m.starts_with("monitor: test could not decide")),
        "{:?}",
        a.result_message
    );
}

#[test]
fn the_get_script_runs_with_the_test_and_its_value_shows_on_the_action() {
    let mut run = Run::new(session(
        vec![task_item(with_get(task("Zone", true)), TaskMode::Enforce)],
        MaintenanceOptions::default(),
    ));
    run.tick();
    assert_eq!(
        run.probe_job(),
        vec![
            ("t0".to_string(), "test Zone".to_string()),
            ("g0".into(), "get Zone".into())
        ]
    );
    let long = "x".repeat(500);
    run.probes(&[
        ("t0", out(1, "")),
        ("g0", out(0, "  Europe/Berlin \nmore\n")),
    ]);
    let a = run.action(0);
    assert_eq!(a.current_value.as_deref(), Some("Europe/Berlin"));
    assert_eq!(
        a.reason,
        "test failed: the set script will run (current value: Europe/Berlin)"
    );
    // Bounded, and a failing get script is only mentioned.
    let run = detected(
        vec![task_item(with_get(task("Zone", true)), TaskMode::Monitor)],
        &[("t0", out(0, "")), ("g0", out(0, &long))],
    );
    assert_eq!(
        run.action(0).current_value.as_deref().map(str::len),
        Some(plan::MAX_CURRENT_VALUE_CHARS)
    );
    let run = detected(
        vec![task_item(with_get(task("Zone", true)), TaskMode::Monitor)],
        &[("t0", out(0, "")), ("g0", out(3, ""))],
    );
    assert_eq!(run.action(0).current_value, None);
    assert!(
        run.action(0).reason.contains("get script exited 3"),
        "{}",
        run.action(0).reason
    );
    assert_eq!(run.s.status, SessionStatus::Passed);
}

#[test]
fn an_item_whose_parameters_do_not_resolve_runs_nothing_and_fails() {
    let mut bad = task_item(task("Zone", true), TaskMode::Enforce);
    bad.invalid = Some("parameters: the required parameter 'zone' has no value".into());
    let mut run = Run::new(session(
        vec![
            sw_item(app(), DesiredSoftwareState::InstalledLatest, None),
            bad,
        ],
        MaintenanceOptions::default(),
    ));
    run.tick();
    assert_eq!(
        run.probe_job(),
        vec![("d0".to_string(), "detect App".to_string())],
        "no probe of the invalid item"
    );
    run.probes(&[("d0", installed("1.10.0"))]);
    // Nothing else to run: execution finds no step, verification fails the item.
    while !run.s.status.is_terminal() {
        match run.purpose() {
            JobPurpose::Verify => {
                run.probes(&[("d0", installed("1.10.0"))]);
            }
            other => panic!("unexpected job {other:?}"),
        }
    }
    assert_eq!(run.s.status, SessionStatus::Failed);
    let a = run.action(1);
    assert_eq!(a.status, ActionStatus::Failed);
    assert!(
        a.result_message
            .as_deref()
            .is_some_and(|m| m.contains("'zone'")),
        "{:?}",
        a.result_message
    );
    assert!(!run.jobs.values().any(|k| matches!(k, JobKind::Step { .. })));
}

#[test]
fn freezing_fills_defaults_and_marks_what_does_not_resolve() {
    use crate::params::{ParameterDefinition, ParameterType};
    let mut t = task("Zone", true);
    t.parameters = vec![
        ParameterDefinition {
            name: "zone".into(),
            kind: ParameterType::String,
            required: true,
            default: Some("UTC".into()),
            options: vec![],
            description: None,
        },
        ParameterDefinition {
            name: "level".into(),
            kind: ParameterType::Number,
            required: true,
            default: None,
            options: vec![],
            description: None,
        },
    ];
    let at = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let computer = Computer {
        id: Id::new(),
        tenant_id: Id::new(),
        name: "pc".into(),
        hostname: "pc".into(),
        machine_id: "m".into(),
        tags: vec![],
        primary_person_id: None,
        os: String::new(),
        agent_version: String::new(),
        last_seen_at: None,
        agent_token_hash: None,
        enrolled_at: at,
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: false,
        onboarding: None,
        held_reboot: None,
    };
    let mut d = Deployment {
        id: Id::new(),
        tenant_id: Some(computer.tenant_id),
        target: Target {
            kind: TargetKind::AllComputers,
            value: None,
        },
        software_id: None,
        desired_state: None,
        version: None,
        maintenance_task_id: Some(t.id),
        task_mode: TaskMode::Enforce,
        parameters: BTreeMap::from([("level".to_string(), "3".to_string())]),
        enforcement: Enforcement::Required,
        order: DeploymentOrder::Unordered,
        position: 0,
        enabled: true,
        created_at: at,
    };
    let items = plan::freeze_items(
        &computer,
        std::slice::from_ref(&d),
        |_| Ok::<_, ()>(None),
        |_| Ok(Some(t.clone())),
    )
    .unwrap();
    assert_eq!(items[0].invalid, None);
    assert_eq!(
        items[0].parameters,
        BTreeMap::from([
            ("level".to_string(), "3".to_string()),
            ("zone".to_string(), "UTC".to_string())
        ])
    );
    d.parameters.clear();
    let items = plan::freeze_items(
        &computer,
        &[d],
        |_| Ok::<_, ()>(None),
        |_| Ok(Some(t.clone())),
    )
    .unwrap();
    assert!(
        items[0]
            .invalid
            .as_deref()
            .is_some_and(|m| m.contains("'level'")),
        "{:?}",
        items[0].invalid
    );
}
