//! Helpers for end-to-end tests: the kit's server (`upkeep-testkit`) with the e2e defaults,
//! sessions and computers as GraphQL shows them, real agents running real `sh` scripts, an SMTP
//! sink on loopback and a subscription client. Modelled on zero2prod's `spawn_app`.

pub mod crash;
pub mod hook;
pub mod smtp;
pub mod wine;
pub mod ws;

pub use upkeep_testkit::{
    ADMIN_EMAIL, ADMIN_PASSWORD, ScratchCluster, TestServer, check_args, cluster_args,
    cluster_mode, embedded_only, http_client, if_cluster_mode, nats_url, wait_for,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use upkeep_agent_protocol as proto;
use upkeep_server::config::ServeConfig;

/// The e2e tests' configuration: the kit's, plus webhooks to loopback allowed (the tests'
/// receivers listen there) and agents counted offline after 3 s (tests wait for that).
pub fn test_config(dir: &Path) -> ServeConfig {
    let mut c = upkeep_testkit::config(dir);
    c.allow_private_webhooks = true;
    c.offline_after_seconds = 3;
    c
}

/// What the e2e tests add to the kit's [`TestServer`]: starting on [`test_config`], and
/// sessions, computers, raw enrollment and the test clock.
#[allow(
    async_fn_in_trait,
    reason = "implemented for TestServer only, so callers know the futures' auto traits"
)]
pub trait E2eServer: Sized {
    /// Starts on a fresh temp data dir with [`test_config`].
    async fn start() -> Result<Self>;

    /// Starts on a fresh temp data dir; `tweak` adjusts [`test_config`].
    async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Result<Self>;

    /// Moves the server's clock (servers started with `test_clock`).
    async fn set_clock(&self, now: chrono::DateTime<chrono::Utc>) -> Result<()>;

    /// A session as GraphQL shows it.
    async fn session(&self, token: &str, id: &str) -> Result<Value>;

    /// Waits until the session reaches one of `statuses`; returns it.
    async fn wait_status(
        &self,
        token: &str,
        id: &str,
        statuses: &[&str],
        timeout: Duration,
    ) -> Result<Value>;

    /// Starts a session on `computer`; `extra` adds fields to the input. Returns its id.
    async fn start_session(&self, token: &str, computer: &str, extra: Value) -> Result<String>;

    /// Waits for a computer with this hostname to exist in the tenant; returns its id.
    async fn computer_id(&self, token: &str, hostname: &str) -> Result<String>;

    /// Waits until the computer is online.
    async fn wait_online(&self, token: &str, id: &str) -> Result<()>;

    /// Enrolls a machine with a raw protocol call (no agent): returns `(agentToken, computerId)`.
    async fn enroll_raw(
        &self,
        key: &str,
        hostname: &str,
        machine_id: &str,
    ) -> Result<(String, String)>;
}

impl E2eServer for TestServer {
    async fn start() -> Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Result<TestServer> {
        TestServer::start_in_temp_dir(|dir| {
            let mut config = test_config(dir);
            tweak(&mut config);
            config
        })
        .await
    }

