//! The task model (issue 18, point 5): typed parameters checked when deployments are written,
//! defaults in the scripts' environment, SECRET values that reach the script and nothing else
//! (API answers, audit trail, stored output, the server's log, the store's bytes on disk), the
//! get script's value on the action, and MONITOR tasks that only report.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn sh(body: &str) -> Value {
    json!({"language": "SHELL", "body": body})
}

/// `createMaintenanceTask(input)`; returns the whole answer (data or errors).
async fn create_task(s: &TestServer, token: &str, input: Value) -> Result<Value> {
    s.gql_raw(
        Some(token),
        "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id parameters { name type required default options description } getScript { body } } }",
        json!({"i": input}),
    )
    .await
}

/// The first error's code and message of an answer that must have failed.
fn error_of(body: &Value) -> Result<(String, String)> {
    let e = body["errors"]
        .get(0)
        .with_context(|| format!("expected an error, got {body}"))?;
    Ok((
        e["extensions"]["code"].as_str().unwrap_or("").to_string(),
        e["message"].as_str().unwrap_or("").to_string(),
    ))
}

const ACTIONS: &str =
    "query($id: ID!) { maintenanceSession(id: $id) { status statusReason compliance
    actions { status compliance kind reason resultMessage currentValue output { stdout stderr } }
    logs { message } } }";

async fn actions(s: &TestServer, token: &str, session: &str) -> Result<Value> {
    Ok(s.gql(token, ACTIONS, json!({"id": session})).await?["maintenanceSession"].clone())
}

