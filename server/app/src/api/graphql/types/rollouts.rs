//! Rollouts as the API shows them.

use super::{View, id, opt_tenant};
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::scalars::DateTime;
use async_graphql::{Context, Enum, ID, Object, Result};
use upkeep_core::domain::*;
use upkeep_core::rollout::{Rollout, Wave, WaveSelector};
use upkeep_core::session::Session;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::rollout::RolloutStatus")]
pub enum RolloutStatus {
    /// A wave is running.
    Running,
    /// A wave passed; the next starts at `nextWaveAt`.
    Waiting,
    /// A wave failed too often: nothing more starts until `resumeRollout` or `abortRollout`.
    Halted,
    /// Every wave passed.
    Completed,
    /// Aborted: nothing more starts; its unfinished sessions were cancelled.
    Aborted,
}

/// Where one wave of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::rollout::WaveStatus")]
pub enum RolloutWaveStatus {
    /// Not started yet.
    Pending,
    /// Its sessions run.
    Running,
    /// It ended within the threshold, or a person resumed past it.
    Passed,
    /// It halted the rollout.
    Halted,
    /// The rollout was aborted before it ended.
    Aborted,
}

/// Which rollouts `rollouts` lists.
#[derive(async_graphql::InputObject, Default)]
pub struct RolloutFilter {
    /// Only this tenant's (MSP roles; a tenant role always gets its own). Without it, MSP
    /// roles see every tenant's and the cross-tenant ones.
    pub tenant_id: Option<ID>,
    /// Only rollouts in this status.
    pub status: Option<RolloutStatus>,
}

/// One deployment brought to its computers wave by wave; it halts itself when a wave's
/// failure rate passes the threshold.
#[Object(name = "Rollout")]
impl View<Rollout> {
    /// The rollout's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Where it stands.
    async fn status(&self) -> RolloutStatus {
        self.status.into()
    }
    /// Why, in a sentence a person reads ("wave canary failed: 1 of 1 …", "resumed by …").
    async fn status_reason(&self) -> Option<&str> {
        self.status_reason.as_deref()
    }
    /// The waves, in order.
    async fn waves(&self) -> Vec<WaveView> {
        self.waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveView {
                rollout: self.id,
                index: i as u32,
                wave: w.clone(),
            })
            .collect()
    }
    /// The deployment it rolls out (null when deleted or not visible).
    async fn deployment(&self, ctx: &Context<'_>) -> Result<Option<View<Deployment>>> {
        Ok(Ctx::new(ctx)?.find(self.deployment_id).await?.map(View))
    }
    /// The deployment's tenant; null for a cross-tenant deployment.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// A wave halts the rollout when more than this share (0–1) of its finished sessions failed.
    async fn halt_when_failure_rate_above(&self) -> f64 {
        self.halt_above
    }
    /// A wave needs at least this many passed or failed sessions to be judged and to pass.
    async fn min_sessions_per_wave(&self) -> u32 {
        self.min_sessions_per_wave
    }
    /// Minutes between a wave passing and the next starting.
    async fn wait_minutes_between_waves(&self) -> u32 {
        self.wait_minutes
    }
    /// `WAITING`: when the next wave starts.
    async fn next_wave_at(&self) -> Option<DateTime> {
        self.next_wave_at.map(Into::into)
    }
    /// Who created it.
    async fn created_by(&self) -> &str {
        &self.created_by
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime {
        self.updated_at.into()
    }
}

// A wave with where it stands in its rollout (the description is on the impl).
pub struct WaveView {
    rollout: Id,
    index: u32,
    wave: Wave,
}

/// One wave of a rollout: which computers it takes, its sessions and how they did.
#[Object(name = "RolloutWave")]
impl WaveView {
    /// Its name.
    async fn name(&self) -> &str {
        &self.wave.name
    }
    /// Where it stands.
    async fn status(&self) -> RolloutWaveStatus {
        self.wave.status.into()
    }
    /// The sessions it started (a member computer busy with another session then has none).
    async fn sessions(&self, ctx: &Context<'_>) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        Ok(c.app
            .rollouts
            .sessions_of(self.rollout)
            .await?
            .into_iter()
            .filter(|s| s.rollout.is_some_and(|r| r.wave == self.index) && c.visible(s))
            .map(View)
            .collect())
    }
    /// FAILED / (PASSED + FAILED) of its finished sessions (CANCELLED ones count for
    /// neither); null before any passed or failed.
    async fn failure_rate(&self) -> Option<f64> {
        self.wave.failure_rate()
    }
    /// The computers it took when it started.
    async fn computer_ids(&self) -> Vec<ID> {
        self.wave.computers.iter().map(|c| id(*c)).collect()
    }
    /// `percent` waves: the share of the deployment's targets it takes.
    async fn percent(&self) -> Option<u32> {
        match self.wave.selector {
            WaveSelector::Percent(p) => Some(p),
            WaveSelector::Target(_) => None,
        }
    }
    /// `target` waves: which of the deployment's targets it takes.
    async fn target(&self) -> Option<View<Target>> {
        match &self.wave.selector {
            WaveSelector::Target(t) => Some(View(t.clone())),
            WaveSelector::Percent(_) => None,
        }
    }
    /// When it started.
    async fn started_at(&self) -> Option<DateTime> {
        self.wave.started_at.map(Into::into)
    }
    /// When it passed or halted.
    async fn finished_at(&self) -> Option<DateTime> {
        self.wave.finished_at.map(Into::into)
    }
}
