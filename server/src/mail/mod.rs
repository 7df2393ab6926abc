//! Mail: templates (`render`) and the outbox (`outbox`): every mail is written to the store
//! before the first attempt to send it, and only the outbox worker talks SMTP.

pub mod outbox;
pub mod render;

pub use outbox::{MailKind, MailStatus, OutboxMail};
