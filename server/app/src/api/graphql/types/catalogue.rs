//! GraphQL views: software, maintenance tasks, targets, deployments and schedules.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{
    DeploymentOrder, DesiredSoftwareState, Enforcement, ScriptLanguage, TargetKind, TaskMode,
};
use crate::api::graphql::scalars::DateTime;
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use upkeep_core::domain::*;

/// Why one software or task applies to a computer: the deployment that wins and those it shadows.
#[derive(SimpleObject)]
pub struct DeploymentResolution {
    /// The software, when the subject is one.
    pub software: Option<View<Software>>,
    /// The maintenance task, when the subject is one.
    pub maintenance_task: Option<View<MaintenanceTask>>,
    /// `null` when the winner is a deployment the caller may not read (an MSP-level one, for
    /// tenant roles).
    pub winner: Option<View<Deployment>>,
    /// Only those the caller may read.
    pub shadowed: Vec<View<Deployment>>,
    /// The rule that chose the winner, in words (e.g. `COMPUTER beats TAG`).
    pub rule: String,
}

/// A script an agent runs.
#[derive(SimpleObject)]
#[graphql(name = "Script")]
pub struct ScriptView {
    /// What runs it.
    pub language: ScriptLanguage,
    /// The script's text.
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

/// A version of a software, with how to install it.
#[Object(name = "SoftwareVersion")]
impl View<SoftwareVersion> {
    /// The version (compared numerically field by field).
    async fn version(&self) -> &str {
        &self.version
    }
    /// Installs this version.
    async fn install_script(&self) -> ScriptView {
        (&self.install_script).into()
    }
    /// Upgrades to this version; `null`: the install script does it.
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
    /// The file's SHA-256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: Option<i64>,
    /// Where agents fetch it: an uploaded file's server path, or a vendor's `https://` URL.
    pub url: Option<String>,
    /// The file name scripts see (`UPKEEP_INSTALLER_FILE`).
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
    /// The file's SHA-256 (hex): use it in `InstallerInput`.
    pub sha256: String,
    /// Its size in bytes.
    pub size: i64,
    /// The name it was uploaded with.
    pub file_name: Option<String>,
}

/// A version a versions script printed.
#[derive(SimpleObject)]
pub struct DiscoveredVersion {
    /// The version.
    pub version: String,
    /// Where its installer is downloaded from (`https://`).
    pub url: Option<String>,
    /// The installer's SHA-256 (hex).
    pub sha256: Option<String>,
    /// Bytes (a JSON number: downloads may exceed 2 GiB).
    pub size: Option<f64>,
    /// When it was released, as the script printed it.
    pub released_at: Option<String>,
}

impl From<&upkeep_core::versions::Discovered> for DiscoveredVersion {
    fn from(d: &upkeep_core::versions::Discovered) -> Self {
        DiscoveredVersion {
            version: d.version.clone(),
            url: d.url.clone(),
            sha256: d.sha256.clone(),
            // Exact up to 2^53 bytes.
            #[allow(clippy::cast_precision_loss)]
            size: d.size.map(|s| s as f64),
            released_at: d.released_at.clone(),
        }
    }
}

/// A software Upkeep can detect, install, upgrade and uninstall.
#[Object(name = "Software")]
impl View<Software> {
    /// The software's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// Its tenant; `null` for a cross-tenant software.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// Prints the installed version (nothing when not installed).
    async fn detection_script(&self) -> ScriptView {
        (&self.detection_script).into()
    }
    /// The versions it offers (a versions script's answer replaces them for a session).
    async fn versions(&self) -> Vec<View<SoftwareVersion>> {
        self.versions.iter().cloned().map(View).collect()
    }
    /// The newest version: of those the versions script printed last (on a computer of the
    /// tenant: see `discoveredVersions`) when it has answered, else of the static ones.
    async fn latest_version(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "The tenant whose versions-script answer to read (default: the caller's, or the software's)."
        )]
        tenant_id: Option<ID>,
    ) -> Result<Option<String>> {
        if let Some(c) = self.versions_cache(ctx, tenant_id).await? {
            return Ok(upkeep_core::versions::newest(&c.versions).map(String::from));
        }
        Ok(self.latest().map(|v| v.version.clone()))
    }
    /// Removes it.
    async fn uninstall_script(&self) -> Option<ScriptView> {
        self.uninstall_script.as_ref().map(Into::into)
    }
    /// A task run after each install or upgrade.
    async fn configuration_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.configuration_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    /// Prints the available versions as JSON lines; see `CreateSoftwareInput.versionsScript`.
    async fn versions_script(&self) -> Option<ScriptView> {
        self.versions_script.as_ref().map(Into::into)
    }
    /// How long a versions script's answer is reused.
    async fn versions_cache_minutes(&self) -> i32 {
        i32::try_from(self.versions_cache_minutes).unwrap_or(i32::MAX)
    }
    /// Installs a version the versions script printed (`UPKEEP_VERSION`).
    async fn install_script(&self) -> Option<ScriptView> {
        self.install_script.as_ref().map(Into::into)
    }
    /// Upgrades any version (`UPKEEP_VERSION` names the target) when a version has no script of its
    /// own.
    async fn upgrade_script(&self) -> Option<ScriptView> {
        self.upgrade_script.as_ref().map(Into::into)
    }
    /// Prerequisites: a deployment of this software brings them into the plan first ("needed
    /// by …"). Those the caller may not read are left out.
    async fn depends_on(&self, ctx: &Context<'_>) -> Result<Vec<View<Software>>> {
        let c = Ctx::new(ctx)?;
        let mut out = Vec::with_capacity(self.depends_on.len());
        for d in &self.depends_on {
            if let Some(s) = c.find_catalogue::<Software>(*d).await? {
                out.push(View(s));
            }
        }
        Ok(out)
    }
    /// What the versions script printed last on a computer of the tenant (empty before it ran,
    /// or without one). Answers are kept per tenant: the software's own tenant, else
    /// `tenantId`, else the caller's tenant; an MSP role without `tenantId` reads none for
    /// cross-tenant software.
    async fn discovered_versions(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "The tenant whose versions-script answer to read (default: the caller's, or the software's)."
        )]
        tenant_id: Option<ID>,
    ) -> Result<Vec<DiscoveredVersion>> {
        Ok(self
            .versions_cache(ctx, tenant_id)
            .await?
            .map(|c| c.versions.iter().map(Into::into).collect())
            .unwrap_or_default())
    }
    /// When the versions script last answered (for the tenant as in `discoveredVersions`).
    async fn versions_fetched_at(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "The tenant whose versions-script answer to read (default: the caller's, or the software's)."
        )]
        tenant_id: Option<ID>,
    ) -> Result<Option<DateTime>> {
        Ok(self
            .versions_cache(ctx, tenant_id)
            .await?
            .map(|c| c.fetched_at.into()))
    }
}

