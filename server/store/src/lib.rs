//! The store: the only module that opens sled.
//!
//! Layout: one sled tree per record kind (`Kind`), keyed by the record's id bytes (UUIDv7, so
//! keys sort by creation time and double as stable pagination cursors), plus one shared `index`
//! tree of secondary-index entries. Values are `[FORMAT_VERSION] ++ JSON`.
//!
//! Every write goes through [`Store::write`], one sled transaction over all trees: a record and
//! its index entries change together or not at all, and so do several records changed by one
//! step (a session, its events and its jobs). The closure may run more than once (sled
//! transactions are optimistic), so it must not do I/O.
//!
//! Durability: [`Store::write`] applies in memory; callers that acknowledge something to the
//! outside (a mutation answer, an agent's result ack, a mail queued) await [`Store::flush`]
//! first. Flushes are group commits: one flusher thread runs `fsync` for every caller that
//! asked while the previous one ran, so N concurrent acknowledgements cost one or two fsyncs,
//! not N. (It also keeps `flush_async` off sled's small I/O pool, which deadlocks with eight
//! or more concurrent callers: spacejam/sled#1308.) sled flushes in the background every
//! 200 ms as well.

mod audit_diff;
mod codec;
mod index;

pub use codec::FORMAT_VERSION;
pub use index::IndexKey;

use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use upkeep_core::domain::Id;

/// The store's schema version. Bump it and add a step to [`migrate`] when a stored shape
/// changes incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the data directory was written by a newer Upkeep (store schema {found}, this build knows {known})"
    )]
    TooNew { found: u64, known: u64 },
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Kinds of records, one sled tree each. The discriminant is stable: it names the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    User = 0,
    Tenant,
    Person,
    Computer,
    Software,
    Task,
    Deployment,
    Schedule,
    EnrollmentKey,
    Session,
    Event,
    Job,
    Mail,
    ApiKey,
    Webhook,
    Delivery,
    Idempotency,
    Audit,
    Output,
}

const KINDS: [Kind; 19] = [
    Kind::User,
    Kind::Tenant,
    Kind::Person,
    Kind::Computer,
    Kind::Software,
    Kind::Task,
    Kind::Deployment,
    Kind::Schedule,
    Kind::EnrollmentKey,
    Kind::Session,
    Kind::Event,
    Kind::Job,
    Kind::Mail,
    Kind::ApiKey,
    Kind::Webhook,
    Kind::Delivery,
    Kind::Idempotency,
    Kind::Audit,
    Kind::Output,
];

impl Kind {
    /// How audit records name a record of this kind.
    pub fn target_name(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Tenant => "Tenant",
            Kind::Person => "Person",
            Kind::Computer => "Computer",
            Kind::Software => "Software",
            Kind::Task => "MaintenanceTask",
            Kind::Deployment => "Deployment",
            Kind::Schedule => "Schedule",
            Kind::EnrollmentKey => "EnrollmentKey",
            Kind::Session => "MaintenanceSession",
            Kind::Event => "MaintenanceSessionEvent",
            Kind::Job => "Job",
            Kind::Mail => "Mail",
            Kind::ApiKey => "ApiKey",
            Kind::Webhook => "Webhook",
            Kind::Delivery => "WebhookDelivery",
            Kind::Idempotency => "Idempotency",
            Kind::Audit => "AuditEvent",
            Kind::Output => "ActionOutput",
        }
    }

    fn tree_name(self) -> &'static str {
        match self {
            Kind::User => "users",
            Kind::Tenant => "tenants",
            Kind::Person => "persons",
            Kind::Computer => "computers",
            Kind::Software => "software",
            Kind::Task => "tasks",
            Kind::Deployment => "deployments",
            Kind::Schedule => "schedules",
            Kind::EnrollmentKey => "enrollment_keys",
            Kind::Session => "sessions",
            Kind::Event => "session_events",
            Kind::Job => "jobs",
            Kind::Mail => "outbox",
            Kind::ApiKey => "api_keys",
            Kind::Webhook => "webhooks",
            Kind::Delivery => "webhook_deliveries",
            Kind::Idempotency => "idempotency",
            Kind::Audit => "audit",
            Kind::Output => "action_outputs",
        }
    }
}

