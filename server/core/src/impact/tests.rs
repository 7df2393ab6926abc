use super::*;
use chrono::{TimeZone, Utc};

fn now() -> Time {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn id(n: u128) -> Id {
    Id::from_u128(n)
}

const TENANT: u128 = 1;

fn computer(n: u128, tag: &str) -> Computer {
    Computer {
        id: id(1000 + n),
        tenant_id: id(TENANT),
        name: format!("pc-{n}"),
        hostname: format!("pc-{n}"),
        machine_id: format!("m-{n}"),
        tags: vec![crate::types::Stored::read(tag)],
        primary_person_id: None,
        os: String::new(),
        agent_version: String::new(),
        last_seen_at: None,
        agent_token_hash: None,
        enrolled_at: now(),
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: true,
        onboarding: None,
        held_reboot: None,
    }
}

fn script(body: &str) -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body: body.into(),
    }
}

fn software(n: u128, depends_on: Vec<Id>) -> SoftwareSnapshot {
    SoftwareSnapshot {
        id: id(n),
        name: format!("app-{n}"),
        detection_script: script("detect"),
        versions: ["1.0", "2.0"]
            .into_iter()
            .map(|v| SoftwareVersion {
                version: v.into(),
                install_script: script("install"),
                upgrade_script: None,
                installer: None,
            })
            .collect(),
        uninstall_script: Some(script("remove")),
        configuration_task: None,
        versions_script: None,
        versions_cache_minutes: 0,
        install_script: None,
        upgrade_script: None,
        depends_on,
        versions_note: None,
    }
}

fn deployment(n: u128, sw: u128, target: Target, desired: DesiredSoftwareState) -> Deployment {
    Deployment {
        id: id(n),
        tenant_id: Some(id(TENANT)),
        target,
        software_id: Some(id(sw)),
        desired_state: Some(desired),
        version: None,
        maintenance_task_id: None,
        task_mode: TaskMode::Enforce,
        parameters: Default::default(),
        enforcement: Enforcement::Required,
        order: DeploymentOrder::Unordered,
        position: 0,
        enabled: true,
        created_at: now(),
    }
}

fn all() -> Target {
    Target {
        kind: TargetKind::AllComputers,
        value: None,
    }
}

fn tag(t: &str) -> Target {
    Target {
        kind: TargetKind::Tag,
        value: Some(t.into()),
    }
}

fn catalogue(sw: Vec<SoftwareSnapshot>) -> Catalogue {
    Catalogue {
        software: sw.into_iter().map(|s| (s.id, s)).collect(),
        ..Default::default()
    }
}

fn detected(c: &Computer, sw: u128, version: Option<&str>, days_ago: i64) -> Detection {
    Detection {
        tenant_id: c.tenant_id,
        computer_id: c.id,
        subject: Subject::Software(id(sw)),
        session_id: id(9),
        at: now() - chrono::Duration::days(days_ago),
        version: version.map(String::from),
        test: None,
        test_error: None,
        current_value: None,
    }
}

fn run(p: &Preview, c: &Computer, found: &[Detection]) -> Outcome {
    p.computer(
        c,
        |s| {
            found
                .iter()
                .find(|d| d.subject == s && d.computer_id == c.id)
        },
        |_| None,
    )
}

fn planned(o: Outcome) -> ComputerImpact {
    match o {
        Outcome::Planned(c) => c,
        other => panic!("expected a plan, got {other:?}"),
    }
}

#[test]
fn a_new_deployment_plans_from_the_last_detection() {
    let pc = computer(1, "office");
    let d = deployment(50, 10, all(), DesiredSoftwareState::InstalledLatest);
    let p = Preview::new(
        &Change::Create(d),
        &[],
        catalogue(vec![software(10, vec![])]),
        now(),
        DEFAULT_STALE_AFTER_DAYS,
    )
    .unwrap();
    let missing = run(&p, &pc, &[detected(&pc, 10, None, 1)]);
    let a = &planned(missing).actions[0];
    assert_eq!(a.kind, ActionKind::Install);
    assert_eq!(a.reason, "not installed; latest is 2.0");
    assert_eq!(a.deployment, Some(id(50)));
    assert_eq!(a.previous_deployment, None);
    let old = planned(run(&p, &pc, &[detected(&pc, 10, Some("1.0"), 1)]));
    assert_eq!(old.actions[0].kind, ActionKind::Upgrade);
    let current = planned(run(&p, &pc, &[detected(&pc, 10, Some("2.0"), 1)]));
    assert_eq!(current.actions[0].kind, ActionKind::NoAction);
}

