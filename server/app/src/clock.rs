//! The server's notion of "now". Production uses the system clock; tests start the server with
//! `--test-clock` and move time through `POST /debug/clock`, so schedules, windows and business
//! hours are tested without waiting.

use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::watch;
use upkeep_core::domain::Time;

#[derive(Clone)]
pub struct Clock {
    /// Offset in milliseconds added to the system clock (0 in production).
    offset_ms: Arc<AtomicI64>,
    /// Bumped whenever a test moves the clock, so timers re-check at once.
    moved: watch::Sender<u64>,
    pub settable: bool,
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(0)),
            moved: watch::channel(0).0,
            settable: false,
        }
    }

    pub fn starting_at(t: Time) -> Clock {
        let c = Clock {
            settable: true,
            ..Clock::system()
        };
        c.set(t);
        c
    }

    pub fn now(&self) -> Time {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock (test clocks only; ignored otherwise).
    pub fn set(&self, t: Time) {
        if !self.settable {
            return;
        }
        let off = (t - Utc::now()).num_milliseconds();
        self.offset_ms.store(off, Ordering::Relaxed);
        self.moved.send_modify(|v| *v += 1);
    }

    pub fn subscribe_moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }
}
