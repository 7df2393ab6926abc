//! The embedded engine: sled, one tree per [`Space`], in the data directory.
//!
//! Architecture invariant: this module is the only place that names sled.
//!
//! Keys are the record ids' bytes (UUIDv7, so keys sort by creation time and double as stable
//! pagination cursors). A transaction is one sled transaction over every record tree and the
//! index tree.
//!
//! Durability: a transaction applies in memory; [`Store::flush`] makes it durable. Flushes are
//! group commits: one flusher thread runs `fsync` for every caller that asked while the
//! previous one ran, so N concurrent acknowledgements cost one or two fsyncs, not N. (It also
//! keeps `flush_async` off sled's small I/O pool, which deadlocks with eight or more concurrent
//! callers: spacejam/sled#1308.) sled flushes in the background every 200 ms as well.

mod flusher;

use crate::interface::{Body, BodyError, KeyRange, Space, StoreTx, TransactError, TxFault};
use crate::{KINDS, Result, SCHEMA_VERSION, Snapshot, Store, StoreError};
use flusher::Flusher;
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // sled's own text of an I/O error is Rust's debug form of it.
            sled::Error::Io(io) => StoreError::Engine(format!("I/O error: {io}")),
            e => StoreError::Engine(e.to_string()),
        }
    }
}

impl From<UnabortableTransactionError> for TxFault {
    fn from(e: UnabortableTransactionError) -> Self {
        match e {
            UnabortableTransactionError::Conflict => TxFault::Conflict,
            UnabortableTransactionError::Storage(e) => TxFault::Store(e.into()),
        }
    }
}

/// The sled database of one data directory.
pub(crate) struct SledStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: sled::Db,
    flusher: Arc<Flusher>,
    /// One tree per space, in [`Space::all`] order.
    trees: Vec<sled::Tree>,
    writes: AtomicU64,
    reads: AtomicU64,
    /// Writers hold it shared; a snapshot holds it exclusively so its copy is consistent.
    pause: std::sync::RwLock<()>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and runs migrations. One process may hold a
    /// directory at a time (sled takes a lock).
    pub(crate) fn open(dir: &Path) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(dir.join("store"))
            .flush_every_ms(Some(200))
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                // sled locks the directory: another process has it open (sled's error is an
                // `Other` whose text names the lock).
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().starts_with("could not acquire lock") =>
                {
                    StoreError::InUse(dir.display().to_string())
                }
                e => e.into(),
            })?;
        let trees = Space::all()
            .map(|s| db.open_tree(s.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let flusher = Arc::new(Flusher::default());
        let store = SledStore {
            inner: Arc::new(Inner {
                db,
                flusher: flusher.clone(),
                trees,
                writes: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                pause: std::sync::RwLock::new(()),
            }),
        };
        store.migrate()?;
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flusher.run(weak))
            .map_err(|e| StoreError::Engine(format!("cannot start the flusher thread: {e}")))?;
        Ok(store)
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.inner.trees[position(space)]
    }

    fn migrate(&self) -> Result<()> {
        let meta = self.tree(Space::Meta);
        let found = match meta.get("schema_version")? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("schema_version".into()))?,
            ),
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        crate::migrate(found)?;
        if found == 1 {
            self.count_sessions()?;
        }
        meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        meta.flush()?;
        Ok(())
    }

    /// Schema 1 → 2: the session counters (`counts.rs`), counted from the stored sessions
    /// while the store is opened (nothing else writes yet), before the new version is written.
    fn count_sessions(&self) -> Result<()> {
        let mut counts = std::collections::BTreeMap::new();
        for kv in self.tree(Space::Records(crate::Kind::Session)).iter() {
            let (k, v) = kv?;
            crate::counts::count_into(&mut counts, &k, &v)?;
        }
        let index = self.tree(Space::Index);
        let mut batch = sled::Batch::default();
        for kv in index.scan_prefix([crate::counts::COUNTER]) {
            batch.remove(kv?.0);
        }
        for (k, n) in counts {
            batch.insert(k, &n.to_be_bytes());
        }
        index.apply_batch(batch)?;
        index.flush()?;
        Ok(())
    }

    fn range_iter(&self, space: Space, range: &KeyRange) -> sled::Iter {
        self.tree(space)
            .range::<Vec<u8>, _>((range.start.clone(), range.end.clone()))
    }
}

