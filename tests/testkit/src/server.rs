//! The server under test: the real `upkeep_server::api::http::start` on `127.0.0.1:0`, in this
//! process, talked to over loopback like any client would.

use crate::client::{self, Endpoint};
use crate::wait_for;
use anyhow::{Context, Result};
use serde_json::Value;
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

/// With `UPKEEP_TEST_LOG` set (a `RUST_LOG`-style filter, e.g. `upkeep_server=debug`), the
/// servers' tracing goes to the test's output (`-- --nocapture` shows it); otherwise nothing.
fn log_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("UPKEEP_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
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
    /// [`crate::config`], or a caller's own defaults on top of it). In the cluster pass
    /// ([`crate::cluster_mode`]) on a fresh [`crate::ScratchCluster`] too, unless `config`
    /// names a database itself.
    pub async fn start_in_temp_dir(
        config: impl FnOnce(&Path) -> ServeConfig,
    ) -> Result<TestServer> {
        Self::start_in(None, config).await
    }

    /// On a fresh temp data dir with the embedded store in either pass: for tests whose
    /// subject is a sled data dir (e.g. moving one into PostgreSQL).
    pub async fn start_embedded(config: impl FnOnce(&Path) -> ServeConfig) -> Result<TestServer> {
        let dir = tempfile::Builder::new().prefix("upkeep-").tempdir()?;
        let mut s = Self::start_as_given(config(dir.path())).await?;
        s._dir = Some(dir);
        Ok(s)
    }

    /// Like [`TestServer::start_in_temp_dir`], in cluster mode: the store in a fresh
    /// PostgreSQL database (`--database-url`; the data dir keeps only outbox files and
    /// installers) and NATS under a prefix of its own (`--nats-url`). Both are removed with the
    /// server. Start more replicas of it with [`TestServer::start_replica`].
    pub async fn start_on_cluster(config: impl FnOnce(&Path) -> ServeConfig) -> Result<TestServer> {
        let cluster = Arc::new(crate::ScratchCluster::create().await?);
        Self::start_in(Some(cluster), config).await
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
        Self::start_in(Some(cluster), config).await
    }

    /// Starts on a fresh temp data dir, `config` for the rest, in `cluster` if given (else a
    /// fresh one in the cluster pass when `config` names no database).
    async fn start_in(
        cluster: Option<Arc<crate::ScratchCluster>>,
        config: impl FnOnce(&Path) -> ServeConfig,
    ) -> Result<TestServer> {
        let dir = tempfile::Builder::new().prefix("upkeep-").tempdir()?;
        let mut config = config(dir.path());
        let cluster = match cluster {
            Some(c) => Some(c),
            None => Self::pass_cluster(&config).await?,
        };
        if let Some(c) = &cluster {
            c.apply(&mut config);
        }
        let mut s = Self::start_as_given(config).await?;
        s._dir = Some(dir);
        s.cluster = cluster;
        Ok(s)
    }

    /// In the cluster pass, a fresh cluster for a server whose `config` names no database.
    async fn pass_cluster(config: &ServeConfig) -> Result<Option<Arc<crate::ScratchCluster>>> {
        Ok(if crate::cluster_mode() && config.database_url.is_none() {
            Some(Arc::new(crate::ScratchCluster::create().await?))
        } else {
            None
        })
    }

    /// Starts on `config` (its data dir is the caller's); in the cluster pass on a fresh
    /// cluster too, unless `config` names a database.
    pub async fn start_config(mut config: ServeConfig) -> Result<TestServer> {
        let cluster = Self::pass_cluster(&config).await?;
        if let Some(c) = &cluster {
            c.apply(&mut config);
        }
        let mut s = Self::start_as_given(config).await?;
        s.cluster = cluster;
        Ok(s)
    }

    /// Starts on exactly `config`, in either pass: for tests that choose the store
    /// themselves.
    pub async fn start_as_given(config: ServeConfig) -> Result<TestServer> {
        log_to_test_output();
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

    /// This server as a client sees it (its URL changes when it restarts on another port).
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            http: self.http.clone(),
        }
    }

    /// Runs a GraphQL operation and returns the whole response.
    pub async fn gql_raw(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        self.endpoint().gql_raw(token, query, variables).await
    }

    /// Runs an operation that must succeed; returns `data`.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Result<Value> {
        self.endpoint().gql(token, query, variables).await
    }

    /// Runs an operation that must fail; returns the first error's `extensions.code`.
    pub async fn gql_err(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<String> {
        self.endpoint().gql_err(token, query, variables).await
    }

    /// Logs in; returns the session token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String> {
        self.endpoint().login(email, password).await
    }

    /// Logs the MSP admin in.
    pub async fn admin(&self) -> Result<String> {
        self.endpoint().admin().await
    }

    /// Creates a tenant in Europe/Berlin; returns its id.
    pub async fn create_tenant(&self, token: &str, name: &str) -> Result<String> {
        self.endpoint().create_tenant(token, name).await
    }

    /// A new enrollment key of `tenant`.
    pub async fn enrollment_key(&self, token: &str, tenant: &str) -> Result<String> {
        self.endpoint().enrollment_key(token, tenant).await
    }

    /// `createSoftware(input)`; returns the software's id.
    pub async fn create_software(&self, token: &str, input: Value) -> Result<String> {
        self.endpoint().create_software(token, input).await
    }

    /// `createDeployment(input)`; returns the deployment's id.
    pub async fn create_deployment(&self, token: &str, input: Value) -> Result<String> {
        self.endpoint().create_deployment(token, input).await
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
