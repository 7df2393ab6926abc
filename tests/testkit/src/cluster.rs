//! What a test in cluster mode runs on: a fresh PostgreSQL database and a NATS subject prefix
//! of its own on the machine's NATS (`UPKEEP_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
//! Both are removed when the value is dropped.
//!
//! `UPKEEP_TEST_STORE=cluster` runs the whole end-to-end suite this way ([`cluster_mode`]):
//! every [`crate::TestServer`] gets a cluster of its own, tests that spawn the server binary
//! add [`ScratchCluster::args`], and the few tests about the embedded store itself say so with
//! [`embedded_only`].

use std::sync::Once;
use std::time::Duration;
use upkeep_server::config::ServeConfig;
use upkeep_store::scratch::ScratchDatabase;

/// What a killed test run left behind is removed once it is this old.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// The NATS server tests use.
pub fn nats_url() -> String {
    std::env::var("UPKEEP_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Whether this test run is the cluster pass: `UPKEEP_TEST_STORE=cluster` (PostgreSQL + NATS).
/// Unset or `embedded` is the sled default. Any other value stops the test with a clear message.
pub fn cluster_mode() -> bool {
    match std::env::var("UPKEEP_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "embedded") => false,
        Ok("cluster") => true,
        Ok(other) => {
            panic!("UPKEEP_TEST_STORE must be `embedded` (the default) or `cluster`, not `{other}`")
        }
    }
}

/// Call at the top of a test about the embedded store itself (sled files in the data dir,
/// `backup`, `gc`, …): in the cluster pass it prints `why` and returns true, and the test
/// returns early; in the embedded pass it returns false and the test runs.
pub fn embedded_only(why: &str) -> bool {
    if cluster_mode() {
        println!("embedded store only, not run in the cluster pass: {why}");
        true
    } else {
        false
    }
}

/// In the cluster pass, a fresh cluster for a test that spawns `upkeep-server` itself (pass
/// [`ScratchCluster::args`] and keep the value while the process runs); else `None`.
pub async fn if_cluster_mode() -> anyhow::Result<Option<ScratchCluster>> {
    Ok(if cluster_mode() {
        Some(ScratchCluster::create().await?)
    } else {
        None
    })
}

/// The flags of `cluster` for a server process: none when there is none (the embedded pass).
pub fn cluster_args(cluster: Option<&ScratchCluster>) -> Vec<String> {
    cluster.map(ScratchCluster::args).unwrap_or_default()
}

/// `check`'s arguments for the store of a server process: its database in the cluster pass,
/// else its data dir.
pub fn check_args(cluster: Option<&ScratchCluster>, data_dir: &std::path::Path) -> Vec<String> {
    match cluster {
        Some(c) => vec![
            "check".into(),
            "--database-url".into(),
            c.database.url().into(),
        ],
        None => vec![
            "check".into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ],
    }
}

/// One test's cluster: every replica it starts uses [`ScratchCluster::apply`].
pub struct ScratchCluster {
    pub database: ScratchDatabase,
    pub nats_url: String,
    /// This test's subject and stream prefix.
    pub prefix: String,
}

impl ScratchCluster {
    pub async fn create() -> anyhow::Result<ScratchCluster> {
        sweep_leftovers_once().await;
        Ok(ScratchCluster {
            database: ScratchDatabase::create().await?,
            nats_url: nats_url(),
            prefix: fresh_prefix(),
        })
    }

    /// Puts `config` in this cluster (database, NATS, prefix).
    pub fn apply(&self, config: &mut ServeConfig) {
        config.database_url = Some(self.database.url().to_string());
        config.nats_url = Some(self.nats_url.clone());
        config.nats_prefix = self.prefix.clone();
    }

    /// The same as command-line flags, for a server process.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.database.url().into(),
            "--nats-url".into(),
            self.nats_url.clone(),
            "--nats-prefix".into(),
            self.prefix.clone(),
        ]
    }
}

