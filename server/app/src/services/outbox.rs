//! The outbox: mails waiting to be sent, and the one worker that sends them.
//!
//! Architecture invariant: only this worker talks SMTP, and only mail already written to the
//! outbox is sent (a mail is a store record before its first attempt; a repeat after a crash is
//! the same bytes with the same Message-ID).
//!
//! In cluster mode every replica runs this worker over the one store; a replica claims each
//! mail with a lease in its record before sending it and records the result (dropping the
//! lease) after, so one replica sends it (`upkeep_core::lease`; a replica killed between the
//! SMTP server's acceptance and that commit leaves it to be sent again, with the same
//! Message-ID).

use crate::clock::Clock;
use crate::error::{ApiError, ApiResult};
use crate::services::webhooks::Webhooks;
use futures_util::StreamExt;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use upkeep_core::domain::*;
use upkeep_core::lease::Claimant;
use upkeep_core::mail::{MailKind, MailStatus, OutboxMail};
use upkeep_core::session::*;
use upkeep_store::records::PENDING_MAIL;
use upkeep_store::{Db, IndexKey, TxError};

/// Mails stop being retried this long after they were queued.
const GIVE_UP_AFTER_HOURS: i64 = 24;

/// The outbox service. It owns what sending needs: the store, the clock, the SMTP URL (or the
/// data dir, where mails become `.eml` files without one), the webhooks it tells about mail that
/// failed for good, its wake-up and its counters.
pub struct Outbox {
    store: Db,
    clock: Clock,
    webhooks: Arc<Webhooks>,
    smtp_url: Option<String>,
    data_dir: PathBuf,
    /// Cluster mode: this replica claims each mail before sending it.
    claims: Option<Claimant>,
    wakeup: Notify,
    shutdown: CancellationToken,
    sent: AtomicU64,
    failures: AtomicU64,
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// What the outbox needs besides the store and the clock.
pub struct OutboxConfig {
    pub smtp_url: Option<String>,
    pub data_dir: PathBuf,
    pub webhooks: Arc<Webhooks>,
    /// Cluster mode: claim each mail with a lease before sending it.
    pub claims: Option<Claimant>,
    pub shutdown: CancellationToken,
}

impl Outbox {
    pub fn new(store: Db, clock: Clock, config: OutboxConfig) -> Outbox {
        Outbox {
            store,
            clock,
            webhooks: config.webhooks,
            smtp_url: config.smtp_url,
            data_dir: config.data_dir,
            claims: config.claims,
            wakeup: Notify::new(),
            shutdown: config.shutdown,
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Tells the worker that mail was queued (call it after the write is flushed).
    pub fn wake(&self) {
        self.wakeup.notify_one();
    }

    /// Mails sent, and attempts that failed, since start (for `/metrics`).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Queues a mail outside a session step (test mails).
    pub async fn queue(&self, m: OutboxMail) -> ApiResult<()> {
        self.store
            .write(|tx| tx.put(&m).map_err(|e: TxError<ApiError>| e))
            .await?;
        self.store.flush().await?;
        self.wake();
        Ok(())
    }

    pub async fn depth(&self) -> upkeep_store::Result<u64> {
        self.store
            .index_count(&IndexKey::new(PENDING_MAIL, []))
            .await
    }

    /// The SMTP transport of `--smtp-url` (`None`: mails become `.eml` files).
    fn transport(&self) -> Result<Option<Transport>, String> {
        match &self.smtp_url {
            Some(url) => match Transport::from_url(url) {
                Ok(b) => Ok(Some(b.timeout(Some(Duration::from_secs(30))).build())),
                Err(e) => Err(e.to_string()),
            },
            None => Ok(None),
        }
    }

    /// Background loop: sends due mails, retrying failures with backoff.
    pub async fn run(self: Arc<Self>) {
        let transport = match self.transport() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "invalid SMTP URL; mail stays queued");
                return;
            }
        };
        loop {
            let next_due = self.pass(transport.as_ref()).await;
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

    /// One pass now, as the loop makes it: every due mail is sent (or claimed by another
    /// replica). Tests drive the worker with it.
    pub async fn send_due(&self) -> Result<(), String> {
        let transport = self.transport()?;
        self.pass(transport.as_ref()).await;
        Ok(())
    }

    /// Sends the mails due now; returns when the next one falls due.
    async fn pass(&self, transport: Option<&Transport>) -> Option<Time> {
        let now = self.clock.now();
        let mut next_due: Option<Time> = None;
        let pending: Vec<OutboxMail> = self
            .store
            .by_index::<OutboxMail>(&IndexKey::new(PENDING_MAIL, []), None)
            .filter_map(|m| std::future::ready(m.ok()))
            .collect::<Vec<_>>()
            .await;
        for m in pending {
            if m.next_attempt_at > now {
                next_due =
                    Some(next_due.map_or(m.next_attempt_at, |n: Time| n.min(m.next_attempt_at)));
                continue;
            }
            if let Some(m) = self.claim(m).await {
                self.send_one(transport, m).await;
            }
        }
        next_due
    }

    /// Cluster mode: claims `m` for this replica (a lease in its record, written in one
    /// transaction that finds no other live lease) and returns it as claimed; `None` when
    /// another replica holds it or it is no longer due. On one node: `m` as it is.
    async fn claim(&self, m: OutboxMail) -> Option<OutboxMail> {
        let Some(claims) = self.claims else {
            return Some(m);
        };
        let now = self.clock.now();
        if claims.held_by_other(m.lease.as_ref(), now) {
            return None;
        }
        let claimed = self
            .store
            .write(|tx| {
                let Some(mut current) = tx.get::<OutboxMail, ApiError>(&m.id)? else {
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
                Ok::<_, TxError<ApiError>>(Some(current))
            })
            .await;
        claimed.unwrap_or_else(|e| {
            tracing::warn!(mail = %m.id, error = %e, "could not claim a mail; left for the next pass");
            None
        })
    }

    /// Records the result of an attempt on `m` (its lease dropped) with `deliveries`, and
    /// flushes. In cluster mode only while the mail is still pending and this replica's result
    /// may stand ([`Claimant::may_settle`]). Returns whether it was recorded.
    async fn record(
        &self,
        m: &mut OutboxMail,
        deliveries: &[upkeep_core::webhook::Delivery],
    ) -> bool {
        m.lease = None;
        let (claims, now, finishes) = (self.claims, self.clock.now(), !m.is_pending());
        let m = &*m;
        let r = self.store.write(|tx| {
            if let Some(claims) = &claims {
                let Some(current) = tx.get::<OutboxMail, ApiError>(&m.id)? else {
                    return Ok(false);
                };
                if !current.is_pending()
                    || !claims.may_settle(current.lease.as_ref(), now, finishes)
                {
                    return Ok(false);
                }
            }
            tx.put(m)?;
            for d in deliveries {
                tx.put(d)?;
            }
            Ok::<_, TxError<ApiError>>(true)
        });
        let recorded = r.await.unwrap_or_else(|e| {
            tracing::error!(mail = %m.id, error = %e, "could not record mail state");
            false
        });
        let _ = self.store.flush().await;
        recorded
    }

    async fn send_one(&self, transport: Option<&Transport>, mut m: OutboxMail) {
        let now = self.clock.now();
        if let Some(reason) = self.withdrawn(&m).await {
            match m.session_id {
                Some(session) => tracing::info!(mail = %m.id, %session, "mail withdrawn: {reason}"),
                None => tracing::info!(mail = %m.id, "mail withdrawn: {reason}"),
            }
            m.status = MailStatus::Withdrawn { at: now, reason };
            self.record(&mut m, &[]).await;
            return;
        }
        let result = match build_message(&m) {
            Ok(msg) => match transport {
                Some(t) => t.send(msg).await.map(|_| ()).map_err(|e| e.to_string()),
                None => self.write_eml(&m, &msg).await,
            },
            Err(e) => {
                // A mail that cannot be built never will be: fail it at once.
                m.attempts = u32::MAX / 2;
                Err(e)
            }
        };
        m.attempts = m.attempts.saturating_add(1);
        let mut failed_for_good = false;
        match result {
            Ok(()) => {
                m.status = MailStatus::Sent { at: now };
                m.last_error = None;
                self.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(mail = %m.id, message_id = %m.message_id, to = %m.to.join(", "), "mail sent");
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(mail = %m.id, attempt = m.attempts, error = %e, "mail not sent");
                m.last_error = Some(e);
                if now - m.created_at > chrono::Duration::hours(GIVE_UP_AFTER_HOURS)
                    || m.attempts >= u32::MAX / 2
                {
                    m.status = MailStatus::Failed { at: now };
                    failed_for_good = true;
                } else {
                    m.next_attempt_at = now + upkeep_core::webhook::backoff(m.attempts);
                }
            }
        }
        let deliveries = match (failed_for_good, m.tenant_id) {
            (true, Some(t)) => self
                .webhooks
                .deliveries(t, upkeep_core::webhook::WebhookEvent::MailFailed, serde_json::json!({"mailId": m.id.to_string(), "sessionId": m.session_id.map(|s| s.to_string()), "to": m.to, "error": m.last_error}))
                .await.unwrap_or_default(),
            _ => vec![],
        };
        if self.record(&mut m, &deliveries).await && !deliveries.is_empty() {
            self.webhooks.wake();
        }
    }

    /// Why a queued mail must not go out any more: a before-mail whose session was cancelled
    /// meanwhile (say by a technician while the SMTP server was down) announces maintenance
    /// that will not happen.
    async fn withdrawn(&self, m: &OutboxMail) -> Option<String> {
        if m.kind != MailKind::Before {
            return None;
        }
        let s = self
            .store
            .get::<Session>(&m.session_id?)
            .await
            .ok()
            .flatten()?;
        (s.status == SessionStatus::Cancelled).then(|| {
            format!(
                "the maintenance was cancelled ({})",
                s.status_reason.unwrap_or_default()
            )
        })
    }

    async fn write_eml(&self, m: &OutboxMail, msg: &Message) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        // Mails hold live postpone links: readable by the server's user only.
        let dir = self.data_dir.join("outbox-files");
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(|e| e.to_string())?;
        let tmp = dir.join(format!("{}.eml.tmp", m.id));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|e| e.to_string())?;
        f.write_all(&msg.formatted())
            .await
            .map_err(|e| e.to_string())?;
        f.flush().await.map_err(|e| e.to_string())?;
        tokio::fs::rename(&tmp, dir.join(format!("{}.eml", m.id)))
            .await
            .map_err(|e| e.to_string())
    }
}

/// Builds the MIME message. Addresses and subject go through lettre's typed headers, which
/// encode them; the subject was already stripped of control characters by the renderer, so no
/// header can be injected through a name.
pub fn build_message(m: &OutboxMail) -> Result<Message, String> {
    let from: Mailbox = m
        .from
        .parse()
        .map_err(|e| format!("sender {}: {e}", m.from))?;
    let mut b = Message::builder()
        .from(from)
        .subject(m.subject.replace(['\r', '\n'], " "))
        .message_id(Some(m.message_id.clone()));
    for t in &m.to {
        b = b.to(t.parse().map_err(|e| format!("recipient {t}: {e}"))?);
    }
    for t in &m.bcc {
        b = b.bcc(t.parse().map_err(|e| format!("bcc {t}: {e}"))?);
    }
    b.multipart(MultiPart::alternative_plain_html(
        m.text.clone(),
        m.html.clone(),
    ))
    .map_err(|e| e.to_string())
}