#[test]
fn missing_and_old_detections_are_listed_not_guessed() {
    let pc = computer(1, "office");
    let d = deployment(50, 10, all(), DesiredSoftwareState::InstalledLatest);
    let p = Preview::new(
        &Change::Create(d),
        &[],
        catalogue(vec![software(10, vec![])]),
        now(),
        7,
    )
    .unwrap();
    match run(&p, &pc, &[]) {
        Outcome::Stale(s) => {
            assert_eq!(s.reason, "app-10: never detected");
            assert_eq!(s.detected_at, None);
        }
        other => panic!("{other:?}"),
    }
    match run(&p, &pc, &[detected(&pc, 10, Some("2.0"), 8)]) {
        Outcome::Stale(s) => {
            assert_eq!(s.reason, "app-10: last detected 2026-11-23");
            assert!(s.detected_at.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tag_deployment_shadows_and_its_delete_unshadows() {
    let office = computer(1, "office");
    let lab = computer(2, "lab");
    let base = deployment(40, 10, all(), DesiredSoftwareState::InstalledLatest);
    let remove = deployment(50, 10, tag("office"), DesiredSoftwareState::Uninstalled);
    let cat = catalogue(vec![software(10, vec![])]);
    let found = [
        detected(&office, 10, Some("2.0"), 1),
        detected(&lab, 10, Some("2.0"), 1),
    ];
    let p = Preview::new(
        &Change::Create(remove.clone()),
        std::slice::from_ref(&base),
        cat.clone(),
        now(),
        14,
    )
    .unwrap();
    let c = planned(run(&p, &office, &found));
    assert_eq!(c.actions[0].kind, ActionKind::Uninstall);
    assert_eq!(c.actions[0].previous_deployment, Some(id(40)));
    assert_eq!(c.shadowed, vec![id(40)]);
    assert_eq!(run(&p, &lab, &found), Outcome::Unaffected, "not targeted");
    let p = Preview::new(
        &Change::Delete(remove.id),
        &[base.clone(), remove],
        cat,
        now(),
        14,
    )
    .unwrap();
    let c = planned(run(&p, &office, &found));
    assert_eq!(c.actions[0].kind, ActionKind::NoAction);
    assert_eq!(c.actions[0].deployment, Some(id(40)));
    assert_eq!(c.unshadowed, vec![id(40)]);
}

#[test]
fn an_update_that_changes_nothing_a_plan_decides_reaches_no_one() {
    let pc = computer(1, "office");
    let d = deployment(40, 10, all(), DesiredSoftwareState::InstalledLatest);
    let mut same = d.clone();
    same.created_at = now() + chrono::Duration::days(1);
    let p = Preview::new(
        &Change::Update(same),
        std::slice::from_ref(&d),
        catalogue(vec![software(10, vec![])]),
        now(),
        14,
    )
    .unwrap();
    assert_eq!(run(&p, &pc, &[]), Outcome::Unaffected);
    let unknown = Preview::new(
        &Change::Delete(id(77)),
        &[d],
        Catalogue::default(),
        now(),
        14,
    );
    assert_eq!(unknown.unwrap_err(), UnknownDeployment(id(77)));
}

#[test]
fn deleting_the_only_deployment_leaves_the_software_alone() {
    let pc = computer(1, "office");
    let d = deployment(40, 10, all(), DesiredSoftwareState::InstalledLatest);
    let p = Preview::new(
        &Change::Delete(d.id),
        std::slice::from_ref(&d),
        catalogue(vec![software(10, vec![])]),
        now(),
        14,
    )
    .unwrap();
    let c = planned(run(&p, &pc, &[]));
    assert_eq!(c.actions[0].kind, ActionKind::NoAction);
    assert_eq!(c.actions[0].reason, "no longer deployed: left as it is");
    assert_eq!(c.actions[0].deployment, None);
}

#[test]
fn prerequisites_come_in_with_what_needs_them() {
    let pc = computer(1, "office");
    let runtime = software(11, vec![]);
    let app = software(10, vec![id(11)]);
    let d = deployment(50, 10, all(), DesiredSoftwareState::InstalledLatest);
    let p = Preview::new(
        &Change::Create(d),
        &[],
        catalogue(vec![app, runtime]),
        now(),
        14,
    )
    .unwrap();
    assert!(p.subjects().contains(&Subject::Software(id(11))));
    match run(&p, &pc, &[detected(&pc, 10, None, 1)]) {
        Outcome::Stale(s) => assert_eq!(s.reason, "app-11: never detected"),
        other => panic!("{other:?}"),
    }
    let found = [detected(&pc, 10, None, 1), detected(&pc, 11, None, 1)];
    let c = planned(run(&p, &pc, &found));
    let kinds: Vec<_> = c.actions.iter().map(|a| (a.subject, a.kind)).collect();
    assert!(kinds.contains(&(Subject::Software(id(11)), ActionKind::Install)));
    assert!(kinds.contains(&(Subject::Software(id(10)), ActionKind::Install)));
    let counts = counts([c].iter());
    assert_eq!(
        counts.get(&(id(TENANT), ActionKindKey(ActionKind::Install))),
        Some(&2)
    );
}

#[test]
fn failed_detections_are_not_kept() {
    let f = Found {
        detection_error: Some("boom".into()),
        ..Found::default()
    };
    assert!(Detection::of(id(1), id(2), id(3), now(), Subject::Software(id(4)), &f).is_none());
    let undecided = Found::default();
    assert!(Detection::of(id(1), id(2), id(3), now(), Subject::Task(id(4)), &undecided).is_none());
    let installed = Found {
        version: Some("1.0".into()),
        ..Found::default()
    };
    let d = Detection::of(
        id(1),
        id(2),
        id(3),
        now(),
        Subject::Software(id(4)),
        &installed,
    )
    .unwrap();
    assert_eq!(d.found(), installed);
}
