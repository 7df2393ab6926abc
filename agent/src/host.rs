//! Facts about the computer the agent runs on: its identity for enrollment and the inventory
//! it reports. Every probe here is best effort and never fails: a missing fact is reported as a
//! fallback value, not as an error, because an agent that cannot name its OS must still work.

use crate::config::AgentConfig;
use std::time::Duration;
use upkeep_agent_protocol::Inventory;

/// How long the identity questions (`hostname`, `who`) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's own version, reported at enrollment and in the inventory.
pub(crate) const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The identity the agent enrolled with plus what the operator pinned on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    machine_id: String,
    hostname_override: Option<String>,
}

impl Host {
    /// Settles the machine identity once: it must not change while the agent runs, or the
    /// server would see a different computer on re-enrollment.
    pub(crate) async fn detect(config: &AgentConfig) -> Self {
        let hostname_override = non_empty(config.hostname.clone());
        let machine_id = match non_empty(config.machine_id.clone()) {
            Some(id) => id,
            // `/etc/machine-id` on Unix, `MachineGuid` on Windows.
            None => match crate::platform::machine_id() {
                Some(id) => id,
                None => {
                    let name = hostname(hostname_override.as_deref()).await;
                    tracing::warn!(
                        "no machine id from the OS and no --machine-id; using the host name {name:?} as machine id"
                    );
                    name
                }
            },
        };
        Self {
            machine_id,
            hostname_override,
        }
    }

    pub(crate) fn machine_id(&self) -> &str {
        &self.machine_id
    }

    pub(crate) async fn hostname(&self) -> String {
        hostname(self.hostname_override.as_deref()).await
    }

    /// A fresh look at the computer. Spawns `who`, so callers should not ask on every poll.
    pub(crate) async fn inventory(&self) -> Inventory {
        Inventory {
            hostname: self.hostname().await,
            os: os_name(),
            agent_version: AGENT_VERSION.to_owned(),
            machine_id: self.machine_id.clone(),
            logged_on_user: logged_on_user().await,
            details: crate::inventory::details().await,
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

async fn hostname(pinned: Option<&str>) -> String {
    if let Some(name) = pinned {
        return name.to_owned();
    }
    if cfg!(windows)
        && let Some(name) = non_empty(std::env::var("COMPUTERNAME").ok())
    {
        return name;
    }
    if let Some(name) = non_empty(read_trimmed("/proc/sys/kernel/hostname")) {
        return name;
    }
    if let Some(name) =
        non_empty(crate::helpers::command_stdout("hostname", &[], HELPER_TIMEOUT).await)
    {
        return name;
    }
    "localhost".to_owned()
}

/// `PRETTY_NAME` from os-release, which is what people recognise ("Debian GNU/Linux 12
/// (bookworm)"); `NAME` or the bare OS family when a distribution lacks it. On Windows the
/// product name and build from the registry.
pub(crate) fn os_name() -> String {
    if let Some(name) = crate::platform::os_name() {
        return name;
    }
    let release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    os_release_field(&release, "PRETTY_NAME")
        .or_else(|| os_release_field(&release, "NAME"))
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        non_empty(Some(value.to_owned()))
    })
}

/// The first interactive user `who` lists, else the user who ran the agent through sudo or
/// the agent's own user. Only used to guess the computer's primary person, so a guess is fine.
async fn logged_on_user() -> Option<String> {
    let who = crate::helpers::command_stdout("who", &[], HELPER_TIMEOUT)
        .await
        .unwrap_or_default();
    first_who_user(&who)
        .or_else(|| non_empty(std::env::var("SUDO_USER").ok()))
        .or_else(|| non_empty(std::env::var("USER").ok()))
}

fn first_who_user(who: &str) -> Option<String> {
    who.lines()
        .find_map(|line| line.split_whitespace().next().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_lose_their_quotes() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            os_release_field(text, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_field(text, "VERSION"), None);
        assert_eq!(os_release_field("PRETTY_NAME_X=1", "PRETTY_NAME"), None);
    }

    #[test]
    fn who_output_names_its_first_user() {
        let who =
            "alice    tty7         2024-05-01 08:00 (:0)\nbob      pts/0        2024-05-01 09:00\n";
        assert_eq!(first_who_user(who).as_deref(), Some("alice"));
        assert_eq!(first_who_user(""), None);
    }

    #[tokio::test]
    async fn pinned_identity_wins() {
        let mut config = AgentConfig::new("http://s", "/tmp/unused");
        config.machine_id = Some(" m-1 \n".into());
        config.hostname = Some("pc-7".into());
        let host = Host::detect(&config).await;
        assert_eq!(host.machine_id(), "m-1");
        let inventory = host.inventory().await;
        assert_eq!(inventory.hostname, "pc-7");
        assert_eq!(inventory.machine_id, "m-1");
        assert_eq!(inventory.agent_version, AGENT_VERSION);
    }
}
