//! GraphQL views of a computer's inventory (`Computer.inventory`,
//! `Computer.installedSoftware`): read from its own record, written when the agent's report
//! changes.

use crate::api::graphql::connection::{
    ListOrder, Page, PageArgs, Position, SortKey, Total, slice_sorted,
};
use crate::api::graphql::scalars::DateTime;
use crate::error::ApiResult;
use async_graphql::SimpleObject;
use upkeep_core::inventory::{InstalledProgram, InventoryRecord};

/// What the computer's agent last reported about it. Fields are null (or empty) when the
/// agent could not tell.
#[derive(SimpleObject)]
#[graphql(name = "Inventory")]
pub struct InventoryView {
    /// The operating system's name.
    pub os_name: Option<String>,
    /// Its version.
    pub os_version: Option<String>,
    /// Its build, where there is one (Windows).
    pub os_build: Option<String>,
    /// The CPU architecture (e.g. `x86_64`).
    pub architecture: Option<String>,
    /// The computer's manufacturer.
    pub manufacturer: Option<String>,
    /// The computer's model.
    pub model: Option<String>,
    /// The serial number.
    pub serial_number: Option<String>,
    /// DNS or Windows domain, or the workgroup.
    pub domain: Option<String>,
    /// Its IP addresses.
    pub ip_addresses: Vec<String>,
    /// When it last started.
    pub last_boot_at: Option<DateTime>,
    /// Users signed in when it reported.
    pub logged_on_users: Vec<String>,
    /// Free bytes on the system disk (a Float: GraphQL's Int has 32 bits); agents round it
    /// down to 256 MiB.
    pub free_disk_bytes: Option<f64>,
    /// How many installed programs the agent listed (null when it could not list them).
    pub installed_software_count: Option<i32>,
    /// When this report was stored.
    pub updated_at: DateTime,
}

impl From<InventoryRecord> for InventoryView {
    fn from(r: InventoryRecord) -> Self {
        InventoryView {
            installed_software_count: r.software.as_ref().map(|s| s.len() as i32),
            os_name: r.os_name,
            os_version: r.os_version,
            os_build: r.os_build,
            architecture: r.architecture,
            manufacturer: r.manufacturer,
            model: r.model,
            serial_number: r.serial_number,
            domain: r.domain,
            ip_addresses: r.ip_addresses,
            last_boot_at: r.last_boot_at.map(DateTime),
            logged_on_users: r.logged_on_users,
            free_disk_bytes: r.free_disk_bytes.map(|b| b as f64),
            updated_at: r.updated_at.into(),
        }
    }
}

/// One installed program.
#[derive(SimpleObject)]
#[graphql(name = "InstalledSoftware")]
pub struct InstalledSoftwareView {
    /// Its name.
    pub name: String,
    /// Its version, if known.
    pub version: Option<String>,
    /// Its publisher, if known.
    pub publisher: Option<String>,
}

/// A program with its place in the agent's report (which only separates exact duplicates).
impl From<(usize, InstalledProgram)> for InstalledSoftwareView {
    fn from((_, p): (usize, InstalledProgram)) -> Self {
        p.into()
    }
}

impl From<InstalledProgram> for InstalledSoftwareView {
    fn from(p: InstalledProgram) -> Self {
        InstalledSoftwareView {
            name: p.name,
            version: p.version,
            publisher: p.publisher,
        }
    }
}

/// `installedSoftware(search, first, after, last, before)`: the programs whose name contains
/// `search`, by name (then version); a cursor is a position in that order, so it outlives an
/// inventory that changed meanwhile.
pub fn installed_page(
    record: Option<&InventoryRecord>,
    search: Option<&str>,
    args: &PageArgs,
) -> ApiResult<Page<InstalledSoftwareView>> {
    let order = ListOrder::new("installedSoftware", "NAME", false);
    let all: Vec<(usize, InstalledProgram)> = record
        .map(|r| r.programs(search).cloned().enumerate().collect())
        .unwrap_or_default();
    // Name and version decide; the position in the report only separates exact duplicates.
    let pos = |(i, p): &(usize, InstalledProgram)| Position {
        key: SortKey::Text(format!(
            "{}\u{0}{}",
            p.name.to_lowercase(),
            p.version.as_deref().unwrap_or("")
        )),
        id: upkeep_core::domain::Id::from_u128(*i as u128),
    };
    let w = args.window(&order)?;
    let total = all.len();
    let slice = slice_sorted(all, pos, &order, &w);
    Ok(slice.into_connection(&order, pos, Total { total_count: total }))
}
