//! Cluster mode: one subscriber's live events, each once and in `sequence` order per session.
//! Events reach a replica from its own steps and, through NATS, from every other replica's; a
//! note can come twice (a stream consumer that recreated itself) or be lost or late (the send
//! queue was full, NATS was away). The store has every event before anyone hears of it, so a
//! repeat is dropped and a gap is filled from the store before the event that showed it.

use crate::services::App;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use upkeep_core::domain::{Id, Time};
use upkeep_core::session::SessionEvent;

/// Per session, the last sequence one subscriber was given.
#[derive(Debug)]
pub struct Sequencer {
    last: HashMap<Id, u64>,
    /// When the subscriber subscribed: the first event it hears of a session it has not seen
    /// may come after others it missed, which are filled in from then on.
    since: Time,
}

/// What to do with a live event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Given already (or older than what was): dropped.
    Repeat,
    /// The next one of its session (or the first this subscriber sees, from before it
    /// subscribed).
    Next,
    /// Events after `after` are missing before it: read them from the store first.
    Gap { after: u64 },
}

impl Sequencer {
    pub fn new(since: Time) -> Sequencer {
        Sequencer {
            last: HashMap::new(),
            since,
        }
    }

    /// A subscriber that has seen `session` up to `sequence` (a replay, or the session as read
    /// when it subscribed).
    pub fn seen(&mut self, session: Id, sequence: u64) {
        let last = self.last.entry(session).or_insert(sequence);
        *last = (*last).max(sequence);
    }

    pub fn admit(&self, e: &SessionEvent) -> Admit {
        match self.last.get(&e.session_id) {
            Some(&l) if e.sequence <= l => Admit::Repeat,
            Some(&l) if e.sequence > l + 1 => Admit::Gap { after: l },
            Some(_) => Admit::Next,
            None if e.sequence > 1 && e.at > self.since => Admit::Gap { after: 0 },
            None => Admit::Next,
        }
    }
}

impl App {
    /// `live` (one subscriber's wanted events), each once and in order per session (see the
    /// module docs). Errors pass through.
    pub fn in_sequence<S, L>(
        self: &Arc<Self>,
        live: S,
        seen: Sequencer,
    ) -> impl Stream<Item = Result<Arc<SessionEvent>, L>> + Send + use<S, L>
    where
        S: Stream<Item = Result<Arc<SessionEvent>, L>> + Send,
        L: Send,
    {
        let app = self.clone();
        let seen = Arc::new(Mutex::new(seen));
        live.then(move |item| {
            let (app, seen) = (app.clone(), seen.clone());
            async move {
                let e = match item {
                    Ok(e) => e,
                    Err(l) => return vec![Err(l)],
                };
                let (admit, since) = {
                    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    (seen.admit(&e), seen.since)
                };
                let out = match admit {
                    Admit::Repeat => return vec![],
                    Admit::Next => vec![Ok(e.clone())],
                    Admit::Gap { after } => app.fill_gap(&e, after, since).await,
                };
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .seen(e.session_id, e.sequence);
                out
            }
        })
        .flat_map(futures_util::stream::iter)
    }

    /// The stored events of `e`'s session after `after` (and not before `since`) up to `e`
    /// itself, in order (just `e` when the store cannot be read: better late order than a lost
    /// event).
    async fn fill_gap<L>(
        &self,
        e: &Arc<SessionEvent>,
        after: u64,
        since: Time,
    ) -> Vec<Result<Arc<SessionEvent>, L>> {
        let mut out = Vec::new();
        let mut stored = std::pin::pin!(self.events_after(e.session_id, after));
        while let Some(s) = stored.next().await {
            match s {
                Ok(s) if s.sequence < e.sequence => {
                    if after > 0 || s.at >= since {
                        out.push(Ok(Arc::new(s)));
                    }
                }
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(session = %e.session_id, error = %err, "cannot fill a subscriber's gap from the store");
                    break;
                }
            }
        }
        out.push(Ok(e.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn event(session: u128, sequence: u64) -> SessionEvent {
        SessionEvent {
            session_id: Id::from_u128(session),
            tenant_id: Id::from_u128(0),
            sequence,
            at: t(0),
            status: upkeep_core::session::SessionStatus::Pending,
            action_id: None,
            action_status: None,
            log_line: None,
        }
    }

    #[test]
    fn repeats_are_dropped_and_gaps_found_per_session() {
        let mut s = Sequencer::new(t(0));
        assert_eq!(
            s.admit(&event(1, 4)),
            Admit::Next,
            "first seen, from before"
        );
        s.seen(Id::from_u128(1), 4);
        assert_eq!(s.admit(&event(1, 4)), Admit::Repeat);
        assert_eq!(s.admit(&event(1, 3)), Admit::Repeat);
        assert_eq!(s.admit(&event(1, 5)), Admit::Next);
        assert_eq!(s.admit(&event(1, 7)), Admit::Gap { after: 4 });
        assert_eq!(s.admit(&event(2, 9)), Admit::Next, "another session");
        s.seen(Id::from_u128(1), 7);
        s.seen(Id::from_u128(1), 6);
        assert_eq!(s.admit(&event(1, 6)), Admit::Repeat, "never goes back");
    }

    #[test]
    fn a_session_first_heard_of_late_is_filled_from_the_subscription_on() {
        let s = Sequencer::new(t(0));
        let mut late = event(3, 5);
        late.at = t(1);
        assert_eq!(s.admit(&late), Admit::Gap { after: 0 });
        let mut first = event(3, 1);
        first.at = t(1);
        assert_eq!(s.admit(&first), Admit::Next);
    }
}
