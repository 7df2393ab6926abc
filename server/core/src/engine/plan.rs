//! Planning: from a frozen deployment and what detection found, the action to take and why.
//! Also the compliance check that verification and detection-only sessions use. Pure.

use crate::domain::*;
use crate::session::*;
use crate::version::compare;
use std::collections::BTreeMap;
use upkeep_agent_protocol::{ProbeResult, ScriptOutcome};

/// Whether a deployment takes part in a session started by `trigger`: the `named` ones when a
/// start names deployments (`AD_HOC` ones included), else the `REQUIRED` ones, and the
/// `ONBOARDING` ones in an onboarding session.
pub fn applies(d: &Deployment, trigger: SessionTrigger, named: Option<&[Id]>) -> bool {
    match named {
        Some(ids) => ids.contains(&d.id),
        None => match d.enforcement {
            Enforcement::Required => true,
            Enforcement::Onboarding => trigger == SessionTrigger::Onboarding,
            Enforcement::AdHoc => false,
        },
    }
}

/// The plan items of a session: `applicable` deployments resolved for `computer` (exceptions
/// dropped), each frozen with the snapshot of its software or task (`software` and `task` look
/// them up; an item whose subject is gone is left out), in run order: onboarding deployments
/// first, then BEGINNING by position, the unordered middle, END by position; ties keep
/// deployment creation order.
pub fn freeze_items<E>(
    computer: &Computer,
    applicable: &[Deployment],
    mut software: impl FnMut(Id) -> Result<Option<SoftwareSnapshot>, E>,
    mut task: impl FnMut(Id) -> Result<Option<TaskSnapshot>, E>,
) -> Result<Vec<PlanItem>, E> {
    let mut items = Vec::new();
    let mut excepted = std::collections::BTreeSet::new();
    for r in crate::resolve::resolve(computer, applicable) {
        if r.is_exception() {
            if let Subject::Software(sid) = r.subject {
                excepted.insert(sid);
            }
            continue;
        }
        let d = r.winner;
        let what = match r.subject {
            Subject::Software(sid) => {
                let Some(software) = software(sid)? else {
                    continue;
                };
                ItemWhat::Software {
                    software,
                    desired: d
                        .desired_state
                        .unwrap_or(DesiredSoftwareState::InstalledLatest),
                    version: d.version.clone(),
                }
            }
            Subject::Task(tid) => {
                let Some(task) = task(tid)? else {
                    continue;
                };
                ItemWhat::Task {
                    task,
                    mode: d.task_mode,
                }
            }
        };
        // Typed parameters are resolved now, against the definitions frozen with the task: a
        // deployment that no longer satisfies them (the task changed after it was written)
        // fails its item rather than run a script without a required value.
        let (parameters, invalid) = match &what {
            ItemWhat::Task { task, .. } => {
                match crate::params::resolve(&task.parameters, &d.parameters) {
                    Ok(p) => (p, None),
                    Err(e) => (Default::default(), Some(format!("parameters: {e}"))),
                }
            }
            ItemWhat::Software { .. } => (d.parameters.clone(), None),
        };
        items.push(PlanItem {
            deployment_id: d.id,
            order: d.order,
            position: d.position,
            enforcement: d.enforcement,
            parameters,
            invalid,
            what,
            rule: r.rule,
            prerequisites: vec![],
            needed_by: None,
        });
    }
    items.sort_by_key(|i| {
        (
            i.enforcement != Enforcement::Onboarding,
            i.order,
            if i.order == DeploymentOrder::Unordered {
                0
            } else {
                i.position
            },
            i.deployment_id,
        )
    });
    with_prerequisites(items, &excepted, &mut software)
}

