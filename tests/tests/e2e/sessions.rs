//! Maintenance sessions end to end: real agents run real shell scripts in temp dirs.

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

async fn fixture() -> anyhow::Result<Fixture> {
    Fixture::start("ws-1").await
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A configuration task whose set script writes `$UPKEEP_PARAM_LEVEL` to a file and whose test
/// checks it.
async fn level_task(f: &Fixture) -> anyhow::Result<String> {
    let file = f.dir.path().join("level.conf");
    let d = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {"name": "Set level", "tenantId": f.tenant,
                "testScript": {"language": "SHELL", "body": format!("test \"$(cat '{0}' 2>/dev/null)\" = \"$UPKEEP_PARAM_LEVEL\" && exit 0 || exit 1", file.display())},
                "setScript": {"language": "SHELL", "body": format!("echo \"$UPKEEP_PARAM_LEVEL\" > '{0}'", file.display())}}}),
        )
        .await?;
    Ok(d["createMaintenanceTask"]["id"]
        .as_str()
        .unwrap()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_only_plans_and_changes_nothing() -> anyhow::Result<()> {
    let f = fixture().await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "editor",
        f.dir.path(),
        &["1.9.2", "1.10.0"],
    )
    .await?;
    std::fs::write(f.dir.path().join("editor.version"), "1.9.2\n")?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let id =
        f.s.start_session(&f.admin, &f.computer, json!({"detectionOnly": true}))
            .await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    assert_eq!(s["compliance"], "NON_COMPLIANT");
    let a = &s["actions"][0];
    assert_eq!(
        (
            a["kind"].as_str(),
            a["status"].as_str(),
            a["detectedVersion"].as_str(),
            a["desiredVersion"].as_str()
        ),
        (
            Some("UPGRADE"),
            Some("PENDING"),
            Some("1.9.2"),
            Some("1.10.0")
        )
    );
    assert_eq!(a["reason"], "1.9.2 installed, latest is 1.10.0");
    assert_eq!(
        read(&f.dir.path().join("editor.version")),
        "1.9.2",
        "nothing changed"
    );
    // previewMaintenance shows the same plan from that detection, without running anything.
    let p = f.s.gql(&f.admin, "query($c: ID!) { previewMaintenance(computerId: $c) { kind detectedVersion desiredVersion } }", json!({"c": f.computer})).await?;
    assert_eq!(
        p["previewMaintenance"][0],
        json!({"kind": "UPGRADE", "detectedVersion": "1.9.2", "desiredVersion": "1.10.0"})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_session_installs_latest_and_configures_then_rerun_is_a_no_op() -> anyhow::Result<()> {
    let f = fixture().await?;
    let task = level_task(&f).await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "agent-x",
        f.dir.path(),
        &["1.9.2", "1.10.0", "1.2"],
    )
    .await?;
    f.s.gql(&f.admin, "mutation($id: ID!, $t: ID!) { updateSoftware(id: $id, input: {configurationTaskId: $t}) { id } }", json!({"id": sw, "t": task})).await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST", "parameters": {"LEVEL": "high"}})).await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    assert_eq!(s["compliance"], "COMPLIANT");
    assert_eq!(
        read(&f.dir.path().join("agent-x.version")),
        "1.10.0",
        "the latest version, compared numerically"
    );
    assert_eq!(
        read(&f.dir.path().join("level.conf")),
        "high",
        "the configuration task ran with its parameter"
    );
    let a = &s["actions"][0];
    assert_eq!(
        (
            a["kind"].as_str(),
            a["status"].as_str(),
            a["compliance"].as_str()
        ),
        (Some("INSTALL"), Some("SUCCEEDED"), Some("COMPLIANT"))
    );
    let c =
        f.s.gql(
            &f.admin,
            "query($c: ID!) { computer(id: $c) { compliance } }",
            json!({"c": f.computer}),
        )
        .await?;
    assert_eq!(c["computer"]["compliance"], "COMPLIANT");
    // Rerun: already compliant, nothing runs.
    let r =
        f.s.gql(
            &f.admin,
            "mutation($id: ID!) { rerunMaintenanceSession(id: $id) { id } }",
            json!({"id": id}),
        )
        .await?;
    let rid = r["rerunMaintenanceSession"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rs =
        f.s.wait_status(&f.admin, &rid, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(rs["status"], "PASSED", "{rs:#}");
    assert_eq!(rs["actions"][0]["kind"], "NO_ACTION");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specific_deployment_wins_and_a_failed_install_does_not_stop_the_rest() -> anyhow::Result<()>
{
    let f = fixture().await?;
    f.s.gql(
        &f.admin,
        "mutation($c: ID!) { updateComputer(id: $c, input: {tags: [\"pinned\"]}) { tags } }",
        json!({"c": f.computer}),
    )
    .await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "runtime",
        f.dir.path(),
        &["1.0", "2.0"],
    )
    .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "TAG", "value": "pinned"}, "softwareId": sw, "desiredState": "INSTALLED_VERSION", "version": "1.0"})).await?;
    // A second software whose install fails, and a task that still runs after it.
    let broken = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "broken", "tenantId": f.tenant, "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": "echo 'disk full' >&2; exit 1"}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": broken, "desiredState": "INSTALLED_ANY", "order": "BEGINNING"})).await?;
    let task = level_task(&f).await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task, "parameters": {"LEVEL": "low"}, "order": "END"})).await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(s["status"], "FAILED", "{s:#}");
    assert_eq!(s["statusReason"], "1 of 3 actions failed");
    let actions: Vec<&Value> = s["actions"].as_array().unwrap().iter().collect();
    assert_eq!(actions[0]["name"], "broken", "BEGINNING runs first");
    assert_eq!(actions[0]["status"], "FAILED");
    assert!(
        actions[0]["resultMessage"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{s:#}"
    );
    assert_eq!(actions[2]["name"], "Set level", "END runs last");
    assert_eq!(actions[2]["status"], "SUCCEEDED");
    assert_eq!(
        read(&f.dir.path().join("runtime.version")),
        "1.0",
        "the TAG deployment beat ALL_COMPUTERS"
    );
    assert_eq!(
        read(&f.dir.path().join("level.conf")),
        "low",
        "later actions still ran"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unfinished_session_per_computer_and_cancel() -> anyhow::Result<()> {
    let f = fixture().await?;
    let marker = f.dir.path().join("slow-started");
    let sw = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "slow", "tenantId": f.tenant, "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("touch '{}'; sleep 2", marker.display())}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "after",
        f.dir.path(),
        &["1.0"],
    )
    .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_ANY", "order": "BEGINNING"})).await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": other, "desiredState": "INSTALLED_ANY", "order": "END"})).await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let body =
        f.s.gql_raw(
            Some(&f.admin),
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c]}) { id } }",
            json!({"c": f.computer}),
        )
        .await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "CONFLICT");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains(&id),
        "names the active session: {body}"
    );
    let twice =
        f.s.gql_raw(
            Some(&f.admin),
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c, $c]}) { id } }",
            json!({"c": f.computer}),
        )
        .await?;
    assert_eq!(twice["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(twice["errors"][0]["extensions"]["field"], "computerIds[1]");
    let count =
        f.s.gql(
            &f.admin,
            "{ maintenanceSessions(first: 5) { totalCount } }",
            json!({}),
        )
        .await?;
    assert_eq!(
        count["maintenanceSessions"]["totalCount"], 1,
        "refused calls start nothing"
    );
    wait_for("the slow step", T, || async {
        Ok(marker.exists().then_some(()))
    })
    .await?;
    let c = f.s.gql(&f.admin, "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { status statusReason actions { status } } }", json!({"id": id})).await?;
    assert_eq!(c["cancelMaintenanceSession"]["status"], "CANCELLED");
    assert_eq!(
        c["cancelMaintenanceSession"]["statusReason"],
        format!("cancelled by {ADMIN_EMAIL}")
    );
    assert_eq!(
        c["cancelMaintenanceSession"]["actions"],
        json!([{"status": "CANCELLED"}, {"status": "CANCELLED"}])
    );
    // Nothing more can run: the gateway holds no job for the computer (the cancel gave up the
    // running step's), so no later step can reach the agent.
    let computer: upkeep_core::domain::Id = f.computer.parse()?;
    assert_eq!(
        f.s.app().agents.jobs_held_for(computer),
        0,
        "no job left after the cancel"
    );
    assert!(
        !f.dir.path().join("after.version").exists(),
        "nothing ran after the cancel"
    );
    let again =
        f.s.gql_err(
            Some(&f.admin),
            "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { id } }",
            json!({"id": id}),
        )
        .await?;
    assert_eq!(again, "CONFLICT");
    // The computer is free for a new session.
    f.s.start_session(&f.admin, &f.computer, json!({"detectionOnly": true}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_streams_in_order_and_replays_after_reconnect() -> anyhow::Result<()> {
    let f = fixture().await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "viewer",
        f.dir.path(),
        &["3.1"],
    )
    .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let q = "subscription($t: ID) { maintenanceSessionUpdates(tenantId: $t) { sessionId sequence status logLine action { id status } } }";
    // Common clients offer graphql-ws first: the server must answer, and speak, that one.
    let mut tenant_sub = Subscription::start(
        &f.s.url,
        "graphql-ws, graphql-transport-ws",
        &f.admin,
        q,
        json!({"t": f.tenant}),
    )
    .await?;
    assert_eq!(tenant_sub.protocol, "graphql-ws");
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    // The portal pattern: subscribe to the session from sequence 0 — stored events first, then
    // live, with no gap and no repeat however fast the session runs.
    let qs = "subscription($s: ID, $n: Int) { maintenanceSessionUpdates(sessionId: $s, afterSequence: $n) { sessionId sequence status logLine } }";
    let mut sub = Subscription::start(
        &f.s.url,
        "graphql-transport-ws",
        &f.admin,
        qs,
        json!({"s": id, "n": 0}),
    )
    .await?;
    let mut seen = Vec::new();
    loop {
        let d = sub.next_data(T).await?;
        let e = d["maintenanceSessionUpdates"].clone();
        assert_eq!(e["sessionId"], id.as_str());
        seen.push(e.clone());
        if e["status"] == "PASSED" || e["status"] == "FAILED" {
            break;
        }
    }
    sub.close().await;
    // The tenant-wide subscriber sees the same session live, in order, to its end.
    let mut last = 0;
    loop {
        let d = tenant_sub.next_data(T).await?;
        let e = &d["maintenanceSessionUpdates"];
        let n = e["sequence"].as_i64().unwrap();
        assert!(
            last == 0 || n == last + 1,
            "gapless after the first: {last} then {n}"
        );
        last = n;
        if e["status"] == "PASSED" {
            break;
        }
    }
    tenant_sub.close().await;
    let seqs: Vec<i64> = seen
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless, in order, from 1"
    );
    let mut statuses: Vec<&str> = seen.iter().map(|e| e["status"].as_str().unwrap()).collect();
    statuses.dedup();
    assert_eq!(
        statuses,
        ["PENDING", "DETECTING", "EXECUTING", "VERIFYING", "PASSED"]
    );
    // Reconnect asking for everything after sequence 3.
    let q2 = "subscription($s: ID, $n: Int) { maintenanceSessionUpdates(sessionId: $s, afterSequence: $n) { sequence status } }";
    let mut sub2 = Subscription::start(
        &f.s.url,
        "graphql-transport-ws",
        &f.admin,
        q2,
        json!({"s": id, "n": 3}),
    )
    .await?;
    assert_eq!(sub2.protocol, "graphql-transport-ws");
    for want in 4..=seqs.len() as i64 {
        let d = sub2.next_data(T).await?;
        assert_eq!(d["maintenanceSessionUpdates"]["sequence"], want);
    }
    // The log is readable too, in order.
    let s = f.s.session(&f.admin, &id).await?;
    assert!(s["logs"].as_array().unwrap().len() >= 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_missing_credentials() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = Subscription::connect(&s.url, "graphql-transport-ws", "not-a-token").await;
    assert!(
        r.is_err(),
        "connection_init without a valid token must be refused"
    );
    Ok(())
}

/// The server is killed (SIGKILL) while a step runs; after a restart the session finishes and
/// the step ran exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_step_finishes_after_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = upkeep_tests::crash::free_port()?;
    let cluster = if_cluster_mode().await?;
    let spawn = || {
        std::process::Command::new(bin("upkeep-server-under-test"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                data.to_str().unwrap(),
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .args(cluster_args(cluster.as_ref()))
            .env("UPKEEP_OFFLINE_AFTER_SECONDS", "3")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    let mut child = spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = Remote::new(&url)?;
    client.wait_up().await?;
    let admin = client.login().await?;
    let tenant = client
        .gql(
            &admin,
            "mutation { createTenant(input: {name: \"K\"}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = client
        .gql(
            &admin,
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { key } }",
            json!({"t": tenant}),
        )
        .await?["createEnrollmentKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let started = dir.path().join("started");
    let count = dir.path().join("count");
    let v = dir.path().join("v");
    let body = format!(
        "touch '{}'; sleep 3; echo ran >> '{}'; echo 1.0 > '{}'",
        started.display(),
        count.display(),
        v.display()
    );
    let sw = client
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "k", "tenantId": tenant, "detectionScript": {"language": "SHELL", "body": format!("cat '{}' 2>/dev/null; exit 0", v.display())},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": body}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    client.gql(&admin, "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }", json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}})).await?;
    let _agent = TestAgent::start(&url, &key, "k-pc").await?;
    let computer = wait_for("computer", T, || async {
        let d = client
            .gql(
                &admin,
                "{ computers { edges { node { id online } } } }",
                json!({}),
            )
            .await?;
        Ok(d["computers"]["edges"][0]["node"]["online"]
            .as_bool()
            .unwrap_or(false)
            .then(|| {
                d["computers"]["edges"][0]["node"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }))
    })
    .await?;
    let id = client
        .gql(
            &admin,
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c]}) { id } }",
            json!({"c": computer}),
        )
        .await?["startMaintenanceSession"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the step to start", T, || async {
        Ok(started.exists().then_some(()))
    })
    .await?;
    child.kill()?; // SIGKILL
    child.wait()?;
    let mut child = spawn()?;
    client.wait_up().await?;
    let s = wait_for("session to finish", T, || async {
        let d = client
            .gql(
                &admin,
                "query($id: ID!) { maintenanceSession(id: $id) { status statusReason } }",
                json!({"id": id}),
            )
            .await?;
        let st = d["maintenanceSession"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Ok(["PASSED", "FAILED", "CANCELLED"]
            .contains(&st.as_str())
            .then_some(d))
    })
    .await?;
    assert_eq!(s["maintenanceSession"]["status"], "PASSED", "{s}");
    assert_eq!(
        std::fs::read_to_string(&count)?.lines().count(),
        1,
        "the step ran exactly once"
    );
    child.kill()?;
    child.wait()?;
    let check = std::process::Command::new(bin("upkeep-server-under-test"))
        .args(check_args(cluster.as_ref(), &data))
        .output()?;
    assert!(
        check.status.success(),
        "store check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    Ok(())
}

/// A GraphQL client for a server in another process.
struct Remote {
    url: String,
    http: reqwest::Client,
}

impl Remote {
    fn new(url: &str) -> anyhow::Result<Remote> {
        Ok(Remote {
            url: url.to_string(),
            http: http_client()?,
        })
    }

    async fn wait_up(&self) -> anyhow::Result<()> {
        upkeep_testkit::wait_healthy(&self.http, &self.url).await
    }

    async fn login(&self) -> anyhow::Result<String> {
        let d = upkeep_testkit::gql_raw(
            &self.http,
            &self.url,
            None,
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
        )
        .await?;
        Ok(d["data"]["login"]["token"].as_str().unwrap().to_string())
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> anyhow::Result<Value> {
        upkeep_testkit::gql(&self.http, &self.url, token, query, variables).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_runs_first_and_ad_hoc_only_when_named() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s
        .gql(
            &admin,
            "mutation { createTenant(input: {name: \"New\", autoOnboarding: true}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir()?;
    let base = create_file_software(&s, &admin, Some(&t), "base", dir.path(), &["1"]).await?;
    let welcome = create_file_software(&s, &admin, Some(&t), "welcome", dir.path(), &["1"]).await?;
    let extra = create_file_software(&s, &admin, Some(&t), "extra", dir.path(), &["1"]).await?;
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": base, "desiredState": "INSTALLED_ANY", "order": "BEGINNING"})).await?;
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": welcome, "desiredState": "INSTALLED_ANY", "enforcement": "ONBOARDING"})).await?;
    let adhoc = s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": extra, "desiredState": "INSTALLED_ANY", "enforcement": "AD_HOC"})).await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let _a = TestAgent::start(&s.url, &key, "fresh-1").await?;
    let c = s.computer_id(&admin, "fresh-1").await?;
    // Enrollment started an ONBOARDING session by itself.
    let id = wait_for("the onboarding session", T, || async {
        let d = s.gql(&admin, "query($c: ID) { maintenanceSessions(filter: {computerId: $c}) { edges { node { id trigger } } } }", json!({"c": c})).await?;
        Ok(d["maintenanceSessions"]["edges"][0]["node"]["id"].as_str().map(String::from))
    })
    .await?;
    let done = s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["trigger"], "ONBOARDING");
    let names: Vec<&str> = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["welcome", "base"],
        "onboarding deployments first, AD_HOC not at all"
    );
    assert!(!dir.path().join("extra.version").exists());
    // A later full session: no onboarding deployment; the AD_HOC one only when named.
    std::fs::remove_file(dir.path().join("welcome.version"))?;
    let id2 = s.start_session(&admin, &c, json!({})).await?;
    let d2 = s
        .wait_status(&admin, &id2, &["PASSED", "FAILED"], T)
        .await?;
    let names: Vec<&str> = d2["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base"]);
    let id3 = s
        .start_session(&admin, &c, json!({"deploymentIds": [adhoc]}))
        .await?;
    let d3 = s
        .wait_status(&admin, &id3, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(d3["actions"][0]["name"], "extra");
    assert!(dir.path().join("extra.version").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_computers_wait_or_skip() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Off").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let state = tempfile::tempdir()?;
    let mut a = TestAgent::start_in(&s.url, Some(&key), state.path(), "roamer")?;
    let c = s.computer_id(&admin, "roamer").await?;
    s.wait_online(&admin, &c).await?;
    a.stop().await;
    wait_for("offline", T, || async {
        let d = s
            .gql(
                &admin,
                "query($c: ID!) { computer(id: $c) { online } }",
                json!({"c": c}),
            )
            .await?;
        Ok((d["computer"]["online"] == false).then_some(()))
    })
    .await?;
    // SKIP with no grace: cancelled at once.
    let skip = s
        .start_session(
            &admin,
            &c,
            json!({"options": {"offlineBehavior": "SKIP", "offlineGraceMinutes": 0}}),
        )
        .await?;
    let x = s.wait_status(&admin, &skip, &["CANCELLED"], T).await?;
    assert!(
        x["statusReason"].as_str().unwrap().contains("offline"),
        "{x:#}"
    );
    // APPLY_ON_CONNECT (the default): waits PENDING, runs when the agent polls again.
    let wait = s
        .start_session(&admin, &c, json!({"detectionOnly": true}))
        .await?;
    let p = s.wait_status(&admin, &wait, &["PENDING"], T).await?;
    assert_eq!(p["statusReason"], "waiting for the computer to come online");
    let _back = TestAgent::start_in(&s.url, None, state.path(), "roamer")?;
    s.wait_status(&admin, &wait, &["PASSED"], T).await?;
    Ok(())
}
