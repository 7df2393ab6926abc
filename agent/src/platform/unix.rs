//! Unix: signals, mode bits, process groups.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// Resolves on the first SIGTERM or SIGINT. If a signal cannot be watched, only the other
/// one stops the agent (rather than stopping it at once).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(e) => {
                warn!("cannot watch for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!("cannot watch for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => info!("SIGTERM received; stopping"),
        () = interrupt => info!("SIGINT received; stopping"),
    }
}

/// Creates the directory (and its parents) with mode 0700 when missing.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// New files are readable by the agent's user only (mode 0600).
pub(crate) fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options.mode(0o600)
}

/// Makes an existing file readable by the agent's user only (a file left by an older install
/// may have looser permissions).
pub(crate) fn restrict_file(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The system's identity for this machine (`/etc/machine-id`).
pub(crate) fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Unix has no OS name beyond os-release, which `host` reads itself.
pub(crate) fn os_name() -> Option<String> {
    None
}

/// Script output on Unix is UTF-8 (lossy); no legacy code page applies.
pub(crate) fn output_code_page() -> Option<u32> {
    None
}

/// No system code-page tables on Unix; `decode` falls back to lossy UTF-8.
pub(crate) fn decode_code_page(_bytes: &[u8], _code_page: u32) -> Option<String> {
    None
}

/// Batch files are for Windows; on Unix their text stays UTF-8.
pub(crate) fn encode_oem(_text: &str) -> Option<Vec<u8>> {
    None
}

/// A script's process group, killed when dropped while the script still runs.
///
/// Killing is only safe while the group leader is unreaped: until then its pid, and so the
/// group id, cannot be reused by an unrelated process.
#[derive(Debug)]
pub(crate) struct ProcessTree {
    pgid: Option<libc::pid_t>,
}

impl ProcessTree {
    /// Starts the script as the leader of a new process group.
    pub(crate) fn prepare(command: &mut Command) {
        command.process_group(0);
    }

    pub(crate) fn of(child: &Child) -> Self {
        Self {
            pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
        }
    }

    pub(crate) fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative
            // pid addresses the process group the script leads.
            let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
            if rc != 0 {
                tracing::debug!(
                    "killing process group {pgid}: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }

    /// The leader was reaped: the group id may be reused from now on, so never kill it again.
    pub(crate) fn reaped(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sh -c <command>` that first waits for a line (or the end) on stdin, in its own process
/// group so that a signal meant for the agent's group (Ctrl-C) does not stop the reboot.
pub(crate) fn gated_reboot(command: &str) -> Command {
    let mut gated = Command::new("sh");
    gated
        .arg("-c")
        .arg(r#"read -r _; exec sh -c "$1""#)
        .arg("upkeep-reboot")
        .arg(command)
        .stdin(Stdio::piped())
        .process_group(0);
    gated
}
