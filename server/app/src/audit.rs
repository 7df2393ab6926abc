//! Audit records as the API builds them: from the actor, a sign-in or an enrollment. The record
//! type and its invariant live in `upkeep_core::audit`; the store writes it with the change.

use upkeep_core::audit::{ActorKind, AuditEvent, truncate};
use upkeep_core::domain::{Computer, EnrollmentKey, Id, Time};

/// An event by an API caller, to be completed by the store from the change it describes.
pub fn by_actor(
    actor: &crate::auth::Actor,
    action: &str,
    address: Option<std::net::IpAddr>,
    at: Time,
) -> AuditEvent {
    let (actor_kind, actor_id) = match &actor.principal {
        crate::auth::Principal::User { id, .. } => (ActorKind::User, *id),
        crate::auth::Principal::ApiKey { id, .. } => (ActorKind::ApiKey, *id),
    };
    AuditEvent {
        id: crate::ids::fresh(),
        at,
        action: action.to_string(),
        actor_kind,
        actor_id: Some(actor_id),
        actor_name: actor.display(),
        address: address.map(|a| a.to_string()),
        tenant_id: None,
        target_type: String::new(),
        target_id: None,
        summary: String::new(),
    }
}

/// A sign-in (`login`) or a refused one (`loginFailed`; `user` is the account it named,
/// if any: its id and tenant).
pub fn login(
    user: Option<(Id, Option<Id>)>,
    email: &str,
    action: &str,
    address: Option<std::net::IpAddr>,
    at: Time,
) -> AuditEvent {
    let mut name = crate::logsafe::log_value(email);
    truncate(&mut name, 320);
    AuditEvent {
        id: crate::ids::fresh(),
        at,
        action: action.to_string(),
        actor_kind: ActorKind::User,
        actor_id: user.map(|u| u.0),
        actor_name: name,
        address: address.map(|a| a.to_string()),
        tenant_id: user.and_then(|u| u.1),
        target_type: "User".into(),
        target_id: user.map(|u| u.0.to_string()),
        summary: match action {
            "login" => "signed in".into(),
            _ => "sign-in refused".into(),
        },
    }
}

/// A computer enrolling (`enrollComputer`) or enrolling again (`reenrollComputer`).
pub fn enrollment(
    computer: &Computer,
    key: &EnrollmentKey,
    reenroll: bool,
    address: Option<std::net::IpAddr>,
    at: Time,
) -> AuditEvent {
    AuditEvent {
        id: crate::ids::fresh(),
        at,
        action: if reenroll {
            "reenrollComputer"
        } else {
            "enrollComputer"
        }
        .into(),
        actor_kind: ActorKind::Agent,
        actor_id: Some(computer.id),
        actor_name: crate::logsafe::log_value(&computer.hostname),
        address: address.map(|a| a.to_string()),
        tenant_id: Some(computer.tenant_id),
        target_type: "Computer".into(),
        target_id: Some(computer.id.to_string()),
        summary: format!(
            "{} with enrollment key {}{}",
            if reenroll {
                "enrolled again"
            } else {
                "enrolled"
            },
            key.label
                .as_deref()
                .map(crate::logsafe::log_value)
                .unwrap_or_default(),
            format_args!(" ({})", key.id)
        ),
    }
}
