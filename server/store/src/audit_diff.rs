//! The audit summary of a change: which top-level fields of a record differ.

use upkeep_core::audit::truncate;

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
