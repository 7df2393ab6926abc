//! The agent gateway: the only code that speaks the agent protocol. Enrollment, long-polls,
//! job leases and results.
//!
//! Polls are answered from memory: agent tokens (as hashes), presence and queued jobs live in
//! [`Agents`]; a poll without work reads and writes nothing in the store. `lastSeenAt` is
//! written back in batches by [`App::run_presence`].
//!
//! Lease rule: a job handed out must be answered within its `leaseSeconds`. When a lease runs
//! out, a probe job (read-only) is offered again, up to three hand-outs in all; a step or reboot
//! job is failed ("the agent did not report back"), because running it twice could change the
//! computer twice. Leases live in memory: after a server restart every unfinished job is
//! offered again, and the agent, which remembers what it ran, re-sends its result instead of
//! running it again.

use crate::app::App;
use crate::auth::{ip_key, new_secret, secret_hash};
use crate::error::ApiError;
use crate::logsafe::log_value;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use upkeep_agent_protocol::{self as proto, ErrorBody};
use upkeep_core::domain::*;
use upkeep_core::engine::Event;
use upkeep_core::session::{JobRecord, JobState, SessionTrigger};
use upkeep_store::records::*;
use upkeep_store::{IndexKey, Store, TxError};

/// Probe jobs are handed out at most this often before they count as lost.
const MAX_PROBE_ATTEMPTS: u32 = 3;
/// What the server asks agents to use as their long-poll wait.
pub const POLL_WAIT_SECONDS: u32 = 25;

pub struct Agents {
    tokens: RwLock<HashMap<String, Id>>,
    presence: Mutex<HashMap<Id, Presence>>,
    jobs: Mutex<JobQueues>,
    /// Output streamed by running step jobs, per job; only leased step jobs have an entry.
    streams: Mutex<HashMap<Id, OutputState>>,
    offline_after: Duration,
    polls: std::sync::atomic::AtomicU64,
}

struct Presence {
    last_poll: Instant,
    last_seen: Time,
    /// Long-polls currently held open.
    holding: u32,
    notify: Arc<Notify>,
    /// `last_seen` not yet written to the store.
    dirty: bool,
    inventory: Option<proto::Inventory>,
    /// Token bucket against runaway pollers.
    bucket: (f64, Instant),
}

#[derive(Default)]
struct JobQueues {
    queued: HashMap<Id, VecDeque<QueuedJob>>,
    leased: HashMap<Id, LeasedJob>,
    lease_order: BTreeSet<(Instant, Id)>,
}

#[derive(Clone)]
struct QueuedJob {
    job: proto::Job,
    attempts: u32,
}

struct LeasedJob {
    computer: Id,
    queued: QueuedJob,
    until: Instant,
}

/// What the gateway remembers of one job's streamed output.
struct OutputState {
    /// Highest `seq` taken: chunks are idempotent per `seq`.
    last_seq: u64,
    secrets: upkeep_core::output::Secrets,
    /// Per stream (stdout, stderr): the masker.
    masks: [upkeep_core::output::StreamMask; 2],
    /// Bytes shown so far (both streams), at most `output::MAX_STREAMED_BYTES`.
    shown: usize,
    /// Token bucket: (tokens, last refill).
    bucket: (f64, Instant),
}

/// What becomes of one output chunk.
enum ChunkVerdict {
    /// Show `text` (masked) in `session`'s log.
    Show {
        session: Id,
        text: String,
    },
    /// New, but nothing to show (past the cap, or held back as a possible secret's start).
    Taken,
    /// A repeated `seq`, or a job that does not stream (a probe).
    NotTaken,
    /// Not a job leased to this computer now.
    NotRunning,
    Throttled,
}

impl Agents {
    pub fn new(offline_after: Duration) -> Agents {
        Agents {
            tokens: RwLock::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            jobs: Mutex::new(JobQueues::default()),
            streams: Mutex::new(HashMap::new()),
            offline_after,
            polls: Default::default(),
        }
    }

