//! Transactions: [`Store::write`] over every tree, the [`Tx`] view a write closure gets, and
//! the audit record a mutation's first change completes.

use super::*;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

impl Store {
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
