//! Sessions across cluster replicas (issue 19): events reach subscribers on every replica once
//! and in order, the concurrency ceiling holds for the cluster, and a session goes on when the
//! replica that drove it is gone. Real replicas on one scratch PostgreSQL database and NATS
//! prefix, real agents.

use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(90);
const DONE: &[&str] = &["PASSED", "FAILED", "CANCELLED"];

/// A software whose detection takes a moment (so that two sessions holding slots at once
/// would overlap) and whose install appends a line to `<dir>/<name>.runs`.
async fn slow_software(
    s: &TestServer,
    admin: &str,
    tenant: &str,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<()> {
    let v = dir.join(format!("{name}.version"));
    let runs = dir.join(format!("{name}.runs"));
    let sw = s
        .create_software(
            admin,
            json!({
                "name": name, "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": format!("sleep 1; test -f '{}' && cat '{}' || exit 0", v.display(), v.display())},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("echo run >> '{}'; echo 1.0 > '{}'", runs.display(), v.display())}}],
            }),
        )
        .await?;
    s.create_deployment(admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}))
        .await?;
    Ok(())
}

/// Reads `sub` until `session`'s event `last` arrived; returns that session's sequences in the
/// order they came (other sessions' events are skipped).
async fn sequences_until(
    sub: &mut Subscription,
    session: &str,
    last: i64,
) -> anyhow::Result<Vec<i64>> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let d = sub.next_data(T).await?;
        let e = &d["maintenanceSessionUpdates"];
        if e["sessionId"] == session {
            seen.push(e["sequence"].as_i64().unwrap_or(-1));
        }
        anyhow::ensure!(
            seen.len() <= last as usize,
            "more events than stored: {seen:?}"
        );
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_replica_c_sees_every_event_of_a_session_driven_by_a_once_in_order()
-> anyhow::Result<()> {
    let a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let c = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let work = tempfile::tempdir()?;
    slow_software(&a, &admin, &tenant, work.path(), "tool").await?;
    let _agent = TestAgent::start(&a.url, &key, "pc-a").await?;
    let computer = a.computer_id(&admin, "pc-a").await?;
    a.wait_online(&admin, &computer).await?;

    let q = "subscription($t: ID) { maintenanceSessionUpdates(tenantId: $t) { sessionId sequence status } }";
    let mut on_c = Subscription::start(
        &c.url,
        "graphql-transport-ws",
        &admin,
        q,
        json!({"t": tenant}),
    )
    .await?;
    let mut on_b = Subscription::start(
        &b.url,
        "graphql-transport-ws",
        &admin,
        q,
        json!({"t": tenant}),
    )
    .await?;
    let id = a.start_session(&admin, &computer, json!({})).await?;
    let qs = "subscription($s: ID, $n: Int) { maintenanceSessionUpdates(sessionId: $s, afterSequence: $n) { sessionId sequence status } }";
    let mut replayed_on_c = Subscription::start(
        &c.url,
        "graphql-transport-ws",
        &admin,
        qs,
        json!({"s": id, "n": 0}),
    )
    .await?;
    let done = a.wait_status(&admin, &id, DONE, T).await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let last = done["lastSequence"].as_i64().unwrap_or(0);
    assert!(last >= 5, "{done:#}");
    let all: Vec<i64> = (1..=last).collect();
    // A tenant subscriber is live from when its replica registered it (the subscribe message
    // is not acknowledged, so that may be after the first event): from there on, every event
    // once, in order, to the last.
    for (name, sub) in [("C", &mut on_c), ("B", &mut on_b)] {
        let got = sequences_until(sub, &id, last).await?;
        let from = got.first().copied().unwrap_or(0);
        assert!(
            from <= 2,
            "tenant subscriber on {name} came in late: {got:?}"
        );
        assert_eq!(
            got,
            (from..=last).collect::<Vec<_>>(),
            "tenant subscriber on {name}"
        );
    }
    assert_eq!(
        sequences_until(&mut replayed_on_c, &id, last).await?,
        all,
        "session subscriber on C"
    );
    // Every replica's view of the session is the stored one.
    for s in [&b, &c] {
        assert_eq!(s.session(&admin, &id).await?["lastSequence"], last);
    }
    Ok(())
}