    pub fn polls_total(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Presence>> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, JobQueues> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Id, OutputState>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one chunk of a running step's output: rate, `seq`, cap, then masking (a secret
    /// split across chunks included). The job is one leased to `computer`, or `open`: its
    /// stored record, still unanswered (after a server restart the agent goes on running a
    /// job that is not leased again until its next poll).
    fn take_chunk(
        &self,
        computer: Id,
        job: Id,
        c: &proto::OutputChunk,
        open: Option<&JobRecord>,
    ) -> ChunkVerdict {
        let (session, secrets) = {
            let q = self.queues();
            let (session, kind) = match (q.leased.get(&job), open) {
                (Some(l), _) if l.computer == computer => {
                    let Ok(session) = l.queued.job.session_id.parse::<Id>() else {
                        return ChunkVerdict::NotTaken;
                    };
                    (session, &l.queued.job.kind)
                }
                (_, Some(r))
                    if r.id == job
                        && r.computer_id == computer
                        && !matches!(r.state, JobState::Done { .. }) =>
                {
                    (r.session_id, &r.job)
                }
                _ => return ChunkVerdict::NotRunning,
            };
            let proto::JobKind::Step { parameters, .. } = kind else {
                return ChunkVerdict::NotTaken;
            };
            (session, upkeep_core::output::Secrets::of(parameters))
        };
        let mut streams = self.streams();
        let st = streams.entry(job).or_insert_with(|| OutputState {
            last_seq: 0,
            secrets,
            masks: Default::default(),
            shown: 0,
            bucket: (f64::from(proto::OUTPUT_CHUNK_BURST), Instant::now()),
        });
        let (tokens, at) = st.bucket;
        let tokens = (tokens
            + at.elapsed().as_secs_f64() * f64::from(proto::OUTPUT_CHUNKS_PER_SECOND))
        .min(f64::from(proto::OUTPUT_CHUNK_BURST));
        if tokens < 1.0 {
            st.bucket = (tokens, Instant::now());
            return ChunkVerdict::Throttled;
        }
        st.bucket = (tokens - 1.0, Instant::now());
        if c.seq <= st.last_seq {
            return ChunkVerdict::NotTaken;
        }
        st.last_seq = c.seq;
        let i = match c.stream {
            proto::OutputStream::Stdout => 0,
            proto::OutputStream::Stderr => 1,
        };
        let room = upkeep_core::output::MAX_STREAMED_BYTES.saturating_sub(st.shown);
        if room == 0 {
            return ChunkVerdict::Taken;
        }
        let mut piece = c.chunk.clone();
        let cut = proto::truncate_utf8(&mut piece, room);
        st.shown += piece.len();
        let mut text = st.masks[i].push(&piece, &st.secrets);
        if cut {
            text.push_str("\n[… more output than the log shows: see the action's output]");
        }
        if text.is_empty() {
            ChunkVerdict::Taken
        } else {
            ChunkVerdict::Show { session, text }
        }
    }

    /// Loads every computer's token hash (start-up).
    pub fn load_tokens(&self, store: &Store) -> upkeep_store::Result<usize> {
        let mut t = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        for c in store.scan::<Computer>(None) {
            let c = c?;
            if let Some(h) = c.agent_token_hash {
                t.insert(h, c.id);
            }
        }
        Ok(t.len())
    }

    fn computer_for_token(&self, token: &str) -> Option<Id> {
        // The map is keyed by the token's SHA-256: looking it up compares digests, not the
        // secret, so timing reveals nothing about valid tokens.
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&secret_hash(token))
            .copied()
    }

    fn set_token(&self, old: Option<&str>, new: Option<&str>, computer: Id) {
        let mut t = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = old {
            t.remove(o);
        }
        if let Some(n) = new {
            t.insert(n.to_string(), computer);
        }
    }

    pub fn is_online(&self, computer: Id) -> bool {
        self.presence()
            .get(&computer)
            .is_some_and(|p| p.holding > 0 || p.last_poll.elapsed() < self.offline_after)
    }

    pub fn online_count(&self) -> usize {
        let p = self.presence();
        p.values()
            .filter(|p| p.holding > 0 || p.last_poll.elapsed() < self.offline_after)
            .count()
    }

    pub fn last_seen(&self, computer: Id) -> Option<Time> {
        self.presence().get(&computer).map(|p| p.last_seen)
    }

    /// Queues a job for its computer and wakes a held poll.
    pub fn enqueue(&self, j: &JobRecord) {
        let job = proto::Job {
            id: j.id.to_string(),
            session_id: j.session_id.to_string(),
            lease_seconds: j.lease_seconds,
            kind: j.job.clone(),
        };
        self.queues()
            .queued
            .entry(j.computer_id)
            .or_default()
            .push_back(QueuedJob {
                job,
                attempts: j.attempts,
            });
        if let Some(p) = self.presence().get(&j.computer_id) {
            p.notify.notify_one();
        }
    }

