//! The PostgreSQL engine: every [`Space`] in one table `upkeep_kv (space, key bytea, value
//! bytea)`, reached through a small connection pool (tokio-postgres + deadpool-postgres).
//!
//! Architecture invariant: this module (with `embedded/` for sled) is the only place that names
//! a database driver; nothing it exports shows one.
//!
//! - Order: `bytea` compares byte by byte and then by length (memcmp order), the order of the
//!   embedded engine's keys, so ranges are `ORDER BY key [DESC]` over the primary key.
//! - Transactions (`tx.rs`): the synchronous body runs against a read-through cache of one
//!   SERIALIZABLE transaction; a read the cache lacks ends the run, is fetched, and the body
//!   runs again (bodies may rerun by contract). Serialization failures rerun the whole
//!   transaction, bounded, with jitter.
//! - Durability: a transaction is durable once its COMMIT returns (PostgreSQL fsyncs the WAL
//!   before answering, `synchronous_commit` on), so [`Store::flush`] has nothing left to do.
//!   `flush_counts` reports the commits of writing transactions, the barriers actually made.
//! - Migrations (`migrate.rs`): versioned SQL files in `server/store/migrations/`, applied at
//!   open inside one transaction holding an advisory lock, recorded in `upkeep_migrations`.

mod migrate;
mod reconnect;
#[cfg(any(test, feature = "conformance"))]
pub mod scratch;
mod sql;
#[cfg(test)]
mod tests;
mod tx;

use crate::interface::{Body, KeyRange, Space, TransactError};
use crate::{Result, Snapshot, Store, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use reconnect::retrying;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_postgres::IsolationLevel;

/// Connections the pool keeps at most (each transaction holds one for its length).
const POOL_SIZE: usize = 16;

pub(crate) struct PgStore {
    pool: Pool,
    writes: AtomicU64,
    reads: AtomicU64,
    /// Commits of writing transactions and batches, and their time in microseconds.
    commits: AtomicU64,
    commit_micros: AtomicU64,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Engine(format!(
                "PostgreSQL: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            )),
            None => StoreError::Engine(format!("PostgreSQL: {e}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // The pool's text leaves out why (connection refused, bad password): add its causes.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !text.contains(&c_text) {
                text = format!("{text}: {c_text}");
            }
            cause = c.source();
        }
        StoreError::Engine(format!("cannot get a PostgreSQL connection: {text}"))
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), applies pending migrations and
    /// checks the store's schema version.
    pub(crate) async fn open(url: &str) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Engine(format!("the database URL is not a PostgreSQL URL: {e}"))
        })?;
        // Every wait has an end: a session left idle inside a transaction (a client that hung
        // or died mid-way) is ended by the server after a minute instead of pinning its locks
        // for every other writer, and a statement waits at most 30 s for a lock (the
        // transaction then runs again, `tx.rs`). The URL's own `options` come first.
        let own = config.get_options().unwrap_or_default().to_string();
        config.options(
            format!("{own} -c idle_in_transaction_session_timeout=60000 -c lock_timeout=30000")
                .trim(),
        );
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A server that does not answer is an error after a while, not a hang.
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Engine(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore {
            pool,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
        };
        let mut client = store.pool.get().await?;
        migrate::run(&mut client).await?;
        Ok(store)
    }

    fn committed(&self, since: std::time::Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn read(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        retrying(|| async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(sql::GET).await?;
            let row = client.query_opt(&stmt, &[&space.name(), &key]).await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn read_range(
        &self,
        space: Space,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let q = sql::Range::new(space, range, "key, value", Some(&limit));
        retrying(|| async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&q.sql).await?;
            let rows = client.query(&stmt, &q.params()).await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    async fn count_range(&self, space: Space, range: &KeyRange) -> Result<u64> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let q = sql::Range::new(space, range, "count(*)", None);
        retrying(|| async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&q.sql).await?;
            let n: i64 = client.query_one(&stmt, &q.params()).await?.get(0);
            Ok(n as u64)
        })
        .await
    }

    async fn transact(&self, body: &mut Body<'_>) -> Result<(), TransactError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        tx::transact(self, body).await
    }

    async fn apply_batch(
        &self,
        space: Space,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        // One statement touches a key once: the last entry for a key wins, as in order.
        let entries: Vec<_> = entries
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        // Setting keys to given values: running it again after a lost COMMIT changes nothing.
        retrying(|| async {
            let mut client = self.pool.get().await?;
            let t = client.transaction().await?;
            let started = std::time::Instant::now();
            for chunk in entries.chunks(1000) {
                let writes = chunk.iter().map(|(k, v)| ((space, k.clone()), v.clone()));
                sql::write_all(&t, writes).await?;
            }
            t.commit().await?;
            self.committed(started);
            Ok(())
        })
        .await
    }

    async fn claim(&self, space: Space, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        // Insert-if-absent and read: safe to run again after a lost connection.
        retrying(|| async {
            let client = self.pool.get().await?;
            // Two statements, so that the read sees a claim another process committed
            // meanwhile (READ COMMITTED: each statement reads what was committed when it began).
            client
                .execute(sql::CLAIM, &[&space.name(), &key, &value])
                .await?;
            let row = client.query_one(sql::GET, &[&space.name(), &key]).await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Nothing to do: every transaction and batch was durable when its COMMIT returned.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let mut client = self.pool.get().await?;
        // One REPEATABLE READ transaction: every space is read from the same snapshot, and
        // writers are not held off meanwhile.
        let t = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let stmt = t.prepare_cached(sql::SCAN).await?;
        let mut out = Vec::new();
        for space in Space::all() {
            let rows = t.query(&stmt, &[&space.name()]).await?;
            let entries = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            out.push((space.name().to_string(), entries));
        }
        t.commit().await?;
        Ok(out)
    }

    fn op_counts(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.reads.load(Ordering::Relaxed),
        )
    }

    fn flush_counts(&self) -> (u64, f64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}
