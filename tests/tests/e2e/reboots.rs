//! Before a session changes anything: the reboot a computer already waits for (reported by the
//! real agent from a temp reboot-pending file), preflight checks that hold a session in
//! PENDING_PREFLIGHT until they pass, and PROMPT reboots that tell the computer's users first.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(90);

fn logs(session: &Value) -> Vec<String> {
    session["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Software `name` whose install script first checks `must_exist` (exit 7 without it), then
/// records the version like [`create_file_software`]; deployed to every computer of `tenant`.
async fn guarded_software(
    s: &TestServer,
    admin: &str,
    tenant: &str,
    dir: &Path,
    must_exist: &Path,
    exit: i32,
) -> anyhow::Result<()> {
    let file = dir.join("tool.version");
    let (f, m) = (file.display(), must_exist.display());
    let sw = s
        .create_software(
            admin,
            json!({
                "name": "Tool",
                "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": format!("test -f '{f}' && cat '{f}' || exit 0")},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL",
                    "body": format!("test -e '{m}' || exit 7\necho 1.0 > '{f}'\nexit {exit}")}}],
            }),
        )
        .await?;
    s.create_deployment(
        admin,
        json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}),
    )
    .await?;
    Ok(())
}

async fn reboot_pending(s: &TestServer, admin: &str, c: &str) -> anyhow::Result<Option<bool>> {
    let d = s
        .gql(
            admin,
            "query($c: ID!) { computer(id: $c) { rebootPending } }",
            json!({"c": c}),
        )
        .await?;
    Ok(d["computer"]["rebootPending"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_reboot_runs_before_any_change_and_the_session_waits_for_the_computer()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let pending_file = dir.path().join("reboot-required");
    let rebooted = dir.path().join("rebooted");
    std::fs::write(&pending_file, "*** System restart required ***\n")?;
    // The "reboot" clears the pending state, as a real one does.
    let reboot = format!(
        "touch '{}'; rm -f '{}'",
        rebooted.display(),
        pending_file.display()
    );
    let pf = pending_file.clone();
    let _agent = TestAgent::start_with(&s.url, &key, "pc-pending", move |c| {
        c.reboot_pending_file = pf;
        c.reboot_command = reboot;
    })
    .await?;
    let c = s.computer_id(&admin, "pc-pending").await?;
    s.wait_online(&admin, &c).await?;
    wait_for("the agent to report the pending reboot", T, || async {
        Ok((reboot_pending(&s, &admin, &c).await? == Some(true)).then_some(()))
    })
    .await?;
    // The install fails unless the reboot ran before it.
    guarded_software(&s, &admin, &tenant, dir.path(), &rebooted, 0).await?;
    let id = s.start_session(&admin, &c, json!({})).await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let lines = logs(&done);
    let reboot_at = lines
        .iter()
        .position(|l| l.contains("rebooting before any change"))
        .unwrap_or_else(|| panic!("no reboot first: {lines:#?}"));
    let back_at = lines
        .iter()
        .position(|l| l.contains("back after its reboot"))
        .unwrap_or_else(|| panic!("did not wait for the computer: {lines:#?}"));
    let install_at = lines
        .iter()
        .position(|l| l.contains("Running:"))
        .unwrap_or_else(|| panic!("no install: {lines:#?}"));
    assert!(reboot_at < back_at && back_at < install_at, "{lines:#?}");
    assert!(rebooted.exists());
    assert!(
        done["rebootedAt"].is_null(),
        "no second reboot after the install"
    );
    assert_eq!(reboot_pending(&s, &admin, &c).await?, Some(false));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_reboots_leave_a_pending_reboot_alone() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let pending_file = dir.path().join("reboot-required");
    let rebooted = dir.path().join("rebooted");
    std::fs::write(&pending_file, "")?;
    let (pf, reboot) = (
        pending_file.clone(),
        format!("touch '{}'", rebooted.display()),
    );
    let _agent = TestAgent::start_with(&s.url, &key, "pc-suppress", move |c| {
        c.reboot_pending_file = pf;
        c.reboot_command = reboot;
    })
    .await?;
    let c = s.computer_id(&admin, "pc-suppress").await?;
    s.wait_online(&admin, &c).await?;
    wait_for("the pending reboot", T, || async {
        Ok((reboot_pending(&s, &admin, &c).await? == Some(true)).then_some(()))
    })
    .await?;
    // The install needs nothing: it runs whether or not a reboot came first.
    guarded_software(&s, &admin, &tenant, dir.path(), dir.path(), 0).await?;
    let id = s
        .start_session(
            &admin,
            &c,
            json!({"options": {"rebootPreference": "SUPPRESS"}}),
        )
        .await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert!(!rebooted.exists(), "SUPPRESS: no reboot");
    assert!(
        logs(&done)
            .iter()
            .any(|l| l.contains("reboots are suppressed")),
        "{done:#}"
    );
    assert_eq!(reboot_pending(&s, &admin, &c).await?, Some(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_preflight_holds_the_session_until_it_passes() -> anyhow::Result<()> {
    let start: DateTime<Utc> = "2026-03-02T20:00:00Z".parse()?;
    let dir = tempfile::tempdir()?;
    let ok = dir.path().join("render-finished");
    // The server-wide check always passes; the tenant's waits for the render to finish.
    let s = TestServer::start_with(|c| {
        c.test_clock = Some(start);
        c.preflight_scripts = vec![upkeep_core::domain::Script {
            language: upkeep_core::domain::ScriptLanguage::Shell,
            body: "exit 0".into(),
        }];
    })
    .await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Studio").await?;
    let check = format!(
        "test -f '{}' || {{ echo 'a render is in progress'; exit 1; }}",
        ok.display()
    );
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!, $b: String!) { updateTenant(id: $t, input: {preflightScripts: [{language: SHELL, body: $b}]}) { preflightScripts { language body } } }",
            json!({"t": tenant, "b": check}),
        )
        .await?;
    assert_eq!(
        d["updateTenant"]["preflightScripts"][0]["body"],
        check.as_str()
    );
    let key = s.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&s.url, &key, "render-1").await?;
    let c = s.computer_id(&admin, "render-1").await?;
    s.wait_online(&admin, &c).await?;
    let installed_marker = dir.path().join("tool.version");
    guarded_software(&s, &admin, &tenant, dir.path(), dir.path(), 0).await?;
    let id = s
        .start_session(&admin, &c, json!({"options": {"preflightRetryMinutes": 5}}))
        .await?;
    let held = s
        .wait_status(&admin, &id, &["PENDING_PREFLIGHT", "PASSED", "FAILED"], T)
        .await?;
    assert_eq!(held["status"], "PENDING_PREFLIGHT", "{held:#}");
    assert!(
        held["statusReason"]
            .as_str()
            .unwrap_or("")
            .starts_with("a render is in progress"),
        "{held:#}"
    );
    assert!(
        !installed_marker.exists(),
        "nothing changed before preflight passed"
    );
    // The render finishes; five minutes later the check runs again and passes.
    std::fs::write(&ok, "")?;
    s.set_clock(start + chrono::Duration::minutes(6)).await?;
    let admin = s.admin().await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert!(installed_marker.exists());
    let lines = logs(&done);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Preflight check failed: a render is in progress")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Preflight checks passed")),
        "{lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_reboot_tells_the_users_first() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let shown = dir.path().join("prompt.txt");
    let rebooted = dir.path().join("rebooted");
    let prompt = format!("cat > '{}'", shown.display());
    let reboot = format!("touch '{}'", rebooted.display());
    let _agent = TestAgent::start_with(&s.url, &key, "pc-prompt", move |c| {
        c.prompt_command = prompt;
        c.reboot_command = reboot;
    })
    .await?;
    let c = s.computer_id(&admin, "pc-prompt").await?;
    s.wait_online(&admin, &c).await?;
    // A tray app listens for the prompt.
    let hook = upkeep_tests::hook::HookReceiver::start(&[]).await?;
    s.gql(
        &admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [REBOOT_PROMPTED]}) { webhook { id } } }",
        json!({"t": tenant, "u": hook.url()}),
    )
    .await?;
    // The install asks for a reboot (3010).
    guarded_software(&s, &admin, &tenant, dir.path(), dir.path(), 3010).await?;
    let id = s
        .start_session(
            &admin,
            &c,
            json!({"options": {"rebootPreference": "PROMPT", "rebootPromptMinutes": 0}}),
        )
        .await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert!(!done["rebootedAt"].is_null(), "{done:#}");
    let text = std::fs::read_to_string(&shown)?;
    assert!(text.contains("restarts at"), "{text}");
    let delivery = wait_for("the REBOOT_PROMPTED webhook", T, || async {
        Ok(hook
            .all()
            .into_iter()
            .find(|r| r.header("Upkeep-Event") == Some("REBOOT_PROMPTED")))
    })
    .await?;
    let body: Value = serde_json::from_str(&delivery.body)?;
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(
        body["data"]["message"].as_str(),
        Some(text.trim()),
        "{body}"
    );
    assert!(body["data"]["rebootAt"].is_string(), "{body}");
    assert!(rebooted.exists());
    let lines = logs(&done);
    let told = lines.iter().position(|l| l.contains("users were told"));
    let rebooting = lines
        .iter()
        .position(|l| l.contains("Rebooting the computer"));
    assert!(
        matches!((told, rebooting), (Some(a), Some(b)) if a < b),
        "told first: {lines:#?}"
    );
    Ok(())
}