    /// Forgets a job that is no longer wanted (cancelled session).
    pub fn forget_job(&self, job: Id) {
        self.streams().remove(&job);
        let mut q = self.queues();
        if let Some(l) = q.leased.remove(&job) {
            q.lease_order.remove(&(l.until, job));
        }
        let js = job.to_string();
        for v in q.queued.values_mut() {
            v.retain(|x| x.job.id != js);
        }
    }

    fn take_jobs(&self, computer: Id) -> Vec<proto::Job> {
        let mut q = self.queues();
        let Some(list) = q.queued.get_mut(&computer) else {
            return vec![];
        };
        let jobs: Vec<QueuedJob> = list.drain(..).collect();
        let now = Instant::now();
        let mut out = Vec::with_capacity(jobs.len());
        for mut j in jobs {
            j.attempts += 1;
            let until = now + Duration::from_secs(u64::from(j.job.lease_seconds));
            let Ok(id) = j.job.id.parse::<Id>() else {
                continue;
            };
            out.push(j.job.clone());
            q.lease_order.insert((until, id));
            q.leased.insert(
                id,
                LeasedJob {
                    computer,
                    queued: j,
                    until,
                },
            );
        }
        out
    }

    /// Marks a job answered (removes its lease); true when it was leased to `computer` or
    /// queued for it.
    fn settle(&self, job: Id) {
        self.streams().remove(&job);
        let mut q = self.queues();
        if let Some(l) = q.leased.remove(&job) {
            q.lease_order.remove(&(l.until, job));
        }
    }

    /// Re-queues every unfinished job from the store (start-up).
    pub fn requeue_open_jobs(&self, store: &Store) -> upkeep_store::Result<usize> {
        let mut n = 0;
        let computers: Vec<Id> = store
            .scan::<Computer>(None)
            .filter_map(|c| c.ok())
            .map(|c| c.id)
            .collect();
        for c in computers {
            for j in store.by_index::<JobRecord>(&IndexKey::new(OPEN_JOBS, c.as_bytes()), None) {
                self.enqueue(&j?);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Leases that ran out: (job, computer, re-offered?).
    fn expire_leases(&self) -> Vec<(Id, bool)> {
        let now = Instant::now();
        let mut q = self.queues();
        let expired: Vec<(Instant, Id)> = q
            .lease_order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        let mut out = Vec::new();
        for (t, id) in expired {
            q.lease_order.remove(&(t, id));
            self.streams().remove(&id);
            if let Some(l) = q.leased.remove(&id) {
                let probe = matches!(l.queued.job.kind, proto::JobKind::Probe { .. });
                if probe && l.queued.attempts < MAX_PROBE_ATTEMPTS {
                    q.queued.entry(l.computer).or_default().push_back(l.queued);
                    out.push((id, true));
                } else {
                    out.push((id, false));
                }
            }
        }
        out
    }
}

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
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("the body is not JSON: {e}"),
            peer,
            route,
        )
    })?;
    match v.get("protocolVersion").and_then(|v| v.as_u64()) {
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
    serde_json::from_value(v).map_err(|e| {
        reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_MESSAGE",
            format!("the body is not a valid message: {e}"),
            peer,
            route,
        )
    })
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
        && !app.enrollment_key_known(&r.enrollment_key)
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
        Err((status, code, msg)) => {
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                app.enroll_by_ip.fail(&ip);
            }
            reject(status, code, msg, peer, ROUTE)
        }
    }
}

