//! Rollouts: the driver of `upkeep_core::rollout`. It reads a rollout and its current wave's
//! sessions, asks the state machine what follows, stores the change (compare-and-set on the
//! rollout's `revision`, with a halt's `ROLLOUT_HALTED` deliveries in the same transaction),
//! flushes, and only then acts: starts a wave's sessions, cancels an aborted rollout's, tells
//! subscribers.
//!
//! A wave's sessions are started through the same path as `startMaintenanceSession`
//! (`Sessions::start`, limited to the rollout's deployment), and the rollout's move to that
//! wave commits in the transaction of its first sessions (a `StartGuard`): of two replicas
//! driving one rollout, one starts the wave, once per computer. A session carries its
//! rollout (`Session::rollout`), so the wave's sessions are read from the `ROLLOUT_SESSIONS`
//! index, never counted from events: a missed wake-up costs a pass, not a wrong count.
//!
//! The driver runs when a rollout's session ends (the runtime pokes it), every two seconds
//! over the active rollouts (after a restart, between waves, in cluster mode for sessions that
//! ended on another replica) and at once when a test moves the clock.

use crate::clock::Clock;
use crate::error::{ApiError, ApiResult};
use crate::services::runtime::{StartGuard, StartRequest};
use crate::services::scheduler::Sessions;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use upkeep_core::domain::*;
use upkeep_core::exclusion::exclusion;
use upkeep_core::rollout::{self, Effect, Event, Outcome, Rollout};
use upkeep_core::session::{RolloutRef, Session, SessionTrigger};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey, TxError};

/// The rollout service: its store handle, clock, webhooks, and the channels that wake it and
/// tell subscribers.
pub struct Rollouts {
    store: Db,
    clock: Clock,
    webhooks: Arc<crate::services::webhooks::Webhooks>,
    /// One drive at a time in this process (replicas are kept apart by the revision check).
    drive_lock: tokio::sync::Mutex<()>,
    pokes: mpsc::UnboundedSender<Id>,
    poked: tokio::sync::Mutex<mpsc::UnboundedReceiver<Id>>,
    /// The id of every rollout this process stored a change of, after it was stored.
    changed: broadcast::Sender<Id>,
    shutdown: CancellationToken,
}

/// Tries of one drive when another writer moved the rollout meanwhile.
const ATTEMPTS: usize = 8;

impl Rollouts {
    pub fn new(
        store: Db,
        clock: Clock,
        webhooks: Arc<crate::services::webhooks::Webhooks>,
        shutdown: CancellationToken,
    ) -> Rollouts {
        let (pokes, poked) = mpsc::unbounded_channel();
        Rollouts {
            store,
            clock,
            webhooks,
            drive_lock: tokio::sync::Mutex::new(()),
            pokes,
            poked: tokio::sync::Mutex::new(poked),
            changed: broadcast::channel(256).0,
            shutdown,
        }
    }

    /// A session of rollout `id` ended: drive it soon.
    pub fn poke(&self, id: Id) {
        let _ = self.pokes.send(id);
    }

