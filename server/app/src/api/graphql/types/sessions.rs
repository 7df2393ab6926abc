//! GraphQL views: enrollment keys, sessions and their actions.

use super::*;
use crate::api::graphql::ctx::Ctx;
use crate::api::graphql::enums::{
    ActionKind, ActionStatus, Compliance, SessionStatus, SessionTrigger,
};
use crate::api::graphql::scalars::DateTime;
use async_graphql::{ComplexObject, Context, ID, Object, Result, SimpleObject};
use futures_util::StreamExt;
use upkeep_core::domain::*;
use upkeep_core::session::*;

/// A key agents enroll with into one tenant.
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
    /// The key's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.key.id)
    }
    /// What the key is for.
    async fn label(&self) -> Option<&str> {
        self.key.label.as_deref()
    }
    /// The tenant computers enroll into.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.key.tenant_id).await.map(View)
    }
    /// When it was made.
    async fn created_at(&self) -> DateTime {
        self.key.created_at.into()
    }
    /// When it stops enrolling; `null`: never.
    async fn expires_at(&self) -> Option<DateTime> {
        self.key.expires_at.map(DateTime)
    }
    /// How many computers may enroll with it; `null`: no limit.
    async fn max_uses(&self) -> Option<u32> {
        self.key.max_uses
    }
    /// How many computers enrolled with it.
    async fn uses(&self) -> u32 {
        self.key.uses
    }
    /// True once revoked: it no longer enrolls.
    async fn revoked(&self) -> bool {
        self.key.revoked
    }
    /// Tags every computer enrolled with it gets.
    async fn tags(&self) -> Vec<&str> {
        self.key.tags.iter().map(|t| t.text()).collect()
    }
    /// The primary person every computer enrolled with it gets.
    async fn primary_person(&self, ctx: &Context<'_>) -> Result<Option<View<Person>>> {
        match self.key.primary_person_id {
            Some(p) => Ok(Ctx::new(ctx)?.find::<Person>(p).await?.map(View)),
            None => Ok(None),
        }
    }
}

