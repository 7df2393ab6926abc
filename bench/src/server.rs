//! The server under measurement: the real `upkeep_server::http::start` on `127.0.0.1:0` with a
//! temp data dir, in this process, and the client side every scenario shares (GraphQL calls,
//! agent enrollment). Everything measured goes over loopback HTTP or WebSocket.
//!
//! The server runs on its own multi-threaded tokio runtime (one worker per core, as
//! `upkeep-server`'s `#[tokio::main]` has), the client on the bench's: the two compete for the
//! cores as two processes would, and a server that stops answering cannot also freeze the
//! client that has to report it.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use upkeep_agent_protocol as proto;
use upkeep_server::config::ServeConfig;
use upkeep_server::http::Running;

pub const ADMIN_EMAIL: &str = "bench@msp.example";
pub const ADMIN_PASSWORD: &str = "bench password 0123";

/// Enrollment calls the bench keeps in flight at once while building a fleet.
pub const ENROLL_CONCURRENCY: usize = 64;

/// Client calls give up after this long: a server that does not answer within it is stuck.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

static SERVER_RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Makes `rt` the runtime servers run on (`main` does this once, before any scenario).
pub fn set_server_runtime(rt: tokio::runtime::Handle) {
    let _ = SERVER_RUNTIME.set(rt);
}

/// The runtime every server of this process (and the bare baseline) runs on; the caller's own
/// when none was set.
pub fn server_runtime() -> tokio::runtime::Handle {
    SERVER_RUNTIME
        .get()
        .cloned()
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// The configuration every scenario starts from.
pub fn config(data_dir: &Path) -> ServeConfig {
    let mut c = ServeConfig::for_tests(data_dir.to_path_buf());
    c.admin_email = Some(ADMIN_EMAIL.into());
    c.admin_password = Some(ADMIN_PASSWORD.into());
    c
}

/// An HTTP client as an agent fleet or a portal would use it: keep-alive connections, no
/// proxy (a proxy in the environment must not sit between the bench and loopback).
pub fn http_client() -> Result<reqwest::Client> {
    upkeep_server::install_tls_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()?)
}

pub struct Server {
    pub running: Running,
    pub url: String,
    pub http: reqwest::Client,
    dir: Option<TempDir>,
}

