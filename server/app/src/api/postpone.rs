//! The end user's postpone page. `GET` only shows (mail scanners prefetch links); `POST`
//! applies `postpone` or `update-now` once per token.
//!
//! Links are single-use and belong to one mail: a postpone (by the user or a technician) sends
//! a fresh before-mail with fresh links for the new time, and the earlier mail's links stop
//! working ("use the link in the newest e-mail"). So the user reaches `maxPostpones` mail by
//! mail; the mail after the last postpone offers no postpone, only "update now" when allowed.
//! The update-now link is a token of its own (`act: update-now`), so it is offered also when
//! postponing is not. The after-mail's "Reboot now" link (`act: reboot-now`, at
//! `/reboot/{token}`) shows the same page in its own states: `GET` asks to confirm, `POST`
//! reboots the computer while a reboot is still pending there.

use crate::error::ApiError;
use crate::mail::render::{Brand, PostponePageView, PostponeState};
use crate::services::App;
use crate::services::runtime::RebootNow;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::engine::{EngineError, Event};
use upkeep_core::session::Session;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/postpone/{token}", get(show).post(apply))
        .route("/reboot/{token}", get(show).post(apply))
}

#[derive(serde::Deserialize)]
pub struct PostponeForm {
    #[serde(default)]
    action: Option<String>,
}

struct Loaded {
    session: Session,
    tenant: Tenant,
    computer_name: String,
    jti: String,
    rcpt: String,
    /// The mail's update-now link: it may only start the maintenance now.
    update_now_only: bool,
    /// The after-mail's reboot-now link: it may only reboot the computer.
    reboot_now_only: bool,
}

impl App {
    fn page(
        &self,
        status: StatusCode,
        state: PostponeState,
        l: Option<&Loaded>,
        message: Option<String>,
        new_when: Option<String>,
    ) -> Response {
        let view = match l {
            Some(l) => {
                let sv = self.session_view(&l.session, &l.tenant, &l.computer_name, "", None);
                PostponePageView {
                    brand: sv.brand,
                    state: state.as_str().to_string(),
                    computer_name: sv.computer_name,
                    when: sv.when,
                    new_when,
                    actions: sv.actions,
                    show_actions: sv.show_actions,
                    reboot: sv.reboot,
                    // An update-now link offers no postpone.
                    postpones_left: if l.update_now_only {
                        0
                    } else {
                        sv.postpones_left
                    },
                    postpone_hours: sv.postpone_hours,
                    allow_update_now: l.session.options.allow_update_now,
                    message,
                }
            }
            None => PostponePageView {
                brand: Brand::default(),
                state: state.as_str().to_string(),
                computer_name: String::new(),
                when: String::new(),
                new_when: None,
                actions: vec![],
                show_actions: false,
                reboot: Default::default(),
                postpones_left: 0,
                postpone_hours: 0,
                allow_update_now: false,
                message,
            },
        };
        match self.templates.render_postpone_page(&view) {
            Ok(html) => (
                status,
                [
                    ("cache-control", "no-store"),
                    ("referrer-policy", "no-referrer"),
                ],
                Html(html),
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "postpone page did not render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be shown",
                )
                    .into_response()
            }
        }
    }

    /// Verifies the token and finds its session. Errors are the page to answer.
    #[allow(clippy::result_large_err)] // the error is the finished page
    /// A record the link names, if it can be read (a link to anything else is invalid).
    async fn stored<T: upkeep_store::Record>(&self, id: Id) -> Option<T> {
        self.store.get::<T>(&id).await.ok().flatten()
    }

    async fn load_token(&self, token: &str) -> Result<Loaded, Response> {
        let invalid = || {
            self.page(
                StatusCode::BAD_REQUEST,
                PostponeState::Invalid,
                None,
                Some("This link is not valid. Use the link from your most recent e-mail.".into()),
                None,
            )
        };
        let claims = self
            .keys
            .verify_postpone_token(token)
            .map_err(|_| invalid())?;
        let sid: Id = claims.sid.parse().map_err(|_| invalid())?;
        let session = self.stored::<Session>(sid).await.ok_or_else(invalid)?;
        let tenant = self
            .stored::<Tenant>(session.tenant_id)
            .await
            .ok_or_else(invalid)?;
        let computer = self.stored::<Computer>(session.computer_id).await;
        let computer_name = computer.map(|c| c.name).unwrap_or_default();
        let l = Loaded {
            session,
            tenant,
            computer_name,
            jti: claims.jti,
            rcpt: claims.rcpt,
            update_now_only: claims.act.as_deref() == Some(crate::auth::LINK_UPDATE_NOW),
            reboot_now_only: claims.act.as_deref() == Some(crate::auth::LINK_REBOOT_NOW),
        };
        if l.session.used_tokens.contains(&l.jti) {
            return Err(self.page(
                StatusCode::GONE,
                PostponeState::Used,
                Some(&l),
                Some("This link was already used.".into()),
                None,
            ));
        }
        // Each postpone sends a fresh mail with fresh links; the earlier mail's links end.
        if claims
            .generation
            .is_some_and(|g| g != l.session.postpone_count)
        {
            return Err(self.page(
                StatusCode::GONE,
                PostponeState::Used,
                Some(&l),
                Some(
                    "The maintenance was postponed since this e-mail was sent; use the link in the newest e-mail."
                        .into(),
                ),
                None,
            ));
        }
        if claims.exp <= self.clock.now().timestamp() {
            return Err(self.page(
                StatusCode::GONE,
                PostponeState::Expired,
                Some(&l),
                Some("This link has expired: the maintenance time has passed.".into()),
                None,
            ));
        }
        Ok(l)
    }
}

