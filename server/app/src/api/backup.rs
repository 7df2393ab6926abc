//! `upkeep-server backup` and `restore`.
//!
//! A backup is a consistent snapshot of every store tree (writers are held off while it is
//! copied) plus the JWT secret and the key SECRET parameters are sealed with (`secret.key`:
//! without it a restored server could not open them) and the key session records are signed
//! with (`attestation.key`), in one file: `UPKEEP-BACKUP 3\n`, then length-prefixed sections
//! (`u32` BE lengths), then a SHA-256 of everything before it. Version 1 files (no sealing
//! key) and version 2 files (no signing key) still restore. While the server runs it owns the
//! store, so the CLI asks it over the Unix socket `<data-dir>/admin.sock` (mode 0600: only the
//! server's user may ask); when no server runs, the CLI opens the store itself.
//!
//! Installer files are not in that file (they may be gigabytes, and they never change): they
//! are copied beside it, into `<out>.files/` with the data dir's layout (`ab/abcdef…`), after
//! the snapshot is taken; a file already there is not copied again. `restore` copies them back,
//! checking each one's SHA-256 against its name. Copy the directory with the backup file.

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"UPKEEP-BACKUP 3\n";
/// Backups made before signed session records: no signing key section.
const MAGIC_V2: &[u8] = b"UPKEEP-BACKUP 2\n";
/// Backups made before SECRET parameters: no sealing key section.
const MAGIC_V1: &[u8] = b"UPKEEP-BACKUP 1\n";
const END: u32 = u32::MAX;
pub const SOCKET: &str = "admin.sock";

type Trees = upkeep_store::Snapshot;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The key files a backup carries beside the store, as read from the data dir.
#[derive(Debug, Default, PartialEq)]
pub struct KeyFiles {
    pub jwt_secret: Vec<u8>,
    pub sealing_key: Vec<u8>,
    pub attestation_key: Vec<u8>,
}

