//! In the field: offline computers and their windows, the end user's postpone and update-now
//! links all the way to the limit, technicians running a waiting session now, and onboarding
//! on demand.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use upkeep_core::mail::OutboxMail;
use upkeep_tests::smtp::{SmtpSink, parse};
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A tenant with one enrolled computer (agent state kept in `state`, so the agent can be
/// stopped and started again) and a file-backed software deployed to every computer.
struct Field {
    s: TestServer,
    admin: String,
    tenant: String,
    computer: String,
    state: tempfile::TempDir,
    dir: tempfile::TempDir,
    agent: Option<TestAgent>,
}

async fn field(clock: DateTime<Utc>, smtp: Option<&SmtpSink>) -> anyhow::Result<Field> {
    let smtp_url = smtp.map(|m| m.url());
    let s = TestServer::start_with(move |c| {
        c.test_clock = Some(clock);
        c.smtp_url = smtp_url;
    })
    .await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Field").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let state = tempfile::tempdir()?;
    let agent = TestAgent::start_in(&s.url, Some(&key), state.path(), "laptop")?;
    let computer = s.computer_id(&admin, "laptop").await?;
    s.wait_online(&admin, &computer).await?;
    let p = s
        .gql(
            &admin,
            "mutation($t: ID!) { createPerson(input: {tenantId: $t, name: \"Eve\", email: \"eve@field.example\"}) { id } }",
            json!({"t": tenant}),
        )
        .await?;
    s.gql(
        &admin,
        "mutation($c: ID!, $p: ID!) { updateComputer(id: $c, input: {primaryPersonId: $p}) { id } }",
        json!({"c": computer, "p": p["createPerson"]["id"]}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(&s, &admin, Some(&tenant), "tool", dir.path(), &["2.0"]).await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    Ok(Field {
        s,
        admin,
        tenant,
        computer,
        state,
        dir,
        agent: Some(agent),
    })
}

impl Field {
    /// Stops the agent and waits until the server sees the computer offline.
    async fn go_offline(&mut self) -> anyhow::Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.stop().await;
        }
        wait_for("computer offline", T, || async {
            let d = self
                .s
                .gql(
                    &self.admin,
                    "query($c: ID!) { computer(id: $c) { online } }",
                    json!({"c": self.computer}),
                )
                .await?;
            Ok((d["computer"]["online"] == false).then_some(()))
        })
        .await
    }

    fn come_back(&mut self) -> anyhow::Result<()> {
        self.agent = Some(TestAgent::start_in(
            &self.s.url,
            None,
            self.state.path(),
            "laptop",
        )?);
        Ok(())
    }

    /// Moves the clock and logs in again (a jump of hours outlives the old token).
    async fn clock(&mut self, now: DateTime<Utc>) -> anyhow::Result<()> {
        self.s.set_clock(now).await?;
        self.admin = self.s.admin().await?;
        Ok(())
    }

    async fn schedule(&self, input: Value) -> anyhow::Result<()> {
        let mut i = json!({"tenantId": self.tenant, "name": "Nightly", "target": {"kind": "ALL_COMPUTERS"}, "timeZone": "UTC"});
        for (k, v) in input.as_object().unwrap() {
            i[k] = v.clone();
        }
        self.s
            .gql(
                &self.admin,
                "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { id } }",
                json!({"i": i}),
            )
            .await?;
        Ok(())
    }

    /// The one session of the computer, once the schedule made it.
    async fn only_session(&self) -> anyhow::Result<String> {
        wait_for("the schedule's session", T, || async {
            let d = self
                .s
                .gql(
                    &self.admin,
                    "{ maintenanceSessions { edges { node { id } } } }",
                    json!({}),
                )
                .await?;
            Ok(d["maintenanceSessions"]["edges"][0]["node"]["id"]
                .as_str()
                .map(String::from))
        })
        .await
    }

    fn installed(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("tool.version"))
            .ok()
            .map(|v| v.trim().to_string())
    }
}

