//! The server on PostgreSQL (`--database-url`, a fresh database per test): a session end to end
//! with a real agent, a restart on the same database, and `check --database-url`.

use serde_json::json;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_end_to_end_on_postgres_and_the_store_checks_ok() -> anyhow::Result<()> {
    let s = TestServer::start_on_cluster(test_config).await?;
    let url = s.config.database_url.clone().expect("a database URL");
    let mut f = Fixture::start_on(s, "pg-1").await?;
    let sw = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "editor",
        f.dir.path(),
        &["1.9.2", "1.10.0"],
    )
    .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(done["compliance"], "COMPLIANT");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("editor.version"))?.trim(),
        "1.10.0",
        "the agent installed the latest version"
    );
    assert!(
        !f.s.data_dir.join("store").exists(),
        "no embedded store was made in the data dir"
    );
    // A restart on the same database finds the session as it was.
    f.s.restart().await?;
    let admin = f.s.admin().await?;
    let again = f.s.session(&admin, &id).await?;
    assert_eq!(again["status"], "PASSED");
    assert_eq!(again["lastSequence"], done["lastSequence"]);
    f.s.stop().await;

    let store = upkeep_store::open_postgres(&url).await?;
    assert_eq!(store.engine(), "postgres");
    assert_eq!(store.count::<upkeep_core::session::Session>().await?, 1);
    drop(store);
    let check = std::process::Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--database-url", &url])
        .output()?;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check: {out} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("store OK"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_bad_or_unreachable_database_url_clearly() -> anyhow::Result<()> {
    let check = |url: &str| {
        std::process::Command::new(bin("upkeep-server-under-test"))
            .args(["check", "--database-url", url])
            .output()
    };
    let bad = check("mysql://127.0.0.1/x")?;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must start with postgres://"));
    let down = check("postgres://postgres@127.0.0.1:1/nothing")?;
    assert_eq!(down.status.code(), Some(2));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("cannot open the PostgreSQL store"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn serve_refuses_a_bad_or_unreachable_database_or_nats_url_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().unwrap();
    let nats = nats_url();
    for (url, nats, says) in [
        (
            "mysql://127.0.0.1/x",
            nats.as_str(),
            "must start with postgres://",
        ),
        (
            "postgres://postgres@127.0.0.1:1/nothing",
            nats.as_str(),
            "cannot open the PostgreSQL store",
        ),
        (
            "postgres://postgres@127.0.0.1/test",
            "",
            "--database-url and --nats-url together",
        ),
        (
            "postgres://postgres@127.0.0.1/test",
            "http://127.0.0.1:4222",
            "must start with nats://",
        ),
    ] {
        let mut cmd = std::process::Command::new(bin("upkeep-server-under-test"));
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir", data])
            .args(["--database-url", url]);
        if !nats.is_empty() {
            cmd.args(["--nats-url", nats]);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // (A warning about the temp dir's permissions may come first.)
        let err: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
        assert_eq!(err.len(), 1, "{url}: {stderr}");
        assert!(
            err[0].starts_with("upkeep-server:") && err[0].contains(says),
            "{stderr}"
        );
    }
}
