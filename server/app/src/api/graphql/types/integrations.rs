//! GraphQL views: aPI keys, webhooks and their deliveries, audit events.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{ActorKind, DeliveryStatus, UserRole, WebhookEvent};
use crate::api::graphql::scalars::DateTime;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;

/// A credential for integrations (`Authorization: Bearer upk_…`), acting with its own role and
/// tenant.
#[Object(name = "ApiKey")]
impl View<ApiKey> {
    /// The API key's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// A name saying who uses the key (e.g. the PSA's name).
    async fn name(&self) -> &str {
        &self.name
    }
    /// The role the key acts with.
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    /// The tenant the key is limited to; `null` for an MSP-wide key.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// When the key was made.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
    /// When the key stops working; `null`: it does not expire.
    async fn expires_at(&self) -> Option<DateTime> {
        self.expires_at.map(DateTime)
    }
    /// Kept in memory and written at most once a minute.
    async fn last_used_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime>> {
        Ok(Ctx::new(ctx)?
            .app
            .accounts
            .api_key_last_used(self)
            .or(self.last_used_at)
            .map(DateTime))
    }
    /// True once the key was revoked: it no longer works.
    async fn revoked(&self) -> bool {
        self.revoked
    }
}

/// Signed JSON POSTs to an integration when events happen (header `Upkeep-Signature`).
#[Object(name = "Webhook")]
impl View<upkeep_core::webhook::Webhook> {
    /// The webhook's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its tenant; `null`: every tenant's events.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// The target URL: only for those who may manage this webhook (URLs often carry a PSA's
    /// token); `null` for everyone else.
    async fn url(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        let c = Ctx::new(ctx)?;
        let may = c
            .actor
            .require(crate::permissions::Action::ManageWebhooks, self.tenant_id)
            .is_ok();
        Ok(may.then_some(self.url.as_str()))
    }
    /// The events it sends.
    async fn events(&self) -> Vec<WebhookEvent> {
        self.events.iter().map(|&e| e.into()).collect()
    }
    /// What it is for.
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// When it was made.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
}

/// One event sent (or to be sent) to a webhook; retried with backoff for 24 hours.
#[Object(name = "WebhookDelivery")]
impl View<upkeep_core::webhook::Delivery> {
    /// The delivery's id (header `Upkeep-Delivery`; the same on every retry).
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// The event.
    async fn event(&self) -> WebhookEvent {
        self.event.into()
    }
    /// Where it stands.
    async fn status(&self) -> DeliveryStatus {
        self.status.into()
    }
    /// How many times it was tried.
    async fn attempts(&self) -> u32 {
        self.attempts
    }
    /// When it was last tried.
    async fn last_attempt_at(&self) -> Option<DateTime> {
        self.last_attempt_at.map(DateTime)
    }
    /// When it is tried next, while pending.
    async fn next_attempt_at(&self) -> Option<DateTime> {
        self.is_pending().then_some(self.next_attempt_at.into())
    }
    /// The HTTP status of the last answer.
    async fn response_status(&self) -> Option<i32> {
        self.response_status.map(i32::from)
    }
    /// Why the last attempt failed.
    async fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// When it was queued.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
}

/// One recorded change or sign-in: who did what to which record, and when.
#[Object(name = "AuditEvent")]
impl View<upkeep_core::audit::AuditEvent> {
    /// The event's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// When it happened.
    async fn at(&self) -> DateTime {
        self.at.into()
    }
    /// The mutation's name (`createDeployment`, `revokeApiKey`, …) or `enrollComputer`,
    /// `reenrollComputer`, `login`, `loginFailed`.
    async fn action(&self) -> &str {
        &self.action
    }
    /// What kind of caller acted.
    async fn actor_kind(&self) -> ActorKind {
        self.actor_kind.into()
    }
    /// The user's, API key's or computer's id.
    async fn actor_id(&self) -> Option<ID> {
        self.actor_id.map(id)
    }
    /// Who acted: an e-mail address, an API key's name, a computer or `system`.
    async fn actor_name(&self) -> &str {
        &self.actor_name
    }
    /// The caller's IP address.
    async fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }
    /// The tenant the change belongs to; `null` for MSP-level records.
    async fn tenant_id(&self) -> Option<ID> {
        self.tenant_id.map(id)
    }
    /// The kind of record changed (e.g. `Deployment`).
    async fn target_type(&self) -> &str {
        &self.target_type
    }
    /// The id of the record changed, when there is one.
    async fn target_id(&self) -> Option<&str> {
        self.target_id.as_deref()
    }
    /// A short diff or description; secrets never appear in it.
    async fn summary(&self) -> &str {
        &self.summary
    }
}

/// What kind of credential a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum ViewerKind {
    /// A person's token from `login` or `refreshToken`.
    User,
    /// An API key (`upk_…`).
    ApiKey,
}

/// Who the request's credential is (`Query.viewer`): the person or the API key, with the role
/// and tenant it acts with. For an API key, the role and tenant are the key's own, not those
/// of the person who made it.
pub struct Viewer {
    kind: ViewerKind,
    role: upkeep_core::domain::UserRole,
    tenant_id: Option<Id>,
    principal: Id,
}

impl Viewer {
    pub fn of(actor: &crate::auth::Actor) -> Viewer {
        let (kind, principal) = match actor.principal {
            crate::auth::Principal::User { id, .. } => (ViewerKind::User, id),
            crate::auth::Principal::ApiKey { id, .. } => (ViewerKind::ApiKey, id),
        };
        Viewer {
            kind,
            role: actor.role,
            tenant_id: actor.tenant_id,
            principal,
        }
    }
}

/// Who a request's credential is: a person's token or an API key.
#[Object]
impl Viewer {
    /// A person's token or an API key.
    async fn kind(&self) -> ViewerKind {
        self.kind
    }
    /// The role the credential acts with.
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    /// The tenant the credential is limited to; `null` for MSP-wide credentials.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// The person, when the credential is a person's token.
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<View<User>>> {
        if self.kind != ViewerKind::User {
            return Ok(None);
        }
        let c = Ctx::own_account(ctx)?;
        Ok(c.app.store.get::<User>(&self.principal).await?.map(View))
    }
    /// The API key, when the credential is one.
    async fn api_key(&self, ctx: &Context<'_>) -> Result<Option<View<ApiKey>>> {
        if self.kind != ViewerKind::ApiKey {
            return Ok(None);
        }
        let c = Ctx::own_account(ctx)?;
        Ok(c.app.store.get::<ApiKey>(&self.principal).await?.map(View))
    }
}
