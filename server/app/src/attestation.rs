//! Signed session records (CONTRACT §16): when a session ends, the head of its events' hash
//! chain (`upkeep_core::attest`) is signed with the server's Ed25519 key and stored beside the
//! session in the same transaction as its last step.
//!
//! The key is `attestation.key` in the data dir (PKCS#8, 0600, made at the first start, copied
//! by `backup` with the rest of the data dir). In cluster mode it lives in the store's meta
//! space, claimed by the first replica like the JWT key (`secrets::shared`). Rotating it
//! (`upkeep-server rotate-attestation-key`) keeps the old public keys in
//! `attestation-keys.retired`, and every stored attestation names the key that signed it, so
//! records signed before a rotation still verify.
//!
//! Verifying needs no secret: `check` recomputes every stored chain and checks its signature,
//! and `verify-record` does the same for an exported record, optionally against a public key
//! the verifier trusts (one published by the MSP) instead of the one the record carries.

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::path::Path;
use upkeep_core::attest::{ALGORITHM, Attestation, ChainError, SessionRecord};
use upkeep_core::domain::{Id, Time};
use upkeep_core::session::SessionEvent;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "attestation.key";
/// Public keys of rotated-out keys, one per line, oldest first.
pub const RETIRED_FILE: &str = "attestation-keys.retired";
/// The key's name in the store's meta space (cluster mode).
pub const SHARED_KEY: &[u8] = b"secret:attestation";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The server's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    public: String,
}

/// Why a record or an attestation does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the events do not match the signed chain: {0}")]
    Chain(#[from] ChainError),
    #[error("the signature does not verify with the record's public key")]
    Signature,
    #[error("the record was signed by {signed_by}, not by the trusted key {trusted}")]
    UntrustedKey { signed_by: String, trusted: String },
    #[error("unknown algorithm {0:?} (expected {ALGORITHM})")]
    Algorithm(String),
    #[error("unknown record format {0:?}")]
    Format(String),
}

/// A fresh key, as a PKCS#8 document.
fn generate() -> anyhow::Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| anyhow::anyhow!("no random bytes for {KEY_FILE}"))
}

fn read_key_file(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

impl Signer {
    pub fn from_pkcs8(bytes: &[u8]) -> anyhow::Result<Signer> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|_| anyhow::anyhow!("{KEY_FILE} is not an Ed25519 PKCS#8 key"))?;
        let public = B64.encode(pair.public_key().as_ref());
        Ok(Signer { pair, public })
    }

    /// Reads `dir/attestation.key`, or makes it (0600) when there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Signer> {
        let bytes = match read_key_file(dir)? {
            Some(b) => b,
            None => {
                let b = generate()?;
                crate::datadir::write_private(&dir.join(KEY_FILE), &b)?;
                b
            }
        };
        Self::from_pkcs8(&bytes)
    }

    /// Cluster mode: the store's key, claimed by the first replica (offering the data dir's
    /// key, so a server moved to PostgreSQL keeps signing with its key).
    pub async fn shared(store: &upkeep_store::Db, dir: &Path) -> anyhow::Result<Signer> {
        let offer = match read_key_file(dir)? {
            Some(b) if Signer::from_pkcs8(&b).is_ok() => b,
            _ => generate()?,
        };
        let held = store
            .claim(upkeep_store::Space::Meta, SHARED_KEY, offer)
            .await?;
        Self::from_pkcs8(&held)
    }

    /// The public key, base64url without padding.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Signs the chain of `events` (the session's events 1..=n, in order).
    pub fn attest<'a>(
        &self,
        session: Id,
        tenant: Id,
        events: impl IntoIterator<Item = &'a SessionEvent>,
        now: Time,
    ) -> Result<Attestation, ChainError> {
        let (head, last_sequence) = upkeep_core::attest::chain(session, events)?;
        let message = upkeep_core::attest::message(session, last_sequence, &head);
        Ok(Attestation {
            session_id: session,
            tenant_id: tenant,
            algorithm: ALGORITHM.to_string(),
            public_key: self.public.clone(),
            chain_head: upkeep_core::attest::hex(&head),
            last_sequence,
            signature: B64.encode(self.pair.sign(&message).as_ref()),
            signed_at: now,
        })
    }
}

/// Checks `a`'s signature with the public key it names.
pub fn verify_signature(a: &Attestation) -> Result<(), VerifyError> {
    if a.algorithm != ALGORITHM {
        return Err(VerifyError::Algorithm(a.algorithm.clone()));
    }
    let key = B64
        .decode(&a.public_key)
        .map_err(|_| VerifyError::Signature)?;
    let signature = B64
        .decode(&a.signature)
        .map_err(|_| VerifyError::Signature)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&a.message(), &signature)
        .map_err(|_| VerifyError::Signature)
}

