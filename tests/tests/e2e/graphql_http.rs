//! GraphQL over HTTP as clients expect it: content negotiation and status codes, GET, Apollo's
//! persisted queries and batches, error locations, GraphiQL served from the binary, and CORS
//! for portals on other origins. (`tests/portal/` runs the reference `graphql-http` audit,
//! Apollo Client and GraphiQL in Chromium against the real binary.)

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::process::Command;
use upkeep_tests::*;

const GRJ: &str = "application/graphql-response+json";

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// POSTs a JSON body with the given Accept (none when empty); status, content type and body.
async fn post(s: &TestServer, accept: &str, body: &Value) -> anyhow::Result<(u16, String, Value)> {
    let mut req = s
        .http
        .post(format!("{}/graphql", s.url))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if !accept.is_empty() {
        req = req.header(ACCEPT, accept);
    }
    let r = req.send().await?;
    let (status, ct) = (r.status().as_u16(), content_type(&r));
    Ok((status, ct, r.json().await?))
}

/// `/graphql?…` with the parameters form-encoded.
fn graphql_url(s: &TestServer, params: &[(&str, &str)]) -> String {
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("{}/graphql?{}", s.url, qs.join("&"))
}

async fn get(
    s: &TestServer,
    accept: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    Ok(s.http
        .get(graphql_url(s, params))
        .header(ACCEPT, accept)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_the_negotiated_media_type_with_the_specs_status_codes() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let ok = json!({"query": "{ __typename }"});
    for (accept, want) in [
        (GRJ, GRJ),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("", "application/json"),
        (
            "application/graphql-response+json, application/json;q=0.9",
            GRJ,
        ),
    ] {
        let (status, ct, body) = post(&s, accept, &ok).await?;
        assert_eq!(status, 200, "{accept}");
        assert!(ct.starts_with(want), "Accept {accept:?} answered {ct}");
        assert_eq!(body["data"]["__typename"], "Query");
    }
    let (status, _, body) = post(&s, "text/html", &ok).await?;
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].clone()),
        (406, json!("NOT_ACCEPTABLE"))
    );

    // Parse and validation errors: request errors, without data; 400 under the new media type.
    for bad in ["{", "{ noSuchField }"] {
        let body = json!({ "query": bad });
        let (status, ct, v) = post(&s, GRJ, &body).await?;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(ct.starts_with(GRJ));
        assert!(v.get("data").is_none(), "{bad}: {v}");
        assert!(v["errors"][0]["extensions"]["code"].is_string(), "{v}");
        let (status, _, v) = post(&s, "application/json", &body).await?;
        assert_eq!(status, 200, "{bad}: legacy clients read errors from a 200");
        assert!(
            v.get("data").is_none() && v["errors"][0]["message"].is_string(),
            "{v}"
        );
    }
    // Variables that do not coerce are a request error too.
    for vars in [json!({"f": null}), json!({}), json!({"f": "x"})] {
        let coerce = json!({"query": "query Q($f: Int!) { computers(first: $f) { totalCount } }", "variables": vars});
        let (status, _, v) = post(&s, GRJ, &coerce).await?;
        assert_eq!(status, 400, "{vars}: {v}");
        assert!(v.get("data").is_none(), "{v}");
    }

    // Malformed requests: 400 whatever the media type, always in the GraphQL error shape.
    for body in [
        json!({}),
        json!({"query": 1}),
        json!({"query": "{ __typename }", "variables": "x"}),
        json!({"query": "{ __typename }", "operationName": false}),
        json!({"query": "{ __typename }", "extensions": "x"}),
    ] {
        for accept in [GRJ, "application/json"] {
            let (status, _, v) = post(&s, accept, &body).await?;
            assert_eq!(status, 400, "{body} ({accept}): {v}");
            assert_eq!(v["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{v}");
        }
    }
    let not_json = s
        .http
        .post(format!("{}/graphql", s.url))
        .header(CONTENT_TYPE, "application/json")
        .body("{\"query\": ")
        .send()
        .await?;
    assert_eq!(not_json.status(), 400);
    // No content type (or a form, which a cross-site page could send without a preflight).
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = s
            .http
            .post(format!("{}/graphql", s.url))
            .body(ok.to_string());
        if let Some(ct) = ct {
            req = req.header(CONTENT_TYPE, ct);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), 415, "{ct:?}");
        let v: Value = r.json().await?;
        assert_eq!(
            v["errors"][0]["extensions"]["code"],
            "UNSUPPORTED_MEDIA_TYPE"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_runs_queries_refuses_mutations_and_browsers_get_graphiql() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let r = get(&s, GRJ, &[("query", "{ __typename }")]).await?;
    assert_eq!(r.status(), 200);
    assert!(content_type(&r).starts_with(GRJ));
    assert_eq!(r.json::<Value>().await?["data"]["__typename"], "Query");
    // With a credential, variables and an operation name, as any query.
    let me = s
        .http
        .get(graphql_url(
            &s,
            &[
                (
                    "query",
                    "query Q($f: Int) { me { email } computers(first: $f) { totalCount } }",
                ),
                ("variables", "{\"f\": 5}"),
                ("operationName", "Q"),
            ],
        ))
        .bearer_auth(&admin)
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL, "{me}");
    assert_eq!(me["data"]["computers"]["totalCount"], 0, "{me}");

    let m = get(
        &s,
        GRJ,
        &[(
            "query",
            "mutation { login(email: \"a@b.example\", password: \"x\") { token } }",
        )],
    )
    .await?;
    assert_eq!(m.status(), 405);
    assert_eq!(
        m.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_eq!(
        m.json::<Value>().await?["errors"][0]["extensions"]["code"],
        "METHOD_NOT_ALLOWED"
    );
    // The query of a document that also holds a mutation runs.
    let q = get(
        &s,
        "application/json",
        &[
            ("query", "query A { __typename } mutation B { __typename }"),
            ("operationName", "A"),
        ],
    )
    .await?;
    assert_eq!(q.status(), 200);

    // No query: 400 for an API client, GraphiQL only for a browser.
    let none = get(&s, "*/*", &[]).await?;
    assert_eq!(none.status(), 400);
    assert_eq!(
        none.json::<Value>().await?["errors"][0]["extensions"]["code"],
        "BAD_REQUEST"
    );
    let page = get(&s, "text/html,application/xhtml+xml,*/*;q=0.8", &[]).await?;
    assert_eq!(page.status(), 200);
    assert!(content_type(&page).starts_with("text/html"));
    // Caches keep the page and the API's answers apart.
    for r in [
        &page,
        &get(&s, "*/*", &[("query", "{ __typename }")]).await?,
    ] {
        let vary = r
            .headers()
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        assert!(vary.to_ascii_lowercase().contains("accept"), "Vary: {vary}");
    }
    Ok(())
}

