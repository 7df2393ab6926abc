//! Agents across cluster replicas (issue 19): an agent enrolled through one replica polls
//! another; a job dispatched on one wakes the held poll on the other and is handed out once; a
//! result posted to two replicas is applied once; presence is right on every replica, also
//! when the replica the agent polled is gone; a token revoked on one is refused by the others;
//! random tokens cannot hammer the database.

use serde_json::{Value, json};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

async fn poll(s: &TestServer, token: &str, wait: u32) -> anyhow::Result<(u16, Value)> {
    let r = s
        .http
        .post(format!("{}/agent/v1/poll", s.url))
        .bearer_auth(token)
        .json(&json!({"protocolVersion": 1, "waitSeconds": wait}))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// The ids of the jobs a poll answer hands out.
fn job_ids(body: &Value) -> Vec<&str> {
    body["jobs"]
        .as_array()
        .map(|v| v.iter().filter_map(|j| j["id"].as_str()).collect())
        .unwrap_or_default()
}

async fn online(s: &TestServer, admin: &str, id: &str) -> anyhow::Result<bool> {
    let d = s
        .gql(
            admin,
            "query($id: ID!) { computer(id: $id) { online } }",
            json!({"id": id}),
        )
        .await?;
    Ok(d["computer"]["online"].as_bool().unwrap_or(false))
}

async fn wait_offline(s: &TestServer, admin: &str, id: &str) -> anyhow::Result<()> {
    wait_for("computer offline", Duration::from_secs(20), || async {
        Ok((!online(s, admin, id).await?).then_some(()))
    })
    .await
}

/// A real agent enrolled through A polls B: A sees it online, a session driven on A reaches it
/// through the poll it holds on B, and every job is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolled_on_one_replica_runs_a_session_driven_on_another() -> anyhow::Result<()> {
    let a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let work = tempfile::tempdir()?;
    let sw = create_file_software(&a, &admin, Some(&tenant), "tool", work.path(), &["1.0"]).await?;
    a.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;

    let state = tempfile::tempdir()?;
    let mut enrolled = TestAgent::start_in(&a.url, Some(&key), state.path(), "cl-1")?;
    let computer = a.computer_id(&admin, "cl-1").await?;
    a.wait_online(&admin, &computer).await?;
    enrolled.stop().await;
    wait_offline(&a, &admin, &computer).await?;

    // The same agent (its token from A, which B never loaded) now polls B only, holding each
    // poll for a minute.
    let _agent = TestAgent::start_in_with(&b.url, None, state.path(), "cl-1", |c| {
        c.poll_wait_seconds = 60;
    })?;
    // A learns from B that the computer is online.
    a.wait_online(&admin, &computer).await?;

    // A session started on A: its first job is queued on A and must reach the poll held on B
    // at once. Were it not woken, the agent would get it only when that one-minute poll ends,
    // and each of the session's later jobs would wait as long again.
    let id = a.start_session(&admin, &computer, json!({})).await?;
    let s = a
        .wait_status(&admin, &id, &["PASSED", "FAILED"], Duration::from_secs(40))
        .await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("tool.version"))?.trim(),
        "1.0"
    );
    // Every job of the session was handed out once and answered.
    let jobs: Vec<upkeep_core::session::JobRecord> = {
        use futures_util::TryStreamExt;
        a.app()
            .store
            .scan::<upkeep_core::session::JobRecord>(None)
            .try_collect()
            .await?
    };
    assert!(jobs.len() >= 2, "{jobs:?}");
    for j in &jobs {
        assert_eq!(j.attempts, 1, "{j:?}");
        assert!(
            matches!(j.state, upkeep_core::session::JobState::Done { .. }),
            "{j:?}"
        );
    }
    // B, where the agent polls, is who saw it; A never did.
    let polls_a = a.metric("upkeep_agent_polls_total").await?;
    assert!(b.metric("upkeep_agent_polls_total").await? > 0.0);
    assert!(polls_a > 0.0, "the enrolling agent polled A first");
    Ok(())
}

