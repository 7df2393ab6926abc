//! Live session progress. A subscriber is registered on the broadcast channel *before* stored
//! events are replayed, and every event is persisted before it is broadcast, so replay + live
//! has no gap; events already replayed are skipped by sequence, so there is no repeat.

use super::ctx::Ctx;
use super::enums::{ActionStatus, SessionStatus};
use super::parse_id;
use super::types::View;
use crate::api::graphql::scalars::DateTime;
use crate::error::ApiError;
use async_graphql::{Context, ID, Object, Result, Subscription as GqlSubscription};
use futures_util::Stream;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use upkeep_core::domain::Id;
use upkeep_core::session::{Session, SessionEvent};

pub struct Subscription;

pub struct EventView(pub Arc<SessionEvent>);

/// A step of a session as it happens: a status change, an action step or a log line.
#[Object(name = "MaintenanceSessionEvent")]
impl EventView {
    /// The session.
    async fn session_id(&self) -> ID {
        ID(self.0.session_id.to_string())
    }
    /// Rises by one per session, from 1.
    async fn sequence(&self) -> i64 {
        self.0.sequence as i64
    }
    /// When it happened.
    async fn at(&self) -> DateTime {
        self.0.at.into()
    }
    /// The session's status when the event happened.
    async fn status(&self) -> SessionStatus {
        self.0.status.into()
    }
    /// The action this event is about, with its new status.
    async fn action(&self) -> Option<ActionChange> {
        match (self.0.action_id, self.0.action_status) {
            (Some(id), Some(status)) => Some(ActionChange {
                id: ID(id.to_string()),
                status: status.into(),
            }),
            _ => None,
        }
    }
    /// The log line it wrote, if any.
    async fn log_line(&self) -> Option<&str> {
        self.0.log_line.as_deref()
    }
}

/// A change to one action within a session event: the action and its new status.
#[derive(async_graphql::SimpleObject)]
pub struct ActionChange {
    /// The action's id (`MaintenanceAction.id`).
    pub id: ID,
    /// The action's status after this event.
    pub status: ActionStatus,
}

/// Live updates, over WebSocket (`/graphql/ws`, graphql-transport-ws).
#[GqlSubscription]
impl Subscription {
    /// A rollout as it changes: its state now, then again after every stored change, until it
    /// is `COMPLETED` or `ABORTED`.
    async fn rollout_updates(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rollout.")] id: ID,
    ) -> Result<impl Stream<Item = View<upkeep_core::rollout::Rollout>>> {
        let c = Ctx::new(ctx)?;
        let first: upkeep_core::rollout::Rollout = c.load(parse_id("id", &id)?).await?;
        Ok(super::rollout_updates::stream(c.app.clone(), first))
    }

    /// Every status change, action step and log line of matching sessions, in order. With
    /// `afterSequence` (requires `sessionId`), stored events after it are replayed first. A
    /// subscriber that falls too far behind gets an error and can resubscribe with the last
    /// sequence it saw.
    // long: the order of subscribing, replaying and going live is the point; kept together.
    async fn maintenance_session_updates(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this session's events.")] session_id: Option<ID>,
        #[graphql(desc = "Only this tenant's sessions.")] tenant_id: Option<ID>,
        #[graphql(
            desc = "With `sessionId`: first replay, in order, every stored event after this sequence, then go on live."
        )]
        after_sequence: Option<i64>,
    ) -> Result<impl Stream<Item = Result<EventView>>> {
        let c = Ctx::new(ctx)?;
        let app = c.app.clone();
        let scope = c.scope;
        // The session as read before subscribing: in cluster mode its `last_sequence` is where
        // the live stream's gap check starts (`services::sequence`).
        let (session, read_upto) = match &session_id {
            Some(s) => {
                let s: Session = c.load(parse_id("sessionId", s)?).await?;
                (Some(s.id), Some(s.last_sequence))
            }
            None => (None, None),
        };
        let tenant: Option<Id> = match &tenant_id {
            Some(t) => Some(
                c.load::<upkeep_core::domain::Tenant>(parse_id("tenantId", t)?)
                    .await?
                    .id,
            ),
            None => None,
        };
        if after_sequence.is_some() && session.is_none() {
            return Err(ApiError::bad("afterSequence", "replay needs a sessionId").into());
        }
        // Subscribe first, then read the store: nothing published in between is lost.
        let rx = app.events.subscribe();
        let replay: Vec<Arc<SessionEvent>> = match (session, after_sequence) {
            (Some(s), Some(n)) => app
                .events_after(s, n.max(0) as u64)
                .map_ok(Arc::new)
                .try_collect::<Vec<_>>()
                .await
                .map_err(ApiError::from)?,
            _ => vec![],
        };
        // Stored events first (replayed as they are), then live ones of matching sessions; a
        // live event of the replayed session at or below the last replayed sequence is skipped
        // (only one session is ever replayed, so that is all there is to remember). A
        // subscriber that falls too far behind gets one error and the stream ends. Nothing is
        // spawned: a slow client only delays its own stream, and one that goes away drops it.
        let replayed_upto = replay.last().map(|e| (e.session_id, e.sequence));
        let replayed = futures_util::stream::iter(replay.into_iter().map(Ok));
        let wanted = move |e: &SessionEvent| {
            session.is_none_or(|s| s == e.session_id)
                && tenant.is_none_or(|t| t == e.tenant_id)
                && scope.contains(Some(e.tenant_id))
                && !replayed_upto.is_some_and(|(s, n)| s == e.session_id && e.sequence <= n)
        };
        let live = BroadcastStream::new(rx)
            .filter(move |r| std::future::ready(r.as_ref().map_or(true, |e| wanted(e))));
        let start = match (replayed_upto, after_sequence) {
            (Some((_, n)), _) => n,
            (None, Some(n)) => n.max(0) as u64,
            (None, None) => read_upto.unwrap_or(0),
        };
        let live = in_sequence(&app, live, session.map(|s| (s, start)));
        let stream = replayed
            .chain(live)
            .scan(false, move |ended, item| {
                if *ended {
                    return std::future::ready(None);
                }
                let out = match item {
                    Ok(e) => Some(Ok(EventView(e))),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        *ended = true;
                        Some(Err(ApiError::Conflict(format!(
                            "subscriber fell {n} events behind; resubscribe with afterSequence"
                        ))
                        .into()))
                    }
                };
                std::future::ready(Some(out))
            })
            .filter_map(std::future::ready);
        Ok(stream)
    }
}

/// In cluster mode events come from every replica: each once, in order, gaps filled from the
/// store (`services::sequence`), `seen` (a session and the sequence it was seen up to) as the
/// start. On one node the channel is already that.
fn in_sequence<S>(
    app: &Arc<crate::services::App>,
    live: S,
    seen: Option<(Id, u64)>,
) -> futures_util::stream::BoxStream<'static, Result<Arc<SessionEvent>, BroadcastStreamRecvError>>
where
    S: Stream<Item = Result<Arc<SessionEvent>, BroadcastStreamRecvError>> + Send + 'static,
{
    if app.cluster.is_none() {
        return live.boxed();
    }
    let mut sequencer = crate::services::sequence::Sequencer::new(app.clock.now());
    if let Some((s, n)) = seen {
        sequencer.seen(s, n);
    }
    app.in_sequence(live, sequencer).boxed()
}