/// Ceiling 1 on every replica, two computers whose agents poll two replicas, a session started
/// on each at once: one runs, the other queues until the first is done. "Running" is from the
/// first DETECTING event to the last event, as the events say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_ceiling_holds_across_replicas() -> anyhow::Result<()> {
    let one = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        c.max_concurrent_sessions = 1;
        c
    };
    let a = TestServer::start_on_cluster(one).await?;
    let b = a.start_replica(one).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let work = tempfile::tempdir()?;
    slow_software(&a, &admin, &tenant, work.path(), "tool").await?;
    let mut agents = Vec::new();
    let mut computers = Vec::new();
    for (s, host) in [(&a, "pc-a"), (&b, "pc-b")] {
        let key = s.enrollment_key(&admin, &tenant).await?;
        agents.push(TestAgent::start(&s.url, &key, host).await?);
        let c = s.computer_id(&admin, host).await?;
        s.wait_online(&admin, &c).await?;
        computers.push(c);
    }
    let q = "subscription($t: ID) { maintenanceSessionUpdates(tenantId: $t) { sessionId sequence status at } }";
    let mut sub = Subscription::start(
        &a.url,
        "graphql-transport-ws",
        &admin,
        q,
        json!({"t": tenant}),
    )
    .await?;
    let (s1, s2) = tokio::join!(
        a.start_session(&admin, &computers[0], json!({})),
        b.start_session(&admin, &computers[1], json!({}))
    );
    let ids = [s1?, s2?];
    let mut lasts = Vec::new();
    for id in &ids {
        let done = a.wait_status(&admin, id, DONE, T).await?;
        assert_eq!(done["status"], "PASSED", "{done:#}");
        lasts.push(done["lastSequence"].as_i64().unwrap_or(0));
    }
    // Every event of both, then each one's running interval.
    let mut events: Vec<Value> = Vec::new();
    let want = (lasts[0] + lasts[1]) as usize;
    while events.len() < want {
        let d = sub.next_data(T).await?;
        events.push(d["maintenanceSessionUpdates"].clone());
    }
    let interval = |id: &str| {
        let mine: Vec<&Value> = events.iter().filter(|e| e["sessionId"] == id).collect();
        let start = mine
            .iter()
            .find(|e| e["status"] == "DETECTING")
            .map(|e| e["at"].as_str().unwrap_or("").to_string());
        let end = mine
            .last()
            .map(|e| e["at"].as_str().unwrap_or("").to_string());
        (
            start.unwrap_or_default(),
            end.unwrap_or_default(),
            mine.len(),
        )
    };
    let (x, y) = (interval(&ids[0]), interval(&ids[1]));
    assert_eq!(x.2 as i64, lasts[0]);
    assert_eq!(y.2 as i64, lasts[1]);
    assert!(!x.0.is_empty() && !y.0.is_empty(), "both ran: {events:#?}");
    // RFC 3339 UTC with milliseconds: text order is time order.
    let (first, second) = if x.0 <= y.0 { (&x, &y) } else { (&y, &x) };
    assert!(
        second.0 >= first.1,
        "the second started running ({}) before the first ended ({}): {events:#?}",
        second.0,
        first.1
    );
    assert!(
        events
            .iter()
            .any(|e| e["status"] == "PENDING"
                && (e["sessionId"] == ids[0] || e["sessionId"] == ids[1])),
        "one queued"
    );
    Ok(())
}

/// The session is started through replica A, whose agent gateway does not see the computer;
/// A is stopped; replica B, which the agent polls, carries the session to its end. Each step
/// runs once: the install ran once and the events are 1..=last, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_when_the_replica_that_started_it_is_gone() -> anyhow::Result<()> {
    let mut a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let work = tempfile::tempdir()?;
    slow_software(&a, &admin, &tenant, work.path(), "tool").await?;
    let key = b.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&b.url, &key, "pc-b").await?;
    let computer = b.computer_id(&admin, "pc-b").await?;
    b.wait_online(&admin, &computer).await?;
    let qs = "subscription($s: ID, $n: Int) { maintenanceSessionUpdates(sessionId: $s, afterSequence: $n) { sessionId sequence status } }";
    let id = a.start_session(&admin, &computer, json!({})).await?;
    let mut sub = Subscription::start(
        &b.url,
        "graphql-transport-ws",
        &admin,
        qs,
        json!({"s": id, "n": 0}),
    )
    .await?;
    a.stop().await;
    let done = b.wait_status(&admin, &id, DONE, T).await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    let last = done["lastSequence"].as_i64().unwrap_or(0);
    assert_eq!(
        sequences_until(&mut sub, &id, last).await?,
        (1..=last).collect::<Vec<_>>()
    );
    let runs = std::fs::read_to_string(work.path().join("tool.runs"))?;
    assert_eq!(runs.lines().count(), 1, "installed once: {runs}");
    let logs: Vec<i64> = done["logs"]
        .as_array()
        .map(|l| l.iter().filter_map(|e| e["sequence"].as_i64()).collect())
        .unwrap_or_default();
    let mut sorted = logs.clone();
    sorted.dedup();
    assert_eq!(logs, sorted, "no sequence stored twice");
    Ok(())
}
