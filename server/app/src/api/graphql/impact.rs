//! `previewDeploymentChange`: what a deployment change would do across the fleet, without
//! running or writing anything. The change is checked as its mutation checks it (the same
//! builders, so the same roles may preview what they may do); `services::impact` reads and
//! `upkeep_core::impact` plans.

use super::connection::{self, ListOrder, Page, PageArgs, Position, SortKey};
use super::ctx::Ctx;
use super::enums::ActionKind;
use super::inputs::{CreateDeploymentInput, UpdateDeploymentInput};
use super::mutation::{changed_deployment, deployment_to_delete, new_deployment};
use super::scalars::DateTime;
use super::types::View;
use crate::error::{ApiError, ApiResult};
use crate::services::impact::Impact;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use std::collections::BTreeMap;
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::impact::{Change, ComputerImpact, ImpactAction, MAX_STALE_AFTER_DAYS};

/// A deployment change to preview: exactly one of `create`, `update` or `delete`.
#[derive(InputObject)]
pub struct DeploymentChangeInput {
    /// A new deployment, as `createDeployment` takes it.
    pub create: Option<CreateDeploymentInput>,
    /// A change to a deployment, as `updateDeployment` takes it.
    pub update: Option<UpdateDeploymentChange>,
    /// The deployment `deleteDeployment` would remove.
    pub delete: Option<ID>,
}

/// `updateDeployment`'s arguments.
#[derive(InputObject)]
pub struct UpdateDeploymentChange {
    /// The deployment's id.
    pub id: ID,
    /// The changes; fields left out stay as they are.
    pub input: UpdateDeploymentInput,
}

/// Previews `input` for the caller, from detections at most `stale_after_days` old.
pub async fn preview(
    c: &Ctx<'_>,
    input: DeploymentChangeInput,
    stale_after_days: i32,
) -> ApiResult<ImpactPreview> {
    let days = u32::try_from(stale_after_days)
        .ok()
        .filter(|d| (1..=MAX_STALE_AFTER_DAYS).contains(d))
        .ok_or_else(|| {
            ApiError::bad(
                "staleAfterDays",
                format!("must be between 1 and {MAX_STALE_AFTER_DAYS}"),
            )
        })?;
    let (change, tenant) = match (input.create, input.update, input.delete) {
        (Some(create), None, None) => {
            let d = new_deployment(c, &create).await?;
            let t = d.tenant_id;
            (Change::Create(d), t)
        }
        (None, Some(update), None) => {
            let d = changed_deployment(c, &update.id, &update.input).await?;
            let t = d.tenant_id;
            (Change::Update(d), t)
        }
        (None, None, Some(id)) => {
            let d = deployment_to_delete(c, &id).await?;
            (Change::Delete(d.id), d.tenant_id)
        }
        _ => {
            return Err(ApiError::bad(
                "input",
                "give exactly one of create, update or delete",
            ));
        }
    };
    let impact = c.app.preview_change(&change, tenant, c.scope, days).await?;
    Ok(ImpactPreview {
        impact: Arc::new(impact),
        stale_after_days: days,
    })
}

/// What a deployment change would do, per tenant and computer, planned from each computer's
/// last detection (nothing runs, nothing is written).
pub struct ImpactPreview {
    impact: Arc<Impact>,
    stale_after_days: u32,
}

/// How many actions of one kind the change would plan in one tenant.
#[derive(SimpleObject)]
pub struct ImpactCount {
    /// The tenant.
    pub tenant: View<Tenant>,
    /// The kind of action (`NO_ACTION`: the item would change, but the computer already
    /// complies, or the software or task would be left as it is).
    pub kind: ActionKind,
    /// How many actions (one per computer and software or task the change alters).
    pub count: i64,
}

/// A deployment the change would make stop or start winning, and on how many computers.
pub struct ImpactShadow {
    deployment: Id,
    computers: i64,
}

/// A deployment the change would make stop or start winning, and on how many computers.
#[Object]
impl ImpactShadow {
    /// The deployment (`null` if the caller may not see it).
    async fn deployment(&self, ctx: &Context<'_>) -> Result<Option<View<Deployment>>> {
        Ok(Ctx::new(ctx)?.find(self.deployment).await?.map(View))
    }
    /// On how many of the previewed computers.
    async fn computers(&self) -> i64 {
        self.computers
    }
}

