//! Rollouts: one deployment wave by wave with real agents running real scripts — a failing
//! canary halts before the next wave (the `ROLLOUT_HALTED` webhook reaches a loopback
//! receiver, the next wave's computers get no session), resume and abort, a passing rollout
//! waiting between waves across a restart, and bad input.

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use upkeep_testkit::wait_for;
use upkeep_tests::hook::HookReceiver;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(90);

struct Fleet {
    s: TestServer,
    admin: String,
    tenant: String,
    /// The canary first, then the rest.
    computers: Vec<String>,
    _agents: Vec<TestAgent>,
    deployment: String,
    work: tempfile::TempDir,
}

/// Three online computers with real agents, the first tagged `canary`, and an `AD_HOC` task
/// deployment whose set script fails while `<work>/fail` exists (and is compliant once
/// `<work>/applied` does).
async fn fleet(s: TestServer) -> anyhow::Result<Fleet> {
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Waves").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let mut agents = Vec::new();
    let mut computers = Vec::new();
    for name in ["wave-canary", "wave-b", "wave-c"] {
        agents.push(TestAgent::start(&s.url, &key, name).await?);
        let id = s.computer_id(&admin, name).await?;
        s.wait_online(&admin, &id).await?;
        computers.push(id);
    }
    s.gql(
        &admin,
        "mutation($id: ID!) { updateComputer(id: $id, input: {tags: [\"canary\"]}) { id } }",
        json!({"id": computers[0]}),
    )
    .await?;
    let work = tempfile::tempdir()?;
    let dir = work.path().display().to_string();
    let sh = |body: String| json!({"language": "SHELL", "body": body});
    let task = s
        .gql(
            &admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {
                "name": "Patch",
                "tenantId": tenant,
                "testScript": sh(format!("test -f '{dir}/applied'")),
                "setScript": sh(format!("test -f '{dir}/fail' && exit 1; touch '{dir}/applied'")),
            }}),
        )
        .await?;
    let task = task["createMaintenanceTask"]["id"].as_str().unwrap_or("");
    let deployment = s
        .create_deployment(
            &admin,
            json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task, "enforcement": "AD_HOC"}),
        )
        .await?;
    Ok(Fleet {
        s,
        admin,
        tenant,
        computers,
        _agents: agents,
        deployment,
        work,
    })
}

const ROLLOUT: &str = "id status statusReason nextWaveAt waves { name status failureRate computerIds sessions { id status statusReason computer { id } actions { status resultMessage } logs { message } } }";

async fn create(f: &Fleet, extra: Value) -> anyhow::Result<Value> {
    let mut input = json!({
        "deploymentId": f.deployment,
        "waves": [
            {"name": "canary", "target": {"kind": "TAG", "value": "canary"}},
            {"name": "everyone else", "percent": 100},
        ],
        "haltWhenFailureRateAbove": 0.1,
    });
    if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
        i.extend(e.clone());
    }
    let d =
        f.s.gql(
            &f.admin,
            &format!(
                "mutation($i: CreateRolloutInput!) {{ createRollout(input: $i) {{ {ROLLOUT} }} }}"
            ),
            json!({"i": input}),
        )
        .await?;
    Ok(d["createRollout"].clone())
}

async fn rollout(f: &Fleet, id: &str) -> anyhow::Result<Value> {
    let d =
        f.s.gql(
            &f.admin,
            &format!("query($id: ID!) {{ rollout(id: $id) {{ {ROLLOUT} }} }}"),
            json!({"id": id}),
        )
        .await?;
    Ok(d["rollout"].clone())
}

async fn wait_rollout(f: &Fleet, id: &str, status: &str) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let r = wait_for(&format!("rollout {id} to be {status}"), T, || async {
        let r = rollout(f, id).await?;
        *last.lock().expect("lock") = r.clone();
        Ok((r["status"] == status).then_some(r))
    })
    .await;
    r.map_err(|e| anyhow::anyhow!("{e}: {:#}", last.lock().expect("lock")))
}

async fn sessions_of(f: &Fleet, computer: &str) -> anyhow::Result<usize> {
    let id = computer.parse()?;
    Ok(f.s.app().sessions_of_computer(id, 100).await?.len())
}