/// `t` and a fresh UUIDv7's 32 hex digits without the version digit: 32 characters, as
/// `--nats-prefix` allows; unique per test, and its first 12 digits are when it was made (ms).
fn fresh_prefix() -> String {
    let hex = upkeep_server::ids::fresh().to_string().replace('-', "");
    format!("t{}{}", &hex[..12], &hex[13..])
}

/// When a test prefix was made, from its UUIDv7 time digits (`None` for other prefixes).
fn prefix_made_at(prefix: &str) -> Option<std::time::SystemTime> {
    let hex = prefix.strip_prefix('t')?;
    if !(31..=32).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ms = u64::from_str_radix(&hex[..12], 16).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Once per test process: drops the scratch databases and NATS streams older than an hour that
/// killed runs left behind. A failure is printed, not fatal: it costs disk, not correctness.
async fn sweep_leftovers_once() {
    static SWEEP: Once = Once::new();
    let mut first = false;
    SWEEP.call_once(|| first = true);
    if !first {
        return;
    }
    match upkeep_store::scratch::sweep_leftovers(LEFTOVER_AGE).await {
        Ok(0) => {}
        Ok(n) => println!("dropped {n} test databases older than an hour"),
        Err(e) => eprintln!("could not sweep old test databases: {e}"),
    }
    if let Err(e) = sweep_streams(&nats_url()).await {
        eprintln!("could not sweep old test NATS streams: {e}");
    }
}

async fn sweep_streams(url: &str) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    for prefix in upkeep_server::services::cluster::deployments(url).await? {
        let old = prefix_made_at(&prefix)
            .and_then(|made| now.duration_since(made).ok())
            .is_some_and(|age| age > LEFTOVER_AGE);
        if old {
            upkeep_server::services::cluster::remove_deployment(url, &prefix).await?;
            println!("removed the old test NATS stream of {prefix}");
        }
    }
    Ok(())
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let (url, prefix) = (self.nats_url.clone(), self.prefix.clone());
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(upkeep_server::services::cluster::remove_deployment(
                &url, &prefix,
            ))
        })
        .join();
        if let Ok(Err(e)) = removed {
            eprintln!(
                "could not remove the test's NATS stream {}: {e}",
                self.prefix
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_prefix_is_a_valid_nats_prefix_and_tells_its_age() {
        let p = fresh_prefix();
        assert_eq!(p.len(), 32, "{p}");
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()), "{p}");
        let age = std::time::SystemTime::now()
            .duration_since(prefix_made_at(&p).expect("a test prefix"))
            .expect("made in the past");
        assert!(age < LEFTOVER_AGE, "{age:?}");
        assert_ne!(p, fresh_prefix());
        // A deployment's own prefix is never taken for a test's.
        assert!(prefix_made_at("upkeep").is_none());
        assert!(prefix_made_at("tenant_a").is_none());
    }

    /// A stream whose prefix was made two hours ago (a killed run's) is removed by the sweep; a
    /// fresh test's stays.
    #[tokio::test]
    async fn the_sweep_removes_test_streams_older_than_an_hour_only() {
        use upkeep_server::services::cluster::{Bus, deployments, remove_deployment};
        let url = nats_url();
        let fresh = fresh_prefix();
        let two_hours_ago = u64::from_str_radix(&fresh[1..13], 16).expect("hex") - 7_200_000;
        let old = format!("t{two_hours_ago:012x}{}", &fresh[13..]);
        assert_eq!(old.len(), 32);
        for prefix in [&old, &fresh] {
            Bus::connect(&url, prefix, upkeep_server::ids::fresh())
                .await
                .expect("a stream");
        }
        assert!(deployments(&url).await.expect("list").contains(&old));
        sweep_streams(&url).await.expect("sweep");
        let left = deployments(&url).await.expect("list");
        assert!(!left.contains(&old), "the old stream is still there");
        assert!(left.contains(&fresh), "the fresh stream was removed");
        remove_deployment(&url, &fresh).await.expect("remove");
    }
}
