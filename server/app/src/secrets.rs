//! SECRET parameter values at rest: sealed with ChaCha20-Poly1305 (`ring::aead`) under a key
//! kept in the data dir (`secret.key`, 32 random bytes, mode 0600, made at the first start),
//! opened only when a job is handed to its agent and to mask what the agent sends back.
//!
//! Architecture invariant: a SECRET value is sealed before anything stores it (deployment,
//! session plan, job record); its plain text lives only in the mutation that received it and
//! in the poll answer to the agent that runs it. Nothing here logs a value, sealed or not.
//!
//! A sealed value is `params::SEALED_PREFIX` + base64url(nonce ‖ ciphertext ‖ tag); the
//! parameter's name is the associated data, so a sealed value moved to another name does not
//! open.

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;
use std::path::Path;
use upkeep_agent_protocol as proto;
use upkeep_core::output::Secrets;
use upkeep_core::params::{SEALED_PREFIX, is_sealed};

pub mod shared;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "secret.key";
pub(crate) const KEY_LEN: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A sealed value that does not open (another key, or a changed record), or a value that
/// could not be sealed (the system's random source failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the SECRET parameter '{0}' cannot be decrypted with this server's key ({KEY_FILE})")]
    Open(String),
    #[error("the SECRET parameter '{0}' could not be encrypted")]
    Seal(String),
}

/// A fresh random key.
pub(crate) fn random_key() -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no random bytes for {KEY_FILE}"))?;
    Ok(b)
}

pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SecretBox {
    /// Reads `dir/secret.key`, or makes it (0600, written whole before it is renamed into
    /// place) when there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<SecretBox> {
        use anyhow::Context as _;
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let b = random_key()?;
                crate::datadir::write_private(&path, &b)?;
                b
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        anyhow::ensure!(
            bytes.len() == KEY_LEN,
            "{} must hold exactly {KEY_LEN} bytes (restore the one the secrets were sealed with)",
            path.display()
        );
        Self::from_key(&bytes)
    }

    pub(crate) fn from_key(bytes: &[u8]) -> anyhow::Result<SecretBox> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| anyhow::anyhow!("{KEY_FILE} is not a key"))?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Seals `value` of the parameter `name` (a fresh random nonce each time).
    pub fn seal(&self, name: &str, value: &str) -> Result<String, SealError> {
        let failed = || SealError::Seal(name.to_string());
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| failed())?;
        let mut buf = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| failed())?;
        let mut all = nonce.to_vec();
        all.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX}{}", B64.encode(all)))
    }

    /// Opens a value sealed for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<String, SealError> {
        let bad = || SealError::Open(name.to_string());
        let text = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(bad)?;
        let mut all = B64.decode(text).map_err(|_| bad())?;
        if all.len() < NONCE_LEN {
            return Err(bad());
        }
        let mut body = all.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&all).map_err(|_| bad())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }

    /// `parameters` with every sealed value opened, and the opened values (to mask).
    pub fn open_parameters(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<(BTreeMap<String, String>, Vec<String>), SealError> {
        let mut opened = Vec::new();
        let mut out = parameters.clone();
        for (k, v) in out.iter_mut() {
            if is_sealed(v) {
                *v = self.open(k, v)?;
                opened.push(v.clone());
            }
        }
        Ok((out, opened))
    }

    /// What to mask in the output of a job: its parameters' plain values long enough to be
    /// secrets, but those its session shows (`shown`, a typed task's non-SECRET values), and
    /// its SECRET values, opened.
    pub fn secrets_of(&self, job: &proto::JobKind, shown: &[String]) -> Secrets {
        let mut secrets = Secrets::default();
        for params in job_parameters(job) {
            let opened = self
                .open_parameters(params)
                .map(|(_, o)| o)
                .unwrap_or_default();
            secrets = secrets
                .with(Secrets::of(params).without(shown).values().to_vec())
                .with(opened);
        }
        secrets
    }

    /// The job as its agent gets it: sealed values opened. A value that does not open (the
    /// key was replaced since the session started, which the start checks against) is sent
    /// empty and logged by name.
    pub fn open_job(&self, mut job: proto::Job) -> proto::Job {
        let open = |params: &mut BTreeMap<String, String>| {
            for (k, v) in params.iter_mut() {
                if is_sealed(v) {
                    *v = self.open(k, v).unwrap_or_else(|e| {
                        tracing::error!(job = %job.id, error = %e, "secret parameter not opened");
                        String::new()
                    });
                }
            }
        };
        match &mut job.kind {
            proto::JobKind::Probe { probes } => {
                probes.iter_mut().for_each(|p| open(&mut p.parameters))
            }
            proto::JobKind::Step { parameters, .. } => open(parameters),
            _ => {}
        }
        job
    }

    /// An agent's answer with the job's secrets masked in every text it carries, before the
    /// engine, the store or a log line sees it.
    pub fn mask_outcome(
        &self,
        job: &proto::JobKind,
        outcome: proto::JobOutcome,
        shown: &[String],
    ) -> proto::JobOutcome {
        let secrets = self.secrets_of(job, shown);
        if secrets.is_empty() {
            return outcome;
        }
        match outcome {
            proto::JobOutcome::Probe { results } => proto::JobOutcome::Probe {
                results: results
                    .into_iter()
                    .map(|r| proto::ProbeResult {
                        outcome: secrets.mask_outcome(&r.outcome),
                        ..r
                    })
                    .collect(),
            },
            proto::JobOutcome::Step { outcome } => proto::JobOutcome::Step {
                outcome: secrets.mask_outcome(&outcome),
            },
            proto::JobOutcome::Failed { error } => proto::JobOutcome::Failed {
                error: secrets.mask(&error),
            },
            other => other,
        }
    }
}

