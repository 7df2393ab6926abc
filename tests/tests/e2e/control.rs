//! MSP control: exceptions, exclusions, cross-tenant schedules, stops, explanations, business
//! hours, the concurrency ceiling, enrollment presets and people.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn agent_in(
    s: &TestServer,
    admin: &str,
    tenant: &str,
    host: &str,
) -> anyhow::Result<(TestAgent, String)> {
    let key = s.enrollment_key(admin, tenant).await?;
    let a = TestAgent::start(&s.url, &key, host).await?;
    let c = s.computer_id(admin, host).await?;
    s.wait_online(admin, &c).await?;
    Ok((a, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_exception_exempts_one_computer_and_disabled_deployments_do_nothing()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let (_a1, c1) = agent_in(&s, &admin, &t, "lab-1").await?;
    let (_a2, c2) = agent_in(&s, &admin, &t, "office-1").await?;
    s.gql(
        &admin,
        "mutation($c: ID!) { updateComputer(id: $c, input: {tags: [\"lab\"]}) { id } }",
        json!({"c": c1}),
    )
    .await?;
    let d1 = tempfile::tempdir()?;
    // The same software entry for both; scripts keep state per hostname-free dir, so use a
    // cross-tenant software whose files live under $HOME-independent paths via parameters.
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "Office", "detectionScript": {"language": "SHELL", "body": "cat \"$UPKEEP_PARAM_DIR/office.$UPKEEP_PARAM_HOST\" 2>/dev/null; exit 0"},
                "versions": [{"version": "2.0", "installScript": {"language": "SHELL", "body": "echo 2.0 > \"$UPKEEP_PARAM_DIR/office.$UPKEEP_PARAM_HOST\""}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = d1.path().display().to_string();
    let all = s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST", "parameters": {"DIR": dir, "HOST": "any"}})).await?;
    let ex = s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "TAG", "value": "lab"}, "softwareId": sw, "desiredState": "IGNORE"})).await?;
    // The lab computer: nothing planned; the office computer: installed.
    let id1 = s.start_session(&admin, &c1, json!({})).await?;
    let r1 = s
        .wait_status(&admin, &id1, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(r1["status"], "PASSED");
    assert_eq!(
        r1["actions"].as_array().unwrap().len(),
        0,
        "the exception leaves it alone: {r1:#}"
    );
    let id2 = s.start_session(&admin, &c2, json!({})).await?;
    let r2 = s
        .wait_status(&admin, &id2, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(
        (r2["status"].as_str(), r2["actions"][0]["kind"].as_str()),
        (Some("PASSED"), Some("INSTALL")),
        "{r2:#}"
    );
    assert_eq!(r2["actions"][0]["reason"], "not installed; latest is 2.0");
    assert!(d1.path().join("office.any").exists());
    // Explanations: which deployment won on the lab computer, what it shadowed, and why.
    let res = s.gql(&admin, "query($c: ID!) { computer(id: $c) { deploymentResolution { software { name } winner { id desiredState } shadowed { id } rule } } }", json!({"c": c1})).await?;
    let r = &res["computer"]["deploymentResolution"][0];
    assert_eq!(r["winner"]["id"], ex.as_str());
    assert_eq!(r["shadowed"][0]["id"], all.as_str());
    assert_eq!(r["rule"], "TAG beats ALL_COMPUTERS");
    // Disabled deployments match nothing.
    std::fs::remove_file(d1.path().join("office.any"))?;
    s.gql(
        &admin,
        "mutation($d: ID!) { updateDeployment(id: $d, input: {enabled: false}) { enabled } }",
        json!({"d": all}),
    )
    .await?;
    let id3 = s.start_session(&admin, &c2, json!({})).await?;
    let r3 = s
        .wait_status(&admin, &id3, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(r3["actions"].as_array().unwrap().len(), 0, "{r3:#}");
    assert!(!d1.path().join("office.any").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_schedule_runs_at_each_tenants_local_time() -> anyhow::Result<()> {
    // Sydney is UTC+11 and New York UTC-5 on 2026-01-15.
    let s = TestServer::start_with(|c| c.test_clock = Some(at("2026-01-14T12:00:00Z"))).await?;
    let mut admin = s.admin().await?;
    let syd = s.gql(&admin, "mutation { createTenant(input: {name: \"Sydney\", timeZone: \"Australia/Sydney\"}) { id } }", json!({})).await?["createTenant"]["id"].as_str().unwrap().to_string();
    let ny = s.gql(&admin, "mutation { createTenant(input: {name: \"NewYork\", timeZone: \"America/New_York\"}) { id } }", json!({})).await?["createTenant"]["id"].as_str().unwrap().to_string();
    let excluded = s.gql(&admin, "mutation { createTenant(input: {name: \"Paused\", timeZone: \"UTC\", excludedFromMaintenance: true}) { id } }", json!({})).await?["createTenant"]["id"].as_str().unwrap().to_string();
    let (_a1, _c_syd) = agent_in(&s, &admin, &syd, "syd-1").await?;
    let (_a2, _c_ny) = agent_in(&s, &admin, &ny, "ny-1").await?;
    let (_a3, _c_ex) = agent_in(&s, &admin, &excluded, "paused-1").await?;
    let sched = s.gql(&admin, "mutation { createSchedule(input: {name: \"2am everywhere\", target: {kind: ALL_COMPUTERS}, cron: \"0 2 * * *\", detectionOnly: true}) { id } }", json!({})).await?["createSchedule"]["id"].as_str().unwrap().to_string();
    let runs = s.gql(&admin, "query($id: ID!, $s: ID, $n: ID) { schedule(id: $id) { syd: nextRuns(count: 1, tenantId: $s) ny: nextRuns(count: 1, tenantId: $n) } }", json!({"id": sched, "s": syd, "n": ny})).await?;
    assert_eq!(runs["schedule"]["syd"], json!(["2026-01-14T15:00:00.000Z"]));
    assert_eq!(runs["schedule"]["ny"], json!(["2026-01-15T07:00:00.000Z"]));
    let computers_with_sessions = |admin: String| {
        let s = &s;
        async move {
            let d = s
                .gql(
                    &admin,
                    "{ maintenanceSessions { edges { node { computer { name } trigger } } } }",
                    json!({}),
                )
                .await?;
            let mut names: Vec<String> = d["maintenanceSessions"]["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"]["computer"]["name"].as_str().unwrap().to_string())
                .collect();
            names.sort();
            anyhow::Ok(names)
        }
    };
    s.set_clock(at("2026-01-14T15:00:05Z")).await?;
    admin = s.admin().await?;
    wait_for("Sydney at 02:00 local", T, || async {
        Ok((computers_with_sessions(admin.clone()).await? == ["syd-1"]).then_some(()))
    })
    .await?;
    s.set_clock(at("2026-01-15T07:00:05Z")).await?;
    admin = s.admin().await?;
    wait_for("New York at 02:00 local", T, || async {
        Ok((computers_with_sessions(admin.clone()).await? == ["ny-1", "syd-1"]).then_some(()))
    })
    .await?;
    s.app().scheduler_pass().await?;
    assert_eq!(
        computers_with_sessions(admin.clone()).await?,
        ["ny-1", "syd-1"],
        "the excluded tenant is skipped"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_computers_run_schedule_now_and_cancel_by_schedule() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let (_a1, c1) = agent_in(&s, &admin, &t, "pc-1").await?;
    let (_a2, c2) = agent_in(&s, &admin, &t, "pc-2").await?;
    let (_a3, c3) = agent_in(&s, &admin, &t, "pc-3").await?;
    s.gql(&admin, "mutation($c: ID!) { updateComputer(id: $c, input: {excludedFromMaintenance: true}) { excludedFromMaintenance } }", json!({"c": c3})).await?;
    let body = s
        .gql_raw(
            Some(&admin),
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c]}) { id } }",
            json!({"c": c3}),
        )
        .await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("excluded"),
        "{body}"
    );
    // Far-future executions keep the sessions waiting, so they can be cancelled by schedule.
    let opts = json!({"tenantId": t, "name": "Weekly", "target": {"kind": "ALL_COMPUTERS"}, "cron": "0 3 * * *", "timeZone": "UTC", "enabled": false});
    let s1 = s
        .gql(
            &admin,
            "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { id } }",
            json!({"i": opts}),
        )
        .await?["createSchedule"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s.gql(&admin, "mutation($id: ID!) { runScheduleNow(id: $id) { id trigger computer { name } schedule { id } } }", json!({"id": s1})).await?;
    let started: Vec<&Value> = run["runScheduleNow"].as_array().unwrap().iter().collect();
    assert_eq!(started.len(), 2, "pc-3 is excluded: {run}");
    assert!(
        started
            .iter()
            .all(|x| x["trigger"] == "SCHEDULE" && x["schedule"]["id"] == s1.as_str())
    );
    for x in &started {
        s.wait_status(&admin, x["id"].as_str().unwrap(), &["PASSED"], T)
            .await?;
    }
    // Waiting sessions: two from the schedule… (executeAt far ahead keeps them SCHEDULED)
    let later = (Utc::now() + chrono::Duration::hours(5)).to_rfc3339();
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&t), "x", dir.path(), &["1"]).await?;
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_ANY"})).await?;
    let m = s
        .start_session(&admin, &c1, json!({"executeAt": later}))
        .await?;
    let run2 = s
        .gql(
            &admin,
            "mutation($id: ID!) { runScheduleNow(id: $id) { id } }",
            json!({"id": s1}),
        )
        .await?;
    assert_eq!(
        run2["runScheduleNow"].as_array().unwrap().len(),
        1,
        "pc-1 is busy with a manual session"
    );
    let from_schedule = run2["runScheduleNow"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let n = s
        .gql(
            &admin,
            "mutation($id: ID) { cancelMaintenanceSessions(filter: {scheduleId: $id}) }",
            json!({"id": s1}),
        )
        .await?;
    assert_eq!(n["cancelMaintenanceSessions"], 1);
    assert_eq!(
        s.session(&admin, &from_schedule).await?["status"],
        "CANCELLED"
    );
    let manual = s.session(&admin, &m).await?;
    assert_ne!(
        manual["status"], "CANCELLED",
        "only that schedule's sessions"
    );
    let _ = c2;
    Ok(())
}

