//! In the field: what the script said (stored, streamed, masked), parameter names that differ
//! only in case, and webhook deliveries of a session in sequence order.

use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "hunter2-Secret";
const MASK: &str = "••••••";

async fn fixture() -> anyhow::Result<Fixture> {
    Fixture::start("ws-out").await
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
    f.s.create_deployment(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_log_lines_while_the_script_runs() -> anyhow::Result<()> {
    let f = fixture().await?;
    let flag = f.dir.path().join("go-on");
    // The script prints, then waits until the test has seen the line live.
    deploy_software(
        &f,
        "slow",
        &format!(
            "echo \"phase one with $UPKEEP_PARAM_TOKEN\"\necho 'still working' >&2\nwhile [ ! -f '{}' ]; do sleep 0.1; done\necho 'phase two'\necho 1.0 > \"$F\"",
            flag.display()
        ),
        json!({"token": SECRET}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let q = "subscription($s: ID, $n: Int) { maintenanceSessionUpdates(sessionId: $s, afterSequence: $n) { sequence status logLine } }";
    let mut sub = Subscription::start(
        &f.s.url,
        "graphql-transport-ws",
        &f.admin,
        q,
        json!({"s": id, "n": 0}),
    )
    .await?;
    let mut lines = Vec::new();
    let want = [
        format!("slow [stdout] phase one with {MASK}"),
        "slow [stderr] still working".to_string(),
    ];
    while !want.iter().all(|w| lines.contains(w)) {
        let d = sub.next_data(T).await?;
        let e = &d["maintenanceSessionUpdates"];
        if let Some(l) = e["logLine"].as_str() {
            lines.push(l.to_string());
        }
    }
    // Seen while the script still waits for the flag: streamed, not taken from the result.
    assert!(!flag.exists());
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(s["status"], "EXECUTING", "{s:#}");
    assert_eq!(s["actions"][0]["status"], "RUNNING");
    std::fs::write(&flag, "")?;
    let s = f.s.wait_status(&f.admin, &id, &["PASSED"], T).await?;
    let logs: Vec<&str> = s["logs"]
        .as_array()
        .map(|l| l.iter().filter_map(|m| m["message"].as_str()).collect())
        .unwrap_or_default();
    assert!(logs.contains(&"slow [stdout] phase two"), "{logs:#?}");
    assert!(!s.to_string().contains(SECRET));
    let out = &outputs(&f, &id).await?[0]["output"];
    assert_eq!(out["stdout"], format!("phase one with {MASK}\nphase two\n"));
    Ok(())
}

/// Polls as a raw agent until a job comes; returns it.
async fn raw_job(s: &TestServer, token: &str) -> anyhow::Result<Value> {
    wait_for("a job", T, || async {
        let r = s
            .http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(token)
            .json(&json!({"protocolVersion": 1, "waitSeconds": 0}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "poll answered {}", r.status());
        let r: Value = r.json().await?;
        Ok(r["jobs"].get(0).cloned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_chunks_are_authenticated_bounded_and_idempotent_per_seq() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (token, computer) = s.enroll_raw(&key, "raw-1", "machine-raw-1").await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&tenant), "tool", dir.path(), &["1.0"]).await?;
    s.create_deployment(
        &admin,
        json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw,
               "desiredState": "INSTALLED_LATEST", "parameters": {"password": SECRET}}),
    )
    .await?;
    let id = s.start_session(&admin, &computer, json!({})).await?;
    let probe = raw_job(&s, &token).await?;
    let probe_id = probe["id"].as_str().unwrap_or_default().to_string();
    let http = s.http.clone();
    let base = s.url.clone();
    let post = |path: String, bearer: Option<&str>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        async move {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await?;
            anyhow::Ok((status, body))
        }
    };
    // A probe does not stream.
    let chunk = |seq: u64, text: &str| json!({"protocolVersion": 1, "seq": seq, "stream": "stdout", "chunk": text});
    let (st, r) = post(
        format!("/agent/v1/jobs/{probe_id}/output"),
        Some(&token),
        chunk(1, "x"),
    )
    .await?;
    assert_eq!((st, r["accepted"].clone()), (200, json!(false)), "{r}");
    let results: Vec<Value> = probe["probes"]
        .as_array()
        .map(|p| p.iter().map(|p| json!({"probeId": p["probeId"], "outcome": {"exitCode": 0, "stdout": "", "stderr": "", "durationMs": 1}})).collect())
        .unwrap_or_default();
    let (st, _) = post(
        format!("/agent/v1/jobs/{probe_id}/result"),
        Some(&token),
        json!({"protocolVersion": 1, "kind": "probe", "results": results}),
    )
    .await?;
    assert_eq!(st, 200);
    let step = raw_job(&s, &token).await?;
    assert_eq!(step["kind"], "step", "{step:#}");
    let job = step["id"].as_str().unwrap_or_default().to_string();
    let path = format!("/agent/v1/jobs/{job}/output");

    // The secret is split across two chunks; seq 2 is sent twice.
    let (half1, half2) = SECRET.split_at(5);
    for (seq, text, accepted) in [
        (1, format!("unpacking with {half1}"), true),
        (2, format!("{half2} done\n"), true),
        (2, format!("{half2} done\n"), false),
        (1, "old".to_string(), false),
    ] {
        let (st, r) = post(path.clone(), Some(&token), chunk(seq, &text)).await?;
        assert_eq!(
            (st, r["accepted"].clone()),
            (200, json!(accepted)),
            "seq {seq}: {r}"
        );
    }
    // Authenticated like results, bounded, and only for this computer's jobs.
    let (st, r) = post(path.clone(), None, chunk(3, "x")).await?;
    assert_eq!((st, r["code"].clone()), (401, json!("UNAUTHENTICATED")));
    let (other, _) = s.enroll_raw(&key, "raw-2", "machine-raw-2").await?;
    let (st, _) = post(path.clone(), Some(&other), chunk(3, "x")).await?;
    assert_eq!(st, 404);
    let (st, r) = post(
        path.clone(),
        Some(&token),
        chunk(3, &"y".repeat(16 * 1024 + 1)),
    )
    .await?;
    assert_eq!((st, r["code"].clone()), (413, json!("PAYLOAD_TOO_LARGE")));
    let (st, _) = post(path.clone(), Some(&token), chunk(0, "x")).await?;
    assert_eq!(st, 422);
    let (st, r) = post(
        format!(
            "/agent/v1/jobs/{}/output",
            "0190f3d0-1111-7000-8000-000000000001"
        ),
        Some(&token),
        chunk(3, "x"),
    )
    .await?;
    assert_eq!((st, r["code"].clone()), (404, json!("NOT_FOUND")));
    // A runaway sender is throttled: 60 chunks at once are more than the burst of 20.
    let mut set = tokio::task::JoinSet::new();
    for seq in 10..70 {
        set.spawn(post(path.clone(), Some(&token), chunk(seq, "")));
    }
    let mut statuses = Vec::new();
    while let Some(r) = set.join_next().await {
        let (st, body) = r??;
        if st == 429 {
            assert_eq!(body["code"], "THROTTLED");
        }
        statuses.push(st);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    let session = s.session(&admin, &id).await?;
    let shown: Vec<&str> = session["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|m| m["message"].as_str())
                .filter(|m| m.contains("[stdout]"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        shown,
        vec![
            "tool [stdout] unpacking with ",
            &*format!("tool [stdout] {MASK} done")
        ],
        "{session:#}"
    );
    // Once the result is in, the job no longer streams.
    let (st, _) = post(
        format!("/agent/v1/jobs/{job}/result"),
        Some(&token),
        json!({"protocolVersion": 1, "kind": "step", "outcome": {"exitCode": 0, "stdout": "", "stderr": "", "durationMs": 1}}),
    )
    .await?;
    assert_eq!(st, 200);
    let (st, r) = post(path.clone(), Some(&token), chunk(100, "late")).await?;
    assert_eq!((st, r["accepted"].clone()), (200, json!(false)), "{r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_webhooks_go_out_in_sequence_order_even_across_a_retry() -> anyhow::Result<()> {
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
    f.s.create_deployment(&f.admin,
        json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    // The first delivery (SESSION_CREATED) is answered 500 and retried after its backoff.
    let rx = upkeep_tests::hook::HookReceiver::start(&[500]).await?;
    f.s.gql(
        &f.admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [SESSION_CREATED, SESSION_STATUS_CHANGED, SESSION_FINISHED]}) { webhook { id } } }",
        json!({"t": f.tenant, "u": rx.url()}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s = f.s.wait_status(&f.admin, &id, &["PASSED"], T).await?;
    let got = wait_for(
        "the finished event delivered",
        Duration::from_secs(60),
        || async {
            Ok(rx
                .all()
                .iter()
                .any(|r| r.answered == 200 && r.header("Upkeep-Event") == Some("SESSION_FINISHED"))
                .then(|| rx.all()))
        },
    )
    .await?;
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(&r.body))
        .collect::<Result<_, _>>()?;
    let events: Vec<(&str, u16, i64)> = got
        .iter()
        .zip(&bodies)
        .map(|(r, b)| {
            (
                b["event"].as_str().unwrap_or_default(),
                r.answered,
                b["data"]["sequence"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    // The failed first delivery is retried before anything later of the session goes out.
    assert_eq!(events[0].0, "SESSION_CREATED", "{events:?}");
    assert_eq!(events[0].1, 500);
    assert_eq!(bodies[1]["id"], bodies[0]["id"], "{events:?}");
    assert_eq!(events[1].1, 200);
    // Every delivery carries its session event's sequence, in order.
    let seqs: Vec<i64> = events.iter().skip(1).map(|e| e.2).collect();
    assert!(seqs.iter().all(|q| *q >= 1), "{events:?}");
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{events:?}");
    // The finished event's sequence is the one of the log line announcing PASSED.
    let finished = events
        .iter()
        .find(|e| e.0 == "SESSION_FINISHED")
        .map(|e| e.2);
    let passed_line = s["logs"]
        .as_array()
        .and_then(|l| {
            l.iter().find(|m| {
                m["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("PASSED"))
            })
        })
        .and_then(|m| m["sequence"].as_i64());
    assert_eq!(finished, passed_line, "{events:?} {s:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_and_shows_an_actions_output() -> anyhow::Result<()> {
    let f = fixture().await?;
    deploy_software(
        &f,
        "agentx",
        "echo \"registered with $UPKEEP_PARAM_KEY\"\necho 1.0 > \"$F\"",
        json!({"key": SECRET}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    f.s.wait_status(&f.admin, &id, &["PASSED"], T).await?;
    let html =
        f.s.http
            .get(format!("{}/console", f.s.url))
            .send()
            .await?
            .text()
            .await?;
    // The console's own session query, run as the console runs it.
    let start = html.find("SESSION: `").map(|i| i + "SESSION: `".len());
    let query = start
        .and_then(|s| html[s..].find('`').map(|e| &html[s..s + e]))
        .unwrap_or_default();
    assert!(
        query.contains("output { stdout stderr exitCode truncated }"),
        "{query}"
    );
    let d = f.s.gql(&f.admin, query, json!({"id": id})).await?;
    let out = &d["maintenanceSession"]["actions"][0]["output"];
    assert_eq!(out["stdout"], format!("registered with {MASK}\n"), "{d:#}");
    // And renders it: a collapsible block per action with stdout and stderr.
    assert!(html.contains("data-testid\": \"action-output\""));
    assert!(html.contains("data-testid\": \"action-stdout\""));
    Ok(())
}

async fn log_lines(s: &TestServer, token: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let session = s.session(token, id).await?;
    Ok(session["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|m| m["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

async fn wait_line(s: &TestServer, token: &str, id: &str, line: &str) -> anyhow::Result<()> {
    wait_for(line, T, || async {
        let lines = log_lines(s, token, id).await?;
        Ok(lines.iter().any(|l| l == line).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_keeps_streaming_after_a_server_restart() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let (flag1, flag2) = (f.dir.path().join("one"), f.dir.path().join("two"));
    deploy_software(
        &f,
        "longjob",
        &format!(
            "echo 'before restart'\nwhile [ ! -f '{}' ]; do sleep 0.1; done\necho 'after restart'\nwhile [ ! -f '{}' ]; do sleep 0.1; done\necho 1.0 > \"$F\"",
            flag1.display(),
            flag2.display()
        ),
        json!({}),
    )
    .await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    wait_line(&f.s, &f.admin, &id, "longjob [stdout] before restart").await?;
    f.s.restart().await?;
    f.admin = f.s.admin().await?;
    std::fs::write(&flag1, "")?;
    // Streamed while the script still waits: not taken from the result.
    wait_line(&f.s, &f.admin, &id, "longjob [stdout] after restart").await?;
    assert!(!flag2.exists());
    std::fs::write(&flag2, "")?;
    f.s.wait_status(&f.admin, &id, &["PASSED"], T).await?;
    Ok(())
}
