//! Operations: backup and restore while running, the store check, configuration errors.

use serde_json::json;
use std::process::Command;
use upkeep_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_running_and_restore_round_trip() -> anyhow::Result<()> {
    if embedded_only(
        "backup and restore copy a data dir's sled store; a cluster is backed up with pg_dump \
         (a stopped replica's data dir is refused: offline_commands_refuse_a_replica_data_dir)",
    ) {
        return Ok(());
    }
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Backed up").await?;
    s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@b.example\"}) { id } }", json!({"t": t})).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("upkeep.backup");
    let out = Command::new(bin("upkeep-server-under-test"))
        .args([
            "backup",
            "--data-dir",
            s.data_dir.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ])
        .output()?;
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server kept running and serving.
    s.gql(&admin, "{ me { email } }", json!({})).await?;
    let restored = dir.path().join("restored");
    let out = Command::new(bin("upkeep-server-under-test"))
        .args([
            "restore",
            "--data-dir",
            restored.to_str().unwrap(),
            "--in",
            file.to_str().unwrap(),
        ])
        .output()?;
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key SECRET parameters are sealed with came along, or they could not be opened.
    assert_eq!(
        std::fs::read(restored.join("secret.key"))?,
        std::fs::read(s.data_dir.join("secret.key"))?
    );
    // Restoring over data is refused.
    let again = Command::new(bin("upkeep-server-under-test"))
        .args([
            "restore",
            "--data-dir",
            restored.to_str().unwrap(),
            "--in",
            file.to_str().unwrap(),
        ])
        .output()?;
    assert!(!again.status.success());
    let check = Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--data-dir", restored.to_str().unwrap()])
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let r = TestServer::start_config(test_config(&restored)).await?;
    // The same token works on the restored server (the JWT secret came along) and sees the data.
    let d = r
        .gql(
            &admin,
            "query($t: ID!) { tenant(id: $t) { name } persons(tenantId: $t) { totalCount } }",
            json!({"t": t}),
        )
        .await?;
    assert_eq!(d["tenant"]["name"], "Backed up");
    assert_eq!(d["persons"]["totalCount"], 1);
    // The audit trail came along.
    let audit = r
        .gql(
            &admin,
            "query($t: ID) { auditEvents(filter: {tenantId: $t, action: \"createPerson\"}) { totalCount } }",
            json!({"t": t}),
        )
        .await?;
    assert_eq!(audit["auditEvents"]["totalCount"], 1, "{audit}");
    // A damaged file is refused.
    let mut bytes = std::fs::read(&file)?;
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&file, &bytes)?;
    let bad = Command::new(bin("upkeep-server-under-test"))
        .args([
            "restore",
            "--data-dir",
            dir.path().join("x").to_str().unwrap(),
            "--in",
            file.to_str().unwrap(),
        ])
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("damaged"));
    Ok(())
}

/// `backup`, `gc` and `check` on the data dir of a stopped cluster replica (its store is in
/// PostgreSQL, so it has no `store/`) refuse in one clear line instead of making an empty sled
/// store there and backing up, collecting or checking nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_refuse_a_replica_data_dir() -> anyhow::Result<()> {
    let mut s = TestServer::start_on_cluster(test_config).await?;
    let admin = s.admin().await?;
    s.create_tenant(&admin, "In PostgreSQL").await?;
    s.stop().await;
    let data = s.data_dir.to_str().unwrap().to_string();
    let tmp = tempfile::tempdir()?;
    let out_file = tmp.path().join("upkeep.backup");
    for args in [
        vec![
            "backup",
            "--data-dir",
            &data,
            "--out",
            out_file.to_str().unwrap(),
        ],
        vec!["gc", "--data-dir", &data],
        vec!["check", "--data-dir", &data],
    ] {
        let out = Command::new(bin("upkeep-server-under-test"))
            .args(&args)
            .env_remove("UPKEEP_DATABASE_URL")
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("holds no embedded store") && err.contains("pg_dump"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!s.data_dir.join("store").exists(), "{args:?} made a store");
    }
    assert!(!out_file.exists());
    Ok(())
}

#[test]
fn bad_configuration_exits_with_one_clear_line() {
    for args in [
        vec!["--listen", "not-an-address"],
        vec!["--smtp-url", "ftp://x"],
        vec!["--public-url", "nope"],
        vec!["--max-concurrent-sessions", "0"],
    ] {
        let out = Command::new(bin("upkeep-server-under-test"))
            .args(&args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("upkeep-server:"), "{err}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let out = Command::new(bin("upkeep-server-under-test"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            file.join("sub").to_str().unwrap(),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_polls_sessions_and_the_outbox() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let text = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await?
        .text()
        .await?;
    for name in [
        "upkeep_agent_polls_total",
        "upkeep_job_results_total",
        "upkeep_sessions_active",
        "upkeep_sessions_by_status{status=\"PASSED\"}",
        "upkeep_outbox_depth",
        "upkeep_mail_failures_total",
        "upkeep_webhook_attempts_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    Ok(())
}