/// [`freeze_items`] for many computers at once (a schedule firing for a fleet), on up to
/// `threads` threads (`std::thread::scope`; no runtime), each taking an equal run of
/// `computers`. The result is in `computers`' order and the same as calling `freeze_items`
/// for each; the first error (in that order) is returned.
pub fn freeze_many<E: Send>(
    computers: &[Computer],
    applicable: &[Deployment],
    software: impl Fn(Id) -> Result<Option<SoftwareSnapshot>, E> + Sync,
    task: impl Fn(Id) -> Result<Option<TaskSnapshot>, E> + Sync,
    threads: usize,
) -> Result<Vec<Vec<PlanItem>>, E> {
    let one = |c: &Computer| freeze_items(c, applicable, &software, &task);
    let threads = threads.clamp(1, computers.len().max(1));
    if threads == 1 {
        return computers.iter().map(one).collect();
    }
    let per = computers.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Vec<PlanItem>>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = computers
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(one).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(computers.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Most prerequisites one software may bring in, transitively (a chain gone wrong, not a
/// real catalogue).
pub const MAX_PREREQUISITES: usize = 32;

/// Whether a deployment in this state installs the software, and so needs its prerequisites.
fn installs(desired: DesiredSoftwareState) -> bool {
    matches!(
        desired,
        DesiredSoftwareState::InstalledLatest
            | DesiredSoftwareState::InstalledVersion
            | DesiredSoftwareState::InstalledAtLeast
            | DesiredSoftwareState::InstalledAny
    )
}

/// The plan with each installing software item's prerequisites before it: an item of their
/// own when the computer has a deployment for one (moved up if it came later), else a new item
/// ("needed by X", any version, latest when missing). Software an exception leaves alone is not
/// brought in. Each item records all it needs (`prerequisites`), so execution can skip it when
/// one failed.
fn with_prerequisites<E>(
    items: Vec<PlanItem>,
    excepted: &std::collections::BTreeSet<Id>,
    software: &mut impl FnMut(Id) -> Result<Option<SoftwareSnapshot>, E>,
) -> Result<Vec<PlanItem>, E> {
    let mut out: Vec<PlanItem> = Vec::with_capacity(items.len());
    let mut own: Vec<Option<PlanItem>> = items.into_iter().map(Some).collect();
    for i in 0..own.len() {
        let Some(mut item) = own[i].take() else {
            continue; // moved up as a prerequisite
        };
        let chain = match &item.what {
            ItemWhat::Software {
                software: sw,
                desired,
                ..
            } if installs(*desired) => prerequisite_chain(sw, software)?,
            _ => vec![],
        };
        // Named only when the item has prerequisites (most have none).
        let needer = if chain.is_empty() {
            String::new()
        } else {
            item_software_name(&item)
        };
        for dep in chain.iter().filter(|d| !excepted.contains(&d.id)) {
            if out.iter().any(|o| software_of(o) == Some(dep.id)) {
                continue;
            }
            let moved = own
                .iter_mut()
                .find(|o| o.as_ref().and_then(software_of) == Some(dep.id))
                .and_then(Option::take);
            let dep_item = match moved {
                Some(mut m) => {
                    m.prerequisites = prerequisite_chain(dep, software)?
                        .iter()
                        .map(|d| d.id)
                        .collect();
                    m
                }
                None => PlanItem {
                    deployment_id: item.deployment_id,
                    order: item.order,
                    position: item.position,
                    enforcement: item.enforcement,
                    parameters: BTreeMap::new(),
                    what: ItemWhat::Software {
                        software: dep.clone(),
                        desired: DesiredSoftwareState::InstalledAny,
                        version: None,
                    },
                    rule: format!("needed by {needer}"),
                    needed_by: Some(needer.clone()),
                    invalid: None,
                    prerequisites: prerequisite_chain(dep, software)?
                        .iter()
                        .map(|d| d.id)
                        .collect(),
                },
            };
            out.push(dep_item);
        }
        item.prerequisites = chain.iter().map(|d| d.id).collect();
        out.push(item);
    }
    Ok(out)
}

fn software_of(item: &PlanItem) -> Option<Id> {
    match &item.what {
        ItemWhat::Software { software, .. } => Some(software.id),
        ItemWhat::Task { .. } => None,
    }
}

fn item_software_name(item: &PlanItem) -> String {
    match &item.what {
        ItemWhat::Software { software, .. } => software.name.clone(),
        ItemWhat::Task { task, .. } => task.name.clone(),
    }
}

/// `sw`'s prerequisites, transitively, deepest first (each before what needs it), each once;
/// software that no longer exists is left out, and a cycle (refused at write time, so only from
/// an old record) ends where it closes.
fn prerequisite_chain<E>(
    sw: &SoftwareSnapshot,
    software: &mut impl FnMut(Id) -> Result<Option<SoftwareSnapshot>, E>,
) -> Result<Vec<SoftwareSnapshot>, E> {
    fn visit<E>(
        sw: &SoftwareSnapshot,
        software: &mut impl FnMut(Id) -> Result<Option<SoftwareSnapshot>, E>,
        seen: &mut std::collections::BTreeSet<Id>,
        out: &mut Vec<SoftwareSnapshot>,
    ) -> Result<(), E> {
        for dep in &sw.depends_on {
            if out.len() >= MAX_PREREQUISITES || !seen.insert(*dep) {
                continue;
            }
            if let Some(d) = software(*dep)? {
                visit(&d, software, seen, out)?;
                out.push(d);
            }
        }
        Ok(())
    }
    if sw.depends_on.is_empty() {
        return Ok(Vec::new()); // most software: no set to allocate
    }
    let mut seen = std::collections::BTreeSet::from([sw.id]);
    let mut out = Vec::new();
    visit(sw, software, &mut seen, &mut out)?;
    Ok(out)
}

/// What detection found for one plan item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// Installed version (software), `None` when not installed.
    pub version: Option<String>,
    /// Detection could not say (script error for a task test, missing probe).
    pub detection_error: Option<String>,
    /// Result of a task test (task items) or of the configuration task test (software items):
    /// `Some(true)` compliant, `Some(false)` not, `None` unknown/not run.
    pub test: Option<bool>,
    pub test_error: Option<String>,
    /// What a task's get script printed (first line, trimmed, at most
    /// [`MAX_CURRENT_VALUE_CHARS`]); `None` when it printed nothing or did not run.
    pub current_value: Option<String>,
    /// The get script failed (it never fails the item: the value is only shown).
    pub get_error: Option<String>,
}

/// Longest current value kept from a get script.
pub const MAX_CURRENT_VALUE_CHARS: usize = 200;

pub fn probe_ids(item: usize) -> (String, String, String) {
    (format!("d{item}"), format!("c{item}"), format!("t{item}"))
}

/// The probe of an item's versions script.
pub fn versions_probe_id(item: usize) -> String {
    format!("v{item}")
}

/// The probe id of a task item's get script (beside its test, `t{item}`).
pub fn get_probe_id(item: usize) -> String {
    format!("g{item}")
}

/// Reads one item's findings out of a probe job's results.
pub fn found(item: usize, results: &BTreeMap<String, ScriptOutcome>) -> Found {
    let (d, c, t) = probe_ids(item);
    let mut f = Found::default();
    if let Some(o) = results.get(&d) {
        // Detection: first line of stdout is the version; empty output, or a non-zero exit
        // with nothing on stderr, means not installed. A non-zero exit that says something on
        // stderr, or a timeout, is a failed detection: nothing may be installed or removed on
        // its word (CONTRACT §12, `DETECTION_FAILED`).
        if o.exit_code == Some(0) && !o.timed_out {
            f.version = o
                .stdout
                .lines()
                .next()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from);
        } else if o.exit_code.is_none() || o.timed_out || !o.stderr.trim().is_empty() {
            f.detection_error = Some(describe_failure("detection script", o));
        }
    } else if !results.contains_key(&t) {
        // Neither a detection nor a task test result: the agent left this item out. That is
        // "could not detect", never "not installed" (which would install over it, or verify an
        // uninstall that did not happen).
        f.detection_error = Some("the agent sent no result for it".into());
    }
    for key in [&c, &t] {
        if let Some(o) = results.get(key) {
            match o.exit_code {
                Some(0) => f.test = Some(true),
                Some(1) => f.test = Some(false),
                _ => f.test_error = Some(describe_failure("test script", o)),
            }
        }
    }
    if let Some(o) = results.get(&get_probe_id(item)) {
        if o.exit_code == Some(0) && !o.timed_out {
            f.current_value = o
                .stdout
                .lines()
                .next()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.chars().take(MAX_CURRENT_VALUE_CHARS).collect());
        } else {
            f.get_error = Some(describe_failure("get script", o));
        }
    }
    f
}

