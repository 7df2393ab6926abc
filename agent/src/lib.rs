//! The Upkeep reference agent: enrolls a computer with an Upkeep server once, then long-polls
//! for jobs, runs them, and reports their results (the protocol is `upkeep-agent-protocol`,
//! with examples in `docs/agent-protocol.md`).
//!
//! The one promise that shapes this crate: **a job runs at most once per computer, and its
//! result reaches the server at least once.** Every job is recorded on disk before it runs and
//! its result is spooled before it is sent (module `state`); a job offered again
//! is answered from the spool, never run again; a job interrupted by a crash is reported as
//! failed after the restart.
//!
//! Modules:
//! - `config`: [`AgentConfig`] and the command line ([`Cli`]).
//! - `host`: machine identity and inventory; `inventory`: the details (OS, hardware,
//!   software); `pending`: whether a reboot is pending, and the reboot prompt.
//! - `stop`: the shutdown signal.
//! - `state`: the state directory (credentials, job spool); the only module touching it.
//! - `runner`: running scripts in process trees with time limits and bounded output.
//! - `interpreter`: which program runs each script language on this OS.
//! - `installer`: a step's installer, fetched (resuming), verified and cached.
//! - `decode`: script output bytes as text (console code pages, UTF-16 on Windows).
//! - `platform`: what differs between Unix and Windows (signals, permissions, process trees).
//! - `service`: `upkeep-agent service install|uninstall|run` (the Windows service).
//! - `client`: the HTTP calls and the sorting of their failures.
//! - `stream`: a running step's output, sent in chunks while it runs.
//! - `backoff`: retry delays.
//!
//! This file holds the loop that ties them together.

mod backoff;
mod client;
mod config;
mod decode;
mod helpers;
mod host;
mod installer;
mod interpreter;
mod inventory;
mod pending;
mod platform;
mod runner;
mod service;
mod state;
mod stop;
mod stream;

pub use config::{AgentConfig, Cli, DEFAULT_POLL_WAIT_SECONDS, DEFAULT_REBOOT_COMMAND};

use anyhow::Context as _;
use backoff::Backoff;
use clap::Parser as _;
use client::{CallError, Client, Offer};
use host::{AGENT_VERSION, Host};
use state::{Credentials, DirLock, JobState, RESTARTED_ERROR, StateDir, StoredResult};
use std::future::Future;
use std::time::{Duration, Instant};
use stop::Stop;
use tracing::{error, info, warn};
use upkeep_agent_protocol::{
    EnrollRequest, Inventory, Job, JobKind, JobOutcome, MAX_WAIT_SECONDS, PROTOCOL_VERSION,
    PollRequest,
};

/// What a job that the agent killed because it was told to stop is reported as.
const STOPPED_ERROR: &str = "the agent was stopped while this job ran";

/// How long the agent tries to report a reboot job before rebooting anyway (the result stays
/// spooled and is sent after the restart).
const REBOOT_REPORT_LIMIT: Duration = Duration::from_secs(60);

/// How long a result delivery may take once the agent has been told to stop.
const DELIVERY_ON_STOP: Duration = Duration::from_secs(5);

/// How often the inventory is gathered afresh (it spawns `who`).
const INVENTORY_REFRESH: Duration = Duration::from_secs(60);

/// How often old delivered results are pruned while running.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest gap between two empty polls, so a server (or a `--poll-wait-seconds 0`) that
/// answers at once does not turn the agent into a busy loop.
const MIN_EMPTY_POLL_GAP: Duration = Duration::from_millis(100);

/// How often a locked state directory is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Longest wait a server's `Retry-After` may impose.
const MAX_THROTTLE: Duration = Duration::from_secs(300);

