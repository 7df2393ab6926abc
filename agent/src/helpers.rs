//! Short helper commands the agent asks the system with (`hostname`, `who`, `dpkg-query`,
//! `reg query`, …): stdin closed, stderr dropped, a time limit, killed when it passes.

use std::time::Duration;
use tokio::process::Command;

/// Stdout of a short helper command, or `None` when it is missing, fails or runs longer than
/// `limit` (then it is killed).
pub(crate) async fn command_stdout(
    program: &str,
    args: &[&str],
    limit: Duration,
) -> Option<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .ok()?
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The exit code of a short helper command; `None` when it is missing, killed or runs longer
/// than `limit`.
#[cfg_attr(windows, allow(dead_code))]
pub(crate) async fn command_exit_code(
    program: &str,
    args: &[&str],
    limit: Duration,
) -> Option<i32> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(limit, command.status())
        .await
        .ok()?
        .ok()?;
    status.code()
}
