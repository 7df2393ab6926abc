//! Composing session mails (the outbox service sends them: `services/outbox.rs`).

use crate::auth::PostponeClaims;
use crate::error::{ApiError, ApiResult};
use crate::mail::render::{
    self, ActionOutcome, ActionView, Brand, ComputerLink, MailTemplate, PlannedChange,
    RebootExpectation, SessionMailView,
};
use crate::services::App;
use upkeep_core::domain::*;
use upkeep_core::engine::MIN_POSTPONE_LEAD_MINUTES;
use upkeep_core::mail::{MailKind, MailStatus, OutboxMail};
use upkeep_core::session::*;

/// How long an after-mail's "Reboot now" link works.
const REBOOT_LINK_DAYS: i64 = 7;

impl App {
    pub fn brand(&self, t: &Tenant) -> Brand {
        Brand {
            company_name: t.company_name.clone().unwrap_or_else(|| t.name.clone()),
            logo_url: t
                .logo_url
                .clone()
                .filter(|u| u.starts_with("https://") || u.starts_with("http://")),
            primary_color: t.primary_color.clone().unwrap_or_default(),
            msp_name: self.config.msp_name.clone(),
        }
    }

    /// The zone mails and the postpone page write times in. A stored zone that no longer reads
    /// must not stop the mail: its times are written in UTC, which the text names ("22:00
    /// UTC"), and the log says which tenant's zone to fix.
    pub fn tenant_zone(t: &Tenant) -> chrono_tz::Tz {
        match t.time_zone.get() {
            Ok(z) => z.tz(),
            Err(e) => {
                tracing::warn!(tenant = %t.id, error = %e, "tenant time zone unreadable: times in UTC");
                chrono_tz::UTC
            }
        }
    }

    /// The zone the tenant's business hours are in. A stored zone that no longer reads is an
    /// error: guessing one could reboot a computer in its user's working hours.
    pub fn business_zone(t: &Tenant) -> ApiResult<chrono_tz::Tz> {
        t.time_zone
            .get()
            .map(|z| z.tz())
            .map_err(|e| ApiError::internal(format!("tenant {}: time zone: {e}", t.id)))
    }

    /// The postpone link for a session's before-mail, when postponing is possible: allowed,
    /// not used up, and execution at least 15 minutes away.
    pub fn postpone_link(&self, s: &Session, rcpt: &str) -> ApiResult<Option<String>> {
        let now = self.clock.now();
        let Some(at) = s.execute_at else {
            return Ok(None);
        };
        let postponable = s.options.allow_postpone
            && s.postpone_count < s.options.max_postpones
            && at >= now + chrono::Duration::minutes(MIN_POSTPONE_LEAD_MINUTES);
        if !postponable {
            return Ok(None);
        }
        self.session_link(s, rcpt, at, None).map(Some)
    }

    /// The update-now link of a before-mail, a token of its own (so it works when postponing
    /// is not offered): when updating now is allowed and execution is still ahead.
    pub fn update_now_link(&self, s: &Session, rcpt: &str) -> ApiResult<Option<String>> {
        let Some(at) = s.execute_at else {
            return Ok(None);
        };
        if !s.options.allow_update_now || s.detection_only || at <= self.clock.now() {
            return Ok(None);
        }
        self.session_link(s, rcpt, at, Some(crate::auth::LINK_UPDATE_NOW))
            .map(Some)
    }

    /// The after-mail's "Reboot now" link, when a reboot is still pending on the computer (held
    /// by business hours or postponed, or reported by its agent); valid for a week.
    pub async fn reboot_now_link(&self, s: &Session, rcpt: &str) -> ApiResult<Option<String>> {
        if !self.reboot_still_pending(s).await? {
            return Ok(None);
        }
        let token = self.keys.issue_postpone_token(&PostponeClaims {
            sid: s.id.to_string(),
            rcpt: rcpt.to_string(),
            jti: crate::ids::fresh().to_string(),
            exp: (self.clock.now() + chrono::Duration::days(REBOOT_LINK_DAYS)).timestamp(),
            aud: crate::auth::POSTPONE_AUDIENCE.into(),
            generation: Some(s.postpone_count),
            act: Some(crate::auth::LINK_REBOOT_NOW.into()),
        })?;
        Ok(Some(format!("{}/reboot/{token}", self.public_url)))
    }

