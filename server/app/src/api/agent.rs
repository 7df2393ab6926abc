//! The agent protocol over HTTP: enrollment, long-polls, results, output and job status.
//! Requests are checked here (bearer token, body size, JSON shape); what they mean is decided in
//! `services::fleet` and the session runtime.

use crate::auth::ip_key;
use crate::error::ApiError;
use crate::logsafe::log_value;
use crate::services::App;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use upkeep_agent_protocol::{self as proto, ErrorBody};
use upkeep_core::domain::*;
use upkeep_core::engine::Event;
use upkeep_core::session::{JobRecord, JobState};

use crate::services::agents::*;
use crate::services::fleet::*;

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.into(),
            error: msg.into(),
        }),
    )
        .into_response()
}

fn reject(
    status: StatusCode,
    code: &str,
    msg: impl Into<String>,
    peer: Option<SocketAddr>,
    route: &str,
) -> Response {
    let msg = msg.into();
    tracing::info!(route, status = status.as_u16(), peer = ?peer, reason = %log_value(&msg), "agent request rejected");
    error(status, code, msg)
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/agent/v1/enroll", post(enroll))
        .route("/agent/v1/poll", post(poll))
        .route("/agent/v1/jobs/{job_id}/result", post(result))
        .route("/agent/v1/jobs/{job_id}/output", post(output))
        .route("/agent/v1/jobs/{job_id}", axum::routing::get(job_status))
        .route("/agent/v1/files/{sha256}", axum::routing::get(file))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Reads a JSON body of at most 1 MiB, after authentication.
async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    route: &str,
    peer: Option<SocketAddr>,
) -> Result<T, Response> {
    let bytes = match axum::body::to_bytes(body, proto::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Err(reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the body is larger than 1 MiB",
                peer,
                route,
            ));
        }
    };
    // The version first (a body of another version may have another shape), then the message,
    // both straight from the bytes: no JSON tree is built per poll.
    let VersionProbe(version) = serde_json::from_slice(&bytes).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("the body is not JSON: {e}"),
            peer,
            route,
        )
    })?;
    match version {
        Some(v) if v == u64::from(proto::PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED_PROTOCOL",
                format!("protocolVersion {v} is not supported; this server speaks 1"),
                peer,
                route,
            ));
        }
        None => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "protocolVersion is missing",
                peer,
                route,
            ));
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MESSAGE",
            format!("the body is not a valid message: {e}"),
            peer,
            route,
        )
    })
}

/// A body's `protocolVersion` when it is a JSON object with an unsigned integer there (`None`
/// for any other JSON); the rest of the body is skipped, not kept.
struct VersionProbe(Option<u64>);

impl<'de> serde::Deserialize<'de> for VersionProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(VersionProbeVisitor)
    }
}

struct VersionProbeVisitor;

