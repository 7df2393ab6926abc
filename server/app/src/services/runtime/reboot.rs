//! Reboots held by business hours. The session that needed one ends (with `rebootRequired`)
//! instead of waiting for hours with the computer locked; the computer keeps the reboot pending
//! (`Computer.held_reboot`, read as `rebootPending`), and it runs as its own small job when
//! the hours end. The job is filed under the ended session, whose engine ignores its result;
//! this module settles it and clears the computer's flag.

use super::SessionRuntime;
use crate::error::{ApiError, ApiResult};
use crate::services::App;
use futures_util::StreamExt;
use std::sync::Arc;
use upkeep_agent_protocol::{JobKind, JobOutcome};
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_store::TxError;

/// A reboot job that could not start is tried again this much later.
const RETRY_MINUTES: i64 = 10;
/// A held reboot of an offline computer is looked at again this much later.
const OFFLINE_RECHECK_MINUTES: i64 = 5;

impl SessionRuntime {
    pub(super) fn note_held_reboot(&self, computer: Id, due: Time) {
        self.st().hold_reboot(computer, due);
    }

    fn due_reboots(&self, now: Time) -> Vec<Id> {
        self.st().take_due_reboots(now)
    }
}

/// How a stored computer with no held reboot ends (see `recover_held_reboots`).
const NONE_HELD: &[u8] = br#""held_reboot":null}"#;