impl KeyFiles {
    /// The keys a server uses: from the snapshot's meta space, where a server on PostgreSQL
    /// keeps them (`crate::secrets::shared`), else the data dir's key files.
    fn read(data_dir: &Path, trees: &Trees) -> KeyFiles {
        use crate::attestation::SHARED_KEY as ATTESTATION_KEY;
        use crate::secrets::shared::{JWT_KEY, SEALING_KEY};
        let meta = |key: &[u8]| {
            trees
                .iter()
                .filter(|(name, _)| name == "meta")
                .flat_map(|(_, entries)| entries)
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let read = |name: &str, key: &[u8]| match meta(key) {
            held if !held.is_empty() => held,
            _ => std::fs::read(data_dir.join(name)).unwrap_or_default(),
        };
        KeyFiles {
            jwt_secret: read("jwt-secret", JWT_KEY),
            sealing_key: read(crate::secrets::KEY_FILE, SEALING_KEY),
            attestation_key: read(crate::attestation::KEY_FILE, ATTESTATION_KEY),
        }
    }
}

/// Encodes a snapshot and the key files.
pub fn encode(trees: &Trees, keys: &KeyFiles) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    put(&mut out, &keys.jwt_secret);
    put(&mut out, &keys.sealing_key);
    put(&mut out, &keys.attestation_key);
    for (name, entries) in trees {
        put(&mut out, name.as_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        for (k, v) in entries {
            put(&mut out, k);
            put(&mut out, v);
        }
    }
    out.extend_from_slice(&END.to_be_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes and verifies a backup file.
pub fn decode(bytes: &[u8]) -> anyhow::Result<(Trees, KeyFiles)> {
    ensure!(
        bytes.len() > MAGIC.len() + 36
            && [MAGIC, MAGIC_V2, MAGIC_V1]
                .iter()
                .any(|m| bytes.starts_with(m)),
        "not an Upkeep backup"
    );
    let v1 = bytes.starts_with(MAGIC_V1);
    let v3 = bytes.starts_with(MAGIC);
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    ensure!(
        Sha256::digest(body)[..] == *digest,
        "the backup is damaged (checksum mismatch)"
    );
    // Parse with explicit offsets (simple and bounds-checked).
    let mut pos = MAGIC.len();
    let read_u32 = |pos: &mut usize| -> anyhow::Result<u32> {
        ensure!(*pos + 4 <= body.len(), "the backup is truncated");
        let v = u32::from_be_bytes(body[*pos..*pos + 4].try_into()?);
        *pos += 4;
        Ok(v)
    };
    let read_bytes = |pos: &mut usize, n: usize| -> anyhow::Result<Vec<u8>> {
        ensure!(*pos + n <= body.len(), "the backup is truncated");
        let v = body[*pos..*pos + n].to_vec();
        *pos += n;
        Ok(v)
    };
    let secret_len = read_u32(&mut pos)? as usize;
    let jwt_secret = read_bytes(&mut pos, secret_len)?;
    let sealing_key = if v1 {
        Vec::new()
    } else {
        let n = read_u32(&mut pos)? as usize;
        read_bytes(&mut pos, n)?
    };
    let attestation_key = if v3 {
        let n = read_u32(&mut pos)? as usize;
        read_bytes(&mut pos, n)?
    } else {
        Vec::new()
    };
    let mut trees = Vec::new();
    loop {
        let n = read_u32(&mut pos)?;
        if n == END {
            break;
        }
        let name = String::from_utf8(read_bytes(&mut pos, n as usize)?)?;
        ensure!(pos + 8 <= body.len(), "the backup is truncated");
        let count = u64::from_be_bytes(body[pos..pos + 8].try_into()?);
        pos += 8;
        let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
        for _ in 0..count {
            let kl = read_u32(&mut pos)? as usize;
            let k = read_bytes(&mut pos, kl)?;
            let vl = read_u32(&mut pos)? as usize;
            let v = read_bytes(&mut pos, vl)?;
            entries.push((k, v));
        }
        trees.push((name, entries));
    }
    ensure!(pos == body.len(), "the backup has trailing data");
    Ok((
        trees,
        KeyFiles {
            jwt_secret,
            sealing_key,
            attestation_key,
        },
    ))
}

/// Serves backups to the CLI while the server runs.
pub async fn serve_socket(app: std::sync::Arc<crate::services::App>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = app.config.data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "admin socket not available; online backups disabled");
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = app.shutdown.cancelled() => { let _ = std::fs::remove_file(&path); return; }
        };
        let Ok((mut sock, _)) = conn else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let mut cmd = [0u8; 7];
            let mut got = 0;
            // `backup\n` or `gc\n`.
            while got < cmd.len() && !cmd[..got].ends_with(b"\n") {
                match sock.read(&mut cmd[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            match &cmd[..got] {
                b"backup\n" => online_backup(&app, &mut sock).await,
                b"gc\n" => {
                    let now = app.clock.now().into();
                    let answer =
                        match crate::services::files::collect(&app.store, &app.files, now).await {
                            Ok(r) => gc_line(&r),
                            Err(e) => {
                                tracing::error!(error = %e, "installer file collection failed");
                                "error: the collection failed; see the server log\n".to_string()
                            }
                        };
                    let _ = sock.write_all(answer.as_bytes()).await;
                }
                _ => {}
            }
        });
    }
}

/// The one line `gc` answers: `removed N files (B bytes), kept K`.
fn gc_line(r: &crate::services::files::GcReport) -> String {
    format!(
        "removed {} files ({} bytes), kept {}\n",
        r.removed, r.removed_bytes, r.kept
    )
}

async fn online_backup(app: &crate::services::App, sock: &mut tokio::net::UnixStream) {
    use tokio::io::AsyncWriteExt;
    let store = app.store.clone();
    let dir = app.config.data_dir.clone();
    let trees = store.snapshot().await;
    let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let trees = trees?;
        Ok(encode(&trees, &KeyFiles::read(&dir, &trees)))
    })
    .await;
    match bytes {
        Ok(Ok(b)) => {
            tracing::info!(bytes = b.len(), "online backup written");
            let _ = sock.write_all(&b).await;
        }
        _ => tracing::error!("online backup failed"),
    }
}