/// Checks a stored attestation against the session's stored events.
pub fn verify(a: &Attestation, events: &[SessionEvent]) -> Result<(), VerifyError> {
    a.check_chain(events)?;
    verify_signature(a)
}

/// Checks an exported record: its format, that it was signed by `trusted` (when given), its
/// chain and its signature.
pub fn verify_record(r: &SessionRecord, trusted: Option<&str>) -> Result<(), VerifyError> {
    if r.format != upkeep_core::attest::RECORD_FORMAT {
        return Err(VerifyError::Format(r.format.clone()));
    }
    if let Some(t) = trusted
        && t.trim() != r.attestation.public_key
    {
        return Err(VerifyError::UntrustedKey {
            signed_by: r.attestation.public_key.clone(),
            trusted: t.trim().to_string(),
        });
    }
    verify(&r.attestation, &r.events)
}

/// `rotate-attestation-key`: a new key in `dir`; the old one's public key is appended to
/// [`RETIRED_FILE`]. Returns (old public key, new public key).
pub fn rotate(dir: &Path) -> anyhow::Result<(Option<String>, String)> {
    let old = match read_key_file(dir)? {
        Some(b) => Some(Signer::from_pkcs8(&b)?.public),
        None => None,
    };
    if let Some(old) = &old {
        let path = dir.join(RETIRED_FILE);
        let mut kept = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        kept.push_str(old);
        kept.push('\n');
        crate::datadir::write_private(&path, kept.as_bytes())?;
    }
    let new = generate()?;
    crate::datadir::write_private(&dir.join(KEY_FILE), &new)?;
    Ok((old, Signer::from_pkcs8(&new)?.public))
}

/// `upkeep-server verify-record FILE [--public-key KEY]`: 0 when the record verifies, 1 when
/// it does not, 2 when it cannot be read.
pub fn verify_record_file(file: &Path, trusted: Option<&str>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let record: SessionRecord = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("verify-record: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match verify_record(&record, trusted) {
        Ok(()) => {
            println!(
                "record verifies: session {}, events 1..={}, chain head {}, signed by {}",
                record.attestation.session_id,
                record.attestation.last_sequence,
                record.attestation.chain_head,
                record.attestation.public_key
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "record does NOT verify (session {}): {e}",
                record.attestation.session_id
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_core::session::SessionStatus;

    fn events(session: Id, n: u64) -> Vec<SessionEvent> {
        (1..=n)
            .map(|sequence| SessionEvent {
                session_id: session,
                tenant_id: session,
                sequence,
                at: chrono::Utc::now(),
                status: SessionStatus::Executing,
                action_id: None,
                action_status: None,
                log_line: Some(format!("line {sequence}")),
            })
            .collect()
    }

    fn record(signer: &Signer) -> SessionRecord {
        let s = crate::ids::fresh();
        let evs = events(s, 4);
        SessionRecord {
            format: upkeep_core::attest::RECORD_FORMAT.into(),
            attestation: signer.attest(s, s, &evs, chrono::Utc::now()).unwrap(),
            events: evs,
        }
    }

    #[test]
    fn a_signed_record_verifies_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let r = record(&signer);
        verify_record(&r, None).unwrap();
        verify_record(&r, Some(signer.public_key())).unwrap();

        let mut changed = r.clone();
        changed.events[1].log_line = Some("line 2, edited".into());
        assert!(matches!(
            verify_record(&changed, None),
            Err(VerifyError::Chain(_))
        ));
        // A forger who recomputes the head cannot sign it.
        let (head, _) =
            upkeep_core::attest::chain(r.attestation.session_id, &changed.events).unwrap();
        changed.attestation.chain_head = upkeep_core::attest::hex(&head);
        assert!(matches!(
            verify_record(&changed, None),
            Err(VerifyError::Signature)
        ));
        // Signed by another key: it verifies with its own key, not against the trusted one.
        let other = Signer::from_pkcs8(&generate().unwrap()).unwrap();
        let foreign = record(&other);
        verify_record(&foreign, None).unwrap();
        assert!(matches!(
            verify_record(&foreign, Some(signer.public_key())),
            Err(VerifyError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn the_key_is_private_kept_and_rotated_with_the_old_public_key_retained() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Signer::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key(), "the key is kept");
        let signed_before = record(&first);

        let (old, new) = rotate(dir.path()).unwrap();
        assert_eq!(old.as_deref(), Some(first.public_key()));
        let after = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(after.public_key(), new);
        assert_ne!(new, first.public_key());
        let retired = std::fs::read_to_string(dir.path().join(RETIRED_FILE)).unwrap();
        assert_eq!(retired.lines().collect::<Vec<_>>(), [first.public_key()]);
        verify_record(&signed_before, Some(first.public_key())).unwrap();
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"not a key").unwrap();
        let e = Signer::load_or_create(dir.path()).err().unwrap();
        assert!(e.to_string().contains("not an Ed25519"), "{e}");
    }
}