impl App {
    /// At start-up: every computer whose held reboot was not sent yet gets its timer again
    /// (sent ones are re-queued with the other open jobs).
    ///
    /// Start-up reads every computer here, so a record that plainly holds no reboot is not
    /// decoded: serde writes `held_reboot` last, so such a record ends with
    /// `"held_reboot":null}` (a string value cannot end it that way: its quotes are escaped).
    /// Anything else is decoded and looked at. A million computers: ~1 s less start-up.
    pub(super) async fn recover_held_reboots(&self) -> anyhow::Result<usize> {
        let mut held = 0;
        use upkeep_store::{KeyRange, Space};
        let mut computers = std::pin::pin!(self.store.scan_raw(
            Space::Records(upkeep_store::Kind::Computer),
            KeyRange::all()
        ));
        while let Some(raw) = computers.next().await {
            let (_, v) = raw?;
            if v.ends_with(NONE_HELD) {
                continue;
            }
            // One record that does not decode must not cost every other computer its reboot.
            let c: Computer = match upkeep_store::decode_record(&v) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "a stored computer does not decode; its held reboot, if any, is not recovered");
                    continue;
                }
            };
            if let Some(h) = &c.held_reboot
                && h.job_id.is_none()
            {
                self.runtime.note_held_reboot(c.id, h.due_at);
                held += 1;
            }
        }
        Ok(held)
    }

    /// [`App::recover_held_reboots`] beside serving, from start-up: a store error is tried
    /// again a minute later (until it works or the server stops), never leaving held reboots
    /// without their timers until a restart.
    pub(super) async fn recover_held_reboots_in_background(self: Arc<Self>) {
        loop {
            let t = std::time::Instant::now();
            let outcome = tokio::select! {
                r = self.recover_held_reboots() => r,
                _ = self.shutdown.cancelled() => return,
            };
            match outcome {
                Ok(held) => {
                    tracing::info!(
                        held,
                        ms = t.elapsed().as_millis() as u64,
                        "held reboots recovered"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "held reboots not recovered; trying again in a minute")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Sends the held reboots that are due (timer loop).
    pub(super) async fn send_due_reboots(self: &Arc<Self>) {
        for computer in self.runtime.due_reboots(self.clock.now()) {
            if let Err(e) = self.send_held_reboot(computer).await {
                tracing::warn!(computer = %computer, error = %e, "held reboot not sent");
            }
        }
    }

    /// When a held reboot may not be sent now, the instant to look again: inside the tenant's
    /// business hours (their end), or while the computer is offline (a laptop that returns
    /// during the next working day must not reboot in the user's hands).
    async fn reboot_not_before(&self, computer: Id, now: Time) -> ApiResult<Option<Time>> {
        let Some(c) = self.store.get::<Computer>(&computer).await? else {
            return Ok(None);
        };
        if let Some(t) = self.store.get::<Tenant>(&c.tenant_id).await?
            && let Some(bh) = &t.business_hours
        {
            let tz = Self::business_zone(&t)?;
            if let Some(end) = upkeep_core::calendar::business_hours_end(bh, tz, now) {
                return Ok(Some(end));
            }
        }
        if !self.agents.is_online(computer) {
            return Ok(Some(
                now + chrono::Duration::minutes(OFFLINE_RECHECK_MINUTES),
            ));
        }
        Ok(None)
    }

    async fn send_held_reboot(self: &Arc<Self>, computer: Id) -> ApiResult<()> {
        let now = self.clock.now();
        if let Some(later) = self.reboot_not_before(computer, now).await? {
            self.store
                .write(|tx| {
                    if let Some(mut c) = tx.get::<Computer, ApiError>(&computer)?
                        && let Some(h) = c.held_reboot.as_mut()
                        && h.job_id.is_none()
                    {
                        h.due_at = later;
                        tx.put(&c)?;
                    }
                    Ok::<_, TxError<ApiError>>(())
                })
                .await?;
            self.store.flush().await?;
            self.runtime.note_held_reboot(computer, later);
            return Ok(());
        }
        let job = self
            .store
            .write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&computer)? else {
                    return Ok(None);
                };
                let Some(h) = c.held_reboot.as_mut() else {
                    return Ok(None);
                };
                if h.job_id.is_some() || h.due_at > now {
                    return Ok(None);
                }
                let j = JobRecord {
                    id: crate::ids::fresh(),
                    session_id: h.session_id,
                    computer_id: computer,
                    job: JobKind::Reboot {},
                    lease_seconds: self.config.limits().lease_slack_seconds,
                    created_at: now,
                    state: JobState::Queued,
                    attempts: 0,
                };
                h.job_id = Some(j.id);
                tx.put(&c)?;
                tx.put(&j)?;
                Ok::<_, TxError<ApiError>>(Some(j))
            })
            .await?;
        self.store.flush().await?;
        if let Some(j) = job {
            tracing::info!(computer = %computer, job = %j.id, "held reboot sent");
            self.offer_job(&j);
        }
        Ok(())
    }

    /// When `rec` is a computer's held reboot, applies its result (or loss, `None`): the job is
    /// done, and the computer's reboot is no longer pending once it started (else it is tried
    /// again later). Returns false for any other job.
    pub async fn held_reboot_result(
        self: &Arc<Self>,
        rec: &JobRecord,
        outcome: Option<&JobOutcome>,
    ) -> ApiResult<bool> {
        if !matches!(rec.job, JobKind::Reboot {}) {
            return Ok(false);
        }
        let held = self
            .store
            .get::<Computer>(&rec.computer_id)
            .await?
            .and_then(|c| c.held_reboot)
            .is_some_and(|h| h.job_id == Some(rec.id));
        if !held {
            return Ok(false);
        }
        let now = self.clock.now();
        let started = matches!(outcome, Some(JobOutcome::Reboot { started: true, .. }));
        let retry_at = self
            .store
            .write(|tx| {
                let mut retry_at = None;
                if let Some(mut j) = tx.get::<JobRecord, ApiError>(&rec.id)? {
                    j.state = JobState::Done { at: now };
                    tx.put(&j)?;
                }
                if let Some(mut c) = tx.get::<Computer, ApiError>(&rec.computer_id)?
                    && c.held_reboot.as_ref().and_then(|h| h.job_id) == Some(rec.id)
                {
                    if started {
                        c.held_reboot = None;
                    } else if let Some(h) = c.held_reboot.as_mut() {
                        let at = now + chrono::Duration::minutes(RETRY_MINUTES);
                        h.job_id = None;
                        h.due_at = at;
                        retry_at = Some(at);
                    }
                    tx.put(&c)?;
                }
                Ok::<_, TxError<ApiError>>(retry_at)
            })
            .await?;
        self.store.flush().await?;
        self.agents.forget_job(rec.id);
        if let Some(at) = retry_at {
            self.runtime.note_held_reboot(rec.computer_id, at);
        }
        tracing::info!(computer = %rec.computer_id, started, "held reboot reported");
        Ok(true)
    }

    /// Whether a reboot still waits on the session's computer: one this session left held
    /// (business hours, a postponed prompt), the computer's held reboot, or one its agent
    /// reports.
    pub async fn reboot_still_pending(&self, s: &Session) -> ApiResult<bool> {
        let held = self
            .store
            .get::<Computer>(&s.computer_id)
            .await?
            .is_some_and(|c| c.held_reboot.as_ref().is_some_and(|h| h.job_id.is_none()));
        Ok(s.reboot_held_until.is_some() || held || self.agents.reboot_pending(s.computer_id))
    }

    /// The end user's "Reboot now" (after-mail link): the computer's pending reboot runs now,
    /// business hours or not (the user asked), as the computer's held reboot filed under
    /// `session`. Acts once: a second use finds the reboot sent, or done.
    pub async fn reboot_now(self: &Arc<Self>, session: &Session) -> ApiResult<RebootNow> {
        if !self.reboot_still_pending(session).await? {
            return Ok(RebootNow::NothingPending);
        }
        let now = self.clock.now();
        let online = self.agents.is_online(session.computer_id);
        let lease = self.config.limits().lease_slack_seconds;
        let outcome = self
            .store
            .write(|tx| {
                let Some(mut c) = tx.get::<Computer, ApiError>(&session.computer_id)? else {
                    return Ok((RebootNow::NothingPending, None));
                };
                let h = c.held_reboot.get_or_insert(HeldReboot {
                    session_id: session.id,
                    due_at: now,
                    job_id: None,
                });
                if h.job_id.is_some() {
                    return Ok((RebootNow::AlreadySent, None));
                }
                h.due_at = now;
                if !online {
                    tx.put(&c)?;
                    return Ok((RebootNow::WhenOnline, None));
                }
                let j = JobRecord {
                    id: crate::ids::fresh(),
                    session_id: h.session_id,
                    computer_id: c.id,
                    job: JobKind::Reboot {},
                    lease_seconds: lease,
                    created_at: now,
                    state: JobState::Queued,
                    attempts: 0,
                };
                h.job_id = Some(j.id);
                tx.put(&c)?;
                tx.put(&j)?;
                Ok::<_, TxError<ApiError>>((RebootNow::Sent, Some(j)))
            })
            .await?;
        self.store.flush().await?;
        match &outcome {
            (RebootNow::Sent, Some(j)) => {
                tracing::info!(computer = %session.computer_id, job = %j.id, "reboot now (end user's link)");
                self.offer_job(j);
            }
            (RebootNow::WhenOnline, _) => self.runtime.note_held_reboot(session.computer_id, now),
            _ => {}
        }
        Ok(outcome.0)
    }
}