/// Whether a server answers on `data_dir`'s admin socket.
pub fn server_running(data_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(data_dir.join(SOCKET)).is_ok()
}

/// `upkeep-server gc --data-dir DIR`: the running server collects on its own clock; without
/// one, the store is opened here.
pub async fn gc(data_dir: &Path) -> anyhow::Result<String> {
    let sock = data_dir.join(SOCKET);
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
        s.write_all(b"gc\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .context("reading the answer of the running server")?;
        ensure!(!answer.starts_with("error"), "{}", answer.trim());
        return Ok(answer.trim().to_string());
    }
    crate::datadir::ensure_embedded_store(data_dir)?;
    let store = upkeep_store::open_embedded(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let files = crate::services::files::Files::new(data_dir, u64::MAX);
    let r = crate::services::files::collect(&store, &files, std::time::SystemTime::now()).await?;
    Ok(gc_line(&r).trim().to_string())
}

/// Where the installer files of the backup `file` go: `<file>.files/`.
pub fn files_dir_of(file: &Path) -> std::path::PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".files");
    s.into()
}

/// What a backup or restore copied of the installer files: (files, bytes).
pub type Copied = (u64, u64);

/// Copies every installer file under `from` (a `files/` layout) to `to`, skipping those already
/// there with the same size; with `verify`, each file's SHA-256 must match its name.
fn copy_files(from: &Path, to: &Path, verify: bool) -> anyhow::Result<Copied> {
    let mut copied = (0, 0);
    for (sha, size, _) in crate::services::files::list_dir(from)? {
        let rel = Path::new(&sha[..2]).join(&sha);
        let target = to.join(&rel);
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == size) {
            continue;
        }
        if verify {
            let mut f = std::fs::File::open(from.join(&rel))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            let got = hex::encode(h.finalize());
            ensure!(
                got == sha,
                "the backup's file {sha} is damaged (its SHA-256 is {got})"
            );
        }
        let dir = to.join(&sha[..2]);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{sha}.tmp"));
        std::fs::copy(from.join(&rel), &tmp)
            .with_context(|| format!("cannot copy installer file {sha}"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        copied = (copied.0 + 1, copied.1 + size);
    }
    Ok(copied)
}

/// `upkeep-server backup --data-dir DIR --out FILE`: the backup's size, and the installer
/// files copied to `<FILE>.files/`.
pub async fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<(usize, Copied)> {
    let sock = data_dir.join(SOCKET);
    let bytes = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(mut s) => {
            s.write_all(b"backup\n")?;
            let mut b = Vec::new();
            s.read_to_end(&mut b)
                .context("reading the backup from the running server")?;
            decode(&b).context("the running server sent a bad backup")?;
            b
        }
        Err(_) => {
            crate::datadir::ensure_embedded_store(data_dir)?;
            let store = upkeep_store::open_embedded(data_dir).with_context(|| {
                format!(
                    "cannot open the store in {} (is a server running without its admin socket?)",
                    data_dir.display()
                )
            })?;
            let trees = store.snapshot().await?;
            encode(&trees, &KeyFiles::read(data_dir, &trees))
        }
    };
    // A backup holds everything the data dir does (password hashes, the JWT key): 0600.
    crate::datadir::write_private(out, &bytes)?;
    let files = copy_files(&data_dir.join("files"), &files_dir_of(out), false)?;
    Ok((bytes.len(), files))
}

