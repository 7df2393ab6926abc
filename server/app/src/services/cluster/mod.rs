//! Cluster mode's fan-out between replicas: NATS JetStream as a doorbell. With `--nats-url`
//! every replica publishes what others must hear about (stored session events, jobs queued for
//! agents, sessions that changed, agents seen) and hears everyone else's. The store stays the
//! source of truth: a note only says "look" or carries a copy of a record already committed, so
//! a lost or repeated note costs a delay, never a wrong state, and every receiver is
//! idempotent.
//!
//! Architecture invariant: only this module names async-nats (`server/app/Cargo.toml`; checked
//! by `.ci/run` with `cargo tree -i async-nats`), and a note is published only after the change
//! it tells of was committed (`runtime::after_commit` and the other callers of [`Bus::send`]).
//!
//! One JetStream stream per deployment, `<PREFIX>_BUS` on the subjects `<prefix>.bus.>`, file
//! storage, an hour of history: a replica that loses NATS for a while (a NATS restart) resumes
//! where it stopped with an ordered consumer, which recreates itself from the last stream
//! sequence it saw. Each replica reads the stream from the moment it subscribed, which is
//! before it loads its state from the store at start, so nothing falls between the two.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use upkeep_core::domain::{Id, Time};
use upkeep_core::session::{JobRecord, SessionEvent};

/// Notes waiting to be published; past this, new ones are dropped (and counted): the store
/// still has what they tell of.
const SEND_QUEUE: usize = 65_536;
/// Notes read from the stream and not yet taken by the inbox's reader; the reader waits
/// beyond it (the stream keeps them).
const INBOX_QUEUE: usize = 4096;
/// How long a published note stays in the stream for replicas that were away.
const HISTORY: Duration = Duration::from_secs(3600);
/// The stream's size bound (oldest notes go first).
const HISTORY_BYTES: i64 = 1 << 30;

/// What one replica tells the others. Each names a record already committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// A session event as stored: subscribers on every replica see it.
    Event(SessionEvent),
    /// A job stored for an agent: whichever replica the agent polls can hand it out.
    Job(JobRecord),
    /// A session changed in a way other replicas' boards must know (status, stage, timer).
    Session { id: Id },
    /// Agents that polled the sender, and when: presence is right whichever replica they poll.
    Seen { computers: Vec<(Id, Time)> },
    /// A computer's agent token was revoked or replaced: replicas drop what they hold of it in
    /// memory (the store has the valid one).
    AgentToken { computer: Id },
}

