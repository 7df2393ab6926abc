//! Work that must happen once, with three replicas on one database and one NATS: a schedule
//! occurrence starts one session per computer, a mail reaches the SMTP server once and a
//! webhook delivery its receiver once, however many replicas run the scheduler and the
//! outboxes; a replica killed while it holds a mail leaves it to another once its lease ran
//! out.

use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use upkeep_core::mail::{MailStatus, OutboxMail};
use upkeep_core::webhook::Delivery;
use upkeep_tests::hook::HookReceiver;
use upkeep_tests::smtp::SmtpSink;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test instant")
}

/// Three replicas of one cluster, each on a test clock starting at `now`; `tweak` adjusts
/// every replica's configuration.
async fn three_replicas(
    now: DateTime<Utc>,
    tweak: impl Fn(&mut upkeep_server::config::ServeConfig),
) -> anyhow::Result<[TestServer; 3]> {
    let config = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        c.test_clock = Some(now);
        tweak(&mut c);
        c
    };
    let a = TestServer::start_on_cluster(config).await?;
    let b = a.start_replica(config).await?;
    let c = a.start_replica(config).await?;
    Ok([a, b, c])
}

/// Moves every replica's clock to `now`, all at once.
async fn set_clocks(replicas: &[TestServer], now: DateTime<Utc>) -> anyhow::Result<()> {
    for r in futures_util::future::join_all(replicas.iter().map(|s| s.set_clock(now))).await {
        r?;
    }
    Ok(())
}

