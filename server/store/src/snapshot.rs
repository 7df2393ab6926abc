//! Consistent copies of the whole store for backups, and restoring one into an empty store.

use super::*;

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