pub fn results_map(results: &[ProbeResult]) -> BTreeMap<String, ScriptOutcome> {
    results
        .iter()
        .map(|r| (r.probe_id.clone(), r.outcome.clone()))
        .collect()
}

pub fn describe_failure(what: &str, o: &ScriptOutcome) -> String {
    let detail = o
        .error
        .clone()
        .or_else(|| last_line(&o.stderr))
        .or_else(|| last_line(&o.stdout));
    let head = match (o.exit_code, o.timed_out) {
        (_, true) => format!("{what} timed out"),
        (Some(c), _) => format!("{what} exited {c}"),
        (None, _) => format!("{what} did not run"),
    };
    match detail {
        Some(d) => format!("{head}: {d}"),
        None => head,
    }
}

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}

/// Is the software in its desired state given the installed version? An installed version
/// that detection printed without a version in it (`version::detected` is `None`) is unknown:
/// it meets no version requirement, so an install or upgrade is planned.
/// `latest` is `latest(sw)`, computed once by the caller (planning asks twice per item).
fn software_state_ok(
    latest: Option<&str>,
    desired: DesiredSoftwareState,
    version: Option<&str>,
    installed: Option<&str>,
) -> bool {
    let unknown = installed.is_some_and(|v| crate::version::detected(v).is_none());
    let needs_version = match desired {
        DesiredSoftwareState::InstalledLatest | DesiredSoftwareState::UpdateIfFound => {
            latest.is_some()
        }
        DesiredSoftwareState::InstalledVersion => true,
        DesiredSoftwareState::InstalledAtLeast => version.is_some(),
        DesiredSoftwareState::InstalledAny
        | DesiredSoftwareState::Uninstalled
        | DesiredSoftwareState::Ignore => false,
    };
    if unknown && needs_version {
        return false;
    }
    match desired {
        DesiredSoftwareState::InstalledLatest => match (installed, latest) {
            (Some(v), Some(l)) => compare(v, l).is_ge(),
            (Some(_), None) => true,
            (None, _) => false,
        },
        DesiredSoftwareState::InstalledVersion => match (installed, version) {
            (Some(v), Some(x)) => compare(v, x).is_eq(),
            _ => false,
        },
        DesiredSoftwareState::InstalledAtLeast => match (installed, version) {
            (Some(v), Some(x)) => compare(v, x).is_ge(),
            (Some(_), None) => true,
            (None, _) => false,
        },
        DesiredSoftwareState::InstalledAny => installed.is_some(),
        DesiredSoftwareState::UpdateIfFound => match (installed, latest) {
            (Some(v), Some(l)) => compare(v, l).is_ge(),
            _ => true,
        },
        DesiredSoftwareState::Uninstalled => installed.is_none(),
        DesiredSoftwareState::Ignore => true,
    }
}