async fn stored<R: upkeep_store::Record>(s: &TestServer) -> anyhow::Result<Vec<R>> {
    use futures_util::TryStreamExt;
    Ok(s.app().store.scan::<R>(None).try_collect().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_occurrence_fires_once_for_the_fleet() -> anyhow::Result<()> {
    let replicas = three_replicas(at("2026-06-01T09:00:00Z"), |_| {}).await?;
    let [a, b, c] = &replicas;
    let admin = a.admin().await?;
    // Three tenants, each with two computers (enrolled through different replicas) and its own
    // schedule: three occurrences for the replicas to race on.
    let mut computers: Vec<String> = Vec::new();
    let mut schedules = Vec::new();
    for (i, name) in ["North", "South", "West"].into_iter().enumerate() {
        let tenant = a.create_tenant(&admin, name).await?;
        let key = b.enrollment_key(&admin, &tenant).await?;
        for (j, s) in [a, c].into_iter().enumerate() {
            let (_, id) = s
                .enroll_raw(&key, &format!("{name}-{j}"), &format!("m-{i}-{j}"))
                .await?;
            computers.push(id);
        }
        let d = c
            .gql(
                &admin,
                "mutation($t: ID!) { createSchedule(input: {tenantId: $t, name: \"Ten\", target: {kind: ALL_COMPUTERS}, cron: \"0 10 * * *\", timeZone: \"UTC\", detectionLeadMinutes: 0, windowMinutes: 60, detectionOnly: true}) { id } }",
                json!({ "t": tenant }),
            )
            .await?;
        schedules.push(
            d["createSchedule"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    // Every replica's scheduler takes its first look (the cursors are set once).
    for s in &replicas {
        s.app().scheduler_pass().await?;
    }
    // 10:00 on every replica at once: each one's scheduler loop wakes on the move, and three
    // more passes run side by side.
    set_clocks(&replicas, at("2026-06-01T10:00:05Z")).await?;
    let passes = futures_util::future::join_all(replicas.iter().map(|s| s.app().scheduler_pass()));
    for r in passes.await {
        r?;
    }
    // Each replica's pass lock is held by a running pass: one more pass on each waits for any
    // pass of its loop, so nothing is left in flight.
    for s in &replicas {
        s.app().scheduler_pass().await?;
    }
    let admin = b.admin().await?;
    let mut sessions_per_computer: HashMap<String, usize> = HashMap::new();
    for sched in &schedules {
        let d = b
            .gql(
                &admin,
                "query($s: ID!) { maintenanceSessions(first: 100, filter: {scheduleId: $s}) { edges { node { id trigger computer { id } } } } }",
                json!({ "s": sched }),
            )
            .await?;
        let edges = d["maintenanceSessions"]["edges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(edges.len(), 2, "schedule {sched}: {d}");
        for e in edges {
            assert_eq!(e["node"]["trigger"], "SCHEDULE", "{e}");
            let computer = e["node"]["computer"]["id"].as_str().unwrap_or_default();
            *sessions_per_computer
                .entry(computer.to_string())
                .or_default() += 1;
        }
    }
    let want: HashMap<String, usize> = computers.iter().map(|c| (c.clone(), 1)).collect();
    assert_eq!(sessions_per_computer, want);
    // The store agrees: six sessions, and each schedule's cursor moved past 10:00 once.
    let all: Vec<upkeep_core::session::Session> = stored(c).await?;
    assert_eq!(
        all.len(),
        6,
        "{:?}",
        all.iter().map(|s| s.computer_id).collect::<Vec<_>>()
    );
    for s in stored::<upkeep_core::domain::Schedule>(a).await? {
        assert_eq!(
            s.next_fire.values().copied().collect::<Vec<_>>(),
            vec![at("2026-06-02T10:00:00Z")],
            "{}",
            s.name
        );
        assert!(
            s.last_run_at
                .is_some_and(|t| t >= at("2026-06-01T10:00:00Z"))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_outboxes_send_each_mail_and_webhook_delivery_once() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let hooks = HookReceiver::start(&[500, 500, 500]).await?;
    let url = sink.url();
    let replicas = three_replicas(at("2026-06-01T09:00:00Z"), |c| {
        c.smtp_url = Some(url.clone());
        // The clocks jump 30 minutes below: a lease taken before the jump (an attempt still
        // in flight on a slow machine) must outlast it, as it would outlast a real send.
        c.claim_lease_seconds = 3600;
    })
    .await?;
    let [a, b, c] = &replicas;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    a.gql(
        &admin,
        "mutation($t: ID, $u: String!) { createWebhook(input: {tenantId: $t, url: $u, events: [COMPUTER_ENROLLED]}) { webhook { id } } }",
        json!({ "t": tenant, "u": hooks.url() }),
    )
    .await?;

    // The SMTP server refuses for a while: every mail is tried, fails and waits for its retry.
    sink.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let q = "mutation($t: ID!, $to: String!) { sendTestEmail(tenantId: $t, to: $to) }";
    for (i, s) in replicas.iter().cycle().take(6).enumerate() {
        s.gql(
            &admin,
            q,
            json!({ "t": tenant, "to": format!("ops{i}@msp.example") }),
        )
        .await?;
    }
    // Three enrollments, three deliveries; the receiver answers the first three requests 500.
    let key = b.enrollment_key(&admin, &tenant).await?;
    for (i, s) in replicas.iter().enumerate() {
        s.enroll_raw(&key, &format!("pc-{i}"), &format!("machine-{i}"))
            .await?;
    }
    wait_for(
        "every mail tried once and every delivery answered 500",
        T,
        || async {
            let mails: Vec<OutboxMail> = stored(a).await?;
            let tried =
                mails.len() == 6 && mails.iter().all(|m| m.attempts >= 1 && m.lease.is_none());
            Ok((tried && hooks.all().len() >= 3).then_some(()))
        },
    )
    .await?;

    // The receivers are back. Past every retry's time, all three replicas' workers run at
    // once, besides their loops.
    sink.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    set_clocks(&replicas, at("2026-06-01T09:30:00Z")).await?;
    let mails = futures_util::future::join_all(replicas.iter().map(|s| s.app().outbox.send_due()));
    let deliveries =
        futures_util::future::join_all(replicas.iter().map(|s| s.app().webhooks.send_due()));
    let (mails, deliveries) = tokio::join!(mails, deliveries);
    for r in mails.into_iter().chain(deliveries) {
        r.map_err(anyhow::Error::msg)?;
    }
    wait_for(
        "every mail sent and every delivery delivered",
        T,
        || async {
            let mails: Vec<OutboxMail> = stored(c).await?;
            let deliveries: Vec<Delivery> = stored(c).await?;
            Ok((mails
                .iter()
                .all(|m| matches!(m.status, MailStatus::Sent { .. }))
                && deliveries.iter().all(|d| !d.is_pending()))
            .then_some((mails, deliveries)))
        },
    )
    .await
    .map(|(mails, deliveries)| {
        assert_eq!(mails.len(), 6);
        assert_eq!(deliveries.len(), 3);
    })?;

    // Each mail reached the SMTP server once (by its Message-ID) …
    let mut received: HashMap<String, usize> = HashMap::new();
    for m in sink.received() {
        let id = upkeep_tests::smtp::parse(&m.data)
            .header("Message-ID")
            .unwrap_or_default()
            .to_string();
        *received.entry(id).or_default() += 1;
    }
    let want: HashMap<String, usize> = stored::<OutboxMail>(a)
        .await?
        .into_iter()
        .map(|m| (m.message_id, 1))
        .collect();
    assert_eq!(received, want);
    // … and each delivery was answered 200 once, after its one 500.
    let all = hooks.all();
    let mut ok: HashMap<String, usize> = HashMap::new();
    for r in all.iter().filter(|r| r.answered == 200) {
        *ok.entry(r.header("Upkeep-Delivery").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(ok.len(), 3, "{all:?}");
    assert!(ok.values().all(|n| *n == 1), "{ok:?}");
    assert_eq!(all.len(), 6, "three 500s, three 200s: {all:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_held_by_a_killed_replica_is_sent_by_another_once_its_lease_ran_out()
-> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let url = sink.url();
    let lease = 3;
    let [a, b, c] = three_replicas(at("2026-06-01T09:00:00Z"), |c| {
        c.smtp_url = Some(url.clone());
        c.claim_lease_seconds = lease;
    })
    .await?;
    let mut replicas = vec![a, b, c];
    let admin = replicas[0].admin().await?;
    let tenant = replicas[0].create_tenant(&admin, "Acme").await?;
    // Whichever replica claims the mail first gets stuck talking to the SMTP server.
    sink.hold_next(1);
    replicas[1]
        .gql(
            &admin,
            "mutation($t: ID!) { sendTestEmail(tenantId: $t, to: \"ops@msp.example\") }",
            json!({ "t": tenant }),
        )
        .await?;
    let held = wait_for("a replica to claim the mail", T, || async {
        let mails: Vec<OutboxMail> = stored(&replicas[0]).await?;
        Ok(mails.into_iter().find(|m| m.lease.is_some()))
    })
    .await?;
    let lease_of = held.lease.expect("claimed");
    let holder = replicas
        .iter()
        .position(|s| s.app().replica == lease_of.holder)
        .expect("the holder is one of the replicas");
    // The configured length, not the default minute.
    let claimed_by = replicas[holder].app().clock.now();
    assert!(
        lease_of.until <= claimed_by + chrono::Duration::seconds(i64::from(lease)),
        "lease until {}, seen at {claimed_by}",
        lease_of.until
    );
    let mut killed = replicas.remove(holder);
    killed.kill().await;

    // Another replica takes the mail over once the lease ran out, and sends it once.
    let sent = wait_for("the mail to be sent by another replica", T, || async {
        let mails: Vec<OutboxMail> = stored(&replicas[0]).await?;
        Ok(mails
            .into_iter()
            .find(|m| matches!(m.status, MailStatus::Sent { .. })))
    })
    .await?;
    let MailStatus::Sent { at: sent_at } = sent.status else {
        unreachable!("matched above")
    };
    assert!(
        sent_at >= lease_of.until,
        "sent at {sent_at}, lease until {}",
        lease_of.until
    );
    assert_eq!(
        sent.attempts, 1,
        "the killed replica's attempt was never recorded"
    );
    assert!(sent.lease.is_none());
    let received = sink.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        upkeep_tests::smtp::parse(&received[0].data).header("Message-ID"),
        Some(sent.message_id.as_str())
    );
    Ok(())
}
