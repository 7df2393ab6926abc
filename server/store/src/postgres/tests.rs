//! The PostgreSQL engine against a real server, each test on a fresh database.

use super::scratch::ScratchDatabase;
use crate::interface::{BodyError, KeyRange, Space, TxFault};
use crate::{Db, IndexKey, Kind};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

async fn fresh() -> (ScratchDatabase, Db) {
    let db = ScratchDatabase::create().await.expect("a scratch database");
    let store = crate::open_postgres(db.url()).await.expect("open");
    (db, store)
}

/// On a current-thread runtime: transaction bodies read through and rerun.
#[tokio::test]
async fn the_postgres_engine_passes_the_conformance_check_and_restores() {
    let (_a, store) = fresh().await;
    assert_eq!(store.engine(), "postgres");
    crate::conformance::check(store.clone()).await;
    let (_b, empty) = fresh().await;
    crate::conformance::check_restore(store, empty).await;
}

/// On a multi-thread runtime: transaction bodies read directly (`block_in_place`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_engine_passes_the_conformance_check_on_a_multi_thread_runtime() {
    let (_a, store) = fresh().await;
    crate::conformance::check(store).await;
}

#[tokio::test]
async fn a_schema_1_database_gets_its_sessions_counted_when_opened() {
    let db = ScratchDatabase::create().await.unwrap();
    let store = crate::open_postgres(db.url()).await.unwrap();
    crate::conformance::as_schema_1(&store).await;
    drop(store);
    let again = crate::open_postgres(db.url()).await.unwrap();
    crate::conformance::check_upgraded(&again).await;
}

#[tokio::test]
async fn a_sled_snapshot_restores_into_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let sled = crate::open_embedded(dir.path()).unwrap();
    crate::conformance::check(sled.clone()).await;
    let (_db, pg) = fresh().await;
    crate::conformance::check_restore(sled, pg).await;
}

const COUNTER: Space = Space::Records(Kind::Tenant);

/// Reads the counter, adds one, writes it: a lost update if two writers commit from one read.
async fn increment(store: &Db, runs: &AtomicU64) {
    let mut body = |tx: &mut dyn crate::StoreTx| -> Result<(), BodyError> {
        runs.fetch_add(1, Ordering::Relaxed);
        let n = match tx.get(COUNTER, b"counter")? {
            Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| BodyError::Abort)?),
            None => 0,
        };
        tx.insert(COUNTER, b"counter", &(n + 1).to_be_bytes())?;
        Ok(())
    };
    store
        .transact(&mut body)
        .await
        .expect("the increment commits");
}

