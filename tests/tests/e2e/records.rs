//! Records that prove what happened (CONTRACT §16): a finished session's events are signed as a
//! hash chain; the record exported over HTTP verifies offline with `verify-record`, and one
//! byte changed in a stored event is caught by both `check` and `verify-record`.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn server_cli(args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin("upkeep-server-under-test"))
        .args(args)
        .output()?)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn export(f: &Fixture, session: &str) -> Result<(u16, Value)> {
    let r =
        f.s.http
            .get(format!("{}/api/v1/sessions/{session}/record", f.s.url))
            .bearer_auth(&f.admin)
            .send()
            .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

fn verify(file: &Path, key: Option<&str>) -> Result<Output> {
    let mut args = vec!["verify-record", file.to_str().context("path")?];
    if let Some(k) = key {
        args.extend(["--public-key", k]);
    }
    server_cli(&args)
}

/// `check` on the fixture's store, wherever it lives.
fn check(f: &Fixture) -> Result<Output> {
    match &f.s.config.database_url {
        Some(url) => server_cli(&["check", "--database-url", url]),
        None => server_cli(&[
            "check",
            "--data-dir",
            f.s.data_dir.to_str().context("path")?,
        ]),
    }
}

/// A task (test and set scripts) deployed to every computer of the fixture's tenant.
async fn deploy_task(f: &Fixture, name: &str, test: String, set: String) -> Result<()> {
    let task =
        f.s.gql(
            &f.admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {"name": name, "tenantId": f.tenant,
                "testScript": {"language": "SHELL", "body": test},
                "setScript": {"language": "SHELL", "body": set}}}),
        )
        .await?["createMaintenanceTask"]["id"]
            .as_str()
            .context("task id")?
            .to_string();
    f.s.create_deployment(
        &f.admin,
        json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task}),
    )
    .await?;
    Ok(())
}

/// A session with a task that runs and logs, finished PASSED; its id.
async fn finished_session(f: &Fixture) -> Result<String> {
    let marker = f.dir.path().join("stamped");
    deploy_task(
        f,
        "Stamp",
        format!("test -f '{}'", marker.display()),
        format!("echo stamping the machine; touch '{}'", marker.display()),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    ensure!(s["status"] == "PASSED", "the session: {s}");
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_record_verifies_offline_and_one_changed_byte_is_caught() -> Result<()> {
    let mut f = Fixture::start("records-1").await?;
    let id = finished_session(&f).await?;
    let d = f
        .s
        .gql(
            &f.admin,
            "query($id: ID!) { maintenanceSession(id: $id) { lastSequence attestation { algorithm publicKey chainHead signature lastSequence } } }",
            json!({"id": id}),
        )
        .await?;
    let a = &d["maintenanceSession"]["attestation"];
    assert_eq!(a["algorithm"], "Ed25519");
    assert_eq!(a["chainHead"].as_str().map(str::len), Some(64), "{a}");
    let covered = a["lastSequence"].as_i64().context("lastSequence")?;
    assert!(
        covered >= 3,
        "a session that ran a task has several events: {a}"
    );
    assert!(
        covered
            <= d["maintenanceSession"]["lastSequence"]
                .as_i64()
                .unwrap_or(0)
    );
    let public_key = a["publicKey"].as_str().context("publicKey")?.to_string();

    // The exported record verifies offline, with the key it names and with the trusted key.
    let (status, record) = export(&f, &id).await?;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["attestation"]["chain_head"], a["chainHead"]);
    assert_eq!(
        record["events"].as_array().map(Vec::len),
        Some(covered as usize)
    );
    let file = f.dir.path().join("record.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&record)?)?;
    let ok = verify(&file, None)?;
    assert!(ok.status.success(), "{}", text(&ok));
    let ok = verify(&file, Some(&public_key))?;
    assert!(ok.status.success(), "{}", text(&ok));
    // Not signed by a key the verifier trusts: refused.
    let other = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let untrusted = verify(&file, Some(other))?;
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted));

    // One character of a log line changed in the exported file: refused.
    let edited =
        std::fs::read_to_string(&file)?.replacen("stamping the machine", "stamping the mAchine", 1);
    ensure!(
        edited.contains("mAchine"),
        "the record holds the task's output line"
    );
    let edited_file = f.dir.path().join("edited.json");
    std::fs::write(&edited_file, edited)?;
    let caught = verify(&edited_file, None)?;
    assert_eq!(caught.status.code(), Some(1), "{}", text(&caught));
    assert!(
        text(&caught).contains("does NOT verify"),
        "{}",
        text(&caught)
    );

    // The store is sound before anything is changed.
    f.s.stop().await;
    let before = check(&f)?;
    assert!(before.status.success(), "{}", text(&before));

    // One byte of one stored event changed behind the server's back.
    let sequence = edit_one_stored_byte(&f, &id, "stamping").await?;
    let damaged = check(&f)?;
    assert!(
        !damaged.status.success(),
        "check must catch the edit: {}",
        text(&damaged)
    );
    assert!(
        text(&damaged).contains(&format!("session {id}: the signed record does not verify")),
        "{}",
        text(&damaged)
    );
    f.s.start_again().await?;
    f.admin = f.s.admin().await?;
    let (status, again) = export(&f, &id).await?;
    assert_eq!(status, 200, "{again}");
    let again_file = f.dir.path().join("again.json");
    std::fs::write(&again_file, serde_json::to_vec(&again)?)?;
    let caught = verify(&again_file, Some(&public_key))?;
    assert_eq!(
        caught.status.code(),
        Some(1),
        "event {sequence} was changed in the store: {}",
        text(&caught)
    );
    Ok(())
}

