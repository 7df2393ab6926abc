//! What every engine behind [`Store`] must do, as one check run against an empty store: the
//! embedded engine and the in-memory test engine run it here; a further engine runs it from its
//! own tests (feature `conformance`).

use crate::records::{TENANT_USERS, USER_EMAIL, tenant_key};
use crate::{Db, IndexKey, KeyRange, Kind, Space, TxError, WriteError};
use futures_util::TryStreamExt;
use upkeep_core::domain::MaintenanceOptions;
use upkeep_core::domain::{Id, Tenant, User, UserRole};
use upkeep_core::session::{Session, SessionStatus, SessionTrigger, Stage};

fn tenant(n: u128) -> Tenant {
    Tenant {
        id: Id::from_u128(0x1000 + n),
        name: format!("tenant {n}"),
        company_name: None,
        time_zone: upkeep_core::types::TimeZone::UTC.into(),
        mail_from: None,
        logo_url: None,
        primary_color: None,
        auto_onboarding: false,
        excluded_from_maintenance: false,
        business_hours: None,
        mail_bcc: Vec::new(),
        preflight_scripts: Vec::new(),
        created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
    }
}

fn user(n: u128, tenant: Option<Id>) -> User {
    User {
        id: Id::from_u128(0x2000 + n),
        email: upkeep_core::types::Stored::read(&format!("u{n}@example.com")),
        password_hash: String::new(),
        role: UserRole::MspAdmin,
        tenant_id: tenant,
        created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        disabled: false,
        token_generation: 0,
        totp: Default::default(),
    }
}

/// Runs every check against `store`, which must be empty. Panics on the first failure, naming it.
pub async fn check(store: Db) {
    assert!(store.is_empty().await.unwrap(), "the store starts empty");
    records_and_indexes(&store).await;
    aborts_change_nothing(&store).await;
    unique_values(&store).await;
    scans_page_in_order(&store).await;
    batches_and_snapshots(&store).await;
    session_counts(&store).await;
    assert_eq!(
        store.check_indexes().await.unwrap(),
        Vec::<String>::new(),
        "indexes are in step with records"
    );
    claims(&store).await;
    leases_by_end(&store).await;
    rollouts(&store).await;
    detections_by_subject(&store).await;
    whole_index_reads(&store).await;
    sessions_in_two_parts(&store).await;
}

/// Rollouts: listed by tenant and, while `RUNNING` or `WAITING`, as active; a change stored
/// only from the revision it was made from (the driver's compare-and-set), so of two writers
/// from one revision one wins. The rollout is removed afterwards.
async fn rollouts(store: &Db) {
    use crate::records::{ACTIVE_ROLLOUTS, TENANT_ROLLOUTS};
    use upkeep_core::rollout::{Rollout, RolloutStatus, Wave, WaveSelector};
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let r = Rollout {
        id: Id::from_u128(0x6000),
        tenant_id: Some(Id::from_u128(0x6001)),
        deployment_id: Id::from_u128(0x6002),
        waves: vec![Wave::new("all".into(), WaveSelector::Percent(100))],
        halt_above: 0.1,
        min_sessions_per_wave: 1,
        wait_minutes: 0,
        options: Default::default(),
        status: RolloutStatus::Running,
        status_reason: None,
        current: 0,
        next_wave_at: None,
        created_by: "conformance".into(),
        created_at: at,
        updated_at: at,
        revision: 0,
    };
    store.write(|tx| tx.put::<_, ()>(&r)).await.unwrap();
    let active = IndexKey::new(ACTIVE_ROLLOUTS, []);
    let by_tenant = IndexKey::new(TENANT_ROLLOUTS, tenant_key(r.tenant_id));
    let listed: Vec<Rollout> = store.by_index(&active, None).try_collect().await.unwrap();
    assert_eq!(listed, vec![r.clone()], "a running rollout is active");
    assert_eq!(store.index_count(&by_tenant).await.unwrap(), 1);
    let cas = |to: RolloutStatus| {
        let id = r.id;
        move |tx: &mut crate::Tx<'_>| {
            let mut stored = tx
                .get::<Rollout, &str>(&id)?
                .ok_or(TxError::Abort("gone"))?;
            if stored.revision != 0 {
                return Err(TxError::Abort("moved"));
            }
            stored.status = to;
            stored.revision += 1;
            tx.put(&stored)
        }
    };
    store.write(cas(RolloutStatus::Completed)).await.unwrap();
    assert!(
        matches!(
            store.write(cas(RolloutStatus::Aborted)).await,
            Err(WriteError::Abort("moved"))
        ),
        "a change from a stale revision is refused"
    );
    let stored = store.get::<Rollout>(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.revision),
        (RolloutStatus::Completed, 1)
    );
    assert_eq!(
        store.index_count(&active).await.unwrap(),
        0,
        "a finished rollout is not active"
    );
    store
        .write(|tx| tx.delete::<Rollout, ()>(r.id.as_bytes()))
        .await
        .unwrap();
    assert_eq!(store.index_count(&by_tenant).await.unwrap(), 0);
}

