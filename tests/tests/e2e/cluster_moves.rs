//! Moving into cluster mode: `upkeep-server migrate` from an embedded store into PostgreSQL,
//! and the generated keys shared by replicas through the database.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use upkeep_store::scratch::ScratchDatabase;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn migrate(from: &std::path::Path, url: &str) -> anyhow::Result<(bool, String, String)> {
    let out = std::process::Command::new(bin("upkeep-server-under-test"))
        .arg("migrate")
        .arg("--from-data-dir")
        .arg(from)
        .args(["--to-database-url", url])
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_migrates_into_postgres_and_a_server_there_serves_it() -> anyhow::Result<()> {
    // The source is a sled data dir in either pass.
    let mut f = Fixture::start_on(TestServer::start_embedded(test_config).await?, "mig-1").await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    let cluster = ScratchCluster::create().await?;
    let db = &cluster.database;

    // While the server runs, the data dir is in use: refused, nothing copied.
    let (ok, _, err) = migrate(&f.s.data_dir, db.url())?;
    assert!(!ok && err.contains("in use by a running server"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    f.s.stop().await;
    let (ok, out, err) = migrate(&f.s.data_dir, db.url())?;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("migrated ") && out.contains("counts match"),
        "{out}"
    );
    assert!(out.contains("files/"), "says what to copy by hand: {out}");
    // A second run finds the database in use.
    let (ok, _, err) = migrate(&f.s.data_dir, db.url())?;
    assert!(!ok && err.contains("already holds Upkeep data"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A server on PostgreSQL with a data dir of its own: the keys came through the database,
    // so the old token still works and the same data is there.
    let pg = TestServer::start_in_temp_dir(|dir| {
        let mut c = test_config(dir);
        cluster.apply(&mut c);
        c
    })
    .await?;
    let again = pg.session(&f.admin, &id).await?;
    assert_eq!(again["status"], done["status"]);
    assert_eq!(again["lastSequence"], done["lastSequence"]);
    assert_eq!(pg.computer_id(&f.admin, "mig-1").await?, f.computer);
    let d = pg
        .gql(
            &f.admin,
            "{ tenants { edges { node { id name } } } }",
            json!({}),
        )
        .await?;
    assert_eq!(
        d["tenants"]["edges"][0]["node"]["id"],
        f.tenant.as_str(),
        "{d}"
    );
    drop(pg);

    let check = std::process::Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--database-url", db.url()])
        .output()?;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains("store OK"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_dir_without_a_store_clearly() -> anyhow::Result<()> {
    let db = ScratchDatabase::create().await?;
    let empty = tempfile::tempdir()?;
    let (ok, _, err) = migrate(empty.path(), db.url())?;
    assert!(!ok && err.contains("holds no embedded store"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_share_the_generated_keys() -> anyhow::Result<()> {
    let cluster = ScratchCluster::create().await?;
    let on_db = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        cluster.apply(&mut c);
        c
    };
    let a = TestServer::start_in_temp_dir(on_db).await?;
    let b = TestServer::start_in_temp_dir(on_db).await?;
    assert_ne!(a.data_dir, b.data_dir);
    // A token from one replica is accepted by the other.
    let token = a.admin().await?;
    let tenant = b.create_tenant(&token, "Shared").await?;
    let d = a
        .gql(&token, "{ tenants { edges { node { id } } } }", json!({}))
        .await?;
    assert_eq!(d["tenants"]["edges"][0]["node"]["id"], tenant.as_str());
    // A SECRET value sealed by one replica opens on the other.
    let sealed = a.app().secrets.seal("password", "hunter2")?;
    assert_eq!(b.app().secrets.open("password", &sealed)?, "hunter2");
    // The keys are in the database, not in a data dir.
    for s in [&a, &b] {
        assert!(!s.data_dir.join("secret.key").exists());
        assert!(!s.data_dir.join("jwt-secret").exists());
    }
    // --jwt-secret still wins: a replica given another key refuses the shared one's tokens.
    let c = TestServer::start_in_temp_dir(|dir| {
        let mut c = on_db(dir);
        c.jwt_secret = Some("x".repeat(40));
        c
    })
    .await?;
    let code = c
        .gql_err(
            Some(&token),
            "{ tenants { edges { node { id } } } }",
            json!({}),
        )
        .await?;
    assert_eq!(code, "UNAUTHENTICATED");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_once_the_database_is_gone() -> anyhow::Result<()> {
    let mut s = TestServer::start_on_cluster(test_config).await?;
    let health = |s: &TestServer| {
        let (http, url) = (s.http.clone(), format!("{}/healthz", s.url));
        async move {
            let r = http.get(url).send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.text().await?))
        }
    };
    assert_eq!(health(&s).await?, (200, "ok".to_string()));
    let ready = s.http.get(format!("{}/readyz", s.url)).send().await?;
    assert_eq!(ready.status().as_u16(), 200, "start-up work is done");
    // The database is dropped under the running server (its connections are terminated).
    let cluster = s.cluster.take().expect("a scratch cluster");
    drop(Arc::try_unwrap(cluster).ok().expect("held once"));
    let (status, body) = health(&s).await?;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(body["code"], "STORE_UNAVAILABLE", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable")
    );
    let ready = s.http.get(format!("{}/readyz", s.url)).send().await?;
    assert_eq!(ready.status().as_u16(), 503, "not ready without a database");
    // The embedded default answers as before.
    let sled = TestServer::start_embedded(test_config).await?;
    assert_eq!(health(&sled).await?, (200, "ok".to_string()));
    Ok(())
}

/// A SECRET parameter sealed by the replica that stored the deployment is opened for the agent
/// by the replica the agent polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_stored_through_one_replica_reaches_an_agent_of_another() -> anyhow::Result<()> {
    const SECRET: &str = "Tr0ub4dor-r3plica-7Kz";
    let cluster = ScratchCluster::create().await?;
    let on_db = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        cluster.apply(&mut c);
        c
    };
    let a = TestServer::start_in_temp_dir(on_db).await?;
    let b = TestServer::start_in_temp_dir(on_db).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&b.url, &key, "replica-pc").await?;
    let computer = b.computer_id(&admin, "replica-pc").await?;
    b.wait_online(&admin, &computer).await?;

    let work = tempfile::tempdir()?;
    let got = work.path().join("got");
    let marker = work.path().join("set.done");
    let sh = |body: String| json!({"language": "SHELL", "body": body});
    let task = a
        .gql(
            &admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {
                "name": "Local admin password",
                "tenantId": tenant,
                "testScript": sh(format!("test -f '{}'", marker.display())),
                "setScript": sh(format!(
                    "printf '%s' \"$UPKEEP_PARAM_PASSWORD\" > '{}'; touch '{}'",
                    got.display(),
                    marker.display()
                )),
                "parameters": [{"name": "password", "type": "SECRET", "required": true}],
            }}),
        )
        .await?;
    let task = task["createMaintenanceTask"]["id"].as_str().unwrap_or("");
    a.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task, "parameters": {"password": SECRET}}))
        .await?;
    let id = b.start_session(&admin, &computer, json!({})).await?;
    let done = b.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(std::fs::read_to_string(&got)?, SECRET);
    Ok(())
}