/// What a "Reboot now" link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootNow {
    Sent,
    /// The computer is offline: the reboot is sent when it is back (like a held reboot).
    WhenOnline,
    AlreadySent,
    NothingPending,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `recover_held_reboots` skips records by how they end: `held_reboot` must stay the last
    /// field a computer is written with.
    #[test]
    fn a_computer_without_a_held_reboot_ends_with_the_skip_marker() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let mut c = Computer {
            id: Id::from_u128(1),
            tenant_id: Id::from_u128(2),
            name: "pc \"held_reboot\":null}".into(),
            hostname: "h".into(),
            machine_id: "m".into(),
            tags: vec![],
            primary_person_id: None,
            os: "Linux".into(),
            agent_version: "0".into(),
            last_seen_at: None,
            agent_token_hash: None,
            enrolled_at: at,
            excluded_from_maintenance: false,
            compliance: None,
            logged_on_user: None,
            onboarded: false,
            onboarding: None,
            held_reboot: None,
        };
        let json = serde_json::to_vec(&c).expect("encodes");
        assert!(
            json.ends_with(NONE_HELD),
            "{}",
            String::from_utf8_lossy(&json)
        );
        c.held_reboot = Some(HeldReboot {
            session_id: Id::from_u128(3),
            due_at: at,
            job_id: None,
        });
        let json = serde_json::to_vec(&c).expect("encodes");
        assert!(!json.ends_with(NONE_HELD));
    }
}