/// Entry point of the `upkeep-agent` binary: parses the command line, sets up logging
/// (`RUST_LOG`, default `info`), and runs until SIGTERM or SIGINT (Ctrl-C, Ctrl-Break or the
/// console closing on Windows). `upkeep-agent service …` manages and runs the Windows service.
pub fn main_cli() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "service") {
        return service::main_cli();
    }
    let config = AgentConfig::from(Cli::parse());
    init_logging(
        std::io::stderr,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    runtime()?.block_on(run(config, platform::shutdown_signal()))
}

/// Logs to `writer` (`RUST_LOG`, default `info`). Colour codes only help a person at a
/// terminal; in the journal or a file they are noise.
fn init_logging<W>(writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only when a subscriber is already set, which is then used instead.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .try_init();
}

/// One thread is plenty: the agent runs one job at a time and mostly waits on the network.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs the agent until `shutdown` resolves: enrolls if the state directory holds no
/// credentials, then polls, runs jobs one after another and reports their results.
///
/// On shutdown an open poll is abandoned, a running script is killed (its job reported as
/// failed, or spooled to be reported at the next start), and the function returns `Ok`.
/// It returns an error only when the agent cannot work at all: the state directory is
/// unusable, the server URL is invalid, or the first enrollment is refused.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut stop = Stop::new(shutdown);
    let state = StateDir::open(&config.state_dir).with_context(|| {
        format!(
            "cannot use the state directory {}",
            config.state_dir.display()
        )
    })?;
    let Some(lock) = lock_state_dir(&state, &mut stop).await? else {
        return Ok(());
    };
    if let Err(e) = state.clean_leftovers() {
        warn!("cannot clean up the state directory: {e}");
    }
    prune(&state);
    for job_id in state
        .recover_interrupted()
        .context("cannot read the job spool")?
    {
        warn!(job_id, "{RESTARTED_ERROR}; reporting the job as failed");
    }
    let client = Client::new(
        &config.server,
        config.poll_wait_seconds.min(MAX_WAIT_SECONDS),
    )?;
    let host = Host::detect(&config).await;
    let config_pending_file = config.reboot_pending_file.clone();

    let credentials = match state
        .load_credentials()
        .context("cannot read the stored credentials")?
    {
        Some(credentials) => {
            if credentials.server_url != config.server {
                info!(
                    "credentials were issued by {}; now using {}",
                    credentials.server_url, config.server
                );
            }
            info!(computer_id = %credentials.computer_id, "using stored credentials");
            credentials
        }
        None => match first_enrollment(&client, &host, &config, &state, &mut stop).await? {
            Some(credentials) => credentials,
            None => return Ok(()),
        },
    };

    let installers = installer::Cache::new(state.installers_dir(), config.cache_max_bytes);
    let mut agent = Agent {
        _lock: lock,
        config,
        state,
        client,
        host,
        credentials,
        backoff: Backoff::default(),
        reported_inventory: None,
        inventory_cache: None,
        last_prune: Instant::now(),
        pending: pending::PendingReboot::new(config_pending_file),
        installers,
    };
    agent.serve(&mut stop).await;
    info!("agent stopped");
    Ok(())
}

/// The enrolled agent's working state.
struct Agent {
    _lock: DirLock,
    config: AgentConfig,
    state: StateDir,
    client: Client,
    host: Host,
    credentials: Credentials,
    /// Shared by every call: any success resets it, so one healthy call ends a bad spell.
    backoff: Backoff,
    /// The inventory the server last took; `None` sends the current one with the next poll.
    reported_inventory: Option<Inventory>,
    inventory_cache: Option<(Instant, Inventory)>,
    last_prune: Instant,
    pending: pending::PendingReboot,
    installers: installer::Cache,
}