fn logs(s: &Value) -> Vec<String> {
    s["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Mails of the outbox (sent or not) that belong to `session`.
async fn outbox_of(s: &TestServer, session: &str) -> Vec<OutboxMail> {
    use futures_util::StreamExt;
    s.app()
        .store
        .scan::<OutboxMail>(None)
        .filter_map(|m| std::future::ready(m.ok()))
        .filter(|m| std::future::ready(m.session_id.is_some_and(|id| id.to_string() == session)))
        .collect()
        .await
}

/// APPLY_ON_CONNECT: offline when the schedule detects, back only after the window — the
/// session detects and runs then, instead of ending "the maintenance window ended".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_on_connect_runs_when_the_laptop_comes_back_after_the_window() -> anyhow::Result<()> {
    let mut f = field(at("2026-06-01T10:00:00Z"), None).await?;
    f.schedule(json!({"cron": "0 12 * * *", "detectionLeadMinutes": 60, "windowMinutes": 30}))
        .await?;
    f.go_offline().await?;
    f.clock(at("2026-06-01T11:00:05Z")).await?;
    let id = f.only_session().await?;
    let p = f.s.wait_status(&f.admin, &id, &["PENDING"], T).await?;
    assert_eq!(p["statusReason"], "waiting for the computer to come online");
    // The window passes while the laptop is away.
    f.clock(at("2026-06-01T13:30:00Z")).await?;
    f.s.app().tick(id.parse()?).await;
    let p = f.s.session(&f.admin, &id).await?;
    assert_eq!(p["status"], "PENDING", "{p:#}");
    f.come_back()?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(f.installed().as_deref(), Some("2.0"));
    assert!(
        logs(&done)
            .iter()
            .any(|l| l.contains("offline during the maintenance window")),
        "{done:#}"
    );
    Ok(())
}

/// SKIP: the grace counts from the window's start, not from detection — a laptop offline at
/// the 14:00 detection still gets its 22:00 run when it is back by 22:30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_grace_counts_from_the_start_of_execution() -> anyhow::Result<()> {
    let mut f = field(at("2026-06-01T13:00:00Z"), None).await?;
    f.schedule(
        json!({"cron": "0 22 * * *", "detectionLeadMinutes": 480, "windowMinutes": 120,
        "options": {"offlineBehavior": "SKIP", "offlineGraceMinutes": 30}}),
    )
    .await?;
    f.go_offline().await?;
    f.clock(at("2026-06-01T14:00:05Z")).await?;
    let id = f.only_session().await?;
    let p =
        f.s.wait_status(&f.admin, &id, &["PENDING", "CANCELLED"], T)
            .await?;
    assert_eq!(
        p["statusReason"], "waiting for the computer to come online (until 00:30 CEST)",
        "{p:#}"
    );
    // Half an hour after detection: still waiting (the session's own timer is driven here).
    f.clock(at("2026-06-01T14:31:00Z")).await?;
    f.s.app().tick(id.parse()?).await;
    let p = f.s.session(&f.admin, &id).await?;
    assert_eq!(p["status"], "PENDING", "{p:#}");
    // Back ten minutes into the window: it detects and runs.
    f.clock(at("2026-06-01T22:10:00Z")).await?;
    f.come_back()?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(f.installed().as_deref(), Some("2.0"));
    Ok(())
}

