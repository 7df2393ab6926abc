//! GraphQL views: aPI keys, webhooks and their deliveries, audit events.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{ActorKind, DeliveryStatus, UserRole, WebhookEvent};
use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use upkeep_core::domain::*;

#[Object(name = "ApiKey")]
impl View<ApiKey> {
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// Kept in memory and written at most once a minute.
    async fn last_used_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        Ok(Ctx::new(ctx)?
            .app
            .accounts
            .api_key_last_used(self)
            .or(self.last_used_at))
    }
    async fn revoked(&self) -> bool {
        self.revoked
    }
}

#[Object(name = "Webhook")]
impl View<upkeep_core::webhook::Webhook> {
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
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
    async fn events(&self) -> Vec<WebhookEvent> {
        self.events.iter().map(|&e| e.into()).collect()
    }
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "WebhookDelivery")]
impl View<upkeep_core::webhook::Delivery> {
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    async fn event(&self) -> WebhookEvent {
        self.event.into()
    }
    async fn status(&self) -> DeliveryStatus {
        self.status.into()
    }
    async fn attempts(&self) -> u32 {
        self.attempts
    }
    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.last_attempt_at
    }
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.is_pending().then_some(self.next_attempt_at)
    }
    async fn response_status(&self) -> Option<i32> {
        self.response_status.map(i32::from)
    }
    async fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "AuditEvent")]
impl View<upkeep_core::audit::AuditEvent> {
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    async fn at(&self) -> DateTime<Utc> {
        self.at
    }
    /// The mutation's name (`createDeployment`, `revokeApiKey`, …) or `enrollComputer`,
    /// `reenrollComputer`, `login`, `loginFailed`.
    async fn action(&self) -> &str {
        &self.action
    }
    async fn actor_kind(&self) -> ActorKind {
        self.actor_kind.into()
    }
    /// The user's, API key's or computer's id.
    async fn actor_id(&self) -> Option<ID> {
        self.actor_id.map(id)
    }
    async fn actor_name(&self) -> &str {
        &self.actor_name
    }
    /// The caller's IP address.
    async fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }
    async fn tenant_id(&self) -> Option<ID> {
        self.tenant_id.map(id)
    }
    async fn target_type(&self) -> &str {
        &self.target_type
    }
    async fn target_id(&self) -> Option<&str> {
        self.target_id.as_deref()
    }
    /// A short diff or description; secrets never appear in it.
    async fn summary(&self) -> &str {
        &self.summary
    }
}
