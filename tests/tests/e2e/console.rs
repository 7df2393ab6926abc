//! The operator console (`/console`): what can be checked without a browser. Its behaviour in
//! headless Chromium is `tests/browser/console.mjs` (run by `.ci/browser`).

use serde_json::json;
use std::time::Duration;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

/// The console's GraphQL documents by name: the `NAME: `…`` entries of its `OPS` object.
fn console_operations(html: &str) -> Vec<(String, String)> {
    let start = html
        .find("const OPS = {")
        .expect("the console's OPS object");
    let end = start + html[start..].find("\n};").expect("its end");
    let mut out = Vec::new();
    let mut rest = &html[start..end];
    while let Some(i) = rest.find(": `") {
        let name = rest[..i]
            .rsplit(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_string();
        let body = &rest[i + 3..];
        let j = body.find('`').expect("a closing backtick");
        assert!(
            !name.is_empty(),
            "an OPS entry without a name: {}",
            &body[..j]
        );
        out.push((name, body[..j].to_string()));
        rest = &body[j + 1..];
    }
    out
}

/// Every GraphQL document the console sends (as served) is valid against the schema: run with
/// ids that do not exist, an error comes from a resolver (it has a `path`), never from parsing
/// or validation. A change elsewhere in the API cannot silently break the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_operation_is_valid_against_the_schema() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Console").await?;
    let html = s
        .http
        .get(format!("{}/console", s.url))
        .send()
        .await?
        .text()
        .await?;
    let ops = console_operations(&html);
    let names: Vec<&str> = ops.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "COMPUTERS",
        "COMPUTER",
        "PREVIEW",
        "TENANTS",
        "STATUS_COUNTS",
        "SCHEDULES",
    ] {
        assert!(names.contains(&want), "{want} is not among {names:?}");
    }
    const MISSING: &str = "01a20000-0000-7000-8000-000000000000";
    let mut subscriptions = Vec::new();
    for (name, doc) in &ops {
        let (query, vars) = match name.as_str() {
            "LOGIN" => (
                doc.clone(),
                json!({"email": "nobody@example.invalid", "password": "not the password"}),
            ),
            "SESSION_LOGS" => (doc.clone(), json!({"id": MISSING, "after": 0})),
            "START" => (doc.clone(), json!({"input": {"computerIds": [MISSING]}})),
            "COMPUTERS" => (doc.clone(), json!({"after": null})),
            // A field the console repeats per tenant under aliases.
            "STATUS_COUNTS" => (
                format!(
                    "query($since: DateTime, $t0: ID!) {{ t0: {} }}",
                    doc.replace("$TENANT", "$t0")
                ),
                json!({"t0": tenant, "since": "2026-01-01T00:00:00Z"}),
            ),
            _ if doc.trim_start().starts_with("subscription") => {
                subscriptions.push((name.clone(), doc.clone()));
                continue;
            }
            "ME" | "SESSIONS" | "TENANTS" | "SCHEDULES" | "REFRESH" => (doc.clone(), json!({})),
            _ => (doc.clone(), json!({"id": MISSING})),
        };
        let body = s.gql_raw(Some(&admin), &query, vars).await?;
        let errors = body["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            errors.iter().all(|e| e.get("path").is_some()),
            "{name} does not validate: {body}"
        );
        assert!(body.get("data").is_some(), "{name}: {body}");
    }
    // The subscriptions, over the WebSocket as the console sends them: a refusal would be an
    // `error` message; the one for a missing session ends with `complete` after its error.
    assert_eq!(subscriptions.len(), 2, "{subscriptions:?}");
    let mut ws = Subscription::connect(&s.url, "graphql-transport-ws", &admin).await?;
    for (i, (_, doc)) in subscriptions.iter().enumerate() {
        ws.subscribe(
            &format!("{}", i + 1),
            doc,
            json!({"sessionId": MISSING, "after": 0}),
        )
        .await?;
    }
    let last = format!("{}", subscriptions.len());
    loop {
        let m = ws.next_raw(T).await?;
        assert_ne!(
            m["type"], "error",
            "a console subscription does not validate: {m}"
        );
        if m["type"] == "complete" && m["id"] == last.as_str() {
            break;
        }
    }
    ws.close().await;
    Ok(())
}

/// The page is served with a strict policy: its own inline script and style by hash, nothing
/// inline else, no other host; the script it names is the one in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_policy_that_names_its_own_script() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = s.http.get(format!("{}/console", s.url)).send().await?;
    assert_eq!(r.status(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let html = r.text().await?;
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let script = html
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(body, _)| body)
        .expect("the inline script");
    use base64::Engine;
    use sha2::Digest;
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    assert!(
        csp.contains(&format!("script-src 'sha256-{digest}'")),
        "{csp}"
    );
    Ok(())
}
