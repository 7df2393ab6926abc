//! The agent protocol end to end: the real agent against the real server.

use serde_json::json;
use std::time::Duration;
use upkeep_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_restart_and_refused_keys() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let state = tempfile::tempdir()?;
    let mut a = TestAgent::start_in(&s.url, Some(&key), state.path(), "pc-1")?;
    let id = s.computer_id(&admin, "pc-1").await?;
    s.wait_online(&admin, &id).await?;
    let creds = std::fs::metadata(state.path().join("credentials.json"))?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        creds.permissions().mode() & 0o777,
        0o600,
        "credentials are private"
    );
    // Restart the agent: same state dir, no key needed, no second computer.
    a.stop().await;
    let _a = TestAgent::start_in(&s.url, None, state.path(), "pc-1")?;
    s.wait_online(&admin, &id).await?;
    // Re-enrolling the same machine (a re-install) finds the computer again.
    let other_state = tempfile::tempdir()?;
    let _b = TestAgent::start_in(&s.url, Some(&key), other_state.path(), "pc-1")?;
    wait_for("re-enrollment", Duration::from_secs(10), || async {
        Ok(other_state
            .path()
            .join("credentials.json")
            .exists()
            .then_some(()))
    })
    .await?;
    let n = s.gql(&admin, "query($t: ID) { computers(tenantId: $t) { totalCount edges { node { hostname os agentVersion } } } }", json!({"t": t})).await?;
    assert_eq!(n["computers"]["totalCount"], 1, "{n}");
    let enroll = |k: &str| {
        s.http.post(format!("{}/agent/v1/enroll", s.url)).json(&json!({"protocolVersion": 1, "enrollmentKey": k, "hostname": "x", "machineId": "m-x", "os": "Linux", "agentVersion": "0"})).send()
    };
    let wrong = enroll("uek_wrong").await?;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<serde_json::Value>().await?["code"],
        "UNAUTHENTICATED"
    );
    let keys = s
        .gql(
            &admin,
            "query($t: ID) { enrollmentKeys(tenantId: $t) { edges { node { id uses } } } }",
            json!({"t": t}),
        )
        .await?;
    assert_eq!(
        keys["enrollmentKeys"]["edges"][0]["node"]["uses"], 2,
        "a re-enrollment uses the key like a new computer (CONTRACT §11)"
    );
    let kid = keys["enrollmentKeys"]["edges"][0]["node"]["id"].clone();
    s.gql(
        &admin,
        "mutation($id: ID!) { revokeEnrollmentKey(id: $id) }",
        json!({"id": kid}),
    )
    .await?;
    assert_eq!(enroll(&key).await?.status(), 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unauthenticated_calls_get_json_4xx() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let (token, _) = s.enroll_raw(&key, "h", "m-1").await?;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let url = |p: &str| format!("{}{p}", s.url);
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (s.http.post(url("/agent/v1/poll")).body("{}"), 401),
        (
            s.http
                .post(url("/agent/v1/jobs/abc/result"))
                .body("garbage"),
            401,
        ),
        (
            s.http
                .post(url("/agent/v1/poll"))
                .bearer_auth(&token)
                .body("not json"),
            400,
        ),
        (
            s.http
                .post(url("/agent/v1/poll"))
                .bearer_auth(&token)
                .body("{\"protocolVersion\": 7}"),
            400,
        ),
        (
            s.http
                .post(url("/agent/v1/poll"))
                .bearer_auth(&token)
                .body("{\"protocolVersion\": 1, \"waitSeconds\": \"soon\"}"),
            422,
        ),
        (
            s.http
                .post(url("/agent/v1/jobs/nope/result"))
                .bearer_auth(&token)
                .body("{\"protocolVersion\": 1, \"kind\": \"failed\", \"error\": \"x\"}"),
            404,
        ),
        (s.http.post(url("/agent/v1/enroll")).body("[1,2"), 400),
    ];
    // Oversized bodies go over a raw connection: the server answers before reading them.
    for (bearer, want) in [
        (Some("nope"), 401),
        (Some(token.as_str()), 413),
        (None, 401),
    ] {
        let (status, body) =
            upkeep_tests::raw_post(s.addr, "/agent/v1/poll", bearer, big.clone()).await?;
        assert_eq!(status, want, "{body}");
        assert!(
            body["error"].is_string() && body["code"].is_string(),
            "{body}"
        );
    }
    for (req, want) in cases {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        assert_eq!(status, want, "{body}");
        assert!(
            body["error"].is_string() && body["code"].is_string(),
            "{body}"
        );
    }
    // Refused before its body was read, the connection is not offered for reuse (a client
    // reusing it would see its next request fail); a request read in full keeps it alive.
    let refused = s
        .http
        .post(url("/agent/v1/poll"))
        .bearer_auth("nope")
        .body("{\"protocolVersion\": 1}")
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["connection"], "close");
    let read = s
        .http
        .post(url("/agent/v1/poll"))
        .bearer_auth(&token)
        .body("{\"protocolVersion\": 1, \"waitSeconds\": 0}")
        .send()
        .await?;
    assert_eq!(read.status(), 200);
    assert!(read.headers().get("connection").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_do_not_touch_the_store_and_computers_go_offline() -> anyhow::Result<()> {
    let mut s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let (token, computer_id) = s.enroll_raw(&key, "h", "m-1").await?;
    let poll = || {
        s.http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(&token)
            .json(&json!({"protocolVersion": 1, "waitSeconds": 0}))
            .send()
    };
    poll().await?;
    let (w0, r0) = s.app().store.op_counts();
    for _ in 0..300 {
        let r = poll().await?;
        if r.status() == 429 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    let (w1, r1) = s.app().store.op_counts();
    // Background loops read a little every second; 300 polls reading or writing even once each
    // would show as hundreds. In cluster mode a poll reads its computer's queued jobs once (one
    // index read: a job whose note was lost is still handed out), and never writes.
    let poll_reads = if upkeep_testkit::cluster_mode() {
        300
    } else {
        0
    };
    assert!(
        w1 - w0 < 20 && r1 - r0 < 60 + poll_reads,
        "polls touched the store: {} writes, {} reads",
        w1 - w0,
        r1 - r0
    );
    assert!(s.metric("upkeep_agent_polls_total").await? >= 300.0);
    let id = computer_id;
    s.wait_online(&admin, &id).await?;
    // No more polls: offline after `offline_after_seconds` (3 s in tests).
    wait_for("computer offline", Duration::from_secs(15), || async {
        let d = s
            .gql(
                &admin,
                "query($id: ID!) { computer(id: $id) { online lastSeenAt } }",
                json!({"id": id}),
            )
            .await?;
        Ok((!d["computer"]["online"].as_bool().unwrap_or(true)).then_some(()))
    })
    .await?;
    // `lastSeenAt` is written back (at shutdown at the latest) and survives a restart.
    let seen = |s: &TestServer| {
        let (admin, id) = (admin.clone(), id.clone());
        let http = s.http.clone();
        let url = s.url.clone();
        async move {
            let r: serde_json::Value = http
                .post(format!("{url}/graphql"))
                .bearer_auth(&admin)
                .json(&json!({"query": "query($id: ID!) { computer(id: $id) { lastSeenAt } }", "variables": {"id": id}}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                r["data"]["computer"]["lastSeenAt"]
                    .as_str()
                    .map(String::from),
            )
        }
    };
    let before = seen(&s).await?.expect("lastSeenAt after polls");
    s.restart().await?;
    let after = seen(&s).await?.expect("lastSeenAt after a restart");
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_millis());
    assert_eq!(parse(&before)?, parse(&after)?, "{before} vs {after}");
    Ok(())
}

/// Start-up loads agent tokens from the store's token claims: after a restart every current
/// token polls, a token replaced by a re-enrollment does not, and the table holds one token
/// per computer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_agent_tokens_and_only_those_survive_a_restart() -> anyhow::Result<()> {
    let mut s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let (first, _) = s.enroll_raw(&key, "h1", "m-1").await?;
    let (second, _) = s.enroll_raw(&key, "h2", "m-2").await?;
    let (replaced, _) = s.enroll_raw(&key, "h3", "m-3").await?;
    // A re-install of m-3: a new token; the old one is released.
    let (third, _) = s.enroll_raw(&key, "h3", "m-3").await?;
    s.restart().await?;
    let poll = |token: &str, wait: u32| {
        s.http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(token)
            .json(&json!({"protocolVersion": 1, "waitSeconds": wait}))
            .send()
    };
    for token in [&first, &second, &third] {
        let r = poll(token, 0).await?;
        assert_eq!(r.status(), 200, "{}", r.text().await?);
    }
    let r = poll(&replaced, 0).await?;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await?["code"],
        "UNAUTHENTICATED"
    );
    assert_eq!(s.metric("upkeep_agent_tokens").await?, 3.0);
    // A poll that waits (its computer had only polls that did not) is held and answered.
    let r = poll(&first, 1).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await?["jobs"], json!([]));
    Ok(())
}

