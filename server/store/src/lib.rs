//! The store: records, secondary indexes, one atomic write, group commit and scans.
//!
//! [`Store`] is the trait a storage engine implements, in bytes (`interface.rs`); the typed API
//! every caller uses is built once on it (`impl dyn Store`: `typed.rs`, `tx.rs`,
//! `snapshot.rs`). The embedded engine (sled, `embedded/`) is the default; callers hold a
//! [`Db`] and never learn which engine is behind it.
//!
//! Layout: one key space per record kind (`Kind`), keyed by the record's id bytes (UUIDv7, so
//! keys sort by creation time and double as stable pagination cursors), plus one shared
//! `index` space of secondary-index entries. Values are `[FORMAT_VERSION] ++ JSON`.
//!
//! Every write goes through `write`, one transaction over every record space and the index: a
//! record and its index entries change together or not at all, and so do several records
//! changed by one step (a session, its events and its jobs). The closure may run more than once
//! (engines may be optimistic), so it must not do I/O.
//!
//! Durability: `write` may apply in memory only; callers that acknowledge something to the
//! outside (a mutation answer, an agent's result ack, a mail queued) await `flush` first.

mod audit_diff;
mod codec;
mod counts;
mod embedded;
mod index;
mod interface;
#[cfg(test)]
mod memory;
mod postgres;
mod session_split;
mod snapshot;
mod tx;
mod typed;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
/// Fresh PostgreSQL databases for tests (feature `conformance`).
#[cfg(any(test, feature = "conformance"))]
pub use postgres::scratch;

pub use codec::{FORMAT_VERSION, decode as decode_record};
pub use counts::SHARDS as COUNT_SHARDS;
pub use index::IndexKey;
pub use interface::{Body, BodyError, KeyRange, Space, Store, StoreTx, TransactError, TxFault};
pub use session_split::PlanCache;
pub use snapshot::Snapshot;
pub use tx::{Encoded, Tx, TxError, WriteError, audited};

use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Arc;

/// A handle to the store, whatever its engine. Cheap to clone.
pub type Db = Arc<dyn Store>;

/// Opens (or creates) the embedded store in `dir`, runs migrations and returns the handle. One
/// process may hold a directory at a time.
pub fn open_embedded(dir: &Path) -> Result<Db> {
    Ok(Arc::new(embedded::SledStore::open(dir)?))
}

/// Connects to the PostgreSQL database at `url` (`postgres://user@host:port/db`), applies its
/// pending migrations under an advisory lock and returns the handle. Any number of processes
/// may open one database (cluster mode).
pub async fn open_postgres(url: &str) -> Result<Db> {
    Ok(Arc::new(postgres::PgStore::open(url).await?))
}

/// The store's schema version. Bump it and add a step to [`migrate`] when a stored shape
/// changes incompatibly.
///
/// 2: session counters (`counts.rs`); a store of schema 1 gets them counted from its sessions
/// when it is opened (each engine's migration, in its open), and a schema-1 build refuses
/// the store afterwards, so no older replica writes sessions without counting them.
pub const SCHEMA_VERSION: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Engine(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the data directory was written by a newer Upkeep (store schema {found}, this build knows {known})"
    )]
    TooNew { found: u64, known: u64 },
    #[error("{0}")]
    Conflict(String),
    /// Another process (a running server) holds the data directory.
    #[error(
        "the data directory {0} is in use by a running server: stop the server first (backup and gc ask it instead)"
    )]
    InUse(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Kinds of records, one key space each. The discriminant is stable: it places the space.
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
    Versions,
    Attestation,
    Rollout,
    Detection,
    /// A session's frozen plan, under the session's id (`session_split.rs`).
    SessionPlan,
}

pub(crate) const KINDS: [Kind; 25] = [
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
    Kind::Versions,
    Kind::Attestation,
    Kind::Rollout,
    Kind::Detection,
    Kind::SessionPlan,
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
            Kind::Versions => "SoftwareVersionsCache",
            Kind::Attestation => "Attestation",
            Kind::Rollout => "Rollout",
            Kind::Detection => "Detection",
            Kind::SessionPlan => "MaintenanceSessionPlan",
        }
    }

    pub(crate) fn tree_name(self) -> &'static str {
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
            Kind::Versions => "versions_cache",
            Kind::Attestation => "attestations",
            Kind::Rollout => "rollouts",
            Kind::Detection => "detections",
            Kind::SessionPlan => "session_plans",
        }
    }
}

/// A record's stored bytes and, for a kind with a [`Record::DETACHED`] part, that part's bytes
/// with its digest.
pub type StoredParts = (Vec<u8>, Option<(Vec<u8>, String)>);

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
    /// A kind whose records keep a second part under the same key, in the space of this kind
    /// (sessions: their frozen plan, written only when it changes; `session_split.rs`). Reads
    /// join the parts; puts write the second part only when its digest changed; deletes remove
    /// both.
    const DETACHED: Option<Kind> = None;
    /// The stored bytes: the record's own and, for a kind with a [`Record::DETACHED`] part,
    /// that part's with its digest.
    fn encode_parts(&self) -> Result<StoredParts> {
        Ok((codec::encode(self)?, None))
    }
    /// The record from its stored bytes and its detached part's, if stored.
    fn decode_parts(main: &[u8], detached: Option<&[u8]>) -> Result<Self>
    where
        Self: Sized,
    {
        let _ = detached;
        codec::decode(main)
    }
    /// The digest of the detached part a stored value names (`None`: none, or unknown).
    fn stored_detached_digest(main: &[u8]) -> Result<Option<String>>
    where
        Self: Sized,
    {
        let _ = main;
        Ok(None)
    }
}

/// Steps from an older store schema to [`SCHEMA_VERSION`]. Version 0 is an empty store.
fn migrate(from: u64) -> Result<()> {
    match from {
        // 1 → 2: the engine counts the sessions (`counts::tally`) in its migration.
        0 | 1 | SCHEMA_VERSION => Ok(()),
        other => Err(StoreError::Corrupt(format!(
            "no migration from store schema {other}"
        ))),
    }
}

pub mod records;