/// The after-mail of a session that left a reboot pending (SUPPRESS here; the agent still
/// reports it) carries a "Reboot now" link: GET only asks, POST reboots, and once the reboot
/// ran the link changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_mail_reboot_now_link_reboots_a_pending_computer() -> anyhow::Result<()> {
    let smtp = smtp::SmtpSink::start().await?;
    let url = smtp.url();
    let s = TestServer::start_with(move |c| c.smtp_url = Some(url)).await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let person = s
        .gql(
            &admin,
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Ann\", email: \"ann@acme.example\"}) { id } }",
            json!({"t": tenant}),
        )
        .await?["createPerson"]["id"]
        .clone();
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let pending_file = dir.path().join("reboot-required");
    let rebooted = dir.path().join("rebooted");
    std::fs::write(&pending_file, "")?;
    let reboot = format!(
        "touch '{}'; rm -f '{}'",
        rebooted.display(),
        pending_file.display()
    );
    let pf = pending_file.clone();
    let _agent = TestAgent::start_with(&s.url, &key, "pc-mail", move |c| {
        c.reboot_pending_file = pf;
        c.reboot_command = reboot;
    })
    .await?;
    let c = s.computer_id(&admin, "pc-mail").await?;
    s.wait_online(&admin, &c).await?;
    s.gql(
        &admin,
        "mutation($c: ID!, $p: ID!) { updateComputer(id: $c, input: {primaryPersonId: $p}) { id } }",
        json!({"c": c, "p": person}),
    )
    .await?;
    wait_for("the pending reboot", T, || async {
        Ok((reboot_pending(&s, &admin, &c).await? == Some(true)).then_some(()))
    })
    .await?;
    guarded_software(&s, &admin, &tenant, dir.path(), dir.path(), 0).await?;
    let id = s
        .start_session(
            &admin,
            &c,
            json!({"options": {"rebootPreference": "SUPPRESS", "notifyAfter": true}}),
        )
        .await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let mail = wait_for("the after-mail", T, || async {
        Ok(smtp.received().first().map(|m| smtp::parse(&m.data)))
    })
    .await?;
    let link = mail
        .text
        .split_whitespace()
        .find(|w| w.contains("/reboot/"))
        .unwrap_or_else(|| panic!("no reboot-now link: {}", mail.text))
        .to_string();
    assert!(mail.html.contains("Reboot now"), "{}", mail.html);

    // GET only asks (mail scanners open links).
    let page = s.http.get(&link).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("Restart now"));
    assert!(!rebooted.exists(), "GET changed nothing");
    let post = s
        .http
        .post(&link)
        .form(&[("action", "reboot-now")])
        .send()
        .await?;
    assert_eq!(post.status(), 200);
    assert!(post.text().await?.contains("restarts now"));
    wait_for("the reboot", T, || async {
        Ok(rebooted.exists().then_some(()))
    })
    .await?;
    wait_for("the reboot to be done", T, || async {
        Ok((reboot_pending(&s, &admin, &c).await? == Some(false)).then_some(()))
    })
    .await?;
    let again = s
        .http
        .post(&link)
        .form(&[("action", "reboot-now")])
        .send()
        .await?;
    assert_eq!(again.status(), 409, "nothing pending any more");
    // A forged link does nothing.
    let forged = s
        .http
        .get(format!("{}/reboot/not-a-token", s.url))
        .send()
        .await?;
    assert_eq!(forged.status(), 400);
    Ok(())
}

