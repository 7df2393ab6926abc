//! The domain model: what Upkeep stores and reasons about. Plain data, no I/O.
//!
//! These types are what the store persists (JSON behind a format-version byte) and what the
//! engine reads. Enums here are the contract's enums (CONTRACT §5); the API's GraphQL enums are
//! views of them (`upkeep_server::api::graphql::enums`, `#[graphql(remote)]`), so a variant
//! added here and not there fails to compile.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::cron::CronExpr;
use crate::types::{EmailAddress, Stored, Tag, TimeZone};

pub type Time = DateTime<Utc>;

/// A sortable identifier (UUIDv7): its bytes order by creation time, so store keys and
/// pagination cursors are stable. Minted by the caller (the server's clock and random source,
/// or a test's counter), never here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(pub Uuid);

impl Id {
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    pub fn from_slice(b: &[u8]) -> Option<Id> {
        Uuid::from_slice(b).ok().map(Id)
    }
    /// An id from a number: tests and deterministic id sources.
    pub const fn from_u128(n: u128) -> Id {
        Id(Uuid::from_u128(n))
    }
}

#[cfg(test)]
impl Id {
    /// Distinct, increasing ids for this crate's tests (a counter; nothing random).
    pub(crate) fn new() -> Id {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Id::from_u128(u128::from(
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Not a valid id (the text form of a UUID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct BadId;

impl FromStr for Id {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Id).map_err(|_| BadId)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserRole {
    MspAdmin,
    MspTechnician,
    TenantAdmin,
    TenantViewer,
}

impl UserRole {
    pub fn is_msp(self) -> bool {
        matches!(self, UserRole::MspAdmin | UserRole::MspTechnician)
    }
    /// The name clients know (`MSP_ADMIN`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::MspAdmin => "MSP_ADMIN",
            UserRole::MspTechnician => "MSP_TECHNICIAN",
            UserRole::TenantAdmin => "TENANT_ADMIN",
            UserRole::TenantViewer => "TENANT_VIEWER",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: Id,
    /// In lower case: the login index key.
    pub email: Stored<EmailAddress>,
    pub password_hash: String,
    pub role: UserRole,
    pub tenant_id: Option<Id>,
    pub created_at: Time,
    /// A disabled user cannot log in and their tokens and API keys stop working.
    #[serde(default)]
    pub disabled: bool,
    /// Bumped whenever the user's existing credentials must end (password change, disable,
    /// re-enable, role or tenant change). Tokens carry the generation they were issued at and
    /// are refused once it differs: exact, unlike comparing second-precision timestamps.
    #[serde(default)]
    pub token_generation: u32,
    /// The second factor; the secret never leaves the server except through `enrollTotp`.
    #[serde(default)]
    pub totp: UserTotp,
}

/// A user's TOTP (RFC 6238) state. Secrets are base32 (RFC 4648, no padding), as shown to
/// authenticator apps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserTotp {
    /// The confirmed secret: logins need a code when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Issued by `enrollTotp`, waiting for `confirmTotp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The time step of the last accepted code: a code is good once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
}

impl User {
    pub fn totp_on(&self) -> bool {
        self.totp.secret.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    pub fn from_chrono(d: chrono::Weekday) -> Self {
        use chrono::Weekday as W;
        match d {
            W::Mon => Weekday::Monday,
            W::Tue => Weekday::Tuesday,
            W::Wed => Weekday::Wednesday,
            W::Thu => Weekday::Thursday,
            W::Fri => Weekday::Friday,
            W::Sat => Weekday::Saturday,
            W::Sun => Weekday::Sunday,
        }
    }
}

/// Working hours of a tenant, in the tenant's time zone. `start`/`end` are minutes after
/// midnight; `end > start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessHours {
    pub days: Vec<Weekday>,
    pub start_minute: u32,
    pub end_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Id,
    pub name: String,
    pub company_name: Option<String>,
    pub time_zone: Stored<TimeZone>,
    pub mail_from: Option<String>,
    pub logo_url: Option<String>,
    pub primary_color: Option<String>,
    pub auto_onboarding: bool,
    #[serde(default)]
    pub excluded_from_maintenance: bool,
    #[serde(default)]
    pub business_hours: Option<BusinessHours>,
    #[serde(default)]
    pub mail_bcc: Vec<Stored<EmailAddress>>,
    /// Checks run on the computer before a session of this tenant changes anything.
    #[serde(default)]
    pub preflight_scripts: Vec<Script>,
    pub created_at: Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub id: Id,
    pub tenant_id: Id,
    pub name: String,
    pub email: Stored<EmailAddress>,
    #[serde(default)]
    pub usernames: Vec<String>,
    pub created_at: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compliance {
    Compliant,
    NonCompliant,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Computer {
    pub id: Id,
    pub tenant_id: Id,
    pub name: String,
    pub hostname: String,
    pub machine_id: String,
    pub tags: Vec<Stored<Tag>>,
    pub primary_person_id: Option<Id>,
    pub os: String,
    pub agent_version: String,
    pub last_seen_at: Option<Time>,
    /// SHA-256 of the current agent token; `None` once revoked.
    pub agent_token_hash: Option<String>,
    pub enrolled_at: Time,
    #[serde(default)]
    pub excluded_from_maintenance: bool,
    /// From the last finished (non-cancelled) session.
    #[serde(default)]
    pub compliance: Option<Compliance>,
    #[serde(default)]
    pub logged_on_user: Option<String>,
    /// True once any session has run; the first session of a new computer is its onboarding.
    #[serde(default)]
    pub onboarded: bool,
    /// How the last finished onboarding session ended (`COMPLETED` or `FAILED`; a cancelled
    /// one changes nothing). `IN_PROGRESS` is not stored: it is the computer's unfinished
    /// session when that is an onboarding one.
    #[serde(default)]
    pub onboarding: Option<OnboardingStatus>,
    /// A reboot a finished session needed but business hours held (`Computer.rebootPending`).
    #[serde(default)]
    pub held_reboot: Option<HeldReboot>,
}

/// Where a computer stands with its onboarding deployments (`Computer.onboardingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnboardingStatus {
    /// No onboarding session has finished yet.
    Pending,
    InProgress,
    Completed,
    Failed,
}

/// A reboot held by business hours. The session that needed it has ended; the reboot runs as
/// its own job when the hours end, so it neither keeps the session open nor blocks new ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldReboot {
    /// The session that asked for it (the job is filed under it).
    pub session_id: Id,
    /// When the reboot may run (the end of business hours).
    pub due_at: Time,
    /// The reboot job once sent; `None` while it waits for `due_at`.
    pub job_id: Option<Id>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScriptLanguage {
    Shell,
    Powershell,
    Python,
    /// Windows batch (`cmd.exe /D /C file.cmd`); agents on other systems fail such a step.
    Cmd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    pub language: ScriptLanguage,
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftwareVersion {
    pub version: String,
    pub install_script: Script,
    pub upgrade_script: Option<Script>,
    /// The installer the agent fetches and verifies before the install or upgrade script
    /// runs; absent in records written before installers existed.
    #[serde(default)]
    pub installer: Option<Installer>,
}

/// An installer file, named by its content: either one uploaded to the server's file store
/// (`url: None`; agents fetch it from `/agent/v1/files/{sha256}`) or a vendor's download
/// (`url: Some(https://…)`), which the agent fetches itself. Either way the agent checks
/// `size` (when known) and `sha256` before it runs anything. A plain value, so that anything
/// that names a download (a version, a versions script's line) can carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installer {
    /// Lower-case hex SHA-256 of the file (64 characters).
    pub sha256: String,
    /// Bytes; `None` only for a vendor URL whose size was not given.
    #[serde(default)]
    pub size: Option<u64>,
    /// The vendor's `https://` URL; `None` for a file in the server's store.
    #[serde(default)]
    pub url: Option<String>,
    /// The file's name as uploaded or given, for people and for scripts that care about the
    /// extension; the agent keeps the file under its hash.
    #[serde(default)]
    pub file_name: Option<String>,
}

impl Installer {
    /// Whether `s` is a SHA-256 as installers are named: 64 lower-case hex digits.
    pub fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Software {
    pub id: Id,
    pub tenant_id: Option<Id>,
    pub name: String,
    pub detection_script: Script,
    pub versions: Vec<SoftwareVersion>,
    pub uninstall_script: Option<Script>,
    pub configuration_task_id: Option<Id>,
    pub created_at: Time,
    /// Prints the available versions as JSON lines (`versions.rs`); run during detection.
    #[serde(default)]
    pub versions_script: Option<Script>,
    /// How long a versions script's answer stands before detection runs it again.
    #[serde(default = "default_versions_cache_minutes")]
    pub versions_cache_minutes: u32,
    /// Installs a version the versions script returned (`UPKEEP_VERSION`, and the verified
    /// download in `UPKEEP_INSTALLER_FILE` when the line had a `url`).
    #[serde(default)]
    pub install_script: Option<Script>,
    /// Upgrades to such a version; the install script when absent.
    #[serde(default)]
    pub upgrade_script: Option<Script>,
    /// Prerequisites: software a deployment of this one brings into the plan first.
    #[serde(default)]
    pub depends_on: Vec<Id>,
}

/// How long a versions script's answer stands when the software does not say.
pub const DEFAULT_VERSIONS_CACHE_MINUTES: u32 = 60;

fn default_versions_cache_minutes() -> u32 {
    DEFAULT_VERSIONS_CACHE_MINUTES
}

impl Software {
    /// The highest version, compared numerically field by field.
    pub fn latest(&self) -> Option<&SoftwareVersion> {
        self.versions
            .iter()
            .max_by(|a, b| crate::version::compare(&a.version, &b.version))
    }
    pub fn version(&self, v: &str) -> Option<&SoftwareVersion> {
        self.versions
            .iter()
            .find(|x| crate::version::compare(&x.version, v).is_eq())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceTask {
    pub id: Id,
    pub tenant_id: Option<Id>,
    pub name: String,
    pub test_script: Script,
    pub set_script: Option<Script>,
    /// Prints the current value (first line of stdout) during detection, shown on the action.
    #[serde(default)]
    pub get_script: Option<Script>,
    /// The typed parameters deployments of this task give; none: free-form parameters.
    #[serde(default)]
    pub parameters: Vec<crate::params::ParameterDefinition>,
    pub created_at: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetKind {
    AllComputers,
    Computer,
    Tag,
    Person,
}

impl TargetKind {
    /// Specificity for the "most specific deployment wins" rule.
    pub fn specificity(self) -> u8 {
        match self {
            TargetKind::Computer => 4,
            TargetKind::Person => 3,
            TargetKind::Tag => 2,
            TargetKind::AllComputers => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    pub value: Option<String>,
}

impl Target {
    pub fn matches(&self, computer: &Computer) -> bool {
        let v = self.value.as_deref().unwrap_or("");
        match self.kind {
            TargetKind::AllComputers => true,
            // Compared as text, as before, without formatting an id per computer (resolution
            // runs for every computer of a schedule).
            TargetKind::Computer => id_text_is(computer.id, v),
            TargetKind::Tag => computer.tags.iter().any(|t| t.is(v)),
            TargetKind::Person => computer.primary_person_id.is_some_and(|p| id_text_is(p, v)),
        }
    }
}

/// Whether `text` is `id` as `Display` writes it (lower-case, hyphenated).
fn id_text_is(id: Id, text: &str) -> bool {
    text.len() == uuid::fmt::Hyphenated::LENGTH
        && id.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskMode {
    Enforce,
    /// Test only: a non-compliant finding is reported and counts toward compliance; a test
    /// that cannot decide fails the item's detection.
    Audit,
    /// Exception: leave this task alone on the targets.
    Ignore,
    /// Test only, an observation: the finding (and the get script's value) is reported on the
    /// action, which always succeeds, even when the test cannot decide; it does not count
    /// toward the session's or the computer's compliance. The set script never runs.
    Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Enforcement {
    Required,
    Onboarding,
    AdHoc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentOrder {
    Beginning,
    Unordered,
    End,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: Id,
    pub tenant_id: Option<Id>,
    pub target: Target,
    pub software_id: Option<Id>,
    pub desired_state: Option<DesiredSoftwareState>,
    pub version: Option<String>,
    pub maintenance_task_id: Option<Id>,
    pub task_mode: TaskMode,
    /// Values by name. SECRET values are sealed (`params::SEALED_PREFIX`), never plain.
    pub parameters: BTreeMap<String, String>,
    pub enforcement: Enforcement,
    pub order: DeploymentOrder,
    pub position: i32,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub created_at: Time,
}

fn yes() -> bool {
    true
}

/// What a deployment is about: the thing that "most specific wins" is decided per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Software(Id),
    Task(Id),
}

impl Deployment {
    pub fn subject(&self) -> Subject {
        match (self.software_id, self.maintenance_task_id) {
            (Some(s), _) => Subject::Software(s),
            (None, Some(t)) => Subject::Task(t),
            // Validation guarantees one of both; fall back to a subject nothing else shares.
            (None, None) => Subject::Task(self.id),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RebootPreference {
    Normal,
    Suppress,
    Force,
    /// Like `Normal`, but the people at the computer are told first (the agent's prompt
    /// command) and the reboot runs `reboot_prompt_minutes` later unless postponed.
    Prompt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OfflineBehavior {
    Skip,
    ApplyOnConnect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceOptions {
    pub notify_before: bool,
    pub notify_after: bool,
    pub notify_when_compliant: bool,
    pub show_actions_in_email: bool,
    pub allow_postpone: bool,
    pub max_postpones: u32,
    pub postpone_hours: u32,
    pub allow_update_now: bool,
    pub reboot_preference: RebootPreference,
    pub offline_behavior: OfflineBehavior,
    pub offline_grace_minutes: u32,
    #[serde(default)]
    pub allow_reboot_during_business_hours: bool,
    /// `PROMPT`: minutes between telling the users and rebooting.
    #[serde(default = "fifteen")]
    pub reboot_prompt_minutes: u32,
    /// A failed preflight check is run again after this many minutes.
    #[serde(default = "fifteen")]
    pub preflight_retry_minutes: u32,
}

fn fifteen() -> u32 {
    15
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            notify_before: false,
            notify_after: false,
            notify_when_compliant: false,
            show_actions_in_email: true,
            allow_postpone: true,
            max_postpones: 3,
            postpone_hours: 24,
            allow_update_now: true,
            reboot_preference: RebootPreference::Normal,
            offline_behavior: OfflineBehavior::ApplyOnConnect,
            offline_grace_minutes: 30,
            allow_reboot_during_business_hours: false,
            reboot_prompt_minutes: 15,
            preflight_retry_minutes: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    pub id: Id,
    /// `None`: cross-tenant (every tenant not excluded).
    pub tenant_id: Option<Id>,
    pub name: String,
    pub target: Target,
    pub cron: Stored<CronExpr>,
    /// `None`: each tenant's own zone (cross-tenant schedules only).
    pub time_zone: Option<Stored<TimeZone>>,
    pub detection_lead_minutes: u32,
    pub window_minutes: u32,
    pub options: MaintenanceOptions,
    pub enabled: bool,
    pub detection_only: bool,
    pub last_run_at: Option<Time>,
    /// Per tenant (or `None` key for single-zone schedules encoded as nil id): the next
    /// occurrence not yet fired. Persisted so a restart neither repeats nor loses one.
    #[serde(default)]
    pub next_fire: BTreeMap<String, Time>,
    /// When the timing was last set (creation or a change of cron, zone or lead): the first
    /// occurrence considered is the first whose detection starts after it.
    #[serde(default)]
    pub timing_since: Option<Time>,
    /// Checks run before this schedule's sessions change anything (after the MSP's and the
    /// tenant's).
    #[serde(default)]
    pub preflight_scripts: Vec<Script>,
    pub created_at: Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentKey {
    pub id: Id,
    pub tenant_id: Id,
    /// SHA-256 (hex) of the secret.
    pub key_hash: String,
    pub label: Option<String>,
    pub created_at: Time,
    pub expires_at: Option<Time>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
    #[serde(default)]
    pub tags: Vec<Stored<Tag>>,
    #[serde(default)]
    pub primary_person_id: Option<Id>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Id,
    pub name: String,
    pub role: UserRole,
    pub tenant_id: Option<Id>,
    pub secret_hash: String,
    pub created_by: Id,
    pub created_at: Time,
    pub expires_at: Option<Time>,
    pub last_used_at: Option<Time>,
    pub revoked: bool,
}
