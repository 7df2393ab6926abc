//! `fanout`: many `graphql-transport-ws` subscribers on one tenant's sessions while sessions
//! run.
//!
//! Latency method: the client runs in the server's process, so both read the same wall clock.
//! Each event carries `at`, the instant the engine step that produced it began (before the
//! step is written and flushed); a subscriber stamps the wall clock as soon as the frame
//! arrives. `receive − at` is the event's latency as a dashboard sees it: persistence, the
//! broadcast, the per-subscriber GraphQL execution and serialization, the WebSocket write and
//! read. A second figure, the spread, is each receipt's delay behind the first subscriber to
//! receive the same (sessionId, sequence) — the cost of the fan-out alone.
//!
//! The load is paced: simulated agents "run" each job for `think` (±50 % jitter) and sessions
//! start staggered, so the event rate is the one printed (`events_per_s`), not whatever the
//! box can produce; `sessions` measures the unpaced pace.

use crate::agent::AgentOptions;
use crate::report::{Figure, Latencies, note};
use crate::sessions::Fleet;
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const S: &str = "fanout";
const QUERY: &str = "subscription($t: ID!) { maintenanceSessionUpdates(tenantId: $t) { sessionId sequence status at } }";

struct Size {
    subscribers: usize,
    sessions: usize,
    think: Duration,
}

impl Size {
    fn new(quick: bool) -> Size {
        if quick {
            Size {
                subscribers: 200,
                sessions: 10,
                think: Duration::from_millis(500),
            }
        } else {
            Size {
                subscribers: 1000,
                sessions: 10,
                think: Duration::from_millis(1000),
            }
        }
    }
}

/// One event as one subscriber received it.
struct Receipt {
    event: (u64, u64),
    at_us: i64,
    wall_us: i64,
    mono: Instant,
}

