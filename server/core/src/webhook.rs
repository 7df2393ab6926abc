//! Webhook records: the subscriptions and their deliveries, and the rules that order and
//! retry deliveries. Sending them is the server's (`upkeep_server::services::webhooks`).

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookEvent {
    SessionCreated,
    SessionStatusChanged,
    SessionFinished,
    ComputerEnrolled,
    MailFailed,
    /// A known machine enrolled again (a re-image, or someone taking over its agent): its old
    /// agent token stopped working.
    ComputerReenrolled,
    /// `PROMPT`: the computer's users were told of a coming reboot (`data.message`,
    /// `data.rebootAt`); a tray app may show it and postpone the session.
    RebootPrompted,
    /// A rollout halted: a wave failed too often (`data.rolloutId`, `data.wave`,
    /// `data.failureRate`, `data.reason`, `data.failingSessions`).
    RolloutHalted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Id,
    pub tenant_id: Option<Id>,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub description: Option<String>,
    pub secret: String,
    pub created_at: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: Id,
    pub webhook_id: Id,
    pub event: WebhookEvent,
    /// The exact body, fixed when queued, so every retry sends the same bytes.
    pub body: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Time,
    pub last_attempt_at: Option<Time>,
    pub response_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Time,
    /// The session this delivery is about, and the sequence of the session event that caused
    /// it: one session's deliveries to one webhook go out in this order, one at a time.
    #[serde(default)]
    pub session_id: Option<Id>,
    #[serde(default)]
    pub sequence: Option<u64>,
    /// In cluster mode: the replica attempting it now ([`crate::lease`]). Never set on one
    /// node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::lease::Lease>,
}

impl Delivery {
    pub fn is_pending(&self) -> bool {
        self.status == DeliveryStatus::Pending
    }

    /// Where the delivery stands among its session's deliveries to the same webhook.
    fn order(&self) -> (Id, Option<Id>, Option<u64>, u8, Time, Id) {
        let rank = match self.event {
            WebhookEvent::SessionCreated => 0,
            WebhookEvent::SessionStatusChanged => 1,
            WebhookEvent::SessionFinished => 2,
            _ => 3,
        };
        (
            self.webhook_id,
            self.session_id,
            self.sequence,
            rank,
            self.created_at,
            self.id,
        )
    }
}

/// Which pending deliveries may be attempted now (in order), given those in flight: a
/// delivery of a session waits while an earlier one of that session to the same webhook is
/// pending (in flight, or waiting for its retry), so a retry never lets a later one overtake.
/// Deliveries not about a session are independent. Pure, for tests.
pub fn sendable(mut pending: Vec<Delivery>, in_flight: &dyn Fn(Id) -> bool) -> Vec<Delivery> {
    pending.sort_by_key(Delivery::order);
    let mut held = std::collections::HashSet::new();
    pending
        .into_iter()
        .filter(|d| match d.session_id {
            // The first pending one of its (webhook, session) group goes; the rest wait.
            Some(session) => held.insert((d.webhook_id, session)) && !in_flight(d.id),
            None => !in_flight(d.id),
        })
        .collect()
}

/// Deliveries stop being retried this long after they were queued.
pub const GIVE_UP_AFTER_HOURS: i64 = 24;

/// Backoff before retry `attempt` (1-based): 10 s, 20 s, 40 s … capped at one hour.
pub fn backoff(attempt: u32) -> chrono::Duration {
    let secs = 10u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(12));
    chrono::Duration::seconds(secs.min(3600) as i64)
}

#[cfg(test)]
mod ordering_tests {
    use super::*;

    fn delivery(session: Option<Id>, sequence: u64, event: WebhookEvent, hook: Id) -> Delivery {
        Delivery {
            id: Id::new(),
            webhook_id: hook,
            event,
            body: String::new(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: chrono::DateTime::UNIX_EPOCH,
            last_attempt_at: None,
            response_status: None,
            last_error: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            session_id: session,
            sequence: session.map(|_| sequence),
            lease: None,
        }
    }

    #[test]
    fn a_sessions_later_deliveries_wait_for_its_earlier_one_per_webhook() {
        let (a, b, h1, h2) = (Id::new(), Id::new(), Id::new(), Id::new());
        let finished = delivery(Some(a), 7, WebhookEvent::SessionFinished, h1);
        let changed = delivery(Some(a), 7, WebhookEvent::SessionStatusChanged, h1);
        let created = delivery(Some(a), 1, WebhookEvent::SessionCreated, h1);
        let other_hook = delivery(Some(a), 7, WebhookEvent::SessionFinished, h2);
        let other_session = delivery(Some(b), 3, WebhookEvent::SessionStatusChanged, h1);
        let enrolled = delivery(None, 0, WebhookEvent::ComputerEnrolled, h1);
        let all = vec![
            finished.clone(),
            changed.clone(),
            created.clone(),
            other_hook.clone(),
            other_session.clone(),
            enrolled.clone(),
        ];
        let ids = |v: Vec<Delivery>| {
            let mut v: Vec<Id> = v.into_iter().map(|d| d.id).collect();
            v.sort();
            v
        };
        let mut want = vec![created.id, other_hook.id, other_session.id, enrolled.id];
        want.sort();
        assert_eq!(ids(sendable(all.clone(), &|_| false)), want);
        // While the first is in flight (or waits for its retry) nothing later of its session
        // to that webhook goes.
        let mut want = vec![other_hook.id, other_session.id, enrolled.id];
        want.sort();
        assert_eq!(ids(sendable(all, &|id| id == created.id)), want);
        // Among one event's deliveries the status change goes before the finish.
        let next = sendable(vec![finished.clone(), changed.clone()], &|_| false);
        assert_eq!(
            next.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![changed.id]
        );
    }
}
