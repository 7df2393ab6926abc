//! PSA integrations and portals: API keys, signed webhooks, idempotent starts, CORS, counts.

use futures_util::TryStreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::hook::HookReceiver;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_act_in_their_tenant_and_die_when_revoked() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let k = s.gql(&admin, "mutation($t: ID) { createApiKey(input: {name: \"psa\", role: TENANT_ADMIN, tenantId: $t}) { apiKey { id role } secret } }", json!({"t": a})).await?;
    let secret = k["createApiKey"]["secret"].as_str().unwrap().to_string();
    let key_id = k["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("upk_") && secret.len() >= 47, "{secret}");
    let p = s.gql(&secret, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Via key\", email: \"k@a.example\"}) { id } }", json!({"t": a})).await?;
    assert!(p["createPerson"]["id"].is_string());
    let l = s
        .gql(
            &secret,
            "{ persons { totalCount } tenants { totalCount } }",
            json!({}),
        )
        .await?;
    assert_eq!(
        (
            l["persons"]["totalCount"].as_i64(),
            l["tenants"]["totalCount"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        s.gql_err(
            Some(&secret),
            "query($t: ID!) { tenant(id: $t) { id } }",
            json!({"t": b})
        )
        .await?,
        "NOT_FOUND"
    );
    assert_eq!(s.gql_err(Some(&secret), "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"x\", email: \"x@b.example\"}) { id } }", json!({"t": b})).await?, "NOT_FOUND");
    // Never more rights than its maker: a tenant admin cannot mint an MSP key.
    s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"ta@a.example\", password: \"tenant-admin-pw\", role: TENANT_ADMIN, tenantId: $t}) { id } }", json!({"t": a})).await?;
    let ta = s.login("ta@a.example", "tenant-admin-pw").await?;
    assert_eq!(
        s.gql_err(
            Some(&ta),
            "mutation { createApiKey(input: {name: \"x\", role: MSP_ADMIN}) { secret } }",
            json!({})
        )
        .await?,
        "FORBIDDEN"
    );
    // Listed without the secret; usable on the WebSocket.
    let list = s.gql(&admin, "query($t: ID) { apiKeys(tenantId: $t) { totalCount edges { node { name revoked } } } }", json!({"t": a})).await?;
    assert_eq!(list["apiKeys"]["totalCount"], 1);
    let sub = Subscription::connect(&s.url, "graphql-transport-ws", &secret).await?;
    sub.close().await;
    s.gql(
        &admin,
        "mutation($id: ID!) { revokeApiKey(id: $id) }",
        json!({"id": key_id}),
    )
    .await?;
    assert_eq!(
        s.gql_err(Some(&secret), "{ persons { totalCount } }", json!({}))
            .await?,
        "UNAUTHENTICATED"
    );
    assert!(
        Subscription::connect(&s.url, "graphql-transport-ws", &secret)
            .await
            .is_err(),
        "revoked on the WebSocket too"
    );
    Ok(())
}

struct Hooked {
    s: TestServer,
    admin: String,
    tenant: String,
    computer: String,
    _agent: TestAgent,
    _dir: tempfile::TempDir,
}

async fn hooked(s: TestServer) -> anyhow::Result<Hooked> {
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Hooked").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let agent = TestAgent::start(&s.url, &key, "h-1").await?;
    let computer = s.computer_id(&admin, "h-1").await?;
    s.wait_online(&admin, &computer).await?;
    let dir = tempfile::tempdir()?;
    let sw =
        create_file_software(&s, &admin, Some(&tenant), "Notepad", dir.path(), &["8.6"]).await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    Ok(Hooked {
        s,
        admin,
        tenant,
        computer,
        _agent: agent,
        _dir: dir,
    })
}

async fn create_hook(h: &Hooked, url: &str) -> anyhow::Result<(String, String)> {
    let w = h
        .s
        .gql(&h.admin, "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [SESSION_FINISHED]}) { webhook { id } secret } }", json!({"t": h.tenant, "u": url}))
        .await?;
    Ok((
        w["createWebhook"]["webhook"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        w["createWebhook"]["secret"].as_str().unwrap().to_string(),
    ))
}

/// What a receiver does: recompute the HMAC over "<t>.<body>" with the secret.
fn verify(secret: &str, sig: &str, body: &str) -> bool {
    let Some((t, v1)) = sig.split_once(",v1=") else {
        return false;
    };
    let t: i64 = t.trim_start_matches("t=").parse().unwrap_or(0);
    upkeep_server::services::webhooks::signature(secret, t, body) == format!("t={t},v1={v1}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivers_a_signed_outcome_and_retries_with_the_same_id() -> anyhow::Result<()> {
    let h = hooked(TestServer::start().await?).await?;
    let rx = HookReceiver::start(&[500]).await?;
    let (hook_id, secret) = create_hook(&h, &rx.url()).await?;
    let id = h.s.start_session(&h.admin, &h.computer, json!({})).await?;
    h.s.wait_status(&h.admin, &id, &["PASSED"], T).await?;
    // First answer 500, then 200: the same delivery twice, counted once.
    let got = wait_for("two attempts", Duration::from_secs(40), || async {
        Ok((rx.all().len() >= 2).then(|| rx.all()))
    })
    .await?;
    assert_eq!(got[0].answered, 500);
    assert_eq!(got[1].answered, 200);
    assert_eq!(
        got[0].header("Upkeep-Delivery"),
        got[1].header("Upkeep-Delivery")
    );
    assert_eq!(got[1].header("Upkeep-Event"), Some("SESSION_FINISHED"));
    assert!(
        verify(
            &secret,
            got[1].header("Upkeep-Signature").unwrap(),
            &got[1].body
        ),
        "signature verifies"
    );
    assert!(!verify(
        "wrong-secret",
        got[1].header("Upkeep-Signature").unwrap(),
        &got[1].body
    ));
    let body: Value = serde_json::from_str(&got[1].body)?;
    assert_eq!(body["event"], "SESSION_FINISHED");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["status"], "PASSED");
    assert_eq!(body["data"]["computerId"], h.computer.as_str());
    assert_eq!(body["data"]["actions"][0]["software"], "Notepad");
    assert_eq!(body["id"].as_str(), got[1].header("Upkeep-Delivery"));
    let unique: std::collections::HashSet<_> = rx
        .all()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.header("Upkeep-Delivery").map(String::from))
        .collect();
    assert_eq!(unique.len(), 1, "counted once");
    // The receiver has answered; the server stores the outcome just after, so look until it has.
    let want = json!({"event": "SESSION_FINISHED", "status": "DELIVERED", "attempts": 2, "responseStatus": 200});
    let last = std::sync::Mutex::new(Value::Null);
    let stored = wait_for("the delivery's outcome to be stored", T, || async {
        let d = h.s.gql(&h.admin, "query($w: ID!) { webhookDeliveries(webhookId: $w) { totalCount edges { node { event status attempts responseStatus } } } }", json!({"w": hook_id})).await?;
        let node = d["webhookDeliveries"]["edges"][0]["node"].clone();
        *last.lock().expect("lock") = node.clone();
        Ok((node["status"] != "PENDING").then_some(node))
    })
    .await;
    assert_eq!(
        stored.unwrap_or_else(|e| panic!("{e}: {}", last.lock().expect("lock"))),
        want
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_across_a_restart_still_gets_the_event_once() -> anyhow::Result<()> {
    let mut h = hooked(TestServer::start().await?).await?;
    // Reserve a port for the receiver, and leave it closed for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    create_hook(&h, &url).await?;
    let id = h.s.start_session(&h.admin, &h.computer, json!({})).await?;
    h.s.wait_status(&h.admin, &id, &["PASSED"], T).await?;
    wait_for("a failed attempt", T, || async {
        Ok((h.s.metric("upkeep_webhook_attempts_total").await? >= 1.0).then_some(()))
    })
    .await?;
    h.s.restart().await?;
    let rx = HookReceiver::start_on(&format!("127.0.0.1:{port}"), &[]).await?;
    wait_for("the delivery", Duration::from_secs(45), || async {
        Ok((!rx.all().is_empty()).then_some(()))
    })
    .await?;
    // Once its record says delivered, the worker (which sends only pending deliveries) cannot
    // send it again: no need to wait and see.
    wait_for("the delivery marked delivered", T, || async {
        let all: Vec<upkeep_core::webhook::Delivery> =
            h.s.app()
                .store
                .scan::<upkeep_core::webhook::Delivery>(None)
                .try_collect::<_>()
                .await?;
        let done =
            all.len() == 1 && all[0].status == upkeep_core::webhook::DeliveryStatus::Delivered;
        Ok(done.then_some(()))
    })
    .await?;
    assert_eq!(rx.all().len(), 1, "once");
    let body: Value = serde_json::from_str(&rx.all()[0].body)?;
    assert_eq!(body["data"]["id"], id.as_str());
    // The event sequence at the top, as in the data, and times with milliseconds and `Z`.
    assert!(body["sequence"].as_u64().is_some_and(|n| n > 1), "{body}");
    assert_eq!(body["sequence"], body["data"]["sequence"]);
    let at = body["occurredAt"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.',
        "{at}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_webhook_urls_are_refused_by_default() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.allow_private_webhooks = false).await?;
    let admin = s.admin().await?;
    let body = s.gql_raw(Some(&admin), "mutation { createWebhook(input: {url: \"http://127.0.0.1:9/x\", events: [SESSION_FINISHED]}) { secret } }", json!({})).await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-private-webhooks")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_starts_and_status_counts() -> anyhow::Result<()> {
    let h = hooked(TestServer::start().await?).await?;
    let q = "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c], detectionOnly: true, idempotencyKey: \"ticket-4711\"}) { id } }";
    let first = h.s.gql(&h.admin, q, json!({"c": h.computer})).await?;
    let second = h.s.gql(&h.admin, q, json!({"c": h.computer})).await?;
    assert_eq!(
        first, second,
        "the repeat returns the first call's sessions"
    );
    let id = first["startMaintenanceSession"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.s.wait_status(&h.admin, &id, &["PASSED"], T).await?;
    let again = h.s.gql(&h.admin, q, json!({"c": h.computer})).await?;
    assert_eq!(again, first, "even after it finished: nothing new starts");
    let counts =
        h.s.gql(
            &h.admin,
            "query($t: ID) { maintenanceSessionStatusCounts(tenantId: $t) { status count } }",
            json!({"t": h.tenant}),
        )
        .await?;
    let passed = counts["maintenanceSessionStatusCounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "PASSED")
        .unwrap()["count"]
        .clone();
    assert_eq!(passed, 1, "one session started: {counts}");
    Ok(())
}

/// `maintenanceSessionStatusCounts` (per tenant scope) and `/metrics`' sessions by status, as
/// `(status, count)` pairs of the non-zero counts.
async fn counts(
    s: &TestServer,
    token: &str,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<(String, i64)>> {
    let d = s
        .gql(
            token,
            "query($t: ID) { maintenanceSessionStatusCounts(tenantId: $t) { status count } }",
            json!({ "t": tenant }),
        )
        .await?;
    Ok(d["maintenanceSessionStatusCounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["count"] != 0)
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_string(),
                c["count"].as_i64().unwrap(),
            )
        })
        .collect())
}

fn pairs(p: &[(&str, i64)]) -> Vec<(String, i64)> {
    p.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

async fn metric_counts(s: &TestServer) -> anyhow::Result<Vec<(String, i64)>> {
    let text = s.metrics_text().await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("upkeep_sessions_by_status{status=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(st, n)| (st.to_string(), n.trim().parse::<i64>().unwrap_or(-1)))
        .filter(|(_, n)| *n != 0)
        .collect())
}

/// What the counts must say, and as whom to ask.
struct Expected {
    admin: String,
    tenant_user: String,
    hooked_id: String,
    other_id: String,
    hooked: Vec<(String, i64)>,
    others: Vec<(String, i64)>,
    all: Vec<(String, i64)>,
}

impl Expected {
    async fn check(&self, s: &TestServer) -> anyhow::Result<()> {
        let sorted = |mut v: Vec<(String, i64)>| {
            v.sort();
            v
        };
        let admin = &self.admin;
        assert_eq!(counts(s, admin, Some(&self.hooked_id)).await?, self.hooked);
        assert_eq!(
            sorted(counts(s, admin, Some(&self.other_id)).await?),
            self.others
        );
        assert_eq!(sorted(counts(s, admin, None).await?), self.all);
        // A tenant user gets its own tenant's, and nothing of another tenant's.
        for asked in [None, Some(self.other_id.as_str())] {
            assert_eq!(
                sorted(counts(s, &self.tenant_user, asked).await?),
                self.others
            );
        }
        assert_eq!(
            counts(s, &self.tenant_user, Some(&self.hooked_id)).await?,
            Vec::new()
        );
        let lower =
            |v: &[(String, i64)]| sorted(v.iter().map(|(st, n)| (st.to_lowercase(), *n)).collect());
        assert_eq!(
            lower(&metric_counts(s).await?),
            lower(&self.all),
            "/metrics counts the same"
        );
        Ok(())
    }
}

/// Counts follow sessions as they start, finish and are cancelled, per tenant (a tenant user
/// sees only its own), in `/metrics` too, and are the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_follow_starts_cancels_and_finishes_and_survive_a_restart()
-> anyhow::Result<()> {
    let mut h = hooked(TestServer::start().await?).await?;
    let admin = h.admin.clone();
    let other = h.s.create_tenant(&admin, "Other").await?;
    let key = h.s.enrollment_key(&admin, &other).await?;
    let (_, waiting) = h.s.enroll_raw(&key, "o-1", "m-o-1").await?;
    let (_, gone) = h.s.enroll_raw(&key, "o-2", "m-o-2").await?;
    h.s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"to@o.example\", password: \"tenant-other-pw\", role: TENANT_ADMIN, tenantId: $t}) { id } }", json!({"t": other})).await?;
    let tenant_user = h.s.login("to@o.example", "tenant-other-pw").await?;
    assert_eq!(counts(&h.s, &admin, None).await?, pairs(&[]));
    // Tenant "Hooked": a session runs to PASSED.
    let passed =
        h.s.start_session(&admin, &h.computer, json!({"detectionOnly": true}))
            .await?;
    h.s.wait_status(&admin, &passed, &["PASSED"], T).await?;
    // Tenant "Other": its computers have no agent, so their sessions wait; one is cancelled.
    h.s.start_session(&admin, &waiting, json!({})).await?;
    let cancelled = h.s.start_session(&admin, &gone, json!({})).await?;
    let others = counts(&h.s, &admin, Some(&other)).await?;
    assert!(
        others.len() == 1 && others[0].1 == 2,
        "two waiting sessions: {others:?}"
    );
    let waits = others[0].0.clone();
    h.s.gql(
        &admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { id } }",
        json!({"id": cancelled}),
    )
    .await?;
    h.s.wait_status(&admin, &cancelled, &["CANCELLED"], T)
        .await?;
    let hooked = pairs(&[("PASSED", 1)]);
    let mut others = vec![(waits.clone(), 1), ("CANCELLED".to_string(), 1)];
    let order = |v: &mut Vec<(String, i64)>| v.sort();
    order(&mut others);
    let mut all = vec![
        (waits, 1),
        ("PASSED".to_string(), 1),
        ("CANCELLED".to_string(), 1),
    ];
    order(&mut all);
    let expected = Expected {
        admin: admin.clone(),
        tenant_user,
        hooked_id: h.tenant.clone(),
        other_id: other.clone(),
        hooked,
        others,
        all,
    };
    expected.check(&h.s).await?;
    // `since` is served by reading the sessions; it agrees.
    let since = h.s.gql(&admin, "query($t: ID) { maintenanceSessionStatusCounts(tenantId: $t, since: \"2000-01-01T00:00:00Z\") { status count } }", json!({"t": h.tenant})).await?;
    let since_passed = since["maintenanceSessionStatusCounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "PASSED")
        .unwrap()["count"]
        .clone();
    assert_eq!(since_passed, 1);
    h.s.restart().await?;
    expected.check(&h.s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_only_for_allowed_origins() -> anyhow::Result<()> {
    let s =
        TestServer::start_with(|c| c.cors_origins = vec!["https://portal.example".into()]).await?;
    let pre = |origin: &str| {
        s.http
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", s.url))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = pre("https://portal.example").await?;
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://portal.example")
    );
    let no = pre("https://evil.example").await?;
    assert!(no.headers().get("access-control-allow-origin").is_none());
    let post = s
        .http
        .post(format!("{}/graphql", s.url))
        .header("Origin", "https://evil.example")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await?;
    assert!(post.headers().get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_served_without_external_scripts() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = s.http.get(format!("{}/console", s.url)).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-security-policy").is_some());
    let html = r.text().await?;
    assert!(html.contains("graphql-transport-ws"));
    assert!(!html.contains("src=\"http"), "no external scripts");
    Ok(())
}
