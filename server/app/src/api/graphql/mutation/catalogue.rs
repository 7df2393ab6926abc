//! Mutations: software, maintenance tasks and deployments.

use super::supply;
use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{DeploymentOrder, DesiredSoftwareState, Enforcement, TaskMode};
use crate::api::graphql::inputs::*;
use crate::api::graphql::parameters::{definitions, deployment_values};
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::error::ApiError;
use crate::permissions::Action;
use crate::services::removal::Removal;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;

#[derive(Default)]
pub struct CatalogueMutation;

#[Object]
impl CatalogueMutation {
    /// Stores an installer file sent as a GraphQL multipart request (the file streams to disk
    /// as it arrives; `POST /api/v1/files` does the same with the raw body). Name it in
    /// `SoftwareVersionInput.installer` by its `sha256`. Files no software names are removed
    /// an hour after their upload.
    async fn upload_installer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The installer (multipart request, GraphQL multipart request spec).")]
        file: async_graphql::Upload,
    ) -> Result<crate::api::graphql::types::InstallerFile> {
        let c = Ctx::new(ctx)?;
        crate::api::graphql::upload::may_upload(c.actor)?;
        let stored = ctx
            .data_opt::<crate::api::graphql::upload::UploadedFiles>()
            .and_then(|u| u.0.get(file.0))
            .ok_or_else(|| {
                ApiError::bad(
                    "file",
                    "send the file as a GraphQL multipart request (multipart/form-data)",
                )
            })?;
        Ok(crate::api::graphql::types::InstallerFile {
            sha256: stored.stored.sha256.clone(),
            size: stored.stored.size as i64,
            file_name: Some(stored.file_name.clone()),
        })
    }

    /// Adds a software to the catalogue.
    async fn create_software(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateSoftwareInput,
    ) -> Result<View<Software>> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id).await?;
        let config_task = match &input.configuration_task_id {
            Some(t) => Some(
                catalogue_ref::<MaintenanceTask>(&c, "configurationTaskId", t, owner)
                    .await?
                    .id,
            ),
            None => None,
        };
        let mut versions = versions(&input.versions)?;
        check_stored(&c.app.files, &mut versions).await?;
        let mut s = Software {
            id: crate::ids::fresh(),
            tenant_id: owner,
            name: name("name", &input.name)?,
            detection_script: input.detection_script.validate("detectionScript")?,
            versions,
            uninstall_script: input
                .uninstall_script
                .as_ref()
                .map(|s| s.validate("uninstallScript"))
                .transpose()?,
            configuration_task_id: config_task,
            created_at: c.app.clock.now(),
            versions_script: None,
            versions_cache_minutes: DEFAULT_VERSIONS_CACHE_MINUTES,
            install_script: None,
            upgrade_script: None,
            depends_on: vec![],
        };
        let depends_on = match &input.depends_on_ids {
            Some(ids) => Some(supply::depends_on(&c, ids, owner, s.id, &s.name).await?),
            None => None,
        };
        supply::SupplyChange {
            versions_script: supply::script_set(&input.versions_script, "versionsScript")?,
            versions_cache_minutes: supply::cache_minutes(input.versions_cache_minutes)?,
            install_script: supply::script_set(&input.install_script, "installScript")?,
            upgrade_script: supply::script_set(&input.upgrade_script, "upgradeScript")?,
            depends_on,
        }
        .apply(&mut s)?;
        c.save(&s).await?;
        Ok(View(s))
    }

    /// Changes a software.
    async fn update_software(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The software's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateSoftwareInput,
    ) -> Result<View<Software>> {
        let c = Ctx::new(ctx)?;
        let mut s: Software = c.load_for_write(parse_id("id", &id)?).await?;
        if let Some(n) = &input.name {
            s.name = name("name", n)?;
        }
        if let Some(d) = &input.detection_script {
            s.detection_script = d.validate("detectionScript")?;
        }
        if let Some(v) = &input.versions {
            let mut v = versions(v)?;
            check_stored(&c.app.files, &mut v).await?;
            s.versions = v;
        }
        if let Some(u) = &input.uninstall_script {
            s.uninstall_script = Some(u.validate("uninstallScript")?);
        }
        if let Some(t) = &input.configuration_task_id {
            s.configuration_task_id = if t.is_empty() {
                None
            } else {
                Some(
                    catalogue_ref::<MaintenanceTask>(&c, "configurationTaskId", t, s.tenant_id)
                        .await?
                        .id,
                )
            };
        }
        let depends_on = match &input.depends_on_ids {
            Some(ids) => Some(supply::depends_on(&c, ids, s.tenant_id, s.id, &s.name).await?),
            None => None,
        };
        supply::SupplyChange {
            versions_script: supply::script_change(&input.versions_script, "versionsScript")?,
            versions_cache_minutes: supply::cache_minutes(input.versions_cache_minutes)?,
            install_script: supply::script_change(&input.install_script, "installScript")?,
            upgrade_script: supply::script_change(&input.upgrade_script, "upgradeScript")?,
            depends_on,
        }
        .apply(&mut s)?;
        c.save(&s).await?;
        Ok(View(s))
    }

    /// Adds a maintenance task to the catalogue.
    async fn create_maintenance_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateMaintenanceTaskInput,
    ) -> Result<View<MaintenanceTask>> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id).await?;
        let t = MaintenanceTask {
            id: crate::ids::fresh(),
            tenant_id: owner,
            name: name("name", &input.name)?,
            test_script: input.test_script.validate("testScript")?,
            set_script: input
                .set_script
                .as_ref()
                .map(|s| s.validate("setScript"))
                .transpose()?,
            get_script: input
                .get_script
                .as_ref()
                .map(|s| s.validate("getScript"))
                .transpose()?,
            parameters: definitions(input.parameters.as_deref())?,
            created_at: c.app.clock.now(),
        };
        c.save(&t).await?;
        Ok(View(t))
    }

    /// Changes a maintenance task.
    async fn update_maintenance_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The maintenance task's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateMaintenanceTaskInput,
    ) -> Result<View<MaintenanceTask>> {
        let c = Ctx::new(ctx)?;
        let mut t: MaintenanceTask = c.load_for_write(parse_id("id", &id)?).await?;
        if let Some(n) = &input.name {
            t.name = name("name", n)?;
        }
        if let Some(s) = &input.test_script {
            t.test_script = s.validate("testScript")?;
        }
        if let Some(s) = &input.set_script {
            t.set_script = Some(s.validate("setScript")?);
        }
        if let Some(s) = &input.get_script {
            t.get_script = Some(s.validate("getScript")?);
        }
        if let Some(p) = &input.parameters {
            t.parameters = definitions(Some(p))?;
        }
        c.save(&t).await?;
        Ok(View(t))
    }

    /// Says what a target should have: a software in a desired state, or a task.
    async fn create_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateDeploymentInput,
    ) -> Result<View<Deployment>> {
        let c = Ctx::new(ctx)?;
        let d = new_deployment(&c, &input).await?;
        c.save(&d).await?;
        Ok(View(d))
    }

    /// Changes a deployment.
    async fn update_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateDeploymentInput,
    ) -> Result<View<Deployment>> {
        let c = Ctx::new(ctx)?;
        let d = changed_deployment(&c, &id, &input).await?;
        c.save(&d).await?;
        Ok(View(d))
    }

    /// Deletes software and its deployments. Refused (`CONFLICT`, naming it) while other
    /// software depends on it or an unfinished session installs it.
    async fn delete_software(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let sw: Software = c.load_for_write(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageCatalogue, sw.tenant_id)?;
        let r = Removal::software(&c.app.store, &sw).await?;
        r.apply(&c.app.store, |_| Ok(())).await?;
        Ok(true)
    }

    /// Deletes a maintenance task and its deployments. Refused (`CONFLICT`, naming it) while
    /// software uses it as its configuration task or an unfinished session runs it.
    async fn delete_maintenance_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let t: MaintenanceTask = c.load_for_write(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageCatalogue, t.tenant_id)?;
        let r = Removal::task(&c.app.store, &t).await?;
        r.apply(&c.app.store, |_| Ok(())).await?;
        Ok(true)
    }

    /// Removes a deployment; running sessions keep their plan.
    async fn delete_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let d = deployment_to_delete(&c, &id).await?;
        c.app
            .store
            .write(|tx| {
                tx.delete::<Deployment, ApiError>(d.id.as_bytes())
                    .map(|_| ())
            })
            .await?;
        c.app.store.flush().await?;
        Ok(true)
    }
}

