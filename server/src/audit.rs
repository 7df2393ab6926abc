//! The audit trail: who changed what, from where, when.
//!
//! Architecture invariant: an audit record is written in the same store transaction as the
//! change it describes (a change without its record, or a record without its change, cannot be
//! left behind by a crash). Resolvers get this for free through `Ctx::save`/`Ctx::remove`, and
//! pass [`AuditEvent`]s into the other writes they make.

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorKind {
    User,
    ApiKey,
    Agent,
    System,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Time-ordered (v7): the store lists audit records in the order they happened.
    pub id: Id,
    pub at: Time,
    /// The mutation's name (`createDeployment`, `revokeApiKey`, …) or `enrollComputer`,
    /// `reenrollComputer`, `login`, `loginFailed`.
    pub action: String,
    pub actor_kind: ActorKind,
    pub actor_id: Option<Id>,
    pub actor_name: String,
    /// The caller's address, when it came over the network.
    pub address: Option<String>,
    pub tenant_id: Option<Id>,
    pub target_type: String,
    pub target_id: Option<String>,
    /// A short diff or description; secrets never appear in it.
    pub summary: String,
}

impl AuditEvent {
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
            id: Id::new(),
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
}

impl AuditEvent {
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
            id: Id::new(),
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
        computer: &crate::domain::Computer,
        key: &crate::domain::EnrollmentKey,
        reenroll: bool,
        address: Option<std::net::IpAddr>,
        at: Time,
    ) -> AuditEvent {
        AuditEvent {
            id: Id::new(),
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
}

/// Longest summary kept (a diff of a large script is cut).
pub const MAX_SUMMARY: usize = 2000;

/// Field names whose values never reach the audit trail.
const SECRET_FIELDS: &[&str] = &[
    "password_hash",
    "secret",
    "secret_hash",
    "agent_token_hash",
    "key_hash",
    "totp",
    "parameters",
];

/// A one-line description of a change from `old` to `new` (both serialised records): the
/// top-level fields that differ, with their new values (secrets shown as `<changed>`), or
/// `created` / `deleted`.
pub fn diff(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    let mut out = match (old, new) {
        (None, Some(_)) => "created".to_string(),
        (Some(_), None) => "deleted".to_string(),
        (None, None) => String::new(),
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut parts = Vec::new();
            for (k, v) in b {
                if a.get(k) == Some(v) {
                    continue;
                }
                if SECRET_FIELDS.contains(&k.as_str()) {
                    parts.push(format!("{k}: <changed>"));
                } else {
                    parts.push(format!("{k}: {}", short(v)));
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                parts.push(format!("{k}: <removed>"));
            }
            if parts.is_empty() {
                "no change".to_string()
            } else {
                parts.join("; ")
            }
        }
        (Some(_), Some(_)) => "changed".to_string(),
    };
    truncate(&mut out, MAX_SUMMARY);
    out
}

fn short(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    truncate(&mut s, 200);
    s
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_fields_and_hides_secrets() {
        let a = json!({"name": "a", "tags": ["x"], "password_hash": "h1", "same": 1});
        let b = json!({"name": "b", "tags": ["x"], "password_hash": "h2", "same": 1, "new": true});
        let d = diff(Some(&a), Some(&b));
        assert!(d.contains("name: \"b\""), "{d}");
        assert!(d.contains("password_hash: <changed>"), "{d}");
        assert!(!d.contains("h2"), "{d}");
        assert!(d.contains("new: true"), "{d}");
        assert!(!d.contains("same"), "{d}");
        assert_eq!(diff(None, Some(&b)), "created");
        assert_eq!(diff(Some(&a), None), "deleted");
        assert_eq!(diff(Some(&a), Some(&a)), "no change");
    }

    #[test]
    fn long_summaries_are_cut_on_a_char_boundary() {
        let a = json!({"body": ""});
        let b = json!({"body": "é".repeat(5000)});
        let d = diff(Some(&a), Some(&b));
        assert!(d.len() <= MAX_SUMMARY);
        assert!(d.ends_with('…'));
    }
}
