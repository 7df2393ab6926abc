//! The agent gateway: the only code that speaks the agent protocol. Enrollment, long-polls,
//! job leases and results.
//!
//! Architecture invariant: a poll without work reads and writes nothing in the store (in
//! cluster mode, except one bounded look-up of a token this replica has not seen yet:
//! `agent_tokens`).
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
//!
//! Cluster mode (several replicas, `App.cluster`): what one replica holds here is its own view.
//! Tokens missing from memory are looked up in the store (`agent_tokens` bounds that); a job is
//! queued on every replica (`Note::Job`) and claimed in the store at hand-out, so one replica
//! hands it out (`take_queued` + `lease_claimed`); leases end by the store's `LEASED_JOBS`
//! index, not by the in-memory expiry; presence merges what other replicas saw
//! (`Note::Seen`, [`Agents::seen_elsewhere`]).

use crate::auth::secret_digest;
use futures_util::TryStreamExt;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use upkeep_agent_protocol::{self as proto};
use upkeep_core::domain::*;
use upkeep_core::session::{JobRecord, JobState};
use upkeep_store::Db;
use upkeep_store::records::*;

/// Probe jobs are handed out at most this often before they count as lost.
pub(crate) const MAX_PROBE_ATTEMPTS: u32 = 3;
/// What the server asks agents to use as their long-poll wait.
pub const POLL_WAIT_SECONDS: u32 = 25;

pub struct Agents {
    /// Agent token digests (SHA-256, 32 raw bytes: half the size of the stored hex) → computer.
    tokens: RwLock<HashMap<[u8; 32], Id>>,
    presence: Mutex<HashMap<Id, Presence>>,
    /// Computers whose `last_seen` is not written back yet, each once, in the order they
    /// became so, with when (ms since the epoch): the write-back takes them from the front as
    /// they come due ([`Agents::take_unwritten_seen`]) without walking the presence map.
    /// Locked after `presence` when both are held.
    unwritten: Mutex<VecDeque<(Id, u64)>>,
    /// The instant presence times count from ([`Presence`] keeps milliseconds since it).
    epoch: Instant,
    jobs: Mutex<JobQueues>,
    /// Output streamed by running step jobs, per job; only leased step jobs have an entry.
    streams: Mutex<HashMap<Id, OutputState>>,
    offline_after: Duration,
    polls: std::sync::atomic::AtomicU64,
    /// `lastSeenAt` values written back to the store since start-up.
    seen_written: std::sync::atomic::AtomicU64,
    /// Opens SECRET parameters when a job is handed out, and masks them in streamed output.
    secrets: Arc<crate::secrets::SecretBox>,
    /// Cluster mode: computers other replicas saw polling, when it was heard and their time.
    elsewhere: Mutex<HashMap<Id, (Instant, Time)>>,
    /// Cluster mode: tokens found unknown in the store, and the look-up budget.
    pub misses: super::agent_tokens::TokenMisses,
}

/// One computer's presence: 56 bytes, one per registered agent that polled (a million on a
/// big box), so times are milliseconds since [`Agents::epoch`], not `Instant`s (16 bytes
/// each), and the waker is made only for a poll that waits.
struct Presence {
    /// Milliseconds since the epoch of the last poll, or [`NEVER`].
    last_poll: u64,
    /// Token bucket against runaway pollers: when it was last refilled (ms since the epoch).
    bucket_at: u64,
    /// A hash of the last inventory taken (not the inventory: a software list is large, and
    /// only a change matters here); 0 before any.
    inventory_hash: u64,
    /// Wakes a held poll when a job is queued; made by the first poll that waits.
    notify: Option<Arc<Notify>>,
    last_seen: Time,
    /// Token bucket: tokens left.
    bucket: f32,
    /// Long-polls currently held open.
    holding: u32,
    /// `last_seen` not yet written to the store.
    dirty: bool,
    /// What the agent last said about a pending reboot (poll or probe result).
    reboot_pending: bool,
    /// Cluster mode: told to the other replicas since the last poll (`take_to_announce`).
    announced: bool,
}

