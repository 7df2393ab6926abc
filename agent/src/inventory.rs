//! What the computer is made of, beyond its identity (`host`): OS, hardware, network, users,
//! disk and installed software, for `Computer.inventory` and `Computer.installedSoftware`.
//!
//! Every fact is best effort (a missing one is left empty, never an error) and bounded by the
//! protocol's limits before it leaves the agent. The agent gathers it about once a minute and
//! sends it only when it changed (`lib.rs`, `inventory_to_send`).

use std::time::Duration;
use upkeep_agent_protocol::{
    InstalledSoftware, InventoryDetails, MAX_INSTALLED_SOFTWARE, MAX_INVENTORY_LIST,
    MAX_INVENTORY_TEXT, truncate_utf8,
};

/// Free disk space is reported in steps of this many bytes (256 MiB).
#[cfg_attr(windows, allow(dead_code))]
const DISK_STEP: u64 = 256 << 20;

/// Longest a helper command (`dpkg-query`, `reg query`, …) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Gathers the details now, bounded.
pub(crate) async fn details() -> InventoryDetails {
    let mut d = gather().await;
    bound(&mut d);
    d
}

#[cfg(not(windows))]
async fn gather() -> InventoryDetails {
    let release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let software = match stdout(
        "dpkg-query",
        &[
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Maintainer}\n",
        ],
    )
    .await
    {
        Some(out) => Some(parse_dpkg(&out)),
        None => stdout(
            "rpm",
            &["-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\t%{VENDOR}\n"],
        )
        .await
        .map(|out| parse_tabbed(&out)),
    };
    InventoryDetails {
        os_name: field(&release, "NAME"),
        os_version: field(&release, "VERSION_ID").or_else(|| field(&release, "VERSION")),
        os_build: read("/proc/sys/kernel/osrelease"),
        architecture: Some(std::env::consts::ARCH.to_owned()),
        manufacturer: read("/sys/class/dmi/id/sys_vendor"),
        model: read("/sys/class/dmi/id/product_name"),
        serial_number: read("/sys/class/dmi/id/product_serial"),
        domain: read("/proc/sys/kernel/domainname").filter(|d| d != "(none)"),
        ip_addresses: stdout("hostname", &["-I"])
            .await
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        last_boot_at: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s)),
        logged_on_users: users(&stdout("who", &[]).await.unwrap_or_default()),
        // Rounded down, so that a report does not change (and is not sent) every minute.
        free_disk_bytes: free_disk("/").map(|b| b / DISK_STEP * DISK_STEP),
        installed_software: software,
    }
}

#[cfg(windows)]
async fn gather() -> InventoryDetails {
    use crate::pending::{reg_query, reg_value};
    const NT: &str = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion";
    const BIOS: &str = r"HKLM\HARDWARE\DESCRIPTION\System\BIOS";
    const TCPIP: &str = r"HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters";
    const UNINSTALL: [&str; 2] = [
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall",
        r"HKLM\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall",
    ];
    let nt = reg_query(&[NT]).await.unwrap_or_default();
    let bios = reg_query(&[BIOS]).await.unwrap_or_default();
    let tcpip = reg_query(&[TCPIP]).await.unwrap_or_default();
    let mut software = Vec::new();
    let mut listed = false;
    for key in UNINSTALL {
        if let Some(out) = reg_query(&[key, "/s"]).await {
            listed = true;
            software.extend(parse_uninstall(&out));
        }
    }
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    InventoryDetails {
        os_name: non_empty(reg_value(&nt, "ProductName")),
        os_version: non_empty(reg_value(&nt, "DisplayVersion"))
            .or_else(|| non_empty(reg_value(&nt, "ReleaseId"))),
        os_build: non_empty(reg_value(&nt, "CurrentBuild")),
        architecture: Some(std::env::consts::ARCH.to_owned()),
        manufacturer: non_empty(reg_value(&bios, "SystemManufacturer")),
        model: non_empty(reg_value(&bios, "SystemProductName")),
        serial_number: None,
        domain: non_empty(reg_value(&tcpip, "Domain")).or_else(|| std::env::var("USERDOMAIN").ok()),
        ip_addresses: stdout("ipconfig", &[])
            .await
            .map(|s| ipconfig_addresses(&s))
            .unwrap_or_default(),
        last_boot_at: None,
        logged_on_users: std::env::var("USERNAME").ok().into_iter().collect(),
        free_disk_bytes: None,
        installed_software: listed.then_some(software),
    }
}

