//! Prometheus metrics, hand-written in the text exposition format (a handful of counters and
//! one histogram family do not earn a metrics crate on a 2-core build).

use crate::services::App;
use crate::services::metrics::BUCKETS;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Middleware: counts requests and their durations per matched route.
pub async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let start = Instant::now();
    let resp = next.run(req).await;
    app.metrics.observe(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Whether the request may read `/metrics`: with `--metrics-token`, only with
/// `Authorization: Bearer <token>`. Compared in constant time over SHA-256 digests, so
/// neither the token's bytes nor its length leak through timing.
fn authorised(app: &App, headers: &HeaderMap) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(token) = &app.config.metrics_token else {
        return true;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(token.as_bytes()))
        .into()
}

pub async fn render(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        let mut r = crate::api::agent::error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "/metrics needs Authorization: Bearer <the --metrics-token>",
        );
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let mut out = String::new();
    http_families(&app, &mut out);
    gauges(&app, &mut out);
    store_and_outbox_families(&app, &mut out).await;
    file_families(&app, &mut out).await;
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// Requests by route and status, and their duration histograms.
fn http_families(app: &App, out: &mut String) {
    let m = &app.metrics;
    let _ = writeln!(
        out,
        "# HELP upkeep_http_requests_total HTTP requests by route and status.\n# TYPE upkeep_http_requests_total counter"
    );
    for ((route, status), n) in m.requests().iter() {
        let _ = writeln!(
            out,
            "upkeep_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            esc(route)
        );
    }
    let _ = writeln!(
        out,
        "# HELP upkeep_http_request_duration_seconds HTTP request durations by route.\n# TYPE upkeep_http_request_duration_seconds histogram"
    );
    for (route, h) in m.durations().iter() {
        let r = esc(route);
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "upkeep_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "upkeep_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "upkeep_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "upkeep_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
            h.count
        );
    }
}

/// One-value gauges and counters: sessions, agents, store operations, events, mails.
// long: one table, a row per metric; splitting it would only split the list.
fn gauges(app: &App, out: &mut String) {
    let m = &app.metrics;
    let (writes, reads) = app.store.op_counts();
    let gauges: [(&str, &str, &str, u64); 15] = [
        (
            "upkeep_agent_polls_total",
            "counter",
            "Agent polls answered.",
            app.agents.polls_total(),
        ),
        (
            "upkeep_agent_tokens",
            "gauge",
            "Agent tokens held in memory.",
            app.agents.token_count() as u64,
        ),
        (
            "upkeep_agent_last_seen_written_total",
            "counter",
            "Computers whose lastSeenAt was written back to the store.",
            app.agents.written_back_total(),
        ),
        (
            "upkeep_agents_online",
            "gauge",
            "Computers whose agent is polling.",
            app.agents.online_count() as u64,
        ),
        (
            "upkeep_job_results_total",
            "counter",
            "Job results recorded.",
            m.job_results.load(Ordering::Relaxed),
        ),
        (
            "upkeep_session_events_total",
            "counter",
            "Session events published.",
            m.session_events.load(Ordering::Relaxed),
        ),
        (
            "upkeep_session_steps_stale_total",
            "counter",
            "Session steps dropped because another replica stored a step of the session first.",
            m.session_steps_stale.load(Ordering::Relaxed),
        ),
        (
            "upkeep_sessions_finished_total",
            "counter",
            "Sessions that reached a terminal status.",
            m.sessions_finished.load(Ordering::Relaxed),
        ),
        (
            "upkeep_sessions_active",
            "gauge",
            "Unfinished sessions.",
            app.runtime.active_count() as u64,
        ),
        (
            "upkeep_sessions_running",
            "gauge",
            "Sessions holding a running slot.",
            app.runtime.running_count() as u64,
        ),
        (
            "upkeep_sessions_queued",
            "gauge",
            "Sessions waiting for a slot.",
            app.runtime.queued_count() as u64,
        ),
        (
            "upkeep_mails_sent_total",
            "counter",
            "Mails delivered.",
            app.outbox.counts().0,
        ),
        (
            "upkeep_mail_failures_total",
            "counter",
            "Failed mail attempts.",
            app.outbox.counts().1,
        ),
        (
            "upkeep_store_writes_total",
            "counter",
            "Store write transactions.",
            writes,
        ),
        ("upkeep_store_reads_total", "counter", "Store reads.", reads),
    ];
    for (name, kind, help, v) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// Store flushes, sessions by status, the mail outbox and webhook attempts.
async fn store_and_outbox_families(app: &App, out: &mut String) {
    let (flushes, flush_seconds) = app.store.flush_counts();
    let _ = writeln!(
        out,
        "# HELP upkeep_store_flushes_total Group-commit flushes (fsyncs) of the store.\n# TYPE upkeep_store_flushes_total counter\nupkeep_store_flushes_total {flushes}\n# HELP upkeep_store_flush_seconds_total Time spent in store flushes.\n# TYPE upkeep_store_flush_seconds_total counter\nupkeep_store_flush_seconds_total {flush_seconds}"
    );
    let _ = writeln!(
        out,
        "# HELP upkeep_sessions_by_status Sessions in the store by status.\n# TYPE upkeep_sessions_by_status gauge"
    );
    // A count the store cannot give is left out (and logged), never reported as 0: an empty
    // outbox and a broken store must not look alike to an alert.
    // From the store's session counters: a few entries, not one per session.
    match app.store.session_counts(None).await {
        Ok(counts) => {
            for st in upkeep_core::session::SessionStatus::ALL {
                let n = counts.get(&st.code()).copied().unwrap_or(0);
                let status = upkeep_core::engine::status_name(st);
                let _ = writeln!(out, "upkeep_sessions_by_status{{status=\"{status}\"}} {n}");
            }
        }
        Err(e) => tracing::error!(error = %e, "metrics: cannot count sessions by status"),
    }
    let _ = writeln!(
        out,
        "# HELP upkeep_outbox_depth Mails waiting to be sent.\n# TYPE upkeep_outbox_depth gauge"
    );
    match app.outbox.depth().await {
        Ok(depth) => {
            let _ = writeln!(out, "upkeep_outbox_depth {depth}");
        }
        Err(e) => tracing::error!(error = %e, "metrics: cannot count the outbox"),
    }
    let _ = writeln!(
        out,
        "# HELP upkeep_webhook_attempts_total Webhook delivery attempts.\n# TYPE upkeep_webhook_attempts_total counter\nupkeep_webhook_attempts_total {}",
        app.webhooks.attempts()
    );
}

/// Installer files held (a walk of the file store's directories), left out when unreadable.
async fn file_families(app: &App, out: &mut String) {
    match app.files.usage().await {
        Ok((files, bytes)) => {
            let _ = writeln!(
                out,
                "# HELP upkeep_installer_files Installer files stored.\n# TYPE upkeep_installer_files gauge\nupkeep_installer_files {files}\n# HELP upkeep_installer_file_bytes Bytes of the stored installer files.\n# TYPE upkeep_installer_file_bytes gauge\nupkeep_installer_file_bytes {bytes}"
            );
        }
        Err(e) => tracing::error!(error = %e, "metrics: cannot list the installer files"),
    }
}
