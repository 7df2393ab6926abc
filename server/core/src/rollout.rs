//! Rollouts: one deployment brought to its computers wave by wave (a canary first), halting
//! itself when a wave fails too often.
//!
//! Pure: [`step`] takes the stored rollout, what happened and `now`, changes the rollout and
//! says what the driver (`upkeep_server::services::rollouts`) must do. The driver resolves a
//! wave's computers ([`wave_members`]), starts and cancels sessions, stores every change
//! (compare-and-set on [`Rollout::revision`]) before it acts on it or publishes it.
//!
//! Rules (documented in README):
//! - A wave's members are chosen when it starts, from the deployment's target computers not
//!   in an earlier wave: a `target` wave takes those the target also matches; a `percent` wave
//!   takes `ceil(percent × all targets / 100)` (at least `minSessionsPerWave`) of the rest in a
//!   stable pseudo-random order ([`split_key`]: FNV-1a of the rollout's and the computer's id),
//!   so the split neither follows enrollment order nor changes between calls.
//! - `failureRate` = FAILED / (PASSED + FAILED) of the wave's finished sessions; CANCELLED ones
//!   (a technician's cancel, an offline computer with `SKIP`) count for neither.
//! - A wave halts the rollout as soon as at least `minSessionsPerWave` of its sessions passed
//!   or failed and the rate is above `haltWhenFailureRateAbove`; a wave whose sessions all
//!   ended with fewer than `minSessionsPerWave` passed or failed halts it too (not enough
//!   evidence to go on). Sessions still running in a halted wave go on; nothing new starts.
//! - `resumeRollout` accepts the halted wave as it is: the next wave starts at once (or when
//!   the wave's last sessions end). `abortRollout` ends the rollout and cancels its unfinished
//!   sessions.
//! - After a wave passes, the next starts `waitMinutesBetweenWaves` later (`WAITING`).

use crate::domain::{Computer, Id, MaintenanceOptions, Target, Time};
use crate::session::SessionStatus;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutStatus {
    /// A wave is running (or about to start).
    Running,
    /// Between waves: the next starts at `next_wave_at`.
    Waiting,
    /// A wave failed too often: nothing more starts until resumed or aborted.
    Halted,
    /// Every wave passed.
    Completed,
    /// Aborted by a person.
    Aborted,
}

