//! Security: what an attacker on the internet tries first. Query cost before work, WebSocket
//! credentials that end, roles that nest, no takeover by re-enrollment, nested fields that obey
//! tenant isolation.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use upkeep_tests::hook::HookReceiver;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(s: &TestServer) -> Result<Ws> {
    let url = format!("{}/graphql/ws", s.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// Reads until the server closes; returns its close code.
async fn close_code(ws: &mut Ws, within: Duration) -> Result<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("the server did not close the socket")?;
        match m {
            Some(Ok(Message::Close(Some(f)))) => return Ok(f.code.into()),
            Some(Ok(Message::Close(None))) | None => bail!("closed without a code"),
            Some(Err(e)) => bail!("socket error instead of a close frame: {e}"),
            Some(Ok(_)) => continue,
        }
    }
}

/// The next text message (skipping pings).
async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match tokio::time::timeout(T, ws.next()).await? {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "ping" {
                    continue;
                }
                return Ok(v);
            }
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            other => bail!("socket ended: {other:?}"),
        }
    }
}

async fn ws_init(s: &TestServer, credential: &str) -> Result<Ws> {
    let mut ws = ws_connect(s).await?;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {credential}")}}),
    )
    .await?;
    let ack = next_json(&mut ws).await?;
    anyhow::ensure!(ack["type"] == "connection_ack", "no ack: {ack}");
    Ok(ws)
}

