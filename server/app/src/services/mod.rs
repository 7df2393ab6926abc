//! The services: the session runtime, the agent gateway and what follows from agents' reports
//! (`fleet`), the scheduler, the mail and webhook outboxes, people and keys, metrics. [`App`]
//! holds them and the store; HTTP handlers, GraphQL resolvers and background loops share it as
//! `Arc<App>`.
//!
//! Architecture invariant: nothing here names axum or async-graphql types of the API layer
//! (`crate::api`); the API calls in, never the reverse.

pub mod agent_tokens;
pub mod agents;
pub mod cluster;
pub mod files;
pub mod fleet;
pub mod impact;
pub mod library;
pub mod metrics;
pub mod outbox;
pub mod removal;
pub mod reports;
pub mod rollouts;
pub mod runtime;
pub mod scheduler;
pub mod sequence;
pub mod users;
pub mod webhooks;

use crate::auth::{Keys, LoginThrottle, Throttle};
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::error::ApiResult;
use crate::mail::render::Templates;
use crate::services::agents::Agents;
use crate::services::metrics::Metrics;
use crate::services::runtime::SessionRuntime;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use upkeep_core::domain::*;
use upkeep_core::session::{Session, SessionEvent};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey};

pub struct App {
    pub store: Db,
    pub config: ServeConfig,
    pub clock: Clock,
    pub keys: Keys,
    /// Seals SECRET parameter values and opens them for the agent (`crate::secrets`).
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// Signs each session's record when it ends (`attestation`).
    pub attestation: Arc<crate::attestation::Signer>,
    pub templates: Templates,
    pub agents: Agents,
    pub runtime: SessionRuntime,
    pub metrics: Metrics,
    /// Every session event, after it was persisted.
    pub events: broadcast::Sender<Arc<SessionEvent>>,
    pub logins: LoginThrottle,
    pub enroll_by_ip: Throttle,
    /// `sendTestEmail` per tenant and per actor: it sends mail to any address.
    pub test_mails_by_tenant: Throttle,
    pub test_mails_by_actor: Throttle,
    pub outbox: Arc<crate::services::outbox::Outbox>,
    pub scheduler: Arc<crate::services::scheduler::Scheduler>,
    pub webhooks: Arc<crate::services::webhooks::Webhooks>,
    /// Rollouts of a deployment in waves (`services::rollouts`).
    pub rollouts: Arc<crate::services::rollouts::Rollouts>,
    pub public_url: crate::config::PublicUrl,
    pub accounts: crate::services::users::Accounts,
    /// Installer files, stored by hash under the data dir.
    pub files: crate::services::files::Files,
    /// Cancelled once, when the server stops: every background loop, held poll and open
    /// connection ends on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Bumped whenever a credential may have ended (a key revoked, a user deleted, disabled or
    /// given a new password, the clock moved): open WebSockets check theirs again at once.
    pub credentials_changed: tokio::sync::watch::Sender<u64>,
    /// Cluster mode's connection to the other replicas (`--nats-url`); `None` on one node.
    pub cluster: Option<Arc<crate::services::cluster::Bus>>,
    /// Set once start-up work (recovery of sessions, jobs and tokens) is done: `/readyz`.
    pub ready: std::sync::atomic::AtomicBool,
    /// This process's id as a holder of leases (fresh at every start).
    pub replica: Id,
    /// Monthly reports being built (`services::reports`): each reads a month of a tenant's
    /// sessions, so only `--max-concurrent-reports` at once.
    pub reports: crate::services::Permits,
    /// Impact previews being computed (`services::impact`): each plans every computer the
    /// change may reach, so only `--max-concurrent-previews` at once.
    pub previews: crate::services::Permits,
}

/// A bound on one kind of costly work (reports, previews): at most `n` at once; a caller waits
/// up to `wait` for a turn, then gets `THROTTLED` (HTTP 429). With `n` = 0 the work is turned
/// off and every caller gets `THROTTLED` at once.
pub struct Permits {
    semaphore: tokio::sync::Semaphore,
    off: bool,
    wait: Duration,
    busy: &'static str,
}

impl Permits {
    pub fn new(n: u32, wait: Duration, busy: &'static str) -> Permits {
        Permits {
            semaphore: tokio::sync::Semaphore::new(n as usize),
            off: n == 0,
            wait,
            busy,
        }
    }

    /// A turn, held until the permit is dropped.
    pub async fn acquire(&self) -> crate::error::ApiResult<tokio::sync::SemaphorePermit<'_>> {
        let busy = || crate::error::ApiError::Busy(self.busy.into());
        if self.off {
            return Err(crate::error::ApiError::Busy(
                "this server is configured to do none of this (0 at once)".into(),
            ));
        }
        match tokio::time::timeout(self.wait, self.semaphore.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy()),
        }
    }
}

