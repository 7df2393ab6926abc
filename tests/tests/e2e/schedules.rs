//! Schedules fire by the server's (test-injected) clock in the schedule's time zone.

use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn sessions(s: &TestServer, token: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let d = s.gql(token, "{ maintenanceSessions { edges { node { id status statusReason trigger executeAt schedule { name } } } } }", json!({})).await?;
    Ok(d["maintenanceSessions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect())
}

/// `30 2 * * *` in New York on the spring-forward day: 02:30 does not exist, so it runs once at
/// 03:00 EDT (07:00Z); the next day at 02:30 EDT (06:30Z).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_fires_across_a_dst_change_in_new_york() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.test_clock = Some(at("2026-03-07T12:00:00Z"))).await?;
    let mut admin = s.admin().await?;
    let t = s.create_tenant(&admin, "NY").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let _a = TestAgent::start(&s.url, &key, "ny-1").await?;
    let c = s.computer_id(&admin, "ny-1").await?;
    s.wait_online(&admin, &c).await?;
    let d = s
        .gql(&admin, "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"Nightly\", target: {kind: ALL_COMPUTERS}, cron: \"30 2 * * *\", timeZone: \"America/New_York\", windowMinutes: 60}) { id nextRuns(count: 3) } }", json!({"t": t}))
        .await?;
    assert_eq!(
        d["createSchedule"]["nextRuns"],
        json!([
            "2026-03-08T07:00:00.000Z",
            "2026-03-09T06:30:00.000Z",
            "2026-03-10T06:30:00.000Z"
        ])
    );
    s.set_clock(at("2026-03-08T06:59:00Z")).await?;
    admin = s.admin().await?;
    // A scheduler pass driven here (passes never overlap): whatever it fires exists after it.
    s.app().scheduler_pass().await?;
    assert!(
        sessions(&s, &admin).await?.is_empty(),
        "not before its time"
    );
    s.set_clock(at("2026-03-08T07:00:10Z")).await?;
    admin = s.admin().await?;
    let list = wait_for("the schedule to fire", T, || async {
        let l = sessions(&s, &admin).await?;
        Ok((!l.is_empty()).then_some(l))
    })
    .await?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["trigger"], "SCHEDULE");
    assert_eq!(list[0]["schedule"]["name"], "Nightly");
    let id = list[0]["id"].as_str().unwrap().to_string();
    s.wait_status(&admin, &id, &["PASSED"], T).await?;
    // Moving on within the same window fires nothing more.
    s.set_clock(at("2026-03-08T07:30:00Z")).await?;
    admin = s.admin().await?;
    s.app().scheduler_pass().await?;
    assert_eq!(sessions(&s, &admin).await?.len(), 1, "runs once");
    s.set_clock(at("2026-03-09T06:30:05Z")).await?;
    admin = s.admin().await?;
    wait_for("the next day's occurrence", T, || async {
        Ok((sessions(&s, &admin).await?.len() == 2).then_some(()))
    })
    .await?;
    Ok(())
}

/// Detection an hour ahead, then a window the session can no longer start in: it is cancelled,
/// not executed late. An occurrence whose whole window passed while the server was not looking
/// is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_window_is_respected() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.test_clock = Some(at("2026-06-01T10:00:00Z"))).await?;
    let mut admin = s.admin().await?;
    let t = s.create_tenant(&admin, "W").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let _a = TestAgent::start(&s.url, &key, "w-1").await?;
    let c = s.computer_id(&admin, "w-1").await?;
    s.wait_online(&admin, &c).await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&t), "tool", dir.path(), &["2.0"]).await?;
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    s.gql(&admin, "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"Noon\", target: {kind: ALL_COMPUTERS}, cron: \"0 12 * * *\", timeZone: \"UTC\", detectionLeadMinutes: 60, windowMinutes: 30}) { id } }", json!({"t": t})).await?;
    // 11:00: detection runs, execution waits for 12:00.
    s.set_clock(at("2026-06-01T11:00:05Z")).await?;
    admin = s.admin().await?;
    let list = wait_for("detection", T, || async {
        let l = sessions(&s, &admin).await?;
        Ok((!l.is_empty()).then_some(l))
    })
    .await?;
    let id = list[0]["id"].as_str().unwrap().to_string();
    let sched = s.wait_status(&admin, &id, &["SCHEDULED"], T).await?;
    assert_eq!(sched["executeAt"], "2026-06-01T12:00:00.000Z");
    // The clock jumps past the window: the session must not execute late.
    s.set_clock(at("2026-06-01T12:45:00Z")).await?;
    admin = s.admin().await?;
    let done = s
        .wait_status(&admin, &id, &["CANCELLED", "PASSED", "FAILED"], T)
        .await?;
    assert_eq!(done["status"], "CANCELLED", "{done:#}");
    assert!(
        done["statusReason"].as_str().unwrap().contains("window"),
        "{done:#}"
    );
    assert!(
        !dir.path().join("tool.version").exists(),
        "nothing was installed outside the window"
    );
    // A whole day passes unseen (server "down"): that occurrence is skipped, not run late.
    s.set_clock(at("2026-06-02T13:00:00Z")).await?;
    admin = s.admin().await?;
    s.app().scheduler_pass().await?;
    assert_eq!(sessions(&s, &admin).await?.len(), 1);
    Ok(())
}