pub fn latest(sw: &SoftwareSnapshot) -> Option<&str> {
    sw.versions
        .iter()
        .map(|v| v.version.as_str())
        .max_by(|a, b| compare(a, b))
}

fn version_entry<'a>(sw: &'a SoftwareSnapshot, v: &str) -> Option<&'a SoftwareVersion> {
    sw.versions.iter().find(|x| compare(&x.version, v).is_eq())
}

/// Whether an item is compliant given findings: the desired software state and, where the
/// software has a configuration task and is installed, that task's test. Used after execution
/// (verification) and by detection-only sessions.
pub fn compliance(item: &PlanItem, f: &Found) -> Compliance {
    let ok = match &item.what {
        ItemWhat::Software {
            software,
            desired,
            version,
        } => software_state_ok(
            latest(software),
            *desired,
            version.as_deref(),
            f.version.as_deref(),
        ),
        ItemWhat::Task { .. } => true,
    };
    compliance_given(item, f, ok)
}

/// [`compliance`] with the software state already decided (`ok`; ignored for a task).
fn compliance_given(item: &PlanItem, f: &Found, ok: bool) -> Compliance {
    if f.detection_error.is_some() {
        return Compliance::Unknown;
    }
    let test = || match (f.test, &f.test_error) {
        (Some(true), _) => Compliance::Compliant,
        (Some(false), _) => Compliance::NonCompliant,
        _ => Compliance::Unknown,
    };
    match &item.what {
        ItemWhat::Software {
            software, desired, ..
        } => {
            if !ok {
                return Compliance::NonCompliant;
            }
            if f.version.is_some()
                && software.configuration_task.is_some()
                && *desired != DesiredSoftwareState::Uninstalled
            {
                return test();
            }
            Compliance::Compliant
        }
        ItemWhat::Task { .. } => test(),
    }
}

