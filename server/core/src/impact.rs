//! Impact preview: what a deployment change (create, update or delete) would do across the
//! fleet, without running anything. For every computer the change could reach, the plan items
//! are frozen twice with the session's own functions (`resolve`, `engine::plan::freeze_items`)
//! — from the deployments as they are and as they would be — and each item that differs is
//! planned with `engine::plan::plan` from what the computer's last detection of that software
//! or task found ([`Detection`], stored with the session step that detected it). A computer
//! whose detection of an item the change touches is missing, or older than `stale_after`, is
//! listed as stale and not planned: nothing is guessed.
//!
//! Only the deployments of the changed software or task, and of software linked to it by
//! prerequisites (either way), are frozen: items of other subjects cannot change, and this
//! keeps a preview over 10 000 computers inside a form's round trip. Pure.

use crate::domain::*;
use crate::engine::plan::{self, Found};
use crate::session::{
    ActionKind, ItemWhat, PlanItem, SessionTrigger, SoftwareSnapshot, TaskSnapshot,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How old a detection may be before the preview lists its computer as stale instead of
/// planning from it: two weeks, a weekly maintenance cycle with one missed run.
pub const DEFAULT_STALE_AFTER_DAYS: u32 = 14;
/// The longest `stale_after` a caller may ask for (ten years).
pub const MAX_STALE_AFTER_DAYS: u32 = 3650;

/// What a session's detection (or verification) last found for one software or task on one
/// computer. Stored in the transaction of the step that detected it; one per computer and
/// subject, replaced by each newer detection. A detection that failed is not stored: the
/// previous one stays, and ages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub tenant_id: Id,
    pub computer_id: Id,
    pub subject: Subject,
    /// The session whose step found it.
    pub session_id: Id,
    pub at: Time,
    /// Installed version (software); `None` when not installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The task's test (or the software's configuration task's test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_value: Option<String>,
}

impl Detection {
    /// The record of what detection found for one item, or `None` when the detection failed
    /// (nothing was learnt: the stored one, if any, stays).
    pub fn of(
        tenant_id: Id,
        computer_id: Id,
        session_id: Id,
        at: Time,
        subject: Subject,
        f: &Found,
    ) -> Option<Detection> {
        let task_undecided = matches!(subject, Subject::Task(_)) && f.test.is_none();
        if f.detection_error.is_some() || task_undecided {
            return None;
        }
        Some(Detection {
            tenant_id,
            computer_id,
            subject,
            session_id,
            at,
            version: f.version.clone(),
            test: f.test,
            test_error: f.test_error.clone(),
            current_value: f.current_value.clone(),
        })
    }

    /// The findings the planner takes, as detection gave them.
    pub fn found(&self) -> Found {
        Found {
            version: self.version.clone(),
            detection_error: None,
            test: self.test,
            test_error: self.test_error.clone(),
            current_value: self.current_value.clone(),
            get_error: None,
        }
    }
}

/// The change to preview. `Create` and `Update` carry the deployment as the mutation would
/// store it (validated, ids resolved, secrets sealed).
#[derive(Debug, Clone)]
pub enum Change {
    Create(Deployment),
    Update(Deployment),
    Delete(Id),
}

/// What the planner may ask for: snapshots of the software and tasks the deployments name (and
/// their prerequisites), and the versions scripts' last answers per tenant and software.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub software: HashMap<Id, SoftwareSnapshot>,
    pub tasks: HashMap<Id, TaskSnapshot>,
    pub versions: HashMap<(Id, Id), crate::versions::VersionsCache>,
}

/// One item the change alters on one computer, planned.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpactAction {
    pub subject: Subject,
    pub kind: ActionKind,
    /// The planner's reason (as a session's action would give it), or why nothing is planned.
    pub reason: String,
    pub desired_version: Option<String>,
    pub detected_version: Option<String>,
    /// When the detection planned from ran (`None`: no detection was needed).
    pub detected_at: Option<Time>,
    /// The deployment that would decide the item (`None`: nothing would deploy it).
    pub deployment: Option<Id>,
    /// The deployment that decides it now.
    pub previous_deployment: Option<Id>,
}

