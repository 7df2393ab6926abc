//! Branded mails over real SMTP, the postpone page, and the outbox's durability.

use futures_util::TryStreamExt;
use serde_json::json;
use std::time::Duration;
use upkeep_tests::smtp::{SmtpSink, parse};
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

struct Fixture {
    s: TestServer,
    admin: String,
    tenant: String,
    computer: String,
    dir: tempfile::TempDir,
    smtp: SmtpSink,
    _agent: TestAgent,
}

async fn fixture(smtp: SmtpSink) -> anyhow::Result<Fixture> {
    let (s, admin) = mailing_server(&smtp, chrono::Utc::now()).await?;
    let t = s
        .gql(
            &admin,
            r##"mutation { createTenant(input: {name: "Acme", companyName: "Acme <Care> & Co", timeZone: "Europe/Berlin", primaryColor: "#aa3300", mailFrom: "Acme IT <it@acme.example>", logoUrl: "https://acme.example/logo.png", mailBcc: ["records@msp.example"]}) { id } }"##,
            json!({}),
        )
        .await?;
    let tenant = t["createTenant"]["id"].as_str().unwrap().to_string();
    let (computer, _, agent) = personal_computer(
        &s,
        &admin,
        &tenant,
        "ann-laptop",
        ("Ann O'Neil", "ann@acme.example"),
    )
    .await?;
    s.gql(
        &admin,
        "mutation($c: ID!) { updateComputer(id: $c, input: {name: \"Ann's <laptop>\"}) { id } }",
        json!({"c": computer}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(
        &s,
        &admin,
        Some(&tenant),
        "Browser",
        dir.path(),
        &["1.9.2", "1.10.0"],
    )
    .await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    Ok(Fixture {
        s,
        admin,
        tenant,
        computer,
        dir,
        smtp,
        _agent: agent,
    })
}

async fn wait_mails(
    smtp: &SmtpSink,
    n: usize,
) -> anyhow::Result<Vec<upkeep_tests::smtp::ReceivedMail>> {
    wait_for(&format!("{n} mail(s)"), T, || async {
        Ok((smtp.received().len() >= n).then(|| smtp.received()))
    })
    .await
}

fn link(text: &str) -> String {
    let start = text.find("http://").expect("a link in the mail");
    text[start..].split_whitespace().next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_mail_postpone_page_and_after_mail() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    let f = fixture(smtp).await?;
    let now = f.s.app().clock.now();
    let at = now + chrono::Duration::hours(3);
    let id = f
        .s
        .start_session(&f.admin, &f.computer, json!({"executeAt": at, "options": {"notifyBefore": true, "notifyAfter": true, "maxPostpones": 1, "postponeHours": 24}}))
        .await?;
    let s = f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    assert_eq!(s["actions"][0]["kind"], "INSTALL");
    let mails = wait_mails(&f.smtp, 1).await?;
    let raw = &mails[0];
    assert_eq!(
        raw.rcpt,
        vec![
            "ann@acme.example".to_string(),
            "records@msp.example".to_string()
        ],
        "Bcc is in the envelope"
    );
    let m = parse(&raw.data);
    assert!(m.header("Bcc").is_none(), "Bcc is not in the headers");
    assert!(
        m.content_type.starts_with("multipart/alternative"),
        "{}",
        m.content_type
    );
    assert!(m.header("From").unwrap().contains("it@acme.example"));
    assert!(m.header("Message-ID").is_some());
    assert!(
        m.text.contains("Acme <Care> & Co") && m.text.contains("1.10.0"),
        "text part: {}",
        m.text
    );
    assert!(
        m.html.contains("Acme &lt;Care&gt; &amp; Co") && !m.html.contains("<Care>"),
        "HTML is escaped"
    );
    assert!(
        m.html.contains("#aa3300") && m.html.contains("https://acme.example/logo.png"),
        "branding"
    );
    assert!(
        (m.text.contains(" CET") || m.text.contains(" CEST")) && !m.text.contains("Europe/Berlin"),
        "the time in the tenant's zone, with its abbreviation"
    );
    let url = link(&m.text);
    assert!(url.contains("/postpone/"), "{url}");

    // GET shows the page and changes nothing (mail scanners prefetch links).
    for _ in 0..2 {
        let page = f.s.http.get(&url).send().await?;
        assert_eq!(page.status(), 200);
        let html = page.text().await?;
        assert!(
            html.contains("Browser") && html.contains("Ann&#x27;s &lt;laptop&gt;")
                || html.contains("Ann&#39;s &lt;laptop&gt;"),
            "{html}"
        );
    }
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(
        (s["status"].as_str(), s["postponeCount"].as_i64()),
        (Some("SCHEDULED"), Some(0))
    );

    // POST postpones once.
    let r =
        f.s.http
            .post(&url)
            .form(&[("action", "postpone")])
            .send()
            .await?;
    assert_eq!(r.status(), 200);
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(
        (s["status"].as_str(), s["postponeCount"].as_i64()),
        (Some("POSTPONED"), Some(1))
    );
    let moved: chrono::DateTime<chrono::Utc> = s["executeAt"].as_str().unwrap().parse()?;
    // The API shows milliseconds.
    assert_eq!(
        moved.timestamp_millis(),
        (at + chrono::Duration::hours(24)).timestamp_millis()
    );
    // Replay of the same link: refused, nothing changes.
    let r =
        f.s.http
            .post(&url)
            .form(&[("action", "postpone")])
            .send()
            .await?;
    assert_eq!(r.status(), 410);
    assert!(r.text().await?.to_lowercase().contains("already used"));
    // A forged token: refused.
    let forged = format!("{}x", url);
    assert_eq!(
        f.s.http
            .post(&forged)
            .form(&[("action", "postpone")])
            .send()
            .await?
            .status(),
        400
    );
    assert_eq!(f.s.http.get(&forged).send().await?.status(), 400);
    // Over the limit through the API too (maxPostpones 1).
    assert_eq!(
        f.s.gql_err(
            Some(&f.admin),
            "mutation($id: ID!) { postponeMaintenanceSession(id: $id, hours: 2) { id } }",
            json!({"id": id})
        )
        .await?,
        "BAD_USER_INPUT"
    );
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(s["postponeCount"], 1);

    // Execution when the (moved) time comes; then the after-mail with outcomes.
    f.s.set_clock(moved + chrono::Duration::seconds(5)).await?;
    let admin = f.s.admin().await?; // a day later: the old token expired
    let done =
        f.s.wait_status(&admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    // The postpone sent a fresh before-mail for the new time; then the after-mail.
    let mails = wait_mails(&f.smtp, 3).await?;
    let after = parse(&mails[2].data);
    assert!(
        after.text.contains("Browser") && after.text.to_lowercase().contains("succeeded"),
        "{}",
        after.text
    );
    assert_ne!(m.header("Message-ID"), after.header("Message-ID"));
    // The preview renders the same without sending.
    let p =
        f.s.gql(
            &admin,
            "query($id: ID!) { emailPreview(sessionId: $id, kind: AFTER) { subject text html } }",
            json!({"id": id}),
        )
        .await?;
    assert!(
        p["emailPreview"]["text"]
            .as_str()
            .unwrap()
            .contains("Browser")
    );
    assert_eq!(f.smtp.received().len(), 3, "previews send nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postpone_limit_and_update_now_on_the_page() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    let f = fixture(smtp).await?;
    let at = f.s.app().clock.now() + chrono::Duration::hours(2);
    let id =
        f.s.start_session(
            &f.admin,
            &f.computer,
            json!({"executeAt": at, "options": {"notifyBefore": true, "maxPostpones": 0}}),
        )
        .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    let mails = wait_mails(&f.smtp, 1).await?;
    let m = parse(&mails[0].data);
    assert!(
        !m.text.contains("postpone the maintenance"),
        "no postpone offered when none are allowed"
    );
    // With no postpones left there is no link at all; test the limit through the API.
    assert_eq!(
        f.s.gql_err(
            Some(&f.admin),
            "mutation($id: ID!) { postponeMaintenanceSession(id: $id) { id } }",
            json!({"id": id})
        )
        .await?,
        "BAD_USER_INPUT"
    );
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { id } }",
        json!({"id": id}),
    )
    .await?;
    // A session with postpones: update-now from the page executes at once.
    let id =
        f.s.start_session(
            &f.admin,
            &f.computer,
            json!({"executeAt": at, "options": {"notifyBefore": true}}),
        )
        .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    let mails = wait_mails(&f.smtp, 2).await?;
    let url = link(&parse(&mails[1].data).text);
    let r =
        f.s.http
            .post(&url)
            .form(&[("action", "update-now")])
            .send()
            .await?;
    assert_eq!(r.status(), 200);
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED");
    // The link is dead now.
    assert_eq!(f.s.http.get(&url).send().await?.status(), 410);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_survives_an_smtp_outage_and_a_restart_once() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    smtp.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut f = fixture(smtp).await?;
    let q = "mutation($t: ID!) { sendTestEmail(tenantId: $t, to: \"ops@msp.example\") }";
    let ok = f.s.gql(&f.admin, q, json!({"t": f.tenant})).await?;
    assert_eq!(ok["sendTestEmail"], true);
    // The first attempt fails (451); the mail stays queued across a restart.
    wait_for("a failed attempt", T, || async {
        Ok((f.s.metric("upkeep_mail_failures_total").await? >= 1.0).then_some(()))
    })
    .await?;
    assert_eq!(f.s.metric("upkeep_outbox_depth").await?, 1.0);
    f.s.restart().await?;
    f.smtp
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mails = wait_mails(&f.smtp, 1).await?;
    assert_eq!(mails.len(), 1);
    // Once its record says sent, the outbox worker (which sends only pending mail) cannot send
    // it again: no need to wait and see.
    wait_for("the outbox record marked sent", T, || async {
        let all: Vec<upkeep_core::mail::OutboxMail> =
            f.s.app()
                .store
                .scan::<upkeep_core::mail::OutboxMail>(None)
                .try_collect::<_>()
                .await?;
        let sent =
            all.len() == 1 && matches!(all[0].status, upkeep_core::mail::MailStatus::Sent { .. });
        Ok(sent.then_some(()))
    })
    .await?;
    assert_eq!(f.smtp.received().len(), 1, "delivered once");
    let m = parse(&f.smtp.received()[0].data);
    assert!(m.header("Subject").is_some());
    assert_eq!(f.s.metric("upkeep_outbox_depth").await?, 0.0);
    drop(f.dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_dir_overrides_and_a_broken_template_stops_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("test.subject.hbs"),
        "Custom test for {{brand.companyName}}",
    )?;
    let smtp = SmtpSink::start().await?;
    let url = smtp.url();
    let tdir = dir.path().to_path_buf();
    let s = TestServer::start_with(move |c| {
        c.smtp_url = Some(url);
        c.templates_dir = Some(tdir);
    })
    .await?;
    let admin = s.admin().await?;
    let t = s.create_tenant(&admin, "Tpl").await?;
    s.gql(
        &admin,
        "mutation($t: ID!) { sendTestEmail(tenantId: $t, to: \"x@tpl.example\") }",
        json!({"t": t}),
    )
    .await?;
    let mails = wait_mails(&smtp, 1).await?;
    assert!(
        parse(&mails[0].data)
            .header("Subject")
            .unwrap()
            .contains("Custom test for Tpl")
    );
    drop(s);
    std::fs::write(
        dir.path().join("maintenance-before.html.hbs"),
        "{{#if}}broken",
    )?;
    let tdir = dir.path().to_path_buf();
    let err = TestServer::start_with(move |c| c.templates_dir = Some(tdir))
        .await
        .err()
        .expect("a broken template stops start-up");
    assert!(
        format!("{err:#}").contains("maintenance-before.html.hbs"),
        "{err:#}"
    );
    Ok(())
}
