//! Typed task parameters: the definitions a maintenance task declares, the checks a
//! deployment's values pass when they are written, and the values a session freezes (defaults
//! filled in). Pure: sealing SECRET values is the server's (`upkeep_server::secrets`); here a
//! sealed value is only recognised by [`SEALED_PREFIX`].
//!
//! Architecture invariant: a parameter value that starts with [`SEALED_PREFIX`] is ciphertext
//! made by the server's key; no value written through the API may start with it
//! ([`check_plain`]), so the prefix alone says what to decrypt when a job is handed out.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most parameters one task declares.
pub const MAX_PARAMETERS: usize = 50;
/// Longest parameter name (it becomes `UPKEEP_PARAM_<NAME>`).
pub const MAX_NAME_CHARS: usize = 64;
/// Most options of one SELECT parameter.
pub const MAX_OPTIONS: usize = 100;
/// Longest option, default or plain value.
pub const MAX_VALUE_BYTES: usize = 8192;
/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Shortest SECRET value: a shorter one ("ab") could not be masked in output without masking
/// half of every line.
pub const MIN_SECRET_CHARS: usize = 4;
/// What a stored SECRET value starts with (then base64 of nonce, ciphertext and tag).
pub const SEALED_PREFIX: &str = "upkeep-sealed:v1:";
/// How the API shows a SECRET value; sent back on an update, it keeps the stored one.
pub const SECRET_MASK: &str = "********";

/// The type of a task parameter (`ParameterType` in GraphQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParameterType {
    String,
    /// A decimal number (`42`, `-1.5`).
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of `options`.
    Select,
    /// Stored encrypted, never shown again, masked in output.
    Secret,
    /// The SHA-256 (64 hex digits) of an uploaded file.
    File,
}

/// One parameter a task declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// Absent in a library file: not required.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
    /// SELECT only.
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What is wrong with a definition or a value; the text names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError(msg.into()))
}

/// A name usable as `UPKEEP_PARAM_<NAME>` on every shell: a letter, then letters, digits, `_`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_CHARS
}

pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// A value written through the API: bounded, no NUL, never looking like ciphertext.
pub fn check_plain(name: &str, value: &str) -> Result<(), ParamError> {
    if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
        return err(format!(
            "'{name}' is longer than {MAX_VALUE_BYTES} bytes or contains NUL"
        ));
    }
    if is_sealed(value) {
        return err(format!("'{name}' may not start with '{SEALED_PREFIX}'"));
    }
    Ok(())
}

/// Checks a task's definitions (at write time): names safe and unique case-insensitively,
/// options only for SELECT and then at least one, defaults of the right type (none for
/// SECRET: it would be stored in the clear), everything bounded.
pub fn check_definitions(defs: &[ParameterDefinition]) -> Result<(), ParamError> {
    if defs.len() > MAX_PARAMETERS {
        return err(format!("at most {MAX_PARAMETERS} parameters"));
    }
    let mut seen = BTreeSet::new();
    for d in defs {
        if !valid_name(&d.name) {
            return err(format!(
                "'{}' is not a parameter name: a letter, then letters, digits or _ (at most \
                 {MAX_NAME_CHARS})",
                d.name
            ));
        }
        if !seen.insert(d.name.to_ascii_uppercase()) {
            return err(format!(
                "'{}' is declared twice (names are compared ignoring case: both would be \
                 UPKEEP_PARAM_{})",
                d.name,
                d.name.to_ascii_uppercase()
            ));
        }
        check_definition(d)?;
    }
    Ok(())
}

