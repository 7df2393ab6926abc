//! Mutations: enrollment keys and computers.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::EnrollmentKeyView;
use crate::api::graphql::types::View;
use crate::auth::{self};
use crate::error::ApiError;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;
use upkeep_store::records::*;
use upkeep_store::{IndexKey, TxError};

#[derive(Default)]
pub struct FleetMutation;

#[Object]
impl FleetMutation {
    /// Creates an enrollment key; its `key` secret is readable only in this answer.
    async fn create_enrollment_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tenant computers enroll into.")] tenant_id: ID,
        #[graphql(desc = "The key's options.")] input: Option<CreateEnrollmentKeyInput>,
    ) -> Result<EnrollmentKeyView> {
        let c = Ctx::new(ctx)?;
        let tenant = parse_id("tenantId", &tenant_id)?;
        c.tenant_for_write(Some(tenant)).await?;
        let input = input.unwrap_or_default();
        let now = c.app.clock.now();
        if input.expires_at.is_some_and(|e| e.0 <= now) {
            return Err(ApiError::bad("input.expiresAt", "must be in the future").into());
        }
        if input.max_uses.is_some_and(|m| m < 1) {
            return Err(ApiError::bad("input.maxUses", "must be at least 1").into());
        }
        let person = match &input.primary_person_id {
            Some(p) => {
                let p: Person = catalogue_ref(&c, "input.primaryPersonId", p, Some(tenant)).await?;
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
            expires_at: input.expires_at.map(Into::into),
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
        c.app
            .store
            .write(|tx| {
                tx.claim_unique(&hash_idx, key.id.as_bytes())?;
                tx.put(&key)?;
                Ok::<_, TxError<ApiError>>(())
            })
            .await?;
        c.app.store.flush().await?;
        Ok(EnrollmentKeyView {
            key,
            secret: Some(secret),
        })
    }

    /// Stops an enrollment key from enrolling more computers (enrolled ones stay).
    async fn revoke_enrollment_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The enrollment key's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let mut k: EnrollmentKey = c.load_for_write(parse_id("id", &id)?).await?;
        k.revoked = true;
        c.save(&k).await?;
        Ok(true)
    }

    /// Renames, tags or excludes a computer, or gives it a primary person.
    async fn update_computer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The computer's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateComputerInput,
    ) -> Result<View<Computer>> {
        let c = Ctx::new(ctx)?;
        let id = parse_id("id", &id)?;
        let current: Computer = c.load_for_write(id).await?;
        let person = match &input.primary_person_id {
            Some(p) if p.is_empty() => Some(None),
            Some(p) => {
                let p: Person =
                    catalogue_ref(&c, "input.primaryPersonId", p, Some(current.tenant_id)).await?;
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
        let comp = c
            .app
            .store
            .write(|tx| {
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
            })
            .await?;
        c.app.store.flush().await?;
        Ok(View(comp))
    }

    /// Deletes a computer: its agent is refused at once, its inventory goes, and so do the
    /// deployments and schedules that target it alone. Its finished sessions stay as history
    /// (their `computer` reads null). Refused (`CONFLICT`) while a session of it is
    /// unfinished: cancel it first.
    async fn delete_computer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let comp: Computer = c.load_for_write(parse_id("id", &id)?).await?;
        c.actor.require(
            crate::permissions::Action::ManageComputers,
            Some(comp.tenant_id),
        )?;
        let _starts = c.app.runtime.hold_session_starts().await;
        let r = crate::services::removal::Removal::computer(&c.app.store, comp).await?;
        r.apply(&c.app.store, |_| Ok(())).await?;
        r.forget(c.app);
        Ok(true)
    }

    /// Revokes a computer's agent token: its agent is refused until it enrolls again.
    async fn revoke_computer_agent(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The computer's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let comp: Computer = c.load_for_write(parse_id("id", &id)?).await?;
        c.app.revoke_agent(comp.id).await?;
        Ok(true)
    }
}