/// A detection that finishes only after the window ends: the session is CANCELLED and no
/// before-mail announces the time already past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_before_mail_for_a_session_cancelled_by_its_window() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    let mut f = field(at("2026-06-01T10:00:00Z"), Some(&smtp)).await?;
    // A second software whose detection waits for a go file: the test decides when it ends.
    let go = f.dir.path().join("go");
    slow_software(&f, &go).await?;
    f.schedule(
        json!({"cron": "0 12 * * *", "detectionLeadMinutes": 60, "windowMinutes": 30,
        "options": {"notifyBefore": true}}),
    )
    .await?;
    f.clock(at("2026-06-01T11:00:05Z")).await?;
    let id = f.only_session().await?;
    f.s.wait_status(&f.admin, &id, &["DETECTING"], T).await?;
    f.clock(at("2026-06-01T12:45:00Z")).await?;
    std::fs::write(&go, "")?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
            .await?;
    assert_eq!(done["status"], "CANCELLED", "{done:#}");
    assert!(
        done["statusReason"].as_str().unwrap().contains("window"),
        "{done:#}"
    );
    // The outbox is written in the same transaction as the cancelled session.
    assert!(
        outbox_of(&f.s, &id).await.is_empty(),
        "no before-mail was queued"
    );
    assert!(
        !logs(&done).iter().any(|l| l.contains("mail queued")),
        "{done:#}"
    );
    assert!(smtp.received().is_empty());
    Ok(())
}

async fn slow_software(f: &Field, go: &Path) -> anyhow::Result<()> {
    let g = go.display();
    let d = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {
                "name": "slow",
                "tenantId": f.tenant,
                "detectionScript": {"language": "SHELL", "body": format!("while [ ! -f '{g}' ]; do sleep 0.1; done; exit 0")},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": "true"}}],
            }}),
        )
        .await?;
    let sw = d["createSoftware"]["id"].as_str().unwrap();
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    Ok(())
}

async fn wait_mails(smtp: &SmtpSink, n: usize) -> anyhow::Result<Vec<smtp::ParsedMail>> {
    wait_for(&format!("{n} mail(s)"), T, || async {
        let got = smtp.received();
        Ok((got.len() >= n).then(|| got.iter().map(|m| parse(&m.data)).collect()))
    })
    .await
}

/// The postpone-page links of a mail's text part, in order (postpone first, then update now).
fn links(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.starts_with("http://") && w.contains("/postpone/"))
        .map(String::from)
        .collect()
}

