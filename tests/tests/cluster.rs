//! The cluster test (issue 19): three `upkeep-server` replicas as child processes on one
//! PostgreSQL database and one NATS server, real agents spread over the replicas.
//!
//! - A subscriber on replica C sees every event of a session driven through replica A, each
//!   once, in order (`sequence` 1..=`lastSequence`).
//! - A schedule fires once for its computers although three replicas tick.
//! - While sessions run round after round, a random replica is SIGKILLed again and again,
//!   PostgreSQL is restarted (`pg_ctlcluster … restart`) and NATS is restarted: no session is
//!   lost, no step runs twice, each after-mail is sent once (a repeat of the same Message-ID
//!   after a kill is allowed, a second Message-ID is not), and `check --database-url` finds the
//!   database sound.
//!
//! It runs its own nats-server (on a free port, with its own store dir) so restarting it
//! disturbs nothing else, and restarts the machine's PostgreSQL: it lives in a test binary of
//! its own, which cargo runs alone. The harness is `upkeep_tests::crash`.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upkeep_store::scratch::ScratchDatabase;
use upkeep_tests::crash::*;
use upkeep_tests::smtp::SmtpSink;
use upkeep_tests::ws::Subscription;
use upkeep_tests::*;

/// Computers in the fleet the drivers work on (two per replica).
const COMPUTERS: usize = 6;
/// Computers of the second tenant: the subscription check and the schedule.
const SCHEDULED: usize = 3;
const REPLICAS: usize = 3;

/// A nats-server of this test's own, with JetStream on disk: killed and started again on the
/// same port and store dir.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))?;
        self.child = Some(
            Command::new("nats-server")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.dir.join("store"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context(
                    "cannot run nats-server (Debian package nats-server; .ci/run installs it)",
                )?,
        );
        wait_for("nats-server", T, || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ()))
        })
        .await
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Restarts the machine's PostgreSQL cluster (the one the tests' databases live on).
fn restart_postgres() -> Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output()?;
    ensure!(
        out.status.success(),
        "pg_ctlcluster restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_and_repeat_nothing() -> Result<()> {
    let seed = Rng::seed_from_env("UPKEEP_CLUSTER_SEED");
    println!("cluster test seed {seed} (rerun with UPKEEP_CLUSTER_SEED={seed})");
    upkeep_server::install_tls_provider();
    let dir = tempfile::tempdir()?;
    let smtp = SmtpSink::start().await?;
    let database = ScratchDatabase::create().await?;
    let mut nats = Nats {
        child: None,
        port: free_port()?,
        dir: dir.path().join("nats"),
    };
    std::fs::create_dir_all(&nats.dir)?;
    nats.start().await?;
    let mut replicas: Vec<ServerProcess> = (0..REPLICAS)
        .map(|i| -> Result<ServerProcess> {
            let mut s = ServerProcess::new(
                free_port()?,
                dir.path().join(format!("replica-{i}")),
                smtp.url(),
                dir.path().join(format!("replica-{i}.log")),
            );
            s.extra = [
                "--database-url",
                database.url(),
                "--nats-url",
                &nats.url(),
                "--nats-prefix",
                "clustertest",
                "--files-dir",
                dir.path().join("files").to_str().context("files dir")?,
            ]
            .map(String::from)
            .to_vec();
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let r = run(&mut replicas, &mut nats, &database, &smtp, dir.path(), seed).await;
    if r.is_err() {
        for (i, s) in replicas.iter().enumerate() {
            // The whole log is kept beside the test's output (the temp dir goes away).
            let log = std::fs::read_to_string(&s.log).unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("upkeep-cluster-replica-{i}.log"));
            let _ = std::fs::write(&kept, &log);
            let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
            println!(
                "seed {seed}; replica {i} (whole log in {}): errors:\n{}\nlast lines:\n{}",
                kept.display(),
                errors.join("\n"),
                s.log_tail(40)
            );
        }
    }
    for s in &mut replicas {
        s.kill()?;
    }
    smtp.stop();
    r
}

async fn run(
    replicas: &mut [ServerProcess],
    nats: &mut Nats,
    database: &ScratchDatabase,
    smtp: &SmtpSink,
    dir: &Path,
    seed: u64,
) -> Result<()> {
    let started = Instant::now();
    let mut rng = Rng(seed);
    for s in replicas.iter_mut() {
        s.start().await?;
    }
    let urls: Vec<String> = replicas.iter().map(|s| s.url()).collect();
    let mut remote = Remote::new(urls.clone())?;
    remote.login().await?;
    let mut fleet = set_up_fleet(&remote, dir, COMPUTERS, &urls).await?;
    let second = set_up_second_tenant(&remote, dir, &urls).await?;
    println!("set up in {:.1?}", started.elapsed());

    // Before anything is killed: a session driven through A, watched on C.
    subscriber_on_c_sees_every_event(&remote, &urls, &second).await?;
    let schedule = schedule_next_minute(&remote, &second.tenant).await?;

    // Sessions on every computer, round after round, each driver starting at its own replica;
    // meanwhile replicas are killed and PostgreSQL and NATS restarted.
    let drivers: Vec<_> = fleet
        .computers
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(remote.starting_at(i), i, c.clone())))
        .collect();
    let kills = rng.range(4, 6);
    for k in 1..=kills {
        let gap = rng.range(300, 2000);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let victim = rng.range(0, REPLICAS as u64 - 1) as usize;
        replicas[victim].kill()?;
        let down = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.range(0, 1500))).await;
        replicas[victim].start().await?;
        println!(
            "kill {k}/{kills}: replica {victim}, {gap} ms after the last event; back after {:.1?}",
            down.elapsed()
        );
        if k == 2 {
            restart_postgres()?;
            println!("PostgreSQL restarted");
        }
        if k == 3 {
            restart_nats(nats, &remote, &urls).await?;
        }
    }
    let mut done = Vec::new();
    for d in drivers {
        done.extend(d.await??);
    }
    println!("all sessions finished after {:.1?}", started.elapsed());
    assert_steps_ran_once(&done, &fleet);
    schedule_fired_once(&remote, &second, &schedule).await?;

    // Every replica's outbox drained and a mail per session arrived; then stop the replicas so
    // nothing more can come.
    wait_for_after_mails(smtp, done.len(), || async {
        let mut depth = 0.0;
        for u in &urls {
            depth += upkeep_testkit::metric(&remote.http, u, "upkeep_outbox_depth")
                .await
                .unwrap_or(1.0);
        }
        depth == 0.0
    })
    .await?;
    for s in replicas.iter_mut() {
        s.kill()?;
    }
    fleet.agents.clear();
    let repeats = assert_one_after_mail_each(&done, &fleet, smtp)?;
    println!("after-mails: one per session, {repeats} repeated send(s) of the same Message-ID");

    let check = Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--database-url", database.url()])
        .output()?;
    ensure!(
        check.status.success(),
        "check --database-url failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("cluster test done in {:.1?}", started.elapsed());
    Ok(())
}

