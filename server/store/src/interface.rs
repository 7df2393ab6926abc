//! The [`Store`] trait: what a storage engine provides to Upkeep, in bytes.
//!
//! A store holds named key spaces ([`Space`]) of ordered byte keys: one per record kind, one for
//! every secondary-index entry, and two small ones outside transactions (named values, and when
//! agents last polled). It answers point reads, ordered range reads in pages, counts, one atomic
//! transaction over the record spaces and the index, and a durability barrier (`flush`, a group
//! commit where the engine needs one). Everything typed — records, indexes, the audit record a
//! mutation's first change completes, scans as streams — is built once on top of these few
//! methods (`impl dyn Store`, in `typed.rs` and `tx.rs`), so a second engine implements only this
//! trait.
//!
//! Architecture invariant: no engine type (sled's, or a database driver's) appears in this
//! trait or in anything the crate exports; the application holds an `Arc<dyn Store>` and never
//! learns which engine is behind it.
//!
//! Transactions: a body is synchronous and may run more than once (an optimistic engine retries
//! it on a conflict), so it must not do I/O of its own. The embedded engine runs it against
//! memory under sled's transaction; an engine over the network runs it on a connection it holds
//! for the body's length, inside `transact`'s future.

use crate::{KINDS, Kind, Result, Snapshot, StoreError};
use std::ops::Bound;

/// A key space of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// The records of one kind, keyed by their primary key.
    Records(Kind),
    /// Secondary-index entries and unique markers of every kind (see [`crate::IndexKey`]).
    Index,
    /// Small named values (the store's schema version). Not transactional.
    Meta,
    /// Computer id → when its agent last polled (i64 milliseconds, big-endian), written back in
    /// batches. Kept apart from the computer records so that a write-back for a whole fleet does
    /// not rewrite every computer record. Not transactional.
    LastSeen,
}

impl Space {
    /// Every space, in the stable order snapshots list them.
    pub fn all() -> impl Iterator<Item = Space> {
        KINDS
            .iter()
            .map(|k| Space::Records(*k))
            .chain([Space::Index, Space::Meta, Space::LastSeen])
    }

    /// The space's name in backups (and the embedded engine's tree name).
    pub fn name(self) -> &'static str {
        match self {
            Space::Records(k) => k.tree_name(),
            Space::Index => "index",
            Space::Meta => "meta",
            Space::LastSeen => "last_seen",
        }
    }

    pub fn from_name(name: &str) -> Option<Space> {
        Space::all().find(|s| s.name() == name)
    }

    /// Whether [`Store::transact`] covers this space.
    pub fn transactional(self) -> bool {
        matches!(self, Space::Records(_) | Space::Index)
    }
}

/// An ordered range of keys, read forwards or backwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
    pub reverse: bool,
}

impl KeyRange {
    /// Every key, in order.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
        }
    }

    /// The keys that start with `prefix`, in order.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: prefix_end(prefix),
            reverse: false,
        }
    }

    /// The same keys, newest (highest) first.
    pub fn rev(mut self) -> KeyRange {
        self.reverse = !self.reverse;
        self
    }

    /// Starts (forwards) strictly after `key`.
    pub fn after(mut self, key: &[u8]) -> KeyRange {
        self.start = Bound::Excluded(key.to_vec());
        self
    }

    /// Ends strictly before `key`.
    pub fn before(mut self, key: &[u8]) -> KeyRange {
        self.end = Bound::Excluded(key.to_vec());
        self
    }

    /// What is left of the range in its direction once `last` was read (for paging).
    pub fn past(self, last: &[u8]) -> KeyRange {
        if self.reverse {
            self.before(last)
        } else {
            self.after(last)
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }
}

/// The first key after every key that starts with `prefix` (unbounded when there is none).
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// Why an operation inside a transaction could not complete.
#[derive(Debug)]
pub enum TxFault {
    /// Another writer got there first: the engine runs the body again.
    Conflict,
    Store(StoreError),
}

impl From<StoreError> for TxFault {
    fn from(e: StoreError) -> Self {
        TxFault::Store(e)
    }
}

