//! The software-supply fields of software (versions script, software-level install and upgrade
//! scripts, prerequisites): their checks, shared by `createSoftware` and `updateSoftware`.

use super::catalogue_ref;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::ScriptInput;
use crate::error::{ApiError, ApiResult};
use async_graphql::{ID, MaybeUndefined};
use upkeep_core::domain::*;

/// Longest `versionsCacheMinutes`: a week.
const MAX_CACHE_MINUTES: i32 = 7 * 24 * 60;

/// The supply fields as a change to apply: `None` leaves a field as it is.
#[derive(Default)]
pub struct SupplyChange {
    pub versions_script: Option<Option<Script>>,
    pub versions_cache_minutes: Option<u32>,
    pub install_script: Option<Option<Script>>,
    pub upgrade_script: Option<Option<Script>>,
    pub depends_on: Option<Vec<Id>>,
}

/// A script field of an update: absent keeps it, `null` removes it.
pub fn script_change(
    v: &MaybeUndefined<ScriptInput>,
    field: &str,
) -> ApiResult<Option<Option<Script>>> {
    Ok(match v {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(s) => Some(Some(s.validate(field)?)),
    })
}

/// A script field of a create.
pub fn script_set(v: &Option<ScriptInput>, field: &str) -> ApiResult<Option<Option<Script>>> {
    v.as_ref().map(|s| s.validate(field).map(Some)).transpose()
}

pub fn cache_minutes(v: Option<i32>) -> ApiResult<Option<u32>> {
    match v {
        None => Ok(None),
        Some(m) if (0..=MAX_CACHE_MINUTES).contains(&m) => Ok(Some(m.unsigned_abs())),
        Some(_) => Err(ApiError::bad(
            "versionsCacheMinutes",
            format!("give 0 to {MAX_CACHE_MINUTES} minutes"),
        )),
    }
}

impl SupplyChange {
    /// Applies the change to `s`, then checks what the whole record must hold: a versions
    /// script needs an install script to run what it finds, and a software needs versions from
    /// somewhere.
    pub fn apply(self, s: &mut Software) -> ApiResult<()> {
        if let Some(v) = self.versions_script {
            s.versions_script = v;
        }
        if let Some(m) = self.versions_cache_minutes {
            s.versions_cache_minutes = m;
        }
        if let Some(v) = self.install_script {
            s.install_script = v;
        }
        if let Some(v) = self.upgrade_script {
            s.upgrade_script = v;
        }
        if let Some(d) = self.depends_on {
            s.depends_on = d;
        }
        if s.versions_script.is_some() && s.install_script.is_none() {
            return Err(ApiError::bad(
                "installScript",
                "a versions script needs the installScript that installs what it finds",
            ));
        }
        if s.versions.is_empty() && s.versions_script.is_none() {
            return Err(ApiError::bad(
                "versions",
                "give at least one version with its install script, or a versionsScript",
            ));
        }
        Ok(())
    }
}

/// The prerequisites of software `this` (owned by `owner`): each must exist and be the same
/// tenant's or cross-tenant, none twice, and no chain may lead back to `this` (a cycle would
/// never let either install first). Refused with the path of the cycle.
pub async fn depends_on(
    c: &Ctx<'_>,
    ids: &[ID],
    owner: Option<Id>,
    this: Id,
    this_name: &str,
) -> ApiResult<Vec<Id>> {
    let mut out: Vec<Id> = Vec::with_capacity(ids.len());
    for (i, raw) in ids.iter().enumerate() {
        let field = format!("dependsOnIds[{i}]");
        let dep: Software = catalogue_ref(c, &field, raw, owner).await?;
        if dep.tenant_id.is_some() && owner.is_none() {
            return Err(ApiError::bad(
                &field,
                "cross-tenant software cannot depend on one tenant's software",
            ));
        }
        if dep.id == this {
            return Err(ApiError::bad(&field, "software cannot depend on itself"));
        }
        if out.contains(&dep.id) {
            return Err(ApiError::bad(&field, "listed twice"));
        }
        if let Some(path) = path_back(c, &dep, this, this_name).await? {
            return Err(ApiError::bad(
                &field,
                format!(
                    "that would make a cycle: {this_name} → {}",
                    path.join(" → ")
                ),
            ));
        }
        out.push(dep.id);
    }
    Ok(out)
}

/// The names along a chain of prerequisites from `from` back to `target`, if there is one.
async fn path_back(
    c: &Ctx<'_>,
    from: &Software,
    target: Id,
    target_name: &str,
) -> ApiResult<Option<Vec<String>>> {
    // Depth-first over stored records; `seen` bounds the walk by the catalogue's size.
    let mut stack: Vec<(Id, Vec<String>)> = vec![(from.id, vec![from.name.clone()])];
    let mut seen = std::collections::HashSet::new();
    while let Some((id, path)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(sw) = c.app.store.get::<Software>(&id).await? else {
            continue;
        };
        for d in &sw.depends_on {
            let mut p = path.clone();
            if *d == target {
                p.push(target_name.to_string());
                return Ok(Some(p));
            }
            if let Some(next) = c.app.store.get::<Software>(d).await? {
                p.push(next.name.clone());
                stack.push((*d, p));
            }
        }
    }
    Ok(None)
}