/// `Presence::last_poll` of a computer that has not polled since the server started.
const NEVER: u64 = u64::MAX;
/// Polls per second an agent may keep up, and the burst.
const POLLS_PER_SECOND: f32 = 20.0;
const POLL_BURST: f32 = 40.0;

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
    /// Cluster mode: the lease the store held when this replica recovered the job at its
    /// start. The hand-out may have been lost with the replica that made it, so the job is
    /// claimed again for its own computer while the store still holds that same lease,
    /// unexpired (the agent never runs a job id twice); a lease that ran out is the sweep's,
    /// and one renewed since is another replica's.
    reoffer: Option<Time>,
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
pub(crate) enum ChunkVerdict {
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

/// What a poll changed (see [`Agents::polled`]).
pub struct Polled {
    /// Woken when a job is queued for the computer (asked for with `wait`).
    pub notify: Option<Arc<Notify>>,
    /// The computer was offline until this poll.
    pub came_online: bool,
    /// The poll carried an inventory different from the last one.
    pub inventory_changed: bool,
    /// The poll said something new about a pending reboot.
    pub reboot_pending_changed: bool,
}

/// What a poll says that presence keeps (see [`Agents::polled`]).
#[derive(Default, Clone, Copy)]
pub struct PollFacts<'a> {
    pub inventory: Option<&'a proto::Inventory>,
    pub reboot_pending: Option<bool>,
    /// The poll will wait for jobs (`waitSeconds` > 0).
    pub wait: bool,
}

impl Agents {
    /// Notes a poll at `now`: presence, the token bucket against runaway pollers (`None`: too
    /// fast, refuse it) and whether the inventory changed. A poll that will `wait` for jobs
    /// gets the computer's waker (made now if it had none).
    pub fn polled(&self, computer: Id, now: Time, poll: PollFacts<'_>) -> Option<Polled> {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = self.now_ms();
        let mut p = self.presence();
        let entry = p.entry(computer).or_insert_with(|| Presence {
            last_poll: NEVER,
            bucket_at: at,
            inventory_hash: 0,
            notify: None,
            last_seen: now,
            bucket: POLL_BURST,
            holding: 0,
            dirty: false,
            reboot_pending: false,
            announced: false,
        });
        let refill = (entry.bucket
            + at.saturating_sub(entry.bucket_at) as f32 / 1000.0 * POLLS_PER_SECOND)
            .min(POLL_BURST);
        if refill < 1.0 {
            return None;
        }
        entry.bucket = refill - 1.0;
        entry.bucket_at = at;
        let came_online = entry.holding == 0 && self.since(entry.last_poll) >= self.offline_after;
        entry.last_poll = at;
        entry.last_seen = now;
        if !entry.dirty {
            entry.dirty = true;
            self.unwritten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((computer, at));
        }
        entry.announced = false;
        let inventory_changed = match poll.inventory.map(inventory_hash) {
            Some(hash) if entry.inventory_hash != hash => {
                entry.inventory_hash = hash;
                true
            }
            _ => false,
        };
        if poll.wait && entry.notify.is_none() {
            entry.notify = Some(Arc::new(Notify::new()));
        }
        let reboot_pending = poll.reboot_pending;
        let reboot_pending_changed =
            reboot_pending.is_some_and(|p| std::mem::replace(&mut entry.reboot_pending, p) != p);
        Some(Polled {
            notify: if poll.wait {
                entry.notify.clone()
            } else {
                None
            },
            came_online,
            inventory_changed,
            reboot_pending_changed,
        })
    }

    /// What the computer's agent last said about a pending reboot (false before it said).
    pub fn reboot_pending(&self, computer: Id) -> bool {
        self.presence()
            .get(&computer)
            .is_some_and(|p| p.reboot_pending)
    }

    /// Notes a probe result's word on a pending reboot; true when it changed.
    pub fn note_reboot_pending(&self, computer: Id, pending: bool) -> bool {
        self.presence()
            .get_mut(&computer)
            .is_some_and(|p| std::mem::replace(&mut p.reboot_pending, pending) != pending)
    }

