//! Records that prove what happened: a session's events form a hash chain, and when the
//! session ends the chain's head is signed (Ed25519, by `upkeep_server::attestation`).
//!
//! The chain: `h0 = SHA-256("upkeep session chain v1" ‖ session id)`, then for each event in
//! `sequence` order `hᵢ = SHA-256(hᵢ₋₁ ‖ len(jsonᵢ) as u64 BE ‖ jsonᵢ)`, where `jsonᵢ` is the
//! event's JSON as the store keeps it. Changing, removing, reordering or inserting an event
//! changes every later link, so the signed head no longer matches. The signed message binds
//! the session id and the last sequence covered, so a head cannot be moved to another session
//! or passed off as covering fewer events.
//!
//! Pure: hashing only. Signing and verifying signatures is the server's (`ring`).

use crate::domain::{Id, Time};
use crate::session::SessionEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The signature algorithm every attestation names.
pub const ALGORITHM: &str = "Ed25519";
/// The `format` of an exported record.
pub const RECORD_FORMAT: &str = "upkeep-session-record/1";

const CHAIN_DOMAIN: &[u8] = b"upkeep session chain v1";
const MESSAGE_DOMAIN: &[u8] = b"upkeep attestation v1\n";

/// A session's signed chain head, stored when the session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub session_id: Id,
    pub tenant_id: Id,
    /// Always [`ALGORITHM`].
    pub algorithm: String,
    /// The signing key's public half, base64url without padding (32 bytes).
    pub public_key: String,
    /// The chain's head after event `last_sequence`, lower-case hex.
    pub chain_head: String,
    /// The events the chain covers: 1..=last_sequence.
    pub last_sequence: u64,
    /// The signature of [`message`], base64url without padding.
    pub signature: String,
    pub signed_at: Time,
}

/// A session's record as exported (`GET /api/v1/sessions/{id}/record`) and verified offline
/// (`upkeep-server verify-record`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub format: String,
    pub attestation: Attestation,
    /// The events 1..=last_sequence, in order, as stored.
    pub events: Vec<SessionEvent>,
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event {found} is out of place: expected sequence {expected}")]
    OutOfOrder { expected: u64, found: u64 },
    #[error("event {sequence} belongs to session {other}")]
    OtherSession { sequence: u64, other: Id },
    #[error("the chain covers {covered} events, the attestation says {attested}")]
    Length { covered: u64, attested: u64 },
    #[error("the events' chain head {computed} is not the signed head {signed}")]
    Head { computed: String, signed: String },
    #[error("an event cannot be encoded: {0}")]
    Encode(String),
}

/// The chain's first link for `session`.
pub fn genesis(session: Id) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(session.as_bytes());
    h.finalize().into()
}

