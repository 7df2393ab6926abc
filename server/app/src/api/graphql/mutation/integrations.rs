//! Mutations: aPI keys and webhooks.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::auth::{self};
use crate::error::ApiError;
use crate::permissions::Action;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;
use upkeep_core::webhook::Webhook;
use upkeep_store::records::*;
use upkeep_store::{IndexKey, TxError};

#[derive(Default)]
pub struct IntegrationMutation;

#[Object]
impl IntegrationMutation {
    /// Makes an API key; its secret is in this answer only.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateApiKeyInput,
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
            c.load::<Tenant>(t).await?;
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
        if input.expires_at.is_some_and(|e| e.0 <= now) {
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
            expires_at: input.expires_at.map(Into::into),
            last_used_at: None,
            revoked: false,
        };
        let idx = IndexKey::new(API_KEY_HASH, &key.secret_hash);
        c.app
            .store
            .write(|tx| {
                tx.claim_unique(&idx, key.id.as_bytes())?;
                tx.put(&key)?;
                Ok::<_, TxError<ApiError>>(())
            })
            .await?;
        c.app.store.flush().await?;
        Ok(CreatedApiKey {
            api_key: View(key),
            secret,
        })
    }

    /// Ends an API key at once.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The API key's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let mut k: ApiKey = c.load(parse_id("id", &id)?).await?;
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
        c.app.accounts.forget_api_key(&k.secret_hash);
        c.app.credentials_may_have_ended();
        Ok(true)
    }

    /// Adds a webhook; its signing secret is in this answer only.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateWebhookInput,
    ) -> Result<CreatedWebhook> {
        let c = Ctx::new(ctx)?;
        let owner = c.owner_for_new(&input.tenant_id).await?;
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

    /// Changes a webhook's URL, events or description (the secret stays).
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
        #[graphql(desc = "What changes.")] input: UpdateWebhookInput,
    ) -> Result<View<Webhook>> {
        let c = Ctx::new(ctx)?;
        let mut w: Webhook = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageWebhooks, w.tenant_id)?;
        if let Some(u) = &input.url {
            w.url = crate::services::webhooks::check_url(
                &url("url", u)?,
                c.app.config.allow_private_webhooks,
            )
            .await?;
        }
        if let Some(events) = &input.events {
            if events.is_empty() {
                return Err(ApiError::bad("events", "subscribe to at least one event").into());
            }
            w.events = events.iter().map(|&e| e.into()).collect();
        }
        if let Some(d) = &input.description {
            w.description = Some(d.trim())
                .filter(|d| !d.is_empty())
                .map(|d| name("description", d))
                .transpose()?;
        }
        c.save(&w).await?;
        Ok(View(w))
    }

    /// Removes a webhook; its pending deliveries are dropped.
    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The webhook's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let w: Webhook = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageWebhooks, w.tenant_id)?;
        c.app
            .store
            .write(|tx| tx.delete::<Webhook, ApiError>(w.id.as_bytes()).map(|_| ()))
            .await?;
        c.app.store.flush().await?;
        Ok(true)
    }
}
