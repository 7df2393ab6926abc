//! Everything the agent keeps on disk, and the exactly-once bookkeeping for jobs.
//!
//! Layout of the state directory (mode 0700 on Unix; on Windows only SYSTEM and Administrators
//! may open it, see `platform`):
//! - `agent.lock`: held (`File::try_lock`: flock on Unix, LockFileEx on Windows) by the
//!   running agent, so two agents never share a spool.
//! - `credentials.json` (mode 0600): computer id and agent token from enrollment.
//! - `jobs/<job>.running`: written and fsynced *before* a job's script starts. Finding one at
//!   start-up means the agent died mid-job; the job is then reported as failed, never re-run.
//! - `jobs/<job>.result.json`: a result waiting for delivery (written to a temporary file,
//!   fsynced, renamed, so it is either whole or absent).
//! - `jobs/<job>.delivered.json`: a result the server acknowledged (or refused for good). Kept
//!   for [`KEEP_DELIVERED`] so that a job offered again is answered with the very same result
//!   instead of being run twice.
//! - `work/`: script files of running jobs; emptied at start-up.
//! - `installers/`: verified installer files by SHA-256 (and `<sha>.part` downloads to resume),
//!   owned by `installer::Cache`: at most `--cache-max-mb`, least recently used removed first.
//!
//! - `jobs/<job>.corrupt`: a result file that could not be read (disk damage, hand edits); kept
//!   for a person, and its job is never run.
//!
//! `<job>` is the job id when it is a plain token, else `=` plus its hex encoding, so a hostile
//! id cannot escape the directory and two ids never share a file.
//!
//! The files are tiny and written a few times per job, so plain blocking `std::fs` is used even
//! from async code.

use crate::platform;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use upkeep_agent_protocol::{Job, JobOutcome, JobResult, PROTOCOL_VERSION};

/// How long delivered results are kept to answer a repeated offer of the same job.
pub(crate) const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What a job that was running when the agent died is reported as.
pub(crate) const RESTARTED_ERROR: &str = "the agent restarted while this job ran";

const CREDENTIALS_FILE: &str = "credentials.json";
const LOCK_FILE: &str = "agent.lock";
const RUNNING: &str = ".running";
const PENDING: &str = ".result.json";
const DELIVERED: &str = ".delivered.json";
const TMP: &str = ".tmp";
const CORRUPT: &str = ".corrupt";

/// What enrollment gave the agent; presenting `agent_token` is how it proves who it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Credentials {
    pub(crate) computer_id: String,
    pub(crate) agent_token: String,
    /// The server that issued the token, for the operator's benefit when the URL changes.
    pub(crate) server_url: String,
    /// The server's poll-wait hint from enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) poll_wait_seconds: Option<u32>,
}

/// Keeps the token out of logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("computer_id", &self.computer_id)
            .field("agent_token", &"<redacted>")
            .field("server_url", &self.server_url)
            .field("poll_wait_seconds", &self.poll_wait_seconds)
            .finish()
    }
}

/// A job's result as spooled: the wire body plus the ids needed to send it and to log it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredResult {
    pub(crate) job_id: String,
    pub(crate) session_id: String,
    pub(crate) result: JobResult,
}

impl StoredResult {
    pub(crate) fn new(job_id: &str, session_id: &str, outcome: JobOutcome) -> Self {
        Self {
            job_id: job_id.to_owned(),
            session_id: session_id.to_owned(),
            result: JobResult {
                protocol_version: PROTOCOL_VERSION,
                outcome,
                reboot_pending: None,
            },
        }
    }
}

/// Where a job stands on this computer, which decides whether it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Never seen: run it.
    New,
    /// Running right now (only possible within one agent's lifetime).
    Running,
    /// Ran; the result waits for delivery.
    Pending(StoredResult),
    /// Ran and the result was delivered; a repeated offer gets this same result again.
    Delivered(StoredResult),
}

/// What the running marker holds; only for people reading the directory, since the job id is
/// recoverable from the file name alone (a torn marker must still be recognised).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunningMarker<'a> {
    job_id: &'a str,
    session_id: &'a str,
    started_at: String,
}

/// Proof that this agent alone uses the state directory; released on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// The agent's state directory. Only this type touches it.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
    jobs: PathBuf,
    work: PathBuf,
    installers: PathBuf,
}

impl StateDir {
    /// Creates the directories (mode 0700) when missing. A relative `root` is taken from the
    /// working directory at start: scripts run in their own working directories and are
    /// handed absolute paths.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let root = &std::path::absolute(root)?;
        let dir = Self {
            root: root.to_owned(),
            jobs: root.join("jobs"),
            work: root.join("work"),
            installers: root.join("installers"),
        };
        for path in [&dir.root, &dir.jobs, &dir.work, &dir.installers] {
            platform::create_private_dir(path)?;
        }
        Ok(dir)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where script files are written; private to the agent's user.
    pub(crate) fn work_dir(&self) -> &Path {
        &self.work
    }

