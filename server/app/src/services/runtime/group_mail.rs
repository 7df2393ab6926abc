//! One mail per person and run. Sessions of one start call or schedule occurrence whose
//! computers have the same primary person (`Session::mail_siblings`) and the same execution
//! time share one before-mail and one after-mail, listing each computer.
//!
//! The mail of a kind goes out when the last session of the group has decided whether it wants
//! it (before: detection is over; after: the session ended). Each session passes that point
//! once, in the commit of one step; those commits take the group's lock, so exactly one of them
//! — the last — sees every member decided, and composes the mail for those that want it.

use super::SessionRuntime;
use crate::error::ApiResult;
use crate::services::App;
use upkeep_core::domain::Id;
use upkeep_core::mail::{MailKind, OutboxMail};
use upkeep_core::session::*;

const MAIL_LOCK_STRIPES: usize = 64;

/// Whether a session has passed the point where its mail of `kind` is decided. A session whose
/// computer is offline counts as decided (and not wanting): its siblings' mails do not wait for
/// a laptop that may be away for days; it mails on its own terms when it comes back.
pub(super) fn decided(s: &Session, kind: MailKind) -> bool {
    let away = s.offline_since.is_some() && !s.status.is_terminal();
    match kind {
        MailKind::Before => {
            s.status.is_terminal()
                || s.before_mail_sent
                || away
                || !matches!(s.stage, Stage::AwaitDetect | Stage::Detecting)
        }
        MailKind::After | MailKind::Test => s.status.is_terminal() || away,
    }
}

/// Whether a (decided) session wants its mail of `kind`. A before-mail never announces a time
/// already past.
fn wanted(s: &Session, kind: MailKind, now: upkeep_core::domain::Time) -> bool {
    match kind {
        MailKind::Before => {
            s.before_mail_sent
                && !s.status.is_terminal()
                && s.offline_since.is_none()
                && s.execute_at.is_none_or(|t| t > now)
        }
        MailKind::After | MailKind::Test => s.after_mail_sent,
    }
}

/// What a grouped session's step does about the group's mail of one kind.
pub(super) enum GroupMail {
    /// The last member decided: this mail (about `computers` computers) goes out.
    Send {
        mail: Box<OutboxMail>,
        computers: usize,
    },
    /// Other members have not decided yet; the last of them sends it.
    Wait,
    /// Nobody in the group wants it, or it cannot be sent (why).
    Nothing(Option<String>),
}

pub(super) struct MailLocks(Vec<tokio::sync::Mutex<()>>);

impl Default for MailLocks {
    fn default() -> MailLocks {
        MailLocks(
            (0..MAIL_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }
}

impl SessionRuntime {
    /// The lock of a session's mail group (the same for every member: keyed by the smallest id).
    pub(super) fn mail_lock(&self, s: &Session) -> &tokio::sync::Mutex<()> {
        let key: Id = s.mail_siblings.iter().copied().fold(s.id, Id::min);
        let b = key.as_bytes();
        &self.mail_locks.0[usize::from(b[15]) % MAIL_LOCK_STRIPES]
    }
}

impl App {
    /// Called with the group's lock held, for a session `s` (its new state, not yet stored)
    /// that has just decided its mail of `kind`.
    pub(super) async fn group_mail(&self, s: &Session, kind: MailKind) -> ApiResult<GroupMail> {
        let Some(email) = self.recipient_email(s).await? else {
            return Ok(if wanted(s, kind, self.clock.now()) {
                GroupMail::Nothing(Some("the computer has no primary person".into()))
            } else {
                GroupMail::Nothing(None)
            });
        };
        let mut members: Vec<Session> = vec![s.clone()];
        for id in &s.mail_siblings {
            let Some(x) = self.store.get::<Session>(id).await? else {
                continue;
            };
            if x.execute_at == s.execute_at
                && self.recipient_email(&x).await?.as_deref() == Some(email.as_str())
            {
                members.push(x);
            }
        }
        if !members.iter().all(|x| decided(x, kind)) {
            return Ok(GroupMail::Wait);
        }
        let now = self.clock.now();
        let wanting: Vec<&Session> = members.iter().filter(|x| wanted(x, kind, now)).collect();
        if wanting.is_empty() {
            return Ok(GroupMail::Nothing(None));
        }
        Ok(match self.compose_group_mail(&wanting, kind).await? {
            Ok(mail) => GroupMail::Send {
                mail: Box::new(mail),
                computers: wanting.len(),
            },
            Err(why) => GroupMail::Nothing(Some(why)),
        })
    }
}
