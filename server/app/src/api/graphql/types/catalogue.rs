//! GraphQL views: software, maintenance tasks, targets, deployments and schedules.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{
    DeploymentOrder, DesiredSoftwareState, Enforcement, ScriptLanguage, TargetKind, TaskMode,
};
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use upkeep_core::domain::*;

#[derive(SimpleObject)]
pub struct DeploymentResolution {
    pub software: Option<View<Software>>,
    pub maintenance_task: Option<View<MaintenanceTask>>,
    /// `null` when the winner is a deployment the caller may not read (an MSP-level one, for
    /// tenant roles).
    pub winner: Option<View<Deployment>>,
    /// Only those the caller may read.
    pub shadowed: Vec<View<Deployment>>,
    pub rule: String,
}

#[derive(SimpleObject)]
#[graphql(name = "Script")]
pub struct ScriptView {
    pub language: ScriptLanguage,
    pub body: String,
}

impl From<&Script> for ScriptView {
    fn from(s: &Script) -> Self {
        ScriptView {
            language: s.language.into(),
            body: s.body.clone(),
        }
    }
}

#[Object(name = "SoftwareVersion")]
impl View<SoftwareVersion> {
    async fn version(&self) -> &str {
        &self.version
    }
    async fn install_script(&self) -> ScriptView {
        (&self.install_script).into()
    }
    async fn upgrade_script(&self) -> Option<ScriptView> {
        self.upgrade_script.as_ref().map(Into::into)
    }
    /// The file the agent fetches and verifies before the install or upgrade script runs.
    async fn installer(&self) -> Option<InstallerView> {
        self.installer.as_ref().map(Into::into)
    }
}

/// An installer as a version names it: a file uploaded to the server (`url` null) or a
/// vendor's HTTPS download.
#[derive(SimpleObject)]
#[graphql(name = "Installer")]
pub struct InstallerView {
    pub sha256: String,
    pub size: Option<i64>,
    pub url: Option<String>,
    pub file_name: Option<String>,
}

impl From<&Installer> for InstallerView {
    fn from(i: &Installer) -> Self {
        InstallerView {
            sha256: i.sha256.clone(),
            size: i.size.map(|s| s as i64),
            url: i.url.clone(),
            file_name: i.file_name.clone(),
        }
    }
}

/// A file stored by `uploadInstaller`.
#[derive(SimpleObject)]
pub struct InstallerFile {
    pub sha256: String,
    pub size: i64,
    pub file_name: Option<String>,
}

#[Object(name = "Software")]
impl View<Software> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    async fn detection_script(&self) -> ScriptView {
        (&self.detection_script).into()
    }
    async fn versions(&self) -> Vec<View<SoftwareVersion>> {
        self.versions.iter().cloned().map(View).collect()
    }
    async fn latest_version(&self) -> Option<&str> {
        self.latest().map(|v| v.version.as_str())
    }
    async fn uninstall_script(&self) -> Option<ScriptView> {
        self.uninstall_script.as_ref().map(Into::into)
    }
    async fn configuration_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.configuration_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
}

#[Object(name = "MaintenanceTask")]
impl View<MaintenanceTask> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    async fn test_script(&self) -> ScriptView {
        (&self.test_script).into()
    }
    async fn set_script(&self) -> Option<ScriptView> {
        self.set_script.as_ref().map(Into::into)
    }
}

#[Object(name = "Target")]
impl View<Target> {
    async fn kind(&self) -> TargetKind {
        self.kind.into()
    }
    async fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

#[Object(name = "Deployment")]
impl View<Deployment> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.software_id {
            Some(s) => Ok(Ctx::new(ctx)?
                .find_catalogue::<Software>(s)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    async fn desired_state(&self) -> Option<DesiredSoftwareState> {
        self.desired_state.map(Into::into)
    }
    async fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.maintenance_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    async fn task_mode(&self) -> Option<TaskMode> {
        self.maintenance_task_id.map(|_| self.task_mode.into())
    }
    /// The script parameters. Their values often hold licence keys: only those who may manage
    /// deployments read them; for everyone else each value reads `••••••`.
    async fn parameters(
        &self,
        ctx: &Context<'_>,
    ) -> Result<async_graphql::Json<std::collections::BTreeMap<String, String>>> {
        let c = Ctx::new(ctx)?;
        let may = c
            .actor
            .require_role(crate::permissions::Action::ManageCatalogue)
            .is_ok();
        Ok(async_graphql::Json(if may {
            self.parameters.clone()
        } else {
            self.parameters
                .keys()
                .map(|k| (k.clone(), "••••••".to_string()))
                .collect()
        }))
    }
    async fn enforcement(&self) -> Enforcement {
        self.enforcement.into()
    }
    async fn order(&self) -> DeploymentOrder {
        self.order.into()
    }
    async fn position(&self) -> i32 {
        self.position
    }
    async fn enabled(&self) -> bool {
        self.enabled
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "Schedule")]
impl View<Schedule> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    async fn cron(&self) -> &str {
        self.cron.text()
    }
    /// The schedule's zone; null for a cross-tenant schedule that uses each tenant's own.
    async fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_ref().map(|z| z.text())
    }
    async fn detection_lead_minutes(&self) -> u32 {
        self.detection_lead_minutes
    }
    async fn window_minutes(&self) -> u32 {
        self.window_minutes
    }
    async fn options(&self) -> MaintenanceOptionsView {
        (&self.options).into()
    }
    async fn enabled(&self) -> bool {
        self.enabled
    }
    /// Checks run before this schedule's sessions change anything (after the server's and
    /// the tenant's).
    async fn preflight_scripts(&self) -> Vec<ScriptView> {
        self.preflight_scripts
            .iter()
            .map(ScriptView::from)
            .collect()
    }
    async fn detection_only(&self) -> bool {
        self.detection_only
    }
    async fn last_run_at(&self) -> Option<DateTime<Utc>> {
        self.last_run_at
    }
    /// The next occurrences strictly after `after` (default: now), enabled or not. For a
    /// cross-tenant schedule without its own zone, `tenantId` picks whose zone (default UTC).
    #[graphql(complexity = "1 + count.clamp(0, 1000) as usize")]
    async fn next_runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5)] count: i32,
        after: Option<DateTime<Utc>>,
        tenant_id: Option<ID>,
    ) -> Result<Vec<DateTime<Utc>>> {
        let c = Ctx::new(ctx)?;
        if !(0..=1000).contains(&count) {
            return Err(crate::error::ApiError::bad("count", "must be between 0 and 1000").into());
        }
        let tenant = match tenant_id {
            Some(t) => Some(
                c.load::<Tenant>(crate::api::graphql::parse_id("tenantId", &t)?)
                    .await?,
            ),
            None => None,
        };
        let tz = crate::services::scheduler::zone_for(self, tenant.as_ref())?;
        let cron = self
            .cron
            .get()
            .map_err(|e| crate::error::ApiError::internal(e))?;
        Ok(cron.upcoming(
            tz,
            after.unwrap_or_else(|| c.app.clock.now()),
            count as usize,
        ))
    }
}
