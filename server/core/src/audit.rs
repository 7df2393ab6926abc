//! The audit trail: who changed what, from where, when.
//!
//! Architecture invariant: an audit record is written in the same store transaction as the
//! change it describes (a change without its record, or a record without its change, cannot be
//! left behind by a crash). The store completes and writes the record (`upkeep_store`); the
//! API layer builds it from the actor (`upkeep_server::audit`).

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorKind {
    User,
    ApiKey,
    Agent,
    System,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Time-ordered (v7): the store lists audit records in the order they happened.
    pub id: Id,
    pub at: Time,
    /// The mutation's name (`createDeployment`, `revokeApiKey`, …) or `enrollComputer`,
    /// `reenrollComputer`, `login`, `loginFailed`.
    pub action: String,
    pub actor_kind: ActorKind,
    pub actor_id: Option<Id>,
    pub actor_name: String,
    /// The caller's address, when it came over the network.
    pub address: Option<String>,
    pub tenant_id: Option<Id>,
    pub target_type: String,
    pub target_id: Option<String>,
    /// A short diff or description; secrets never appear in it.
    pub summary: String,
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}
