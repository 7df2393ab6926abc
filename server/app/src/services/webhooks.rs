//! Webhooks: signed JSON POSTs about sessions and computers to PSA integrations. A delivery is
//! written to the store with the step that causes it, before the first attempt, and retried
//! with backoff by one worker; the delivery id stays the same on every retry.
//!
//! In cluster mode every replica runs the worker over the one store; a replica claims each
//! delivery with a lease in its record before attempting it and records the result (dropping
//! the lease) after, so one replica attempts it at a time, and a delivery leased elsewhere holds
//! back its session's later ones as one in flight here does (`upkeep_core::lease`).

use crate::clock::Clock;
use crate::error::ApiResult;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use upkeep_core::domain::*;
use upkeep_core::lease::Claimant;
use upkeep_core::session::{ActionStatus, Session, SessionStatus, Stage};
use upkeep_core::webhook::{
    Delivery, DeliveryStatus, GIVE_UP_AFTER_HOURS, Webhook, WebhookEvent, backoff, sendable,
};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey, TxError};

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook service: makes deliveries for the steps that cause them and, in its own task,
/// sends them. It owns what it needs (the store, the clock, its wake-up and its counter) and
/// knows nothing of the rest of the server.
pub struct Webhooks {
    store: Db,
    clock: Clock,
    allow_private: bool,
    /// Cluster mode: this replica claims each delivery before attempting it.
    claims: Option<Claimant>,
    /// Wakes the worker when a delivery was queued.
    wakeup: Notify,
    shutdown: CancellationToken,
    /// Delivery attempts made since start (for `/metrics`).
    attempts: AtomicU64,
}

/// What the webhook service needs besides the store and the clock.
pub struct WebhooksConfig {
    /// `--allow-private-webhooks`.
    pub allow_private: bool,
    /// Cluster mode: claim each delivery with a lease before attempting it.
    pub claims: Option<Claimant>,
    pub shutdown: CancellationToken,
}

impl Webhooks {
    pub fn new(store: Db, clock: Clock, config: WebhooksConfig) -> Webhooks {
        Webhooks {
            store,
            clock,
            allow_private: config.allow_private,
            claims: config.claims,
            wakeup: Notify::new(),
            shutdown: config.shutdown,
            attempts: AtomicU64::new(0),
        }
    }

    /// Tells the worker that deliveries were stored (call it after the write is flushed).
    pub fn wake(&self) {
        self.wakeup.notify_one();
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Webhooks of `tenant` and the cross-tenant ones (only those for `None`) that want `event`.
    async fn hooks_for(&self, tenant: Option<Id>, event: WebhookEvent) -> ApiResult<Vec<Webhook>> {
        let mut out = Vec::new();
        let keys = match tenant {
            Some(t) => vec![tenant_key(Some(t)), tenant_key(None)],
            None => vec![tenant_key(None)],
        };
        for key in keys {
            let mut webhooks = std::pin::pin!(
                self.store
                    .by_index::<Webhook>(&IndexKey::new(TENANT_WEBHOOKS, key), None)
            );
            while let Some(w) = webhooks.next().await {
                let w = w?;
                if w.events.contains(&event) {
                    out.push(w);
                }
            }
        }
        Ok(out)
    }

    pub async fn deliveries(
        &self,
        tenant: Id,
        event: WebhookEvent,
        data: serde_json::Value,
    ) -> ApiResult<Vec<Delivery>> {
        self.deliveries_in(Some(tenant), event, data).await
    }

    /// `ROLLOUT_HALTED` for `r`, naming the wave's failing sessions.
    pub async fn rollout_halted(
        &self,
        r: &upkeep_core::rollout::Rollout,
        failing: &[Id],
    ) -> ApiResult<Vec<Delivery>> {
        let w = &r.waves[r.current];
        let data = serde_json::json!({
            "rolloutId": r.id.to_string(),
            "deploymentId": r.deployment_id.to_string(),
            "status": upkeep_core::rollout::status_name(r.status),
            "wave": w.name,
            "failureRate": w.failure_rate(),
            "reason": r.status_reason,
            "failingSessions": failing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        });
        self.deliveries_in(r.tenant_id, WebhookEvent::RolloutHalted, data)
            .await
    }

    /// Deliveries of `event` to the webhooks of `tenant` (`None`: the cross-tenant ones).
    pub async fn deliveries_in(
        &self,
        tenant: Option<Id>,
        event: WebhookEvent,
        data: serde_json::Value,
    ) -> ApiResult<Vec<Delivery>> {
        let now = self.clock.now();
        Ok(self
            .hooks_for(tenant, event)
            .await?
            .into_iter()
            .map(|w| {
                let id = crate::ids::fresh();
                let sequence = data.get("sequence").cloned();
                let mut body = serde_json::json!({
                    "id": id.to_string(),
                    "event": event,
                    "occurredAt": crate::time::rfc3339(now),
                    "tenantId": tenant.map(|t| t.to_string()),
                    "data": data,
                });
                // Events about a session carry its event sequence at the top too: a receiver
                // orders and deduplicates by it without knowing each event's data.
                if let Some(sequence) = sequence {
                    body["sequence"] = sequence;
                }
                let body = body.to_string();
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
                    session_id: None,
                    sequence: None,
                    lease: None,
                }
            })
            .collect())
    }

