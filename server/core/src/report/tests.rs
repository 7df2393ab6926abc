use super::*;
use crate::domain::*;
use crate::session::*;
use chrono::{TimeZone, Utc};

fn id(n: u128) -> Id {
    Id::from_u128(n)
}

fn at(day: u32, hour: u32) -> Time {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn computer(n: u128, name: &str, compliance: Option<Compliance>) -> Computer {
    Computer {
        id: id(100 + n),
        tenant_id: id(1),
        name: name.into(),
        hostname: name.into(),
        machine_id: name.into(),
        tags: vec![],
        primary_person_id: None,
        os: "linux".into(),
        agent_version: String::new(),
        last_seen_at: None,
        agent_token_hash: None,
        enrolled_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        excluded_from_maintenance: false,
        compliance,
        logged_on_user: None,
        onboarded: true,
        onboarding: None,
        held_reboot: None,
    }
}

fn script() -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body: "true".into(),
    }
}

fn task_item(deployment: u128, name: &str) -> PlanItem {
    PlanItem {
        deployment_id: id(deployment),
        order: DeploymentOrder::Unordered,
        position: 0,
        enforcement: Enforcement::Required,
        parameters: Default::default(),
        invalid: None,
        what: ItemWhat::Task {
            task: TaskSnapshot {
                id: id(deployment + 50),
                name: name.into(),
                test_script: script(),
                set_script: Some(script()),
                get_script: None,
                parameters: vec![],
            },
            mode: TaskMode::Enforce,
        },
        rule: "all computers".into(),
        prerequisites: vec![],
        needed_by: None,
    }
}

fn software_item(deployment: u128, name: &str) -> PlanItem {
    PlanItem {
        what: ItemWhat::Software {
            software: SoftwareSnapshot {
                id: id(deployment + 60),
                name: name.into(),
                detection_script: script(),
                versions: vec![],
                uninstall_script: None,
                configuration_task: None,
                versions_script: None,
                versions_cache_minutes: 0,
                install_script: None,
                upgrade_script: None,
                depends_on: vec![],
                versions_note: None,
            },
            desired: DesiredSoftwareState::InstalledLatest,
            version: None,
        },
        ..task_item(deployment, name)
    }
}

fn action(item: usize, kind: ActionKind, status: ActionStatus, c: Compliance) -> Action {
    Action {
        id: id(900 + item as u128),
        item,
        kind,
        status,
        compliance: c,
        desired_version: Some("2.0".into()),
        detected_version: None,
        detected_version_before: None,
        detected_version_after: None,
        result_message: (status == ActionStatus::Failed).then(|| "exit code 1: disk full".into()),
        current_value: None,
        reason: String::new(),
        started_at: None,
        finished_at: None,
        steps: vec![],
        next_step: 0,
        step_failed: false,
        reboot_required: false,
    }
}

fn session(n: u128, pc: u128, finished: Time, status: SessionStatus) -> Session {
    let mut s = Session::for_tests(id(n), id(100 + pc), finished - chrono::Duration::hours(1));
    s.status = status;
    s.finished_at = Some(finished);
    s.compliance = Some(match status {
        SessionStatus::Passed => Compliance::Compliant,
        _ => Compliance::NonCompliant,
    });
    s
}

fn report(computers: &[Computer], sessions: &[Session], now: Time) -> TenantReport {
    let sessions: Vec<SessionFacts> = sessions.iter().map(SessionFacts::of).collect();
    build(&ReportInput {
        month: "2026-11".parse().unwrap(),
        tz: Tz::Europe__Berlin,
        now,
        computers,
        sessions: &sessions,
        attestations: &HashMap::new(),
    })
}

#[test]
fn months_read_as_yyyy_mm_only() {
    assert_eq!("2026-11".parse::<Month>().unwrap().to_string(), "2026-11");
    assert_eq!("2026-11".parse::<Month>().unwrap().title(), "November 2026");
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-11",
        "2026/11",
        "",
        "2026-11-01",
        "+026-11",
    ] {
        assert!(bad.parse::<Month>().is_err(), "{bad}");
    }
}

