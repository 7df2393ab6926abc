//! The crash harness shared by the single-node crash test (`tests/e2e/crash.rs`) and the
//! cluster test (`tests/cluster.rs`): servers as child processes that can be SIGKILLed, a
//! GraphQL client that rides out their restarts (failing over between replicas), a fleet of
//! real agents whose every change script appends `<session> <step>` to a file, drivers that run
//! sessions round after round, and the checks: every session PASSED, every step ran exactly once,
//! every after-mail arrived exactly once.

use crate::smtp::{SmtpSink, parse};
use crate::*;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sessions each computer runs, one after another.
pub const ROUNDS: usize = 3;
/// Maintenance tasks: (step name, seconds its set script sleeps).
pub const TASKS: [(&str, &str); 3] = [("a", "0.4"), ("b", "0.7"), ("c", "0.2")];
/// How long one wait for a server (or a session) may take before a test gives up.
pub const T: Duration = Duration::from_secs(60);

/// SplitMix64: small, seedable, good enough to pick kill points.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// The seed from `var` if set, else from the clock (printed by the caller for reruns).
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::AtomicU32;
    // Below the kernel's ephemeral range, where `bind(0)` (every in-process test server) and
    // outgoing connections never land: a port checked free here cannot be taken by another
    // test before the spawned server binds it (with ports from `bind(0)` it could, and the
    // test then talked to another test's server). Distinct per call within this process;
    // processes start at different places.
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX));
    if high <= LOW + 1_000 {
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}

/// The server under test as a separate process, so it can be SIGKILLed. Killed on drop.
pub struct ServerProcess {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    pub smtp_url: String,
    pub log: PathBuf,
    /// More flags (cluster mode: database, NATS, prefix).
    pub extra: Vec<String>,
}