    async fn set_clock(&self, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
        let r = self
            .http
            .post(format!("{}/debug/clock", self.url))
            .json(&json!({ "now": now }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "clock not set: {}", r.status());
        Ok(())
    }

    async fn session(&self, token: &str, id: &str) -> Result<Value> {
        let d = self
            .gql(
                token,
                "query($id: ID!) { maintenanceSession(id: $id) { id status statusReason compliance trigger rebootRequired rebootedAt executeAt postponeCount lastSequence
                   actions { id kind status compliance desiredVersion detectedVersion resultMessage reason name }
                   logs { sequence message } } }",
                json!({"id": id}),
            )
            .await?;
        Ok(d["maintenanceSession"].clone())
    }

    async fn wait_status(
        &self,
        token: &str,
        id: &str,
        statuses: &[&str],
        timeout: Duration,
    ) -> Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let r = wait_for(
            &format!("session {id} to reach {statuses:?}"),
            timeout,
            || {
                let fut = self.session(token, id);
                let last = &last;
                async move {
                    let s = fut.await?;
                    *last.lock().expect("lock") = s.clone();
                    Ok(statuses
                        .contains(&s["status"].as_str().unwrap_or(""))
                        .then_some(s))
                }
            },
        )
        .await;
        r.with_context(|| format!("last seen: {:#}", last.lock().expect("lock")))
    }

    async fn start_session(&self, token: &str, computer: &str, extra: Value) -> Result<String> {
        let mut input = json!({ "computerIds": [computer] });
        if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                i.insert(k.clone(), v.clone());
            }
        }
        let d = self
            .gql(token, "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }", json!({"i": input}))
            .await?;
        Ok(d["startMaintenanceSession"][0]["id"]
            .as_str()
            .context("session id")?
            .to_string())
    }

    async fn computer_id(&self, token: &str, hostname: &str) -> Result<String> {
        wait_for(&format!("computer {hostname}"), Duration::from_secs(20), || async {
            let d = self.gql(token, "query($s: String) { computers(search: $s) { edges { node { id hostname } } } }", json!({"s": hostname})).await?;
            Ok(d["computers"]["edges"].as_array().and_then(|e| e.iter().find(|n| n["node"]["hostname"] == hostname)).map(|n| n["node"]["id"].as_str().unwrap_or_default().to_string()))
        })
        .await
    }

    async fn wait_online(&self, token: &str, id: &str) -> Result<()> {
        wait_for("computer online", Duration::from_secs(20), || async {
            let d = self
                .gql(
                    token,
                    "query($id: ID!) { computer(id: $id) { online } }",
                    json!({"id": id}),
                )
                .await?;
            Ok(d["computer"]["online"]
                .as_bool()
                .unwrap_or(false)
                .then_some(()))
        })
        .await
    }

    async fn enroll_raw(
        &self,
        key: &str,
        hostname: &str,
        machine_id: &str,
    ) -> Result<(String, String)> {
        let r = self
            .enroll(&proto::EnrollRequest {
                protocol_version: proto::PROTOCOL_VERSION,
                enrollment_key: key.into(),
                hostname: hostname.into(),
                machine_id: machine_id.into(),
                os: "Linux".into(),
                agent_version: "0".into(),
            })
            .await?;
        Ok((r.agent_token, r.computer_id))
    }
}

/// A real agent running in this process, stopped on drop.
pub struct TestAgent {
    pub state_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<()>>>,
    _dir: Option<TempDir>,
}

impl TestAgent {
    /// Enrolls (first time) and polls. `work_dir` is where scripts may create marker files.
    pub async fn start(server_url: &str, key: &str, hostname: &str) -> Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let mut a = Self::start_in(server_url, Some(key), dir.path(), hostname)?;
        a._dir = Some(dir);
        Ok(a)
    }

    pub fn start_in(
        server_url: &str,
        key: Option<&str>,
        state_dir: &Path,
        hostname: &str,
    ) -> Result<TestAgent> {
        Self::start_configured(server_url, key, state_dir, hostname, |_| {})
    }

    /// Like [`TestAgent::start`], with `tweak` adjusting the agent's configuration (reboot and
    /// prompt commands, the reboot-pending file).
    pub async fn start_with(
        server_url: &str,
        key: &str,
        hostname: &str,
        tweak: impl FnOnce(&mut upkeep_agent::AgentConfig),
    ) -> Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let mut a = Self::start_configured(server_url, Some(key), dir.path(), hostname, tweak)?;
        a._dir = Some(dir);
        Ok(a)
    }

    /// Like [`TestAgent::start_in`], with `tweak` adjusting the agent's configuration.
    pub fn start_in_with(
        server_url: &str,
        key: Option<&str>,
        state_dir: &Path,
        hostname: &str,
        tweak: impl FnOnce(&mut upkeep_agent::AgentConfig),
    ) -> Result<TestAgent> {
        Self::start_configured(server_url, key, state_dir, hostname, tweak)
    }

    fn start_configured(
        server_url: &str,
        key: Option<&str>,
        state_dir: &Path,
        hostname: &str,
        tweak: impl FnOnce(&mut upkeep_agent::AgentConfig),
    ) -> Result<TestAgent> {
        let mut config =
            upkeep_agent::AgentConfig::new(server_url.to_string(), state_dir.to_path_buf());
        config.enrollment_key = key.map(String::from);
        config.machine_id = Some(format!("machine-{hostname}"));
        config.hostname = Some(hostname.to_string());
        config.reboot_command = "true".into();
        // No test reads the host's own pending-reboot state, nor writes to its terminals.
        config.reboot_pending_file = state_dir.join("no-reboot-pending");
        config.prompt_command = "true".into();
        config.poll_wait_seconds = 5;
        tweak(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            upkeep_agent::run(config, async move {
                let _ = rx.await;
            })
            .await
        });
        Ok(TestAgent {
            state_dir: state_dir.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        })
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Creates a software entry whose scripts keep state in `dir/<name>.version` (install writes
/// the version; detection prints it).
pub async fn create_file_software(
    s: &TestServer,
    token: &str,
    tenant: Option<&str>,
    name: &str,
    dir: &Path,
    versions: &[&str],
) -> Result<String> {
    let file = dir.join(format!("{name}.version"));
    let f = file.display();
    let versions: Vec<Value> = versions
        .iter()
        // Written beside and renamed into place: computers of one test share the file, and one's
        // detection must never read another's half-written (truncated) install.
        .map(|v| json!({"version": v, "installScript": {"language": "SHELL", "body": format!("echo {v} > '{f}.'$$ && mv '{f}.'$$ '{f}'")}}))
        .collect();
    s.create_software(
        token,
        json!({
            "name": name,
            "tenantId": tenant,
            "detectionScript": {"language": "SHELL", "body": format!("test -f '{f}' && cat '{f}' || exit 0")},
            "uninstallScript": {"language": "SHELL", "body": format!("rm -f '{f}'")},
            "versions": versions,
        }),
    )
    .await
}

/// Path of a built binary of this package (`upkeep-server-under-test`, `upkeep-agent-under-test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    dir.join(name)
}

