//! A tenant's monthly report (CONTRACT §16): real sessions on a real agent — one postponed by
//! its end user through the e-mail link, one that installs, remediates and fails, one that
//! fixes the failure — then `tenantReport` and the PDF and HTML documents, read back.

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::smtp::{SmtpSink, parse};
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 10, 8, 0, 0).unwrap()
}

const REPORT: &str = r#"query($t: ID!, $m: String!) { tenantReport(tenantId: $t, month: $m) {
  month complete from to pdfUrl htmlUrl tenant { id }
  compliance { compliant nonCompliant unknown total }
  computers { name compliance sessions computer { id } }
  sessionsByOutcome { status count }
  software { name installed updated removed computers versions }
  tasks { name remediated computers }
  failures { item message computerName session { id } resolvedBy { id } resolvedAt }
  failuresTotal
  postpones { byEndUser total computerName session { id } }
  postponesByEndUsers
  attestations { chainHead publicKey session { id } }
  attestationsTotal signingKeys } }"#;

struct Month {
    s: TestServer,
    admin: String,
    tenant: String,
    computer: String,
    dir: tempfile::TempDir,
    smtp: SmtpSink,
    _agent: TestAgent,
}

/// A branded tenant in Berlin, Ann's computer with a real agent, software to install, a task
/// that remediates and a task that fails until `dir/allow` exists.
async fn month() -> Result<Month> {
    let smtp = SmtpSink::start().await?;
    let (s, admin) = mailing_server(&smtp, start()).await?;
    let t = s
        .gql(
            &admin,
            r##"mutation { createTenant(input: {name: "Müller Dental", companyName: "Zahnarztpraxis Müller <Zürich>", timeZone: "Europe/Berlin", primaryColor: "#aa3300"}) { id } }"##,
            json!({}),
        )
        .await?;
    let tenant = t["createTenant"]["id"]
        .as_str()
        .context("tenant")?
        .to_string();
    let (computer, _, agent) = personal_computer(
        &s,
        &admin,
        &tenant,
        "empfang-pc",
        ("Ann", "ann@praxis.example"),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let sw =
        create_file_software(&s, &admin, Some(&tenant), "Editor", dir.path(), &["1.0"]).await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let d = dir.path().display().to_string();
    for (name, test, set) in [
        (
            "Cleanup",
            format!("test -f '{d}/clean'"),
            format!("touch '{d}/clean'"),
        ),
        (
            "Firewall",
            format!("test -f '{d}/firewall'"),
            format!(
                "test -f '{d}/allow' || {{ echo 'policy store locked' >&2; exit 1; }}; touch '{d}/firewall'"
            ),
        ),
    ] {
        let task = s
            .gql(
                &admin,
                "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
                json!({"i": {"name": name, "tenantId": tenant,
                    "testScript": {"language": "SHELL", "body": test},
                    "setScript": {"language": "SHELL", "body": set}}}),
            )
            .await?["createMaintenanceTask"]["id"]
            .as_str()
            .context("task")?
            .to_string();
        s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task})).await?;
    }
    Ok(Month {
        s,
        admin,
        tenant,
        computer,
        dir,
        smtp,
        _agent: agent,
    })
}

async fn report(m: &Month, month: &str) -> Result<Value> {
    Ok(m.s
        .gql(&m.admin, REPORT, json!({"t": m.tenant, "m": month}))
        .await?["tenantReport"]
        .clone())
}

