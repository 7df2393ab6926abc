//! Live session progress. A subscriber is registered on the broadcast channel *before* stored
//! events are replayed, and every event is persisted before it is broadcast, so replay + live
//! has no gap; events already replayed are skipped by sequence, so there is no repeat.

use super::ctx::Ctx;
use super::enums::{ActionStatus, SessionStatus};
use super::parse_id;
use crate::error::ApiError;
use async_graphql::{Context, ID, Object, Result, Subscription as GqlSubscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use upkeep_core::domain::Id;
use upkeep_core::session::{Session, SessionEvent};

pub struct Subscription;

pub struct EventView(pub Arc<SessionEvent>);

#[Object(name = "MaintenanceSessionEvent")]
impl EventView {
    async fn session_id(&self) -> ID {
        ID(self.0.session_id.to_string())
    }
    /// Rises by one per session, from 1.
    async fn sequence(&self) -> i64 {
        self.0.sequence as i64
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
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
    async fn log_line(&self) -> Option<&str> {
        self.0.log_line.as_deref()
    }
}

#[derive(async_graphql::SimpleObject)]
pub struct ActionChange {
    pub id: ID,
    pub status: ActionStatus,
}

#[GqlSubscription]
impl Subscription {
    /// Every status change, action step and log line of matching sessions, in order. With
    /// `afterSequence` (requires `sessionId`), stored events after it are replayed first. A
    /// subscriber that falls too far behind gets an error and can resubscribe with the last
    /// sequence it saw.
    async fn maintenance_session_updates(
        &self,
        ctx: &Context<'_>,
        session_id: Option<ID>,
        tenant_id: Option<ID>,
        after_sequence: Option<i64>,
    ) -> Result<impl Stream<Item = Result<EventView>>> {
        let c = Ctx::new(ctx)?;
        let app = c.app.clone();
        let scope = c.scope;
        let session: Option<Id> = match &session_id {
            Some(s) => {
                let s: Session = c.load(parse_id("sessionId", s)?)?;
                Some(s.id)
            }
            None => None,
        };
        let tenant: Option<Id> = match &tenant_id {
            Some(t) => Some(
                c.load::<upkeep_core::domain::Tenant>(parse_id("tenantId", t)?)?
                    .id,
            ),
            None => None,
        };
        if after_sequence.is_some() && session.is_none() {
            return Err(ApiError::bad("afterSequence", "replay needs a sessionId").into());
        }
        // Subscribe first, then read the store: nothing published in between is lost.
        let mut rx = app.events.subscribe();
        let replay: Vec<Arc<SessionEvent>> = match (session, after_sequence) {
            (Some(s), Some(n)) => app
                .events_after(s, n.max(0) as u64)
                .map(|e| e.map(Arc::new))
                .collect::<Result<_, _>>()
                .map_err(ApiError::from)?,
            _ => vec![],
        };
        let stream = async_stream(move |yielder| async move {
            let mut last: HashMap<Id, u64> = HashMap::new();
            for e in replay {
                last.insert(e.session_id, e.sequence);
                if !yielder.send(Ok(EventView(e))).await {
                    return;
                }
            }
            loop {
                // A subscriber that went away ends this task at once, not at the next event
                // that happens to match it.
                let next = tokio::select! {
                    r = rx.recv() => r,
                    () = yielder.0.closed() => return,
                };
                match next {
                    Ok(e) => {
                        if session.is_some_and(|s| s != e.session_id)
                            || tenant.is_some_and(|t| t != e.tenant_id)
                            || !scope.contains(Some(e.tenant_id))
                        {
                            continue;
                        }
                        if last.get(&e.session_id).is_some_and(|l| e.sequence <= *l) {
                            continue;
                        }
                        last.insert(e.session_id, e.sequence);
                        if !yielder.send(Ok(EventView(e))).await {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let err = ApiError::Conflict(format!(
                            "subscriber fell {n} events behind; resubscribe with afterSequence"
                        ));
                        let _ = yielder.send(Err(err.into())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(stream)
    }
}

/// A minimal generator: runs `f` with a sender and yields what it sends, with a small bound so
/// a slow client applies backpressure to its own task only (never to the engine, which
/// publishes into the broadcast channel without waiting).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(Yielder<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(Yielder(tx)));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Yielder<T>(tokio::sync::mpsc::Sender<T>);

impl<T> Yielder<T> {
    /// False when the subscriber went away.
    async fn send(&self, v: T) -> bool {
        self.0.send(v).await.is_ok()
    }
}