/// A software item's latest version and whether its state is as desired, decided once per
/// action: planning runs for every item of every computer, and the version comparisons were
/// the larger part of it. `(None, true)` for a task.
fn decided<'a>(item: &'a PlanItem, f: &Found) -> (Option<&'a str>, bool) {
    match &item.what {
        ItemWhat::Software {
            software,
            desired,
            version,
        } => {
            let latest = latest(software);
            let ok = software_state_ok(latest, *desired, version.as_deref(), f.version.as_deref());
            (latest, ok)
        }
        ItemWhat::Task { .. } => (None, true),
    }
}

/// The action for one item: its kind, the steps that execution runs, and a reason a technician
/// understands.
pub fn plan(item_index: usize, item: &PlanItem, f: &Found, id: Id) -> Action {
    let (latest, ok) = decided(item, f);
    let mut a = Action {
        id,
        item: item_index,
        kind: ActionKind::NoAction,
        status: ActionStatus::Pending,
        compliance: compliance_given(item, f, ok),
        desired_version: None,
        detected_version: f.version.clone(),
        detected_version_before: f.version.clone(),
        detected_version_after: None,
        result_message: None,
        current_value: f.current_value.clone(),
        reason: String::new(),
        started_at: None,
        finished_at: None,
        steps: vec![],
        next_step: 0,
        step_failed: false,
        reboot_required: false,
    };
    if let Some(why) = &item.invalid {
        // Nothing of this item ran (its probes were not sent): it fails, naming why.
        a.reason = format!("not run: {why}");
        a.result_message = Some(a.reason.clone());
        a.compliance = Compliance::Unknown;
        a.step_failed = true;
        return a;
    }
    if let Some(e) = &f.detection_error {
        a.reason = format!("detection could not run: {e}");
        a.result_message = Some(a.reason.clone());
        a.status = ActionStatus::DetectionFailed;
        return a;
    }
    // A task whose test could not decide (it timed out, or exited other than 0 or 1) failed
    // its detection the same way.
    // (A MONITOR task only reports it: see `plan_task`.)
    if let (ItemWhat::Task { mode, .. }, None, Some(e)) = (&item.what, f.test, &f.test_error)
        && !matches!(mode, TaskMode::Ignore | TaskMode::Monitor)
    {
        a.reason = format!("test could not decide: {e}");
        a.result_message = Some(a.reason.clone());
        a.status = ActionStatus::DetectionFailed;
        return a;
    }
    match &item.what {
        ItemWhat::Software {
            software,
            desired,
            version,
        } => plan_software(
            &mut a,
            software,
            SoftwareWish {
                desired: *desired,
                version: version.as_deref(),
                latest,
                ok,
            },
            f,
        ),
        ItemWhat::Task { task, mode } => {
            plan_task(&mut a, task, *mode, f);
            match (&f.current_value, &f.get_error) {
                (Some(v), _) => a.reason.push_str(&format!(" (current value: {v})")),
                (None, Some(e)) => a.reason.push_str(&format!(" ({e})")),
                (None, None) => {}
            }
        }
    }
    if let Some(needer) = &item.needed_by {
        a.reason = format!("needed by {needer}: {}", a.reason);
    }
    a
}

/// What a software item wants, with what `plan` already decided about it.
struct SoftwareWish<'a> {
    desired: DesiredSoftwareState,
    version: Option<&'a str>,
    /// `latest(sw)`.
    latest: Option<&'a str>,
    /// `software_state_ok` for what detection found.
    ok: bool,
}

fn plan_software(a: &mut Action, sw: &SoftwareSnapshot, wish: SoftwareWish<'_>, f: &Found) {
    let SoftwareWish {
        desired,
        version,
        latest,
        ok,
    } = wish;
    let installed = f.version.as_deref();
    let target: Option<&str> = match desired {
        DesiredSoftwareState::InstalledVersion => version,
        DesiredSoftwareState::Uninstalled | DesiredSoftwareState::Ignore => None,
        _ => latest,
    };
    a.desired_version = target.map(String::from);
    let latest_s = latest.unwrap_or("none");
    if ok {
        explain_compliant(a, sw, desired, version, installed, latest_s, f);
        return;
    }
    plan_software_change(a, sw, desired, version, installed, target, latest_s);
}

