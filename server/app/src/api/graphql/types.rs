//! GraphQL views of the domain records. Relations are resolved through [`Ctx`], which applies
//! tenant isolation, so a field can never reach into a tenant the caller may not see.

use super::ctx::Ctx;
use super::enums::{
    ActionKind, ActionStatus, ActorKind, Compliance, DeliveryStatus, DeploymentOrder,
    DesiredSoftwareState, Enforcement, OfflineBehavior, OnboardingStatus, RebootPreference,
    ScriptLanguage, SessionStatus, SessionTrigger, TargetKind, TaskMode, UserRole, WebhookEvent,
    Weekday,
};
use async_graphql::{ComplexObject, Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use upkeep_core::domain::*;
use upkeep_core::resolve;
use upkeep_core::session::*;

/// A GraphQL view of a core record: the API decides the fields, the record stays plain data
/// (the core carries no GraphQL derives). Fields read the record through `Deref`.
#[derive(Debug, Clone)]
pub struct View<T>(pub T);

impl<T> std::ops::Deref for View<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for View<T> {
    fn from(t: T) -> View<T> {
        View(t)
    }
}

// `MaintenanceOptions` as the API shows them (no description: the SDL has none).
#[derive(SimpleObject)]
#[graphql(name = "MaintenanceOptions")]
pub struct MaintenanceOptionsView {
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
    pub allow_reboot_during_business_hours: bool,
}

impl From<&MaintenanceOptions> for MaintenanceOptionsView {
    fn from(o: &MaintenanceOptions) -> Self {
        MaintenanceOptionsView {
            notify_before: o.notify_before,
            notify_after: o.notify_after,
            notify_when_compliant: o.notify_when_compliant,
            show_actions_in_email: o.show_actions_in_email,
            allow_postpone: o.allow_postpone,
            max_postpones: o.max_postpones,
            postpone_hours: o.postpone_hours,
            allow_update_now: o.allow_update_now,
            reboot_preference: o.reboot_preference.into(),
            offline_behavior: o.offline_behavior.into(),
            offline_grace_minutes: o.offline_grace_minutes,
            allow_reboot_during_business_hours: o.allow_reboot_during_business_hours,
        }
    }
}

fn id(i: Id) -> ID {
    ID(i.to_string())
}

#[Object(name = "Tenant")]
impl View<Tenant> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn company_name(&self) -> Option<&str> {
        self.company_name.as_deref()
    }
    async fn time_zone(&self) -> &str {
        self.time_zone.text()
    }
    async fn mail_from(&self) -> Option<&str> {
        self.mail_from.as_deref()
    }
    async fn logo_url(&self) -> Option<&str> {
        self.logo_url.as_deref()
    }
    async fn primary_color(&self) -> Option<&str> {
        self.primary_color.as_deref()
    }
    async fn auto_onboarding(&self) -> bool {
        self.auto_onboarding
    }
    async fn excluded_from_maintenance(&self) -> bool {
        self.excluded_from_maintenance
    }
    async fn business_hours(&self) -> Option<BusinessHoursView> {
        self.business_hours.as_ref().map(BusinessHoursView::from)
    }
    async fn mail_bcc(&self) -> Vec<&str> {
        self.mail_bcc.iter().map(|a| a.text()).collect()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[derive(SimpleObject)]
#[graphql(name = "BusinessHours")]
pub struct BusinessHoursView {
    pub days: Vec<Weekday>,
    pub start: String,
    pub end: String,
}

impl From<&BusinessHours> for BusinessHoursView {
    fn from(b: &BusinessHours) -> Self {
        let f = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        BusinessHoursView {
            days: b.days.iter().map(|&d| d.into()).collect(),
            start: f(b.start_minute),
            end: f(b.end_minute),
        }
    }
}

#[Object(name = "User")]
impl View<User> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn email(&self) -> &str {
        self.email.text()
    }
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    /// A disabled user cannot log in; their tokens and API keys do not work.
    async fn disabled(&self) -> bool {
        self.disabled
    }
    /// TOTP is on: logging in needs a code.
    async fn mfa_enabled(&self) -> bool {
        self.totp_on()
    }
}

fn opt_tenant(ctx: &Context<'_>, t: Option<Id>) -> Result<Option<Tenant>> {
    match t {
        Some(t) => Ok(Ctx::new(ctx)?.find::<Tenant>(t)?),
        None => Ok(None),
    }
}

fn tenant(ctx: &Context<'_>, t: Id) -> Result<Tenant> {
    Ok(Ctx::new(ctx)?.load::<Tenant>(t)?)
}

#[Object(name = "Person")]
impl View<Person> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn email(&self) -> &str {
        self.email.text()
    }
    async fn usernames(&self) -> &[String] {
        &self.usernames
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).map(View)
    }
}