fn sha256(q: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(q.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_persisted_queries_register_then_run_by_hash() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let query = "query PersistedMe { me { email role } }";
    let ext = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256(query)}});
    let ask = |body: Value| {
        s.http
            .post(format!("{}/graphql", s.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    // Unknown hash: Apollo's error, which makes the client send the query.
    let r = ask(json!({"extensions": ext})).await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(
        v["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    assert!(v.get("data").is_none());
    // A hash that is not the query's is refused, and registers nothing.
    let wrong = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256("{ __typename }")}});
    let r = ask(json!({"query": query, "extensions": wrong})).await?;
    assert_eq!(r.status(), 400);
    let r = ask(json!({"extensions": wrong}))
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(
        r["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // Query and hash: runs and registers.
    let v: Value = ask(json!({"query": query, "extensions": ext}))
        .await?
        .json()
        .await?;
    assert_eq!(v["data"]["me"]["email"], ADMIN_EMAIL);
    // From now on the hash alone, over POST and GET.
    let v: Value = ask(json!({"extensions": ext})).await?.json().await?;
    assert_eq!(v["data"]["me"]["email"], ADMIN_EMAIL, "{v}");
    let v: Value = s
        .http
        .get(graphql_url(
            &s,
            &[
                ("extensions", &ext.to_string()),
                ("operationName", "PersistedMe"),
            ],
        ))
        .bearer_auth(&admin)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["data"]["me"]["role"], "MSP_ADMIN", "{v}");
    // Under the spec's media type the unknown hash is a request error: 400.
    let other = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256("{ me { id } }")}});
    let (status, _, v) = post(&s, GRJ, &json!({"extensions": other})).await?;
    assert_eq!(
        (status, v["errors"][0]["message"].clone()),
        (400, json!("PersistedQueryNotFound"))
    );
    // A registered mutation does not run over GET by its hash: the resolved document is
    // checked too (405, and nothing changes).
    let mutation = "mutation($n: String!) { createTenant(input: {name: $n}) { id } }";
    let mext = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256(mutation)}});
    let v: Value =
        ask(json!({"query": mutation, "variables": {"n": "ByPost"}, "extensions": mext}))
            .await?
            .json()
            .await?;
    assert!(v["data"]["createTenant"]["id"].is_string(), "{v}");
    let r = s
        .http
        .get(graphql_url(
            &s,
            &[
                ("extensions", &mext.to_string()),
                ("variables", r#"{"n": "ByGet"}"#),
            ],
        ))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await?;
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "METHOD_NOT_ALLOWED",
        "{v}"
    );
    let d = s
        .gql(&admin, "{ tenants { nodes { name } } }", json!({}))
        .await?;
    assert!(!d.to_string().contains("ByGet"), "{d}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_in_order_and_are_bounded() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let batch = json!([
        {"query": "{ me { email } }"},
        {"query": "{ nope }"},
        {"query": "query T { __typename }", "operationName": "T"},
    ]);
    let r = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(&admin)
        .json(&batch)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    let items = v.as_array().expect("an array answer");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["data"]["me"]["email"], ADMIN_EMAIL);
    assert!(items[1]["errors"][0]["message"].is_string() && items[1].get("data").is_none());
    assert_eq!(items[2]["data"]["__typename"], "Query");
    // Mutations in a batch run in order: a login then a query with nothing shared.
    let too_many: Vec<Value> = (0..11)
        .map(|_| json!({"query": "{ __typename }"}))
        .collect();
    let (status, _, v) = post(&s, GRJ, &Value::Array(too_many)).await?;
    assert_eq!(status, 400);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10"),
        "{v}"
    );
    Ok(())
}

