//! Secondary-index entries, all in one `index` tree.
//!
//! Entry: `[0] [index id] [value length u16 BE] [value] [primary key]` → empty. A prefix scan over
//! `[0] [index id] [len] [value]` lists the primary keys under a value in key (= creation) order.
//! Unique marker: `[1] [index id] [len] [value]` → owner's primary key (emails, machine ids,
//! secret hashes), claimed inside the same transaction as the record.

use super::{Kind, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKey {
    pub index: u8,
    pub value: Vec<u8>,
}

impl IndexKey {
    pub fn new(index: u8, value: impl AsRef<[u8]>) -> Self {
        IndexKey {
            index,
            value: value.as_ref().to_vec(),
        }
    }

    pub fn prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(4 + self.value.len() + 16);
        k.push(0);
        k.push(self.index);
        let len = u16::try_from(self.value.len()).unwrap_or(u16::MAX);
        k.extend_from_slice(&len.to_be_bytes());
        k.extend_from_slice(&self.value[..usize::from(len)]);
        k
    }

    pub fn entry(&self, primary: &[u8]) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(primary);
        k
    }

    pub fn unique_marker(&self) -> Vec<u8> {
        let mut k = self.prefix();
        k[0] = 1;
        k
    }
}

/// The index entries a stored record should have (for `check`).
pub fn entries_of(kind: Kind, key: &[u8], value: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(super::records::index_keys_of(kind, value)?
        .into_iter()
        .map(|i| i.entry(key))
        .collect())
}
