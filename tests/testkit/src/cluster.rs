//! What a test in cluster mode runs on: a fresh PostgreSQL database and a NATS subject prefix
//! of its own on the machine's NATS (`UPKEEP_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
//! Both are removed when the value is dropped.

use upkeep_server::config::ServeConfig;
use upkeep_store::scratch::ScratchDatabase;

/// The NATS server tests use.
pub fn nats_url() -> String {
    std::env::var("UPKEEP_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
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
        Ok(ScratchCluster {
            database: ScratchDatabase::create().await?,
            nats_url: nats_url(),
            // A fresh UUIDv7's hex: unique per test, and sortable by when it was made; cut to
            // the 32 characters `--nats-prefix` takes (server processes get it as a flag).
            prefix: format!(
                "t{}",
                &upkeep_server::ids::fresh().to_string().replace('-', "")[..31]
            ),
        })
    }

    /// Puts `config` in this cluster (database, NATS, prefix).
    pub fn apply(&self, config: &mut ServeConfig) {
        config.database_url = Some(self.database.url().to_string());
        config.nats_url = Some(self.nats_url.clone());
        config.nats_prefix = self.prefix.clone();
    }
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