    /// A signed, single-use link to the postpone page, valid until `until` and until the
    /// session is postponed again.
    fn session_link(
        &self,
        s: &Session,
        rcpt: &str,
        until: Time,
        act: Option<&str>,
    ) -> ApiResult<String> {
        let token = self.keys.issue_postpone_token(&PostponeClaims {
            sid: s.id.to_string(),
            rcpt: rcpt.to_string(),
            jti: crate::ids::fresh().to_string(),
            exp: until.timestamp(),
            aud: crate::auth::POSTPONE_AUDIENCE.into(),
            generation: Some(s.postpone_count),
            act: act.map(String::from),
        })?;
        Ok(format!("{}/postpone/{token}", self.public_url))
    }

    /// The view a session mail or the postpone page renders.
    pub fn session_view(
        &self,
        s: &Session,
        tenant: &Tenant,
        computer_name: &str,
        recipient_name: &str,
        postpone_url: Option<String>,
    ) -> SessionMailView {
        let tz = Self::tenant_zone(tenant);
        // A finished session's mail is the after-mail: it tells when the work finished, and
        // what was actually restarted. Before, it tells the planned time and what may happen.
        let after = s.status.is_terminal();
        let when_t = if after {
            s.finished_at.or(s.execute_at)
        } else {
            s.execute_at
        }
        .unwrap_or_else(|| self.clock.now());
        let actions = s
            .actions
            .iter()
            // End users see changes; items that need none (and audit findings, which are for
            // technicians) are not "planned changes".
            .filter(|a| a.kind != ActionKind::NoAction)
            .map(|a| mail_action(s, a, after))
            .collect();
        let reboot = reboot_expectation(s, after);
        let compliant = mail_compliant(s);
        SessionMailView {
            brand: self.brand(tenant),
            recipient_name: recipient_name.to_string(),
            computer_name: computer_name.to_string(),
            when: render::format_when(when_t, tz),
            time_zone: tz.name().to_string(),
            actions,
            show_actions: s.options.show_actions_in_email,
            reboot,
            update_now_url: postpone_url
                .as_ref()
                .filter(|_| s.options.allow_update_now)
                .cloned(),
            reboot_now_url: None,
            postpone_url,
            postpones_left: s.options.max_postpones.saturating_sub(s.postpone_count),
            postpone_hours: s.options.postpone_hours,
            result_summary: s
                .status
                .is_terminal()
                .then(|| s.status_reason.clone().unwrap_or_default()),
            compliant: compliant && s.status != SessionStatus::Failed,
            postpone_links: Vec::new(),
        }
    }

    /// The person a session's mails go to: the computer's primary person. `Ok(Err(why))` when
    /// there is none. Also returns the tenant and the computer's name.
    async fn recipient(&self, s: &Session) -> ApiResult<Result<(Tenant, String, Person), String>> {
        let tenant = self
            .store
            .get::<Tenant>(&s.tenant_id)
            .await?
            .ok_or_else(|| ApiError::internal("tenant missing"))?;
        let computer = self
            .store
            .get::<Computer>(&s.computer_id)
            .await?
            .ok_or_else(|| ApiError::internal("computer missing"))?;
        let Some(pid) = computer.primary_person_id else {
            return Ok(Err("the computer has no primary person".into()));
        };
        let Some(person) = self.store.get::<Person>(&pid).await? else {
            return Ok(Err("the computer's primary person no longer exists".into()));
        };
        Ok(Ok((tenant, computer.name, person)))
    }

    /// The e-mail address a session's mails go to, if any.
    pub async fn recipient_email(&self, s: &Session) -> ApiResult<Option<String>> {
        Ok(self
            .recipient(s)
            .await?
            .ok()
            .map(|(_, _, p)| p.email.text().to_string()))
    }

