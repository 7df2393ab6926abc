//! Helpers for end-to-end tests: the real server on `127.0.0.1:0` with a temp data dir, a
//! GraphQL client, real agents running real `sh` scripts, an SMTP sink on loopback and a
//! subscription client. Modelled on zero2prod's `spawn_app`.

pub mod hook;
pub mod smtp;
pub mod ws;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use upkeep_server::config::ServeConfig;

pub const ADMIN_EMAIL: &str = "admin@msp.example";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// An HTTP client for tests (installs the TLS provider reqwest needs first).
pub fn http_client() -> reqwest::Client {
    upkeep_server::install_tls_provider();
    reqwest::Client::new()
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server under test, in this process.
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub running: Option<upkeep_server::http::Running>,
    pub http: reqwest::Client,
    pub config: ServeConfig,
    _dir: Option<TempDir>,
}

pub fn test_config(dir: &Path) -> ServeConfig {
    let mut c = ServeConfig::for_tests(dir.to_path_buf());
    c.admin_email = Some(ADMIN_EMAIL.into());
    c.admin_password = Some(ADMIN_PASSWORD.into());
    c.allow_private_webhooks = true;
    c.offline_after_seconds = 3;
    c
}

impl TestServer {
    pub async fn start() -> Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    /// Starts with a fresh temp data dir; `tweak` adjusts the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let mut s = Self::start_config(config).await?;
        s._dir = Some(dir);
        Ok(s)
    }

    pub async fn start_config(config: ServeConfig) -> Result<TestServer> {
        let running = upkeep_server::http::start(config.clone()).await?;
        let addr = running.addr;
        Ok(TestServer {
            url: format!("http://{addr}"),
            addr,
            data_dir: config.data_dir.clone(),
            running: Some(running),
            http: http_client(),
            config,
            _dir: None,
        })
    }

    /// Stops gracefully (agents see the server go away).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops gracefully and starts again on the same data dir and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.start_again().await
    }

    /// Starts a stopped server again on the same data dir and port.
    pub async fn start_again(&mut self) -> Result<()> {
        // sled releases its lock when the last handle drops; retry while it is still held.
        let mut config = self.config.clone();
        config.listen = self.addr;
        let running = wait_for("the store to reopen", Duration::from_secs(10), || {
            let c = config.clone();
            async move {
                match upkeep_server::http::start(c).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e)
                        if format!("{e:#}").contains("lock")
                            || format!("{e:#}").contains("listen") =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        self.addr = running.addr;
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
        Ok(())
    }

    pub fn app(&self) -> &std::sync::Arc<upkeep_server::app::App> {
        &self.running.as_ref().expect("server running").app
    }

    /// Moves the server's clock (servers started with `test_clock`).
    pub async fn set_clock(&self, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
        let r = self
            .http
            .post(format!("{}/debug/clock", self.url))
            .json(&json!({ "now": now }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "clock not set: {}", r.status());
        Ok(())
    }

    /// Runs a GraphQL operation and returns the whole response.
    pub async fn gql_raw(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("non-JSON answer ({status})"))?;
        Ok(body)
    }

    /// Runs an operation that must succeed; returns `data`.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Result<Value> {
        let body = self.gql_raw(Some(token), query, variables).await?;
        if let Some(e) = body.get("errors") {
            bail!("GraphQL errors: {e}");
        }
        Ok(body["data"].clone())
    }

    /// Runs an operation that must fail; returns the first error's `extensions.code`.
    pub async fn gql_err(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<String> {
        let body = self.gql_raw(token, query, variables).await?;
        let Some(err) = body["errors"].get(0) else {
            bail!("expected an error, got {body}")
        };
        Ok(err["extensions"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_string())
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<String> {
        let d = self
            .gql_raw(
                None,
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({"e": email, "p": password}),
            )
            .await?;
        d["data"]["login"]["token"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("login failed: {d}"))
    }

    pub async fn admin(&self) -> Result<String> {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    pub async fn create_tenant(&self, token: &str, name: &str) -> Result<String> {
        let d = self
            .gql(token, "mutation($n: String!) { createTenant(input: {name: $n, timeZone: \"Europe/Berlin\"}) { id } }", json!({"n": name}))
            .await?;
        Ok(d["createTenant"]["id"]
            .as_str()
            .context("tenant id")?
            .to_string())
    }

    pub async fn enrollment_key(&self, token: &str, tenant: &str) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { id key } }",
                json!({"t": tenant}),
            )
            .await?;
        Ok(d["createEnrollmentKey"]["key"]
            .as_str()
            .context("key")?
            .to_string())
    }

    /// A session as GraphQL shows it.
    pub async fn session(&self, token: &str, id: &str) -> Result<Value> {
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

    /// Waits until the session reaches one of `statuses`; returns it.
    pub async fn wait_status(
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

    pub async fn start_session(&self, token: &str, computer: &str, extra: Value) -> Result<String> {
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

    /// Waits for a computer with this hostname to exist in the tenant; returns its id.
    pub async fn computer_id(&self, token: &str, hostname: &str) -> Result<String> {
        wait_for(&format!("computer {hostname}"), Duration::from_secs(20), || async {
            let d = self.gql(token, "query($s: String) { computers(search: $s) { edges { node { id hostname } } } }", json!({"s": hostname})).await?;
            Ok(d["computers"]["edges"].as_array().and_then(|e| e.iter().find(|n| n["node"]["hostname"] == hostname)).map(|n| n["node"]["id"].as_str().unwrap_or_default().to_string()))
        })
        .await
    }

    /// Waits until the computer is online.
    pub async fn wait_online(&self, token: &str, id: &str) -> Result<()> {
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

    /// Enrolls a machine with a raw protocol call (no agent): returns `(agentToken, computerId)`.
    pub async fn enroll_raw(
        &self,
        key: &str,
        hostname: &str,
        machine_id: &str,
    ) -> Result<(String, String)> {
        let r: Value = self
            .http
            .post(format!("{}/agent/v1/enroll", self.url))
            .json(&json!({"protocolVersion": 1, "enrollmentKey": key, "hostname": hostname, "machineId": machine_id, "os": "Linux", "agentVersion": "0"}))
            .send()
            .await?
            .json()
            .await?;
        Ok((
            r["agentToken"].as_str().context("agentToken")?.to_string(),
            r["computerId"].as_str().context("computerId")?.to_string(),
        ))
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("metric {name} missing"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.app.shutdown.trigger();
        }
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
        let mut config =
            upkeep_agent::AgentConfig::new(server_url.to_string(), state_dir.to_path_buf());
        config.enrollment_key = key.map(String::from);
        config.machine_id = Some(format!("machine-{hostname}"));
        config.hostname = Some(hostname.to_string());
        config.reboot_command = "true".into();
        config.poll_wait_seconds = 5;
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
        .map(|v| json!({"version": v, "installScript": {"language": "SHELL", "body": format!("echo {v} > '{f}'")}}))
        .collect();
    let d = s
        .gql(
            token,
            "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
            json!({"i": {
                "name": name,
                "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": format!("test -f '{f}' && cat '{f}' || exit 0")},
                "uninstallScript": {"language": "SHELL", "body": format!("rm -f '{f}'")},
                "versions": versions,
            }}),
        )
        .await?;
    Ok(d["createSoftware"]["id"]
        .as_str()
        .context("software id")?
        .to_string())
}

pub async fn create_deployment(s: &TestServer, token: &str, input: Value) -> Result<String> {
    let d = s
        .gql(
            token,
            "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
            json!({"i": input}),
        )
        .await?;
    Ok(d["createDeployment"]["id"]
        .as_str()
        .context("deployment id")?
        .to_string())
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
        let s = TestServer::start().await?;
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