    /// Forgets the inventory taken, so the agent's next report is stored whatever it says (a
    /// report that could not be stored).
    pub fn forget_inventory(&self, computer: Id) {
        if let Some(p) = self.presence().get_mut(&computer) {
            p.inventory_hash = 0;
        }
    }

    /// Up to `limit` `lastSeenAt` values not yet written to the store that became so at
    /// least `age` ago (all of them for `Duration::ZERO`), oldest first, marked written (see
    /// [`Agents::written_back`]). Each value is the latest poll's, however many came since.
    ///
    /// Costs what it takes, not the fleet: the presence map is not walked, and neither lock
    /// is held for more than `limit` entries, so a million agents polling are not held up by
    /// their own write-back.
    pub fn take_unwritten_seen(&self, age: Duration, limit: usize) -> Vec<(Id, Time)> {
        // Nothing changed `age` before the epoch: nothing is due yet then.
        let due_by = u64::try_from(age.as_millis())
            .ok()
            .and_then(|age| self.now_ms().checked_sub(age));
        let due: Vec<Id> = {
            let mut q = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
            let n = q
                .iter()
                .take(limit)
                .take_while(|(_, since)| due_by.is_some_and(|by| *since <= by))
                .count();
            q.drain(..n).map(|(c, _)| c).collect()
        };
        let mut p = self.presence();
        due.into_iter()
            .filter_map(|c| {
                let v = p.get_mut(&c)?;
                v.dirty = false;
                Some((c, v.last_seen))
            })
            .collect()
    }

    /// A long-poll of `computer` began (`delta` 1) or ended (-1).
    pub fn set_holding(&self, computer: Id, delta: i32) {
        let mut p = self.presence();
        if let Some(e) = p.get_mut(&computer) {
            e.holding = e.holding.saturating_add_signed(delta);
            e.last_poll = self.now_ms();
        }
    }

    pub fn new(offline_after: Duration, secrets: Arc<crate::secrets::SecretBox>) -> Agents {
        Agents {
            secrets,
            tokens: RwLock::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(VecDeque::new()),
            epoch: Instant::now(),
            jobs: Mutex::new(JobQueues::default()),
            streams: Mutex::new(HashMap::new()),
            offline_after,
            polls: Default::default(),
            seen_written: Default::default(),
            elsewhere: Mutex::new(HashMap::new()),
            misses: super::agent_tokens::TokenMisses::new(Instant::now()),
        }
    }

