//! Reboots from the computer's side: whether one is pending (reported with every poll and
//! with probe results, so a session can reboot before it changes anything), and telling the
//! people at the computer that one is coming (`RebootPreference.PROMPT`).
//!
//! Linux: the `--reboot-pending-file` (default `/var/run/reboot-required`) exists, or
//! `needs-restarting -r` (RHEL and Fedora's yum-utils/dnf-utils) exits 1. Windows: the
//! Component Based Servicing `RebootPending` key, Windows Update's `RebootRequired` key, a
//! `PendingFileRenameOperations` value, or a computer rename not yet in effect
//! (`ActiveComputerName` differs from `ComputerName`), read with `reg query`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;
use upkeep_agent_protocol::JobOutcome;

/// How long a poll may report an earlier answer; probe results always check afresh.
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// Longest a helper command (`needs-restarting`, `reg`, the prompt command) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(20);

/// The pending-reboot check with its cache.
#[derive(Debug)]
pub(crate) struct PendingReboot {
    file: PathBuf,
    cached: Option<(Instant, bool)>,
}

impl PendingReboot {
    pub(crate) fn new(file: PathBuf) -> Self {
        Self { file, cached: None }
    }

    /// The answer for a poll: at most [`RECHECK_EVERY`] old.
    pub(crate) async fn cached(&mut self) -> bool {
        match self.cached {
            Some((at, pending)) if at.elapsed() < RECHECK_EVERY => pending,
            _ => self.fresh().await,
        }
    }

    /// Drops the cached answer (after a reboot command: the next poll checks afresh).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// Checks now (after a probe job, whose result says it).
    pub(crate) async fn fresh(&mut self) -> bool {
        let pending = is_pending(&self.file).await;
        self.cached = Some((Instant::now(), pending));
        pending
    }
}

#[cfg(not(windows))]
async fn is_pending(file: &Path) -> bool {
    if file.exists() {
        return true;
    }
    // Exit 1: "reboot is required"; 0: not; missing command or anything else: cannot tell.
    matches!(
        crate::helpers::command_exit_code("needs-restarting", &["-r"], HELPER_TIMEOUT).await,
        Some(1)
    )
}

#[cfg(windows)]
async fn is_pending(_file: &Path) -> bool {
    windows::is_pending().await
}

#[cfg(windows)]
mod windows {
    use super::*;

    const CBS: &str =
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending";
    const WU: &str =
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired";
    const SESSION_MANAGER: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager";
    const ACTIVE_NAME: &str =
        r"HKLM\SYSTEM\CurrentControlSet\Control\ComputerName\ActiveComputerName";
    const NEXT_NAME: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\ComputerName\ComputerName";

    pub(super) async fn is_pending() -> bool {
        if reg_query(&[CBS]).await.is_some() || reg_query(&[WU]).await.is_some() {
            return true;
        }
        let renames = reg_query(&[SESSION_MANAGER, "/v", "PendingFileRenameOperations"]).await;
        if renames.is_some_and(|out| {
            super::reg_value(&out, "PendingFileRenameOperations").is_some_and(|v| !v.is_empty())
        }) {
            return true;
        }
        let active = reg_query(&[ACTIVE_NAME, "/v", "ComputerName"]).await;
        let next = reg_query(&[NEXT_NAME, "/v", "ComputerName"]).await;
        match (active, next) {
            (Some(a), Some(n)) => {
                super::reg_value(&a, "ComputerName") != super::reg_value(&n, "ComputerName")
            }
            _ => false,
        }
    }

    /// `reg query ARGS`'s output, or `None` when the key or value does not exist.
    pub(crate) async fn reg_query(args: &[&str]) -> Option<String> {
        let args: Vec<&str> = std::iter::once("query")
            .chain(args.iter().copied())
            .collect();
        crate::helpers::command_stdout("reg", &args, HELPER_TIMEOUT).await
    }
}

#[cfg(windows)]
pub(crate) use windows::reg_query;

/// The data of value `name` in `reg query` output (`    NAME    REG_SZ    DATA`); `Some("")`
/// for a value without data.
#[cfg(any(windows, test))]
pub(crate) fn reg_value(output: &str, name: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(name)?;
        let mut parts = rest.trim_start().splitn(2, char::is_whitespace);
        let kind = parts.next()?;
        if !kind.starts_with("REG_") {
            return None;
        }
        Some(parts.next().unwrap_or("").trim().to_owned())
    })
}

/// Runs the prompt command with `message` on stdin and in `UPKEEP_PROMPT_MESSAGE`.
pub(crate) async fn prompt(command: &str, message: &str) -> JobOutcome {
    match run_prompt(command, message).await {
        Ok(()) => JobOutcome::Prompt {
            shown: true,
            error: None,
        },
        Err(error) => JobOutcome::Prompt {
            shown: false,
            error: Some(format!("the prompt command {command:?} failed: {error}")),
        },
    }
}

async fn run_prompt(command: &str, message: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = if cfg!(windows) {
        let mut c = Command::new("cmd");
        c.arg("/C").arg(command);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c").arg(command);
        c
    };
    cmd.env("UPKEEP_PROMPT_MESSAGE", message)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin closes it early: not an error.
        let _ = stdin.write_all(message.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(HELPER_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("it exited with {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("it ran longer than {HELPER_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pending_file_means_pending_and_polls_see_it_within_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("reboot-required");
        let mut check = PendingReboot::new(file.clone());
        assert!(!check.fresh().await);
        std::fs::write(&file, "*** System restart required ***\n").expect("write");
        // The cached answer stays until it is checked afresh.
        assert!(!check.cached().await);
        assert!(check.fresh().await);
        std::fs::remove_file(&file).expect("remove");
        assert!(check.cached().await);
        assert!(!check.fresh().await);
    }

    #[test]
    fn reg_query_values_are_read_by_name() {
        let out = "\r\nHKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\ComputerName\\ActiveComputerName\r\n    ComputerName    REG_SZ    PC-OLD\r\n\r\n";
        assert_eq!(reg_value(out, "ComputerName").as_deref(), Some("PC-OLD"));
        assert_eq!(reg_value(out, "Computer"), None);
        let multi = "    PendingFileRenameOperations    REG_MULTI_SZ    \\??\\C:\\x\\0\\0\r\n";
        assert_eq!(
            reg_value(multi, "PendingFileRenameOperations").as_deref(),
            Some("\\??\\C:\\x\\0\\0")
        );
        assert_eq!(
            reg_value("    Empty    REG_SZ\r\n", "Empty").as_deref(),
            Some("")
        );
    }

    #[tokio::test]
    async fn the_prompt_command_gets_the_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("prompt.txt");
        let command = format!("cat > '{}'", out.display());
        let outcome = prompt(&command, "Restarting in 15 minutes").await;
        assert_eq!(
            outcome,
            JobOutcome::Prompt {
                shown: true,
                error: None
            }
        );
        let shown = std::fs::read_to_string(&out).expect("read");
        assert_eq!(shown.trim(), "Restarting in 15 minutes");
        let failed = prompt("exit 4", "x").await;
        assert!(
            matches!(failed, JobOutcome::Prompt { shown: false, error: Some(e) } if e.contains("exit"))
        );
    }
}