// What `createDeployment`, `updateDeployment` and `deleteDeployment` would write, checked as
// they check it (and by the same rules who may): `previewDeploymentChange` previews exactly it.

/// The deployment `createDeployment` would store for `input`.
pub(in crate::api::graphql) async fn new_deployment(
    c: &Ctx<'_>,
    input: &CreateDeploymentInput,
) -> ApiResult<Deployment> {
    let owner = c.owner_for_new(&input.tenant_id).await?;
    if owner.is_none() {
        c.actor
            .require(Action::ManageCrossTenantDeployments, None)?;
    }
    let software_id = match &input.software_id {
        Some(s) => Some(catalogue_ref::<Software>(c, "softwareId", s, owner).await?),
        None => None,
    };
    let task = match &input.maintenance_task_id {
        Some(t) => Some(catalogue_ref::<MaintenanceTask>(c, "maintenanceTaskId", t, owner).await?),
        None => None,
    };
    let given = input
        .parameters
        .as_ref()
        .map(|p| parameters(&p.0))
        .transpose()?
        .unwrap_or_default();
    let values = deployment_values(&c.app.secrets, task.as_ref(), given, None)?;
    let version = input
        .version
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from);
    if let (Some(sw), Some(v), Some(DesiredSoftwareState::InstalledVersion)) =
        (&software_id, &version, input.desired_state)
        && sw.version(v).is_none()
    {
        return Err(ApiError::bad(
            "version",
            format!("{} has no version {v}", sw.name),
        ));
    }
    let d = Deployment {
        id: crate::ids::fresh(),
        tenant_id: owner,
        target: target(c, &input.target, owner).await?,
        software_id: software_id.map(|s| s.id),
        desired_state: input.desired_state.map(Into::into),
        version,
        maintenance_task_id: task.map(|t| t.id),
        task_mode: input.task_mode.unwrap_or(TaskMode::Enforce).into(),
        parameters: values,
        enforcement: input.enforcement.unwrap_or(Enforcement::Required).into(),
        order: input.order.unwrap_or(DeploymentOrder::Unordered).into(),
        position: input.position.unwrap_or(0),
        enabled: input.enabled.unwrap_or(true),
        created_at: c.app.clock.now(),
    };
    validate_deployment(&d)?;
    Ok(d)
}

