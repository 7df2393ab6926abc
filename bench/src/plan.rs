//! `plan`: deployment resolution and planning for 10 000 computers × 200 deployments, a CPU
//! figure measured by calling the server's pure functions directly (`resolve::resolve`, then
//! `engine::plan::plan` for every resolved item), on one thread.
//!
//! The catalogue: 150 software entries and 30 tasks; 180 ALL_COMPUTERS deployments, 12 TAG
//! deployments that override some of them, 8 COMPUTER deployments. Computers carry one of 20
//! tags. Detection findings vary (not installed, old version, latest, task compliant or not),
//! so planning takes each of its branches.

use crate::report::{Figure, note};
use anyhow::Result;
use chrono::Utc;
use std::collections::HashMap;
use std::time::Instant;
use upkeep_core::domain::*;
use upkeep_core::engine::plan::{Found, plan};
use upkeep_core::session::*;

const S: &str = "plan";
const COMPUTERS: usize = 10_000;
const SOFTWARE: usize = 150;
const TASKS: usize = 30;
const TAGS: usize = 20;

fn script(body: String) -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body,
    }
}

struct Catalogue {
    tenant: Id,
    software: HashMap<Id, SoftwareSnapshot>,
    tasks: HashMap<Id, TaskSnapshot>,
    deployments: Vec<Deployment>,
}

fn deployment(tenant: Id, target: Target, subject: Subject, i: usize) -> Deployment {
    let (software_id, maintenance_task_id) = match subject {
        Subject::Software(s) => (Some(s), None),
        Subject::Task(t) => (None, Some(t)),
    };
    Deployment {
        id: upkeep_server::ids::fresh(),
        tenant_id: if i.is_multiple_of(4) {
            None
        } else {
            Some(tenant)
        },
        target,
        software_id,
        desired_state: software_id.map(|_| match i % 3 {
            0 => DesiredSoftwareState::InstalledLatest,
            1 => DesiredSoftwareState::InstalledAtLeast,
            _ => DesiredSoftwareState::UpdateIfFound,
        }),
        version: Some("2.0".into()),
        maintenance_task_id,
        task_mode: TaskMode::Enforce,
        parameters: [("channel".to_string(), "stable".to_string())].into(),
        enforcement: Enforcement::Required,
        order: DeploymentOrder::Unordered,
        position: 0,
        enabled: true,
        created_at: Utc::now(),
    }
}

fn catalogue(computers: &[Computer]) -> Catalogue {
    let tenant = computers[0].tenant_id;
    let mut software = HashMap::new();
    let mut subjects = Vec::new();
    for i in 0..SOFTWARE {
        let id = upkeep_server::ids::fresh();
        let versions = (1..=3)
            .map(|v| SoftwareVersion {
                version: format!("{v}.{}", i % 10),
                install_script: script(format!("install app{i} {v}")),
                upgrade_script: Some(script(format!("upgrade app{i} {v}"))),
                installer: None,
            })
            .collect();
        software.insert(
            id,
            SoftwareSnapshot {
                id,
                name: format!("app-{i}"),
                detection_script: script(format!("app{i} --version")),
                versions,
                uninstall_script: Some(script(format!("remove app{i}"))),
                configuration_task: None,
                versions_script: None,
                versions_cache_minutes: 0,
                install_script: None,
                upgrade_script: None,
                depends_on: vec![],
                versions_note: None,
            },
        );
        subjects.push(Subject::Software(id));
    }
    let mut tasks = HashMap::new();
    for i in 0..TASKS {
        let id = upkeep_server::ids::fresh();
        tasks.insert(
            id,
            TaskSnapshot {
                id,
                name: format!("policy-{i}"),
                test_script: script(format!("test policy {i}")),
                set_script: Some(script(format!("set policy {i}"))),
                get_script: None,
                parameters: vec![],
            },
        );
        subjects.push(Subject::Task(id));
    }
    let all = Target {
        kind: TargetKind::AllComputers,
        value: None,
    };
    let mut deployments: Vec<Deployment> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| deployment(tenant, all.clone(), *s, i))
        .collect();
    for i in 0..12 {
        let target = Target {
            kind: TargetKind::Tag,
            value: Some(format!("group-{}", i % TAGS)),
        };
        deployments.push(deployment(tenant, target, subjects[i * 7], i));
    }
    for i in 0..8 {
        let target = Target {
            kind: TargetKind::Computer,
            value: Some(computers[i * 997].id.to_string()),
        };
        deployments.push(deployment(tenant, target, subjects[i * 11], i));
    }
    Catalogue {
        tenant,
        software,
        tasks,
        deployments,
    }
}

/// What detection "found" for item `i` of computer `c`.
fn found(c: usize, i: usize) -> Found {
    match (c + i) % 4 {
        0 => Found::default(),
        1 => Found {
            version: Some("1.0".into()),
            test: Some(false),
            ..Found::default()
        },
        2 => Found {
            version: Some("3.9".into()),
            test: Some(true),
            ..Found::default()
        },
        _ => Found {
            version: Some("2.5".into()),
            test: Some(true),
            ..Found::default()
        },
    }
}