impl Server {
    /// Starts a server on a fresh temp data dir.
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("upkeep-bench-").tempdir()?;
        let mut c = config(dir.path());
        tweak(&mut c);
        let mut s = Self::start_config(c).await?;
        s.dir = Some(dir);
        Ok(s)
    }

    /// Starts a server on `config` (an existing data dir, which the caller owns).
    pub async fn start_config(config: ServeConfig) -> Result<Server> {
        let running = server_runtime()
            .spawn(upkeep_server::http::start(config))
            .await??;
        let url = format!("http://{}", running.addr);
        Ok(Server {
            running,
            url,
            http: http_client()?,
            dir: None,
        })
    }

    /// Graceful stop, then the data dir goes.
    pub async fn stop(self) {
        let _ = server_runtime().spawn(self.running.stop()).await;
        drop(self.dir);
    }

    /// Runs a GraphQL operation that must succeed; returns `data`.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Result<Value> {
        gql(&self.http, &self.url, token, query, variables).await
    }

    pub async fn login(&self) -> Result<String> {
        let d = self
            .gql(
                None,
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
            )
            .await?;
        Ok(d["login"]["token"]
            .as_str()
            .context("login answered no token")?
            .to_string())
    }

    pub async fn create_tenant(&self, token: &str, name: &str) -> Result<String> {
        let d = self
            .gql(
                Some(token),
                "mutation($n: String!) { createTenant(input: {name: $n}) { id } }",
                json!({"n": name}),
            )
            .await?;
        Ok(d["createTenant"]["id"]
            .as_str()
            .context("tenant id")?
            .to_string())
    }

    pub async fn enrollment_key(&self, token: &str, tenant: &str) -> Result<String> {
        let d = self
            .gql(
                Some(token),
                "mutation($t: ID!) { createEnrollmentKey(tenantId: $t) { key } }",
                json!({"t": tenant}),
            )
            .await?;
        Ok(d["createEnrollmentKey"]["key"]
            .as_str()
            .context("enrollment key")?
            .to_string())
    }

    /// `count` software entries with one version ("1.0") and trivial scripts, each deployed to
    /// every computer of `tenant` as INSTALLED_LATEST.
    pub async fn deploy_software(&self, token: &str, tenant: &str, count: usize) -> Result<()> {
        for i in 0..count {
            let d = self
                .gql(
                    Some(token),
                    "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
                    json!({"i": {
                        "name": format!("bench-app-{i}"),
                        "tenantId": tenant,
                        "detectionScript": {"language": "SHELL", "body": format!("cat /opt/app{i}/version 2>/dev/null")},
                        "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("mkdir -p /opt/app{i} && echo 1.0 > /opt/app{i}/version")}}],
                    }}),
                )
                .await?;
            let sw = d["createSoftware"]["id"].as_str().context("software id")?;
            self.gql(
                Some(token),
                "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
                json!({"i": {
                    "tenantId": tenant,
                    "target": {"kind": "ALL_COMPUTERS"},
                    "softwareId": sw,
                    "desiredState": "INSTALLED_LATEST",
                }}),
            )
            .await?;
        }
        Ok(())
    }

    /// Enrolls `count` agents over `/agent/v1/enroll`, `concurrency` at a time, and hands each
    /// answer to `keep`.
    pub async fn enroll(
        &self,
        key: &str,
        count: usize,
        concurrency: usize,
        keep: impl Fn(usize, proto::EnrollResponse) + Send + Sync + 'static,
    ) -> Result<Duration> {
        let keep = Arc::new(keep);
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..concurrency {
            let http = self.http.clone();
            let url = format!("{}/agent/v1/enroll", self.url);
            let key = key.to_string();
            let keep = keep.clone();
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while i < count {
                    let req = proto::EnrollRequest {
                        protocol_version: proto::PROTOCOL_VERSION,
                        enrollment_key: key.clone(),
                        hostname: format!("bench-{i:06}"),
                        machine_id: format!("bench-machine-{i:06}"),
                        os: "Debian GNU/Linux 12 (bookworm)".into(),
                        agent_version: "0.1.0".into(),
                    };
                    let resp = http.post(&url).json(&req).send().await?;
                    let status = resp.status();
                    if !status.is_success() {
                        bail!("enrollment {i} answered {status}: {}", resp.text().await?);
                    }
                    keep(i, resp.json().await?);
                    i += concurrency;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for w in workers {
            w.await??;
        }
        Ok(started.elapsed())
    }

    /// The `/metrics` page.
    async fn metrics_text(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?)
    }

    /// One value of `/metrics` (a metric without labels).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        self.metrics_text()
            .await?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no metric {name}"))
    }

    /// Counts of sessions per status (all tenants).
    pub async fn status_counts(
        &self,
        token: &str,
    ) -> Result<std::collections::HashMap<String, u64>> {
        let d = self
            .gql(
                Some(token),
                "{ maintenanceSessionStatusCounts { status count } }",
                json!({}),
            )
            .await?;
        let mut out = std::collections::HashMap::new();
        for c in d["maintenanceSessionStatusCounts"]
            .as_array()
            .context("status counts")?
        {
            out.insert(
                c["status"].as_str().unwrap_or_default().to_string(),
                c["count"].as_u64().unwrap_or(0),
            );
        }
        Ok(out)
    }

    /// Waits until `n` sessions are PASSED; fails when any ends otherwise or `timeout` passes.
    pub async fn wait_passed(&self, token: &str, n: u64, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let counts = self.status_counts(token).await?;
            let passed = counts.get("PASSED").copied().unwrap_or(0);
            let bad = counts.get("FAILED").copied().unwrap_or(0)
                + counts.get("CANCELLED").copied().unwrap_or(0);
            if bad > 0 {
                bail!("{bad} session(s) did not pass: {counts:?}");
            }
            if passed >= n {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let metrics = self.metrics_text().await?;
                let runtime: Vec<&str> = metrics
                    .lines()
                    .filter(|l| l.starts_with("upkeep_sessions_") || l.starts_with("upkeep_jobs"))
                    .collect();
                let stuck = self
                    .gql(
                        Some(token),
                        "{ maintenanceSessions(first: 2, filter: {status: [EXECUTING, DETECTING]}) { edges { node { id status logs { sequence at message } } } } }",
                        json!({}),
                    )
                    .await
                    .map(|v| v.to_string())
                    .unwrap_or_else(|e| e.to_string());
                bail!(
                    "only {passed} of {n} sessions passed within {timeout:?}: {counts:?}\n{}\n{stuck}",
                    runtime.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A GraphQL call that must succeed; returns `data`.
pub async fn gql(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Result<Value> {
    let mut req = http
        .post(format!("{url}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("non-JSON GraphQL answer ({status})"))?;
    if let Some(e) = body.get("errors") {
        bail!("GraphQL errors: {e}");
    }
    Ok(body["data"].clone())
}

/// Waits until `GET /healthz` answers 200.
pub async fn wait_healthy(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url}/healthz did not answer within a minute");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
