//! Mutations: users and one's own account: passwords and TOTP.

use super::*;
use crate::api::graphql::ClientAddr;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::auth::{self};
use crate::error::ApiError;
use crate::permissions::Action;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Changes a user's role, tenant or disabled flag (only the fields given). Managing users is
    /// MSP_ADMIN anywhere, TENANT_ADMIN in its tenant; nobody grants more rights than their
    /// own, disables themselves, or leaves the server without an enabled MSP_ADMIN
    /// (`CONFLICT`). A change of role, tenant or disabled flag ends the user's tokens.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The user's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")] input: UpdateUserInput,
    ) -> Result<View<User>> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        // Another tenant's user (and, for tenant roles, any MSP user) reads as absent.
        c.load::<User>(id).await?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t).await?;
        }
        let actor = c.actor;
        let user = c
            .app
            .accounts
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
    async fn delete_user(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The user's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        c.load::<User>(id).await?;
        let actor = c.actor;
        c.app
            .accounts
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
        #[graphql(desc = "The password now.")] current_password: String,
        #[graphql(desc = "The new password (at least 12 characters).")] new_password: String,
    ) -> Result<bool> {
        let c = Ctx::own_account(ctx)?;
        let id = own_user(&c)?;
        let user: User = c.load(id).await?;
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
            .accounts
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
            .accounts
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
    async fn confirm_totp(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The current six-digit code from the authenticator app.")] code: String,
    ) -> Result<bool> {
        let c = Ctx::own_account(ctx)?;
        let id = own_user(&c)?;
        let now = c.app.clock.now();
        c.app
            .accounts
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
    async fn disable_totp(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The current six-digit code.")] code: String,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let id = own_user(&c)?;
        let now = c.app.clock.now();
        c.app
            .accounts
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
}
