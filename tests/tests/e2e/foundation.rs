//! Foundation: login, every entity created and read over HTTP, roles, tenant isolation, tokens,
//! limits, persistence across restarts, the committed schema.

use futures_util::StreamExt;
use serde_json::{Value, json};
use upkeep_tests::*;

const ENTITIES: &str = r#"
query($t: ID!) {
  tenant(id: $t) { id name companyName timeZone }
  persons(tenantId: $t) { totalCount edges { node { id name email } } }
  computers(tenantId: $t) { totalCount }
  software(tenantId: $t) { totalCount edges { node { id name latestVersion versions { version } } } }
  maintenanceTasks(tenantId: $t) { totalCount }
  deployments(tenantId: $t) { totalCount edges { node { id target { kind value } desiredState enforcement order position parameters } } }
  schedules(tenantId: $t) { totalCount edges { node { id cron timeZone nextRuns(count: 2) } } }
  enrollmentKeys(tenantId: $t) { totalCount edges { node { id key label uses revoked } } }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_and_reads_every_entity() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let me = s
        .gql(&admin, "{ me { email role tenant { id } } }", json!({}))
        .await?;
    assert_eq!(me["me"]["role"], "MSP_ADMIN");
    let t = s
        .gql(&admin, r##"mutation { createTenant(input: {name: "Acme", companyName: "Acme & Co", timeZone: "America/New_York", primaryColor: "#112233", mailFrom: "IT <it@acme.example>"}) { id timeZone primaryColor } }"##, json!({}))
        .await?;
    let tid = t["createTenant"]["id"].as_str().unwrap().to_string();
    assert_eq!(t["createTenant"]["timeZone"], "America/New_York");
    let upd = s.gql(&admin, "mutation($t: ID!) { updateTenant(id: $t, input: {logoUrl: \"https://acme.example/logo.png\"}) { logoUrl companyName } }", json!({"t": tid})).await?;
    assert_eq!(
        upd["updateTenant"]["companyName"], "Acme & Co",
        "fields not given stay"
    );
    let p = s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@acme.example\"}) { id } }", json!({"t": tid})).await?;
    let pid = p["createPerson"]["id"].as_str().unwrap().to_string();
    let task = s
        .gql(&admin, "mutation($t: ID) { createMaintenanceTask(input: {name: \"Firewall on\", tenantId: $t, testScript: {language: SHELL, body: \"exit 0\"}, setScript: {language: SHELL, body: \"true\"}}) { id } }", json!({"t": tid}))
        .await?;
    let task_id = task["createMaintenanceTask"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sw = s
        .gql(
            &admin,
            r#"mutation($t: ID, $c: ID) { createSoftware(input: {name: "7-Zip", tenantId: $t, configurationTaskId: $c,
                 detectionScript: {language: SHELL, body: "exit 0"},
                 versions: [{version: "1.9.2", installScript: {language: SHELL, body: "true"}}, {version: "1.10.0", installScript: {language: SHELL, body: "true"}}]}) { id latestVersion } }"#,
            json!({"t": tid, "c": task_id}),
        )
        .await?;
    assert_eq!(
        sw["createSoftware"]["latestVersion"], "1.10.0",
        "numeric field-by-field comparison"
    );
    let sw_id = sw["createSoftware"]["id"].as_str().unwrap().to_string();
    let upd = s.gql(&admin, "mutation($id: ID!) { updateSoftware(id: $id, input: {name: \"7-Zip x64\"}) { name latestVersion } }", json!({"id": sw_id})).await?;
    assert_eq!(upd["updateSoftware"]["name"], "7-Zip x64");
    let dep = s.create_deployment(&admin, json!({"tenantId": tid, "target": {"kind": "PERSON", "value": pid}, "softwareId": sw_id, "desiredState": "INSTALLED_AT_LEAST", "version": "1.9.2", "order": "BEGINNING", "position": 2, "parameters": {"Mode": "silent", "Retries": 3}})).await?;
    let upd = s.gql(&admin, "mutation($id: ID!) { updateDeployment(id: $id, input: {enabled: false}) { enabled position } }", json!({"id": dep})).await?;
    assert_eq!(
        upd["updateDeployment"],
        json!({"enabled": false, "position": 2})
    );
    let sched = s
        .gql(&admin, "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"Nightly\", target: {kind: TAG, value: \"servers\"}, cron: \"0 2 * * MON-FRI\", timeZone: \"Europe/Berlin\"}) { id windowMinutes enabled } }", json!({"t": tid}))
        .await?;
    assert_eq!(sched["createSchedule"]["windowMinutes"], 120);
    let sched_id = sched["createSchedule"]["id"].as_str().unwrap().to_string();
    let key = s.gql(&admin, "mutation($t: ID!) { createEnrollmentKey(tenantId: $t, input: {label: \"office\", maxUses: 5}) { id key label } }", json!({"t": tid})).await?;
    assert!(
        key["createEnrollmentKey"]["key"].as_str().unwrap().len() > 40,
        "the secret is shown once"
    );

    let all = s.gql(&admin, ENTITIES, json!({"t": tid})).await?;
    assert_eq!(all["tenant"]["companyName"], "Acme & Co");
    assert_eq!(all["persons"]["totalCount"], 1);
    assert_eq!(all["software"]["totalCount"], 1);
    assert_eq!(all["maintenanceTasks"]["totalCount"], 1);
    assert_eq!(
        all["deployments"]["edges"][0]["node"]["parameters"],
        json!({"Mode": "silent", "Retries": "3"})
    );
    assert_eq!(all["deployments"]["edges"][0]["node"]["order"], "BEGINNING");
    assert_eq!(
        all["schedules"]["edges"][0]["node"]["nextRuns"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        all["enrollmentKeys"]["edges"][0]["node"]["key"],
        serde_json::Value::Null,
        "the secret is never listed"
    );

    let del = s
        .gql(
            &admin,
            "mutation($d: ID!, $s: ID!) { deleteDeployment(id: $d) deleteSchedule(id: $s) }",
            json!({"d": dep, "s": sched_id}),
        )
        .await?;
    assert_eq!(
        del,
        json!({"deleteDeployment": true, "deleteSchedule": true})
    );
    let code = s
        .gql_err(
            Some(&admin),
            "query($d: ID!) { deployment(id: $d) { id } }",
            json!({"d": dep}),
        )
        .await?;
    assert_eq!(code, "NOT_FOUND");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admin_sees_only_its_tenant() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    let pb = s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Bob\", email: \"bob@b.example\"}) { id } }", json!({"t": b})).await?;
    let pb = pb["createPerson"]["id"].as_str().unwrap().to_string();
    let sb = s.gql(&admin, "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"B\", target: {kind: ALL_COMPUTERS}, cron: \"0 3 * * *\", timeZone: \"UTC\"}) { id } }", json!({"t": b})).await?;
    let sb = sb["createSchedule"]["id"].as_str().unwrap().to_string();
    let kb = s
        .gql(
            &admin,
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { id } }",
            json!({"t": b}),
        )
        .await?;
    let kb = kb["createEnrollmentKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"ta@a.example\", password: \"tenant-admin-pw\", role: TENANT_ADMIN, tenantId: $t}) { id } }", json!({"t": a})).await?;
    let ta = s.login("ta@a.example", "tenant-admin-pw").await?;

    let tenants = s
        .gql(
            &ta,
            "{ tenants { totalCount edges { node { id } } } }",
            json!({}),
        )
        .await?;
    assert_eq!(tenants["tenants"]["totalCount"], 1);
    assert_eq!(tenants["tenants"]["edges"][0]["node"]["id"], a.as_str());
    // Another tenant's ids read exactly like ids that do not exist.
    let missing = "01900000-0000-7000-8000-000000000000";
    for (q, id) in [
        ("query($id: ID!) { tenant(id: $id) { id } }", &b),
        ("query($id: ID!) { person(id: $id) { id } }", &pb),
        ("query($id: ID!) { schedule(id: $id) { id } }", &sb),
        (
            "query($id: ID!) { person(id: $id) { id } }",
            &missing.to_string(),
        ),
    ] {
        assert_eq!(
            s.gql_err(Some(&ta), q, json!({"id": id})).await?,
            "NOT_FOUND",
            "{q}"
        );
    }
    let persons = s
        .gql(
            &ta,
            "query($t: ID) { persons(tenantId: $t) { totalCount } }",
            json!({"t": b}),
        )
        .await?;
    assert_eq!(
        persons["persons"]["totalCount"], 0,
        "listing another tenant shows nothing"
    );
    // Writes into another tenant are refused as not found.
    for (q, v) in [
        (
            "mutation($id: ID!) { updateTenant(id: $id, input: {name: \"x\"}) { id } }",
            json!({"id": b}),
        ),
        (
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"x\", email: \"x@x.example\"}) { id } }",
            json!({"t": b}),
        ),
        (
            "mutation($id: ID!) { revokeEnrollmentKey(id: $id) }",
            json!({"id": kb}),
        ),
        (
            "mutation($id: ID!) { deleteSchedule(id: $id) }",
            json!({"id": sb}),
        ),
        (
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { id } }",
            json!({"t": b}),
        ),
    ] {
        assert_eq!(s.gql_err(Some(&ta), q, v).await?, "NOT_FOUND", "{q}");
    }
    // Its own tenant works; creating MSP users or tenants does not.
    s.gql(&ta, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@a.example\"}) { id } }", json!({"t": a})).await?;
    assert_eq!(
        s.gql_err(
            Some(&ta),
            "mutation { createTenant(input: {name: \"C\"}) { id } }",
            json!({})
        )
        .await?,
        "FORBIDDEN"
    );
    assert_eq!(
        s.gql_err(Some(&ta), "mutation { createUser(input: {email: \"x@msp.example\", password: \"long-enough-pw\", role: MSP_ADMIN}) { id } }", json!({})).await?,
        "FORBIDDEN"
    );
    // A viewer is read-only.
    s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"v@a.example\", password: \"viewer-password\", role: TENANT_VIEWER, tenantId: $t}) { id } }", json!({"t": a})).await?;
    let v = s.login("v@a.example", "viewer-password").await?;
    assert_eq!(s.gql_err(Some(&v), "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"x\", email: \"x@a.example\"}) { id } }", json!({"t": a})).await?, "FORBIDDEN");
    Ok(())
}