#[derive(Default)]
struct Counters {
    subscribed: AtomicU64,
    receipts: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let size = Size::new(quick);
    let mut fleet = Fleet::start(
        S,
        size.sessions,
        AgentOptions {
            think: size.think,
            wait_seconds: 25,
        },
    )
    .await?;
    let ws_url = format!(
        "{}/graphql/ws",
        fleet.endpoint.url.replacen("http", "ws", 1)
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    note(S, format!("connecting {} subscribers", size.subscribers));
    let mut subs = Vec::new();
    for chunk in (0..size.subscribers).collect::<Vec<_>>().chunks(50) {
        let before = counters.subscribed.load(Ordering::Relaxed);
        for _ in chunk {
            subs.push(tokio::spawn(subscriber(
                ws_url.clone(),
                fleet.admin.clone(),
                fleet.tenant.clone(),
                counters.clone(),
                stop_rx.clone(),
            )));
        }
        let want = before + chunk.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters.subscribed.load(Ordering::Relaxed) < want {
            if Instant::now() > deadline || subs.iter().any(|s| s.is_finished()) {
                bail!("subscribers could not connect");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // `subscribe` has no acknowledgement; give the server a moment to register the last ones.
    tokio::time::sleep(Duration::from_millis(500)).await;

    note(
        S,
        format!(
            "running {} sessions (jobs take {:?} ±50 %)",
            size.sessions, size.think
        ),
    );
    let gap = size.think / size.sessions as u32;
    for (i, c) in fleet.computers.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        fleet.start_sessions(std::slice::from_ref(c)).await?;
    }
    let waited = crate::server::wait_passed(
        &fleet.endpoint,
        &fleet.admin,
        size.sessions as u64,
        Duration::from_secs(300),
    )
    .await;
    let agents = fleet.check_agents();
    waited?;
    agents?;
    // Let the last events reach every subscriber: until no receipt arrives for half a second.
    let mut last = counters.receipts.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counters.receipts.load(Ordering::Relaxed);
        if now == last || Instant::now() > drain_deadline {
            break;
        }
        last = now;
    }
    let _ = stop_tx.send(true);
    let mut all: Vec<Vec<Receipt>> = Vec::new();
    for s in subs {
        all.push(s.await??);
    }
    let errors = counters.errors.load(Ordering::Relaxed);
    fleet.stop().await;

    let mut first: HashMap<(u64, u64), Instant> = HashMap::new();
    for r in all.iter().flatten() {
        first
            .entry(r.event)
            .and_modify(|t| *t = (*t).min(r.mono))
            .or_insert(r.mono);
    }
    let events = first.len();
    let receipts: usize = all.iter().map(Vec::len).sum();
    let expected = events * size.subscribers;
    let mut latency = Latencies::default();
    let mut spread = Latencies::default();
    let mut first_at = i64::MAX;
    let mut last_wall = i64::MIN;
    for r in all.iter().flatten() {
        latency.push_micros(u64::try_from(r.wall_us - r.at_us).unwrap_or(0));
        if let Some(f) = first.get(&r.event) {
            spread.record(r.mono.duration_since(*f));
        }
        first_at = first_at.min(r.at_us);
        last_wall = last_wall.max(r.wall_us);
    }
    if latency.is_empty() {
        bail!("no subscriber received an event");
    }
    let span = (last_wall - first_at) as f64 / 1e6;
    Ok(vec![
        Figure::new(S, "subscribers", size.subscribers as f64, "subscribers"),
        Figure::new(S, "sessions", size.sessions as f64, "sessions"),
        Figure::new(S, "events", events as f64, "events"),
        Figure::new(S, "events_per_s", events as f64 / span, "1/s"),
        Figure::new(S, "deliveries_per_s", receipts as f64 / span, "1/s"),
        Figure::new(
            S,
            "missed_deliveries",
            (expected - receipts.min(expected)) as f64,
            "deliveries",
        ),
        Figure::new(S, "subscription_errors", errors as f64, "errors"),
        Figure::new(S, "latency_p50_ms", latency.quantile_ms(0.50), "ms"),
        Figure::new(S, "latency_p99_ms", latency.quantile_ms(0.99), "ms"),
        Figure::new(S, "spread_p99_ms", spread.quantile_ms(0.99), "ms"),
    ])
}

fn key_of(session_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session_id.hash(&mut h);
    h.finish()
}

/// One subscriber: connect, `connection_init` with the token, subscribe, record every event
/// until told to stop.
async fn subscriber(
    url: String,
    token: String,
    tenant: String,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Receipt>> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().context("header")?,
    );
    // A small read buffer: tungstenite zero-fills the whole buffer (128 KiB by default) before
    // every read, which would make this client, not the server, the cost of the run.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("connection_ack") => break,
                    Some("ping") => ws.send(send(json!({"type": "pong"}))).await?,
                    _ => bail!("no connection_ack: {v}"),
                }
            }
            Some(Ok(_)) => continue,
            other => bail!("websocket ended before connection_ack: {other:?}"),
        }
    }
    ws.send(send(json!({"id": "1", "type": "subscribe", "payload": {"query": QUERY, "variables": {"t": tenant}}})))
        .await?;
    counters.subscribed.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let wall_us = chrono::Utc::now().timestamp_micros();
        let mono = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("the server closed the subscription"),
        };
        let v: Value = serde_json::from_str(text.as_str())?;
        match v["type"].as_str() {
            Some("next") => {
                let e = &v["payload"]["data"]["maintenanceSessionUpdates"];
                if e.is_null() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = e["at"]
                    .as_str()
                    .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                    .context("event without `at`")?;
                out.push(Receipt {
                    event: (
                        key_of(e["sessionId"].as_str().unwrap_or_default()),
                        e["sequence"].as_u64().unwrap_or(0),
                    ),
                    at_us: at.timestamp_micros(),
                    wall_us,
                    mono,
                });
                counters.receipts.fetch_add(1, Ordering::Relaxed);
            }
            Some("ping") => ws.send(send(json!({"type": "pong"}))).await?,
            Some("error") | Some("complete") => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(out)
}