/// How a transaction body ends when it does not commit.
#[derive(Debug)]
pub enum BodyError {
    /// The body chose to abort (its caller keeps the reason).
    Abort,
    Fault(TxFault),
}

impl From<TxFault> for BodyError {
    fn from(f: TxFault) -> Self {
        BodyError::Fault(f)
    }
}

/// Why [`Store::transact`] did not commit.
#[derive(Debug)]
pub enum TransactError {
    /// The body aborted; nothing was written.
    Aborted,
    Store(StoreError),
}

/// The view of the transactional spaces a body gets.
pub trait StoreTx {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault>;
    /// Inserts or replaces; returns the value replaced.
    fn insert(
        &mut self,
        space: Space,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, TxFault>;
    /// Removes; returns the value removed.
    fn remove(&mut self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault>;
}

/// A transaction body (see the module docs: synchronous, may run more than once).
pub type Body<'a> = dyn FnMut(&mut dyn StoreTx) -> Result<(), BodyError> + Send + 'a;

/// A storage engine. See the module docs; the typed API is on `dyn Store`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The engine's name, for logs and `/metrics`.
    fn engine(&self) -> &'static str;

    async fn read(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries of `range`, in its direction.
    async fn read_range(
        &self,
        space: Space,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// How many keys `range` holds.
    async fn count_range(&self, space: Space, range: &KeyRange) -> Result<u64>;

    /// Runs `body` as one atomic transaction over every record space and the index: all its
    /// changes are applied together, or none.
    async fn transact(&self, body: &mut Body<'_>) -> Result<(), TransactError>;

    /// Sets (`Some`) or removes (`None`) many keys of one space at once, outside any
    /// transaction (write-backs, restores).
    async fn apply_batch(
        &self,
        space: Space,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()>;

    /// Sets `key` of a space outside transactions (in practice [`Space::Meta`]) to `value`
    /// unless it holds one already, and returns what it holds afterwards: the first claim
    /// wins, and every later one gets the winner's value. The default reads and then writes,
    /// right for an engine one process holds; an engine several processes share (PostgreSQL)
    /// claims atomically.
    async fn claim(&self, space: Space, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(held) = self.read(space, key).await? {
            return Ok(held);
        }
        self.apply_batch(space, vec![(key.to_vec(), Some(value.clone()))])
            .await?;
        self.flush().await?;
        Ok(value)
    }

    /// Makes everything written so far durable. Callers that acknowledge something to the
    /// outside await it first.
    async fn flush(&self) -> Result<()>;

    /// Every space's contents, consistent with each other (writers are held off meanwhile).
    async fn snapshot(&self) -> Result<Snapshot>;

    /// Writes and reads since start (for `/metrics`, and for the test that shows agent polls
    /// never touch the store).
    fn op_counts(&self) -> (u64, u64);

    /// Durability barriers made since start and the seconds they took.
    fn flush_counts(&self) -> (u64, f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_with_the_prefix() {
        let r = KeyRange::prefix(&[1, 2, 0xff]);
        assert!(r.contains(&[1, 2, 0xff]));
        assert!(r.contains(&[1, 2, 0xff, 0xff, 7]));
        assert!(!r.contains(&[1, 3]));
        assert!(!r.contains(&[1, 2, 0xfe, 0xff]));
        assert_eq!(r.end, Bound::Excluded(vec![1, 3]));
        assert_eq!(KeyRange::prefix(&[0xff, 0xff]).end, Bound::Unbounded);
    }

    #[test]
    fn paging_continues_in_the_range_direction() {
        let fwd = KeyRange::prefix(&[1]).past(&[1, 5]);
        assert!(!fwd.contains(&[1, 5]) && fwd.contains(&[1, 6]) && !fwd.contains(&[1, 4]));
        let back = KeyRange::prefix(&[1]).rev().past(&[1, 5]);
        assert!(!back.contains(&[1, 5]) && back.contains(&[1, 4]) && !back.contains(&[1, 6]));
    }
}