/// Every query and mutation of the schema, called by a tenant admin with another tenant's ids,
/// answers NOT_FOUND (or FORBIDDEN for MSP-only operations), or a list of the caller's own
/// records (or none) — never the other tenant's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_sweep_over_the_schema() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let a = s.create_tenant(&admin, "A").await?;
    let b = s.create_tenant(&admin, "B").await?;
    s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"ta@a.example\", password: \"tenant-admin-pw\", role: TENANT_ADMIN, tenantId: $t}) { id } }", json!({"t": a})).await?;
    let ta = s.login("ta@a.example", "tenant-admin-pw").await?;
    // One of every id-addressed thing in tenant B.
    let pb = s.gql(&admin, "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Bob\", email: \"bob@b.example\"}) { id } }", json!({"t": b})).await?["createPerson"]["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir()?;
    let swb = create_file_software(&s, &admin, Some(&b), "b-app", dir.path(), &["1.0"]).await?;
    let depb = s.create_deployment(&admin, json!({"tenantId": b, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": swb, "desiredState": "INSTALLED_ANY"})).await?;
    let keyb = s.enrollment_key(&admin, &b).await?;
    let agent = TestAgent::start(&s.url, &keyb, "b-pc").await?;
    let cb = s.computer_id(&admin, "b-pc").await?;
    let sessb = s
        .start_session(&admin, &cb, json!({"detectionOnly": true}))
        .await?;
    s.wait_status(
        &admin,
        &sessb,
        &["PASSED"],
        std::time::Duration::from_secs(30),
    )
    .await?;
    let ids = json!({"tenant": b, "person": pb, "software": swb, "deployment": depb, "computer": cb, "session": sessb});
    // And one of every other listed kind, so that a list that leaks has something to show.
    for q in [
        "mutation($t: ID!) { createUser(input: {email: \"tb@b.example\", password: \"tenant-b-admin-pw\", role: TENANT_ADMIN, tenantId: $t}) { id } }",
        "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"B nightly\", target: {kind: ALL_COMPUTERS}, cron: \"0 2 * * *\", timeZone: \"Europe/Berlin\", enabled: false}) { id } }",
        "mutation($t: ID!) { createApiKey(input: {name: \"b-key\", role: TENANT_ADMIN, tenantId: $t}) { secret } }",
        "mutation($t: ID!) { createWebhook(input: {tenantId: $t, url: \"http://127.0.0.1:9/b\", events: [SESSION_FINISHED]}) { secret } }",
        "mutation($t: ID!) { createMaintenanceTask(input: {name: \"B task\", tenantId: $t, testScript: {language: SHELL, body: \"exit 0\"}}) { id } }",
    ] {
        s.gql(&admin, q, json!({"t": b})).await?;
    }

    let sdl = upkeep_server::api::graphql::sdl();
    let query_fields = fields_of(&sdl, "type Query");
    let mutation_fields = fields_of(&sdl, "type Mutation");
    let mut checked = 0;
    for (name, args) in query_fields.iter().chain(mutation_fields.iter()) {
        // Pick an id argument to aim at tenant B; skip operations without one.
        let Some((arg, ty)) = args.iter().find(|(a, t)| {
            t.starts_with("ID")
                && ["id", "tenantId", "computerId", "sessionId", "webhookId"].contains(&a.as_str())
        }) else {
            continue;
        };
        let target = match (name.as_str(), arg.as_str()) {
            (_, "tenantId") => &ids["tenant"],
            (_, "computerId") => &ids["computer"],
            (_, "sessionId") => &ids["session"],
            (n, "id") if n.contains("Session") || n == "maintenanceSession" => &ids["session"],
            (n, "id") if n.contains("Computer") || n == "computer" => &ids["computer"],
            (n, "id") if n.contains("Deployment") || n == "deployment" => &ids["deployment"],
            (n, "id") if n.contains("Software") || n == "softwareById" => &ids["software"],
            (n, "id") if n.contains("Person") || n == "person" => &ids["person"],
            (n, "id") if n.contains("Tenant") || n == "tenant" => &ids["tenant"],
            _ => continue,
        };
        let other_required: Vec<&(String, String)> = args
            .iter()
            .filter(|(a, t)| a != arg && t.ends_with('!'))
            .collect();
        if !other_required.is_empty() {
            continue; // needs inputs this sweep does not invent; covered by the targeted tests
        }
        let op = if mutation_fields.iter().any(|(n, _)| n == name) {
            "mutation"
        } else {
            "query"
        };
        let q = format!("{op}($x: {ty}) {{ r: {name}({arg}: $x) {{ __typename }} }}");
        let mut body = s.gql_raw(Some(&ta), &q, json!({"x": target})).await?;
        if body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must not have a selection"))
        {
            body = s
                .gql_raw(
                    Some(&ta),
                    &q.replace("{ __typename }", ""),
                    json!({"x": target}),
                )
                .await?;
        }
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("");
        let r = &body["data"]["r"];
        let connection = r["__typename"]
            .as_str()
            .and_then(|t| t.strip_suffix("Connection"));
        if !body["errors"].is_null() || (connection.is_none() && !r.is_array()) {
            assert!(
                ["NOT_FOUND", "FORBIDDEN"].contains(&code),
                "{name}({arg}: tenant B) answered {body}"
            );
            checked += 1;
            continue;
        }
        // A list may answer, but only with tenant A's own records (or none): read it again
        // with each record's tenant. A's user owns no computers, sessions or software here,
        // so anything listed is B's unless it names tenant A.
        let item_type = match (connection, r.as_array()) {
            (Some(t), _) => t.to_string(),
            (None, Some(items)) if items.is_empty() => {
                checked += 1;
                continue;
            }
            (None, _) => r[0]["__typename"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}({arg}: tenant B) listed {body}"))
                .to_string(),
        };
        let owner = if has_field(&sdl, &item_type, "tenant") {
            "tenant { id }"
        } else if has_field(&sdl, &item_type, "count") {
            "count"
        } else {
            ""
        };
        let shape = match connection {
            Some(_) => format!("{{ totalCount nodes {{ __typename {owner} }} }}"),
            None => format!("{{ __typename {owner} }}"),
        };
        let q = format!("{op}($x: {ty}) {{ r: {name}({arg}: $x) {shape} }}");
        let again = s.gql_raw(Some(&ta), &q, json!({"x": target})).await?;
        let r = &again["data"]["r"];
        let items = match connection {
            Some(_) => r["nodes"].as_array(),
            None => r.as_array(),
        }
        .cloned()
        .unwrap_or_default();
        // A's own: names tenant A; a count of A's (none) is zero. A hidden tenant is not A's.
        let foreign: Vec<&Value> = items
            .iter()
            .filter(|i| !(i["tenant"]["id"] == a.as_str() || (owner == "count" && i["count"] == 0)))
            .collect();
        assert!(
            again["errors"].is_null()
                && foreign.is_empty()
                && (connection.is_none() || r["totalCount"] == items.len()),
            "{name}({arg}: tenant B) listed what is not tenant A's: {foreign:?} in {again}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "the sweep covered only {checked} operations");
    drop(agent);
    Ok(())
}

/// Whether the SDL's object type `ty` has a field `field`.
fn has_field(sdl: &str, ty: &str, field: &str) -> bool {
    fields_of(sdl, &format!("type {ty}"))
        .iter()
        .any(|(n, _)| n == field)
}

/// `(field name, [(arg, type)])` of an SDL type block.
fn fields_of(sdl: &str, header: &str) -> Vec<(String, Vec<(String, String)>)> {
    // `type X {` or `type X implements Node {`.
    let start = sdl
        .find(&format!("{header} {{"))
        .or_else(|| sdl.find(&format!("{header} implements ")))
        .expect("type in SDL");
    let body = &sdl[start..];
    let end = body.find("\n}").expect("end of type");
    let mut out = Vec::new();
    // Descriptions are skipped whole: one-line `"…"` ones and `"""` blocks, whose inner lines
    // may read like fields ("runs the onboarding deployments (…)").
    let mut in_block = false;
    let text: String = body[..end]
        .lines()
        .skip(1)
        .filter(|l| {
            let t = l.trim_start();
            if let Some(rest) = t.strip_prefix("\"\"\"") {
                let closes_here = rest.contains("\"\"\"");
                if !closes_here {
                    in_block = !in_block;
                }
                return false;
            }
            !in_block && !t.starts_with('"')
        })
        .collect::<Vec<_>>()
        .join(" ");
    // Deprecated arguments carry `@deprecated(reason: "…")`: parentheses and braces that are
    // not the field's own.
    let mut text = text;
    while let Some(at) = text.find(" @deprecated(reason: \"") {
        let from = at + " @deprecated(reason: \"".len();
        let end = text[from..]
            .find("\")")
            .map_or(text.len(), |e| from + e + 2);
        text.replace_range(at..end, "");
    }
    let mut rest = text.as_str();
    while let Some(colon_or_paren) = rest.find(['(', ':']) {
        let name = rest[..colon_or_paren]
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let mut args = Vec::new();
        if rest[colon_or_paren..].starts_with('(') {
            let close = rest[colon_or_paren..]
                .find(')')
                .map(|c| c + colon_or_paren)
                .unwrap_or(rest.len());
            for a in rest[colon_or_paren + 1..close]
                .split(',')
                .flat_map(|x| x.split("  "))
            {
                if let Some((an, at)) = a.split_once(':') {
                    let at = at.trim().split(' ').next().unwrap_or("").trim().to_string();
                    if !an.trim().is_empty() {
                        args.push((an.trim().to_string(), at));
                    }
                }
            }
            rest = &rest[close + 1..];
        } else {
            rest = &rest[colon_or_paren..];
        }
        let after_type = rest.trim_start_matches(':').trim_start();
        let type_end = after_type.find(' ').unwrap_or(after_type.len());
        rest = &after_type[type_end..];
        if !name.is_empty() {
            out.push((name, args));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_tokens_are_unauthenticated() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let q = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    assert_eq!(
        s.gql_err(None, q, json!({"e": ADMIN_EMAIL, "p": "wrong"}))
            .await?,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.gql_err(None, q, json!({"e": "nobody@x.example", "p": "wrong"}))
            .await?,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        s.gql_err(None, "{ me { email } }", json!({})).await?,
        "UNAUTHENTICATED"
    );
    let token = s.admin().await?;
    // Tampered payload, wrong key, alg none, expired.
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}x.{}", parts[0], parts[1], parts[2]);
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let app = s.app();
    let me: upkeep_core::domain::User = app
        .store
        .scan::<upkeep_core::domain::User>(None)
        .boxed()
        .next()
        .await
        .unwrap()?;
    let other_key = upkeep_server::auth::Keys::new(b"another-secret-that-is-long-enough!!");
    let forged = other_key.issue_api_token(&me, chrono::Utc::now())?;
    let expired = app
        .keys
        .issue_api_token(&me, chrono::Utc::now() - chrono::Duration::hours(13))?;
    for bad in [tampered, none, forged, expired, "garbage".to_string()] {
        assert_eq!(
            s.gql_err(Some(&bad), "{ me { email } }", json!({})).await?,
            "UNAUTHENTICATED",
            "token {bad}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_throttled() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let q = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    for _ in 0..5 {
        s.gql_err(None, q, json!({"e": ADMIN_EMAIL, "p": "wrong"}))
            .await?;
    }
    // Even the right password is refused while throttled, and the message says so.
    let body = s
        .gql_raw(None, q, json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}))
        .await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too many failed logins"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "A").await?;
    let cases = [
        (
            "mutation { createTenant(input: {name: \"x\", timeZone: \"Mars/Olympus\"}) { id } }",
            json!({}),
            "timeZone",
        ),
        (
            "mutation { createTenant(input: {name: \"  \"}) { id } }",
            json!({}),
            "name",
        ),
        (
            "mutation { createTenant(input: {name: \"x\", primaryColor: \"red;}\"}) { id } }",
            json!({}),
            "primaryColor",
        ),
        (
            "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"n\", target: {kind: ALL_COMPUTERS}, cron: \"61 * * * *\", timeZone: \"UTC\"}) { id } }",
            json!({"t": t}),
            "cron",
        ),
        (
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"n\", email: \"not-an-address\"}) { id } }",
            json!({"t": t}),
            "email",
        ),
        (
            "mutation($t: ID) { createDeployment(input: {tenantId: $t, target: {kind: TAG}}) { id } }",
            json!({"t": t}),
            "target.value",
        ),
        (
            "mutation { createUser(input: {email: \"u@x.example\", password: \"short\", role: MSP_TECHNICIAN}) { id } }",
            json!({}),
            "password",
        ),
    ];
    for (q, v, field) in cases {
        let body = s.gql_raw(Some(&admin), q, v).await?;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{q}: {body}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{q}: {body}"
        );
    }
    let dup = "mutation { createUser(input: {email: \"dup@x.example\", password: \"long-enough-pw\", role: MSP_TECHNICIAN}) { id } }";
    s.gql(&admin, dup, json!({})).await?;
    assert_eq!(s.gql_err(Some(&admin), dup, json!({})).await?, "CONFLICT");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limits_refuse_bombs_but_allow_introspection() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    // graphql-js getIntrospectionQuery shape (depth 15 with the nested ofType chain).
    let introspection = include_str!("introspection.graphql");
    let body = s.gql_raw(Some(&admin), introspection, json!({})).await?;
    assert!(
        body["errors"].is_null(),
        "introspection refused: {}",
        body["errors"]
    );
    let mut bomb = String::from("query { ");
    for i in 0..3000 {
        bomb.push_str(&format!("a{i}: tenants {{ totalCount }} "));
    }
    bomb.push('}');
    for q in [bomb, depth_bomb(40)] {
        let body = s.gql_raw(Some(&admin), &q, json!({})).await?;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }
    Ok(())
}

fn depth_bomb(depth: usize) -> String {
    let mut q = String::from("id");
    for _ in 0..depth {
        q = format!("computer {{ tenant {{ id }} sessions {{ computer {{ {q} }} }} }}");
    }
    format!("query($id: ID!) {{ maintenanceSession(id: $id) {{ {q} }} }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_tokens_survive_a_restart() -> anyhow::Result<()> {
    let mut s = TestServer::start().await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Persistent").await?;
    s.restart().await?;
    // The same token works: the JWT secret was kept in the data dir.
    let d = s
        .gql(
            &admin,
            "query($t: ID!) { tenant(id: $t) { name } }",
            json!({"t": t}),
        )
        .await?;
    assert_eq!(d["tenant"]["name"], "Persistent");
    // On the embedded store the key is a private file; in cluster mode it is in the database.
    if s.cluster.is_none() {
        let secret = std::fs::metadata(s.data_dir.join("jwt-secret"))?;
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    }
    Ok(())
}

#[test]
fn committed_schema_matches_the_server() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/schema.graphql"
    ))
    .expect("schema/schema.graphql");
    let served = upkeep_server::api::graphql::sdl();
    if committed != served {
        if std::env::var_os("UPKEEP_WRITE_SCHEMA").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/schema.graphql"),
                &served,
            )
            .expect("write schema");
            return;
        }
        panic!(
            "schema/schema.graphql is stale: run `cargo run -p upkeep-server -- schema > schema/schema.graphql` (or UPKEEP_WRITE_SCHEMA=1 cargo test)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_graphiql() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let ok = s.http.get(format!("{}/healthz", s.url)).send().await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await?, "ok");
    let gi = s
        .http
        .get(format!("{}/graphql", s.url))
        .header("accept", "text/html")
        .send()
        .await?
        .text()
        .await?;
    assert!(gi.contains("graphiql"), "GraphiQL page");
    let text = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains("upkeep_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("upkeep_http_request_duration_seconds_bucket{route=\"/graphql\""),
        "{text}"
    );
    let nf = s.http.get(format!("{}/nope", s.url)).send().await?;
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.json::<serde_json::Value>().await?["code"], "NOT_FOUND");
    Ok(())
}

/// Every type, field, argument, input field and enum value the schema serves says what it is:
/// portal teams read the schema through their generated types and GraphiQL's docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_of_the_schema_has_a_description() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let body = s
        .gql_raw(
            Some(&admin),
            include_str!("introspection.graphql"),
            json!({}),
        )
        .await?;
    let data = &body["data"];
    let described = |v: &serde_json::Value| {
        v["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty())
    };
    let mut missing = Vec::new();
    for t in data["__schema"]["types"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        // The spec's own types: its built-in scalars are described by the spec (and never
        // printed in an SDL), introspection's `__` types by the spec too.
        if name.starts_with("__") || ["ID", "String", "Int", "Float", "Boolean"].contains(&name) {
            continue;
        }
        if !described(t) {
            missing.push(name.to_string());
        }
        for f in t["fields"].as_array().into_iter().flatten() {
            let field = f["name"].as_str().unwrap();
            if !described(f) {
                missing.push(format!("{name}.{field}"));
            }
            for a in f["args"].as_array().into_iter().flatten() {
                if !described(a) {
                    missing.push(format!("{name}.{field}({})", a["name"].as_str().unwrap()));
                }
            }
        }
        for (list, sep) in [("inputFields", "."), ("enumValues", "::")] {
            for v in t[list].as_array().into_iter().flatten() {
                if !described(v) {
                    missing.push(format!("{name}{sep}{}", v["name"].as_str().unwrap()));
                }
            }
        }
    }
    if let Ok(path) = std::env::var("UPKEEP_LIST_UNDESCRIBED") {
        std::fs::write(path, missing.join("\n")).expect("write list");
    }
    assert!(
        missing.is_empty(),
        "{} parts of the schema have no description: {}",
        missing.len(),
        missing.join(", ")
    );
    Ok(())
}