#[test]
fn a_month_is_bounded_by_local_midnights() {
    let m: Month = "2026-03".parse().unwrap();
    let (from, to) = m.bounds(Tz::Europe__Berlin);
    // CET (+1) at the start, CEST (+2) at the end.
    assert_eq!(from, Utc.with_ymd_and_hms(2026, 2, 28, 23, 0, 0).unwrap());
    assert_eq!(to, Utc.with_ymd_and_hms(2026, 3, 31, 22, 0, 0).unwrap());
    let (_, to) = "2026-12".parse::<Month>().unwrap().bounds(Tz::UTC);
    assert_eq!(to, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    // A month whose first midnight a DST change skipped: Asunción went from 00:00 (UTC-4) to
    // 01:00 (UTC-3) on 1 October 2023; the month starts at that 01:00.
    let (from, _) = "2023-10"
        .parse::<Month>()
        .unwrap()
        .bounds(Tz::America__Asuncion);
    assert_eq!(from, Utc.with_ymd_and_hms(2023, 10, 1, 4, 0, 0).unwrap());
}

#[test]
fn sessions_count_in_the_month_they_finished_in_and_compliance_is_at_its_end() {
    let pcs = [
        computer(1, "alpha", Some(Compliance::Compliant)),
        computer(2, "bravo", Some(Compliance::Compliant)),
        computer(3, "charlie", None),
    ];
    let sessions = [
        // October (Berlin): before the month; alpha's compliance until November's session.
        session(
            1,
            1,
            Utc.with_ymd_and_hms(2026, 10, 31, 22, 30, 0).unwrap(),
            SessionStatus::Failed,
        ),
        session(2, 1, at(10, 9), SessionStatus::Passed),
        // bravo: failed in November, and a December session that must not count.
        session(3, 2, at(12, 9), SessionStatus::Failed),
        session(
            4,
            2,
            Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap(),
            SessionStatus::Passed,
        ),
        session(5, 3, at(13, 9), SessionStatus::Cancelled),
    ];
    let done = Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap();
    let r = report(&pcs, &sessions, done);
    assert!(r.complete);
    assert_eq!(r.to, Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap());
    assert_eq!(
        r.outcomes,
        vec![
            (SessionStatus::Passed, 1),
            (SessionStatus::Failed, 1),
            (SessionStatus::Cancelled, 1)
        ]
    );
    assert_eq!(
        r.compliance,
        ComplianceCounts {
            compliant: 1,
            non_compliant: 1,
            unknown: 1
        }
    );
    // Non-compliant first, then unknown, then compliant.
    let order: Vec<_> = r
        .computers
        .iter()
        .map(|c| (c.name.as_str(), c.compliance))
        .collect();
    assert_eq!(
        order,
        vec![
            ("bravo", Some(Compliance::NonCompliant)),
            ("charlie", None),
            ("alpha", Some(Compliance::Compliant)),
        ]
    );
    assert_eq!(r.computers[2].as_of, Some(at(10, 9)));
    // The session that failed as a whole is a failure, not resolved within the month.
    assert_eq!(r.failures_total, 1);
    assert_eq!(r.failures[0].item, None);
    assert_eq!(r.failures[0].resolved_by, None);

    // While the month lasts: to now, and a computer whose sessions the caller did not pass is
    // unknown (its own `compliance` field is not read).
    let r = report(&pcs, &sessions[1..2], at(20, 0));
    assert!(!r.complete);
    assert_eq!(r.to, at(20, 0));
    assert_eq!(r.compliance.compliant, 1, "{:?}", r.computers);
    assert_eq!(r.compliance.unknown, 2, "{:?}", r.computers);
}

#[test]
fn changes_remediations_failures_and_their_fixes() {
    let pcs = [computer(1, "alpha", None)];
    let mut first = session(1, 1, at(3, 9), SessionStatus::Failed);
    first.items = vec![software_item(10, "7-Zip"), task_item(11, "Disk cleanup")];
    first.actions = vec![
        action(
            0,
            ActionKind::Install,
            ActionStatus::Succeeded,
            Compliance::Compliant,
        ),
        action(
            1,
            ActionKind::RunTask,
            ActionStatus::Failed,
            Compliance::NonCompliant,
        ),
    ];
    let mut second = session(2, 1, at(4, 9), SessionStatus::Passed);
    second.items = vec![software_item(10, "7-Zip"), task_item(11, "Disk cleanup")];
    second.actions = vec![
        action(
            0,
            ActionKind::Upgrade,
            ActionStatus::Succeeded,
            Compliance::Compliant,
        ),
        action(
            1,
            ActionKind::RunTask,
            ActionStatus::Succeeded,
            Compliance::Compliant,
        ),
    ];
    second.actions[0].detected_version_after = Some("2.1".into());
    second.postpone_count = 2;
    second.end_user_postpones = 1;
    let r = report(&pcs, &[second.clone(), first.clone()], at(20, 0));
    assert_eq!(
        r.software,
        vec![SoftwareLine {
            name: "7-Zip".into(),
            installed: 1,
            updated: 1,
            removed: 0,
            computers: 1,
            versions: vec!["2.0".into(), "2.1".into()],
        }]
    );
    assert_eq!(
        r.tasks,
        vec![TaskLine {
            name: "Disk cleanup".into(),
            remediated: 1,
            computers: 1
        }]
    );
    assert_eq!(r.failures.len(), 1);
    let f = &r.failures[0];
    assert_eq!(
        (f.item.as_deref(), f.message.as_str()),
        (Some("Disk cleanup"), "exit code 1: disk full")
    );
    assert_eq!(f.resolved_by, Some((id(2), at(4, 9))));
    assert_eq!((r.failures_total, r.failures_resolved), (1, 1));
    assert_eq!(r.postpones_by_end_users, 1);
    assert_eq!((r.postpones[0].total, r.postpones[0].by_end_user), (2, 1));

    // Another deployment's success does not resolve it.
    second.items[1].deployment_id = id(12);
    let r = report(&pcs, &[first, second], at(20, 0));
    assert_eq!(r.failures[0].resolved_by, None);
}

#[test]
fn attestations_are_listed_with_the_keys_that_signed_them() {
    let pcs = [computer(1, "alpha", None)];
    let s = session(1, 1, at(3, 9), SessionStatus::Passed);
    let a = Attestation {
        session_id: s.id,
        tenant_id: id(1),
        algorithm: crate::attest::ALGORITHM.into(),
        public_key: "key-1".into(),
        chain_head: "ab".repeat(32),
        last_sequence: 4,
        signature: "sig".into(),
        signed_at: at(3, 9),
    };
    let attestations = HashMap::from([(s.id, a)]);
    let r = build(&ReportInput {
        month: "2026-11".parse().unwrap(),
        tz: Tz::UTC,
        now: at(20, 0),
        computers: &pcs,
        sessions: &[SessionFacts::of(&s)],
        attestations: &attestations,
    });
    assert_eq!(r.attestations_total, 1);
    assert_eq!(r.attestations[0].chain_head, "ab".repeat(32));
    assert_eq!(r.signing_keys, vec!["key-1".to_string()]);
}

#[test]
fn lists_stop_at_max_rows_and_the_totals_count_everything() {
    let n = MAX_ROWS as u128 + 3;
    let pcs: Vec<Computer> = (0..n)
        .map(|i| computer(i, &format!("pc-{i:05}"), None))
        .collect();
    let sessions: Vec<Session> = (0..n)
        .map(|i| session(100_000 + i, i, at(5, 9), SessionStatus::Failed))
        .collect();
    let r = report(&pcs, &sessions, at(20, 0));
    assert_eq!(r.computers.len(), MAX_ROWS);
    assert_eq!(r.compliance.total(), n as u64);
    assert_eq!(r.compliance.non_compliant, n as u64);
    assert_eq!(r.failures.len(), MAX_ROWS);
    assert_eq!((r.failures_total, r.failures_resolved), (n as u64, 0));
}
