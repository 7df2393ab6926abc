//! `upkeep-agent service install | uninstall | run`: the agent as a Windows service.
//!
//! `install` registers the service `UpkeepAgent` (automatic start, LocalSystem) to run this
//! executable as `upkeep-agent service run <the agent's flags>`, and starts it. The
//! enrollment key is not put on that command line (the services registry key is readable by
//! every user): it is kept in the state directory (`enrollment-key`, which only SYSTEM and
//! Administrators may read) and read by `service run`. `uninstall` stops and removes the
//! service (the state directory stays). `run` is what the service control manager starts; the
//! agent logs to `agent.log` in the state directory.
//!
//! On other systems the command explains that the agent runs under systemd there.

#![cfg_attr(
    not(windows),
    allow(
        dead_code,
        reason = "the helpers serve the Windows service; tested everywhere"
    )
)]

use crate::config::Cli;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::Path;

#[cfg(windows)]
mod scm;

/// The service's name in the service control manager.
pub(crate) const SERVICE_NAME: &str = "UpkeepAgent";

/// The file in the state directory that holds the enrollment key for the service.
pub(crate) const ENROLLMENT_KEY_FILE: &str = "enrollment-key";

/// `upkeep-agent service …`.
#[derive(Debug, Parser)]
#[command(
    name = "upkeep-agent service",
    about = "Manage the Upkeep agent's Windows service"
)]
struct ServiceCli {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Register the agent as an automatically started service with these flags, and start it.
    Install(Cli),
    /// Stop and remove the service; the state directory stays.
    Uninstall,
    /// What the service control manager starts (not for use at a prompt).
    Run(Cli),
}

/// Parses `upkeep-agent service …` and does it.
pub(crate) fn main_cli() -> anyhow::Result<()> {
    // Drop the program name; "service" then stands where clap expects the program name.
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cli = ServiceCli::parse_from(&raw);
    dispatch(cli.action, raw.get(2..).unwrap_or_default())
}

#[cfg(windows)]
fn dispatch(action: Action, flags: &[OsString]) -> anyhow::Result<()> {
    match action {
        Action::Install(cli) => scm::install(cli, flags),
        Action::Uninstall => scm::uninstall(),
        Action::Run(cli) => scm::run(cli),
    }
}

#[cfg(not(windows))]
fn dispatch(_action: Action, _flags: &[OsString]) -> anyhow::Result<()> {
    anyhow::bail!(
        "`upkeep-agent service` manages the Windows service; on Linux run the agent under \
         systemd (deploy/upkeep-agent.service)"
    )
}

/// The flags the service is registered with: those given to `install`, without the
/// enrollment key (see the module docs), and with the server and the absolute state directory
/// spelled out (they may have come from environment variables, which the service does not see).
pub(crate) fn launch_arguments(
    flags: &[OsString],
    server: &str,
    state_dir: &Path,
) -> Vec<OsString> {
    const RESTATED: [&str; 3] = ["--enrollment-key", "--server", "--state-dir"];
    let mut out: Vec<OsString> = vec![
        "service".into(),
        "run".into(),
        "--server".into(),
        server.into(),
        "--state-dir".into(),
        state_dir.into(),
    ];
    let mut skip_value = false;
    for flag in flags {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = flag.to_string_lossy();
        if RESTATED.contains(&text.as_ref()) {
            skip_value = true;
        } else if !RESTATED.iter().any(|name| {
            text.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
        }) {
            out.push(flag.clone());
        }
    }
    out
}

/// The enrollment key `install` kept for the service, if any.
pub(crate) fn stored_enrollment_key(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(ENROLLMENT_KEY_FILE))
        .ok()
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_service_command_line_keeps_flags_but_not_the_key() {
        let flags = os(&[
            "--server",
            "http://old",
            "--enrollment-key",
            "secret",
            "--state-dir=rel",
            "--poll-wait-seconds",
            "10",
            "--enrollment-key=secret2",
            "--machine-id",
            "m-1",
        ]);
        let args = launch_arguments(&flags, "https://upkeep.example", Path::new("C:/state"));
        assert_eq!(
            args,
            os(&[
                "service",
                "run",
                "--server",
                "https://upkeep.example",
                "--state-dir",
                "C:/state",
                "--poll-wait-seconds",
                "10",
                "--machine-id",
                "m-1",
            ])
        );
        assert!(!args.iter().any(|a| a.to_string_lossy().contains("secret")));
    }

    #[test]
    fn service_subcommands_take_the_agent_flags() -> Result<(), clap::Error> {
        let cli = ServiceCli::try_parse_from([
            "service",
            "install",
            "--server",
            "http://s",
            "--state-dir",
            "/x",
        ])?;
        assert!(matches!(cli.action, Action::Install(ref c) if c.server == "http://s"));
        let cli = ServiceCli::try_parse_from(["service", "uninstall"])?;
        assert!(matches!(cli.action, Action::Uninstall));
        assert!(ServiceCli::try_parse_from(["service", "run"]).is_err());
        Ok(())
    }

    #[test]
    fn the_stored_key_is_read_trimmed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(stored_enrollment_key(dir.path()), None);
        std::fs::write(dir.path().join(ENROLLMENT_KEY_FILE), "key-1\r\n")?;
        assert_eq!(stored_enrollment_key(dir.path()).as_deref(), Some("key-1"));
        Ok(())
    }
}