    pub fn polls_total(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` `lastSeenAt` values written back.
    pub fn written_back(&self, n: usize) {
        self.seen_written
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `lastSeenAt` values written back since start-up.
    pub fn written_back_total(&self) -> u64 {
        self.seen_written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Milliseconds since the epoch, now.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// How long ago `at` (ms since the epoch) was; a very long time for [`NEVER`].
    fn since(&self, at: u64) -> Duration {
        match at {
            NEVER => Duration::MAX,
            at => Duration::from_millis(self.now_ms().saturating_sub(at)),
        }
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

    /// Whether a step job leased to `computer` now names the installer `sha256` (the agent
    /// fetches it while the job runs).
    pub fn leases_installer(&self, computer: Id, sha256: &str) -> bool {
        self.queues().leased.values().any(|l| {
            l.computer == computer
                && matches!(&l.queued.job.kind,
                    proto::JobKind::Step { installer: Some(i), .. } if i.sha256 == sha256)
        })
    }

    /// Takes one chunk of a running step's output: rate, `seq`, cap, then masking (a secret
    /// split across chunks included). The job is one leased to `computer`, or `open`: its
    /// stored record, still unanswered (after a server restart the agent goes on running a
    /// job that is not leased again until its next poll).
    pub(crate) fn take_chunk(
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
            if !matches!(kind, proto::JobKind::Step { .. }) {
                return ChunkVerdict::NotTaken;
            }
            // Live lines mask every long plain value; the stored outcome shows a typed task's
            // declared values (`Fleet` masks it knowing the session).
            (session, self.secrets.secrets_of(kind, &[]))
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

    /// Loads every computer's token hash (start-up) from the `AGENT_TOKEN` claims: one range
    /// read of (hash, computer id) pairs, not a decode of every computer record (a million
    /// computers load in well under a second this way).
    pub async fn load_tokens(&self, store: &Db) -> upkeep_store::Result<usize> {
        let mut loaded = Vec::new();
        let mut claims = std::pin::pin!(store.unique_claims(AGENT_TOKEN));
        while let Some((hash, computer)) = claims.try_next().await? {
            let hash = std::str::from_utf8(&hash).ok().and_then(token_digest);
            match (hash, Id::from_slice(&computer)) {
                (Some(h), Some(c)) => loaded.push((h, c)),
                _ => tracing::warn!(
                    "an agent token claim that is not a SHA-256 hex digest and a computer id was skipped"
                ),
            }
        }
        let mut t = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        t.reserve(loaded.len());
        t.extend(loaded);
        Ok(t.len())
    }

    /// One node, at start-up: room for every agent's presence (and its place in the
    /// write-back queue) now. Growing the map while a fleet comes online moves every entry
    /// under the lock at each doubling (~70 MB at a million), holding up every poll meanwhile.
    /// Not in cluster mode: each replica sees only the agents the balancer sends it.
    pub fn reserve_presence(&self) {
        let n = self.token_count();
        let mut p = self.presence();
        let more = n.saturating_sub(p.len());
        p.reserve(more);
        let mut q = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        let more = n.saturating_sub(q.len());
        q.reserve(more);
    }

    pub(crate) fn computer_for_token(&self, token: &str) -> Option<Id> {
        // The map is keyed by the token's SHA-256: looking it up compares digests, not the
        // secret, so timing reveals nothing about valid tokens.
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&secret_digest(token))
            .copied()
    }

    /// Replaces `old` by `new` (token hashes as stored: SHA-256 in hex) for `computer`.
    pub(crate) fn set_token(&self, old: Option<&str>, new: Option<&str>, computer: Id) {
        let mut t = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = old.and_then(token_digest) {
            t.remove(&o);
        }
        if let Some(n) = new.and_then(token_digest) {
            t.insert(n, computer);
        }
    }

    /// How many agent tokens are held in memory.
    pub fn token_count(&self) -> usize {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Cluster mode: forgets every token of `computer` held in memory (another replica
    /// revoked or replaced it; the store has the one that is valid now), and wakes its held
    /// polls so they check their token again.
    pub fn drop_tokens_of(&self, computer: Id) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| *c != computer);
        if let Some(n) = self
            .presence()
            .get(&computer)
            .and_then(|p| p.notify.as_ref())
        {
            n.notify_waiters();
        }
    }

    pub fn is_online(&self, computer: Id) -> bool {
        self.presence()
            .get(&computer)
            .is_some_and(|p| p.holding > 0 || self.since(p.last_poll) < self.offline_after)
            || self.online_elsewhere(computer)
    }

    /// Cluster mode: another replica said it saw the computer poll within `offline_after`.
    fn online_elsewhere(&self, computer: Id) -> bool {
        self.elsewhere()
            .get(&computer)
            .is_some_and(|(heard, _)| heard.elapsed() < self.offline_after)
    }

    /// Computers polling here or (cluster mode) heard of from other replicas, each once.
    /// Counts without collecting: a scrape of `/metrics` with a million agents holds the
    /// presence lock for one pass over the map, not for building a set of them.
    pub fn online_count(&self) -> usize {
        let p = self.presence();
        let online_here =
            |p: &Presence| p.holding > 0 || self.since(p.last_poll) < self.offline_after;
        let here = p.values().filter(|v| online_here(v)).count();
        let elsewhere = self
            .elsewhere()
            .iter()
            .filter(|(id, (heard, _))| {
                heard.elapsed() < self.offline_after && !p.get(id).is_some_and(online_here)
            })
            .count();
        here + elsewhere
    }

    pub fn last_seen(&self, computer: Id) -> Option<Time> {
        let here = self.presence().get(&computer).map(|p| p.last_seen);
        let there = self.elsewhere().get(&computer).map(|(_, t)| *t);
        here.max(there)
    }

    fn elsewhere(&self) -> std::sync::MutexGuard<'_, HashMap<Id, (Instant, Time)>> {
        self.elsewhere.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cluster mode: the computers to tell other replicas about (`Note::Seen`): those that
    /// polled since the last call, and those holding a poll here now.
    pub fn take_to_announce(&self) -> Vec<(Id, Time)> {
        let mut p = self.presence();
        p.iter_mut()
            .filter(|(_, v)| !v.announced || v.holding > 0)
            .map(|(k, v)| {
                v.announced = true;
                (*k, v.last_seen)
            })
            .collect()
    }

    /// Cluster mode: another replica saw `computers` poll. Returns those that were offline in
    /// this replica's view until now (their sessions look again).
    pub fn seen_elsewhere(&self, computers: &[(Id, Time)]) -> Vec<Id> {
        let was_offline: Vec<Id> = computers
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !self.is_online(*c))
            .collect();
        let now = Instant::now();
        let mut e = self.elsewhere();
        for (c, t) in computers {
            let entry = e.entry(*c).or_insert((now, *t));
            *entry = (now, entry.1.max(*t));
        }
        // What no replica has mentioned for a long while is forgotten (bounded memory).
        if e.len() > 1024 {
            let keep = self.offline_after * 10;
            e.retain(|_, (heard, _)| heard.elapsed() < keep);
        }
        was_offline
    }

    /// Queues a job for its computer and wakes a held poll.
    pub fn enqueue(&self, j: &JobRecord) {
        self.enqueue_with(j, None);
    }

    /// Queues `j` for its computer; `reoffer`: see [`QueuedJob::reoffer`].
    fn enqueue_with(&self, j: &JobRecord, reoffer: Option<Time>) {
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
                reoffer,
            });
        if let Some(n) = self
            .presence()
            .get(&j.computer_id)
            .and_then(|p| p.notify.as_ref())
        {
            n.notify_one();
        }
    }

    /// Forgets a job that is no longer wanted (cancelled session).
    /// Jobs the gateway holds for `computer`: queued for its next poll, or handed out and not
    /// yet answered. None means nothing more can run there until something is dispatched.
    pub fn jobs_held_for(&self, computer: Id) -> usize {
        let q = self.queues();
        q.queued.get(&computer).map_or(0, VecDeque::len)
            + q.leased.values().filter(|l| l.computer == computer).count()
    }

    /// Jobs queued for `computer`'s next poll here.
    pub fn jobs_queued_for(&self, computer: Id) -> usize {
        self.queues().queued.get(&computer).map_or(0, VecDeque::len)
    }

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

    pub(crate) fn take_jobs(&self, computer: Id) -> Vec<proto::Job> {
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
            // The only place a SECRET value is opened for an agent: in the answer to its poll
            // (the queue, like the store, holds it sealed).
            out.push(self.secrets.open_job(j.job.clone()));
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

    /// Cluster mode: queues a job another replica stored (or offered again: the store holds
    /// it `Queued`, so a lease of it held here is over), unless it is queued here already.
    pub fn enqueue_once(&self, j: &JobRecord) {
        let js = j.id.to_string();
        let queued = {
            let mut q = self.queues();
            if let Some(l) = q.leased.remove(&j.id) {
                q.lease_order.remove(&(l.until, j.id));
            }
            q.queued
                .get(&j.computer_id)
                .is_some_and(|v| v.iter().any(|x| x.job.id == js))
        };
        if !queued {
            self.enqueue(j);
        }
    }

    /// Cluster mode: queues a job the store holds `Queued` unless it is queued or leased here
    /// (a lease here of a job the store holds queued is being claimed or ended; its note
    /// decides). True when it was queued now.
    pub fn enqueue_if_missing(&self, j: &JobRecord) -> bool {
        let js = j.id.to_string();
        let known = {
            let q = self.queues();
            q.leased.contains_key(&j.id)
                || q.queued
                    .get(&j.computer_id)
                    .is_some_and(|v| v.iter().any(|x| x.job.id == js))
        };
        if !known {
            self.enqueue(j);
        }
        !known
    }

    /// Cluster mode: the jobs queued for `computer`, left queued: the caller claims them in
    /// the store first, then hands out what it won ([`Agents::lease_claimed`]).
    /// With each, the lease under which it may be claimed again (`QueuedJob::reoffer`).
    pub(crate) fn queued_for(&self, computer: Id) -> Vec<(proto::Job, Option<Time>)> {
        self.queues()
            .queued
            .get(&computer)
            .map_or_else(Vec::new, |list| {
                list.iter().map(|j| (j.job.clone(), j.reoffer)).collect()
            })
    }

    /// Cluster mode: takes the `offered` jobs out of `computer`'s queue and hands out those
    /// this replica claimed in the store (`claimed`, with their hand-outs so far), leasing them
    /// here like [`Agents::take_jobs`]; the others were handed out by another replica, or
    /// ended.
    pub(crate) fn lease_claimed(
        &self,
        computer: Id,
        offered: Vec<proto::Job>,
        claimed: &[(Id, u32)],
    ) -> Vec<proto::Job> {
        let mut q = self.queues();
        if let Some(list) = q.queued.get_mut(&computer) {
            list.retain(|j| !offered.iter().any(|o| o.id == j.job.id));
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for job in offered {
            let Ok(id) = job.id.parse::<Id>() else {
                continue;
            };
            let Some((_, attempts)) = claimed.iter().find(|(c, _)| *c == id) else {
                continue;
            };
            let until = now + Duration::from_secs(u64::from(job.lease_seconds));
            out.push(self.secrets.open_job(job.clone()));
            q.lease_order.insert((until, id));
            q.leased.insert(
                id,
                LeasedJob {
                    computer,
                    queued: QueuedJob {
                        job,
                        attempts: *attempts,
                        reoffer: None,
                    },
                    until,
                },
            );
        }
        out
    }

    /// Cluster mode: forgets the in-memory leases that ran out, without offering or failing
    /// anything (the store's `LEASED_JOBS` sweep decides, once, on one replica).
    pub(crate) fn drop_ended_leases(&self) {
        let now = Instant::now();
        let mut q = self.queues();
        let ended: Vec<(Instant, Id)> = q
            .lease_order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        for (t, id) in ended {
            q.lease_order.remove(&(t, id));
            q.leased.remove(&id);
            self.streams().remove(&id);
        }
    }

    /// Marks a job answered (removes its lease); true when it was leased to `computer` or
    /// queued for it.
    pub(crate) fn settle(&self, job: Id) {
        self.streams().remove(&job);
        let mut q = self.queues();
        if let Some(l) = q.leased.remove(&job) {
            q.lease_order.remove(&(l.until, job));
        }
    }

    /// Re-queues every unfinished job from the store (start-up): one range read of the
    /// `OPEN_JOBS` index over every computer (not a scan of the computers and a read per
    /// computer, which cost seconds with a million of them), then each open job's record.
    pub async fn requeue_open_jobs(&self, store: &Db) -> upkeep_store::Result<usize> {
        let mut n = 0;
        let mut entries = std::pin::pin!(store.index_entries(OPEN_JOBS));
        while let Some((_, job)) = entries.try_next().await? {
            if let Some(j) = store.get_by_key::<JobRecord>(&job).await? {
                let lease = match j.state {
                    // Not the sweep's lease while a loss is recorded: that job is done for.
                    JobState::Leased {
                        until,
                        losing: false,
                    } => Some(until),
                    _ => None,
                };
                self.enqueue_with(&j, lease);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Leases that ran out: (job, computer, re-offered?).
    pub(crate) fn expire_leases(&self) -> Vec<(Id, bool)> {
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

/// A stored token hash (64 hex digits) as the 32 bytes the token table keys by.
fn token_digest(hex_hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

fn inventory_hash(inventory: &proto::Inventory) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(inventory)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u128, computer: Id) -> JobRecord {
        JobRecord {
            id: Id::from_u128(n),
            session_id: Id::from_u128(100),
            computer_id: computer,
            job: proto::JobKind::Probe { probes: vec![] },
            lease_seconds: 60,
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            state: JobState::Queued,
            attempts: 0,
        }
    }

    fn agents(dir: &std::path::Path) -> Agents {
        let secrets = crate::secrets::SecretBox::load_or_create(dir).expect("secret key");
        Agents::new(Duration::from_secs(3), Arc::new(secrets))
    }

    /// Cluster hand-out: only the jobs this replica claimed are handed out (and leased here);
    /// every offered one leaves the queue; a job queued again by another replica's note
    /// replaces a stale lease of it, once.
    #[test]
    fn only_claimed_jobs_are_handed_out_and_a_repeated_note_queues_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = agents(dir.path());
        let c = Id::from_u128(7);
        let (j1, j2) = (job(1, c), job(2, c));
        a.enqueue_once(&j1);
        a.enqueue_once(&j1);
        a.enqueue_once(&j2);
        let offered = a.queued_for(c);
        assert_eq!(offered.len(), 2, "a repeated note queues once");
        assert!(
            offered.iter().all(|(_, reoffer)| reoffer.is_none()),
            "queued jobs are claimed only while queued in the store"
        );
        let offered = offered.into_iter().map(|(j, _)| j).collect();
        let out = a.lease_claimed(c, offered, &[(j2.id, 1)]);
        assert_eq!(
            out.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            vec![j2.id.to_string()]
        );
        assert_eq!(a.jobs_held_for(c), 1, "j2 leased here; j1 left the queue");
        // j2 is offered again (its lease ended elsewhere): the stale lease goes, it is queued.
        a.enqueue_once(&j2);
        assert_eq!(a.queued_for(c).len(), 1);
        assert_eq!(a.jobs_held_for(c), 1);
    }

    /// A poll's `lastSeenAt` is written back once it is due, once however many polls came
    /// meanwhile, with the latest poll's time; a poll after the write-back queues it again.
    #[test]
    fn last_seen_is_taken_once_when_due_with_the_latest_poll() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = agents(dir.path());
        let (c1, c2) = (Id::from_u128(1), Id::from_u128(2));
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let later = t + chrono::Duration::seconds(5);
        assert!(a.polled(c1, t, PollFacts::default()).is_some());
        assert!(a.polled(c2, t, PollFacts::default()).is_some());
        assert!(a.polled(c1, later, PollFacts::default()).is_some());
        assert_eq!(
            a.take_unwritten_seen(Duration::from_secs(30), 10),
            vec![],
            "not due for 30 s"
        );
        assert_eq!(a.take_unwritten_seen(Duration::ZERO, 1), vec![(c1, later)]);
        assert_eq!(a.take_unwritten_seen(Duration::ZERO, 10), vec![(c2, t)]);
        assert_eq!(
            a.take_unwritten_seen(Duration::ZERO, 10),
            vec![],
            "taken once"
        );
        assert!(a.polled(c2, later, PollFacts::default()).is_some());
        assert_eq!(a.take_unwritten_seen(Duration::ZERO, 10), vec![(c2, later)]);
    }

    /// Presence other replicas report makes a computer online here, and the merge says which
    /// computers were offline until then; what this replica saw is announced once, then only
    /// while a poll is held.
    #[test]
    fn presence_merges_what_other_replicas_saw() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = agents(dir.path());
        let (c1, c2) = (Id::from_u128(1), Id::from_u128(2));
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        assert!(!a.is_online(c1));
        assert_eq!(a.seen_elsewhere(&[(c1, t)]), vec![c1]);
        assert!(a.is_online(c1));
        assert_eq!(a.last_seen(c1), Some(t));
        assert_eq!(
            a.seen_elsewhere(&[(c1, t)]),
            Vec::<Id>::new(),
            "already online"
        );
        assert_eq!(a.online_count(), 1);
        assert!(a.polled(c2, t, PollFacts::default()).is_some());
        assert_eq!(a.take_to_announce(), vec![(c2, t)]);
        assert_eq!(a.take_to_announce(), vec![], "announced once");
        a.set_holding(c2, 1);
        assert_eq!(
            a.take_to_announce(),
            vec![(c2, t)],
            "while its poll is held"
        );
        assert_eq!(a.online_count(), 2);
    }
}