/// Cuts every text and list to the protocol's limits; the software list is sorted by name
/// and loses exact repeats first, so what is cut is the end of the alphabet.
pub(crate) fn bound(d: &mut InventoryDetails) {
    for text in [
        &mut d.os_name,
        &mut d.os_version,
        &mut d.os_build,
        &mut d.architecture,
        &mut d.manufacturer,
        &mut d.model,
        &mut d.serial_number,
        &mut d.domain,
        &mut d.last_boot_at,
    ]
    .into_iter()
    .flatten()
    {
        truncate_utf8(text, MAX_INVENTORY_TEXT);
    }
    for list in [&mut d.ip_addresses, &mut d.logged_on_users] {
        list.truncate(MAX_INVENTORY_LIST);
        for text in list.iter_mut() {
            truncate_utf8(text, MAX_INVENTORY_TEXT);
        }
    }
    if let Some(software) = &mut d.installed_software {
        for s in software.iter_mut() {
            truncate_utf8(&mut s.name, MAX_INVENTORY_TEXT);
            for text in [&mut s.version, &mut s.publisher].into_iter().flatten() {
                truncate_utf8(text, MAX_INVENTORY_TEXT);
            }
        }
        software.sort();
        software.dedup();
        software.truncate(MAX_INSTALLED_SOFTWARE);
    }
}

/// `KEY=value` from os-release, without quotes.
#[cfg_attr(windows, allow(dead_code))]
fn field(release: &str, key: &str) -> Option<String> {
    release.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?.trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[cfg_attr(windows, allow(dead_code))]
fn read(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `dpkg-query` lines (`ii \tname\tversion\tmaintainer`): installed packages only.
#[cfg_attr(windows, allow(dead_code))]
fn parse_dpkg(out: &str) -> Vec<InstalledSoftware> {
    out.lines()
        .filter_map(|line| {
            let (status, rest) = line.split_once('\t')?;
            status.starts_with("ii").then_some(rest)
        })
        .flat_map(parse_tabbed)
        .collect()
}

/// `name\tversion\tpublisher` lines.
#[cfg_attr(windows, allow(dead_code))]
fn parse_tabbed(out: &str) -> Vec<InstalledSoftware> {
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split('\t').map(str::trim);
            let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
            let known = |v: Option<&str>| {
                v.filter(|v| !v.is_empty() && *v != "(none)")
                    .map(str::to_owned)
            };
            Some(InstalledSoftware {
                name,
                version: known(parts.next()),
                publisher: known(parts.next()),
            })
        })
        .collect()
}

