//! For integrators (CONTRACT §17): credentials that do not get in the way (a stale token
//! never blocks `login`; `refreshToken`; `viewer`), idempotency scoped per API key, and the
//! one text form of instants.

use serde_json::{Value, json};
use upkeep_tests::{E2eServer, TestServer};

const RFC3339_MS: fn(&str) -> bool = |t: &str| {
    let b = t.as_bytes();
    t.len() == 24
        && t.ends_with('Z')
        && b[10] == b'T'
        && b[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(t).is_ok()
};

/// The answer is an error with `code` whose message says `words`.
fn refused(body: &Value, code: &str, words: &str) {
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], code, "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_does_not_block_login_and_says_why_elsewhere() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let stale = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad";
    let body = s
        .gql_raw(
            Some(stale),
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token expiresAt } }",
            json!({"e": upkeep_tests::ADMIN_EMAIL, "p": upkeep_tests::ADMIN_PASSWORD}),
        )
        .await?;
    assert!(body["errors"].is_null(), "{body}");
    assert!(body["data"]["login"]["token"].is_string());
    assert!(
        RFC3339_MS(body["data"]["login"]["expiresAt"].as_str().unwrap()),
        "{body}"
    );
    // An operation that needs a caller names the refusal, not "sign in".
    let body = s
        .gql_raw(Some(stale), "{ tenants { totalCount } }", json!({}))
        .await?;
    refused(&body, "UNAUTHENTICATED", "token");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_keeps_a_sign_in_alive_until_its_end() -> anyhow::Result<()> {
    let t0 = chrono::Utc::now();
    let s = TestServer::start_with(|c| c.test_clock = Some(t0)).await?;
    let first = s.admin().await?;
    let refresh = "mutation { refreshToken { token expiresAt user { email } } }";
    // Ten hours on, the first token (12 h) still holds: refresh it.
    s.set_clock(t0 + chrono::Duration::hours(10)).await?;
    let d = s.gql(&first, refresh, json!({})).await?;
    let second = d["refreshToken"]["token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(
        d["refreshToken"]["user"]["email"],
        upkeep_tests::ADMIN_EMAIL
    );
    // Past the first token's expiry, the refreshed one works and the old one does not.
    s.set_clock(t0 + chrono::Duration::hours(13)).await?;
    assert_eq!(
        s.gql_err(Some(&first), "{ viewer { kind } }", json!({}))
            .await?,
        "UNAUTHENTICATED"
    );
    let v = s
        .gql(
            &second,
            "{ viewer { kind role user { email } apiKey { id } } }",
            json!({}),
        )
        .await?;
    assert_eq!(v["viewer"]["kind"], "USER");
    assert_eq!(v["viewer"]["role"], "MSP_ADMIN");
    assert!(v["viewer"]["apiKey"].is_null());
    // A chain of refreshes ends 30 days after the password was given.
    let mut token = second;
    let mut at = t0 + chrono::Duration::hours(13);
    while at < t0 + chrono::Duration::days(30) {
        let d = s.gql(&token, refresh, json!({})).await?;
        token = d["refreshToken"]["token"].as_str().unwrap().to_string();
        at += chrono::Duration::hours(11);
        s.set_clock(at).await?;
    }
    let body = s.gql_raw(Some(&token), refresh, json!({})).await?;
    refused(&body, "UNAUTHENTICATED", "log in again");
    Ok(())
}

