//! Software supply: versions scripts (what a session may install) and prerequisites.

use super::*;
use crate::versions::{Discovered, VersionsCache};

/// App with static versions 1.0 and a versions script, installed by a software-level script.
fn discovered_app() -> SoftwareSnapshot {
    let mut sw = software("App", &["1.0"]);
    sw.versions_script = Some(script("versions App"));
    sw.install_script = Some(script("install App from the script"));
    sw
}

fn lines(versions: &[&str]) -> ScriptOutcome {
    let body: String = versions
        .iter()
        .map(|v| format!("{{\"version\":\"{v}\"}}\n"))
        .collect();
    out(0, &body)
}

fn step_version(run: &Run) -> Option<String> {
    match run.pending() {
        (_, _, JobKind::Step { version, .. }) => version,
        other => panic!("no step pending: {other:?}"),
    }
}

#[test]
fn a_versions_script_moves_latest_and_its_versions_install_with_the_software_script() {
    let sw = discovered_app();
    let mut run = Run::new(session(
        vec![sw_item(
            sw.clone(),
            DesiredSoftwareState::InstalledLatest,
            None,
        )],
        MaintenanceOptions::default(),
    ));
    run.tick();
    assert_eq!(
        run.probe_job(),
        vec![
            ("d0".to_string(), "detect App".to_string()),
            ("v0".to_string(), "versions App".to_string())
        ]
    );
    let effects = run.probes(&[
        ("d0", installed("1.0")),
        ("v0", lines(&["2.1", "2.10", "2.2"])),
    ]);
    assert!(effects.contains(&Effect::VersionsFound {
        software: sw.id,
        versions: crate::versions::parse(&lines(&["2.1", "2.10", "2.2"]).stdout).unwrap(),
    }));
    let a = run.action(0);
    assert_eq!(a.kind, ActionKind::Upgrade);
    assert_eq!(a.reason, "1.0 installed, latest is 2.10");
    assert_eq!(
        run.step_job(),
        (
            "upgrade App to 2.10".to_string(),
            "install App from the script".to_string()
        )
    );
    assert_eq!(step_version(&run).as_deref(), Some("2.10"));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Emit { log: Some(l), .. }
            if l == "App: 3 version(s) from its versions script, newest 2.10"))
    );
    run.answer(step_result(0));
    // Verification does not ask for versions again, and judges against the discovered ones.
    assert_eq!(
        run.probe_job(),
        vec![("d0".to_string(), "detect App".to_string())]
    );
    run.probes(&[("d0", installed("2.10"))]);
    assert_eq!(run.s.status, SessionStatus::Passed);
}

#[test]
fn a_failing_versions_script_leaves_the_static_versions_and_says_so() {
    for bad in [
        out(2, ""),
        out(0, "not json\n"),
        out(0, ""),
        ScriptOutcome {
            timed_out: true,
            ..out(0, "")
        },
    ] {
        let run = detected(
            vec![sw_item(
                discovered_app(),
                DesiredSoftwareState::InstalledLatest,
                None,
            )],
            &[("d0", absent()), ("v0", bad.clone())],
        );
        assert_eq!(
            run.step_job(),
            ("install App 1.0".to_string(), "install App 1.0".to_string()),
            "{bad:?}"
        );
        let note = match &run.s.items[0].what {
            ItemWhat::Software { software, .. } => software.versions_note.clone().unwrap(),
            _ => unreachable!(),
        };
        assert!(
            note.starts_with("versions script failed (")
                && note.ends_with("the static versions stand"),
            "{note}"
        );
    }
}

#[test]
fn a_fresh_cached_answer_spares_the_script_and_a_stale_one_does_not() {
    let sw = discovered_app();
    let cache = |minutes_ago: i64| VersionsCache {
        tenant_id: Id::from_u128(9),
        software_id: sw.id,
        versions: vec![Discovered {
            version: "3.0".into(),
            url: None,
            sha256: None,
            size: None,
            released_at: None,
        }],
        fetched_at: t0() - Duration::minutes(minutes_ago),
    };
    // Fresh (59 of 60 minutes): no versions probe; the cached versions decide.
    let mut run = Run::new(session(
        vec![sw_item(
            sw.clone(),
            DesiredSoftwareState::InstalledLatest,
            None,
        )],
        MaintenanceOptions::default(),
    ));
    let mut env = run.env();
    env.versions_cache.insert(sw.id, cache(59));
    run.tick_with(env.clone());
    assert_eq!(run.probe_job().len(), 1);
    run.answer_with(env, probe_answer(&run.pending().2, &[("d0", absent())]));
    assert_eq!(step_version(&run).as_deref(), Some("3.0"));

    // Stale: the script runs again.
    let mut run = Run::new(session(
        vec![sw_item(
            sw.clone(),
            DesiredSoftwareState::InstalledLatest,
            None,
        )],
        MaintenanceOptions::default(),
    ));
    let mut env = run.env();
    env.versions_cache.insert(sw.id, cache(60));
    run.tick_with(env);
    assert_eq!(run.probe_job().len(), 2);
}

fn computer() -> Computer {
    Computer {
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
        enrolled_at: t0(),
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: false,
        onboarding: None,
        held_reboot: None,
    }
}

fn deployment(sw: Id, desired: DesiredSoftwareState, created: i64) -> Deployment {
    Deployment {
        id: Id::from_u128(created as u128),
        tenant_id: None,
        target: Target {
            kind: TargetKind::AllComputers,
            value: None,
        },
        software_id: Some(sw),
        desired_state: Some(desired),
        version: None,
        maintenance_task_id: None,
        task_mode: TaskMode::Enforce,
        parameters: Default::default(),
        enforcement: Enforcement::Required,
        order: DeploymentOrder::Unordered,
        position: 0,
        enabled: true,
        created_at: t0(),
    }
}