impl ServerProcess {
    pub fn new(port: u16, data: PathBuf, smtp_url: String, log: PathBuf) -> ServerProcess {
        ServerProcess {
            child: None,
            port,
            data,
            smtp_url,
            log,
            extra: vec![],
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

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
            .args(&self.extra)
            .env("UPKEEP_OFFLINE_AFTER_SECONDS", "3")
            // Cluster mode claims each mail with a lease; one held by a killed process is sent
            // by the next once it runs out: 5 s here, not the default minute.
            .env("UPKEEP_CLAIM_LEASE_SECONDS", "5")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown hook, no flush, no goodbye to the agents.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Spawns the server and waits until `/healthz` answers, spawning again if it exited
    /// (e.g. the port was not free yet).
    pub async fn start(&mut self) -> Result<()> {
        self.spawn()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + T;
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url())).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                println!("server exited at start ({status}); starting it again");
                self.spawn()?;
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not come up: {}",
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
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

/// A GraphQL client for server processes that rides out their restarts: a call that fails in
/// transport (refused, reset, cut short) is retried, on the next replica when there are
/// several (as a load balancer would); a GraphQL error is not retried.
#[derive(Clone)]
pub struct Remote {
    pub urls: Vec<String>,
    next: Arc<AtomicUsize>,
    pub http: reqwest::Client,
    pub token: String,
}

impl Remote {
    /// A client of these replicas, starting with the first.
    pub fn new(urls: Vec<String>) -> Result<Remote> {
        Ok(Remote {
            urls,
            next: Arc::new(AtomicUsize::new(0)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            token: String::new(),
        })
    }

    /// The same replicas, starting at another one (each driver talks to its own first).
    pub fn starting_at(&self, i: usize) -> Remote {
        Remote {
            next: Arc::new(AtomicUsize::new(i)),
            ..self.clone()
        }
    }

    pub fn url(&self) -> &str {
        &self.urls[self.next.load(Ordering::Relaxed) % self.urls.len()]
    }

    fn fail_over(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt. Outer error: transport (the server is down); inner error: GraphQL errors.
    pub async fn attempt(&self, query: &str, variables: &Value) -> Result<Result<Value, Value>> {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url()))
            .json(&json!({"query": query, "variables": variables}));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let sent = async { anyhow::Ok(req.send().await?.json::<Value>().await?) }.await;
        let body = match sent {
            Ok(b) => b,
            Err(e) => {
                self.fail_over();
                return Err(e);
            }
        };
        Ok(match body.get("errors") {
            Some(e) if !e.is_null() => Err(e.clone()),
            _ => Ok(body["data"].clone()),
        })
    }

    /// Retries transport failures until `T` runs out. Only for queries and idempotent
    /// mutations.
    pub async fn gql(&self, query: &str, variables: Value) -> Result<Value> {
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

    pub async fn login(&mut self) -> Result<()> {
        let login = self
            .gql(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
            )
            .await?;
        self.token = login["login"]["token"]
            .as_str()
            .context("token")?
            .to_string();
        Ok(())
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        upkeep_testkit::metric(&self.http, self.url(), name).await
    }

    /// Runs a mutation that returns `{ id }` under `field`; returns the id.
    async fn create(&self, query: &str, field: &str, variables: Value) -> Result<String> {
        Ok(self.gql(query, variables).await?[field]["id"]
            .as_str()
            .with_context(|| format!("{field} id"))?
            .to_string())
    }
}

/// One finished session as a driver saw it.
pub struct Done {
    pub computer: usize,
    pub round: usize,
    pub id: String,
    pub session: Value,
}

pub fn computer_name(i: usize, round: usize) -> String {
    format!("crash-pc-{i} round {round}")
}

/// The fleet the drivers work on: real agents with their state dirs, computer ids and the
/// primary persons' addresses.
pub struct Fleet {
    pub agents: Vec<TestAgent>,
    pub state_dirs: Vec<PathBuf>,
    pub computers: Vec<String>,
    pub emails: Vec<String>,
}

/// One tenant; per computer a primary person; software installed once (first round) and three
/// tasks that run in every round. Every change script appends `<session> <step>` to
/// `steps.log` in its agent's state dir (scripts run in `<state dir>/work`). Agent `i` talks
/// to `agent_urls[i % len]`.
pub async fn set_up_fleet(
    remote: &Remote,
    dir: &Path,
    computers: usize,
    agent_urls: &[String],
) -> Result<Fleet> {
    let tenant = remote
        .create(
            "mutation { createTenant(input: {name: \"Crash\", companyName: \"Crash Co\"}) { id } }",
            "createTenant",
            json!({}),
        )
        .await?;
    let sw = remote
        .create(
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            "createSoftware",
            json!({"i": {"name": "crash-app", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "cat ../app.version 2>/dev/null; exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "SHELL",
                    "body": "sleep 0.5; echo \"$UPKEEP_SESSION_ID install\" >> ../steps.log; echo 1.0 > ../app.version"}}]}}),
        )
        .await?;
    let deploy = "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }";
    remote
        .create(
            deploy,
            "createDeployment",
            json!({"i": {"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw,
                "desiredState": "INSTALLED_LATEST", "order": "BEGINNING"}}),
        )
        .await?;
    for (step, pause) in TASKS {
        let task = remote
            .create(
                "mutation($i: CreateMaintenanceTaskInput!) { createMaintenanceTask(input: $i) { id } }",
                "createMaintenanceTask",
                json!({"i": {"name": format!("step {step}"), "tenantId": tenant,
                    "testScript": {"language": "SHELL", "body": format!("grep -qx \"$UPKEEP_SESSION_ID {step}\" ../steps.log 2>/dev/null && exit 0 || exit 1")},
                    "setScript": {"language": "SHELL", "body": format!("sleep {pause}; echo \"$UPKEEP_SESSION_ID {step}\" >> ../steps.log")}}}),
            )
            .await?;
        remote
            .create(
                deploy,
                "createDeployment",
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
    let mut fleet = Fleet {
        agents: vec![],
        state_dirs: vec![],
        computers: vec![],
        emails: vec![],
    };
    for i in 0..computers {
        let state = dir.join(format!("agent-{i}"));
        let hostname = format!("crash-pc-{i}");
        let url = &agent_urls[i % agent_urls.len()];
        fleet
            .agents
            .push(TestAgent::start_in(url, Some(&key), &state, &hostname)?);
        fleet.state_dirs.push(state);
        let email = format!("user{i}@crash.example");
        let person = remote
            .create(
                "mutation($t: ID!, $n: String!, $e: String!) { createPerson(input: {tenantId: $t, name: $n, email: $e}) { id } }",
                "createPerson",
                json!({"t": tenant, "n": format!("User {i}"), "e": email}),
            )
            .await?;
        let id = wait_online(remote, &hostname).await?;
        remote
            .gql(
                "mutation($c: ID!, $p: ID!) { updateComputer(id: $c, input: {primaryPersonId: $p}) { id } }",
                json!({"c": id, "p": person}),
            )
            .await?;
        fleet.computers.push(id);
        fleet.emails.push(email);
    }
    Ok(fleet)
}

/// Waits until the computer named `hostname` is enrolled and online; returns its id.
pub async fn wait_online(remote: &Remote, hostname: &str) -> Result<String> {
    wait_for(&format!("computer {hostname}"), T, || async {
        let d = remote
            .gql(
                "query($s: String) { computers(search: $s) { edges { node { id hostname online } } } }",
                json!({"s": hostname}),
            )
            .await?;
        Ok(d["computers"]["edges"]
            .as_array()
            .and_then(|e| {
                e.iter().find(|n| {
                    n["node"]["hostname"] == hostname && n["node"]["online"] == true
                })
            })
            .and_then(|n| n["node"]["id"].as_str().map(String::from)))
    })
    .await
}

/// Starts one session, riding out crashes: the start is retried with its idempotency key, so
/// a repeat returns the session of the first call instead of starting another.
async fn start_session(remote: &Remote, computer: &str, key: String) -> Result<String> {
    let input = json!({
        "computerIds": [computer],
        "idempotencyKey": key,
        "options": {"notifyAfter": true},
    });
    let deadline = Instant::now() + T;
    loop {
        match remote
            .attempt(
                "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }",
                &json!({"i": input}),
            )
            .await
        {
            Ok(Ok(d)) => {
                return Ok(d["startMaintenanceSession"][0]["id"]
                    .as_str()
                    .context("session id")?
                    .to_string());
            }
            Ok(Err(e)) => bail!(
                "{key}: the repeated start was refused: {e} \
                 (a start whose answer was lost in a crash must be repeatable with its idempotencyKey)"
            ),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("the server stayed unreachable");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs [`ROUNDS`] sessions one after another on computer `i`, riding out server restarts.
/// Before each round the computer is renamed, so each after-mail names its session.
pub async fn drive(remote: Remote, i: usize, computer: String) -> Result<Vec<Done>> {
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        remote
            .gql(
                "mutation($c: ID!, $n: String!) { updateComputer(id: $c, input: {name: $n}) { id } }",
                json!({"c": computer, "n": computer_name(i, round)}),
            )
            .await?;
        let id = start_session(&remote, &computer, format!("crash-{i}-{round}")).await?;
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

/// Every session PASSED, and every step ran exactly once: one line per step per session, no
/// repeats, nothing from a session the drivers do not know.
pub fn assert_steps_ran_once(done: &[Done], fleet: &Fleet) {
    for d in done {
        assert_eq!(
            d.session["status"], "PASSED",
            "computer {} round {}: {:#}",
            d.computer, d.round, d.session
        );
    }
    for (i, state) in fleet.state_dirs.iter().enumerate() {
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
}

/// The computer name an after-mail is about (`The maintenance on your computer "NAME" ...`).
fn mail_computer(text: &str) -> Option<String> {
    let rest = &text[text.find("computer \"")? + "computer \"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Waits until at least one mail per session arrived and `drained` says the outbox is empty.
pub async fn wait_for_after_mails<F, Fut>(
    smtp: &SmtpSink,
    sessions: usize,
    drained: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for("every after-mail", T, || async {
        let ids: BTreeSet<String> = smtp
            .received()
            .iter()
            .filter_map(|m| parse(&m.data).header("Message-ID").map(String::from))
            .collect();
        Ok((ids.len() >= sessions && drained().await).then_some(()))
    })
    .await
}

/// Every after-mail arrived exactly once per session (a repeat of the same Message-ID after a
/// crash is allowed and counted, a second Message-ID is not), to the session's person, and no
/// other mail. Returns the number of repeated sends.
pub fn assert_one_after_mail_each(done: &[Done], fleet: &Fleet, smtp: &SmtpSink) -> Result<usize> {
    let computers = fleet.computers.len();
    // computer name -> Message-ID -> copies received.
    let mut by_session: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for m in smtp.received() {
        let p = parse(&m.data);
        let id = p.header("Message-ID").context("Message-ID")?.to_string();
        let name = mail_computer(&p.text)
            .with_context(|| format!("which computer is this mail about? {}", p.text))?;
        let i = (0..computers)
            .find(|&i| (0..ROUNDS).any(|r| computer_name(i, r) == name))
            .with_context(|| format!("a mail about an unknown computer {name:?}"))?;
        assert_eq!(m.rcpt, vec![fleet.emails[i].clone()], "mail about {name}");
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
    for d in done {
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
    Ok(repeats)
}