/// A document whose fragments each spread the next one twice: 2^levels selections once
/// expanded, from a few KB.
fn fan_out(levels: usize) -> String {
    let mut q = String::from("query { ...F0 }");
    for i in 0..levels {
        q.push_str(&format!(
            " fragment F{i} on Query {{ __typename ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    q.push_str(&format!(" fragment F{levels} on Query {{ __typename }}"));
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_cost_is_measured_before_any_work() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    // 2^40 selections: a server that walks the spreads before measuring never answers. The
    // client gives up after 30 s, so the old server fails this test.
    let bomb = fan_out(40);
    assert!(bomb.len() < 4096);
    let client = reqwest::Client::builder().timeout(T).build()?;
    for token in [None, Some(admin.as_str())] {
        let mut req = client
            .post(format!("{}/graphql", s.url))
            .json(&json!({ "query": bomb }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let body: Value = req.send().await?.json().await?;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }
    // The same document over a WebSocket operation.
    let mut ws = ws_init(&s, &admin).await?;
    send(
        &mut ws,
        json!({"id": "b", "type": "subscribe", "payload": {"query": bomb}}),
    )
    .await?;
    let m = next_json(&mut ws).await?;
    assert_eq!(m["id"], "b", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{m}"
    );

    // A list field's size counts: 2 000 aliased `nextRuns(count: 1000)` are refused, one is
    // served.
    let t = s.create_tenant(&admin, "A").await?;
    let sched = s
        .gql(
            &admin,
            "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"n\", target: {kind: ALL_COMPUTERS}, cron: \"0 22 * * *\", timeZone: \"UTC\"}) { id } }",
            json!({"t": t}),
        )
        .await?;
    let sid = sched["createSchedule"]["id"].clone();
    let one = s
        .gql(
            &admin,
            "query { schedules(first: 1) { edges { node { id nextRuns(count: 1000) } } } maintenanceSessions(first: 500) { edges { node { id status } } } }",
            json!({"id": sid}),
        )
        .await?;
    assert_eq!(
        one["schedules"]["edges"][0]["node"]["nextRuns"]
            .as_array()
            .map(Vec::len),
        Some(1000)
    );
    let aliases: String = (0..2000)
        .map(|i| format!(" a{i}: nextRuns(count: 1000)"))
        .collect();
    let q = format!("query {{ schedules {{ edges {{ node {{ {aliases} }} }} }} }}");
    assert_eq!(
        s.gql_err(Some(&admin), &q, json!({})).await?,
        "BAD_USER_INPUT"
    );
    // Hundreds of aliased list scans are refused too.
    let scans: String = (0..200)
        .map(|i| format!(" c{i}: computers(first: 1) {{ totalCount }}"))
        .collect();
    assert_eq!(
        s.gql_err(Some(&admin), &format!("query {{ {scans} }}"), json!({}))
            .await?,
        "BAD_USER_INPUT"
    );

    // List inputs are bounded before any resolver runs.
    let tags: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    assert_eq!(
        s.gql_err(
            Some(&admin),
            "mutation($t: ID!, $tags: [String!]) { createEnrollmentKey(tenantId: $t, input: {tags: $tags}) { id } }",
            json!({"t": t, "tags": tags}),
        )
        .await?,
        "BAD_USER_INPUT"
    );
    let many: Vec<String> = (0..20_000).map(|_| "x".to_string()).collect();
    assert_eq!(
        s.gql_err(
            Some(&admin),
            "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }",
            json!({"i": {"computerIds": many}}),
        )
        .await?,
        "BAD_USER_INPUT"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_bounded() -> Result<()> {
    let s = TestServer::start_with(|c| c.ws_init_timeout_seconds = 1).await?;
    let admin = s.admin().await?;
    // No connection_init: closed with 4408.
    let mut silent = ws_connect(&s).await?;
    assert_eq!(close_code(&mut silent, T).await?, 4408);
    // A large frame before authenticating: closed.
    let mut big = ws_connect(&s).await?;
    let junk = "x".repeat(100 * 1024);
    send(
        &mut big,
        json!({"type": "connection_init", "payload": {"junk": junk}}),
    )
    .await?;
    assert_eq!(close_code(&mut big, T).await?, 1009);
    // A bad credential: 4401.
    let mut bad = ws_connect(&s).await?;
    send(
        &mut bad,
        json!({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}}),
    )
    .await?;
    assert_eq!(close_code(&mut bad, T).await?, 4401);
    // The nested `headers` shape of connection_init is accepted.
    let mut nested = ws_connect(&s).await?;
    send(
        &mut nested,
        json!({"type": "connection_init", "payload": {"headers": {"Authorization": format!("Bearer {admin}")}}}),
    )
    .await?;
    assert_eq!(next_json(&mut nested).await?["type"], "connection_ack");

    // At most 100 operations at once on one socket.
    let q = "subscription { maintenanceSessionUpdates { sessionId } }";
    for i in 0..100 {
        send(
            &mut nested,
            json!({"id": format!("s{i}"), "type": "subscribe", "payload": {"query": q}}),
        )
        .await?;
    }
    send(
        &mut nested,
        json!({"id": "s100", "type": "subscribe", "payload": {"query": q}}),
    )
    .await?;
    let refused = next_json(&mut nested).await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "s100");
    // Completing one frees a place.
    send(&mut nested, json!({"id": "s0", "type": "complete"})).await?;
    send(
        &mut nested,
        json!({"id": "s101", "type": "subscribe", "payload": {"query": "{ me { email } }"}}),
    )
    .await?;
    let mut m = next_json(&mut nested).await?;
    if m["id"] == "s0" {
        assert_eq!(m["type"], "complete", "{m}");
        m = next_json(&mut nested).await?;
    }
    assert_eq!(m["id"], "s101", "{m}");
    assert_eq!(m["type"], "next", "{m}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_credentials_end_with_the_credential() -> Result<()> {
    let now = chrono::Utc::now();
    let s = TestServer::start_with(|c| c.test_clock = Some(now)).await?;
    let admin = s.admin().await?;
    let key = s
        .gql(
            &admin,
            "mutation { createApiKey(input: {name: \"portal\", role: MSP_ADMIN}) { apiKey { id } secret } }",
            json!({}),
        )
        .await?;
    let secret = key["createApiKey"]["secret"].as_str().context("secret")?;
    let key_id = key["createApiKey"]["apiKey"]["id"].clone();
    let mut ws = ws_init(&s, secret).await?;
    send(
        &mut ws,
        json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { maintenanceSessionUpdates { sessionId } }"}}),
    )
    .await?;
    // A query over the socket works while the key holds.
    send(
        &mut ws,
        json!({"id": "2", "type": "subscribe", "payload": {"query": "{ tenants { totalCount } }"}}),
    )
    .await?;
    let m = next_json(&mut ws).await?;
    assert_eq!(m["type"], "next", "{m}");
    s.gql(
        &admin,
        "mutation($id: ID!) { revokeApiKey(id: $id) }",
        json!({"id": key_id}),
    )
    .await?;
    // The revoked key's socket closes (and its live subscription with it) at once.
    assert_eq!(close_code(&mut ws, Duration::from_secs(10)).await?, 4403);
    // A reconnect with the revoked key is refused.
    let mut again = ws_connect(&s).await?;
    send(
        &mut again,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {secret}")}}),
    )
    .await?;
    assert_eq!(close_code(&mut again, T).await?, 4401);

    // A login token's socket ends when the token expires.
    let mut jwt = ws_init(&s, &admin).await?;
    send(
        &mut jwt,
        json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { maintenanceSessionUpdates { sessionId } }"}}),
    )
    .await?;
    s.set_clock(now + chrono::Duration::hours(13)).await?;
    assert_eq!(close_code(&mut jwt, Duration::from_secs(10)).await?, 4403);
    Ok(())
}

/// Creates a user with `role` (in `tenant`) and returns their login token.
async fn user(s: &TestServer, admin: &str, role: &str, tenant: Option<&str>) -> Result<String> {
    let email = format!("{}@msp.example", role.to_lowercase().replace('_', "-"));
    s.gql(
        admin,
        "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
        json!({"i": {"email": email, "password": "a long enough password", "role": role, "tenantId": tenant}}),
    )
    .await?;
    s.login(&email, "a long enough password").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_nest_and_keys_never_climb() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let tech = user(&s, &admin, "MSP_TECHNICIAN", None).await?;
    let create_key =
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }";
    // A technician may not mint a tenant admin (who manages users, schedules and webhooks).
    assert_eq!(
        s.gql_err(
            Some(&tech),
            create_key,
            json!({"i": {"name": "k", "role": "TENANT_ADMIN", "tenantId": t}})
        )
        .await?,
        "FORBIDDEN"
    );
    assert_eq!(
        s.gql_err(
            Some(&tech),
            create_key,
            json!({"i": {"name": "k", "role": "MSP_ADMIN"}})
        )
        .await?,
        "FORBIDDEN"
    );
    // … but may make keys within its own rights, which then act as a technician would.
    let k = s
        .gql(
            &tech,
            create_key,
            json!({"i": {"name": "k", "role": "MSP_TECHNICIAN"}}),
        )
        .await?;
    let tech_key = k["createApiKey"]["secret"].as_str().context("secret")?;
    for (what, q, v) in [
        (
            "createUser",
            "mutation($t: ID) { createUser(input: {email: \"x@y.example\", password: \"a long enough password\", role: TENANT_VIEWER, tenantId: $t}) { id } }",
            json!({"t": t}),
        ),
        (
            "createSchedule",
            "mutation($t: ID) { createSchedule(input: {tenantId: $t, name: \"n\", target: {kind: ALL_COMPUTERS}, cron: \"0 22 * * *\", timeZone: \"UTC\"}) { id } }",
            json!({"t": t}),
        ),
        (
            "createWebhook",
            "mutation($t: ID) { createWebhook(input: {tenantId: $t, url: \"https://psa.example/hook\", events: [SESSION_FINISHED]}) { secret } }",
            json!({"t": t}),
        ),
    ] {
        for cred in [tech.as_str(), tech_key] {
            assert_eq!(
                s.gql_err(Some(cred), q, v.clone()).await?,
                "FORBIDDEN",
                "{what}"
            );
        }
    }
    // A technician may not revoke an MSP admin's key.
    let admin_key = s
        .gql(
            &admin,
            create_key,
            json!({"i": {"name": "admin's", "role": "MSP_ADMIN"}}),
        )
        .await?;
    let admin_key_id = admin_key["createApiKey"]["apiKey"]["id"].clone();
    assert_eq!(
        s.gql_err(
            Some(&tech),
            "mutation($id: ID!) { revokeApiKey(id: $id) }",
            json!({"id": admin_key_id})
        )
        .await?,
        "FORBIDDEN"
    );
    // Nor manage deployments that reach every tenant.
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, None, "Tool", dir.path(), &["1.0"]).await?;
    assert_eq!(
        s.gql_err(
            Some(&tech),
            "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
            json!({"i": {"target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}})
        )
        .await?,
        "FORBIDDEN"
    );
    // A tenant admin cannot mint an MSP key, nor act in another tenant.
    let t2 = s.create_tenant(&admin, "B").await?;
    let tadmin = user(&s, &admin, "TENANT_ADMIN", Some(&t)).await?;
    assert_eq!(
        s.gql_err(
            Some(&tadmin),
            create_key,
            json!({"i": {"name": "k", "role": "MSP_TECHNICIAN"}})
        )
        .await?,
        "FORBIDDEN"
    );
    assert_ne!(
        s.gql_err(
            Some(&tadmin),
            create_key,
            json!({"i": {"name": "k", "role": "TENANT_VIEWER", "tenantId": t2}})
        )
        .await?,
        "<no code>"
    );
    let tkey = s
        .gql(
            &tadmin,
            create_key,
            json!({"i": {"name": "k", "role": "TENANT_ADMIN", "tenantId": t}}),
        )
        .await?;
    let tkey = tkey["createApiKey"]["secret"].as_str().context("secret")?;
    s.gql(tkey, "{ me { email } tenants { totalCount } }", json!({}))
        .await?;
    // A key holds no more than its maker may hand on now: demoting the maker stops it.
    let me = s.gql(&tadmin, "{ me { id } }", json!({})).await?;
    s.gql(
        &admin,
        "mutation($id: ID!) { updateUser(id: $id, input: {role: TENANT_VIEWER}) { role } }",
        json!({"id": me["me"]["id"]}),
    )
    .await?;
    assert_eq!(
        s.gql_err(Some(tkey), "{ tenants { totalCount } }", json!({}))
            .await?,
        "UNAUTHENTICATED"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrollment_needs_a_key_that_could_enroll() -> Result<()> {
    let hooks = HookReceiver::start(&[]).await?;
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    s.gql(
        &admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [COMPUTER_REENROLLED]}) { secret } }",
        json!({"t": t, "u": hooks.url()}),
    )
    .await?;
    let once = s
        .gql(
            &admin,
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t, input: {maxUses: 1}) { id key } }",
            json!({"t": t}),
        )
        .await?;
    let once_key = once["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    let (token, computer) = s.enroll_raw(&once_key, "pc", "m-victim").await?;
    let poll = |tok: String| {
        let s = &s;
        async move {
            s.http
                .post(format!("{}/agent/v1/poll", s.url))
                .bearer_auth(tok)
                .json(&json!({"protocolVersion": 1, "waitSeconds": 0}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(poll(token.clone()).await?, 200);
    // The used-up key plus the machine id (a tenant viewer can read it) takes nothing over.
    let r = s
        .http
        .post(format!("{}/agent/v1/enroll", s.url))
        .json(&json!({"protocolVersion": 1, "enrollmentKey": once_key, "hostname": "evil", "machineId": "m-victim", "os": "Linux", "agentVersion": "0"}))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    assert_eq!(
        poll(token.clone()).await?,
        200,
        "the real agent still works"
    );
    // A key with uses left re-enrolls (a re-image), uses one, and says so by webhook.
    let fresh = s.enrollment_key(&admin, &t).await?;
    let (_new_token, same) = s.enroll_raw(&fresh, "pc", "m-victim").await?;
    assert_eq!(same, computer);
    assert_eq!(poll(token).await?, 401, "the old agent token ended");
    let keys = s
        .gql(
            &admin,
            "query($t: ID) { enrollmentKeys(tenantId: $t) { edges { node { id uses } } } }",
            json!({"t": t}),
        )
        .await?;
    let uses: Vec<i64> = keys["enrollmentKeys"]["edges"]
        .as_array()
        .context("keys")?
        .iter()
        .map(|e| e["node"]["uses"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(uses.iter().sum::<i64>(), 2, "{keys}");
    let got = wait_for("the COMPUTER_REENROLLED webhook", T, || async {
        Ok(hooks
            .all()
            .into_iter()
            .find(|r| r.header("Upkeep-Event") == Some("COMPUTER_REENROLLED")))
    })
    .await?;
    let body: Value = serde_json::from_str(&got.body)?;
    assert_eq!(body["data"]["id"], computer.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_fields_obey_tenant_isolation() -> Result<()> {
    let hooks = HookReceiver::start(&[]).await?;
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let viewer = user(&s, &admin, "TENANT_VIEWER", Some(&t)).await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, None, "Licensed", dir.path(), &["1.0"]).await?;
    // An MSP-level deployment whose parameters hold a licence key.
    let dep = s.create_deployment(&admin,
        json!({"target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST", "parameters": {"licenceKey": "SECRET-123"}}),
    )
    .await?;
    // A cross-tenant schedule, detection only.
    let sched = s
        .gql(
            &admin,
            "mutation { createSchedule(input: {name: \"msp nightly\", target: {kind: ALL_COMPUTERS}, cron: \"0 3 * * *\", detectionOnly: true}) { id } }",
            json!({}),
        )
        .await?;
    let sched_id = sched["createSchedule"]["id"].clone();
    s.gql(
        &admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [SESSION_FINISHED]}) { secret } }",
        json!({"t": t, "u": hooks.url()}),
    )
    .await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let _agent = TestAgent::start(&s.url, &key, "pc-1").await?;
    let computer = s.computer_id(&admin, "pc-1").await?;
    s.wait_online(&admin, &computer).await?;
    let started = s
        .gql(
            &admin,
            "mutation($id: ID!) { runScheduleNow(id: $id) { id } }",
            json!({"id": sched_id}),
        )
        .await?;
    let session = started["runScheduleNow"][0]["id"]
        .as_str()
        .context("session")?
        .to_string();
    s.wait_status(&admin, &session, &["PASSED"], T).await?;
    let q = "query($s: ID!, $c: ID!) {
        maintenanceSession(id: $s) { schedule { id name } actions { deployment { id parameters } } }
        computer(id: $c) { deploymentResolution { winner { id parameters } shadowed { id } } }
        webhooks { edges { node { id url } } }
    }";
    let vars = json!({"s": session, "c": computer});
    let as_admin = s.gql(&admin, q, vars.clone()).await?;
    assert_eq!(as_admin["maintenanceSession"]["schedule"]["id"], sched_id);
    assert_eq!(
        as_admin["maintenanceSession"]["actions"][0]["deployment"]["id"],
        dep.as_str()
    );
    assert_eq!(
        as_admin["computer"]["deploymentResolution"][0]["winner"]["id"],
        dep.as_str()
    );
    assert_eq!(
        as_admin["webhooks"]["edges"][0]["node"]["url"],
        hooks.url().as_str()
    );
    let as_viewer = s.gql(&viewer, q, vars).await?;
    let text = as_viewer.to_string();
    assert!(!text.contains("SECRET-123"), "{text}");
    assert!(
        as_viewer["maintenanceSession"]["schedule"].is_null(),
        "{text}"
    );
    assert!(
        as_viewer["maintenanceSession"]["actions"][0]["deployment"].is_null(),
        "{text}"
    );
    assert!(
        as_viewer["computer"]["deploymentResolution"][0]["winner"].is_null(),
        "{text}"
    );
    // Webhooks are an integration's setup: a viewer lists none (as `webhook(id)` refuses).
    assert_eq!(
        as_viewer["webhooks"]["edges"].as_array().map(Vec::len),
        Some(0),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_leaves_an_audit_record() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    // A refused sign-in is recorded too.
    s.gql_err(
        None,
        "mutation { login(email: \"admin@msp.example\", password: \"wrong password!\") { token } }",
        json!({}),
    )
    .await?;
    let t = s.create_tenant(&admin, "A").await?;
    s.gql(
        &admin,
        "mutation($t: ID!) { updateTenant(id: $t, input: {name: \"Renamed\"}) { id } }",
        json!({"t": t}),
    )
    .await?;
    // A refused change writes nothing.
    assert_eq!(
        s.gql_err(
            Some(&admin),
            "mutation($t: ID!) { updateTenant(id: $t, input: {timeZone: \"Mars/Olympus\"}) { id } }",
            json!({"t": t})
        )
        .await?,
        "BAD_USER_INPUT"
    );
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&t), "Tool", dir.path(), &["1.0"]).await?;
    let dep = s.create_deployment(&admin,
        json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST", "parameters": {"licenceKey": "SECRET-123"}}),
    )
    .await?;
    s.gql(
        &admin,
        "mutation($id: ID!) { updateDeployment(id: $id, input: {parameters: {licenceKey: \"SECRET-456\"}}) { id } }",
        json!({"id": dep}),
    )
    .await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let (_, computer) = s.enroll_raw(&key, "pc-1", "m-1").await?;
    let k = s
        .gql(
            &admin,
            "mutation { createApiKey(input: {name: \"psa\", role: MSP_TECHNICIAN}) { apiKey { id } secret } }",
            json!({}),
        )
        .await?;
    let api_key = k["createApiKey"]["secret"].as_str().context("secret")?;
    let api_key_id = k["createApiKey"]["apiKey"]["id"].clone();
    // A change made through an API key names the key.
    let started = s
        .gql(
            api_key,
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c], detectionOnly: true}) { id } }",
            json!({"c": computer}),
        )
        .await?;
    let session = started["startMaintenanceSession"][0]["id"].clone();
    s.gql(
        &admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { status } }",
        json!({"id": session}),
    )
    .await?;
    let all = s
        .gql(
            &admin,
            "{ auditEvents(first: 100) { totalCount edges { node { action actorKind actorId actorName address tenantId targetType targetId summary } } } }",
            json!({}),
        )
        .await?;
    let text = all.to_string();
    assert!(
        !text.contains("SECRET-"),
        "secrets never reach the trail: {text}"
    );
    let events: Vec<&Value> = all["auditEvents"]["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .map(|e| &e["node"])
        .collect();
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action)
            .copied()
            .with_context(|| format!("no {action} record in {text}"))
    };
    assert_eq!(find("loginFailed")?["actorName"], "admin@msp.example");
    assert_eq!(find("login")?["address"], "127.0.0.1");
    let rename = find("updateTenant")?;
    assert_eq!(rename["targetId"], t.as_str());
    assert_eq!(rename["tenantId"], t.as_str());
    assert_eq!(rename["actorKind"], "USER");
    assert_eq!(rename["actorName"], ADMIN_EMAIL);
    assert!(
        rename["summary"].as_str().unwrap_or("").contains("Renamed"),
        "{rename}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "updateTenant")
            .count(),
        1,
        "the refused update left no record"
    );
    assert_eq!(find("createDeployment")?["targetId"], dep.as_str());
    assert_eq!(find("createDeployment")?["targetType"], "Deployment");
    assert!(
        find("updateDeployment")?["summary"]
            .as_str()
            .unwrap_or("")
            .contains("parameters: <changed>"),
        "{text}"
    );
    let enrolled = find("enrollComputer")?;
    assert_eq!(enrolled["actorKind"], "AGENT");
    assert_eq!(enrolled["targetId"], computer.as_str());
    let start = find("startMaintenanceSession")?;
    assert_eq!(start["actorKind"], "API_KEY");
    assert_eq!(start["actorId"], api_key_id);
    assert_eq!(start["targetId"], session);
    assert_eq!(find("cancelMaintenanceSession")?["targetId"], session);
    for action in [
        "createTenant",
        "createSoftware",
        "createEnrollmentKey",
        "createApiKey",
    ] {
        find(action)?;
    }
    // Newest first.
    assert_eq!(events[0]["action"], "cancelMaintenanceSession", "{text}");

    // A tenant admin reads their tenant's records only; viewers and technicians none.
    let tadmin = user(&s, &admin, "TENANT_ADMIN", Some(&t)).await?;
    let mine = s
        .gql(
            &tadmin,
            "{ auditEvents(first: 100) { edges { node { action tenantId } } } }",
            json!({}),
        )
        .await?;
    let mine = mine["auditEvents"]["edges"].as_array().context("edges")?;
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|e| e["node"]["tenantId"] == t.as_str()),
        "{mine:?}"
    );
    let viewer = user(&s, &admin, "TENANT_VIEWER", Some(&t)).await?;
    assert_eq!(
        s.gql_err(Some(&viewer), "{ auditEvents { totalCount } }", json!({}))
            .await?,
        "FORBIDDEN"
    );
    // Filters: by action and by actor.
    let by_key = s
        .gql(
            &admin,
            "query($a: ID) { auditEvents(filter: {actorId: $a}) { totalCount edges { node { action } } } }",
            json!({"a": api_key_id}),
        )
        .await?;
    assert_eq!(by_key["auditEvents"]["totalCount"], 1, "{by_key}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_findings_stay_closed() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;

    // A flood of frames before connection_init closes the socket (a client that never reads
    // the pongs cannot hold it open).
    let mut ws = ws_connect(&s).await?;
    for _ in 0..20 {
        // The server may close before the last of them: a write then fails (broken pipe), and
        // its close frame is still there to read.
        if send(&mut ws, json!({"type": "ping"})).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws, T).await?, 1008);

    // Operation ids are short.
    let mut ws = ws_init(&s, &admin).await?;
    send(
        &mut ws,
        json!({"id": "x".repeat(1000), "type": "subscribe", "payload": {"query": "{ me { email } }"}}),
    )
    .await?;
    assert_eq!(close_code(&mut ws, T).await?, 4400);

    // Fields that scan the store cost what they do: a hundred aliased status counts are refused.
    let counts: String = (0..100)
        .map(|i| format!(" c{i}: maintenanceSessionStatusCounts {{ count }}"))
        .collect();
    assert_eq!(
        s.gql_err(Some(&admin), &format!("query {{ {counts} }}"), json!({}))
            .await?,
        "BAD_USER_INPUT"
    );
    s.gql(
        &admin,
        "{ maintenanceSessionStatusCounts { status count } }",
        json!({}),
    )
    .await?;

    // An API key cannot mint keys that would outlive its own revocation.
    let k = s
        .gql(
            &admin,
            "mutation { createApiKey(input: {name: \"psa\", role: MSP_ADMIN}) { secret } }",
            json!({}),
        )
        .await?;
    let key = k["createApiKey"]["secret"].as_str().context("secret")?;
    assert_eq!(
        s.gql_err(
            Some(key),
            "mutation { createApiKey(input: {name: \"child\", role: MSP_ADMIN}) { secret } }",
            json!({})
        )
        .await?,
        "FORBIDDEN"
    );

    // A tenant viewer does not read deployment parameters (licence keys).
    let viewer = user(&s, &admin, "TENANT_VIEWER", Some(&t)).await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&t), "Tool", dir.path(), &["1.0"]).await?;
    s.create_deployment(&admin,
        json!({"tenantId": t, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST", "parameters": {"licenceKey": "SECRET-789"}}),
    )
    .await?;
    let q = "query($t: ID) { deployments(tenantId: $t) { edges { node { parameters } } } }";
    let seen = s.gql(&viewer, q, json!({"t": t})).await?;
    assert_eq!(
        seen["deployments"]["edges"][0]["node"]["parameters"]["licenceKey"],
        "••••••"
    );
    let seen = s.gql(&admin, q, json!({"t": t})).await?;
    assert_eq!(
        seen["deployments"]["edges"][0]["node"]["parameters"]["licenceKey"],
        "SECRET-789"
    );

    // Racing re-enrollments of one machine leave exactly one working agent token.
    let fresh = s
        .gql(
            &admin,
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t, input: {maxUses: 100}) { key } }",
            json!({"t": t}),
        )
        .await?;
    let fresh = fresh["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    s.enroll_raw(&fresh, "pc", "m-race").await?;
    let mut racers = Vec::new();
    for _ in 0..16 {
        let (s2, k2) = (s.http.clone(), fresh.clone());
        let url = s.url.clone();
        racers.push(tokio::spawn(async move {
            let r: Value = s2
                .post(format!("{url}/agent/v1/enroll"))
                .json(&json!({"protocolVersion": 1, "enrollmentKey": k2, "hostname": "pc", "machineId": "m-race", "os": "Linux", "agentVersion": "0"}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(r["agentToken"].as_str().map(String::from))
        }));
    }
    let mut tokens = Vec::new();
    for r in racers {
        if let Some(tok) = r.await?? {
            tokens.push(tok);
        }
    }
    assert!(!tokens.is_empty());
    let mut working = 0;
    for tok in &tokens {
        let status = s
            .http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(tok)
            .json(&json!({"protocolVersion": 1, "waitSeconds": 0}))
            .send()
            .await?
            .status();
        if status == 200 {
            working += 1;
        }
    }
    assert_eq!(working, 1, "of {} tokens handed out", tokens.len());
    Ok(())
}

/// A tenant user who asks for another tenant's catalogue gets nothing, as for every other list
/// of another tenant: not the cross-tenant entries it reads without a tenant (they used to come
/// back, twice, through the index key of the all-zero id that stood for "no tenant").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_catalogue_lists_nothing() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let viewer = user(&s, &admin, "TENANT_VIEWER", Some(&a)).await?;
    let dir = tempfile::tempdir()?;
    create_file_software(&s, &admin, None, "Everywhere", dir.path(), &["1.0"]).await?;
    s.gql(&admin, "mutation { createMaintenanceTask(input: {name: \"Everywhere task\", testScript: {language: SHELL, body: \"exit 0\"}}) { id } }", json!({})).await?;
    let names = |tenant: Option<&str>, list: &'static str| {
        let (s, viewer) = (&s, &viewer);
        let tenant = tenant.map(str::to_string);
        async move {
            let d = s
                .gql(
                    viewer,
                    &format!("query($t: ID) {{ l: {list}(tenantId: $t) {{ edges {{ node {{ name }} }} }} }}"),
                    json!({"t": tenant}),
                )
                .await?;
            let names: Vec<String> = d["l"]["edges"]
                .as_array()
                .context("edges")?
                .iter()
                .map(|e| e["node"]["name"].as_str().unwrap_or_default().to_string())
                .collect();
            anyhow::Ok(names)
        }
    };
    for (list, name) in [
        ("software", "Everywhere"),
        ("maintenanceTasks", "Everywhere task"),
    ] {
        assert_eq!(names(None, list).await?, [name], "{list} without a tenant");
        assert_eq!(
            names(Some(&a), list).await?,
            [name],
            "{list} of the own tenant"
        );
        assert_eq!(
            names(Some(&b), list).await?,
            Vec::<String>::new(),
            "{list} of another tenant"
        );
    }
    Ok(())
}
