//! Mutations. Each changes one thing through the store in a transaction, flushes, and returns
//! the changed object.

use super::ClientAddr;
use super::ctx::Ctx;
use super::enums::{
    DeploymentOrder, DesiredSoftwareState, Enforcement, SessionTrigger, TargetKind, TaskMode,
};
use super::inputs::*;
use super::parse_id;
use super::types::EnrollmentKeyView;
use super::types::View;
use crate::auth::{self, TenantScope};
use crate::error::{ApiError, ApiResult};
use crate::logsafe::log_value;
use crate::permissions::Action;
use crate::services::runtime::{Busy, StartRequest};
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::session::*;
use upkeep_core::types::Stored;
use upkeep_core::webhook::Webhook;
use upkeep_store::records::*;
use upkeep_store::{IndexKey, Record, TxError};

pub struct Mutation;

#[derive(SimpleObject)]
pub struct LoginResult {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub user: View<User>,
}

/// A new TOTP secret, to be put into an authenticator app (`otpauthUrl` as a QR code).
#[derive(SimpleObject)]
pub struct TotpEnrollment {
    /// Base32 (RFC 4648, no padding).
    pub secret: String,
    /// `otpauth://totp/Upkeep:<email>?secret=…&issuer=Upkeep`
    pub otpauth_url: String,
}

#[derive(SimpleObject)]
pub struct CreatedApiKey {
    pub api_key: View<ApiKey>,
    /// `upk_…`: shown only here; Upkeep keeps only its hash.
    pub secret: String,
}

#[derive(SimpleObject)]
pub struct CreatedWebhook {
    pub webhook: View<Webhook>,
    /// The HMAC key for `Upkeep-Signature`: shown only here.
    pub secret: String,
}

impl<'a> Ctx<'a> {
    /// Writes one record (and nothing else) durably.
    async fn save<T: Record>(&self, r: &T) -> ApiResult<()> {
        self.app
            .store
            .write(|tx| tx.put(r).map_err(|e: TxError<ApiError>| e))?;
        self.app.store.flush().await?;
        Ok(())
    }

    /// The tenant a new record belongs to: the given one (checked), or for tenant roles their
    /// own; `None` (cross-tenant) only for MSP roles.
    fn owner_for_new(&self, given: &Option<ID>) -> ApiResult<Option<Id>> {
        let t = match (opt_id("tenantId", given)?, self.scope) {
            (Some(t), _) => Some(t),
            (None, TenantScope::Tenant(own)) => Some(own),
            (None, TenantScope::All | TenantScope::Nothing) => None,
        };
        self.tenant_for_write(t)?;
        Ok(t)
    }
}

fn target(c: &Ctx<'_>, t: &TargetInput, tenant: Option<Id>) -> ApiResult<Target> {
    let value = t
        .value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from);
    match t.kind {
        TargetKind::AllComputers => Ok(Target {
            kind: t.kind.into(),
            value: None,
        }),
        TargetKind::Tag => {
            let v =
                value.ok_or_else(|| ApiError::bad("target.value", "a TAG target needs the tag"))?;
            Ok(Target {
                kind: t.kind.into(),
                value: Some(name("target.value", &v)?),
            })
        }
        TargetKind::Computer => Ok(Target {
            kind: t.kind.into(),
            value: Some(target_ref::<Computer>(c, value, tenant)?),
        }),
        TargetKind::Person => Ok(Target {
            kind: t.kind.into(),
            value: Some(target_ref::<Person>(c, value, tenant)?),
        }),
    }
}

/// The id of the computer or person a target names: it must exist, be visible, and belong to
/// the deployment's or schedule's tenant.
fn target_ref<T: super::ctx::Owned>(
    c: &Ctx<'_>,
    value: Option<String>,
    tenant: Option<Id>,
) -> ApiResult<String> {
    let v = value.ok_or_else(|| {
        ApiError::bad(
            "target.value",
            format!("this target needs the {} id", T::NAME),
        )
    })?;
    let id = v
        .parse::<Id>()
        .map_err(|_| ApiError::bad("target.value", format!("is not a {} id", T::NAME)))?;
    let r: T = c
        .find(id)?
        .ok_or_else(|| ApiError::bad("target.value", format!("{} {id} not found", T::NAME)))?;
    if tenant.is_some() && r.owner() != tenant {
        return Err(ApiError::bad(
            "target.value",
            format!("the {} belongs to another tenant", T::NAME),
        ));
    }
    Ok(id.to_string())
}

/// A referenced catalogue entry the record's tenant may use.
fn catalogue_ref<T: super::ctx::Owned>(
    c: &Ctx<'_>,
    field: &str,
    id: &ID,
    owner: Option<Id>,
) -> ApiResult<T> {
    let id = parse_id(field, id)?;
    let r: T = c
        .find(id)?
        .ok_or_else(|| ApiError::bad(field, format!("{} {id} not found", T::NAME)))?;
    if r.owner().is_some() && r.owner() != owner {
        return Err(ApiError::bad(
            field,
            format!("{} {id} belongs to another tenant", T::NAME),
        ));
    }
    Ok(r)
}

