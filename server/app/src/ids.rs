//! Fresh ids. The core never mints one (it takes an `IdSource`); the server mints UUIDv7s,
//! whose bytes sort by creation time (store keys, pagination cursors).

use upkeep_core::domain::Id;
use upkeep_core::engine::IdSource;

/// A new time-ordered id.
pub fn fresh() -> Id {
    Id(uuid::Uuid::now_v7())
}

/// The engine's id source in the server (made once; each step clones the handle).
pub fn source() -> IdSource {
    static SOURCE: std::sync::OnceLock<IdSource> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| IdSource::new(fresh)).clone()
}
