//! Input types and their validation into domain values. Every error names its field.

use super::enums::{
    DeploymentOrder, DesiredSoftwareState, Enforcement, OfflineBehavior, RebootPreference,
    ScriptLanguage, SessionStatus, SessionTrigger, TargetKind, TaskMode, UserRole, WebhookEvent,
    Weekday,
};
use super::parse_id;
use crate::api::graphql::scalars::DateTime;
use crate::error::{ApiError, ApiResult};
use async_graphql::{ID, InputObject, Json};
use upkeep_core::calendar::cron::CronExpr;
use upkeep_core::domain::*;
use upkeep_core::types::{EmailAddress, Stored, Tag, TimeZone};

// List inputs carry `max_items` bounds, checked by the schema before any resolver runs
// (documented in docs/SECURITY.md); each list's own checks are linear in its length.

/// A tenant's working hours.
#[derive(InputObject)]
pub struct BusinessHoursInput {
    /// The working days (at most seven).
    #[graphql(validator(max_items = 7))]
    pub days: Vec<Weekday>,
    /// Start of the working day, `HH:MM` (e.g. `08:00`) in the tenant's time zone.
    pub start: String,
    /// End of the working day, `HH:MM` (e.g. `17:30`), after `start`.
    pub end: String,
}

impl BusinessHoursInput {
    pub fn validate(&self) -> ApiResult<BusinessHours> {
        let parse = |f: &str, s: &str| -> ApiResult<u32> {
            let (h, m) = s
                .split_once(':')
                .ok_or_else(|| ApiError::bad(f, "use HH:MM, e.g. 08:00"))?;
            let h: u32 = h
                .parse()
                .map_err(|_| ApiError::bad(f, "use HH:MM, e.g. 08:00"))?;
            let m: u32 = m
                .parse()
                .map_err(|_| ApiError::bad(f, "use HH:MM, e.g. 08:00"))?;
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(ApiError::bad(f, "is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let start = parse("businessHours.start", &self.start)?;
        let end = parse("businessHours.end", &self.end)?;
        if end <= start {
            return Err(ApiError::bad("businessHours.end", "must be after start"));
        }
        Ok(BusinessHours {
            days: self.days.iter().map(|&d| d.into()).collect(),
            start_minute: start,
            end_minute: end,
        })
    }
}

/// A new tenant (a customer of the MSP).
#[derive(InputObject)]
pub struct CreateTenantInput {
    /// The tenant's name, unique.
    pub name: String,
    /// The name mails and pages show (default: `name`).
    pub company_name: Option<String>,
    /// An IANA time zone for its mails and schedules (default `UTC`).
    pub time_zone: Option<String>,
    /// The sender of its mails (a domain the server may send for).
    pub mail_from: Option<String>,
    /// An https URL of the logo its mails and pages show.
    pub logo_url: Option<String>,
    /// The accent colour of its mails and pages (`#RRGGBB`).
    pub primary_color: Option<String>,
    /// True: a newly enrolled computer gets an `ONBOARDING` session at once (default false).
    #[graphql(default_with = "Some(false)")]
    pub auto_onboarding: Option<bool>,
    /// True keeps all its computers out of maintenance (default false).
    #[graphql(default_with = "Some(false)")]
    pub excluded_from_maintenance: Option<bool>,
    /// Its working hours: reboots wait until they are over.
    pub business_hours: Option<BusinessHoursInput>,
    /// Addresses that get a blind copy of every maintenance mail.
    #[graphql(validator(max_items = 20))]
    pub mail_bcc: Option<Vec<String>>,
    /// Checks run on the computer before a session of this tenant changes anything.
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

/// Changes to a tenant; only the fields given change.
#[derive(InputObject)]
pub struct UpdateTenantInput {
    /// Its name (unique).
    pub name: Option<String>,
    /// The name its mails and pages show.
    pub company_name: Option<String>,
    /// An IANA time zone.
    pub time_zone: Option<String>,
    /// The sender of its mails.
    pub mail_from: Option<String>,
    /// An https URL of its logo.
    pub logo_url: Option<String>,
    /// The accent colour (`#RRGGBB`).
    pub primary_color: Option<String>,
    /// True: newly enrolled computers get an onboarding session.
    pub auto_onboarding: Option<bool>,
    /// True keeps all its computers out of maintenance.
    pub excluded_from_maintenance: Option<bool>,
    /// Its working hours.
    pub business_hours: Option<BusinessHoursInput>,
    /// Addresses that get a blind copy of every maintenance mail (replaces them).
    #[graphql(validator(max_items = 20))]
    pub mail_bcc: Option<Vec<String>>,
    /// Checks run on the computer before a session of this tenant changes anything.
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

pub fn name(field: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ApiError::bad(field, "must not be empty"));
    }
    if t.chars().count() > 200 {
        return Err(ApiError::bad(field, "must be at most 200 characters"));
    }
    if t.chars().any(char::is_control) {
        return Err(ApiError::bad(field, "must not contain control characters"));
    }
    Ok(t.to_string())
}

pub fn email_address(field: &str, s: &str) -> ApiResult<EmailAddress> {
    EmailAddress::parse(s).map_err(|e| ApiError::bad(field, e.0))
}

pub fn mailbox(field: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    if t.chars().any(char::is_control) || t.parse::<lettre::message::Mailbox>().is_err() {
        return Err(ApiError::bad(
            field,
            format!("'{t}' is not a mail address (e.g. IT <it@example.com>)"),
        ));
    }
    Ok(t.to_string())
}

/// A tenant's sender: a mailbox on one of the domains the MSP allows (`--mail-from-domains`;
/// empty: any). Only exact domains count, not their subdomains: a tenant must not send as
/// the MSP's other customers, and the MSP's SPF/DKIM cover only what it named.
pub fn mail_from(s: &str, allowed: &[String]) -> ApiResult<String> {
    let t = mailbox("mailFrom", s)?;
    if allowed.is_empty() {
        return Ok(t);
    }
    let domain = t
        .parse::<lettre::message::Mailbox>()
        .map(|m| m.email.domain().trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&domain)) {
        return Err(ApiError::bad(
            "mailFrom",
            format!(
                "'{domain}' is not a domain this server may send from; use one of: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(t)
}

pub fn time_zone(field: &str, s: &str) -> ApiResult<Stored<TimeZone>> {
    TimeZone::parse(s)
        .map(Stored::new)
        .map_err(|e| ApiError::bad(field, e.0))
}

pub fn color(field: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    let ok = t.len() == 7 && t.starts_with('#') && t[1..].chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        return Err(ApiError::bad(field, "use a hex colour like #0a66c2"));
    }
    Ok(t.to_ascii_lowercase())
}

pub fn url(field: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    let ok = (t.starts_with("https://") || t.starts_with("http://"))
        && t.len() < 2000
        && !t
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '<' || c == '>');
    if !ok {
        return Err(ApiError::bad(field, "must be an http(s) URL"));
    }
    Ok(t.to_string())
}

fn opt<T>(v: Option<&str>, f: impl Fn(&str) -> ApiResult<T>) -> ApiResult<Option<T>> {
    match v {
        Some(s) if !s.trim().is_empty() => f(s).map(Some),
        _ => Ok(None),
    }
}

pub fn bcc_list(v: &[String]) -> ApiResult<Vec<Stored<EmailAddress>>> {
    v.iter()
        .map(|a| email_address("mailBcc", a).map(Stored::new))
        .collect()
}

impl CreateTenantInput {
    /// `mail_from_domains`: the configured `--mail-from-domains`.
    pub fn into_tenant(self, now: Time, mail_from_domains: &[String]) -> ApiResult<Tenant> {
        Ok(Tenant {
            id: crate::ids::fresh(),
            name: name("name", &self.name)?,
            company_name: opt(self.company_name.as_deref(), |s| name("companyName", s))?,
            time_zone: match &self.time_zone {
                Some(z) => time_zone("timeZone", z)?,
                None => TimeZone::UTC.into(),
            },
            mail_from: opt(self.mail_from.as_deref(), |s| {
                mail_from(s, mail_from_domains)
            })?,
            logo_url: opt(self.logo_url.as_deref(), |s| url("logoUrl", s))?,
            primary_color: opt(self.primary_color.as_deref(), |s| color("primaryColor", s))?,
            auto_onboarding: self.auto_onboarding.unwrap_or(false),
            excluded_from_maintenance: self.excluded_from_maintenance.unwrap_or(false),
            business_hours: self
                .business_hours
                .as_ref()
                .map(|b| b.validate())
                .transpose()?,
            mail_bcc: bcc_list(self.mail_bcc.as_deref().unwrap_or_default())?,
            preflight_scripts: preflight_scripts(self.preflight_scripts.as_deref())?,
            created_at: now,
        })
    }
}

impl UpdateTenantInput {
    /// `mail_from_domains`: the configured `--mail-from-domains`.
    pub fn apply(self, t: &mut Tenant, mail_from_domains: &[String]) -> ApiResult<()> {
        if let Some(n) = &self.name {
            t.name = name("name", n)?;
        }
        if let Some(v) = &self.company_name {
            t.company_name = opt(Some(v), |s| name("companyName", s))?;
        }
        if let Some(v) = &self.time_zone {
            t.time_zone = time_zone("timeZone", v)?;
        }
        if let Some(v) = &self.mail_from {
            t.mail_from = opt(Some(v), |s| mail_from(s, mail_from_domains))?;
        }
        if let Some(v) = &self.logo_url {
            t.logo_url = opt(Some(v), |s| url("logoUrl", s))?;
        }
        if let Some(v) = &self.primary_color {
            t.primary_color = opt(Some(v), |s| color("primaryColor", s))?;
        }
        if let Some(v) = self.auto_onboarding {
            t.auto_onboarding = v;
        }
        if let Some(v) = self.excluded_from_maintenance {
            t.excluded_from_maintenance = v;
        }
        if let Some(b) = &self.business_hours {
            t.business_hours = if b.days.is_empty() {
                None
            } else {
                Some(b.validate()?)
            };
        }
        if let Some(b) = &self.mail_bcc {
            t.mail_bcc = bcc_list(b)?;
        }
        if let Some(p) = &self.preflight_scripts {
            t.preflight_scripts = preflight_scripts(Some(p))?;
        }
        Ok(())
    }
}

/// A new user of the API and console.
#[derive(InputObject)]
pub struct CreateUserInput {
    /// The user's sign-in e-mail address.
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    /// The user's role: at most the creator's own.
    pub role: UserRole,
    /// The tenant, for tenant roles.
    pub tenant_id: Option<ID>,
}

/// Only the fields given change. Moving a user to an MSP role takes them out of their tenant.
#[derive(InputObject)]
pub struct UpdateUserInput {
    /// Their role: at most the changer's own.
    pub role: Option<UserRole>,
    /// Their tenant, for tenant roles.
    pub tenant_id: Option<ID>,
    /// A disabled user cannot log in; their tokens and API keys stop working at once.
    pub disabled: Option<bool>,
}

/// MSP roles belong to no tenant; tenant roles to exactly one.
pub fn role_tenant(role: upkeep_core::domain::UserRole, tenant: Option<Id>) -> ApiResult<()> {
    match (role.is_msp(), tenant) {
        (true, Some(_)) => Err(ApiError::bad("tenantId", "MSP roles belong to no tenant")),
        (false, None) => Err(ApiError::bad(
            "tenantId",
            "TENANT_ADMIN and TENANT_VIEWER need a tenant",
        )),
        _ => Ok(()),
    }
}

/// What a password must be (createUser, changePassword).
pub fn valid_password(field: &str, p: &str) -> ApiResult<()> {
    if p.chars().count() < 10 {
        return Err(ApiError::bad(field, "must be at least 10 characters"));
    }
    if p.len() > 1024 {
        return Err(ApiError::bad(field, "must be at most 1024 bytes"));
    }
    Ok(())
}

/// A new person: someone who uses computers and gets their maintenance mails.
#[derive(InputObject)]
pub struct CreatePersonInput {
    /// The person's tenant.
    pub tenant_id: ID,
    /// The person's name, as mails address them.
    pub name: String,
    /// Where maintenance mails go.
    pub email: String,
    /// Sign-in names (`user` or `DOMAIN\\user`) by which a computer's logged-on user is matched to
    /// this person.
    #[graphql(validator(max_items = 50))]
    pub usernames: Option<Vec<String>>,
}

/// Changes to a person; only the fields given change.
#[derive(InputObject)]
pub struct UpdatePersonInput {
    /// Their name.
    pub name: Option<String>,
    /// Where their mails go.
    pub email: Option<String>,
    /// Sign-in names matched to them (replaces them all).
    #[graphql(validator(max_items = 50))]
    pub usernames: Option<Vec<String>>,
}

/// Options of a new enrollment key.
#[derive(InputObject, Default)]
pub struct CreateEnrollmentKeyInput {
    /// What the key is for (e.g. `Office laptops`).
    pub label: Option<String>,
    /// When the key stops enrolling; leave out for no expiry.
    pub expires_at: Option<DateTime>,
    /// How many computers may enroll with it; leave out for no limit.
    pub max_uses: Option<i32>,
    /// Tags every computer enrolled with this key gets.
    #[graphql(validator(max_items = 100))]
    pub tags: Option<Vec<String>>,
    /// The person every computer enrolled with this key gets as primary person.
    pub primary_person_id: Option<ID>,
}

/// Changes to a computer; only the fields given change.
#[derive(InputObject)]
pub struct UpdateComputerInput {
    /// A display name.
    pub name: Option<String>,
    /// Its tags (replaces them all).
    #[graphql(validator(max_items = 100))]
    pub tags: Option<Vec<String>>,
    /// Empty string clears the primary person.
    pub primary_person_id: Option<ID>,
    /// True keeps it out of maintenance.
    pub excluded_from_maintenance: Option<bool>,
}

/// Computer tags by `Tag::parse_list`: duplicates that differ only in case dropped (first
/// spelling kept). Linear in the list.
pub fn tags(v: &[String]) -> ApiResult<Vec<Stored<Tag>>> {
    Tag::parse_list(v)
        .map(|l| l.into_iter().map(Stored::new).collect())
        .map_err(|e| ApiError::bad("tags", e.0))
}

/// Person usernames: the tag rule, kept as text.
pub fn usernames(v: &[String]) -> ApiResult<Vec<String>> {
    Ok(tags(v)?.iter().map(|t| t.text().to_string()).collect())
}

/// A script an agent runs.
#[derive(InputObject)]
pub struct ScriptInput {
    /// What runs it.
    pub language: ScriptLanguage,
    /// The script's text (at most 256 KiB).
    pub body: String,
}

/// Preflight checks, each a valid script (`preflightScripts[i]`).
pub fn preflight_scripts(v: Option<&[ScriptInput]>) -> ApiResult<Vec<Script>> {
    v.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| s.validate(&format!("preflightScripts[{i}]")))
        .collect()
}

impl ScriptInput {
    pub fn validate(&self, field: &str) -> ApiResult<Script> {
        if self.body.trim().is_empty() {
            return Err(ApiError::bad(field, "script body must not be empty"));
        }
        if self.body.len() > 256 * 1024 {
            return Err(ApiError::bad(field, "script body must be at most 256 KiB"));
        }
        Ok(Script {
            language: self.language.into(),
            body: self.body.clone(),
        })
    }
}

mod installer;
pub use installer::{InstallerInput, check_stored};

/// A version of a software.
#[derive(InputObject)]
pub struct SoftwareVersionInput {
    /// The version, e.g. `1.10.0` (compared numerically field by field).
    pub version: String,
    /// Installs this version.
    pub install_script: ScriptInput,
    /// Upgrades to this version; leave out when the install script upgrades too.
    pub upgrade_script: Option<ScriptInput>,
    /// The file the agent fetches and verifies before the install or upgrade script runs.
    pub installer: Option<InstallerInput>,
}

pub fn versions(v: &[SoftwareVersionInput]) -> ApiResult<Vec<SoftwareVersion>> {
    let mut out: Vec<SoftwareVersion> = Vec::new();
    for (i, x) in v.iter().enumerate() {
        let ver = x.version.trim();
        if !upkeep_core::version::valid_text(ver) {
            return Err(ApiError::bad(
                &format!("versions[{i}].version"),
                format!("'{ver}' is not a version like 1.10.0"),
            ));
        }
        if out
            .iter()
            .any(|o| upkeep_core::version::compare(&o.version, ver).is_eq())
        {
            return Err(ApiError::bad(
                &format!("versions[{i}].version"),
                format!("version {ver} is listed twice"),
            ));
        }
        out.push(SoftwareVersion {
            version: ver.to_string(),
            install_script: x
                .install_script
                .validate(&format!("versions[{i}].installScript"))?,
            upgrade_script: x
                .upgrade_script
                .as_ref()
                .map(|s| s.validate(&format!("versions[{i}].upgradeScript")))
                .transpose()?,
            installer: x
                .installer
                .as_ref()
                .map(|s| s.validate(&format!("versions[{i}].installer")))
                .transpose()?,
        });
    }
    Ok(out)
}

/// A new software: how to detect it and how to install, upgrade and uninstall each version.
#[derive(InputObject)]
pub struct CreateSoftwareInput {
    /// The software's name, unique in its tenant.
    pub name: String,
    /// The tenant; leave out for a cross-tenant software (MSP roles only).
    pub tenant_id: Option<ID>,
    /// Prints the installed version (or nothing when not installed) and exits 0.
    pub detection_script: ScriptInput,
    /// Static versions, each with its install script. May be empty when `versionsScript` is
    /// given.
    #[graphql(validator(max_items = 200))]
    pub versions: Vec<SoftwareVersionInput>,
    /// Removes the software (for `UNINSTALLED`).
    pub uninstall_script: Option<ScriptInput>,
    /// A maintenance task run after each install or upgrade.
    pub configuration_task_id: Option<ID>,
    /// Prints the available versions, one JSON object per line:
    /// `{"version","url","sha256","size","releasedAt"}` (all but `version` optional; a `url`
    /// must be https:// and comes with its `sha256`). Run during detection; for that session its
    /// versions replace the static ones (`INSTALLED_LATEST` means the newest it printed). When
    /// it fails, the static versions stand and the session's log says so. Needs `installScript`.
    pub versions_script: Option<ScriptInput>,
    /// How long a versions script's answer stands before detection runs it again (0 to 10080;
    /// default 60).
    pub versions_cache_minutes: Option<i32>,
    /// Installs a version the versions script printed: it reads `UPKEEP_VERSION` and, when the
    /// line had a `url`, the verified download in `UPKEEP_INSTALLER_FILE`.
    pub install_script: Option<ScriptInput>,
    /// Upgrades to such a version; `installScript` when absent.
    pub upgrade_script: Option<ScriptInput>,
    /// Prerequisites: software a deployment of this one brings into the plan first (at most
    /// 32; software of the same tenant or cross-tenant; no cycles).
    #[graphql(validator(max_items = 32))]
    pub depends_on_ids: Option<Vec<ID>>,
}

/// Changes to a software; only the fields given change.
#[derive(InputObject)]
pub struct UpdateSoftwareInput {
    /// Its name.
    pub name: Option<String>,
    /// The detection script.
    pub detection_script: Option<ScriptInput>,
    /// Replaces the whole version list.
    #[graphql(validator(max_items = 200))]
    pub versions: Option<Vec<SoftwareVersionInput>>,
    /// The uninstall script.
    pub uninstall_script: Option<ScriptInput>,
    /// Empty string clears it.
    pub configuration_task_id: Option<ID>,
    /// `null` removes it.
    pub versions_script: async_graphql::MaybeUndefined<ScriptInput>,
    /// How long a versions script's answer is reused.
    pub versions_cache_minutes: Option<i32>,
    /// `null` removes it.
    pub install_script: async_graphql::MaybeUndefined<ScriptInput>,
    /// `null` removes it.
    pub upgrade_script: async_graphql::MaybeUndefined<ScriptInput>,
    /// Replaces the prerequisites (an empty list removes them all).
    #[graphql(validator(max_items = 32))]
    pub depends_on_ids: Option<Vec<ID>>,
}

/// A new maintenance task: a test script and the set script that makes the test pass.
#[derive(InputObject)]
pub struct CreateMaintenanceTaskInput {
    /// The task's name, unique in its tenant.
    pub name: String,
    /// The tenant; leave out for a cross-tenant task (MSP roles only).
    pub tenant_id: Option<ID>,
    /// Exit 0: compliant; exit 1: not compliant; anything else: the test failed.
    pub test_script: ScriptInput,
    /// Run when the test says not compliant (ENFORCE); leave out for a test-only task.
    pub set_script: Option<ScriptInput>,
    /// Prints the current value (first line of stdout), shown on the session's action.
    pub get_script: Option<ScriptInput>,
    /// Typed parameters; deployments' values are checked against them. None: free-form.
    #[graphql(validator(max_items = 50))]
    pub parameters: Option<Vec<super::parameters::ParameterDefinitionInput>>,
}

/// Fields left out keep their value. Sessions already started keep the task as it was.
#[derive(InputObject)]
pub struct UpdateMaintenanceTaskInput {
    /// Its name.
    pub name: Option<String>,
    /// The test script.
    pub test_script: Option<ScriptInput>,
    /// The set script.
    pub set_script: Option<ScriptInput>,
    /// Prints the current value (shown as `currentValue`); `null` removes it.
    pub get_script: Option<ScriptInput>,
    /// Replaces the definitions. Deployments are not rewritten: one that no longer satisfies
    /// them fails its item (naming the parameter) when a session starts.
    #[graphql(validator(max_items = 50))]
    pub parameters: Option<Vec<super::parameters::ParameterDefinitionInput>>,
}

/// Which computers a deployment or schedule applies to.
#[derive(InputObject)]
pub struct TargetInput {
    /// What kind of target.
    pub kind: TargetKind,
    /// `COMPUTER`: a computer id; `PERSON`: a person id; `TAG`: a tag; leave out for
    /// `ALL_COMPUTERS`.
    pub value: Option<String>,
}

/// A new deployment: what one target should have (a software in a state, or a maintenance task).
#[derive(InputObject)]
pub struct CreateDeploymentInput {
    /// The tenant; leave out for a cross-tenant deployment (MSP roles only).
    pub tenant_id: Option<ID>,
    /// Which computers it applies to.
    pub target: TargetInput,
    /// The software to keep in `desiredState` (give this or `maintenanceTaskId`).
    pub software_id: Option<ID>,
    /// The state the software should be in; required with `softwareId`.
    pub desired_state: Option<DesiredSoftwareState>,
    /// The version for `INSTALLED_VERSION` and `INSTALLED_AT_LEAST`.
    pub version: Option<String>,
    /// The maintenance task to run (give this or `softwareId`).
    pub maintenance_task_id: Option<ID>,
    /// How the task runs (default `ENFORCE`).
    pub task_mode: Option<TaskMode>,
    /// Values of the task's parameters, by name (a JSON object).
    pub parameters: Option<Json<serde_json::Value>>,
    /// When it applies (default `REQUIRED`).
    #[graphql(default_with = "Some(Enforcement::Required)")]
    pub enforcement: Option<Enforcement>,
    /// Where in a session it runs (default `UNORDERED`).
    #[graphql(default_with = "Some(DeploymentOrder::Unordered)")]
    pub order: Option<DeploymentOrder>,
    /// Its place within `BEGINNING` or `END` (default 0; lower runs first).
    #[graphql(default_with = "Some(0)")]
    pub position: Option<i32>,
    /// False keeps the deployment without applying it (default true).
    #[graphql(default_with = "Some(true)")]
    pub enabled: Option<bool>,
}

/// Changes to a deployment; only the fields given change.
#[derive(InputObject)]
pub struct UpdateDeploymentInput {
    /// Which computers it applies to.
    pub target: Option<TargetInput>,
    /// The software's desired state.
    pub desired_state: Option<DesiredSoftwareState>,
    /// The version for `INSTALLED_VERSION` and `INSTALLED_AT_LEAST`.
    pub version: Option<String>,
    /// How the task runs.
    pub task_mode: Option<TaskMode>,
    /// The task's parameter values (replaces them all).
    pub parameters: Option<Json<serde_json::Value>>,
    /// When it applies.
    pub enforcement: Option<Enforcement>,
    /// Where in a session it runs.
    pub order: Option<DeploymentOrder>,
    /// Its place within `BEGINNING` or `END`.
    pub position: Option<i32>,
    /// False keeps it without applying it.
    pub enabled: Option<bool>,
}

/// Parameters are a JSON object of scalars; names become `UPKEEP_PARAM_<NAME>`. A task with
/// typed parameters checks them further (`parameters::deployment_values`).
pub fn parameters(v: &serde_json::Value) -> ApiResult<std::collections::BTreeMap<String, String>> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("parameters", "must be a JSON object"))?;
    let mut out = std::collections::BTreeMap::new();
    // Names are upper-cased into one variable each: `value` and `Value` would be one.
    let mut variables = std::collections::BTreeMap::new();
    for (k, val) in obj {
        let ok = !k.is_empty()
            && k.len() <= 64
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ApiError::bad(
                "parameters",
                format!("'{k}' is not a parameter name (letters, digits, _)"),
            ));
        }
        if let Some(other) = variables.insert(k.to_ascii_uppercase(), k) {
            return Err(ApiError::bad(
                "parameters",
                format!(
                    "'{other}' and '{k}' differ only in case: both would be UPKEEP_PARAM_{}",
                    k.to_ascii_uppercase()
                ),
            ));
        }
        let s = match val {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => String::new(),
            _ => {
                return Err(ApiError::bad(
                    "parameters",
                    format!("'{k}' must be a string, number or boolean"),
                ));
            }
        };
        if s.len() > 8192 || s.contains('\0') {
            return Err(ApiError::bad(
                "parameters",
                format!("'{k}' is too long or contains NUL"),
            ));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

/// Options of sessions; fields left out take their defaults (see each field).
#[derive(InputObject, Default, Clone)]
pub struct MaintenanceOptionsInput {
    /// Mail the computer's person what will happen and when, after detection (default false).
    #[graphql(default_with = "Some(false)")]
    pub notify_before: Option<bool>,
    /// Mail the computer's person what happened (default false).
    #[graphql(default_with = "Some(false)")]
    pub notify_after: Option<bool>,
    /// Mail even when nothing is to do (default false).
    #[graphql(default_with = "Some(false)")]
    pub notify_when_compliant: Option<bool>,
    /// List each action in the mails (default true).
    #[graphql(default_with = "Some(true)")]
    pub show_actions_in_email: Option<bool>,
    /// Offer the postpone link (default true).
    #[graphql(default_with = "Some(true)")]
    pub allow_postpone: Option<bool>,
    /// How many times the person may postpone (default 3).
    #[graphql(default_with = "Some(3)")]
    pub max_postpones: Option<i32>,
    /// How long one postpone waits, in hours (default 24).
    #[graphql(default_with = "Some(24)")]
    pub postpone_hours: Option<i32>,
    /// Offer an "update now" link (default true).
    #[graphql(default_with = "Some(true)")]
    pub allow_update_now: Option<bool>,
    /// Whether and how to reboot when an action needs it (default `NORMAL`).
    #[graphql(default_with = "Some(RebootPreference::Normal)")]
    pub reboot_preference: Option<RebootPreference>,
    /// What happens when the computer is offline at execution (default `APPLY_ON_CONNECT`).
    #[graphql(default_with = "Some(OfflineBehavior::ApplyOnConnect)")]
    pub offline_behavior: Option<OfflineBehavior>,
    /// With `SKIP`: minutes to wait for an offline computer (default 30).
    #[graphql(default_with = "Some(30)")]
    pub offline_grace_minutes: Option<i32>,
    /// Let a reboot happen in the tenant's business hours (default false).
    #[graphql(default_with = "Some(false)")]
    pub allow_reboot_during_business_hours: Option<bool>,
    /// PROMPT: minutes between telling the computer's users and rebooting (default 15).
    #[graphql(default_with = "Some(15)")]
    pub reboot_prompt_minutes: Option<i32>,
    /// A failed preflight check runs again after this many minutes (default 15).
    #[graphql(default_with = "Some(15)")]
    pub preflight_retry_minutes: Option<i32>,
}

impl MaintenanceOptionsInput {
    pub fn apply_to(&self, mut o: MaintenanceOptions) -> ApiResult<MaintenanceOptions> {
        let range = |f: &str, v: i32, lo: i32, hi: i32| -> ApiResult<u32> {
            if v < lo || v > hi {
                return Err(ApiError::bad(f, format!("must be between {lo} and {hi}")));
            }
            Ok(v as u32)
        };
        macro_rules! set {
            ($f:ident) => {
                if let Some(v) = self.$f {
                    o.$f = v.into();
                }
            };
        }
        set!(notify_before);
        set!(notify_after);
        set!(notify_when_compliant);
        set!(show_actions_in_email);
        set!(allow_postpone);
        set!(allow_update_now);
        set!(reboot_preference);
        set!(offline_behavior);
        set!(allow_reboot_during_business_hours);
        if let Some(v) = self.max_postpones {
            o.max_postpones = range("options.maxPostpones", v, 0, 100)?;
        }
        if let Some(v) = self.postpone_hours {
            o.postpone_hours = range("options.postponeHours", v, 1, 24 * 30)?;
        }
        if let Some(v) = self.offline_grace_minutes {
            o.offline_grace_minutes = range("options.offlineGraceMinutes", v, 0, 60 * 24 * 30)?;
        }
        if let Some(v) = self.reboot_prompt_minutes {
            o.reboot_prompt_minutes = range("options.rebootPromptMinutes", v, 0, 60 * 24)?;
        }
        if let Some(v) = self.preflight_retry_minutes {
            o.preflight_retry_minutes = range("options.preflightRetryMinutes", v, 1, 60 * 24)?;
        }
        Ok(o)
    }

    pub fn validate(&self) -> ApiResult<MaintenanceOptions> {
        self.apply_to(MaintenanceOptions::default())
    }
}

/// What `startMaintenanceSession` starts.
#[derive(InputObject)]
pub struct StartMaintenanceSessionInput {
    /// The computers: one session each, in this order (at most 10 000).
    #[graphql(validator(max_items = 10000))]
    pub computer_ids: Vec<ID>,
    /// True: detect and report only (default false).
    #[graphql(default_with = "Some(false)")]
    pub detection_only: Option<bool>,
    /// When to execute; leave out to execute right after detection. Not in the past.
    pub execute_at: Option<DateTime>,
    /// Limit the session to these deployments (`AD_HOC` ones included).
    #[graphql(validator(max_items = 1000))]
    pub deployment_ids: Option<Vec<ID>>,
    /// The sessions' options.
    pub options: Option<MaintenanceOptionsInput>,
    /// A repeat with the same key from the same caller within 24 hours returns the first
    /// call's sessions and starts nothing.
    pub idempotency_key: Option<String>,
}

/// A new schedule: runs maintenance sessions on its target at each cron occurrence.
#[derive(InputObject)]
pub struct CreateScheduleInput {
    /// The tenant; leave out for a cross-tenant schedule (MSP roles only).
    pub tenant_id: Option<ID>,
    /// The schedule's name.
    pub name: String,
    /// Which computers get a session.
    pub target: TargetInput,
    /// A five-field cron expression, read in `timeZone` (e.g. `0 22 * * MON-FRI`).
    pub cron: String,
    /// An IANA time zone (e.g. `Europe/Berlin`): required for a tenant's schedule; a
    /// cross-tenant one leaves it out and runs in each tenant's own.
    pub time_zone: Option<String>,
    /// Detection and the before-mail happen this many minutes before each occurrence (default 0).
    #[graphql(default_with = "Some(0)")]
    pub detection_lead_minutes: Option<i32>,
    /// Execution may start only within this many minutes after an occurrence (default 120).
    #[graphql(default_with = "Some(120)")]
    pub window_minutes: Option<i32>,
    /// The sessions' options.
    pub options: Option<MaintenanceOptionsInput>,
    /// False keeps the schedule without running it (default true).
    #[graphql(default_with = "Some(true)")]
    pub enabled: Option<bool>,
    /// True: sessions detect and report only (default false).
    #[graphql(default_with = "Some(false)")]
    pub detection_only: Option<bool>,
    /// Checks run before this schedule's sessions change anything (after the server's and
    /// the tenant's).
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

/// Changes to a schedule; only the fields given change.
#[derive(InputObject)]
pub struct UpdateScheduleInput {
    /// Its name.
    pub name: Option<String>,
    /// Which computers get a session.
    pub target: Option<TargetInput>,
    /// The five-field cron expression.
    pub cron: Option<String>,
    /// An IANA time zone.
    pub time_zone: Option<String>,
    /// Minutes between detection and each occurrence.
    pub detection_lead_minutes: Option<i32>,
    /// Minutes after an occurrence in which execution may start.
    pub window_minutes: Option<i32>,
    /// The sessions' options (replaces them).
    pub options: Option<MaintenanceOptionsInput>,
    /// False keeps it without running it.
    pub enabled: Option<bool>,
    /// True: detect and report only.
    pub detection_only: Option<bool>,
    /// Checks run before this schedule's sessions change anything (after the server's and
    /// the tenant's).
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

pub fn minutes(field: &str, v: i32, lo: i32, hi: i32) -> ApiResult<u32> {
    if v < lo || v > hi {
        return Err(ApiError::bad(
            field,
            format!("must be between {lo} and {hi} minutes"),
        ));
    }
    Ok(v as u32)
}

pub fn cron(field: &str, s: &str) -> ApiResult<Stored<CronExpr>> {
    CronExpr::parse(s)
        .map(Stored::new)
        .map_err(|e| ApiError::bad(field, e.0))
}

/// Which sessions `maintenanceSessions` lists; every given field must match.
#[derive(InputObject, Default)]
pub struct MaintenanceSessionFilter {
    /// Only this tenant's sessions.
    pub tenant_id: Option<ID>,
    /// Only this computer's sessions.
    pub computer_id: Option<ID>,
    /// Only sessions this schedule started.
    pub schedule_id: Option<ID>,
    /// Only sessions in one of these statuses.
    #[graphql(validator(max_items = 16))]
    pub status: Option<Vec<SessionStatus>>,
    /// Sessions started by any of these triggers (a single value is read as a list of one).
    #[graphql(validator(max_items = 16))]
    pub trigger: Option<Vec<SessionTrigger>>,
    /// Only sessions created at or after this instant.
    pub created_after: Option<DateTime>,
    /// Only sessions created before this instant.
    pub created_before: Option<DateTime>,
}

/// Which computers to list (all given conditions hold).
#[derive(InputObject, Default)]
pub struct ComputerFilter {
    /// Only this tenant's computers (for MSP roles; a tenant role sees its own anyway).
    pub tenant_id: Option<ID>,
    /// True: computers whose agent polls now; false: the others.
    pub online: Option<bool>,
    /// Computers whose compliance is one of these; a computer without a finished session
    /// counts as `UNKNOWN`.
    #[graphql(validator(max_items = 3))]
    pub compliance: Option<Vec<super::enums::Compliance>>,
    /// Computers with this tag (case-insensitively).
    pub tag: Option<String>,
    /// A text the OS contains, case-insensitively: the OS the agent reported at enrollment
    /// (`os`) or its inventory's `osName`. A family (`windows`, `linux`) matches every
    /// version of it; `Ubuntu 24.04` only those.
    pub os: Option<String>,
    /// A text the name, hostname or a tag contains, case-insensitively.
    pub search: Option<String>,
    /// Computers whose inventory lists a program whose name contains this,
    /// case-insensitively (e.g. `firefox`).
    pub installed_software: Option<String>,
}

/// Which unfinished sessions `cancelMaintenanceSessions` cancels; every given field must match.
#[derive(InputObject, Default)]
pub struct CancelSessionsFilter {
    /// Only sessions of this tenant.
    pub tenant_id: Option<ID>,
    /// Only sessions started by this schedule.
    pub schedule_id: Option<ID>,
    /// Only sessions in one of these statuses (unfinished ones).
    #[graphql(validator(max_items = 16))]
    pub status: Option<Vec<SessionStatus>>,
}

/// A new API key.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// Who uses the key (e.g. `PSA`), 1–100 characters.
    pub name: String,
    /// The role the key acts with: at most the creator's own.
    pub role: UserRole,
    /// Limit the key to this tenant (required for tenant roles).
    pub tenant_id: Option<ID>,
    /// When the key stops working; leave out for no expiry.
    pub expires_at: Option<DateTime>,
}

/// A new webhook: signed JSON POSTs to an integration when events happen.
#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// Only this tenant's events; leave out for every tenant (MSP roles only).
    pub tenant_id: Option<ID>,
    /// Where events are POSTed (`https://…`).
    pub url: String,
    /// The events to send.
    #[graphql(validator(max_items = 32))]
    pub events: Vec<WebhookEvent>,
    /// What the webhook is for.
    pub description: Option<String>,
}

/// Changes to a webhook; omitted fields stay as they are. The secret stays too (create a new
/// webhook to rotate it).
#[derive(InputObject)]
pub struct UpdateWebhookInput {
    /// The new target: https, and globally routable unless the server allows private targets.
    pub url: Option<String>,
    /// The events to deliver (at least one).
    #[graphql(validator(max_items = 32))]
    pub events: Option<Vec<WebhookEvent>>,
    /// A note for people; an empty text removes it.
    pub description: Option<String>,
}

pub fn opt_id(field: &str, v: &Option<ID>) -> ApiResult<Option<Id>> {
    v.as_ref().map(|i| parse_id(field, i)).transpose()
}

/// Which audit records to list (all given conditions hold).
#[derive(InputObject, Default)]
pub struct AuditEventFilter {
    /// Only events of this tenant.
    pub tenant_id: Option<ID>,
    /// A user's or API key's id.
    pub actor_id: Option<ID>,
    /// The action, e.g. `createDeployment` or `loginFailed`.
    pub action: Option<String>,
    /// At or after this instant.
    pub since: Option<DateTime>,
    /// Before this instant.
    pub until: Option<DateTime>,
}
