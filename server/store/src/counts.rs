//! Session counts per tenant and status, kept in the index space and changed in the same
//! transaction as the session they count, so `maintenanceSessionStatusCounts` and `/metrics`
//! read a few counters instead of walking an index entry per session.
//!
//! Counter key: `[2] [STATUS_SESSIONS] [tenant id, 16 bytes] [status code] [shard]` → the count
//! as a u64, big-endian; a counter that reaches 0 is removed, so the counters present are those
//! with sessions. The shard is the session id's last byte modulo [`SHARDS`]: the sessions of
//! one tenant changing status at once (a schedule's burst) then seldom write the same counter,
//! which on PostgreSQL would make their SERIALIZABLE transactions conflict and run again.
//! Reading sums the shards: one range read of at most tenants × statuses × shards entries.
//!
//! Where they are kept: `Tx::put_encoded`/`Tx::delete` (every session write), rebuilt from the
//! sessions by the schema-2 migration of both engines and after a restore
//! ([`Store::rebuild_counts`](crate::Store)), compared with the sessions by `check_indexes`.

use crate::records::{STATUS_SESSIONS, TENANT_SESSIONS};
use crate::{IndexKey, KeyRange, Kind, Record, Result, Space, Store, StoreError, StoreTx, TxFault};
use futures_util::TryStreamExt;
use std::collections::BTreeMap;
use upkeep_core::domain::Id;
use upkeep_core::session::Session;

/// First byte of a counter key in the index space (entries are 0, unique markers 1).
pub(crate) const COUNTER: u8 = 2;
/// Counters per tenant and status.
pub const SHARDS: u8 = 16;

/// The counter a record with these index keys adds one to, if its kind is counted.
pub(crate) fn counter_key(kind: Kind, key: &[u8], index_keys: &[IndexKey]) -> Option<Vec<u8>> {
    if kind != Kind::Session {
        return None;
    }
    let tenant = index_keys.iter().find(|i| i.index == TENANT_SESSIONS)?;
    let status = index_keys.iter().find(|i| i.index == STATUS_SESSIONS)?;
    let mut k = Vec::with_capacity(2 + tenant.value.len() + status.value.len() + 1);
    k.extend_from_slice(&[COUNTER, STATUS_SESSIONS]);
    k.extend_from_slice(&tenant.value);
    k.extend_from_slice(&status.value);
    k.push(key.last().copied().unwrap_or(0) % SHARDS);
    Some(k)
}

fn prefix(tenant: Option<Id>) -> Vec<u8> {
    let mut p = vec![COUNTER, STATUS_SESSIONS];
    if let Some(t) = tenant {
        p.extend_from_slice(t.as_bytes());
    }
    p
}

fn value_of(bytes: &[u8]) -> std::result::Result<u64, StoreError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
        StoreError::Corrupt("a session counter is not 8 bytes".into())
    })?))
}

/// Adds `delta` (±1) to a counter inside a transaction; a counter at 0 is removed. A counter
/// that would go below 0 (only a broken store: `check` reports it) stays at 0 rather than fail
/// the session's write.
pub(crate) fn adjust(raw: &mut dyn StoreTx, key: &[u8], delta: i64) -> Result<(), TxFault> {
    let now = match raw.get(Space::Index, key)? {
        Some(v) => value_of(&v)?,
        None => 0,
    };
    let next = now.saturating_add_signed(delta);
    if next == 0 {
        if now != 0 {
            raw.remove(Space::Index, key)?;
        }
    } else {
        raw.insert(Space::Index, key, &next.to_be_bytes())?;
    }
    Ok(())
}

/// Adds one stored session to `counts`.
pub(crate) fn count_into(
    counts: &mut BTreeMap<Vec<u8>, u64>,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    let keys = <Session as Record>::stored_index_keys(value)?;
    if let Some(c) = counter_key(Kind::Session, key, &keys) {
        *counts.entry(c).or_insert(0) += 1;
    }
    Ok(())
}

/// Whether an index-space key is a counter.
pub(crate) fn is_counter(key: &[u8]) -> bool {
    key.first() == Some(&COUNTER)
}

/// A counter key's tenant and status code.
fn parts(key: &[u8]) -> Option<(&[u8], u8)> {
    let rest = key.strip_prefix(&[COUNTER, STATUS_SESSIONS])?;
    (rest.len() == 18).then(|| (&rest[..16], rest[16]))
}

impl dyn Store {
    /// Sessions per status code, of every tenant (`None`) or one; from the counters, without
    /// reading a session or an index entry per session.
    pub async fn session_counts(&self, tenant: Option<Id>) -> Result<BTreeMap<u8, u64>> {
        let mut out = BTreeMap::new();
        let mut counters =
            std::pin::pin!(self.scan_raw(Space::Index, KeyRange::prefix(&prefix(tenant))));
        while let Some((k, v)) = counters.try_next().await? {
            let (_, status) = parts(&k).ok_or_else(|| {
                StoreError::Corrupt(format!("session counter key {}", hex::encode(&k)))
            })?;
            *out.entry(status).or_insert(0) += value_of(&v)?;
        }
        Ok(out)
    }

    /// Sets the counters to what the stored sessions add up to (after a restore; the engines'
    /// migrations do the same when opening a store of schema 1). Not a transaction: for a store
    /// nothing else writes to yet.
    pub async fn rebuild_counts(&self) -> Result<()> {
        let mut counts = BTreeMap::new();
        let mut scan =
            std::pin::pin!(self.scan_raw(Space::Records(Kind::Session), KeyRange::all()));
        while let Some((k, v)) = scan.try_next().await? {
            count_into(&mut counts, &k, &v)?;
        }
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut old = std::pin::pin!(self.scan_raw(Space::Index, KeyRange::prefix(&[COUNTER])));
        while let Some((k, _)) = old.try_next().await? {
            if !counts.contains_key(&k) {
                batch.push((k, None));
            }
        }
        batch.extend(
            counts
                .into_iter()
                .map(|(k, n)| (k, Some(n.to_be_bytes().to_vec()))),
        );
        self.apply_batch(Space::Index, batch).await
    }
}

/// What `check` says about the stored counters against the ones the sessions add up to.
pub(crate) fn problems(
    expected: &BTreeMap<Vec<u8>, u64>,
    stored: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in stored {
        let want = expected.get(k).copied().unwrap_or(0);
        match value_of(v) {
            Ok(n) if n == want => {}
            Ok(n) => out.push(format!(
                "session counter {} holds {n}, the sessions add up to {want}",
                hex::encode(k)
            )),
            Err(e) => out.push(format!("session counter {}: {e}", hex::encode(k))),
        }
    }
    for (k, n) in expected {
        if !stored.contains_key(k) {
            out.push(format!(
                "session counter {} is missing (the sessions add up to {n})",
                hex::encode(k)
            ));
        }
    }
    out
}