/// The keys a server generates at its first start (or finds in the store in cluster mode),
/// beside the JWT key.
pub struct ServerKeys {
    /// SECRET parameters' key.
    pub sealing: crate::secrets::SecretBox,
    /// The key session records are signed with.
    pub attestation: crate::attestation::Signer,
}

impl App {
    // long: the composition root: every service is built here from the same config, store,
    // clock and stop token, one field each; splitting it would only move the list.
    pub fn new(
        store: Db,
        config: ServeConfig,
        clock: Clock,
        keys: Keys,
        templates: Templates,
        public_url: crate::config::PublicUrl,
        generated: ServerKeys,
    ) -> App {
        let ServerKeys {
            sealing: secrets,
            attestation,
        } = generated;
        let secrets = Arc::new(secrets);
        let offline_after = Duration::from_secs(u64::from(config.offline_after_seconds));
        let max = config.max_concurrent_sessions as usize;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let replica = crate::ids::fresh();
        // Cluster mode: mails and webhook deliveries are claimed per item before sending, so
        // that of the replicas running the outboxes one sends each (`upkeep_core::lease`).
        let claims = config
            .database_url
            .is_some()
            .then(|| upkeep_core::lease::Claimant {
                holder: replica,
                length: chrono::Duration::seconds(i64::from(config.claim_lease_seconds)),
            });
        let webhooks = crate::services::webhooks::Webhooks::new(
            store.clone(),
            clock.clone(),
            crate::services::webhooks::WebhooksConfig {
                allow_private: config.allow_private_webhooks,
                claims,
                shutdown: shutdown.clone(),
            },
        );
        let webhooks = Arc::new(webhooks);
        let outbox = crate::services::outbox::Outbox::new(
            store.clone(),
            clock.clone(),
            crate::services::outbox::OutboxConfig {
                smtp_url: config.smtp_url.clone(),
                data_dir: config.data_dir.clone(),
                webhooks: webhooks.clone(),
                claims,
                shutdown: shutdown.clone(),
            },
        );
        let rollouts = Arc::new(crate::services::rollouts::Rollouts::new(
            store.clone(),
            clock.clone(),
            webhooks.clone(),
            shutdown.clone(),
        ));
        let reports = Permits::new(
            config.max_concurrent_reports,
            Duration::from_secs(30),
            "other reports are being built: retry in a minute",
        );
        let previews = Permits::new(
            config.max_concurrent_previews,
            Duration::from_secs(10),
            "other previews are being computed: retry in a moment",
        );
        App {
            outbox: Arc::new(outbox),
            rollouts,
            webhooks,
            agents: Agents::new(offline_after, secrets.clone()),
            secrets,
            attestation: Arc::new(attestation),
            runtime: SessionRuntime::new(max),
            metrics: Metrics::default(),
            events: broadcast::channel(8192).0,
            logins: LoginThrottle::default(),
            enroll_by_ip: Throttle::new(20, Duration::from_secs(300)),
            test_mails_by_tenant: Throttle::new(10, Duration::from_secs(3600)),
            test_mails_by_actor: Throttle::new(30, Duration::from_secs(3600)),
            scheduler: Arc::new(crate::services::scheduler::Scheduler::new(
                store.clone(),
                clock.clone(),
                shutdown.clone(),
            )),
            shutdown,
            accounts: crate::services::users::Accounts::new(store.clone(), clock.clone()),
            credentials_changed: tokio::sync::watch::channel(0).0,
            files: crate::services::files::Files::in_dir(
                config.files_dir(),
                config.max_upload_bytes(),
            ),
            store,
            config,
            clock,
            keys,
            templates,
            public_url,
            cluster: None,
            ready: std::sync::atomic::AtomicBool::new(false),
            replica,
            reports,
            previews,
        }
    }

