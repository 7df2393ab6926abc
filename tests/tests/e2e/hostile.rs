//! Hostile input: random requests to every route, GraphQL bombs, markup and header injection
//! through names, postpone tokens used against another session, revoked agents, and scripts
//! that print far too much.

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use upkeep_server::auth::{Keys, POSTPONE_AUDIENCE, PostponeClaims};
use upkeep_tests::smtp::{ReceivedMail, SmtpSink, parse};
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

/// Markup and quotes every user-supplied name below carries.
const EVIL: &str = "<script>alert(1)</script> \"'&";

/// SplitMix64: deterministic, so a failing request can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A string of random characters: ASCII, controls, quotes, markup, astral planes.
    fn string(&mut self, max: u64) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| match self.below(6) {
                0 => char::from_u32(self.below(0x20) as u32).unwrap_or('x'),
                1 => *self.pick(&['<', '>', '"', '\'', '&', '\\', '{', '}', '$', '%', '\u{0}']),
                2 => char::from_u32(0x80 + self.below(0x2000) as u32).unwrap_or('é'),
                3 => char::from_u32(0x1F600 + self.below(0x50) as u32).unwrap_or('😀'),
                _ => char::from(b' ' + self.below(95) as u8),
            })
            .collect()
    }

    /// Printable ASCII without spaces (what a header value or a URL token may hold).
    fn token(&mut self, max: u64) -> String {
        let n = 1 + self.below(max);
        (0..n)
            .map(|_| char::from(b'!' + self.below(94) as u8))
            .collect()
    }
}

const KEYS: &[&str] = &[
    "protocolVersion",
    "waitSeconds",
    "inventory",
    "enrollmentKey",
    "hostname",
    "machineId",
    "os",
    "agentVersion",
    "kind",
    "outcome",
    "results",
    "error",
    "query",
    "variables",
    "operationName",
    "extensions",
    "action",
    "id",
    "__proto__",
    "",
];

fn random_json(r: &mut Rng, depth: u32) -> Value {
    match r.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(r.chance(50)),
        2 => match r.below(5) {
            0 => json!(r.next()),
            1 => json!(-(r.below(1 << 40) as i64)),
            2 => json!(r.below(3)),
            3 => json!((r.next() as f64) / 7.0),
            _ => json!(1),
        },
        3 => json!(r.string(40)),
        4 => json!(r.pick(KEYS)),
        5 => Value::Array((0..r.below(5)).map(|_| random_json(r, depth - 1)).collect()),
        _ => Value::Object(
            (0..r.below(6))
                .map(|_| {
                    let k = if r.chance(70) {
                        r.pick(KEYS).to_string()
                    } else {
                        r.string(10)
                    };
                    (k, random_json(r, depth - 1))
                })
                .collect(),
        ),
    }
}

/// An object shaped like the agent protocol (so decoding gets past the first field).
fn protocol_json(r: &mut Rng) -> Value {
    let mut v = json!({"protocolVersion": *r.pick(&[json!(1), json!(0), json!(2), json!("1"), json!(null), json!(-1), json!(4294967296u64)])});
    for _ in 0..r.below(5) {
        v[r.pick(KEYS).to_string()] = random_json(r, 3);
    }
    if r.chance(30) {
        v["outcome"] = json!({"kind": *r.pick(&["probe", "step", "reboot", "failed", "x"]), "results": random_json(r, 2), "outcome": random_json(r, 2)});
    }
    v
}

const GRAPHQL: &[&str] = &[
    "{ __typename }",
    "query { tenants { totalCount edges { node { id name } } } }",
    "query($id: ID!) { computer(id: $id) { name tenant { id } } }",
    "{ maintenanceSessions(first: 3) { edges { node { id status actions { id } } } } }",
    "mutation { login(email: \"nobody@x.example\", password: \"wrong\") { token } }",
    "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
    "subscription { maintenanceSessionUpdates { sequence } }",
    "{ emailPreview(sessionId: \"00000000-0000-0000-0000-000000000000\", kind: BEFORE) { html } }",
    "query { me { email role } software { totalCount } }",
];

fn random_graphql(r: &mut Rng) -> Value {
    let mut q = r.pick(GRAPHQL).to_string();
    for _ in 0..r.below(4) {
        let at = q
            .char_indices()
            .map(|(i, _)| i)
            .nth(r.below(q.chars().count() as u64 + 1) as usize)
            .unwrap_or(q.len());
        match r.below(4) {
            0 => q.truncate(at),
            1 => q.insert_str(at, &r.string(8)),
            2 => q.insert_str(
                at,
                r.pick::<&str>(&["{", "}", "(", ")", "...", "@skip", "$x", "\"", "#"]),
            ),
            _ => q = q.repeat(2),
        }
    }
    let mut body = json!({"query": q});
    if r.chance(50) {
        body["variables"] = random_json(r, 3);
    }
    if r.chance(20) {
        body["operationName"] = random_json(r, 1);
    }
    if r.chance(10) {
        body["extensions"] = random_json(r, 2);
    }
    if r.chance(10) {
        body = json!([body, random_json(r, 2)]);
    }
    body
}