impl<'de> serde::de::Visitor<'de> for VersionProbeVisitor {
    type Value = VersionProbe;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VersionProbe, A::Error> {
        use serde::de::IgnoredAny;
        let mut version = None;
        while let Some(key) = map.next_key::<IsVersionKey>()? {
            if key.0 {
                // The last one counts, as in a JSON object read whole.
                version = map.next_value::<serde_json::Value>()?.as_u64();
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(VersionProbe(version))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<VersionProbe, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(VersionProbe(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }

    fn visit_unit<E>(self) -> Result<VersionProbe, E> {
        Ok(VersionProbe(None))
    }
}

/// Whether an object key is `protocolVersion` (read without keeping it).
struct IsVersionKey(bool);

impl<'de> serde::Deserialize<'de> for IsVersionKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = IsVersionKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, k: &str) -> Result<IsVersionKey, E> {
                Ok(IsVersionKey(k == "protocolVersion"))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn peer_of(req: &Request<Body>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn enroll(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    const ROUTE: &str = "/agent/v1/enroll";
    let peer = peer_of(&req);
    let ip = ip_key(peer.map(|p| p.ip()));
    let r: proto::EnrollRequest = match read_json(req.into_body(), ROUTE, peer).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    // A valid key is never throttled (CONTRACT §3): keys are secrets with their own expiry
    // and use limits, and an office that mistyped a key must still enroll with the right one.
    // A throttled address only learns that an unknown key is refused.
    if let Err(wait) = app.enroll_by_ip.check(&ip)
        && !app.enrollment_key_known(&r.enrollment_key).await
    {
        return reject(
            StatusCode::TOO_MANY_REQUESTS,
            "THROTTLED",
            format!("too many failed enrollments; retry in {wait} s"),
            peer,
            ROUTE,
        );
    }
    // What agents say about themselves ends up in names, mails and logs: control characters
    // become spaces rather than refusing the machine.
    let r = proto::EnrollRequest {
        hostname: clean_text(&r.hostname),
        os: clean_text(&r.os),
        agent_version: clean_text(&r.agent_version),
        ..r
    };
    if r.machine_id.trim().is_empty()
        || [&r.machine_id, &r.hostname, &r.os, &r.agent_version]
            .iter()
            .any(|s| s.len() > 256)
    {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MESSAGE",
            "machineId (not empty), hostname, os and agentVersion must be at most 256 bytes",
            peer,
            ROUTE,
        );
    }
    match app.enroll(&r, peer.map(|p| p.ip())).await {
        Ok(resp) => {
            app.enroll_by_ip.succeed(&ip);
            Json(resp).into_response()
        }
        Err(e) => {
            if matches!(e, ApiError::Unauthenticated(_) | ApiError::Forbidden(_)) {
                app.enroll_by_ip.fail(&ip);
            }
            reject(e.status(), e.code(), e.to_string(), peer, ROUTE)
        }
    }
}

/// Authenticates an agent call from its header alone (before the body is read): 401 for an
/// unknown token; in cluster mode 429 when unknown tokens come faster than the store may be
/// asked about them (`services::agent_tokens`).
async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    route: &str,
) -> Result<Id, Response> {
    let Some(token) = bearer(headers) else {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "missing Authorization: Bearer <agentToken>",
            peer,
            route,
        ));
    };
    match app.agent_for_token(token).await {
        Ok(TokenCheck::Agent(c)) => Ok(c),
        Ok(TokenCheck::Unknown) => Err(reject(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "unknown or revoked agent token; enroll again",
            peer,
            route,
        )),
        Ok(TokenCheck::Busy) => {
            let mut r = reject(
                StatusCode::TOO_MANY_REQUESTS,
                "THROTTLED",
                "too many unknown agent tokens; retry later",
                peer,
                route,
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            Err(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "agent token not looked up");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the agent token could not be checked; retry",
            ))
        }
    }
}

/// How soon a held poll tries again to claim jobs whose claim failed.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

// long: the poll from the door to the answer (auth, presence, hand-out, the held wait with its
// claim retry); split, each piece would need most of the others' state.
async fn poll(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    const ROUTE: &str = "/agent/v1/poll";
    let peer = peer_of(&req);
    let (parts, body) = req.into_parts();
    let computer = match authenticate(&app, &parts.headers, peer, ROUTE).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let token = bearer(&parts.headers).unwrap_or_default();
    let r: proto::PollRequest = match read_json(body, ROUTE, peer).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let now = app.clock.now();
    if let Some(refused) = bad_inventory(&r, computer, now, peer, ROUTE) {
        return refused; // before anything of the poll is taken
    }
    // Presence, rate limit and inventory change detection, all in memory.
    let wait = r.wait_seconds.min(proto::MAX_WAIT_SECONDS);
    let facts = PollFacts {
        inventory: r.inventory.as_ref(),
        reboot_pending: r.reboot_pending,
        wait: wait > 0,
    };
    let Some(Polled {
        notify,
        came_online,
        inventory_changed,
        reboot_pending_changed,
    }) = app.agents.polled(computer, now, facts)
    else {
        return reject(
            StatusCode::TOO_MANY_REQUESTS,
            "THROTTLED",
            "polling too fast; at most 20 polls per second",
            peer,
            ROUTE,
        );
    };
    if inventory_changed && let Some(inv) = r.inventory.clone() {
        app.note_inventory(computer, inv);
    }
    // A session waiting for its computer (offline, or back from a reboot) looks again.
    if came_online || reboot_pending_changed {
        app.computer_came_online(computer, came_online);
    }
    app.queue_stored_jobs(computer).await;
    let mut jobs = app.hand_out(computer).await;
    tracing::debug!(replica = %app.replica_tag(), jobs = jobs.len(), wait = r.wait_seconds, "poll");
    if let Some(notify) = notify.filter(|_| jobs.is_empty()) {
        // A held poll keeps only its token, not the request's headers and extensions.
        let token = token.to_owned();
        drop(parts);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
        // Released on drop: hyper drops this future when the agent hangs up mid-poll.
        let _hold = Holding::new(&app, computer);
        loop {
            let notified = notify.notified();
            // Jobs still queued here after a hand-out are ones whose claim failed (the store
            // did not answer): tried again shortly, as no new job may come to wake this poll.
            let retry = match app.agents.jobs_queued_for(computer) {
                0 => deadline,
                _ => deadline.min(tokio::time::Instant::now() + CLAIM_RETRY),
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(retry) => {}
                _ = app.shutdown.cancelled() => {}
            }
            // A token revoked while its poll was held gets no work through that poll.
            if app.agents.computer_for_token(&token) != Some(computer) {
                return reject(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "unknown or revoked agent token; enroll again",
                    peer,
                    ROUTE,
                );
            }
            jobs = app.hand_out(computer).await;
            tracing::debug!(replica = %app.replica_tag(), jobs = jobs.len(), "held poll woke");
            if !jobs.is_empty()
                || tokio::time::Instant::now() >= deadline
                || app.shutdown.is_cancelled()
            {
                break;
            }
        }
    }
    if !jobs.is_empty() {
        tracing::info!(computer = %computer, jobs = jobs.len(), "jobs handed out");
    }
    Json(proto::PollResponse { jobs }).into_response()
}