/// A schedule's own preflight check that keeps failing: retried inside the window, then the
/// session ends CANCELLED with what the check said; nothing was installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_failing_through_the_window_cancels_the_session() -> anyhow::Result<()> {
    let at = |s: &str| s.parse::<DateTime<Utc>>();
    let s =
        TestServer::start_with(|c| c.test_clock = Some("2026-03-02T21:50:00Z".parse().unwrap()))
            .await?;
    let mut admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Studio").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&s.url, &key, "render-2").await?;
    let c = s.computer_id(&admin, "render-2").await?;
    s.wait_online(&admin, &c).await?;
    let dir = tempfile::tempdir()?;
    guarded_software(&s, &admin, &tenant, dir.path(), dir.path(), 0).await?;
    // 22:00 UTC daily, a 20-minute window, checked again every 15 minutes.
    let d = s
        .gql(
            &admin,
            "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"Nightly\", target: {kind: ALL_COMPUTERS}, cron: \"0 22 * * *\", timeZone: \"UTC\", windowMinutes: 20,
               options: {preflightRetryMinutes: 15},
               preflightScripts: [{language: SHELL, body: \"echo 'Windows Update is running'; exit 1\"}]}) { id preflightScripts { body } } }",
            json!({"t": tenant}),
        )
        .await?;
    assert_eq!(
        d["createSchedule"]["preflightScripts"][0]["body"],
        "echo 'Windows Update is running'; exit 1"
    );
    s.set_clock(at("2026-03-02T22:00:05Z")?).await?;
    admin = s.admin().await?;
    let id = wait_for("the schedule to fire", T, || async {
        let l = s
            .gql(
                &admin,
                "{ maintenanceSessions { edges { node { id } } } }",
                json!({}),
            )
            .await?;
        Ok(l["maintenanceSessions"]["edges"][0]["node"]["id"]
            .as_str()
            .map(String::from))
    })
    .await?;
    let held = s
        .wait_status(
            &admin,
            &id,
            &["PENDING_PREFLIGHT", "PASSED", "FAILED", "CANCELLED"],
            T,
        )
        .await?;
    assert_eq!(held["status"], "PENDING_PREFLIGHT", "{held:#}");
    // The retry at 22:15 fails again; the window ends at 22:20.
    s.set_clock(at("2026-03-02T22:15:05Z")?).await?;
    admin = s.admin().await?;
    wait_for("the retry", T, || async {
        let d = s.session(&admin, &id).await?;
        let tries = logs(&d)
            .iter()
            .filter(|l| l.contains("Preflight check failed"))
            .count();
        Ok((tries >= 2).then_some(()))
    })
    .await?;
    s.set_clock(at("2026-03-02T22:20:05Z")?).await?;
    admin = s.admin().await?;
    let done = s
        .wait_status(&admin, &id, &["CANCELLED", "PASSED", "FAILED"], T)
        .await?;
    assert_eq!(done["status"], "CANCELLED", "{done:#}");
    assert_eq!(
        done["statusReason"],
        "preflight check still failing when the window ended: Windows Update is running"
    );
    assert!(
        !dir.path().join("tool.version").exists(),
        "nothing was installed"
    );
    Ok(())
}
