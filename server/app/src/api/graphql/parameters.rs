//! Typed task parameters over GraphQL: the definition input and view, and a deployment's
//! values checked against its task's definitions, SECRET ones sealed before they are stored.

use super::enums::ParameterType;
use super::types::View;
use crate::error::{ApiError, ApiResult};
use crate::secrets::SecretBox;
use async_graphql::{InputObject, Object};
use std::collections::{BTreeMap, BTreeSet};
use upkeep_core::domain::MaintenanceTask;
use upkeep_core::params::{self, ParameterDefinition, SECRET_MASK};

/// One parameter of a maintenance task; a deployment's value reaches the task's scripts as
/// `UPKEEP_PARAM_<NAME>` (name upper-cased).
#[derive(InputObject)]
pub struct ParameterDefinitionInput {
    /// A letter, then letters, digits or `_` (at most 64); unique ignoring case.
    pub name: String,
    /// Its type.
    #[graphql(name = "type")]
    pub kind: ParameterType,
    /// A deployment must give a value unless there is a default.
    #[graphql(default)]
    pub required: bool,
    /// Of the parameter's type; SECRET parameters have none.
    pub default: Option<String>,
    /// SELECT only: the values allowed.
    #[graphql(validator(max_items = 100))]
    pub options: Option<Vec<String>>,
    /// What it is for.
    pub description: Option<String>,
}

/// The definitions of `parameters` (the input field), checked.
pub fn definitions(
    input: Option<&[ParameterDefinitionInput]>,
) -> ApiResult<Vec<ParameterDefinition>> {
    let defs: Vec<ParameterDefinition> = input
        .unwrap_or_default()
        .iter()
        .map(|p| ParameterDefinition {
            name: p.name.trim().to_string(),
            kind: p.kind.into(),
            required: p.required,
            default: p.default.clone(),
            options: p.options.clone().unwrap_or_default(),
            description: p.description.clone().filter(|d| !d.trim().is_empty()),
        })
        .collect();
    params::check_definitions(&defs).map_err(|e| ApiError::bad("parameters", e.0))?;
    Ok(defs)
}

/// A parameter of a maintenance task: its scripts read the value as `UPKEEP_PARAM_<NAME>`.
#[Object(name = "ParameterDefinition")]
impl View<ParameterDefinition> {
    /// The parameter's name (`A-Z`, `0-9`, `_`).
    async fn name(&self) -> &str {
        &self.name
    }
    /// Its type.
    #[graphql(name = "type")]
    async fn kind(&self) -> ParameterType {
        self.kind.into()
    }
    /// True: a deployment must give a value (or the default is used).
    async fn required(&self) -> bool {
        self.required
    }
    /// The value used when a deployment gives none (never shown for `SECRET`).
    async fn default(&self) -> Option<&str> {
        self.default.as_deref()
    }
    /// SELECT: the values allowed; empty for other types.
    async fn options(&self) -> &[String] {
        &self.options
    }
    /// What it is for.
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

/// A deployment's parameters as stored: `given` (the input's values, already bounded and
/// named by `inputs::parameters`) checked against `task`'s definitions and normalised, SECRET
/// values sealed. On an update, `stored` are the values before it: a SECRET left out, or sent
/// back as `********`, keeps its sealed value. No task, or a task without definitions:
/// free-form values, as before typed parameters.
pub fn deployment_values(
    sealing: &SecretBox,
    task: Option<&MaintenanceTask>,
    mut given: BTreeMap<String, String>,
    stored: Option<&BTreeMap<String, String>>,
) -> ApiResult<BTreeMap<String, String>> {
    let bad = |e: params::ParamError| ApiError::bad("parameters", e.0);
    let defs = task.map(|t| t.parameters.as_slice()).unwrap_or_default();
    let mut kept = BTreeMap::new();
    for d in defs
        .iter()
        .filter(|d| d.kind == params::ParameterType::Secret)
    {
        let old = stored
            .and_then(|s| s.get(&d.name))
            .filter(|v| params::is_sealed(v));
        let resent = given.get(&d.name).is_none_or(|v| v == SECRET_MASK);
        match (old, resent) {
            (Some(old), true) => {
                given.remove(&d.name);
                kept.insert(d.name.clone(), old.clone());
            }
            (None, true) if given.contains_key(&d.name) => {
                return Err(ApiError::bad(
                    "parameters",
                    format!(
                        "'{}' has no stored value to keep: send the secret, not {SECRET_MASK}",
                        d.name
                    ),
                ));
            }
            _ => {}
        }
    }
    for (k, v) in &given {
        params::check_plain(k, v).map_err(bad)?;
    }
    let kept_names: BTreeSet<String> = kept.keys().cloned().collect();
    let mut out = params::check_values(defs, given, &kept_names).map_err(bad)?;
    for d in defs
        .iter()
        .filter(|d| d.kind == params::ParameterType::Secret)
    {
        if let Some(v) = out.get_mut(&d.name) {
            *v = sealing
                .seal(&d.name, v)
                .map_err(|e| ApiError::internal(e))?;
        }
    }
    out.extend(kept);
    Ok(out)
}