impl Agent {
    async fn serve(&mut self, stop: &mut Stop<'_>) {
        while !stop.fired() {
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                prune(&self.state);
                self.last_prune = Instant::now();
            }

            // Results first: the server is waiting for them, and their leases are running.
            let delivered = tokio::select! {
                () = stop.wait() => break,
                delivered = self.deliver_pending() => delivered,
            };
            if let Err(e) = delivered {
                self.recover_from(e, stop).await;
                continue;
            }

            let inventory = self.inventory_to_send().await;
            let request = PollRequest {
                protocol_version: PROTOCOL_VERSION,
                wait_seconds: self.poll_wait_seconds(),
                inventory: inventory.clone(),
                reboot_pending: Some(self.pending.cached().await),
            };
            let polled_at = Instant::now();
            let answer = tokio::select! {
                () = stop.wait() => break,
                answer = self.client.poll(&self.credentials.agent_token, &request) => answer,
            };
            match answer {
                Ok(offers) => {
                    self.backoff.reset();
                    if inventory.is_some() {
                        self.reported_inventory = inventory;
                    }
                    if offers.is_empty() {
                        stop.sleep(MIN_EMPTY_POLL_GAP.saturating_sub(polled_at.elapsed()))
                            .await;
                    }
                    for offer in offers {
                        if stop.fired() {
                            // Unstarted jobs are left to the server's lease rule.
                            break;
                        }
                        self.take(offer, stop).await;
                    }
                }
                Err(e) => self.recover_from(e, stop).await,
            }
        }
    }

    /// Handles one offered job: runs it if it is new, otherwise answers from the spool.
    async fn take(&mut self, offer: Offer, stop: &mut Stop<'_>) {
        let (job_id, session_id) = match &offer {
            Offer::Job(job) => (job.id.clone(), job.session_id.clone()),
            Offer::Unreadable { id, session_id, .. } => (id.clone(), session_id.clone()),
        };
        let record = match self.state.state(&job_id) {
            Ok(JobState::New) => match offer {
                Offer::Job(job) => self.execute(job, stop).await,
                Offer::Unreadable { error, .. } => {
                    error!(job_id, session_id, "cannot understand the job: {error}");
                    let error = format!(
                        "this agent (version {AGENT_VERSION}) cannot understand the job: {error}"
                    );
                    Some(self.finish(&job_id, &session_id, JobOutcome::Failed { error }))
                }
            },
            Ok(JobState::Delivered(record)) => {
                info!(
                    job_id,
                    session_id, "job already ran; sending its stored result again"
                );
                if let Err(e) = self.state.requeue(&job_id) {
                    warn!(job_id, "cannot queue the stored result again: {e}");
                }
                Some(record)
            }
            Ok(JobState::Pending(record)) => {
                info!(
                    job_id,
                    session_id, "job already ran; its result is waiting for delivery"
                );
                Some(record)
            }
            Ok(JobState::Running) => {
                error!(
                    job_id,
                    session_id, "job is offered while it runs; not starting it twice"
                );
                None
            }
            Err(e) => {
                // Without knowing whether it ran, running it could run it twice; the server's
                // lease rule deals with a job that gets no answer.
                error!(
                    job_id,
                    session_id, "cannot read the job spool, so the job is not run: {e}"
                );
                None
            }
        };
        let Some(record) = record else { return };
        let delivered = if stop.fired() {
            tokio::time::timeout(DELIVERY_ON_STOP, self.deliver(&record))
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::Transient("timed out while stopping".to_owned()))
                })
        } else {
            self.deliver(&record).await
        };
        if let Err(e) = delivered {
            warn!(
                job_id,
                session_id, "result not delivered yet ({e}); it stays spooled and is retried"
            );
        }
    }

    /// Runs a new job; returns its spooled result, or `None` when it was already reported
    /// (reboot jobs report themselves before the reboot).
    async fn execute(&mut self, job: Job, stop: &mut Stop<'_>) -> Option<StoredResult> {
        info!(job_id = %job.id, session_id = %job.session_id, kind = kind_name(&job.kind), "job started");
        if let Err(e) = self.state.mark_running(&job) {
            error!(job_id = %job.id, "cannot record the job on disk, so it is not run: {e}");
            let error =
                format!("the agent could not record the job on disk, so it did not run it: {e}");
            return Some(self.finish(&job.id, &job.session_id, JobOutcome::Failed { error }));
        }
        let installer = match self.fetch_installer(&job, stop).await {
            Ok(path) => path,
            Err(outcome) => return Some(self.finish(&job.id, &job.session_id, outcome)),
        };
        let ctx = runner::JobContext {
            work_dir: self.state.work_dir(),
            job_id: &job.id,
            session_id: &job.session_id,
            version: step_version(&job.kind),
            installer_file: installer.as_deref(),
        };
        let outcome = match &job.kind {
            JobKind::Probe { probes } => stop.unless_stopped(runner::run_probes(ctx, probes)).await,
            JobKind::Prompt { message } => {
                Some(pending::prompt(&self.config.prompt_command, message).await)
            }
            JobKind::Step {
                script, parameters, ..
            } => {
                let token = self.credentials.agent_token.as_str();
                let mut streamer = stream::Streamer::new(&self.client, token, &job.id);
                let work = async {
                    let tee = runner::Tee::default();
                    let run = runner::run_script_streaming(ctx, script, parameters, &tee);
                    tokio::pin!(run);
                    // The script and the streamer run side by side: a slow server never
                    // stalls the script's pipes or its time limit.
                    let outcome = loop {
                        let tick = async {
                            tokio::time::sleep(stream::STREAM_EVERY).await;
                            streamer.flush(&tee).await;
                        };
                        tokio::select! {
                            outcome = &mut run => break outcome,
                            () = tick => {}
                        }
                    };
                    let _ = tokio::time::timeout(stream::FINAL_FLUSH, streamer.flush(&tee)).await;
                    outcome
                };
                match stop.unless_stopped(self.while_wanted(&job.id, work)).await {
                    Some(Some(outcome)) => Some(JobOutcome::Step { outcome }),
                    Some(None) => {
                        // Dropping the run killed the script's process group.
                        warn!(job_id = %job.id, session_id = %job.session_id, "the server no longer wants this job; its script was stopped");
                        let error = upkeep_agent_protocol::STOPPED_BY_SERVER.to_owned();
                        return Some(self.finish(
                            &job.id,
                            &job.session_id,
                            JobOutcome::Failed { error },
                        ));
                    }
                    None => None,
                }
            }
            JobKind::Reboot {} => {
                self.reboot(&job, stop).await;
                self.pending.forget();
                return None;
            }
        };
        let outcome = outcome.unwrap_or_else(|| {
            warn!(job_id = %job.id, session_id = %job.session_id, "stopped while the job ran; its processes were killed");
            JobOutcome::Failed { error: STOPPED_ERROR.to_owned() }
        });
        // Probes come before a session changes anything: it reboots first when one is pending.
        let pending = match job.kind {
            JobKind::Probe { .. } => Some(self.pending.fresh().await),
            _ => None,
        };
        Some(self.finish_noting(&job.id, &job.session_id, outcome, pending))
    }

    /// A step's installer, fetched and verified before anything runs (`None` for jobs without
    /// one); `Err` is the job's outcome when it could not be had: a file that does not match
    /// fails the job with nothing run. Job-status checks go on while it downloads.
    async fn fetch_installer(
        &self,
        job: &Job,
        stop: &mut Stop<'_>,
    ) -> Result<Option<std::path::PathBuf>, JobOutcome> {
        let JobKind::Step {
            installer: Some(inst),
            ..
        } = &job.kind
        else {
            return Ok(None);
        };
        let token = self.credentials.agent_token.as_str();
        let fetch = self.installers.get(&self.client, token, inst);
        let error = match stop.unless_stopped(self.while_wanted(&job.id, fetch)).await {
            Some(Some(Ok(path))) => return Ok(Some(path)),
            Some(Some(Err(error))) => {
                warn!(job_id = %job.id, session_id = %job.session_id, "installer not usable, nothing run: {error}");
                error
            }
            Some(None) => upkeep_agent_protocol::STOPPED_BY_SERVER.to_owned(),
            None => STOPPED_ERROR.to_owned(),
        };
        Err(JobOutcome::Failed { error })
    }

    /// Runs `work` while the server still wants job `job_id`, asking every few seconds;
    /// `None` (and `work` dropped, which kills a script's process group) once it does not.
    async fn while_wanted<T>(&self, job_id: &str, work: impl Future<Output = T>) -> Option<T> {
        let interval = Duration::from_secs(upkeep_agent_protocol::JOB_STATUS_INTERVAL_SECONDS);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tokio::time::sleep(interval) => {
                    match self.client.job_status(&self.credentials.agent_token, job_id).await {
                        Ok(s) if !s.wanted => return None,
                        // Unknown answers (network, an older server) change nothing.
                        _ => {}
                    }
                }
            }
        }
    }

    /// Starts the reboot command behind a gate, reports "started" while the machine is still
    /// up, then opens the gate.
    async fn reboot(&mut self, job: &Job, stop: &mut Stop<'_>) {
        let (outcome, gate) = match runner::spawn_reboot(&self.config.reboot_command) {
            Ok(gate) => (
                JobOutcome::Reboot {
                    started: true,
                    error: None,
                },
                Some(gate),
            ),
            Err(e) => {
                let error = format!(
                    "could not start the reboot command {:?}: {e}",
                    self.config.reboot_command
                );
                (
                    JobOutcome::Reboot {
                        started: false,
                        error: Some(error),
                    },
                    None,
                )
            }
        };
        let record = self.finish(&job.id, &job.session_id, outcome);
        let deadline = Instant::now() + REBOOT_REPORT_LIMIT;
        loop {
            let Err(e) = self.deliver(&record).await else {
                break;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || matches!(e, CallError::Unauthorized(_)) || stop.fired() {
                warn!(job_id = %job.id, "could not report the reboot job ({e}); its result is sent after the restart");
                break;
            }
            let delay = self.backoff.next_delay().min(left);
            if stop.sleep(delay).await {
                break;
            }
        }
        if let Some(gate) = gate {
            info!(job_id = %job.id, session_id = %job.session_id, command = %self.config.reboot_command, "running the reboot command");
            gate.release();
        }
    }

    /// Spools a finished job's result. If the disk fails, the result is still returned to be
    /// sent once: better an answer without a safety copy than none.
    fn finish(&self, job_id: &str, session_id: &str, outcome: JobOutcome) -> StoredResult {
        self.finish_noting(job_id, session_id, outcome, None)
    }

    /// [`finish`](Self::finish), reporting whether a reboot is pending.
    fn finish_noting(
        &self,
        job_id: &str,
        session_id: &str,
        outcome: JobOutcome,
        reboot_pending: Option<bool>,
    ) -> StoredResult {
        let mut record = StoredResult::new(job_id, session_id, outcome);
        record.result.reboot_pending = reboot_pending;
        runner::fit_to_body_limit(&mut record.result);
        info!(job_id, session_id, result = %runner::summary(&record.result.outcome), "job finished");
        if let Err(e) = self.state.store_result(&record) {
            error!(
                job_id,
                session_id, "cannot spool the result; sending it without a copy on disk: {e}"
            );
        }
        record
    }

    async fn deliver_pending(&mut self) -> Result<(), CallError> {
        let pending = match self.state.pending() {
            Ok(pending) => pending,
            Err(e) => {
                error!("cannot read the result spool: {e}");
                return Ok(());
            }
        };
        for record in pending {
            self.deliver(&record).await?;
        }
        Ok(())
    }

    /// Sends one result. Any 2xx (accepted or a repeat) and any final refusal end its
    /// delivery; only failures worth retrying are returned.
    async fn deliver(&mut self, record: &StoredResult) -> Result<(), CallError> {
        let (job_id, session_id) = (&record.job_id, &record.session_id);
        match self
            .client
            .send_result(&self.credentials.agent_token, job_id, &record.result)
            .await
        {
            Ok(ack) => {
                self.backoff.reset();
                info!(
                    job_id,
                    session_id,
                    accepted = ack.accepted,
                    "result delivered"
                );
            }
            Err(CallError::Refused { status, message }) => {
                error!(
                    job_id,
                    session_id,
                    "the server refused the result for good ({status}: {message}); dropping it"
                );
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = self.state.mark_delivered(job_id) {
            error!(job_id, "cannot move the delivered result aside: {e}");
        }
        Ok(())
    }

    /// Waits out a failed call, re-enrolling first when the token was refused.
    async fn recover_from(&mut self, error: CallError, stop: &mut Stop<'_>) {
        let delay = match error {
            CallError::Unauthorized(message) => return self.reenroll_or_wait(&message, stop).await,
            CallError::Throttled { retry_after } => {
                let delay =
                    retry_after.map_or_else(|| self.backoff.next_delay(), |d| d.min(MAX_THROTTLE));
                warn!("the server is throttling this agent; waiting {delay:.1?}");
                delay
            }
            CallError::Refused { status, message } => {
                let delay = self.backoff.next_delay();
                error!(
                    "the server refused the request ({status}: {message}); retrying in {delay:.1?}"
                );
                delay
            }
            CallError::Transient(message) => {
                let delay = self.backoff.next_delay();
                warn!("cannot reach the server: {message}; retrying in {delay:.1?}");
                delay
            }
        };
        stop.sleep(delay).await;
    }

    async fn reenroll_or_wait(&mut self, message: &str, stop: &mut Stop<'_>) {
        let Some(key) = self.config.enrollment_key.clone() else {
            let delay = self.backoff.next_delay();
            error!(
                computer_id = %self.credentials.computer_id,
                "the server no longer accepts this agent's token ({message}): the token was revoked or the \
                 computer removed; start the agent with --enrollment-key to enroll again. Retrying in {delay:.1?}"
            );
            stop.sleep(delay).await;
            return;
        };
        warn!(
            computer_id = %self.credentials.computer_id,
            "the server no longer accepts this agent's token ({message}); enrolling again with the enrollment key"
        );
        let enrolled = tokio::select! {
            () = stop.wait() => return,
            enrolled = enroll(&self.client, &self.host, &self.config.server, &key) => enrolled,
        };
        match enrolled {
            Ok(credentials) => {
                if let Err(e) = self.state.save_credentials(&credentials) {
                    error!(
                        "cannot store the new credentials; they last until the agent stops: {e}"
                    );
                }
                info!(computer_id = %credentials.computer_id, "enrolled again");
                self.credentials = credentials;
                self.reported_inventory = None;
                self.backoff.reset();
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                error!("enrolling again failed: {e}; retrying in {delay:.1?}");
                stop.sleep(delay).await;
            }
        }
    }

    /// The inventory, when it differs from what the server last took.
    async fn inventory_to_send(&mut self) -> Option<Inventory> {
        let stale = self
            .inventory_cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= INVENTORY_REFRESH);
        if stale {
            self.inventory_cache = Some((Instant::now(), self.host.inventory().await));
        }
        let (_, current) = self.inventory_cache.as_ref()?;
        (self.reported_inventory.as_ref() != Some(current)).then(|| current.clone())
    }

    /// The operator's wait, shortened to the server's hint from enrollment (a proxy in front
    /// of the server may cut long requests), capped at the protocol maximum.
    fn poll_wait_seconds(&self) -> u32 {
        let hint = self
            .credentials
            .poll_wait_seconds
            .filter(|&s| s > 0)
            .unwrap_or(MAX_WAIT_SECONDS);
        self.config
            .poll_wait_seconds
            .min(hint)
            .min(MAX_WAIT_SECONDS)
    }
}

/// Enrolls until it works; `Ok(None)` when told to stop first. A refused key is final: the
/// agent cannot do anything without credentials.
async fn first_enrollment(
    client: &Client,
    host: &Host,
    config: &AgentConfig,
    state: &StateDir,
    stop: &mut Stop<'_>,
) -> anyhow::Result<Option<Credentials>> {
    let Some(key) = config.enrollment_key.as_deref() else {
        anyhow::bail!(
            "{} holds no credentials and no enrollment key was given (--enrollment-key or UPKEEP_ENROLLMENT_KEY)",
            state.root().display()
        );
    };
    let mut backoff = Backoff::default();
    loop {
        let enrolled = tokio::select! {
            () = stop.wait() => return Ok(None),
            enrolled = enroll(client, host, &config.server, key) => enrolled,
        };
        let delay = match enrolled {
            Ok(credentials) => {
                state
                    .save_credentials(&credentials)
                    .context("cannot store the credentials")?;
                info!(computer_id = %credentials.computer_id, "enrolled");
                return Ok(Some(credentials));
            }
            Err(CallError::Unauthorized(message)) => {
                anyhow::bail!("the server refused the enrollment key: {message}")
            }
            Err(CallError::Refused { status, message }) => {
                anyhow::bail!("the server refused the enrollment ({status}): {message}")
            }
            Err(CallError::Throttled { retry_after }) => {
                let delay =
                    retry_after.map_or_else(|| backoff.next_delay(), |d| d.min(MAX_THROTTLE));
                warn!("the server is throttling enrollments; waiting {delay:.1?}");
                delay
            }
            Err(CallError::Transient(message)) => {
                let delay = backoff.next_delay();
                warn!("cannot enroll: {message}; retrying in {delay:.1?}");
                delay
            }
        };
        if stop.sleep(delay).await {
            return Ok(None);
        }
    }
}

async fn enroll(
    client: &Client,
    host: &Host,
    server: &str,
    key: &str,
) -> Result<Credentials, CallError> {
    let request = EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        enrollment_key: key.to_owned(),
        hostname: host.hostname().await,
        machine_id: host.machine_id().to_owned(),
        os: host::os_name(),
        agent_version: AGENT_VERSION.to_owned(),
    };
    let response = client.enroll(&request).await?;
    Ok(Credentials {
        computer_id: response.computer_id,
        agent_token: response.agent_token,
        server_url: server.to_owned(),
        poll_wait_seconds: Some(response.poll_wait_seconds),
    })
}

