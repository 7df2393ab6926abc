//! Installers for steps: fetched from the server (or a vendor's `https://` URL), resumed with
//! `Range` after a break, checked for size and SHA-256 *before* anything runs, and kept in a
//! bounded cache (`<state-dir>/installers/`, least recently used removed first).
//!
//! A file is only ever used under its hash once it was hashed whole: a download goes to
//! `<sha>.part`, and is renamed to `<sha>` after it matched. A cached file is hashed again
//! before each use, so a file changed on disk is fetched afresh rather than run.

use crate::client::{CallError, Client};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use upkeep_agent_protocol::{INSTALLER_DOWNLOAD_SECONDS, INSTALLER_HASH_MISMATCH, InstallerRef};

/// Attempts per fetch (each resumes where the last broke off).
const ATTEMPTS: u32 = 5;

/// How long a download may wait for its next bytes before the connection counts as broken.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The installer cache of one state directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

/// Why one attempt did not finish.
enum Attempt {
    /// Try again (resuming).
    Retry(String),
    /// Trying again cannot help.
    Fatal(String),
}

impl Cache {
    pub(crate) fn new(dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            max_bytes,
        }
    }

    /// The path of the verified installer `inst`, fetched unless a matching copy is cached.
    /// The error is the step's failure message.
    pub(crate) async fn get(
        &self,
        client: &Client,
        token: &str,
        inst: &InstallerRef,
    ) -> Result<PathBuf, String> {
        let sha = inst.sha256.as_str();
        if !is_sha256(sha) {
            return Err(format!(
                "the installer's SHA-256 {sha:?} is not 64 hex digits"
            ));
        }
        if inst.size.is_some_and(|s| s > self.max_bytes) {
            return Err(format!(
                "the installer has {} bytes, more than the agent's cache takes (--cache-max-mb)",
                inst.size.unwrap_or_default()
            ));
        }
        let path = self.dir.join(sha);
        if path.is_file() {
            match verify(&path, inst).await {
                Ok(()) => {
                    touch(&path);
                    return Ok(path);
                }
                Err(e) => {
                    tracing::warn!(
                        sha256 = sha,
                        "cached installer no longer matches ({e}); fetching it again"
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let part = self.dir.join(format!("{sha}.part"));
        self.download(client, token, inst, &part).await?;
        if let Err(e) = verify(&part, inst).await {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, &path).map_err(|e| format!("cannot keep the installer: {e}"))?;
        touch(&path);
        self.evict(&path);
        Ok(path)
    }

    /// Fetches into `part`, resuming what is there, within [`INSTALLER_DOWNLOAD_SECONDS`].
    async fn download(
        &self,
        client: &Client,
        token: &str,
        inst: &InstallerRef,
        part: &Path,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(INSTALLER_DOWNLOAD_SECONDS.into());
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let pause = Duration::from_secs(1 << attempt.min(4));
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            match self.attempt(client, token, inst, part, deadline).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => {
                    let _ = std::fs::remove_file(part);
                    return Err(e);
                }
                Err(Attempt::Retry(e)) => {
                    tracing::warn!(sha256 = %inst.sha256, "installer download broke off ({e}); resuming");
                    last = e;
                }
            }
        }
        Err(format!(
            "could not download the installer {}: {last}",
            inst.sha256
        ))
    }

    // long: one request and its body, with every way it can end sorted into retry or give up.
    async fn attempt(
        &self,
        client: &Client,
        token: &str,
        inst: &InstallerRef,
        part: &Path,
        deadline: Instant,
    ) -> Result<(), Attempt> {
        let have = std::fs::metadata(part).map_or(0, |m| m.len());
        if inst.size.is_some_and(|s| have == s) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Attempt::Fatal(format!(
                "the installer download took longer than {INSTALLER_DOWNLOAD_SECONDS} s"
            )));
        }
        let url = inst.url.as_deref();
        let mut response = match client.file(token, &inst.sha256, url, have, left).await {
            Ok(r) => r,
            // The server has the whole file below what we hold: start over.
            Err(CallError::Refused { status: 416, .. }) => {
                let _ = std::fs::remove_file(part);
                return Err(Attempt::Retry("the partial download was too long".into()));
            }
            Err(e @ (CallError::Refused { .. } | CallError::Unauthorized(_))) => {
                return Err(Attempt::Fatal(format!(
                    "could not download the installer {}: {e}",
                    inst.sha256
                )));
            }
            Err(e) => return Err(Attempt::Retry(e.to_string())),
        };
        let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
        let opened = if resumed {
            tokio::fs::OpenOptions::new().append(true).open(part).await
        } else {
            tokio::fs::File::create(part).await
        };
        let mut file =
            opened.map_err(|e| Attempt::Fatal(format!("cannot write the installer: {e}")))?;
        let mut written = if resumed { have } else { 0 };
        let cap = inst.size.unwrap_or(self.max_bytes);
        loop {
            let chunk = match tokio::time::timeout(STALL_LIMIT, response.chunk()).await {
                Err(_) => {
                    return Err(Attempt::Retry(format!(
                        "no data for {} s",
                        STALL_LIMIT.as_secs()
                    )));
                }
                Ok(Err(e)) => return Err(Attempt::Retry(e.to_string())),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            written += chunk.len() as u64;
            if written > cap {
                return Err(Attempt::Fatal(match inst.size {
                    Some(s) => format!("installer size mismatch: expected {s} bytes, got more"),
                    None => "the installer is larger than the agent's cache takes (--cache-max-mb)"
                        .to_owned(),
                }));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Attempt::Fatal(format!("cannot write the installer: {e}")))?;
        }
        file.flush()
            .await
            .and(file.sync_all().await)
            .map_err(|e| Attempt::Fatal(format!("cannot write the installer: {e}")))?;
        Ok(())
    }

    /// Removes the least recently used files until the cache fits, never `keep`.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), bytes = size, "installer removed from the cache");
                total -= size;
            }
        }
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Marks a file used now (the cache's LRU order is the files' modification times).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Checks the file's size, then its SHA-256 (read in a blocking thread).
async fn verify(path: &Path, inst: &InstallerRef) -> Result<(), String> {
    let path = path.to_owned();
    let expected = inst.sha256.clone();
    let size = inst.size;
    tokio::task::spawn_blocking(move || {
        let got_size = std::fs::metadata(&path)
            .map_err(|e| format!("cannot read the installer: {e}"))?
            .len();
        if let Some(s) = size.filter(|s| *s != got_size) {
            return Err(format!(
                "installer size mismatch: expected {s} bytes, got {got_size}"
            ));
        }
        let got = sha256_of(&path).map_err(|e| format!("cannot read the installer: {e}"))?;
        if got != expected {
            return Err(format!(
                "{INSTALLER_HASH_MISMATCH}: expected {expected}, got {got}"
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("cannot check the installer: {e}"))?
}

pub(crate) fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    fn sha_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A server for one file: the first answer sends the headers of the whole file but only
    /// `cut` bytes of it and hangs up; later answers honour `Range: bytes=N-`. Every request's
    /// Range header (or "") is recorded.
    async fn flaky_server(body: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let range = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .map(|r| r.trim().to_string())
                    .unwrap_or_default();
                seen.lock().unwrap().push(range.clone());
                let from: usize = range.trim_end_matches('-').parse().unwrap_or(0);
                let len = body.len();
                let out = if first {
                    first = false;
                    let mut o = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    o.extend_from_slice(&body[..cut]);
                    o
                } else if from > 0 {
                    let mut o = format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{len}\r\nconnection: close\r\n\r\n",
                        len - from,
                        len - 1
                    )
                    .into_bytes();
                    o.extend_from_slice(&body[from..]);
                    o
                } else {
                    let mut o = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    o.extend_from_slice(&body);
                    o
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            }
        });
        (url, ranges)
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_broken_download_resumes_from_where_it_stopped_and_is_verified() {
        let body = body();
        let (url, ranges) = flaky_server(body.clone(), 70_000).await;
        let client = Client::new(&url, 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 10 * 1024 * 1024);
        let inst = InstallerRef {
            sha256: sha_hex(&body),
            size: Some(body.len() as u64),
            url: None,
            file_name: None,
        };
        let path = cache.get(&client, "t", &inst).await.expect("fetched");
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(
            *ranges.lock().unwrap(),
            vec!["".to_string(), "70000-".to_string()]
        );
        // Cached: no further request.
        cache.get(&client, "t", &inst).await.expect("cached");
        assert_eq!(ranges.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_file_that_does_not_match_fails_and_is_not_kept() {
        let body = body();
        let (url, _) = flaky_server(body.clone(), body.len()).await;
        let client = Client::new(&url, 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 10 * 1024 * 1024);
        let wrong = "0".repeat(64);
        let inst = InstallerRef {
            sha256: wrong.clone(),
            size: Some(body.len() as u64),
            url: None,
            file_name: None,
        };
        let e = cache.get(&client, "t", &inst).await.unwrap_err();
        assert_eq!(
            e,
            format!(
                "installer hash mismatch: expected {wrong}, got {}",
                sha_hex(&body)
            )
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let sized = InstallerRef {
            sha256: sha_hex(&body),
            size: Some(10),
            ..inst
        };
        let e = cache.get(&client, "t", &sized).await.unwrap_err();
        assert_eq!(e, "installer size mismatch: expected 10 bytes, got more");
    }

    #[tokio::test]
    async fn vendor_downloads_are_https_only() {
        let client = Client::new("http://127.0.0.1:9", 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1024);
        let inst = InstallerRef {
            sha256: "ab".repeat(32),
            size: Some(3),
            url: Some("http://vendor.example/setup.msi".into()),
            file_name: None,
        };
        let e = cache.get(&client, "t", &inst).await.unwrap_err();
        assert!(e.contains("https:// only"), "{e}");
    }

    #[test]
    fn the_least_recently_used_files_leave_the_cache_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 25);
        let old = SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, [0u8; 10]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(old + Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is the oldest but was just used: "b" goes.
        touch(&dir.path().join("a"));
        cache.evict(&dir.path().join("c"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a", "c"]);
    }
}