/// One run that brings one computer into compliance: detect, plan, notify, execute, detect again,
/// report.
#[Object(name = "MaintenanceSession")]
impl View<Session> {
    /// The session's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.id)
    }
    /// Where it stands.
    async fn status(&self) -> SessionStatus {
        self.status.into()
    }
    /// Why it is in its status, in a sentence (e.g. `2 of 7 actions failed`).
    async fn status_reason(&self) -> Option<&str> {
        self.status_reason.as_deref()
    }
    /// `COMPLIANT` when every action's item is.
    async fn compliance(&self) -> Option<Compliance> {
        self.compliance.map(Into::into)
    }
    /// What started it.
    async fn trigger(&self) -> SessionTrigger {
        self.trigger.into()
    }
    /// True: it detects and reports, and changes nothing.
    async fn detection_only(&self) -> bool {
        self.detection_only
    }
    /// The computer it maintains.
    async fn computer(&self, ctx: &Context<'_>) -> Result<Option<View<Computer>>> {
        Ok(Ctx::new(ctx)?
            .find::<Computer>(self.computer_id)
            .await?
            .map(View))
    }
    /// The computer's tenant.
    async fn tenant(&self, ctx: &Context<'_>) -> Result<View<Tenant>> {
        tenant(ctx, self.tenant_id).await.map(View)
    }
    /// The schedule that started it, if any.
    async fn schedule(&self, ctx: &Context<'_>) -> Result<Option<View<Schedule>>> {
        match self.schedule_id {
            Some(s) => Ok(Ctx::new(ctx)?.find::<Schedule>(s).await?.map(View)),
            None => Ok(None),
        }
    }
    /// Its options.
    async fn options(&self) -> MaintenanceOptionsView {
        (&self.options).into()
    }
    /// Who started it: an e-mail address, an API key or a schedule.
    async fn created_by(&self) -> &str {
        &self.created_by
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime {
        self.created_at.into()
    }
    /// When detection started.
    async fn started_at(&self) -> Option<DateTime> {
        self.started_at.map(DateTime)
    }
    /// When it ended.
    async fn finished_at(&self) -> Option<DateTime> {
        self.finished_at.map(DateTime)
    }
    /// When execution is due; `null`: right after detection.
    async fn execute_at(&self) -> Option<DateTime> {
        self.execute_at.map(DateTime)
    }
    /// Execution may not start after this (scheduled sessions).
    async fn window_end(&self) -> Option<DateTime> {
        self.window_end.map(DateTime)
    }
    /// How many times it was postponed.
    async fn postpone_count(&self) -> u32 {
        self.postpone_count
    }
    /// True when an action asked for a reboot.
    async fn reboot_required(&self) -> bool {
        self.reboot_required
    }
    /// When the computer came back after the session's reboot.
    async fn rebooted_at(&self) -> Option<DateTime> {
        self.rebooted_at.map(DateTime)
    }
    /// What it does, one action per software or task.
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
    #[graphql(complexity = "crate::api::graphql::list_cost(first, 1000, 5000, child_complexity)")]
    async fn logs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only lines of events after this sequence.")] after_sequence: Option<i64>,
        #[graphql(desc = "How many lines to return (default 1000, at most 5000).")] first: Option<
            i32,
        >,
    ) -> Result<Vec<LogLine>> {
        let c = Ctx::new(ctx)?;
        let n = first.map(|f| f.clamp(0, 5000) as usize).unwrap_or(1000);
        let after = after_sequence.unwrap_or(0).max(0) as u64;
        Ok(c.app
            .events_after(self.id, after)
            .filter_map(|e| std::future::ready(e.ok()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(|e| {
                e.log_line.clone().map(|l| LogLine {
                    sequence: e.sequence as i64,
                    at: e.at.into(),
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
    /// The signed head of the session's event chain: null until the session has ended.
    /// `GET /api/v1/sessions/{id}/record` exports the events with it, and
    /// `upkeep-server verify-record` checks such a record offline.
    async fn attestation(&self, ctx: &Context<'_>) -> Result<Option<AttestationView>> {
        let c = Ctx::new(ctx)?;
        Ok(c.app
            .store
            .get::<upkeep_core::attest::Attestation>(&self.id)
            .await?
            .map(AttestationView))
    }
}

pub struct AttestationView(pub upkeep_core::attest::Attestation);

/// A session's events hashed into a chain whose head the server signed when the session ended.
#[Object(name = "Attestation")]
impl AttestationView {
    /// The signature algorithm: `Ed25519`.
    async fn algorithm(&self) -> &str {
        &self.0.algorithm
    }
    /// The public key that verifies the signature (32 bytes, base64url without padding).
    async fn public_key(&self) -> &str {
        &self.0.public_key
    }
    /// SHA-256 chain head over events 1..=`lastSequence` (lower-case hex).
    async fn chain_head(&self) -> &str {
        &self.0.chain_head
    }
    /// The Ed25519 signature of the head, the session id and `lastSequence` (base64url).
    async fn signature(&self) -> &str {
        &self.0.signature
    }
    /// The last event the chain covers (events after it, if any, are not attested).
    async fn last_sequence(&self) -> i64 {
        self.0.last_sequence as i64
    }
    /// When it was signed.
    async fn signed_at(&self) -> DateTime {
        self.0.signed_at.into()
    }
}

/// A line of a session's log.
#[derive(SimpleObject)]
pub struct LogLine {
    /// The session event it belongs to (rises by one per event).
    pub sequence: i64,
    /// When it was written.
    pub at: DateTime,
    /// The line.
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
    /// True when stdout or stderr was longer than 64 KiB and was cut.
    pub truncated: bool,
}

/// One thing a session does for one software or task on its computer.
#[Object(name = "MaintenanceAction")]
impl ActionView {
    /// The action's id.
    pub(crate) async fn id(&self) -> ID {
        id(self.action.id)
    }
    /// What it does.
    async fn kind(&self) -> ActionKind {
        self.action.kind.into()
    }
    /// Where it stands.
    async fn status(&self) -> ActionStatus {
        self.action.status.into()
    }
    /// Its item's compliance: from detection, then from re-detection after execution.
    async fn compliance(&self) -> Compliance {
        self.action.compliance.into()
    }
    /// The software, for software actions.
    async fn software(&self, ctx: &Context<'_>) -> Result<Option<View<Software>>> {
        match self.session.get(self.action.item).map(|i| &i.what) {
            Some(ItemWhat::Software { software, .. }) => Ok(Ctx::new(ctx)?
                .find_catalogue::<Software>(software.id)
                .await?
                .map(View)),
            _ => Ok(None),
        }
    }
    /// The task, for task actions.
    async fn maintenance_task(&self, ctx: &Context<'_>) -> Result<Option<View<MaintenanceTask>>> {
        match self.session.get(self.action.item).map(|i| &i.what) {
            Some(ItemWhat::Task { task, .. }) => Ok(Ctx::new(ctx)?
                .find_catalogue::<MaintenanceTask>(task.id)
                .await?
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
    /// The deployment it comes from.
    async fn deployment(&self, ctx: &Context<'_>) -> Result<Option<View<Deployment>>> {
        match self.session.get(self.action.item) {
            Some(i) => Ok(Ctx::new(ctx)?
                .find::<Deployment>(i.deployment_id)
                .await?
                .map(View)),
            None => Ok(None),
        }
    }
    /// The version it installs or upgrades to.
    async fn desired_version(&self) -> Option<&str> {
        self.action.desired_version.as_deref()
    }
    /// The version detection found (`null`: not installed).
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
    /// What its script or re-detection said, in a sentence.
    async fn result_message(&self) -> Option<&str> {
        self.action.result_message.as_deref()
    }
    /// What the task's get script printed at detection (first line, trimmed, at most 200
    /// characters; secrets masked); null without a get script or output.
    async fn current_value(&self) -> Option<&str> {
        self.action.current_value.as_deref()
    }
    /// Why the action was planned, e.g. "1.9.2 installed, latest is 1.10.0".
    async fn reason(&self) -> &str {
        &self.action.reason
    }
    /// True when its script asked for a reboot (exit 3010 or 1641 on Windows, 194 elsewhere).
    async fn reboot_required(&self) -> bool {
        self.action.reboot_required
    }
    /// When it started running.
    async fn started_at(&self) -> Option<DateTime> {
        self.action.started_at.map(DateTime)
    }
    /// When it finished.
    async fn finished_at(&self) -> Option<DateTime> {
        self.action.finished_at.map(DateTime)
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
            .get_by_key::<upkeep_core::output::OutputRecord>(&key)
            .await?
            .filter(|r| r.action_id == self.action.id)
            .map(|r| ActionOutputView {
                stdout: r.output.stdout,
                stderr: r.output.stderr,
                exit_code: r.output.exit_code,
                truncated: r.output.truncated,
            }))
    }
}
