//! The GraphQL enums: views of the core's enums (`#[graphql(remote)]`), so the schema is the
//! API's and a variant added to the core without its view here fails to compile.
//!
//! Architecture invariant: core types carry no GraphQL derives; every enum the API exposes is
//! declared here with the name CONTRACT §5 gives it.

use async_graphql::Enum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::UserRole")]
pub enum UserRole {
    MspAdmin,
    MspTechnician,
    TenantAdmin,
    TenantViewer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Weekday")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Compliance")]
pub enum Compliance {
    Compliant,
    NonCompliant,
    Unknown,
}

/// Where a computer stands with its onboarding deployments (`Computer.onboardingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::OnboardingStatus")]
pub enum OnboardingStatus {
    /// No onboarding session has finished yet.
    Pending,
    InProgress,
    Completed,
    Failed,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::TargetKind")]
pub enum TargetKind {
    AllComputers,
    Computer,
    Tag,
    Person,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::DesiredSoftwareState")]
pub enum DesiredSoftwareState {
    InstalledLatest,
    InstalledVersion,
    InstalledAtLeast,
    InstalledAny,
    UpdateIfFound,
    Uninstalled,
    /// Exception: leave this software alone on the targets.
    Ignore,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::Enforcement")]
pub enum Enforcement {
    Required,
    Onboarding,
    AdHoc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::DeploymentOrder")]
pub enum DeploymentOrder {
    Beginning,
    Unordered,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::RebootPreference")]
pub enum RebootPreference {
    Normal,
    Suppress,
    Force,
    /// Like NORMAL, but the computer's users are told first and the reboot runs
    /// `rebootPromptMinutes` later unless the session is postponed.
    Prompt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::domain::OfflineBehavior")]
pub enum OfflineBehavior {
    Skip,
    ApplyOnConnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::SessionStatus",
    name = "MaintenanceSessionStatus"
)]
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
    /// A preflight check failed; it runs again every `preflightRetryMinutes` until the window
    /// ends (then CANCELLED). `statusReason` says what the check said.
    PendingPreflight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::SessionTrigger",
    name = "MaintenanceSessionTrigger"
)]
pub enum SessionTrigger {
    Manual,
    Schedule,
    Onboarding,
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::ActionKind",
    name = "MaintenanceActionKind"
)]
pub enum ActionKind {
    Install,
    Upgrade,
    Uninstall,
    RunTask,
    NoAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    remote = "upkeep_core::session::ActionStatus",
    name = "MaintenanceActionStatus"
)]
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

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::audit::ActorKind")]
pub enum ActorKind {
    User,
    ApiKey,
    Agent,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::webhook::WebhookEvent")]
pub enum WebhookEvent {
    SessionCreated,
    SessionStatusChanged,
    SessionFinished,
    ComputerEnrolled,
    MailFailed,
    /// A known machine enrolled again (a re-image, or someone taking over its agent): its old
    /// agent token stopped working.
    ComputerReenrolled,
    /// PROMPT: the computer's users were told of a coming reboot (`data.message`,
    /// `data.rebootAt`); a tray app may show it and postpone the session.
    RebootPrompted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::webhook::DeliveryStatus")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "upkeep_core::mail::MailKind")]
pub enum MailKind {
    Before,
    After,
    Test,
}
