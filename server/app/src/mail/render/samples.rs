//! Sample views every template is rendered against at load (`Templates::smoke_test`): full and
//! minimal ones, and every postpone page state.

use super::*;

pub(super) fn sample_brand() -> Brand {
    Brand::new(
        "Sample Company",
        Some("https://example.com/logo.png".to_owned()),
        "#336699",
        "Sample MSP",
    )
}

fn sample_actions(outcomes: bool) -> Vec<ActionView> {
    let mut actions = vec![
        ActionView::planned(
            "Sample App",
            PlannedChange::Upgrade {
                from: Some("1.9.2"),
                to: Some("1.10.0"),
            },
        ),
        ActionView::planned("Sample Task", PlannedChange::RunTask),
        ActionView::planned("Old Tool", PlannedChange::Uninstall { version: None }),
    ];
    if outcomes {
        let results = [
            (ActionOutcome::Succeeded, Some("done")),
            (ActionOutcome::Failed, Some("exit code 1")),
            (ActionOutcome::Skipped, None),
        ];
        actions = actions
            .into_iter()
            .zip(results)
            .map(|(a, (o, m))| a.with_outcome(o, m))
            .collect();
    }
    actions
}

pub(super) fn sample_session_views() -> Vec<SessionMailView> {
    let full = SessionMailView {
        brand: sample_brand(),
        recipient_name: "Sam Sample".to_owned(),
        computer_name: "PC-001".to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        time_zone: "Europe/Berlin".to_owned(),
        actions: sample_actions(true),
        show_actions: true,
        reboot: RebootExpectation::Will,
        postpone_url: Some("https://upkeep.example/postpone/x".to_owned()),
        update_now_url: Some("https://upkeep.example/postpone/x?action=update-now".to_owned()),
        reboot_now_url: Some("https://upkeep.example/reboot/x".to_owned()),
        postpones_left: 2,
        postpone_hours: 24,
        result_summary: Some("1 of 3 actions failed".to_owned()),
        compliant: false,
        postpone_links: vec![ComputerLink {
            computer_name: "PC-002".to_owned(),
            url: "https://upkeep.example/postpone/y".to_owned(),
        }],
    };
    let minimal = SessionMailView {
        brand: Brand::default(),
        recipient_name: String::new(),
        actions: Vec::new(),
        show_actions: false,
        reboot: RebootExpectation::None,
        postpone_url: None,
        update_now_url: None,
        reboot_now_url: None,
        postpones_left: 0,
        result_summary: None,
        compliant: true,
        postpone_links: Vec::new(),
        ..full.clone()
    };
    let middle = SessionMailView {
        actions: sample_actions(false),
        reboot: RebootExpectation::May,
        postpone_url: None,
        postpones_left: 1,
        ..full.clone()
    };
    vec![full, minimal, middle]
}

pub(super) fn sample_page_views() -> Vec<PostponePageView> {
    let full = PostponePageView {
        brand: sample_brand(),
        state: String::new(),
        computer_name: "PC-001".to_owned(),
        when: "Tuesday, 3 March 2026 at 22:00 (Europe/Berlin)".to_owned(),
        new_when: Some("Wednesday, 4 March 2026 at 22:00 (Europe/Berlin)".to_owned()),
        actions: sample_actions(false),
        show_actions: true,
        reboot: RebootExpectation::May,
        postpones_left: 2,
        postpone_hours: 24,
        allow_update_now: true,
        message: Some("Sample message".to_owned()),
    };
    let mut views = Vec::new();
    for state in PostponeState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(["unknown"])
    {
        views.push(PostponePageView {
            state: state.to_owned(),
            ..full.clone()
        });
        views.push(PostponePageView {
            brand: Brand::default(),
            state: state.to_owned(),
            computer_name: String::new(),
            when: String::new(),
            new_when: None,
            actions: Vec::new(),
            show_actions: false,
            reboot: RebootExpectation::Will,
            postpones_left: 0,
            postpone_hours: 24,
            allow_update_now: false,
            message: None,
        });
    }
    views
}

/// A full report (a row in every list, omitted rows, a month in progress) and an empty one.
// long: one literal view naming every field once, on purpose (strict mode checks them all).
pub(super) fn sample_report_views() -> Vec<ReportView> {
    let full = ReportView {
        brand: sample_brand(),
        title: "Maintenance report, November 2026".into(),
        month: "2026-11".into(),
        period: "1 November 2026 – 20 November 2026 (month in progress)".into(),
        complete: false,
        time_zone: "Europe/Berlin".into(),
        generated_at: "2026-11-20 09:00 CET".into(),
        summary: vec![Figure {
            label: "Compliant computers".into(),
            value: "1 of 2 (50 %)".into(),
        }],
        computers: vec![ComputerRow {
            name: "RECEPTION-PC".into(),
            os: "Windows 11".into(),
            compliance: "Compliant".into(),
            state: "ok",
            as_of: "2026-11-19 22:00 CET".into(),
            sessions: 3,
        }],
        computers_omitted: 1,
        software: vec![SoftwareRow {
            name: "Sample App".into(),
            installed: 1,
            updated: 2,
            removed: 0,
            computers: 3,
            versions: "1.10.0".into(),
        }],
        tasks: vec![TaskRow {
            name: "Sample Task".into(),
            remediated: 2,
            computers: 2,
        }],
        failures: vec![FailureRow {
            when: "2026-11-03 22:10 CET".into(),
            computer: "RECEPTION-PC".into(),
            item: "Sample App".into(),
            message: "exit code 1".into(),
            resolution: "Open".into(),
            resolved: false,
            session: "0193a1b2-0000-7000-8000-000000000001".into(),
        }],
        failures_omitted: 1,
        postpones: vec![PostponeRow {
            computer: "RECEPTION-PC".into(),
            by_end_user: 1,
            total: 1,
            finished: "2026-11-04 22:30 CET".into(),
            outcome: "Passed".into(),
        }],
        postpones_by_end_users: 1,
        attestations: vec![AttestationRow {
            session: "0193a1b2-0000-7000-8000-000000000001".into(),
            computer: "RECEPTION-PC".into(),
            finished: "2026-11-04 22:30 CET".into(),
            outcome: "Passed".into(),
            chain_head: "ab".repeat(32),
        }],
        attestations_omitted: 1,
        signing_keys: vec!["11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()],
    };
    let empty = ReportView {
        brand: Brand::default(),
        complete: true,
        summary: vec![],
        computers: vec![],
        computers_omitted: 0,
        software: vec![],
        tasks: vec![],
        failures: vec![],
        failures_omitted: 0,
        postpones: vec![],
        postpones_by_end_users: 0,
        attestations: vec![],
        attestations_omitted: 0,
        signing_keys: vec![],
        ..full.clone()
    };
    vec![full, empty]
}
