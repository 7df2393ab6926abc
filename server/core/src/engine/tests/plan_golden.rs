//! The planner's output over a fixed grid, pinned by a digest: planning work for speed must
//! leave every plan item and action exactly as it was (`freeze_items` — resolution, freezing,
//! prerequisites — and `plan` over every desired state, version wish and kind of finding).
//!
//! The digests were taken with the planner as it was before round 3's speed work. A change
//! that means to alter what the planner says updates them; to see what changed, run the test
//! with `UPKEEP_PLAN_GOLDEN_DUMP=<file>` before and after and diff the two files.

use super::*;
use crate::engine::plan::{Found, freeze_items, plan};

/// Ids from a counter of this test's own, so the grid is the same whatever ran before.
struct Ids(u128);

impl Ids {
    fn next(&mut self) -> Id {
        self.0 += 1;
        Id::from_u128(0x9000_0000 + self.0)
    }
}

/// FNV-1a, 64 bits: stable across toolchains (std's hasher is not promised to be).
struct Digest {
    hash: u64,
    lines: usize,
    dump: Option<String>,
}

impl Digest {
    fn new() -> Digest {
        Digest {
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            dump: std::env::var("UPKEEP_PLAN_GOLDEN_DUMP")
                .ok()
                .map(|_| String::new()),
        }
    }