    /// One mail about several sessions of one person (CONTRACT issue 14: one mail per person
    /// and run), listing each computer with its actions; each computer keeps its own postpone
    /// page. A single session gets the ordinary mail.
    pub async fn compose_group_mail(
        &self,
        sessions: &[&Session],
        kind: MailKind,
    ) -> ApiResult<Result<OutboxMail, String>> {
        let [first, ..] = sessions else {
            return Ok(Err("no session to mail about".into()));
        };
        if sessions.len() == 1 {
            return self.compose_session_mail(first, kind).await;
        }
        let mut views = Vec::with_capacity(sessions.len());
        let mut tenant_and_person = None;
        for s in sessions {
            let (tenant, computer_name, person) = match self.recipient(s).await? {
                Ok(r) => r,
                Err(why) => return Ok(Err(why)),
            };
            let link = if kind == MailKind::Before {
                self.postpone_link(s, person.email.text())?
            } else {
                None
            };
            let view = self.session_view(s, &tenant, &computer_name, &person.name, link);
            views.push((s.finished_at, view));
            tenant_and_person.get_or_insert((tenant, person));
        }
        let Some((tenant, person)) = tenant_and_person else {
            return Ok(Err("no session to mail about".into()));
        };
        let view = merged_view(views, kind);
        self.render_for(
            &tenant,
            first.id,
            kind,
            person.email.text().to_string(),
            &view,
        )
        .map(Ok)
    }

    /// Renders a before- or after-mail view into an outbox mail to one person.
    fn render_for(
        &self,
        tenant: &Tenant,
        session: Id,
        kind: MailKind,
        to: String,
        view: &SessionMailView,
    ) -> ApiResult<OutboxMail> {
        let template = if kind == MailKind::Before {
            MailTemplate::Before
        } else {
            MailTemplate::After
        };
        let r = self
            .templates
            .render_session_mail(template, view)
            .map_err(|e| ApiError::internal(e))?;
        Ok(self.outbox_mail(Some(tenant), Some(session), kind, vec![to], r))
    }

    /// Renders a session mail for the computer's primary person. `Ok(Err(why))` when there is
    /// nobody to mail.
    pub async fn compose_session_mail(
        &self,
        s: &Session,
        kind: MailKind,
    ) -> ApiResult<Result<OutboxMail, String>> {
        let (tenant, computer_name, person) = match self.recipient(s).await? {
            Ok(r) => r,
            Err(why) => return Ok(Err(why)),
        };
        let link = if kind == MailKind::Before {
            self.postpone_link(s, person.email.text())?
        } else {
            None
        };
        let mut view = self.session_view(s, &tenant, &computer_name, &person.name, link);
        if kind == MailKind::Before {
            view.update_now_url = self.update_now_link(s, person.email.text())?;
        } else {
            view.reboot_now_url = self.reboot_now_link(s, person.email.text()).await?;
        }
        self.render_for(&tenant, s.id, kind, person.email.text().to_string(), &view)
            .map(Ok)
    }

    pub fn outbox_mail(
        &self,
        tenant: Option<&Tenant>,
        session: Option<Id>,
        kind: MailKind,
        to: Vec<String>,
        r: render::RenderedMail,
    ) -> OutboxMail {
        let id = crate::ids::fresh();
        let host = self.public_url.host();
        let now = self.clock.now();
        OutboxMail {
            id,
            message_id: format!("<{id}@{host}>"),
            tenant_id: tenant.map(|t| t.id),
            session_id: session,
            kind,
            from: tenant
                .and_then(|t| t.mail_from.clone())
                .unwrap_or_else(|| self.config.mail_from.clone()),
            to,
            bcc: if kind == MailKind::Test {
                vec![]
            } else {
                tenant
                    .map(|t| t.mail_bcc.iter().map(|a| a.text().to_string()).collect())
                    .unwrap_or_default()
            },
            subject: r.subject,
            text: r.text,
            html: r.html,
            created_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            status: MailStatus::Pending,
            lease: None,
        }
    }
}