impl RolloutStatus {
    /// Whether the driver still has work: `HALTED` waits for a person, the last two are final.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutStatus::Running | RolloutStatus::Waiting)
    }
    pub fn is_final(self) -> bool {
        matches!(self, RolloutStatus::Completed | RolloutStatus::Aborted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WaveStatus {
    /// Not started yet.
    Pending,
    /// Its sessions run.
    Running,
    /// It ended within the threshold (or a person resumed past it).
    Passed,
    /// It halted the rollout.
    Halted,
    /// The rollout was aborted before or while it ran.
    Aborted,
}

/// Which computers a wave takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSelector {
    /// Those of the deployment's targets this target also matches.
    Target(Target),
    /// This share (1–100) of the deployment's targets.
    Percent(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub name: String,
    pub selector: WaveSelector,
    pub status: WaveStatus,
    /// Chosen when the wave starts (a computer busy with another session then is a member
    /// without a session).
    #[serde(default)]
    pub computers: Vec<Id>,
    #[serde(default)]
    pub started_at: Option<Time>,
    #[serde(default)]
    pub finished_at: Option<Time>,
    /// Counts of its sessions' outcomes, as last observed.
    #[serde(default)]
    pub passed: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub cancelled: u32,
    /// A person resumed the rollout past this wave's halt: it no longer halts it.
    #[serde(default)]
    pub accepted: bool,
}

impl Wave {
    pub fn new(name: String, selector: WaveSelector) -> Wave {
        Wave {
            name,
            selector,
            status: WaveStatus::Pending,
            computers: vec![],
            started_at: None,
            finished_at: None,
            passed: 0,
            failed: 0,
            cancelled: 0,
            accepted: false,
        }
    }

    /// FAILED / (PASSED + FAILED); `None` before any session passed or failed.
    pub fn failure_rate(&self) -> Option<f64> {
        let decided = self.passed + self.failed;
        (decided > 0).then(|| f64::from(self.failed) / f64::from(decided))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: Id,
    /// The deployment's tenant (`None`: a cross-tenant deployment).
    pub tenant_id: Option<Id>,
    pub deployment_id: Id,
    pub waves: Vec<Wave>,
    pub halt_above: f64,
    pub min_sessions_per_wave: u32,
    pub wait_minutes: u32,
    pub options: MaintenanceOptions,
    pub status: RolloutStatus,
    pub status_reason: Option<String>,
    /// The wave running, or the last one that ran.
    pub current: usize,
    /// `WAITING`: when the next wave starts.
    pub next_wave_at: Option<Time>,
    pub created_by: String,
    pub created_at: Time,
    pub updated_at: Time,
    /// Bumped by every stored change: a change is stored only if the revision it was made
    /// from is still the stored one, so of two replicas one drives each step.
    #[serde(default)]
    pub revision: u64,
}

/// A session of the rollout's current wave, as the driver read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub session: Id,
    pub status: SessionStatus,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed, or the current wave's sessions were read again (every session of the
    /// wave, finished or not).
    Observe {
        now: Time,
        sessions: Vec<Outcome>,
    },
    /// The driver chose the computers of the wave [`Effect::StartWave`] named.
    WaveStarted {
        now: Time,
        wave: usize,
        computers: Vec<Id>,
    },
    Resume {
        now: Time,
        by: String,
    },
    Abort {
        now: Time,
        by: String,
    },
}

/// What the driver must do once the changed rollout is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Choose wave `n`'s computers and start their sessions, storing
    /// [`Event::WaveStarted`] in the transaction of the first sessions.
    StartWave(usize),
    /// The rollout halted: tell webhooks (`ROLLOUT_HALTED`), naming the failing sessions.
    Halted { failing: Vec<Id> },
    /// Cancel the rollout's unfinished sessions (an abort).
    CancelUnfinished,
}

/// Why an event does not apply (the API answers `CONFLICT` with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("the rollout is {0}; only a HALTED rollout can be resumed")]
    NotHalted(&'static str),
    #[error("the rollout is already {0}")]
    Final(&'static str),
}

pub fn status_name(s: RolloutStatus) -> &'static str {
    match s {
        RolloutStatus::Running => "RUNNING",
        RolloutStatus::Waiting => "WAITING",
        RolloutStatus::Halted => "HALTED",
        RolloutStatus::Completed => "COMPLETED",
        RolloutStatus::Aborted => "ABORTED",
    }
}

/// Applies `event` to `r`. An event that changes nothing returns no effects and leaves `r`
/// as it was (the driver then stores nothing).
pub fn step(r: &mut Rollout, event: Event) -> Result<Vec<Effect>, RolloutError> {
    match event {
        Event::Observe { now, sessions } => Ok(observe(r, now, &sessions)),
        Event::WaveStarted {
            now,
            wave,
            computers,
        } => {
            if let Some(w) = r.waves.get_mut(wave)
                && w.status == WaveStatus::Pending
                && r.status.is_active()
            {
                w.status = WaveStatus::Running;
                w.computers = computers;
                w.started_at = Some(now);
                r.current = wave;
                r.status = RolloutStatus::Running;
                r.status_reason = None;
                r.next_wave_at = None;
                r.updated_at = now;
            }
            Ok(vec![])
        }
        Event::Resume { now, by } => {
            if r.status != RolloutStatus::Halted {
                return Err(RolloutError::NotHalted(status_name(r.status)));
            }
            let w = &mut r.waves[r.current];
            w.accepted = true;
            w.status = WaveStatus::Running;
            r.status = RolloutStatus::Running;
            r.status_reason = Some(format!("resumed by {by}"));
            r.updated_at = now;
            // The wave ends (and the next starts at once) when its sessions have: the driver
            // observes them next.
            Ok(vec![])
        }
        Event::Abort { now, by } => {
            if r.status.is_final() {
                return Err(RolloutError::Final(status_name(r.status)));
            }
            for w in &mut r.waves {
                if matches!(w.status, WaveStatus::Pending | WaveStatus::Running) {
                    w.status = WaveStatus::Aborted;
                    w.finished_at.get_or_insert(now);
                }
            }
            r.status = RolloutStatus::Aborted;
            r.status_reason = Some(format!("aborted by {by}"));
            r.next_wave_at = None;
            r.updated_at = now;
            // The driver cancels what is unfinished (it reads the sessions).
            Ok(vec![Effect::CancelUnfinished])
        }
    }
}

/// The current wave's sessions were read (or time passed).
fn observe(r: &mut Rollout, now: Time, sessions: &[Outcome]) -> Vec<Effect> {
    match r.status {
        RolloutStatus::Waiting => {
            if r.next_wave_at.is_none_or(|t| t <= now) {
                return vec![Effect::StartWave(r.current + 1)];
            }
            vec![]
        }
        RolloutStatus::Running => {
            let i = r.current;
            match r.waves[i].status {
                // Created, first wave not started yet (or a restart before it was).
                WaveStatus::Pending => vec![Effect::StartWave(i)],
                WaveStatus::Running => judge(r, now, sessions),
                _ => vec![],
            }
        }
        _ => vec![],
    }
}

/// The running wave, given its sessions: halt, pass, or go on waiting.
fn judge(r: &mut Rollout, now: Time, sessions: &[Outcome]) -> Vec<Effect> {
    let min = r.min_sessions_per_wave;
    let halt_above = r.halt_above;
    let i = r.current;
    let w = &mut r.waves[i];
    let count = |s: SessionStatus| sessions.iter().filter(|o| o.status == s).count() as u32;
    let (passed, failed, cancelled) = (
        count(SessionStatus::Passed),
        count(SessionStatus::Failed),
        count(SessionStatus::Cancelled),
    );
    let counts_changed = (w.passed, w.failed, w.cancelled) != (passed, failed, cancelled);
    (w.passed, w.failed, w.cancelled) = (passed, failed, cancelled);
    let all_ended = sessions.iter().all(|o| o.status.is_terminal());
    let decided = passed + failed;
    let rate = w.failure_rate().unwrap_or(0.0);
    let failing = || {
        sessions
            .iter()
            .filter(|o| o.status == SessionStatus::Failed)
            .map(|o| o.session)
            .collect::<Vec<_>>()
    };
    if !w.accepted && decided >= min.max(1) && decided > 0 && rate > halt_above {
        w.status = WaveStatus::Halted;
        let reason = format!(
            "wave {} failed: {failed} of {decided} finished sessions failed ({:.0} %, above the {:.0} % threshold)",
            w.name,
            rate * 100.0,
            halt_above * 100.0
        );
        halt(r, now, reason);
        return vec![Effect::Halted { failing: failing() }];
    }
    if !all_ended {
        if counts_changed {
            r.updated_at = now;
        }
        return vec![];
    }
    if !w.accepted && decided < min {
        w.status = WaveStatus::Halted;
        let reason = format!(
            "wave {} ended with {decided} passed or failed sessions, fewer than the {min} required",
            w.name
        );
        halt(r, now, reason);
        return vec![Effect::Halted { failing: failing() }];
    }
    w.status = WaveStatus::Passed;
    w.finished_at = Some(now);
    let (accepted, name) = (w.accepted, w.name.clone());
    r.updated_at = now;
    if i + 1 == r.waves.len() {
        r.status = RolloutStatus::Completed;
        r.status_reason = Some(format!("all {} waves passed", r.waves.len()));
        return vec![];
    }
    if r.wait_minutes == 0 || accepted {
        // A person resumed past this wave: the next one goes at once.
        return vec![Effect::StartWave(i + 1)];
    }
    r.status = RolloutStatus::Waiting;
    r.next_wave_at = Some(now + chrono::Duration::minutes(i64::from(r.wait_minutes)));
    r.status_reason = Some(format!("wave {name} passed"));
    vec![]
}

fn halt(r: &mut Rollout, now: Time, reason: String) {
    r.waves[r.current].finished_at = Some(now);
    r.status = RolloutStatus::Halted;
    r.status_reason = Some(reason);
    r.updated_at = now;
}

/// The position of `computer` in the stable pseudo-random order of rollout `rollout`'s
/// percent waves: FNV-1a (64 bit) over both ids' bytes.
pub fn split_key(rollout: Id, computer: Id) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rollout.as_bytes().iter().chain(computer.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The members of wave `wave` of `r`, given the deployment's target computers now
/// (`targets`, in any order, excluded computers already left out): see the module's rules.
pub fn wave_members(r: &Rollout, wave: usize, targets: &[Computer]) -> Vec<Id> {
    let earlier: std::collections::HashSet<Id> = r.waves[..wave]
        .iter()
        .flat_map(|w| w.computers.iter().copied())
        .collect();
    let mut rest: Vec<&Computer> = targets
        .iter()
        .filter(|c| !earlier.contains(&c.id))
        .collect();
    rest.sort_by_key(|c| (split_key(r.id, c.id), c.id));
    match &r.waves[wave].selector {
        WaveSelector::Target(t) => rest
            .into_iter()
            .filter(|c| t.matches(c))
            .map(|c| c.id)
            .collect(),
        WaveSelector::Percent(p) => {
            let total = targets.len() as u64;
            let share = (total * u64::from(*p)).div_ceil(100);
            let n = share.max(u64::from(r.min_sessions_per_wave)) as usize;
            rest.into_iter().take(n).map(|c| c.id).collect()
        }
    }
}

#[cfg(test)]
mod tests;