/// Two writers increment one key N times each: every increment lands (conflicts rerun).
/// Returns how many times the bodies ran.
async fn two_writers_increment(n: u64) -> u64 {
    let (_db, store) = fresh().await;
    let runs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (store, runs) = (store.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                increment(&store, &runs).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = store.read(COUNTER, b"counter").await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(v.try_into().unwrap()), 2 * n);
    runs.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_of_one_key_lose_nothing() {
    assert!(two_writers_increment(100).await >= 200);
}

#[tokio::test]
async fn concurrent_increments_lose_nothing_on_a_current_thread_runtime_too() {
    // Each increment runs at least twice there (once to miss the key, once with it read).
    assert!(two_writers_increment(50).await >= 200);
}

/// A unique value claimed by eight writers at once (each reads a key that does not exist yet)
/// goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_unique_value_have_one_winner() {
    let (_db, store) = fresh().await;
    let idx = IndexKey::new(crate::records::USER_EMAIL, "same@example.com");
    let mut tasks = Vec::new();
    for i in 0u8..8 {
        let (store, idx) = (store.clone(), idx.clone());
        tasks.push(tokio::spawn(async move {
            store
                .write(|tx| tx.claim_unique::<()>(&idx, &[i]))
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn ranges_order_keys_as_memcmp() {
    let (_db, store) = fresh().await;
    let space = Space::Records(Kind::Event);
    let mut keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xff],
        vec![0x01],
        vec![0x7f, 0xff],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff, 0xff],
    ];
    let batch = keys.iter().rev().map(|k| (k.clone(), Some(k.clone())));
    store.apply_batch(space, batch.collect()).await.unwrap();
    keys.sort();
    let read = |r: Vec<(Vec<u8>, Vec<u8>)>| r.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let all = read(
        store
            .read_range(space, &KeyRange::all(), 100)
            .await
            .unwrap(),
    );
    assert_eq!(all, keys, "forwards in memcmp order");
    let back = read(
        store
            .read_range(space, &KeyRange::all().rev(), 3)
            .await
            .unwrap(),
    );
    assert_eq!(
        back,
        vec![keys[9].clone(), keys[8].clone(), keys[7].clone()]
    );
    let ff = KeyRange::prefix(&[0xff]);
    assert_eq!(ff.end, Bound::Unbounded);
    let high = read(store.read_range(space, &ff, 100).await.unwrap());
    assert_eq!(high, keys[7..].to_vec(), "a 0xff prefix runs to the end");
    let zero = KeyRange::prefix(&[0x00]).past(&[0x00, 0x00]);
    let z = read(store.read_range(space, &zero, 100).await.unwrap());
    assert_eq!(z, vec![vec![0x00, 0xff]]);
    assert_eq!(store.count_range(space, &zero).await.unwrap(), 1);
    assert_eq!(
        store.count_range(space, &KeyRange::all()).await.unwrap(),
        10
    );
    let inclusive = KeyRange {
        start: Bound::Included(vec![0x00, 0xff]),
        end: Bound::Included(vec![0x80]),
        reverse: true,
    };
    let mid = read(store.read_range(space, &inclusive, 100).await.unwrap());
    assert_eq!(
        mid,
        vec![vec![0x80], vec![0x7f, 0xff], vec![0x01], vec![0x00, 0xff]]
    );
}

#[tokio::test]
async fn a_reopened_database_keeps_its_data_and_applies_no_migration_twice() {
    let db = ScratchDatabase::create().await.unwrap();
    let store = crate::open_postgres(db.url()).await.unwrap();
    let mut body = |tx: &mut dyn crate::StoreTx| -> Result<(), BodyError> {
        tx.insert(COUNTER, b"kept", b"value")?;
        Ok(())
    };
    store.transact(&mut body).await.unwrap();
    store.flush().await.unwrap();
    let (writes, _) = store.op_counts();
    assert_eq!(writes, 1);
    assert_eq!(store.flush_counts().0, 1, "one commit");
    drop(store);
    let again = super::PgStore::open(db.url()).await.unwrap();
    let mut client = again.pool.get().await.unwrap();
    assert_eq!(
        super::migrate::run(&mut client).await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );
    let rows: i64 = client
        .query_one("SELECT count(*) FROM upkeep_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    drop(client);
    let again: Db = Arc::new(again);
    assert_eq!(
        again.read(COUNTER, b"kept").await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
}

#[tokio::test]
async fn a_database_of_a_newer_store_schema_is_refused() {
    let (db, store) = fresh().await;
    let v = (crate::SCHEMA_VERSION + 1).to_be_bytes().to_vec();
    store
        .apply_batch(Space::Meta, vec![(b"schema_version".to_vec(), Some(v))])
        .await
        .unwrap();
    drop(store);
    let err = crate::open_postgres(db.url()).await.err().expect("refused");
    assert!(matches!(err, crate::StoreError::TooNew { .. }), "{err}");
}

#[tokio::test]
async fn a_body_that_aborts_or_writes_outside_transactions_changes_nothing() {
    let (_db, store) = fresh().await;
    let mut meta = |tx: &mut dyn crate::StoreTx| -> Result<(), BodyError> {
        tx.insert(Space::Meta, b"x", b"y")?;
        Ok(())
    };
    assert!(matches!(
        store.transact(&mut meta).await,
        Err(crate::TransactError::Store(_))
    ));
    let mut abort = |tx: &mut dyn crate::StoreTx| -> Result<(), BodyError> {
        tx.insert(COUNTER, b"a", b"b")?;
        Err(BodyError::Fault(TxFault::Store(crate::StoreError::Engine(
            "no".into(),
        ))))
    };
    assert!(store.transact(&mut abort).await.is_err());
    assert_eq!(store.read(COUNTER, b"a").await.unwrap(), None);
    assert_eq!(store.read(Space::Meta, b"x").await.unwrap(), None);
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_is_a_clear_error() {
    let err = crate::open_postgres("mysql://nope").await.err().unwrap();
    assert!(err.to_string().contains("not a PostgreSQL URL"), "{err}");
    let err = crate::open_postgres("postgres://postgres@127.0.0.1:1/x")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}

/// Replicas starting together on a fresh database: the advisory lock lets one apply each
/// migration and the others find it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_a_fresh_database_at_once_migrate_it_once() {
    let db = ScratchDatabase::create().await.unwrap();
    let url = db.url().to_string();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { super::PgStore::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every replica opens"));
    }
    let client = stores[0].pool.get().await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM upkeep_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

/// Claims from two stores on one database at once: one value wins, and both see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_key_agree_on_the_first() {
    let (db, a) = fresh().await;
    let b = crate::open_postgres(db.url()).await.expect("open");
    for round in 0..20u8 {
        let key = [b'k', round];
        let (x, y) = tokio::join!(
            a.claim(Space::Meta, &key, vec![1, round]),
            b.claim(Space::Meta, &key, vec![2, round])
        );
        let (x, y) = (x.expect("claim a"), y.expect("claim b"));
        assert_eq!(x, y, "round {round}");
        assert!(x == vec![1, round] || x == vec![2, round]);
        // A later claim changes nothing.
        let again = a.claim(Space::Meta, &key, vec![3]).await.expect("claim");
        assert_eq!(again, x);
    }
}

/// Cuts every connection of the store's database, as a PostgreSQL restart does (SQLSTATE
/// 57P01 to each backend), from a separate admin connection.
async fn cut_connections(store: &super::PgStore) -> u64 {
    let client = store.pool.get().await.unwrap();
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let admin = super::scratch::admin(&super::scratch::admin_url())
        .await
        .unwrap();
    let rows = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    rows.len() as u64
}

/// Reads, batches, claims and transactions after every pooled connection was cut go through on
/// fresh connections (before the fix, each failed once per dead pooled connection with
/// "connection closed" or "terminating connection due to administrator command").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ride_out_connections_cut_under_them() {
    let db = ScratchDatabase::create().await.unwrap();
    let store = Arc::new(super::PgStore::open(db.url()).await.unwrap());
    let dyn_store: Db = store.clone();
    let runs = AtomicU64::new(0);
    // Fill the pool with several open connections, then cut them all.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let s = dyn_store.clone();
            tokio::spawn(async move { s.read(Space::Meta, b"schema_version").await })
        })
        .collect();
    for w in warm {
        w.await.unwrap().expect("read");
    }
    for round in 0..3 {
        assert!(cut_connections(&store).await > 0, "round {round}");
        dyn_store
            .read(Space::Meta, b"schema_version")
            .await
            .expect("a read after the cut");
        increment(&dyn_store, &runs).await;
        dyn_store
            .apply_batch(Space::Meta, vec![(b"k".to_vec(), Some(vec![round]))])
            .await
            .expect("a batch after the cut");
        dyn_store
            .claim(Space::Meta, &[b'c', round], vec![round])
            .await
            .expect("a claim after the cut");
    }
    let n = dyn_store.read(COUNTER, b"counter").await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), 3);
}