/// A computer the change reaches, with its planned actions and the deployments that would stop
/// or start winning on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputerImpact {
    pub computer_id: Id,
    pub tenant_id: Id,
    pub actions: Vec<ImpactAction>,
    /// Deployments (other than the changed one) that win now and would not.
    pub shadowed: Vec<Id>,
    /// Deployments (other than the changed one) that do not win now and would.
    pub unshadowed: Vec<Id>,
}

/// A computer the change reaches whose data is missing or too old to plan from.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleComputer {
    pub computer_id: Id,
    pub tenant_id: Id,
    /// Names each software or task without a usable detection, and why.
    pub reason: String,
    /// The oldest detection that was too old (`None` when one was missing).
    pub detected_at: Option<Time>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The change alters nothing of this computer's plan.
    Unaffected,
    Planned(ComputerImpact),
    Stale(StaleComputer),
}

/// A change prepared for previewing computer by computer.
#[derive(Debug)]
pub struct Preview {
    before: Vec<Deployment>,
    after: Vec<Deployment>,
    /// The changed deployment as it is and as it would be (one or two).
    changed: Vec<Deployment>,
    changed_id: Id,
    /// The subjects whose items may change (the changed ones and software linked to them by
    /// prerequisites).
    subjects: BTreeSet<Subject>,
    catalogue: Catalogue,
    now: Time,
    stale_after: chrono::Duration,
}

/// Why a change cannot be previewed (the deployment to update or delete is not among those
/// given).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("deployment {0} not found")]
pub struct UnknownDeployment(pub Id);

impl Preview {
    /// Prepares `change` against `deployments` (every deployment that may apply to the computers
    /// previewed: their tenants' and the cross-tenant ones). Deployments are taken as a regular
    /// session takes them (`REQUIRED` ones; see [`plan::applies`]).
    pub fn new(
        change: &Change,
        deployments: &[Deployment],
        catalogue: Catalogue,
        now: Time,
        stale_after_days: u32,
    ) -> Result<Preview, UnknownDeployment> {
        let find = |id: Id| {
            deployments
                .iter()
                .find(|d| d.id == id)
                .cloned()
                .ok_or(UnknownDeployment(id))
        };
        let (changed_id, old, new) = match change {
            Change::Create(d) => (d.id, None, Some(d.clone())),
            Change::Update(d) => (d.id, Some(find(d.id)?), Some(d.clone())),
            Change::Delete(id) => (*id, Some(find(*id)?), None),
        };
        let changed: Vec<Deployment> = old.iter().chain(new.iter()).cloned().collect();
        let subjects = linked_subjects(changed.iter().map(Deployment::subject), &catalogue);
        let regular = |d: &Deployment| {
            subjects.contains(&d.subject()) && plan::applies(d, SessionTrigger::Manual, None)
        };
        let before: Vec<Deployment> = deployments.iter().filter(|d| regular(d)).cloned().collect();
        let mut after: Vec<Deployment> = before
            .iter()
            .filter(|d| d.id != changed_id)
            .cloned()
            .collect();
        after.extend(new.filter(regular));
        Ok(Preview {
            before,
            after,
            changed,
            changed_id,
            subjects,
            catalogue,
            now,
            stale_after: chrono::Duration::days(i64::from(stale_after_days)),
        })
    }

    /// The software and tasks whose detections the preview reads.
    pub fn subjects(&self) -> &BTreeSet<Subject> {
        &self.subjects
    }

    /// The tenant the change is confined to (`None`: a cross-tenant deployment, any tenant).
    pub fn tenant(&self) -> Option<Id> {
        self.changed.first().and_then(|d| d.tenant_id)
    }

    /// Whether the change could reach `computer` at all: the changed deployment, as it is or as
    /// it would be, targets it. Other computers' resolution cannot change.
    pub fn may_reach(&self, computer: &Computer) -> bool {
        self.changed.iter().any(|d| {
            d.tenant_id.is_none_or(|t| t == computer.tenant_id) && d.target.matches(computer)
        })
    }