#[tokio::test]
async fn typed_parameters_are_checked_and_defaults_reach_the_script() -> Result<()> {
    let f = Fixture::start("params-pc").await?;
    let (s, admin) = (&f.s, f.admin.as_str());
    let out = f.dir.path().join("env.txt");
    let marker = f.dir.path().join("set.done");
    let o = out.display();
    let m = marker.display();

    // Definitions are checked when the task is written.
    for (bad, word) in [
        (json!([{"name": "level", "type": "SELECT"}]), "options"),
        (
            json!([{"name": "a", "type": "STRING"}, {"name": "A", "type": "NUMBER"}]),
            "UPKEEP_PARAM_A",
        ),
        (
            json!([{"name": "n", "type": "NUMBER", "default": "ten"}]),
            "'n'",
        ),
        (
            json!([{"name": "pw", "type": "SECRET", "default": "hunter22"}]),
            "clear",
        ),
        (json!([{"name": "bad-name", "type": "STRING"}]), "bad-name"),
    ] {
        let r = create_task(s, admin, json!({"name": "T", "tenantId": f.tenant, "testScript": sh("exit 0"), "parameters": bad})).await?;
        let (code, message) = error_of(&r)?;
        assert_eq!(code, "BAD_USER_INPUT", "{r}");
        assert!(message.contains(word), "{word}: {message}");
    }

    let r = create_task(
        s,
        admin,
        json!({
            "name": "Time zone",
            "tenantId": f.tenant,
            "testScript": sh(&format!("test -f '{m}'")),
            "setScript": sh(&format!(
                "printf '%s|%s|%s|%s' \"$UPKEEP_PARAM_ZONE\" \"$UPKEEP_PARAM_LEVEL\" \"$UPKEEP_PARAM_COUNT\" \"$UPKEEP_PARAM_ENABLED\" > '{o}'; touch '{m}'"
            )),
            "parameters": [
                {"name": "zone", "type": "STRING", "required": true, "description": "IANA zone"},
                {"name": "level", "type": "SELECT", "options": ["low", "high"], "default": "low"},
                {"name": "count", "type": "NUMBER", "default": "3"},
                {"name": "enabled", "type": "BOOLEAN", "default": "true", "required": true},
            ],
        }),
    )
    .await?;
    let task = &r["data"]["createMaintenanceTask"];
    let task_id = task["id"]
        .as_str()
        .with_context(|| format!("{r}"))?
        .to_string();
    assert_eq!(task["parameters"][1]["type"], "SELECT", "{task}");
    assert_eq!(task["parameters"][1]["options"], json!(["low", "high"]));
    assert_eq!(task["parameters"][0]["description"], "IANA zone");

    let deploy = |params: Value| json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task_id, "parameters": params});
    let create =
        "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id parameters } }";
    // A missing required parameter is refused, naming it; so are wrong types and unknown names.
    for (params, word) in [
        (json!({}), "'zone'"),
        (json!({"level": "high"}), "'zone'"),
        (json!({"zone": "UTC", "count": "many"}), "'count'"),
        (json!({"zone": "UTC", "enabled": "yes"}), "'enabled'"),
        (json!({"zone": "UTC", "level": "mid"}), "'level'"),
        (json!({"zone": "UTC", "nope": "x"}), "'nope'"),
    ] {
        let r = s
            .gql_raw(Some(admin), create, json!({"i": deploy(params.clone())}))
            .await?;
        let (code, message) = error_of(&r)?;
        assert_eq!(code, "BAD_USER_INPUT", "{params}: {r}");
        assert!(message.contains(word), "{params}: {message}");
    }
    let d = s
        .gql(
            admin,
            create,
            json!({"i": deploy(json!({"zone": "Europe/Berlin", "enabled": true}))}),
        )
        .await?;
    let dep = d["createDeployment"]["id"]
        .as_str()
        .context("deployment")?
        .to_string();
    assert_eq!(
        d["createDeployment"]["parameters"],
        json!({"zone": "Europe/Berlin", "enabled": "true"})
    );

    // Defaults fill in when the session freezes its plan.
    let session = s.start_session(admin, &f.computer, json!({})).await?;
    let done = s
        .wait_status(admin, &session, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(std::fs::read_to_string(&out)?, "Europe/Berlin|low|3|true");

    // The task changes after the deployment was written: a new required parameter without a
    // default. The next session fails that item, naming the parameter, and runs nothing of it.
    s.gql(
        admin,
        "mutation($id: ID!, $p: [ParameterDefinitionInput!]) { updateMaintenanceTask(id: $id, input: {parameters: $p}) { id } }",
        json!({"id": task_id, "p": [
            {"name": "zone", "type": "STRING", "required": true},
            {"name": "extra", "type": "STRING", "required": true},
        ]}),
    )
    .await?;
    std::fs::remove_file(&marker)?;
    std::fs::remove_file(&out)?;
    let session = s.start_session(admin, &f.computer, json!({})).await?;
    let done = s
        .wait_status(admin, &session, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let a = actions(s, admin, &session).await?;
    let action = &a["actions"][0];
    assert_eq!(action["status"], "FAILED", "{a:#}");
    assert!(
        action["resultMessage"]
            .as_str()
            .unwrap_or("")
            .contains("'extra'"),
        "{a:#}"
    );
    assert!(!out.exists() && !marker.exists(), "nothing of the item ran");

    // Updating the deployment is checked against the new definitions.
    let update = "mutation($id: ID!, $p: JSON) { updateDeployment(id: $id, input: {parameters: $p}) { parameters } }";
    let r = s
        .gql_raw(
            Some(admin),
            update,
            json!({"id": dep, "p": {"zone": "UTC"}}),
        )
        .await?;
    let (code, message) = error_of(&r)?;
    assert_eq!(
        (code.as_str(), message.contains("'extra'")),
        ("BAD_USER_INPUT", true),
        "{r}"
    );
    let ok = s
        .gql(
            admin,
            update,
            json!({"id": dep, "p": {"zone": "UTC", "extra": "x"}}),
        )
        .await?;
    assert_eq!(
        ok["updateDeployment"]["parameters"],
        json!({"zone": "UTC", "extra": "x"})
    );
    Ok(())
}

#[tokio::test]
async fn the_get_script_value_shows_and_monitor_never_runs_the_set_script() -> Result<()> {
    let f = Fixture::start("monitor-pc").await?;
    let (s, admin) = (&f.s, f.admin.as_str());
    let marker = f.dir.path().join("set.ran");
    let r = create_task(
        s,
        admin,
        json!({
            "name": "Screen lock",
            "tenantId": f.tenant,
            "testScript": sh("exit 1"),
            "setScript": sh(&format!("touch '{}'", marker.display())),
            "getScript": sh("echo '  lock after 900 s  '; echo second line"),
        }),
    )
    .await?;
    let task = r["data"]["createMaintenanceTask"]["id"]
        .as_str()
        .with_context(|| format!("{r}"))?;
    assert_eq!(
        r["data"]["createMaintenanceTask"]["getScript"]["body"],
        "echo '  lock after 900 s  '; echo second line"
    );
    s.create_deployment(
        admin,
        json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task, "taskMode": "MONITOR"}),
    )
    .await?;
    let session = s.start_session(admin, &f.computer, json!({})).await?;
    let done = s
        .wait_status(admin, &session, &["PASSED", "FAILED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let a = actions(s, admin, &session).await?;
    let action = &a["actions"][0];
    assert_eq!(
        (&action["status"], &action["compliance"], &action["kind"]),
        (
            &json!("SUCCEEDED"),
            &json!("NON_COMPLIANT"),
            &json!("NO_ACTION")
        ),
        "{a:#}"
    );
    assert_eq!(action["currentValue"], "lock after 900 s", "{a:#}");
    assert!(
        action["reason"]
            .as_str()
            .unwrap_or("")
            .contains("current value: lock after 900 s"),
        "{a:#}"
    );
    assert_eq!(action["resultMessage"], "monitor: not compliant");
    // A monitor is an observation: it does not make the session non-compliant.
    assert_eq!(a["compliance"], "COMPLIANT", "{a:#}");
    assert!(!marker.exists(), "a MONITOR task never runs its set script");
    Ok(())
}

/// The server as its own process, its log (stdout and stderr, at debug level) in a file.
struct ServerProcess {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl ServerProcess {
    async fn start(data: &Path, log: &Path, store: Vec<String>) -> Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin("upkeep-server-under-test"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args([
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .args(store)
            .env("RUST_LOG", "debug")
            .env("UPKEEP_OFFLINE_AFTER_SECONDS", "3")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        upkeep_testkit::wait_healthy(&http_client()?, &url).await?;
        Ok(ServerProcess {
            child,
            url,
            log: log.to_path_buf(),
        })
    }

    /// SIGTERM, then waits for the process to end (the server flushes and stops).
    fn stop(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_secret_reaches_the_script_and_nowhere_else() -> Result<()> {
    const SECRET: &str = "Tr0ub4dor-s3cr3t-9Xq";
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    let cluster = if_cluster_mode().await?;
    let mut server = ServerProcess::start(
        &data,
        &tmp.path().join("server.log"),
        cluster_args(cluster.as_ref()),
    )
    .await?;
    let http = http_client()?;
    let url = server.url.clone();
    let gql_raw = |token: Option<String>, q: &'static str, v: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move { upkeep_testkit::gql_raw(&http, &url, token.as_deref(), q, v).await }
    };
    let login = gql_raw(
        None,
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
        json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
    )
    .await?;
    let admin = login["data"]["login"]["token"]
        .as_str()
        .context("login")?
        .to_string();
    let gql = |q: &'static str, v: Value| {
        let call = gql_raw(Some(admin.clone()), q, v);
        async move {
            let body = call.await?;
            ensure!(body.get("errors").is_none(), "GraphQL errors: {body}");
            Ok::<Value, anyhow::Error>(body["data"].clone())
        }
    };
    // Every answer the test receives, to search for the secret at the end.
    let mut answers: Vec<Value> = Vec::new();

    let t = gql(
        "mutation { createTenant(input: {name: \"Acme\", timeZone: \"UTC\"}) { id } }",
        json!({}),
    )
    .await?;
    let tenant = t["createTenant"]["id"]
        .as_str()
        .context("tenant")?
        .to_string();
    let k = gql(
        "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { key } }",
        json!({"t": tenant}),
    )
    .await?;
    let key = k["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    let _agent = TestAgent::start(&server.url, &key, "secret-pc").await?;
    let computer = wait_for("the computer", T, || async {
        let d = gql("{ computers { edges { node { id online } } } }", json!({})).await?;
        Ok(d["computers"]["edges"][0]["node"]
            .as_object()
            .filter(|n| n["online"] == true)
            .and_then(|n| n["id"].as_str().map(String::from)))
    })
    .await?;

    let got = work.join("got");
    let marker = work.join("set.done");
    let task = gql(
        "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id parameters { name type } } }",
        json!({"i": {
            "name": "Local admin password",
            "tenantId": tenant,
            "testScript": sh(&format!("test -f '{}'", marker.display())),
            "setScript": sh(&format!(
                "echo \"setting the password to $UPKEEP_PARAM_PASSWORD\"; echo \"not $UPKEEP_PARAM_PASSWORD\" >&2; printf '%s' \"$UPKEEP_PARAM_PASSWORD\" > '{}'; touch '{}'",
                got.display(),
                marker.display()
            )),
            "getScript": sh("echo \"$UPKEEP_PARAM_PASSWORD\""),
            "parameters": [{"name": "password", "type": "SECRET", "required": true}],
        }}),
    )
    .await?;
    let task_id = task["createMaintenanceTask"]["id"]
        .as_str()
        .context("task")?
        .to_string();
    answers.push(task);

    let create =
        "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id parameters } }";
    let input = |pw: &str| json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task_id, "parameters": {"password": pw}}});
    for refused in ["abc", "********"] {
        let r = gql_raw(Some(admin.clone()), create, input(refused)).await?;
        let (code, message) = error_of(&r)?;
        assert_eq!(code, "BAD_USER_INPUT", "{r}");
        assert!(message.contains("'password'"), "{message}");
    }
    let d = gql(create, input(SECRET)).await?;
    assert_eq!(
        d["createDeployment"]["parameters"],
        json!({"password": "********"}),
        "{d}"
    );
    let dep = d["createDeployment"]["id"]
        .as_str()
        .context("deployment")?
        .to_string();
    answers.push(d);

    let run = |label: &'static str| {
        let (gql_session, computer) = (gql, computer.clone());
        async move {
            let st = gql_session(
                "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c]}) { id } }",
                json!({"c": computer}),
            )
            .await?;
            let id = st["startMaintenanceSession"][0]["id"]
                .as_str()
                .context("session")?
                .to_string();
            wait_for(label, T, || async {
                let s = gql_session(ACTIONS, json!({"id": id})).await?;
                let status = s["maintenanceSession"]["status"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Ok(["PASSED", "FAILED"].contains(&status.as_str()).then_some(s))
            })
            .await
        }
    };
    let first = run("the first session").await?;
    let session = &first["maintenanceSession"];
    assert_eq!(session["status"], "PASSED", "{first:#}");
    // The script got the secret…
    assert_eq!(std::fs::read_to_string(&got)?, SECRET);
    // …and what it printed of it is stored masked.
    let action = &session["actions"][0];
    assert_eq!(
        action["output"]["stdout"], "setting the password to ••••••\n",
        "{first:#}"
    );
    assert_eq!(action["output"]["stderr"], "not ••••••\n", "{first:#}");
    assert_eq!(action["currentValue"], "••••••", "{first:#}");
    answers.push(first.clone());

    // An update that does not resend the secret (or sends the mask back) keeps it.
    let update = "mutation($id: ID!, $p: JSON) { updateDeployment(id: $id, input: {parameters: $p, position: 2}) { parameters } }";
    for p in [json!({"password": "********"}), json!({})] {
        let u = gql(update, json!({"id": dep, "p": p})).await?;
        assert_eq!(
            u["updateDeployment"]["parameters"],
            json!({"password": "********"})
        );
        answers.push(u);
    }
    std::fs::remove_file(&got)?;
    std::fs::remove_file(&marker)?;
    let second = run("the second session").await?;
    assert_eq!(
        second["maintenanceSession"]["status"], "PASSED",
        "{second:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&got)?,
        SECRET,
        "the kept secret still reaches the script"
    );
    answers.push(second);

    answers.push(
        gql(
            "query($id: ID!) { deployment(id: $id) { parameters } }",
            json!({"id": dep}),
        )
        .await?,
    );
    answers.push(
        gql(
            "query($t: ID) { deployments(tenantId: $t) { edges { node { id parameters maintenanceTask { parameters { name type } } } } } }",
            json!({"t": tenant}),
        )
        .await?,
    );
    let audit = gql(
        "{ auditEvents(first: 100) { edges { node { action targetType summary } } } }",
        json!({}),
    )
    .await?;
    let summaries = audit.to_string();
    assert!(
        summaries.contains("updateDeployment"),
        "the audit trail has the updates: {audit}"
    );
    answers.push(audit);
    answers.push(
        gql(
            "query($c: ID!) { computer(id: $c) { deploymentResolution { winner { parameters } } } }",
            json!({"c": computer}),
        )
        .await?,
    );
    for a in &answers {
        assert!(
            !a.to_string().contains(SECRET),
            "the secret is in an API answer: {a}"
        );
    }

    // Nothing the server logged, nor anything it stored, holds it.
    server.stop()?;
    let log = std::fs::read_to_string(&server.log)?;
    assert!(
        log.contains("jobs handed out"),
        "the log was captured (debug level)"
    );
    assert!(!log.contains(SECRET), "the secret is in the server's log");
    if let Some(c) = &cluster {
        // The store is the database: every record, and the generated keys.
        let store = upkeep_store::open_postgres(c.database.url()).await?;
        let snapshot = store.snapshot().await?;
        ensure!(snapshot.len() > 3, "the store's spaces: {}", snapshot.len());
        for (space, entries) in &snapshot {
            for (k, v) in entries {
                assert!(
                    !v.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
                        && !k.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "the secret is in space {space} in the clear"
                );
            }
        }
    }
    let files = files_under(&data)?;
    ensure!(
        cluster.is_some() || files.len() > 3,
        "the store's files: {files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file)?;
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in {} in the clear",
            file.display()
        );
    }
    if cluster.is_none() {
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::metadata(data.join("secret.key"))?;
        assert_eq!((key.len(), key.permissions().mode() & 0o777), (32, 0o600));
    }
    Ok(())
}
