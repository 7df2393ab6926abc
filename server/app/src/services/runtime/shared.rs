//! Cluster mode: what a step and a start check in the shared store, inside their transaction,
//! because several replicas step and start sessions on one database.
//!
//! - Revision: a step is planned from the session as read, outside the transaction (the engine
//!   step is pure, the reads it needs are not). It is stored only if the stored session still
//!   has the revision it was planned from, and stores the next one. Two replicas that planned
//!   from one revision cannot both store: the second finds a newer revision (or, when both
//!   transactions overlap, PostgreSQL's SERIALIZABLE isolation fails one, which runs again and
//!   then finds it), and its step is dropped or planned again (`App::apply`).
//! - Running slots: the concurrency ceiling is `max_running` slot markers in the store
//!   (`RUNNING_SLOT`), claimed by the step that moves a session into the stages that need a
//!   slot, released by the step that leaves them; no slot free means the step is planned
//!   again without one (the session queues).
//! - Start marker: one marker per computer (`COMPUTER_ACTIVE_SESSION`) names its unfinished
//!   session; a start claims it in the start transaction, the finishing step releases it. A
//!   marker whose session is gone or finished is taken over.
//!
//! Architecture invariant: in cluster mode no step is stored unless its session's stored
//! revision is the one it was planned from (checked in the step's own transaction), so one
//! session's steps apply once each and in order, whichever replicas take them.
//!
//! A session that held a slot before this was built (or came over with `migrate`) has no
//! marker: it does not count against the shared ceiling until it leaves and claims again.

use crate::error::ApiError;
use upkeep_core::domain::Id;
use upkeep_core::engine;
use upkeep_core::session::Session;
use upkeep_store::records::{COMPUTER_ACTIVE_SESSION, RUNNING_SLOT, SESSION_SLOT};
use upkeep_store::{IndexKey, Record, StoreError, Tx, TxError, WriteError};

/// Why a step was not stored.
#[derive(Debug)]
pub(crate) enum StepError {
    Api(ApiError),
    /// Another replica stored a step of the session since this one read it.
    Stale,
    /// The step would take a running slot and every one is held.
    NoSlot,
}

impl From<ApiError> for StepError {
    fn from(e: ApiError) -> Self {
        StepError::Api(e)
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Api(e.into())
    }
}

impl From<WriteError<StepError>> for StepError {
    fn from(e: WriteError<StepError>) -> Self {
        match e {
            WriteError::Abort(e) => e,
            WriteError::Store(e) => e.into(),
        }
    }
}

impl From<WriteError<ApiError>> for StepError {
    fn from(e: WriteError<ApiError>) -> Self {
        StepError::Api(e.into())
    }
}

/// What a step planned from: checked in its transaction.
pub(super) struct Guard {
    planned_from: u64,
    held_slot: bool,
}

impl Guard {
    pub(super) fn of(s: &Session) -> Guard {
        Guard {
            planned_from: s.revision,
            held_slot: engine::holds_slot(s),
        }
    }

    /// The revision the step stores.
    pub(super) fn next(&self) -> u64 {
        self.planned_from + 1
    }

    /// Inside the step's transaction, before it writes `s` (the session after the step): the
    /// stored revision is still the planned one, a slot is claimed or released as the stage
    /// moved, and a finished session gives back its computer's start marker.
    pub(super) fn check(
        &self,
        tx: &mut Tx<'_>,
        s: &Session,
        max_running: usize,
    ) -> Result<(), TxError<StepError>> {
        match tx.get_own_part::<Session, StepError>(&s.id)? {
            Some(stored) if stored.revision == self.planned_from => {}
            _ => return Err(TxError::Abort(StepError::Stale)),
        }
        let holds = engine::holds_slot(s);
        if holds && !self.held_slot && !claim_slot(tx, s.id, max_running)? {
            return Err(TxError::Abort(StepError::NoSlot));
        }
        if !holds && self.held_slot {
            release_slot(tx, s.id)?;
        }
        if s.status.is_terminal() {
            let marker = start_marker(s.computer_id);
            if tx.index_has(&marker)?.as_deref() == Some(s.id.as_bytes().as_slice()) {
                tx.release_unique(&marker)?;
            }
        }
        Ok(())
    }
}

/// Claims a free running slot for `session`, trying them from a place its id picks (so
/// replicas claiming at once rarely read the same markers first); false when all are held.
fn claim_slot<E>(tx: &mut Tx<'_>, session: Id, max_running: usize) -> Result<bool, TxError<E>> {
    let mine = IndexKey::new(SESSION_SLOT, session.as_bytes());
    if tx.index_has(&mine)?.is_some() {
        return Ok(true);
    }
    let n = u32::try_from(max_running).unwrap_or(u32::MAX);
    if n == 0 {
        return Ok(false);
    }
    let first = (session.0.as_u128() % u128::from(n)) as u32;
    for i in 0..n {
        let slot = (first + i) % n;
        let key = IndexKey::new(RUNNING_SLOT, slot.to_be_bytes());
        if tx.index_has(&key)?.is_none() {
            tx.claim_unique(&key, session.as_bytes())?;
            tx.claim_unique(&mine, &slot.to_be_bytes())?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Gives back the running slot `session` holds, if it holds one.
fn release_slot<E>(tx: &mut Tx<'_>, session: Id) -> Result<(), TxError<E>> {
    let mine = IndexKey::new(SESSION_SLOT, session.as_bytes());
    let Some(slot) = tx.index_has(&mine)? else {
        return Ok(());
    };
    let key = IndexKey::new(RUNNING_SLOT, slot);
    if tx.index_has(&key)?.as_deref() == Some(session.as_bytes().as_slice()) {
        tx.release_unique(&key)?;
    }
    tx.release_unique(&mine)
}

/// The marker naming `computer`'s unfinished session.
fn start_marker(computer: Id) -> IndexKey {
    IndexKey::new(COMPUTER_ACTIVE_SESSION, computer.as_bytes())
}

/// Inside a start transaction: claims `s`'s computer for it. False when another unfinished
/// session holds the computer (a marker whose session is gone or finished is taken over).
pub(super) fn claim_computer<E>(tx: &mut Tx<'_>, s: &Session) -> Result<bool, TxError<E>> {
    let marker = start_marker(s.computer_id);
    if let Some(owner) = tx.index_has(&marker)?
        && owner != s.key()
    {
        let live = tx
            .get_by_key::<Session, E>(&owner)?
            .is_some_and(|o| !o.status.is_terminal());
        if live {
            return Ok(false);
        }
        tx.release_unique(&marker)?;
    }
    tx.claim_unique(&marker, &s.key())
}
