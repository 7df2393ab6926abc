//! What the agent is told at start: the command line (each flag also an environment variable)
//! and the [`AgentConfig`] that embedders such as the end-to-end tests build directly.

use clap::Parser;
use std::path::PathBuf;

/// What a reboot job runs unless `--reboot-command` says otherwise.
#[cfg(not(windows))]
pub const DEFAULT_REBOOT_COMMAND: &str = "shutdown -r now";
/// What a reboot job runs unless `--reboot-command` says otherwise.
#[cfg(windows)]
pub const DEFAULT_REBOOT_COMMAND: &str = "shutdown /r /t 0";

/// The file whose presence means "a reboot is pending" on Linux (Debian's and Ubuntu's
/// `update-notifier` convention) unless `--reboot-pending-file` says otherwise.
pub const DEFAULT_REBOOT_PENDING_FILE: &str = "/var/run/reboot-required";

/// What a prompt job runs (with the message on stdin and in `UPKEEP_PROMPT_MESSAGE`) unless
/// `--prompt-command` says otherwise: every terminal on Linux, every session on Windows.
pub const DEFAULT_PROMPT_COMMAND: &str = if cfg!(windows) {
    "msg.exe * %UPKEEP_PROMPT_MESSAGE%"
} else {
    "wall"
};

/// How long an empty poll is held open unless `--poll-wait-seconds` says otherwise. Below the
/// idle timeout of common proxies (30 s), so a long poll is not cut by the network.
pub const DEFAULT_POLL_WAIT_SECONDS: u32 = 25;

/// Everything [`crate::run`] needs. Built from the command line by [`Cli`], or directly by
/// embedders (the end-to-end tests run agents as tokio tasks).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the Upkeep server, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// Needed for the first enrollment, and to re-enroll when the server no longer knows the
    /// agent token; not needed while stored credentials work.
    pub enrollment_key: Option<String>,
    /// Where credentials, the job spool and script files live. Created (mode 0700) if missing.
    pub state_dir: PathBuf,
    /// Overrides `/etc/machine-id`: cloned machines share one, and tests run several agents on
    /// one host.
    pub machine_id: Option<String>,
    /// Overrides the host name read from the kernel.
    pub hostname: Option<String>,
    /// Run with `sh -c` (`cmd.exe /C` on Windows) for a reboot job.
    pub reboot_command: String,
    /// Linux: a reboot is pending while this file exists (besides `needs-restarting -r`).
    pub reboot_pending_file: PathBuf,
    /// Run with `sh -c` (Windows: `cmd /C`) for a prompt job; the message comes on stdin and
    /// in `UPKEEP_PROMPT_MESSAGE`.
    pub prompt_command: String,
    /// How long the server may hold an empty poll; the smaller of this and the server's own
    /// hint at enrollment is used, capped at the protocol maximum.
    pub poll_wait_seconds: u32,
    /// Most bytes of verified installers kept in `<state-dir>/installers/`; the least recently
    /// used go first.
    pub cache_max_bytes: u64,
}

/// `--cache-max-mb` by default.
pub const DEFAULT_CACHE_MAX_MB: u64 = 2048;

impl AgentConfig {
    /// A configuration with the defaults of the command line for everything optional.
    pub fn new(server: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            server: server.into(),
            enrollment_key: None,
            state_dir: state_dir.into(),
            machine_id: None,
            hostname: None,
            reboot_command: DEFAULT_REBOOT_COMMAND.to_owned(),
            reboot_pending_file: PathBuf::from(DEFAULT_REBOOT_PENDING_FILE),
            prompt_command: DEFAULT_PROMPT_COMMAND.to_owned(),
            poll_wait_seconds: DEFAULT_POLL_WAIT_SECONDS,
            cache_max_bytes: DEFAULT_CACHE_MAX_MB * 1024 * 1024,
        }
    }
}

/// The `upkeep-agent` command line.
#[derive(Debug, Parser)]
#[command(
    name = "upkeep-agent",
    version,
    about = "Upkeep agent: enrolls, polls, runs scripts, reports"
)]
pub struct Cli {
    /// Base URL of the Upkeep server.
    #[arg(long, env = "UPKEEP_SERVER", value_name = "URL")]
    pub server: String,
    /// Tenant enrollment key; needed only until the agent has enrolled.
    #[arg(
        long,
        env = "UPKEEP_ENROLLMENT_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub enrollment_key: Option<String>,
    /// Directory for credentials (mode 0600), the job spool and script files.
    #[arg(long, env = "UPKEEP_STATE_DIR", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Machine identity; defaults to /etc/machine-id (MachineGuid on Windows).
    #[arg(long, env = "UPKEEP_MACHINE_ID", value_name = "ID")]
    pub machine_id: Option<String>,
    /// Command run with `sh -c` (`cmd.exe /C` on Windows) for a reboot job.
    #[arg(long, env = "UPKEEP_REBOOT_COMMAND", value_name = "CMD", default_value = DEFAULT_REBOOT_COMMAND)]
    pub reboot_command: String,
    /// Linux: the file whose presence means a reboot is pending.
    #[arg(long, env = "UPKEEP_REBOOT_PENDING_FILE", value_name = "PATH", default_value = DEFAULT_REBOOT_PENDING_FILE)]
    pub reboot_pending_file: PathBuf,
    /// Command that tells the computer's users about a coming reboot (message on stdin and in
    /// UPKEEP_PROMPT_MESSAGE).
    #[arg(long, env = "UPKEEP_PROMPT_COMMAND", value_name = "CMD", default_value = DEFAULT_PROMPT_COMMAND)]
    pub prompt_command: String,
    /// How long the server may hold an empty poll open, in seconds.
    #[arg(long, env = "UPKEEP_POLL_WAIT_SECONDS", value_name = "N", default_value_t = DEFAULT_POLL_WAIT_SECONDS)]
    pub poll_wait_seconds: u32,
    /// Host name to report; defaults to the kernel's.
    #[arg(long, env = "UPKEEP_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// Most MiB of verified installers kept for later steps (least recently used go first).
    #[arg(long, env = "UPKEEP_CACHE_MAX_MB", value_name = "MB", default_value_t = DEFAULT_CACHE_MAX_MB)]
    pub cache_max_mb: u64,
}

impl From<Cli> for AgentConfig {
    fn from(cli: Cli) -> Self {
        Self {
            server: cli.server,
            enrollment_key: cli.enrollment_key,
            state_dir: cli.state_dir,
            machine_id: cli.machine_id,
            hostname: cli.hostname,
            reboot_command: cli.reboot_command,
            reboot_pending_file: cli.reboot_pending_file,
            prompt_command: cli.prompt_command,
            poll_wait_seconds: cli.poll_wait_seconds,
            cache_max_bytes: cli.cache_max_mb.saturating_mul(1024 * 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_defaults_match_the_library_defaults() -> Result<(), clap::Error> {
        let cli =
            Cli::try_parse_from(["upkeep-agent", "--server", "http://s", "--state-dir", "/x"])?;
        let config = AgentConfig::from(cli);
        assert_eq!(config.reboot_command, DEFAULT_REBOOT_COMMAND);
        assert_eq!(
            config.reboot_pending_file,
            PathBuf::from(DEFAULT_REBOOT_PENDING_FILE)
        );
        assert_eq!(config.poll_wait_seconds, DEFAULT_POLL_WAIT_SECONDS);
        assert_eq!(config.enrollment_key, None);
        Ok(())
    }
}