/// The link after `prev` for `event`.
pub fn link(prev: &[u8; 32], event: &SessionEvent) -> Result<[u8; 32], ChainError> {
    let json = serde_json::to_vec(event).map_err(|e| ChainError::Encode(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(prev);
    h.update((json.len() as u64).to_be_bytes());
    h.update(&json);
    Ok(h.finalize().into())
}

/// The head of `session`'s chain over `events`, which must be its events 1..=n in order.
/// Returns the head and n.
pub fn chain<'a>(
    session: Id,
    events: impl IntoIterator<Item = &'a SessionEvent>,
) -> Result<([u8; 32], u64), ChainError> {
    let mut head = genesis(session);
    let mut n = 0u64;
    for e in events {
        if e.session_id != session {
            return Err(ChainError::OtherSession {
                sequence: e.sequence,
                other: e.session_id,
            });
        }
        if e.sequence != n + 1 {
            return Err(ChainError::OutOfOrder {
                expected: n + 1,
                found: e.sequence,
            });
        }
        head = link(&head, e)?;
        n = e.sequence;
    }
    Ok((head, n))
}

/// What the server signs: the session, the last sequence covered and the chain head.
pub fn message(session: Id, last_sequence: u64, head: &[u8; 32]) -> Vec<u8> {
    let mut m = MESSAGE_DOMAIN.to_vec();
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(&last_sequence.to_be_bytes());
    m.extend_from_slice(head);
    m
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Attestation {
    /// Checks that `events` (the session's events from 1, in order; later ones are ignored)
    /// hash to the signed head. The signature itself is checked by the caller, over
    /// [`Attestation::message`].
    pub fn check_chain<'a>(
        &self,
        events: impl IntoIterator<Item = &'a SessionEvent>,
    ) -> Result<(), ChainError> {
        let covered = events
            .into_iter()
            .take_while(|e| e.sequence <= self.last_sequence);
        let (head, n) = chain(self.session_id, covered)?;
        if n != self.last_sequence {
            return Err(ChainError::Length {
                covered: n,
                attested: self.last_sequence,
            });
        }
        let computed = hex(&head);
        if computed != self.chain_head {
            return Err(ChainError::Head {
                computed,
                signed: self.chain_head.clone(),
            });
        }
        Ok(())
    }

    /// The signed message this attestation claims, from its own fields (the head as hex is
    /// decoded; a malformed head gives a message no signature matches).
    pub fn message(&self) -> Vec<u8> {
        let mut head = [0u8; 32];
        let bytes = self.chain_head.as_bytes();
        if bytes.len() == 64 {
            for (i, pair) in bytes.chunks(2).enumerate() {
                let text = std::str::from_utf8(pair).unwrap_or("");
                head[i] = u8::from_str_radix(text, 16).unwrap_or(0);
            }
        }
        message(self.session_id, self.last_sequence, &head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionStatus;

    fn id(n: u128) -> Id {
        Id(uuid::Uuid::from_u128(n))
    }

    fn events(session: Id, n: u64) -> Vec<SessionEvent> {
        (1..=n)
            .map(|sequence| SessionEvent {
                session_id: session,
                tenant_id: id(9),
                sequence,
                at: chrono::DateTime::from_timestamp(1_800_000_000 + sequence as i64, 0)
                    .unwrap_or_default(),
                status: SessionStatus::Executing,
                action_id: None,
                action_status: None,
                log_line: Some(format!("line {sequence}")),
            })
            .collect()
    }

    fn attested(session: Id, evs: &[SessionEvent]) -> Attestation {
        let (head, n) = chain(session, evs).unwrap();
        Attestation {
            session_id: session,
            tenant_id: id(9),
            algorithm: ALGORITHM.into(),
            public_key: String::new(),
            chain_head: hex(&head),
            last_sequence: n,
            signature: String::new(),
            signed_at: evs[0].at,
        }
    }

    #[test]
    fn any_change_to_any_event_breaks_the_chain() {
        let s = id(1);
        let evs = events(s, 5);
        let a = attested(s, &evs);
        assert_eq!(a.check_chain(&evs), Ok(()));
        for i in 0..evs.len() {
            let mut changed = evs.clone();
            changed[i].log_line = Some(format!("line {}!", i + 1));
            assert!(
                matches!(a.check_chain(&changed), Err(ChainError::Head { .. })),
                "a changed event {i} must not verify"
            );
        }
        let mut status = evs.clone();
        status[4].status = SessionStatus::Passed;
        assert!(a.check_chain(&status).is_err());
    }

    #[test]
    fn removed_reordered_or_foreign_events_do_not_verify() {
        let s = id(1);
        let evs = events(s, 4);
        let a = attested(s, &evs);
        assert_eq!(
            a.check_chain(&evs[..3]),
            Err(ChainError::Length {
                covered: 3,
                attested: 4
            })
        );
        let mut swapped = evs.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            a.check_chain(&swapped),
            Err(ChainError::OutOfOrder { .. })
        ));
        let mut foreign = evs.clone();
        foreign[2].session_id = id(2);
        assert!(matches!(
            a.check_chain(&foreign),
            Err(ChainError::OtherSession { .. })
        ));
        // The same events under another session id hash to another head.
        let other: Vec<_> = evs
            .iter()
            .cloned()
            .map(|mut e| {
                e.session_id = id(2);
                e
            })
            .collect();
        assert_ne!(chain(id(2), &other).unwrap().0, chain(s, &evs).unwrap().0);
    }

    #[test]
    fn later_events_are_outside_the_attestation() {
        let s = id(1);
        let evs = events(s, 6);
        let a = attested(s, &evs[..4]);
        assert_eq!(a.check_chain(&evs), Ok(()));
    }

    #[test]
    fn the_message_binds_session_length_and_head() {
        let s = id(1);
        let evs = events(s, 3);
        let a = attested(s, &evs);
        let (head, n) = chain(s, &evs).unwrap();
        assert_eq!(a.message(), message(s, n, &head));
        assert_ne!(message(s, n, &head), message(id(2), n, &head));
        assert_ne!(message(s, n, &head), message(s, n - 1, &head));
        let mut bad = a.clone();
        bad.chain_head = "zz".into();
        assert_ne!(bad.message(), a.message());
    }
}
