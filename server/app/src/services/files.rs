//! The installer file store: uploaded files as plain files under `<data-dir>/files/`, each
//! named by its SHA-256 (`files/ab/abcdef…`), so the same bytes are stored once however often
//! they are uploaded, and a name says what the bytes must be. A file uploaded again replaces
//! the stored copy (and its time, so it gets a new grace period).
//!
//! Architecture invariant: a file appears under its name only complete, synced and hashed: an
//! upload streams into `files/tmp/`, hashing as it goes, is synced, and is renamed to its hash;
//! an upload that breaks off or is too large leaves nothing behind. Nothing here holds a whole
//! file in memory.
//!
//! The store keeps no record of files: software versions (and sessions in flight, which froze
//! them) refer to files by hash, and [`Files::gc`] removes what none of them names, once it is
//! older than the grace period (an upload comes before the `createSoftware` that names it).

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use upkeep_core::domain::{Installer, Software};
use upkeep_core::session::{ItemWhat, Session};
use upkeep_store::records::ACTIVE_SESSIONS;
use upkeep_store::{Db, IndexKey, StoreError};

/// How long an uploaded file that nothing names yet survives garbage collection.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(60 * 60);

/// How often the server collects garbage on its own.
pub const GC_EVERY: Duration = Duration::from_secs(60 * 60);

/// Bytes written to disk at once while an upload streams in.
const WRITE_BUFFER: usize = 1024 * 1024;

/// The installer file store of one data dir.
pub struct Files {
    dir: PathBuf,
    max_bytes: u64,
}

/// A stored file: what `POST /api/v1/files` and `uploadInstaller` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub sha256: String,
    pub size: u64,
    /// This upload stored new bytes (`false`: the same file was stored already).
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than the limit of {limit} bytes (--max-upload-mb)")]
    TooLarge { limit: u64 },
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("cannot store the file: {0}")]
    Io(#[from] io::Error),
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
}

impl Files {
    /// The file store in `<data_dir>/files`.
    pub fn new(data_dir: &Path, max_bytes: u64) -> Files {
        Files::in_dir(data_dir.join("files"), max_bytes)
    }

    /// The file store in `dir` (`--files-dir`: in cluster mode a directory every replica
    /// shares).
    pub fn in_dir(dir: PathBuf, max_bytes: u64) -> Files {
        Files { dir, max_bytes }
    }