/// The first session: the end user postpones it through the before-mail's link; it runs a day
/// later, installs Editor, remediates Cleanup and fails on Firewall. Its id.
async fn postponed_failing_session(m: &mut Month) -> Result<String> {
    let at = start() + chrono::Duration::hours(3);
    let id = m.s.start_session(&m.admin, &m.computer, json!({"executeAt": at, "options": {"notifyBefore": true, "maxPostpones": 1, "postponeHours": 24}})).await?;
    m.s.wait_status(&m.admin, &id, &["SCHEDULED"], T).await?;
    let mail = wait_for("the before-mail", T, || async {
        Ok(m.smtp.received().first().map(|r| parse(&r.data)))
    })
    .await?;
    let start_of_link = mail.text.find("http://").context("a link in the mail")?;
    let link = mail.text[start_of_link..]
        .split_whitespace()
        .next()
        .context("link")?
        .to_string();
    let r =
        m.s.http
            .post(&link)
            .form(&[("action", "postpone")])
            .send()
            .await?;
    ensure!(r.status() == 200, "postpone: {}", r.status());
    m.s.set_clock(at + chrono::Duration::hours(24) + chrono::Duration::seconds(5))
        .await?;
    m.admin = m.s.admin().await?; // a day later: the old token expired
    let done =
        m.s.wait_status(&m.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    ensure!(done["status"] == "FAILED", "Firewall fails: {done:#}");
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_real_sessions_reads_the_same_in_the_report_its_pdf_and_its_page() -> Result<()>
{
    let mut m = month().await?;
    let failed = postponed_failing_session(&mut m).await?;
    // Firewall is allowed now: the next session sets it right.
    std::fs::write(m.dir.path().join("allow"), "")?;
    let fixed = m.s.start_session(&m.admin, &m.computer, json!({})).await?;
    let done =
        m.s.wait_status(&m.admin, &fixed, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");

    // While the month lasts.
    let r = report(&m, "2026-11").await?;
    assert_eq!(
        (r["month"].as_str(), r["complete"].as_bool()),
        (Some("2026-11"), Some(false))
    );
    assert_eq!(
        r["from"], "2026-10-31T23:00:00.000Z",
        "local midnight in Berlin"
    );
    assert_month(&m, &r, &failed, &fixed).await?;

    // The month over: the same figures, and they are final.
    m.s.set_clock(Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap())
        .await?;
    m.admin = m.s.admin().await?;
    let r = report(&m, "2026-11").await?;
    assert_eq!(r["complete"], true);
    assert_eq!(r["to"], "2026-11-30T23:00:00.000Z");
    assert_month(&m, &r, &failed, &fixed).await?;
    documents(&m, &r, &failed).await?;

    // December has nothing yet; a month that has not begun or is malformed is refused.
    let dec = report(&m, "2026-12").await?;
    assert_eq!(dec["attestationsTotal"], 0);
    assert_eq!(dec["compliance"]["compliant"], 1, "compliance carries over");
    for bad in ["2027-01", "2026-13", "11-2026", "2026-11.pdf"] {
        let code =
            m.s.gql_err(Some(&m.admin), REPORT, json!({"t": m.tenant, "m": bad}))
                .await?;
        assert_eq!(code, "BAD_USER_INPUT", "{bad}");
    }
    let other = m.s.create_tenant(&m.admin, "Other").await?;
    m.s.gql(&m.admin, "mutation($t: ID) { createUser(input: {email: \"v@other.example\", password: \"long-enough-pw\", role: TENANT_VIEWER, tenantId: $t}) { id } }", json!({"t": other})).await?;
    let viewer = m.s.login("v@other.example", "long-enough-pw").await?;
    let code =
        m.s.gql_err(
            Some(&viewer),
            REPORT,
            json!({"t": m.tenant, "m": "2026-11"}),
        )
        .await?;
    assert_eq!(
        code, "NOT_FOUND",
        "another tenant's report does not exist for its users"
    );
    let pdf = format!(
        "{}/api/v1/tenants/{}/reports/2026-11.pdf",
        m.s.url, m.tenant
    );
    let r = m.s.http.get(&pdf).bearer_auth(&viewer).send().await?;
    assert_eq!(r.status(), 404, "nor over REST");
    // Before the tenant existed: refused.
    let code =
        m.s.gql_err(
            Some(&m.admin),
            REPORT,
            json!({"t": m.tenant, "m": "2026-10"}),
        )
        .await?;
    assert_eq!(code, "BAD_USER_INPUT");
    Ok(())
}

async fn assert_month(m: &Month, r: &Value, failed: &str, fixed: &str) -> Result<()> {
    assert_eq!(r["tenant"]["id"], m.tenant.as_str());
    assert_eq!(
        r["compliance"],
        json!({"compliant": 1, "nonCompliant": 0, "unknown": 0, "total": 1})
    );
    assert_eq!(r["computers"][0]["computer"]["id"], m.computer.as_str());
    assert_eq!(
        (
            r["computers"][0]["compliance"].as_str(),
            r["computers"][0]["sessions"].as_i64()
        ),
        (Some("COMPLIANT"), Some(2))
    );
    let outcomes: Vec<(String, i64)> = r["sessionsByOutcome"]
        .as_array()
        .context("outcomes")?
        .iter()
        .map(|o| {
            (
                o["status"].as_str().unwrap_or("").to_string(),
                o["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("PASSED".into(), 1)) && outcomes.contains(&("FAILED".into(), 1)),
        "{outcomes:?}"
    );
    assert_eq!(
        r["software"],
        json!([{"name": "Editor", "installed": 1, "updated": 0, "removed": 0, "computers": 1, "versions": ["1.0"]}])
    );
    assert_eq!(
        r["tasks"],
        json!([{"name": "Cleanup", "remediated": 1, "computers": 1}, {"name": "Firewall", "remediated": 1, "computers": 1}])
    );
    assert_eq!(r["failuresTotal"], 1);
    let f = &r["failures"][0];
    assert_eq!(
        (f["item"].as_str(), f["session"]["id"].as_str()),
        (Some("Firewall"), Some(failed))
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap_or("")
            .contains("policy store locked"),
        "{f}"
    );
    assert_eq!(
        f["resolvedBy"]["id"], fixed,
        "the next session set it right"
    );
    assert_eq!(r["postponesByEndUsers"], 1);
    assert_eq!(
        r["postpones"],
        json!([{"byEndUser": 1, "total": 1, "computerName": "empfang-pc", "session": {"id": failed}}])
    );
    // Both sessions' signed records, with the chain heads the sessions themselves show.
    assert_eq!(r["attestationsTotal"], 2);
    for a in r["attestations"].as_array().context("attestations")? {
        let id = a["session"]["id"].as_str().context("session")?;
        let s = m.s.gql(&m.admin, "query($id: ID!) { maintenanceSession(id: $id) { attestation { chainHead publicKey } } }", json!({"id": id})).await?;
        assert_eq!(
            s["maintenanceSession"]["attestation"]["chainHead"],
            a["chainHead"]
        );
        assert_eq!(r["signingKeys"], json!([a["publicKey"]]));
    }
    Ok(())
}

/// The PDF and the HTML page show the report: read back, not just fetched.
async fn documents(m: &Month, r: &Value, failed: &str) -> Result<()> {
    let pdf_url = r["pdfUrl"].as_str().context("pdfUrl")?;
    assert!(
        pdf_url.ends_with(&format!("/api/v1/tenants/{}/reports/2026-11.pdf", m.tenant)),
        "{pdf_url}"
    );
    let resp = m.s.http.get(pdf_url).bearer_auth(&m.admin).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let pdf = resp.bytes().await?;
    let doc = lopdf::Document::load_mem(&pdf)?;
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    let text = doc.extract_text(&pages)?;
    // Lines wrap inside table cells: compare with whitespace runs as single spaces.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!pages.is_empty());
    assert!(
        text.contains(&format!("Page {0} of {0}", pages.len())),
        "{text}"
    );
    for needle in [
        "Zahnarztpraxis Müller <Zürich>",
        "Maintenance report, November 2026",
        "1 November 2026 – 30 November 2026",
        "empfang-pc",
        "Editor",
        "Firewall",
        "policy store locked",
        "Resolved",
    ] {
        assert!(text.contains(needle), "{needle} in the PDF: {text}");
    }
    let compact: String = text.split_whitespace().collect();
    for a in r["attestations"].as_array().context("attestations")? {
        let head = a["chainHead"].as_str().context("chainHead")?;
        assert!(compact.contains(head), "chain head {head} in the PDF");
    }
    assert!(
        compact.contains(failed),
        "the failed session's id in the PDF"
    );

    let html_url = r["htmlUrl"].as_str().context("htmlUrl")?;
    let resp = m.s.http.get(html_url).bearer_auth(&m.admin).send().await?;
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()?
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = resp.text().await?;
    assert!(
        html.contains("Zahnarztpraxis Müller &lt;Zürich&gt;") && !html.contains("<Zürich>"),
        "escaped"
    );
    assert!(
        html.contains("#aa3300") && html.contains("policy store locked"),
        "branded, with the failure"
    );

    // Signed in, or nothing; only these two forms.
    let anon = m.s.http.get(pdf_url).send().await?;
    assert_eq!(anon.status(), 401);
    let body: Value = anon.json().await?;
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let docx = pdf_url.replace(".pdf", ".docx");
    assert_eq!(
        m.s.http
            .get(&docx)
            .bearer_auth(&m.admin)
            .send()
            .await?
            .status(),
        404
    );
    let future = pdf_url.replace("2026-11", "2027-01");
    let resp = m.s.http.get(&future).bearer_auth(&m.admin).send().await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await?["code"], "BAD_USER_INPUT");
    Ok(())
}

/// With no turns to give (`--max-concurrent-reports 0`, `--max-concurrent-previews 0`), the
/// costly work is refused at once, clearly: `THROTTLED` in GraphQL, 429 with `Retry-After` over
/// REST; nothing else on the server is affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_previews_beyond_their_turns_are_throttled() -> Result<()> {
    let s = TestServer::start_with(|c| {
        c.max_concurrent_reports = 0;
        c.max_concurrent_previews = 0;
    })
    .await?;
    let admin = s.admin().await?;
    // In UTC, so that this month is the tenant's first whatever the hour.
    let tenant = s
        .gql(
            &admin,
            r#"mutation { createTenant(input: {name: "Acme", timeZone: "UTC"}) { id } }"#,
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .context("tenant")?
        .to_string();
    let month = Utc::now().format("%Y-%m").to_string();
    let code = s
        .gql_err(Some(&admin), REPORT, json!({"t": tenant, "m": month}))
        .await?;
    assert_eq!(code, "THROTTLED");
    let r = s
        .http
        .get(format!(
            "{}/api/v1/tenants/{tenant}/reports/{month}.pdf",
            s.url
        ))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    assert_eq!(r.json::<Value>().await?["code"], "THROTTLED");
    let task = s
        .gql(
            &admin,
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {"name": "Stamp", "tenantId": tenant,
                "testScript": {"language": "SHELL", "body": "true"}}}),
        )
        .await?["createMaintenanceTask"]["id"]
        .clone();
    let code = s
        .gql_err(
            Some(&admin),
            "query($i: DeploymentChangeInput!) { previewDeploymentChange(input: $i) { counts { count } } }",
            json!({"i": {"create": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task}}}),
        )
        .await?;
    assert_eq!(code, "THROTTLED");
    // The rest of the server answers as ever.
    s.gql(&admin, "{ tenants { totalCount } }", json!({}))
        .await?;
    Ok(())
}
