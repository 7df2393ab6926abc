//! The GraphQL enums: views of the core's enums (`#[graphql(remote)]`), so the schema is the
//! API's and a variant added to the core without its view here fails to compile.
//!
//! Architecture invariant: core types carry no GraphQL derives; every enum the API exposes is
//! declared here with the name CONTRACT §5 gives it.

use async_graphql::Enum;

/// What a user or API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::UserRole")]
pub enum UserRole {
    /// Everything, in every tenant.
    MspAdmin,
    /// Run and configure maintenance in every tenant; no users or keys.
    MspTechnician,
    /// Everything within one tenant.
    TenantAdmin,
    /// Read one tenant.
    TenantViewer,
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Weekday")]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

/// Whether a computer, session or action is in its desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Compliance")]
pub enum Compliance {
    /// In the desired state.
    Compliant,
    /// Not in the desired state.
    NonCompliant,
    /// Not known: detection has not run or could not run.
    Unknown,
}

/// Where a computer stands with its onboarding deployments (`Computer.onboardingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::OnboardingStatus")]
pub enum OnboardingStatus {
    /// No onboarding session has finished yet.
    Pending,
    /// An onboarding session runs.
    InProgress,
    /// The last onboarding session passed.
    Completed,
    /// The last onboarding session failed.
    Failed,
}

/// What runs a script on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::ScriptLanguage")]
pub enum ScriptLanguage {
    /// POSIX `sh`.
    Shell,
    /// `pwsh` when installed, else Windows PowerShell (`powershell.exe`) on Windows.
    Powershell,
    /// `python3` (`python` on Windows).
    Python,
    /// A Windows batch file (`cmd.exe /D /C`); only Windows agents run it.
    Cmd,
}

/// What kind of target; when several deployments match, the most specific wins: `COMPUTER` >
/// `PERSON` > `TAG` > `ALL_COMPUTERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::TargetKind")]
pub enum TargetKind {
    /// Every computer (of the tenant, or of every tenant).
    AllComputers,
    /// One computer.
    Computer,
    /// Computers with a tag.
    Tag,
    /// The computers a person is primary person of.
    Person,
}

/// The state a software deployment keeps a software in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::DesiredSoftwareState")]
pub enum DesiredSoftwareState {
    /// Installed, at the latest version.
    InstalledLatest,
    /// Installed at exactly `version`.
    InstalledVersion,
    /// Installed at `version` or newer.
    InstalledAtLeast,
    /// Installed, at any version.
    InstalledAny,
    /// Upgraded to the latest version where some version is installed; never installed.
    UpdateIfFound,
    /// Not installed.
    Uninstalled,
    /// Exception: leave this software alone on the targets.
    Ignore,
}

/// How a task deployment runs its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::TaskMode")]
pub enum TaskMode {
    /// Test, and run the set script where the test fails.
    Enforce,
    /// Test only: a failed test is reported (the action succeeds, "audit: not compliant") and
    /// makes the session and computer NON_COMPLIANT; a test that cannot decide (timeout, exit
    /// other than 0 or 1) fails the item's detection, and so the session.
    Audit,
    /// Exception: leave this task alone on the targets.
    Ignore,
    /// Test only, an observation: the set script never runs; the action always succeeds and
    /// shows the finding (COMPLIANT, NON_COMPLIANT, or UNKNOWN when the test cannot decide)
    /// and the get script's `currentValue`, but it counts neither toward the session's nor
    /// the computer's compliance, and never fails the session.
    Monitor,
}

/// The type of a task parameter; the value reaches scripts as text in `UPKEEP_PARAM_<NAME>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::params::ParameterType")]
pub enum ParameterType {
    /// Any text.
    String,
    /// A decimal number (`42`, `-1.5`).
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of the definition's `options`.
    Select,
    /// Stored encrypted, never returned by the API (shown as `********`), masked in output.
    Secret,
    /// The SHA-256 (64 hex digits) of an uploaded file.
    File,
}

/// When a deployment applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Enforcement")]
pub enum Enforcement {
    /// In every full session.
    Required,
    /// Only in a newly enrolled computer's first session (`trigger: ONBOARDING`), run first.
    Onboarding,
    /// Only when a session names it (`deploymentIds`).
    AdHoc,
}

/// Where a deployment's action runs within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::DeploymentOrder")]
pub enum DeploymentOrder {
    /// First, in `position` order.
    Beginning,
    /// In the middle, in no promised order.
    Unordered,
    /// Last, in `position` order.
    End,
}

/// Whether a session reboots the computer when an action needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::RebootPreference")]
pub enum RebootPreference {
    /// Reboot when an action needs it (outside business hours unless allowed).
    Normal,
    /// Never reboot; the computer stays `rebootRequired`.
    Suppress,
    /// Reboot at the end of execution, needed or not.
    Force,
    /// Like NORMAL, but the computer's users are told first and the reboot runs
    /// `rebootPromptMinutes` later unless the session is postponed.
    Prompt,
}

/// What a session does when its computer is offline at execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::OfflineBehavior")]
pub enum OfflineBehavior {
    /// Wait `offlineGraceMinutes`, then end `CANCELLED`.
    Skip,
    /// Wait `PENDING` and run when the agent polls again.
    ApplyOnConnect,
}

/// Where a maintenance session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::SessionStatus",
    name = "MaintenanceSessionStatus"
)]
pub enum SessionStatus {
    /// Created; waiting to detect (or for an offline computer, or its turn).
    Pending,
    /// Detecting the current state.
    Detecting,
    /// Detected; waiting for `executeAt`.
    Scheduled,
    /// Postponed by the computer's person; waiting for the new time.
    Postponed,
    /// Running its actions.
    Executing,
    /// Detecting again after execution.
    Verifying,
    /// Ended; no action failed.
    Passed,
    /// Ended; an action (or detection) failed.
    Failed,
    /// Ended by a cancel, an offline computer or a closed window.
    Cancelled,
    /// A preflight check failed; it runs again every `preflightRetryMinutes` until the window
    /// ends (then CANCELLED). `statusReason` says what the check said.
    PendingPreflight,
}