/// The first error of an operation that must fail.
async fn first_error(
    s: &TestServer,
    token: &str,
    query: &str,
    vars: Value,
) -> anyhow::Result<Value> {
    let r = s.gql_raw(Some(token), query, vars).await?;
    anyhow::ensure!(r["errors"][0].is_object(), "no error: {r:#}");
    Ok(r["errors"][0].clone())
}

fn touch(dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), b"")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_the_rollout_before_the_next_wave() -> anyhow::Result<()> {
    let f = fleet(TestServer::start().await?).await?;
    let rx = HookReceiver::start(&[]).await?;
    f.s.gql(
        &f.admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [ROLLOUT_HALTED]}) { webhook { id } } }",
        json!({"t": f.tenant, "u": rx.url()}),
    )
    .await?;
    touch(f.work.path(), "fail")?;
    let created = create(&f, json!({})).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(created["status"], "RUNNING", "{created:#}");
    assert_eq!(created["waves"][0]["status"], "RUNNING");
    assert_eq!(created["waves"][0]["computerIds"], json!([f.computers[0]]));

    let halted = wait_rollout(&f, &id, "HALTED").await?;
    let canary = &halted["waves"][0];
    assert_eq!(canary["status"], "HALTED");
    assert_eq!(canary["failureRate"], 1.0);
    assert_eq!(canary["sessions"][0]["status"], "FAILED");
    assert_eq!(
        canary["sessions"][0]["computer"]["id"],
        f.computers[0].as_str()
    );
    assert!(
        halted["statusReason"]
            .as_str()
            .unwrap_or("")
            .contains("wave canary failed"),
        "{halted:#}"
    );
    assert_eq!(halted["waves"][1]["status"], "PENDING");
    assert_eq!(halted["waves"][1]["sessions"], json!([]));
    for c in &f.computers[1..] {
        assert_eq!(
            sessions_of(&f, c).await?,
            0,
            "wave 2's computer {c} got no session"
        );
    }
    let got = wait_for("the ROLLOUT_HALTED webhook", T, || async {
        Ok(rx.all().into_iter().find(|r| r.answered == 200))
    })
    .await?;
    assert_eq!(got.header("Upkeep-Event"), Some("ROLLOUT_HALTED"));
    let body: Value = serde_json::from_str(&got.body)?;
    assert_eq!(body["event"], "ROLLOUT_HALTED");
    assert_eq!(body["tenantId"], f.tenant.as_str());
    assert_eq!(body["data"]["rolloutId"], id.as_str());
    assert_eq!(body["data"]["wave"], "canary");
    assert_eq!(body["data"]["failureRate"], 1.0);
    assert_eq!(
        body["data"]["failingSessions"],
        json!([canary["sessions"][0]["id"]])
    );

    // Halted: a pass later still starts nothing.
    f.s.app().rollouts.pass(f.s.app()).await?;
    assert_eq!(rollout(&f, &id).await?["status"], "HALTED");
    assert_eq!(sessions_of(&f, &f.computers[1]).await?, 0);

    // Fixed: resuming accepts the canary and runs the rest, which pass.
    std::fs::remove_file(f.work.path().join("fail"))?;
    let resumed = f
        .s
        .gql(
            &f.admin,
            "mutation($id: ID!) { resumeRollout(id: $id) { status statusReason waves { status } } }",
            json!({"id": id}),
        )
        .await?;
    assert_ne!(resumed["resumeRollout"]["status"], "HALTED", "{resumed:#}");
    let done = wait_rollout(&f, &id, "COMPLETED").await?;
    let rest = &done["waves"][1];
    assert_eq!(rest["status"], "PASSED");
    assert_eq!(rest["failureRate"], 0.0);
    assert_eq!(rest["sessions"].as_array().map(Vec::len), Some(2));
    for c in &f.computers[1..] {
        assert_eq!(sessions_of(&f, c).await?, 1, "one session per computer");
    }
    // A finished rollout neither resumes nor aborts.
    for op in ["resumeRollout", "abortRollout"] {
        let e = first_error(
            &f.s,
            &f.admin,
            &format!("mutation($id: ID!) {{ {op}(id: $id) {{ id }} }}"),
            json!({"id": id}),
        )
        .await?;
        assert_eq!(e["extensions"]["code"], "CONFLICT", "{op}: {e:#}");
    }

    // Abort: a halted rollout ends, and starts nothing more.
    std::fs::remove_file(f.work.path().join("applied"))?;
    touch(f.work.path(), "fail")?;
    let second = create(&f, json!({})).await?;
    let second = second["id"].as_str().unwrap_or_default().to_string();
    wait_rollout(&f, &second, "HALTED").await?;
    let aborted =
        f.s.gql(
            &f.admin,
            "mutation($id: ID!) { abortRollout(id: $id) { status statusReason waves { status } } }",
            json!({"id": second}),
        )
        .await?;
    let aborted = &aborted["abortRollout"];
    assert_eq!(aborted["status"], "ABORTED");
    assert_eq!(aborted["waves"][1]["status"], "ABORTED");
    assert!(
        aborted["statusReason"]
            .as_str()
            .unwrap_or("")
            .starts_with("aborted by")
    );
    assert_eq!(
        sessions_of(&f, &f.computers[1]).await?,
        1,
        "nothing new started"
    );
    let e = first_error(
        &f.s,
        &f.admin,
        "mutation($id: ID!) { resumeRollout(id: $id) { id } }",
        json!({"id": second}),
    )
    .await?;
    assert_eq!(e["extensions"]["code"], "CONFLICT");
    let listed = f
        .s
        .gql(
            &f.admin,
            "query($t: ID) { rollouts(filter: {tenantId: $t, status: ABORTED}) { totalCount edges { node { id } } } }",
            json!({"t": f.tenant}),
        )
        .await?;
    assert_eq!(listed["rollouts"]["totalCount"], 1);
    assert_eq!(
        listed["rollouts"]["edges"][0]["node"]["id"],
        second.as_str()
    );
    // Deleting the tenant takes its rollouts with it (none left to drive or to list).
    let gone =
        f.s.gql(
            &f.admin,
            "mutation($t: ID!) { deleteTenant(id: $t, force: true) }",
            json!({"t": f.tenant}),
        )
        .await?;
    assert_eq!(gone["deleteTenant"], true);
    let left =
        f.s.gql(&f.admin, "{ rollouts { totalCount } }", json!({}))
            .await?;
    assert_eq!(left["rollouts"]["totalCount"], 0, "{left:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_rollout_waits_between_waves_across_a_restart_and_completes() -> anyhow::Result<()>
{
    let start: chrono::DateTime<chrono::Utc> = "2026-06-01T10:00:00Z".parse()?;
    let s = TestServer::start_with(|c| c.test_clock = Some(start)).await?;
    let mut f = fleet(s).await?;
    let created = create(&f, json!({"waitMinutesBetweenWaves": 60})).await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let waiting = wait_rollout(&f, &id, "WAITING").await?;
    assert_eq!(waiting["waves"][0]["status"], "PASSED");
    assert_eq!(waiting["waves"][0]["failureRate"], 0.0);
    assert_eq!(waiting["waves"][1]["status"], "PENDING");
    assert!(
        waiting["nextWaveAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-06-01T11:0")),
        "an hour after the canary passed: {waiting:#}"
    );
    assert_eq!(sessions_of(&f, &f.computers[1]).await?, 0);

    // Restarted while waiting: the rollout goes on from the store when its time comes.
    f.s.restart().await?;
    f.s.wait_online(&f.admin, &f.computers[1]).await?;
    f.s.wait_online(&f.admin, &f.computers[2]).await?;
    assert_eq!(rollout(&f, &id).await?["status"], "WAITING");
    let mut updates = upkeep_tests::ws::Subscription::start(
        &f.s.url,
        "graphql-transport-ws",
        &f.admin,
        "subscription($id: ID!) { rolloutUpdates(id: $id) { status waves { status } } }",
        json!({"id": id}),
    )
    .await?;
    let now = updates.next_data(T).await?;
    assert_eq!(
        now["rolloutUpdates"]["status"], "WAITING",
        "the state first"
    );
    f.s.set_clock(start + chrono::Duration::minutes(61)).await?;
    let mut seen = vec![];
    while seen.last() != Some(&json!("COMPLETED")) {
        let u = updates.next_data(T).await?;
        seen.push(u["rolloutUpdates"]["status"].clone());
    }
    assert!(seen.contains(&json!("RUNNING")), "{seen:?}");
    let done = wait_rollout(&f, &id, "COMPLETED").await?;
    assert_eq!(done["statusReason"], "all 2 waves passed");
    let rest = &done["waves"][1];
    assert_eq!(rest["status"], "PASSED");
    let mut got: Vec<&str> = rest["computerIds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    got.sort();
    let mut want: Vec<&str> = f.computers[1..].iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(
        got, want,
        "the rest wave takes every computer not in the canary"
    );
    assert!(
        rest["sessions"]
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["status"] == "PASSED")),
        "{rest:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollout_input_is_refused_by_field() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Bad").await?;
    let sw = create_file_software(
        &s,
        &admin,
        Some(&tenant),
        "Notepad",
        tempfile::tempdir()?.path(),
        &["1.0"],
    )
    .await?;
    let dep = s
        .create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}))
        .await?;
    let canary = json!({"name": "canary", "target": {"kind": "TAG", "value": "canary"}});
    let cases = [
        (
            json!({"deploymentId": dep, "waves": []}),
            "BAD_USER_INPUT",
            "waves",
        ),
        (
            json!({"deploymentId": dep, "waves": [{"name": "x"}]}),
            "BAD_USER_INPUT",
            "waves[0]",
        ),
        (
            json!({"deploymentId": dep, "waves": [{"name": "x", "percent": 0}]}),
            "BAD_USER_INPUT",
            "waves[0].percent",
        ),
        (
            json!({"deploymentId": dep, "waves": [{"name": "x", "percent": 10, "target": {"kind": "ALL_COMPUTERS"}}]}),
            "BAD_USER_INPUT",
            "waves[0]",
        ),
        (
            json!({"deploymentId": dep, "waves": [canary, {"name": "Canary", "percent": 100}]}),
            "BAD_USER_INPUT",
            "waves[1].name",
        ),
        (
            json!({"deploymentId": dep, "waves": [canary], "haltWhenFailureRateAbove": 1.5}),
            "BAD_USER_INPUT",
            "haltWhenFailureRateAbove",
        ),
        (
            json!({"deploymentId": dep, "waves": [canary], "minSessionsPerWave": -1}),
            "BAD_USER_INPUT",
            "minSessionsPerWave",
        ),
        (
            json!({"deploymentId": dep, "waves": [canary], "waitMinutesBetweenWaves": 99999}),
            "BAD_USER_INPUT",
            "waitMinutesBetweenWaves",
        ),
        (
            json!({"deploymentId": "nope", "waves": [canary]}),
            "BAD_USER_INPUT",
            "deploymentId",
        ),
        (
            json!({"deploymentId": tenant, "waves": [canary]}),
            "BAD_USER_INPUT",
            "deploymentId",
        ),
    ];
    for (input, code, field) in cases {
        let e = first_error(
            &s,
            &admin,
            "mutation($i: CreateRolloutInput!) { createRollout(input: $i) { id } }",
            json!({"i": input}),
        )
        .await?;
        assert_eq!(e["extensions"]["code"], code, "{input}: {e:#}");
        assert_eq!(e["extensions"]["field"], field, "{input}: {e:#}");
    }
    for q in [
        "query { rollout(id: \"nope\") { id } }",
        "mutation { abortRollout(id: \"0190a0a0-0000-7000-8000-000000000000\") { id } }",
    ] {
        let e = first_error(&s, &admin, q, json!({})).await?;
        assert!(
            matches!(
                e["extensions"]["code"].as_str(),
                Some("BAD_USER_INPUT" | "NOT_FOUND")
            ),
            "{q}: {e:#}"
        );
    }
    Ok(())
}
