//! The server under test: the real `upkeep_server::api::http::start` on `127.0.0.1:0`, in this
//! process, talked to over loopback like any client would.

use crate::client;
use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, wait_for};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tempfile::TempDir;
use upkeep_agent_protocol as proto;
use upkeep_server::api::http::Running;
use upkeep_server::config::ServeConfig;
use upkeep_server::services::App;
use upkeep_store::scratch::ScratchDatabase;

static SERVER_RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Makes `rt` the runtime servers of this process run on. The bench gives the server a runtime
/// of its own (one worker per core, as `upkeep-server`'s `#[tokio::main]` has) so the two compete
/// for the cores as two processes would, and a server that stops answering cannot also freeze
/// the client that has to report it. Call once, before any server starts.
pub fn set_server_runtime(rt: tokio::runtime::Handle) {
    let _ = SERVER_RUNTIME.set(rt);
}

/// The runtime servers run on: the one set by [`set_server_runtime`], else the caller's.
pub fn server_runtime() -> tokio::runtime::Handle {
    SERVER_RUNTIME
        .get()
        .cloned()
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// A server under test. Dropping it shuts it down without waiting; [`TestServer::stop`] waits.
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub running: Option<Running>,
    pub http: reqwest::Client,
    pub config: ServeConfig,
    /// The temp data dir, when the server made it: removed after the server is dropped.
    _dir: Option<TempDir>,
    /// The fresh PostgreSQL database of a server started with [`TestServer::start_on_postgres`]:
    /// dropped after the server (fields drop in order).
    pub database: Option<Arc<ScratchDatabase>>,
    /// The fresh database and NATS prefix of a server started with
    /// [`TestServer::start_on_cluster`] (dropped after the server).
    pub cluster: Option<Arc<crate::ScratchCluster>>,
}

impl TestServer {
    /// Starts on a fresh temp data dir; `config` builds the configuration for it (e.g.
    /// [`crate::config`], or a caller's own defaults on top of it).
    pub async fn start_in_temp_dir(
        config: impl FnOnce(&Path) -> ServeConfig,
    ) -> Result<TestServer> {
        let dir = tempfile::Builder::new().prefix("upkeep-").tempdir()?;
        let mut s = Self::start_config(config(dir.path())).await?;
        s._dir = Some(dir);
        Ok(s)
    }

    /// Like [`TestServer::start_in_temp_dir`], in cluster mode: the store in a fresh
    /// PostgreSQL database (`--database-url`; the data dir keeps only outbox files and
    /// installers) and NATS under a prefix of its own (`--nats-url`). Both are removed with the
    /// server. Start more replicas of it with [`TestServer::start_replica`].
    pub async fn start_on_cluster(config: impl FnOnce(&Path) -> ServeConfig) -> Result<TestServer> {
        let cluster = Arc::new(crate::ScratchCluster::create().await?);
        Self::start_in(cluster, config).await
    }

    /// Another replica of this cluster-mode server: same database and NATS prefix, a data dir
    /// of its own, `config` for the rest.
    pub async fn start_replica(
        &self,
        config: impl FnOnce(&Path) -> ServeConfig,
    ) -> Result<TestServer> {
        let cluster = self
            .cluster
            .clone()
            .context("start_replica needs a server started with start_on_cluster")?;
        Self::start_in(cluster, config).await
    }

    /// Starts a replica of `cluster` on a fresh temp data dir, `config` for the rest.
    async fn start_in(
        cluster: Arc<crate::ScratchCluster>,
        config: impl FnOnce(&Path) -> ServeConfig,
    ) -> Result<TestServer> {
        let mut s = Self::start_in_temp_dir(|dir| {
            let mut c = config(dir);
            cluster.apply(&mut c);
            c
        })
        .await?;
        s.cluster = Some(cluster);
        Ok(s)
    }

    /// Starts on `config` (its data dir is the caller's).
    pub async fn start_config(config: ServeConfig) -> Result<TestServer> {
        let running = server_runtime()
            .spawn(upkeep_server::api::http::start(config.clone()))
            .await??;
        let addr = running.addr;
        Ok(TestServer {
            url: format!("http://{addr}"),
            addr,
            data_dir: config.data_dir.clone(),
            running: Some(running),
            http: client::http_client()?,
            config,
            _dir: None,
            database: None,
            cluster: None,
        })
    }

    /// Stops gracefully (agents see the server go away); the data dir stays.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = server_runtime().spawn(r.stop()).await;
        }
    }

    /// Stops the server the way SIGKILL would, as far as one can in-process
    /// (`Running::kill`): its tasks are aborted where they stand, nothing is flushed, and what
    /// it held (a mail's or delivery's lease) stays held. The data dir stays.
    pub async fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = server_runtime().spawn(r.kill()).await;
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
                match server_runtime()
                    .spawn(upkeep_server::api::http::start(c))
                    .await?
                {
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

    /// The server's application state, for tests that look behind the API.
    pub fn app(&self) -> &Arc<App> {
        &self.running.as_ref().expect("server running").app
    }

    /// Runs a GraphQL operation and returns the whole response.
    pub async fn gql_raw(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        client::gql_raw(&self.http, &self.url, token, query, variables).await
    }

    /// Runs an operation that must succeed; returns `data`.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Result<Value> {
        client::gql(&self.http, &self.url, token, query, variables).await
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

    /// Logs in; returns the session token.
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

    /// Logs the MSP admin in.
    pub async fn admin(&self) -> Result<String> {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a tenant in Europe/Berlin; returns its id.
    pub async fn create_tenant(&self, token: &str, name: &str) -> Result<String> {
        let d = self
            .gql(token, "mutation($n: String!) { createTenant(input: {name: $n, timeZone: \"Europe/Berlin\"}) { id } }", json!({"n": name}))
            .await?;
        id_of(&d["createTenant"], "tenant")
    }

    /// A new enrollment key of `tenant`.
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
            .context("enrollment key")?
            .to_string())
    }

    /// `createSoftware(input)`; returns the software's id.
    pub async fn create_software(&self, token: &str, input: Value) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }",
                json!({ "i": input }),
            )
            .await?;
        id_of(&d["createSoftware"], "software")
    }

    /// `createDeployment(input)`; returns the deployment's id.
    pub async fn create_deployment(&self, token: &str, input: Value) -> Result<String> {
        let d = self
            .gql(
                token,
                "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }",
                json!({ "i": input }),
            )
            .await?;
        id_of(&d["createDeployment"], "deployment")
    }

    /// Enrolls one machine over the agent protocol (no agent runs).
    pub async fn enroll(&self, request: &proto::EnrollRequest) -> Result<proto::EnrollResponse> {
        client::enroll(&self.http, &self.url, request).await
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> Result<String> {
        client::metrics_text(&self.http, &self.url).await
    }

    /// One value of `/metrics` (a metric without labels).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        client::metric(&self.http, &self.url, name).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.app.shutdown.cancel();
        }
    }
}

fn id_of(created: &Value, what: &str) -> Result<String> {
    Ok(created["id"]
        .as_str()
        .with_context(|| format!("{what} id"))?
        .to_string())
}
