//! The caller's shutdown signal, checked between steps and raced against every long wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The caller's shutdown signal, pollable from many places: long waits race against it, and
/// between steps it is checked without waiting.
pub(crate) struct Stop<'a> {
    signal: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    fired: bool,
}

impl<'a> Stop<'a> {
    pub(crate) fn new(signal: impl Future<Output = ()> + Send + 'a) -> Self {
        Self {
            signal: Box::pin(signal),
            fired: false,
        }
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }

    /// Whether the signal has fired, without waiting. The signal is never polled again after
    /// it completed, which async blocks would not survive.
    pub(crate) fn fired(&mut self) -> bool {
        if !self.fired {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(()) = self.signal.as_mut().poll(&mut cx) {
                self.fired = true;
            }
        }
        self.fired
    }

    /// Sleeps; returns true when cut short by the signal.
    pub(crate) async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            () = self.wait() => true,
            () = tokio::time::sleep(duration) => false,
        }
    }

    /// Runs `work` unless the signal fires first; dropping `work` then cleans it up (a script's
    /// process group is killed).
    pub(crate) async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            value = work => Some(value),
            () = self.wait() => None,
        }
    }
}
