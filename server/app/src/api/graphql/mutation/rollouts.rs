//! Mutations: rollouts of a deployment in waves (`services::rollouts`).

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::inputs::*;
use crate::api::graphql::parse_id;
use crate::api::graphql::types::View;
use crate::error::ApiError;
use crate::permissions::Action;
use async_graphql::{Context, ID, InputObject, Object, Result};
use upkeep_core::domain::*;
use upkeep_core::rollout::{Rollout, RolloutStatus, Wave, WaveSelector};

/// One wave: give `target` (which of the deployment's target computers) or `percent` (that
/// share of them), not both.
#[derive(InputObject)]
pub struct RolloutWaveInput {
    /// Shown in the rollout and in `statusReason`; unique within the rollout.
    pub name: String,
    /// Those of the deployment's target computers this also matches (a canary tag).
    pub target: Option<TargetInput>,
    /// 1–100: `ceil(percent × the deployment's targets / 100)` of those not in an earlier
    /// wave, in a stable pseudo-random order (100: all the rest).
    pub percent: Option<i32>,
}

/// A rollout of one deployment.
#[derive(InputObject)]
pub struct CreateRolloutInput {
    /// The deployment; its sessions are limited to it (`deploymentIds`).
    pub deployment_id: ID,
    /// 1–20 waves, in order.
    pub waves: Vec<RolloutWaveInput>,
    /// 0–1 (default 0.1): a wave halts the rollout when more than this share of its
    /// finished sessions failed.
    pub halt_when_failure_rate_above: Option<f64>,
    /// 0–10000 (default 1): a wave is judged once this many of its sessions passed or failed,
    /// and passes only with at least this many; a percent wave takes at least this many.
    pub min_sessions_per_wave: Option<i32>,
    /// 0–10080 (default 0): minutes between a wave passing and the next starting.
    pub wait_minutes_between_waves: Option<i32>,
    /// The sessions' options.
    pub options: Option<MaintenanceOptionsInput>,
}

#[derive(Default)]
pub struct RolloutMutation;

#[Object]
impl RolloutMutation {
    /// Starts a rollout: its first wave's sessions start now.
    async fn create_rollout(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to roll out, and how.")] input: CreateRolloutInput,
    ) -> Result<View<Rollout>> {
        let c = Ctx::new(ctx)?;
        let d: Deployment = c
            .find(parse_id("deploymentId", &input.deployment_id)?)
            .await?
            .ok_or_else(|| ApiError::bad("deploymentId", "no such deployment"))?;
        c.actor.require(Action::RunSessions, d.tenant_id)?;
        if !d.enabled {
            return Err(ApiError::bad("deploymentId", "the deployment is disabled").into());
        }
        let now = c.app.clock.now();
        let r = Rollout {
            id: crate::ids::fresh(),
            tenant_id: d.tenant_id,
            deployment_id: d.id,
            waves: waves(&c, &input.waves, d.tenant_id).await?,
            halt_above: rate(input.halt_when_failure_rate_above)?,
            min_sessions_per_wave: bounded(
                "minSessionsPerWave",
                input.min_sessions_per_wave.unwrap_or(1),
                10_000,
            )?,
            wait_minutes: bounded(
                "waitMinutesBetweenWaves",
                input.wait_minutes_between_waves.unwrap_or(0),
                7 * 24 * 60,
            )?,
            options: input.options.unwrap_or_default().validate()?,
            status: RolloutStatus::Running,
            status_reason: None,
            current: 0,
            next_wave_at: None,
            created_by: c.actor.display(),
            created_at: now,
            updated_at: now,
            revision: 0,
        };
        c.save(&r).await?;
        Ok(View(c.app.rollouts.created(c.app, r).await?))
    }

    /// Resumes a `HALTED` rollout: the halted wave counts as passed and the next wave starts
    /// (at once, or when the halted wave's last sessions end). Any other status is `CONFLICT`.
    async fn resume_rollout(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rollout's id.")] id: ID,
    ) -> Result<View<Rollout>> {
        let c = Ctx::new(ctx)?;
        let r: Rollout = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::RunSessions, r.tenant_id)?;
        Ok(View(
            c.app
                .rollouts
                .resume(c.app, r.id, &c.actor.display())
                .await?,
        ))
    }

    /// Aborts a rollout: nothing more starts and its unfinished sessions are cancelled
    /// (what they already did stays done). `COMPLETED` or `ABORTED` is `CONFLICT`.
    async fn abort_rollout(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rollout's id.")] id: ID,
    ) -> Result<View<Rollout>> {
        let c = Ctx::new(ctx)?;
        let r: Rollout = c.load(parse_id("id", &id)?).await?;
        c.actor.require(Action::RunSessions, r.tenant_id)?;
        Ok(View(
            c.app
                .rollouts
                .abort(c.app, r.id, &c.actor.display())
                .await?,
        ))
    }
}

/// The waves, checked: 1–20, names unique, each a target or a percent.
async fn waves(
    c: &Ctx<'_>,
    input: &[RolloutWaveInput],
    tenant: Option<Id>,
) -> ApiResult<Vec<Wave>> {
    if input.is_empty() || input.len() > 20 {
        return Err(ApiError::bad("waves", "give 1 to 20 waves"));
    }
    let mut out: Vec<Wave> = Vec::with_capacity(input.len());
    for (i, w) in input.iter().enumerate() {
        let field = format!("waves[{i}]");
        let n = name(&format!("{field}.name"), &w.name)?;
        if out.iter().any(|o| o.name.eq_ignore_ascii_case(&n)) {
            return Err(ApiError::bad(
                &format!("{field}.name"),
                format!("{n} names two waves"),
            ));
        }
        let selector = match (&w.target, w.percent) {
            (Some(t), None) => WaveSelector::Target(target(c, t, tenant).await?),
            (None, Some(p)) if (1..=100).contains(&p) => WaveSelector::Percent(p as u32),
            (None, Some(_)) => {
                return Err(ApiError::bad(
                    &format!("{field}.percent"),
                    "must be 1 to 100",
                ));
            }
            _ => {
                return Err(ApiError::bad(&field, "give either target or percent"));
            }
        };
        out.push(Wave::new(n, selector));
    }
    Ok(out)
}

fn rate(v: Option<f64>) -> ApiResult<f64> {
    let v = v.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&v) {
        return Err(ApiError::bad(
            "haltWhenFailureRateAbove",
            "must be a share from 0 to 1 (0.1 = 10 %)",
        ));
    }
    Ok(v)
}

fn bounded(field: &str, v: i32, max: u32) -> ApiResult<u32> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| ApiError::bad(field, format!("must be 0 to {max}")))
}