    /// Deliveries about session `s`, caused by its event `sequence` (carried in `data`).
    async fn session_deliveries(
        &self,
        s: &Session,
        event: WebhookEvent,
        sequence: u64,
    ) -> ApiResult<Vec<Delivery>> {
        let mut data = session_data(s);
        data["sequence"] = serde_json::json!(sequence);
        let mut out = self.deliveries(s.tenant_id, event, data).await?;
        for d in &mut out {
            d.session_id = Some(s.id);
            d.sequence = Some(sequence);
        }
        Ok(out)
    }

    pub async fn created(&self, s: &Session) -> ApiResult<Vec<Delivery>> {
        self.session_deliveries(s, WebhookEvent::SessionCreated, s.last_sequence)
            .await
    }

    /// A `PROMPT` reboot was announced: what the users were told, and when it reboots.
    pub async fn reboot_prompted(&self, s: &Session, message: &str) -> ApiResult<Vec<Delivery>> {
        let mut data = session_data(s);
        data["sequence"] = serde_json::json!(s.last_sequence);
        data["message"] = serde_json::json!(message);
        if let Stage::RebootPrompted { reboot_at, .. } = s.stage {
            data["rebootAt"] = serde_json::json!(crate::time::rfc3339(reboot_at));
        }
        let mut out = self
            .deliveries(s.tenant_id, WebhookEvent::RebootPrompted, data)
            .await?;
        for d in &mut out {
            d.session_id = Some(s.id);
            d.sequence = Some(s.last_sequence);
        }
        Ok(out)
    }