fn check_definition(d: &ParameterDefinition) -> Result<(), ParamError> {
    let n = &d.name;
    if d.description
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        return err(format!(
            "the description of '{n}' is longer than {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    if d.kind == ParameterType::Select {
        if d.options.is_empty() || d.options.len() > MAX_OPTIONS {
            return err(format!(
                "SELECT parameter '{n}' needs 1 to {MAX_OPTIONS} options"
            ));
        }
        let mut distinct = BTreeSet::new();
        for o in &d.options {
            check_plain(n, o)?;
            if o.is_empty() || !distinct.insert(o) {
                return err(format!(
                    "the options of '{n}' must be distinct and not empty"
                ));
            }
        }
    } else if !d.options.is_empty() {
        return err(format!("only SELECT parameters have options ('{n}')"));
    }
    match (&d.default, d.kind) {
        (Some(_), ParameterType::Secret) => err(format!(
            "SECRET parameter '{n}' cannot have a default: it would be stored in the clear"
        )),
        (Some(v), _) => check_value(d, v).map(|_| ()),
        (None, _) => Ok(()),
    }
}

/// Checks one value against its definition; returns it normalised (`TRUE` → `true`, a number
/// trimmed).
pub fn check_value(d: &ParameterDefinition, value: &str) -> Result<String, ParamError> {
    let n = &d.name;
    check_plain(n, value)?;
    match d.kind {
        ParameterType::String => Ok(value.to_string()),
        ParameterType::Number => {
            let t = value.trim();
            match t.parse::<f64>() {
                Ok(x) if x.is_finite() && !t.contains(['e', 'E']) && !t.starts_with('+') => {
                    Ok(t.to_string())
                }
                _ => err(format!("'{n}' must be a number, not '{}'", short(value))),
            }
        }
        ParameterType::Boolean => match value.trim().to_ascii_lowercase().as_str() {
            b @ ("true" | "false") => Ok(b.to_string()),
            _ => err(format!(
                "'{n}' must be true or false, not '{}'",
                short(value)
            )),
        },
        ParameterType::Select => {
            if d.options.iter().any(|o| o == value) {
                Ok(value.to_string())
            } else {
                err(format!(
                    "'{n}' must be one of {}, not '{}'",
                    d.options.join(", "),
                    short(value)
                ))
            }
        }
        ParameterType::Secret => {
            if value.chars().count() < MIN_SECRET_CHARS {
                err(format!(
                    "SECRET '{n}' must have at least {MIN_SECRET_CHARS} characters (so it can be \
                     masked in output)"
                ))
            } else {
                Ok(value.to_string())
            }
        }
        ParameterType::File => {
            let t = value.trim().to_ascii_lowercase();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(t)
            } else {
                err(format!(
                    "'{n}' must be the SHA-256 of an uploaded file (64 hex digits)"
                ))
            }
        }
    }
}

fn short(v: &str) -> String {
    v.chars().take(40).collect()
}

