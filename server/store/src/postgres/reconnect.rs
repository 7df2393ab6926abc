//! Riding out a lost database: a PostgreSQL restart or fail-over cuts every pooled connection
//! (SQLSTATE 57P01 to statements in flight, then closed sockets) and refuses new ones for a few
//! seconds. A call that lost its connection before anything could have been applied runs again
//! on a fresh one, with growing pauses, for at most [`WINDOW`]; then its error goes to the
//! caller. What may already have been applied is never repeated here: a COMMIT whose answer was
//! lost is reported as an error (its outcome is unknown), and the caller's own rules (a
//! session step re-reads and checks what it applies to) decide.

use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

/// How long a call keeps trying to reach a database that went away.
pub(super) const WINDOW: Duration = Duration::from_secs(20);

/// Whether `e` says the connection or the server went away rather than that the statement was
/// wrong: the socket closed, an I/O error, or the server shutting down or not accepting yet.
pub(super) fn lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::CONNECTION_FAILURE
                || *c == SqlState::CONNECTION_EXCEPTION
        }
        // No SQLSTATE: the error came from the client side (I/O, a closed connection).
        None => std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// Whether the pool could not hand out a connection because the server is unreachable (not
/// because of a bad password or URL, which waiting will not mend).
pub(super) fn pool_lost(e: &deadpool_postgres::PoolError) -> bool {
    match e {
        deadpool_postgres::PoolError::Backend(b) => b.as_db_error().is_none() || lost(b),
        deadpool_postgres::PoolError::Timeout(_) => true,
        _ => false,
    }
}

/// Growing pauses until [`WINDOW`] has passed since the first failure.
pub(super) struct Backoff {
    deadline: Option<Instant>,
    pause: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            deadline: None,
            pause: Duration::from_millis(50),
        }
    }

    /// Waits before the next try; `false` when the window has passed (give up).
    pub(super) async fn wait(&mut self) -> bool {
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + WINDOW);
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        true
    }
}

/// A failed call: from the pool or from the database. `?` turns either into it.
pub(super) enum Failure {
    Pool(deadpool_postgres::PoolError),
    Db(tokio_postgres::Error),
}

impl Failure {
    pub(super) fn lost(&self) -> bool {
        match self {
            Failure::Pool(e) => pool_lost(e),
            Failure::Db(e) => lost(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Failure::Pool(e)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<Failure> for crate::StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Pool(e) => e.into(),
            Failure::Db(e) => e.into(),
        }
    }
}

/// Runs `call` until it succeeds, fails for another reason than a lost database, or the
/// window passes. Only for calls that are safe to repeat (reads, idempotent writes).
pub(super) async fn retrying<T, F, Fut>(mut call: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Err(f) if f.lost() && backoff.wait().await => {}
            r => return r.map_err(Into::into),
        }
    }
}
