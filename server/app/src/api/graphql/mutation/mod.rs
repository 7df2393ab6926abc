//! Mutations. Each changes one thing through the store in a transaction, flushes, and returns
//! the changed object.

mod access;
mod accounts;
mod catalogue;
mod fleet;
mod integrations;
mod rollouts;
mod schedules;
mod session_start;
mod sessions;
mod supply;

pub(super) use catalogue::{changed_deployment, deployment_to_delete, new_deployment};

use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::TargetKind;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::auth::{self, TenantScope};
use crate::error::{ApiError, ApiResult};
use async_graphql::{ID, SimpleObject};
use upkeep_core::domain::*;
use upkeep_core::webhook::Webhook;
use upkeep_store::{Record, TxError};

// Every mutation, in the order of the schema: each part is one file of this module (a doc
// comment here would become the type's description in the SDL).
/// Changes. Each runs as the caller and is written (with its audit record) before it answers.
#[derive(async_graphql::MergedObject, Default)]
pub struct Mutation(
    access::AccessMutation,
    fleet::FleetMutation,
    catalogue::CatalogueMutation,
    schedules::ScheduleMutation,
    sessions::SessionMutation,
    integrations::IntegrationMutation,
    accounts::AccountMutation,
    session_start::SessionStartMutation,
    rollouts::RolloutMutation,
);

/// A token for `Authorization: Bearer <token>`.
#[derive(SimpleObject)]
pub struct LoginResult {
    /// The token (a JWT, valid 12 hours; `refreshToken` renews it).
    pub token: String,
    /// When the token expires.
    pub expires_at: crate::api::graphql::scalars::DateTime,
    /// The signed-in user.
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

/// A new API key and its secret.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// The key.
    pub api_key: View<ApiKey>,
    /// `upk_…`: shown only here; Upkeep keeps only its hash.
    pub secret: String,
}

/// A new webhook and its signing secret.
#[derive(SimpleObject)]
pub struct CreatedWebhook {
    /// The webhook.
    pub webhook: View<Webhook>,
    /// The HMAC key for `Upkeep-Signature`: shown only here.
    pub secret: String,
}

impl<'a> Ctx<'a> {
    /// Writes one record (and nothing else) durably.
    async fn save<T: Record + Sync>(&self, r: &T) -> ApiResult<()> {
        self.app
            .store
            .write(|tx| tx.put(r).map_err(|e: TxError<ApiError>| e))
            .await?;
        self.app.store.flush().await?;
        Ok(())
    }

    /// The tenant a new record belongs to: the given one (checked), or for tenant roles their
    /// own; `None` (cross-tenant) only for MSP roles.
    async fn owner_for_new(&self, given: &Option<ID>) -> ApiResult<Option<Id>> {
        let t = match (opt_id("tenantId", given)?, self.scope) {
            (Some(t), _) => Some(t),
            (None, TenantScope::Tenant(own)) => Some(own),
            (None, TenantScope::All | TenantScope::Nothing) => None,
        };
        self.tenant_for_write(t).await?;
        Ok(t)
    }
}

async fn target(c: &Ctx<'_>, t: &TargetInput, tenant: Option<Id>) -> ApiResult<Target> {
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
            value: Some(target_ref::<Computer>(c, value, tenant).await?),
        }),
        TargetKind::Person => Ok(Target {
            kind: t.kind.into(),
            value: Some(target_ref::<Person>(c, value, tenant).await?),
        }),
    }
}

/// The id of the computer or person a target names: it must exist, be visible, and belong to
/// the deployment's or schedule's tenant.
async fn target_ref<T: super::ctx::Owned>(
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
        .find(id)
        .await?
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
async fn catalogue_ref<T: super::ctx::Owned>(
    c: &Ctx<'_>,
    field: &str,
    id: &ID,
    owner: Option<Id>,
) -> ApiResult<T> {
    let id = parse_id(field, id)?;
    let r: T = c
        .find(id)
        .await?
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
