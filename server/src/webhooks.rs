//! Webhooks: signed JSON POSTs about sessions and computers to PSA integrations. A delivery is
//! written to the store with the step that causes it, before the first attempt, and retried
//! with backoff by one worker; the delivery id stays the same on every retry.

use crate::app::App;
use crate::domain::*;
use crate::error::ApiResult;
use crate::session::{ActionStatus, Session, SessionStatus};
use crate::store::records::*;
use crate::store::{IndexKey, TxError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
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
}

impl Delivery {
    pub fn is_pending(&self) -> bool {
        self.status == DeliveryStatus::Pending
    }
}

/// Deliveries stop being retried this long after they were queued.
const GIVE_UP_AFTER_HOURS: i64 = 24;

/// Backoff before retry `attempt` (1-based): 10 s, 20 s, 40 s … capped at one hour.
pub fn backoff(attempt: u32) -> chrono::Duration {
    let secs = 10u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(12));
    chrono::Duration::seconds(secs.min(3600) as i64)
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl App {
    fn hooks_for(&self, tenant: Id, event: WebhookEvent) -> ApiResult<Vec<Webhook>> {
        let mut out = Vec::new();
        for key in [tenant_key(Some(tenant)), tenant_key(None)] {
            for w in self
                .store
                .by_index::<Webhook>(&IndexKey::new(TENANT_WEBHOOKS, key), None)
            {
                let w = w?;
                if w.events.contains(&event) {
                    out.push(w);
                }
            }
        }
        Ok(out)
    }

    pub fn deliveries(
        &self,
        tenant: Id,
        event: WebhookEvent,
        data: serde_json::Value,
    ) -> ApiResult<Vec<Delivery>> {
        let now = self.clock.now();
        Ok(self
            .hooks_for(tenant, event)?
            .into_iter()
            .map(|w| {
                let id = Id::new();
                let body = serde_json::json!({
                    "id": id.to_string(),
                    "event": event,
                    "occurredAt": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "tenantId": tenant.to_string(),
                    "data": data,
                })
                .to_string();
                Delivery {
                    id,
                    webhook_id: w.id,
                    event,
                    body,
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    last_attempt_at: None,
                    response_status: None,
                    last_error: None,
                    created_at: now,
                }
            })
            .collect())
    }

    pub fn webhook_created(&self, s: &Session) -> ApiResult<Vec<Delivery>> {
        self.deliveries(s.tenant_id, WebhookEvent::SessionCreated, session_data(s))
    }

    pub fn webhook_deliveries_for(
        &self,
        s: &Session,
        before: SessionStatus,
        finished: bool,
    ) -> ApiResult<Vec<Delivery>> {
        let mut out = Vec::new();
        if s.status != before {
            out.extend(self.deliveries(
                s.tenant_id,
                WebhookEvent::SessionStatusChanged,
                session_data(s),
            )?);
        }
        if finished {
            out.extend(self.deliveries(
                s.tenant_id,
                WebhookEvent::SessionFinished,
                session_data(s),
            )?);
        }
        Ok(out)
    }

    /// Background loop: sends due deliveries, a few at a time, each with a time limit, so a
    /// slow receiver never holds up anything else.
    pub async fn run_webhooks(self: Arc<Self>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client");
                return;
            }
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(8));
        let mut in_flight = std::collections::HashSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Id>();
        loop {
            while let Ok(id) = done_rx.try_recv() {
                in_flight.remove(&id);
            }
            let now = self.clock.now();
            let mut next_due: Option<Time> = None;
            let idx = IndexKey::new(PENDING_DELIVERIES, []);
            let pending: Vec<Delivery> = self
                .store
                .by_index::<Delivery>(&idx, None)
                .filter_map(|d| d.ok())
                .collect();
            for d in pending {
                if in_flight.contains(&d.id) {
                    continue;
                }
                if d.next_attempt_at > now {
                    next_due = Some(
                        next_due.map_or(d.next_attempt_at, |n: Time| n.min(d.next_attempt_at)),
                    );
                    continue;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                in_flight.insert(d.id);
                let app = self.clone();
                let client = client.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    app.attempt_delivery(&client, d.clone()).await;
                    drop(permit);
                    let _ = done.send(d.id);
                    app.webhook_wakeup.notify_one();
                });
            }
            let wait = next_due
                .map(|t| (t - self.clock.now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = self.webhook_wakeup.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.wait() => return,
            }
        }
    }

    async fn attempt_delivery(&self, client: &reqwest::Client, mut d: Delivery) {
        let Ok(Some(hook)) = self.store.get::<Webhook>(&d.webhook_id) else {
            d.status = DeliveryStatus::Failed;
            d.last_error = Some("the webhook was deleted".into());
            self.save_delivery(&d).await;
            return;
        };
        let now = self.clock.now();
        let t = now.timestamp();
        let event_name = serde_json::to_value(d.event)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let result = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("upkeep/", env!("CARGO_PKG_VERSION")))
            .header("Upkeep-Event", event_name)
            .header("Upkeep-Delivery", d.id.to_string())
            .header("Upkeep-Signature", signature(&hook.secret, t, &d.body))
            .body(d.body.clone())
            .send()
            .await;
        d.attempts += 1;
        d.last_attempt_at = Some(now);
        match result {
            Ok(r) if r.status().is_success() => {
                d.status = DeliveryStatus::Delivered;
                d.response_status = Some(r.status().as_u16());
                d.last_error = None;
            }
            Ok(r) => {
                d.response_status = Some(r.status().as_u16());
                d.last_error = Some(format!("receiver answered {}", r.status()));
            }
            Err(e) => {
                d.response_status = None;
                d.last_error = Some(format!("could not reach receiver: {e}"));
            }
        }
        if d.status == DeliveryStatus::Pending {
            if now - d.created_at > chrono::Duration::hours(GIVE_UP_AFTER_HOURS) {
                d.status = DeliveryStatus::Failed;
            } else {
                d.next_attempt_at = now + backoff(d.attempts);
            }
        }
        self.metrics
            .webhook_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.save_delivery(&d).await;
    }

    async fn save_delivery(&self, d: &Delivery) {
        let r = self.store.write(|tx| tx.put(d).map_err(|e: TxError<()>| e));
        if r.is_err() {
            tracing::error!(delivery = %d.id, "could not save webhook delivery state");
        }
        let _ = self.store.flush().await;
    }
}

