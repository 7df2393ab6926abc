//! The group commit: one flusher thread makes every write requested so far durable with one
//! `fsync` (see the module docs of `embedded` for why).

use super::Inner;
use crate::{Result, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};

/// The group-commit flusher shared by a store and its thread.
pub(crate) struct Flusher {
    state: std::sync::Mutex<FlushState>,
    wake: std::sync::Condvar,
    /// (highest request generation made durable, error of the last flush if it failed).
    done: tokio::sync::watch::Sender<(u64, Option<String>)>,
    /// fsyncs made, and the time they took in microseconds (for `/metrics`).
    count: AtomicU64,
    micros: AtomicU64,
}

impl Default for Flusher {
    fn default() -> Flusher {
        Flusher {
            state: std::sync::Mutex::new(FlushState::default()),
            wake: std::sync::Condvar::new(),
            done: tokio::sync::watch::Sender::new((0, None)),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct FlushState {
    /// Generation of the newest flush request; every write before it must be made durable.
    requested: u64,
    stop: bool,
}

impl Flusher {
    /// The flusher thread: waits for requests, then makes every write made before the newest
    /// one durable with one `fsync`. Ends when the store is dropped.
    pub(super) fn run(&self, store: std::sync::Weak<Inner>) {
        let mut flushed = 0;
        loop {
            let target = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while st.requested <= flushed && !st.stop {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop {
                    return;
                }
                st.requested
            };
            // Every request up to `target` was made after its writes, so this flush covers them.
            let Some(inner) = store.upgrade() else { return };
            let t0 = std::time::Instant::now();
            let r = inner.db.flush();
            drop(inner);
            self.count.fetch_add(1, Ordering::Relaxed);
            self.micros
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            flushed = target;
            if let Err(e) = &r {
                tracing::error!(error = %e, "store flush failed");
            }
            self.done
                .send_replace((target, r.err().map(|e| e.to_string())));
        }
    }
}

impl Flusher {
    /// Group-commit flushes made since start and the seconds they took.
    pub(super) fn counts(&self) -> (u64, f64) {
        (
            self.count.load(Ordering::Relaxed),
            self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// Makes everything written so far durable (a group commit: see the module docs).
    pub(super) async fn flush(&self) -> Result<()> {
        let mut done = self.done.subscribe();
        let mine = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.requested += 1;
            st.requested
        };
        self.wake.notify_one();
        let outcome = done
            .wait_for(|(generation, _)| *generation >= mine)
            .await
            .map_err(|_| StoreError::Engine("the store was closed during a flush".into()))?;
        match &outcome.1 {
            None => Ok(()),
            Some(e) => Err(StoreError::Engine(format!("flush failed: {e}"))),
        }
    }

    /// Ends the flusher thread (when the store is dropped).
    pub(super) fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use upkeep_core::domain::{Id, Tenant};

    fn tenant(n: u128) -> Tenant {
        Tenant {
            id: Id::from_u128(n + 1),
            name: format!("t{n}"),
            company_name: None,
            time_zone: upkeep_core::types::TimeZone::UTC.into(),
            mail_from: None,
            logo_url: None,
            primary_color: None,
            auto_onboarding: false,
            excluded_from_maintenance: false,
            business_hours: None,
            mail_bcc: Vec::new(),
            preflight_scripts: Vec::new(),
            created_at: chrono::Utc::now(),
        }
    }

    /// Many writers acknowledging at once all get their flush, and what they wrote is there
    /// after a reopen. With sled's `flush_async` this hung with eight or more callers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_complete_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_embedded(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let t = tenant(i);
                store
                    .write(|tx| tx.put::<_, String>(&t))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                store.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(t.id)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            let done = tokio::time::timeout(std::time::Duration::from_secs(30), t)
                .await
                .expect("a flush hung");
            ids.push(done.unwrap().unwrap());
        }
        drop(store);
        // The flusher thread let go of the database: the directory opens again at once.
        let store = crate::open_embedded(dir.path()).unwrap();
        for id in ids {
            assert!(store.get::<Tenant>(&id).await.unwrap().is_some());
        }
        assert_eq!(store.count::<Tenant>().await.unwrap(), 64);
    }
}