/// What a killed run left behind (a scratch database named two hours ago) is dropped by the
/// sweep; a database made now, and one of the older naming without a time, are kept.
#[tokio::test]
async fn the_sweep_drops_scratch_databases_older_than_its_age_only() {
    let admin = super::scratch::admin(&super::scratch::admin_url())
        .await
        .expect("admin");
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        - 7200;
    let tag = std::process::id();
    let old = format!("upkeep_t_{two_hours_ago}_{tag:016x}");
    let untimed = format!("upkeep_t_{tag:016x}dead");
    for name in [&old, &untimed] {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create");
    }
    let (young, _store) = fresh().await;
    let dropped = super::scratch::sweep_leftovers(std::time::Duration::from_secs(3600))
        .await
        .expect("sweep");
    assert!(dropped >= 1, "{dropped}");
    let exists = |name: String| {
        let admin = &admin;
        async move {
            admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .expect("query")
                .is_some()
        }
    };
    assert!(!exists(old.clone()).await, "{old} is still there");
    assert!(exists(untimed.clone()).await, "{untimed} was dropped");
    let young_name = young.url().rsplit('/').next().expect("name").to_string();
    assert!(exists(young_name).await, "the young database was dropped");
    admin
        .batch_execute(&format!("DROP DATABASE {untimed}"))
        .await
        .expect("drop");
}