async fn api_key(s: &TestServer, admin: &str, name: &str) -> anyhow::Result<(String, String)> {
    let k = s
        .gql(
            admin,
            "mutation($n: String!) { createApiKey(input: {name: $n, role: MSP_TECHNICIAN}) { apiKey { id } secret } }",
            json!({"n": name}),
        )
        .await?;
    Ok((
        k["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        k["createApiKey"]["secret"].as_str().unwrap().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_answers_the_api_key_and_me_is_null_for_it() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let (id, secret) = api_key(&s, &admin, "psa").await?;
    let v = s
        .gql(&secret, "{ me { email } viewer { kind role tenant { id } user { id } apiKey { id name role } } }", json!({}))
        .await?;
    assert!(v["me"].is_null(), "{v}");
    assert_eq!(v["viewer"]["kind"], "API_KEY");
    assert_eq!(
        v["viewer"]["role"], "MSP_TECHNICIAN",
        "the key's role, not its maker's"
    );
    assert_eq!(v["viewer"]["apiKey"]["id"], id.as_str());
    assert_eq!(v["viewer"]["apiKey"]["name"], "psa");
    assert!(v["viewer"]["user"].is_null() && v["viewer"]["tenant"].is_null());
    // refreshToken is for people's tokens.
    assert_eq!(
        s.gql_err(
            Some(&secret),
            "mutation { refreshToken { token } }",
            json!({})
        )
        .await?,
        "FORBIDDEN"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_api_key_and_bound_to_their_request() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Idem").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (_, a) = s.enroll_raw(&key, "idem-a", "m-idem-a").await?;
    let (_, b) = s.enroll_raw(&key, "idem-b", "m-idem-b").await?;
    let (_, psa1) = api_key(&s, &admin, "psa-1").await?;
    let (_, psa2) = api_key(&s, &admin, "psa-2").await?;
    let start = "mutation($c: [ID!]!, $d: Boolean) { startMaintenanceSession(input: {computerIds: $c, detectionOnly: $d, idempotencyKey: \"T-1\"}) { id } }";
    let ids = |v: &Value| -> Vec<String> {
        v["startMaintenanceSession"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let one = s.gql(&psa1, start, json!({"c": [a], "d": true})).await?;
    let again = s.gql(&psa1, start, json!({"c": [a], "d": true})).await?;
    assert_eq!(
        ids(&one),
        ids(&again),
        "a repeat answers the first call's sessions"
    );
    // The same key with another request is a conflict, not the first call's answer.
    let body = s
        .gql_raw(Some(&psa1), start, json!({"c": [b], "d": true}))
        .await?;
    refused(
        &body,
        "CONFLICT",
        "idempotency key reused with a different request",
    );
    let body = s
        .gql_raw(Some(&psa1), start, json!({"c": [a], "d": false}))
        .await?;
    refused(&body, "CONFLICT", "");
    // Another key of the same admin has a space of its own: its T-1 starts a session (on b).
    let other = s.gql(&psa2, start, json!({"c": [b], "d": true})).await?;
    assert_eq!(ids(&other).len(), 1);
    assert_ne!(ids(&other), ids(&one));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instants_are_rfc3339_utc_with_milliseconds() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Times").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (_, c) = s.enroll_raw(&key, "times-1", "m-times-1").await?;
    let schema = upkeep_server::api::graphql::sdl();
    assert!(
        schema.contains(
            r#"scalar DateTime @specifiedBy(url: "https://datatracker.ietf.org/doc/html/rfc3339")"#
        ),
        "the DateTime scalar names its spec"
    );
    // Any offset in, UTC with milliseconds out.
    let at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    let d = s
        .gql(
            &admin,
            "mutation($c: ID!, $at: DateTime) { startMaintenanceSession(input: {computerIds: [$c], executeAt: $at}) { createdAt executeAt } }",
            json!({"c": c, "at": at.to_rfc3339()}),
        )
        .await?;
    let session = &d["startMaintenanceSession"][0];
    for f in ["createdAt", "executeAt"] {
        assert!(RFC3339_MS(session[f].as_str().unwrap()), "{f}: {session}");
    }
    let back = chrono::DateTime::parse_from_rfc3339(session["executeAt"].as_str().unwrap())?;
    assert_eq!(back.timestamp_millis(), at.timestamp_millis());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_and_past_execute_at_are_refused_clearly() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Dates").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (_, c) = s.enroll_raw(&key, "dates-1", "m-dates-1").await?;
    let q = "mutation($c: ID!, $at: DateTime) { startMaintenanceSession(input: {computerIds: [$c], executeAt: $at}) { id } }";
    let body = s
        .gql_raw(Some(&admin), q, json!({"c": c, "at": "30.11.2026 12:00"}))
        .await?;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("RFC 3339") && message.contains("2026-11-30T12:00:00.000Z"),
        "{body}"
    );
    refused(&body, "BAD_USER_INPUT", "");
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let body = s
        .gql_raw(Some(&admin), q, json!({"c": c, "at": past.to_rfc3339()}))
        .await?;
    refused(&body, "BAD_USER_INPUT", "in the past");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_host_that_does_not_resolve_yet_is_accepted() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.allow_private_webhooks = false).await?;
    let admin = s.admin().await?;
    let d = s
        .gql(&admin, "mutation { createWebhook(input: {url: \"https://psa.not-yet.invalid/hook\", events: [SESSION_FINISHED]}) { webhook { id } } }", json!({}))
        .await?;
    assert!(d["createWebhook"]["webhook"]["id"].is_string());
    // A name for a loopback address is still refused at once.
    let body = s
        .gql_raw(Some(&admin), "mutation { createWebhook(input: {url: \"http://localhost:9/x\", events: [SESSION_FINISHED]}) { secret } }", json!({}))
        .await?;
    refused(&body, "BAD_USER_INPUT", "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_defaults_are_in_the_schema_and_options_replace_as_a_whole() -> anyhow::Result<()> {
    let sdl = upkeep_server::api::graphql::sdl();
    for shown in [
        "notifyBefore: Boolean = false",
        "maxPostpones: Int = 3",
        "rebootPreference: RebootPreference = NORMAL",
        "offlineBehavior: OfflineBehavior = APPLY_ON_CONNECT",
        "windowMinutes: Int = 120",
        "enforcement: Enforcement = REQUIRED",
    ] {
        assert!(sdl.contains(shown), "the schema shows {shown}");
    }
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Opts").await?;
    let d = s
        .gql(&admin, "mutation($t: ID) { createSchedule(input: {tenantId: $t, name: \"n\", target: {kind: ALL_COMPUTERS}, cron: \"0 2 * * *\", timeZone: \"UTC\", options: {notifyBefore: true, maxPostpones: 5}}) { id windowMinutes options { notifyBefore maxPostpones } } }", json!({"t": t}))
        .await?;
    assert_eq!(d["createSchedule"]["windowMinutes"], 120);
    assert_eq!(d["createSchedule"]["options"]["maxPostpones"], 5);
    let id = d["createSchedule"]["id"].as_str().unwrap();
    let d = s
        .gql(&admin, "mutation($id: ID!) { updateSchedule(id: $id, input: {options: {notifyAfter: true}}) { options { notifyBefore notifyAfter maxPostpones } } }", json!({"id": id}))
        .await?;
    assert_eq!(
        d["updateSchedule"]["options"],
        json!({"notifyBefore": false, "notifyAfter": true, "maxPostpones": 3})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_lists_no_webhooks_as_it_reads_none() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Hooks").await?;
    s.gql(&admin, "mutation($t: ID) { createWebhook(input: {tenantId: $t, url: \"https://psa.example/hook\", events: [SESSION_FINISHED], description: \"PSA\"}) { webhook { id } } }", json!({"t": t}))
        .await?;
    let k = s
        .gql(&admin, "mutation($t: ID) { createApiKey(input: {name: \"view\", role: TENANT_VIEWER, tenantId: $t}) { secret } }", json!({"t": t}))
        .await?;
    let viewer = k["createApiKey"]["secret"].as_str().unwrap();
    let q = "{ webhooks { totalCount nodes { id events description } } }";
    assert_eq!(
        s.gql(&admin, q, json!({})).await?["webhooks"]["totalCount"],
        1
    );
    let seen = s.gql(viewer, q, json!({})).await?;
    assert_eq!(seen["webhooks"]["totalCount"], 0, "{seen}");
    Ok(())
}

/// A delete racing a start: either the start wins (and the delete is refused while the session
/// runs) or the delete wins (and the start answers NOT_FOUND) — never a session left on a
/// computer that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_computer_deleted_while_a_session_starts_leaves_no_orphan() -> anyhow::Result<()> {
    use futures_util::TryStreamExt;
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Race").await?;
    let key = s.enrollment_key(&admin, &t).await?;
    let start = "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c], detectionOnly: true}) { id } }";
    let delete = "mutation($c: ID!) { deleteComputer(id: $c) }";
    for i in 0..20 {
        let (_, c) = s
            .enroll_raw(&key, &format!("race-{i}"), &format!("m-race-{i}"))
            .await?;
        let vars = json!({"c": c});
        let (started, deleted) = tokio::join!(
            s.gql_raw(Some(&admin), start, vars.clone()),
            s.gql_raw(Some(&admin), delete, vars.clone())
        );
        let (started, deleted) = (started?, deleted?);
        let start_ok = started["errors"].is_null();
        let delete_ok = deleted["data"]["deleteComputer"] == true;
        assert!(start_ok != delete_ok || !start_ok, "{started} {deleted}");
        if !start_ok {
            assert_eq!(
                started["errors"][0]["extensions"]["code"], "NOT_FOUND",
                "{started}"
            );
        }
        if !delete_ok {
            assert_eq!(
                deleted["errors"][0]["extensions"]["code"], "CONFLICT",
                "{deleted}"
            );
        }
    }
    let sessions: Vec<upkeep_core::session::Session> = s
        .app()
        .store
        .scan::<upkeep_core::session::Session>(None)
        .try_collect()
        .await?;
    for session in sessions.iter().filter(|x| !x.status.is_terminal()) {
        let computer = s
            .app()
            .store
            .get::<upkeep_core::domain::Computer>(&session.computer_id)
            .await?;
        assert!(
            computer.is_some(),
            "session {} runs on a deleted computer",
            session.id
        );
    }
    Ok(())
}