fn random_form(r: &mut Rng) -> Vec<u8> {
    let mut parts = Vec::new();
    for _ in 0..r.below(5) {
        let k = if r.chance(60) {
            "action".to_string()
        } else {
            r.token(8)
        };
        let v = if r.chance(50) {
            r.pick(&["postpone", "update-now", "", "POSTPONE", "update-now%00"])
                .to_string()
        } else {
            r.token(20)
        };
        parts.push(format!("{k}={v}"));
    }
    parts.join("&").into_bytes()
}

/// Percent-encodes every byte that is not unreserved, so any bytes fit in a path segment.
fn path_segment(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Enrolls over plain HTTP (no agent process); returns (agent token, computer id).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_route_never_get_a_5xx_or_hang() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Fuzz").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (agent_token, _) = s.enroll_raw(&key, "fuzz-pc", "fuzz-pc").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut r = Rng(0x5EED_F022);
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
        reqwest::Method::HEAD,
        reqwest::Method::OPTIONS,
    ];
    let content_types = [
        "application/json",
        "application/json; charset=utf-16",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/graphql",
        "application/graphql-response+json",
        "",
        "*/*",
    ];
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut problems = Vec::new();
    let n = 400;
    for case in 0..n {
        // The route, and its usual method.
        let (path, method) = match r.below(13) {
            0 | 1 => ("/graphql".to_string(), reqwest::Method::POST),
            2 => (
                format!("/graphql?query={}", path_segment(r.string(30).as_bytes())),
                reqwest::Method::GET,
            ),
            3 => ("/graphql/ws".to_string(), reqwest::Method::GET),
            4 => ("/agent/v1/enroll".to_string(), reqwest::Method::POST),
            5 | 6 => ("/agent/v1/poll".to_string(), reqwest::Method::POST),
            7 => {
                let id = if r.chance(50) {
                    upkeep_server::ids::fresh().to_string()
                } else {
                    let n = 1 + r.below(40) as usize;
                    path_segment(&r.bytes(n))
                };
                (format!("/agent/v1/jobs/{id}/result"), reqwest::Method::POST)
            }
            8 | 9 => {
                let token = match r.below(3) {
                    0 => {
                        let n = 1 + r.below(200) as usize;
                        path_segment(&r.bytes(n))
                    }
                    1 => format!(
                        "{}.{}.{}",
                        b64(&r.bytes(20)),
                        b64(json!({"sid": r.string(10), "exp": r.next() >> 1, "aud": POSTPONE_AUDIENCE}).to_string().as_bytes()),
                        b64(&r.bytes(32))
                    ),
                    _ => r.token(60).replace(['/', '?', '#', '%'], "_"),
                };
                let m = if r.chance(50) {
                    reqwest::Method::GET
                } else {
                    reqwest::Method::POST
                };
                (format!("/postpone/{token}"), m)
            }
            10 => (
                r.pick(&["/healthz", "/metrics", "/console", "/"])
                    .to_string(),
                reqwest::Method::GET,
            ),
            _ => {
                let depth = 1 + r.below(4);
                let p: String = (0..depth)
                    .map(|_| {
                        let n = 1 + r.below(12) as usize;
                        format!("/{}", path_segment(&r.bytes(n)))
                    })
                    .collect();
                (p, reqwest::Method::GET)
            }
        };
        let method = if r.chance(10) {
            r.pick(&methods).clone()
        } else {
            method
        };
        // The body.
        let (body, mut ct) = match r.below(9) {
            0 => {
                let n = r.below(4096) as usize;
                (r.bytes(n), "application/octet-stream")
            }
            1 => (
                random_json(&mut r, 4).to_string().into_bytes(),
                "application/json",
            ),
            2 => (
                protocol_json(&mut r).to_string().into_bytes(),
                "application/json",
            ),
            3 | 4 => (
                random_graphql(&mut r).to_string().into_bytes(),
                "application/json",
            ),
            5 => (random_form(&mut r), "application/x-www-form-urlencoded"),
            6 if r.chance(35) => {
                let size = 1024 * 1024 + r.below(2 * 1024 * 1024) as usize;
                (vec![b'{'; size], "application/json")
            }
            _ => (Vec::new(), ""),
        };
        if r.chance(25) {
            ct = *r.pick(&content_types);
        }
        // A valid poll would be held open for `waitSeconds`: keep random polls short.
        let body = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut o)) if path == "/agent/v1/poll" => {
                o.remove("waitSeconds");
                Value::Object(o).to_string().into_bytes()
            }
            _ => body,
        };
        let auth = match r.below(6) {
            0 | 1 => None,
            2 => Some(format!("Bearer {agent_token}")),
            3 => Some(format!("Bearer {admin}")),
            4 => Some(format!("Bearer {}", r.token(50))),
            _ => Some(r.token(80)),
        };
        let mut req = http.request(method.clone(), format!("{}{path}", s.url));
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        if path == "/graphql/ws" && r.chance(50) {
            req = req
                .header("connection", "upgrade")
                .header("upgrade", *r.pick(&["websocket", "h2c", "x"]))
                .header("sec-websocket-protocol", r.token(20));
        }
        let huge = body.len() > 1024 * 1024;
        let what = format!(
            "case {case}: {method} {path} ({} bytes, content-type {ct:?}, auth {})",
            body.len(),
            auth.as_deref()
                .map_or("none", |a| if a.contains(&agent_token) {
                    "agent"
                } else if a.contains(&admin) {
                    "admin"
                } else {
                    "garbage"
                })
        );
        let t0 = Instant::now();
        let resp = req.body(body).send().await;
        let took = t0.elapsed();
        if took > slowest.0 {
            slowest = (took, what.clone());
        }
        let resp = match resp {
            Ok(resp) => resp,
            // A server may answer a huge body early and close the connection while the client
            // is still sending; that is a refusal, not a failure. A timeout is a hang.
            Err(e) if huge && !e.is_timeout() => {
                *statuses.entry(0).or_default() += 1;
                continue;
            }
            Err(e) => {
                problems.push(format!("{what}: no answer: {e:?}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{what}: answer cut short: {e}"));
                continue;
            }
        };
        *statuses.entry(status).or_default() += 1;
        if status >= 500 {
            problems.push(format!(
                "{what}: {status} {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        // Bodies over 1 MiB are refused before they are buffered.
        if huge && method == reqwest::Method::POST && status != 413 && path.starts_with("/graphql")
        {
            problems.push(format!("{what}: {status} instead of 413"));
        }
        // GraphQL refusals keep the GraphQL error shape, even those made before parsing.
        if path == "/graphql"
            && method == reqwest::Method::POST
            && status >= 400
            && serde_json::from_str::<Value>(&text)
                .map_or(true, |v| !v["errors"][0]["extensions"]["code"].is_string())
        {
            problems.push(format!(
                "{what}: {status} is not a GraphQL error: {text:?} ({ctype})"
            ));
        }
        // Agent routes answer errors as JSON (CONTRACT §3).
        if path.starts_with("/agent/")
            && method == reqwest::Method::POST
            && status >= 400
            && serde_json::from_str::<Value>(&text).map_or(true, |v| !v["code"].is_string())
        {
            problems.push(format!(
                "{what}: {status} is not a JSON error: {text:?} ({ctype})"
            ));
        }
    }
    println!("statuses over {n} requests (0: refused mid-upload): {statuses:?}");
    println!("slowest: {:.1?} for {}", slowest.0, slowest.1);
    // A well-formed request over 1 MiB is refused too, not buffered and run.
    let padded =
        json!({"query": "{ __typename }", "variables": {"pad": "x".repeat(2 * 1024 * 1024)}});
    // The server answers 413 before the upload ends; a raw connection reads that answer.
    let (status, body) = upkeep_tests::raw_post(
        s.addr,
        "/graphql",
        Some(&admin),
        padded.to_string().into_bytes(),
    )
    .await?;
    if status != 413 || body["errors"][0]["extensions"]["code"] != "PAYLOAD_TOO_LARGE" {
        problems.push(format!(
            "POST /graphql with a valid 2 MiB body: {status} {body} instead of 413"
        ));
    }
    // Still healthy and still serving.
    let ok = s.http.get(format!("{}/healthz", s.url)).send().await?;
    assert_eq!(ok.status(), 200);
    let me = s.gql(&admin, "{ me { email } }", json!({})).await?;
    assert_eq!(me["me"]["email"], ADMIN_EMAIL);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await?
        .text()
        .await?;
    let five: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("upkeep_http_requests_total{") && l.contains("status=\"5"))
        .collect();
    assert!(five.is_empty(), "5xx answers counted: {five:?}");
    // Random paths do not become metric labels.
    let routes: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("upkeep_http_requests_total{route=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(routes.len() < 20, "route labels: {routes:?}");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_bombs_are_refused_with_bad_user_input() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let mut cases: Vec<(&str, String, Value)> = Vec::new();
    let aliases = |field: &str| {
        let body: String = (0..10_000).map(|i| format!(" a{i}: {field}")).collect();
        format!("query {{{body} }}")
    };
    cases.push((
        "10 000 aliases of __typename",
        aliases("__typename"),
        json!({}),
    ));
    cases.push((
        "10 000 aliases of a field",
        aliases("me { email }"),
        json!({}),
    ));
    cases.push((
        "10 000 aliases of a costly field",
        aliases("maintenanceSessions(first: 100) { edges { node { id logs { message } } } }"),
        json!({}),
    ));
    cases.push((
        "fragment cycle",
        "query { ...A } fragment A on Query { __typename ...B } fragment B on Query { me { email } ...A }"
            .into(),
        json!({}),
    ));
    // Each fragment spreads the next one twice: 2^18 selections once expanded, from 1.5 KB.
    // (Kept at 18 levels so that a server without a guard still answers within seconds; every
    // further level doubles its work.)
    let fan_out = |field: &str| {
        let levels = 18;
        let mut q = String::from("query { ...F0 }");
        for i in 0..levels {
            q.push_str(&format!(
                " fragment F{i} on Query {{ {field} ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        q.push_str(&format!(" fragment F{levels} on Query {{ {field} }}"));
        q
    };
    cases.push((
        "fragment fan-out of __typename",
        fan_out("__typename"),
        json!({}),
    ));
    cases.push((
        "fragment fan-out of a field",
        fan_out("me { email }"),
        json!({}),
    ));
    let nest = 100_000;
    cases.push((
        "selection sets nested 100 000 deep",
        format!("query {}{}", "{ me ".repeat(nest), "}".repeat(nest)),
        json!({}),
    ));
    cases.push((
        "list value nested 100 000 deep",
        format!(
            "query {{ computers(search: {}\"x\"{}) {{ totalCount }} }}",
            "[".repeat(nest),
            "]".repeat(nest)
        ),
        json!({}),
    ));
    let mut depth = String::from("id");
    for _ in 0..40 {
        depth = format!("computer {{ tenant {{ id }} sessions {{ computer {{ {depth} }} }} }}");
    }
    cases.push((
        "40 levels of real fields",
        format!("query($id: ID!) {{ maintenanceSession(id: $id) {{ {depth} }} }}"),
        json!({"id": upkeep_server::ids::fresh().to_string()}),
    ));
    let mut problems = Vec::new();
    for (what, query, vars) in &cases {
        for token in [None, Some(admin.as_str())] {
            let t0 = Instant::now();
            let body = s.gql_raw(token, query, vars.clone()).await?;
            let took = t0.elapsed();
            let code = body["errors"][0]["extensions"]["code"].clone();
            println!(
                "{what} ({} bytes, {}): {code} in {took:.1?}",
                query.len(),
                if token.is_some() {
                    "admin"
                } else {
                    "anonymous"
                }
            );
            if code != "BAD_USER_INPUT" || !body["data"].is_null() {
                problems.push(format!(
                    "{what}: not refused: {}",
                    body.to_string().chars().take(200).collect::<String>()
                ));
            }
        }
    }
    // Variables nested past serde_json's recursion limit are a bad request, not a crash.
    let deep = format!(
        "{{\"query\": \"{{ __typename }}\", \"variables\": {{\"v\": {}1{}}}}}",
        "[".repeat(nest),
        "]".repeat(nest)
    );
    let r = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await?;
    assert!(r.status().is_client_error(), "{}", r.status());
    // The server is still fine.
    assert_eq!(
        s.gql(&admin, "{ me { email } }", json!({})).await?["me"]["email"],
        ADMIN_EMAIL
    );
    assert!(
        problems.is_empty(),
        "{} bomb(s) not refused:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

/// A tenant whose every name carries markup, a person, and two computers with sessions
/// scheduled in three hours, each with its before-mail received. Computer `a` was renamed
/// through the API; computer `b` keeps the host name its agent reported, which carries a
/// header injection attempt.
struct Hostile {
    s: TestServer,
    admin: String,
    smtp: SmtpSink,
    a: (String, String),
    b: (String, String),
    mail_a: ReceivedMail,
    mail_b: ReceivedMail,
    _agents: Vec<TestAgent>,
}

const B_HOSTNAME: &str =
    "pc-b\r\nBcc: x@evil.example\r\nX-Injected: yes\r\n\r\n<script>alert(1)</script>";

/// What the server keeps of `B_HOSTNAME`: control characters become spaces.
fn b_hostname_cleaned() -> String {
    B_HOSTNAME
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

async fn hostile() -> Result<Hostile> {
    let smtp = SmtpSink::start().await?;
    let url = smtp.url();
    let s = TestServer::start_with(move |c| c.smtp_url = Some(url)).await?;
    let admin = s.admin().await?;
    let tenant = s
        .gql(
            &admin,
            "mutation($c: String!) { createTenant(input: {name: \"Hostile\", companyName: $c, timeZone: \"Europe/Berlin\"}) { id } }",
            json!({"c": format!("Co {EVIL}")}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .context("tenant")?
        .to_string();
    // A logo URL that tries to break out of its attribute: refused, or escaped (checked below).
    let _ = s
        .gql_raw(
            Some(&admin),
            "mutation($t: ID!, $u: String!) { updateTenant(id: $t, input: {logoUrl: $u}) { id } }",
            json!({"t": tenant, "u": "https://evil.example/logo.png?\"onerror=\"alert(1)"}),
        )
        .await?;
    let person = s
        .gql(
            &admin,
            "mutation($t: ID!, $n: String!) { createPerson(input: {tenantId: $t, name: $n, email: \"pat@victim.example\"}) { id } }",
            json!({"t": tenant, "n": format!("Pat {EVIL}")}),
        )
        .await?["createPerson"]["id"]
        .as_str()
        .context("person")?
        .to_string();
    let key = s
        .gql(
            &admin,
            "mutation($t: ID!, $p: ID) { createEnrollmentKey(tenantId: $t, input: {primaryPersonId: $p}) { key } }",
            json!({"t": tenant, "p": person}),
        )
        .await?["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": format!("App {EVIL}"), "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "2.0", "installScript": {"language": "SHELL", "body": "true"}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .context("software")?
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let agents = vec![
        TestAgent::start(&s.url, &key, "pc-a").await?,
        TestAgent::start(&s.url, &key, B_HOSTNAME).await?,
    ];
    let ids = wait_for("both computers online", T, || async {
        let d = s
            .gql(
                &admin,
                "query($t: ID) { computers(tenantId: $t) { edges { node { id hostname online } } } }",
                json!({"t": tenant}),
            )
            .await?;
        let find = |h: &str| {
            d["computers"]["edges"]
                .as_array()
                .and_then(|e| {
                    e.iter()
                        .find(|n| n["node"]["hostname"] == h && n["node"]["online"] == true)
                })
                .and_then(|n| n["node"]["id"].as_str().map(String::from))
        };
        Ok(find("pc-a").zip(find(&b_hostname_cleaned())))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; cleaned {:?}", b_hostname_cleaned()));
    let ids = match ids {
        Ok(i) => i,
        Err(e) => {
            let d = s.gql(&admin, "query($t: ID) { computers(tenantId: $t) { edges { node { hostname online } } } }", json!({"t": tenant})).await?;
            anyhow::bail!("{e}: {d}");
        }
    };
    let (ca, cb) = ids;
    // Names set through the API may carry markup but not control characters.
    s.gql(
        &admin,
        "mutation($c: ID!, $n: String!) { updateComputer(id: $c, input: {name: $n}) { id } }",
        json!({"c": ca, "n": format!("PC {EVIL}")}),
    )
    .await?;
    for (q, vars) in [
        (
            "mutation($c: ID!, $n: String!) { updateComputer(id: $c, input: {name: $n}) { id } }",
            json!({"c": ca, "n": "pc\r\nBcc: x@evil.example"}),
        ),
        (
            "mutation($t: ID!, $n: String!) { updateTenant(id: $t, input: {companyName: $n}) { id } }",
            json!({"t": tenant, "n": "Co\r\nBcc: x@evil.example"}),
        ),
        (
            "mutation($t: ID!, $n: String!) { updateTenant(id: $t, input: {mailFrom: $n}) { id } }",
            json!({"t": tenant, "n": "IT <it@acme.example>\r\nBcc: x@evil.example"}),
        ),
    ] {
        assert_eq!(
            s.gql_err(Some(&admin), q, vars.clone()).await?,
            "BAD_USER_INPUT",
            "{vars}"
        );
    }
    let at = chrono::Utc::now() + chrono::Duration::hours(3);
    let mut sessions = Vec::new();
    for c in [&ca, &cb] {
        let id = s
            .start_session(
                &admin,
                c,
                json!({"executeAt": at, "options": {"notifyBefore": true}}),
            )
            .await?;
        s.wait_status(&admin, &id, &["SCHEDULED"], T).await?;
        sessions.push(id);
    }
    let mails = wait_for("two before-mails", T, || async {
        Ok((smtp.received().len() >= 2).then(|| smtp.received()))
    })
    .await?;
    let (mail_a, mail_b) = if parse(&mails[0].data).text.contains("PC <script>") {
        (mails[0].clone(), mails[1].clone())
    } else {
        (mails[1].clone(), mails[0].clone())
    };
    Ok(Hostile {
        s,
        admin,
        smtp,
        a: (ca, sessions[0].clone()),
        b: (cb, sessions[1].clone()),
        mail_a,
        mail_b,
        _agents: agents,
    })
}

/// Undoes the HTML escaping Handlebars applies.
fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#x3D;", "=")
        .replace("&#x60;", "`")
        .replace("&amp;", "&")
}

/// Markup from names never reaches HTML unescaped, but it is there, escaped.
fn assert_escaped(what: &str, html: &str, names: &[String]) {
    assert!(
        !html.contains("<script>alert(1)"),
        "{what}: a name's markup reached the HTML raw"
    );
    assert!(!html.contains("\"'&"), "{what}: quotes and & unescaped");
    assert!(
        !html.contains("\"onerror"),
        "{what}: an attribute broke out"
    );
    let plain = unescape(html);
    for n in names {
        assert!(plain.contains(n.as_str()), "{what}: {n:?} is missing");
    }
}

fn link(text: &str) -> Result<String> {
    let start = text.find("http://").context("a link in the mail")?;
    Ok(text[start..]
        .split_whitespace()
        .next()
        .context("link")?
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_escaped_in_mails_and_pages_and_inject_no_headers() -> Result<()> {
    let h = hostile().await?;
    let company = format!("Co {EVIL}");
    let computer = format!("PC {EVIL}");
    let person = format!("Pat {EVIL}");
    let software = format!("App {EVIL}");
    let all = [
        company.clone(),
        computer.clone(),
        person.clone(),
        software.clone(),
    ];
    let m = parse(&h.mail_a.data);
    assert!(
        !m.html.to_ascii_lowercase().contains("<script"),
        "no script in a mail"
    );
    assert_escaped("before-mail HTML", &m.html, &all);
    for n in &all {
        assert!(
            m.text.contains(n.as_str()),
            "text part keeps {n:?} verbatim: {}",
            m.text
        );
    }
    // The preview renders the same way.
    let p =
        h.s.gql(
            &h.admin,
            "query($id: ID!) { emailPreview(sessionId: $id, kind: BEFORE) { subject html text } }",
            json!({"id": h.a.1}),
        )
        .await?["emailPreview"]
            .clone();
    assert_escaped(
        "emailPreview HTML",
        p["html"].as_str().context("html")?,
        &all,
    );
    let text = p["text"].as_str().context("text")?;
    assert!(all.iter().all(|n| text.contains(n.as_str())), "{text}");
    assert!(
        p["subject"]
            .as_str()
            .is_some_and(|s| s.contains(&computer) && !s.contains(['\r', '\n'])),
        "{p}"
    );
    // The postpone page.
    let url = link(&m.text)?;
    let page = h.s.http.get(&url).send().await?;
    assert_eq!(page.status(), 200);
    assert_escaped(
        "postpone page",
        &page.text().await?,
        &[company.clone(), computer.clone(), software.clone()],
    );

    // The host name an agent reported went into the subject of computer b's mail: no header
    // came of its CR LF, no recipient was added.
    assert_eq!(h.mail_b.rcpt, vec!["pat@victim.example".to_string()]);
    let raw = &h.mail_b.data;
    let head = &raw[..raw.find("\r\n\r\n").context("header block")?];
    let names: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_ascii_lowercase()))
        .collect();
    println!("headers of the mail about the injected host name:\n{head}");
    let allowed = [
        "from",
        "to",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    ];
    assert!(
        names.iter().all(|n| allowed.contains(&n.as_str())),
        "unexpected headers {names:?} in\n{head}"
    );
    let mb = parse(raw);
    assert!(mb.text.contains("pc-b"), "{}", mb.text);
    assert!(
        !mb.html.contains("<script>alert(1)"),
        "host name markup escaped"
    );
    assert!(
        mb.header("Subject").is_some_and(|s| s.contains("pc-b")),
        "{head}"
    );
    let page = h.s.http.get(link(&mb.text)?).send().await?.text().await?;
    assert!(!page.contains("<script>alert(1)"), "host name on the page");
    assert_eq!(h.smtp.received().len(), 2);
    Ok(())
}

/// A postpone token carries its session id under the server's signature: it acts on that
/// session only. Changing the id breaks the signature; a token the server did sign for
/// another session still expires; neither changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postpone_token_acts_on_its_own_session_only() -> Result<()> {
    let h = hostile().await?;
    let (s, admin) = (&h.s, &h.admin);
    let token_a = link(&parse(&h.mail_a.data).text)?
        .rsplit('/')
        .next()
        .context("token")?
        .to_string();
    let (sa, sb) = (&h.a.1, &h.b.1);
    let state = |id: &str| {
        let id = id.to_string();
        async move {
            let x = s.session(admin, &id).await?;
            anyhow::Ok((
                x["status"].as_str().unwrap_or("").to_string(),
                x["postponeCount"].as_i64(),
                x["executeAt"].as_str().unwrap_or("").to_string(),
            ))
        }
    };
    let (a0, b0) = (state(sa).await?, state(sb).await?);
    assert_eq!((a0.0.as_str(), b0.0.as_str()), ("SCHEDULED", "SCHEDULED"));
    let post = |token: String| async move {
        let r = s
            .http
            .post(format!("{}/postpone/{token}", s.url))
            .form(&[("action", "postpone")])
            .send()
            .await?;
        let status = r.status().as_u16();
        anyhow::Ok((status, r.text().await?))
    };
    let get = |token: String| async move {
        let r = s
            .http
            .get(format!("{}/postpone/{token}", s.url))
            .send()
            .await?;
        let status = r.status().as_u16();
        anyhow::Ok((status, r.text().await?))
    };

    // A's token with B's session id in its payload: the signature no longer matches.
    let parts: Vec<&str> = token_a.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1])?,
    )?;
    assert_eq!(claims["sid"], sa.as_str(), "the token names its session");
    claims["sid"] = json!(sb);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    // The same, unsigned (`alg: none`).
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let now = s.app().clock.now();
    let mint = |keys: &Keys, sid: &str, exp: chrono::DateTime<chrono::Utc>, aud: &str| {
        keys.issue_postpone_token(&PostponeClaims {
            sid: sid.to_string(),
            rcpt: "pat@victim.example".into(),
            jti: upkeep_server::ids::fresh().to_string(),
            exp: exp.timestamp(),
            aud: aud.to_string(),
            generation: None,
            act: None,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let keys = &s.app().keys;
    let later = now + chrono::Duration::hours(1);
    let other_key = Keys::new(b"not the server's secret, but long enough to sign");
    let invalid = [
        ("A's token re-pointed at B", tampered),
        ("alg none", none),
        (
            "signed with another key",
            mint(&other_key, sb, later, POSTPONE_AUDIENCE)?,
        ),
        (
            "an API token's audience",
            mint(keys, sb, later, "upkeep-api")?,
        ),
        (
            "a session that does not exist",
            mint(
                keys,
                &upkeep_server::ids::fresh().to_string(),
                later,
                POSTPONE_AUDIENCE,
            )?,
        ),
        (
            "a session id that is no id",
            mint(keys, "../../graphql", later, POSTPONE_AUDIENCE)?,
        ),
        ("the admin's API token", admin.clone()),
    ];
    for (what, token) in invalid {
        let (status, page) = post(token.clone()).await?;
        assert_eq!(status, 400, "{what}: {page}");
        assert!(page.contains("not valid"), "{what}: the page says so");
        assert_eq!(get(token).await?.0, 400, "{what}");
    }
    // Signed by the server for B, but expired: 410, and the page says so.
    let expired = mint(
        keys,
        sb,
        now - chrono::Duration::minutes(1),
        POSTPONE_AUDIENCE,
    )?;
    let (status, page) = post(expired.clone()).await?;
    assert_eq!(status, 410, "{page}");
    assert!(page.to_lowercase().contains("expired"), "{page}");
    assert_eq!(get(expired).await?.0, 410);
    assert_eq!(
        (state(sa).await?, state(sb).await?),
        (a0.clone(), b0.clone()),
        "nothing changed"
    );
    // A's own token postpones A, and only A.
    let (status, page) = post(token_a).await?;
    assert_eq!(status, 200, "{page}");
    let a1 = state(sa).await?;
    assert_eq!((a1.0.as_str(), a1.1), ("POSTPONED", Some(1)));
    assert_eq!(state(sb).await?, b0, "B is untouched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_refused_at_once() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Revoke").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("ran");
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "tool", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": format!("touch '{}'; exit 0", marker.display())},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": "true"}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .context("software")?
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let (token, computer) = s.enroll_raw(&key, "stolen-laptop", "stolen-laptop").await?;
    let poll = |wait: u32| {
        s.http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(&token)
            .json(&json!({"protocolVersion": 1, "waitSeconds": wait}))
            .send()
    };
    assert_eq!(poll(0).await?.status(), 200);
    // A long-poll is held open when the token is revoked.
    let polls = s.metric("upkeep_agent_polls_total").await?;
    let held = tokio::spawn({
        let (http, url, token) = (s.http.clone(), s.url.clone(), token.clone());
        async move {
            http.post(format!("{url}/agent/v1/poll"))
                .bearer_auth(&token)
                .json(&json!({"protocolVersion": 1, "waitSeconds": 8}))
                .send()
                .await
        }
    });
    wait_for("the long-poll to be held", T, || async {
        Ok((s.metric("upkeep_agent_polls_total").await? > polls).then_some(()))
    })
    .await?;
    let t0 = Instant::now();
    let r = s
        .gql(
            &admin,
            "mutation($c: ID!) { revokeComputerAgent(id: $c) }",
            json!({"c": computer}),
        )
        .await?;
    assert_eq!(r["revokeComputerAgent"], true);
    // New calls: 401 at once, whatever the body.
    let r = poll(30).await?;
    assert_eq!(r.status(), 401);
    println!("poll refused {:.1?} after the revocation", t0.elapsed());
    assert_eq!(r.json::<Value>().await?["code"], "UNAUTHENTICATED");
    let r = s
        .http
        .post(format!(
            "{}/agent/v1/jobs/{}/result",
            s.url,
            upkeep_server::ids::fresh()
        ))
        .bearer_auth(&token)
        .json(&json!({"protocolVersion": 1, "outcome": {"kind": "failed", "error": "x"}}))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let c = s
        .gql(
            &admin,
            "query($c: ID!) { computer(id: $c) { agentRevoked } }",
            json!({"c": computer}),
        )
        .await?;
    assert_eq!(c["computer"]["agentRevoked"], true);
    // Work started for the computer now must not reach the revoked agent through the poll it
    // still holds.
    s.start_session(&admin, &computer, json!({"detectionOnly": true}))
        .await?;
    let held = held.await??;
    let status = held.status().as_u16();
    let body: Value = held.json().await?;
    println!("the held poll answered {status} {body}");
    assert!(
        status == 401 || body["jobs"].as_array().is_some_and(|j| j.is_empty()),
        "a revoked agent was handed work: {status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_script_output_is_capped() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Noisy").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    const MIB_OUT: &str = "head -c 1048576 /dev/zero | tr '\\0' 'o'; echo";
    const MIB_ERR: &str = "head -c 1048576 /dev/zero | tr '\\0' 'e' >&2; echo >&2";
    // Software whose install floods stdout and stderr and succeeds.
    let sw = s
        .gql(
            &admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "chatty", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "cat ../chatty.version 2>/dev/null; exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL",
                    "body": format!("{MIB_OUT}; {MIB_ERR}; echo 1.0 > ../chatty.version")}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .context("software")?
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    // A task whose set script floods both streams, in lines, and fails.
    let task = s
        .gql(
            &admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {"name": "flood", "tenantId": tenant,
                "testScript": {"language": "SHELL", "body": "exit 1"},
                "setScript": {"language": "SHELL", "body": "yes 'out line' | head -c 1048576; yes 'err line' | head -c 1048576 >&2; exit 2"}}}),
        )
        .await?["createMaintenanceTask"]["id"]
        .as_str()
        .context("task")?
        .to_string();
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task, "order": "END"})).await?;
    let _agent = TestAgent::start(&s.url, &key, "noisy-pc").await?;
    let c = s.computer_id(&admin, "noisy-pc").await?;
    s.wait_online(&admin, &c).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    let done = s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert_eq!(done["statusReason"], "1 of 2 actions failed");
    let actions = done["actions"].as_array().context("actions")?;
    assert_eq!(
        (actions[0]["name"].as_str(), actions[0]["status"].as_str()),
        (Some("chatty"), Some("SUCCEEDED")),
        "a flood of output does not fail a step"
    );
    assert_eq!(actions[1]["status"], "FAILED");
    let msg = actions[1]["resultMessage"].as_str().unwrap_or("");
    assert!(
        msg.contains("exited 2") && msg.len() <= 1024,
        "a bounded message: {} bytes, {}",
        msg.len(),
        msg.chars().take(200).collect::<String>()
    );
    for a in actions {
        let m = a["resultMessage"].as_str().unwrap_or("");
        assert!(m.len() <= 1024, "resultMessage of {} bytes", m.len());
    }
    let logs = done["logs"].as_array().context("logs")?;
    let longest = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(0);
    assert!(longest <= 1024, "a log line of {longest} bytes");
    let whole = done.to_string().len();
    println!(
        "session as GraphQL shows it: {whole} bytes, {} log lines, longest {longest}",
        logs.len()
    );
    assert!(
        whole < 64 * 1024,
        "the stored session stays small: {whole} bytes"
    );
    Ok(())
}

/// An agent body is checked in order: JSON at all (400), then its `protocolVersion` (400
/// `UNSUPPORTED_PROTOCOL` for another version, 400 when missing or not a whole number, also
/// for JSON that is not an object), then the message's shape (422); the version is found
/// however its key is escaped, the last of a repeated `protocolVersion` is the one checked,
/// and a repeated field of the message is refused (422: which one counts is ambiguous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_body_is_checked_for_json_then_version_then_shape() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Bodies").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (token, _) = s.enroll_raw(&key, "body-check", "body-check").await?;
    let cases: &[(&str, u16, &str)] = &[
        ("{\"protocolVersion\":1,", 400, "BAD_REQUEST"),
        ("not json", 400, "BAD_REQUEST"),
        ("{\"waitSeconds\":0}", 400, "BAD_REQUEST"),
        ("[1,0]", 400, "BAD_REQUEST"),
        ("1", 400, "BAD_REQUEST"),
        (
            "{\"protocolVersion\":1.0,\"waitSeconds\":0}",
            400,
            "BAD_REQUEST",
        ),
        (
            "{\"protocolVersion\":\"1\",\"waitSeconds\":0}",
            400,
            "BAD_REQUEST",
        ),
        (
            "{\"protocolVersion\":2,\"waitSeconds\":0}",
            400,
            "UNSUPPORTED_PROTOCOL",
        ),
        (
            "{\"protocol\\u0056ersion\":2,\"waitSeconds\":0}",
            400,
            "UNSUPPORTED_PROTOCOL",
        ),
        (
            "{\"protocolVersion\":1,\"protocolVersion\":2}",
            400,
            "UNSUPPORTED_PROTOCOL",
        ),
        (
            "{\"protocolVersion\":1,\"waitSeconds\":\"soon\"}",
            422,
            "INVALID_MESSAGE",
        ),
        (
            "{\"protocolVersion\":1,\"waitSeconds\":0,\"waitSeconds\":5}",
            422,
            "INVALID_MESSAGE",
        ),
        (
            "{\"protocolVersion\":2,\"protocolVersion\":1,\"waitSeconds\":0}",
            422,
            "INVALID_MESSAGE",
        ),
        (
            "{\"nested\":[[{\"a\":{}}]],\"protocolVersion\":1,\"waitSeconds\":0}",
            200,
            "",
        ),
        ("{\"protocol\\u0056ersion\":1,\"waitSeconds\":0}", 200, ""),
    ];
    for (body, status, code) in cases {
        let r = s
            .http
            .post(format!("{}/agent/v1/poll", s.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(*body)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), *status, "{body}");
        let v: Value = r.json().await?;
        if *status == 200 {
            assert!(v["jobs"].is_array(), "{body}: {v}");
        } else {
            assert_eq!(v["code"], *code, "{body}: {v}");
        }
    }
    Ok(())
}