/// Waits while another agent (or a previous run in this process that is still shutting down)
/// holds the state directory; `Ok(None)` when told to stop first.
async fn lock_state_dir(state: &StateDir, stop: &mut Stop<'_>) -> anyhow::Result<Option<DirLock>> {
    let mut waiting_logged = false;
    loop {
        let lock = state.try_lock().with_context(|| {
            format!("cannot lock the state directory {}", state.root().display())
        })?;
        if let Some(lock) = lock {
            return Ok(Some(lock));
        }
        if !waiting_logged {
            warn!(
                "another agent is using {}; waiting for it to stop",
                state.root().display()
            );
            waiting_logged = true;
        }
        if stop.sleep(LOCK_RETRY).await {
            return Ok(None);
        }
    }
}

fn prune(state: &StateDir) {
    match state.prune_delivered(state::KEEP_DELIVERED) {
        Ok(0) => {}
        Ok(n) => info!("forgot {n} delivered result(s) older than 7 days"),
        Err(e) => warn!("cannot prune delivered results: {e}"),
    }
}

/// The version an install or upgrade step brings (`UPKEEP_VERSION`).
fn step_version(kind: &JobKind) -> Option<&str> {
    match kind {
        JobKind::Step { version, .. } => version.as_deref(),
        _ => None,
    }
}

fn kind_name(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Probe { .. } => "probe",
        JobKind::Step { .. } => "step",
        JobKind::Reboot {} => "reboot",
        JobKind::Prompt { .. } => "prompt",
    }
}

#[cfg(all(test, unix))]
mod fake_server;
#[cfg(all(test, unix))]
mod tests;
