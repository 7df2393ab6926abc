//! Mutations: schedules.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::error::ApiError;
use crate::permissions::Action;
use async_graphql::{Context, ID, Object, Result};
use futures_util::TryStreamExt;
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::session::*;

#[derive(Default)]
pub struct ScheduleMutation;

#[Object]
impl ScheduleMutation {
    /// Adds a schedule.
    async fn create_schedule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to create.")] input: CreateScheduleInput,
    ) -> Result<View<Schedule>> {
        let c = Ctx::new(ctx)?;
        let tenant = opt_id("tenantId", &input.tenant_id)?;
        if let Some(t) = tenant {
            c.load::<Tenant>(t).await?;
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
            target: target(&c, &input.target, tenant).await?,
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
            preflight_scripts: preflight_scripts(input.preflight_scripts.as_deref())?,
            created_at: c.app.clock.now(),
        };
        c.save(&s).await?;
        Ok(View(s))
    }

    /// Changes a schedule.
    async fn update_schedule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The schedule's id.")] id: ID,
        #[graphql(desc = "The changes; fields left out stay as they are.")]
        input: UpdateScheduleInput,
    ) -> Result<View<Schedule>> {
        let c = Ctx::new(ctx)?;
        let mut s: Schedule = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageSchedules, s.tenant_id)?;
        let mut timing_changed = false;
        if let Some(n) = &input.name {
            s.name = name("name", n)?;
        }
        if let Some(t) = &input.target {
            s.target = target(&c, t, s.tenant_id).await?;
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
        // The options are replaced as a whole: a field left out takes its default (the schema
        // shows each one).
        if let Some(o) = &input.options {
            s.options = o.validate()?;
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
        if let Some(p) = &input.preflight_scripts {
            s.preflight_scripts = preflight_scripts(Some(p))?;
        }
        if timing_changed {
            s.next_fire.clear();
            s.timing_since = Some(c.app.clock.now());
        }
        c.save(&s).await?;
        Ok(View(s))
    }

    /// Removes a schedule; its running sessions go on.
    async fn delete_schedule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The schedule's id.")] id: ID,
    ) -> Result<bool> {
        let c = Ctx::new(ctx)?;
        let s: Schedule = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::ManageSchedules, s.tenant_id)?;
        c.app
            .store
            .write(|tx| tx.delete::<Schedule, ApiError>(s.id.as_bytes()).map(|_| ()))
            .await?;
        c.app.store.flush().await?;
        Ok(true)
    }

    /// Starts the schedule's sessions now, whether or not it is enabled (trigger `SCHEDULE`).
    async fn run_schedule_now(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The schedule's id.")] id: ID,
    ) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        let s: Schedule = c.load(parse_id("id", &id)?).await?;
        c.actor.require_role(Action::RunSessions)?;
        // A tenant's own schedule names its tenant: an excluded one is refused, as a manual
        // start would be. A cross-tenant schedule runs in the tenants that are not excluded.
        let tenants: Vec<Tenant> = match s.tenant_id {
            Some(t) => {
                let t: Tenant = c.load(t).await?;
                if let Some(why) = exclusion(&t, None) {
                    return Err(ApiError::bad("id", why.to_string()).into());
                }
                vec![t]
            }
            None => c
                .app
                .store
                .scan::<Tenant>(None)
                .try_collect::<Vec<_>>()
                .await
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
                    .scheduler
                    .fire(
                        c.app,
                        &s,
                        &t,
                        now,
                        &format!("{} (run now)", c.actor.display()),
                    )
                    .await?,
            );
        }
        Ok(out.into_iter().map(View).collect())
    }
}
