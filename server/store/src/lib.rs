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
mod flusher;
mod index;
mod snapshot;
mod tx;

pub use codec::FORMAT_VERSION;
pub use index::IndexKey;
pub use snapshot::Snapshot;
pub use tx::{Encoded, Tx, TxError, WriteError};

use flusher::Flusher;

use serde::{Serialize, de::DeserializeOwned};
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
    Inventory,
}

const KINDS: [Kind; 20] = [
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
    Kind::Inventory,
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
            Kind::Inventory => "Inventory",
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
            Kind::Inventory => "inventories",
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
        let flusher = Arc::new(Flusher::default());
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
