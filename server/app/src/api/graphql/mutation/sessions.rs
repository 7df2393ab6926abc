//! Mutations: starting, cancelling, rerunning and postponing sessions; test mails.

use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::SessionTrigger;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::error::{ApiError, ApiResult};
use crate::permissions::Action;
use crate::services::runtime::{Busy, StartRequest};
use async_graphql::{Context, ID, Object, Result};
use futures_util::StreamExt;
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::session::*;
use upkeep_store::IndexKey;
use upkeep_store::records::*;

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Starts one session per computer, in input order.
    async fn start_maintenance_session(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: StartMaintenanceSessionInput,
    ) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        if input.computer_ids.is_empty() {
            return Err(ApiError::bad("computerIds", "name at least one computer").into());
        }
        if input.computer_ids.len() > 10_000 {
            return Err(ApiError::bad("computerIds", "at most 10000 computers per call").into());
        }
        let idem = idempotency(&c, &input)?;
        let _idem_guard = match &idem {
            Some((key, hash)) => {
                let g = c.app.runtime.create_lock_for_idempotency().await;
                if let Some(earlier) = earlier_answer(&c, key, hash).await? {
                    return Ok(earlier);
                }
                Some(g)
            }
            None => None,
        };
        let options = input.options.clone().unwrap_or_default().validate()?;
        if let Some(at) = input.execute_at
            && at.0 < c.app.clock.now() - chrono::Duration::minutes(1)
        {
            return Err(ApiError::bad(
                "executeAt",
                format!(
                    "{} is in the past; leave executeAt out to run now",
                    crate::time::rfc3339(at.0)
                ),
            )
            .into());
        }
        let named = named_deployments(&c, input.deployment_ids.as_deref()).await?;
        // Validate every computer before starting any.
        let computers = startable_computers(&c, &input.computer_ids).await?;
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
                execute_at: input.execute_at.map(Into::into),
                window_end: None,
                deployment_ids: named.clone(),
                options: options.clone(),
                schedule_id: None,
                created_by: c.actor.display(),
                rollout: None,
            })
            .collect();
        Ok(c.app
            .start_sessions(reqs, Busy::Fail, idem)
            .await?
            .into_iter()
            .map(View)
            .collect())
    }

    /// Cancels an unfinished session: nothing more runs; actions done stay done.
    async fn cancel_maintenance_session(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The session's id.")] id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        let s: Session = c.load(parse_id("id", &id)?).await?;
        c.actor.require_role(Action::RunSessions)?;
        Ok(View(c.app.cancel_session(s.id, &c.actor.display()).await?))
    }

    /// Cancels every unfinished matching session; returns how many.
    async fn cancel_maintenance_sessions(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which unfinished sessions to cancel.")] filter: CancelSessionsFilter,
    ) -> Result<i32> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let asked = opt_id("filter.tenantId", &filter.tenant_id)?;
        if let Some(t) = asked {
            c.load::<Tenant>(t).await?;
        }
        let scope = c.scope.narrow(asked);
        let schedule = opt_id("filter.scheduleId", &filter.schedule_id)?;
        let ids: Vec<Session> = c
            .app
            .store
            .by_index::<Session>(&IndexKey::new(ACTIVE_SESSIONS, []), None)
            .filter_map(|s| std::future::ready(s.ok()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
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
    async fn rerun_maintenance_session(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The session's id.")] id: ID,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let s: Session = c.load(parse_id("id", &id)?).await?;
        let comp: Computer = c.load(s.computer_id).await?;
        let tenant: Tenant = c.load(comp.tenant_id).await?;
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
            rollout: None,
        };
        Ok(View(c.app.start_session(req).await?))
    }

    /// Postpones a waiting session by `hours` (default: its `postponeHours`), within its
    /// `maxPostpones`.
    async fn postpone_maintenance_session(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The session's id.")] id: ID,
        #[graphql(desc = "How many hours to wait (1–720).")] hours: Option<i32>,
    ) -> Result<View<Session>> {
        let c = Ctx::new(ctx)?;
        c.actor.require_role(Action::RunSessions)?;
        let s: Session = c.load(parse_id("id", &id)?).await?;
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
    async fn send_test_email(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tenant whose branding and sender the mail uses.")] tenant_id: ID,
        #[graphql(desc = "Where to send it.")] to: String,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let tenant: Tenant = c.load(parse_id("tenantId", &tenant_id)?).await?;
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
        c.app.outbox.queue(m).await?;
        Ok(true)
    }
}

/// The deployments a start names (`deploymentIds`), each one the caller may see.
async fn named_deployments(c: &Ctx<'_>, ids: Option<&[ID]>) -> ApiResult<Option<Vec<Id>>> {
    let Some(ids) = ids else {
        return Ok(None);
    };
    let mut v = Vec::new();
    for (i, d) in ids.iter().enumerate() {
        let id = parse_id(&format!("deploymentIds[{i}]"), d)?;
        if c.find::<Deployment>(id).await?.is_none() {
            return Err(ApiError::bad(
                &format!("deploymentIds[{i}]"),
                format!("deployment {id} not found"),
            ));
        }
        v.push(id);
    }
    Ok(Some(v))
}

/// The computers a start names, each visible, named once, not excluded from maintenance and
/// without an unfinished session.
async fn startable_computers(c: &Ctx<'_>, ids: &[ID]) -> ApiResult<Vec<Computer>> {
    let mut named_ids = std::collections::HashSet::new();
    for (i, cid) in ids.iter().enumerate() {
        if !named_ids.insert(parse_id(&format!("computerIds[{i}]"), cid)?) {
            return Err(ApiError::bad(
                &format!("computerIds[{i}]"),
                "this computer is named twice",
            ));
        }
    }
    let mut computers = Vec::new();
    for (i, cid) in ids.iter().enumerate() {
        let id = parse_id(&format!("computerIds[{i}]"), cid)?;
        let comp: Computer = c.load(id).await?;
        let tenant: Tenant = c.load(comp.tenant_id).await?;
        if let Some(why) = exclusion(&tenant, Some(&comp)) {
            return Err(ApiError::bad(&format!("computerIds[{i}]"), why.to_string()));
        }
        if let Some(active) = c.app.unfinished_session_of(comp.id).await {
            return Err(ApiError::Conflict(format!(
                "computer {} already has an unfinished maintenance session {active}",
                comp.name
            )));
        }
        computers.push(comp);
    }
    Ok(computers)
}

/// The idempotency key of a start, scoped to its caller (each API key has a space of its own,
/// and each person), with the SHA-256 of the request it was given for (the input without the
/// key, as GraphQL sees it).
fn idempotency(
    c: &Ctx<'_>,
    input: &StartMaintenanceSessionInput,
) -> Result<Option<(String, String)>> {
    use async_graphql::InputType as _;
    use sha2::Digest as _;
    let Some(k) = &input.idempotency_key else {
        return Ok(None);
    };
    if k.is_empty() || k.len() > 200 {
        return Err(ApiError::bad("idempotencyKey", "must be 1–200 characters").into());
    }
    let scope = match &c.actor.principal {
        crate::auth::Principal::User { id, .. } => format!("user:{id}"),
        crate::auth::Principal::ApiKey { id, .. } => format!("key:{id}"),
    };
    let mut request = input.to_value();
    if let async_graphql::Value::Object(fields) = &mut request {
        fields.shift_remove("idempotencyKey");
    }
    let request = serde_json::to_string(&request).map_err(ApiError::internal)?;
    let hash = hex::encode(sha2::Sha256::digest(request.as_bytes()));
    Ok(Some((format!("{scope}\u{0}{k}"), hash)))
}

/// The answer of an earlier start with this scoped key within 24 hours (its sessions as they
/// are now), or `CONFLICT` when that start had another request.
async fn earlier_answer(c: &Ctx<'_>, key: &str, hash: &str) -> Result<Option<Vec<View<Session>>>> {
    let Some(prev) = c
        .app
        .store
        .get_by_key::<IdempotencyRecord>(key.as_bytes())
        .await?
        .filter(|p| c.app.clock.now() - p.created_at < chrono::Duration::hours(24))
    else {
        return Ok(None);
    };
    if prev.request_hash.as_deref().is_some_and(|h| h != hash) {
        return Err(
            ApiError::Conflict("idempotency key reused with a different request".into()).into(),
        );
    }
    let mut out = Vec::new();
    for id in prev.session_ids {
        if let Some(s) = c.find::<Session>(id).await? {
            out.push(View(s));
        }
    }
    Ok(Some(out))
}