fn validate_deployment(d: &Deployment) -> ApiResult<()> {
    match (d.software_id, d.maintenance_task_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "softwareId",
                "give either softwareId or maintenanceTaskId, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad(
                "softwareId",
                "give softwareId or maintenanceTaskId",
            ));
        }
        (Some(_), None) => {
            let Some(state) = d.desired_state else {
                return Err(ApiError::bad("desiredState", "is required with softwareId"));
            };
            let needs_version = matches!(
                state,
                upkeep_core::domain::DesiredSoftwareState::InstalledVersion
                    | upkeep_core::domain::DesiredSoftwareState::InstalledAtLeast
            );
            if needs_version && d.version.is_none() {
                return Err(ApiError::bad(
                    "version",
                    format!("is required with {state:?}")
                        .replace("InstalledVersion", "INSTALLED_VERSION")
                        .replace("InstalledAtLeast", "INSTALLED_AT_LEAST"),
                ));
            }
        }
        (None, Some(_)) => {
            if d.desired_state.is_some() {
                return Err(ApiError::bad(
                    "desiredState",
                    "applies to software, not to tasks",
                ));
            }
        }
    }
    Ok(())
}

#[Object]
impl Mutation {
    /// Signs in; the token goes in `Authorization: Bearer <token>`. Failed attempts are
    /// throttled per e-mail and per client address. A user with TOTP on also gives
    /// `totpCode`; without it, or with a wrong one, the error has `extensions.mfaRequired`.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        totp_code: Option<String>,
    ) -> Result<LoginResult> {
        let app = ctx.data::<std::sync::Arc<crate::services::App>>()?;
        // Refused before any work: no argon2 run, no store read, no throttle entry.
        if email.chars().count() > 320 {
            return Err(ApiError::bad("email", "must be at most 320 characters").into());
        }
        if password.len() > 1024 {
            return Err(ApiError::bad("password", "must be at most 1024 bytes").into());
        }
        let email_norm = email.trim().to_lowercase();
        let ip = ctx.data_opt::<ClientAddr>().map(|a| a.0.ip());
        let attempt = app.logins.reserve(&email_norm, ip).map_err(|wait| {
            ApiError::Unauthenticated(format!(
                "too many failed logins; try again in {wait} seconds"
            ))
        })?;
        let user: Option<User> = app
            .store
            .unique(&IndexKey::new(USER_EMAIL, email_norm.as_str()))?;
        let ok = match &user {
            Some(u) => auth::verify_password(&password, &u.password_hash).await,
            None => {
                auth::burn_password_time(&password).await;
                false
            }
        };
        // A disabled user is answered exactly like a wrong password.
        let failed = |user: Option<(Id, Option<Id>)>| {
            crate::audit::login(user, &email_norm, "loginFailed", ip, app.clock.now())
        };
        let named = user.as_ref().map(|u| (u.id, u.tenant_id));
        let Some(user) = user.filter(|u| ok && !u.disabled) else {
            // The attempt stays counted as a failure.
            tracing::info!(email = %log_value(&email_norm), "failed login");
            app.record_audit(failed(named)).await;
            return Err(ApiError::Unauthenticated("wrong e-mail or password".into()).into());
        };
        if user.totp_on()
            && let Err(e) = app.use_totp_code(user.id, totp_code.as_deref()).await
        {
            // Dropping the attempt leaves it counted as a failure.
            tracing::info!(email = %log_value(&email_norm), "failed login (second factor)");
            app.record_audit(failed(Some((user.id, user.tenant_id))))
                .await;
            return Err(e.into());
        }
        attempt.succeeded();
        let now = app.clock.now();
        app.record_audit(crate::audit::login(
            Some((user.id, user.tenant_id)),
            &email_norm,
            "login",
            ip,
            now,
        ))
        .await;
        let token = app.keys.issue_api_token(&user, now)?;
        Ok(LoginResult {
            token,
            expires_at: now + chrono::Duration::hours(auth::API_TOKEN_HOURS),
            user: View(user),
        })
    }

    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> Result<View<User>> {
        let c = Ctx::new(ctx)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        role_tenant(input.role.into(), tenant)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t)?;
        }
        c.actor.require(Action::ManageUsers, tenant)?;
        c.actor.require_delegation(input.role.into(), tenant)?;
        let email_addr = Stored::new(email_address("email", &input.email)?.to_lowercase());
        valid_password("password", &input.password)?;
        let user = User {
            id: crate::ids::fresh(),
            email: email_addr.clone(),
            password_hash: auth::hash_password(&input.password).await?,
            role: input.role.into(),
            tenant_id: tenant,
            created_at: c.app.clock.now(),
            disabled: false,
            token_generation: 0,
            totp: Default::default(),
        };
        c.app.create_user(user).await.map(View).map_err(Into::into)
    }

    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        input: CreateTenantInput,
    ) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::CreateTenants)?;
        let t = input.into_tenant(c.app.clock.now(), &c.app.config.mail_from_domains)?;
        c.save(&t).await?;
        Ok(View(t))
    }

    async fn update_tenant(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateTenantInput,
    ) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        let mut t: Tenant = c.load(parse_id("id", &id)?)?;
        c.actor.require(Action::ConfigureTenant, Some(t.id))?;
        input.apply(&mut t, &c.app.config.mail_from_domains)?;
        c.save(&t).await?;
        Ok(View(t))
    }

    async fn create_person(
        &self,
        ctx: &Context<'_>,
        input: CreatePersonInput,
    ) -> Result<View<Person>> {
        let c = Ctx::new(ctx)?;
        let tenant = parse_id("tenantId", &input.tenant_id)?;
        c.tenant_for_write(Some(tenant))?;
        let p = Person {
            id: crate::ids::fresh(),
            tenant_id: tenant,
            name: name("name", &input.name)?,
            email: email_address("email", &input.email)?.into(),
            usernames: input
                .usernames
                .as_deref()
                .map(usernames)
                .transpose()?
                .unwrap_or_default(),
            created_at: c.app.clock.now(),
        };
        c.save(&p).await?;
        Ok(View(p))
    }

    async fn update_person(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdatePersonInput,
    ) -> Result<View<Person>> {
        let c = Ctx::new(ctx)?;
        let mut p: Person = c.load_for_write(parse_id("id", &id)?)?;
        if let Some(n) = &input.name {
            p.name = name("name", n)?;
        }
        if let Some(e) = &input.email {
            p.email = email_address("email", e)?.into();
        }
        if let Some(u) = &input.usernames {
            p.usernames = usernames(u)?;
        }
        c.save(&p).await?;
        Ok(View(p))
    }

    /// Creates an enrollment key; its `key` secret is readable only in this answer.
    async fn create_enrollment_key(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        input: Option<CreateEnrollmentKeyInput>,
    ) -> Result<EnrollmentKeyView> {
        let c = Ctx::new(ctx)?;
        let tenant = parse_id("tenantId", &tenant_id)?;
        c.tenant_for_write(Some(tenant))?;
        let input = input.unwrap_or_default();
        let now = c.app.clock.now();
        if input.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::bad("input.expiresAt", "must be in the future").into());
        }
        if input.max_uses.is_some_and(|m| m < 1) {
            return Err(ApiError::bad("input.maxUses", "must be at least 1").into());
        }
        let person = match &input.primary_person_id {
            Some(p) => {
                let p: Person = catalogue_ref(&c, "input.primaryPersonId", p, Some(tenant))?;
                Some(p.id)
            }
            None => None,
        };
        let secret = auth::new_secret("uek_");
        let key = EnrollmentKey {
            id: crate::ids::fresh(),
            tenant_id: tenant,
            key_hash: auth::secret_hash(&secret),
            label: input
                .label
                .as_deref()
                .map(|l| name("input.label", l))
                .transpose()?,
            created_at: now,
            expires_at: input.expires_at,
            max_uses: input.max_uses.map(|m| m as u32),
            uses: 0,
            revoked: false,
            tags: input
                .tags
                .as_deref()
                .map(tags)
                .transpose()?
                .unwrap_or_default(),
            primary_person_id: person,
        };
        let hash_idx = IndexKey::new(ENROLLMENT_KEY_HASH, &key.key_hash);
        c.app.store.write(|tx| {
            tx.claim_unique(&hash_idx, key.id.as_bytes())?;
            tx.put(&key)?;
            Ok::<_, TxError<ApiError>>(())
        })?;
        c.app.store.flush().await?;
        Ok(EnrollmentKeyView {
            key,
            secret: Some(secret),
        })
    }

    async fn revoke_enrollment_key(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let mut k: EnrollmentKey = c.load_for_write(parse_id("id", &id)?)?;
        k.revoked = true;
        c.save(&k).await?;
        Ok(true)
    }

    async fn update_computer(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateComputerInput,
    ) -> Result<View<Computer>> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let current: Computer = c.load_for_write(id)?;
        let person = match &input.primary_person_id {
            Some(p) if p.is_empty() => Some(None),
            Some(p) => {
                let p: Person =
                    catalogue_ref(&c, "input.primaryPersonId", p, Some(current.tenant_id))?;
                Some(Some(p.id))
            }
            None => None,
        };
        let new_name = input
            .name
            .as_deref()
            .map(|n| name("input.name", n))
            .transpose()?;
        let new_tags = input.tags.as_deref().map(tags).transpose()?;
        let comp = c.app.store.write(|tx| {
            let mut x: Computer = tx
                .get(&id)?
                .ok_or_else(|| TxError::Abort(ApiError::not_found("computer", id)))?;
            if let Some(n) = &new_name {
                x.name = n.clone();
            }
            if let Some(t) = &new_tags {
                x.tags = t.clone();
            }
            if let Some(p) = person {
                x.primary_person_id = p;
            }
            if let Some(e) = input.excluded_from_maintenance {
                x.excluded_from_maintenance = e;
            }
            tx.put(&x)?;
            Ok(x)
        })?;
        c.app.store.flush().await?;
        Ok(View(comp))
    }

    /// Revokes a computer's agent token: its agent is refused until it enrolls again.
    async fn revoke_computer_agent(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let comp: Computer = c.load_for_write(parse_id("id", &id)?)?;
        c.app.revoke_agent(comp.id).await?;
        Ok(true)
    }

    async fn create_software(
        &self,
        ctx: &Context<'_>,
        input: CreateSoftwareInput,
    ) -> Result<View<Software>> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id)?;
        let config_task = match &input.configuration_task_id {
            Some(t) => {
                Some(catalogue_ref::<MaintenanceTask>(&c, "configurationTaskId", t, owner)?.id)
            }
            None => None,
        };
        let versions = versions(&input.versions)?;
        if versions.is_empty() {
            return Err(ApiError::bad(
                "versions",
                "give at least one version with its install script",
            )
            .into());
        }
        let s = Software {
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
        };
        c.save(&s).await?;
        Ok(View(s))
    }

    async fn update_software(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateSoftwareInput,
    ) -> Result<View<Software>> {
        let c = Ctx::new(ctx)?;
        let mut s: Software = c.load_for_write(parse_id("id", &id)?)?;
        if let Some(n) = &input.name {
            s.name = name("name", n)?;
        }
        if let Some(d) = &input.detection_script {
            s.detection_script = d.validate("detectionScript")?;
        }
        if let Some(v) = &input.versions {
            let v = versions(v)?;
            if v.is_empty() {
                return Err(ApiError::bad("versions", "give at least one version").into());
            }
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
                    catalogue_ref::<MaintenanceTask>(&c, "configurationTaskId", t, s.tenant_id)?.id,
                )
            };
        }
        c.save(&s).await?;
        Ok(View(s))
    }

    async fn create_maintenance_task(
        &self,
        ctx: &Context<'_>,
        input: CreateMaintenanceTaskInput,
    ) -> Result<View<MaintenanceTask>> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id)?;
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
            created_at: c.app.clock.now(),
        };
        c.save(&t).await?;
        Ok(View(t))
    }

    async fn create_deployment(
        &self,
        ctx: &Context<'_>,
        input: CreateDeploymentInput,
    ) -> Result<View<Deployment>> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id)?;
        if owner.is_none() {
            c.actor
                .require(Action::ManageCrossTenantDeployments, None)?;
        }
        let software_id = match &input.software_id {
            Some(s) => Some(catalogue_ref::<Software>(&c, "softwareId", s, owner)?),
            None => None,
        };
        let task_id = match &input.maintenance_task_id {
            Some(t) => {
                Some(catalogue_ref::<MaintenanceTask>(&c, "maintenanceTaskId", t, owner)?.id)
            }
            None => None,
        };
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
            return Err(ApiError::bad("version", format!("{} has no version {v}", sw.name)).into());
        }
        let d = Deployment {
            id: crate::ids::fresh(),
            tenant_id: owner,
            target: target(&c, &input.target, owner)?,
            software_id: software_id.map(|s| s.id),
            desired_state: input.desired_state.map(Into::into),
            version,
            maintenance_task_id: task_id,
            task_mode: input.task_mode.unwrap_or(TaskMode::Enforce).into(),
            parameters: input
                .parameters
                .as_ref()
                .map(|p| parameters(&p.0))
                .transpose()?
                .unwrap_or_default(),
            enforcement: input.enforcement.unwrap_or(Enforcement::Required).into(),
            order: input.order.unwrap_or(DeploymentOrder::Unordered).into(),
            position: input.position.unwrap_or(0),
            enabled: input.enabled.unwrap_or(true),
            created_at: c.app.clock.now(),
        };
        validate_deployment(&d)?;
        c.save(&d).await?;
        Ok(View(d))
    }

    async fn update_deployment(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateDeploymentInput,
    ) -> Result<View<Deployment>> {
        let c = Ctx::new(ctx)?;
        let mut d: Deployment = c.load_for_write(parse_id("id", &id)?)?;
        if d.tenant_id.is_none() {
            c.actor
                .require(Action::ManageCrossTenantDeployments, None)?;
        }
        if let Some(t) = &input.target {
            d.target = target(&c, t, d.tenant_id)?;
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
            d.parameters = parameters(&p.0)?;
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
        c.save(&d).await?;
        Ok(View(d))
    }

    async fn delete_deployment(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let d: Deployment = c.load_for_write(parse_id("id", &id)?)?;
        if d.tenant_id.is_none() {
            c.actor
                .require(Action::ManageCrossTenantDeployments, None)?;
        }
        c.app.store.write(|tx| {
            tx.delete::<Deployment, ApiError>(d.id.as_bytes())
                .map(|_| ())
        })?;
        c.app.store.flush().await?;
        Ok(true)
    }

    async fn create_schedule(
        &self,
        ctx: &Context<'_>,
        input: CreateScheduleInput,
    ) -> Result<View<Schedule>> {
        let c = Ctx::new(ctx)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t)?;
        }
        c.actor.require(Action::ManageSchedules, tenant)?;
        let time_zone = match (&input.time_zone, tenant) {
            (Some(z), _) => Some(time_zone("timeZone", z)?),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ApiError::bad(
                    "timeZone",
                    "is required for a tenant's schedule (an IANA name such as Europe/Berlin)",
                )
                .into());
            }
        };
        let s = Schedule {
            id: crate::ids::fresh(),
            tenant_id: tenant,
            name: name("name", &input.name)?,
            target: target(&c, &input.target, tenant)?,
            cron: cron("cron", &input.cron)?,
            time_zone,
            detection_lead_minutes: minutes(
                "detectionLeadMinutes",
                input.detection_lead_minutes.unwrap_or(0),
                0,
                7 * 24 * 60,
            )?,
            window_minutes: minutes(
                "windowMinutes",
                input.window_minutes.unwrap_or(120),
                1,
                7 * 24 * 60,
            )?,
            options: input.options.unwrap_or_default().validate()?,
            enabled: input.enabled.unwrap_or(true),
            detection_only: input.detection_only.unwrap_or(false),
            last_run_at: None,
            next_fire: Default::default(),
            timing_since: Some(c.app.clock.now()),
            created_at: c.app.clock.now(),
        };
        c.save(&s).await?;
        Ok(View(s))
    }

    async fn update_schedule(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateScheduleInput,
    ) -> Result<View<Schedule>> {
        let c = Ctx::new(ctx)?;
        let mut s: Schedule = c.load(parse_id("id", &id)?)?;
        c.actor.require(Action::ManageSchedules, s.tenant_id)?;
        let mut timing_changed = false;
        if let Some(n) = &input.name {
            s.name = name("name", n)?;
        }
        if let Some(t) = &input.target {
            s.target = target(&c, t, s.tenant_id)?;
        }
        if let Some(x) = &input.cron {
            s.cron = cron("cron", x)?;
            timing_changed = true;
        }
        if let Some(z) = &input.time_zone {
            s.time_zone = if z.is_empty() && s.tenant_id.is_none() {
                None
            } else {
                Some(time_zone("timeZone", z)?)
            };
            timing_changed = true;
        }
        if let Some(m) = input.detection_lead_minutes {
            s.detection_lead_minutes = minutes("detectionLeadMinutes", m, 0, 7 * 24 * 60)?;
            timing_changed = true;
        }
        if let Some(m) = input.window_minutes {
            s.window_minutes = minutes("windowMinutes", m, 1, 7 * 24 * 60)?;
        }
        if let Some(o) = &input.options {
            s.options = o.apply_to(s.options.clone())?;
        }
        if let Some(e) = input.enabled {
            if e && !s.enabled {
                timing_changed = true;
            }
            s.enabled = e;
        }
        if let Some(d) = input.detection_only {
            s.detection_only = d;
        }
        if timing_changed {
            s.next_fire.clear();
            s.timing_since = Some(c.app.clock.now());
        }
        c.save(&s).await?;
        Ok(View(s))
    }

    async fn delete_schedule(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let s: Schedule = c.load(parse_id("id", &id)?)?;
        c.actor.require(Action::ManageSchedules, s.tenant_id)?;
        c.app
            .store
            .write(|tx| tx.delete::<Schedule, ApiError>(s.id.as_bytes()).map(|_| ()))?;
        c.app.store.flush().await?;
        Ok(true)
    }

    /// Starts the schedule's sessions now, whether or not it is enabled (trigger `SCHEDULE`).
    async fn run_schedule_now(&self, ctx: &Context<'_>, id: ID) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        let s: Schedule = c.load(parse_id("id", &id)?)?;
        c.actor.require_role(Action::RunSessions)?;
        // A tenant's own schedule names its tenant: an excluded one is refused, as a manual
        // start would be. A cross-tenant schedule runs in the tenants that are not excluded.
        let tenants: Vec<Tenant> = match s.tenant_id {
            Some(t) => {
                let t: Tenant = c.load(t)?;
                if let Some(why) = exclusion(&t, None) {
                    return Err(ApiError::bad("id", why.to_string()).into());
                }
                vec![t]
            }
            None => c
                .app
                .store
                .scan::<Tenant>(None)
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::from)?
                .into_iter()
                .filter(|t| exclusion(t, None).is_none())
                .collect(),
        };
        let mut out = Vec::new();
        let now = c.app.clock.now();
        for t in tenants {
            out.extend(
                c.app
                    .fire_schedule(&s, &t, now, &format!("{} (run now)", c.actor.display()))
                    .await?,
            );
        }
        Ok(out.into_iter().map(View).collect())
    }

    /// Starts one session per computer, in input order.
    async fn start_maintenance_session(
        &self,
        ctx: &Context<'_>,
        input: StartMaintenanceSessionInput,
    ) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        if input.computer_ids.is_empty() {
            return Err(ApiError::bad("computerIds", "name at least one computer").into());
        }
        if input.computer_ids.len() > 10_000 {
            return Err(ApiError::bad("computerIds", "at most 10000 computers per call").into());
        }
        let idem_key = match &input.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 200 => {
                return Err(ApiError::bad("idempotencyKey", "must be 1–200 characters").into());
            }
            Some(k) => Some(format!("{}\u{0}{k}", c.actor.user_id())),
            None => None,
        };
        let _idem_guard = match &idem_key {
            Some(k) => {
                let g = c.app.runtime.create_lock_for_idempotency().await;
                if let Some(prev) = c.app.store.get_by_key::<IdempotencyRecord>(k.as_bytes())?
                    && c.app.clock.now() - prev.created_at < chrono::Duration::hours(24)
                {
                    let mut out = Vec::new();
                    for id in prev.session_ids {
                        if let Some(s) = c.find::<Session>(id)? {
                            out.push(s);
                        }
                    }
                    return Ok(out.into_iter().map(View).collect());
                }
                Some(g)
            }
            None => None,
        };
        let options = input.options.clone().unwrap_or_default().validate()?;
        let named = match &input.deployment_ids {
            Some(ids) => {
                let mut v = Vec::new();
                for (i, d) in ids.iter().enumerate() {
                    let id = parse_id(&format!("deploymentIds[{i}]"), d)?;
                    let dep: Option<Deployment> = c.find(id)?;
                    if dep.is_none() {
                        return Err(ApiError::bad(
                            &format!("deploymentIds[{i}]"),
                            format!("deployment {id} not found"),
                        )
                        .into());
                    }
                    v.push(id);
                }
                Some(v)
            }
            None => None,
        };
        // Validate every computer before starting any.
        let mut named_ids = std::collections::HashSet::new();
        for (i, cid) in input.computer_ids.iter().enumerate() {
            if !named_ids.insert(parse_id(&format!("computerIds[{i}]"), cid)?) {
                return Err(ApiError::bad(
                    &format!("computerIds[{i}]"),
                    "this computer is named twice",
                )
                .into());
            }
        }
        let mut computers = Vec::new();
        for (i, cid) in input.computer_ids.iter().enumerate() {
            let id = parse_id(&format!("computerIds[{i}]"), cid)?;
            let comp: Computer = c.load(id)?;
            let tenant: Tenant = c.load(comp.tenant_id)?;
            if let Some(why) = exclusion(&tenant, Some(&comp)) {
                return Err(ApiError::bad(&format!("computerIds[{i}]"), why.to_string()).into());
            }
            if let Some(active) = c.app.unfinished_session_of(comp.id) {
                return Err(ApiError::Conflict(format!(
                    "computer {} already has an unfinished maintenance session {active}",
                    comp.name
                ))
                .into());
            }
            computers.push(comp);
        }
        let trigger = match c.actor.principal {
            crate::auth::Principal::ApiKey { .. } => SessionTrigger::Api,
            crate::auth::Principal::User { .. } => SessionTrigger::Manual,
        };
        let reqs = computers
            .into_iter()
            .map(|comp| StartRequest {
                computer: comp,
                trigger: trigger.into(),
                detection_only: input.detection_only.unwrap_or(false),
                execute_at: input.execute_at,
                window_end: None,
                deployment_ids: named.clone(),
                options: options.clone(),
                schedule_id: None,
                created_by: c.actor.display(),
            })
            .collect();
        Ok(c.app
            .start_sessions(reqs, Busy::Fail, idem_key)
            .await?
            .into_iter()
            .map(View)
            .collect())
    }

    async fn cancel_maintenance_session(&self, ctx: &Context<'_>, id: ID) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let s: Session = c.load(parse_id("id", &id)?)?;
        c.actor.require_role(Action::RunSessions)?;
        Ok(View(c.app.cancel_session(s.id, &c.actor.display()).await?))
    }

    /// Cancels every unfinished matching session; returns how many.
    async fn cancel_maintenance_sessions(
        &self,
        ctx: &Context<'_>,
        filter: CancelSessionsFilter,
    ) -> Result<i32> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let asked = opt_id("filter.tenantId", &filter.tenant_id)?;
        if let Some(t) = asked {
            c.load::<Tenant>(t)?;
        }
        let scope = c.scope.narrow(asked);
        let schedule = opt_id("filter.scheduleId", &filter.schedule_id)?;
        let ids: Vec<Session> = c
            .app
            .store
            .by_index::<Session>(&IndexKey::new(ACTIVE_SESSIONS, []), None)
            .filter_map(|s| s.ok())
            .filter(|s| scope.contains(Some(s.tenant_id)))
            .filter(|s| schedule.is_none_or(|x| s.schedule_id == Some(x)))
            .filter(|s| {
                filter
                    .status
                    .as_ref()
                    .is_none_or(|v| v.is_empty() || v.contains(&s.status.into()))
            })
            .collect();
        let mut n = 0;
        for s in ids {
            if c.app.cancel_session(s.id, &c.actor.display()).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Starts a new session like a finished one (same computer, options and deployments).
    async fn rerun_maintenance_session(&self, ctx: &Context<'_>, id: ID) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let s: Session = c.load(parse_id("id", &id)?)?;
        let comp: Computer = c.load(s.computer_id)?;
        let tenant: Tenant = c.load(comp.tenant_id)?;
        if let Some(why) = exclusion(&tenant, Some(&comp)) {
            return Err(ApiError::bad("id", why.to_string()).into());
        }
        // The trigger is kept: a rerun onboarding session runs the onboarding deployments again.
        let trigger = s.trigger;
        let req = StartRequest {
            computer: comp,
            trigger,
            detection_only: s.detection_only,
            execute_at: None,
            window_end: None,
            deployment_ids: s.deployment_ids.clone(),
            options: s.options.clone(),
            schedule_id: s.schedule_id,
            created_by: format!("{} (rerun of {})", c.actor.display(), s.id),
        };
        Ok(View(c.app.start_session(req).await?))
    }

    /// Postpones a waiting session by `hours` (default: its `postponeHours`), within its
    /// `maxPostpones`.
    async fn postpone_maintenance_session(
        &self,
        ctx: &Context<'_>,
        id: ID,
        hours: Option<i32>,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let s: Session = c.load(parse_id("id", &id)?)?;
        let hours = match hours {
            Some(h) if !(1..=24 * 30).contains(&h) => {
                return Err(ApiError::bad("hours", "must be between 1 and 720").into());
            }
            Some(h) => Some(h as u32),
            None => None,
        };
        Ok(View(
            c.app
                .apply(
                    s.id,
                    upkeep_core::engine::Event::Postpone {
                        hours,
                        by: c.actor.display(),
                        token: None,
                    },
                )
                .await?,
        ))
    }

    /// Sends a branded test mail to `to` through the outbox.
    async fn send_test_email(&self, ctx: &Context<'_>, tenant_id: ID, to: String) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let tenant: Tenant = c.load(parse_id("tenantId", &tenant_id)?)?;
        c.actor.require(Action::ConfigureTenant, Some(tenant.id))?;
        let to = email_address("to", &to)?.to_string();
        // It sends mail to any address under the tenant's name: limited per tenant and per
        // person (API keys count as the user who made them).
        let tenant_key = format!("tenant:{}", tenant.id);
        let actor_key = format!("user:{}", c.actor.user_id());
        let limits = [
            (&c.app.test_mails_by_tenant, &tenant_key, "this tenant"),
            (&c.app.test_mails_by_actor, &actor_key, "you"),
        ];
        for (i, (t, key, who)) in limits.iter().enumerate() {
            if let Err(wait) = t.reserve(key) {
                for (t, key, _) in &limits[..i] {
                    t.refund(key);
                }
                return Err(ApiError::bad(
                    "tenantId",
                    format!(
                        "too many test mails for {who}; try again in {} minutes",
                        wait.div_ceil(60)
                    ),
                )
                .into());
            }
        }
        let view = crate::mail::render::TestMailView {
            brand: c.app.brand(&tenant),
            recipient: to.clone(),
        };
        let r = c
            .app
            .templates
            .render_test_mail(&view)
            .map_err(|e| ApiError::internal(e))?;
        let m = c.app.outbox_mail(
            Some(&tenant),
            None,
            upkeep_core::mail::MailKind::Test,
            vec![to],
            r,
        );
        c.app.queue_mail(m).await?;
        Ok(true)
    }

    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<CreatedApiKey> {
        let c = Ctx::new(ctx)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        match (
            upkeep_core::domain::UserRole::from(input.role).is_msp(),
            tenant,
        ) {
            (true, Some(_)) => {
                return Err(ApiError::bad("tenantId", "MSP roles belong to no tenant").into());
            }
            (false, None) => {
                return Err(ApiError::bad("tenantId", "tenant roles need a tenant").into());
            }
            _ => {}
        }
        if let Some(t) = tenant {
            c.load::<Tenant>(t)?;
        }
        c.actor.require_role(Action::ManageApiKeys)?;
        c.actor.require_delegation(input.role.into(), tenant)?;
        // Keys are made by people: a leaked key must not be able to mint successors that
        // outlive its revocation.
        if !matches!(c.actor.principal, auth::Principal::User { .. }) {
            return Err(ApiError::Forbidden(
                "API keys are created by people, not by API keys".into(),
            )
            .into());
        }
        let now = c.app.clock.now();
        if input.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::bad("expiresAt", "must be in the future").into());
        }
        let secret = auth::new_secret("upk_");
        let key = ApiKey {
            id: crate::ids::fresh(),
            name: name("name", &input.name)?,
            role: input.role.into(),
            tenant_id: tenant,
            secret_hash: auth::secret_hash(&secret),
            created_by: c.actor.user_id(),
            created_at: now,
            expires_at: input.expires_at,
            last_used_at: None,
            revoked: false,
        };
        let idx = IndexKey::new(API_KEY_HASH, &key.secret_hash);
        c.app.store.write(|tx| {
            tx.claim_unique(&idx, key.id.as_bytes())?;
            tx.put(&key)?;
            Ok::<_, TxError<ApiError>>(())
        })?;
        c.app.store.flush().await?;
        Ok(CreatedApiKey {
            api_key: View(key),
            secret,
        })
    }

    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let mut k: ApiKey = c.load(parse_id("id", &id)?)?;
        c.actor.require_role(Action::ManageApiKeys)?;
        let own =
            matches!(c.actor.principal, auth::Principal::User { id, .. } if id == k.created_by);
        if !own {
            // Revoking someone else's key is handing on in reverse: only over keys whose
            // rights lie within one's own.
            c.actor.require_delegation(k.role, k.tenant_id)?;
        }
        k.revoked = true;
        c.save(&k).await?;
        c.app.forget_api_key(&k.secret_hash);
        c.app.credentials_may_have_ended();
        Ok(true)
    }

    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookInput,
    ) -> Result<CreatedWebhook> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id)?;
        c.actor.require(Action::ManageWebhooks, owner)?;
        if input.events.is_empty() {
            return Err(ApiError::bad("events", "subscribe to at least one event").into());
        }
        let url = crate::services::webhooks::check_url(
            &url("url", &input.url)?,
            c.app.config.allow_private_webhooks,
        )
        .await?;
        let secret = auth::new_secret("whsec_");
        let w = Webhook {
            id: crate::ids::fresh(),
            tenant_id: owner,
            url,
            events: input.events.iter().map(|&e| e.into()).collect(),
            description: input
                .description
                .as_deref()
                .map(|d| name("description", d))
                .transpose()?,
            secret: secret.clone(),
            created_at: c.app.clock.now(),
        };
        c.save(&w).await?;
        Ok(CreatedWebhook {
            webhook: View(w),
            secret,
        })
    }

    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let w: Webhook = c.load(parse_id("id", &id)?)?;
        c.actor.require(Action::ManageWebhooks, w.tenant_id)?;
        c.app
            .store
            .write(|tx| tx.delete::<Webhook, ApiError>(w.id.as_bytes()).map(|_| ()))?;
        c.app.store.flush().await?;
        Ok(true)
    }

    /// Changes a user's role, tenant or disabled flag (only the fields given). Managing users is
    /// MSP_ADMIN anywhere, TENANT_ADMIN in its tenant; nobody grants more rights than their
    /// own, disables themselves, or leaves the server without an enabled MSP_ADMIN
    /// (`CONFLICT`). A change of role, tenant or disabled flag ends the user's tokens.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateUserInput,
    ) -> Result<View<User>> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        // Another tenant's user (and, for tenant roles, any MSP user) reads as absent.
        c.load::<User>(id)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t)?;
        }
        let actor = c.actor;
        let user = c
            .app
            .change_user(id, |u| {
                actor.require(Action::ManageUsers, u.tenant_id)?;
                actor.require_delegation(u.role, u.tenant_id)?;
                if input.disabled == Some(true) && u.id == actor.user_id() {
                    return Err(ApiError::bad("disabled", "you cannot disable yourself"));
                }
                if let Some(role) = input.role {
                    u.role = role.into();
                }
                u.tenant_id = match tenant {
                    Some(t) => Some(t),
                    None if u.role.is_msp() => None,
                    None => u.tenant_id,
                };
                role_tenant(u.role, u.tenant_id)?;
                actor.require(Action::ManageUsers, u.tenant_id)?;
                actor.require_delegation(u.role, u.tenant_id)?;
                if let Some(d) = input.disabled {
                    u.disabled = d;
                }
                Ok(())
            })
            .await?;
        c.app.credentials_may_have_ended();
        Ok(View(user))
    }

    /// Deletes a user and frees their e-mail; their tokens and API keys stop working at once.
    /// Nobody deletes themselves or the last enabled MSP_ADMIN (`CONFLICT`).
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        c.load::<User>(id)?;
        let actor = c.actor;
        c.app
            .delete_user(id, |u| {
                actor.require(Action::ManageUsers, u.tenant_id)?;
                actor.require_delegation(u.role, u.tenant_id)?;
                if u.id == actor.user_id() {
                    return Err(ApiError::bad("id", "you cannot delete yourself"));
                }
                Ok(())
            })
            .await?;
        c.app.credentials_may_have_ended();
        Ok(true)
    }

    /// Changes the caller's own password. A wrong `currentPassword` is `BAD_USER_INPUT` on that
    /// field (the caller stays signed in) and counts as a failed login. Every token of the user,
    /// the caller's included, ends: log in again with the new password.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> Result<bool> {
        let c = Ctx::own_account(ctx)?;
        let id = own_user(&c)?;
        let user: User = c.load(id)?;
        let ip = ctx.data_opt::<ClientAddr>().map(|a| a.0.ip());
        // A wrong current password counts as a failed login (reserved before the check).
        let attempt = c
            .app
            .logins
            .reserve(user.email.text(), ip)
            .map_err(|wait| {
                ApiError::bad(
                    "currentPassword",
                    format!("too many failed attempts; try again in {wait} seconds"),
                )
            })?;
        if !auth::verify_password(&current_password, &user.password_hash).await {
            return Err(ApiError::bad("currentPassword", "is wrong").into());
        }
        attempt.succeeded();
        valid_password("newPassword", &new_password)?;
        let hash = auth::hash_password(&new_password).await?;
        c.app
            .change_user(id, |u| {
                u.password_hash = hash.clone();
                Ok(())
            })
            .await?;
        c.app.credentials_may_have_ended();
        Ok(true)
    }

    /// Starts turning on TOTP for the caller: a new secret for their authenticator app. TOTP is
    /// on once `confirmTotp` gets a code from it. The secret is shown only here.
    async fn enroll_totp(&self, ctx: &Context<'_>) -> Result<TotpEnrollment> {
        let c = Ctx::own_account(ctx)?;
        let id = own_user(&c)?;
        let secret = crate::totp::new_secret();
        let user = c
            .app
            .change_user(id, |u| {
                if u.totp_on() {
                    return Err(ApiError::Conflict(
                        "TOTP is already on; turn it off with disableTotp first".into(),
                    ));
                }
                u.totp.pending = Some(secret.clone());
                Ok(())
            })
            .await?;
        Ok(TotpEnrollment {
            otpauth_url: crate::totp::otpauth_url(user.email.text(), &secret),
            secret,
        })
    }

    /// Turns TOTP on with a code from the secret `enrollTotp` gave; from then on `login` needs
    /// `totpCode`.
    async fn confirm_totp(&self, ctx: &Context<'_>, code: String) -> Result<bool> {
        let c = Ctx::own_account(ctx)?;
        let id = own_user(&c)?;
        let now = c.app.clock.now();
        c.app
            .change_user(id, |u| {
                let pending = u.totp.pending.clone().ok_or_else(|| {
                    ApiError::bad(
                        "code",
                        "no TOTP enrollment is pending; call enrollTotp first",
                    )
                })?;
                let step = crate::totp::verify(&pending, &code, now, None)
                    .ok_or_else(|| ApiError::bad("code", "is not the current code"))?;
                u.totp = UserTotp {
                    secret: Some(pending),
                    pending: None,
                    last_step: Some(step),
                };
                Ok(())
            })
            .await?;
        Ok(true)
    }

    /// Turns TOTP off; needs a current code.
    async fn disable_totp(&self, ctx: &Context<'_>, code: String) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let id = own_user(&c)?;
        let now = c.app.clock.now();
        c.app
            .change_user(id, |u| {
                let secret = u
                    .totp
                    .secret
                    .as_deref()
                    .ok_or_else(|| ApiError::bad("code", "TOTP is not on"))?;
                crate::totp::verify(secret, &code, now, u.totp.last_step)
                    .ok_or_else(|| ApiError::bad("code", "is not the current code"))?;
                u.totp = UserTotp::default();
                Ok(())
            })
            .await?;
        Ok(true)
    }

    /// Runs a `SCHEDULED` or `POSTPONED` session now, for technicians, like ImmyBot's
    /// "resume". The end user's postpones are not used up and `allowUpdateNow` does not
    /// apply. Any other status is `CONFLICT`.
    async fn run_maintenance_session_now(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let s: Session = c.load(parse_id("id", &id)?)?;
        c.actor.require_role(Action::RunSessions)?;
        Ok(View(
            c.app
                .apply(
                    s.id,
                    upkeep_core::engine::Event::RunNow {
                        by: c.actor.display(),
                    },
                )
                .await?,
        ))
    }

    /// Runs the computer's onboarding deployments, with the required ones, now as a session
    /// with trigger `ONBOARDING`, for tenants without auto-onboarding or after a re-image.
    /// `CONFLICT` when the computer has an unfinished session.
    async fn start_onboarding_session(
        &self,
        ctx: &Context<'_>,
        computer_id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let comp: Computer = c.load(parse_id("computerId", &computer_id)?)?;
        c.actor.require_role(Action::RunSessions)?;
        let tenant: Tenant = c.load(comp.tenant_id)?;
        if let Some(why) = exclusion(&tenant, Some(&comp)) {
            return Err(ApiError::bad("computerId", why.to_string()).into());
        }
        let req = StartRequest {
            computer: comp,
            trigger: SessionTrigger::Onboarding.into(),
            detection_only: false,
            execute_at: None,
            window_end: None,
            deployment_ids: None,
            options: MaintenanceOptions::default(),
            schedule_id: None,
            created_by: c.actor.display(),
        };
        Ok(View(c.app.start_session(req).await?))
    }
}

/// The signed-in user's id; API keys have no password or second factor of their own.
fn own_user(c: &Ctx<'_>) -> ApiResult<Id> {
    match &c.actor.principal {
        auth::Principal::User { id, .. } => Ok(*id),
        auth::Principal::ApiKey { .. } => Err(ApiError::Forbidden(
            "an API key cannot change its creator's password or second factor; sign in as the user"
                .into(),
        )),
    }
}
