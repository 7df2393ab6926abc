//! Impact preview (`previewDeploymentChange`) end to end: real agents detect, the preview plans
//! a change from those detections, then the change is applied and real sessions run it; what
//! each session planned must be what the preview said, computer by computer.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

const PREVIEW: &str = "query($i: DeploymentChangeInput!, $d: Int) {
  previewDeploymentChange(input: $i, staleAfterDays: $d) {
    staleAfterDays
    counts { tenant { id } kind count }
    computers(first: 10) { totalCount edges { node {
      computer { id name }
      actions { software { name } kind reason desiredVersion detectedVersion detectedAt deploymentId previousDeployment { id } }
      shadows { id } unshadows { id } } } }
    stale { id name }
    staleComputers { computer { name } reason detectedAt }
    shadows { deployment { id } computers }
    unshadows { deployment { id } computers }
  } }";

/// A software whose scripts keep its state in the agent's working directory (each computer its
/// own): `tool.version` holds the installed version.
async fn tool(f: &Fixture) -> anyhow::Result<String> {
    let versions: Vec<Value> = ["1.0", "2.0"]
        .iter()
        .map(|v| json!({"version": v, "installScript": {"language": "SHELL", "body": format!("echo {v} > tool.version")}}))
        .collect();
    f.s.create_software(
        &f.admin,
        json!({
            "name": "tool", "tenantId": f.tenant,
            "detectionScript": {"language": "SHELL", "body": "cat tool.version 2>/dev/null || true"},
            "uninstallScript": {"language": "SHELL", "body": "rm -f tool.version"},
            "versions": versions,
        }),
    )
    .await
}

fn install(agent: &TestAgent, version: &str) -> anyhow::Result<()> {
    let work = agent.state_dir.join("work");
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("tool.version"), format!("{version}\n"))?;
    Ok(())
}

