//! The request counters and latency histograms behind `/metrics` (rendered by `api::metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Per matched route: one lock and, once a route has been seen, no allocation per request.
    routes: Mutex<BTreeMap<String, RouteStats>>,
    pub session_events: AtomicU64,
    pub sessions_finished: AtomicU64,
    /// Steps planned from a session another replica had moved on meanwhile (cluster mode):
    /// not stored, the session re-read.
    pub session_steps_stale: AtomicU64,
    pub job_results: AtomicU64,
}

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    durations: Histogram,
}

impl RouteStats {
    fn observe(&mut self, status: u16, seconds: f64) {
        *self.by_status.entry(status).or_default() += 1;
        let h = &mut self.durations;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
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
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .flat_map(|(route, r)| {
                r.by_status
                    .iter()
                    .map(move |(status, n)| ((route.clone(), *status), *n))
            })
            .collect()
    }

    /// Request durations so far by matched route.
    pub fn durations(&self) -> BTreeMap<String, Histogram> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .map(|(route, r)| (route.clone(), r.durations.clone()))
            .collect()
    }

    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match routes.get_mut(route) {
            Some(r) => r.observe(status, seconds),
            None => routes
                .entry(route.to_string())
                .or_default()
                .observe(status, seconds),
        }
    }
}