/// Raw protocol against two replicas: a token from A works on B; a job is handed out once to
/// polls held on both; the same result posted to both is applied once; a revocation on A is
/// refused by B; random tokens get 401, and 429 past the look-up budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_handed_out_once_and_its_result_applied_once_across_replicas() -> anyhow::Result<()>
{
    let a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let work = tempfile::tempdir()?;
    let sw = create_file_software(&a, &admin, Some(&tenant), "tool", work.path(), &["1.0"]).await?;
    a.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let (token, computer) = a.enroll_raw(&key, "raw-1", "m-raw-1").await?;
    let (status, body) = poll(&b, &token, 0).await?;
    assert_eq!(status, 200, "a token enrolled through A works on B: {body}");

    // Polls held on both replicas at once; the session's probe job is queued on both.
    let held_a = tokio::spawn({
        let (s, t) = (a.http.clone(), token.clone());
        let url = a.url.clone();
        async move { raw_poll(&s, &url, &t, 20).await }
    });
    let held_b = tokio::spawn({
        let (s, t) = (b.http.clone(), token.clone());
        let url = b.url.clone();
        async move { raw_poll(&s, &url, &t, 20).await }
    });
    a.wait_online(&admin, &computer).await?;
    let id = a
        .start_session(&admin, &computer, json!({"detectionOnly": true}))
        .await?;
    let (ja, jb) = (held_a.await??, held_b.await??);
    let jobs: Vec<&Value> = ja.iter().chain(jb.iter()).collect();
    assert_eq!(jobs.len(), 1, "handed out once: A {ja:?}, B {jb:?}");
    let job = jobs[0].clone();
    assert_eq!(job["kind"], "probe", "{job}");
    let results: Vec<Value> = job["probes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| json!({"probeId": p["probeId"], "outcome": {"exitCode": 0, "stdout": "", "stderr": "", "durationMs": 1}}))
        .collect();
    let result = json!({"protocolVersion": 1, "kind": "probe", "results": results});
    let path = format!("/agent/v1/jobs/{}/result", job["id"].as_str().unwrap_or(""));
    let post = |s: &TestServer| {
        let (http, url, token, body) = (
            s.http.clone(),
            format!("{}{path}", s.url),
            token.clone(),
            result.clone(),
        );
        async move {
            let r = http.post(url).bearer_auth(token).json(&body).send().await?;
            anyhow::ensure!(r.status() == 200, "result refused: {}", r.status());
            let v: Value = r.json().await?;
            anyhow::Ok(v["accepted"].as_bool().unwrap_or(false))
        }
    };
    let (to_a, to_b) = tokio::join!(post(&a), post(&b));
    let (to_a, to_b) = (to_a?, to_b?);
    assert!(
        to_a ^ to_b,
        "exactly one replica applies the result: A {to_a}, B {to_b}"
    );
    let s = a.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    let detected = s["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e["message"].as_str().is_some_and(|m| m.contains("tool")))
                .count()
        })
        .unwrap_or(0);
    assert!(detected >= 1, "{s:#}");
    // The same result once more, to either: answered, not applied.
    assert!(!post(&b).await?);

    // Revoked on A: refused by B (which learnt the token from the store).
    let r = a
        .gql(
            &admin,
            "mutation($c: ID!) { revokeComputerAgent(id: $c) }",
            json!({"c": computer}),
        )
        .await?;
    assert_eq!(r["revokeComputerAgent"], true);
    wait_for(
        "B to refuse the revoked token",
        Duration::from_secs(20),
        || async { Ok((poll(&b, &token, 0).await?.0 == 401).then_some(())) },
    )
    .await?;

    // Random tokens: 401 each, as JSON; past the look-up budget, 429.
    let answers = futures_util::future::join_all((0..400).map(|n| {
        let (http, url) = (b.http.clone(), format!("{}/agent/v1/poll", b.url));
        async move {
            let r = http
                .post(url)
                .bearer_auth(format!("uat_random{n}x{}", upkeep_server::ids::fresh()))
                .json(&json!({"protocolVersion": 1, "waitSeconds": 0}))
                .send()
                .await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await?;
            anyhow::Ok((status, body))
        }
    }))
    .await;
    let mut counts = std::collections::BTreeMap::new();
    for a in answers {
        let (status, body) = a?;
        assert!(body["code"].is_string(), "{status} {body}");
        *counts.entry(status).or_insert(0) += 1;
    }
    assert!(counts.get(&401).is_some_and(|n| *n > 0), "{counts:?}");
    assert!(counts.get(&429).is_some_and(|n| *n > 0), "{counts:?}");
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![401, 429]);
    Ok(())
}

