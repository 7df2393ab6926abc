//! Mail templates (`render`). The outbox record is `upkeep_core::mail`; the worker that sends
//! it is `runtime::mailer`.

pub mod render;