async fn show(State(app): State<Arc<App>>, Path(token): Path<String>) -> Response {
    let l = match app.load_token(&token).await {
        Ok(l) => l,
        Err(page) => return page,
    };
    if l.reboot_now_only {
        return match app.reboot_still_pending(&l.session).await {
            Ok(true) => app.page(
                StatusCode::OK,
                PostponeState::RebootConfirm,
                Some(&l),
                None,
                None,
            ),
            Ok(false) => reboot_done(&app, &l),
            Err(e) => unavailable(&app, &l, &e),
        };
    }
    if l.session.status.is_terminal() || l.session.execute_at.is_none() {
        return app.page(
            StatusCode::CONFLICT,
            PostponeState::TooLate,
            Some(&l),
            Some("The maintenance already ran or was cancelled.".into()),
            None,
        );
    }
    if !l.update_now_only
        && (l.session.postpone_count >= l.session.options.max_postpones
            || !l.session.options.allow_postpone)
    {
        return app.page(
            StatusCode::OK,
            PostponeState::Limit,
            Some(&l),
            Some("This maintenance can no longer be postponed.".into()),
            None,
        );
    }
    app.page(StatusCode::OK, PostponeState::Confirm, Some(&l), None, None)
}

async fn apply(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    form: Result<Form<PostponeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let l = match app.load_token(&token).await {
        Ok(l) => l,
        Err(page) => return page,
    };
    let action = form
        .ok()
        .and_then(|f| f.0.action)
        .unwrap_or_else(|| "postpone".into());
    let by = format!("{} (e-mail link)", l.rcpt);
    if l.reboot_now_only {
        return apply_reboot_now(&app, &l, &action, &by).await;
    }
    if l.update_now_only && action != "update-now" {
        return app.page(
            StatusCode::BAD_REQUEST,
            PostponeState::Invalid,
            Some(&l),
            Some("This link can only start the maintenance now.".into()),
            None,
        );
    }
    let event = match action.as_str() {
        "postpone" => Event::Postpone {
            hours: None,
            by,
            token: Some(l.jti.clone()),
        },
        "update-now" => Event::UpdateNow {
            by,
            token: Some(l.jti.clone()),
        },
        _ => {
            return app.page(
                StatusCode::BAD_REQUEST,
                PostponeState::Invalid,
                Some(&l),
                Some("Unknown action.".into()),
                None,
            );
        }
    };
    match app.apply(l.session.id, event).await {
        Ok(s) => {
            let tz = App::tenant_zone(&l.tenant);
            let new_when = s
                .execute_at
                .map(|t| crate::mail::render::format_when(t, tz));
            let l2 = Loaded { session: s, ..l };
            let state = if action == "postpone" {
                PostponeState::Postponed
            } else {
                PostponeState::Updating
            };
            app.page(StatusCode::OK, state, Some(&l2), None, new_when)
        }
        Err(ApiError::Refused(e)) => {
            let (status, state) = refused_page(&e);
            app.page(status, state, Some(&l), Some(e.to_string()), None)
        }
        Err(e) => {
            tracing::error!(error = %e, "postpone failed");
            app.page(
                StatusCode::SERVICE_UNAVAILABLE,
                PostponeState::Invalid,
                Some(&l),
                Some("Something went wrong; please try again.".into()),
                None,
            )
        }
    }
}