/// What started a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::SessionTrigger",
    name = "MaintenanceSessionTrigger"
)]
pub enum SessionTrigger {
    /// A person, through the API or console.
    Manual,
    /// A schedule's occurrence.
    Schedule,
    /// A newly enrolled computer's first session.
    Onboarding,
    /// An API key.
    Api,
}

/// What a maintenance action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::ActionKind",
    name = "MaintenanceActionKind"
)]
pub enum ActionKind {
    /// Installs the software.
    Install,
    /// Upgrades the software.
    Upgrade,
    /// Removes the software.
    Uninstall,
    /// Runs the task's set script.
    RunTask,
    /// Nothing: already compliant (or a test-only task).
    NoAction,
}

/// Where a maintenance action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::ActionStatus",
    name = "MaintenanceActionStatus"
)]
pub enum ActionStatus {
    /// Planned; not run yet.
    Pending,
    /// Its script runs on the computer.
    Running,
    /// Done, and re-detection found its item compliant.
    Succeeded,
    /// Its script failed, or re-detection still found its item non-compliant.
    Failed,
    /// Not run (a prerequisite failed, or nothing was to do).
    Skipped,
    /// Not run: the session was cancelled.
    Cancelled,
    /// The detection or test script failed (non-zero exit with output on stderr, or a
    /// timeout): compliance is unknown and nothing is run for the action.
    DetectionFailed,
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::audit::ActorKind")]
pub enum ActorKind {
    /// A person signed in with a token.
    User,
    /// An API key.
    ApiKey,
    /// A computer's agent.
    Agent,
    /// The server itself (schedules, timers, start-up).
    System,
}

/// What a webhook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::webhook::WebhookEvent")]
pub enum WebhookEvent {
    /// A session was created.
    SessionCreated,
    /// A session's status changed.
    SessionStatusChanged,
    /// A session ended (with its actions).
    SessionFinished,
    /// A computer enrolled.
    ComputerEnrolled,
    /// A maintenance mail could not be sent.
    MailFailed,
    /// A known machine enrolled again (a re-image, or someone taking over its agent): its old
    /// agent token stopped working.
    ComputerReenrolled,
    /// PROMPT: the computer's users were told of a coming reboot (`data.message`,
    /// `data.rebootAt`); a tray app may show it and postpone the session.
    RebootPrompted,
    /// A rollout halted: a wave failed too often (`data.rolloutId`, `data.wave`,
    /// `data.failureRate`, `data.reason`, `data.failingSessions`).
    RolloutHalted,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::webhook::DeliveryStatus")]
pub enum DeliveryStatus {
    /// Not delivered yet: waiting for its first attempt or a retry.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: retried for 24 hours, or the webhook was deleted.
    Failed,
}

/// Which maintenance mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::mail::MailKind")]
pub enum MailKind {
    /// Sent after detection: what will happen and when, with the postpone link.
    Before,
    /// Sent when the session ended: what happened.
    After,
    /// A test of the tenant's branding and mail setup.
    Test,
}