async fn post(s: &TestServer, url: &str, action: &str) -> anyhow::Result<(u16, String)> {
    let r = s.http.post(url).form(&[("action", action)]).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

async fn get(s: &TestServer, url: &str) -> anyhow::Result<(u16, String)> {
    let r = s.http.get(url).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// `maxPostpones: 2` is reachable: each postpone sends a fresh before-mail with fresh links for
/// the new time (the earlier mail's links stop working); after the second, the mail offers only
/// "update now", whose own link runs the maintenance. Mail and page say how long a postpone is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_postpones_mail_by_mail_up_to_the_limit_then_updates_now() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    let f = field(at("2026-06-01T08:00:00Z"), Some(&smtp)).await?;
    let first = at("2026-06-01T11:00:00Z");
    let id = f
        .s
        .start_session(&f.admin, &f.computer, json!({"executeAt": first, "options": {"notifyBefore": true, "maxPostpones": 2, "postponeHours": 4}}))
        .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;

    // Mail 1: postpone by 4 hours, 2 more times; a postpone link and an update-now link.
    let m1 = wait_mails(&smtp, 1).await?.remove(0);
    assert!(
        m1.text
            .contains("postpone the maintenance by 4 hours, 2 more times"),
        "{}",
        m1.text
    );
    let l1 = links(&m1.text);
    assert_eq!(l1.len(), 2, "postpone and update-now links: {}", m1.text);
    assert_ne!(l1[0], l1[1], "update now has a token of its own");
    let (code, page) = get(&f.s, &l1[0]).await?;
    assert_eq!(code, 200);
    assert!(page.contains("by 4 hours"), "{page}");
    assert_eq!(post(&f.s, &l1[0], "postpone").await?.0, 200);
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(
        (s["status"].as_str(), s["postponeCount"].as_i64()),
        (Some("POSTPONED"), Some(1))
    );
    assert_eq!(s["executeAt"], "2026-06-01T15:00:00.000Z");

    // Mail 2: the new time, fresh links; mail 1's links are spent or replaced.
    let m2 = wait_mails(&smtp, 2).await?.remove(1);
    assert!(m2.text.contains("1 more time"), "{}", m2.text);
    let l2 = links(&m2.text);
    assert_eq!(l2.len(), 2, "{}", m2.text);
    assert_eq!(post(&f.s, &l1[0], "postpone").await?.0, 410);
    let (code, page) = get(&f.s, &l1[1]).await?;
    assert_eq!(code, 410, "the earlier mail's update-now link was replaced");
    assert!(page.contains("newest e-mail"), "{page}");
    assert_eq!(post(&f.s, &l2[0], "postpone").await?.0, 200);
    let s = f.s.session(&f.admin, &id).await?;
    assert_eq!(s["postponeCount"], 2);
    assert_eq!(s["executeAt"], "2026-06-01T19:00:00.000Z");

    // Mail 3: the limit is reached — no postpone, only update now.
    let m3 = wait_mails(&smtp, 3).await?.remove(2);
    assert!(!m3.text.contains("postpone the maintenance"), "{}", m3.text);
    let l3 = links(&m3.text);
    assert_eq!(l3.len(), 1, "{}", m3.text);
    let (code, page) = get(&f.s, &l3[0]).await?;
    assert_eq!(code, 200);
    assert!(
        page.contains("value=\"update-now\"") && !page.contains("value=\"postpone\""),
        "{page}"
    );
    assert_eq!(post(&f.s, &l3[0], "postpone").await?.0, 400);
    assert_eq!(
        f.s.gql_err(
            Some(&f.admin),
            "mutation($id: ID!) { postponeMaintenanceSession(id: $id) { id } }",
            json!({"id": id})
        )
        .await?,
        "BAD_USER_INPUT",
        "over the limit"
    );
    assert_eq!(post(&f.s, &l3[0], "update-now").await?.0, 200);
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(f.installed().as_deref(), Some("2.0"));
    Ok(())
}

/// `allowPostpone: false, allowUpdateNow: true`: the mail still carries an update-now link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_now_without_postpone_has_its_own_link() -> anyhow::Result<()> {
    let smtp = SmtpSink::start().await?;
    let f = field(at("2026-06-01T08:00:00Z"), Some(&smtp)).await?;
    let id = f
        .s
        .start_session(&f.admin, &f.computer, json!({"executeAt": at("2026-06-01T11:00:00Z"), "options": {"notifyBefore": true, "allowPostpone": false, "allowUpdateNow": true}}))
        .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    let m = wait_mails(&smtp, 1).await?.remove(0);
    assert!(!m.text.contains("postpone the maintenance"), "{}", m.text);
    let l = links(&m.text);
    assert_eq!(l.len(), 1, "an update-now link: {}", m.text);
    assert_eq!(post(&f.s, &l[0], "update-now").await?.0, 200);
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(get(&f.s, &l[0]).await?.0, 410, "used once");
    Ok(())
}