/// A job whose agent vanishes: a probe job is offered again (here to the agent when it comes
/// back); a step job is failed when its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_rule_for_vanished_agents() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| {
        c.job_timeout_seconds = Some(3);
        c.lease_slack_seconds = 2;
    })
    .await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("install-started");
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "slow", "tenantId": t, "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("touch '{}'; sleep 30", marker.display())}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let state = tempfile::tempdir()?;
    let mut a = TestAgent::start_in(&s.url, Some(&key), state.path(), "pc")?;
    let c = s.computer_id(&admin, "pc").await?;
    s.wait_online(&admin, &c).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    wait_for("install to start", Duration::from_secs(20), || async {
        Ok(marker.exists().then_some(()))
    })
    .await?;
    // The agent vanishes mid-step (no result, no goodbye).
    if let Some(task) = a.task.take() {
        task.abort();
    }
    // The step's lease (3 s script limit + 2 s slack) runs out: the step is failed, not rerun.
    wait_for("the lease to run out", Duration::from_secs(30), || async {
        let x = s.session(&admin, &id).await?;
        Ok(x["actions"][0]["resultMessage"]
            .as_str()
            .is_some_and(|m| m.contains("did not report back"))
            .then_some(()))
    })
    .await?;
    a.stop().await;
    // The agent comes back: the verification probe, still queued, is offered to it.
    let _back = TestAgent::start_in(&s.url, None, state.path(), "pc")?;
    let done = s
        .wait_status(&admin, &id, &["FAILED", "PASSED"], Duration::from_secs(30))
        .await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert_eq!(done["actions"][0]["status"], "FAILED");
    Ok(())
}

