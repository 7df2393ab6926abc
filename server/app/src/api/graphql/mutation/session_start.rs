//! Mutations: running a waiting session now; onboarding sessions.

use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::SessionTrigger;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::error::ApiError;
use crate::permissions::Action;
use crate::services::runtime::StartRequest;
use async_graphql::{Context, ID, Object, Result};
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::session::*;

#[derive(Default)]
pub struct SessionStartMutation;

#[Object]
impl SessionStartMutation {
    /// Runs a `SCHEDULED` or `POSTPONED` session now, for technicians, like ImmyBot's
    /// "resume". The end user's postpones are not used up and `allowUpdateNow` does not
    /// apply. Any other status is `CONFLICT`.
    async fn run_maintenance_session_now(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The session's id.")] id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let s: Session = c.load(parse_id("id", &id)?).await?;
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
        #[graphql(desc = "The computer.")] computer_id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let comp: Computer = c.load(parse_id("computerId", &computer_id)?).await?;
        c.actor.require_role(Action::RunSessions)?;
        let tenant: Tenant = c.load(comp.tenant_id).await?;
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
            rollout: None,
        };
        Ok(View(c.app.start_session(req).await?))
    }
}