fn names(items: &[PlanItem]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| match &i.what {
            ItemWhat::Software { software, .. } => (software.name.clone(), i.rule.clone()),
            ItemWhat::Task { task, .. } => (task.name.clone(), i.rule.clone()),
        })
        .collect()
}

#[test]
fn prerequisites_come_first_transitively_each_once() {
    // App needs Runtime, which needs Base; Tool needs Base too. Runtime also has a deployment
    // of its own, created after App's: it moves up before App.
    let base = software("Base", &["1"]);
    let mut runtime = software("Runtime", &["1"]);
    runtime.depends_on = vec![base.id];
    let mut app = software("App", &["1"]);
    app.depends_on = vec![runtime.id];
    let mut tool = software("Tool", &["1"]);
    tool.depends_on = vec![base.id];
    let all = [base.clone(), runtime.clone(), app.clone(), tool.clone()];
    let deployments = [
        deployment(app.id, DesiredSoftwareState::InstalledLatest, 1),
        deployment(runtime.id, DesiredSoftwareState::InstalledVersion, 2),
        deployment(tool.id, DesiredSoftwareState::InstalledAny, 3),
    ];
    let items = crate::engine::plan::freeze_items(
        &computer(),
        &deployments,
        |id| Ok::<_, ()>(all.iter().find(|s| s.id == id).cloned()),
        |_| Ok(None),
    )
    .unwrap();
    let n = names(&items);
    assert_eq!(
        n.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["Base", "Runtime", "App", "Tool"]
    );
    assert_eq!(n[0].1, "needed by App");
    assert_eq!(items[2].prerequisites, vec![base.id, runtime.id]);
    assert_eq!(items[1].prerequisites, vec![base.id]);
    // Base came in for App: any version will do.
    assert!(matches!(
        items[0].what,
        ItemWhat::Software {
            desired: DesiredSoftwareState::InstalledAny,
            ..
        }
    ));
    // Runtime kept its own deployment's wish.
    assert!(matches!(
        items[1].what,
        ItemWhat::Software {
            desired: DesiredSoftwareState::InstalledVersion,
            ..
        }
    ));
}

#[test]
fn no_prerequisites_for_an_uninstall_nor_for_software_an_exception_leaves_alone() {
    let base = software("Base", &["1"]);
    let mut app = software("App", &["1"]);
    app.depends_on = vec![base.id];
    let all = [base.clone(), app.clone()];
    let find = |id| Ok::<_, ()>(all.iter().find(|s: &&SoftwareSnapshot| s.id == id).cloned());
    let removed = crate::engine::plan::freeze_items(
        &computer(),
        &[deployment(app.id, DesiredSoftwareState::Uninstalled, 1)],
        find,
        |_| Ok(None),
    )
    .unwrap();
    assert_eq!(names(&removed).len(), 1);
    let excepted = crate::engine::plan::freeze_items(
        &computer(),
        &[
            deployment(app.id, DesiredSoftwareState::InstalledLatest, 1),
            deployment(base.id, DesiredSoftwareState::Ignore, 2),
        ],
        find,
        |_| Ok(None),
    )
    .unwrap();
    let n = names(&excepted);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].0, "App");
}

#[test]
fn a_failed_prerequisite_skips_what_needs_it() {
    let base = software("Base", &["1"]);
    let mut app = software("App", &["1"]);
    app.depends_on = vec![base.id];
    let mut needed = sw_item(base.clone(), DesiredSoftwareState::InstalledAny, None);
    needed.rule = "needed by App".into();
    needed.needed_by = Some("App".into());
    let mut dependent = sw_item(app, DesiredSoftwareState::InstalledLatest, None);
    dependent.prerequisites = vec![base.id];
    let mut run = detected(
        vec![needed, dependent],
        &[("d0", absent()), ("d1", absent())],
    );
    assert_eq!(run.step_job().0, "install Base 1");
    assert_eq!(
        run.action(0).reason,
        "needed by App: not installed; latest is 1"
    );
    run.answer(step_result(1));
    // App's install never ran: verification comes next.
    assert_eq!(run.purpose(), JobPurpose::Verify);
    assert_eq!(run.action(1).status, ActionStatus::Skipped);
    assert_eq!(
        run.action(1).result_message.as_deref(),
        Some("not run: its prerequisite Base did not succeed")
    );
    run.probes(&[("d0", absent()), ("d1", absent())]);
    assert_eq!(run.s.status, SessionStatus::Failed);
    assert_eq!(run.action(1).status, ActionStatus::Skipped);
}

#[test]
fn a_versions_line_with_a_download_hands_the_agent_its_installer() {
    let sha = "ab".repeat(32);
    let line = format!(
        "{{\"version\":\"5.0\",\"url\":\"https://vendor.example/app-5.0.msi\",\"sha256\":\"{sha}\",\"size\":42}}\n"
    );
    let run = detected(
        vec![sw_item(
            discovered_app(),
            DesiredSoftwareState::InstalledLatest,
            None,
        )],
        &[("d0", absent()), ("v0", out(0, &line))],
    );
    match run.pending() {
        (
            _,
            _,
            JobKind::Step {
                installer, version, ..
            },
        ) => {
            assert_eq!(version.as_deref(), Some("5.0"));
            let i = installer.expect("the line's download");
            assert_eq!(
                (
                    i.sha256.as_str(),
                    i.size,
                    i.url.as_deref(),
                    i.file_name.as_deref()
                ),
                (
                    sha.as_str(),
                    Some(42),
                    Some("https://vendor.example/app-5.0.msi"),
                    Some("app-5.0.msi")
                )
            );
        }
        other => panic!("no step pending: {other:?}"),
    }
}
