//! Apollo's automatic persisted queries: a client sends only the SHA-256 of its query
//! (`extensions.persistedQuery = {version: 1, sha256Hash}`); the server answers
//! `PersistedQueryNotFound` the first time, the client sends query and hash once, and from then
//! on the hash alone (also over `GET`, which caches well) runs the query.
//!
//! The cache is bounded in entries and in bytes (least recently used out first) and lives in
//! memory only: after a restart clients register their queries again, as the protocol expects.
//! (async-graphql's `apollo_persisted_queries` extension bounds entries only, answers without
//! an error code, and would add the `lru` crate; this is as small.)

use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Mutex;

/// Most queries the cache holds.
pub const MAX_ENTRIES: usize = 1000;

/// Most bytes of query text the cache holds (a single larger query is run but not kept).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Why a request's `persistedQuery` extension was not resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hash is unknown (never registered, or evicted): the client sends the query with it.
    NotFound,
    /// The extension is malformed, names another version, or its hash is not the query's.
    Invalid(String),
}

impl Refusal {
    /// The error code clients look for (`PERSISTED_QUERY_NOT_FOUND` is Apollo's).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound => "PERSISTED_QUERY_NOT_FOUND",
            Refusal::Invalid(_) => "BAD_REQUEST",
        }
    }

    /// The message; `PersistedQueryNotFound` exactly, as Apollo Client compares it.
    pub fn message(&self) -> String {
        match self {
            Refusal::NotFound => "PersistedQueryNotFound".into(),
            Refusal::Invalid(m) => m.clone(),
        }
    }
}

/// The queries registered by hash (one per router, shared by its requests).
#[derive(Default)]
pub struct PersistedQueries {
    inner: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
}

struct Entry {
    query: String,
    used: u64,
}

impl PersistedQueries {
    /// Resolves the `persistedQuery` extension of a request, if any (and removes it): with a
    /// query, checks the hash and registers it; without one, fills in the registered query.
    /// A request without the extension passes unchanged.
    pub fn resolve(
        &self,
        query: &mut Option<String>,
        extensions: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Refusal> {
        let Some(pq) = extensions.remove("persistedQuery") else {
            return Ok(());
        };
        let hash = requested_hash(&pq)?;
        match query {
            Some(q) => {
                let actual = hex::encode(sha2::Sha256::digest(q.as_bytes()));
                if actual != hash {
                    return Err(Refusal::Invalid("provided sha does not match query".into()));
                }
                self.insert(hash, q.clone());
                Ok(())
            }
            None => {
                *query = Some(self.get(&hash).ok_or(Refusal::NotFound)?);
                Ok(())
            }
        }
    }

    fn get(&self, hash: &str) -> Option<String> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.tick += 1;
        let tick = c.tick;
        let e = c.entries.get_mut(hash)?;
        e.used = tick;
        Some(e.query.clone())
    }

    fn insert(&self, hash: String, query: String) {
        if query.len() > MAX_BYTES {
            return;
        }
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.tick += 1;
        let used = c.tick;
        let len = query.len();
        if let Some(old) = c.entries.insert(hash, Entry { query, used }) {
            c.bytes -= old.query.len();
        }
        c.bytes += len;
        while c.entries.len() > MAX_ENTRIES || c.bytes > MAX_BYTES {
            // Linear in the entries, which are bounded: simpler than a linked list.
            let Some(oldest) = c
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = c.entries.remove(&oldest) {
                c.bytes -= e.query.len();
            }
        }
    }

    /// Queries held (tests).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The hash a `persistedQuery` extension asks for: `{version: 1, sha256Hash: <64 hex>}`.
fn requested_hash(pq: &serde_json::Value) -> Result<String, Refusal> {
    let bad = |m: &str| Refusal::Invalid(format!("extensions.persistedQuery: {m}"));
    let obj = pq
        .as_object()
        .ok_or_else(|| bad("must be an object {version: 1, sha256Hash}"))?;
    if obj.get("version").and_then(|v| v.as_i64()) != Some(1) {
        return Err(bad("only version 1 is supported"));
    }
    let hash = obj
        .get("sha256Hash")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("sha256Hash must be a string"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("sha256Hash must be 64 hexadecimal digits"));
    }
    Ok(hash.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ext(hash: &str) -> serde_json::Map<String, serde_json::Value> {
        json!({"persistedQuery": {"version": 1, "sha256Hash": hash}})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn sha(q: &str) -> String {
        hex::encode(sha2::Sha256::digest(q.as_bytes()))
    }

    #[test]
    fn unknown_then_registered_then_found() {
        let c = PersistedQueries::default();
        let q = "{ __typename }";
        let mut none = None;
        assert_eq!(
            c.resolve(&mut none, &mut ext(&sha(q))),
            Err(Refusal::NotFound)
        );
        let mut some = Some(q.to_string());
        let mut e = ext(&sha(q));
        c.resolve(&mut some, &mut e).unwrap();
        assert!(e.is_empty(), "the extension is consumed");
        let mut none = None;
        c.resolve(&mut none, &mut ext(&sha(q))).unwrap();
        assert_eq!(none.as_deref(), Some(q));
    }

    #[test]
    fn a_wrong_hash_is_refused_and_not_registered() {
        let c = PersistedQueries::default();
        let mut q = Some("{ a }".to_string());
        let r = c.resolve(&mut q, &mut ext(&sha("{ b }")));
        assert!(matches!(r, Err(Refusal::Invalid(m)) if m.contains("does not match")));
        assert!(c.is_empty());
        let mut q = Some("{ a }".to_string());
        let mut bad = json!({"persistedQuery": {"version": 2, "sha256Hash": sha("{ a }")}})
            .as_object()
            .cloned()
            .unwrap();
        assert!(matches!(
            c.resolve(&mut q, &mut bad),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_recently_used() {
        let c = PersistedQueries::default();
        let first = "{ q0 }".to_string();
        c.resolve(&mut Some(first.clone()), &mut ext(&sha(&first)))
            .unwrap();
        for i in 1..MAX_ENTRIES + 10 {
            let q = format!("{{ q{i} }}");
            // Keep the first one in use.
            c.resolve(&mut None, &mut ext(&sha(&first))).unwrap();
            c.resolve(&mut Some(q.clone()), &mut ext(&sha(&q))).unwrap();
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.resolve(&mut None, &mut ext(&sha(&first))).is_ok());
        assert_eq!(
            c.resolve(&mut None, &mut ext(&sha("{ q1 }"))),
            Err(Refusal::NotFound),
            "the least recently used went first"
        );
        // Bytes bound: two queries of more than half the budget cannot both stay.
        let big = |c: char| format!("{{ a(x: \"{}\") }}", c.to_string().repeat(MAX_BYTES / 2));
        for ch in ['x', 'y'] {
            let q = big(ch);
            c.resolve(&mut Some(q.clone()), &mut ext(&sha(&q))).unwrap();
        }
        assert_eq!(
            c.resolve(&mut None, &mut ext(&sha(&big('x')))),
            Err(Refusal::NotFound)
        );
        assert!(c.resolve(&mut None, &mut ext(&sha(&big('y')))).is_ok());
    }
}
