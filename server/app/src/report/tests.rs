use super::*;
use chrono::TimeZone;
use upkeep_core::report::{FailureLine, ReportInput};

fn report(complete: bool) -> Report {
    let zone = chrono_tz::Europe::Berlin;
    let now = if complete {
        chrono::Utc.with_ymd_and_hms(2026, 12, 2, 8, 0, 0).unwrap()
    } else {
        chrono::Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap()
    };
    let mut report = upkeep_core::report::build(&ReportInput {
        month: "2026-11".parse().unwrap(),
        tz: zone,
        now,
        computers: &[],
        sessions: &[],
        attestations: &Default::default(),
    });
    report.failures.push(FailureLine {
        session_id: upkeep_core::domain::Id::from_u128(7),
        computer_id: upkeep_core::domain::Id::from_u128(8),
        computer_name: "pc".into(),
        item: None,
        at: now,
        message: "\n  preflight failed: disk full\nmore".into(),
        resolved_by: None,
    });
    report.failures_total = 3;
    Report {
        tenant: serde_json::from_value(serde_json::json!({
            "id": upkeep_core::domain::Id::from_u128(1), "name": "acme", "company_name": null,
            "time_zone": "Europe/Berlin", "mail_from": null, "logo_url": null,
            "primary_color": null, "auto_onboarding": false, "created_at": now,
        }))
        .unwrap(),
        report,
        generated_at: now,
        zone,
    }
}

#[test]
fn the_view_words_the_period_times_and_failures_for_people() {
    let v = view(&report(true), Brand::default());
    assert_eq!(v.period, "1 November 2026 – 30 November 2026");
    assert_eq!(v.generated_at, "2026-12-02 09:00 CET");
    assert_eq!(v.failures[0].item, "Session");
    assert_eq!(v.failures[0].message, "preflight failed: disk full");
    assert_eq!(v.failures[0].resolution, "Open at the end of the month");
    assert_eq!(v.failures_omitted, 2);
    let v = view(&report(false), Brand::default());
    assert_eq!(
        v.period,
        "1 November 2026 – 20 November 2026 (month in progress)"
    );
    assert_eq!(v.failures[0].resolution, "Open");
}