    fn line(&mut self, s: &str) {
        for b in s.bytes().chain([b'\n']) {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.lines += 1;
        if let Some(d) = &mut self.dump {
            d.push_str(s);
            d.push('\n');
        }
    }

    fn finish(self, name: &str) -> (usize, u64) {
        if let (Some(d), Ok(path)) = (&self.dump, std::env::var("UPKEEP_PLAN_GOLDEN_DUMP")) {
            std::fs::write(format!("{path}.{name}"), d).expect("write the dump");
        }
        (self.lines, self.hash)
    }
}

fn sw(ids: &mut Ids, name: &str, versions: &[&str]) -> SoftwareSnapshot {
    SoftwareSnapshot {
        id: ids.next(),
        name: name.into(),
        detection_script: script(&format!("detect {name}")),
        versions: versions
            .iter()
            .enumerate()
            .map(|(i, v)| SoftwareVersion {
                version: v.to_string(),
                install_script: script(&format!("install {name} {v}")),
                upgrade_script: i
                    .is_multiple_of(2)
                    .then(|| script(&format!("upgrade {name} {v}"))),
                installer: None,
            })
            .collect(),
        uninstall_script: Some(script(&format!("uninstall {name}"))),
        configuration_task: None,
        versions_script: None,
        versions_cache_minutes: 60,
        install_script: None,
        upgrade_script: None,
        depends_on: vec![],
        versions_note: None,
    }
}

fn tk(ids: &mut Ids, name: &str, set: bool, get: bool) -> TaskSnapshot {
    TaskSnapshot {
        id: ids.next(),
        name: name.into(),
        test_script: script(&format!("test {name}")),
        set_script: set.then(|| script(&format!("set {name}"))),
        get_script: get.then(|| script(&format!("get {name}"))),
        parameters: vec![],
    }
}

/// Software of every shape the planner distinguishes.
fn catalogue_software(ids: &mut Ids) -> Vec<SoftwareSnapshot> {
    let plain = sw(ids, "Plain", &["1.9.2", "1.10.0", "1.2.0"]);
    let none = sw(ids, "NoVersions", &[]);
    let mut configured = sw(ids, "Configured", &["2.0", "3.0"]);
    configured.configuration_task = Some(tk(ids, "Configured settings", true, false));
    let mut no_uninstall = sw(ids, "NoUninstall", &["5.0-beta", "5.0"]);
    no_uninstall.uninstall_script = None;
    let chatty = sw(ids, "Chatty", &["v2.0", "release 1.0"]);
    vec![plain, none, configured, no_uninstall, chatty]
}

const DESIRED: [DesiredSoftwareState; 7] = [
    DesiredSoftwareState::InstalledLatest,
    DesiredSoftwareState::InstalledVersion,
    DesiredSoftwareState::InstalledAtLeast,
    DesiredSoftwareState::InstalledAny,
    DesiredSoftwareState::UpdateIfFound,
    DesiredSoftwareState::Uninstalled,
    DesiredSoftwareState::Ignore,
];

fn findings() -> Vec<Found> {
    let v = |s: &str| Found {
        version: Some(s.into()),
        ..Found::default()
    };
    let mut out = vec![Found::default()];
    for s in [
        "1.2.0",
        "1.10.0",
        "1.10",
        "2.0",
        "3.0",
        "5.0",
        "9.9",
        "Chatty version 2.0",
        "<b>1.9.2</b>",
        "no digits here",
    ] {
        out.push(v(s));
    }
    for (test, test_error) in [
        (Some(true), None),
        (Some(false), None),
        (None, Some("test script exited 3: boom".to_string())),
    ] {
        out.push(Found {
            version: Some("3.0".into()),
            test,
            test_error: test_error.clone(),
            ..Found::default()
        });
        out.push(Found {
            test,
            test_error,
            current_value: Some("on".into()),
            ..Found::default()
        });
    }
    out.push(Found {
        test: Some(false),
        get_error: Some("get script exited 2".into()),
        ..Found::default()
    });
    out.push(Found {
        detection_error: Some("detection script timed out".into()),
        ..Found::default()
    });
    out
}

fn grid_items(ids: &mut Ids) -> Vec<PlanItem> {
    let mut items = Vec::new();
    let base = |ids: &mut Ids, what: ItemWhat| PlanItem {
        deployment_id: ids.next(),
        order: DeploymentOrder::Unordered,
        position: 0,
        enforcement: Enforcement::Required,
        parameters: BTreeMap::new(),
        invalid: None,
        what,
        rule: "only matching deployment (ALL_COMPUTERS)".into(),
        prerequisites: vec![],
        needed_by: None,
    };
    for software in catalogue_software(ids) {
        for desired in DESIRED {
            for version in [None, Some("1.10"), Some("3.0"), Some("7.0"), Some("junk")] {
                for needed_by in [None, Some("Needer".to_string())] {
                    let mut it = base(
                        ids,
                        ItemWhat::Software {
                            software: software.clone(),
                            desired,
                            version: version.map(String::from),
                        },
                    );
                    it.needed_by = needed_by;
                    items.push(it);
                }
            }
        }
    }
    for (set, get) in [(true, false), (false, false), (true, true)] {
        let task = tk(ids, "Policy", set, get);
        for mode in [
            TaskMode::Enforce,
            TaskMode::Audit,
            TaskMode::Monitor,
            TaskMode::Ignore,
        ] {
            items.push(base(
                ids,
                ItemWhat::Task {
                    task: task.clone(),
                    mode,
                },
            ));
        }
    }
    let broken = tk(ids, "Broken", true, false);
    let mut invalid = base(
        ids,
        ItemWhat::Task {
            task: broken,
            mode: TaskMode::Enforce,
        },
    );
    invalid.invalid = Some("parameters: x is required".into());
    items.push(invalid);
    items
}

#[test]
fn plan_gives_the_same_actions_as_before() {
    let mut ids = Ids(0);
    let items = grid_items(&mut ids);
    let findings = findings();
    let mut digest = Digest::new();
    for (i, item) in items.iter().enumerate() {
        for f in &findings {
            let a = plan(i, item, f, ids.next());
            digest.line(&serde_json::to_string(&a).unwrap());
            digest.line(&format!("{:?}", crate::engine::plan::compliance(item, f)));
        }
    }
    assert_eq!(
        digest.finish("plan"),
        (13794, 6981748141279606409),
        "the planner's actions changed (see the module doc)"
    );
}

fn computer(ids: &mut Ids, tenant: Id, i: usize, person: Id) -> Computer {
    Computer {
        id: ids.next(),
        tenant_id: tenant,
        name: format!("pc-{i}"),
        hostname: format!("pc-{i}"),
        machine_id: format!("m-{i}"),
        tags: match i % 4 {
            0 => vec![],
            1 => vec![crate::types::Stored::read("Office")],
            2 => vec![
                crate::types::Stored::read("ÄRZTE"),
                crate::types::Stored::read("office"),
            ],
            _ => vec![crate::types::Stored::read("lab")],
        },
        primary_person_id: i.is_multiple_of(3).then_some(person),
        os: String::new(),
        agent_version: String::new(),
        last_seen_at: None,
        agent_token_hash: None,
        enrolled_at: t0(),
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: true,
        onboarding: None,
        held_reboot: None,
    }
}

struct Spec {
    subject: usize,
    target: TargetKind,
    value: Option<String>,
    tenant: Option<Id>,
    desired: Option<DesiredSoftwareState>,
    mode: TaskMode,
}

// long: one fixture, read top to bottom: the catalogue, then the deployments over it.
#[test]
fn freeze_items_gives_the_same_items_as_before() {
    let mut ids = Ids(0);
    let tenant = ids.next();
    let other = ids.next();
    let person = ids.next();
    let computers: Vec<Computer> = (0..24)
        .map(|i| computer(&mut ids, tenant, i, person))
        .collect();
    let mut software = catalogue_software(&mut ids);
    // Prerequisites: Configured needs Plain, Chatty needs Configured (so Plain too) and a
    // missing id, Plain needs Runtime (below).
    let (plain, configured) = (software[0].id, software[2].id);
    let gone = ids.next();
    software[2].depends_on = vec![plain];
    software[4].depends_on = vec![configured, gone];
    let mut with_params = tk(&mut ids, "Params", true, false);
    with_params.parameters = vec![crate::params::ParameterDefinition {
        name: "level".into(),
        kind: crate::params::ParameterType::Number,
        required: true,
        default: None,
        options: vec![],
        description: None,
    }];
    let tasks = [tk(&mut ids, "Policy", true, false), with_params];
    let subjects: Vec<Subject> = software
        .iter()
        .map(|s| Subject::Software(s.id))
        .chain(tasks.iter().map(|t| Subject::Task(t.id)))
        .chain([Subject::Software(gone)])
        .collect();
    // A prerequisite no deployment names: it comes in as an item of its own, "needed by".
    let runtime = sw(&mut ids, "Runtime", &["8.0"]);
    software[0].depends_on = vec![runtime.id];
    software.push(runtime);
    let all = |subject, tenant: Option<Id>, desired| Spec {
        subject,
        target: TargetKind::AllComputers,
        value: None,
        tenant,
        desired,
        mode: TaskMode::Enforce,
    };
    let installed = Some(DesiredSoftwareState::InstalledLatest);
    let mut specs: Vec<Spec> = (0..subjects.len())
        .map(|s| all(s, Some(tenant), installed))
        .collect();
    specs.push(all(0, None, Some(DesiredSoftwareState::Uninstalled)));
    specs.push(all(1, Some(other), installed));
    specs.push(all(
        3,
        Some(tenant),
        Some(DesiredSoftwareState::InstalledAny),
    ));
    for (subject, value, desired) in [
        (0, "office", Some(DesiredSoftwareState::InstalledAtLeast)),
        (2, "Ärzte", Some(DesiredSoftwareState::Ignore)),
        (4, "LAB", Some(DesiredSoftwareState::UpdateIfFound)),
        (5, "office", None),
    ] {
        specs.push(Spec {
            target: TargetKind::Tag,
            value: Some(value.into()),
            ..all(subject, Some(tenant), desired)
        });
    }
    specs.push(Spec {
        target: TargetKind::Person,
        value: Some(person.to_string()),
        mode: TaskMode::Audit,
        ..all(5, Some(tenant), None)
    });
    specs.push(Spec {
        target: TargetKind::Person,
        value: Some(person.to_string()),
        ..all(1, None, Some(DesiredSoftwareState::Uninstalled))
    });
    for i in [0usize, 5, 7, 11] {
        specs.push(Spec {
            target: TargetKind::Computer,
            value: Some(computers[i].id.to_string()),
            mode: TaskMode::Ignore,
            ..all(i % subjects.len(), None, Some(DesiredSoftwareState::Ignore))
        });
    }
    let deployments: Vec<Deployment> = specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (software_id, maintenance_task_id) = match subjects[s.subject] {
                Subject::Software(id) => (Some(id), None),
                Subject::Task(id) => (None, Some(id)),
            };
            Deployment {
                id: ids.next(),
                tenant_id: s.tenant,
                target: Target {
                    kind: s.target,
                    value: s.value,
                },
                software_id,
                desired_state: software_id.and(s.desired),
                version: Some("1.10".into()),
                maintenance_task_id,
                task_mode: s.mode,
                parameters: [(
                    "level".to_string(),
                    if i % 7 == 6 {
                        "high".to_string()
                    } else {
                        (i % 3).to_string()
                    },
                )]
                .into(),
                enforcement: if i.is_multiple_of(5) {
                    Enforcement::Onboarding
                } else {
                    Enforcement::Required
                },
                order: match i % 3 {
                    0 => DeploymentOrder::Unordered,
                    1 => DeploymentOrder::Beginning,
                    _ => DeploymentOrder::End,
                },
                position: (i % 4) as i32,
                enabled: i != 1,
                created_at: t0(),
            }
        })
        .collect();
    let mut digest = Digest::new();
    let lookup_software = |s| Ok(software.iter().find(|x| x.id == s).cloned());
    let lookup_task = |t| Ok(tasks.iter().find(|x| x.id == t).cloned());
    let many = crate::engine::plan::freeze_many::<std::convert::Infallible>(
        &computers,
        &deployments,
        lookup_software,
        lookup_task,
        3,
    )
    .unwrap_or_else(|e| match e {});
    assert_eq!(many.len(), computers.len());
    for (c, from_many) in computers.iter().zip(&many) {
        let items =
            freeze_items::<std::convert::Infallible>(c, &deployments, lookup_software, lookup_task)
                .unwrap_or_else(|e| match e {});
        // On threads, the same items as one by one.
        assert_eq!(
            serde_json::to_string(from_many).unwrap(),
            serde_json::to_string(&items).unwrap()
        );
        for item in &items {
            digest.line(&serde_json::to_string(item).unwrap());
        }
        for r in crate::resolve::resolve(c, &deployments) {
            digest.line(&format!(
                "{:?} {} {:?} {}",
                r.subject,
                r.winner.id,
                r.shadowed.iter().map(|d| d.id).collect::<Vec<_>>(),
                r.rule
            ));
        }
    }
    assert_eq!(
        digest.finish("freeze"),
        (343, 2766155767981160003),
        "the planner's items changed (see the module doc)"
    );
}
