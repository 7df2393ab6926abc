//! What the end-to-end tests (`upkeep-tests`) and the bench (`upkeep-bench`) share: the real
//! server started in this process on `127.0.0.1:0` with a temp data dir ([`TestServer`], after
//! zero2prod's `spawn_app`), and the client side every caller needs — an HTTP client, GraphQL
//! calls, login, tenants, enrollment, `/healthz` and `/metrics`.
//!
//! What only one of them uses stays with it: real agents, SMTP and webhook sinks, the
//! subscription client and session helpers in `tests/src`; simulated fleets and figures in
//! `bench/src`.

mod client;
mod cluster;
mod server;

pub use client::{
    CLIENT_TIMEOUT, Endpoint, enroll, gql, gql_raw, http_client, metric, metrics_text, wait_healthy,
};
pub use cluster::{
    ScratchCluster, check_args, cluster_args, cluster_mode, embedded_only, if_cluster_mode,
    nats_url,
};
pub use server::{TestServer, server_runtime, set_server_runtime};

use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};
use upkeep_server::config::ServeConfig;

/// The MSP admin every server of the kit is started with.
pub const ADMIN_EMAIL: &str = "admin@msp.example";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// The configuration every caller starts from: the server's test defaults on `data_dir`, with
/// the admin above.
pub fn config(data_dir: &Path) -> ServeConfig {
    let mut c = ServeConfig::for_tests(data_dir.to_path_buf());
    c.admin_email = Some(ADMIN_EMAIL.into());
    c.admin_password = Some(ADMIN_PASSWORD.into());
    c
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
