//! Mutations: sign-in, the first users, tenants and people.

use super::*;
use crate::api::graphql::ClientAddr;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::auth::{self};
use crate::error::ApiError;
use crate::error::ApiResult;
use crate::logsafe::log_value;
use crate::permissions::Action;
use crate::services::removal::Removal;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;
use upkeep_core::types::Stored;
use upkeep_store::IndexKey;
use upkeep_store::TxError;
use upkeep_store::records::*;

#[derive(Default)]
pub struct AccessMutation;

#[Object]
impl AccessMutation {
    /// Signs in; the token goes in `Authorization: Bearer <token>`. Failed attempts are
    /// throttled per e-mail and per client address. A user with TOTP on also gives
    /// `totpCode`; without it, or with a wrong one, the error has `extensions.mfaRequired`.
    async fn login(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The user's e-mail address.")] email: String,
        #[graphql(desc = "The user's password.")] password: String,
        #[graphql(desc = "The current six-digit code, for users with TOTP on.")] totp_code: Option<
            String,
        >,
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
            .unique(&IndexKey::new(USER_EMAIL, email_norm.as_str()))
            .await?;
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
            && let Err(e) = app
                .accounts
                .use_totp_code(user.id, totp_code.as_deref())
                .await
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
            expires_at: (now + chrono::Duration::hours(auth::API_TOKEN_HOURS)).into(),
            user: View(user),
        })
    }

    /// A fresh token for the still-valid one in `Authorization`, of the same sign-in: the old
    /// token keeps its own expiry. A sign-in ends 30 days after the password was given (then
    /// `login` again); a password change or disablement ends it at once. Only for people's
    /// tokens: API keys do not expire this way.
    async fn refresh_token(&self, ctx: &Context<'_>) -> Result<LoginResult> {
        let c = Ctx::own_account(ctx)?;
        let auth::Principal::User {
            id, signed_in_at, ..
        } = c.actor.principal
        else {
            return Err(ApiError::Forbidden(
                "refreshToken is for people's tokens; an API key is used as it is".into(),
            )
            .into());
        };
        let user = c
            .app
            .store
            .get::<User>(&id)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("the user no longer exists".into()))?;
        let now = c.app.clock.now();
        let token = c.app.keys.refresh_api_token(&user, signed_in_at, now)?;
        let ip = ctx.data_opt::<ClientAddr>().map(|a| a.0.ip());
        c.app
            .record_audit(crate::audit::login(
                Some((user.id, user.tenant_id)),
                user.email.text(),
                "refreshToken",
                ip,
                now,
            ))
            .await;
        Ok(LoginResult {
            token,
            expires_at: (now + chrono::Duration::hours(auth::API_TOKEN_HOURS)).into(),
            user: View(user),
        })
    }

    /// Adds a user (MSP_ADMIN, or TENANT_ADMIN within their tenant); roles above the creator's own
    /// are refused.
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateUserInput,
    ) -> Result<View<User>> {
        let c = Ctx::new(ctx)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        role_tenant(input.role.into(), tenant)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t).await?;
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
        c.app
            .accounts
            .create_user(user)
            .await
            .map(View)
            .map_err(Into::into)
    }

    /// Adds a tenant (MSP_ADMIN).
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateTenantInput,
    ) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::CreateTenants)?;
        let t = input.into_tenant(c.app.clock.now(), &c.app.config.mail_from_domains)?;
        save_tenant(&c, &t, None).await?;
        Ok(View(t))
    }

    /// Changes a tenant's name, branding and settings.
    async fn update_tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tenant's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateTenantInput,
    ) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        let mut t: Tenant = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::ConfigureTenant, Some(t.id))?;
        let old_name = t.name.clone();
        input.apply(&mut t, &c.app.config.mail_from_domains)?;
        save_tenant(&c, &t, Some(&old_name)).await?;
        Ok(View(t))
    }

    /// Deletes a tenant (MSP_ADMIN only). Refused (`CONFLICT`) while it has computers, unless
    /// `force: true`: then its computers, people, users, API keys, enrollment keys, its own
    /// software and tasks, deployments, schedules, webhooks and sessions go with it, in one
    /// transaction. Always refused while one of its sessions is unfinished. Audit records
    /// stay.
    async fn delete_tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
        #[graphql(
            desc = "Delete the tenant with everything it owns, computers included (default false)."
        )]
        force: Option<bool>,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let t: Tenant = c.load(parse_id("id", &id)?).await?;
        c.actor.require_role(Action::DeleteTenants)?;
        let _starts = c.app.runtime.hold_session_starts().await;
        let r = Removal::tenant(&c.app.store, &t, force.unwrap_or(false)).await?;
        r.apply(&c.app.store, |tx| {
            tx.get::<Tenant, ApiError>(&t.id)?
                .ok_or_else(|| TxError::Abort(ApiError::not_found("tenant", t.id)))
                .map(|_| ())
        })
        .await?;
        r.forget(c.app);
        Ok(true)
    }

    /// Adds a person to a tenant.
    async fn create_person(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreatePersonInput,
    ) -> Result<View<Person>> {
        let c = Ctx::new(ctx)?;
        let tenant = parse_id("tenantId", &input.tenant_id)?;
        c.tenant_for_write(Some(tenant)).await?;
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

    /// Changes a person.
    async fn update_person(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The person's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdatePersonInput,
    ) -> Result<View<Person>> {
        let c = Ctx::new(ctx)?;
        let mut p: Person = c.load_for_write(parse_id("id", &id)?).await?;
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

    /// Deletes a person: computers they were the primary person of keep running without one;
    /// deployments and schedules that target only them go with them.
    async fn delete_person(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let p: Person = c.load_for_write(parse_id("id", &id)?).await?;
        c.actor
            .require(Action::ManageComputers, Some(p.tenant_id))?;
        let r = Removal::person(&c.app.store, &p).await?;
        r.apply(&c.app.store, |_| Ok(())).await?;
        Ok(true)
    }
}

/// Writes a tenant, claiming its name (trimmed, case-insensitive) and releasing its old one:
/// a name another tenant has is `CONFLICT`.
async fn save_tenant(c: &Ctx<'_>, t: &Tenant, old_name: Option<&str>) -> ApiResult<()> {
    use futures_util::TryStreamExt;
    let key = tenant_name_key(&t.name);
    let taken = || {
        ApiError::Conflict(format!(
            "a tenant named \"{}\" exists already",
            t.name.trim()
        ))
    };
    // Tenants stored before names were claimed hold no claim: compare with them too.
    let same = |o: &Tenant| o.id != t.id && tenant_name_key(&o.name) == key;
    let mut all = std::pin::pin!(c.app.store.scan::<Tenant>(None));
    while let Some(o) = all.try_next().await? {
        if same(&o) {
            return Err(taken());
        }
    }
    c.app
        .store
        .write(|tx| {
            if let Some(old) = old_name.map(tenant_name_key).filter(|o| *o != key) {
                crate::services::removal::release_owned(tx, &old, t.id)?;
            }
            if !tx.claim_unique(&key, t.id.as_bytes())? {
                return Err(TxError::Abort(taken()));
            }
            tx.put(t)?;
            Ok(())
        })
        .await?;
    c.app.store.flush().await?;
    Ok(())
}