#[Object(name = "Computer")]
impl View<Computer> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn hostname(&self) -> &str {
        &self.hostname
    }
    async fn machine_id(&self) -> &str {
        &self.machine_id
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).map(View)
    }
    async fn tags(&self) -> Vec<&str> {
        self.tags.iter().map(|t| t.text()).collect()
    }
    async fn primary_person(&self, ctx: &Context<'_>) -> Result<Option<View<Person>>> {
        match self.primary_person_id {
            Some(p) => Ok(Ctx::new(ctx)?.find::<Person>(p)?.map(View)),
            None => Ok(None),
        }
    }
    /// True while the agent polls; false a little over a minute after it stopped.
    async fn online(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(Ctx::new(ctx)?.app.agents.is_online(self.id))
    }
    /// When the agent last polled (kept in memory, written back every 30 s).
    async fn last_seen_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        let app = &Ctx::new(ctx)?.app;
        if let Some(t) = app.agents.last_seen(self.id) {
            return Ok(Some(t));
        }
        Ok(app.store.last_seen(&self.id)?.or(self.last_seen_at))
    }
    async fn os(&self) -> &str {
        &self.os
    }
    async fn agent_version(&self) -> &str {
        &self.agent_version
    }
    async fn logged_on_user(&self) -> Option<&str> {
        self.logged_on_user.as_deref()
    }
    async fn enrolled_at(&self) -> DateTime<Utc> {
        self.enrolled_at
    }
    /// From the last finished session; null before any.
    async fn compliance(&self) -> Option<Compliance> {
        self.compliance.map(Into::into)
    }
    /// A session needed a reboot that business hours held: true until that reboot ran.
    async fn reboot_pending(&self) -> bool {
        self.held_reboot.is_some()
    }
    async fn excluded_from_maintenance(&self) -> bool {
        self.excluded_from_maintenance
    }
    /// True once the agent token was revoked (the agent must re-enroll).
    async fn agent_revoked(&self) -> bool {
        self.agent_token_hash.is_none()
    }
    /// Per software or task: which deployment wins on this computer, which it shadows, and why.
    async fn deployment_resolution(&self, ctx: &Context<'_>) -> Result<Vec<DeploymentResolution>> {
        let c = Ctx::new(ctx)?;
        let deployments = c.app.catalogue_deployments_for(self.tenant_id)?;
        let res = resolve::resolve(self, &deployments);
        let mut out = Vec::new();
        for r in res {
            let (software, task) = match r.subject {
                Subject::Software(s) => (c.find_catalogue::<Software>(s)?, None),
                Subject::Task(t) => (None, c.find_catalogue::<MaintenanceTask>(t)?),
            };
            // Deployments reached from here obey the same rule as a direct load: a tenant
            // role does not read MSP-level deployments (their parameters hold licence keys).
            out.push(DeploymentResolution {
                software: software.map(View),
                maintenance_task: task.map(View),
                winner: Some(r.winner.clone()).filter(|d| c.visible(d)).map(View),
                shadowed: r
                    .shadowed
                    .iter()
                    .filter(|d| c.visible(**d))
                    .map(|d| View((*d).clone()))
                    .collect(),
                rule: r.rule.clone(),
            });
        }
        Ok(out)
    }
    /// Its onboarding deployments: `IN_PROGRESS` while an onboarding session is unfinished,
    /// else how the last finished one ended (`COMPLETED`, `FAILED`), `PENDING` before any.
    // The index of unfinished sessions is updated just after the finished session is stored:
    // the session's own status decides, so a reader never sees a finished onboarding as
    // IN_PROGRESS.
    async fn onboarding_status(&self, ctx: &Context<'_>) -> Result<OnboardingStatus> {
        let app = &Ctx::new(ctx)?.app;
        if let Some(active) = app.unfinished_session_of(self.id)
            && app.store.get::<Session>(&active)?.is_some_and(|s| {
                s.trigger == upkeep_core::session::SessionTrigger::Onboarding
                    && !s.status.is_terminal()
            })
        {
            return Ok(OnboardingStatus::InProgress);
        }
        Ok(self
            .onboarding
            .unwrap_or(upkeep_core::domain::OnboardingStatus::Pending)
            .into())
    }
    /// This computer's sessions, newest first.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn sessions(&self, ctx: &Context<'_>, first: Option<i32>) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        let n = super::connection::page_size(first)?;
        Ok(c.app
            .sessions_of_computer(self.id, n)?
            .into_iter()
            .map(View)
            .collect())
    }
}