/// Technicians run a SCHEDULED or POSTPONED session now; the user's postpones stay as they
/// were, and `allowUpdateNow: false` (an end-user option) does not stop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_run_a_waiting_session_now() -> anyhow::Result<()> {
    let f = field(at("2026-06-01T08:00:00Z"), None).await?;
    let run_now =
        "mutation($id: ID!) { runMaintenanceSessionNow(id: $id) { id status postponeCount } }";
    let opts = json!({"executeAt": at("2026-06-01T11:00:00Z"), "options": {"allowUpdateNow": false, "maxPostpones": 1}});
    let id =
        f.s.start_session(&f.admin, &f.computer, opts.clone())
            .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    f.s.gql(&f.admin, run_now, json!({"id": id})).await?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(done["postponeCount"], 0);
    assert!(
        logs(&done)
            .iter()
            .any(|l| l.contains("started the maintenance now")),
        "{done:#}"
    );
    // A finished session: CONFLICT.
    assert_eq!(
        f.s.gql_err(Some(&f.admin), run_now, json!({"id": id}))
            .await?,
        "CONFLICT"
    );
    // A postponed one runs too, and keeps its postpone count.
    std::fs::remove_file(f.dir.path().join("tool.version"))?;
    let id = f.s.start_session(&f.admin, &f.computer, opts).await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { postponeMaintenanceSession(id: $id) { id } }",
        json!({"id": id}),
    )
    .await?;
    f.s.wait_status(&f.admin, &id, &["POSTPONED"], T).await?;
    f.s.gql(&f.admin, run_now, json!({"id": id})).await?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert_eq!(done["postponeCount"], 1);
    // Unknown ids and bad input get clear errors.
    assert_eq!(
        f.s.gql_err(Some(&f.admin), run_now, json!({"id": "nope"}))
            .await?,
        "BAD_USER_INPUT"
    );
    Ok(())
}

async fn onboarding_status(f: &Field) -> anyhow::Result<String> {
    let d =
        f.s.gql(
            &f.admin,
            "query($c: ID!) { computer(id: $c) { onboardingStatus } }",
            json!({"c": f.computer}),
        )
        .await?;
    Ok(d["computer"]["onboardingStatus"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Onboarding on demand (a tenant without auto-onboarding, a re-imaged computer): the
/// ONBOARDING deployments run, `onboardingStatus` follows, and a rerun stays an onboarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_runs_on_demand_and_again() -> anyhow::Result<()> {
    let mut f = field(at("2026-06-01T08:00:00Z"), None).await?;
    let base = create_file_software(
        &f.s,
        &f.admin,
        Some(&f.tenant),
        "base",
        f.dir.path(),
        &["1.0"],
    )
    .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": base, "desiredState": "INSTALLED_LATEST", "enforcement": "ONBOARDING"})).await?;
    assert_eq!(onboarding_status(&f).await?, "PENDING");
    let start =
        "mutation($c: ID!) { startOnboardingSession(computerId: $c) { id trigger status } }";

    // Offline: the onboarding session waits, and the computer shows it in progress.
    f.go_offline().await?;
    let d = f.s.gql(&f.admin, start, json!({"c": f.computer})).await?;
    assert_eq!(d["startOnboardingSession"]["trigger"], "ONBOARDING");
    let id = d["startOnboardingSession"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.s.wait_status(&f.admin, &id, &["PENDING"], T).await?;
    assert_eq!(onboarding_status(&f).await?, "IN_PROGRESS");
    assert_eq!(
        f.s.gql_err(Some(&f.admin), start, json!({"c": f.computer}))
            .await?,
        "CONFLICT",
        "one unfinished session per computer"
    );
    f.come_back()?;
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let mut names: Vec<&str> = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["base", "tool"],
        "onboarding and required deployments"
    );
    assert!(f.dir.path().join("base.version").exists());
    assert_eq!(onboarding_status(&f).await?, "COMPLETED");

    // Re-imaged: the rerun is an onboarding session again and installs `base` again.
    std::fs::remove_file(f.dir.path().join("base.version"))?;
    let d =
        f.s.gql(
            &f.admin,
            "mutation($id: ID!) { rerunMaintenanceSession(id: $id) { id trigger } }",
            json!({"id": id}),
        )
        .await?;
    assert_eq!(d["rerunMaintenanceSession"]["trigger"], "ONBOARDING");
    let rerun = d["rerunMaintenanceSession"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done =
        f.s.wait_status(&f.admin, &rerun, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    assert!(
        f.dir.path().join("base.version").exists(),
        "the onboarding deployment ran again"
    );

    // An onboarding deployment that fails: FAILED.
    let broken = f
        .s
        .gql(
            &f.admin,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "broken", "tenantId": f.tenant,
                "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": "exit 3"}}]}}),
        )
        .await?;
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": broken["createSoftware"]["id"], "desiredState": "INSTALLED_LATEST", "enforcement": "ONBOARDING"})).await?;
    let d = f.s.gql(&f.admin, start, json!({"c": f.computer})).await?;
    let id = d["startOnboardingSession"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    assert_eq!(onboarding_status(&f).await?, "FAILED");
    assert_eq!(
        f.s.gql_err(Some(&f.admin), start, json!({"c": "nope"}))
            .await?,
        "BAD_USER_INPUT"
    );
    Ok(())
}