/// The server goes down while a script runs; the agent keeps the result and delivers it once
/// the server is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_survives_a_server_outage() -> anyhow::Result<()> {
    let mut s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let dir = tempfile::tempdir()?;
    let started = dir.path().join("started");
    let count = dir.path().join("count");
    let state = dir.path().join("state");
    let body = format!(
        "touch '{s}'; sleep 2; echo ran >> '{c}'; echo 2.0 > '{v}'",
        s = started.display(),
        c = count.display(),
        v = dir.path().join("v").display()
    );
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "app", "tenantId": t, "detectionScript": {"language": "SHELL", "body": format!("cat '{}' 2>/dev/null; exit 0", dir.path().join("v").display())},
                "versions": [{"version": "2.0", "installScript": {"language": "SHELL", "body": body}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let _a = TestAgent::start_in(&s.url, Some(&key), &state, "pc")?;
    let c = s.computer_id(&admin, "pc").await?;
    s.wait_online(&admin, &c).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    wait_for("the install to start", Duration::from_secs(20), || async {
        Ok(started.exists().then_some(()))
    })
    .await?;
    s.stop().await;
    wait_for("the install to finish", Duration::from_secs(20), || async {
        Ok(count.exists().then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.start_again().await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED"], Duration::from_secs(40))
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(
        std::fs::read_to_string(&count)?.lines().count(),
        1,
        "the step ran exactly once"
    );
    Ok(())
}

/// A job handed out in a poll answer the agent never read (the server died first) is offered
/// again once the server is back, not after its whole lease: the agent never runs a job id
/// twice, so offering it again is safe. On one node a restart re-queues every open job; in
/// cluster mode the store holds the job leased, and before the fix only `Queued` jobs were
/// claimed, so the session waited out the lease (seen in the random-SIGKILL test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_out_lost_with_the_server_is_offered_again_after_a_restart() -> anyhow::Result<()> {
    let mut s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Lost").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "app", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": "true"}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let (token, computer) = s.enroll_raw(&key, "lost-answer", "lost-answer").await?;
    let http = s.http.clone();
    let poll = |url: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let v: serde_json::Value = http
                .post(format!("{url}/agent/v1/poll"))
                .bearer_auth(&token)
                .json(&json!({"protocolVersion": 1, "waitSeconds": 2}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let ids: Vec<String> = v["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|j| j["id"].as_str().map(str::to_string))
                .collect();
            anyhow::Ok(ids)
        }
    };
    poll(s.url.clone()).await?; // online
    s.start_session(&admin, &computer, json!({})).await?;
    // The first hand-out: its answer is "lost" (read here, never run).
    let lost = wait_for("a job to be handed out", Duration::from_secs(20), || {
        let p = poll(s.url.clone());
        async move { Ok(p.await?.into_iter().next()) }
    })
    .await?;
    s.restart().await?;
    let again = wait_for(
        "the job to be offered again",
        Duration::from_secs(20),
        || {
            let p = poll(s.url.clone());
            async move { Ok(p.await?.into_iter().next()) }
        },
    )
    .await?;
    assert_eq!(again, lost, "the same job, offered again");
    Ok(())
}