/// One action as the end user reads it: the change it makes, and after the work its outcome.
/// Items that need no change are filtered out by the caller.
fn mail_action(s: &Session, a: &Action, after: bool) -> ActionView {
    let name = s.item_name(a.item).to_string();
    let before = a
        .detected_version_before
        .as_deref()
        .or(a.detected_version.as_deref());
    let wanted = a.desired_version.as_deref();
    let change = match a.kind {
        ActionKind::Install => PlannedChange::Install { version: wanted },
        ActionKind::Upgrade => PlannedChange::Upgrade {
            from: before,
            to: wanted,
        },
        ActionKind::Uninstall => PlannedChange::Uninstall { version: before },
        ActionKind::RunTask => PlannedChange::RunTask,
        ActionKind::NoAction => PlannedChange::NoChange,
    };
    let view = ActionView::planned(name, change);
    let outcome = match a.status {
        ActionStatus::Succeeded => Some(ActionOutcome::Succeeded),
        ActionStatus::Failed | ActionStatus::DetectionFailed => Some(ActionOutcome::Failed),
        ActionStatus::Skipped => Some(ActionOutcome::Skipped),
        ActionStatus::Cancelled => Some(ActionOutcome::Cancelled),
        ActionStatus::Pending | ActionStatus::Running => None,
    };
    match outcome {
        Some(o) if after => view.with_outcome(o, a.result_message.as_deref()),
        _ => view,
    }
}

/// Whether the mail says the computer will, may or will not restart.
fn reboot_expectation(s: &Session, after: bool) -> RebootExpectation {
    let software_change = s.actions.iter().any(|a| {
        matches!(
            a.kind,
            ActionKind::Install | ActionKind::Upgrade | ActionKind::Uninstall
        )
    });
    match s.options.reboot_preference {
        // After: only what happened. A held reboot has not restarted anything yet.
        _ if after => {
            if s.rebooted_at.is_some() {
                RebootExpectation::Will
            } else {
                RebootExpectation::None
            }
        }
        RebootPreference::Force => RebootExpectation::Will,
        RebootPreference::Suppress => RebootExpectation::None,
        RebootPreference::Normal | RebootPreference::Prompt if s.reboot_required => {
            RebootExpectation::Will
        }
        // Installers may ask for a restart; running a task or nothing at all does not.
        RebootPreference::Normal | RebootPreference::Prompt if software_change => {
            RebootExpectation::May
        }
        RebootPreference::Normal | RebootPreference::Prompt => RebootExpectation::None,
    }
}

/// "Completed" for the end user. Audit findings are for technicians: they do not make the end
/// user's computer "not completed".
fn mail_compliant(s: &Session) -> bool {
    // Audit findings are for technicians: they do not make the end user's computer "not
    // completed".
    !s.actions.is_empty()
        && s.actions
            .iter()
            .filter(|a| {
                !s.items
                    .get(a.item)
                    .is_some_and(upkeep_core::engine::plan::is_audit)
            })
            .all(|a| a.compliance == Compliance::Compliant)
}

/// The view of one mail about several computers: their names joined, every action named with
/// its computer, the strongest reboot expectation, one result line per computer and each
/// computer's own postpone page.
fn merged_view(
    mut views: Vec<(Option<upkeep_core::domain::Time>, SessionMailView)>,
    kind: MailKind,
) -> SessionMailView {
    views.sort_by(|a, b| a.1.computer_name.cmp(&b.1.computer_name));
    let names: Vec<String> = views.iter().map(|(_, v)| v.computer_name.clone()).collect();
    let mut view = views[0].1.clone();
    view.computer_name = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(", "),
    };
    // After: when the last of them finished.
    if let Some((_, latest)) = views.iter().max_by_key(|(finished, _)| *finished) {
        view.when = latest.when.clone();
    }
    view.actions = views
        .iter()
        .flat_map(|(_, v)| {
            v.actions.iter().cloned().map(|mut a| {
                a.name = format!("{} on {}", a.name, v.computer_name);
                a
            })
        })
        .collect();
    view.reboot = views
        .iter()
        .map(|(_, v)| v.reboot)
        .max_by_key(|r| match r {
            RebootExpectation::None => 0,
            RebootExpectation::May => 1,
            RebootExpectation::Will => 2,
        })
        .unwrap_or_default();
    view.compliant = views.iter().all(|(_, v)| v.compliant);
    view.result_summary = (kind == MailKind::After).then(|| {
        views
            .iter()
            .map(|(_, v)| {
                format!(
                    "{}: {}",
                    v.computer_name,
                    v.result_summary.clone().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    view.postpone_links = views
        .iter()
        .filter_map(|(_, v)| {
            v.postpone_url.clone().map(|url| ComputerLink {
                computer_name: v.computer_name.clone(),
                url,
            })
        })
        .collect();
    view.postpone_url = None;
    view.update_now_url = None;
    view
}