/// Does `job` carry any parameter (so anything its output could need masked)?
pub fn job_has_parameters(job: &proto::JobKind) -> bool {
    job_parameters(job).iter().any(|p| !p.is_empty())
}

fn job_parameters(job: &proto::JobKind) -> Vec<&BTreeMap<String, String>> {
    match job {
        proto::JobKind::Probe { probes } => probes.iter().map(|p| &p.parameters).collect(),
        proto::JobKind::Step { parameters, .. } => vec![parameters],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_under_their_name_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = SecretBox::load_or_create(dir.path()).expect("key");
        let s = b.seal("password", "hunter2!").expect("sealed");
        assert!(is_sealed(&s));
        assert!(!s.contains("hunter2"));
        assert_ne!(
            s,
            b.seal("password", "hunter2!").expect("sealed"),
            "a fresh nonce each time"
        );
        assert_eq!(b.open("password", &s).as_deref(), Ok("hunter2!"));
        assert_eq!(b.open("other", &s), Err(SealError::Open("other".into())));
        let mut tampered = s.clone();
        tampered.pop();
        tampered.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert!(b.open("password", &tampered).is_err());
        // The key file is the owner's only, and the same key comes back.
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let again = SecretBox::load_or_create(dir.path()).expect("key again");
        assert_eq!(again.open("password", &s).as_deref(), Ok("hunter2!"));
        // Another key does not open it.
        let other = tempfile::tempdir().expect("tempdir");
        let c = SecretBox::load_or_create(other.path()).expect("key");
        assert!(c.open("password", &s).is_err());
    }

    #[test]
    fn jobs_are_opened_and_their_output_masked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = SecretBox::load_or_create(dir.path()).expect("key");
        let params = BTreeMap::from([
            ("pin".to_string(), b.seal("pin", "4711").expect("sealed")),
            ("zone".to_string(), "UTC".to_string()),
            ("city".to_string(), "Berlin-Mitte".to_string()),
            ("licence".to_string(), "ABCD-1234".to_string()),
        ]);
        let kind = proto::JobKind::Step {
            label: "run".into(),
            script: proto::Script {
                language: proto::ScriptLanguage::Shell,
                body: "echo".into(),
                timeout_seconds: 5,
            },
            parameters: params,
            version: None,
            installer: None,
        };
        let job = proto::Job {
            id: "j".into(),
            session_id: "s".into(),
            lease_seconds: 5,
            kind: kind.clone(),
        };
        let opened = b.open_job(job);
        let proto::JobKind::Step { parameters, .. } = &opened.kind else {
            panic!("a step job");
        };
        assert_eq!(parameters["pin"], "4711");
        assert_eq!(parameters["zone"], "UTC");
        // Long plain values are masked unless the session shows them (a typed task's
        // declared values); a SECRET always is.
        let masked = b.mask_outcome(
            &kind,
            proto::JobOutcome::Step {
                outcome: proto::ScriptOutcome {
                    exit_code: Some(0),
                    stdout: "pin=4711 zone=UTC city=Berlin-Mitte licence=ABCD-1234".into(),
                    ..Default::default()
                },
            },
            &["Berlin-Mitte".to_string(), "4711".to_string()],
        );
        let proto::JobOutcome::Step { outcome } = masked else {
            panic!("a step outcome");
        };
        assert_eq!(
            outcome.stdout,
            "pin=•••••• zone=UTC city=Berlin-Mitte licence=••••••"
        );
    }
}
