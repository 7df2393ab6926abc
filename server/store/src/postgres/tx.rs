//! Transactions on PostgreSQL.
//!
//! A body is synchronous and may run more than once (see `interface.rs`). Its reads reach the
//! database inside one SERIALIZABLE transaction, in one of two ways:
//! - on a multi-thread runtime (the server's), directly: the worker thread hands its other
//!   tasks away with `block_in_place` and waits for the query (`Handle::block_on`), so the
//!   body runs once however many keys it reads;
//! - on a current-thread runtime (`upkeep-server check`, plain `#[tokio::test]`), where
//!   `block_in_place` would panic, read-through: a key not read yet ends the run (the body
//!   sees a conflict), is read inside the transaction, and the body runs again with it
//!   cached. No thread is blocked, but a body that reads N keys runs N + 1 times.
//!
//! Either way the body's writes stay in an overlay (its own reads see them) and go out in two
//! statements before COMMIT.
//!
//! Why SERIALIZABLE rather than REPEATABLE READ with row locks: a body also reads keys that do
//! not exist (a unique claim, an idempotency key), and there is no row to lock for those.
//! PostgreSQL's serializable snapshot isolation tracks such reads (predicate locks on the
//! primary key index) and fails one of two transactions that read what the other wrote
//! (SQLSTATE 40001; deadlocks are 40P01): two writers of one key never both commit from stale
//! reads. The failed one reruns on a fresh transaction, up to [`ATTEMPTS`] times with a
//! growing, jittered pause.

use super::{PgStore, sql};
use crate::StoreError;
use crate::interface::{Body, BodyError, Space, StoreTx, TransactError, TxFault};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

/// How many times a transaction runs before a persistent conflict is answered as an error.
const ATTEMPTS: u32 = 64;

type Key = (Space, Vec<u8>);

/// How one attempt ended.
enum Attempt {
    Done,
    /// A serialization failure or a conflict the body reported: run again.
    Retry,
    /// The connection or the database went away before COMMIT was sent (nothing was applied):
    /// run again once it is back (`reconnect.rs`), keeping the error for when it is not.
    Lost(StoreError),
}

pub(super) async fn transact(store: &PgStore, body: &mut Body<'_>) -> Result<(), TransactError> {
    let mut backoff = super::reconnect::Backoff::new();
    let mut attempt = 0;
    while attempt < ATTEMPTS {
        match once(store, body).await {
            Ok(Attempt::Done) => return Ok(()),
            Ok(Attempt::Retry) => {
                pause(attempt).await;
                attempt += 1;
            }
            Ok(Attempt::Lost(e)) => {
                if !backoff.wait().await {
                    return Err(TransactError::Store(e));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(TransactError::Store(StoreError::Conflict(format!(
        "a transaction still conflicted after {ATTEMPTS} attempts"
    ))))
}

/// Sleeps up to 2^attempt ms (at most 100 ms), a random share of it, so rerunning writers
/// spread out.
async fn pause(attempt: u32) {
    use std::hash::BuildHasher;
    let ceiling = (1u64 << attempt.min(7)).min(100);
    let jitter =
        std::collections::hash_map::RandomState::new().hash_one(attempt) % (ceiling * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
}

/// Whether a database error means "run the transaction again".
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
            // The shared lock table is full ("out of shared memory": SERIALIZABLE's predicate
            // locks of every database on the server); it frees as other transactions end.
            || *c == SqlState::OUT_OF_MEMORY
            // `lock_timeout` (set on every connection, `mod.rs`) ran out.
            || *c == SqlState::LOCK_NOT_AVAILABLE
    )
}

/// `Retry` for a retryable database error, `Lost` for a lost connection, the error itself
/// otherwise. Not for COMMIT (see [`commit`]).
fn db<T>(r: Result<T, tokio_postgres::Error>) -> Result<Result<T, Attempt>, TransactError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) if retryable(&e) => Ok(Err(Attempt::Retry)),
        Err(e) if super::reconnect::lost(&e) => Ok(Err(Attempt::Lost(e.into()))),
        Err(e) => Err(TransactError::Store(e.into())),
    }
}

/// COMMIT: a serialization failure means nothing was applied (run again); a lost connection
/// leaves the outcome unknown, so it is the caller's error, never run again here.
async fn commit(t: deadpool_postgres::Transaction<'_>) -> Result<Attempt, TransactError> {
    match t.commit().await {
        Ok(()) => Ok(Attempt::Done),
        Err(e) if retryable(&e) => Ok(Attempt::Retry),
        Err(e) => Err(TransactError::Store(e.into())),
    }
}

macro_rules! try_db {
    ($e:expr) => {
        match db($e)? {
            Ok(v) => v,
            Err(retry) => return Ok(retry),
        }
    };
}