/// Jobs a held poll got, as JSON values.
async fn raw_poll(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    wait: u32,
) -> anyhow::Result<Vec<Value>> {
    let r = http
        .post(format!("{url}/agent/v1/poll"))
        .bearer_auth(token)
        .json(&json!({"protocolVersion": 1, "waitSeconds": wait}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "poll refused: {}", r.status());
    let v: Value = r.json().await?;
    Ok(v["jobs"].as_array().cloned().unwrap_or_default())
}

/// Presence crosses replicas: an agent polling C keeps its computer online on A after B, which
/// it polled before, is gone; once it stops polling, A says offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_replica_does_not_take_its_agents_offline() -> anyhow::Result<()> {
    let a = TestServer::start_on_cluster(test_config).await?;
    let mut b = a.start_replica(test_config).await?;
    let c = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let (token, computer) = a.enroll_raw(&key, "p-1", "m-p-1").await?;
    wait_offline(&a, &admin, &computer).await?;
    assert_eq!(poll(&b, &token, 0).await?.0, 200);
    a.wait_online(&admin, &computer).await?;
    b.stop().await;
    // The agent goes on with C, once a second.
    let polling = tokio::spawn({
        let (http, url, token) = (c.http.clone(), c.url.clone(), token.clone());
        async move {
            loop {
                let _ = raw_poll(&http, &url, &token, 0).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    // Over three times `offline_after` (3 s), A never says offline.
    for _ in 0..20 {
        assert!(
            online(&a, &admin, &computer).await?,
            "offline on A while polling C"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    polling.abort();
    wait_offline(&a, &admin, &computer).await?;
    Ok(())
}

/// A probe whose agent never answers: its lease runs out in the store, any replica ends it
/// once, and it is offered again on the other replica; after three hand-outs it is lost and
/// the session fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_is_ended_once_from_the_store() -> anyhow::Result<()> {
    let short = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        c.job_timeout_seconds = Some(2);
        c.lease_slack_seconds = 1;
        c
    };
    let a = TestServer::start_on_cluster(short).await?;
    let b = a.start_replica(short).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let work = tempfile::tempdir()?;
    let sw = create_file_software(&a, &admin, Some(&tenant), "tool", work.path(), &["1.0"]).await?;
    a.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let (token, computer) = a.enroll_raw(&key, "l-1", "m-l-1").await?;
    assert_eq!(poll(&a, &token, 0).await?.0, 200);
    let id = a
        .start_session(&admin, &computer, json!({"detectionOnly": true}))
        .await?;
    // The first hand-out through B, every later one through A: each polled, never answered.
    let mut handed: Vec<(&str, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while handed.len() < 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "three hand-outs within {T:?}: {handed:?}"
        );
        let (name, s) = if handed.is_empty() {
            ("B", &b)
        } else {
            ("A", &a)
        };
        for j in raw_poll(&s.http, &s.url, &token, 2).await? {
            handed.push((name, j["id"].as_str().unwrap_or_default().to_string()));
        }
    }
    assert_eq!(handed.len(), 3, "{handed:?}");
    assert!(handed.iter().all(|(_, j)| *j == handed[0].1), "{handed:?}");
    assert_eq!(
        handed.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec!["B", "A", "A"]
    );
    let done = a.wait_status(&admin, &id, &["FAILED", "PASSED"], T).await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let job: upkeep_core::session::JobRecord = a
        .app()
        .store
        .get(
            &handed[0]
                .1
                .parse::<upkeep_core::domain::Id>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        )
        .await?
        .expect("the job record");
    assert_eq!(job.attempts, 3, "{job:?}");
    assert!(
        matches!(job.state, upkeep_core::session::JobState::Done { .. }),
        "{job:?}"
    );
    Ok(())
}

/// A job stored for a computer without a note reaching the replica it polls (a late or lost
/// note) is queued there from the store at the agent's next poll and handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_job_no_note_told_of_is_handed_out_at_the_next_poll() -> anyhow::Result<()> {
    use upkeep_core::session::{JobRecord, JobState};
    let a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let (token, computer) = a.enroll_raw(&key, "n-1", "m-n-1").await?;
    let (status, body) = poll(&b, &token, 0).await?;
    assert_eq!(
        (status, body["jobs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    // Written straight to the store: no replica queued it or told the others.
    let job = JobRecord {
        id: upkeep_core::domain::Id::from_u128(0x5eed_0001),
        session_id: upkeep_core::domain::Id::from_u128(0x5eed_0002),
        computer_id: computer.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?,
        job: upkeep_agent_protocol::JobKind::Probe { probes: vec![] },
        lease_seconds: 60,
        created_at: chrono::Utc::now(),
        state: JobState::Queued,
        attempts: 0,
    };
    a.app()
        .store
        .write(|tx| {
            tx.put(&job)?;
            Ok::<_, upkeep_store::TxError<std::convert::Infallible>>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (status, body) = poll(&b, &token, 0).await?;
    assert_eq!(status, 200, "{body}");
    let ids = job_ids(&body);
    assert_eq!(ids, vec![job.id.to_string()], "{body}");
    // Claimed in the store by B: A, polled next, does not hand it out again.
    let (_, again) = poll(&a, &token, 0).await?;
    assert_eq!(again["jobs"].as_array().map(Vec::len), Some(0), "{again}");
    let stored: JobRecord = a.app().store.get(&job.id).await?.expect("the job record");
    assert!(
        matches!(stored.state, JobState::Leased { .. }),
        "{stored:?}"
    );
    assert_eq!(stored.attempts, 1);
    Ok(())
}

/// Two replicas applying the same job's answer at the same instant (both read the session
/// before either commits): the step's transaction finds the job answered and one of them
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_applying_one_answer_at_once_apply_it_once() -> anyhow::Result<()> {
    use upkeep_agent_protocol as proto;
    let a = TestServer::start_on_cluster(test_config).await?;
    let b = a.start_replica(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let work = tempfile::tempdir()?;
    let sw = create_file_software(&a, &admin, Some(&tenant), "tool", work.path(), &["1.0"]).await?;
    a.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let (token, computer) = a.enroll_raw(&key, "o-1", "m-o-1").await?;
    assert_eq!(poll(&a, &token, 0).await?.0, 200);
    let id = a
        .start_session(&admin, &computer, json!({"detectionOnly": true}))
        .await?;
    let mut jobs = Vec::new();
    while jobs.is_empty() {
        jobs = raw_poll(&b.http, &b.url, &token, 5).await?;
    }
    let job: proto::Job = serde_json::from_value(jobs[0].clone())?;
    let proto::JobKind::Probe { probes } = &job.kind else {
        anyhow::bail!("a probe job first: {job:?}");
    };
    let outcome = proto::JobOutcome::Probe {
        results: probes
            .iter()
            .map(|p| proto::ProbeResult {
                probe_id: p.probe_id.clone(),
                outcome: proto::ScriptOutcome {
                    exit_code: Some(0),
                    ..Default::default()
                },
            })
            .collect(),
    };
    let (session, job_id) = (
        id.parse::<upkeep_core::domain::Id>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        job.id
            .parse::<upkeep_core::domain::Id>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    let done = |o: proto::JobOutcome| upkeep_core::engine::Event::JobDone {
        job: job_id,
        outcome: o,
    };
    let (on_a, on_b) = tokio::join!(
        a.app().apply(session, done(outcome.clone())),
        b.app().apply(session, done(outcome.clone())),
    );
    assert!(
        on_a.is_ok() ^ on_b.is_ok(),
        "one applies, one changes nothing: A {:?}, B {:?}",
        on_a.map(|s| s.last_sequence),
        on_b.map(|s| s.last_sequence)
    );
    let s = a.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    Ok(())
}

/// A replica that starts offers again, to their own computer, the jobs it finds leased in the
/// store (their hand-out may have died with another replica), but not a job under the sweep's
/// short lease while its loss is recorded (`losing`): that one is done for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_offers_leased_jobs_again_but_not_one_being_failed() -> anyhow::Result<()>
{
    use upkeep_core::session::{JobRecord, JobState};
    let a = TestServer::start_on_cluster(test_config).await?;
    let admin = a.admin().await?;
    let tenant = a.create_tenant(&admin, "Acme").await?;
    let key = a.enrollment_key(&admin, &tenant).await?;
    let (token, computer) = a.enroll_raw(&key, "r-1", "m-r-1").await?;
    let computer: upkeep_core::domain::Id =
        computer.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let job = |n: u128, losing: bool| JobRecord {
        id: upkeep_core::domain::Id::from_u128(0x1ea5_0000 + n),
        session_id: upkeep_core::domain::Id::from_u128(0x1ea5_1000 + n),
        computer_id: computer,
        job: upkeep_agent_protocol::JobKind::Probe { probes: vec![] },
        lease_seconds: 60,
        created_at: chrono::Utc::now(),
        state: JobState::Leased {
            until: chrono::Utc::now() + chrono::Duration::seconds(50),
            losing,
        },
        attempts: 1,
    };
    let (lost_answer, being_failed) = (job(1, false), job(2, true));
    // Written straight to the store, as a replica killed after its claims would leave them.
    a.app()
        .store
        .write(|tx| {
            tx.put(&lost_answer)?;
            tx.put(&being_failed)?;
            Ok::<_, upkeep_store::TxError<std::convert::Infallible>>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let b = a.start_replica(test_config).await?;
    let (status, body) = poll(&b, &token, 0).await?;
    assert_eq!(status, 200, "{body}");
    let ids = job_ids(&body);
    assert_eq!(ids, vec![lost_answer.id.to_string()], "{body}");
    let stored: JobRecord = b
        .app()
        .store
        .get(&lost_answer.id)
        .await?
        .expect("the job record");
    assert_eq!(stored.attempts, 1, "offered again, not another attempt");
    Ok(())
}