/// 422 for a poll whose inventory breaks the protocol's limits (a conforming agent cuts its
/// own lists), before anything of it is taken.
fn bad_inventory(
    r: &proto::PollRequest,
    computer: Id,
    now: upkeep_core::domain::Time,
    peer: Option<SocketAddr>,
    route: &str,
) -> Option<Response> {
    let inv = r.inventory.as_ref()?;
    let e =
        upkeep_core::inventory::InventoryRecord::from_report(computer, computer, &inv.details, now)
            .err()?;
    Some(reject(
        StatusCode::UNPROCESSABLE_ENTITY,
        "BAD_INVENTORY",
        e.to_string(),
        peer,
        route,
    ))
}

/// A long-poll held open: the computer counts as online while any is.
struct Holding<'a> {
    app: &'a App,
    computer: Id,
}

impl<'a> Holding<'a> {
    fn new(app: &'a App, computer: Id) -> Holding<'a> {
        set_holding(app, computer, 1);
        Holding { app, computer }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        set_holding(self.app, self.computer, -1);
    }
}

fn set_holding(app: &App, computer: Id, delta: i32) {
    app.agents.set_holding(computer, delta);
}

/// `GET /agent/v1/jobs/{jobId}`: is a running job still wanted? Not once its result is no
/// longer expected (the session was cancelled or gave up on it): the agent then stops it.
async fn job_status(
    State(app): State<Arc<App>>,
    job_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request<Body>,
) -> Response {
    const ROUTE: &str = "/agent/v1/jobs/{jobId}";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let job_id = job_id.map(|Path(j)| j).unwrap_or_default();
    let record = match job_id.parse::<Id>() {
        Ok(job) => app.store.get::<JobRecord>(&job).await,
        Err(_) => Ok(None),
    };
    match record {
        Ok(Some(r)) if r.computer_id == computer => Json(proto::JobStatus {
            wanted: !matches!(r.state, JobState::Done { .. }),
        })
        .into_response(),
        Ok(_) => reject(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no job {job_id}"),
            peer,
            ROUTE,
        ),
        Err(e) => {
            tracing::error!(error = %e, "job status not read");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the job could not be read; retry",
            )
        }
    }
}

/// `GET /agent/v1/files/{sha256}`: an installer file for a step, whole or from an offset
/// (`Range: bytes=N-`, 206), when this computer may have it (`services::files::servable_to`);
/// any other name is 404, whether or not the server holds it.
async fn file(
    State(app): State<Arc<App>>,
    sha256: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request<Body>,
) -> Response {
    const ROUTE: &str = "/agent/v1/files/{sha256}";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let sha256 = sha256.map(|Path(s)| s).unwrap_or_default();
    let not_found = || {
        reject(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no file {}", log_value(&sha256)),
            peer,
            ROUTE,
        )
    };
    let Some(path) = app.files.path_of(&sha256) else {
        return not_found();
    };
    match crate::services::files::servable_to(&app, computer, &sha256).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return crate::api::files::internal(e),
    }
    match crate::api::files::serve(&path, req.headers()).await {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => not_found(),
        Err(e) => crate::api::files::internal(e),
    }
}