/// Issue 19's "two replicas never apply two steps of one session at once", on the engine: two
/// writers plan a step from one stored revision of a session and both read it before either
/// writes. Each checks in its transaction that the stored revision is still the planned one
/// (as `runtime::shared::Guard` does) and stores the next. SERIALIZABLE fails one of the two
/// overlapping transactions; it runs again, finds the winner's revision and gives up: exactly
/// one step is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_steps_planned_from_one_revision_store_only_one() {
    use crate::tx::{TxError, WriteError};
    use std::sync::atomic::AtomicBool;
    use upkeep_core::domain::Id;
    use upkeep_core::session::Session;
    let (_db, store) = fresh().await;
    let id = Id::from_u128(7);
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let s = Session::for_tests(id, Id::from_u128(8), at);
    store
        .write(|tx| tx.put::<_, ()>(&s))
        .await
        .unwrap_or_else(|_| panic!("the session is stored"));
    let both_read = Arc::new(std::sync::Barrier::new(2));
    let mut writers = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let (store, both_read) = (store.clone(), both_read.clone());
        writers.push(tokio::spawn(async move {
            let planned = store.get::<Session>(&id).await.unwrap().unwrap();
            let (runs, waited) = (AtomicU64::new(0), AtomicBool::new(false));
            let r = store
                .write(|tx| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    let stored: Session = tx.get(&id)?.ok_or(TxError::Abort(u64::MAX))?;
                    if stored.revision != planned.revision {
                        return Err(TxError::Abort(stored.revision));
                    }
                    if !waited.swap(true, Ordering::Relaxed) {
                        tokio::task::block_in_place(|| both_read.wait());
                    }
                    let mut next = planned.clone();
                    next.revision += 1;
                    next.created_by = name.to_string();
                    tx.put(&next)?;
                    Ok(())
                })
                .await;
            (name, r, runs.load(Ordering::Relaxed))
        }));
    }
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for w in writers {
        let (name, r, runs) = w.await.unwrap();
        match r {
            Ok(()) => won.push(name),
            Err(WriteError::Abort(found)) => lost.push((name, found, runs)),
            Err(WriteError::Store(e)) => panic!("{name}: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one step is stored: {won:?} {lost:?}");
    assert_eq!(lost.len(), 1);
    let (_, found, runs) = lost[0];
    assert_eq!(found, 1, "the loser found the winner's revision");
    assert!(
        runs >= 2,
        "the loser's transaction failed and ran again ({runs})"
    );
    let stored = store.get::<Session>(&id).await.unwrap().unwrap();
    assert_eq!(stored.revision, 1);
    assert_eq!(stored.created_by, won[0]);
}

/// Every connection of the pool bounds its waits: a session idle inside a transaction is ended
/// by the server after a minute, a lock is waited for at most 30 s; options the URL gives are
/// kept.
#[tokio::test]
async fn every_connection_bounds_idle_transactions_and_lock_waits() {
    let db = ScratchDatabase::create().await.expect("a scratch database");
    let url = format!("{}?options=-c%20application_name%3Dupkeep-test", db.url());
    let store = super::PgStore::open(&url).await.expect("open");
    let client = store.pool.get().await.expect("a connection");
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect("show");
            row.get::<_, String>(0)
        }
    };
    assert_eq!(show("idle_in_transaction_session_timeout").await, "1min");
    assert_eq!(show("lock_timeout").await, "30s");
    assert_eq!(show("application_name").await, "upkeep-test");
}

/// Two writers joined in one `block_on` future (a test's body; the start of `serve`), not in
/// spawned tasks, write one key; one of them reads many keys first. Reading inside the body
/// with a nested `block_on` used to eat the wake-up of the other writer's finished write: it
/// never committed, and the reader waited on its row lock for good. Every pair must finish
/// (the race is narrow, so many pairs run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_joined_outside_a_task_both_finish() {
    use upkeep_core::domain::Id;
    use upkeep_core::session::Session;
    let (_db, store) = fresh().await;
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let write = |id: Id, reads: u128| {
        let store = store.clone();
        async move {
            store
                .write(|tx| {
                    for n in 0..reads {
                        let _: Option<Session> = tx.get(&Id::from_u128(100_000 + n))?;
                    }
                    tx.put(&Session::for_tests(id, Id::from_u128(1), at))?;
                    Ok::<_, crate::tx::TxError<()>>(())
                })
                .await
                .is_ok()
        }
    };
    let pairs = async {
        for i in 0..200u128 {
            let id = Id::from_u128(10 + i);
            let (a, b) = tokio::join!(write(id, 1), write(id, 40));
            assert!(a && b, "pair {i}: {a} {b}");
        }
    };
    tokio::select! {
        biased;
        _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
            panic!("joined writers hung on each other")
        }
        () = pairs => {}
    }
}