/// Deployment `id` as `updateDeployment` would store it with `input`.
pub(in crate::api::graphql) async fn changed_deployment(
    c: &Ctx<'_>,
    id: &ID,
    input: &UpdateDeploymentInput,
) -> ApiResult<Deployment> {
    let mut d = deployment_to_delete(c, id).await?;
    if let Some(t) = &input.target {
        d.target = target(c, t, d.tenant_id).await?;
    }
    if let Some(s) = input.desired_state {
        d.desired_state = Some(s.into());
    }
    if let Some(v) = &input.version {
        d.version = Some(v.trim().to_string()).filter(|v| !v.is_empty());
    }
    if let Some(m) = input.task_mode {
        d.task_mode = m.into();
    }
    if let Some(p) = &input.parameters {
        let task = match d.maintenance_task_id {
            Some(t) => c.app.store.get::<MaintenanceTask>(&t).await?,
            None => None,
        };
        d.parameters = deployment_values(
            &c.app.secrets,
            task.as_ref(),
            parameters(&p.0)?,
            Some(&d.parameters),
        )?;
    }
    if let Some(e) = input.enforcement {
        d.enforcement = e.into();
    }
    if let Some(o) = input.order {
        d.order = o.into();
    }
    if let Some(p) = input.position {
        d.position = p;
    }
    if let Some(e) = input.enabled {
        d.enabled = e;
    }
    validate_deployment(&d)?;
    Ok(d)
}

/// Deployment `id`, if the caller may change (or delete) it.
pub(in crate::api::graphql) async fn deployment_to_delete(
    c: &Ctx<'_>,
    id: &ID,
) -> ApiResult<Deployment> {
    let d: Deployment = c.load_for_write(parse_id("id", id)?).await?;
    if d.tenant_id.is_none() {
        c.actor
            .require(Action::ManageCrossTenantDeployments, None)?;
    }
    Ok(d)
}