/// A computer whose data is missing or too old to plan from: listed, not guessed.
pub struct ImpactStaleComputer {
    impact: Arc<Impact>,
    index: usize,
}

/// A computer whose data is missing or too old to plan from: listed, not guessed.
#[Object]
impl ImpactStaleComputer {
    /// The computer.
    async fn computer(&self) -> Option<View<Computer>> {
        let s = &self.impact.stale[self.index];
        self.impact.computers.get(&s.computer_id).cloned().map(View)
    }
    /// Which software or task lacks a usable detection, and why ("Firefox: never detected",
    /// "7-Zip: last detected 2026-10-02").
    async fn reason(&self) -> &str {
        &self.impact.stale[self.index].reason
    }
    /// The oldest detection that was too old (`null` when one was missing).
    async fn detected_at(&self) -> Option<DateTime> {
        self.impact.stale[self.index].detected_at.map(DateTime)
    }
}

/// A computer the change reaches, with what would be done on it.
pub struct ImpactComputer {
    impact: Arc<Impact>,
    index: usize,
}

impl ImpactComputer {
    fn of(&self) -> &ComputerImpact {
        &self.impact.planned[self.index]
    }
}

/// A computer the change reaches, with what would be done on it.
#[Object]
impl ImpactComputer {
    /// The computer.
    async fn computer(&self) -> Option<View<Computer>> {
        self.impact
            .computers
            .get(&self.of().computer_id)
            .cloned()
            .map(View)
    }
    /// One action per software or task whose plan the change alters, as the next session
    /// would plan it from the computer's last detection.
    async fn actions(&self) -> Vec<ImpactActionView> {
        (0..self.of().actions.len())
            .map(|i| ImpactActionView {
                impact: self.impact.clone(),
                computer: self.index,
                index: i,
            })
            .collect()
    }
    /// Deployments that win on this computer now and would not.
    async fn shadows(&self, ctx: &Context<'_>) -> Result<Vec<View<Deployment>>> {
        deployments(ctx, &self.of().shadowed).await
    }
    /// Deployments that do not win on this computer now and would.
    async fn unshadows(&self, ctx: &Context<'_>) -> Result<Vec<View<Deployment>>> {
        deployments(ctx, &self.of().unshadowed).await
    }
}

async fn deployments(ctx: &Context<'_>, ids: &[Id]) -> Result<Vec<View<Deployment>>> {
    let c = Ctx::new(ctx)?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(d) = c.find::<Deployment>(*id).await? {
            out.push(View(d));
        }
    }
    Ok(out)
}

/// What the next session would do for one software or task the change alters.
pub struct ImpactActionView {
    impact: Arc<Impact>,
    computer: usize,
    index: usize,
}

impl ImpactActionView {
    fn of(&self) -> &ImpactAction {
        &self.impact.planned[self.computer].actions[self.index]
    }
}

/// What the next session would do for one software or task the change alters.
#[Object(name = "ImpactAction")]
impl ImpactActionView {
    /// The software (`null` for a task).
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.of().subject {
            Subject::Software(id) => Ok(Ctx::new(ctx)?.find(id).await?.map(View)),
            Subject::Task(_) => Ok(None),
        }
    }
    /// The maintenance task (`null` for software).
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.of().subject {
            Subject::Task(id) => Ok(Ctx::new(ctx)?.find(id).await?.map(View)),
            Subject::Software(_) => Ok(None),
        }
    }
    /// What the session would do.
    async fn kind(&self) -> ActionKind {
        self.of().kind.into()
    }
    /// Why, as the session's action would say it (or why nothing would be done).
    async fn reason(&self) -> &str {
        &self.of().reason
    }
    /// The version it would install or upgrade to.
    async fn desired_version(&self) -> Option<&str> {
        self.of().desired_version.as_deref()
    }
    /// The version the last detection found.
    async fn detected_version(&self) -> Option<&str> {
        self.of().detected_version.as_deref()
    }
    /// When the detection planned from ran (`null` when none was needed).
    async fn detected_at(&self) -> Option<DateTime> {
        self.of().detected_at.map(DateTime)
    }
    /// The id of the deployment that would decide it (the previewed one too, before it is
    /// created); `null` when nothing would deploy it.
    async fn deployment_id(&self) -> Option<ID> {
        self.of().deployment.map(|d| ID(d.to_string()))
    }
    /// The deployment that decides it now (`null`: none does).
    async fn previous_deployment(&self, ctx: &Context<'_>) -> Result<Option<View<Deployment>>> {
        match self.of().previous_deployment {
            Some(id) => Ok(Ctx::new(ctx)?.find(id).await?.map(View)),
            None => Ok(None),
        }
    }
}