/// One attempt: a transaction, the body run until it needs no more reads, its writes, COMMIT.
async fn once(store: &PgStore, body: &mut Body<'_>) -> Result<Attempt, TransactError> {
    let mut client = match store.pool.get().await {
        Ok(c) => c,
        Err(e) if super::reconnect::pool_lost(&e) => return Ok(Attempt::Lost(e.into())),
        Err(e) => return Err(TransactError::Store(e.into())),
    };
    let t = try_db!(
        client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await
    );
    let get = try_db!(t.prepare_cached(sql::GET).await);
    // Only inside a spawned task. Outside one (a `block_on` future: a test's body, the start
    // of `serve`) the nested `Handle::block_on` parks on the thread's own parker and eats the
    // wake-up meant for the outer future: a sibling future (`join!`) whose own transaction
    // finished its writes was never polled again, kept its row locks, and the other
    // transaction waited on them for good. Such callers read through `missing` instead.
    let direct = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .filter(|_| tokio::task::try_id().is_some());
    let cache: RefCell<HashMap<Key, Option<Vec<u8>>>> = RefCell::new(HashMap::new());
    let writes = loop {
        // The view borrows the cache and the transaction: it ends before the next await.
        let (r, writes, missing, failed) = {
            let mut view = View {
                cache: &cache,
                direct: direct.as_ref().map(|rt| Direct {
                    t: &t,
                    get: &get,
                    rt,
                }),
                writes: HashMap::new(),
                missing: Cell::new(None),
                failed: Cell::new(None),
            };
            let r = body(&mut view);
            (
                r,
                view.writes,
                view.missing.into_inner(),
                view.failed.into_inner(),
            )
        };
        // A failed read or a miss decides the run, whatever the body made of the conflict it
        // was shown.
        if let Some(e) = failed {
            try_db!(Err(e));
        }
        if let Some((space, key)) = missing {
            let row = try_db!(t.query_opt(&get, &[&space.name(), &key]).await);
            cache
                .borrow_mut()
                .insert((space, key), row.map(|r| r.get(0)));
            continue;
        }
        match r {
            Ok(()) => break writes,
            Err(BodyError::Abort) => return Err(TransactError::Aborted),
            Err(BodyError::Fault(TxFault::Conflict)) => return Ok(Attempt::Retry),
            Err(BodyError::Fault(TxFault::Store(e))) => return Err(TransactError::Store(e)),
        }
    };
    if writes.is_empty() {
        return commit(t).await;
    }
    let started = std::time::Instant::now();
    try_db!(sql::write_all(&t, writes.into_iter()).await);
    let done = commit(t).await?;
    if matches!(done, Attempt::Done) {
        store.committed(started);
    }
    Ok(done)
}

/// Reading inside the body on a multi-thread runtime: the worker hands its other tasks away
/// (`block_in_place`) and waits for the query, so a body runs once however much it reads.
struct Direct<'a> {
    t: &'a deadpool_postgres::Transaction<'a>,
    get: &'a tokio_postgres::Statement,
    rt: &'a tokio::runtime::Handle,
}

/// What a body sees: its own writes, then what was read from the transaction.
struct View<'a> {
    cache: &'a RefCell<HashMap<Key, Option<Vec<u8>>>>,
    direct: Option<Direct<'a>>,
    writes: HashMap<Key, Option<Vec<u8>>>,
    /// The first key this run needed and the cache lacked (`get` has only `&self`).
    missing: Cell<Option<Key>>,
    /// The first read that failed (the body was shown a conflict).
    failed: Cell<Option<tokio_postgres::Error>>,
}

impl View<'_> {
    fn fetch(&self, d: &Direct<'_>, k: Key) -> Result<Option<Vec<u8>>, TxFault> {
        let read = tokio::task::block_in_place(|| {
            d.rt.block_on(d.t.query_opt(d.get, &[&k.0.name(), &k.1]))
        });
        match read {
            Ok(row) => {
                let v: Option<Vec<u8>> = row.map(|r| r.get(0));
                self.cache.borrow_mut().insert(k, v.clone());
                Ok(v)
            }
            Err(e) => {
                let first = self.failed.take().unwrap_or(e);
                self.failed.set(Some(first));
                Err(TxFault::Conflict)
            }
        }
    }
}

impl StoreTx for View<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault> {
        if !space.transactional() {
            return Err(TxFault::Store(StoreError::Engine(format!(
                "{} is not written in transactions",
                space.name()
            ))));
        }
        let k = (space, key.to_vec());
        if let Some(v) = self.writes.get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = self.cache.borrow().get(&k) {
            return Ok(v.clone());
        }
        if let Some(d) = &self.direct {
            return self.fetch(d, k);
        }
        let first = self.missing.take().unwrap_or(k);
        self.missing.set(Some(first));
        Err(TxFault::Conflict)
    }
    fn insert(
        &mut self,
        space: Space,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, TxFault> {
        let old = self.get(space, key)?;
        self.writes
            .insert((space, key.to_vec()), Some(value.to_vec()));
        Ok(old)
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault> {
        let old = self.get(space, key)?;
        self.writes.insert((space, key.to_vec()), None);
        Ok(old)
    }
}