type EnrollError = (StatusCode, &'static str, String);

/// What agents report about themselves ends up in names, mails and logs: control characters
/// become spaces.
fn clean_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

impl App {
    /// Whether `key` is an enrollment key of some tenant (valid or not: revoked and expired
    /// keys get their own answer from [`enroll`](Self::enroll)).
    fn enrollment_key_known(&self, key: &str) -> bool {
        let hash = secret_hash(key.trim());
        matches!(
            self.store
                .unique::<EnrollmentKey>(&IndexKey::new(ENROLLMENT_KEY_HASH, &hash)),
            Ok(Some(_))
        )
    }

    async fn enroll(
        self: &Arc<Self>,
        r: &proto::EnrollRequest,
        address: Option<std::net::IpAddr>,
    ) -> Result<proto::EnrollResponse, EnrollError> {
        let internal = |e: ApiError| (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string());
        let key_hash = secret_hash(r.enrollment_key.trim());
        let key: Option<EnrollmentKey> = self
            .store
            .unique(&IndexKey::new(ENROLLMENT_KEY_HASH, &key_hash))
            .map_err(|e| internal(e.into()))?;
        let Some(key) = key else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "unknown enrollment key".into(),
            ));
        };
        let now = self.clock.now();
        if key.revoked {
            return Err((
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the enrollment key was revoked".into(),
            ));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err((
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the enrollment key has expired".into(),
            ));
        }
        let token = new_secret("uat_");
        let token_hash = secret_hash(&token);
        let machine = IndexKey::new(
            MACHINE_ID,
            machine_value(key.tenant_id, r.machine_id.trim()),
        );
        let existing: Option<Computer> = self
            .store
            .unique(&machine)
            .map_err(|e| internal(e.into()))?;
        let is_new = existing.is_none();
        // Re-enrolling a known machine takes over its agent token and jobs: it needs a key that
        // could enroll a new computer, and uses it up like one (CONTRACT §11).
        if key.max_uses.is_some_and(|m| key.uses >= m) {
            return Err((
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the enrollment key has reached its maximum uses".into(),
            ));
        }
        let computer = match existing {
            Some(mut c) => {
                c.hostname = r.hostname.clone();
                c.os = r.os.clone();
                c.agent_version = r.agent_version.clone();
                c.agent_token_hash = Some(token_hash.clone());
                c.last_seen_at = Some(now);
                c
            }
            None => Computer {
                id: crate::ids::fresh(),
                tenant_id: key.tenant_id,
                name: r.hostname.clone(),
                hostname: r.hostname.clone(),
                machine_id: r.machine_id.trim().to_string(),
                tags: key.tags.clone(),
                primary_person_id: key.primary_person_id,
                os: r.os.clone(),
                agent_version: r.agent_version.clone(),
                last_seen_at: Some(now),
                agent_token_hash: Some(token_hash.clone()),
                enrolled_at: now,
                excluded_from_maintenance: false,
                compliance: None,
                logged_on_user: None,
                onboarded: false,
                onboarding: None,
                held_reboot: None,
            },
        };
        let event = if is_new {
            upkeep_core::webhook::WebhookEvent::ComputerEnrolled
        } else {
            upkeep_core::webhook::WebhookEvent::ComputerReenrolled
        };
        let deliveries = self
            .deliveries(
                computer.tenant_id,
                event,
                serde_json::json!({"id": computer.id.to_string(), "name": computer.name, "hostname": computer.hostname, "enrollmentKeyId": key.id.to_string()}),
            )
            .map_err(internal)?;
        let audit = crate::audit::enrollment(&computer, &key, !is_new, address, now);
        let res = self.store.write(|tx| {
            tx.put(&audit)?;
            if !tx.claim_unique(&machine, &computer.key_bytes())? {
                return Err(TxError::Abort((
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    "another computer claimed this machine id",
                )));
            }
            // Read again inside the transaction: a parallel re-enrollment (or an admin's change)
            // may have written the computer since it was read above. Its token now is the one
            // to release, and only the agent's own fields change.
            let stored: Option<Computer> = tx.get(&computer.id)?;
            let released = stored.as_ref().and_then(|c| c.agent_token_hash.clone());
            let record = match stored {
                Some(mut c) => {
                    if let Some(old) = &released {
                        tx.release_unique(&IndexKey::new(AGENT_TOKEN, old))?;
                    }
                    c.hostname = computer.hostname.clone();
                    c.os = computer.os.clone();
                    c.agent_version = computer.agent_version.clone();
                    c.agent_token_hash = Some(token_hash.clone());
                    c.last_seen_at = Some(now);
                    c
                }
                None => computer.clone(),
            };
            tx.claim_unique(
                &IndexKey::new(AGENT_TOKEN, &token_hash),
                &computer.key_bytes(),
            )?;
            tx.put(&record)?;
            let mut k: EnrollmentKey = tx.get(&key.id)?.ok_or(TxError::Abort((
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the enrollment key was deleted",
            )))?;
            // Checked again inside the transaction: two enrollments racing for the last use
            // cannot both have it.
            if k.revoked || k.max_uses.is_some_and(|m| k.uses >= m) {
                return Err(TxError::Abort((
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "the enrollment key has reached its maximum uses",
                )));
            }
            k.uses += 1;
            tx.put(&k)?;
            for d in &deliveries {
                tx.put(d)?;
            }
            Ok(released)
        });
        let released = match res {
            Ok(r) => r,
            Err(upkeep_store::WriteError::Abort((status, code, message))) => {
                return Err((status, code, message.to_string()));
            }
            Err(upkeep_store::WriteError::Store(e)) => return Err(internal(e.into())),
        };
        self.store.flush().await.map_err(|e| internal(e.into()))?;
        // The token the store holds now is the computer's only one (of racing re-enrollments,
        // the last written wins; the others' tokens must not work).
        let current = self
            .store
            .get::<Computer>(&computer.id)
            .map_err(|e| internal(e.into()))?
            .and_then(|c| c.agent_token_hash);
        let own = (current.as_deref() != Some(token_hash.as_str())).then_some(token_hash.as_str());
        self.agents
            .set_token(released.as_deref(), current.as_deref(), computer.id);
        if let Some(lost) = own {
            self.agents.set_token(Some(lost), None, computer.id);
        }
        if !deliveries.is_empty() {
            self.webhook_wakeup.notify_one();
        }
        if is_new {
            tracing::info!(computer = %computer.id, tenant = %computer.tenant_id, hostname = %log_value(&computer.hostname), key = %key.id, "agent enrolled");
        } else {
            tracing::warn!(computer = %computer.id, tenant = %computer.tenant_id, hostname = %log_value(&computer.hostname), key = %key.id, "computer re-enrolled: its previous agent token no longer works");
        }
        if is_new {
            let tenant = self.store.get::<Tenant>(&computer.tenant_id).ok().flatten();
            if tenant.is_some_and(|t| t.auto_onboarding && !t.excluded_from_maintenance) {
                let app = self.clone();
                let c = computer.clone();
                tokio::spawn(async move {
                    let req = crate::runtime::StartRequest {
                        computer: c.clone(),
                        trigger: SessionTrigger::Onboarding,
                        detection_only: false,
                        execute_at: None,
                        window_end: None,
                        deployment_ids: None,
                        options: MaintenanceOptions::default(),
                        schedule_id: None,
                        created_by: "onboarding".into(),
                    };
                    if let Err(e) = app.start_session(req).await {
                        tracing::warn!(computer = %c.id, error = %e, "onboarding session not started");
                    }
                });
            }
        }
        Ok(proto::EnrollResponse {
            computer_id: computer.id.to_string(),
            agent_token: token,
            poll_wait_seconds: POLL_WAIT_SECONDS,
        })
    }

    /// Revokes a computer's agent token: its polls answer 401 at once.
    pub async fn revoke_agent(&self, computer: Id) -> Result<(), ApiError> {
        let old = self.store.write(|tx| {
            let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                return Ok(None);
            };
            let old = c.agent_token_hash.take();
            if let Some(o) = &old {
                tx.release_unique(&IndexKey::new(AGENT_TOKEN, o))?;
            }
            tx.put(&c)?;
            Ok(old)
        })?;
        self.store.flush().await?;
        self.agents.set_token(old.as_deref(), None, computer);
        Ok(())
    }

    /// Background loop: expires leases, writes coalesced `lastSeenAt`, notices computers going
    /// offline.
    pub async fn run_presence(self: Arc<Self>) {
        let mut last_flush = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.wait() => {
                    self.write_last_seen();
                    return;
                }
            }
            for (job, reoffered) in self.agents.expire_leases() {
                if reoffered {
                    tracing::info!(job = %job, "lease ran out; probe job offered again");
                    continue;
                }
                tracing::warn!(job = %job, "lease ran out; job failed");
                let app = self.clone();
                tokio::spawn(async move {
                    app.job_lost(job, "the agent did not report back within the job's lease")
                        .await
                });
            }
            if last_flush.elapsed() >= Duration::from_secs(30) {
                self.write_last_seen();
                last_flush = Instant::now();
            }
        }
    }

    fn write_last_seen(&self) {
        let dirty: Vec<(Id, Time)> = {
            let mut p = self.agents.presence();
            p.iter_mut()
                .filter(|(_, v)| v.dirty)
                .map(|(k, v)| {
                    v.dirty = false;
                    (*k, v.last_seen)
                })
                .collect()
        };
        if dirty.is_empty() {
            return;
        }
        if let Err(e) = self.store.put_last_seen(&dirty) {
            tracing::warn!(error = %e, "could not write lastSeenAt");
        }
    }

    async fn job_lost(self: &Arc<Self>, job: Id, reason: &str) {
        let rec = match self.store.get::<JobRecord>(&job) {
            Ok(Some(r)) => r,
            _ => return,
        };
        if matches!(rec.state, JobState::Done { .. }) {
            return;
        }
        match self.held_reboot_result(&rec, None).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(job = %job, error = %e, "lost held reboot not applied"),
        }
        if let Err(e) = self
            .apply(
                rec.session_id,
                Event::JobLost {
                    job,
                    reason: reason.to_string(),
                },
            )
            .await
        {
            tracing::warn!(job = %job, error = %e, "lost job not applied");
        }
    }

    /// Applies an agent's result once: the job record flips to done in the same step as the
    /// session consumes it (`apply` persists both before we acknowledge).
    async fn job_result(
        self: &Arc<Self>,
        computer: Id,
        job: Id,
        outcome: proto::JobOutcome,
    ) -> Result<bool, ApiError> {
        let Some(rec) = self.store.get::<JobRecord>(&job)? else {
            return Ok(false);
        };
        if rec.computer_id != computer {
            return Err(ApiError::NotFound(format!("job {job}")));
        }
        let _g = self.runtime_result_lock(job).lock().await;
        let Some(rec) = self.store.get::<JobRecord>(&job)? else {
            return Ok(false);
        };
        if matches!(rec.state, JobState::Done { .. }) {
            self.agents.settle(job);
            return Ok(false);
        }
        self.agents.settle(job);
        self.metrics
            .job_results
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.held_reboot_result(&rec, Some(&outcome)).await? {
            return Ok(true);
        }
        // `apply` marks the job done in the same transaction as the session's step, and
        // flushes before we acknowledge.
        self.apply(rec.session_id, Event::JobDone { job, outcome })
            .await?;
        Ok(true)
    }

    fn runtime_result_lock(&self, job: Id) -> &tokio::sync::Mutex<()> {
        static LOCKS: std::sync::OnceLock<Vec<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
        let locks = LOCKS.get_or_init(|| (0..64).map(|_| tokio::sync::Mutex::new(())).collect());
        &locks[usize::from(job.as_bytes()[15]) % locks.len()]
    }

    fn note_inventory(self: &Arc<Self>, computer: Id, inv: proto::Inventory) {
        let app = self.clone();
        tokio::spawn(async move {
            let r = app.store.write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(());
                };
                c.hostname = clean_text(&inv.hostname);
                c.os = clean_text(&inv.os);
                c.agent_version = clean_text(&inv.agent_version);
                c.logged_on_user = inv.logged_on_user.as_deref().map(clean_text);
                tx.put(&c)?;
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!(computer = %computer, error = %e, "inventory not saved");
                return;
            }
            if let Some(user) = inv.logged_on_user.as_deref() {
                app.match_person(computer, user).await;
            }
        });
    }

    /// Gives a computer without a primary person the person whose usernames include `user`.
    async fn match_person(&self, computer: Id, user: &str) {
        let Ok(Some(c)) = self.store.get::<Computer>(&computer) else {
            return;
        };
        if c.primary_person_id.is_some() {
            return;
        }
        let short = user.rsplit(['\\', '/']).next().unwrap_or(user);
        let idx = IndexKey::new(TENANT_PERSONS, c.tenant_id.as_bytes());
        let found = self
            .store
            .by_index::<Person>(&idx, None)
            .filter_map(|p| p.ok())
            .find(|p| {
                p.usernames
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(user) || u.eq_ignore_ascii_case(short))
            });
        if let Some(p) = found {
            let r = self.store.write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(());
                };
                if c.primary_person_id.is_none() {
                    c.primary_person_id = Some(p.id);
                    tx.put(&c)?;
                }
                Ok(())
            });
            if r.is_ok() {
                tracing::info!(computer = %computer, person = %p.id, user = %log_value(user), "primary person set from logged-on user");
            }
        }
    }
}