/// A space's place in the tree list (and in a transaction's trees: records, then the index).
fn position(space: Space) -> usize {
    match space {
        Space::Records(k) => k as usize,
        Space::Index => KINDS.len(),
        Space::Meta => KINDS.len() + 1,
        Space::LastSeen => KINDS.len() + 2,
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn engine(&self) -> &'static str {
        "sled"
    }

    async fn read(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    async fn read_range(
        &self,
        space: Space,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let iter = self.range_iter(space, range);
        let entry = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        };
        if range.reverse {
            iter.rev().take(limit).map(entry).collect()
        } else {
            iter.take(limit).map(entry).collect()
        }
    }

    async fn count_range(&self, space: Space, range: &KeyRange) -> Result<u64> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        if range.start == std::ops::Bound::Unbounded && range.end == std::ops::Bound::Unbounded {
            return Ok(self.tree(space).len() as u64);
        }
        Ok(self.range_iter(space, range).keys().count() as u64)
    }

    async fn transact(&self, body: &mut Body<'_>) -> Result<(), TransactError> {
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let _shared = self.inner.pause.read().unwrap_or_else(|e| e.into_inner());
        let trees: Vec<&sled::Tree> = self.inner.trees[..=KINDS.len()].iter().collect();
        let body = std::sync::Mutex::new(body);
        let r = trees
            .as_slice()
            .transaction(|trees: &Vec<TransactionalTree>| {
                let mut body = body.lock().unwrap_or_else(|e| e.into_inner());
                match (*body)(&mut SledTx { trees }) {
                    Ok(()) => Ok(()),
                    Err(BodyError::Abort) => Err(ConflictableTransactionError::Abort(None)),
                    Err(BodyError::Fault(TxFault::Conflict)) => {
                        Err(ConflictableTransactionError::Conflict)
                    }
                    Err(BodyError::Fault(TxFault::Store(e))) => {
                        Err(ConflictableTransactionError::Abort(Some(e)))
                    }
                }
            });
        match r {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(None)) => Err(TransactError::Aborted),
            Err(TransactionError::Abort(Some(e))) => Err(TransactError::Store(e)),
            Err(TransactionError::Storage(e)) => Err(TransactError::Store(e.into())),
        }
    }

    async fn apply_batch(
        &self,
        space: Space,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let _shared = self.inner.pause.read().unwrap_or_else(|e| e.into_inner());
        self.tree(space).apply_batch(batch)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flusher.flush().await
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        // A copy of the whole store is long work: off the async workers.
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _exclusive = inner.pause.write().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            for space in Space::all() {
                let mut entries = Vec::new();
                for r in inner.trees[position(space)].iter() {
                    let (k, v) = r?;
                    entries.push((k.to_vec(), v.to_vec()));
                }
                out.push((space.name().to_string(), entries));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Engine(format!("the snapshot task failed: {e}")))?
    }

    fn op_counts(&self) -> (u64, u64) {
        (
            self.inner.writes.load(Ordering::Relaxed),
            self.inner.reads.load(Ordering::Relaxed),
        )
    }

    fn flush_counts(&self) -> (u64, f64) {
        self.inner.flusher.counts()
    }
}

/// A sled transaction over the record trees and the index.
struct SledTx<'a> {
    trees: &'a Vec<TransactionalTree>,
}

impl SledTx<'_> {
    fn tree(&self, space: Space) -> Result<&TransactionalTree, TxFault> {
        if !space.transactional() {
            return Err(TxFault::Store(StoreError::Engine(format!(
                "{} is not written in transactions",
                space.name()
            ))));
        }
        Ok(&self.trees[position(space)])
    }
}

impl StoreTx for SledTx<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault> {
        Ok(self.tree(space)?.get(key)?.map(|v| v.to_vec()))
    }

    fn insert(
        &mut self,
        space: Space,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, TxFault> {
        Ok(self.tree(space)?.insert(key, value)?.map(|v| v.to_vec()))
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault> {
        Ok(self.tree(space)?.remove(key)?.map(|v| v.to_vec()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.stop();
    }
}