/// The server's own planning (`engine::plan::freeze_items`), with the catalogue in memory
/// instead of the store.
fn plan_items(cat: &Catalogue, computer: &Computer) -> Vec<PlanItem> {
    upkeep_core::engine::plan::freeze_items::<std::convert::Infallible>(
        computer,
        &cat.deployments,
        |s| Ok(cat.software.get(&s).cloned()),
        |t| Ok(cat.tasks.get(&t).cloned()),
    )
    .unwrap_or_else(|e| match e {})
}

/// The same work on every core, the computers split over the threads: each thread freezes one
/// computer's items and plans them, then the next (as the server's runtime steps many sessions
/// at once, each holding its own plan). Returns the thread count, the resolution time (the
/// slowest thread's) and the total.
///
/// Round 3 measured this through `freeze_many`, which returns every computer's frozen items at
/// once: 1.8 M items with their snapshots held together, and the allocator, not the planner,
/// took the time (5.1 s on two cores against 1.5 s on one). Nothing in the server freezes a
/// fleet at once.
fn on_all_cores(
    cat: &Catalogue,
    computers: &[Computer],
    expected: usize,
) -> (usize, std::time::Duration, std::time::Duration) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    let per = computers.len().div_ceil(threads);
    let parts: Vec<(usize, usize, std::time::Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = computers
            .chunks(per)
            .enumerate()
            .map(|(part, chunk)| {
                scope.spawn(move || {
                    let (mut resolved, mut steps) = (0, 0);
                    let mut resolve = std::time::Duration::ZERO;
                    for (k, c) in chunk.iter().enumerate() {
                        let ci = part * per + k;
                        let r0 = Instant::now();
                        let items = plan_items(cat, c);
                        resolve += r0.elapsed();
                        resolved += items.len();
                        for (i, item) in items.iter().enumerate() {
                            let a = plan(i, item, &found(ci, i), upkeep_server::ids::fresh());
                            steps += a.steps.len();
                        }
                    }
                    (resolved, steps, resolve)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, std::time::Duration::ZERO)))
            .collect()
    });
    assert_eq!(parts.iter().map(|p| p.0).sum::<usize>(), expected);
    std::hint::black_box(parts.iter().map(|p| p.1).sum::<usize>());
    let resolve = parts.iter().map(|p| p.2).max().unwrap_or_default();
    (threads, resolve, t.elapsed())
}

pub fn run() -> Result<Vec<Figure>> {
    let tenant = upkeep_server::ids::fresh();
    let computers: Vec<Computer> = (0..COMPUTERS)
        .map(|i| Computer {
            id: upkeep_server::ids::fresh(),
            tenant_id: tenant,
            name: format!("pc-{i:05}"),
            hostname: format!("pc-{i:05}"),
            machine_id: format!("m-{i}"),
            tags: vec![upkeep_core::types::Stored::read(&format!(
                "group-{}",
                i % TAGS
            ))],
            primary_person_id: None,
            os: String::new(),
            agent_version: String::new(),
            last_seen_at: None,
            agent_token_hash: None,
            enrolled_at: Utc::now(),
            excluded_from_maintenance: false,
            compliance: None,
            logged_on_user: None,
            onboarded: true,
            onboarding: None,
            held_reboot: None,
        })
        .collect();
    let cat = catalogue(&computers);
    debug_assert_eq!(cat.tenant, tenant);
    note(
        S,
        format!(
            "{} computers × {} deployments",
            computers.len(),
            cat.deployments.len()
        ),
    );
    let t = Instant::now();
    let mut resolved = 0usize;
    let mut steps = 0usize;
    let mut resolve_time = std::time::Duration::ZERO;
    for (ci, c) in computers.iter().enumerate() {
        let r0 = Instant::now();
        let items = plan_items(&cat, c);
        resolve_time += r0.elapsed();
        resolved += items.len();
        for (i, item) in items.iter().enumerate() {
            let a = plan(i, item, &found(ci, i), upkeep_server::ids::fresh());
            steps += a.steps.len();
        }
    }
    let total = t.elapsed();
    std::hint::black_box(steps);
    let (threads, par_resolve, par_total) = on_all_cores(&cat, &computers, resolved);
    note(
        S,
        format!(
            "one thread {:.0} ms; {threads} threads {:.0} ms",
            total.as_secs_f64() * 1000.0,
            par_total.as_secs_f64() * 1000.0
        ),
    );
    Ok(vec![
        Figure::new(S, "threads", threads as f64, "threads"),
        Figure::new(
            S,
            "resolve_ms_all_cores",
            par_resolve.as_secs_f64() * 1000.0,
            "ms",
        ),
        Figure::new(
            S,
            "total_ms_all_cores",
            par_total.as_secs_f64() * 1000.0,
            "ms",
        ),
        Figure::new(S, "computers", COMPUTERS as f64, "computers"),
        Figure::new(
            S,
            "deployments",
            cat.deployments.len() as f64,
            "deployments",
        ),
        Figure::new(S, "actions_planned", resolved as f64, "actions"),
        Figure::new(S, "resolve_ms", resolve_time.as_secs_f64() * 1000.0, "ms"),
        Figure::new(
            S,
            "plan_ms",
            (total - resolve_time).as_secs_f64() * 1000.0,
            "ms",
        ),
        Figure::new(S, "total_ms", total.as_secs_f64() * 1000.0, "ms"),
    ])
}
