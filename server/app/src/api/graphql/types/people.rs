//! GraphQL views: tenants, users, persons and computers.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{Compliance, OnboardingStatus, UserRole, Weekday};
use crate::api::graphql::scalars::DateTime;
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use upkeep_core::domain::*;
use upkeep_core::resolve;
use upkeep_core::session::*;

/// A customer of the MSP: its computers, people, branding and settings.
#[Object(name = "Tenant")]
impl View<Tenant> {
    /// The tenant's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its name (unique).
    async fn name(&self) -> &str {
        &self.name
    }
    /// The name its mails and pages show.
    async fn company_name(&self) -> Option<&str> {
        self.company_name.as_deref()
    }
    /// Its IANA time zone.
    async fn time_zone(&self) -> &str {
        self.time_zone.text()
    }
    /// The sender of its mails.
    async fn mail_from(&self) -> Option<&str> {
        self.mail_from.as_deref()
    }
    /// The logo its mails and pages show.
    async fn logo_url(&self) -> Option<&str> {
        self.logo_url.as_deref()
    }
    /// The accent colour of its mails and pages.
    async fn primary_color(&self) -> Option<&str> {
        self.primary_color.as_deref()
    }
    /// True: a newly enrolled computer gets an onboarding session at once.
    async fn auto_onboarding(&self) -> bool {
        self.auto_onboarding
    }
    /// True: no session starts on its computers.
    async fn excluded_from_maintenance(&self) -> bool {
        self.excluded_from_maintenance
    }
    /// Its working hours: reboots wait until they are over.
    async fn business_hours(&self) -> Option<BusinessHoursView> {
        self.business_hours.as_ref().map(BusinessHoursView::from)
    }
    /// Addresses that get a blind copy of every maintenance mail.
    async fn mail_bcc(&self) -> Vec<&str> {
        self.mail_bcc.iter().map(|a| a.text()).collect()
    }
    /// Checks run on the computer before a session of this tenant changes anything.
    async fn preflight_scripts(&self) -> Vec<ScriptView> {
        self.preflight_scripts
            .iter()
            .map(ScriptView::from)
            .collect()
    }
    /// When it was made.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
}

/// When a tenant's people work: reboots are kept out of these hours unless a session allows them.
#[derive(SimpleObject)]
#[graphql(name = "BusinessHours")]
pub struct BusinessHoursView {
    /// The working days.
    pub days: Vec<Weekday>,
    /// Start of the working day, `HH:MM` in the tenant's time zone.
    pub start: String,
    /// End of the working day, `HH:MM` in the tenant's time zone.
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

/// Someone who signs in to the API and console.
#[Object(name = "User")]
impl View<User> {
    /// The user's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Their sign-in address.
    async fn email(&self) -> &str {
        self.email.text()
    }
    /// Their role.
    async fn role(&self) -> UserRole {
        self.role.into()
    }
    /// Their tenant; `null` for MSP roles.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<Option<View<Tenant>>> {
        opt_tenant(ctx, self.tenant_id).await.map(|o| o.map(View))
    }
    /// When they were added.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
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

/// Someone who uses computers: they get the maintenance mails of the computers they are primary
/// person of.
#[Object(name = "Person")]
impl View<Person> {
    /// The person's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Their name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// Where their mails go.
    async fn email(&self) -> &str {
        self.email.text()
    }
    /// Sign-in names by which a computer's logged-on user is matched to them.
    async fn usernames(&self) -> &[String] {
        &self.usernames
    }
    /// Their tenant.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).await.map(View)
    }
}