/// Checks a deployment's values against its task's definitions (at write time), normalising
/// them. `kept` are SECRET names whose stored (sealed) value an update keeps. No definitions:
/// the task takes free-form parameters, checked by the caller as before.
pub fn check_values(
    defs: &[ParameterDefinition],
    values: BTreeMap<String, String>,
    kept: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>, ParamError> {
    if defs.is_empty() {
        return Ok(values);
    }
    let mut out = BTreeMap::new();
    for (k, v) in values {
        let Some(d) = defs.iter().find(|d| d.name == k) else {
            let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            return err(format!(
                "the task has no parameter '{k}' (it has: {})",
                known.join(", ")
            ));
        };
        out.insert(k, check_value(d, &v)?);
    }
    for d in defs {
        if d.required
            && d.default.is_none()
            && !out.contains_key(&d.name)
            && !kept.contains(&d.name)
        {
            return err(format!("the required parameter '{}' is missing", d.name));
        }
    }
    Ok(out)
}

/// The values a session runs with (when it freezes its plan): the deployment's, defaults for
/// those it leaves out, values of parameters the task no longer declares dropped. A required
/// parameter without a value, or a value its (changed) definition refuses, is an error: the
/// session fails that item and runs none of its scripts. Sealed values pass unchecked (they
/// were checked before they were sealed).
pub fn resolve(
    defs: &[ParameterDefinition],
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ParamError> {
    if defs.is_empty() {
        return Ok(values.clone());
    }
    let mut out = BTreeMap::new();
    for d in defs {
        match (values.get(&d.name), &d.default) {
            (Some(v), _) if is_sealed(v) => {
                out.insert(d.name.clone(), v.clone());
            }
            (Some(v), _) => {
                out.insert(d.name.clone(), check_value(d, v)?);
            }
            (None, Some(def)) => {
                out.insert(d.name.clone(), def.clone());
            }
            (None, None) if d.required => {
                return err(format!(
                    "the required parameter '{}' has no value in the deployment",
                    d.name
                ));
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

/// A deployment's parameters as the API shows them: sealed (SECRET) values as [`SECRET_MASK`].
pub fn shown(values: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|(k, v)| {
            let v = if is_sealed(v) {
                SECRET_MASK
            } else {
                v.as_str()
            };
            (k.clone(), v.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, kind: ParameterType) -> ParameterDefinition {
        ParameterDefinition {
            name: name.into(),
            kind,
            required: false,
            default: None,
            options: vec![],
            description: None,
        }
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn definitions_are_checked() {
        assert!(check_definitions(&[def("zone", ParameterType::String)]).is_ok());
        for bad in ["", "1abc", "a-b", "a b", &"x".repeat(65)] {
            assert!(
                check_definitions(&[def(bad, ParameterType::String)]).is_err(),
                "{bad}"
            );
        }
        let dup = check_definitions(&[
            def("Zone", ParameterType::String),
            def("zone", ParameterType::Number),
        ])
        .unwrap_err();
        assert!(dup.0.contains("UPKEEP_PARAM_ZONE"), "{dup}");
        let select = def("s", ParameterType::Select);
        assert!(check_definitions(std::slice::from_ref(&select)).is_err());
        let mut good = select.clone();
        good.options = vec!["a".into(), "b".into()];
        good.default = Some("b".into());
        assert!(check_definitions(std::slice::from_ref(&good)).is_ok());
        good.default = Some("c".into());
        assert!(check_definitions(&[good]).is_err());
        let mut n = def("n", ParameterType::Number);
        n.default = Some("ten".into());
        assert!(check_definitions(std::slice::from_ref(&n)).is_err());
        n.default = Some("10".into());
        assert!(check_definitions(&[n]).is_ok());
        let mut s = def("pw", ParameterType::Secret);
        s.default = Some("hunter22".into());
        assert!(check_definitions(&[s]).unwrap_err().0.contains("clear"));
        let mut opts = def("o", ParameterType::String);
        opts.options = vec!["a".into()];
        assert!(check_definitions(&[opts]).is_err());
        let many: Vec<_> = (0..=MAX_PARAMETERS)
            .map(|i| def(&format!("p{i}"), ParameterType::String))
            .collect();
        assert!(check_definitions(&many).is_err());
    }

    #[test]
    fn values_are_typed_and_required_ones_named() {
        let mut zone = def("zone", ParameterType::String);
        zone.required = true;
        let mut level = def("level", ParameterType::Select);
        level.options = vec!["low".into(), "high".into()];
        let defs = vec![
            zone,
            def("count", ParameterType::Number),
            def("on", ParameterType::Boolean),
            level,
            def("pw", ParameterType::Secret),
            def("file", ParameterType::File),
        ];
        let none = BTreeSet::new();
        let e = check_values(&defs, map(&[("count", "1")]), &none).unwrap_err();
        assert!(e.0.contains("'zone'") && e.0.contains("required"), "{e}");
        let ok = check_values(
            &defs,
            map(&[
                ("zone", "UTC"),
                ("count", " 2.5 "),
                ("on", "TRUE"),
                ("level", "low"),
            ]),
            &none,
        )
        .unwrap();
        assert_eq!(
            ok,
            map(&[
                ("zone", "UTC"),
                ("count", "2.5"),
                ("on", "true"),
                ("level", "low")
            ])
        );
        for (k, v) in [
            ("count", "many"),
            ("count", "1e400"),
            ("on", "yes"),
            ("level", "mid"),
            ("pw", "abc"),
            ("file", "abc"),
            ("nope", "x"),
            ("zone", "upkeep-sealed:v1:AAAA"),
        ] {
            let e = check_values(&defs, map(&[("zone", "UTC"), (k, v)]), &none).unwrap_err();
            assert!(e.0.contains(k), "{k}={v}: {e}");
        }
        // An update that keeps a stored required secret needs not resend it.
        let mut pw = def("pw", ParameterType::Secret);
        pw.required = true;
        let kept = BTreeSet::from(["pw".to_string()]);
        assert!(check_values(std::slice::from_ref(&pw), map(&[]), &kept).is_ok());
        assert!(check_values(&[pw], map(&[]), &none).is_err());
        // No definitions: free-form, as before typed parameters.
        assert_eq!(
            check_values(&[], map(&[("x", "y")]), &none).unwrap(),
            map(&[("x", "y")])
        );
    }

    #[test]
    fn resolving_fills_defaults_and_refuses_what_changed_definitions_break() {
        let mut zone = def("zone", ParameterType::String);
        zone.default = Some("UTC".into());
        let mut need = def("need", ParameterType::Number);
        need.required = true;
        let defs = vec![zone, need.clone(), def("pw", ParameterType::Secret)];
        let sealed = format!("{SEALED_PREFIX}abcd");
        let r = resolve(
            &defs,
            &map(&[("need", "3"), ("gone", "x"), ("pw", &sealed)]),
        )
        .unwrap();
        assert_eq!(r, map(&[("zone", "UTC"), ("need", "3"), ("pw", &sealed)]));
        let e = resolve(&defs, &map(&[])).unwrap_err();
        assert!(e.0.contains("'need'"), "{e}");
        let e = resolve(&defs, &map(&[("need", "three")])).unwrap_err();
        assert!(e.0.contains("'need'"), "{e}");
    }
}