    /// What the change would do to `computer`, from its detections (`detection` looks one up by
    /// subject). `secret_error` says why an item's sealed parameters would not open (as a
    /// session start checks them).
    pub fn computer<'d>(
        &self,
        computer: &Computer,
        detection: impl Fn(Subject) -> Option<&'d Detection>,
        mut secret_error: impl FnMut(&PlanItem) -> Option<String>,
    ) -> Outcome {
        if !self.may_reach(computer) {
            return Outcome::Unaffected;
        }
        let before = self.freeze(computer, &self.before);
        let after = self.freeze(computer, &self.after);
        let winners_before = self.winners(computer, &self.before);
        let winners_after = self.winners(computer, &self.after);
        let mut actions = Vec::new();
        let mut stale: Vec<(String, Option<Time>)> = Vec::new();
        for subject in &self.subjects {
            let b = before.iter().position(|i| i.subject() == *subject);
            let a = after.iter().position(|i| i.subject() == *subject);
            let same = match (b, a) {
                (Some(b), Some(a)) => signature(&before[b]) == signature(&after[a]),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let previous = b.map(|b| before[b].deployment_id);
            match a {
                None => actions.push(self.left_alone(*subject, previous, &winners_after)),
                Some(a) => {
                    let mut item = after[a].clone();
                    if item.invalid.is_none() {
                        item.invalid = secret_error(&item);
                    }
                    match self.plan_item(computer.tenant_id, a, item, previous, &detection) {
                        Ok(action) => actions.push(action),
                        Err(why) => stale.push(why),
                    }
                }
            }
        }
        if !stale.is_empty() {
            return Outcome::Stale(StaleComputer {
                computer_id: computer.id,
                tenant_id: computer.tenant_id,
                detected_at: stale.iter().filter_map(|s| s.1).min(),
                reason: stale
                    .into_iter()
                    .map(|s| s.0)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let (shadowed, unshadowed) = self.shadows(&winners_before, &winners_after);
        if actions.is_empty() && shadowed.is_empty() && unshadowed.is_empty() {
            return Outcome::Unaffected;
        }
        Outcome::Planned(ComputerImpact {
            computer_id: computer.id,
            tenant_id: computer.tenant_id,
            actions,
            shadowed,
            unshadowed,
        })
    }

    /// The action for item `index` of the plan after the change, from the computer's detection
    /// of it; `Err` says why there is none to plan from (missing, or older than allowed).
    fn plan_item<'d>(
        &self,
        tenant: Id,
        index: usize,
        mut item: PlanItem,
        previous: Option<Id>,
        detection: &impl Fn(Subject) -> Option<&'d Detection>,
    ) -> Result<ImpactAction, (String, Option<Time>)> {
        self.apply_cached_versions(tenant, &mut item);
        let subject = item.subject();
        let name = item_name(&item);
        let Some(d) = detection(subject) else {
            return Err((format!("{name}: never detected"), None));
        };
        if self.now.signed_duration_since(d.at) > self.stale_after {
            return Err((
                format!("{name}: last detected {}", d.at.format("%Y-%m-%d")),
                Some(d.at),
            ));
        }
        let planned = plan::plan(index, &item, &d.found(), Id::from_u128(0));
        Ok(ImpactAction {
            subject,
            kind: planned.kind,
            reason: planned.reason,
            desired_version: planned.desired_version,
            detected_version: planned.detected_version,
            detected_at: Some(d.at),
            deployment: Some(item.deployment_id),
            previous_deployment: previous,
        })
    }

    fn freeze(&self, computer: &Computer, deployments: &[Deployment]) -> Vec<PlanItem> {
        plan::freeze_items::<std::convert::Infallible>(
            computer,
            deployments,
            |s| Ok(self.catalogue.software.get(&s).cloned()),
            |t| Ok(self.catalogue.tasks.get(&t).cloned()),
        )
        .unwrap_or_else(|e| match e {})
    }

    /// The winning deployment per subject (exceptions included).
    fn winners(&self, computer: &Computer, deployments: &[Deployment]) -> BTreeMap<Subject, Id> {
        crate::resolve::resolve(computer, deployments)
            .into_iter()
            .map(|r| (r.subject, r.winner.id))
            .collect()
    }

    fn shadows(
        &self,
        before: &BTreeMap<Subject, Id>,
        after: &BTreeMap<Subject, Id>,
    ) -> (Vec<Id>, Vec<Id>) {
        let was: BTreeSet<Id> = before.values().copied().collect();
        let is: BTreeSet<Id> = after.values().copied().collect();
        let other = |id: &&Id| **id != self.changed_id;
        (
            was.difference(&is).filter(other).copied().collect(),
            is.difference(&was).filter(other).copied().collect(),
        )
    }

    /// An item the change takes out of the plan: the software or task stays as it is.
    fn left_alone(
        &self,
        subject: Subject,
        previous: Option<Id>,
        winners_after: &BTreeMap<Subject, Id>,
    ) -> ImpactAction {
        let exception = winners_after.get(&subject).copied();
        ImpactAction {
            subject,
            kind: ActionKind::NoAction,
            reason: match exception {
                Some(e) => format!("left as it is: the exception {e} wins"),
                None => "no longer deployed: left as it is".into(),
            },
            desired_version: None,
            detected_version: None,
            detected_at: None,
            deployment: exception,
            previous_deployment: previous,
        }
    }

    /// A software item with a versions script takes the versions it last printed for the
    /// tenant, as a session takes a cached answer (a session might run the script again and
    /// find a newer one).
    fn apply_cached_versions(&self, tenant: Id, item: &mut PlanItem) {
        let ItemWhat::Software { software, .. } = &mut item.what else {
            return;
        };
        if software.versions_script.is_none() {
            return;
        }
        if let Some(c) = self.catalogue.versions.get(&(tenant, software.id))
            && let Some(v) = crate::versions::effective(software, &c.versions)
        {
            software.versions = v;
        }
    }
}

/// The changed subjects and every software linked to one of them by prerequisites, in either
/// direction (what an item's place in the plan and its "needed by" depend on).
fn linked_subjects(
    start: impl Iterator<Item = Subject>,
    catalogue: &Catalogue,
) -> BTreeSet<Subject> {
    let mut out: BTreeSet<Subject> = BTreeSet::new();
    let mut todo: Vec<Subject> = start.collect();
    while let Some(s) = todo.pop() {
        if !out.insert(s) {
            continue;
        }
        let Subject::Software(id) = s else {
            continue;
        };
        if let Some(sw) = catalogue.software.get(&id) {
            todo.extend(sw.depends_on.iter().map(|d| Subject::Software(*d)));
        }
        todo.extend(
            catalogue
                .software
                .values()
                .filter(|o| o.depends_on.contains(&id))
                .map(|o| Subject::Software(o.id)),
        );
    }
    out
}

fn item_name(item: &PlanItem) -> String {
    match &item.what {
        ItemWhat::Software { software, .. } => software.name.clone(),
        ItemWhat::Task { task, .. } => task.name.clone(),
    }
}

/// What decides an item's action, beside the catalogue (the same on both sides of a change):
/// two items with equal signatures plan alike.
fn signature(item: &PlanItem) -> impl PartialEq + '_ {
    let what = match &item.what {
        ItemWhat::Software {
            desired, version, ..
        } => (Some(*desired), version.as_deref(), None),
        ItemWhat::Task { mode, .. } => (None, None, Some(*mode)),
    };
    (
        item.deployment_id,
        what,
        &item.parameters,
        item.invalid.as_deref(),
        item.needed_by.as_deref(),
        &item.prerequisites,
        (item.order, item.position, item.enforcement),
    )
}

/// Actions per tenant and kind, over the planned computers.
pub fn counts<'a>(
    planned: impl Iterator<Item = &'a ComputerImpact>,
) -> BTreeMap<(Id, ActionKindKey), u64> {
    let mut out = BTreeMap::new();
    for c in planned {
        for a in &c.actions {
            *out.entry((c.tenant_id, ActionKindKey(a.kind))).or_insert(0) += 1;
        }
    }
    out
}

/// [`ActionKind`] in the order counts list them: install, upgrade, uninstall, run task, none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionKindKey(pub ActionKind);

impl ActionKindKey {
    fn rank(self) -> u8 {
        match self.0 {
            ActionKind::Install => 0,
            ActionKind::Upgrade => 1,
            ActionKind::Uninstall => 2,
            ActionKind::RunTask => 3,
            ActionKind::NoAction => 4,
        }
    }
}

impl PartialOrd for ActionKindKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ActionKindKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

#[cfg(test)]
mod tests;