/// A managed computer with an enrolled agent.
#[Object(name = "Computer")]
impl View<Computer> {
    /// The computer's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Its display name (the hostname unless renamed).
    async fn name(&self) -> &str {
        &self.name
    }
    /// The hostname the agent reported.
    async fn hostname(&self) -> &str {
        &self.hostname
    }
    /// The machine's stable id as the agent read it (e.g. `/etc/machine-id`, the Windows
    /// MachineGuid): a re-enrolled machine is recognised by it.
    async fn machine_id(&self) -> &str {
        &self.machine_id
    }
    /// The tenant the computer belongs to.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).await.map(View)
    }
    /// Its tags: deployments and schedules may target them.
    async fn tags(&self) -> Vec<&str> {
        self.tags.iter().map(|t| t.text()).collect()
    }
    /// The person who uses it: they get its maintenance mails.
    async fn primary_person(&self, ctx: &Context<'_>) -> Result<Option<View<Person>>> {
        match self.primary_person_id {
            Some(p) => Ok(Ctx::new(ctx)?.find::<Person>(p).await?.map(View)),
            None => Ok(None),
        }
    }
    /// True while the agent polls; false a little over a minute after it stopped.
    async fn online(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(Ctx::new(ctx)?.app.agents.is_online(self.id))
    }
    /// When the agent last polled (kept in memory, written back about 30 s after it changes).
    async fn last_seen_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime>> {
        let app = &Ctx::new(ctx)?.app;
        if let Some(t) = app.agents.last_seen(self.id) {
            return Ok(Some(t.into()));
        }
        Ok(app
            .store
            .last_seen(&self.id)
            .await?
            .or(self.last_seen_at)
            .map(DateTime))
    }
    /// The operating system the agent reported.
    async fn os(&self) -> &str {
        &self.os
    }
    /// The version of its agent.
    async fn agent_version(&self) -> &str {
        &self.agent_version
    }
    /// The user signed in at the computer when the agent last reported, if any.
    async fn logged_on_user(&self) -> Option<&str> {
        self.logged_on_user.as_deref()
    }
    /// When its agent enrolled.
    async fn enrolled_at(&self) -> DateTime {
        self.enrolled_at.into()
    }
    /// From the last finished session; null before any.
    async fn compliance(&self) -> Option<Compliance> {
        self.compliance.map(Into::into)
    }
    /// A reboot waits on the computer: one a session needed and business hours held (until
    /// it ran), or one the agent reports (an update that needs it; kept in memory, so false
    /// after a server restart until the agent's next poll).
    async fn reboot_pending(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(self.held_reboot.is_some() || Ctx::new(ctx)?.app.agents.reboot_pending(self.id))
    }
    /// What the agent last reported about the computer; null before its first report.
    async fn inventory(&self, ctx: &Context<'_>) -> Result<Option<InventoryView>> {
        let app = &Ctx::new(ctx)?.app;
        Ok(app
            .store
            .get::<upkeep_core::inventory::InventoryRecord>(&self.id)
            .await?
            .map(InventoryView::from))
    }
    /// Installed programs as the agent last listed them, by name; `search` keeps those whose
    /// name contains it (case-insensitively).
    #[graphql(complexity = "crate::api::graphql::page_cost(first.or(last), child_complexity)")]
    #[allow(clippy::too_many_arguments)] // each is a GraphQL argument of its own
    async fn installed_software(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only programs whose name contains this (ignoring case).")] search: Option<
            String,
        >,
        #[graphql(
            desc = "The first this many programs after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list (`pageInfo.endCursor`): the page starts after it."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many programs before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list (`pageInfo.startCursor`): the page ends before it."
        )]
        before: Option<String>,
    ) -> Result<crate::api::graphql::connection::Page<InstalledSoftwareView>> {
        let app = &Ctx::new(ctx)?.app;
        let record = app
            .store
            .get::<upkeep_core::inventory::InventoryRecord>(&self.id)
            .await?;
        let args = crate::api::graphql::connection::PageArgs {
            first,
            after,
            last,
            before,
        };
        Ok(installed_page(record.as_ref(), search.as_deref(), &args)?)
    }
    /// True when the computer is kept out of maintenance: no session starts on it.
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
        let deployments = c.app.catalogue_deployments_for(self.tenant_id).await?;
        let res = resolve::resolve(self, &deployments);
        let mut out = Vec::new();
        for r in res {
            let (software, task) = match r.subject {
                Subject::Software(s) => (c.find_catalogue::<Software>(s).await?, None),
                Subject::Task(t) => (None, c.find_catalogue::<MaintenanceTask>(t).await?),
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
        if let Some(active) = app.unfinished_session_of(self.id).await
            && app.store.get::<Session>(&active).await?.is_some_and(|s| {
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
    #[graphql(complexity = "crate::api::graphql::page_cost(first, child_complexity)")]
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many of its latest sessions to return (default 50, at most 500).")]
        first: Option<i32>,
    ) -> Result<Vec<View<Session>>> {
        let c = Ctx::new(ctx)?;
        let n = crate::api::graphql::connection::page_size(first)?;
        Ok(c.app
            .sessions_of_computer(self.id, n)
            .await?
            .into_iter()
            .map(View)
            .collect())
    }
}
