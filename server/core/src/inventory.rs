//! What a computer is made of, as its agent last reported: a small record of its own beside
//! the computer record (not inside it), written only when the report changed, so polls and
//! computer edits never rewrite a software list of thousands of entries.

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};
use upkeep_agent_protocol::{
    self as proto, MAX_INSTALLED_SOFTWARE, MAX_INVENTORY_LIST, MAX_INVENTORY_TEXT,
};

/// `Computer.inventory` and `Computer.installedSoftware`, keyed by the computer's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRecord {
    pub computer_id: Id,
    pub tenant_id: Id,
    pub updated_at: Time,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub os_build: Option<String>,
    pub architecture: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub domain: Option<String>,
    pub ip_addresses: Vec<String>,
    pub last_boot_at: Option<Time>,
    pub logged_on_users: Vec<String>,
    pub free_disk_bytes: Option<u64>,
    /// Sorted by name (case-insensitively); `None` when the agent could not list them.
    pub software: Option<Vec<InstalledProgram>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledProgram {
    pub name: String,
    pub version: Option<String>,
    pub publisher: Option<String>,
}

/// Why a report was refused: a list longer than the protocol allows (an agent cuts its own
/// lists; one that does not is broken or hostile, and its report is not stored in part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory.{field} lists {count} entries; at most {max} are allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("inventory.lastBootAt {0:?} is not an RFC 3339 time")]
    BadTime(String),
}

impl InventoryRecord {
    /// The record for an agent's report: lists checked against the protocol's limits, texts
    /// cleaned of control characters and cut to [`MAX_INVENTORY_TEXT`] bytes.
    pub fn from_report(
        computer_id: Id,
        tenant_id: Id,
        d: &proto::InventoryDetails,
        now: Time,
    ) -> Result<InventoryRecord, InventoryError> {
        let too_many = |field, count, max| InventoryError::TooMany { field, count, max };
        if d.ip_addresses.len() > MAX_INVENTORY_LIST {
            return Err(too_many(
                "ipAddresses",
                d.ip_addresses.len(),
                MAX_INVENTORY_LIST,
            ));
        }
        if d.logged_on_users.len() > MAX_INVENTORY_LIST {
            return Err(too_many(
                "loggedOnUsers",
                d.logged_on_users.len(),
                MAX_INVENTORY_LIST,
            ));
        }
        let listed = d.installed_software.as_deref().unwrap_or_default().len();
        if listed > MAX_INSTALLED_SOFTWARE {
            return Err(too_many(
                "installedSoftware",
                listed,
                MAX_INSTALLED_SOFTWARE,
            ));
        }
        let last_boot_at = match &d.last_boot_at {
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|_| InventoryError::BadTime(text(t)))?
                    .to_utc(),
            ),
            None => None,
        };
        let software = d.installed_software.as_ref().map(|list| {
            let mut v: Vec<InstalledProgram> = list
                .iter()
                .map(|s| InstalledProgram {
                    name: text(&s.name),
                    version: opt(&s.version),
                    publisher: opt(&s.publisher),
                })
                .filter(|p| !p.name.is_empty())
                .collect();
            v.sort_by(|a, b| {
                (a.name.to_lowercase(), &a.version).cmp(&(b.name.to_lowercase(), &b.version))
            });
            v
        });
        Ok(InventoryRecord {
            computer_id,
            tenant_id,
            updated_at: now,
            os_name: opt(&d.os_name),
            os_version: opt(&d.os_version),
            os_build: opt(&d.os_build),
            architecture: opt(&d.architecture),
            manufacturer: opt(&d.manufacturer),
            model: opt(&d.model),
            serial_number: opt(&d.serial_number),
            domain: opt(&d.domain),
            ip_addresses: d.ip_addresses.iter().map(|s| text(s)).collect(),
            last_boot_at,
            logged_on_users: d.logged_on_users.iter().map(|s| text(s)).collect(),
            free_disk_bytes: d.free_disk_bytes,
            software,
        })
    }

    /// Whether the facts differ, apart from when they were reported.
    pub fn same_facts(&self, other: &InventoryRecord) -> bool {
        InventoryRecord {
            updated_at: other.updated_at,
            ..self.clone()
        } == *other
    }

    /// Installed programs whose name contains `search` (case-insensitively); all without one.
    pub fn programs<'a>(
        &'a self,
        search: Option<&'a str>,
    ) -> impl Iterator<Item = &'a InstalledProgram> {
        let needle = search.map(str::to_lowercase).filter(|s| !s.is_empty());
        self.software.iter().flatten().filter(move |p| {
            needle
                .as_ref()
                .is_none_or(|n| p.name.to_lowercase().contains(n.as_str()))
        })
    }
}

/// Agent text as stored: no control characters, trimmed, at most [`MAX_INVENTORY_TEXT`] bytes.
fn text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string();
    proto::truncate_utf8(&mut t, MAX_INVENTORY_TEXT);
    t
}

fn opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(text).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> Time {
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn program(name: &str) -> proto::InstalledSoftware {
        proto::InstalledSoftware {
            name: name.into(),
            version: Some("1.0".into()),
            publisher: None,
        }
    }

    #[test]
    fn a_report_is_cleaned_sorted_and_searchable() {
        let d = proto::InventoryDetails {
            os_name: Some(" Debian\u{7}GNU/Linux ".into()),
            model: Some("x".repeat(MAX_INVENTORY_TEXT * 2)),
            last_boot_at: Some("2025-12-31T23:00:00+01:00".into()),
            installed_software: Some(vec![
                program("zlib"),
                program("Mozilla Firefox"),
                program("  "),
            ]),
            ..Default::default()
        };
        let r = InventoryRecord::from_report(Id::from_u128(1), Id::from_u128(2), &d, now())
            .expect("valid");
        assert_eq!(r.os_name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(r.model.as_deref().map(str::len), Some(MAX_INVENTORY_TEXT));
        assert_eq!(
            r.last_boot_at,
            Some(
                chrono::Utc
                    .with_ymd_and_hms(2025, 12, 31, 22, 0, 0)
                    .unwrap()
            )
        );
        let names: Vec<&str> = r.programs(None).map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Mozilla Firefox", "zlib"]);
        let found: Vec<&str> = r
            .programs(Some("FIREFOX"))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(found, ["Mozilla Firefox"]);
        let later = InventoryRecord {
            updated_at: now() + chrono::Duration::hours(1),
            ..r.clone()
        };
        assert!(r.same_facts(&later));
    }

    #[test]
    fn oversize_lists_and_bad_times_are_refused() {
        let d = proto::InventoryDetails {
            installed_software: Some(vec![program("a"); MAX_INSTALLED_SOFTWARE + 1]),
            ..Default::default()
        };
        let e = InventoryRecord::from_report(Id::from_u128(1), Id::from_u128(2), &d, now());
        assert_eq!(
            e,
            Err(InventoryError::TooMany {
                field: "installedSoftware",
                count: MAX_INSTALLED_SOFTWARE + 1,
                max: MAX_INSTALLED_SOFTWARE
            })
        );
        let d = proto::InventoryDetails {
            last_boot_at: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(matches!(
            InventoryRecord::from_report(Id::from_u128(1), Id::from_u128(2), &d, now()),
            Err(InventoryError::BadTime(_))
        ));
    }
}