impl View<Software> {
    /// The tenant's cached versions-script answer; another tenant's id reads as none.
    async fn versions_cache(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> Result<Option<upkeep_core::versions::VersionsCache>> {
        if self.versions_script.is_none() {
            return Ok(None);
        }
        let c = Ctx::new(ctx)?;
        let asked = match &tenant_id {
            Some(t) => Some(crate::api::graphql::parse_id("tenantId", t)?),
            None => None,
        };
        let tenant = match (self.tenant_id, asked, c.actor.scope()) {
            (Some(own), _, _) => own,
            (None, Some(t), scope) if scope.contains(Some(t)) => t,
            (None, None, crate::auth::TenantScope::Tenant(t)) => t,
            _ => return Ok(None),
        };
        Ok(c.app
            .store
            .get_by_key::<upkeep_core::versions::VersionsCache>(
                &upkeep_store::records::versions_key(tenant, self.id),
            )
            .await?)
    }
}

/// A maintenance task: a test script, and a set script that makes the test pass.
#[Object(name = "MaintenanceTask")]
impl View<MaintenanceTask> {
    /// The task's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// Its tenant; `null` for a cross-tenant task.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// Exit 0: compliant; exit 1: not compliant; anything else: the test failed.
    async fn test_script(&self) -> ScriptView {
        (&self.test_script).into()
    }
    /// Run when the test says not compliant; `null` for a test-only task.
    async fn set_script(&self) -> Option<ScriptView> {
        self.set_script.as_ref().map(Into::into)
    }
    /// Prints the current value (first line of stdout); it runs with the test during
    /// detection and its value shows on the action (`currentValue`).
    async fn get_script(&self) -> Option<ScriptView> {
        self.get_script.as_ref().map(Into::into)
    }
    /// The typed parameters deployments give (as `UPKEEP_PARAM_<NAME>`); empty: free-form.
    async fn parameters(&self) -> Vec<View<upkeep_core::params::ParameterDefinition>> {
        self.parameters.iter().cloned().map(View).collect()
    }
}

/// Which computers a deployment or schedule applies to.
#[Object(name = "Target")]
impl View<Target> {
    /// What kind of target.
    async fn kind(&self) -> TargetKind {
        self.kind.into()
    }
    /// The computer's or person's id, or the tag; `null` for `ALL_COMPUTERS`.
    async fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

/// What one target should have: a software in a desired state, or a maintenance task.
#[Object(name = "Deployment")]
impl View<Deployment> {
    /// The deployment's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its tenant; `null` for a cross-tenant deployment.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// Which computers it applies to.
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    /// The software it keeps in `desiredState`, if it is a software deployment.
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.software_id {
            Some(s) => Ok(Ctx::new(ctx)?
                .find_catalogue::<Software>(s)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    /// The state the software should be in.
    async fn desired_state(&self) -> Option<DesiredSoftwareState> {
        self.desired_state.map(Into::into)
    }
    /// The version for `INSTALLED_VERSION` and `INSTALLED_AT_LEAST`.
    async fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// The maintenance task it runs, if it is a task deployment.
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.maintenance_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    /// How the task runs.
    async fn task_mode(&self) -> Option<TaskMode> {
        self.maintenance_task_id.map(|_| self.task_mode.into())
    }
    /// The script parameters. Their values often hold licence keys: only those who may manage
    /// deployments read them; for everyone else each value reads `••••••`. SECRET values are
    /// never returned: they read `********` for everyone (sent back so on an update, or left
    /// out, they keep their value).
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
            upkeep_core::params::shown(&self.parameters)
        } else {
            self.parameters
                .keys()
                .map(|k| (k.clone(), "••••••".to_string()))
                .collect()
        }))
    }
    /// When it applies.
    async fn enforcement(&self) -> Enforcement {
        self.enforcement.into()
    }
    /// Where in a session it runs.
    async fn order(&self) -> DeploymentOrder {
        self.order.into()
    }
    /// Its place within `BEGINNING` or `END` (lower runs first).
    async fn position(&self) -> i32 {
        self.position
    }
    /// False: kept, but not applied.
    async fn enabled(&self) -> bool {
        self.enabled
    }
    /// When it was made.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
}