    /// The installer cache (`installer::Cache` keeps its files, by hash); private like the
    /// rest, and kept across restarts.
    pub(crate) fn installers_dir(&self) -> &Path {
        &self.installers
    }

    /// Takes the directory's lock, or `None` while another agent holds it. Two agents on one
    /// spool would break exactly-once, so the holder keeps the lock for as long as it runs; the
    /// kernel drops it when the holder exits or drops the [`DirLock`].
    pub(crate) fn try_lock(&self) -> io::Result<Option<DirLock>> {
        let file = platform::private_file(OpenOptions::new().write(true))
            .create(true)
            .truncate(false)
            .open(self.root.join(LOCK_FILE))?;
        // Exclusive and non-blocking; on Unix this is flock(2), on Windows LockFileEx, so the
        // lock belongs to this open file (a second open, even in this process, is refused) and
        // dies with it.
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub(crate) fn load_credentials(&self) -> io::Result<Option<Credentials>> {
        let path = self.root.join(CREDENTIALS_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not valid: {e}", path.display()),
            )
        })
    }

    /// Replaces the credentials atomically with mode 0600: the token is the computer's password.
    pub(crate) fn save_credentials(&self, credentials: &Credentials) -> io::Result<()> {
        let path = self.root.join(CREDENTIALS_FILE);
        write_atomically(&path, &to_json(credentials)?)?;
        // A file left by an older install may have looser permissions; the rename kept ours,
        // but make sure anyway.
        platform::restrict_file(&path)
    }

    /// Removes script files and temporary files a previous run left behind.
    pub(crate) fn clean_leftovers(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.work)? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        for entry in fs::read_dir(&self.jobs)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(TMP) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Forgets delivered results older than `max_age`; returns how many.
    pub(crate) fn prune_delivered(&self, max_age: Duration) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut pruned = 0;
        for entry in fs::read_dir(&self.jobs)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().ends_with(DELIVERED) {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            if now.duration_since(modified).unwrap_or_default() > max_age {
                fs::remove_file(entry.path())?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Turns every job the agent was running when it died into a pending `Failed` result.
    /// Returns their ids. Running it again is harmless.
    pub(crate) fn recover_interrupted(&self) -> io::Result<Vec<String>> {
        let mut recovered = Vec::new();
        for entry in fs::read_dir(&self.jobs)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(RUNNING) else {
                continue;
            };
            let Some(job_id) = job_id_from_key(key) else {
                tracing::warn!("ignoring unrecognised file {name} in the job spool");
                continue;
            };
            // A crash between storing the result and removing the marker leaves both: the
            // job finished, only the marker is stale.
            if matches!(self.state(&job_id)?, JobState::Running) {
                let session_id = self.running_session_id(&job_id).unwrap_or_default();
                let record = StoredResult::new(
                    &job_id,
                    &session_id,
                    JobOutcome::Failed {
                        error: RESTARTED_ERROR.to_owned(),
                    },
                );
                self.store_result(&record)?;
                recovered.push(job_id);
            } else {
                remove_if_exists(&self.path(&job_id, RUNNING))?;
            }
        }
        Ok(recovered)
    }

    /// Errors leave the job's state unknown; callers must then not run it.
    pub(crate) fn state(&self, job_id: &str) -> io::Result<JobState> {
        if self.path(job_id, CORRUPT).exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the stored result of job {job_id} is unreadable"),
            ));
        }
        if let Some(record) = self.read_record(job_id, DELIVERED)? {
            return Ok(JobState::Delivered(record));
        }
        if let Some(record) = self.read_record(job_id, PENDING)? {
            return Ok(JobState::Pending(record));
        }
        if self.path(job_id, RUNNING).exists() {
            return Ok(JobState::Running);
        }
        Ok(JobState::New)
    }

    /// Records, durably, that the job is about to run. Must succeed before the job may start:
    /// without it a crash could lead to running the job a second time.
    pub(crate) fn mark_running(&self, job: &Job) -> io::Result<()> {
        let marker = RunningMarker {
            job_id: &job.id,
            session_id: &job.session_id,
            started_at: chrono::Utc::now().to_rfc3339(),
        };
        let path = self.path(&job.id, RUNNING);
        let mut file = platform::private_file(OpenOptions::new().write(true))
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(&to_json(&marker)?)?;
        file.sync_all()?;
        sync_dir(&self.jobs)
    }

    /// Spools a result durably, then drops the running marker.
    pub(crate) fn store_result(&self, record: &StoredResult) -> io::Result<()> {
        write_atomically(&self.path(&record.job_id, PENDING), &to_json(record)?)?;
        remove_if_exists(&self.path(&record.job_id, RUNNING))
    }

    /// Results waiting for delivery, oldest first.
    pub(crate) fn pending(&self) -> io::Result<Vec<StoredResult>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.jobs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(job_id) = name.strip_suffix(PENDING).and_then(job_id_from_key) else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            match self.read_record(&job_id, PENDING) {
                Ok(Some(record)) => found.push((modified, record)),
                Ok(None) => {}
                // Set aside, or one bad file would hold up every other result for ever.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::error!(job_id, "setting aside an unreadable result: {e}");
                    fs::rename(entry.path(), self.path(&job_id, CORRUPT))?;
                }
                Err(e) => return Err(e),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.job_id.cmp(&b.1.job_id)));
        Ok(found.into_iter().map(|(_, record)| record).collect())
    }

    /// The server has the result (or will never take it): keep it only to answer repeats.
    pub(crate) fn mark_delivered(&self, job_id: &str) -> io::Result<()> {
        match fs::rename(self.path(job_id, PENDING), self.path(job_id, DELIVERED)) {
            Ok(()) => sync_dir(&self.jobs),
            // Nothing was spooled (the disk failed earlier) or it was already moved.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues a delivered result for sending again, because the server offered its job again
    /// (it lost our answer, or its lease ran out before the answer came).
    pub(crate) fn requeue(&self, job_id: &str) -> io::Result<()> {
        fs::rename(self.path(job_id, DELIVERED), self.path(job_id, PENDING))?;
        sync_dir(&self.jobs)
    }

    /// The session id noted in a running marker, for logs; a torn marker has none.
    fn running_session_id(&self, job_id: &str) -> Option<String> {
        let text = fs::read(self.path(job_id, RUNNING)).ok()?;
        let marker: serde_json::Value = serde_json::from_slice(&text).ok()?;
        marker.get("sessionId")?.as_str().map(str::to_owned)
    }

    fn path(&self, job_id: &str, suffix: &str) -> PathBuf {
        self.jobs.join(format!("{}{suffix}", job_key(job_id)))
    }

    fn read_record(&self, job_id: &str, suffix: &str) -> io::Result<Option<StoredResult>> {
        let path = self.path(job_id, suffix);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not valid: {e}", path.display()),
            )
        })
    }
}