/// POST of a reboot-now link.
async fn apply_reboot_now(app: &Arc<App>, l: &Loaded, action: &str, by: &str) -> Response {
    if action != "reboot-now" {
        return app.page(
            StatusCode::BAD_REQUEST,
            PostponeState::Invalid,
            Some(l),
            Some("This link can only restart the computer.".into()),
            None,
        );
    }
    tracing::info!(session = %l.session.id, by = %crate::logsafe::log_value(by), "reboot now asked");
    match app.reboot_now(&l.session).await {
        Ok(RebootNow::NothingPending) => reboot_done(app, l),
        Ok(RebootNow::WhenOnline) => app.page(
            StatusCode::OK,
            PostponeState::Rebooting,
            Some(l),
            Some("The computer is offline; it restarts when it is back.".into()),
            None,
        ),
        Ok(RebootNow::Sent | RebootNow::AlreadySent) => app.page(
            StatusCode::OK,
            PostponeState::Rebooting,
            Some(l),
            None,
            None,
        ),
        Err(e) => unavailable(app, l, &e),
    }
}

/// A reboot-now link when no reboot is pending any more (it ran, or another use of the link
/// already sent it): 409, and nothing changes.
fn reboot_done(app: &App, l: &Loaded) -> Response {
    app.page(
        StatusCode::CONFLICT,
        PostponeState::RebootDone,
        Some(l),
        Some("No restart is pending on this computer any more.".into()),
        None,
    )
}

fn unavailable(app: &App, l: &Loaded, e: &ApiError) -> Response {
    tracing::error!(error = %e, "reboot now failed");
    app.page(
        StatusCode::SERVICE_UNAVAILABLE,
        PostponeState::Invalid,
        Some(l),
        Some("Something went wrong; please try again.".into()),
        None,
    )
}

/// The page for an engine refusal: a used link is gone, a session past waiting is too late,
/// and what the session's options forbid (or its postpones used up) is the limit page.
fn refused_page(e: &EngineError) -> (StatusCode, PostponeState) {
    match e {
        EngineError::LinkUsed => (StatusCode::GONE, PostponeState::Used),
        EngineError::Ended(_)
        | EngineError::NotPostponable
        | EngineError::NotWaitingToExecute
        | EngineError::NotRunnable(_) => (StatusCode::CONFLICT, PostponeState::TooLate),
        EngineError::PostponeNotAllowed
        | EngineError::PostponeLimit(_)
        | EngineError::UpdateNowNotAllowed => (StatusCode::FORBIDDEN, PostponeState::Limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_core::session::SessionStatus;

    /// The page follows the engine's variant, whatever its text says: a used link is 410
    /// "used" (it was told apart by the words "already used" before), a session past waiting
    /// is 409 "too late", and what the options forbid is 403 "limit".
    #[test]
    fn a_refusal_picks_its_page_by_variant_not_by_text() {
        let cases = [
            (EngineError::LinkUsed, StatusCode::GONE, PostponeState::Used),
            (
                EngineError::Ended(SessionStatus::Passed),
                StatusCode::CONFLICT,
                PostponeState::TooLate,
            ),
            (
                EngineError::NotPostponable,
                StatusCode::CONFLICT,
                PostponeState::TooLate,
            ),
            (
                EngineError::NotWaitingToExecute,
                StatusCode::CONFLICT,
                PostponeState::TooLate,
            ),
            (
                EngineError::NotRunnable(SessionStatus::Executing),
                StatusCode::CONFLICT,
                PostponeState::TooLate,
            ),
            (
                EngineError::PostponeNotAllowed,
                StatusCode::FORBIDDEN,
                PostponeState::Limit,
            ),
            (
                EngineError::PostponeLimit(3),
                StatusCode::FORBIDDEN,
                PostponeState::Limit,
            ),
            (
                EngineError::UpdateNowNotAllowed,
                StatusCode::FORBIDDEN,
                PostponeState::Limit,
            ),
        ];
        for (e, status, state) in cases {
            assert_eq!(refused_page(&e), (status, state), "{e:?}");
        }
    }
}
