//! Agent tokens this replica does not hold in memory. In cluster mode an agent enrolled through
//! another replica polls this one with a token it never saw, so a miss is looked up in the
//! store (`AGENT_TOKEN`, by the token's hash). What keeps random tokens from turning into
//! database reads: hashes found unknown are remembered for a while ([`NEGATIVE_TTL`], at most
//! [`NEGATIVE_CAP`] of them), and look-ups have a budget ([`LOOKUPS_PER_SECOND`], a token
//! bucket); past it the caller answers 429.
//!
//! Pure: the caller passes the instant, so the tests below drive time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a hash found unknown is answered from memory.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// At most this many unknown hashes are remembered (the oldest go first).
pub const NEGATIVE_CAP: usize = 4096;
/// Store look-ups of unknown tokens per second (and the burst).
pub const LOOKUPS_PER_SECOND: f64 = 50.0;

/// What to do about a token missing from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Found unknown a moment ago: refuse it without a look-up.
    KnownUnknown,
    /// Look it up in the store (a unit of the budget was taken).
    LookUp,
    /// The look-up budget is spent: answer 429.
    OverBudget,
}

pub struct TokenMisses {
    inner: Mutex<Inner>,
    ttl: Duration,
    cap: usize,
    per_second: f64,
}

struct Inner {
    /// Hash → when it was found unknown.
    unknown: HashMap<String, Instant>,
    /// The same, oldest first (entries whose instant no longer matches the map are stale).
    order: VecDeque<(Instant, String)>,
    /// Look-up tokens left, and when they were last refilled.
    budget: (f64, Instant),
}

impl TokenMisses {
    pub fn new(now: Instant) -> TokenMisses {
        TokenMisses::with_limits(now, NEGATIVE_TTL, NEGATIVE_CAP, LOOKUPS_PER_SECOND)
    }

    pub fn with_limits(now: Instant, ttl: Duration, cap: usize, per_second: f64) -> TokenMisses {
        TokenMisses {
            inner: Mutex::new(Inner {
                unknown: HashMap::new(),
                order: VecDeque::new(),
                budget: (per_second, now),
            }),
            ttl,
            cap,
            per_second,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides about the token hashed `hash`, missing from memory at `now`.
    pub fn on_miss(&self, hash: &str, now: Instant) -> Miss {
        let mut i = self.inner();
        if let Some(at) = i.unknown.get(hash) {
            if now.saturating_duration_since(*at) < self.ttl {
                return Miss::KnownUnknown;
            }
            i.unknown.remove(hash);
        }
        let (tokens, at) = i.budget;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second)
            .min(self.per_second);
        if tokens < 1.0 {
            i.budget = (tokens, now);
            return Miss::OverBudget;
        }
        i.budget = (tokens - 1.0, now);
        Miss::LookUp
    }

    /// Remembers that the store holds no token hashed `hash`.
    pub fn found_unknown(&self, hash: String, now: Instant) {
        let mut i = self.inner();
        if i.unknown.contains_key(&hash) {
            return;
        }
        while let Some((at, _)) = i.order.front() {
            if now.saturating_duration_since(*at) < self.ttl && i.order.len() < self.cap {
                break;
            }
            if let Some((at, h)) = i.order.pop_front()
                && i.unknown.get(&h) == Some(&at)
            {
                i.unknown.remove(&h);
            }
        }
        i.unknown.insert(hash.clone(), now);
        i.order.push_back((now, hash));
    }

    /// How many unknown hashes are remembered.
    pub fn remembered(&self) -> usize {
        self.inner().unknown.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_token_is_looked_up_once_then_refused_from_memory_until_it_ages() {
        let t0 = Instant::now();
        let m = TokenMisses::with_limits(t0, Duration::from_secs(60), 16, 50.0);
        assert_eq!(m.on_miss("h1", t0), Miss::LookUp);
        m.found_unknown("h1".into(), t0);
        assert_eq!(
            m.on_miss("h1", t0 + Duration::from_secs(59)),
            Miss::KnownUnknown
        );
        assert_eq!(m.on_miss("h1", t0 + Duration::from_secs(60)), Miss::LookUp);
        // Another hash is not refused by the first one's entry.
        assert_eq!(m.on_miss("h2", t0), Miss::LookUp);
    }

    #[test]
    fn the_negative_cache_keeps_at_most_its_cap_dropping_the_oldest() {
        let t0 = Instant::now();
        let m = TokenMisses::with_limits(t0, Duration::from_secs(60), 4, 1000.0);
        for n in 0..10 {
            m.found_unknown(format!("h{n}"), t0 + Duration::from_millis(n));
        }
        assert_eq!(m.remembered(), 4);
        let at = t0 + Duration::from_millis(20);
        assert_eq!(m.on_miss("h9", at), Miss::KnownUnknown);
        assert_eq!(m.on_miss("h6", at), Miss::KnownUnknown);
        assert_eq!(m.on_miss("h5", at), Miss::LookUp, "dropped as the oldest");
        // A hash noted again keeps one entry.
        m.found_unknown("h9".into(), at);
        m.found_unknown("h9".into(), at);
        assert_eq!(m.remembered(), 4);
        assert_eq!(m.on_miss("h9", at), Miss::KnownUnknown);
    }

    #[test]
    fn look_ups_past_the_budget_are_refused_until_it_refills() {
        let t0 = Instant::now();
        let m = TokenMisses::with_limits(t0, Duration::from_secs(60), 4096, 50.0);
        let taken = (0..200)
            .filter(|n| m.on_miss(&format!("r{n}"), t0) == Miss::LookUp)
            .count();
        assert_eq!(taken, 50, "a burst of one second's budget");
        assert_eq!(m.on_miss("r-late", t0), Miss::OverBudget);
        // A tenth of a second later, five more.
        let later = t0 + Duration::from_millis(100);
        let more = (0..20)
            .filter(|n| m.on_miss(&format!("s{n}"), later) == Miss::LookUp)
            .count();
        assert_eq!(more, 5);
        // A known-unknown hash costs nothing from the budget, even when it is spent.
        m.found_unknown("r0".into(), later);
        assert_eq!(m.on_miss("r0", later), Miss::KnownUnknown);
    }
}