/// A record type the store can keep.
pub trait Record: Serialize + DeserializeOwned {
    const KIND: Kind;
    /// The primary key (usually the id's 16 bytes).
    fn key(&self) -> Vec<u8>;
    /// Secondary-index entries this record should have. The store keeps them in step with the
    /// record on every put and delete.
    fn index_keys(&self) -> Vec<IndexKey> {
        Vec::new()
    }
    /// The index entries of a stored value (the one a put replaces or a delete removes). The
    /// default decodes the whole record; large records read just the indexed fields instead.
    fn stored_index_keys(bytes: &[u8]) -> Result<Vec<IndexKey>>
    where
        Self: Sized,
    {
        Ok(codec::decode::<Self>(bytes)?.index_keys())
    }
}

/// The one handle to the sled database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    flusher: Arc<Flusher>,
    trees: Vec<sled::Tree>,
    index: sled::Tree,
    meta: sled::Tree,
    /// Computer id → when its agent last polled (i64 milliseconds, big-endian). Written in
    /// batches by the presence loop; kept apart from the computer records so that a write-back
    /// for a whole fleet does not rewrite (and cache again) every computer record.
    last_seen: sled::Tree,
    writes: AtomicU64,
    reads: AtomicU64,
    /// Writers hold it shared; a backup holds it exclusively so its copy is consistent.
    pause: std::sync::RwLock<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, runs migrations and returns the handle. One
    /// process may hold a directory at a time (sled takes a lock).
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir.join("store"))
            .flush_every_ms(Some(200))
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        let trees = KINDS
            .iter()
            .map(|k| db.open_tree(k.tree_name()))
            .collect::<Result<Vec<_>, _>>()?;
        let index = db.open_tree("index")?;
        let meta = db.open_tree("meta")?;
        let last_seen = db.open_tree("last_seen")?;
        let flusher = Arc::new(Flusher {
            state: std::sync::Mutex::new(FlushState::default()),
            wake: std::sync::Condvar::new(),
            done: tokio::sync::watch::Sender::new((0, None)),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        });
        let store = Store {
            inner: Arc::new(Inner {
                db,
                flusher: flusher.clone(),
                trees,
                index,
                meta,
                last_seen,
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
            .map_err(|e| StoreError::Corrupt(format!("cannot start the flusher thread: {e}")))?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let found = match self.inner.meta.get("schema_version")? {
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
        migrate(self, found)?;
        self.inner
            .meta
            .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        self.inner.meta.flush()?;
        Ok(())
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        &self.inner.trees[kind as usize]
    }

    /// Group-commit flushes made since start and the seconds they took.
    pub fn flush_counts(&self) -> (u64, f64) {
        let f = &self.inner.flusher;
        (
            f.count.load(Ordering::Relaxed),
            f.micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// Number of store writes and reads since start (for `/metrics`, and for the test that
    /// shows agent polls never touch the store).
    pub fn op_counts(&self) -> (u64, u64) {
        (
            self.inner.writes.load(Ordering::Relaxed),
            self.inner.reads.load(Ordering::Relaxed),
        )
    }

    pub fn get<T: Record>(&self, id: &Id) -> Result<Option<T>> {
        self.get_by_key(id.as_bytes())
    }

    pub fn get_by_key<T: Record>(&self, key: &[u8]) -> Result<Option<T>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        match self.tree(T::KIND).get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every record of a kind, in key order, starting strictly after `after`.
    pub fn scan<'s, T: Record>(
        &'s self,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<T>> + use<'s, T> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let tree = self.tree(T::KIND);
        let iter = match after {
            Some(a) => {
                tree.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        iter.map(|r| {
            let (_, v) = r?;
            codec::decode(&v)
        })
    }

    /// Records of a kind whose key starts with `prefix`, in key order, starting strictly after
    /// `after` (a full key).
    pub fn scan_prefix<'s, T: Record>(
        &'s self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<T>> + use<'s, T> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let tree = self.tree(T::KIND);
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        let prefix = prefix.to_vec();
        tree.range((start, std::ops::Bound::Unbounded))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .map(|r| {
                let (_, v) = r?;
                codec::decode(&v)
            })
    }

    pub fn count<T: Record>(&self) -> usize {
        self.tree(T::KIND).len()
    }

    /// Primary keys listed under an index value, in key order, strictly after `after`.
    pub fn index_scan<'s>(
        &'s self,
        index: &IndexKey,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Vec<u8>>> + use<'s> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let prefix = index.prefix();
        let start = match after {
            Some(a) => {
                let mut k = prefix.clone();
                k.extend_from_slice(a);
                std::ops::Bound::Excluded(k)
            }
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let plen = prefix.len();
        self.inner
            .index
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .map(move |r| Ok(r?.0[plen..].to_vec()))
    }

    /// Records listed under an index value, in key order, strictly after `after`.
    pub fn by_index<'s, T: Record>(
        &'s self,
        index: &IndexKey,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<T>> + use<'s, T> {
        self.index_scan(index, after).filter_map(move |k| match k {
            Ok(k) => self.get_by_key::<T>(&k).transpose(),
            Err(e) => Some(Err(e)),
        })
    }

    /// Primary keys under an index value, newest (highest key) first, strictly before `before`.
    pub fn index_scan_rev<'s>(
        &'s self,
        index: &IndexKey,
        before: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Vec<u8>>> + use<'s> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let prefix = index.prefix();
        let plen = prefix.len();
        let end = match before {
            Some(b) => {
                let mut k = prefix.clone();
                k.extend_from_slice(b);
                std::ops::Bound::Excluded(k)
            }
            None => {
                let mut k = prefix.clone();
                k.extend_from_slice(&[0xff; 17]);
                std::ops::Bound::Excluded(k)
            }
        };
        self.inner
            .index
            .range((std::ops::Bound::Included(prefix.clone()), end))
            .rev()
            .map(move |r| Ok(r?.0[plen..].to_vec()))
    }

    /// Every record of a kind, newest first, strictly before `before`.
    pub fn scan_rev<'s, T: Record>(
        &'s self,
        before: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<T>> + use<'s, T> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let tree = self.tree(T::KIND);
        let iter = match before {
            Some(b) => tree.range::<&[u8], _>(..b),
            None => tree.iter(),
        };
        iter.rev().map(|r| {
            let (_, v) = r?;
            codec::decode(&v)
        })
    }

    pub fn index_count(&self, index: &IndexKey) -> usize {
        self.inner.index.scan_prefix(index.prefix()).count()
    }

    /// The record that claimed a unique index value (see [`Tx::claim_unique`]).
    pub fn unique<T: Record>(&self, index: &IndexKey) -> Result<Option<T>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        match self.inner.index.get(index.unique_marker())? {
            Some(k) => self.get_by_key(&k),
            None => Ok(None),
        }
    }

    /// Runs `f` as one atomic transaction over every tree. `f` may run several times; it must
    /// not do I/O. Returns what `f` returns, or its abort error.
    ///
    /// Inside [`Store::audited`], the waiting audit record is completed from the first record
    /// `f` puts or deletes and written in the same transaction.
    pub fn write<A, E>(
        &self,
        f: impl Fn(&mut Tx<'_>) -> Result<A, TxError<E>>,
    ) -> Result<A, WriteError<E>> {
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let _shared = self.inner.pause.read().unwrap_or_else(|e| e.into_inner());
        let pending = PENDING_AUDIT
            .try_with(|p| p.borrow_mut().take())
            .ok()
            .flatten();
        let consumed = std::cell::Cell::new(false);
        let mut all: Vec<&sled::Tree> = self.inner.trees.iter().collect();
        all.push(&self.inner.index);
        let r = all
            .as_slice()
            .transaction(|trees: &Vec<TransactionalTree>| {
                let mut tx = Tx {
                    trees,
                    first: None,
                    auditing: pending.is_some(),
                };
                let run = |tx: &mut Tx<'_>| {
                    let a = f(tx)?;
                    consumed.set(false);
                    if let (Some(ev), Some(change)) = (&pending, tx.first.take()) {
                        tx.put(&complete_audit(ev.clone(), &change))?;
                        consumed.set(true);
                    }
                    Ok(a)
                };
                run(&mut tx).map_err(|e| match e {
                    TxError::Abort(e) => ConflictableTransactionError::Abort(WriteError::Abort(e)),
                    TxError::Store(StoreError::Sled(e)) => ConflictableTransactionError::Storage(e),
                    TxError::Store(e) => ConflictableTransactionError::Abort(WriteError::Store(e)),
                    TxError::Conflict => ConflictableTransactionError::Conflict,
                })
            });
        if r.is_err() || !consumed.get() {
            // Nothing was changed: the record waits for the mutation's next write, if any.
            let _ = PENDING_AUDIT.try_with(|p| *p.borrow_mut() = pending);
        }
        match r {
            Ok(a) => Ok(a),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(WriteError::Store(StoreError::Sled(e))),
        }
    }

    /// Runs `f` with `event` waiting for the first change `f` makes through any store write in
    /// this task: that write carries the event, completed with the changed record's kind, id,
    /// tenant and a diff (unless the event already says them). Work that `f` hands to other
    /// tasks is not covered; a change made there is not audited by this event.
    pub async fn audited<F: std::future::Future>(
        event: upkeep_core::audit::AuditEvent,
        f: F,
    ) -> F::Output {
        PENDING_AUDIT
            .scope(std::cell::RefCell::new(Some(event)), f)
            .await
    }

    /// Makes everything written so far durable (a group commit: see the module docs).
    pub async fn flush(&self) -> Result<()> {
        let f = &self.inner.flusher;
        let mut done = f.done.subscribe();
        let mine = {
            let mut st = f.state.lock().unwrap_or_else(|e| e.into_inner());
            st.requested += 1;
            st.requested
        };
        f.wake.notify_one();
        let outcome = done
            .wait_for(|(generation, _)| *generation >= mine)
            .await
            .map_err(|_| StoreError::Corrupt("the store was closed during a flush".into()))?;
        match &outcome.1 {
            None => Ok(()),
            Some(e) => Err(StoreError::Corrupt(format!("flush failed: {e}"))),
        }
    }

    pub fn flush_blocking(&self) -> Result<()> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Records when agents last polled, in one batch (not a transaction over the record
    /// trees: a lost write-back only makes `lastSeenAt` older).
    pub fn put_last_seen(&self, seen: &[(Id, upkeep_core::domain::Time)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, t) in seen {
            batch.insert(
                id.as_bytes().as_slice(),
                t.timestamp_millis().to_be_bytes().as_slice(),
            );
        }
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let _shared = self.inner.pause.read().unwrap_or_else(|e| e.into_inner());
        self.inner.last_seen.apply_batch(batch)?;
        Ok(())
    }

    /// When the agent of `computer` last polled, as last written back.
    pub fn last_seen(&self, computer: &Id) -> Result<Option<upkeep_core::domain::Time>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .inner
            .last_seen
            .get(computer.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .and_then(|b| chrono::DateTime::from_timestamp_millis(i64::from_be_bytes(b))))
    }

    /// Small named values (secrets' presence, scheduler cursors).
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.inner.meta.insert(key, value)?;
        Ok(())
    }

    /// Checks every index entry points at a record that lists it, and every record's index
    /// entries exist. Returns a description of each problem found.
    pub fn check_indexes(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        for kind in KINDS {
            for r in self.tree(kind).iter() {
                let (k, v) = r?;
                match index::entries_of(kind, &k, &v) {
                    Ok(entries) => expected.extend(entries),
                    Err(e) => problems.push(format!(
                        "{}: record {}: {e}",
                        kind.tree_name(),
                        hex::encode(&k)
                    )),
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in self.inner.index.iter() {
            let (k, _) = r?;
            if k.first() == Some(&1) {
                continue; // unique markers are checked by their owners' lookups
            }
            if !expected.contains(k.as_ref()) {
                problems.push(format!(
                    "index entry {} points at no record that lists it",
                    hex::encode(&k)
                ));
            }
            seen.insert(k.to_vec());
        }
        for e in expected.difference(&seen) {
            problems.push(format!("index entry {} is missing", hex::encode(e)));
        }
        Ok(problems)
    }
}

/// Every tree's name and `(key, value)` pairs.
pub type Snapshot = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

impl Store {
    /// Every tree's name and contents, while writers are held off: a consistent snapshot for
    /// backups (`backup.rs`). Returns `(tree name, [(key, value)])` in a stable order.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let _exclusive = self.inner.pause.write().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut trees: Vec<(&str, &sled::Tree)> = KINDS
            .iter()
            .map(|k| (k.tree_name(), self.tree(*k)))
            .collect();
        trees.push(("index", &self.inner.index));
        trees.push(("meta", &self.inner.meta));
        trees.push(("last_seen", &self.inner.last_seen));
        for (name, tree) in trees {
            let mut entries = Vec::new();
            for r in tree.iter() {
                let (k, v) = r?;
                entries.push((k.to_vec(), v.to_vec()));
            }
            out.push((name.to_string(), entries));
        }
        Ok(out)
    }

    /// True when nothing but the schema version is stored (restore refuses to overwrite data).
    pub fn is_empty(&self) -> bool {
        KINDS.iter().all(|k| self.tree(*k).is_empty()) && self.inner.index.is_empty()
    }

    /// Loads a snapshot into this (empty) store.
    pub fn load_snapshot(&self, trees: &Snapshot) -> Result<()> {
        for (name, entries) in trees {
            let tree = if name == "index" {
                self.inner.index.clone()
            } else if name == "meta" {
                self.inner.meta.clone()
            } else if name == "last_seen" {
                self.inner.last_seen.clone()
            } else if let Some(k) = KINDS.iter().find(|k| k.tree_name() == name) {
                self.tree(*k).clone()
            } else {
                return Err(StoreError::Corrupt(format!(
                    "backup has an unknown tree {name}"
                )));
            };
            let mut batch = sled::Batch::default();
            for (k, v) in entries {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        self.inner.db.flush()?;
        Ok(())
    }
}

/// Errors a transaction closure returns: its own abort value, a store error, or a request to
/// retry.
pub enum TxError<E> {
    Abort(E),
    Store(StoreError),
    Conflict,
}

impl<E> From<StoreError> for TxError<E> {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl<E> From<sled::transaction::UnabortableTransactionError> for TxError<E> {
    fn from(e: sled::transaction::UnabortableTransactionError) -> Self {
        match e {
            sled::transaction::UnabortableTransactionError::Conflict => TxError::Conflict,
            sled::transaction::UnabortableTransactionError::Storage(e) => {
                TxError::Store(StoreError::Sled(e))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    #[error("{0}")]
    Abort(E),
    #[error(transparent)]
    Store(StoreError),
}

/// A record encoded ahead of a transaction. sled 0.34 runs a transaction's closure under its
/// process-wide write lock, so work done inside it (JSON encoding of a 7–14 KB session) holds
/// up every other writer; encode first, then put the bytes.
pub struct Encoded<T> {
    key: Vec<u8>,
    bytes: Vec<u8>,
    entries: Vec<Vec<u8>>,
    _kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: Record> Encoded<T> {
    pub fn new(record: &T) -> Result<Encoded<T>> {
        let key = record.key();
        let entries = record.index_keys().iter().map(|i| i.entry(&key)).collect();
        Ok(Encoded {
            bytes: codec::encode(record)?,
            key,
            entries,
            _kind: std::marker::PhantomData,
        })
    }
}

/// The group-commit flusher shared by a store and its thread.
struct Flusher {
    state: std::sync::Mutex<FlushState>,
    wake: std::sync::Condvar,
    /// (highest request generation made durable, error of the last flush if it failed).
    done: tokio::sync::watch::Sender<(u64, Option<String>)>,
    /// fsyncs made, and the time they took in microseconds (for `/metrics`).
    count: AtomicU64,
    micros: AtomicU64,
}

#[derive(Default)]
struct FlushState {
    /// Generation of the newest flush request; every write before it must be made durable.
    requested: u64,
    stop: bool,
}

impl Flusher {
    /// The flusher thread: waits for requests, then makes every write made before the newest
    /// one durable with one `fsync`. Ends when the store is dropped.
    fn run(&self, store: std::sync::Weak<Inner>) {
        let mut flushed = 0;
        loop {
            let target = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while st.requested <= flushed && !st.stop {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop {
                    return;
                }
                st.requested
            };
            // Every request up to `target` was made after its writes, so this flush covers them.
            let Some(inner) = store.upgrade() else { return };
            let t0 = std::time::Instant::now();
            let r = inner.db.flush();
            drop(inner);
            self.count.fetch_add(1, Ordering::Relaxed);
            self.micros
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            flushed = target;
            if let Err(e) = &r {
                tracing::error!(error = %e, "store flush failed");
            }
            self.done
                .send_replace((target, r.err().map(|e| e.to_string())));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.flusher.wake.notify_one();
    }
}

tokio::task_local! {
    /// The audit record of the mutation running in this task, until its first change.
    static PENDING_AUDIT: std::cell::RefCell<Option<upkeep_core::audit::AuditEvent>>;
}

/// The first change of a transaction (what its audit record describes).
struct Change {
    kind: Kind,
    key: Vec<u8>,
    old: Option<Vec<u8>>,
    new: Option<Vec<u8>>,
}

/// Fills in what an audit record does not say yet from the change it describes.
fn complete_audit(
    mut ev: upkeep_core::audit::AuditEvent,
    c: &Change,
) -> upkeep_core::audit::AuditEvent {
    let json = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .and_then(|b| b.split_first())
            .and_then(|(_, rest)| serde_json::from_slice::<serde_json::Value>(rest).ok())
    };
    let (old, new) = (json(&c.old), json(&c.new));
    let id = Id::from_slice(&c.key);
    if ev.target_type.is_empty() {
        ev.target_type = c.kind.target_name().to_string();
    }
    if ev.target_id.is_none() {
        ev.target_id = id.map(|i| i.to_string());
    }
    if ev.tenant_id.is_none() {
        ev.tenant_id = if c.kind == Kind::Tenant {
            id
        } else {
            new.as_ref()
                .or(old.as_ref())
                .and_then(|r| r.get("tenant_id"))
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse().ok())
        };
    }
    if ev.summary.is_empty() {
        ev.summary = crate::audit_diff::diff(old.as_ref(), new.as_ref());
    }
    ev
}

/// The view of every tree inside a transaction.
pub struct Tx<'a> {
    trees: &'a Vec<TransactionalTree>,
    first: Option<Change>,
    /// Whether to note the first change (only while an audit record waits: the hot paths of
    /// sessions and polls pay nothing).
    auditing: bool,
}

impl Tx<'_> {
    fn note_change(&mut self, kind: Kind, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        if self.auditing && self.first.is_none() && !matches!(kind, Kind::Audit | Kind::Event) {
            self.first = Some(Change {
                kind,
                key: key.to_vec(),
                old: old.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
            });
        }
    }

    fn tree(&self, kind: Kind) -> &TransactionalTree {
        &self.trees[kind as usize]
    }
    fn index(&self) -> &TransactionalTree {
        &self.trees[KINDS.len()]
    }

    pub fn get<T: Record, E>(&self, id: &Id) -> Result<Option<T>, TxError<E>> {
        self.get_by_key(id.as_bytes())
    }

    pub fn get_by_key<T: Record, E>(&self, key: &[u8]) -> Result<Option<T>, TxError<E>> {
        match self.tree(T::KIND).get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Inserts or replaces a record and brings its index entries in step.
    pub fn put<T: Record, E>(&mut self, record: &T) -> Result<(), TxError<E>> {
        self.put_encoded(&Encoded::new(record)?)
    }

    /// Puts a record encoded before the transaction began (see [`Encoded`]).
    pub fn put_encoded<T: Record, E>(&mut self, e: &Encoded<T>) -> Result<(), TxError<E>> {
        let key = e.key.as_slice();
        let old = self.tree(T::KIND).insert(key, e.bytes.as_slice())?;
        self.note_change(T::KIND, key, old.as_deref(), Some(&e.bytes));
        if let Some(old) = old {
            for i in T::stored_index_keys(&old)? {
                let entry = i.entry(key);
                if !e.entries.contains(&entry) {
                    self.index().remove(entry)?;
                }
            }
        }
        for entry in &e.entries {
            self.index().insert(entry.as_slice(), &[])?;
        }
        Ok(())
    }

    /// Removes a record and its index entries; returns it if it existed.
    pub fn delete<T: Record, E>(&mut self, key: &[u8]) -> Result<Option<T>, TxError<E>> {
        match self.tree(T::KIND).remove(key)? {
            Some(old) => {
                self.note_change(T::KIND, key, Some(&old), None);
                let old: T = codec::decode(&old)?;
                for i in old.index_keys() {
                    self.index().remove(i.entry(key))?;
                }
                Ok(Some(old))
            }
            None => Ok(None),
        }
    }

    /// True when some record is listed under this index value (for uniqueness checks).
    pub fn index_has<E>(&self, index: &IndexKey) -> Result<Option<Vec<u8>>, TxError<E>> {
        // Unique indexes store the owner's key as the value of a marker entry.
        match self.index().get(index.unique_marker())? {
            Some(v) => Ok(Some(v.to_vec())),
            None => Ok(None),
        }
    }

    /// Claims a unique index value for `key`; aborts with `Conflict` if another key holds it.
    pub fn claim_unique<E>(&mut self, index: &IndexKey, key: &[u8]) -> Result<bool, TxError<E>> {
        if let Some(owner) = self.index_has(index)?
            && owner != key
        {
            return Ok(false);
        }
        self.index().insert(index.unique_marker(), key)?;
        Ok(true)
    }

    pub fn release_unique<E>(&mut self, index: &IndexKey) -> Result<(), TxError<E>> {
        self.index().remove(index.unique_marker())?;
        Ok(())
    }
}

/// Steps from an older store schema to [`SCHEMA_VERSION`]. Version 0 is an empty store.
fn migrate(_store: &Store, from: u64) -> Result<()> {
    match from {
        0 | SCHEMA_VERSION => Ok(()),
        other => Err(StoreError::Corrupt(format!(
            "no migration from store schema {other}"
        ))),
    }
}

pub mod records;

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_core::domain::Tenant;

    fn tenant(n: u128) -> Tenant {
        Tenant {
            id: Id::from_u128(n + 1),
            name: format!("t{n}"),
            company_name: None,
            time_zone: upkeep_core::types::TimeZone::UTC.into(),
            mail_from: None,
            logo_url: None,
            primary_color: None,
            auto_onboarding: false,
            excluded_from_maintenance: false,
            business_hours: None,
            mail_bcc: Vec::new(),
            created_at: chrono::Utc::now(),
        }
    }

    /// Many writers acknowledging at once all get their flush, and what they wrote is there
    /// after a reopen. With sled's `flush_async` this hung with eight or more callers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_complete_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let t = tenant(i);
                store
                    .write(|tx| tx.put::<_, String>(&t))
                    .map_err(|e| format!("{e:?}"))?;
                store.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(t.id)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            let done = tokio::time::timeout(std::time::Duration::from_secs(30), t)
                .await
                .expect("a flush hung");
            ids.push(done.unwrap().unwrap());
        }
        drop(store);
        // The flusher thread let go of the database: the directory opens again at once.
        let store = Store::open(dir.path()).unwrap();
        for id in ids {
            assert!(store.get::<Tenant>(&id).unwrap().is_some());
        }
        assert_eq!(store.count::<Tenant>(), 64);
    }
}