/// Every error location is a real position (line and column from 1); errors without one carry
/// no `locations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_locations_are_never_line_zero() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let cases = [
        (None, "{"),
        (None, "{ nope }"),
        (None, "{ me { email } }"),
        (Some("Bearer not-a-token"), "{ me { email } }"),
        (Some("Bearer not-a-token"), "{ __typename }"),
        (None, "query A { __typename } query B { __typename }"),
        (None, "{ computer(id: \"x\") { id } }"),
    ];
    let mut seen_errors = 0;
    for (auth, q) in cases {
        let mut req = s
            .http
            .post(format!("{}/graphql", s.url))
            .json(&json!({"query": q}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let v: Value = req.send().await?.json().await?;
        for e in v["errors"].as_array().into_iter().flatten() {
            seen_errors += 1;
            if let Some(locs) = e.get("locations") {
                let locs = locs.as_array().expect("locations is a list");
                assert!(!locs.is_empty(), "{q}: empty locations: {e}");
                for l in locs {
                    assert!(
                        l["line"].as_u64() >= Some(1) && l["column"].as_u64() >= Some(1),
                        "{q}: {e}"
                    );
                }
            }
        }
    }
    assert!(seen_errors >= 5, "the cases fail: {seen_errors} errors");
    // A credential refused before execution has no position at all.
    let v: Value = s
        .http
        .post(format!("{}/graphql", s.url))
        .header("authorization", "Bearer not-a-token")
        .json(&json!({"query": "{ me { email } }"}))
        .send()
        .await?
        .json()
        .await?;
    let e = &v["errors"][0];
    assert!(e.is_object(), "{v}");
    assert!(e.get("locations").is_none_or(|l| l[0]["line"] != 0), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_from_the_binary_and_names_no_other_host() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let r = get(&s, "text/html", &[]).await?;
    assert_eq!(r.status(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .expect("a CSP")
        .to_string();
    assert!(!csp.contains("http") && !csp.contains('*'), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = r.text().await?;
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(!html.contains("//unpkg") && !html.contains("cdn"), "{html}");
    // Every script and stylesheet it references is served here, with its type and caching.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap_or("");
            if !url.starts_with("data:") {
                refs.push(url.to_string());
            }
        }
    }
    assert!(refs.len() >= 5, "{refs:?}");
    for url in &refs {
        assert!(url.starts_with("/graphql/assets/"), "{url}");
        let a = s.http.get(format!("{}{url}", s.url)).send().await?;
        assert_eq!(a.status(), 200, "{url}");
        let want = if url.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(
            content_type(&a).starts_with(want),
            "{url}: {}",
            content_type(&a)
        );
        let cache = a
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(cache.contains("max-age="), "{url}: {cache}");
        let body = a.bytes().await?;
        assert!(body.len() > 100, "{url}");
    }
    // The GraphiQL build carries its subscription client (graphql-ws), and the bootstrap
    // points it at /graphql/ws with a default query that says where to start.
    let boot = s
        .http
        .get(format!("{}/graphql/assets/upkeep-graphiql.js", s.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        boot.contains("/graphql/ws") && boot.contains("computers(first:"),
        "{boot}"
    );
    let missing = s
        .http
        .get(format!("{}/graphql/assets/nope.js", s.url))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}

/// A preflight from `origin` asking for `headers`.
async fn preflight(
    s: &TestServer,
    origin: &str,
    headers: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(s.http
        .request(reqwest::Method::OPTIONS, format!("{}/graphql", s.url))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", headers)
        .send()
        .await?)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_serves_apollo_clients_caches_preflights_and_takes_a_wildcard() -> anyhow::Result<()> {
    // The flag's parser normalises what an operator pastes from the address bar.
    let origin = upkeep_server::config::parse_cors_origin("https://Portal.Example/")
        .map_err(anyhow::Error::msg)?;
    assert_eq!(origin, "https://portal.example");
    assert!(upkeep_server::config::parse_cors_origin("https://portal.example/app").is_err());
    let s = TestServer::start_with(|c| {
        c.cors_origins = vec![origin];
        c.cors_headers = vec!["x-portal-trace".into()];
    })
    .await?;
    let apollo =
        "authorization, content-type, apollographql-client-name, apollographql-client-version";
    let p = preflight(&s, "https://portal.example", apollo).await?;
    assert_eq!(
        header(&p, "access-control-allow-origin"),
        "https://portal.example"
    );
    let allowed = header(&p, "access-control-allow-headers");
    for h in [
        "authorization",
        "content-type",
        "apollographql-client-name",
        "apollographql-client-version",
        "x-portal-trace",
    ] {
        assert!(allowed.contains(h), "{h} missing from {allowed}");
    }
    assert_eq!(header(&p, "access-control-max-age"), "600");
    assert!(header(&p, "access-control-allow-credentials").is_empty());

    let any = TestServer::start_with(|c| c.cors_origins = vec!["*".into()]).await?;
    let p = preflight(&any, "https://anything.example", apollo).await?;
    assert!(p.status().is_success(), "{}", p.status());
    assert_eq!(header(&p, "access-control-allow-origin"), "*");
    assert_eq!(header(&p, "access-control-max-age"), "600");
    let r = any
        .http
        .post(format!("{}/graphql", any.url))
        .header("Origin", "https://anything.example")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await?;
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    assert_eq!(r.json::<Value>().await?["data"]["__typename"], "Query");
    Ok(())
}

/// Bad CORS flags stop the server at start with one line naming the flag; none panics.
#[test]
fn bad_cors_flags_exit_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (
            vec!["--cors-origins", "https://portal.example/app"],
            "--cors-origins",
        ),
        (vec!["--cors-origins", "portal.example"], "--cors-origins"),
        (
            vec!["--cors-origins", "*,https://portal.example"],
            "--cors-origins",
        ),
        (vec!["--cors-headers", "bad header"], "--cors-headers"),
    ] {
        let out = Command::new(bin("upkeep-server-under-test"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.path().to_str().unwrap(),
            ])
            .args(&args)
            .env_remove("UPKEEP_CORS_ORIGINS")
            .env_remove("UPKEEP_CORS_HEADERS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