    /// `sequence`: the session event that announced the new status.
    pub async fn for_step(
        &self,
        s: &Session,
        before: SessionStatus,
        finished: bool,
        sequence: u64,
    ) -> ApiResult<Vec<Delivery>> {
        let mut out = Vec::new();
        if s.status != before {
            out.extend(
                self.session_deliveries(s, WebhookEvent::SessionStatusChanged, sequence)
                    .await?,
            );
        }
        if finished {
            out.extend(
                self.session_deliveries(s, WebhookEvent::SessionFinished, sequence)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Background loop: sends due deliveries, a few at a time, each with a time limit, so a
    /// slow receiver never holds up anything else. Attempts run in a `JoinSet` of the loop:
    /// when the loop ends, so do they.
    pub async fn run(self: Arc<Self>) {
        let client = match webhook_client(self.allow_private) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client");
                return;
            }
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(8));
        let mut in_flight = std::collections::HashSet::new();
        let mut attempts = tokio::task::JoinSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Id>();
        loop {
            while attempts.try_join_next().is_some() {}
            while let Ok(id) = done_rx.try_recv() {
                in_flight.remove(&id);
            }
            let (due, next_due) = self.due(&|id| in_flight.contains(&id)).await;
            for d in due {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                in_flight.insert(d.id);
                let hooks = self.clone();
                let client = client.clone();
                let done = done_tx.clone();
                attempts.spawn(async move {
                    let id = d.id;
                    hooks.claim_and_attempt(&client, d).await;
                    drop(permit);
                    let _ = done.send(id);
                    hooks.wake();
                });
            }
            let wait = next_due
                .map(|t| (t - self.clock.now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One pass now, as the loop makes it, waiting for its attempts: every due delivery is
    /// attempted (or claimed by another replica). Tests drive the worker with it.
    pub async fn send_due(&self) -> Result<(), String> {
        let client = webhook_client(self.allow_private).map_err(|e| e.to_string())?;
        let (due, _) = self.due(&|_| false).await;
        futures_util::stream::iter(due)
            .for_each_concurrent(8, |d| self.claim_and_attempt(&client, d))
            .await;
        Ok(())
    }

    /// The deliveries to attempt now, in order ([`sendable`]), and when the next one falls due.
    /// A delivery in flight here (`in_flight`) or leased by another replica holds back its
    /// session's later deliveries to the same webhook.
    async fn due(&self, in_flight: &(dyn Fn(Id) -> bool + Sync)) -> (Vec<Delivery>, Option<Time>) {
        let now = self.clock.now();
        let idx = IndexKey::new(PENDING_DELIVERIES, []);
        let pending: Vec<Delivery> = self
            .store
            .by_index::<Delivery>(&idx, None)
            .filter_map(|d| std::future::ready(d.ok()))
            .collect::<Vec<_>>()
            .await;
        let elsewhere: std::collections::HashSet<Id> = match &self.claims {
            Some(c) => pending
                .iter()
                .filter(|d| c.held_by_other(d.lease.as_ref(), now))
                .map(|d| d.id)
                .collect(),
            None => Default::default(),
        };
        let mut next_due: Option<Time> = None;
        let mut due = Vec::new();
        for d in sendable(pending, &|id| in_flight(id) || elsewhere.contains(&id)) {
            if d.next_attempt_at > now {
                next_due =
                    Some(next_due.map_or(d.next_attempt_at, |n: Time| n.min(d.next_attempt_at)));
            } else {
                due.push(d);
            }
        }
        (due, next_due)
    }

    /// Claims `d` (cluster mode), then attempts it.
    async fn claim_and_attempt(&self, client: &reqwest::Client, d: Delivery) {
        if let Some(d) = self.claim(d).await {
            self.attempt_delivery(client, d).await;
        }
    }

    /// Cluster mode: claims `d` for this replica (a lease in its record, written in one
    /// transaction that finds no other live lease) and returns it as claimed; `None` when
    /// another replica holds it or it is no longer due. On one node: `d` as it is.
    async fn claim(&self, d: Delivery) -> Option<Delivery> {
        let Some(claims) = self.claims else {
            return Some(d);
        };
        let now = self.clock.now();
        let claimed = self
            .store
            .write(|tx| {
                let Some(mut current) = tx.get::<Delivery, crate::error::ApiError>(&d.id)? else {
                    return Ok(None);
                };
                if !current.is_pending() || current.next_attempt_at > now {
                    return Ok(None);
                }
                let Some(lease) = claims.claim(current.lease.as_ref(), now) else {
                    return Ok(None);
                };
                current.lease = Some(lease);
                tx.put(&current)?;
                Ok::<_, TxError<crate::error::ApiError>>(Some(current))
            })
            .await;
        claimed.unwrap_or_else(|e| {
            tracing::warn!(delivery = %d.id, error = %e, "could not claim a webhook delivery; left for the next pass");
            None
        })
    }

    async fn attempt_delivery(&self, client: &reqwest::Client, mut d: Delivery) {
        let Ok(Some(hook)) = self.store.get::<Webhook>(&d.webhook_id).await else {
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
        let result = match self.refused_target(&hook.url) {
            Some(reason) => Err(reason),
            None => client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("user-agent", concat!("upkeep/", env!("CARGO_PKG_VERSION")))
                .header("Upkeep-Event", event_name)
                .header("Upkeep-Delivery", d.id.to_string())
                .header("Upkeep-Signature", signature(&hook.secret, t, &d.body))
                .body(d.body.clone())
                .send()
                .await
                .map_err(|e| delivery_error(&e)),
        };
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
            Err(reason) => {
                d.response_status = None;
                d.last_error = Some(reason);
            }
        }
        if d.status == DeliveryStatus::Pending {
            if now - d.created_at > chrono::Duration::hours(GIVE_UP_AFTER_HOURS) {
                d.status = DeliveryStatus::Failed;
            } else {
                d.next_attempt_at = now + backoff(d.attempts);
            }
        }
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.save_delivery(&d).await;
    }

    /// Why a stored URL must not be connected to, judged before each attempt. Host names are
    /// judged by the client's resolver on the addresses it connects to ([`GlobalOnlyResolver`]);
    /// IP literals never reach a resolver (hyper-util's `HttpConnector` connects to them
    /// directly), so they are judged here, by the same rule.
    fn refused_target(&self, url: &str) -> Option<String> {
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Some(format!("the URL cannot be parsed: {e}")),
        };
        if self.allow_private {
            return None;
        }
        let ip = literal_ip(&parsed)?;
        (!crate::net::is_global(ip)).then(|| {
            let refused = NotGlobal {
                host: ip.to_string(),
                ip,
            };
            format!("refused to connect: {refused}")
        })
    }

    /// Records the result of an attempt (the lease dropped) and flushes. In cluster mode only
    /// while the delivery is still stored and pending and this replica's result may stand
    /// ([`Claimant::may_settle`]).
    async fn save_delivery(&self, d: &Delivery) {
        let mut d = d.clone();
        d.lease = None;
        let (claims, now, finishes) = (self.claims, self.clock.now(), !d.is_pending());
        let d = &d;
        let r = self.store.write(|tx| {
            if let Some(claims) = &claims {
                let Some(current) = tx.get::<Delivery, crate::error::ApiError>(&d.id)? else {
                    return Ok(());
                };
                if !current.is_pending()
                    || !claims.may_settle(current.lease.as_ref(), now, finishes)
                {
                    return Ok(());
                }
            }
            tx.put(d)?;
            Ok::<_, TxError<crate::error::ApiError>>(())
        });
        if let Err(e) = r.await {
            tracing::error!(delivery = %d.id, error = %e, "could not save webhook delivery state");
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
                    Some(upkeep_core::session::ItemWhat::Software { software, .. }) => {
                        (Some(software.name.clone()), None)
                    }
                    Some(upkeep_core::session::ItemWhat::Task { task, .. }) => {
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
                .filter(|a| matches!(
                    a.status,
                    ActionStatus::Failed | ActionStatus::DetectionFailed
                ))
                .count()
        );
    }
    data
}

/// The client deliveries are sent with: a time limit, redirects never followed (a redirect
/// would lead past every check here), no proxy (through a proxy the resolver would judge the
/// proxy, not the receiver), and, unless `--allow-private-webhooks`, the resolver that refuses
/// names resolving to anything not globally routable.
fn webhook_client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if allow_private {
        builder.build()
    } else {
        builder.dns_resolver(GlobalOnlyResolver).build()
    }
}

/// A webhook target whose address is not globally routable (`crate::net::is_global`).
#[derive(Debug)]
pub struct NotGlobal {
    pub host: String,
    pub ip: IpAddr,
}

impl std::fmt::Display for NotGlobal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.ip;
        if self.host == ip.to_string() {
            write!(f, "{ip} is")?;
        } else {
            write!(f, "{} resolves to {ip}, which is", self.host)?;
        }
        write!(
            f,
            " a loopback, private or otherwise not globally routable address; start the server with --allow-private-webhooks to allow it"
        )
    }
}

impl std::error::Error for NotGlobal {}

/// Resolves webhook host names at connect time and refuses the whole answer when any address
/// in it is not globally routable, so a name that resolves (or is re-pointed later: DNS
/// rebinding) to an inside address is never connected to; the addresses checked are the ones
/// the client connects to.
#[derive(Debug, Default, Clone, Copy)]
pub struct GlobalOnlyResolver;

impl reqwest::dns::Resolve for GlobalOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(a) = addrs.iter().find(|a| !crate::net::is_global(a.ip())) {
                return Err(Box::new(NotGlobal { host, ip: a.ip() }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What a failed send is recorded as: a refusal by the resolver says so plainly, anything
/// else names the whole cause chain (reqwest's own message alone hides it).
fn delivery_error(e: &reqwest::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut chain = Vec::new();
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<NotGlobal>() {
            return format!("refused to connect: {refused}");
        }
        chain.push(c.to_string());
        cause = c.source();
    }
    format!("could not reach receiver: {}", chain.join(": "))
}

/// The host of `url` when it is an IP address literal (the url crate has already read every
/// spelling of one: `0x7f.1`, `2130706433`, `[::ffff:7f00:1]`).
fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v) => Some(IpAddr::V4(v)),
        url::Host::Ipv6(v) => Some(IpAddr::V6(v)),
        url::Host::Domain(_) => None,
    }
}

/// Checks a new webhook URL and returns it as it will be used (the WHATWG serialisation, the
/// way the HTTP client reads it: `\` is `/`, every IPv4 spelling is normalised). Refuses
/// user names and passwords (a classic confusion vector; tokens belong in the path or query)
/// and, unless `--allow-private-webhooks`, any target whose address is not globally routable
/// (an MSP-wide key must not become a way to probe the server's own network). Connect time
/// checks again ([`GlobalOnlyResolver`], `App::refused_target`).
pub async fn check_url(url: &str, allow_private: bool) -> Result<String, crate::error::ApiError> {
    use crate::error::ApiError;
    let parsed =
        url::Url::parse(url).map_err(|e| ApiError::bad("url", format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::bad("url", "must be an http:// or https:// URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad(
            "url",
            "must not contain a user name or password; put a token in the path or query instead",
        ));
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(ApiError::bad("url", "has no host"));
    };
    if !allow_private {
        let refused = if let Some(ip) = literal_ip(&parsed) {
            (!crate::net::is_global(ip)).then(|| NotGlobal {
                host: ip.to_string(),
                ip,
            })
        } else {
            let port = parsed.port_or_known_default().unwrap_or(80);
            // A name that does not resolve yet (a receiver set up after its webhook, split
            // DNS) is accepted: every delivery is judged again, on the addresses it connects
            // to. A name that resolves to a private address is refused now.
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    tracing::info!(host = %crate::logsafe::log_value(host), error = %e, "webhook host does not resolve yet");
                    Vec::new()
                }
            };
            addrs
                .iter()
                .find(|a| !crate::net::is_global(a.ip()))
                .map(|a| NotGlobal {
                    host: host.to_string(),
                    ip: a.ip(),
                })
        };
        if let Some(refused) = refused {
            return Err(ApiError::bad("url", refused.to_string()));
        }
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve as _;

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_inside() {
        let name: reqwest::dns::Name = "localhost".parse().expect("a host name");
        let err = match GlobalOnlyResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refused = err
            .downcast_ref::<NotGlobal>()
            .expect("a NotGlobal refusal");
        assert_eq!(refused.host, "localhost");
        assert!(refused.ip.is_loopback(), "{refused}");
        assert!(
            refused.to_string().contains("localhost resolves to"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn creation_refuses_inside_targets_userinfo_and_other_schemes() {
        for url in [
            "http://127.0.0.1:9\\@8.8.8.8/",
            "http://[::ffff:0.0.0.0]:9/",
            "http://[::ffff:169.254.169.254]/latest/meta-data/",
            "http://[64:ff9b::7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[2002:7f00:1::]/",
            "http://[2001::1]/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0/",
            "http://localhost:9/",
            "http://user@8.8.8.8/",
            "http://:pass@8.8.8.8/",
            "ftp://8.8.8.8/",
            "file:///etc/passwd",
        ] {
            let err = check_url(url, false).await.expect_err(url);
            assert!(
                matches!(&err, crate::error::ApiError::BadInput { field, .. } if field == "url"),
                "{url}: {err:?}"
            );
        }
        assert!(
            check_url("http://user@127.0.0.1/", true).await.is_err(),
            "userinfo is refused even with --allow-private-webhooks"
        );
    }

    #[tokio::test]
    async fn creation_keeps_the_url_as_the_client_reads_it() {
        assert_eq!(
            check_url("HTTP://8.8.8.8:80/a\\b?x=1", false).await.ok(),
            Some("http://8.8.8.8/a/b?x=1".to_string())
        );
        assert_eq!(
            check_url("http://127.0.0.1:9\\@x/", true).await.ok(),
            Some("http://127.0.0.1:9/@x/".to_string())
        );
    }
}