    /// In cluster mode: the connection to the other replicas.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::services::cluster::Bus>>) -> App {
        if cluster.is_some() {
            self.runtime.share();
        }
        self.cluster = cluster;
        self
    }

    /// Publishes a stored session event: to this replica's subscribers, and in cluster mode to
    /// every other replica's. Call only after the event was committed.
    pub fn publish_event(&self, e: SessionEvent) {
        self.metrics
            .session_events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(bus) = &self.cluster {
            bus.send(crate::services::cluster::Note::Event(e.clone()));
        }
        let _ = self.events.send(Arc::new(e));
    }

    /// Tells the other replicas (cluster mode; nothing on one node). Call only after what
    /// `note` tells of was committed.
    pub fn tell_replicas(&self, note: crate::services::cluster::Note) {
        if let Some(bus) = &self.cluster {
            bus.send(note);
        }
    }

    /// Queues a stored job for its agent here and, in cluster mode, on every replica (the
    /// agent may poll any; the store's claim at hand-out makes one of them hand it out).
    pub fn offer_job(&self, j: &upkeep_core::session::JobRecord) {
        tracing::debug!(replica = %self.replica_tag(), job = %j.id, session = %j.session_id, "job offered");
        self.agents.enqueue(j);
        self.tell_replicas(crate::services::cluster::Note::Job(j.clone()));
    }

    /// This replica's id on the bus, for log lines ("-" on one node).
    pub fn replica_tag(&self) -> String {
        self.cluster.as_ref().map_or_else(
            || "-".to_string(),
            |b| b.replica.to_string()[28..].to_string(),
        )
    }

    /// Acts on a note from another replica (see `services::cluster`).
    pub async fn on_cluster_note(self: &Arc<Self>, note: crate::services::cluster::Note) {
        use crate::services::cluster::Note;
        match note {
            Note::Event(e) => {
                let _ = self.events.send(Arc::new(e));
            }
            Note::Job(j) => {
                tracing::debug!(replica = %self.replica_tag(), job = %j.id, state = ?j.state, "job note");
                self.agents.enqueue_once(&j)
            }
            Note::Seen { computers } => {
                for c in self.agents.seen_elsewhere(&computers) {
                    self.computer_came_online(c, true);
                }
            }
            Note::AgentToken { computer } => self.agents.drop_tokens_of(computer),
            Note::Session { id } => {
                // Off the inbox: the session's lock may be held by a step for a while.
                let app = self.clone();
                tokio::spawn(async move { app.session_changed_elsewhere(id).await });
            }
        }
    }

    /// Reads other replicas' notes until the server stops.
    pub async fn run_cluster_inbox(self: Arc<Self>, mut inbox: crate::services::cluster::Inbox) {
        loop {
            let note = tokio::select! {
                n = inbox.next() => match n { Some(n) => n, None => {
                    tracing::error!("the cluster inbox ended");
                    return;
                } },
                _ = self.shutdown.cancelled() => return,
            };
            self.on_cluster_note(note).await;
        }
    }

    /// Writes an audit record that describes no other change (a sign-in). A failure is logged,
    /// not raised: the audit trail must not become a way to lock people out.
    pub async fn record_audit(&self, event: upkeep_core::audit::AuditEvent) {
        let r = self
            .store
            .write(|tx| tx.put::<_, ()>(&event))
            .await
            .map_err(|_| ());
        if r.is_err() || self.store.flush().await.is_err() {
            tracing::error!(action = %event.action, "could not write an audit record");
        }
    }

    /// Tells open connections that a credential may have ended (see `credentials_changed`).
    pub fn credentials_may_have_ended(&self) {
        self.credentials_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Enabled deployments that may apply to computers of `tenant`: the tenant's own and the
    /// cross-tenant ones.
    pub async fn catalogue_deployments_for(&self, tenant: Id) -> ApiResult<Vec<Deployment>> {
        let mut out = Vec::new();
        for key in [tenant_key(Some(tenant)), tenant_key(None)] {
            let mut deployments = std::pin::pin!(
                self.store
                    .by_index::<Deployment>(&IndexKey::new(TENANT_DEPLOYMENTS, key), None)
            );
            while let Some(d) = deployments.next().await {
                out.push(d?);
            }
        }
        Ok(out)
    }

    /// Sessions of a computer, newest first.
    pub async fn sessions_of_computer(
        &self,
        computer: Id,
        limit: usize,
    ) -> ApiResult<Vec<Session>> {
        let idx = IndexKey::new(COMPUTER_SESSIONS, computer.as_bytes());
        let mut keys: Vec<Vec<u8>> = self.store.index_scan(&idx, None).try_collect::<_>().await?;
        keys.reverse();
        let mut out = Vec::new();
        for k in keys.into_iter().take(limit) {
            if let Some(s) = self.store.get_by_key::<Session>(&k).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A session's stored events with `sequence > after`, in order.
    pub fn events_after(
        &self,
        session: Id,
        after: u64,
    ) -> impl futures_util::Stream<Item = upkeep_store::Result<SessionEvent>> + Send + '_ {
        let start = event_key(session, after);
        self.store
            .scan_prefix::<SessionEvent>(session.as_bytes(), Some(&start))
    }
}

impl App {
    /// One scheduler pass, now (tests and the loop drive the same code).
    pub async fn scheduler_pass(self: &Arc<Self>) -> ApiResult<()> {
        self.scheduler.pass(self).await
    }
}

#[async_trait::async_trait]
/// The scheduler reaches sessions through the runtime, here, where both are composed.
impl crate::services::scheduler::Sessions for Arc<App> {
    fn active_session_of(&self, computer: Id) -> Option<Id> {
        self.runtime.active_session_of(computer)
    }

    async fn cancel(&self, session: Id, reason: &str) -> ApiResult<()> {
        self.cancel_session(session, reason).await.map(|_| ())
    }

    async fn start(
        &self,
        reqs: Vec<crate::services::runtime::StartRequest>,
        guard: Option<&crate::services::runtime::StartGuard<'_>>,
    ) -> ApiResult<Vec<Session>> {
        self.start_sessions_guarded(reqs, crate::services::runtime::Busy::Skip, None, guard)
            .await
    }
}