    /// Ids of rollouts changed by this process, after each change was stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Id> {
        self.changed.subscribe()
    }

    /// Background loop: drives poked rollouts at once, every active one every two seconds
    /// and when a test moves the clock.
    pub async fn run(self: Arc<Self>, sessions: Arc<dyn Sessions>) {
        let mut moved = self.clock.subscribe_moves();
        let mut poked = self.poked.lock().await;
        loop {
            if let Err(e) = self.pass(&*sessions).await {
                tracing::error!(error = %e, "rollout pass failed");
            }
            let deadline = tokio::time::sleep(std::time::Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = moved.changed() => break,
                    Some(id) = poked.recv() => {
                        if let Err(e) = self.drive(&*sessions, id).await {
                            tracing::warn!(rollout = %id, error = %e, "rollout step failed");
                        }
                    }
                    _ = self.shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Drives every `RUNNING` or `WAITING` rollout once.
    pub async fn pass(&self, sessions: &dyn Sessions) -> ApiResult<()> {
        let active: Vec<Rollout> = self
            .store
            .by_index::<Rollout>(&IndexKey::new(ACTIVE_ROLLOUTS, []), None)
            .try_collect()
            .await?;
        for r in active {
            if let Err(e) = self.drive(sessions, r.id).await {
                tracing::warn!(rollout = %r.id, error = %e, "rollout step failed");
            }
        }
        Ok(())
    }

    /// Takes every step rollout `id` has due now.
    pub async fn drive(&self, sessions: &dyn Sessions, id: Id) -> ApiResult<()> {
        let _one = self.drive_lock.lock().await;
        for _ in 0..ATTEMPTS * 4 {
            let Some(r) = self.store.get::<Rollout>(&id).await? else {
                return Ok(());
            };
            if !r.status.is_active() {
                return Ok(());
            }
            let outcomes = self.outcomes(&r).await?;
            let mut next = r.clone();
            let now = self.clock.now();
            let effects = rollout::step(
                &mut next,
                Event::Observe {
                    now,
                    sessions: outcomes,
                },
            )
            .unwrap_or_default();
            match effects.first() {
                // Started (or another replica did): look at the new wave at once.
                Some(Effect::StartWave(i)) => {
                    self.start_wave(sessions, &r, next, *i).await?;
                }
                Some(Effect::Halted { failing }) => {
                    let deliveries = self.webhooks.rollout_halted(&next, failing).await?;
                    if self.store_change(&r, &mut next, &deliveries).await? {
                        tracing::warn!(rollout = %id, reason = next.status_reason.as_deref().unwrap_or(""), "rollout halted");
                        if !deliveries.is_empty() {
                            self.webhooks.wake();
                        }
                        return Ok(());
                    }
                }
                _ if next == r => return Ok(()),
                _ => {
                    if self.store_change(&r, &mut next, &[]).await? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Resumes a halted rollout (`CONFLICT` otherwise) and drives it.
    pub async fn resume(&self, sessions: &dyn Sessions, id: Id, by: &str) -> ApiResult<Rollout> {
        let now = self.clock.now();
        let r = self
            .change(id, |r| {
                rollout::step(
                    r,
                    Event::Resume {
                        now,
                        by: by.to_string(),
                    },
                )
            })
            .await?;
        self.drive(sessions, id).await?;
        Ok(self.store.get::<Rollout>(&id).await?.unwrap_or(r))
    }

    /// Aborts a rollout that is not finished (`CONFLICT` otherwise): nothing more starts, and
    /// its unfinished sessions are cancelled.
    pub async fn abort(&self, sessions: &dyn Sessions, id: Id, by: &str) -> ApiResult<Rollout> {
        let now = self.clock.now();
        let r = {
            let _one = self.drive_lock.lock().await;
            self.change(id, |r| {
                rollout::step(
                    r,
                    Event::Abort {
                        now,
                        by: by.to_string(),
                    },
                )
            })
            .await?
        };
        let reason = format!("{by} (rollout aborted)");
        for s in self.sessions_of(id).await? {
            if !s.status.is_terminal()
                && let Err(e) = sessions.cancel(s.id, &reason).await
            {
                tracing::warn!(rollout = %id, session = %s.id, error = %e, "could not cancel a session of an aborted rollout");
            }
        }
        Ok(r)
    }

    /// Applies `f` to the stored rollout and stores it (again from a fresh read when another
    /// writer moved it meanwhile).
    async fn change(
        &self,
        id: Id,
        f: impl Fn(&mut Rollout) -> Result<Vec<Effect>, rollout::RolloutError>,
    ) -> ApiResult<Rollout> {
        for _ in 0..ATTEMPTS {
            let r = self
                .store
                .get::<Rollout>(&id)
                .await?
                .ok_or_else(|| ApiError::not_found("rollout", id))?;
            let mut next = r.clone();
            f(&mut next).map_err(|e| ApiError::Conflict(e.to_string()))?;
            if self.store_change(&r, &mut next, &[]).await? {
                return Ok(next);
            }
        }
        Err(ApiError::Conflict(
            "the rollout kept changing; try again".into(),
        ))
    }

    /// Stores `next` (and `deliveries`) if the stored rollout is still at `from`'s revision;
    /// flushes and tells subscribers. `false`: it had moved, nothing was written.
    async fn store_change(
        &self,
        from: &Rollout,
        next: &mut Rollout,
        deliveries: &[upkeep_core::webhook::Delivery],
    ) -> ApiResult<bool> {
        next.revision = from.revision + 1;
        let next_ref = &*next;
        let stored = self
            .store
            .write(|tx| {
                let Some(stored) = tx.get::<Rollout, ApiError>(&from.id)? else {
                    return Ok(false);
                };
                if stored.revision != from.revision {
                    return Ok(false);
                }
                tx.put(next_ref)?;
                for d in deliveries {
                    tx.put(d)?;
                }
                Ok::<_, TxError<ApiError>>(true)
            })
            .await?;
        if stored {
            self.store.flush().await?;
            let _ = self.changed.send(from.id);
        }
        Ok(stored)
    }

    /// Starts wave `i` of `r` (stored) as `next` says, its move committed with the first
    /// sessions. Another replica's move first: nothing starts.
    async fn start_wave(
        &self,
        sessions: &dyn Sessions,
        r: &Rollout,
        mut next: Rollout,
        i: usize,
    ) -> ApiResult<()> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let now = self.clock.now();
        let Some(deployment) = self.store.get::<Deployment>(&r.deployment_id).await? else {
            next.status = rollout::RolloutStatus::Halted;
            next.status_reason = Some("its deployment was deleted".into());
            self.store_change(r, &mut next, &[]).await?;
            return Ok(());
        };
        let targets = self.targets(&deployment).await?;
        let members = rollout::wave_members(&next, i, &targets);
        rollout::step(
            &mut next,
            Event::WaveStarted {
                now,
                wave: i,
                computers: members.clone(),
            },
        )
        .ok();
        next.revision = r.revision + 1;
        let by_id: std::collections::HashMap<Id, &Computer> =
            targets.iter().map(|c| (c.id, c)).collect();
        let wave = &next.waves[i];
        let reqs: Vec<StartRequest> = members
            .iter()
            .filter_map(|id| by_id.get(id))
            .map(|c| StartRequest {
                computer: (*c).clone(),
                trigger: SessionTrigger::Manual,
                detection_only: false,
                execute_at: None,
                window_end: None,
                deployment_ids: Some(vec![deployment.id]),
                options: r.options.clone(),
                schedule_id: None,
                created_by: format!("rollout wave {} ({})", wave.name, r.created_by),
                rollout: Some(RolloutRef {
                    id: r.id,
                    wave: i as u32,
                }),
            })
            .collect();
        let moved = AtomicBool::new(false);
        let (id, revision, next_ref) = (r.id, r.revision, &next);
        let guard: &StartGuard<'_> = &|tx| {
            moved.store(false, Ordering::Relaxed);
            let stored = tx.get::<Rollout, ApiError>(&id)?;
            if stored.is_none_or(|s| s.revision != revision) {
                moved.store(true, Ordering::Relaxed);
                return Err(TxError::Abort(ApiError::Conflict(
                    "the rollout moved".into(),
                )));
            }
            tx.put(next_ref)
        };
        match sessions.start(reqs, Some(guard)).await {
            Ok(started) => {
                tracing::info!(rollout = %id, wave = i, computers = members.len(), sessions = started.len(), "rollout wave started");
                let _ = self.changed.send(id);
                Ok(())
            }
            Err(_) if moved.load(Ordering::Relaxed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The deployment's target computers now, excluded ones left out.
    async fn targets(&self, d: &Deployment) -> ApiResult<Vec<Computer>> {
        let tenants: Vec<Tenant> = match d.tenant_id {
            Some(t) => self.store.get::<Tenant>(&t).await?.into_iter().collect(),
            None => self.store.scan::<Tenant>(None).try_collect().await?,
        };
        let mut out = Vec::new();
        for t in tenants {
            let idx = IndexKey::new(TENANT_COMPUTERS, t.id.as_bytes());
            let mut computers = std::pin::pin!(self.store.by_index::<Computer>(&idx, None));
            while let Some(c) = computers.next().await {
                let c = c?;
                if d.target.matches(&c) && exclusion(&t, Some(&c)).is_none() {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Every session rollout `id` started, in creation order.
    pub async fn sessions_of(&self, id: Id) -> ApiResult<Vec<Session>> {
        Ok(self
            .store
            .by_index::<Session>(&IndexKey::new(ROLLOUT_SESSIONS, id.as_bytes()), None)
            .try_collect()
            .await?)
    }

    /// The current wave's sessions as the state machine reads them.
    async fn outcomes(&self, r: &Rollout) -> ApiResult<Vec<Outcome>> {
        Ok(self
            .sessions_of(r.id)
            .await?
            .into_iter()
            .filter(|s| s.rollout.is_some_and(|x| x.wave as usize == r.current))
            .map(|s| Outcome {
                session: s.id,
                status: s.status,
            })
            .collect())
    }

    /// A new rollout was stored: start its first wave.
    pub async fn created(&self, sessions: &dyn Sessions, r: Rollout) -> ApiResult<Rollout> {
        let _ = self.changed.send(r.id);
        self.drive(sessions, r.id).await?;
        Ok(self.store.get::<Rollout>(&r.id).await?.unwrap_or(r))
    }
}
