//! Lists a portal builds on: `orderBy` both ways, `last`/`before`, keyset cursors that outlive
//! their item (and refuse another order), `computers(filter)`, `trigger` as a list, the Relay
//! `Node` with `node(id)` and the lookups, the deletes with their cascades and refusals, and
//! unique tenant names.

use anyhow::Context as _;
use serde_json::{Value, json};
use std::time::Duration;
use upkeep_agent_protocol as proto;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(30);
const PASSWORD: &str = "a long enough password 1";

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().expect("a test time")
}

/// Enrolls a machine (no agent) with this hostname and OS; returns `(agentToken, id)`.
async fn enroll(
    s: &TestServer,
    key: &str,
    host: &str,
    os: &str,
) -> anyhow::Result<(String, String)> {
    let r = s
        .enroll(&proto::EnrollRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            enrollment_key: key.into(),
            hostname: host.into(),
            machine_id: format!("machine-{host}"),
            os: os.into(),
            agent_version: "0".into(),
        })
        .await?;
    Ok((r.agent_token, r.computer_id))
}

/// One poll that answers at once; `body` adds fields (an inventory).
async fn poll(s: &TestServer, token: &str, extra: Value) -> anyhow::Result<u16> {
    let mut body = json!({"protocolVersion": proto::PROTOCOL_VERSION, "waitSeconds": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = s
        .http
        .post(format!("{}/agent/v1/poll", s.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// The first error of an operation: (code, message).
async fn error(s: &TestServer, token: &str, q: &str, v: Value) -> anyhow::Result<(String, String)> {
    let body = s.gql_raw(Some(token), q, v).await?;
    let e = body["errors"]
        .get(0)
        .with_context(|| format!("expected an error, got {body}"))?;
    Ok((
        e["extensions"]["code"].as_str().unwrap_or("").to_string(),
        e["message"].as_str().unwrap_or("").to_string(),
    ))
}

fn names(conn: &Value, field: &str) -> Vec<String> {
    conn["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["node"][field].as_str().unwrap_or("?").to_string())
        .collect()
}

fn page_info(conn: &Value) -> (bool, bool) {
    (
        conn["pageInfo"]["hasPreviousPage"] == true,
        conn["pageInfo"]["hasNextPage"] == true,
    )
}

async fn user_token(
    s: &TestServer,
    admin: &str,
    email: &str,
    role: &str,
    tenant: &str,
) -> anyhow::Result<String> {
    s.gql(
        admin,
        "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
        json!({"i": {"email": email, "password": PASSWORD, "role": role, "tenantId": tenant}}),
    )
    .await?;
    s.login(email, PASSWORD).await
}

const COMPUTERS: &str =
    "query($o: ComputerOrder, $f: Int, $a: String, $l: Int, $b: String, $filter: ComputerFilter) {
  computers(orderBy: $o, first: $f, after: $a, last: $l, before: $b, filter: $filter) {
    totalCount edges { cursor node { id name } }
    pageInfo { hasPreviousPage hasNextPage startCursor endCursor } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computers_order_both_ways_page_backward_and_cursors_outlive_their_item()
-> anyhow::Result<()> {
    let s = TestServer::start_with(|c| {
        c.test_clock = Some(at("2026-03-02T09:00:00Z"));
        c.offline_after_seconds = 600;
    })
    .await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let mut tokens = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    for host in ["delta", "alpha", "echo", "charlie", "bravo"] {
        let (token, id) = enroll(&s, &key, host, "Linux").await?;
        tokens.insert(host, token);
        ids.insert(host, id);
    }
    let list = |v: Value| {
        let s = &s;
        let admin = &admin;
        async move { Ok::<Value, anyhow::Error>(s.gql(admin, COMPUTERS, v).await?["computers"].clone()) }
    };
    // The default stays enrollment order.
    let d = list(json!({})).await?;
    assert_eq!(
        names(&d, "name"),
        ["delta", "alpha", "echo", "charlie", "bravo"]
    );
    let by_name = json!({"field": "NAME", "direction": "ASC"});
    let d = list(json!({"o": by_name})).await?;
    assert_eq!(
        names(&d, "name"),
        ["alpha", "bravo", "charlie", "delta", "echo"]
    );
    let d = list(json!({"o": {"field": "NAME", "direction": "DESC"}})).await?;
    assert_eq!(
        names(&d, "name"),
        ["echo", "delta", "charlie", "bravo", "alpha"]
    );

    // Forward pages.
    let p1 = list(json!({"o": by_name, "f": 2})).await?;
    assert_eq!(names(&p1, "name"), ["alpha", "bravo"]);
    assert_eq!(page_info(&p1), (false, true));
    assert_eq!(p1["totalCount"], 5);
    let p2 = list(json!({"o": by_name, "f": 2, "a": p1["pageInfo"]["endCursor"]})).await?;
    assert_eq!(names(&p2, "name"), ["charlie", "delta"]);
    assert_eq!(page_info(&p2), (true, true));
    // Backward pages.
    let b1 = list(json!({"o": by_name, "l": 2})).await?;
    assert_eq!(names(&b1, "name"), ["delta", "echo"]);
    assert_eq!(page_info(&b1), (true, false));
    let b2 = list(json!({"o": by_name, "l": 2, "b": b1["pageInfo"]["startCursor"]})).await?;
    assert_eq!(names(&b2, "name"), ["bravo", "charlie"]);
    assert_eq!(page_info(&b2), (true, true));

    // The cursor of "charlie" outlives charlie.
    let charlie = p2["edges"][0]["cursor"].clone();
    s.gql(
        &admin,
        "mutation($id: ID!) { deleteComputer(id: $id) }",
        json!({"id": ids["charlie"]}),
    )
    .await?;
    let after = list(json!({"o": by_name, "f": 2, "a": charlie})).await?;
    assert_eq!(names(&after, "name"), ["delta", "echo"]);
    assert_eq!(page_info(&after), (true, false));
    let before = list(json!({"o": by_name, "l": 5, "b": charlie})).await?;
    assert_eq!(names(&before, "name"), ["alpha", "bravo"]);
    assert_eq!(page_info(&before), (false, true));

    // A cursor of another order, or no cursor at all, is refused clearly.
    let (code, message) = error(
        &s,
        &admin,
        COMPUTERS,
        json!({"o": {"field": "NAME", "direction": "DESC"}, "a": charlie}),
    )
    .await?;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(message.contains("orderBy"), "{message}");
    let (code, message) = error(&s, &admin, COMPUTERS, json!({"a": "bm90IGEgY3Vyc29y"})).await?;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(
        message.contains("is not a cursor from this API"),
        "{message}"
    );
    let (code, _) = error(&s, &admin, COMPUTERS, json!({"f": 1, "l": 1})).await?;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = error(&s, &admin, COMPUTERS, json!({"l": -1})).await?;
    assert_eq!(code, "BAD_USER_INPUT");
    // Above the cap a page is the cap: the schema says so.
    let d = list(json!({"f": 100_000})).await?;
    assert_eq!(names(&d, "name").len(), 4);
    let d = s
        .gql(&admin, "{ __type(name: \"Query\") { fields { name type { ofType { name } } args { name description } } } }", json!({}))
        .await?;
    let mut connections = 0;
    for f in d["__type"]["fields"].as_array().into_iter().flatten() {
        if !f["type"]["ofType"]["name"]
            .as_str()
            .unwrap_or("")
            .ends_with("Connection")
        {
            continue;
        }
        connections += 1;
        let args: Vec<&str> = f["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["name"].as_str())
            .collect();
        for want in ["first", "last", "after", "before", "orderBy"] {
            assert!(args.contains(&want), "{}: {args:?}", f["name"]);
        }
        for a in f["args"].as_array().into_iter().flatten() {
            if a["name"] == "first" || a["name"] == "last" {
                assert!(
                    a["description"]
                        .as_str()
                        .unwrap_or("")
                        .contains("at most 500"),
                    "{f}"
                );
            }
        }
    }
    assert!(connections >= 14, "{connections}");

    // Last seen: echo polls an hour later, alpha two; the others were seen at enrollment.
    s.set_clock(at("2026-03-02T10:00:00Z")).await?;
    assert_eq!(poll(&s, &tokens["echo"], json!({})).await?, 200);
    s.set_clock(at("2026-03-02T11:00:00Z")).await?;
    assert_eq!(poll(&s, &tokens["alpha"], json!({})).await?, 200);
    let d = list(json!({"o": {"field": "LAST_SEEN_AT", "direction": "DESC"}})).await?;
    assert_eq!(names(&d, "name"), ["alpha", "echo", "bravo", "delta"]);
    let d = list(json!({"o": {"field": "LAST_SEEN_AT", "direction": "ASC"}})).await?;
    assert_eq!(names(&d, "name"), ["delta", "bravo", "echo", "alpha"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computers_filter_on_online_compliance_tag_os_search_and_installed_software()
-> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.offline_after_seconds = 600).await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let other = s.create_tenant(&admin, "Other").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (_, win) = enroll(&s, &key, "win-1", "Microsoft Windows 11 Pro").await?;
    let (lin_token, lin) = enroll(&s, &key, "lin-1", "Debian GNU/Linux 12 (bookworm)").await?;
    enroll(&s, &key, "lin-2", "Ubuntu 24.04 LTS").await?;
    let other_key = s.enrollment_key(&admin, &other).await?;
    enroll(&s, &other_key, "lin-other", "Debian GNU/Linux 12").await?;
    s.gql(
        &admin,
        "mutation($id: ID!) { updateComputer(id: $id, input: {tags: [\"Office\"]}) { id } }",
        json!({"id": win}),
    )
    .await?;
    let inventory = json!({"inventory": {
        "hostname": "lin-1", "os": "Debian GNU/Linux 12 (bookworm)", "agentVersion": "0",
        "machineId": "machine-lin-1",
        "installedSoftware": [{"name": "Mozilla Firefox", "version": "128.0"}, {"name": "curl"}, {"name": "bash"}]
    }});
    assert_eq!(poll(&s, &lin_token, inventory).await?, 200);
    let hosts = |f: Value| {
        let s = &s;
        let admin = &admin;
        async move {
            let mut v = names(
                &s.gql(admin, COMPUTERS, json!({"filter": f})).await?["computers"],
                "name",
            );
            v.sort();
            Ok::<Vec<String>, anyhow::Error>(v)
        }
    };
    wait_for("the inventory", T, || async {
        Ok((hosts(json!({"installedSoftware": "firefox"})).await? == ["lin-1"]).then_some(()))
    })
    .await?;
    // The inventory's programs page backward too, by name.
    let programs = "query($c: ID!, $l: Int, $b: String) { computer(id: $c) { installedSoftware(last: $l, before: $b) { edges { node { name } } pageInfo { hasPreviousPage hasNextPage startCursor } } } }";
    let d = s.gql(&admin, programs, json!({"c": lin, "l": 2})).await?;
    let conn = &d["computer"]["installedSoftware"];
    assert_eq!(names(conn, "name"), ["curl", "Mozilla Firefox"]);
    assert_eq!(page_info(conn), (true, false));
    let d = s
        .gql(
            &admin,
            programs,
            json!({"c": lin, "l": 5, "b": conn["pageInfo"]["startCursor"]}),
        )
        .await?;
    let conn = &d["computer"]["installedSoftware"];
    assert_eq!(names(conn, "name"), ["bash"]);
    assert_eq!(page_info(conn), (false, true));
    let t = tenant.as_str();
    assert_eq!(
        hosts(json!({"tenantId": t, "online": true})).await?,
        ["lin-1"]
    );
    assert_eq!(
        hosts(json!({"tenantId": t, "online": false})).await?,
        ["lin-2", "win-1"]
    );
    assert_eq!(
        hosts(json!({"tenantId": t, "compliance": ["UNKNOWN"]}))
            .await?
            .len(),
        3
    );
    assert!(
        hosts(json!({"compliance": ["COMPLIANT", "NON_COMPLIANT"]}))
            .await?
            .is_empty()
    );
    assert_eq!(hosts(json!({"tag": "office"})).await?, ["win-1"]);
    assert_eq!(hosts(json!({"os": "WINDOWS"})).await?, ["win-1"]);
    assert_eq!(
        hosts(json!({"tenantId": t, "os": "linux"})).await?,
        ["lin-1"]
    );
    assert_eq!(hosts(json!({"os": "ubuntu 24"})).await?, ["lin-2"]);
    assert_eq!(
        hosts(json!({"tenantId": t, "search": "LIN-"})).await?,
        ["lin-1", "lin-2"]
    );
    assert_eq!(hosts(json!({"search": "lin-"})).await?.len(), 3);
    assert!(
        hosts(json!({"installedSoftware": "chrome"}))
            .await?
            .is_empty()
    );
    assert_eq!(
        hosts(json!({"os": "linux", "online": true})).await?,
        ["lin-1"]
    );
    // The older arguments still work, and combine with the filter.
    let d = s
        .gql(
            &admin,
            "{ computers(tag: \"OFFICE\", filter: {os: \"windows\"}) { totalCount } }",
            json!({}),
        )
        .await?;
    assert_eq!(d["computers"]["totalCount"], 1);
    Ok(())
}

const SESSIONS: &str = "query($o: MaintenanceSessionOrder, $f: Int, $a: String, $l: Int, $b: String, $filter: MaintenanceSessionFilter) {
  maintenanceSessions(orderBy: $o, first: $f, after: $a, last: $l, before: $b, filter: $filter) {
    totalCount edges { cursor node { id trigger status computer { name } } }
    pageInfo { hasPreviousPage hasNextPage startCursor endCursor } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_order_filter_on_trigger_lists_and_page_backward() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (_, c1) = enroll(&s, &key, "one", "Linux").await?;
    let (_, c2) = enroll(&s, &key, "two", "Linux").await?;
    let (_, c3) = enroll(&s, &key, "three", "Linux").await?;
    let cancel = "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { status } }";
    let s1 = s.start_session(&admin, &c1, json!({})).await?;
    s.gql(&admin, cancel, json!({"id": s1})).await?;
    let d = s
        .gql(
            &admin,
            "mutation($c: ID!) { startOnboardingSession(computerId: $c) { id } }",
            json!({"c": c2}),
        )
        .await?;
    let s2 = d["startOnboardingSession"]["id"]
        .as_str()
        .context("id")?
        .to_string();
    s.gql(&admin, cancel, json!({"id": s2})).await?;
    let s3 = s.start_session(&admin, &c3, json!({})).await?;
    let list = |v: Value| {
        let s = &s;
        let admin = &admin;
        async move {
            Ok::<Value, anyhow::Error>(
                s.gql(admin, SESSIONS, v).await?["maintenanceSessions"].clone(),
            )
        }
    };
    let d = list(json!({})).await?;
    assert_eq!(names(&d, "id"), [s3.as_str(), s2.as_str(), s1.as_str()]);
    assert_eq!(d["totalCount"], 3);
    let d = list(json!({"o": {"field": "CREATED_AT", "direction": "ASC"}})).await?;
    assert_eq!(names(&d, "id"), [s1.as_str(), s2.as_str(), s3.as_str()]);
    // Unfinished sessions have no finishedAt: lowest.
    let d = list(json!({"o": {"field": "FINISHED_AT", "direction": "DESC"}})).await?;
    assert_eq!(names(&d, "id"), [s2.as_str(), s1.as_str(), s3.as_str()]);
    let d = list(json!({"o": {"field": "FINISHED_AT", "direction": "ASC"}, "f": 2})).await?;
    assert_eq!(names(&d, "id"), [s3.as_str(), s1.as_str()]);
    assert_eq!(page_info(&d), (false, true));
    let d = list(
        json!({"o": {"field": "FINISHED_AT", "direction": "ASC"}, "a": d["pageInfo"]["endCursor"]}),
    )
    .await?;
    assert_eq!(names(&d, "id"), [s2.as_str()]);
    assert_eq!(page_info(&d), (true, false));
    // By status: the unfinished one (PENDING, first in the enum) before the cancelled ones.
    let d = list(json!({"o": {"field": "STATUS", "direction": "ASC"}})).await?;
    assert_eq!(names(&d, "id")[0], s3);

    // Triggers as a list; a single value still works.
    let d = list(json!({"filter": {"trigger": ["MANUAL"]}})).await?;
    assert_eq!(names(&d, "id"), [s3.as_str(), s1.as_str()]);
    let d = list(json!({"filter": {"trigger": ["MANUAL", "ONBOARDING"]}})).await?;
    assert_eq!(d["totalCount"], 3);
    let d = s
        .gql(
            &admin,
            "{ maintenanceSessions(filter: {trigger: ONBOARDING}) { totalCount } }",
            json!({}),
        )
        .await?;
    assert_eq!(d["maintenanceSessions"]["totalCount"], 1);

    // Backward over the store's own order, with the page flags on both sides.
    let d = list(json!({"l": 2})).await?;
    assert_eq!(names(&d, "id"), [s2.as_str(), s1.as_str()]);
    assert_eq!(page_info(&d), (true, false));
    let d = list(json!({"l": 1, "b": d["pageInfo"]["startCursor"]})).await?;
    assert_eq!(names(&d, "id"), [s3.as_str()]);
    assert_eq!(page_info(&d), (false, true));
    let d = list(json!({"f": 1, "a": d["pageInfo"]["endCursor"]})).await?;
    assert_eq!(names(&d, "id"), [s2.as_str()]);
    assert_eq!(page_info(&d), (true, true));
    let d = list(json!({"filter": {"trigger": ["MANUAL"]}, "l": 1})).await?;
    assert_eq!(names(&d, "id"), [s1.as_str()]);
    assert_eq!(page_info(&d), (true, false));

    // A computer with an unfinished session is not deleted; cancelled, it is, and its
    // sessions stay as history.
    let (code, message) = error(
        &s,
        &admin,
        "mutation($id: ID!) { deleteComputer(id: $id) }",
        json!({"id": c3}),
    )
    .await?;
    assert_eq!(code, "CONFLICT");
    assert!(message.contains(&s3), "{message}");
    s.gql(&admin, cancel, json!({"id": s3})).await?;
    s.gql(
        &admin,
        "mutation($id: ID!) { deleteComputer(id: $id) }",
        json!({"id": c3}),
    )
    .await?;
    let d = list(json!({"f": 1})).await?;
    assert_eq!(d["edges"][0]["node"]["id"], s3.as_str());
    assert!(d["edges"][0]["node"]["computer"].is_null(), "{d}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_finds_every_kind_and_hides_what_the_caller_may_not_see() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let acme = s.create_tenant(&admin, "Acme").await?;
    let beta = s.create_tenant(&admin, "Beta").await?;
    let key = s.enrollment_key(&admin, &acme).await?;
    let (_, computer) = enroll(&s, &key, "pc-1", "Linux").await?;
    let sh = |b: &str| json!({"language": "SHELL", "body": b});
    let shared = s
        .create_software(
            &admin,
            json!({"name": "Shared", "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}),
        )
        .await?;
    let own = s
        .create_software(
            &admin,
            json!({"name": "Own", "tenantId": acme, "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}),
        )
        .await?;
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@acme.example\"}) { id } }",
            json!({"t": acme}),
        )
        .await?;
    let person = d["createPerson"]["id"]
        .as_str()
        .context("person")?
        .to_string();
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!) { createWebhook(input: {tenantId: $t, url: \"http://127.0.0.1:9/hook\", events: [SESSION_CREATED]}) { webhook { id } } }",
            json!({"t": acme}),
        )
        .await?;
    let webhook = d["createWebhook"]["webhook"]["id"]
        .as_str()
        .context("webhook")?
        .to_string();
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!) { createApiKey(input: {name: \"psa\", role: TENANT_VIEWER, tenantId: $t}) { apiKey { id } } }",
            json!({"t": acme}),
        )
        .await?;
    let api_key = d["createApiKey"]["apiKey"]["id"]
        .as_str()
        .context("api key")?
        .to_string();
    let session = s.start_session(&admin, &computer, json!({})).await?;
    let acme_admin = user_token(&s, &admin, "admin@acme.example", "TENANT_ADMIN", &acme).await?;
    let acme_viewer = user_token(&s, &admin, "viewer@acme.example", "TENANT_VIEWER", &acme).await?;
    let beta_admin = user_token(&s, &admin, "admin@beta.example", "TENANT_ADMIN", &beta).await?;
    let d = s.gql(&acme_admin, "{ me { id } }", json!({})).await?;
    let acme_admin_id = d["me"]["id"].as_str().context("me")?.to_string();

    let d = s
        .gql(
            &admin,
            "query($w: ID!) { webhookDeliveries(webhookId: $w) { edges { node { id } } } auditEvents(first: 1) { edges { node { id } } } }",
            json!({"w": webhook}),
        )
        .await?;
    let delivery = d["webhookDeliveries"]["edges"][0]["node"]["id"]
        .as_str()
        .context("a delivery of SESSION_CREATED")?
        .to_string();
    let audit = d["auditEvents"]["edges"][0]["node"]["id"]
        .as_str()
        .context("an audit event")?
        .to_string();
    let node = "query($id: ID!) { node(id: $id) { __typename id } }";
    let kinds = [
        (&acme, "Tenant"),
        (&computer, "Computer"),
        (&shared, "Software"),
        (&person, "Person"),
        (&webhook, "Webhook"),
        (&api_key, "ApiKey"),
        (&session, "MaintenanceSession"),
        (&acme_admin_id, "User"),
        (&delivery, "WebhookDelivery"),
        (&audit, "AuditEvent"),
    ];
    for (id, kind) in kinds {
        let d = s.gql(&admin, node, json!({"id": id})).await?;
        assert_eq!(d["node"]["__typename"], kind, "{d}");
        assert_eq!(d["node"]["id"], id.as_str());
    }
    let d = s
        .gql(
            &admin,
            "query($id: ID!) { node(id: $id) { ... on Computer { name } } }",
            json!({"id": computer}),
        )
        .await?;
    assert_eq!(d["node"]["name"], "pc-1");
    // Another tenant's objects read as absent; cross-tenant catalogue entries are visible.
    for id in [
        &acme, &computer, &own, &person, &session, &webhook, &api_key, &delivery,
    ] {
        let d = s.gql(&beta_admin, node, json!({"id": id})).await?;
        assert!(d["node"].is_null(), "{id}: {d}");
    }
    let d = s.gql(&beta_admin, node, json!({"id": shared})).await?;
    assert_eq!(d["node"]["__typename"], "Software");
    // A viewer sees the tenant's computers, not its webhooks (their URLs carry tokens).
    let d = s.gql(&acme_viewer, node, json!({"id": computer})).await?;
    assert_eq!(d["node"]["__typename"], "Computer");
    for id in [&webhook, &delivery, &audit] {
        let d = s.gql(&acme_viewer, node, json!({"id": id})).await?;
        assert!(d["node"].is_null(), "{id}: {d}");
    }
    let d = s
        .gql(
            &admin,
            node,
            json!({"id": "00000000-0000-7000-8000-000000000000"}),
        )
        .await?;
    assert!(d["node"].is_null());
    let (code, _) = error(&s, &admin, node, json!({"id": "nope"})).await?;
    assert_eq!(code, "BAD_USER_INPUT");

    // The lookups.
    let d = s
        .gql(
            &acme_admin,
            "query($u: ID!, $w: ID!, $k: ID!, $s: ID!) { user(id: $u) { id } webhook(id: $w) { id } apiKey(id: $k) { id } softwareItem(id: $s) { name } softwareById(id: $s) { name } }",
            json!({"u": acme_admin_id, "w": webhook, "k": api_key, "s": own}),
        )
        .await?;
    assert_eq!(d["webhook"]["id"], webhook.as_str());
    assert_eq!(d["softwareItem"]["name"], "Own");
    assert_eq!(d["softwareById"]["name"], "Own");
    for (q, id) in [
        ("query($id: ID!) { user(id: $id) { id } }", &acme_admin_id),
        ("query($id: ID!) { webhook(id: $id) { id } }", &webhook),
        ("query($id: ID!) { apiKey(id: $id) { id } }", &api_key),
        ("query($id: ID!) { softwareItem(id: $id) { id } }", &own),
    ] {
        let (code, _) = error(&s, &beta_admin, q, json!({"id": id})).await?;
        assert_eq!(code, "NOT_FOUND", "{q}");
    }
    let (code, _) = error(
        &s,
        &acme_viewer,
        "query($id: ID!) { webhook(id: $id) { id } }",
        json!({"id": webhook}),
    )
    .await?;
    assert_eq!(code, "FORBIDDEN");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_take_what_exists_only_for_them_and_refuse_what_is_still_needed()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (token, computer) = enroll(&s, &key, "pc-1", "Linux").await?;
    let sh = |b: &str| json!({"language": "SHELL", "body": b});
    let base = s
        .create_software(
            &admin,
            json!({"name": "Base", "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}),
        )
        .await?;
    let app = s
        .create_software(&admin, json!({"name": "App", "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}], "dependsOnIds": [base]}))
        .await?;
    let deploy = |target: Value, what: Value| {
        let mut input = json!({"tenantId": tenant, "target": target});
        if let (Some(i), Some(w)) = (input.as_object_mut(), what.as_object()) {
            for (k, v) in w {
                i.insert(k.clone(), v.clone());
            }
        }
        s.create_deployment(&admin, input)
    };
    let all = json!({"kind": "ALL_COMPUTERS"});
    let base_deployment = deploy(
        all.clone(),
        json!({"softwareId": base, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    let exists = |kind: &'static str, id: String| {
        let s = &s;
        let admin = &admin;
        async move {
            let q = format!("query($id: ID!) {{ {kind}(id: $id) {{ id }} }}");
            let body = s.gql_raw(Some(admin), &q, json!({"id": id})).await?;
            Ok::<bool, anyhow::Error>(body["errors"].is_null())
        }
    };
    let delete = |m: &'static str, id: String| {
        let s = &s;
        let admin = &admin;
        async move {
            let q = format!("mutation($id: ID!) {{ {m}(id: $id) }}");
            let body = s.gql_raw(Some(admin), &q, json!({"id": id})).await?;
            Ok::<Value, anyhow::Error>(body)
        }
    };

    // Software another depends on: refused, naming it; then in order, with its deployment.
    let body = delete("deleteSoftware", base.clone()).await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("App"),
        "{body}"
    );
    assert_eq!(
        delete("deleteSoftware", app.clone()).await?["data"]["deleteSoftware"],
        true
    );
    assert_eq!(
        delete("deleteSoftware", base.clone()).await?["data"]["deleteSoftware"],
        true
    );
    assert!(!exists("softwareItem", base.clone()).await?);
    assert!(!exists("deployment", base_deployment).await?);

    // A task software configures itself with: refused; another goes with its deployment.
    let task = |name: &str| {
        s.gql(
            &admin,
            "mutation($n: String!) { createMaintenanceTask(input: {name: $n, testScript: {language: SHELL, body: \"true\"}}) { id } }",
            json!({"n": name}),
        )
    };
    let config = task("Configure").await?["createMaintenanceTask"]["id"]
        .as_str()
        .context("task")?
        .to_string();
    s.create_software(&admin, json!({"name": "Configured", "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}], "configurationTaskId": config}))
        .await?;
    let body = delete("deleteMaintenanceTask", config).await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Configured"),
        "{body}"
    );
    let lone = task("Lone").await?["createMaintenanceTask"]["id"]
        .as_str()
        .context("task")?
        .to_string();
    let lone_deployment = deploy(all.clone(), json!({"maintenanceTaskId": lone})).await?;
    assert_eq!(
        delete("deleteMaintenanceTask", lone.clone()).await?["data"]["deleteMaintenanceTask"],
        true
    );
    assert!(!exists("maintenanceTask", lone).await?);
    assert!(!exists("deployment", lone_deployment).await?);

    // A person: their computer stays, without them; a deployment for them alone goes.
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@acme.example\"}) { id } }",
            json!({"t": tenant}),
        )
        .await?;
    let person = d["createPerson"]["id"]
        .as_str()
        .context("person")?
        .to_string();
    s.gql(
        &admin,
        "mutation($id: ID!, $p: ID) { updateComputer(id: $id, input: {primaryPersonId: $p}) { id } }",
        json!({"id": computer, "p": person}),
    )
    .await?;
    let kept = s
        .create_software(
            &admin,
            json!({"name": "Kept", "detectionScript": sh("true"), "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}),
        )
        .await?;
    let for_person = deploy(
        json!({"kind": "PERSON", "value": person}),
        json!({"softwareId": kept, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    let for_computer = deploy(
        json!({"kind": "COMPUTER", "value": computer}),
        json!({"softwareId": kept, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    let for_all = deploy(
        all,
        json!({"softwareId": kept, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    assert_eq!(
        delete("deletePerson", person.clone()).await?["data"]["deletePerson"],
        true
    );
    assert!(!exists("person", person).await?);
    assert!(!exists("deployment", for_person).await?);
    let d = s
        .gql(
            &admin,
            "query($id: ID!) { computer(id: $id) { primaryPerson { id } } }",
            json!({"id": computer}),
        )
        .await?;
    assert!(d["computer"]["primaryPerson"].is_null(), "{d}");

    // A viewer deletes nothing.
    let viewer = user_token(&s, &admin, "viewer@acme.example", "TENANT_VIEWER", &tenant).await?;
    let (code, _) = error(
        &s,
        &viewer,
        "mutation($id: ID!) { deleteComputer(id: $id) }",
        json!({"id": computer}),
    )
    .await?;
    assert_eq!(code, "FORBIDDEN");

    // A computer: its agent is refused at once, deployments for it alone go, others stay.
    assert_eq!(poll(&s, &token, json!({})).await?, 200);
    assert_eq!(
        delete("deleteComputer", computer.clone()).await?["data"]["deleteComputer"],
        true
    );
    assert_eq!(poll(&s, &token, json!({})).await?, 401);
    assert!(!exists("computer", computer.clone()).await?);
    assert!(!exists("deployment", for_computer).await?);
    assert!(exists("deployment", for_all).await?);
    let body = delete("deleteComputer", computer).await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );

    assert_eq!(s.app().store.check_indexes().await?, Vec::<String>::new());

    // Each delete is in the audit trail.
    for action in [
        "deleteComputer",
        "deletePerson",
        "deleteSoftware",
        "deleteMaintenanceTask",
    ] {
        let d = s
            .gql(
                &admin,
                "query($a: String) { auditEvents(filter: {action: $a}) { totalCount } }",
                json!({"a": action}),
            )
            .await?;
        assert!(
            d["auditEvents"]["totalCount"].as_u64() >= Some(1),
            "{action}: {d}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_need_force_to_go_with_their_computers_and_names_stay_unique() -> anyhow::Result<()>
{
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let acme = s.create_tenant(&admin, "Acme").await?;
    let create = "mutation($n: String!) { createTenant(input: {name: $n, timeZone: \"Europe/Berlin\"}) { id } }";
    let (code, message) = error(&s, &admin, create, json!({"n": "  aCME "})).await?;
    assert_eq!(code, "CONFLICT");
    assert!(
        message.contains("Acme") || message.contains("aCME"),
        "{message}"
    );
    let beta = s.create_tenant(&admin, "Beta").await?;
    let rename =
        "mutation($id: ID!, $n: String!) { updateTenant(id: $id, input: {name: $n}) { name } }";
    let (code, _) = error(&s, &admin, rename, json!({"id": beta, "n": "ACME"})).await?;
    assert_eq!(code, "CONFLICT");
    s.gql(&admin, rename, json!({"id": beta, "n": "Gamma"}))
        .await?;
    // Renamed, its old name is free again; its own name in another case is no conflict.
    s.create_tenant(&admin, "Beta").await?;
    s.gql(&admin, rename, json!({"id": beta, "n": "GAMMA"}))
        .await?;

    // Acme with a computer, a person, a user, its own software, a webhook, a session.
    let key = s.enrollment_key(&admin, &acme).await?;
    let (token, computer) = enroll(&s, &key, "pc-1", "Linux").await?;
    let acme_admin = user_token(&s, &admin, "admin@acme.example", "TENANT_ADMIN", &acme).await?;
    let sh = json!({"language": "SHELL", "body": "true"});
    let own = s
        .create_software(
            &admin,
            json!({"name": "Own", "tenantId": acme, "detectionScript": sh, "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}),
        )
        .await?;
    s.gql(
        &admin,
        "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@acme.example\"}) { id } }",
        json!({"t": acme}),
    )
    .await?;
    s.gql(
        &admin,
        "mutation($t: ID!) { createWebhook(input: {tenantId: $t, url: \"http://127.0.0.1:9/hook\", events: [SESSION_FINISHED]}) { webhook { id } } }",
        json!({"t": acme}),
    )
    .await?;
    // A cross-tenant deployment aimed at Acme's computer alone.
    let shared = s
        .create_software(&admin, json!({"name": "Shared", "detectionScript": {"language": "SHELL", "body": "true"}, "versions": [{"version": "1", "installScript": {"language": "SHELL", "body": "true"}}]}))
        .await?;
    let aimed = s
        .create_deployment(&admin, json!({"target": {"kind": "COMPUTER", "value": computer}, "softwareId": shared, "desiredState": "INSTALLED_LATEST"}))
        .await?;
    let session = s.start_session(&admin, &computer, json!({})).await?;

    let delete = "mutation($id: ID!, $f: Boolean) { deleteTenant(id: $id, force: $f) }";
    let (code, _) = error(&s, &acme_admin, delete, json!({"id": acme, "f": true})).await?;
    assert_eq!(code, "FORBIDDEN");
    let (code, message) = error(&s, &admin, delete, json!({"id": acme})).await?;
    assert_eq!(code, "CONFLICT");
    assert!(message.contains("force"), "{message}");
    let (code, message) = error(&s, &admin, delete, json!({"id": acme, "f": true})).await?;
    assert_eq!(code, "CONFLICT");
    assert!(
        message.contains(&session),
        "an unfinished session: {message}"
    );
    s.gql(
        &admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { status } }",
        json!({"id": session}),
    )
    .await?;
    let d = s
        .gql(&admin, delete, json!({"id": acme, "f": true}))
        .await?;
    assert_eq!(d["deleteTenant"], true);

    // Everything of it is gone, at once and after a restart.
    assert_gone(&s, &admin, &[&acme, &computer, &own, &session, &aimed]).await?;
    let d = s
        .gql(
            &admin,
            "query($id: ID!) { node(id: $id) { id } }",
            json!({"id": shared}),
        )
        .await?;
    assert_eq!(
        d["node"]["id"],
        shared.as_str(),
        "cross-tenant software stays"
    );
    assert_eq!(poll(&s, &token, json!({})).await?, 401);
    let body = s
        .gql_raw(None, "mutation { login(email: \"admin@acme.example\", password: \"a long enough password 1\") { token } }", json!({}))
        .await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    let d = s
        .gql(
            &admin,
            "query($a: String) { auditEvents(filter: {action: $a}) { totalCount } }",
            json!({"a": "deleteTenant"}),
        )
        .await?;
    assert_eq!(d["auditEvents"]["totalCount"], 1);
    // Every index entry still points at a record that lists it, and the unique claims of the
    // machine and the name are released.
    let store = &s.app().store;
    assert_eq!(store.check_indexes().await?, Vec::<String>::new());
    let acme_id: upkeep_core::domain::Id = acme.parse().map_err(|_| anyhow::anyhow!("id"))?;
    let machine = upkeep_store::IndexKey::new(
        upkeep_store::records::MACHINE_ID,
        upkeep_store::records::machine_value(acme_id, "machine-pc-1"),
    );
    assert!(
        store
            .unique::<upkeep_core::domain::Computer>(&machine)
            .await?
            .is_none()
    );
    let name = upkeep_store::records::tenant_name_key("Acme");
    assert!(
        store
            .unique::<upkeep_core::domain::Tenant>(&name)
            .await?
            .is_none()
    );
    let mut s = s;
    s.restart().await?;
    let admin = s.admin().await?;
    assert_gone(&s, &admin, &[&acme, &computer, &own, &session]).await?;
    // The name and the machine are free again.
    let acme2 = s.create_tenant(&admin, "acme").await?;
    let key = s.enrollment_key(&admin, &acme2).await?;
    enroll(&s, &key, "pc-1", "Linux").await?;
    Ok(())
}

/// Nothing of a deleted tenant is left: its objects read as absent, its lists are empty, and
/// the other tenants stay.
async fn assert_gone(s: &TestServer, admin: &str, ids: &[&str]) -> anyhow::Result<()> {
    for id in ids {
        let d = s
            .gql(
                admin,
                "query($id: ID!) { node(id: $id) { id } }",
                json!({"id": id}),
            )
            .await?;
        assert!(d["node"].is_null(), "{id}: {d}");
    }
    let d = s
        .gql(admin, "{ computers { totalCount } persons { totalCount } webhooks { totalCount } maintenanceSessions { totalCount } tenants { edges { node { name } } } }", json!({}))
        .await?;
    assert_eq!(d["computers"]["totalCount"], 0, "{d}");
    assert_eq!(d["persons"]["totalCount"], 0, "{d}");
    assert_eq!(d["webhooks"]["totalCount"], 0, "{d}");
    assert_eq!(d["maintenanceSessions"]["totalCount"], 0, "{d}");
    assert_eq!(names(&d["tenants"], "name"), ["GAMMA", "Beta"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_cursor_outlives_its_session() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let (_, a1) = enroll(&s, &s.enrollment_key(&admin, &a).await?, "a-1", "Linux").await?;
    let (_, b1) = enroll(&s, &s.enrollment_key(&admin, &b).await?, "b-1", "Linux").await?;
    let cancel = "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { status } }";
    let mut ids = Vec::new();
    for c in [&a1, &b1, &a1] {
        let id = s.start_session(&admin, c, json!({})).await?;
        s.gql(&admin, cancel, json!({"id": id})).await?;
        ids.push(id);
    }
    let (older, gone, newer) = (&ids[0], &ids[1], &ids[2]);
    let d = s.gql(&admin, SESSIONS, json!({"f": 2})).await?;
    let page = &d["maintenanceSessions"];
    assert_eq!(names(page, "id"), [newer.as_str(), gone.as_str()]);
    let cursor = page["pageInfo"]["endCursor"].clone();
    // The session the cursor points at goes with its tenant.
    s.gql(
        &admin,
        "mutation($id: ID!) { deleteTenant(id: $id, force: true) }",
        json!({"id": b}),
    )
    .await?;
    let d = s
        .gql(&admin, SESSIONS, json!({"f": 5, "a": cursor}))
        .await?;
    let page = &d["maintenanceSessions"];
    assert_eq!(names(page, "id"), [older.as_str()]);
    assert_eq!(page_info(page), (true, false));
    let d = s
        .gql(&admin, SESSIONS, json!({"l": 5, "b": cursor}))
        .await?;
    let page = &d["maintenanceSessions"];
    assert_eq!(names(page, "id"), [newer.as_str()]);
    assert_eq!(page_info(page), (false, true));
    Ok(())
}
