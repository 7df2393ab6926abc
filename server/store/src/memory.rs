//! An in-memory engine for tests: every space a `BTreeMap`, a transaction a staged overlay
//! applied under one lock. It exists to show that the typed API depends on nothing but the
//! [`Store`] trait (both engines pass `conformance::check`).

use crate::interface::{Body, BodyError, KeyRange, Space, StoreTx, TransactError, TxFault};
use crate::{Result, Snapshot, Store};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub(crate) struct MemoryStore {
    spaces: Mutex<HashMap<Space, Tree>>,
}

fn entries(tree: Option<&Tree>, range: &KeyRange) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(tree) = tree else { return Vec::new() };
    let bounds = (
        range.start.as_ref().map(Vec::as_slice),
        range.end.as_ref().map(Vec::as_slice),
    );
    // An empty range reads nothing rather than panicking in BTreeMap::range (start past end,
    // or start equal to end with either bound excluded).
    let empty = match bounds {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
            s >= e
        }
        _ => false,
    };
    if empty {
        return Vec::new();
    }
    let it = tree
        .range::<[u8], _>(bounds)
        .map(|(k, v)| (k.clone(), v.clone()));
    if range.reverse {
        it.rev().collect()
    } else {
        it.collect()
    }
}

/// A transaction's view: reads see its own writes first.
struct Staged<'a> {
    base: &'a HashMap<Space, Tree>,
    writes: HashMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl StoreTx for Staged<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFault> {
        if let Some(v) = self.writes.get(&(space, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.base.get(&space).and_then(|t| t.get(key)).cloned())
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

impl MemoryStore {
    fn apply(&self, space: Space, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        let tree = spaces.entry(space).or_default();
        for (k, v) in batch {
            match v {
                Some(v) => tree.insert(k, v),
                None => tree.remove(&k),
            };
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn engine(&self) -> &'static str {
        "memory"
    }

    async fn read(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(spaces.get(&space).and_then(|t| t.get(key)).cloned())
    }

    async fn read_range(
        &self,
        space: Space,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = entries(spaces.get(&space), range);
        out.truncate(limit);
        Ok(out)
    }

    async fn count_range(&self, space: Space, range: &KeyRange) -> Result<u64> {
        let spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(entries(spaces.get(&space), range).len() as u64)
    }

    async fn transact(&self, body: &mut Body<'_>) -> Result<(), TransactError> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        let mut staged = Staged {
            base: &spaces,
            writes: HashMap::new(),
        };
        match body(&mut staged) {
            Ok(()) => {}
            Err(BodyError::Abort) => return Err(TransactError::Aborted),
            Err(BodyError::Fault(TxFault::Store(e))) => return Err(TransactError::Store(e)),
            Err(BodyError::Fault(TxFault::Conflict)) => {
                unreachable!("a transaction under one lock never conflicts")
            }
        }
        let writes = staged.writes;
        for ((space, k), v) in writes {
            let tree = spaces.entry(space).or_default();
            match v {
                Some(v) => tree.insert(k, v),
                None => tree.remove(&k),
            };
        }
        Ok(())
    }

    async fn apply_batch(
        &self,
        space: Space,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        self.apply(space, entries);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Space::all()
            .map(|s| {
                let entries = entries(spaces.get(&s), &KeyRange::all());
                (s.name().to_string(), entries)
            })
            .collect())
    }

    fn op_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    fn flush_counts(&self) -> (u64, f64) {
        (0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_memory_engine_passes_the_conformance_check() {
        crate::conformance::check(Arc::new(MemoryStore::default())).await;
    }

    #[tokio::test]
    async fn a_schema_1_sled_store_gets_its_sessions_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_embedded(dir.path()).unwrap();
        crate::conformance::as_schema_1(&store).await;
        drop(store);
        let again = crate::open_embedded(dir.path()).unwrap();
        crate::conformance::check_upgraded(&again).await;
    }

    #[tokio::test]
    async fn a_snapshot_restores_into_the_other_engine() {
        let dir = tempfile::tempdir().unwrap();
        let sled = crate::open_embedded(dir.path()).unwrap();
        crate::conformance::check(sled.clone()).await;
        crate::conformance::check_restore(sled, Arc::new(MemoryStore::default())).await;
    }
}
