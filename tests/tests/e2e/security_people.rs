//! People and their credentials: updating, disabling and deleting users, changing passwords,
//! tokens that end at once (HTTP and WebSocket), API keys of removed creators, TOTP logins and
//! `--require-mfa-for-msp-roles`.

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::{Value, json};
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const CREATE_USER: &str = "mutation($e: String!, $r: UserRole!, $t: ID) { createUser(input: {email: $e, password: \"long-enough-pw\", role: $r, tenantId: $t}) { id } }";
const UPDATE_USER: &str = "mutation($id: ID!, $i: UpdateUserInput!) { updateUser(id: $id, input: $i) { id role disabled mfaEnabled tenant { id } } }";
const DELETE_USER: &str = "mutation($id: ID!) { deleteUser(id: $id) }";
const ME: &str = "{ me { id email role disabled mfaEnabled } }";
const LOGIN: &str = "mutation($e: String!, $p: String!, $c: String) { login(email: $e, password: $p, totpCode: $c) { token } }";

async fn create_user(
    s: &TestServer,
    token: &str,
    email: &str,
    role: &str,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    let d = s
        .gql(
            token,
            CREATE_USER,
            json!({"e": email, "r": role, "t": tenant}),
        )
        .await?;
    Ok(d["createUser"]["id"]
        .as_str()
        .context("user id")?
        .to_string())
}

async fn update(s: &TestServer, token: &str, id: &str, input: Value) -> anyhow::Result<Value> {
    Ok(s.gql(token, UPDATE_USER, json!({"id": id, "i": input}))
        .await?["updateUser"]
        .clone())
}

async fn update_err(s: &TestServer, token: &str, id: &str, input: Value) -> anyhow::Result<String> {
    s.gql_err(Some(token), UPDATE_USER, json!({"id": id, "i": input}))
        .await
}

