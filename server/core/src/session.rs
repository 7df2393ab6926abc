//! Maintenance sessions as stored: the session record is the engine's state.

use crate::domain::*;
use crate::types::{Stored, TimeZone};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    Pending,
    Detecting,
    Scheduled,
    Postponed,
    Executing,
    Verifying,
    Passed,
    Failed,
    Cancelled,
    /// A preflight check failed; it runs again every `preflight_retry_minutes` until the window
    /// ends. Last in the enum: `code()` is stored in an index.
    PendingPreflight,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 10] = [
        SessionStatus::Pending,
        SessionStatus::Detecting,
        SessionStatus::Scheduled,
        SessionStatus::Postponed,
        SessionStatus::Executing,
        SessionStatus::Verifying,
        SessionStatus::Passed,
        SessionStatus::Failed,
        SessionStatus::Cancelled,
        SessionStatus::PendingPreflight,
    ];
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionStatus::Passed | SessionStatus::Failed | SessionStatus::Cancelled
        )
    }
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionTrigger {
    Manual,
    Schedule,
    Onboarding,
    Api,
}

impl SessionTrigger {
    /// The name the API and logs show (`MANUAL`, `SCHEDULE`, …).
    pub fn name(self) -> &'static str {
        match self {
            SessionTrigger::Manual => "MANUAL",
            SessionTrigger::Schedule => "SCHEDULE",
            SessionTrigger::Onboarding => "ONBOARDING",
            SessionTrigger::Api => "API",
        }
    }

    /// Queue priority under the concurrency ceiling: lower starts first.
    pub fn priority(self) -> u8 {
        match self {
            SessionTrigger::Manual | SessionTrigger::Api => 0,
            SessionTrigger::Onboarding => 1,
            SessionTrigger::Schedule => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionKind {
    Install,
    Upgrade,
    Uninstall,
    RunTask,
    NoAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    /// The detection or test script failed (non-zero exit with output on stderr, or a
    /// timeout): compliance is unknown and nothing is run for the action.
    DetectionFailed,
}

/// A deployment frozen into the session when it starts, with every script it needs, so the
/// session runs what was decided even if the catalogue changes meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanItem {
    pub deployment_id: Id,
    pub order: DeploymentOrder,
    pub position: i32,
    pub enforcement: Enforcement,
    /// What the scripts get: the deployment's values with the task's defaults filled in;
    /// SECRET values still sealed (they are opened only when the job is handed to the agent).
    pub parameters: BTreeMap<String, String>,
    /// Why this item cannot run (a required parameter without a value, a value its task's
    /// changed definition refuses, a secret that does not open): its action fails and none of
    /// its scripts run.
    #[serde(default)]
    pub invalid: Option<String>,
    pub what: ItemWhat,
    /// Why this deployment applies (the resolution rule), for `reason`; "needed by X" for a
    /// prerequisite the plan brought in.
    pub rule: String,
    /// Software this item needs first (transitively): when one of them fails or is skipped,
    /// this item is skipped.
    #[serde(default)]
    pub prerequisites: Vec<Id>,
    /// A prerequisite the plan brought in: the name of the software that needs it (the
    /// action's reason starts with "needed by …").
    #[serde(default)]
    pub needed_by: Option<String>,
}

impl PlanItem {
    /// The plain values this item's task declares as not secret (a typed task's STRING,
    /// NUMBER, BOOLEAN, SELECT and FILE parameters): what the task is about, such as a time
    /// zone, shown as they are in output and current values. Free-form parameters (a task
    /// that declares none) are not listed: their long values are masked.
    pub fn shown_values(&self) -> Vec<String> {
        let ItemWhat::Task { task, .. } = &self.what else {
            return vec![];
        };
        task.parameters
            .iter()
            .filter(|d| d.kind != crate::params::ParameterType::Secret)
            .filter_map(|d| self.parameters.get(&d.name))
            .filter(|v| !crate::params::is_sealed(v))
            .cloned()
            .collect()
    }

    /// The software or task this item is about.
    pub fn subject(&self) -> crate::domain::Subject {
        match &self.what {
            ItemWhat::Software { software, .. } => crate::domain::Subject::Software(software.id),
            ItemWhat::Task { task, .. } => crate::domain::Subject::Task(task.id),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "a session holds a few items, each read whole; boxing would only add indirection"
)]
pub enum ItemWhat {
    Software {
        software: SoftwareSnapshot,
        desired: DesiredSoftwareState,
        version: Option<String>,
    },
    Task {
        task: TaskSnapshot,
        mode: TaskMode,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftwareSnapshot {
    pub id: Id,
    pub name: String,
    pub detection_script: Script,
    pub versions: Vec<SoftwareVersion>,
    pub uninstall_script: Option<Script>,
    pub configuration_task: Option<TaskSnapshot>,
    /// Prints the available versions (see `versions.rs`); `versions` are then those it printed,
    /// for this session, once detection ran.
    #[serde(default)]
    pub versions_script: Option<Script>,
    #[serde(default)]
    pub versions_cache_minutes: u32,
    /// Installs (upgrades) a version the versions script printed.
    #[serde(default)]
    pub install_script: Option<Script>,
    #[serde(default)]
    pub upgrade_script: Option<Script>,
    /// Direct prerequisites (software ids).
    #[serde(default)]
    pub depends_on: Vec<Id>,
    /// Where `versions` came from in this session, once detection ran: the versions script
    /// (fresh or cached), or the static versions because the script failed.
    #[serde(default)]
    pub versions_note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub id: Id,
    pub name: String,
    pub test_script: Script,
    pub set_script: Option<Script>,
    /// Prints the current value; runs with the test during detection.
    #[serde(default)]
    pub get_script: Option<Script>,
    /// The task's parameter definitions when the session started (the deployment's values
    /// are resolved against them).
    #[serde(default)]
    pub parameters: Vec<crate::params::ParameterDefinition>,
}

/// One thing the session does (or found nothing to do) for one deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Action {
    pub id: Id,
    /// Index into `Session::items`.
    pub item: usize,
    pub kind: ActionKind,
    pub status: ActionStatus,
    pub compliance: Compliance,
    pub desired_version: Option<String>,
    /// The latest detection's version (after verification, what verification found).
    pub detected_version: Option<String>,
    /// What detection found before execution; never overwritten by verification, so a mail
    /// can say "1.9 → 2.0" after the fact.
    #[serde(default)]
    pub detected_version_before: Option<String>,
    /// What verification found after execution (`None` until it ran, or when absent).
    #[serde(default)]
    pub detected_version_after: Option<String>,
    pub result_message: Option<String>,
    /// What the task's get script printed at detection (first line, trimmed, bounded).
    #[serde(default)]
    pub current_value: Option<String>,
    pub reason: String,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    /// What execution runs, in order; filled by planning. Stored with the plan, not with the
    /// hot state.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Next step to run.
    pub next_step: usize,
    /// A step's script failed (the action fails whatever verification finds).
    pub step_failed: bool,
    pub reboot_required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Step {
    /// Run a script that changes the computer; `version` is the version an install or upgrade
    /// brings (the script reads it as `UPKEEP_VERSION`); with `installer`, the agent fetches and
    /// verifies that file first and runs the script only when it matches.
    Script {
        label: String,
        script: Script,
        #[serde(default)]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installer: Option<Installer>,
    },
    /// Run a task's test; when it says "not compliant", run its set script.
    TestThenSet { task: TaskSnapshot },
}

/// Where the engine stands inside the session, finer than the public status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Stage {
    /// Created; waits for its agent (and a free slot) to detect.
    AwaitDetect,
    Detecting,
    /// Detected and planned; waits for `execute_at`, the window and the agent.
    AwaitExecute,
    Executing,
    /// The reboot is due but held (business hours) until `wake_at`.
    RebootHeld,
    /// A reboot job was sent; waits for the agent to come back.
    Rebooting {
        sent_at: Time,
    },
    /// The preflight checks: run now (`retry_at: None`, or its job is pending), or again at
    /// `retry_at` after one failed.
    Preflight {
        retry_at: Option<Time>,
    },
    /// A reboot pending on the computer before execution: the reboot job was sent at
    /// `sent_at`; waits for the computer to come back without the pending reboot.
    PreReboot {
        sent_at: Time,
    },
    /// `PROMPT`: the users were told; the reboot runs at `reboot_at` (`before`: the reboot
    /// before execution, else the one after it).
    RebootPrompted {
        reboot_at: Time,
        before: bool,
    },
    Verifying,
    Done,
}

/// The job the session is waiting on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingJob {
    pub id: Id,
    pub purpose: JobPurpose,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum JobPurpose {
    Detect,
    /// Step `step` of action `action`.
    Step {
        action: usize,
        step: usize,
    },
    /// The test half of a `TestThenSet` step.
    StepTest {
        action: usize,
        step: usize,
    },
    Reboot,
    Verify,
    Preflight,
    /// The reboot before execution (a reboot was pending).
    PreReboot,
    /// The reboot prompt.
    Prompt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: Id,
    pub tenant_id: Id,
    pub computer_id: Id,
    pub schedule_id: Option<Id>,
    pub status: SessionStatus,
    pub status_reason: Option<String>,
    pub trigger: SessionTrigger,
    pub detection_only: bool,
    pub options: MaintenanceOptions,
    pub created_by: String,
    pub created_at: Time,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    pub execute_at: Option<Time>,
    /// End of the maintenance window (scheduled sessions): execution starts only before it.
    pub window_end: Option<Time>,
    pub postpone_count: u32,
    /// How many of `postpone_count` end users made through their e-mail links.
    #[serde(default)]
    pub end_user_postpones: u32,
    pub reboot_required: bool,
    pub rebooted_at: Option<Time>,
    pub compliance: Option<Compliance>,
    /// The frozen plan. Stored apart from the rest (`upkeep-store`'s session plan record,
    /// written only when it changes), so the hot state a step rewrites stays small.
    #[serde(default)]
    pub items: Vec<PlanItem>,
    pub actions: Vec<Action>,
    pub stage: Stage,
    pub pending_job: Option<PendingJob>,
    /// The next time the engine wants a `Tick`.
    pub wake_at: Option<Time>,
    /// Since when the session has been waiting for its offline computer.
    pub offline_since: Option<Time>,
    /// Sequence number of the last event written for this session.
    pub last_sequence: u64,
    pub before_mail_sent: bool,
    pub after_mail_sent: bool,
    /// Deployments named by the starter (`AD_HOC` ones only run when named).
    pub deployment_ids: Option<Vec<Id>>,
    /// Postpone-link token ids already used (each link works once).
    #[serde(default)]
    pub used_tokens: Vec<String>,
    /// True while the session waits for a slot under the concurrency ceiling.
    #[serde(default)]
    pub queued: bool,
    /// The computer was offline during the maintenance window (it came back after the window
    /// began): with `APPLY_ON_CONNECT` the session still runs after the window has ended.
    #[serde(default)]
    pub offline_in_window: bool,
    /// The tenant's IANA time zone when the session started: times in `status_reason` are
    /// written in it (the API's instants stay UTC).
    #[serde(default = "utc")]
    pub time_zone: Stored<TimeZone>,
    /// The other sessions of the same start call or schedule occurrence whose computers had the
    /// same primary person: they share one before- and one after-mail per recipient and
    /// execution time (`runtime::group_mail`). Empty for most sessions.
    #[serde(default)]
    pub mail_siblings: Vec<Id>,
    /// The reboot this session needed was held by business hours until then: the session ended
    /// without it and the computer keeps it pending (`Computer.held_reboot`).
    #[serde(default)]
    pub reboot_held_until: Option<Time>,
    /// Checks run before execution changes anything (MSP's, tenant's, schedule's), frozen at
    /// the start like the plan.
    #[serde(default)]
    pub preflight: Vec<Script>,
    /// When the preflight checks first ran (a session without a window retries for a day).
    #[serde(default)]
    pub preflight_since: Option<Time>,
    /// What the last failed preflight check said.
    #[serde(default)]
    pub preflight_message: Option<String>,
    /// When the session rebooted the computer before execution (a reboot was pending).
    #[serde(default)]
    pub pre_rebooted_at: Option<Time>,
    /// The reboot prompt was sent.
    #[serde(default)]
    pub prompted: bool,
    /// Bumped by every stored step. In cluster mode a step is stored only if the revision it
    /// was planned from is still the stored one, so two replicas never both apply a step of
    /// one session (`runtime::write_step`). 0 in records written before it existed.
    #[serde(default)]
    pub revision: u64,
    /// The rollout (and its wave) that started this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRef>,
}

/// A session's place in a rollout (`rollout::Rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRef {
    pub id: Id,
    /// The wave's position (0-based).
    pub wave: u32,
}

impl Session {
    /// What a finished session leaves on its computer: its compliance (unless cancelled), a
    /// reboot held by business hours, the end of a held reboot this session's own reboot did,
    /// and, for an onboarding session, the onboarding outcome.
    pub fn finish_on(&self, comp: &mut Computer) {
        if self.rebooted_at.is_some() || self.pre_rebooted_at.is_some() {
            // This session's reboot did what a held one was waiting for.
            comp.held_reboot = None;
        }
        if self.status != SessionStatus::Cancelled {
            comp.compliance = self.compliance.or(comp.compliance);
            if let Some(due_at) = self.reboot_held_until {
                comp.held_reboot = Some(HeldReboot {
                    session_id: self.id,
                    due_at,
                    job_id: None,
                });
            }
        }
        comp.onboarded = true;
        if self.trigger == SessionTrigger::Onboarding {
            match self.status {
                SessionStatus::Passed => comp.onboarding = Some(OnboardingStatus::Completed),
                SessionStatus::Failed => comp.onboarding = Some(OnboardingStatus::Failed),
                // A cancelled onboarding leaves the computer where it stood.
                _ => {}
            }
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl Session {
    /// A pending session of `computer` with nothing planned (tests of the rules around it).
    pub fn for_tests(id: Id, computer: Id, created_at: Time) -> Session {
        Session {
            id,
            tenant_id: Id::from_u128(0),
            computer_id: computer,
            schedule_id: None,
            status: SessionStatus::Pending,
            status_reason: None,
            trigger: SessionTrigger::Manual,
            detection_only: false,
            options: MaintenanceOptions::default(),
            created_by: "test".into(),
            created_at,
            started_at: None,
            finished_at: None,
            execute_at: None,
            window_end: None,
            postpone_count: 0,
            end_user_postpones: 0,
            reboot_required: false,
            rebooted_at: None,
            compliance: None,
            items: vec![],
            actions: vec![],
            stage: Stage::AwaitDetect,
            pending_job: None,
            wake_at: None,
            offline_since: None,
            last_sequence: 0,
            before_mail_sent: false,
            after_mail_sent: false,
            deployment_ids: None,
            used_tokens: vec![],
            queued: false,
            offline_in_window: false,
            time_zone: utc(),
            mail_siblings: vec![],
            reboot_held_until: None,
            preflight: vec![],
            preflight_since: None,
            preflight_message: None,
            pre_rebooted_at: None,
            prompted: false,
            revision: 0,
            rollout: None,
        }
    }
}

fn utc() -> Stored<TimeZone> {
    Stored::new(TimeZone::UTC)
}

impl Session {
    /// The session's compliance: all its actions', except `MONITOR` tasks' (observations,
    /// reported on their actions only).
    pub fn compliance_of_actions(&self) -> Compliance {
        let counted = || {
            self.actions.iter().filter(|a| {
                !matches!(
                    self.items.get(a.item).map(|i| &i.what),
                    Some(ItemWhat::Task {
                        mode: TaskMode::Monitor,
                        ..
                    })
                )
            })
        };
        if counted().all(|a| a.compliance == Compliance::Compliant) {
            Compliance::Compliant
        } else if counted().any(|a| a.compliance == Compliance::NonCompliant) {
            Compliance::NonCompliant
        } else {
            Compliance::Unknown
        }
    }

    pub fn item_name(&self, item: usize) -> &str {
        match self.items.get(item).map(|i| &i.what) {
            Some(ItemWhat::Software { software, .. }) => &software.name,
            Some(ItemWhat::Task { task, .. }) => &task.name,
            None => "?",
        }
    }
}

/// One entry of a session's live stream and log, stored under (session, sequence).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEvent {
    pub session_id: Id,
    pub tenant_id: Id,
    pub sequence: u64,
    pub at: Time,
    pub status: SessionStatus,
    /// The action this event is about, if any (its id and new status).
    pub action_id: Option<Id>,
    pub action_status: Option<ActionStatus>,
    pub log_line: Option<String>,
}

/// A job handed to an agent, kept until its result arrives (results are idempotent by id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: Id,
    pub session_id: Id,
    pub computer_id: Id,
    pub job: upkeep_agent_protocol::JobKind,
    pub lease_seconds: u32,
    pub created_at: Time,
    pub state: JobState,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum JobState {
    Queued,
    Leased {
        until: Time,
        /// The sweep's short lease while it records that the agent never answered (the lease
        /// before it ran out): the job is no longer to be handed out, not even again to its
        /// own computer after a restart. Absent (false) in every other lease.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        losing: bool,
    },
    Done {
        at: Time,
    },
}
