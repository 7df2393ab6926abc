//! The typed API every caller uses, built once on the [`Store`] trait: records by id, scans and
//! index lookups as streams read in pages, counts, unique values, presence write-backs.

use crate::{IndexKey, KeyRange, Record, Result, Space, Store, StoreError, codec};
use futures_util::stream::{self, Stream, TryStreamExt};
use upkeep_core::domain::{Id, Time};

/// The first page a scan reads; each further page is twice as large, up to [`PAGE_MAX`], so a
/// caller that takes a few records reads a few and a full scan makes few round trips.
const PAGE_FIRST: usize = 16;
const PAGE_MAX: usize = 1024;

impl dyn Store {
    pub async fn get<T: Record>(&self, id: &Id) -> Result<Option<T>> {
        self.get_by_key(id.as_bytes()).await
    }

    pub async fn get_by_key<T: Record>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.read(Space::Records(T::KIND), key).await? {
            Some(v) => Ok(Some(self.joined(key, &v).await?)),
            None => Ok(None),
        }
    }

    /// A stored value decoded, with its [`Record::DETACHED`] part read and joined.
    ///
    /// The two parts are read one after the other, outside a transaction: a write between the
    /// reads would pair the record with another version's part. The record names its part's
    /// digest, so such a pair is seen and both are read again.
    async fn joined<T: Record>(&self, key: &[u8], value: &[u8]) -> Result<T> {
        let Some(kind) = T::DETACHED else {
            return codec::decode(value);
        };
        let mut value = value.to_vec();
        for _ in 0..crate::session_split::JOIN_ATTEMPTS {
            let detached = self.read(Space::Records(kind), key).await?;
            let named = T::stored_detached_digest(&value)?;
            let moved = matches!((&named, &detached),
                (Some(d), Some(part)) if crate::session_split::part_digest(part) != *d);
            if !moved {
                return T::decode_parts(&value, detached.as_deref());
            }
            match self.read(Space::Records(T::KIND), key).await? {
                Some(v) => value = v,
                // Deleted meanwhile: the record as first read, without a part that is not its.
                None => return T::decode_parts(&value, None),
            }
        }
        Err(StoreError::Corrupt(format!(
            "{}: its detached part never matched the digest the record names",
            T::KIND.target_name()
        )))
    }

    /// The entries of `range`, read in growing pages.
    pub fn scan_raw<'s>(
        &'s self,
        space: Space,
        range: KeyRange,
    ) -> impl Stream<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + use<'s> {
        stream::try_unfold((Some(range), PAGE_FIRST), move |(range, n)| async move {
            let Some(range) = range else {
                return Ok::<_, StoreError>(None);
            };
            let page = self.read_range(space, &range, n).await?;
            let rest = match page.last() {
                Some((last, _)) if page.len() == n => Some(range.past(last)),
                _ => None,
            };
            let page = stream::iter(page.into_iter().map(Ok::<_, StoreError>));
            Ok(Some((page, (rest, (n * 2).min(PAGE_MAX)))))
        })
        .try_flatten()
    }

    fn decoded<'s, T: Record>(
        &'s self,
        range: KeyRange,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        self.scan_raw(Space::Records(T::KIND), range)
            .and_then(move |(k, v)| async move { self.joined(&k, &v).await })
    }

    /// Every record of a kind, in key order, starting strictly after `after`.
    pub fn scan<'s, T: Record>(
        &'s self,
        after: Option<&[u8]>,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        let range = KeyRange::all();
        self.decoded(match after {
            Some(a) => range.after(a),
            None => range,
        })
    }

    /// Records of a kind whose key starts with `prefix`, in key order, strictly after `after`
    /// (a full key).
    pub fn scan_prefix<'s, T: Record>(
        &'s self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        let range = KeyRange::prefix(prefix);
        // A cursor below the prefix starts nowhere earlier than the prefix itself.
        self.decoded(match after {
            Some(a) if a >= prefix => range.after(a),
            _ => range,
        })
    }

    /// Every record of a kind, newest first, strictly before `before`.
    pub fn scan_rev<'s, T: Record>(
        &'s self,
        before: Option<&[u8]>,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        let range = KeyRange::all().rev();
        self.decoded(match before {
            Some(b) => range.before(b),
            None => range,
        })
    }

    /// How many records of a kind are stored.
    pub async fn count<T: Record>(&self) -> Result<u64> {
        self.count_range(Space::Records(T::KIND), &KeyRange::all())
            .await
    }

    fn index_keys<'s>(
        &'s self,
        index: &IndexKey,
        range: KeyRange,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send + use<'s> {
        let plen = index.prefix().len();
        self.scan_raw(Space::Index, range)
            .map_ok(move |(k, _)| k[plen..].to_vec())
    }

    /// Primary keys listed under an index value, in key order, strictly after `after`.
    pub fn index_scan<'s>(
        &'s self,
        index: &IndexKey,
        after: Option<&[u8]>,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send + use<'s> {
        let range = KeyRange::prefix(&index.prefix());
        let range = match after {
            Some(a) => range.after(&index.entry(a)),
            None => range,
        };
        self.index_keys(index, range)
    }

    /// Primary keys under an index value, newest (highest key) first, strictly before `before`.
    pub fn index_scan_rev<'s>(
        &'s self,
        index: &IndexKey,
        before: Option<&[u8]>,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send + use<'s> {
        let range = KeyRange::prefix(&index.prefix()).rev();
        let range = match before {
            Some(b) => range.before(&index.entry(b)),
            None => range,
        };
        self.index_keys(index, range)
    }

    /// Records listed under an index value, in key order, strictly after `after`.
    pub fn by_index<'s, T: Record>(
        &'s self,
        index: &IndexKey,
        after: Option<&[u8]>,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        self.index_scan(index, after)
            .try_filter_map(move |k| async move { self.get_by_key::<T>(&k).await })
    }

    /// Records listed under an index value, newest (highest key) first, strictly before
    /// `before`.
    pub fn by_index_rev<'s, T: Record>(
        &'s self,
        index: &IndexKey,
        before: Option<&[u8]>,
    ) -> impl Stream<Item = Result<T>> + Send + use<'s, T> {
        self.index_scan_rev(index, before)
            .try_filter_map(move |k| async move { self.get_by_key::<T>(&k).await })
    }

    /// How many records are listed under an index value.
    pub async fn index_count(&self, index: &IndexKey) -> Result<u64> {
        self.count_range(Space::Index, &KeyRange::prefix(&index.prefix()))
            .await
    }

    /// Up to `limit` jobs whose lease (cluster mode: `JobState::Leased`) ended at or before
    /// `now`, soonest ended first: one range read over the `LEASED_JOBS` entries, which sort by
    /// the lease's end.
    pub async fn leases_ended_by(&self, now: Time, limit: usize) -> Result<Vec<Id>> {
        use crate::records::{LEASED_JOBS, leased_jobs_key};
        let first = IndexKey::new(LEASED_JOBS, 0u64.to_be_bytes()).prefix();
        let plen = first.len();
        let past = leased_jobs_key(now + chrono::Duration::milliseconds(1)).prefix();
        let range = KeyRange {
            start: std::ops::Bound::Included(first),
            end: std::ops::Bound::Excluded(past),
            reverse: false,
        };
        let entries = self.read_range(Space::Index, &range, limit).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, _)| Id::from_slice(k.get(plen..)?))
            .collect())
    }

    /// The record that claimed a unique index value (see [`crate::Tx::claim_unique`]).
    pub async fn unique<T: Record>(&self, index: &IndexKey) -> Result<Option<T>> {
        match self.read(Space::Index, &index.unique_marker()).await? {
            Some(k) => self.get_by_key(&k).await,
            None => Ok(None),
        }
    }

    /// Every (value, primary key) listed in `index`, over all its values, in key order: one
    /// range read for what would otherwise be a read per value (start-up's open jobs of every
    /// computer).
    pub fn index_entries<'s>(
        &'s self,
        index: u8,
    ) -> impl Stream<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + use<'s> {
        self.scan_raw(Space::Index, KeyRange::prefix(&[0, index]))
            .and_then(|(k, _)| async move {
                split_index_key(&k).map(|(value, primary)| (value.to_vec(), primary.to_vec()))
            })
    }

    /// Every (value, primary key) claimed in the unique index `index` (see
    /// [`crate::Tx::claim_unique`]), in value order: start-up's agent tokens in one range read.
    pub fn unique_claims<'s>(
        &'s self,
        index: u8,
    ) -> impl Stream<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + use<'s> {
        self.scan_raw(Space::Index, KeyRange::prefix(&[1, index]))
            .and_then(|(k, primary)| async move {
                split_index_key(&k).map(|(value, _)| (value.to_vec(), primary))
            })
    }

    /// Records when agents last polled, in one batch (not a transaction over the records: a
    /// lost write-back only makes `lastSeenAt` older).
    pub async fn put_last_seen(&self, seen: &[(Id, Time)]) -> Result<()> {
        let entries = seen
            .iter()
            .map(|(id, t)| {
                let millis = t.timestamp_millis().to_be_bytes().to_vec();
                (id.as_bytes().to_vec(), Some(millis))
            })
            .collect();
        self.apply_batch(Space::LastSeen, entries).await
    }

    /// When the agent of `computer` last polled, as last written back.
    pub async fn last_seen(&self, computer: &Id) -> Result<Option<Time>> {
        Ok(self
            .read(Space::LastSeen, computer.as_bytes())
            .await?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .and_then(|b| chrono::DateTime::from_timestamp_millis(i64::from_be_bytes(b))))
    }

    /// Checks every index entry points at a record that lists it, and every record's index
    /// entries exist. Returns a description of each problem found.
    pub async fn check_indexes(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        let mut counts = std::collections::BTreeMap::new();
        let mut counters = std::collections::BTreeMap::new();
        for kind in crate::KINDS {
            let mut records = std::pin::pin!(self.scan_raw(Space::Records(kind), KeyRange::all()));
            while let Some((k, v)) = records.try_next().await? {
                if kind == crate::Kind::Session
                    && let Err(e) = crate::counts::count_into(&mut counts, &k, &v)
                {
                    problems.push(format!("sessions: record {}: {e}", hex::encode(&k)));
                }
                match crate::index::entries_of(kind, &k, &v) {
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
        let mut index = std::pin::pin!(self.scan_raw(Space::Index, KeyRange::all()));
        while let Some((k, v)) = index.try_next().await? {
            if k.first() == Some(&1) {
                continue; // unique markers are checked by their owners' lookups
            }
            if crate::counts::is_counter(&k) {
                counters.insert(k, v);
                continue;
            }
            if !expected.contains(&k) {
                problems.push(format!(
                    "index entry {} points at no record that lists it",
                    hex::encode(&k)
                ));
            }
            seen.insert(k);
        }
        for e in expected.difference(&seen) {
            problems.push(format!("index entry {} is missing", hex::encode(e)));
        }
        problems.extend(crate::counts::problems(&counts, &counters));
        Ok(problems)
    }
}

/// An index key's value and what follows it (`IndexKey::prefix`: marker, index, value length
/// as u16 big-endian, value, then the primary key of an entry).
fn split_index_key(k: &[u8]) -> Result<(&[u8], &[u8])> {
    let len = k
        .get(2..4)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    match len {
        Some(len) if k.len() >= 4 + len => Ok(k[4..].split_at(len)),
        _ => Err(StoreError::Corrupt(format!(
            "index key {} is cut short",
            hex::encode(k)
        ))),
    }
}