/// The reason of a software action with nothing to change, and the configuration task's test
/// step when the task is not known to be compliant.
fn explain_compliant(
    a: &mut Action,
    sw: &SoftwareSnapshot,
    desired: DesiredSoftwareState,
    version: Option<&str>,
    installed: Option<&str>,
    latest_s: &str,
    f: &Found,
) {
    a.reason = match (desired, installed) {
        (DesiredSoftwareState::Uninstalled, _) => "not installed, as desired".into(),
        (DesiredSoftwareState::UpdateIfFound, None) => {
            "not installed; only updated where found".into()
        }
        (DesiredSoftwareState::InstalledAtLeast, Some(v)) => format!(
            "{v} installed, at least {} wanted",
            version.unwrap_or("any")
        ),
        (DesiredSoftwareState::InstalledAny, Some(v)) => {
            format!("{v} installed; any version will do")
        }
        (DesiredSoftwareState::InstalledVersion, Some(v)) => {
            format!("{v} installed, as desired")
        }
        (_, Some(v)) => format!("{v} installed, latest is {latest_s}"),
        (_, None) => "nothing to do".into(),
    };
    if installed.is_some()
        && desired != DesiredSoftwareState::Uninstalled
        && let Some(task) = &sw.configuration_task
    {
        match f.test {
            Some(true) => a.reason.push_str(&format!("; {} is compliant", task.name)),
            _ => {
                a.kind = ActionKind::RunTask;
                a.reason.push_str(&format!(
                    "; configuration task {} is not compliant",
                    task.name
                ));
                a.steps.push(Step::TestThenSet { task: task.clone() });
            }
        }
    }
}

/// The install, upgrade or uninstall steps (and their reason) that bring the software from
/// `installed` to `desired`; `v_target` is the version wanted.
// long: one match over (desired, installed), an arm per case; it reads best whole.
fn plan_software_change(
    a: &mut Action,
    sw: &SoftwareSnapshot,
    desired: DesiredSoftwareState,
    version: Option<&str>,
    installed: Option<&str>,
    v_target: Option<&str>,
    latest_s: &str,
) {
    match (desired, installed) {
        (DesiredSoftwareState::Uninstalled, Some(v)) => {
            a.kind = ActionKind::Uninstall;
            a.reason = format!("{v} installed; should not be");
            match &sw.uninstall_script {
                Some(s) => a.steps.push(Step::Script {
                    label: format!("uninstall {}", sw.name),
                    script: s.clone(),
                    version: None,
                    installer: None,
                }),
                None => {
                    a.result_message = Some(format!("{} has no uninstall script", sw.name));
                    a.step_failed = true;
                }
            }
            return;
        }
        (_, None) => {
            a.kind = ActionKind::Install;
            a.reason = match desired {
                DesiredSoftwareState::InstalledVersion => {
                    format!("not installed; {} wanted", v_target.unwrap_or("?"))
                }
                _ => format!("not installed; latest is {latest_s}"),
            };
            push_install(a, sw, v_target);
        }
        (DesiredSoftwareState::InstalledVersion, Some(v))
            if v_target.is_some_and(|t| compare(v, t).is_gt()) =>
        {
            a.kind = ActionKind::Install;
            a.reason = format!(
                "{v} installed, newer than the wanted {}: uninstall, then install",
                v_target.unwrap_or("?")
            );
            match &sw.uninstall_script {
                Some(s) => a.steps.push(Step::Script {
                    label: format!("uninstall {} {v}", sw.name),
                    script: s.clone(),
                    version: None,
                    installer: None,
                }),
                None => {
                    a.result_message = Some(format!(
                        "{} has no uninstall script to go back to {}",
                        sw.name,
                        v_target.unwrap_or("?")
                    ));
                    a.step_failed = true;
                    return;
                }
            }
            push_install(a, sw, v_target);
        }
        (_, Some(v)) if crate::version::detected(v).is_none() => {
            a.kind = ActionKind::Upgrade;
            a.reason = format!(
                "installed, but detection printed no version ('{}'); {} wanted",
                v.chars().take(60).collect::<String>(),
                v_target.unwrap_or("?")
            );
            push_upgrade(a, sw, v_target);
            if a.step_failed {
                return;
            }
        }
        (_, Some(v)) => {
            a.kind = ActionKind::Upgrade;
            a.reason = match desired {
                DesiredSoftwareState::InstalledVersion => {
                    format!("{v} installed, {} wanted", v_target.unwrap_or("?"))
                }
                DesiredSoftwareState::InstalledAtLeast => format!(
                    "{v} installed, below the minimum {}; latest is {latest_s}",
                    version.unwrap_or("?")
                ),
                _ => format!("{v} installed, latest is {latest_s}"),
            };
            push_upgrade(a, sw, v_target);
            if a.step_failed {
                return;
            }
        }
    }
    if let Some(task) = &sw.configuration_task {
        a.steps.push(Step::TestThenSet { task: task.clone() });
    }
}

