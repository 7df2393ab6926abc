//! The request counters and latency histograms behind `/metrics` (rendered by `api::metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    pub session_events: AtomicU64,
    pub sessions_finished: AtomicU64,
    /// Steps planned from a session another replica had moved on meanwhile (cluster mode):
    /// not stored, the session re-read.
    pub session_steps_stale: AtomicU64,
    pub job_results: AtomicU64,
}

#[derive(Default, Clone)]
pub struct Histogram {
    pub counts: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Metrics {
    /// Requests so far by (matched route, status).
    pub fn requests(&self) -> BTreeMap<(String, u16), u64> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Request durations so far by matched route.
    pub fn durations(&self) -> BTreeMap<String, Histogram> {
        self.durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let h = d.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
}