fn shadow_counts(
    planned: &[ComputerImpact],
    pick: fn(&ComputerImpact) -> &[Id],
) -> Vec<ImpactShadow> {
    let mut n: BTreeMap<Id, i64> = BTreeMap::new();
    for c in planned {
        for d in pick(c) {
            *n.entry(*d).or_insert(0) += 1;
        }
    }
    n.into_iter()
        .map(|(deployment, computers)| ImpactShadow {
            deployment,
            computers,
        })
        .collect()
}

/// What a deployment change would do, per tenant and computer, planned from each computer's
/// last detection (nothing runs, nothing is written).
#[Object]
impl ImpactPreview {
    /// Actions per tenant and kind (install, upgrade, uninstall, run task, none) over the
    /// computers planned; kinds with none are left out. Stale computers are not counted.
    async fn counts(&self) -> Vec<ImpactCount> {
        upkeep_core::impact::counts(self.impact.planned.iter())
            .into_iter()
            .filter_map(|((tenant, kind), count)| {
                Some(ImpactCount {
                    tenant: View(self.impact.tenants.get(&tenant)?.clone()),
                    kind: kind.0.into(),
                    count: count as i64,
                })
            })
            .collect()
    }

    /// The computers the change reaches, by name, with their planned actions.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn computers(
        &self,
        #[graphql(desc = "Page size (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Cursor to page from.")] after: Option<String>,
    ) -> Result<Page<ImpactComputer>> {
        let order = ListOrder::new("impactComputers", "NAME", false);
        let all: Vec<ImpactComputer> = (0..self.impact.planned.len())
            .map(|index| ImpactComputer {
                impact: self.impact.clone(),
                index,
            })
            .collect();
        let pos = |c: &ImpactComputer| {
            let id = c.of().computer_id;
            let name = c.impact.computers.get(&id).map_or("", |c| c.name.as_str());
            Position {
                key: SortKey::text(name),
                id,
            }
        };
        Ok(connection::page_sorted(
            all,
            pos,
            &order,
            &PageArgs {
                first,
                after,
                ..Default::default()
            },
        )?)
    }

    /// Computers the change reaches whose detection of a software or task it alters is
    /// missing or older than `staleAfterDays`: not planned and not counted.
    async fn stale(&self) -> Vec<View<Computer>> {
        self.impact
            .stale
            .iter()
            .filter_map(|s| self.impact.computers.get(&s.computer_id).cloned())
            .map(View)
            .collect()
    }

    /// The stale computers, each with why.
    async fn stale_computers(&self) -> Vec<ImpactStaleComputer> {
        (0..self.impact.stale.len())
            .map(|index| ImpactStaleComputer {
                impact: self.impact.clone(),
                index,
            })
            .collect()
    }

    /// Deployments that would stop winning (the change shadows them), with on how many
    /// computers.
    async fn shadows(&self) -> Vec<ImpactShadow> {
        shadow_counts(&self.impact.planned, |c| c.shadowed.as_slice())
    }

    /// Deployments that would start winning (the change unshadows them), with on how many
    /// computers.
    async fn unshadows(&self) -> Vec<ImpactShadow> {
        shadow_counts(&self.impact.planned, |c| c.unshadowed.as_slice())
    }

    /// The age (days) beyond which a detection was taken as stale.
    async fn stale_after_days(&self) -> i32 {
        self.stale_after_days as i32
    }
}