/// The user as the `users` list shows it to `token`.
async fn listed(s: &TestServer, token: &str, id: &str) -> anyhow::Result<Value> {
    let d = s
        .gql(
            token,
            "{ users(first: 500) { nodes { id email role disabled mfaEnabled tenant { id } } } }",
            json!({}),
        )
        .await?;
    d["users"]["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .find(|u| u["id"] == id)
        .cloned()
        .with_context(|| format!("user {id} not listed"))
}

/// The first error of a response, whole (to read `message` and `extensions`).
async fn first_error(
    s: &TestServer,
    token: Option<&str>,
    query: &str,
    vars: Value,
) -> anyhow::Result<Value> {
    let body = s.gql_raw(token, query, vars).await?;
    body["errors"]
        .get(0)
        .cloned()
        .with_context(|| format!("expected an error, got {body}"))
}

/// The RFC 6238 code for a base32 secret at `at` (the server's unit tests check the function
/// against the RFC's vectors).
fn totp(secret: &str, at: DateTime<Utc>) -> String {
    let key = upkeep_server::totp::base32_decode(secret).expect("base32 secret");
    upkeep_server::totp::code(&key, upkeep_server::totp::step_at(at), 6)
}

/// A code that is none of the accepted ones around `at`.
fn wrong_totp(secret: &str, at: DateTime<Utc>) -> String {
    let near: Vec<String> = [-30, 0, 30]
        .iter()
        .map(|d| totp(secret, at + ChronoDuration::seconds(*d)))
        .collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .expect("a wrong code")
}

fn t0() -> DateTime<Utc> {
    // The start of a 30-second step.
    Utc.with_ymd_and_hms(2030, 1, 7, 10, 0, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_updated_and_read_back() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let u = create_user(&s, &admin, "u@a.example", "TENANT_VIEWER", Some(&a)).await?;

    let v = update(&s, &admin, &u, json!({"role": "TENANT_ADMIN"})).await?;
    assert_eq!(
        (
            v["role"].as_str(),
            v["disabled"].as_bool(),
            v["tenant"]["id"].as_str()
        ),
        (Some("TENANT_ADMIN"), Some(false), Some(a.as_str()))
    );
    update(&s, &admin, &u, json!({"disabled": true, "tenantId": b})).await?;
    let l = listed(&s, &admin, &u).await?;
    assert_eq!(
        (
            l["role"].as_str(),
            l["disabled"].as_bool(),
            l["tenant"]["id"].as_str(),
            l["mfaEnabled"].as_bool()
        ),
        (
            Some("TENANT_ADMIN"),
            Some(true),
            Some(b.as_str()),
            Some(false)
        )
    );
    // An MSP role leaves the tenant; it cannot be given one, and tenant roles need one.
    let v = update(
        &s,
        &admin,
        &u,
        json!({"role": "MSP_TECHNICIAN", "disabled": false}),
    )
    .await?;
    assert_eq!(
        (
            v["role"].as_str(),
            v["tenant"].is_null(),
            v["disabled"].as_bool()
        ),
        (Some("MSP_TECHNICIAN"), true, Some(false))
    );
    assert_eq!(
        update_err(&s, &admin, &u, json!({"tenantId": a})).await?,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        update_err(&s, &admin, &u, json!({"role": "TENANT_VIEWER"})).await?,
        "BAD_USER_INPUT"
    );
    let v = update(
        &s,
        &admin,
        &u,
        json!({"role": "TENANT_VIEWER", "tenantId": a}),
    )
    .await?;
    assert_eq!(
        (v["role"].as_str(), v["tenant"]["id"].as_str()),
        (Some("TENANT_VIEWER"), Some(a.as_str()))
    );
    // Unknown ids and malformed input name the problem.
    assert_eq!(
        update_err(
            &s,
            &admin,
            &upkeep_server::ids::fresh().to_string(),
            json!({})
        )
        .await?,
        "NOT_FOUND"
    );
    assert_eq!(
        update_err(&s, &admin, "nope", json!({})).await?,
        "BAD_USER_INPUT"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_manage_only_their_tenant_and_grant_no_more_than_they_have()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let ta = create_user(&s, &admin, "ta@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let va = create_user(&s, &admin, "v@a.example", "TENANT_VIEWER", Some(&a)).await?;
    let vb = create_user(&s, &admin, "v@b.example", "TENANT_VIEWER", Some(&b)).await?;
    let tech = create_user(&s, &admin, "tech@msp.example", "MSP_TECHNICIAN", None).await?;
    let ta_token = s.login("ta@a.example", "long-enough-pw").await?;

    // Another tenant's user, or an MSP user, reads as absent.
    for other in [&vb, &tech] {
        assert_eq!(
            update_err(&s, &ta_token, other, json!({"disabled": true})).await?,
            "NOT_FOUND"
        );
        assert_eq!(
            s.gql_err(Some(&ta_token), DELETE_USER, json!({"id": other}))
                .await?,
            "NOT_FOUND"
        );
    }
    // No MSP roles, no moving users into another tenant, not disabling oneself.
    for role in ["MSP_TECHNICIAN", "MSP_ADMIN"] {
        assert_eq!(
            update_err(&s, &ta_token, &va, json!({"role": role})).await?,
            "FORBIDDEN"
        );
    }
    assert_eq!(
        update_err(&s, &ta_token, &va, json!({"tenantId": b})).await?,
        "NOT_FOUND"
    );
    let e = first_error(
        &s,
        Some(&ta_token),
        UPDATE_USER,
        json!({"id": ta, "i": {"disabled": true}}),
    )
    .await?;
    assert_eq!(
        (
            e["extensions"]["code"].as_str(),
            e["extensions"]["field"].as_str()
        ),
        (Some("BAD_USER_INPUT"), Some("disabled"))
    );
    assert_eq!(
        s.gql_err(Some(&ta_token), DELETE_USER, json!({"id": ta}))
            .await?,
        "BAD_USER_INPUT"
    );
    // Within its tenant it manages users; viewers and technicians manage nobody.
    let v = update(
        &s,
        &ta_token,
        &va,
        json!({"role": "TENANT_ADMIN", "disabled": true}),
    )
    .await?;
    assert_eq!(
        (v["role"].as_str(), v["disabled"].as_bool()),
        (Some("TENANT_ADMIN"), Some(true))
    );
    update(
        &s,
        &ta_token,
        &va,
        json!({"role": "TENANT_VIEWER", "disabled": false}),
    )
    .await?;
    let va_token = s.login("v@a.example", "long-enough-pw").await?;
    assert_eq!(
        update_err(&s, &va_token, &va, json!({"role": "TENANT_ADMIN"})).await?,
        "FORBIDDEN"
    );
    let tech_token = s.login("tech@msp.example", "long-enough-pw").await?;
    assert_eq!(
        update_err(&s, &tech_token, &vb, json!({"disabled": true})).await?,
        "FORBIDDEN"
    );
    assert!(
        s.gql(&ta_token, DELETE_USER, json!({"id": va})).await?["deleteUser"]
            .as_bool()
            .unwrap_or(false)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_enabled_msp_admin_stays() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let me = s.gql(&admin, ME, json!({})).await?["me"]["id"]
        .as_str()
        .context("id")?
        .to_string();
    assert_eq!(
        s.gql_err(Some(&admin), DELETE_USER, json!({"id": me}))
            .await?,
        "BAD_USER_INPUT"
    );
    assert_eq!(
        update_err(&s, &admin, &me, json!({"role": "MSP_TECHNICIAN"})).await?,
        "CONFLICT"
    );
    // A second admin, disabled, does not count.
    let second = create_user(&s, &admin, "second@msp.example", "MSP_ADMIN", None).await?;
    update(&s, &admin, &second, json!({"disabled": true})).await?;
    assert_eq!(
        update_err(&s, &admin, &me, json!({"role": "MSP_TECHNICIAN"})).await?,
        "CONFLICT"
    );
    update(&s, &admin, &second, json!({"disabled": false})).await?;
    let second_token = s.login("second@msp.example", "long-enough-pw").await?;
    // Two admins disabling each other at once: one wins, one enabled admin remains.
    let (r1, r2) = tokio::join!(
        s.gql_raw(
            Some(&admin),
            UPDATE_USER,
            json!({"id": second, "i": {"disabled": true}})
        ),
        s.gql_raw(
            Some(&second_token),
            UPDATE_USER,
            json!({"id": me, "i": {"disabled": true}})
        ),
    );
    let codes: Vec<Option<String>> = [r1?, r2?]
        .iter()
        .map(|r| {
            r["errors"][0]["extensions"]["code"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");
    assert!(
        codes
            .iter()
            .flatten()
            .all(|c| c == "CONFLICT" || c == "UNAUTHENTICATED"),
        "{codes:?}"
    );
    let (winner, winner_id, loser_id) = if codes[0].is_none() {
        (admin.clone(), me.clone(), second.clone())
    } else {
        (
            s.login("second@msp.example", "long-enough-pw").await?,
            second.clone(),
            me.clone(),
        )
    };
    let l = listed(&s, &winner, &loser_id).await?;
    assert_eq!(l["disabled"].as_bool(), Some(true));
    // The last one can neither demote nor disable nor delete itself.
    assert_eq!(
        update_err(&s, &winner, &winner_id, json!({"role": "MSP_TECHNICIAN"})).await?,
        "CONFLICT"
    );
    assert_eq!(
        update_err(&s, &winner, &winner_id, json!({"disabled": true})).await?,
        "BAD_USER_INPUT"
    );
    // A disabled admin may be deleted; their e-mail is free again.
    s.gql(&winner, DELETE_USER, json!({"id": loser_id})).await?;
    let loser_email = if loser_id == me {
        ADMIN_EMAIL
    } else {
        "second@msp.example"
    };
    let again = create_user(&s, &winner, loser_email, "MSP_ADMIN", None).await?;
    assert_ne!(again, loser_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_end_at_once_on_disable_password_change_role_change_and_delete() -> anyhow::Result<()>
{
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let u = create_user(&s, &admin, "u@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let t1 = s.login("u@a.example", "long-enough-pw").await?;
    s.gql(&t1, ME, json!({})).await?;

    // Disabled: the token ends and logging in fails exactly like a wrong password.
    update(&s, &admin, &u, json!({"disabled": true})).await?;
    assert_eq!(
        s.gql_err(Some(&t1), ME, json!({})).await?,
        "UNAUTHENTICATED"
    );
    let vars = |p: &str| json!({"e": "u@a.example", "p": p});
    let disabled = first_error(&s, None, LOGIN, vars("long-enough-pw")).await?;
    let wrong = first_error(&s, None, LOGIN, vars("not-the-password")).await?;
    assert_eq!(disabled["message"], wrong["message"]);
    assert_eq!(disabled["extensions"]["code"], "UNAUTHENTICATED");
    // Enabled again: the old token stays ended (same second and all), a new login works.
    update(&s, &admin, &u, json!({"disabled": false})).await?;
    assert_eq!(
        s.gql_err(Some(&t1), ME, json!({})).await?,
        "UNAUTHENTICATED"
    );
    let t2 = s.login("u@a.example", "long-enough-pw").await?;
    s.gql(&t2, ME, json!({})).await?;

    // Password change: a wrong current password or a short new one change nothing.
    const CHANGE: &str = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    let e = first_error(
        &s,
        Some(&t2),
        CHANGE,
        json!({"c": "nope-nope-nope", "n": "a-new-password"}),
    )
    .await?;
    assert_eq!(
        (
            e["extensions"]["code"].as_str(),
            e["extensions"]["field"].as_str()
        ),
        (Some("BAD_USER_INPUT"), Some("currentPassword"))
    );
    let e = first_error(
        &s,
        Some(&t2),
        CHANGE,
        json!({"c": "long-enough-pw", "n": "short"}),
    )
    .await?;
    assert_eq!(e["extensions"]["field"], "newPassword");
    s.gql(&t2, ME, json!({})).await?;
    s.gql(
        &t2,
        CHANGE,
        json!({"c": "long-enough-pw", "n": "a-new-password"}),
    )
    .await?;
    assert_eq!(
        s.gql_err(Some(&t2), ME, json!({})).await?,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.gql_err(None, LOGIN, vars("long-enough-pw")).await?,
        "UNAUTHENTICATED"
    );
    let t3 = s.login("u@a.example", "a-new-password").await?;

    // A role change ends the tokens too (they were issued for the old role).
    update(&s, &admin, &u, json!({"role": "TENANT_VIEWER"})).await?;
    assert_eq!(
        s.gql_err(Some(&t3), ME, json!({})).await?,
        "UNAUTHENTICATED"
    );
    let t4 = s.login("u@a.example", "a-new-password").await?;
    assert_eq!(
        s.gql(&t4, ME, json!({})).await?["me"]["role"],
        "TENANT_VIEWER"
    );

    // Deleted: the token ends, the login is gone, the e-mail is free.
    s.gql(&admin, DELETE_USER, json!({"id": u})).await?;
    assert_eq!(
        s.gql_err(Some(&t4), ME, json!({})).await?,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.gql_err(None, LOGIN, vars("a-new-password")).await?,
        "UNAUTHENTICATED"
    );
    create_user(&s, &admin, "u@a.example", "TENANT_VIEWER", Some(&a)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_stop_with_their_creator() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let u = create_user(&s, &admin, "ta@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let ta = s.login("ta@a.example", "long-enough-pw").await?;
    let k = s
        .gql(
            &ta,
            "mutation($t: ID) { createApiKey(input: {name: \"psa\", role: TENANT_VIEWER, tenantId: $t}) { secret } }",
            json!({"t": a}),
        )
        .await?;
    let key = k["createApiKey"]["secret"]
        .as_str()
        .context("secret")?
        .to_string();
    const Q: &str = "{ persons { totalCount } }";
    s.gql(&key, Q, json!({})).await?;
    update(&s, &admin, &u, json!({"disabled": true})).await?;
    assert_eq!(
        s.gql_err(Some(&key), Q, json!({})).await?,
        "UNAUTHENTICATED"
    );
    update(&s, &admin, &u, json!({"disabled": false})).await?;
    s.gql(&key, Q, json!({})).await?;
    s.gql(&admin, DELETE_USER, json!({"id": u})).await?;
    assert_eq!(
        s.gql_err(Some(&key), Q, json!({})).await?,
        "UNAUTHENTICATED"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_users_cannot_open_subscriptions() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let gone = create_user(&s, &admin, "gone@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let off = create_user(&s, &admin, "off@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let gone_token = s.login("gone@a.example", "long-enough-pw").await?;
    let off_token = s.login("off@a.example", "long-enough-pw").await?;
    // Both tokens open a connection while their users are there.
    for t in [&gone_token, &off_token] {
        Subscription::connect(&s.url, "graphql-transport-ws", t)
            .await?
            .close()
            .await;
    }
    s.gql(&admin, DELETE_USER, json!({"id": gone})).await?;
    update(&s, &admin, &off, json!({"disabled": true})).await?;
    for t in [&gone_token, &off_token] {
        let refused = Subscription::connect(&s.url, "graphql-transport-ws", t).await;
        assert!(
            refused.is_err(),
            "a removed user's token opened a subscription"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_logins_need_a_fresh_code() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.test_clock = Some(t0())).await?;
    let admin = s.admin().await?;
    let e = s
        .gql(
            &admin,
            "mutation { enrollTotp { secret otpauthUrl } }",
            json!({}),
        )
        .await?;
    let secret = e["enrollTotp"]["secret"]
        .as_str()
        .context("secret")?
        .to_string();
    assert_eq!(
        e["enrollTotp"]["otpauthUrl"],
        format!("otpauth://totp/Upkeep:{ADMIN_EMAIL}?secret={secret}&issuer=Upkeep")
    );
    assert_eq!(
        s.gql(&admin, ME, json!({})).await?["me"]["mfaEnabled"],
        false
    );
    const CONFIRM: &str = "mutation($c: String!) { confirmTotp(code: $c) }";
    let e = first_error(
        &s,
        Some(&admin),
        CONFIRM,
        json!({"c": wrong_totp(&secret, t0())}),
    )
    .await?;
    assert_eq!(
        (
            e["extensions"]["code"].as_str(),
            e["extensions"]["field"].as_str()
        ),
        (Some("BAD_USER_INPUT"), Some("code"))
    );
    let used = totp(&secret, t0());
    s.gql(&admin, CONFIRM, json!({"c": used})).await?;
    assert_eq!(
        s.gql(&admin, ME, json!({})).await?["me"]["mfaEnabled"],
        true
    );
    // A second enrollment would replace the factor: it must be turned off first.
    assert_eq!(
        s.gql_err(
            Some(&admin),
            "mutation { enrollTotp { secret } }",
            json!({})
        )
        .await?,
        "CONFLICT"
    );

    let login = |code: Option<String>| json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD, "c": code});
    let mfa = |e: &Value| {
        (
            e["extensions"]["code"].as_str().map(String::from),
            e["extensions"]["mfaRequired"].as_bool(),
        )
    };
    let refused = (Some("UNAUTHENTICATED".to_string()), Some(true));
    // No code, a wrong code, or the code already used to confirm: refused, asking for it.
    for code in [None, Some(wrong_totp(&secret, t0())), Some(used.clone())] {
        let e = first_error(&s, None, LOGIN, login(code.clone())).await?;
        assert_eq!(mfa(&e), refused, "code {code:?}");
    }
    // A wrong password is just that (says nothing about a second factor).
    let e = first_error(
        &s,
        None,
        LOGIN,
        json!({"e": ADMIN_EMAIL, "p": "wrong-password"}),
    )
    .await?;
    assert_eq!(mfa(&e), (Some("UNAUTHENTICATED".to_string()), None));

    // Half a minute later the next code works, once.
    let t1 = t0() + ChronoDuration::seconds(30);
    s.set_clock(t1).await?;
    let next = totp(&secret, t1);
    let d = s.gql_raw(None, LOGIN, login(Some(next.clone()))).await?;
    let token = d["data"]["login"]["token"]
        .as_str()
        .with_context(|| format!("login with a fresh code: {d}"))?
        .to_string();
    s.gql(&token, "{ tenants { totalCount } }", json!({}))
        .await?;
    let e = first_error(&s, None, LOGIN, login(Some(next))).await?;
    assert_eq!(mfa(&e), refused, "the same code twice");

    // Turning it off needs a fresh code too; then the password alone works again.
    const DISABLE: &str = "mutation($c: String!) { disableTotp(code: $c) }";
    let t2 = t1 + ChronoDuration::seconds(30);
    s.set_clock(t2).await?;
    assert_eq!(
        s.gql_err(Some(&token), DISABLE, json!({"c": wrong_totp(&secret, t2)}))
            .await?,
        "BAD_USER_INPUT"
    );
    s.gql(&token, DISABLE, json!({"c": totp(&secret, t2)}))
        .await?;
    assert_eq!(
        s.gql(&token, ME, json!({})).await?["me"]["mfaEnabled"],
        false
    );
    s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mfa_limits_msp_users_without_totp_to_enrolling() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| {
        c.test_clock = Some(t0());
        c.require_mfa_for_msp_roles = true;
    })
    .await?;
    let admin = s.admin().await?;
    for (q, vars) in [
        ("{ tenants { totalCount } }", json!({})),
        (
            "mutation { createTenant(input: {name: \"A\", timeZone: \"UTC\"}) { id } }",
            json!({}),
        ),
        (
            "mutation($e: String!, $r: UserRole!) { createUser(input: {email: $e, password: \"long-enough-pw\", role: $r}) { id } }",
            json!({"e": "x@msp.example", "r": "MSP_ADMIN"}),
        ),
    ] {
        let e = first_error(&s, Some(&admin), q, vars).await?;
        assert_eq!(e["extensions"]["code"], "FORBIDDEN", "{q}");
        assert!(
            e["message"].as_str().unwrap_or("").contains("enroll TOTP"),
            "{e}"
        );
    }
    // What it may do: see itself and turn TOTP on.
    assert_eq!(
        s.gql(&admin, ME, json!({})).await?["me"]["email"],
        ADMIN_EMAIL
    );
    let e = s
        .gql(&admin, "mutation { enrollTotp { secret } }", json!({}))
        .await?;
    let secret = e["enrollTotp"]["secret"]
        .as_str()
        .context("secret")?
        .to_string();
    s.gql(
        &admin,
        "mutation($c: String!) { confirmTotp(code: $c) }",
        json!({"c": totp(&secret, t0())}),
    )
    .await?;
    // With the second factor on, the same login may do everything; tenant roles never need it.
    let a = s.create_tenant(&admin, "A").await?;
    create_user(&s, &admin, "ta@a.example", "TENANT_ADMIN", Some(&a)).await?;
    let ta = s.login("ta@a.example", "long-enough-pw").await?;
    s.gql(&ta, "{ persons { totalCount } }", json!({})).await?;
    // A new MSP user logs in with the password alone, and is held at enrolling.
    create_user(&s, &admin, "tech@msp.example", "MSP_TECHNICIAN", None).await?;
    let tech = s.login("tech@msp.example", "long-enough-pw").await?;
    assert_eq!(
        s.gql_err(Some(&tech), "{ persons { totalCount } }", json!({}))
            .await?,
        "FORBIDDEN"
    );
    // Nor does the password alone open a REST route: a tenant's report, a session's record, an
    // upload.
    let month = t0().format("%Y-%m");
    for (method, path) in [
        ("GET", format!("/api/v1/tenants/{a}/reports/{month}.pdf")),
        ("GET", format!("/api/v1/tenants/{a}/reports/{month}.html")),
        ("GET", format!("/api/v1/sessions/{a}/record")),
        ("POST", "/api/v1/files".to_string()),
    ] {
        let url = format!("{}{path}", s.url);
        let req = match method {
            "GET" => s.http.get(&url),
            _ => s.http.post(&url).body("installer bytes"),
        };
        let r = req.bearer_auth(&tech).send().await?;
        assert_eq!(r.status(), 403, "{method} {path}");
        let body: Value = r.json().await?;
        assert_eq!(body["code"], "FORBIDDEN", "{method} {path}");
    }
    // With the second factor, the admin fetches the same report.
    let r = s
        .http
        .get(format!("{}/api/v1/tenants/{a}/reports/{month}.pdf", s.url))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}
