//! Consistent copies of a whole store for backups, and restoring one into an empty store. The
//! format names spaces, not engine structures, so a backup restores into any engine.

use crate::{KINDS, KeyRange, Result, Space, Store, StoreError};

/// Every space's name and `(key, value)` pairs, in [`Space::all`] order.
pub type Snapshot = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

impl dyn Store {
    /// True when no record and no index entry is stored (restore refuses to overwrite data).
    pub async fn is_empty(&self) -> Result<bool> {
        for space in KINDS
            .iter()
            .map(|k| Space::Records(*k))
            .chain([Space::Index])
        {
            if !self
                .read_range(space, &KeyRange::all(), 1)
                .await?
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Loads a snapshot into this (empty) store and makes it durable.
    pub async fn load_snapshot(&self, spaces: &Snapshot) -> Result<()> {
        for (name, entries) in spaces {
            let space = Space::from_name(name)
                .ok_or_else(|| StoreError::Corrupt(format!("backup has an unknown tree {name}")))?;
            let batch = entries
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            self.apply_batch(space, batch).await?;
        }
        // A backup of a schema-1 store has no session counters (and a copied one may be
        // older than its sessions): they are counted from the restored sessions.
        self.rebuild_counts().await?;
        self.flush().await
    }
}