/// Posts `body` over a raw TCP connection and returns the status and JSON body of the answer.
///
/// A server may answer (401, 413) before it has read an oversized body and then close the
/// connection; an HTTP client that writes the whole body first then sees a broken pipe instead
/// of the answer. Here the body is written beside the read, and write errors are ignored, so the
/// test sees what a tolerant client sees: the server's answer.
pub async fn raw_post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(t) = bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    wr.write_all(head.as_bytes()).await?;
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        let _ = wr.shutdown().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                // A reset after the answer arrived is the early close described above.
                Err(_) if !answer.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    writer.abort();
    read.context("no answer within 20 s")??;
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete response head in {text:?}"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    let json =
        serde_json::from_str(&body).with_context(|| format!("body is not JSON: {body:?}"))?;
    Ok((status, json))
}

/// A server that sends its mail to `smtp` and runs on a test clock starting at `clock`, and its
/// admin's token.
pub async fn mailing_server(
    smtp: &smtp::SmtpSink,
    clock: chrono::DateTime<chrono::Utc>,
) -> Result<(TestServer, String)> {
    let url = smtp.url();
    let s = TestServer::start_with(move |c| {
        c.smtp_url = Some(url);
        c.test_clock = Some(clock);
    })
    .await?;
    let admin = s.admin().await?;
    Ok((s, admin))
}

/// An online computer of `tenant` with a real agent, whose primary person is a new person
/// (`name`, `email`): the computer's id, the person's id and the agent.
pub async fn personal_computer(
    s: &TestServer,
    admin: &str,
    tenant: &str,
    hostname: &str,
    (name, email): (&str, &str),
) -> Result<(String, String, TestAgent)> {
    let p = s
        .gql(
            admin,
            "mutation($t: ID!, $n: String!, $e: String!) { createPerson(input: {tenantId: $t, name: $n, email: $e}) { id } }",
            json!({"t": tenant, "n": name, "e": email}),
        )
        .await?;
    let person = p["createPerson"]["id"]
        .as_str()
        .context("person id")?
        .to_string();
    let key = s.enrollment_key(admin, tenant).await?;
    let agent = TestAgent::start(&s.url, &key, hostname).await?;
    let computer = s.computer_id(admin, hostname).await?;
    s.gql(
        admin,
        "mutation($c: ID!, $p: ID!) { updateComputer(id: $c, input: {primaryPersonId: $p}) { id } }",
        json!({"c": computer, "p": person}),
    )
    .await?;
    s.wait_online(admin, &computer).await?;
    Ok((computer, person, agent))
}

/// A server with one tenant ("Acme") and one enrolled, online computer whose real agent runs
/// scripts; `dir` is a temp dir for the scripts' marker files.
pub struct Fixture {
    pub s: TestServer,
    pub admin: String,
    pub tenant: String,
    pub dir: TempDir,
    pub computer: String,
    pub agent: TestAgent,
}

impl Fixture {
    pub async fn start(hostname: &str) -> Result<Fixture> {
        Self::start_on(TestServer::start().await?, hostname).await
    }

    /// The fixture on a server started by the caller (e.g. on PostgreSQL).
    pub async fn start_on(s: TestServer, hostname: &str) -> Result<Fixture> {
        let admin = s.admin().await?;
        let tenant = s.create_tenant(&admin, "Acme").await?;
        let key = s.enrollment_key(&admin, &tenant).await?;
        let agent = TestAgent::start(&s.url, &key, hostname).await?;
        let computer = s.computer_id(&admin, hostname).await?;
        s.wait_online(&admin, &computer).await?;
        Ok(Fixture {
            s,
            admin,
            tenant,
            dir: tempfile::tempdir()?,
            computer,
            agent,
        })
    }
}
