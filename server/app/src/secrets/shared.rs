//! Generated secrets in cluster mode: the JWT key and the SECRET-parameter key live in the
//! store's meta space, so every replica (each with its own data dir) signs and opens with the
//! same keys. The first replica to start claims them (an atomic insert-if-absent: two replicas
//! starting at once agree on one); the others read the winner's. A data dir's existing key file
//! is what a replica offers, so a single server moved to PostgreSQL keeps its keys. The
//! embedded default keeps them in the data dir only, as before.

use std::path::Path;
use upkeep_store::{Db, Space};

/// The JWT key's name in the meta space.
pub const JWT_KEY: &[u8] = b"secret:jwt";
/// The SECRET-parameter key's name in the meta space.
pub const SEALING_KEY: &[u8] = b"secret:sealing";
/// The data dir's JWT key file.
pub const JWT_FILE: &str = "jwt-secret";

fn read_file(data_dir: &Path, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(data_dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot read {}", data_dir.join(name).display())))
        }
    }
}

/// The store's JWT key: the data dir's file, or a fresh one, unless a replica claimed one first.
pub async fn jwt_secret(store: &Db, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let offer = match read_file(data_dir, JWT_FILE)? {
        Some(b) if b.len() >= 32 => b,
        _ => crate::auth::new_secret("").into_bytes(),
    };
    let held = store.claim(Space::Meta, JWT_KEY, offer).await?;
    anyhow::ensure!(held.len() >= 32, "the database's JWT key is too short");
    Ok(held)
}

/// The store's SECRET-parameter key: the data dir's `secret.key`, or a fresh one, unless a
/// replica claimed one first.
pub async fn sealing_key(store: &Db, data_dir: &Path) -> anyhow::Result<super::SecretBox> {
    let offer = match read_file(data_dir, super::KEY_FILE)? {
        Some(b) if b.len() == super::KEY_LEN => b,
        _ => super::random_key()?,
    };
    let held = store.claim(Space::Meta, SEALING_KEY, offer).await?;
    super::SecretBox::from_key(&held)
}

/// `migrate`: copies the data dir's key files into the store, replacing keys a replica may
/// have claimed in the (still empty) database: the copied records were sealed and signed with
/// the data dir's. Returns how many files there were.
pub async fn copy_from_data_dir(store: &Db, data_dir: &Path) -> anyhow::Result<usize> {
    let mut keys = Vec::new();
    for (file, key) in [
        (JWT_FILE, JWT_KEY),
        (super::KEY_FILE, SEALING_KEY),
        (crate::attestation::KEY_FILE, crate::attestation::SHARED_KEY),
    ] {
        if let Some(bytes) = read_file(data_dir, file)? {
            keys.push((key.to_vec(), Some(bytes)));
        }
    }
    let copied = keys.len();
    store.apply_batch(Space::Meta, keys).await?;
    store.flush().await?;
    Ok(copied)
}
