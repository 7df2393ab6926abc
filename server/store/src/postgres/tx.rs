//! Transactions on PostgreSQL.
//!
//! A body is synchronous and may run more than once (see `interface.rs`). It runs against a
//! read-through cache of one SERIALIZABLE transaction: a key the cache lacks ends the run (the
//! body sees a conflict), is read inside the transaction, and the body runs again from the
//! start with it cached. So every read reaches the database within the transaction, no runtime
//! thread is ever blocked (this works on any tokio runtime, current-thread too), and a body
//! that reads N keys costs N round trips, as reading them one by one would. The body's writes
//! stay in an overlay (its own reads see them) and go out in two statements before COMMIT.
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
use std::cell::Cell;
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
}

pub(super) async fn transact(store: &PgStore, body: &mut Body<'_>) -> Result<(), TransactError> {
    for attempt in 0..ATTEMPTS {
        match once(store, body).await {
            Ok(Attempt::Done) => return Ok(()),
            Ok(Attempt::Retry) => pause(attempt).await,
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
    )
}

/// `Retry` for a retryable database error, the error itself otherwise.
fn db<T>(r: Result<T, tokio_postgres::Error>) -> Result<Result<T, Attempt>, TransactError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) if retryable(&e) => Ok(Err(Attempt::Retry)),
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
    let mut client = store
        .pool
        .get()
        .await
        .map_err(|e| TransactError::Store(e.into()))?;
    let t = try_db!(
        client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await
    );
    let get = try_db!(t.prepare_cached(sql::GET).await);
    let mut cache: HashMap<Key, Option<Vec<u8>>> = HashMap::new();
    let writes = loop {
        let mut view = View {
            cache: &cache,
            writes: HashMap::new(),
            missing: Cell::new(None),
        };
        let r = body(&mut view);
        let View {
            writes, missing, ..
        } = view;
        // A miss decides the run whatever the body made of the conflict it was shown.
        if let Some((space, key)) = missing.into_inner() {
            let row = try_db!(t.query_opt(&get, &[&space.name(), &key]).await);
            cache.insert((space, key), row.map(|r| r.get(0)));
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
        try_db!(t.commit().await);
        return Ok(Attempt::Done);
    }
    let started = std::time::Instant::now();
    try_db!(sql::write_all(&t, writes.into_iter()).await);
    try_db!(t.commit().await);
    store.committed(started);
    Ok(Attempt::Done)
}

/// What a body sees: its own writes, then what was read from the transaction.
struct View<'a> {
    cache: &'a HashMap<Key, Option<Vec<u8>>>,
    writes: HashMap<Key, Option<Vec<u8>>>,
    /// The first key this run needed and the cache lacked (`get` has only `&self`).
    missing: Cell<Option<Key>>,
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
        if let Some(v) = self.writes.get(&k).or_else(|| self.cache.get(&k)) {
            return Ok(v.clone());
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