#[derive(SimpleObject)]
pub struct DeploymentResolution {
    pub software: Option<View<Software>>,
    pub maintenance_task: Option<View<MaintenanceTask>>,
    /// `null` when the winner is a deployment the caller may not read (an MSP-level one, for
    /// tenant roles).
    pub winner: Option<View<Deployment>>,
    /// Only those the caller may read.
    pub shadowed: Vec<View<Deployment>>,
    pub rule: String,
}

#[derive(SimpleObject)]
#[graphql(name = "Script")]
pub struct ScriptView {
    pub language: ScriptLanguage,
    pub body: String,
}

impl From<&Script> for ScriptView {
    fn from(s: &Script) -> Self {
        ScriptView {
            language: s.language.into(),
            body: s.body.clone(),
        }
    }
}

#[Object(name = "SoftwareVersion")]
impl View<SoftwareVersion> {
    async fn version(&self) -> &str {
        &self.version
    }
    async fn install_script(&self) -> ScriptView {
        (&self.install_script).into()
    }
    async fn upgrade_script(&self) -> Option<ScriptView> {
        self.upgrade_script.as_ref().map(Into::into)
    }
}

#[Object(name = "Software")]
impl View<Software> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn detection_script(&self) -> ScriptView {
        (&self.detection_script).into()
    }
    async fn versions(&self) -> Vec<View<SoftwareVersion>> {
        self.versions.iter().cloned().map(View).collect()
    }
    async fn latest_version(&self) -> Option<&str> {
        self.latest().map(|v| v.version.as_str())
    }
    async fn uninstall_script(&self) -> Option<ScriptView> {
        self.uninstall_script.as_ref().map(Into::into)
    }
    async fn configuration_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.configuration_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)?
                .map(View)),
            None => Ok(None),
        }
    }
}

#[Object(name = "MaintenanceTask")]
impl View<MaintenanceTask> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn test_script(&self) -> ScriptView {
        (&self.test_script).into()
    }
    async fn set_script(&self) -> Option<ScriptView> {
        self.set_script.as_ref().map(Into::into)
    }
}