fn push_upgrade(a: &mut Action, sw: &SoftwareSnapshot, target: Option<&str>) {
    match target.and_then(|t| version_entry(sw, t)) {
        Some(e) => {
            let script = e
                .upgrade_script
                .clone()
                .unwrap_or_else(|| e.install_script.clone());
            a.steps.push(Step::Script {
                label: format!("upgrade {} to {}", sw.name, e.version),
                script,
                version: Some(e.version.clone()),
                installer: e.installer.clone(),
            });
        }
        None => {
            a.result_message = Some(format!(
                "{} has no version {}",
                sw.name,
                target.unwrap_or("?")
            ));
            a.step_failed = true;
        }
    }
}

fn push_install(a: &mut Action, sw: &SoftwareSnapshot, target: Option<&str>) {
    match target.and_then(|t| version_entry(sw, t)) {
        Some(e) => a.steps.push(Step::Script {
            label: format!("install {} {}", sw.name, e.version),
            script: e.install_script.clone(),
            version: Some(e.version.clone()),
            installer: e.installer.clone(),
        }),
        None => {
            a.result_message = Some(format!(
                "{} has no version {} to install",
                sw.name,
                target.unwrap_or("(none defined)")
            ));
            a.step_failed = true;
        }
    }
}

fn plan_task(a: &mut Action, task: &TaskSnapshot, mode: TaskMode, f: &Found) {
    match (mode, f.test) {
        (TaskMode::Audit, Some(true)) => a.reason = "audit: test passed".into(),
        (TaskMode::Audit, Some(false)) => {
            a.reason = "audit: test failed; audit only reports".into()
        }
        (TaskMode::Audit, None) | (TaskMode::Enforce, None) => {
            a.reason = format!(
                "test could not decide: {}",
                f.test_error.as_deref().unwrap_or("no result")
            );
            a.result_message = Some(a.reason.clone());
            if mode == TaskMode::Enforce {
                a.step_failed = true;
            }
        }
        (TaskMode::Enforce, Some(true)) => a.reason = "test passed: already compliant".into(),
        (TaskMode::Enforce, Some(false)) => match &task.set_script {
            Some(s) => {
                a.kind = ActionKind::RunTask;
                a.reason = "test failed: the set script will run".into();
                a.steps.push(Step::Script {
                    label: format!("run {}", task.name),
                    script: s.clone(),
                    version: None,
                    installer: None,
                });
            }
            // Nothing could change it: the task only reports, like an audit.
            None => a.reason = "test failed; no set script, so audit only".into(),
        },
        (TaskMode::Ignore, _) => a.reason = "ignored by an exception".into(),
        (TaskMode::Monitor, test) => {
            a.reason = match test {
                Some(true) => "monitor: compliant".into(),
                Some(false) => "monitor: not compliant; monitoring only reports".into(),
                None => format!(
                    "monitor: test could not decide: {}",
                    f.test_error.as_deref().unwrap_or("no result")
                ),
            };
            a.result_message = Some(
                match test {
                    Some(true) => "monitor: compliant",
                    Some(false) => "monitor: not compliant",
                    None => a.reason.as_str(),
                }
                .to_string(),
            );
        }
    }
}

/// Whether an action changes the computer (anything but a compliant no-op).
pub fn needs_execution(a: &Action) -> bool {
    !a.steps.is_empty()
}

/// Is this item a report-only task (never a failure)? An `AUDIT` or `MONITOR` task, or an
/// enforced one without a set script (it can only report).
pub fn is_audit(item: &PlanItem) -> bool {
    match &item.what {
        ItemWhat::Task { mode, task } => {
            matches!(mode, TaskMode::Audit | TaskMode::Monitor)
                || (*mode == TaskMode::Enforce && task.set_script.is_none())
        }
        ItemWhat::Software { .. } => false,
    }
}
