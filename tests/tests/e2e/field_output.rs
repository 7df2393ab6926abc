//! In the field: what the script said (stored, streamed, masked), parameter names that differ
//! only in case, and webhook deliveries of a session in sequence order.

use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "hunter2-Secret";
const MASK: &str = "••••••";

struct Fixture {
    s: TestServer,
    admin: String,
    tenant: String,
    dir: tempfile::TempDir,
    computer: String,
    _agent: TestAgent,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let agent = TestAgent::start(&s.url, &key, "ws-out").await?;
    let computer = s.computer_id(&admin, "ws-out").await?;
    s.wait_online(&admin, &computer).await?;
    Ok(Fixture {
        s,
        admin,
        tenant,
        dir: tempfile::tempdir()?,
        computer,
        _agent: agent,
    })
}

/// Software whose install script is `install` (with `$F` the version file it must write) and
/// whose detection prints the file; deployed to every computer with `parameters`.
async fn deploy_software(
    f: &Fixture,
    name: &str,
    install: &str,
    parameters: Value,
) -> anyhow::Result<()> {
    let file = f.dir.path().join(format!("{name}.version"));
    let file = file.display();
    let d = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {
                "name": name,
                "tenantId": f.tenant,
                "detectionScript": {"language": "SHELL", "body": format!("echo detection-said-this >&2; test -f '{file}' && cat '{file}' || exit 0")},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("F='{file}'\n{install}")}}],
            }}),
        )
        .await?;
    let sw = d["createSoftware"]["id"].as_str().unwrap_or_default();
    create_deployment(
        &f.s,
        &f.admin,
        json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw,
               "desiredState": "INSTALLED_LATEST", "parameters": parameters}),
    )
    .await?;
    Ok(())
}

async fn outputs(f: &Fixture, session: &str) -> anyhow::Result<Vec<Value>> {
    let d = f
        .s
        .gql(
            &f.admin,
            "query($id: ID!) { maintenanceSession(id: $id) { actions { status output { stdout stderr exitCode truncated } } } }",
            json!({"id": session}),
        )
        .await?;
    Ok(d["maintenanceSession"]["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_scripts_output_is_stored_with_its_action_and_secrets_are_masked()
-> anyhow::Result<()> {
    let f = fixture().await?;
    deploy_software(
        &f,
        "vpn",
        "echo \"connecting with $UPKEEP_PARAM_TOKEN as $UPKEEP_PARAM_USER\"\necho \"warning: $UPKEEP_PARAM_TOKEN expires\" >&2\necho 1.0 > \"$F\"",
        json!({"token": SECRET, "user": "anna"}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    f.s.wait_status(&f.admin, &id, &["PASSED"], T).await?;
    let actions = outputs(&f, &id).await?;
    let out = &actions[0]["output"];
    // The install script's output, not the verifying detection's.
    assert_eq!(
        out["stdout"],
        format!("connecting with {MASK} as anna\n"),
        "{out:#}"
    );
    assert_eq!(out["stderr"], format!("warning: {MASK} expires\n"));
    assert_eq!(out["exitCode"], 0);
    assert_eq!(out["truncated"], false);
    // The secret is nowhere in the session's log or result either.
    let session = f.s.session(&f.admin, &id).await?;
    assert!(!session.to_string().contains(SECRET), "{session:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scripts_output_is_kept_and_long_output_is_cut_with_a_marker()
-> anyhow::Result<()> {
    let f = fixture().await?;
    // 100 000 bytes on stdout, then the secret on stderr, then failure.
    deploy_software(
        &f,
        "chatty",
        "head -c 100000 /dev/zero | tr '\\0' x\necho \"bad key $UPKEEP_PARAM_KEY\" >&2\nexit 4",
        json!({"key": SECRET}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s = f.s.wait_status(&f.admin, &id, &["FAILED"], T).await?;
    let actions = outputs(&f, &id).await?;
    let out = &actions[0]["output"];
    assert_eq!(out["exitCode"], 4);
    assert_eq!(out["truncated"], true);
    let stdout = out["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with("xxxx"));
    assert!(
        stdout.ends_with("[… output cut: only the first 64 KiB are kept]"),
        "{}",
        &stdout[stdout.len().saturating_sub(100)..]
    );
    assert!(stdout.len() < 64 * 1024 + 100, "{} bytes", stdout.len());
    assert_eq!(out["stderr"], format!("bad key {MASK}\n"));
    // The failure message quotes stderr, masked too.
    let msg = s["actions"][0]["resultMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(msg.contains(MASK) && !msg.contains(SECRET), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_names_that_differ_only_in_case_are_refused() -> anyhow::Result<()> {
    let f = fixture().await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "tool",
        f.dir.path(),
        &["1.0"],
    )
    .await?;
    let input = |parameters: Value| {
        json!({"i": {"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw,
                     "desiredState": "INSTALLED_ANY", "parameters": parameters}})
    };
    let create = "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }";
    let body =
        f.s.gql_raw(
            Some(&f.admin),
            create,
            input(json!({"value": "1", "Value": "2"})),
        )
        .await?;
    let e = &body["errors"][0];
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{body:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("differ only in case"),
        "{body:#}"
    );
    // Distinct names are fine, and an update is held to the same rule.
    let d =
        f.s.gql(
            &f.admin,
            create,
            input(json!({"value": "1", "value2": "2"})),
        )
        .await?;
    let id = d["createDeployment"]["id"].as_str().unwrap_or_default();
    let code = f
        .s
        .gql_err(
            Some(&f.admin),
            "mutation($id: ID!, $i: UpdateDeploymentInput!) { updateDeployment(id: $id, input: $i) { id } }",
            json!({"id": id, "i": {"parameters": {"INSTALL_DIR": "/a", "install_dir": "/b"}}}),
        )
        .await?;
    assert_eq!(code, "BAD_USER_INPUT");
    Ok(())
}