#[Object(name = "Target")]
impl View<Target> {
    async fn kind(&self) -> TargetKind {
        self.kind.into()
    }
    async fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

#[Object(name = "Deployment")]
impl View<Deployment> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.software_id {
            Some(s) => Ok(Ctx::new(ctx)?.find_catalogue::<Software>(s)?.map(View)),
            None => Ok(None),
        }
    }
    async fn desired_state(&self) -> Option<DesiredSoftwareState> {
        self.desired_state.map(Into::into)
    }
    async fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.maintenance_task_id {
            Some(t) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(t)?
                .map(View)),
            None => Ok(None),
        }
    }
    async fn task_mode(&self) -> Option<TaskMode> {
        self.maintenance_task_id.map(|_| self.task_mode.into())
    }
    /// The script parameters. Their values often hold licence keys: only those who may manage
    /// deployments read them; for everyone else each value reads `••••••`.
    async fn parameters(
        &self,
        ctx: &Context<'_>,
    ) -> Result<async_graphql::Json<std::collections::BTreeMap<String, String>>> {
        let c = Ctx::new(ctx)?;
        let may = c
            .actor
            .require_role(crate::permissions::Action::ManageCatalogue)
            .is_ok();
        Ok(async_graphql::Json(if may {
            self.parameters.clone()
        } else {
            self.parameters
                .keys()
                .map(|k| (k.clone(), "••••••".to_string()))
                .collect()
        }))
    }
    async fn enforcement(&self) -> Enforcement {
        self.enforcement.into()
    }
    async fn order(&self) -> DeploymentOrder {
        self.order.into()
    }
    async fn position(&self) -> i32 {
        self.position
    }
    async fn enabled(&self) -> bool {
        self.enabled
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "Schedule")]
impl View<Schedule> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn target(&self) -> View<Target> {
        View(self.target.clone())
    }
    async fn cron(&self) -> &str {
        self.cron.text()
    }
    /// The schedule's zone; null for a cross-tenant schedule that uses each tenant's own.
    async fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_ref().map(|z| z.text())
    }
    async fn detection_lead_minutes(&self) -> u32 {
        self.detection_lead_minutes
    }
    async fn window_minutes(&self) -> u32 {
        self.window_minutes
    }
    async fn options(&self) -> MaintenanceOptionsView {
        (&self.options).into()
    }
    async fn enabled(&self) -> bool {
        self.enabled
    }
    async fn detection_only(&self) -> bool {
        self.detection_only
    }
    async fn last_run_at(&self) -> Option<DateTime<Utc>> {
        self.last_run_at
    }
    /// The next occurrences strictly after `after` (default: now), enabled or not. For a
    /// cross-tenant schedule without its own zone, `tenantId` picks whose zone (default UTC).
    #[graphql(complexity = "1 + count.clamp(0, 1000) as usize")]
    async fn next_runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5)] count: i32,
        after: Option<DateTime<Utc>>,
        tenant_id: Option<ID>,
    ) -> Result<Vec<DateTime<Utc>>> {
        let c = Ctx::new(ctx)?;
        if !(0..=1000).contains(&count) {
            return Err(crate::error::ApiError::bad("count", "must be between 0 and 1000").into());
        }
        let tenant = match tenant_id {
            Some(t) => Some(c.load::<Tenant>(super::parse_id("tenantId", &t)?)?),
            None => None,
        };
        let tz = crate::services::scheduler::zone_for(self, tenant.as_ref())?;
        let cron = self
            .cron
            .get()
            .map_err(|e| crate::error::ApiError::internal(e))?;
        Ok(cron.upcoming(
            tz,
            after.unwrap_or_else(|| c.app.clock.now()),
            count as usize,
        ))
    }
}

#[derive(SimpleObject)]
#[graphql(complex, name = "EnrollmentKey")]
pub struct EnrollmentKeyView {
    #[graphql(skip)]
    pub key: EnrollmentKey,
    /// The secret: only in the answer of `createEnrollmentKey`, null afterwards.
    #[graphql(name = "key")]
    pub secret: Option<String>,
}

#[ComplexObject]
impl EnrollmentKeyView {
    async fn id(&self) -> ID {
        id(self.key.id)
    }
    async fn label(&self) -> Option<&str> {
        self.key.label.as_deref()
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.key.tenant_id).map(View)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.key.created_at
    }
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.key.expires_at
    }
    async fn max_uses(&self) -> Option<u32> {
        self.key.max_uses
    }
    async fn uses(&self) -> u32 {
        self.key.uses
    }
    async fn revoked(&self) -> bool {
        self.key.revoked
    }
    async fn tags(&self) -> Vec<&str> {
        self.key.tags.iter().map(|t| t.text()).collect()
    }
    async fn primary_person(&self, ctx: &Context<'_>) -> Result<Option<View<Person>>> {
        match self.key.primary_person_id {
            Some(p) => Ok(Ctx::new(ctx)?.find::<Person>(p)?.map(View)),
            None => Ok(None),
        }
    }
}