/// Installer files with `--files-dir` shared by replicas: uploaded through one replica, named by
/// software written through another and fetched by an agent of that other. Without a shared
/// directory the second replica does not have the file and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_files_dir_serve_each_others_uploads() -> anyhow::Result<()> {
    use sha2::Digest;
    let shared = tempfile::tempdir()?;
    let with_shared = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        c.files_dir = Some(shared.path().to_path_buf());
        c
    };
    let a = TestServer::start_on_cluster(with_shared).await?;
    let b = a.start_replica(with_shared).await?;
    let lone = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Files").await?;

    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = a
        .http
        .post(format!("{}/api/v1/files", a.url))
        .bearer_auth(&admin)
        .body(bytes.clone())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);

    let work = tempfile::tempdir()?;
    let got = work.path().join("got");
    let input = |name: &str| {
        json!({"name": name, "tenantId": tenant,
            "detectionScript": {"language": "SHELL", "body": format!("cat '{}' 2>/dev/null; exit 0", work.path().join("v").display())},
            "versions": [{"version": "1.0", "installer": {"sha256": sha},
                "installScript": {"language": "SHELL", "body": format!(
                    "sha256sum \"$UPKEEP_INSTALLER_FILE\" | cut -d' ' -f1 > '{}'; echo 1.0 > '{}'",
                    got.display(), work.path().join("v").display())}}]})
    };
    let q = "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }";
    // A replica with a files dir of its own has not seen the upload.
    assert_eq!(
        lone.gql_err(Some(&admin), q, json!({"i": input("lone")}))
            .await?,
        "BAD_USER_INPUT"
    );
    let sw = b.create_software(&admin, input("shared")).await?;
    b.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_ANY"})).await?;
    let key = b.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&b.url, &key, "files-pc").await?;
    let computer = b.computer_id(&admin, "files-pc").await?;
    b.wait_online(&admin, &computer).await?;
    let id = b.start_session(&admin, &computer, json!({})).await?;
    let done = b.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(std::fs::read_to_string(&got)?.trim(), sha);
    Ok(())
}
