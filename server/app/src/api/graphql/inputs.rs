//! Input types and their validation into domain values. Every error names its field.

use super::enums::{
    DeploymentOrder, DesiredSoftwareState, Enforcement, OfflineBehavior, RebootPreference,
    ScriptLanguage, SessionStatus, SessionTrigger, TargetKind, TaskMode, UserRole, WebhookEvent,
    Weekday,
};
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use async_graphql::{ID, InputObject, Json};
use chrono::{DateTime, Utc};
use upkeep_core::calendar::cron::CronExpr;
use upkeep_core::domain::*;
use upkeep_core::types::{EmailAddress, Stored, Tag, TimeZone};

// List inputs carry `max_items` bounds, checked by the schema before any resolver runs
// (documented in docs/SECURITY.md); each list's own checks are linear in its length.

#[derive(InputObject)]
pub struct BusinessHoursInput {
    #[graphql(validator(max_items = 7))]
    pub days: Vec<Weekday>,
    pub start: String,
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

#[derive(InputObject)]
pub struct CreateTenantInput {
    pub name: String,
    pub company_name: Option<String>,
    pub time_zone: Option<String>,
    pub mail_from: Option<String>,
    pub logo_url: Option<String>,
    pub primary_color: Option<String>,
    pub auto_onboarding: Option<bool>,
    pub excluded_from_maintenance: Option<bool>,
    pub business_hours: Option<BusinessHoursInput>,
    #[graphql(validator(max_items = 20))]
    pub mail_bcc: Option<Vec<String>>,
    /// Checks run on the computer before a session of this tenant changes anything.
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

#[derive(InputObject)]
pub struct UpdateTenantInput {
    pub name: Option<String>,
    pub company_name: Option<String>,
    pub time_zone: Option<String>,
    pub mail_from: Option<String>,
    pub logo_url: Option<String>,
    pub primary_color: Option<String>,
    pub auto_onboarding: Option<bool>,
    pub excluded_from_maintenance: Option<bool>,
    pub business_hours: Option<BusinessHoursInput>,
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

#[derive(InputObject)]
pub struct CreateUserInput {
    pub email: String,
    pub password: String,
    pub role: UserRole,
    pub tenant_id: Option<ID>,
}

/// Only the fields given change. Moving a user to an MSP role takes them out of their tenant.
#[derive(InputObject)]
pub struct UpdateUserInput {
    pub role: Option<UserRole>,
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

#[derive(InputObject)]
pub struct CreatePersonInput {
    pub tenant_id: ID,
    pub name: String,
    pub email: String,
    #[graphql(validator(max_items = 50))]
    pub usernames: Option<Vec<String>>,
}

#[derive(InputObject)]
pub struct UpdatePersonInput {
    pub name: Option<String>,
    pub email: Option<String>,
    #[graphql(validator(max_items = 50))]
    pub usernames: Option<Vec<String>>,
}

#[derive(InputObject, Default)]
pub struct CreateEnrollmentKeyInput {
    pub label: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: Option<i32>,
    #[graphql(validator(max_items = 100))]
    pub tags: Option<Vec<String>>,
    pub primary_person_id: Option<ID>,
}

#[derive(InputObject)]
pub struct UpdateComputerInput {
    pub name: Option<String>,
    #[graphql(validator(max_items = 100))]
    pub tags: Option<Vec<String>>,
    /// Empty string clears the primary person.
    pub primary_person_id: Option<ID>,
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

#[derive(InputObject)]
pub struct ScriptInput {
    pub language: ScriptLanguage,
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

#[derive(InputObject)]
pub struct SoftwareVersionInput {
    pub version: String,
    pub install_script: ScriptInput,
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

#[derive(InputObject)]
pub struct CreateSoftwareInput {
    pub name: String,
    pub tenant_id: Option<ID>,
    pub detection_script: ScriptInput,
    /// Static versions, each with its install script. May be empty when `versionsScript` is
    /// given.
    #[graphql(validator(max_items = 200))]
    pub versions: Vec<SoftwareVersionInput>,
    pub uninstall_script: Option<ScriptInput>,
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

#[derive(InputObject)]
pub struct UpdateSoftwareInput {
    pub name: Option<String>,
    pub detection_script: Option<ScriptInput>,
    /// Replaces the whole version list.
    #[graphql(validator(max_items = 200))]
    pub versions: Option<Vec<SoftwareVersionInput>>,
    pub uninstall_script: Option<ScriptInput>,
    /// Empty string clears it.
    pub configuration_task_id: Option<ID>,
    /// `null` removes it.
    pub versions_script: async_graphql::MaybeUndefined<ScriptInput>,
    pub versions_cache_minutes: Option<i32>,
    /// `null` removes it.
    pub install_script: async_graphql::MaybeUndefined<ScriptInput>,
    /// `null` removes it.
    pub upgrade_script: async_graphql::MaybeUndefined<ScriptInput>,
    /// Replaces the prerequisites (an empty list removes them all).
    #[graphql(validator(max_items = 32))]
    pub depends_on_ids: Option<Vec<ID>>,
}

#[derive(InputObject)]
pub struct CreateMaintenanceTaskInput {
    pub name: String,
    pub tenant_id: Option<ID>,
    pub test_script: ScriptInput,
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
    pub name: Option<String>,
    pub test_script: Option<ScriptInput>,
    pub set_script: Option<ScriptInput>,
    pub get_script: Option<ScriptInput>,
    /// Replaces the definitions. Deployments are not rewritten: one that no longer satisfies
    /// them fails its item (naming the parameter) when a session starts.
    #[graphql(validator(max_items = 50))]
    pub parameters: Option<Vec<super::parameters::ParameterDefinitionInput>>,
}

#[derive(InputObject)]
pub struct TargetInput {
    pub kind: TargetKind,
    pub value: Option<String>,
}

#[derive(InputObject)]
pub struct CreateDeploymentInput {
    pub tenant_id: Option<ID>,
    pub target: TargetInput,
    pub software_id: Option<ID>,
    pub desired_state: Option<DesiredSoftwareState>,
    pub version: Option<String>,
    pub maintenance_task_id: Option<ID>,
    pub task_mode: Option<TaskMode>,
    pub parameters: Option<Json<serde_json::Value>>,
    pub enforcement: Option<Enforcement>,
    pub order: Option<DeploymentOrder>,
    pub position: Option<i32>,
    pub enabled: Option<bool>,
}

#[derive(InputObject)]
pub struct UpdateDeploymentInput {
    pub target: Option<TargetInput>,
    pub desired_state: Option<DesiredSoftwareState>,
    pub version: Option<String>,
    pub task_mode: Option<TaskMode>,
    pub parameters: Option<Json<serde_json::Value>>,
    pub enforcement: Option<Enforcement>,
    pub order: Option<DeploymentOrder>,
    pub position: Option<i32>,
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

#[derive(InputObject, Default, Clone)]
pub struct MaintenanceOptionsInput {
    pub notify_before: Option<bool>,
    pub notify_after: Option<bool>,
    pub notify_when_compliant: Option<bool>,
    pub show_actions_in_email: Option<bool>,
    pub allow_postpone: Option<bool>,
    pub max_postpones: Option<i32>,
    pub postpone_hours: Option<i32>,
    pub allow_update_now: Option<bool>,
    pub reboot_preference: Option<RebootPreference>,
    pub offline_behavior: Option<OfflineBehavior>,
    pub offline_grace_minutes: Option<i32>,
    pub allow_reboot_during_business_hours: Option<bool>,
    /// PROMPT: minutes between telling the computer's users and rebooting (default 15).
    pub reboot_prompt_minutes: Option<i32>,
    /// A failed preflight check runs again after this many minutes (default 15).
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

#[derive(InputObject)]
pub struct StartMaintenanceSessionInput {
    #[graphql(validator(max_items = 10000))]
    pub computer_ids: Vec<ID>,
    pub detection_only: Option<bool>,
    pub execute_at: Option<DateTime<Utc>>,
    #[graphql(validator(max_items = 1000))]
    pub deployment_ids: Option<Vec<ID>>,
    pub options: Option<MaintenanceOptionsInput>,
    /// A repeat with the same key from the same caller within 24 hours returns the first
    /// call's sessions and starts nothing.
    pub idempotency_key: Option<String>,
}

#[derive(InputObject)]
pub struct CreateScheduleInput {
    pub tenant_id: Option<ID>,
    pub name: String,
    pub target: TargetInput,
    pub cron: String,
    pub time_zone: Option<String>,
    pub detection_lead_minutes: Option<i32>,
    pub window_minutes: Option<i32>,
    pub options: Option<MaintenanceOptionsInput>,
    pub enabled: Option<bool>,
    pub detection_only: Option<bool>,
    /// Checks run before this schedule's sessions change anything (after the server's and
    /// the tenant's).
    #[graphql(validator(max_items = 20))]
    pub preflight_scripts: Option<Vec<ScriptInput>>,
}

#[derive(InputObject)]
pub struct UpdateScheduleInput {
    pub name: Option<String>,
    pub target: Option<TargetInput>,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub detection_lead_minutes: Option<i32>,
    pub window_minutes: Option<i32>,
    pub options: Option<MaintenanceOptionsInput>,
    pub enabled: Option<bool>,
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

#[derive(InputObject, Default)]
pub struct MaintenanceSessionFilter {
    pub tenant_id: Option<ID>,
    pub computer_id: Option<ID>,
    pub schedule_id: Option<ID>,
    #[graphql(validator(max_items = 16))]
    pub status: Option<Vec<SessionStatus>>,
    /// Sessions started by any of these triggers (a single value is read as a list of one).
    #[graphql(validator(max_items = 16))]
    pub trigger: Option<Vec<SessionTrigger>>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
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

#[derive(InputObject, Default)]
pub struct CancelSessionsFilter {
    pub tenant_id: Option<ID>,
    pub schedule_id: Option<ID>,
    #[graphql(validator(max_items = 16))]
    pub status: Option<Vec<SessionStatus>>,
}

#[derive(InputObject)]
pub struct CreateApiKeyInput {
    pub name: String,
    pub role: UserRole,
    pub tenant_id: Option<ID>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(InputObject)]
pub struct CreateWebhookInput {
    pub tenant_id: Option<ID>,
    pub url: String,
    #[graphql(validator(max_items = 32))]
    pub events: Vec<WebhookEvent>,
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
    pub tenant_id: Option<ID>,
    /// A user's or API key's id.
    pub actor_id: Option<ID>,
    /// The action, e.g. `createDeployment` or `loginFailed`.
    pub action: Option<String>,
    /// At or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Before this instant.
    pub until: Option<DateTime<Utc>>,
}