#[Object(name = "MaintenanceSession")]
impl View<Session> {
    #[graphql(name = "id")]
    async fn gql_id(&self) -> ID {
        id(self.id)
    }
    async fn status(&self) -> SessionStatus {
        self.status.into()
    }
    async fn status_reason(&self) -> Option<&str> {
        self.status_reason.as_deref()
    }
    async fn compliance(&self) -> Option<Compliance> {
        self.compliance.map(Into::into)
    }
    async fn trigger(&self) -> SessionTrigger {
        self.trigger.into()
    }
    async fn detection_only(&self) -> bool {
        self.detection_only
    }
    async fn computer(&self, ctx: &Context<'_>) -> Result<Option<View<Computer>>> {
        Ok(Ctx::new(ctx)?.find::<Computer>(self.computer_id)?.map(View))
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).map(View)
    }
    async fn schedule(&self, ctx: &Context<'_>) -> Result<Option<View<Schedule>>> {
        match self.schedule_id {
            Some(s) => Ok(Ctx::new(ctx)?.find::<Schedule>(s)?.map(View)),
            None => Ok(None),
        }
    }
    async fn options(&self) -> MaintenanceOptionsView {
        (&self.options).into()
    }
    async fn created_by(&self) -> &str {
        &self.created_by
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }
    async fn execute_at(&self) -> Option<DateTime<Utc>> {
        self.execute_at
    }
    async fn window_end(&self) -> Option<DateTime<Utc>> {
        self.window_end
    }
    async fn postpone_count(&self) -> u32 {
        self.postpone_count
    }
    async fn reboot_required(&self) -> bool {
        self.reboot_required
    }
    async fn rebooted_at(&self) -> Option<DateTime<Utc>> {
        self.rebooted_at
    }
    async fn actions(&self) -> Vec<ActionView> {
        let items = std::sync::Arc::new(self.items.clone());
        self.actions
            .iter()
            .enumerate()
            .map(|(i, a)| ActionView {
                session: items.clone(),
                action: a.clone(),
                output_of: u32::try_from(i).ok().map(|i| (self.id, i)),
            })
            .collect()
    }
    /// The session's log, oldest first; `afterSequence` pages on.
    #[graphql(complexity = "super::list_cost(first, 1000, 5000, child_complexity)")]
    async fn logs(
        &self,
        ctx: &Context<'_>,
        after_sequence: Option<i64>,
        first: Option<i32>,
    ) -> Result<Vec<LogLine>> {
        let c = Ctx::new(ctx)?;
        let n = first.map(|f| f.clamp(0, 5000) as usize).unwrap_or(1000);
        let after = after_sequence.unwrap_or(0).max(0) as u64;
        Ok(c.app
            .events_after(self.id, after)
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.log_line.clone().map(|l| LogLine {
                    sequence: e.sequence as i64,
                    at: e.at,
                    message: l,
                })
            })
            .take(n)
            .collect())
    }
    /// The last event sequence written for this session (subscribe with `afterSequence` = this).
    async fn last_sequence(&self) -> i64 {
        self.last_sequence as i64
    }
}

#[derive(SimpleObject)]
pub struct LogLine {
    pub sequence: i64,
    pub at: DateTime<Utc>,
    pub message: String,
}

pub struct ActionView {
    pub session: std::sync::Arc<Vec<PlanItem>>,
    pub action: Action,
    /// (session, action index) of a stored session's action; `None` for previews.
    pub output_of: Option<(Id, u32)>,
}

/// What an action's last install, upgrade, uninstall or set script said, secrets masked.
#[derive(SimpleObject)]
#[graphql(name = "ActionOutput")]
pub struct ActionOutputView {
    /// At most 64 KiB of stdout (then `truncated`, and a closing marker line).
    pub stdout: String,
    /// At most 64 KiB of stderr (then `truncated`, and a closing marker line).
    pub stderr: String,
    /// `null` when the script could not start, timed out or was killed.
    pub exit_code: Option<i32>,
    pub truncated: bool,
}

