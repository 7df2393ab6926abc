//! Transactions: the typed [`Tx`] a write closure gets, `write` over the
//! engine's [`transact`](Store::transact), and the audit record a mutation's first change
//! completes.

use crate::interface::{BodyError, StoreTx, TransactError, TxFault};
use crate::{IndexKey, Kind, Record, Result, Space, Store, StoreError, codec};
use upkeep_core::domain::Id;

impl dyn Store {
    /// Runs `f` as one atomic transaction over every record kind and the index. `f` may run
    /// several times; it must not do I/O. Returns what `f` returns, or its abort error.
    ///
    /// Inside [`audited`], the waiting audit record is completed from the first record `f`
    /// puts or deletes and written in the same transaction.
    pub async fn write<A, E, F>(&self, f: F) -> Result<A, WriteError<E>>
    where
        A: Send,
        E: Send,
        F: Fn(&mut Tx<'_>) -> Result<A, TxError<E>> + Send + Sync,
    {
        let pending = PENDING_AUDIT
            .try_with(|p| p.borrow_mut().take())
            .ok()
            .flatten();
        let mut out: Option<A> = None;
        let mut abort: Option<E> = None;
        let mut consumed = false;
        let mut body = |raw: &mut dyn StoreTx| -> Result<(), BodyError> {
            let mut tx = Tx {
                raw,
                first: None,
                auditing: pending.is_some(),
            };
            consumed = false;
            match f(&mut tx) {
                Ok(a) => out = Some(a),
                Err(TxError::Abort(e)) => {
                    abort = Some(e);
                    return Err(BodyError::Abort);
                }
                Err(TxError::Store(e)) => return Err(BodyError::Fault(TxFault::Store(e))),
                Err(TxError::Conflict) => return Err(BodyError::Fault(TxFault::Conflict)),
            }
            if let (Some(ev), Some(change)) = (&pending, tx.first.take()) {
                tx.put(&complete_audit(ev.clone(), &change))
                    .map_err(|e: TxError<E>| match e {
                        TxError::Store(e) => BodyError::Fault(TxFault::Store(e)),
                        _ => BodyError::Fault(TxFault::Conflict),
                    })?;
                consumed = true;
            }
            Ok(())
        };
        let r = self.transact(&mut body).await;
        if r.is_err() || !consumed {
            // Nothing was changed: the record waits for the mutation's next write, if any.
            let _ = PENDING_AUDIT.try_with(|p| *p.borrow_mut() = pending);
        }
        match r {
            Ok(()) => out.ok_or_else(|| {
                WriteError::Store(StoreError::Corrupt(
                    "a transaction committed no result".into(),
                ))
            }),
            Err(TransactError::Aborted) => Err(match abort {
                Some(e) => WriteError::Abort(e),
                None => WriteError::Store(StoreError::Corrupt(
                    "a transaction aborted without a reason".into(),
                )),
            }),
            Err(TransactError::Store(e)) => Err(WriteError::Store(e)),
        }
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

impl<E> From<TxFault> for TxError<E> {
    fn from(f: TxFault) -> Self {
        match f {
            TxFault::Conflict => TxError::Conflict,
            TxFault::Store(e) => TxError::Store(e),
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

/// A record encoded ahead of a transaction. The embedded engine runs a transaction's body
/// under its process-wide write lock, so work done inside it (JSON encoding of a 7–14 KB
/// session) holds up every other writer; encode first, then put the bytes.
pub struct Encoded<T> {
    key: Vec<u8>,
    bytes: Vec<u8>,
    /// The [`Record::DETACHED`] part and its digest (which `bytes` names).
    detached: Option<(Vec<u8>, String)>,
    entries: Vec<Vec<u8>>,
    /// The session counter this record adds to (`counts.rs`), if its kind is counted.
    counter: Option<Vec<u8>>,
    _kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: Record> Encoded<T> {
    pub fn new(record: &T) -> Result<Encoded<T>> {
        let key = record.key();
        let index_keys = record.index_keys();
        let entries = index_keys.iter().map(|i| i.entry(&key)).collect();
        let (bytes, detached) = record.encode_parts()?;
        Ok(Encoded {
            counter: crate::counts::counter_key(T::KIND, &key, &index_keys),
            bytes,
            detached,
            key,
            entries,
            _kind: std::marker::PhantomData,
        })
    }

    /// Whether two encodings are byte for byte the same record (the main part names the
    /// detached part's digest).
    pub fn same_bytes(&self, other: &Encoded<T>) -> bool {
        self.key == other.key && self.bytes == other.bytes
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

/// The typed view of a transaction.
pub struct Tx<'a> {
    raw: &'a mut dyn StoreTx,
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

    pub fn get<T: Record, E>(&self, id: &Id) -> Result<Option<T>, TxError<E>> {
        self.get_by_key(id.as_bytes())
    }

    pub fn get_by_key<T: Record, E>(&self, key: &[u8]) -> Result<Option<T>, TxError<E>> {
        match self.raw.get(Space::Records(T::KIND), key)? {
            Some(v) => {
                let detached = match T::DETACHED {
                    Some(kind) => self.raw.get(Space::Records(kind), key)?,
                    None => None,
                };
                Ok(Some(T::decode_parts(&v, detached.as_deref())?))
            }
            None => Ok(None),
        }
    }

    /// A record without its [`Record::DETACHED`] part (a session without its plan: items,
    /// preflight checks and actions' steps empty), for checks of what the record's own part
    /// holds (a session's revision) without reading the rest.
    pub fn get_own_part<T: Record, E>(&self, id: &Id) -> Result<Option<T>, TxError<E>> {
        match self.raw.get(Space::Records(T::KIND), id.as_bytes())? {
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
        let old = self.raw.insert(Space::Records(T::KIND), key, &e.bytes)?;
        self.note_change(T::KIND, key, old.as_deref(), Some(&e.bytes));
        if let (Some(kind), Some((part, digest))) = (T::DETACHED, &e.detached) {
            let stored = match &old {
                Some(old) => T::stored_detached_digest(old)?,
                None => None,
            };
            if stored.as_deref() != Some(digest.as_str()) {
                self.raw.insert(Space::Records(kind), key, part)?;
            }
        }
        // Only the entries that change are written: a session step that keeps its status
        // touches none of its five index entries.
        let mut kept = Vec::new();
        let mut old_counter = None;
        if let Some(old) = old {
            let old_keys = T::stored_index_keys(&old)?;
            for i in &old_keys {
                let entry = i.entry(key);
                if e.entries.contains(&entry) {
                    kept.push(entry);
                } else {
                    self.raw.remove(Space::Index, &entry)?;
                }
            }
            old_counter = crate::counts::counter_key(T::KIND, key, &old_keys);
        }
        for entry in e.entries.iter().filter(|n| !kept.contains(n)) {
            self.raw.insert(Space::Index, entry, &[])?;
        }
        // Counts change with the record, in this transaction (`counts.rs`).
        if old_counter != e.counter {
            if let Some(c) = &old_counter {
                crate::counts::adjust(self.raw, c, -1)?;
            }
            if let Some(c) = &e.counter {
                crate::counts::adjust(self.raw, c, 1)?;
            }
        }
        Ok(())
    }

    /// Removes a record and its index entries; returns it if it existed.
    pub fn delete<T: Record, E>(&mut self, key: &[u8]) -> Result<Option<T>, TxError<E>> {
        match self.raw.remove(Space::Records(T::KIND), key)? {
            Some(old) => {
                self.note_change(T::KIND, key, Some(&old), None);
                if let Some(kind) = T::DETACHED {
                    self.raw.remove(Space::Records(kind), key)?;
                }
                let old: T = codec::decode(&old)?;
                let old_keys = old.index_keys();
                for i in &old_keys {
                    self.raw.remove(Space::Index, &i.entry(key))?;
                }
                if let Some(c) = crate::counts::counter_key(T::KIND, key, &old_keys) {
                    crate::counts::adjust(self.raw, &c, -1)?;
                }
                Ok(Some(old))
            }
            None => Ok(None),
        }
    }

    /// The key of the record that holds a unique index value, if one does.
    pub fn index_has<E>(&self, index: &IndexKey) -> Result<Option<Vec<u8>>, TxError<E>> {
        // Unique indexes store the owner's key as the value of a marker entry.
        Ok(self.raw.get(Space::Index, &index.unique_marker())?)
    }

    /// Claims a unique index value for `key`; returns false if another key holds it.
    pub fn claim_unique<E>(&mut self, index: &IndexKey, key: &[u8]) -> Result<bool, TxError<E>> {
        if let Some(owner) = self.index_has(index)?
            && owner != key
        {
            return Ok(false);
        }
        self.raw.insert(Space::Index, &index.unique_marker(), key)?;
        Ok(true)
    }

    pub fn release_unique<E>(&mut self, index: &IndexKey) -> Result<(), TxError<E>> {
        self.raw.remove(Space::Index, &index.unique_marker())?;
        Ok(())
    }
}
