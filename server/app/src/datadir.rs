//! The data directory: the store, the JWT key and backups live there, private to the server's
//! user whatever umask it was started with.

/// Restricts `dir` and everything under it to the owner: directories 0700, files 0600,
/// whatever the umask they were made with (the data dir holds password hashes, webhook
/// secrets, the JWT key and live postpone links). Symbolic links are left alone. Returns how
/// many paths were looser.
pub fn tighten_permissions(dir: &std::path::Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        // The data dir itself may be a link to where the data lives; links inside are not
        // followed.
        let meta = if path == dir {
            std::fs::metadata(&path)?
        } else {
            std::fs::symlink_metadata(&path)?
        };
        let want = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
            0o700
        } else if meta.file_type().is_symlink() {
            continue;
        } else {
            0o600
        };
        if meta.permissions().mode() & 0o777 != want {
            if meta.permissions().mode() & 0o077 != 0 {
                loose += 1;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
        }
    }
    Ok(loose)
}

/// Writes `bytes` to `path` as a private file (0600): whole into `<path>.tmp`, synced, then
/// renamed into place, so a crash leaves the old file or the new one, never half of one.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A leftover temp file keeps its mode when opened: make it private before writing.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Refuses a data dir without an embedded store (no `store/` directory) before an offline
/// command opens it, which would create an empty store there and then back up, collect or check
/// nothing: a typo'd path, or a cluster replica's data dir (its store is in PostgreSQL).
pub fn ensure_embedded_store(data_dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.join("store").is_dir(),
        "{} holds no embedded store (no store/ directory); a cluster replica's data is in \
         PostgreSQL: back it up with pg_dump and check it with --database-url",
        data_dir.display()
    );
    Ok(())
}