pub fn session_data(s: &Session) -> serde_json::Value {
    let mut data = serde_json::json!({
        "id": s.id.to_string(),
        "status": s.status,
        "statusReason": s.status_reason,
        "computerId": s.computer_id.to_string(),
        "trigger": s.trigger,
        "compliance": s.compliance,
    });
    if s.status.is_terminal() {
        data["actions"] = s
            .actions
            .iter()
            .map(|a| {
                let (software, task) = match s.items.get(a.item).map(|i| &i.what) {
                    Some(crate::session::ItemWhat::Software { software, .. }) => {
                        (Some(software.name.clone()), None)
                    }
                    Some(crate::session::ItemWhat::Task { task, .. }) => {
                        (None, Some(task.name.clone()))
                    }
                    None => (None, None),
                };
                serde_json::json!({
                    "kind": a.kind,
                    "status": a.status,
                    "software": software,
                    "maintenanceTask": task,
                    "compliance": a.compliance,
                    "resultMessage": a.result_message,
                })
            })
            .collect();
        data["failedActions"] = serde_json::json!(
            s.actions
                .iter()
                .filter(|a| a.status == ActionStatus::Failed)
                .count()
        );
    }
    data
}

/// Refuses webhook URLs that resolve to loopback, private, link-local or otherwise internal
/// addresses unless `--allow-private-webhooks` (an MSP-wide key must not become a way to probe
/// the server's own network).
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), crate::error::ApiError> {
    use crate::error::ApiError;
    use std::net::IpAddr;
    if allow_private {
        return Ok(());
    }
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map(|x| x.1).unwrap_or(authority);
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').unwrap_or((h, ""));
        (
            h.to_string(),
            p.trim_start_matches(':').parse().unwrap_or(443),
        )
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(443)),
            None => (
                authority.to_string(),
                if url.starts_with("https") { 443 } else { 80 },
            ),
        }
    };
    let private = |ip: IpAddr| match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00
                || (v.segments()[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped()
                    .is_some_and(|m| m.is_loopback() || m.is_private())
        }
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ApiError::bad("url", format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty()
        || addrs.iter().any(|a| private(a.ip()))
        || host.eq_ignore_ascii_case("localhost")
    {
        return Err(ApiError::bad(
            "url",
            format!(
                "{host} is a loopback or private address; start the server with --allow-private-webhooks to allow it"
            ),
        ));
    }
    Ok(())
}