trait KeyBytes {
    fn key_bytes(&self) -> Vec<u8>;
}

impl KeyBytes for Computer {
    fn key_bytes(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// Authenticates an agent call from its header alone (before the body is read).
#[allow(clippy::result_large_err)] // the error is the finished 401 answer
fn authenticate(
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
    app.agents.computer_for_token(token).ok_or_else(|| {
        reject(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "unknown or revoked agent token; enroll again",
            peer,
            route,
        )
    })
}

async fn poll(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    const ROUTE: &str = "/agent/v1/poll";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let token = bearer(req.headers()).unwrap_or_default().to_string();
    let r: proto::PollRequest = match read_json(req.into_body(), ROUTE, peer).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    app.agents
        .polls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = app.clock.now();
    // Presence, rate limit and inventory change detection, all in memory.
    let (notify, came_online, inventory_changed) = {
        let mut p = app.agents.presence();
        let offline_after = app.agents.offline_after;
        let entry = p.entry(computer).or_insert_with(|| Presence {
            last_poll: Instant::now() - offline_after - Duration::from_secs(1),
            last_seen: now,
            holding: 0,
            notify: Arc::new(Notify::new()),
            dirty: false,
            inventory: None,
            bucket: (40.0, Instant::now()),
        });
        let (tokens, at) = entry.bucket;
        let refill = (tokens + at.elapsed().as_secs_f64() * 20.0).min(40.0);
        if refill < 1.0 {
            drop(p);
            return reject(
                StatusCode::TOO_MANY_REQUESTS,
                "THROTTLED",
                "polling too fast; at most 20 polls per second",
                peer,
                ROUTE,
            );
        }
        entry.bucket = (refill - 1.0, Instant::now());
        let came_online = entry.holding == 0 && entry.last_poll.elapsed() >= offline_after;
        entry.last_poll = Instant::now();
        entry.last_seen = now;
        entry.dirty = true;
        let inventory_changed = match &r.inventory {
            Some(inv) if entry.inventory.as_ref() != Some(inv) => {
                entry.inventory = Some(inv.clone());
                true
            }
            _ => false,
        };
        (entry.notify.clone(), came_online, inventory_changed)
    };
    if inventory_changed && let Some(inv) = r.inventory.clone() {
        app.note_inventory(computer, inv);
    }
    if came_online {
        tracing::info!(computer = %computer, "computer online");
        app.computer_came_online(computer);
    }
    let mut jobs = app.agents.take_jobs(computer);
    let wait = r.wait_seconds.min(proto::MAX_WAIT_SECONDS);
    if jobs.is_empty() && wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
        // Released on drop: hyper drops this future when the agent hangs up mid-poll.
        let _hold = Holding::new(&app, computer);
        loop {
            let notified = notify.notified();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = app.shutdown.wait() => {}
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
            jobs = app.agents.take_jobs(computer);
            if !jobs.is_empty()
                || tokio::time::Instant::now() >= deadline
                || app.shutdown.is_triggered()
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
    let mut p = app.agents.presence();
    if let Some(e) = p.get_mut(&computer) {
        e.holding = e.holding.saturating_add_signed(delta);
        e.last_poll = Instant::now();
    }
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
    let computer = match authenticate(&app, req.headers(), peer, ROUTE) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let job_id = job_id.map(|Path(j)| j).unwrap_or_default();
    let record = match job_id.parse::<Id>() {
        Ok(job) => app.store.get::<JobRecord>(&job),
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

async fn result(
    State(app): State<Arc<App>>,
    // A job id that is not even UTF-8 is just another unknown job: answered after
    // authentication, as JSON, like every agent error (axum's own rejection is plain text).
    job_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request<Body>,
) -> Response {
    const ROUTE: &str = "/agent/v1/jobs/{jobId}/result";
    let peer = peer_of(&req);
    let computer = match authenticate(&app, req.headers(), peer, ROUTE) {
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
    let computer = match authenticate(&app, req.headers(), peer, ROUTE) {
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
    let ack = |accepted: bool| Json(proto::OutputAck { accepted }).into_response();
    let mut verdict = app.agents.take_chunk(computer, job, &c, None);
    if let ChunkVerdict::NotRunning = verdict {
        match app.store.get::<JobRecord>(&job) {
            Ok(Some(r)) if r.computer_id == computer => {
                verdict = app.agents.take_chunk(computer, job, &c, Some(&r));
                if let ChunkVerdict::NotRunning = verdict {
                    // Done, cancelled or lost: the agent may stop streaming it.
                    verdict = ChunkVerdict::NotTaken;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(job = %job, error = %e, "job not readable");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the chunk could not be checked; retry",
                );
            }
        }
    }
    match verdict {
        ChunkVerdict::Show { session, text } => {
            match app
                .apply(
                    session,
                    Event::Output {
                        job,
                        stream: c.stream,
                        text,
                    },
                )
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