impl Note {
    fn subject(&self, prefix: &str) -> String {
        let kind = match self {
            Note::Event(_) => "event",
            Note::Job(_) => "job",
            Note::Session { .. } => "session",
            Note::Seen { .. } => "seen",
            Note::AgentToken { .. } => "agent_token",
        };
        format!("{prefix}.bus.{kind}")
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending replica: a replica skips its own notes (it acted on them already).
    origin: Id,
    note: Note,
}

/// The connection to NATS and this replica's place on it.
pub struct Bus {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    prefix: String,
    /// This process's id on the bus (fresh at every start).
    pub replica: Id,
    queue: tokio::sync::mpsc::Sender<Outgoing>,
    queue_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Outgoing>>>,
    /// Notes dropped because the send queue was full.
    pub dropped: AtomicU64,
    /// Notes published (acknowledged by JetStream) and received from other replicas.
    pub published: AtomicU64,
    pub received: AtomicU64,
}

/// A note ready to publish: its subject and body.
type Outgoing = (String, Vec<u8>);

/// Notes from other replicas, in stream order.
pub type Inbox = futures_util::stream::BoxStream<'static, Note>;

impl Bus {
    /// Connects (retrying in the background after the first connection), and makes sure the
    /// deployment's stream exists.
    pub async fn connect(url: &str, prefix: &str, replica: Id) -> anyhow::Result<Bus> {
        use anyhow::Context as _;
        let client = async_nats::ConnectOptions::new()
            .name(format!("upkeep-server {replica}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .context("cannot connect to NATS (--nats-url)")?;
        // `retry_on_initial_connect` returns at once; wait for the first connection so a wrong
        // URL fails the start instead of a later request.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "NATS at --nats-url did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let jetstream = async_nats::jetstream::new(client.clone());
        jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream_name(prefix),
                subjects: vec![format!("{prefix}.bus.>")],
                max_age: HISTORY,
                max_bytes: HISTORY_BYTES,
                storage: async_nats::jetstream::stream::StorageType::File,
                discard: async_nats::jetstream::stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream: {e}"))?;
        let (queue, rx) = tokio::sync::mpsc::channel(SEND_QUEUE);
        Ok(Bus {
            client,
            jetstream,
            prefix: prefix.to_string(),
            replica,
            queue,
            queue_rx: std::sync::Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    /// Whether the connection to NATS is up (`/healthz`).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Queues `note` for publishing; returns at once. Call only after what it tells of was
    /// committed.
    pub fn send(&self, note: Note) {
        let subject = note.subject(&self.prefix);
        let body = match serde_json::to_vec(&Envelope {
            origin: self.replica,
            note,
        }) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a cluster note");
                return;
            }
        };
        if self.queue.try_send((subject, body)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "cluster send queue full: notes dropped (other replicas catch up from the store)"
                );
            }
        }
    }

    /// Publishes queued notes in order until `stop`, each until JetStream acknowledges it
    /// (retrying while NATS is away). Run once.
    pub async fn run_sender(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(mut rx) = self.queue_rx.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        loop {
            let (subject, body) = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = stop.cancelled() => return,
            };
            let mut pause = Duration::from_millis(50);
            loop {
                match self.publish_once(&subject, &body).await {
                    Ok(()) => {
                        self.published.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish a cluster note; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    async fn publish_once(&self, subject: &str, body: &[u8]) -> anyhow::Result<()> {
        let ack = self
            .jetstream
            .publish(subject.to_string(), body.to_vec().into())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| anyhow::anyhow!("no acknowledgement within 10 s"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// Subscribes to other replicas' notes from now on. Call before loading state from the
    /// store, then read the inbox once loading is done.
    ///
    /// The inbox outlives NATS restarts and lost consumers: it remembers the stream sequence
    /// of the last note it read and, when reading fails (the server restarted and forgot the
    /// consumer, the connection broke), opens a new consumer from the next sequence, so no
    /// note in the stream's history is skipped.
    pub async fn subscribe(self: &Arc<Self>) -> anyhow::Result<Inbox> {
        let stream = self
            .jetstream
            .get_stream(stream_name(&self.prefix))
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the JetStream stream: {e}"))?;
        // Everything published from now on: the sequence after the stream's last one.
        let next = stream.cached_info().state.last_sequence + 1;
        let messages = self.open_consumer(next).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(INBOX_QUEUE);
        tokio::spawn(self.clone().read_notes(messages, next, tx));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn open_consumer(
        &self,
        from: u64,
    ) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let stream = self
            .jetstream
            .get_stream(stream_name(&self.prefix))
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the JetStream stream: {e}"))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to the JetStream stream: {e}"))?;
        consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the JetStream stream: {e}"))
    }

    /// Feeds `tx` with other replicas' notes from stream sequence `next` on, reopening the
    /// consumer from where it stopped whenever reading fails, until the inbox is dropped.
    async fn read_notes(
        self: Arc<Self>,
        mut messages: async_nats::jetstream::consumer::pull::Ordered,
        mut next: u64,
        tx: tokio::sync::mpsc::Sender<Note>,
    ) {
        let mut pause = Duration::from_millis(100);
        loop {
            while let Some(m) = messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, next, "reading cluster notes failed; reopening from the next one");
                        break;
                    }
                };
                pause = Duration::from_millis(100);
                if let Ok(info) = m.info() {
                    next = info.stream_sequence + 1;
                }
                if let Some(note) = self.open_envelope(&m.payload)
                    && tx.send(note).await.is_err()
                {
                    return;
                }
            }
            loop {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                match self.open_consumer(next).await {
                    Ok(m) => {
                        tracing::info!(next, "reading cluster notes again");
                        messages = m;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reopen the cluster notes yet"),
                }
            }
        }
    }

    /// A note from another replica (`None` for this replica's own and for unreadable ones).
    fn open_envelope(&self, payload: &[u8]) -> Option<Note> {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(env) if env.origin == self.replica => None,
            Ok(env) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                Some(env.note)
            }
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable cluster note was skipped");
                None
            }
        }
    }
}

fn stream_name(prefix: &str) -> String {
    format!("{}_BUS", prefix.to_ascii_uppercase())
}

/// The prefixes of every deployment with a stream on the NATS server at `url` (lower case, as
/// given to `--nats-prefix`): tests sweep their leftovers with it.
pub async fn deployments(url: &str) -> anyhow::Result<Vec<String>> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS: {e}"))?;
    let jetstream = async_nats::jetstream::new(client);
    let mut names = jetstream.stream_names();
    let mut prefixes = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| anyhow::anyhow!("cannot list the streams: {e}"))?;
        if let Some(prefix) = name.strip_suffix("_BUS") {
            prefixes.push(prefix.to_ascii_lowercase());
        }
    }
    Ok(prefixes)
}

/// Deletes a deployment's stream (tests and the bench clean up their prefixes with it).
pub async fn remove_deployment(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS: {e}"))?;
    let jetstream = async_nats::jetstream::new(client);
    match jetstream.delete_stream(stream_name(prefix)).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot delete the stream: {e}")),
    }
}
