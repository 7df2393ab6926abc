//! A fresh PostgreSQL database for one test, dropped when the value is (also when the test
//! panics). The server the tests use is `UPKEEP_TEST_PG_ADMIN_URL`, by default
//! `postgres://postgres@127.0.0.1/postgres` (the project's machines and CI run it).

use crate::{Result, StoreError};

/// The name every scratch database starts with; then the Unix second it was made and a random
/// part: `upkeep_t_<seconds>_<random>`, so [`sweep_leftovers`] can tell a killed run's ones.
const PREFIX: &str = "upkeep_t_";

/// A database `upkeep_t_<seconds>_<random>` that exists while this value lives.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

/// The administrative URL the scratch databases are made from.
pub fn admin_url() -> String {
    std::env::var("UPKEEP_TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/postgres".into())
}

pub(crate) async fn admin(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            StoreError::Engine(format!(
                "cannot reach PostgreSQL at {url} for a test database ({e}); is it running? \
                 (pg_isready -h 127.0.0.1)"
            ))
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl ScratchDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> Result<ScratchDatabase> {
        use std::hash::BuildHasher;
        let admin_url = admin_url();
        let client = admin(&admin_url).await?;
        let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let name = format!("{PREFIX}{}_{random:016x}", unix_seconds());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        Ok(ScratchDatabase {
            url: format!("{base}/{name}"),
            admin: admin_url,
            name,
        })
    }

    /// The database's URL, for `--database-url`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drops the scratch databases made more than `older_than` ago: what test runs that were killed
/// (no `Drop`) left behind. Returns how many were dropped. Names without a time (an older
/// naming) are left alone: they may belong to a run that is still going.
pub async fn sweep_leftovers(older_than: std::time::Duration) -> Result<usize> {
    let client = admin(&admin_url()).await?;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await?;
    let now = unix_seconds();
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        let made = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(secs, _)| secs.parse::<u64>().ok());
        if let Some(made) = made
            && now.saturating_sub(made) > older_than.as_secs()
        {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Drop cannot await: a thread with its own runtime drops the database (closing what
        // is still connected to it) and is waited for.
        let (admin_url, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let client = admin(&admin_url).await.map_err(|e| e.to_string())?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}