/// A before-mail still waiting in the outbox (the SMTP server is down) when a technician
/// cancels the session is withdrawn, not sent late about maintenance that will not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_before_mail_of_a_cancelled_session_is_withdrawn() -> anyhow::Result<()> {
    use upkeep_core::mail::MailStatus;
    let smtp = SmtpSink::start().await?;
    smtp.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut f = field(at("2026-06-01T08:00:00Z"), Some(&smtp)).await?;
    let id =
        f.s.start_session(
            &f.admin,
            &f.computer,
            json!({"executeAt": at("2026-06-01T11:00:00Z"), "options": {"notifyBefore": true}}),
        )
        .await?;
    f.s.wait_status(&f.admin, &id, &["SCHEDULED"], T).await?;
    // The first attempt fails; the mail waits for its retry.
    wait_for("a failed first attempt", T, || async {
        Ok(outbox_of(&f.s, &id)
            .await
            .first()
            .is_some_and(|m| m.attempts >= 1)
            .then_some(()))
    })
    .await?;
    f.s.gql(
        &f.admin,
        "mutation($id: ID!) { cancelMaintenanceSession(id: $id) { id } }",
        json!({"id": id}),
    )
    .await?;
    smtp.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    f.clock(at("2026-06-01T08:05:00Z")).await?;
    let m = wait_for("the retry", T, || async {
        Ok(outbox_of(&f.s, &id)
            .await
            .into_iter()
            .find(|m| !m.is_pending()))
    })
    .await?;
    assert!(
        matches!(&m.status, MailStatus::Withdrawn { reason, .. } if reason.contains("cancelled")),
        "{:?}",
        m.status
    );
    assert!(
        smtp.received().is_empty(),
        "nothing reached the SMTP server"
    );
    Ok(())
}

/// APPLY_ON_CONNECT waits only until a newer occurrence of its schedule supersedes it; the
/// newer one then runs when the laptop is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_occurrence_supersedes_the_waiting_session() -> anyhow::Result<()> {
    let mut f = field(at("2026-06-01T10:00:00Z"), None).await?;
    f.schedule(json!({"cron": "0 12 * * *", "detectionLeadMinutes": 60, "windowMinutes": 30}))
        .await?;
    f.go_offline().await?;
    f.clock(at("2026-06-01T11:00:05Z")).await?;
    let first = f.only_session().await?;
    f.s.wait_status(&f.admin, &first, &["PENDING"], T).await?;
    f.clock(at("2026-06-02T11:00:05Z")).await?;
    let old = f.s.wait_status(&f.admin, &first, &["CANCELLED"], T).await?;
    assert!(
        old["statusReason"].as_str().unwrap().contains("superseded"),
        "{old:#}"
    );
    let second = wait_for("the next occurrence's session", T, || async {
        let d =
            f.s.gql(
                &f.admin,
                "{ maintenanceSessions { edges { node { id } } } }",
                json!({}),
            )
            .await?;
        Ok(d["maintenanceSessions"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["node"]["id"].as_str())
            .find(|i| *i != first)
            .map(String::from))
    })
    .await?;
    f.clock(at("2026-06-02T14:00:00Z")).await?;
    f.come_back()?;
    let done =
        f.s.wait_status(&f.admin, &second, &["PASSED", "FAILED", "CANCELLED"], T)
            .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    Ok(())
}
