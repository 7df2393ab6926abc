//! Software supply with a real agent: versions scripts that move "latest" without editing the
//! software (and their cache), and prerequisites that install first.

use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn sh(body: String) -> Value {
    json!({"language": "SHELL", "body": body})
}

async fn run_session(f: &Fixture) -> anyhow::Result<Value> {
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
        .await
}

/// The first error of an operation that must fail.
async fn error(
    s: &TestServer,
    token: &str,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let body = s.gql_raw(Some(token), query, variables).await?;
    anyhow::ensure!(
        body["errors"][0].is_object(),
        "expected an error, got {body}"
    );
    Ok(body["errors"][0].clone())
}

fn logs(session: &Value) -> Vec<String> {
    session["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versions_script_moves_latest_without_editing_the_software() -> anyhow::Result<()> {
    let f = Fixture::start("supply-versions").await?;
    let dir = f.dir.path();
    let (feed, installed) = (dir.join("feed.jsonl"), dir.join("tool.version"));
    let (feed_s, installed_s) = (feed.display(), installed.display());
    std::fs::write(&feed, "{\"version\":\"1.0\"}\n")?;
    let sw = f
        .s
        .create_software(
            &f.admin,
            // MSP-level software, deployed to the tenant.
            json!({
                "name": "Tool",
                "detectionScript": sh(format!("cat '{installed_s}' 2>/dev/null || true")),
                "versions": [{"version": "1.5", "installScript": sh(format!("echo 1.5 > '{installed_s}'"))}],
                "versionsScript": sh(format!("cat '{feed_s}'")),
                "versionsCacheMinutes": 0,
                "installScript": sh(format!("echo \"$UPKEEP_VERSION\" > '{installed_s}'")),
            }),
        )
        .await?;
    f.s.create_deployment(
        &f.admin,
        json!({"tenantId": f.tenant, "softwareId": sw, "target": {"kind": "ALL_COMPUTERS"}, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;

    // The script says 1.0 is all there is: 1.0 is installed (not the static 1.5).
    let s1 = run_session(&f).await?;
    assert_eq!(s1["status"], "PASSED", "{s1:#}");
    assert_eq!(s1["actions"][0]["desiredVersion"], "1.0", "{s1:#}");
    assert_eq!(std::fs::read_to_string(&installed)?.trim(), "1.0");
    // The answer is the tenant's: its computers decided it, and it is read for the tenant.
    let q = "query($id: ID!, $t: ID) { softwareById(id: $id) { latestVersion(tenantId: $t) versionsFetchedAt(tenantId: $t) discoveredVersions(tenantId: $t) { version } } }";
    let d =
        f.s.gql(&f.admin, q, json!({"id": sw, "t": f.tenant}))
            .await?;
    assert_eq!(d["softwareById"]["latestVersion"], "1.0", "{d:#}");
    assert!(d["softwareById"]["versionsFetchedAt"].is_string(), "{d:#}");
    let other = f.s.create_tenant(&f.admin, "Other").await?;
    for t in [Value::Null, json!(other)] {
        let d = f.s.gql(&f.admin, q, json!({"id": sw, "t": t})).await?;
        assert_eq!(
            d["softwareById"]["latestVersion"], "1.5",
            "static for {t}: {d:#}"
        );
        assert_eq!(d["softwareById"]["discoveredVersions"], json!([]), "{d:#}");
    }

    // The vendor publishes 2.0: the next session upgrades, the software record untouched.
    std::fs::write(
        &feed,
        "{\"version\":\"2.0\",\"releasedAt\":\"2026-11-30\"}\n{\"version\":\"1.0\"}\n",
    )?;
    let s2 = run_session(&f).await?;
    assert_eq!(s2["status"], "PASSED", "{s2:#}");
    assert_eq!(s2["actions"][0]["kind"], "UPGRADE", "{s2:#}");
    assert_eq!(std::fs::read_to_string(&installed)?.trim(), "2.0");
    assert!(
        logs(&s2)
            .iter()
            .any(|l| l == "Tool: 2 version(s) from its versions script, newest 2.0"),
        "{s2:#}"
    );
    let d =
        f.s.gql(&f.admin, q, json!({"id": sw, "t": f.tenant}))
            .await?;
    assert_eq!(d["softwareById"]["latestVersion"], "2.0", "{d:#}");
    assert_eq!(
        d["softwareById"]["discoveredVersions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Cached for an hour: 3.0 appears, but the answer of a minute ago still stands.
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { updateSoftware(id: $id, input: {versionsCacheMinutes: 60}) { id } }",
        json!({"id": sw}),
    )
    .await?;
    std::fs::write(&feed, "{\"version\":\"3.0\"}\n")?;
    let s3 = run_session(&f).await?;
    assert_eq!(s3["status"], "PASSED", "{s3:#}");
    assert_eq!(s3["actions"][0]["kind"], "NO_ACTION", "{s3:#}");
    assert!(
        logs(&s3)
            .iter()
            .any(|l| l.ends_with("(cached), newest 2.0")),
        "{s3:#}"
    );

    // A script that prints garbage: the static versions stand, and the log says so.
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { updateSoftware(id: $id, input: {versionsCacheMinutes: 0}) { id } }",
        json!({"id": sw}),
    )
    .await?;
    std::fs::write(&feed, "version 4.0 is out\n")?;
    let s4 = run_session(&f).await?;
    assert_eq!(s4["status"], "PASSED", "{s4:#}");
    assert_eq!(
        s4["actions"][0]["reason"], "2.0 installed, latest is 1.5",
        "{s4:#}"
    );
    assert!(
        logs(&s4).iter().any(|l| l
            .starts_with("Tool: versions script failed (line 1: not a version object")
            && l.ends_with("the static versions stand")),
        "{s4:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versions_script_needs_an_install_script_and_bounds_hold() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let base = json!({
        "name": "X",
        "detectionScript": sh("true".into()),
        "versions": [],
        "versionsScript": sh("echo".into()),
    });
    let e = error(
        &s,
        &admin,
        "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
        json!({"i": base}),
    )
    .await?;
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{e:#}");
    assert_eq!(e["extensions"]["field"], "installScript", "{e:#}");
    let mut no_versions = base.clone();
    no_versions["versionsScript"] = Value::Null;
    let e = error(
        &s,
        &admin,
        "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
        json!({"i": no_versions}),
    )
    .await?;
    assert_eq!(e["extensions"]["field"], "versions", "{e:#}");
    let mut long_cache = base.clone();
    long_cache["installScript"] = sh("true".into());
    long_cache["versionsCacheMinutes"] = json!(100_000);
    let e = error(
        &s,
        &admin,
        "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
        json!({"i": long_cache}),
    )
    .await?;
    assert_eq!(e["extensions"]["field"], "versionsCacheMinutes", "{e:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prerequisite_installs_first_and_cycles_are_refused() -> anyhow::Result<()> {
    let f = Fixture::start("supply-deps").await?;
    let dir = f.dir.path();
    let base = create_file_software(&f.s, &f.admin, Some(&f.tenant), "Base", dir, &["1.0"]).await?;
    let base_file = dir.join("Base.version");
    let app_file = dir.join("App.version");
    // App's installer refuses to run without Base, as a real one would.
    let app =
        f.s.create_software(
            &f.admin,
            json!({
                "name": "App",
                "tenantId": f.tenant,
                "detectionScript": sh(format!("cat '{}' 2>/dev/null || true", app_file.display())),
                "versions": [{"version": "3.0", "installScript": sh(format!(
                    "test -f '{}' || {{ echo 'Base is missing' >&2; exit 1; }}; echo 3.0 > '{}'",
                    base_file.display(), app_file.display()))}],
                "dependsOnIds": [base],
            }),
        )
        .await?;
    let d =
        f.s.gql(
            &f.admin,
            "query($id: ID!) { softwareById(id: $id) { dependsOn { id name } } }",
            json!({"id": app}),
        )
        .await?;
    assert_eq!(d["softwareById"]["dependsOn"][0]["name"], "Base", "{d:#}");
    f.s.create_deployment(
        &f.admin,
        json!({"tenantId": f.tenant, "softwareId": app, "target": {"kind": "ALL_COMPUTERS"}, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    let s = run_session(&f).await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    let names: Vec<&str> = s["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["Base", "App"], "{s:#}");
    assert_eq!(
        s["actions"][0]["reason"], "needed by App: not installed; latest is 1.0",
        "{s:#}"
    );
    assert_eq!(std::fs::read_to_string(&app_file)?.trim(), "3.0");

    // Base depending on App would close a cycle: refused, naming it.
    let e = error(
            &f.s,
            &f.admin,
            "mutation($id: ID!, $d: [ID!]) { updateSoftware(id: $id, input: {dependsOnIds: $d}) { id } }",
            json!({"id": base, "d": [app]}),
        )
        .await?;
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("cycle: Base → App → Base"),
        "{e:#}"
    );
    Ok(())
}