/// Runs maintenance sessions on a target at each occurrence of a cron expression.
#[Object(name = "Schedule")]
impl View<Schedule> {
    /// The schedule's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// Its tenant; `null` for a cross-tenant schedule.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// Which computers get a session.
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    /// The five-field cron expression, read in `timeZone`.
    async fn cron(&self) -> &str {
        self.cron.text()
    }
    /// The schedule's zone; null for a cross-tenant schedule that uses each tenant's own.
    async fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_ref().map(|z| z.text())
    }
    /// Detection and the before-mail happen this many minutes before each occurrence.
    async fn detection_lead_minutes(&self) -> u32 {
        self.detection_lead_minutes
    }
    /// Execution may start only this many minutes after an occurrence.
    async fn window_minutes(&self) -> u32 {
        self.window_minutes
    }
    /// The sessions' options.
    async fn options(&self) -> MaintenanceOptionsView {
        (&self.options).into()
    }
    /// False: kept, but not run.
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
    /// True: sessions detect and report only.
    async fn detection_only(&self) -> bool {
        self.detection_only
    }
    /// The last occurrence that started sessions.
    async fn last_run_at(&self) -> Option<DateTime> {
        self.last_run_at.map(DateTime)
    }
    /// The next occurrences strictly after `after` (default: now), enabled or not. For a
    /// cross-tenant schedule without its own zone, `tenantId` picks whose zone (default UTC).
    #[graphql(complexity = "1 + count.clamp(0, 1000) as usize")]
    async fn next_runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5, desc = "How many occurrences (at most 1000).")] count: i32,
        #[graphql(desc = "Occurrences strictly after this instant (default: now).")] after: Option<
            DateTime,
        >,
        #[graphql(desc = "For a cross-tenant schedule: read it in this tenant's time zone.")]
        tenant_id: Option<ID>,
    ) -> Result<Vec<DateTime>> {
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
        Ok(cron
            .upcoming(
                tz,
                after.map_or_else(|| c.app.clock.now(), Into::into),
                count as usize,
            )
            .into_iter()
            .map(DateTime)
            .collect())
    }
}