    /// The directory holding the files (`<data-dir>/files` or `--files-dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the file named `sha256` lives, when `sha256` is a valid name.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        path_in(&self.dir, sha256)
    }

    /// The size of the stored file `sha256`, if there is one.
    pub async fn size_of(&self, sha256: &str) -> io::Result<Option<u64>> {
        let Some(path) = self.path_of(sha256) else {
            return Ok(None);
        };
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams `body` into the store: hashed as it arrives, written through a bounded buffer,
    /// synced, then renamed to its hash. More than `max_bytes` fails with
    /// [`FileError::TooLarge`] as soon as the limit is passed; the partial file is removed.
    pub async fn put<S, B, E>(&self, body: S) -> Result<StoredFile, FileError>
    where
        S: futures_util::Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let tmp_dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let tmp = tmp_dir.join(format!("upload-{}", crate::ids::fresh()));
        let written = self.write_tmp(&tmp, body).await;
        let (sha256, size) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dir = self.dir.clone();
        let name = sha256.clone();
        let created = tokio::task::spawn_blocking(move || settle(&dir, &tmp, &name))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(StoredFile {
            sha256,
            size,
            created,
        })
    }

    async fn write_tmp<S, B, E>(&self, tmp: &Path, body: S) -> Result<(String, u64), FileError>
    where
        S: futures_util::Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let file = tokio::fs::File::create(tmp).await?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| FileError::Body(e.to_string()))?;
            let chunk = chunk.as_ref();
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(FileError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(chunk);
            out.write_all(chunk).await?;
        }
        out.flush().await?;
        let file = out.into_inner();
        file.sync_all().await?;
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// Every stored file: (sha256, size, modified).
    pub async fn list(&self) -> io::Result<Vec<(String, u64, SystemTime)>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
    }

    /// How many files are stored, and their bytes (for `/metrics`).
    pub async fn usage(&self) -> io::Result<(u64, u64)> {
        let files = self.list().await?;
        Ok((files.len() as u64, files.iter().map(|f| f.1).sum()))
    }

    /// Removes every file not in `referenced` that was last written (uploaded, or uploaded
    /// again) before `now - grace`, and uploads that broke off that long ago.
    pub async fn gc(
        &self,
        referenced: &HashSet<String>,
        now: SystemTime,
        grace: Duration,
    ) -> io::Result<GcReport> {
        let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = GcReport::default();
        for (sha, size, modified) in self.list().await? {
            if referenced.contains(&sha) || modified > cutoff {
                report.kept += 1;
                continue;
            }
            if let Some(path) = self.path_of(&sha) {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {
                        tracing::info!(sha256 = %sha, bytes = size, "unreferenced installer file removed");
                        report.removed += 1;
                        report.removed_bytes += size;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let tmp_dir = self.dir.join("tmp");
        if let Ok(mut entries) = tokio::fs::read_dir(&tmp_dir).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                let old = e
                    .metadata()
                    .await
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m <= cutoff);
                if old {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        Ok(report)
    }
}

/// `files/ab/abcdef…` for a valid name.
fn path_in(dir: &Path, sha256: &str) -> Option<PathBuf> {
    Installer::is_sha256(sha256).then(|| dir.join(&sha256[..2]).join(sha256))
}

/// Puts a synced upload at its name, replacing any file there (the same bytes, or a copy
/// damaged on disk, which a new upload so repairs; a reader of the old file keeps reading it),
/// then syncs the directory entry. Whether the name is new.
fn settle(dir: &Path, tmp: &Path, sha256: &str) -> io::Result<bool> {
    let target = path_in(dir, sha256).ok_or_else(|| io::Error::other("bad file name"))?;
    let parent = target
        .parent()
        .ok_or_else(|| io::Error::other("file without a directory"))?;
    std::fs::create_dir_all(parent)?;
    let existed = target.is_file();
    std::fs::rename(tmp, &target)?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(!existed)
}

/// Every installer file under a `files/` layout: (sha256, size, modified).
pub fn list_dir(dir: &Path) -> io::Result<Vec<(String, u64, SystemTime)>> {
    let mut out = Vec::new();
    let top = match std::fs::read_dir(dir) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for sub in top {
        let sub = sub?;
        let prefix = sub.file_name();
        let Some(prefix) = prefix.to_str().filter(|p| p.len() == 2) else {
            continue; // `tmp/`
        };
        for f in std::fs::read_dir(sub.path())? {
            let f = f?;
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if !Installer::is_sha256(name) || !name.starts_with(prefix) {
                continue;
            }
            let m = f.metadata()?;
            if m.is_file() {
                out.push((name.to_string(), m.len(), m.modified()?));
            }
        }
    }
    Ok(out)
}

/// Every file hash something still names: the versions of every software, and those frozen
/// into sessions that have not finished (a software edited while its session runs keeps the
/// file that session will fetch).
pub async fn referenced(store: &Db) -> Result<HashSet<String>, StoreError> {
    use futures_util::TryStreamExt;
    let mut out = HashSet::new();
    let mut software = std::pin::pin!(store.scan::<Software>(None));
    while let Some(s) = software.try_next().await? {
        out.extend(
            s.versions
                .iter()
                .filter_map(|v| v.installer.as_ref())
                .map(|i| i.sha256.clone()),
        );
    }
    let mut sessions =
        std::pin::pin!(store.by_index::<Session>(&IndexKey::new(ACTIVE_SESSIONS, []), None));
    while let Some(s) = sessions.try_next().await? {
        for item in &s.items {
            if let ItemWhat::Software { software, .. } = &item.what {
                out.extend(
                    software
                        .versions
                        .iter()
                        .filter_map(|v| v.installer.as_ref())
                        .map(|i| i.sha256.clone()),
                );
            }
        }
    }
    Ok(out)
}

/// One collection over a store and its files (the server's timer, the admin socket and the
/// offline `upkeep-server gc`).
pub async fn collect(store: &Db, files: &Files, now: SystemTime) -> anyhow::Result<GcReport> {
    let referenced = referenced(store).await?;
    Ok(files.gc(&referenced, now, UPLOAD_GRACE).await?)
}

/// The server's own collection, every [`GC_EVERY`] until shutdown, on the server's clock.
pub async fn run_gc(app: std::sync::Arc<crate::services::App>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GC_EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
        match collect(&app.store, &app.files, app.clock.now().into()).await {
            Ok(r) => tracing::info!(
                removed = r.removed,
                bytes = r.removed_bytes,
                kept = r.kept,
                "installer files collected"
            ),
            Err(e) => tracing::error!(error = %e, "installer file collection failed"),
        }
    }
}

/// Whether an agent of `computer` may fetch the file `sha256`: a step job leased to it names
/// the file, or a software its tenant can deploy (its own or a global one) names it. Files
/// are named by content, but a hash seen in one tenant must not open another tenant's file.
pub async fn servable_to(
    app: &crate::services::App,
    computer: upkeep_core::domain::Id,
    sha256: &str,
) -> Result<bool, StoreError> {
    use futures_util::TryStreamExt;
    if app.agents.leases_installer(computer, sha256) {
        return Ok(true);
    }
    let Some(c) = app
        .store
        .get::<upkeep_core::domain::Computer>(&computer)
        .await?
    else {
        return Ok(false);
    };
    let mut software = std::pin::pin!(app.store.scan::<Software>(None));
    while let Some(s) = software.try_next().await? {
        if s.tenant_id.is_some_and(|t| t != c.tenant_id) {
            continue;
        }
        let names = s.versions.iter().any(|v| {
            v.installer
                .as_ref()
                .is_some_and(|i| i.url.is_none() && i.sha256 == sha256)
        });
        if names {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl futures_util::Stream<Item = Result<&'static [u8], String>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn files_are_stored_once_by_hash_and_too_large_ones_leave_nothing() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let files = Files::new(dir.path(), 10);
        let a = files.put(chunks(&[b"hello ", b"you"])).await?;
        assert_eq!(a.size, 9);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"hello you")));
        assert!(a.created);
        let again = files.put(chunks(&[b"hello you"])).await?;
        assert_eq!(
            (&again.sha256, again.size, again.created),
            (&a.sha256, 9, false)
        );
        assert_eq!(files.usage().await?, (1, 9));
        let path = files.path_of(&a.sha256).expect("a valid name");
        assert_eq!(std::fs::read(&path)?, b"hello you");
        assert!(path.starts_with(dir.path().join("files").join(&a.sha256[..2])));
        // A copy damaged on disk is replaced by the next upload of the same bytes.
        std::fs::write(&path, b"hello YOU")?;
        files.put(chunks(&[b"hello you"])).await?;
        assert_eq!(std::fs::read(&path)?, b"hello you");

        let big = files.put(chunks(&[b"0123456", b"89ab"])).await;
        assert!(
            matches!(big, Err(FileError::TooLarge { limit: 10 })),
            "{big:?}"
        );
        let broken = files
            .put(futures_util::stream::iter(vec![
                Ok(&b"abc"[..]),
                Err("reset".to_string()),
            ]))
            .await;
        assert!(matches!(broken, Err(FileError::Body(_))), "{broken:?}");
        assert_eq!(files.usage().await?, (1, 9));
        assert_eq!(std::fs::read_dir(dir.path().join("files/tmp"))?.count(), 0);
        assert!(files.path_of("../../etc/passwd").is_none());
        assert_eq!(files.size_of(&"0".repeat(64)).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn gc_keeps_named_and_young_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = Files::new(dir.path(), 100);
        let named = files.put(chunks(&[b"named"])).await?;
        let loose = files.put(chunks(&[b"loose"])).await?;
        let referenced = HashSet::from([named.sha256.clone()]);
        let now = SystemTime::now();
        let r = files.gc(&referenced, now, UPLOAD_GRACE).await?;
        assert_eq!((r.removed, r.kept), (0, 2), "young files stay");
        let later = now + UPLOAD_GRACE + Duration::from_secs(1);
        let r = files.gc(&referenced, later, UPLOAD_GRACE).await?;
        assert_eq!((r.removed, r.removed_bytes, r.kept), (1, 5, 1));
        assert_eq!(files.size_of(&loose.sha256).await?, None);
        assert_eq!(files.size_of(&named.sha256).await?, Some(5));
        Ok(())
    }
}