#[Object(name = "MaintenanceAction")]
impl ActionView {
    async fn id(&self) -> ID {
        id(self.action.id)
    }
    async fn kind(&self) -> ActionKind {
        self.action.kind.into()
    }
    async fn status(&self) -> ActionStatus {
        self.action.status.into()
    }
    async fn compliance(&self) -> Compliance {
        self.action.compliance.into()
    }
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.session.get(self.action.item).map(|i| &i.what) {
            Some(ItemWhat::Software { software, .. }) => Ok(Ctx::new(ctx)?
                .find_catalogue::<Software>(software.id)?
                .map(View)),
            _ => Ok(None),
        }
    }
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.session.get(self.action.item).map(|i| &i.what) {
            Some(ItemWhat::Task { task, .. }) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(task.id)?
                .map(View)),
            _ => Ok(None),
        }
    }
    /// The software's or task's name as it was when the session started.
    async fn name(&self) -> String {
        match self.session.get(self.action.item).map(|i| &i.what) {
            Some(ItemWhat::Software { software, .. }) => software.name.clone(),
            Some(ItemWhat::Task { task, .. }) => task.name.clone(),
            None => String::new(),
        }
    }
    async fn deployment(&self, ctx: &Context<'_>) -> Result<Option<View<Deployment>>> {
        match self.session.get(self.action.item) {
            Some(i) => Ok(Ctx::new(ctx)?
                .find::<Deployment>(i.deployment_id)?
                .map(View)),
            None => Ok(None),
        }
    }
    async fn desired_version(&self) -> Option<&str> {
        self.action.desired_version.as_deref()
    }
    async fn detected_version(&self) -> Option<&str> {
        self.action.detected_version.as_deref()
    }
    /// What detection found before execution (kept when verification detects again).
    async fn detected_version_before(&self) -> Option<&str> {
        self.action.detected_version_before.as_deref()
    }
    /// What verification found after execution; null until it ran or when not installed.
    async fn detected_version_after(&self) -> Option<&str> {
        self.action.detected_version_after.as_deref()
    }
    async fn result_message(&self) -> Option<&str> {
        self.action.result_message.as_deref()
    }
    /// Why the action was planned, e.g. "1.9.2 installed, latest is 1.10.0".
    async fn reason(&self) -> &str {
        &self.action.reason
    }
    async fn reboot_required(&self) -> bool {
        self.action.reboot_required
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.action.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.action.finished_at
    }
    /// What the action's last install, upgrade, uninstall or set script said (not the
    /// detection that verified it); `null` until one ran. Parameter values of 6 or more
    /// characters are masked as `••••••`.
    async fn output(&self, ctx: &Context<'_>) -> Result<Option<ActionOutputView>> {
        let Some((session, index)) = self.output_of else {
            return Ok(None);
        };
        let c = Ctx::new(ctx)?;
        let key = upkeep_core::output::output_key(session, index);
        Ok(c.app
            .store
            .get_by_key::<upkeep_core::output::OutputRecord>(&key)?
            .filter(|r| r.action_id == self.action.id)
            .map(|r| ActionOutputView {
                stdout: r.output.stdout,
                stderr: r.output.stderr,
                exit_code: r.output.exit_code,
                truncated: r.output.truncated,
            }))
    }
}

#[Object(name = "ApiKey")]
impl View<ApiKey> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// Kept in memory and written at most once a minute.
    async fn last_used_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        Ok(Ctx::new(ctx)?
            .app
            .api_key_last_used(self)
            .or(self.last_used_at))
    }
    async fn revoked(&self) -> bool {
        self.revoked
    }
}

#[Object(name = "Webhook")]
impl View<upkeep_core::webhook::Webhook> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).map(|o| o.map(View))
    }
    /// The target URL: only for those who may manage this webhook (URLs often carry a PSA's
    /// token); `null` for everyone else.
    async fn url(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        let c = Ctx::new(ctx)?;
        let may = c
            .actor
            .require(crate::permissions::Action::ManageWebhooks, self.tenant_id)
            .is_ok();
        Ok(may.then_some(self.url.as_str()))
    }
    async fn events(&self) -> Vec<WebhookEvent> {
        self.events.iter().map(|&e| e.into()).collect()
    }
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "WebhookDelivery")]
impl View<upkeep_core::webhook::Delivery> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn event(&self) -> WebhookEvent {
        self.event.into()
    }
    async fn status(&self) -> DeliveryStatus {
        self.status.into()
    }
    async fn attempts(&self) -> u32 {
        self.attempts
    }
    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.last_attempt_at
    }
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.is_pending().then_some(self.next_attempt_at)
    }
    async fn response_status(&self) -> Option<i32> {
        self.response_status.map(i32::from)
    }
    async fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[Object(name = "AuditEvent")]
impl View<upkeep_core::audit::AuditEvent> {
    async fn id(&self) -> ID {
        id(self.id)
    }
    async fn at(&self) -> DateTime<Utc> {
        self.at
    }
    /// The mutation's name (`createDeployment`, `revokeApiKey`, …) or `enrollComputer`,
    /// `reenrollComputer`, `login`, `loginFailed`.
    async fn action(&self) -> &str {
        &self.action
    }
    async fn actor_kind(&self) -> ActorKind {
        self.actor_kind.into()
    }
    /// The user's, API key's or computer's id.
    async fn actor_id(&self) -> Option<ID> {
        self.actor_id.map(id)
    }
    async fn actor_name(&self) -> &str {
        &self.actor_name
    }
    /// The caller's IP address.
    async fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }
    async fn tenant_id(&self) -> Option<ID> {
        self.tenant_id.map(id)
    }
    async fn target_type(&self) -> &str {
        &self.target_type
    }
    async fn target_id(&self) -> Option<&str> {
        self.target_id.as_deref()
    }
    /// A short diff or description; secrets never appear in it.
    async fn summary(&self) -> &str {
        &self.summary
    }
}