/// NATS goes away: the replicas say so on `/healthz` (503 `NATS_UNAVAILABLE`), and once it is
/// back they say healthy again.
async fn restart_nats(nats: &mut Nats, remote: &Remote, urls: &[String]) -> Result<()> {
    nats.kill()?;
    wait_for("a replica to report NATS down", T, || async {
        let r = remote.http.get(format!("{}/healthz", urls[0])).send().await;
        Ok(match r {
            Ok(r) if r.status().as_u16() == 503 => {
                let body: Value = r.json().await.unwrap_or_default();
                (body.to_string().contains("NATS_UNAVAILABLE")).then_some(())
            }
            _ => None,
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.start().await?;
    for u in urls {
        wait_for("healthz after NATS is back", T, || async {
            let r = remote.http.get(format!("{u}/healthz")).send().await;
            Ok(r.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await?;
    }
    println!("NATS restarted; every replica healthy again");
    Ok(())
}

/// The second tenant: a task whose set script writes a line (so its sessions have actions and
/// log lines), no persons (so no mails), and agents spread over the replicas.
struct Second {
    tenant: String,
    computers: Vec<String>,
    _agents: Vec<TestAgent>,
}

async fn set_up_second_tenant(remote: &Remote, dir: &Path, urls: &[String]) -> Result<Second> {
    let tenant = remote
        .gql(
            "mutation { createTenant(input: {name: \"Watched\", companyName: \"Watched Co\"}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .context("tenant id")?
        .to_string();
    let task = remote
        .gql(
            "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
            json!({"i": {"name": "stamp", "tenantId": tenant,
                "testScript": {"language": "SHELL", "body": "grep -qx \"$UPKEEP_SESSION_ID\" ../stamps 2>/dev/null && exit 0 || exit 1"},
                "setScript": {"language": "SHELL", "body": "echo stamping; echo \"$UPKEEP_SESSION_ID\" >> ../stamps"}}}),
        )
        .await?["createMaintenanceTask"]["id"]
        .as_str()
        .context("task id")?
        .to_string();
    remote
        .gql(
            "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
            json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task}}),
        )
        .await?;
    let key = remote
        .gql(
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { key } }",
            json!({"t": tenant}),
        )
        .await?["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    let mut second = Second {
        tenant,
        computers: vec![],
        _agents: vec![],
    };
    for i in 0..SCHEDULED {
        let hostname = format!("watched-pc-{i}");
        let state = dir.join(&hostname);
        second._agents.push(TestAgent::start_in(
            &urls[i % urls.len()],
            Some(&key),
            &state,
            &hostname,
        )?);
        let id = wait_online(remote, &hostname).await?;
        second.computers.push(id);
    }
    Ok(second)
}

/// A session started through replica A; a tenant-wide subscriber on replica C, opened before
/// the start, receives sequences 1..=lastSequence of it, each once, in order.
async fn subscriber_on_c_sees_every_event(
    remote: &Remote,
    urls: &[String],
    second: &Second,
) -> Result<()> {
    let mut sub = Subscription::start(
        &urls[2],
        "graphql-transport-ws",
        &remote.token,
        "subscription($t: ID) { maintenanceSessionUpdates(tenantId: $t) { sessionId sequence status } }",
        json!({"t": second.tenant}),
    )
    .await?;
    let mut on_a = Remote::new(vec![urls[0].clone()])?;
    on_a.token = remote.token.clone();
    let id = on_a
        .gql(
            "mutation($c: ID!) { startMaintenanceSession(input: {computerIds: [$c]}) { id } }",
            json!({"c": second.computers[0]}),
        )
        .await?["startMaintenanceSession"][0]["id"]
        .as_str()
        .context("session id")?
        .to_string();
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = sub.next_data(left).await.with_context(|| {
            format!("waiting on replica C for the events of {id}; seen so far {seen:?}")
        })?;
        let e = &e["maintenanceSessionUpdates"];
        if e["sessionId"] != id.as_str() {
            continue;
        }
        seen.push(e["sequence"].as_i64().context("sequence")?);
        if ["PASSED", "FAILED", "CANCELLED"].contains(&e["status"].as_str().unwrap_or("")) {
            ensure!(e["status"] == "PASSED", "the watched session ended {e}");
            break;
        }
    }
    sub.close().await;
    let last = on_a
        .gql(
            "query($id: ID!) { maintenanceSession(id: $id) { lastSequence } }",
            json!({"id": id}),
        )
        .await?["maintenanceSession"]["lastSequence"]
        .as_i64()
        .context("lastSequence")?;
    let expected: Vec<i64> = (1..=last).collect();
    ensure!(
        seen == expected,
        "replica C's subscriber saw {seen:?}; the session stored 1..={last}"
    );
    println!("replica C saw all {last} events of a session driven by A, once each, in order");
    Ok(())
}

/// A schedule for the second tenant's computers at the next whole minute (UTC) that is at least
/// 15 s away, once a day: it must fire once during this test. Its window is 2 minutes, so its
/// sessions' starts are spread over the first minute (`calendar::spread`). Returns its id.
async fn schedule_next_minute(remote: &Remote, tenant: &str) -> Result<String> {
    let at = chrono::Utc::now() + chrono::Duration::seconds(75);
    use chrono::Timelike;
    let cron = format!("{} {} * * *", at.minute(), at.hour());
    Ok(remote
        .gql(
            "mutation($t: ID!, $c: String!) { createSchedule(input: {tenantId: $t, name: \"Once\", target: {kind: ALL_COMPUTERS}, cron: $c, timeZone: \"UTC\", windowMinutes: 2}) { id } }",
            json!({"t": tenant, "c": cron}),
        )
        .await?["createSchedule"]["id"]
        .as_str()
        .context("schedule id")?
        .to_string())
}

/// The schedule's occurrence started exactly one session per computer, however many
/// replicas ticked (and were killed) meanwhile.
async fn schedule_fired_once(remote: &Remote, second: &Second, schedule: &str) -> Result<()> {
    let query = "query($s: ID!) { maintenanceSessions(filter: {scheduleId: $s}, first: 100) { nodes { id status computer { id } } } }";
    let nodes = wait_for("the schedule's sessions to finish", T * 2, || async {
        let d = remote.gql(query, json!({"s": schedule})).await?;
        let nodes = d["maintenanceSessions"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let finished = nodes.len() >= second.computers.len()
            && nodes.iter().all(|n| {
                ["PASSED", "FAILED", "CANCELLED"].contains(&n["status"].as_str().unwrap_or(""))
            });
        Ok(finished.then_some(nodes))
    })
    .await?;
    let mut computers: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["computer"]["id"].as_str())
        .collect();
    computers.sort_unstable();
    let mut expected: Vec<&str> = second.computers.iter().map(String::as_str).collect();
    expected.sort_unstable();
    ensure!(
        computers == expected,
        "the schedule must start one session per computer, once: {nodes:#?}"
    );
    for n in &nodes {
        ensure!(n["status"] == "PASSED", "a scheduled session: {n}");
    }
    println!("the schedule fired once: {} sessions", nodes.len());
    Ok(())
}
