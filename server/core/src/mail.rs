//! The outbox record. The worker that drains it lives in `runtime::mailer`.

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MailKind {
    Before,
    After,
    Test,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MailStatus {
    Pending,
    Sent {
        at: Time,
    },
    Failed {
        at: Time,
    },
    /// Not sent, and never will be: a before-mail whose session was cancelled before the mail
    /// went out (it would announce maintenance that will not happen).
    Withdrawn {
        at: Time,
        reason: String,
    },
}

/// A mail as queued: fully rendered, with its Message-ID fixed, so a send repeated after a
/// crash is byte-for-byte the same mail and receivers can tell the repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxMail {
    pub id: Id,
    pub message_id: String,
    pub tenant_id: Option<Id>,
    pub session_id: Option<Id>,
    pub kind: MailKind,
    pub from: String,
    pub to: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub created_at: Time,
    pub attempts: u32,
    pub next_attempt_at: Time,
    pub last_error: Option<String>,
    pub status: MailStatus,
    /// In cluster mode: the replica sending it now ([`crate::lease`]). Never set on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::lease::Lease>,
}

impl OutboxMail {
    pub fn is_pending(&self) -> bool {
        self.status == MailStatus::Pending
    }
}