/// The file-name form of a job id (see the module docs).
fn job_key(job_id: &str) -> String {
    let plain = !job_id.is_empty()
        && job_id.len() <= 128
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return job_id.to_owned();
    }
    let mut key = String::with_capacity(1 + 2 * job_id.len());
    key.push('=');
    for byte in job_id.bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

fn job_id_from_key(key: &str) -> Option<String> {
    let Some(hex) = key.strip_prefix('=') else {
        return (!key.is_empty()).then(|| key.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

/// Temporary file, fsync, rename, fsync of the directory: after a crash the file is either
/// the old one or the new one, never a torn mix.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP);
    let tmp = PathBuf::from(tmp);
    let mut file = platform::private_file(OpenOptions::new().write(true))
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    platform::sync_dir(dir)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use upkeep_agent_protocol::{JobKind, Script, ScriptLanguage, ScriptOutcome};

    fn step_job(id: &str) -> Job {
        Job {
            id: id.into(),
            session_id: "s1".into(),
            lease_seconds: 60,
            kind: JobKind::Step {
                label: "install".into(),
                script: Script {
                    language: ScriptLanguage::Shell,
                    body: "true".into(),
                    timeout_seconds: 5,
                },
                parameters: BTreeMap::new(),
                version: Some("1.2".into()),
                installer: None,
            },
        }
    }

    fn step_result(id: &str) -> StoredResult {
        let outcome = ScriptOutcome {
            exit_code: Some(0),
            stdout: "ok\n".into(),
            ..Default::default()
        };
        StoredResult::new(id, "s1", JobOutcome::Step { outcome })
    }

    #[test]
    fn directories_and_credentials_are_private() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("state");
        let dir = StateDir::open(&root)?;
        assert_eq!(fs::metadata(&root)?.permissions().mode() & 0o777, 0o700);
        assert_eq!(dir.load_credentials()?, None);

        let credentials = Credentials {
            computer_id: "c1".into(),
            agent_token: "secret".into(),
            server_url: "http://s".into(),
            poll_wait_seconds: Some(25),
        };
        dir.save_credentials(&credentials)?;
        let path = root.join(CREDENTIALS_FILE);
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(dir.load_credentials()?, Some(credentials.clone()));
        assert!(!format!("{credentials:?}").contains("secret"));
        Ok(())
    }

    #[test]
    fn one_agent_at_a_time() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        let lock = dir.try_lock()?;
        assert!(lock.is_some());
        assert!(dir.try_lock()?.is_none());
        drop(lock);
        assert!(dir.try_lock()?.is_some());
        Ok(())
    }

    #[test]
    fn a_job_running_at_a_crash_is_reported_failed_after_restart() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        dir.mark_running(&step_job("j1"))?;
        assert_eq!(dir.state("j1")?, JobState::Running);
        drop(dir);

        let dir = StateDir::open(tmp.path())?;
        assert_eq!(dir.recover_interrupted()?, vec!["j1".to_owned()]);
        let pending = dir.pending()?;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].job_id, "j1");
        assert_eq!(
            pending[0].result.outcome,
            JobOutcome::Failed {
                error: RESTARTED_ERROR.into()
            }
        );
        assert!(matches!(dir.state("j1")?, JobState::Pending(_)));
        // A second start-up finds nothing more to recover.
        assert!(dir.recover_interrupted()?.is_empty());
        Ok(())
    }

    #[test]
    fn a_finished_job_with_a_stale_marker_keeps_its_result() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        dir.mark_running(&step_job("j1"))?;
        write_atomically(&dir.path("j1", PENDING), &to_json(&step_result("j1"))?)?;
        assert!(dir.recover_interrupted()?.is_empty());
        assert_eq!(dir.state("j1")?, JobState::Pending(step_result("j1")));
        assert!(!dir.path("j1", RUNNING).exists());
        Ok(())
    }

    #[test]
    fn a_delivered_job_keeps_its_result_for_repeats() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        assert_eq!(dir.state("j1")?, JobState::New);
        dir.mark_running(&step_job("j1"))?;
        dir.store_result(&step_result("j1"))?;
        assert_eq!(dir.pending()?, vec![step_result("j1")]);

        dir.mark_delivered("j1")?;
        assert!(dir.pending()?.is_empty());
        assert_eq!(dir.state("j1")?, JobState::Delivered(step_result("j1")));

        // Offered again: the same result goes out again, and the job is still not new.
        dir.requeue("j1")?;
        assert_eq!(dir.pending()?, vec![step_result("j1")]);
        assert_eq!(dir.state("j1")?, JobState::Pending(step_result("j1")));
        Ok(())
    }

    #[test]
    fn an_unreadable_result_is_set_aside_and_its_job_not_rerun() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        dir.store_result(&step_result("good"))?;
        fs::write(dir.path("bad", PENDING), b"{not json")?;
        assert_eq!(dir.pending()?, vec![step_result("good")]);
        assert_eq!(
            dir.state("bad").map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidData)
        );
        Ok(())
    }

    #[test]
    fn old_delivered_results_are_pruned() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        for id in ["old", "new"] {
            dir.store_result(&step_result(id))?;
            dir.mark_delivered(id)?;
        }
        let eight_days_ago = SystemTime::now() - Duration::from_secs(8 * 24 * 60 * 60);
        File::options()
            .write(true)
            .open(dir.path("old", DELIVERED))?
            .set_modified(eight_days_ago)?;
        assert_eq!(dir.prune_delivered(KEEP_DELIVERED)?, 1);
        assert_eq!(dir.state("old")?, JobState::New);
        assert!(matches!(dir.state("new")?, JobState::Delivered(_)));
        Ok(())
    }

    #[test]
    fn odd_job_ids_stay_inside_the_spool() -> io::Result<()> {
        for id in ["../../etc/passwd", "a/b", "=61", "", "é", ".hidden"] {
            let key = job_key(id);
            assert!(
                !key.contains('/') && !key.starts_with('.') && !key.is_empty(),
                "{id:?} → {key:?}"
            );
            assert_eq!(
                job_id_from_key(&key).as_deref(),
                Some(id),
                "{id:?} round-trips"
            );
        }
        assert_ne!(job_key("=61"), job_key("a"));
        let tmp = tempfile::tempdir()?;
        let dir = StateDir::open(tmp.path())?;
        dir.mark_running(&step_job("../x"))?;
        assert_eq!(dir.recover_interrupted()?, vec!["../x".to_owned()]);
        Ok(())
    }
}

#[cfg(test)]
mod relative_root {
    use super::StateDir;

    #[test]
    fn a_relative_state_dir_becomes_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let here = std::env::current_dir().unwrap();
        let rel = tmp.path().strip_prefix("/").map_or_else(
            |_| tmp.path().join("state"),
            |p| {
                let mut up = std::path::PathBuf::new();
                for _ in here.components().skip(1) {
                    up.push("..");
                }
                up.join(p).join("state")
            },
        );
        assert!(rel.is_relative() || cfg!(windows));
        let dir = StateDir::open(&rel).unwrap();
        assert!(dir.root().is_absolute(), "{}", dir.root().display());
        assert!(dir.work_dir().is_absolute());
        assert!(tmp.path().join("state").join("work").is_dir());
    }
}