/// Runs a session on each computer and returns, per computer id, its action on `tool`:
/// (kind, reason).
async fn run_sessions(
    f: &Fixture,
    computers: &[&str],
    options: Value,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for c in computers {
        let id = f.s.start_session(&f.admin, c, options.clone()).await?;
        let s =
            f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
                .await?;
        assert_eq!(s["status"], "PASSED", "{s:#}");
        let a = s["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == "tool"))
            .cloned()
            .unwrap_or(Value::Null);
        out.insert(
            c.to_string(),
            (
                a["kind"].as_str().unwrap_or("").to_string(),
                a["reason"].as_str().unwrap_or("").to_string(),
            ),
        );
    }
    Ok(out)
}

/// The preview's action on `tool` per computer id: (kind, reason).
fn planned(p: &Value) -> BTreeMap<String, (String, String)> {
    p["computers"]["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let n = &e["node"];
            let a = n["actions"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["software"]["name"] == "tool"))
                .cloned()
                .unwrap_or(Value::Null);
            (
                n["computer"]["id"].as_str().unwrap_or("").to_string(),
                (
                    a["kind"].as_str().unwrap_or("").to_string(),
                    a["reason"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn counts(p: &Value) -> BTreeMap<String, i64> {
    p["counts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or("").to_string(),
                c["count"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

// long: one story, preview → apply → sessions → compare, twice, with the stale computer
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_plans_what_the_sessions_then_do() -> anyhow::Result<()> {
    let f = Fixture::start("impact-1").await?;
    let key = f.s.enrollment_key(&f.admin, &f.tenant).await?;
    let a2 = TestAgent::start(&f.s.url, &key, "impact-2").await?;
    let a3 = TestAgent::start(&f.s.url, &key, "impact-3").await?;
    let (c1, c2, c3) = (
        f.computer.clone(),
        f.s.computer_id(&f.admin, "impact-2").await?,
        f.s.computer_id(&f.admin, "impact-3").await?,
    );
    for c in [&c2, &c3] {
        f.s.wait_online(&f.admin, c).await?;
    }
    install(&a2, "1.0")?;
    install(&a3, "2.0")?;
    let sw = tool(&f).await?;
    // A baseline that only watches: detection-only sessions learn each computer's state.
    let base = f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "UPDATE_IF_FOUND"})).await?;
    run_sessions(&f, &[&c1, &c2, &c3], json!({"detectionOnly": true})).await?;
    // A fourth computer, never detected: listed as stale, not guessed.
    let a4 = TestAgent::start(&f.s.url, &key, "impact-4").await?;
    let c4 = f.s.computer_id(&f.admin, "impact-4").await?;
    for c in [&c1, &c2, &c3, &c4] {
        f.s.gql(
            &f.admin,
            "mutation($id: ID!) { updateComputer(id: $id, input: {tags: [\"office\"]}) { id } }",
            json!({"id": c}),
        )
        .await?;
    }

    let create = json!({"tenantId": f.tenant, "target": {"kind": "TAG", "value": "office"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"});
    let p =
        f.s.gql(&f.admin, PREVIEW, json!({"i": {"create": create}}))
            .await?;
    let p = &p["previewDeploymentChange"];
    assert_eq!(p["staleAfterDays"], 14, "the default");
    let preview = planned(p);
    let kind = |c: &str| preview.get(c).map(|a| a.0.as_str());
    assert_eq!(
        (kind(&c1), kind(&c2), kind(&c3), kind(&c4)),
        (Some("INSTALL"), Some("UPGRADE"), Some("NO_ACTION"), None),
        "{p:#}"
    );
    assert_eq!(preview[&c2].1, "1.0 installed, latest is 2.0");
    assert_eq!(
        counts(p),
        BTreeMap::from([
            ("INSTALL".into(), 1),
            ("UPGRADE".into(), 1),
            ("NO_ACTION".into(), 1)
        ])
    );
    assert_eq!(p["counts"][0]["tenant"]["id"], f.tenant.as_str());
    assert_eq!(p["stale"], json!([{"id": c4, "name": "impact-4"}]));
    assert_eq!(
        p["staleComputers"][0]["reason"], "tool: never detected",
        "{p:#}"
    );
    assert_eq!(
        p["shadows"],
        json!([{"deployment": {"id": base}, "computers": 3}]),
        "the TAG deployment beats the ALL_COMPUTERS one"
    );
    let first = &p["computers"]["edges"][0]["node"];
    assert_eq!(
        first["actions"][0]["previousDeployment"]["id"],
        base.as_str()
    );
    assert!(first["actions"][0]["detectedAt"].is_string());
    assert!(first["actions"][0]["deploymentId"].is_string());
    // The preview wrote nothing.
    let d =
        f.s.gql(
            &f.admin,
            "query($t: ID) { deployments(tenantId: $t) { totalCount } }",
            json!({"t": f.tenant}),
        )
        .await?;
    assert_eq!(d["deployments"]["totalCount"], 1);

    // Apply it: the sessions plan what the preview said, computer by computer.
    let created = f.s.create_deployment(&f.admin, create).await?;
    let ran = run_sessions(&f, &[&c1, &c2, &c3], json!({})).await?;
    assert_eq!(ran, preview, "sessions against the preview");

    // After those sessions (their verification is the latest detection), previewing an update
    // to UNINSTALLED plans an uninstall everywhere; apply it and compare again.
    let update = json!({"id": created, "input": {"desiredState": "UNINSTALLED"}});
    let p =
        f.s.gql(&f.admin, PREVIEW, json!({"i": {"update": update}}))
            .await?;
    let p = &p["previewDeploymentChange"];
    let preview = planned(p);
    assert_eq!(
        counts(p),
        BTreeMap::from([("UNINSTALL".into(), 3)]),
        "{p:#}"
    );
    assert_eq!(p["shadows"], json!([]));
    f.s.gql(&f.admin, "mutation($id: ID!) { updateDeployment(id: $id, input: {desiredState: UNINSTALLED}) { id } }", json!({"id": created})).await?;
    let ran = run_sessions(&f, &[&c1, &c2, &c3], json!({})).await?;
    assert_eq!(ran, preview, "sessions against the preview");

    // Deleting it unshadows the baseline, which leaves the now absent tool alone.
    let p =
        f.s.gql(
            &f.admin,
            PREVIEW,
            json!({"i": {"delete": created}, "d": 30}),
        )
        .await?;
    let p = &p["previewDeploymentChange"];
    assert_eq!(p["staleAfterDays"], 30);
    assert_eq!(
        p["unshadows"],
        json!([{"deployment": {"id": base}, "computers": 3}])
    );
    assert_eq!(
        counts(p),
        BTreeMap::from([("NO_ACTION".into(), 3)]),
        "{p:#}"
    );

    // A deleted computer takes its detections along, and so does a deleted tenant.
    drop((a2, a3, a4));
    let gone =
        f.s.gql(
            &f.admin,
            "mutation($c: ID!) { deleteComputer(id: $c) }",
            json!({"c": c3}),
        )
        .await?;
    assert_eq!(gone["deleteComputer"], true);
    let p =
        f.s.gql(&f.admin, PREVIEW, json!({"i": {"delete": created}}))
            .await?;
    assert_eq!(
        p["previewDeploymentChange"]["unshadows"][0]["computers"], 2,
        "{p:#}"
    );
    let gone =
        f.s.gql(
            &f.admin,
            "mutation($t: ID!) { deleteTenant(id: $t, force: true) }",
            json!({"t": f.tenant}),
        )
        .await?;
    assert_eq!(gone["deleteTenant"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_previews_are_refused_with_a_code() -> anyhow::Result<()> {
    let f = Fixture::start("impact-err").await?;
    let sw = tool(&f).await?;
    let create = json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"});
    let q = "query($i: DeploymentChangeInput!, $d: Int) { previewDeploymentChange(input: $i, staleAfterDays: $d) { stale { id } } }";
    let err = |vars: Value, token: Option<String>| {
        let s = &f.s;
        let admin = f.admin.clone();
        async move {
            s.gql_err(Some(token.as_deref().unwrap_or(&admin)), q, vars)
                .await
        }
    };
    assert_eq!(err(json!({"i": {}}), None).await?, "BAD_USER_INPUT");
    assert_eq!(
        err(json!({"i": {"create": create, "delete": sw}}), None).await?,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        err(json!({"i": {"create": create}, "d": 0}), None).await?,
        "BAD_USER_INPUT"
    );
    let mut no_state = create.clone();
    no_state["desiredState"] = Value::Null;
    assert_eq!(
        err(json!({"i": {"create": no_state}}), None).await?,
        "BAD_USER_INPUT",
        "checked as createDeployment checks it"
    );
    let unknown = "019ad000-0000-7000-8000-000000000000";
    assert_eq!(
        err(json!({"i": {"delete": unknown}}), None).await?,
        "NOT_FOUND"
    );
    assert_eq!(
        err(json!({"i": {"update": {"id": unknown, "input": {}}}}), None).await?,
        "NOT_FOUND"
    );
    // A viewer may not make the change, so may not preview it.
    f.s.gql(&f.admin, "mutation($t: ID) { createUser(input: {email: \"viewer@acme.example\", password: \"viewer password 1\", role: TENANT_VIEWER, tenantId: $t}) { id } }", json!({"t": f.tenant})).await?;
    let viewer =
        f.s.login("viewer@acme.example", "viewer password 1")
            .await?;
    assert_eq!(
        err(json!({"i": {"create": create}}), Some(viewer)).await?,
        "FORBIDDEN"
    );
    let gone =
        f.s.gql(
            &f.admin,
            "mutation($s: ID!) { deleteSoftware(id: $s) }",
            json!({"s": sw}),
        )
        .await?;
    assert_eq!(gone["deleteSoftware"], true);
    Ok(())
}