/// A computer's last detection of a software is replaced by the next one, and a preview reads
/// one subject's detections per tenant (or across tenants) in one prefix range.
async fn detections_by_subject(store: &Db) {
    use crate::records::detection_key;
    use upkeep_core::domain::Subject;
    use upkeep_core::impact::Detection;
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let d = |sw: u128, tenant: u128, computer: u128, version: &str| Detection {
        tenant_id: Id::from_u128(tenant),
        computer_id: Id::from_u128(computer),
        subject: Subject::Software(Id::from_u128(sw)),
        session_id: Id::from_u128(0x9000),
        at,
        version: Some(version.into()),
        test: None,
        test_error: None,
        current_value: None,
    };
    let all = [
        d(0x7001, 1, 0x10, "1.0"),
        d(0x7001, 1, 0x11, "1.0"),
        d(0x7001, 2, 0x20, "1.0"),
        d(0x7002, 1, 0x10, "3.0"),
        d(0x7001, 1, 0x10, "2.0"),
    ];
    store
        .write(|tx| {
            for x in &all {
                tx.put(x)?;
            }
            Ok::<_, TxError<()>>(())
        })
        .await
        .unwrap_or_else(|_| panic!("detections written"));
    let sw = Subject::Software(Id::from_u128(0x7001));
    let read = |prefix: Vec<u8>| async move {
        store
            .scan_prefix::<Detection>(&prefix, None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    let tenant1 = read(detection_key(sw, Some(Id::from_u128(1)), None)).await;
    assert_eq!(tenant1.len(), 2, "one per computer: {tenant1:?}");
    assert_eq!(
        tenant1[0].version.as_deref(),
        Some("2.0"),
        "the newest stays"
    );
    assert_eq!(read(detection_key(sw, None, None)).await.len(), 3);
    store
        .write(|tx| {
            for x in &all {
                tx.delete::<Detection, ()>(&crate::Record::key(x))?;
            }
            Ok::<_, TxError<()>>(())
        })
        .await
        .unwrap_or_else(|_| panic!("detections removed"));
}

/// `index_entries` lists every (value, primary key) of one index across all its values, and
/// `unique_claims` every claimed (value, owner) of a unique index, in key order; neither
/// strays into a neighbouring index. The records are removed afterwards.
async fn whole_index_reads(store: &Db) {
    let (t1, t2) = (Id::from_u128(0x3001), Id::from_u128(0x3002));
    let users = [user(30, Some(t2)), user(31, Some(t1)), user(32, Some(t1))];
    store
        .write(|tx| {
            for u in &users {
                tx.put::<_, ()>(u)?;
                tx.claim_unique(&IndexKey::new(USER_EMAIL, u.email.text()), &u.key_bytes())?;
            }
            Ok(())
        })
        .await
        .unwrap();
    // Earlier checks left other tenants' users: keep to these two tenants.
    let ours = |v: &[u8]| v == t1.as_bytes() || v == t2.as_bytes();
    let all: Vec<(Vec<u8>, Vec<u8>)> = store
        .index_entries(TENANT_USERS)
        .try_collect()
        .await
        .unwrap();
    assert!(all.is_sorted(), "in key order");
    let entries: Vec<_> = all.into_iter().filter(|(v, _)| ours(v)).collect();
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = users
        .iter()
        .map(|u| (tenant_key(u.tenant_id), u.key_bytes()))
        .collect();
    expected.sort();
    assert_eq!(entries, expected, "every tenant's users, in key order");
    let emails: Vec<Vec<u8>> = users
        .iter()
        .map(|u| u.email.text().as_bytes().to_vec())
        .collect();
    let claims: Vec<(Vec<u8>, Vec<u8>)> = store
        .unique_claims(USER_EMAIL)
        .try_filter(|(v, _)| std::future::ready(emails.contains(v)))
        .try_collect()
        .await
        .unwrap();
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = users
        .iter()
        .map(|u| (u.email.text().as_bytes().to_vec(), u.key_bytes()))
        .collect();
    expected.sort();
    assert_eq!(claims, expected, "every claimed email with its owner");
    store
        .write(|tx| {
            for u in &users {
                tx.release_unique::<()>(&IndexKey::new(USER_EMAIL, u.email.text()))?;
                tx.delete::<User, ()>(u.id.as_bytes())?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let left: Vec<(Vec<u8>, Vec<u8>)> = store
        .index_entries(TENANT_USERS)
        .try_collect()
        .await
        .unwrap();
    assert!(!left.iter().any(|(v, _)| ours(v)), "{left:?}");
}

/// A session with one plan item (a software with its scripts) and one planned action.
fn planned_session() -> upkeep_core::session::Session {
    use upkeep_core::domain::*;
    use upkeep_core::session::*;
    let script = |body: &str| Script {
        language: ScriptLanguage::Shell,
        body: body.into(),
    };
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let mut s = Session::for_tests(Id::from_u128(0x6000), Id::from_u128(0x6001), at);
    s.items.push(PlanItem {
        deployment_id: Id::from_u128(0x6002),
        order: DeploymentOrder::Unordered,
        position: 0,
        enforcement: Enforcement::Required,
        parameters: Default::default(),
        invalid: None,
        what: ItemWhat::Software {
            software: SoftwareSnapshot {
                id: Id::from_u128(0x6003),
                name: "Editor".into(),
                detection_script: script("echo detect"),
                versions: vec![SoftwareVersion {
                    version: "1.0".into(),
                    install_script: script("echo install"),
                    upgrade_script: None,
                    installer: None,
                }],
                uninstall_script: None,
                configuration_task: None,
                versions_script: None,
                versions_cache_minutes: 0,
                install_script: None,
                upgrade_script: None,
                depends_on: vec![],
                versions_note: None,
            },
            desired: DesiredSoftwareState::InstalledLatest,
            version: None,
        },
        rule: "all computers".into(),
        prerequisites: vec![],
        needed_by: None,
    });
    s.preflight.push(script("echo preflight"));
    s.actions.push(Action {
        id: Id::from_u128(0x6004),
        item: 0,
        kind: ActionKind::Install,
        status: ActionStatus::Pending,
        compliance: Compliance::NonCompliant,
        desired_version: Some("1.0".into()),
        detected_version: None,
        detected_version_before: None,
        detected_version_after: None,
        result_message: None,
        current_value: None,
        reason: "not installed".into(),
        started_at: None,
        finished_at: None,
        steps: vec![Step::Script {
            label: "install 1.0".into(),
            script: script("echo install"),
            version: Some("1.0".into()),
            installer: None,
        }],
        next_step: 0,
        step_failed: false,
        reboot_required: false,
    });
    s
}

/// The JSON of a session, for comparing what was stored with what is read back.
fn json_of(s: &upkeep_core::session::Session) -> serde_json::Value {
    serde_json::to_value(s).unwrap()
}

/// Sessions are stored as a small hot record and a plan record (`session_split.rs`): read
/// back whole; the plan is rewritten only when it changed; a record from before the split (all
/// in the session's own record) reads whole and is split by its next put; a delete removes both.
// long: one session's life in the store, each check starting from what the one before left.
async fn sessions_in_two_parts(store: &Db) {
    use upkeep_core::session::{ActionStatus, Session, SessionStatus, Step};
    let plans = Space::Records(Kind::SessionPlan);
    let mut s = planned_session();
    // A rollout's session: its place in the rollout is hot state (the driver counts outcomes
    // by it, and its index entry must go with the session).
    s.rollout = Some(upkeep_core::session::RolloutRef {
        id: Id::from_u128(0x6100),
        wave: 1,
    });
    let key = s.id.as_bytes().to_vec();
    let put = |s: Session| async move {
        store
            .write(|tx| {
                tx.put(&s)?;
                Ok::<_, TxError<()>>(())
            })
            .await
            .unwrap_or_else(|_| panic!("a session is stored"));
    };
    put(s.clone()).await;
    let hot = store
        .read(Space::Records(Kind::Session), &key)
        .await
        .unwrap();
    let hot = hot.expect("the hot record is stored");
    let hot_text = String::from_utf8_lossy(&hot);
    assert!(
        !hot_text.contains("echo"),
        "no script in the hot record: {hot_text}"
    );
    assert!(
        store.read(plans, &key).await.unwrap().is_some(),
        "the plan is stored"
    );
    let back: Session = store.get(&s.id).await.unwrap().expect("read back");
    assert_eq!(json_of(&back), json_of(&s), "read back whole");

    // The plan as stored is replaced by a marked copy: puts that do not change the plan must
    // leave it there (they do not write the plan).
    let mut marked = s.clone();
    marked.items[0].rule = "marker".into();
    let marked_plan = crate::session_split::encode(&marked).unwrap().plan;
    store
        .apply_batch(plans, vec![(key.clone(), Some(marked_plan.clone()))])
        .await
        .unwrap();
    for n in 1..=10u64 {
        s.status = SessionStatus::Executing;
        s.last_sequence = n;
        s.revision = n;
        s.actions[0].status = ActionStatus::Running;
        s.actions[0].next_step = 1;
        put(s.clone()).await;
    }
    assert_eq!(
        store.read(plans, &key).await.unwrap(),
        Some(marked_plan),
        "steps that do not change the plan do not write it"
    );
    // A plan that is not the one its record names (swapped here behind the store's back; in
    // life, a write between a reader's two reads) is never joined to it.
    assert!(
        matches!(
            store.get::<Session>(&s.id).await,
            Err(crate::StoreError::Corrupt(_))
        ),
        "a mismatched plan is refused"
    );
    assert!(
        store
            .get_session_cached(&s.id, &crate::PlanCache::default())
            .await
            .is_err(),
        "a mismatched plan is refused through the cache too"
    );
    let real = crate::session_split::encode(&s).unwrap().plan;
    store
        .apply_batch(plans, vec![(key.clone(), Some(real))])
        .await
        .unwrap();
    let back: Session = store.get(&s.id).await.unwrap().expect("read back");
    assert_eq!(back.items[0].rule, s.items[0].rule);
    assert_eq!(back.last_sequence, 10);
    assert_eq!(back.actions[0].status, ActionStatus::Running);
    assert!(matches!(back.actions[0].steps[..], [Step::Script { .. }]));

    // A changed plan is written.
    s.items[0].rule = "changed".into();
    put(s.clone()).await;
    let back: Session = store.get(&s.id).await.unwrap().expect("read back");
    assert_eq!(json_of(&back), json_of(&s), "the changed plan is stored");

    // A process's plan cache: the same session read twice, then again after another writer
    // changed its plan (another digest: read again).
    let cache = crate::PlanCache::default();
    for _ in 0..2 {
        let c = store.get_session_cached(&s.id, &cache).await.unwrap();
        assert_eq!(json_of(&c.expect("cached read")), json_of(&s));
    }
    s.items[0].rule = "changed again".into();
    put(s.clone()).await;
    let c = store.get_session_cached(&s.id, &cache).await.unwrap();
    assert_eq!(
        json_of(&c.expect("cached read")),
        json_of(&s),
        "a rewritten plan is read again"
    );

    sessions_from_before_the_split(store, &cache).await;

    // Deleting a session removes both parts.
    for k in [key, Id::from_u128(0x6100).as_bytes().to_vec()] {
        store
            .write(|tx| {
                tx.delete::<Session, ()>(&k)?;
                Ok::<_, TxError<()>>(())
            })
            .await
            .unwrap_or_else(|_| panic!("deleted"));
        assert_eq!(
            store.read(plans, &k).await.unwrap(),
            None,
            "the plan went too"
        );
    }
}

/// A record from before the split: the whole session in its own record, no plan record. It
/// reads whole (also through a plan cache and in scans) and its next put splits it.
async fn sessions_from_before_the_split(store: &Db, cache: &crate::PlanCache) {
    use upkeep_core::session::Session;
    let plans = Space::Records(Kind::SessionPlan);
    let mut old = planned_session();
    old.id = Id::from_u128(0x6100);
    let old_key = old.id.as_bytes().to_vec();
    let whole = crate::codec::encode(&old).unwrap();
    store
        .apply_batch(
            Space::Records(Kind::Session),
            vec![(old_key.clone(), Some(whole))],
        )
        .await
        .unwrap();
    let back: Session = store
        .get(&old.id)
        .await
        .unwrap()
        .expect("an old record reads");
    assert_eq!(json_of(&back), json_of(&old), "an old record reads whole");
    let cached = store.get_session_cached(&old.id, cache).await.unwrap();
    assert_eq!(json_of(&cached.expect("cached read")), json_of(&old));
    // Earlier checks may leave sessions of their own: keep to these two.
    let ours = [old.id, planned_session().id];
    let listed: Vec<Session> = store
        .scan::<Session>(None)
        .try_filter(|l| std::future::ready(ours.contains(&l.id)))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "scans read both formats");
    assert!(
        listed
            .iter()
            .all(|l| l.items.len() == 1 && l.actions[0].steps.len() == 1)
    );
    store
        .write(|tx| {
            tx.put(&back)?;
            Ok::<_, TxError<()>>(())
        })
        .await
        .unwrap_or_else(|_| panic!("a session is stored"));
    assert!(
        store.read(plans, &old_key).await.unwrap().is_some(),
        "its next put splits it"
    );
    let back: Session = store.get(&old.id).await.unwrap().expect("read back");
    assert_eq!(json_of(&back), json_of(&old));
}

/// Leased jobs are found by when their lease ends, soonest first, and only those ended by the
/// instant asked; a queued or done job is never listed. The jobs are removed afterwards.
async fn leases_by_end(store: &Db) {
    use upkeep_core::session::{JobRecord, JobState};
    let at = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default();
    // The job kind through its wire form: this crate does not name the protocol crate.
    let probe: serde_json::Value = serde_json::json!({"kind": "probe", "probes": []});
    let job = |n: u128, state: JobState| JobRecord {
        id: Id::from_u128(0x3000 + n),
        session_id: Id::from_u128(0x4000),
        computer_id: Id::from_u128(0x5000),
        job: serde_json::from_value(probe.clone()).unwrap(),
        lease_seconds: 60,
        created_at: at(0),
        state,
        attempts: 1,
    };
    // Keys in the opposite order of the lease ends: the index, not the key, orders them.
    let jobs = [
        job(
            1,
            JobState::Leased {
                until: at(30),
                losing: false,
            },
        ),
        job(
            2,
            JobState::Leased {
                until: at(20),
                losing: false,
            },
        ),
        job(
            3,
            JobState::Leased {
                until: at(10),
                losing: true,
            },
        ),
        job(4, JobState::Queued),
        job(5, JobState::Done { at: at(5) }),
    ];
    store
        .write(|tx| {
            for j in &jobs {
                tx.put::<_, ()>(j)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let ended = |t| store.leases_ended_by(t, 10);
    assert_eq!(ended(at(9)).await.unwrap(), Vec::<Id>::new());
    assert_eq!(ended(at(20)).await.unwrap(), vec![jobs[2].id, jobs[1].id]);
    assert_eq!(
        store.leases_ended_by(at(40), 1).await.unwrap(),
        vec![jobs[2].id]
    );
    // A lease given back (queued again) leaves the index with its old end.
    let mut back = jobs[2].clone();
    back.state = JobState::Queued;
    store.write(|tx| tx.put::<_, ()>(&back)).await.unwrap();
    assert_eq!(ended(at(40)).await.unwrap(), vec![jobs[1].id, jobs[0].id]);
    assert_eq!(store.check_indexes().await.unwrap(), Vec::<String>::new());
    store
        .write(|tx| {
            for j in &jobs {
                tx.delete::<JobRecord, ()>(j.id.as_bytes())?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

/// The first claim of a key wins; later ones get its value. The key is removed afterwards.
async fn claims(store: &Db) {
    let key = b"conformance:claim";
    let first = store
        .claim(Space::Meta, key, b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(first, b"one");
    let second = store
        .claim(Space::Meta, key, b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(second, b"one", "a later claim gets the first value");
    assert_eq!(store.read(Space::Meta, key).await.unwrap().unwrap(), b"one");
    store
        .apply_batch(Space::Meta, vec![(key.to_vec(), None)])
        .await
        .unwrap();
}

async fn records_and_indexes(store: &Db) {
    let t = tenant(1);
    let mut u = user(1, Some(t.id));
    store
        .write(|tx| {
            tx.put::<_, ()>(&t)?;
            tx.put(&u)
        })
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        store.get::<Tenant>(&t.id).await.unwrap().unwrap().name,
        "tenant 1"
    );
    let idx = IndexKey::new(TENANT_USERS, tenant_key(Some(t.id)));
    assert_eq!(
        store.index_count(&idx).await.unwrap(),
        1,
        "a put adds its index entries"
    );
    // Moving the user to no tenant moves its index entry in the same write.
    u.tenant_id = None;
    store.write(|tx| tx.put::<_, ()>(&u)).await.unwrap();
    assert_eq!(
        store.index_count(&idx).await.unwrap(),
        0,
        "a put drops stale entries"
    );
    let none = IndexKey::new(TENANT_USERS, tenant_key(None));
    let listed: Vec<User> = store.by_index(&none, None).try_collect().await.unwrap();
    assert_eq!(listed.iter().map(|u| u.id).collect::<Vec<_>>(), vec![u.id]);
    let gone = store
        .write(|tx| tx.delete::<User, ()>(u.id.as_bytes()))
        .await
        .unwrap();
    assert!(gone.is_some(), "a delete returns what it removed");
    assert_eq!(
        store.index_count(&none).await.unwrap(),
        0,
        "a delete drops its entries"
    );
    assert!(store.get::<User>(&u.id).await.unwrap().is_none());
}

async fn aborts_change_nothing(store: &Db) {
    let t = tenant(2);
    let r = store
        .write(|tx| {
            tx.put::<_, &str>(&t)?;
            Err::<(), _>(TxError::Abort("no"))
        })
        .await;
    assert!(
        matches!(r, Err(WriteError::Abort("no"))),
        "the abort value comes back"
    );
    assert!(
        store.get::<Tenant>(&t.id).await.unwrap().is_none(),
        "nothing was written"
    );
}

async fn unique_values(store: &Db) {
    let idx = IndexKey::new(USER_EMAIL, "a@example.com");
    let (a, b) = (user(10, None), user(11, None));
    for u in [&a, &b] {
        let claimed = store
            .write(|tx| {
                let ok = tx.claim_unique::<()>(&idx, &u.key_bytes())?;
                if ok {
                    tx.put(u)?;
                }
                Ok(ok)
            })
            .await
            .unwrap();
        assert_eq!(
            claimed,
            u.id == a.id,
            "only the first claim of a value holds"
        );
    }
    let owner: User = store.unique(&idx).await.unwrap().unwrap();
    assert_eq!(owner.id, a.id);
    store
        .write(|tx| {
            tx.release_unique::<()>(&idx)?;
            tx.delete::<User, ()>(a.id.as_bytes())
        })
        .await
        .unwrap();
    assert!(store.unique::<User>(&idx).await.unwrap().is_none());
}

trait KeyBytes {
    fn key_bytes(&self) -> Vec<u8>;
}
impl KeyBytes for User {
    fn key_bytes(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// More records than the first pages hold, so scans cross page boundaries both ways.
async fn scans_page_in_order(store: &Db) {
    let owner = Id::from_u128(0x3000);
    let users: Vec<User> = (100..400).map(|n| user(n, Some(owner))).collect();
    for chunk in users.chunks(64) {
        store
            .write(|tx| {
                for u in chunk {
                    tx.put::<_, ()>(u)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    let ids: Vec<Id> = users.iter().map(|u| u.id).collect();
    let all: Vec<User> = store.scan(None).try_collect().await.unwrap();
    assert_eq!(
        all.iter().map(|u| u.id).collect::<Vec<_>>(),
        ids,
        "scan: key order"
    );
    let after: Vec<User> = store
        .scan(Some(ids[149].as_bytes()))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        after.first().map(|u| u.id),
        Some(ids[150]),
        "scan: strictly after"
    );
    assert_eq!(after.len(), 150);
    let rev: Vec<User> = store
        .scan_rev(Some(ids[100].as_bytes()))
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<Id> = ids[..100].iter().rev().copied().collect();
    assert_eq!(
        rev.iter().map(|u| u.id).collect::<Vec<_>>(),
        expected,
        "scan_rev: before"
    );
    let idx = IndexKey::new(TENANT_USERS, tenant_key(Some(owner)));
    let keys: Vec<Vec<u8>> = store
        .index_scan(&idx, Some(ids[9].as_bytes()))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys.len(), 290, "index_scan: strictly after");
    assert_eq!(keys[0], ids[10].as_bytes().to_vec());
    let newest: Vec<User> = store.by_index_rev(&idx, None).try_collect().await.unwrap();
    assert_eq!(
        newest.first().map(|u| u.id),
        ids.last().copied(),
        "by_index_rev"
    );
    assert_eq!(store.index_count(&idx).await.unwrap(), 300);
    assert_eq!(store.count::<User>().await.unwrap(), 300);
    let prefix = store
        .count_range(
            Space::Records(Kind::User),
            &KeyRange::prefix(&ids[0].as_bytes()[..15]),
        )
        .await
        .unwrap();
    assert!(prefix >= 1, "count over a key prefix");
    prefix_scans_and_empty_ranges(store, &ids).await;
}

async fn prefix_scans_and_empty_ranges(store: &Db, ids: &[Id]) {
    // A prefix scan never leaves its prefix, whatever the cursor (ids end 0x20.. then 0x21..).
    let high = &ids[299].as_bytes()[..15];
    let below: Vec<User> = store
        .scan_prefix(high, Some(ids[0].as_bytes()))
        .try_collect()
        .await
        .unwrap();
    assert!(!below.is_empty() && below.iter().all(|u| u.id.as_bytes().starts_with(high)));
    assert_eq!(below.len(), 144, "scan_prefix: a cursor below the prefix");
    // An empty range reads nothing (and does not panic).
    let k = ids[5].as_bytes().to_vec();
    let empty = KeyRange {
        start: std::ops::Bound::Excluded(k.clone()),
        end: std::ops::Bound::Excluded(k),
        reverse: false,
    };
    let space = Space::Records(Kind::User);
    assert!(
        store
            .read_range(space, &empty, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count_range(space, &empty).await.unwrap(), 0);
}

async fn batches_and_snapshots(store: &Db) {
    let computer = Id::from_u128(0x4000);
    let at = chrono::DateTime::from_timestamp_millis(1_700_000_123_456).unwrap_or_default();
    store.put_last_seen(&[(computer, at)]).await.unwrap();
    assert_eq!(store.last_seen(&computer).await.unwrap(), Some(at));
    let snap = store.snapshot().await.unwrap();
    let names: Vec<&str> = snap.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, Space::all().map(Space::name).collect::<Vec<_>>());
    let users = snap
        .iter()
        .find(|(n, _)| n == "users")
        .map(|(_, e)| e.len());
    assert_eq!(users, Some(300), "the snapshot holds every record");
}

/// Loads `snapshot` into `empty` and checks it reads back the same.
pub async fn check_restore(from: Db, empty: Db) {
    let snap = from.snapshot().await.unwrap();
    empty.load_snapshot(&snap).await.unwrap();
    assert_eq!(
        empty.count::<User>().await.unwrap(),
        from.count::<User>().await.unwrap()
    );
    assert_eq!(empty.check_indexes().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        empty.session_counts(None).await.unwrap(),
        from.session_counts(None).await.unwrap(),
        "a restore counts the restored sessions"
    );
}

fn session(n: u128, tenant: Id, status: SessionStatus) -> Session {
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    Session {
        id: Id::from_u128(0x5000 + n),
        tenant_id: tenant,
        computer_id: Id::from_u128(0x6000 + n),
        schedule_id: None,
        status,
        status_reason: None,
        trigger: SessionTrigger::Manual,
        detection_only: false,
        options: MaintenanceOptions::default(),
        created_by: "conformance".into(),
        created_at: at,
        started_at: None,
        finished_at: None,
        execute_at: None,
        window_end: None,
        postpone_count: 0,
        end_user_postpones: 0,
        reboot_required: false,
        rebooted_at: None,
        compliance: None,
        items: vec![],
        actions: vec![],
        stage: Stage::Done,
        pending_job: None,
        wake_at: None,
        offline_since: None,
        last_sequence: 0,
        before_mail_sent: false,
        after_mail_sent: false,
        deployment_ids: None,
        used_tokens: vec![],
        offline_in_window: false,
        queued: false,
        time_zone: upkeep_core::types::TimeZone::UTC.into(),
        mail_siblings: vec![],
        reboot_held_until: None,
        preflight: vec![],
        preflight_since: None,
        preflight_message: None,
        pre_rebooted_at: None,
        prompted: false,
        revision: 0,
        rollout: None,
    }
}

/// Session counters change with their sessions in the same write: a new session adds one, a
/// status change moves one, a rewrite with the same status and tenant changes nothing, a
/// delete takes one away; per tenant and in all. `check_indexes` finds a wrong counter and
/// `rebuild_counts` mends it. The sessions are left in place (restores count them).
// long: one story of counts, step by step.
async fn session_counts(store: &Db) {
    use SessionStatus::{Cancelled, Executing as Running, Passed, Pending as Queued};
    let (a, b) = (Id::from_u128(0x7001), Id::from_u128(0x7002));
    let put = |s: Session| async move {
        store
            .write(move |tx| tx.put::<Session, ()>(&s))
            .await
            .map_err(|_| "write")
            .unwrap();
    };
    let counts = |t: Option<Id>| async move {
        let c = store.session_counts(t).await.unwrap();
        SessionStatus::ALL
            .iter()
            .map(|s| c.get(&s.code()).copied().unwrap_or(0))
            .collect::<Vec<u64>>()
    };
    let expect = |pairs: &[(SessionStatus, u64)]| {
        SessionStatus::ALL
            .iter()
            .map(|s| {
                pairs
                    .iter()
                    .filter(|(p, _)| p == s)
                    .map(|(_, n)| *n)
                    .sum::<u64>()
            })
            .collect::<Vec<u64>>()
    };
    for n in 0..40 {
        put(session(n, a, if n < 30 { Queued } else { Passed })).await;
    }
    put(session(100, b, Queued)).await;
    assert_eq!(counts(Some(a)).await, expect(&[(Queued, 30), (Passed, 10)]));
    assert_eq!(counts(Some(b)).await, expect(&[(Queued, 1)]));
    assert_eq!(counts(None).await, expect(&[(Queued, 31), (Passed, 10)]));
    for n in 0..5 {
        put(session(n, a, Running)).await;
    }
    put(session(5, a, Queued)).await; // unchanged
    put(session(6, a, Cancelled)).await;
    store
        .write(|tx| tx.delete::<Session, ()>(Id::from_u128(0x5000 + 30).as_bytes()))
        .await
        .map_err(|_| "delete")
        .unwrap();
    assert_eq!(
        counts(Some(a)).await,
        expect(&[(Queued, 24), (Running, 5), (Cancelled, 1), (Passed, 9)])
    );
    assert_eq!(
        counts(None).await,
        expect(&[(Queued, 25), (Running, 5), (Cancelled, 1), (Passed, 9)])
    );
    assert_eq!(counts(Some(Id::from_u128(0x7003))).await, expect(&[]));
    assert_eq!(store.check_indexes().await.unwrap(), Vec::<String>::new());
    // A counter out of step (a store written by hand, a bug) is found and mended.
    let mut all = store
        .read_range(
            Space::Index,
            &KeyRange::prefix(&[crate::counts::COUNTER]),
            1,
        )
        .await
        .unwrap();
    let (key, _) = all.pop().expect("a counter");
    store
        .apply_batch(
            Space::Index,
            vec![(key, Some(999u64.to_be_bytes().to_vec()))],
        )
        .await
        .unwrap();
    let problems = store.check_indexes().await.unwrap();
    assert!(
        problems.len() == 1 && problems[0].contains("999"),
        "{problems:?}"
    );
    store.rebuild_counts().await.unwrap();
    assert_eq!(store.check_indexes().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        counts(None).await,
        expect(&[(Queued, 25), (Running, 5), (Cancelled, 1), (Passed, 9)])
    );
}

/// Makes `store` (empty) a schema-1 store with sessions: three sessions, no counters, schema
/// version 1 in its meta space. Reopen it, then [`check_upgraded`].
pub async fn as_schema_1(store: &Db) {
    let (a, b) = (Id::from_u128(0x7101), Id::from_u128(0x7102));
    for s in [
        session(200, a, SessionStatus::Pending),
        session(201, a, SessionStatus::Pending),
        session(202, b, SessionStatus::Passed),
    ] {
        store
            .write(move |tx| tx.put::<Session, ()>(&s))
            .await
            .map_err(|_| "write")
            .unwrap();
    }
    let counters = store
        .read_range(
            Space::Index,
            &KeyRange::prefix(&[crate::counts::COUNTER]),
            100,
        )
        .await
        .unwrap();
    assert!(!counters.is_empty(), "written with counters");
    store
        .apply_batch(
            Space::Index,
            counters.into_iter().map(|(k, _)| (k, None)).collect(),
        )
        .await
        .unwrap();
    store
        .apply_batch(
            Space::Meta,
            vec![(
                b"schema_version".to_vec(),
                Some(1u64.to_be_bytes().to_vec()),
            )],
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        store.check_indexes().await.unwrap().len(),
        3,
        "three counters missing (sessions 200 and 201 fall in different shards)"
    );
}

/// A store [`as_schema_1`] left, reopened: its sessions are counted and its schema is current.
pub async fn check_upgraded(store: &Db) {
    assert_eq!(store.check_indexes().await.unwrap(), Vec::<String>::new());
    let pending = SessionStatus::Pending.code();
    let passed = SessionStatus::Passed.code();
    let of = |t: u128| store.session_counts(Some(Id::from_u128(t)));
    assert_eq!(
        of(0x7101).await.unwrap().into_iter().collect::<Vec<_>>(),
        vec![(pending, 2)]
    );
    assert_eq!(
        of(0x7102).await.unwrap().into_iter().collect::<Vec<_>>(),
        vec![(passed, 1)]
    );
    assert_eq!(
        store.read(Space::Meta, b"schema_version").await.unwrap(),
        Some(crate::SCHEMA_VERSION.to_be_bytes().to_vec())
    );
}
