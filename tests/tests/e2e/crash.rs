//! Crash safety: the real server runs as a child process and is killed with SIGKILL at random
//! points while three real agents run sessions. Afterwards every session has finished, every
//! step ran exactly once, every after-mail arrived exactly once (a repeat of the same
//! Message-ID after a crash is allowed, a second Message-ID is not) and `check` finds the store
//! sound.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upkeep_tests::smtp::{SmtpSink, parse};
use upkeep_tests::*;

const COMPUTERS: usize = 3;
const ROUNDS: usize = 3;
/// Maintenance tasks: (step name, seconds its set script sleeps).
const TASKS: [(&str, &str); 3] = [("a", "0.4"), ("b", "0.7"), ("c", "0.2")];
/// How long one wait for the server (or a session) may take before the test gives up.
const T: Duration = Duration::from_secs(45);

/// SplitMix64: small, seedable, good enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The server under test as a separate process, so it can be SIGKILLed. Killed on drop.
struct ServerProcess {
    child: Option<Child>,
    port: u16,
    data: PathBuf,
    smtp_url: String,
    log: PathBuf,
}

impl ServerProcess {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("upkeep-server-under-test"))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
                self.data.to_str().context("data dir path")?,
                "--smtp-url",
                &self.smtp_url,
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .env("UPKEEP_OFFLINE_AFTER_SECONDS", "3")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown hook, no flush, no goodbye to the agents.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Spawns the server and waits until `/healthz` answers, spawning again if it exited
    /// (e.g. the port was not free yet).
    async fn start(&mut self, remote: &Remote) -> Result<()> {
        self.spawn()?;
        let deadline = Instant::now() + T;
        loop {
            if remote.healthy().await {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                println!("server exited at start ({status}); starting it again");
                self.spawn()?;
            }
            ensure!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A GraphQL client for the server process that rides out its restarts: a call that fails in
/// transport (refused, reset, cut short) is retried; a GraphQL error is not.
#[derive(Clone)]
struct Remote {
    url: String,
    http: reqwest::Client,
    token: String,
}

impl Remote {
    async fn healthy(&self) -> bool {
        match self.http.get(format!("{}/healthz", self.url)).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// One attempt. Outer error: transport (the server is down); inner error: GraphQL errors.
    async fn attempt(&self, query: &str, variables: &Value) -> Result<Result<Value, Value>> {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({"query": query, "variables": variables}));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let body: Value = req.send().await?.json().await?;
        Ok(match body.get("errors") {
            Some(e) if !e.is_null() => Err(e.clone()),
            _ => Ok(body["data"].clone()),
        })
    }

    /// Retries transport failures until `T` runs out. Only for queries and idempotent
    /// mutations.
    async fn gql(&self, query: &str, variables: Value) -> Result<Value> {
        let deadline = Instant::now() + T;
        loop {
            match self.attempt(query, &variables).await {
                Ok(Ok(d)) => return Ok(d),
                Ok(Err(e)) => bail!("GraphQL errors: {e}"),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("the server stayed unreachable");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn metric(&self, name: &str) -> Result<f64> {
        upkeep_testkit::metric(&self.http, &self.url, name).await
    }
}

/// One finished session as the driver saw it.
struct Done {
    computer: usize,
    round: usize,
    id: String,
    session: Value,
}

fn computer_name(i: usize, round: usize) -> String {
    format!("crash-pc-{i} round {round}")
}

/// Runs `ROUNDS` sessions one after another on computer `i`, riding out server restarts.
/// Before each round the computer is renamed, so each after-mail names its session.
async fn drive(remote: Remote, i: usize, computer: String) -> Result<Vec<Done>> {
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        remote
            .gql(
                "mutation($c: ID!, $n: String!) { updateComputer(id: $c, input: {name: $n}) { id } }",
                json!({"c": computer, "n": computer_name(i, round)}),
            )
            .await?;
        // The start is retried across crashes; its idempotency key makes a repeat return the
        // session of the first call instead of starting another.
        let input = json!({
            "computerIds": [computer],
            "idempotencyKey": format!("crash-{i}-{round}"),
            "options": {"notifyAfter": true},
        });
        let deadline = Instant::now() + T;
        let id = loop {
            match remote
                .attempt(
                    "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }",
                    &json!({"i": input}),
                )
                .await
            {
                Ok(Ok(d)) => {
                    break d["startMaintenanceSession"][0]["id"]
                        .as_str()
                        .context("session id")?
                        .to_string();
                }
                Ok(Err(e)) => bail!(
                    "computer {i} round {round}: the repeated start was refused: {e} \
                     (a start whose answer was lost in a crash must be repeatable with its idempotencyKey)"
                ),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("the server stayed unreachable");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let deadline = Instant::now() + T;
        let session = loop {
            let d = remote
                .gql(
                    "query($id: ID!) { maintenanceSession(id: $id) { id status statusReason actions { name kind status resultMessage } } }",
                    json!({"id": id}),
                )
                .await?;
            let s = d["maintenanceSession"].clone();
            if ["PASSED", "FAILED", "CANCELLED"].contains(&s["status"].as_str().unwrap_or("")) {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "computer {i} round {round}: session {id} did not finish: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "computer {i} round {round}: session {id} {}",
            session["status"]
        );
        out.push(Done {
            computer: i,
            round,
            id,
            session,
        });
    }
    Ok(out)
}

/// Lines `<session id> <step>` each script appended to the computer's counter file.
fn step_lines(state_dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(state_dir.join("steps.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (sid, step) = l.trim().split_once(' ')?;
            Some((sid.to_string(), step.to_string()))
        })
        .collect()
}

/// The computer name an after-mail is about (`The maintenance on your computer "NAME" ...`).
fn mail_computer(text: &str) -> Option<String> {
    let rest = &text[text.find("computer \"")? + "computer \"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_repeats_nothing() -> Result<()> {
    let seed = std::env::var("UPKEEP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("crash test seed {seed} (rerun with UPKEEP_CRASH_SEED={seed})");
    let dir = tempfile::tempdir()?;
    let smtp = SmtpSink::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = ServerProcess {
        child: None,
        port,
        data: dir.path().join("data"),
        smtp_url: smtp.url(),
        log: dir.path().join("server.log"),
    };
    let r = run(&mut server, &smtp, dir.path(), seed).await;
    if r.is_err() {
        println!(
            "seed {seed}; last lines of the server's log:\n{}",
            server.log_tail(60)
        );
    }
    smtp.stop();
    r
}

async fn run(server: &mut ServerProcess, smtp: &SmtpSink, dir: &Path, seed: u64) -> Result<()> {
    let started = Instant::now();
    let mut rng = Rng(seed);
    upkeep_server::install_tls_provider();
    let mut remote = Remote {
        url: format!("http://127.0.0.1:{}", server.port),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        token: String::new(),
    };
    server.start(&remote).await?;
    let login = remote
        .gql(
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
        )
        .await?;
    remote.token = login["login"]["token"]
        .as_str()
        .context("token")?
        .to_string();

    // One tenant; per computer a primary person; software installed once (first round) and
    // three tasks that run in every round. Every change script appends `<session> <step>` to
    // `steps.log` in its agent's state dir (scripts run in `<state dir>/work`).
    let tenant = remote
        .gql(
            "mutation { createTenant(input: {name: \"Crash\", companyName: \"Crash Co\"}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .context("tenant")?
        .to_string();
    let sw = remote
        .gql(
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {"name": "crash-app", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "cat ../app.version 2>/dev/null; exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL",
                    "body": "sleep 0.5; echo \"$UPKEEP_SESSION_ID install\" >> ../steps.log; echo 1.0 > ../app.version"}}]}}),
        )
        .await?["createSoftware"]["id"]
        .as_str()
        .context("software")?
        .to_string();
    remote
        .gql(
            "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
            json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw,
                "desiredState": "INSTALLED_LATEST", "order": "BEGINNING"}}),
        )
        .await?;
    for (step, pause) in TASKS {
        let task = remote
            .gql(
                "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
                json!({"i": {"name": format!("step {step}"), "tenantId": tenant,
                    "testScript": {"language": "SHELL", "body": format!("grep -qx \"$UPKEEP_SESSION_ID {step}\" ../steps.log 2>/dev/null && exit 0 || exit 1")},
                    "setScript": {"language": "SHELL", "body": format!("sleep {pause}; echo \"$UPKEEP_SESSION_ID {step}\" >> ../steps.log")}}}),
            )
            .await?["createMaintenanceTask"]["id"]
            .as_str()
            .context("task")?
            .to_string();
        remote
            .gql(
                "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
                json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "maintenanceTaskId": task}}),
            )
            .await?;
    }
    let key = remote
        .gql(
            "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { key } }",
            json!({"t": tenant}),
        )
        .await?["createEnrollmentKey"]["key"]
        .as_str()
        .context("key")?
        .to_string();
    let mut agents = Vec::new();
    let mut state_dirs = Vec::new();
    let mut computers = Vec::new();
    let mut emails = Vec::new();
    for i in 0..COMPUTERS {
        let state = dir.join(format!("agent-{i}"));
        let hostname = format!("crash-pc-{i}");
        agents.push(TestAgent::start_in(
            &remote.url,
            Some(&key),
            &state,
            &hostname,
        )?);
        state_dirs.push(state);
        let email = format!("user{i}@crash.example");
        let person = remote
            .gql(
                "mutation($t: ID!, $n: String!, $e: String!) { createPerson(input: {tenantId: $t, name: $n, email: $e}) { id } }",
                json!({"t": tenant, "n": format!("User {i}"), "e": email}),
            )
            .await?["createPerson"]["id"]
            .as_str()
            .context("person")?
            .to_string();
        let id = wait_for(&format!("computer {hostname}"), T, || async {
            let d = remote
                .gql(
                    "query($s: String) { computers(search: $s) { edges { node { id hostname online } } } }",
                    json!({"s": hostname}),
                )
                .await?;
            Ok(d["computers"]["edges"]
                .as_array()
                .and_then(|e| {
                    e.iter()
                        .find(|n| n["node"]["hostname"] == hostname.as_str() && n["node"]["online"] == true)
                })
                .and_then(|n| n["node"]["id"].as_str().map(String::from)))
        })
        .await?;
        remote
            .gql(
                "mutation($c: ID!, $p: ID!) { updateComputer(id: $c, input: {primaryPersonId: $p}) { id } }",
                json!({"c": id, "p": person}),
            )
            .await?;
        computers.push(id);
        emails.push(email);
    }
    println!("set up in {:.1?}", started.elapsed());

    // Sessions on all computers, round after round; meanwhile SIGKILL at random points.
    let drivers: Vec<_> = computers
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(remote.clone(), i, c.clone())))
        .collect();
    let kills = rng.range(4, 6);
    for k in 1..=kills {
        let gap = rng.range(50, 1800);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        server.kill()?;
        let down = Instant::now();
        server.start(&remote).await?;
        println!(
            "kill {k}/{kills}: {gap} ms after the server was up; back after {:.1?}",
            down.elapsed()
        );
    }
    let mut done = Vec::new();
    for d in drivers {
        done.extend(d.await??);
    }
    println!("all sessions finished after {:.1?}", started.elapsed());

    // Every session reached a terminal state, and PASSED.
    for d in &done {
        assert_eq!(
            d.session["status"], "PASSED",
            "computer {} round {}: {:#}",
            d.computer, d.round, d.session
        );
    }

    // Every step ran exactly once: one line per step per session, no repeats, nothing from a
    // session the drivers do not know.
    for (i, state) in state_dirs.iter().enumerate() {
        let lines = step_lines(state);
        let mut seen = BTreeSet::new();
        for l in &lines {
            assert!(
                seen.insert(l.clone()),
                "computer {i}: step {l:?} ran twice; all lines: {lines:?}"
            );
        }
        let mut expected = BTreeSet::new();
        for d in done.iter().filter(|d| d.computer == i) {
            if d.round == 0 {
                expected.insert((d.id.clone(), "install".to_string()));
            }
            for (step, _) in TASKS {
                expected.insert((d.id.clone(), step.to_string()));
            }
        }
        assert_eq!(seen, expected, "computer {i}: the steps that ran");
    }

    // Every after-mail arrived, exactly once per session. Wait for the outbox to drain and for
    // a mail per session, then stop the server so nothing more can come.
    wait_for("every after-mail", T, || async {
        let depth = remote.metric("upkeep_outbox_depth").await.unwrap_or(1.0);
        let ids: BTreeSet<String> = smtp
            .received()
            .iter()
            .filter_map(|m| parse(&m.data).header("Message-ID").map(String::from))
            .collect();
        Ok((depth == 0.0 && ids.len() >= done.len()).then_some(()))
    })
    .await?;
    server.kill()?;
    drop(agents);
    // (computer name, Message-ID) -> copies received.
    let mut by_session: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for m in smtp.received() {
        let p = parse(&m.data);
        let id = p.header("Message-ID").context("Message-ID")?.to_string();
        let name = mail_computer(&p.text)
            .with_context(|| format!("which computer is this mail about? {}", p.text))?;
        let i = (0..COMPUTERS)
            .find(|&i| (0..ROUNDS).any(|r| computer_name(i, r) == name))
            .with_context(|| format!("a mail about an unknown computer {name:?}"))?;
        assert_eq!(m.rcpt, vec![emails[i].clone()], "mail about {name}");
        assert!(
            p.header("Subject")
                .is_some_and(|s| s.starts_with("Maintenance on")),
            "only after-mails are sent: {:?}",
            p.header("Subject")
        );
        *by_session.entry(name).or_default().entry(id).or_default() += 1;
    }
    let repeats: usize = by_session
        .values()
        .flat_map(|ids| ids.values())
        .map(|n| n - 1)
        .sum();
    println!(
        "after-mails: {} sessions, {repeats} repeated send(s) of the same Message-ID",
        by_session.len()
    );
    for d in &done {
        let name = computer_name(d.computer, d.round);
        let ids = by_session.get(&name);
        assert_eq!(
            ids.map_or(0, |m| m.len()),
            1,
            "session {} ({name}) must have exactly one after-mail Message-ID: {ids:?}",
            d.id
        );
    }
    assert_eq!(by_session.len(), done.len(), "no mail about anything else");

    // The store the crashes left behind is sound.
    let check = Command::new(bin("upkeep-server-under-test"))
        .args([
            "check",
            "--data-dir",
            server.data.to_str().context("data dir")?,
        ])
        .output()?;
    assert!(
        check.status.success(),
        "store check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("crash test done in {:.1?}", started.elapsed());
    Ok(())
}