/// The `btime` line of `/proc/stat` as RFC 3339.
#[cfg_attr(windows, allow(dead_code))]
fn boot_time(stat: &str) -> Option<String> {
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Every user `who` lists, each once, in order.
#[cfg_attr(windows, allow(dead_code))]
fn users(who: &str) -> Vec<String> {
    let mut users: Vec<String> = Vec::new();
    for user in who.lines().filter_map(|l| l.split_whitespace().next()) {
        if !users.iter().any(|u| u == user) {
            users.push(user.to_owned());
        }
    }
    users
}

#[cfg(unix)]
fn free_disk(path: &str) -> Option<u64> {
    let path = std::ffi::CString::new(path).ok()?;
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs that
    // lives across the call; statvfs only writes into it.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(all(not(unix), not(windows)))]
fn free_disk(_path: &str) -> Option<u64> {
    None
}

/// Programs in `reg query …\Uninstall /s` output: one block per subkey; those without a
/// `DisplayName` (updates, components) are not programs people recognise and are left out.
#[cfg(any(windows, test))]
fn parse_uninstall(out: &str) -> Vec<InstalledSoftware> {
    use crate::pending::reg_value;
    let mut found = Vec::new();
    let mut block = String::new();
    let mut flush = |block: &str| {
        let value = |name| reg_value(block, name).filter(|v| !v.is_empty());
        if let Some(name) = value("DisplayName") {
            found.push(InstalledSoftware {
                name,
                version: value("DisplayVersion"),
                publisher: value("Publisher"),
            });
        }
    };
    for line in out.lines() {
        if line.starts_with("HKEY_") {
            flush(&block);
            block.clear();
        } else {
            block.push_str(line);
            block.push('\n');
        }
    }
    flush(&block);
    found
}

/// Addresses in `ipconfig` output (`IPv4 Address. . . : 10.0.0.5`, `IPv6 Address …`).
#[cfg(any(windows, test))]
fn ipconfig_addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains("IPv4 Address") || l.contains("IPv6 Address"))
        .filter_map(|l| l.split_once(" : ").map(|(_, a)| a.trim()))
        .map(|a| a.trim_end_matches("(Preferred)").trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

/// Stdout of a helper command (see [`crate::helpers::command_stdout`]).
async fn stdout(program: &str, args: &[&str]) -> Option<String> {
    crate::helpers::command_stdout(program, args, HELPER_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_lists_installed_packages_only() {
        let out = "ii \tbash\t5.2.15-2+b2\tMatthias Klose <doko@debian.org>\nrc \told\t1.0\tX\nii \tzlib1g\t1:1.2.13\t\n";
        let s = parse_dpkg(out);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "bash");
        assert_eq!(s[0].version.as_deref(), Some("5.2.15-2+b2"));
        assert_eq!(
            s[0].publisher.as_deref(),
            Some("Matthias Klose <doko@debian.org>")
        );
        assert_eq!(s[1].publisher, None);
    }

    #[test]
    fn rpm_none_is_unknown() {
        let s = parse_tabbed("openssl\t3.0.7-24.el9\t(none)\n");
        assert_eq!(s[0].publisher, None);
        assert_eq!(s[0].version.as_deref(), Some("3.0.7-24.el9"));
    }

    #[test]
    fn uninstall_keys_become_programs() {
        let out = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\7-Zip\r\n    DisplayName    REG_SZ    7-Zip 23.01 (x64)\r\n    DisplayVersion    REG_SZ    23.01\r\n    Publisher    REG_SZ    Igor Pavlov\r\n\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\KB123\r\n    ParentKeyName    REG_SZ    x\r\n";
        let s = parse_uninstall(out);
        assert_eq!(
            s,
            vec![InstalledSoftware {
                name: "7-Zip 23.01 (x64)".into(),
                version: Some("23.01".into()),
                publisher: Some("Igor Pavlov".into()),
            }]
        );
    }

    #[test]
    fn ipconfig_addresses_are_read() {
        let out = "   IPv4 Address. . . . . . . . . . . : 10.0.0.5(Preferred)\r\n   Subnet Mask . . . . : 255.0.0.0\r\n   Link-local IPv6 Address . . . . . : fe80::1%4\r\n";
        assert_eq!(ipconfig_addresses(out), vec!["10.0.0.5", "fe80::1%4"]);
    }

    #[test]
    fn boot_time_and_users() {
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n").as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            users("alice tty7 x\nbob pts/0 y\nalice pts/1 z\n"),
            vec!["alice", "bob"]
        );
    }

    #[test]
    fn oversize_details_are_cut_to_the_limits() {
        let mut d = InventoryDetails {
            model: Some("m".repeat(MAX_INVENTORY_TEXT + 10)),
            ip_addresses: vec!["10.0.0.1".into(); MAX_INVENTORY_LIST + 5],
            installed_software: Some(
                (0..MAX_INSTALLED_SOFTWARE + 3)
                    .rev()
                    .map(|i| InstalledSoftware {
                        name: format!("pkg{i:05}"),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        bound(&mut d);
        assert_eq!(d.model.map(|m| m.len()), Some(MAX_INVENTORY_TEXT));
        assert_eq!(d.ip_addresses.len(), MAX_INVENTORY_LIST);
        let software = d.installed_software.unwrap_or_default();
        assert_eq!(software.len(), MAX_INSTALLED_SOFTWARE);
        assert_eq!(software[0].name, "pkg00000");
    }

    #[tokio::test]
    async fn this_computer_has_an_architecture_and_a_build() {
        let d = details().await;
        assert_eq!(d.architecture.as_deref(), Some(std::env::consts::ARCH));
        assert!(d.os_build.is_some());
    }
}