/// An office tenant (Europe/Berlin, business hours Mon–Fri 08:00–17:00) with a computer whose
/// real agent runs a driver install that asks for a reboot (exit 3010), deployed to all.
async fn office_with_a_driver_needing_a_reboot(
    s: &TestServer,
    admin: &str,
    host: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(TestAgent, String)> {
    let t = s
        .gql(admin, "mutation { createTenant(input: {name: \"Office\", timeZone: \"Europe/Berlin\", businessHours: {days: [MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY], start: \"08:00\", end: \"17:00\"}}) { id } }", json!({}))
        .await?["createTenant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (a, c) = agent_in(s, admin, &t, host).await?;
    let f = dir.join("driver");
    let sw = s
        .gql(
            admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "Driver", "tenantId": t, "detectionScript": {"language": "SHELL", "body": format!("cat '{}' 2>/dev/null; exit 0", f.display())},
                "versions": [{"version": "5.0", "installScript": {"language": "SHELL", "body": format!("echo 5.0 > '{}'; exit 3010", f.display())}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.create_deployment(admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    Ok((a, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_is_held_in_business_hours_and_done_after() -> anyhow::Result<()> {
    // Monday 2026-02-02 10:00 in Berlin (09:00Z): business hours 08:00–17:00.
    let s = TestServer::start_with(|c| c.test_clock = Some(at("2026-02-02T09:00:00Z"))).await?;
    let mut admin = s.admin().await?;
    let dir = tempfile::tempdir()?;
    let (_a, c) = office_with_a_driver_needing_a_reboot(&s, &admin, "desk-1", dir.path()).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    // The session does not wait for the hours to end: it ends with the reboot pending.
    let done = s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(done["rebootRequired"], true);
    assert!(done["rebootedAt"].is_null());
    assert!(
        done["statusReason"]
            .as_str()
            .unwrap()
            .contains("reboot pending, held until 17:00 CET"),
        "says until when: {done:#}"
    );
    let pending = |admin: String| {
        let s = &s;
        let c = c.clone();
        async move {
            let d = s
                .gql(
                    &admin,
                    "query($c: ID!) { computer(id: $c) { rebootPending } }",
                    json!({"c": c}),
                )
                .await?;
            anyhow::Ok(d["computer"]["rebootPending"].as_bool())
        }
    };
    assert_eq!(pending(admin.clone()).await?, Some(true));
    // 17:01 Berlin: the reboot goes ahead on its own.
    s.set_clock(at("2026-02-02T16:01:00Z")).await?;
    admin = s.admin().await?;
    wait_for("the held reboot to run", T, || {
        let admin = admin.clone();
        let f = pending(admin);
        async move { Ok((f.await? == Some(false)).then_some(())) }
    })
    .await?;
    Ok(())
}

/// A held reboot whose computer is away when the hours end is not handed to it when it comes
/// back inside the next day's business hours: it waits for their end again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reboot_never_runs_in_the_next_days_hours() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.test_clock = Some(at("2026-02-02T09:00:00Z"))).await?;
    let admin = s.admin().await?;
    let dir = tempfile::tempdir()?;
    let (mut a, c) =
        office_with_a_driver_needing_a_reboot(&s, &admin, "laptop-1", dir.path()).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    let done = s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["rebootRequired"], true, "{done:#}");
    // The laptop leaves before the hours end.
    let state = a.state_dir.clone();
    a.stop().await;
    let q = "query($c: ID!) { computer(id: $c) { online rebootPending lastSeenAt } }";
    wait_for("the laptop to go offline", T, || async {
        let d = s.gql(&admin, q, json!({"c": c})).await?;
        Ok((d["computer"]["online"] == false).then_some(()))
    })
    .await?;
    // 17:01: the hours are over, but nobody is there to reboot.
    s.set_clock(at("2026-02-02T16:01:00Z")).await?;
    let admin = s.admin().await?;
    // Tuesday 08:30: the laptop is back, in its user's hands.
    s.set_clock(at("2026-02-03T07:30:00Z")).await?;
    let admin2 = s.admin().await?;
    let _back = TestAgent::start_in(&s.url, None, &state, "laptop-1")?;
    s.wait_online(&admin2, &c).await?;
    let first = s.gql(&admin2, q, json!({"c": c})).await?["computer"]["lastSeenAt"].clone();
    // Two more polls: a reboot job would have been handed out on the first.
    for _ in 0..2 {
        let seen = first.clone();
        wait_for("another poll", T, || {
            let (s, admin2, c, seen) = (&s, admin2.clone(), c.clone(), seen.clone());
            async move {
                let d = s.gql(&admin2, q, json!({"c": c})).await?;
                Ok((d["computer"]["lastSeenAt"] != seen).then_some(()))
            }
        })
        .await?;
    }
    let d = s.gql(&admin2, q, json!({"c": c})).await?;
    assert_eq!(
        d["computer"]["rebootPending"], true,
        "no reboot in the hours: {d}"
    );
    let _ = admin;
    // 17:01 on Tuesday: now it runs.
    s.set_clock(at("2026-02-03T16:01:00Z")).await?;
    let admin3 = s.admin().await?;
    wait_for("the held reboot to run", T, || {
        let (s, admin3, c) = (&s, admin3.clone(), c.clone());
        async move {
            let d = s.gql(&admin3, q, json!({"c": c})).await?;
            Ok((d["computer"]["rebootPending"] == false).then_some(()))
        }
    })
    .await?;
    Ok(())
}

/// `rebootPreference`: SUPPRESS finishes without the reboot an install asked for (and says so);
/// FORCE reboots after the steps although none asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_preference_suppress_and_force() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let (_a, c) = agent_in(&s, &admin, &t, "pc-1").await?;
    let dir = tempfile::tempdir()?;
    let mut deployments = Vec::new();
    for (name, exit) in [("needs-reboot", 3010), ("plain", 0)] {
        let f = dir.path().join(name);
        let sw = s
            .gql(
                &admin,
                "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
                json!({"i": {"name": name, "tenantId": t, "detectionScript": {"language": "SHELL", "body": format!("cat '{}' 2>/dev/null; exit 0", f.display())},
                    "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("echo 1.0 > '{}'; exit {exit}", f.display())}}]}}),
            )
            .await?["createSoftware"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        deployments.push(s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?);
    }
    let full = "query($id: ID!) { maintenanceSession(id: $id) { status rebootRequired rebootedAt actions { status } logs { message } } }";
    // SUPPRESS: the install exits 3010, yet no reboot.
    let id = s
        .start_session(
            &admin,
            &c,
            json!({"deploymentIds": [deployments[0]], "options": {"rebootPreference": "SUPPRESS"}}),
        )
        .await?;
    s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    let x = s.gql(&admin, full, json!({"id": id})).await?["maintenanceSession"].clone();
    assert_eq!(x["status"], "PASSED", "{x:#}");
    assert_eq!(x["rebootRequired"], true, "{x:#}");
    assert!(x["rebootedAt"].is_null(), "no reboot: {x:#}");
    assert!(
        x["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("suppressed")),
        "the log says the reboot was suppressed: {x:#}"
    );
    // FORCE: the install exits 0, and the computer is rebooted all the same.
    let id = s
        .start_session(
            &admin,
            &c,
            json!({"deploymentIds": [deployments[1]], "options": {"rebootPreference": "FORCE"}}),
        )
        .await?;
    s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    let x = s.gql(&admin, full, json!({"id": id})).await?["maintenanceSession"].clone();
    assert_eq!(x["status"], "PASSED", "{x:#}");
    assert_eq!(x["rebootRequired"], false, "{x:#}");
    assert!(x["rebootedAt"].is_string(), "rebooted: {x:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ceiling_of_two_the_third_session_queues() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.max_concurrent_sessions = 2).await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let dir = tempfile::tempdir()?;
    let gate = dir.path().join("gate");
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "Gated", "tenantId": t, "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": format!("while [ ! -f '{}' ]; do sleep 0.1; done", gate.display())}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_ANY"})).await?;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (a, c) = agent_in(&s, &admin, &t, &format!("q-{i}")).await?;
        agents.push(a);
        ids.push(s.start_session(&admin, &c, json!({})).await?);
    }
    let third = wait_for("the third to queue", T, || async {
        let x = s.session(&admin, &ids[2]).await?;
        Ok((x["statusReason"] == "queued").then_some(x))
    })
    .await?;
    assert_eq!(third["status"], "PENDING");
    std::fs::write(&gate, "open")?;
    for id in &ids {
        let x = s.wait_status(&admin, id, &["PASSED", "FAILED"], T).await?;
        assert_eq!(
            x["status"], "FAILED",
            "the gated install never installs anything, so verification fails: {x:#}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_presets_and_usernames_find_the_person() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let ann = s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@a.example\"}) { id } }", json!({"t": t})).await?["createPerson"]["id"].as_str().unwrap().to_string();
    let bob = s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Bob\", email: \"bob@a.example\", usernames: [\"ACME\\\\bob\", \"bob\"]}) { id usernames } }", json!({"t": t})).await?["createPerson"]["id"].as_str().unwrap().to_string();
    let key = s.gql(&admin, "mutation($t: ID!, $p: ID) { createEnrollmentKey(tenantId: $t, input: {tags: [\"laptops\", \"sales\"], primaryPersonId: $p}) { key tags primaryPerson { name } } }", json!({"t": t, "p": ann})).await?;
    assert_eq!(key["createEnrollmentKey"]["primaryPerson"]["name"], "Ann");
    let key = key["createEnrollmentKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let _a = TestAgent::start(&s.url, &key, "preset-1").await?;
    let c = s.computer_id(&admin, "preset-1").await?;
    let d = s
        .gql(
            &admin,
            "query($c: ID!) { computer(id: $c) { tags primaryPerson { id } } }",
            json!({"c": c}),
        )
        .await?;
    assert_eq!(d["computer"]["tags"], json!(["laptops", "sales"]));
    assert_eq!(d["computer"]["primaryPerson"]["id"], ann.as_str());
    // A computer without a person gets the one whose username is logged on.
    let plain = s.enrollment_key(&admin, &t).await?;
    let r: Value = s
        .http
        .post(format!("{}/agent/v1/enroll", s.url))
        .json(&json!({"protocolVersion": 1, "enrollmentKey": plain, "hostname": "bobs-pc", "machineId": "m-bob", "os": "Linux", "agentVersion": "0"}))
        .send()
        .await?
        .json()
        .await?;
    let token = r["agentToken"].as_str().unwrap();
    let inv = json!({"protocolVersion": 1, "waitSeconds": 0, "inventory": {"hostname": "bobs-pc", "os": "Linux", "agentVersion": "0", "machineId": "m-bob", "loggedOnUser": "bob"}});
    s.http
        .post(format!("{}/agent/v1/poll", s.url))
        .bearer_auth(token)
        .json(&inv)
        .send()
        .await?;
    let cid = r["computerId"].as_str().unwrap().to_string();
    wait_for("the person to be matched", T, || async {
        let d = s
            .gql(
                &admin,
                "query($c: ID!) { computer(id: $c) { primaryPerson { id } loggedOnUser } }",
                json!({"c": cid}),
            )
            .await?;
        Ok((d["computer"]["primaryPerson"]["id"] == bob.as_str()).then_some(()))
    })
    .await?;
    Ok(())
}

/// A tenant with one computer that has run one session and has a (disabled) schedule of its
/// own; then the tenant is excluded from maintenance.
struct Paused {
    s: TestServer,
    admin: String,
    _agent: TestAgent,
    computer: String,
    first: String,
    schedule: String,
}

async fn excluded_after_a_session() -> anyhow::Result<Paused> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Paused later").await?;
    let (a, c) = agent_in(&s, &admin, &t, "pc-1").await?;
    let first = s
        .start_session(&admin, &c, json!({"detectionOnly": true}))
        .await?;
    s.wait_status(&admin, &first, &["PASSED"], T).await?;
    let sched = s
        .gql(
            &admin,
            "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { id } }",
            json!({"i": {"tenantId": t, "name": "Nightly", "target": {"kind": "ALL_COMPUTERS"}, "cron": "0 3 * * *", "timeZone": "UTC", "enabled": false, "detectionOnly": true}}),
        )
        .await?["createSchedule"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.gql(
        &admin,
        "mutation($t: ID!) { updateTenant(id: $t, input: {excludedFromMaintenance: true}) { excludedFromMaintenance } }",
        json!({"t": t}),
    )
    .await?;
    Ok(Paused {
        s,
        admin,
        _agent: a,
        computer: c,
        first,
        schedule: sched,
    })
}

/// The answer to a start in an excluded tenant: `BAD_USER_INPUT` naming the tenant, and the
/// computer still has only its first session.
async fn refused_and_nothing_started(
    s: &TestServer,
    admin: &str,
    computer: &str,
    body: Value,
) -> anyhow::Result<()> {
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tenant Paused later is excluded from maintenance"),
        "{body}"
    );
    let d = s
        .gql(
            admin,
            "query($c: ID!) { maintenanceSessions(filter: {computerId: $c}) { edges { node { id } } } }",
            json!({"c": computer}),
        )
        .await?;
    assert_eq!(
        d["maintenanceSessions"]["edges"].as_array().map(Vec::len),
        Some(1),
        "only the first session exists: {d}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_in_an_excluded_tenant_is_refused() -> anyhow::Result<()> {
    let p = excluded_after_a_session().await?;
    let body =
        p.s.gql_raw(
            Some(&p.admin),
            "mutation($id: ID!) { rerunMaintenanceSession(id: $id) { id } }",
            json!({"id": p.first}),
        )
        .await?;
    refused_and_nothing_started(&p.s, &p.admin, &p.computer, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_of_an_excluded_tenants_schedule_is_refused() -> anyhow::Result<()> {
    let p = excluded_after_a_session().await?;
    let body =
        p.s.gql_raw(
            Some(&p.admin),
            "mutation($id: ID!) { runScheduleNow(id: $id) { id } }",
            json!({"id": p.schedule}),
        )
        .await?;
    refused_and_nothing_started(&p.s, &p.admin, &p.computer, body).await
}
