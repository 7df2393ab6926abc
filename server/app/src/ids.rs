//! Fresh ids. The core never mints one (it takes an `IdSource`); the server mints UUIDv7s,
//! whose bytes sort by creation time (store keys, pagination cursors).

use upkeep_core::domain::Id;
use upkeep_core::engine::IdSource;

/// A new time-ordered id.
pub fn fresh() -> Id {
    Id(uuid::Uuid::now_v7())
}

/// The engine's id source in the server.
pub fn source() -> IdSource {
    IdSource::new(fresh)
}