async fn result(
    State(app): State<Arc<App>>,
    // A job id that is not even UTF-8 is just another unknown job: answered after
    // authentication, as JSON, like every agent error (axum's own rejection is plain text).
    job_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request<Body>,
) -> Response {
    const ROUTE: &str = "/agent/v1/jobs/{jobId}/result";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r: proto::JobResult = match read_json(req.into_body(), ROUTE, peer).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let job_id = job_id.map(|Path(j)| j).unwrap_or_default();
    let Ok(job) = job_id.parse::<Id>() else {
        return reject(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no job {job_id}"),
            peer,
            ROUTE,
        );
    };
    if let Some(pending) = r.reboot_pending {
        // Before the result is applied: a session about to execute reboots first.
        app.agents.note_reboot_pending(computer, pending);
    }
    match app.job_result(computer, job, r.outcome).await {
        Ok(accepted) => Json(proto::ResultAck { accepted }).into_response(),
        Err(ApiError::NotFound(m)) => reject(StatusCode::NOT_FOUND, "NOT_FOUND", m, peer, ROUTE),
        Err(e) => {
            tracing::error!(job = %job, error = %e, "result not recorded");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the result could not be recorded; retry",
            )
        }
    }
}

/// `POST /agent/v1/jobs/{jobId}/output`: a piece of a running step's output, shown as a log
/// line of its session (`maintenanceSessionUpdates`). Best effort: the result carries the
/// whole output, and that is what is stored.
async fn output(
    State(app): State<Arc<App>>,
    job_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request<Body>,
) -> Response {
    const ROUTE: &str = "/agent/v1/jobs/{jobId}/output";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c: proto::OutputChunk = match read_json(req.into_body(), ROUTE, peer).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    if c.chunk.len() > proto::MAX_CHUNK_BYTES {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("a chunk is at most {} bytes", proto::MAX_CHUNK_BYTES),
            peer,
            ROUTE,
        );
    }
    if c.seq == 0 {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MESSAGE",
            "seq starts at 1",
            peer,
            ROUTE,
        );
    }
    let job_id = job_id.map(|Path(j)| j).unwrap_or_default();
    let Ok(job) = job_id.parse::<Id>() else {
        return reject(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no job {}", log_value(&job_id)),
            peer,
            ROUTE,
        );
    };
    let verdict = match chunk_verdict(&app, computer, job, &c).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    answer_chunk(&app, job, c.stream, verdict, peer).await
}
/// What the gateway makes of a chunk: a running step's output to show, a repeat, too fast, or
/// a job that is not (or no longer) running here. A job the gateway does not hold is looked up
/// in the store: done, cancelled or lost ones are refused politely (the agent may stop).
#[allow(clippy::result_large_err)] // the error is the finished 503 answer
async fn chunk_verdict(
    app: &App,
    computer: Id,
    job: Id,
    c: &proto::OutputChunk,
) -> Result<ChunkVerdict, Response> {
    let mut verdict = app.agents.take_chunk(computer, job, c, None);
    if let ChunkVerdict::NotRunning = verdict {
        match app.store.get::<JobRecord>(&job).await {
            Ok(Some(r)) if r.computer_id == computer => {
                verdict = app.agents.take_chunk(computer, job, c, Some(&r));
                if let ChunkVerdict::NotRunning = verdict {
                    // Done, cancelled or lost: the agent may stop streaming it.
                    verdict = ChunkVerdict::NotTaken;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(job = %job, error = %e, "job not readable");
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the chunk could not be checked; retry",
                ));
            }
        }
    }
    Ok(verdict)
}

/// The answer to a chunk, after applying a shown one to its session.
async fn answer_chunk(
    app: &Arc<App>,
    job: Id,
    stream: proto::OutputStream,
    verdict: ChunkVerdict,
    peer: Option<SocketAddr>,
) -> Response {
    const ROUTE: &str = "/agent/v1/jobs/{jobId}/output";
    let ack = |accepted: bool| Json(proto::OutputAck { accepted }).into_response();
    match verdict {
        ChunkVerdict::Show { session, text } => {
            match app
                .apply(session, Event::Output { job, stream, text })
                .await
            {
                Ok(_) => ack(true),
                Err(e) => {
                    tracing::warn!(job = %job, error = %e, "output chunk not recorded");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UNAVAILABLE",
                        "the chunk could not be recorded",
                    )
                }
            }
        }
        ChunkVerdict::Taken => ack(true),
        ChunkVerdict::NotTaken => ack(false),
        ChunkVerdict::Throttled => {
            let mut r = reject(
                StatusCode::TOO_MANY_REQUESTS,
                "THROTTLED",
                format!(
                    "at most {} output chunks per job and second",
                    proto::OUTPUT_CHUNKS_PER_SECOND
                ),
                peer,
                ROUTE,
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
        ChunkVerdict::NotRunning => reject(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no job {job}"),
            peer,
            ROUTE,
        ),
    }
}