/// The stopped server's store. sled releases the data dir's lock when the server's last handle
/// drops, which on a loaded machine can come a moment after `stop` returns: a lock still held
/// is waited for (as `TestServer::start_again` does).
async fn stopped_store(f: &Fixture) -> Result<upkeep_store::Db> {
    if let Some(url) = &f.s.config.database_url {
        return Ok(upkeep_store::open_postgres(url).await?);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match upkeep_store::open_embedded(&f.s.data_dir) {
            Err(upkeep_store::StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Opens the stopped server's store and changes one byte of the first event of `session` whose
/// stored JSON contains `needle` (a letter of it, so the JSON still reads). Returns that
/// event's sequence.
async fn edit_one_stored_byte(f: &Fixture, session: &str, needle: &str) -> Result<u64> {
    use upkeep_store::{Kind, Space};
    let store = stopped_store(f).await?;
    let session: upkeep_core::domain::Id = session.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for sequence in 1..=64u64 {
        let key = upkeep_store::records::event_key(session, sequence);
        let Some(mut bytes) = store.read(Space::Records(Kind::Event), &key).await? else {
            break;
        };
        let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
        else {
            continue;
        };
        bytes[at] = bytes[at].to_ascii_uppercase();
        store
            .apply_batch(Space::Records(Kind::Event), vec![(key, Some(bytes))])
            .await?;
        store.flush().await?;
        return Ok(sequence);
    }
    anyhow::bail!("no stored event of {session} contains {needle:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_for_finished_sessions_and_signed_in_users() -> Result<()> {
    let f = Fixture::start("records-2").await?;
    // A change to make tomorrow: a session that has not ended yet.
    deploy_task(&f, "Later", "exit 1".into(), "true".into()).await?;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let id =
        f.s.start_session(&f.admin, &f.computer, json!({"executeAt": tomorrow}))
            .await?;
    let (status, body) = export(&f, &id).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("NOT_FINISHED")),
        "{body}"
    );
    let r =
        f.s.http
            .get(format!("{}/api/v1/sessions/{id}/record", f.s.url))
            .send()
            .await?;
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = export(&f, "not-an-id").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("BAD_USER_INPUT")),
        "{body}"
    );
    let (status, body) = export(&f, "01a230f4-7cf7-71b2-9321-ac4407d9babb").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    Ok(())
}

/// Rewrites `session` in the stopped server's store the way it was stored before sessions were
/// split (the whole session in its own record, no plan record).
async fn store_unsplit(f: &Fixture, session: &str) -> Result<()> {
    use upkeep_store::{Kind, Space};
    let store = stopped_store(f).await?;
    let id: upkeep_core::domain::Id = session.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let whole: upkeep_core::session::Session = store.get(&id).await?.context("the session")?;
    ensure!(
        !whole.items.is_empty(),
        "the session has a plan to move back"
    );
    let mut bytes = vec![upkeep_store::FORMAT_VERSION];
    bytes.extend(serde_json::to_vec(&whole)?);
    let key = id.as_bytes().to_vec();
    store
        .apply_batch(
            Space::Records(Kind::Session),
            vec![(key.clone(), Some(bytes))],
        )
        .await?;
    store
        .apply_batch(Space::Records(Kind::SessionPlan), vec![(key, None)])
        .await?;
    store.flush().await?;
    Ok(())
}

/// A data dir (or database) written before sessions were split into hot state and plan still
/// opens: a finished session reads the same, exports and checks; an unfinished one is
/// recovered, and its next write splits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stored_before_the_plan_split_still_read_and_run() -> Result<()> {
    let mut f = Fixture::start("records-3").await?;
    let done = finished_session(&f).await?;
    // A change to make tomorrow: the second session waits for it.
    deploy_task(&f, "Later", "exit 1".into(), "true".into()).await?;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let waiting =
        f.s.start_session(&f.admin, &f.computer, json!({"executeAt": tomorrow}))
            .await?;
    f.s.wait_status(&f.admin, &waiting, &["SCHEDULED"], T)
        .await?;
    let view = "query($id: ID!) { maintenanceSession(id: $id) { status lastSequence actions { kind status reason } } }";
    let before_done = f.s.gql(&f.admin, view, json!({"id": done})).await?;
    let before_waiting = f.s.gql(&f.admin, view, json!({"id": waiting})).await?;
    f.s.stop().await;
    store_unsplit(&f, &done).await?;
    store_unsplit(&f, &waiting).await?;

    f.s.start_again().await?;
    f.admin = f.s.admin().await?;
    assert_eq!(
        f.s.gql(&f.admin, view, json!({"id": done})).await?,
        before_done
    );
    assert_eq!(
        f.s.gql(&f.admin, view, json!({"id": waiting})).await?,
        before_waiting
    );
    let (status, record) = export(&f, &done).await?;
    assert_eq!(status, 200, "{record}");
    let file = f.dir.path().join("old-format.json");
    std::fs::write(&file, serde_json::to_vec(&record)?)?;
    let ok = verify(&file, None)?;
    assert!(ok.status.success(), "{}", text(&ok));
    // The recovered session steps on: cancelled, with its plan intact.
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { id } }",
        json!({"id": waiting}),
    )
    .await?;
    let after = f.s.gql(&f.admin, view, json!({"id": waiting})).await?;
    assert_eq!(
        after["maintenanceSession"]["status"], "CANCELLED",
        "{after}"
    );
    assert_eq!(
        after["maintenanceSession"]["actions"]
            .as_array()
            .map(Vec::len),
        before_waiting["maintenanceSession"]["actions"]
            .as_array()
            .map(Vec::len)
    );
    f.s.stop().await;
    let sound = check(&f)?;
    assert!(sound.status.success(), "{}", text(&sound));
    Ok(())
}