/// `upkeep-server restore --data-dir DIR --in FILE`: into a new or empty data dir only. The
/// entries restored, and the installer files copied from `<FILE>.files/` (if there).
pub async fn restore(data_dir: &Path, input: &Path) -> anyhow::Result<(usize, Copied)> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let (trees, keys) = decode(&bytes)?;
    std::fs::create_dir_all(data_dir)?;
    crate::datadir::tighten_permissions(data_dir)?;
    let store = upkeep_store::open_embedded(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    crate::datadir::tighten_permissions(data_dir)?;
    if !store.is_empty().await? {
        bail!(
            "{} already holds data; restore into a new, empty data dir",
            data_dir.display()
        );
    }
    store.load_snapshot(&trees).await?;
    for (name, bytes) in [
        ("jwt-secret", &keys.jwt_secret),
        (crate::secrets::KEY_FILE, &keys.sealing_key),
        (crate::attestation::KEY_FILE, &keys.attestation_key),
    ] {
        if bytes.is_empty() {
            continue;
        }
        crate::datadir::write_private(&data_dir.join(name), bytes)?;
    }
    let files = copy_files(&files_dir_of(input), &data_dir.join("files"), true)?;
    Ok((trees.iter().map(|t| t.1.len()).sum(), files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_kept_in_the_store_go_into_the_backup() {
        use crate::secrets::shared::{JWT_KEY, SEALING_KEY};
        let dir = tempfile::tempdir().unwrap();
        let trees: Trees = vec![(
            "meta".into(),
            vec![
                (JWT_KEY.to_vec(), b"j".repeat(40)),
                (SEALING_KEY.to_vec(), vec![9; 32]),
            ],
        )];
        let keys = KeyFiles::read(dir.path(), &trees);
        assert_eq!(keys.jwt_secret, b"j".repeat(40));
        assert_eq!(keys.sealing_key, vec![9; 32]);
        // The store's key wins over a stale file; without one, the file is read.
        std::fs::write(dir.path().join("jwt-secret"), b"f".repeat(40)).unwrap();
        assert_eq!(
            KeyFiles::read(dir.path(), &trees).jwt_secret,
            b"j".repeat(40)
        );
        assert_eq!(
            KeyFiles::read(dir.path(), &vec![]).jwt_secret,
            b"f".repeat(40)
        );
    }

    #[test]
    fn round_trip_and_damage_is_detected() {
        let trees: Trees = vec![
            ("users".into(), vec![(b"k".to_vec(), b"v".to_vec())]),
            ("index".into(), vec![]),
        ];
        let keys = KeyFiles {
            jwt_secret: b"secret".to_vec(),
            sealing_key: vec![7; 32],
            attestation_key: vec![8; 85],
        };
        let b = encode(&trees, &keys);
        let (t, k) = decode(&b).unwrap();
        assert_eq!(t, trees);
        assert_eq!(k, keys);
        // A version 1 backup (no sealing key) still decodes.
        let mut v1 = MAGIC_V1.to_vec();
        put(&mut v1, b"secret");
        v1.extend_from_slice(&END.to_be_bytes());
        let digest = Sha256::digest(&v1);
        v1.extend_from_slice(&digest);
        let (t, k) = decode(&v1).unwrap();
        assert!(t.is_empty());
        assert_eq!(k.jwt_secret, b"secret");
        assert!(k.sealing_key.is_empty());
        assert!(k.attestation_key.is_empty());
        // So does a version 2 backup (no signing key).
        let mut v2 = MAGIC_V2.to_vec();
        put(&mut v2, b"secret");
        put(&mut v2, &[7; 32]);
        v2.extend_from_slice(&END.to_be_bytes());
        let digest = Sha256::digest(&v2);
        v2.extend_from_slice(&digest);
        let (_, k) = decode(&v2).unwrap();
        assert_eq!(k.sealing_key, vec![7; 32]);
        assert!(k.attestation_key.is_empty());
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).unwrap_err().to_string().contains("damaged"));
        assert!(decode(&b[..b.len() - 5]).is_err());
        assert!(decode(b"nonsense").is_err());
    }
}
