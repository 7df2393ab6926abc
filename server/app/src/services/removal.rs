//! Deleting computers, people, software, tasks and tenants, with what refers to them.
//!
//! The rule: what exists only for the deleted record goes with it (a computer's inventory,
//! deployments and schedules aimed at it alone, software's deployments, a tenant's everything);
//! what another record still needs refuses the delete with `CONFLICT` naming that record
//! (software another depends on, a task software configures with, an unfinished session).
//! Finished sessions of a deleted computer stay as history (their `computer` reads null); a
//! deleted tenant's sessions go with it.
//!
//! Everything to delete is gathered by reads first (a transaction cannot scan), then removed
//! in one transaction that checks again the records the decision rested on. Deletes of
//! computers and tenants hold off session starts from their check to their commit
//! (`hold_session_starts`; a start reads its computer again under the same lock), so no session
//! starts on a computer between "it has none unfinished" and its removal.

use crate::error::{ApiError, ApiResult};
use futures_util::TryStreamExt;
use upkeep_core::domain::*;
use upkeep_core::impact::Detection;
use upkeep_core::inventory::InventoryRecord;
use upkeep_core::session::{ItemWhat, Session, SessionEvent};
use upkeep_core::versions::VersionsCache;
use upkeep_core::webhook::{Delivery, Webhook};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey, Record, Tx, TxError};

/// Everything one delete removes, gathered before its transaction.
#[derive(Default)]
pub struct Removal {
    tenant: Option<Tenant>,
    users: Vec<User>,
    api_keys: Vec<ApiKey>,
    persons: Vec<Id>,
    computers: Vec<Computer>,
    enrollment_keys: Vec<EnrollmentKey>,
    software: Vec<Id>,
    tasks: Vec<Id>,
    deployments: Vec<Id>,
    schedules: Vec<Id>,
    webhooks: Vec<Id>,
    deliveries: Vec<Id>,
    sessions: Vec<Id>,
    events: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    versions: Vec<Vec<u8>>,
    /// Last detections (`impact::Detection`) of removed computers, software and tasks.
    detections: Vec<Vec<u8>>,
    /// A removed tenant's rollouts (`rollout::Rollout`).
    rollouts: Vec<Id>,
    /// Computers that keep existing but lose their primary person.
    unlink_person: Vec<Id>,
}

async fn all<T: Record + Send>(
    s: impl futures_util::Stream<Item = upkeep_store::Result<T>>,
) -> ApiResult<Vec<T>> {
    Ok(s.try_collect().await?)
}

/// The unfinished sessions (a short list: the index holds only those).
async fn unfinished(store: &Db) -> ApiResult<Vec<Session>> {
    let v = all(store.by_index::<Session>(&IndexKey::new(ACTIVE_SESSIONS, []), None)).await?;
    Ok(v.into_iter().filter(|s| !s.status.is_terminal()).collect())
}

fn busy(what: &str, s: &Session) -> ApiError {
    ApiError::Conflict(format!(
        "{what} is used by the unfinished maintenance session {}: cancel it or let it finish first",
        s.id
    ))
}

/// A tenant's deployments and schedules, with the cross-tenant ones (which may target its
/// computers and people too).
async fn targeted(store: &Db, tenant: Id) -> ApiResult<(Vec<Deployment>, Vec<Schedule>)> {
    let mut d = Vec::new();
    let mut s = Vec::new();
    for k in [tenant_key(Some(tenant)), tenant_key(None)] {
        d.extend(
            all(store.by_index::<Deployment>(&IndexKey::new(TENANT_DEPLOYMENTS, &k), None)).await?,
        );
        s.extend(
            all(store.by_index::<Schedule>(&IndexKey::new(TENANT_SCHEDULES, &k), None)).await?,
        );
    }
    Ok((d, s))
}

/// Every software and task a tenant's computers may have been detected for: the tenant's own
/// and the cross-tenant ones.
async fn subjects_of(store: &Db, tenant: Id) -> ApiResult<Vec<Subject>> {
    let mut out = Vec::new();
    for k in [tenant_key(Some(tenant)), tenant_key(None)] {
        let ids = |i: u8| {
            store
                .index_scan(&IndexKey::new(i, &k), None)
                .try_collect::<Vec<Vec<u8>>>()
        };
        out.extend(
            ids(TENANT_SOFTWARE)
                .await?
                .iter()
                .filter_map(|k| Id::from_slice(k))
                .map(Subject::Software),
        );
        out.extend(
            ids(TENANT_TASKS)
                .await?
                .iter()
                .filter_map(|k| Id::from_slice(k))
                .map(Subject::Task),
        );
    }
    Ok(out)
}

/// The keys of a software's or task's detections, in one tenant or all.
async fn detections_of(
    store: &Db,
    subject: Subject,
    tenant: Option<Id>,
) -> ApiResult<Vec<Vec<u8>>> {
    let prefix = detection_key(subject, tenant, None);
    let found: Vec<Detection> = store.scan_prefix(&prefix, None).try_collect().await?;
    Ok(found.iter().map(Record::key).collect())
}

fn aims_at(t: &Target, kind: TargetKind, id: Id) -> bool {
    t.kind == kind && t.value.as_deref() == Some(id.to_string().as_str())
}

impl Removal {
    /// A computer: refused while a session of it is unfinished; its inventory and the
    /// deployments and schedules that target it alone go with it.
    pub async fn computer(store: &Db, c: Computer) -> ApiResult<Removal> {
        if let Some(s) = unfinished(store)
            .await?
            .iter()
            .find(|s| s.computer_id == c.id)
        {
            return Err(busy("the computer", s));
        }
        let (d, s) = targeted(store, c.tenant_id).await?;
        let mut detections = Vec::new();
        for subject in subjects_of(store, c.tenant_id).await? {
            let key = detection_key(subject, Some(c.tenant_id), Some(c.id));
            if store.get_by_key::<Detection>(&key).await?.is_some() {
                detections.push(key);
            }
        }
        Ok(Removal {
            detections,
            deployments: d
                .iter()
                .filter(|d| aims_at(&d.target, TargetKind::Computer, c.id))
                .map(|d| d.id)
                .collect(),
            schedules: s
                .iter()
                .filter(|s| aims_at(&s.target, TargetKind::Computer, c.id))
                .map(|s| s.id)
                .collect(),
            computers: vec![c],
            ..Default::default()
        })
    }

    /// A person: their computers keep running without a primary person; deployments and
    /// schedules that target them alone go.
    pub async fn person(store: &Db, p: &Person) -> ApiResult<Removal> {
        let (d, s) = targeted(store, p.tenant_id).await?;
        let computers = all(store.by_index::<Computer>(
            &IndexKey::new(TENANT_COMPUTERS, p.tenant_id.as_bytes()),
            None,
        ))
        .await?;
        Ok(Removal {
            persons: vec![p.id],
            unlink_person: computers
                .iter()
                .filter(|c| c.primary_person_id == Some(p.id))
                .map(|c| c.id)
                .collect(),
            deployments: d
                .iter()
                .filter(|d| aims_at(&d.target, TargetKind::Person, p.id))
                .map(|d| d.id)
                .collect(),
            schedules: s
                .iter()
                .filter(|s| aims_at(&s.target, TargetKind::Person, p.id))
                .map(|s| s.id)
                .collect(),
            ..Default::default()
        })
    }

    /// Software: refused while other software depends on it or an unfinished session
    /// installs it; its deployments go with it.
    pub async fn software(store: &Db, sw: &Software) -> ApiResult<Removal> {
        if let Some(other) = all(store.scan::<Software>(None))
            .await?
            .into_iter()
            .find(|o| o.depends_on.contains(&sw.id))
        {
            return Err(ApiError::Conflict(format!(
                "software \"{}\" ({}) depends on it: remove it from its dependsOn first",
                other.name, other.id
            )));
        }
        let uses = |s: &Session| {
            s.items.iter().any(
                |i| matches!(&i.what, ItemWhat::Software { software, .. } if software.id == sw.id),
            )
        };
        if let Some(s) = unfinished(store).await?.iter().find(|s| uses(s)) {
            return Err(busy("the software", s));
        }
        Ok(Removal {
            detections: detections_of(store, Subject::Software(sw.id), None).await?,
            software: vec![sw.id],
            deployments: all(store.scan::<Deployment>(None))
                .await?
                .into_iter()
                .filter(|d| d.software_id == Some(sw.id))
                .map(|d| d.id)
                .collect(),
            versions: all(store.scan::<VersionsCache>(None))
                .await?
                .iter()
                .filter(|v| v.software_id == sw.id)
                .map(Record::key)
                .collect(),
            ..Default::default()
        })
    }

    /// A maintenance task: refused while software configures itself with it or an unfinished
    /// session runs it; its deployments go with it.
    pub async fn task(store: &Db, t: &MaintenanceTask) -> ApiResult<Removal> {
        if let Some(sw) = all(store.scan::<Software>(None))
            .await?
            .into_iter()
            .find(|s| s.configuration_task_id == Some(t.id))
        {
            return Err(ApiError::Conflict(format!(
                "software \"{}\" ({}) uses it as its configuration task: change that first",
                sw.name, sw.id
            )));
        }
        let uses = |s: &Session| {
            s.items.iter().any(|i| match &i.what {
                ItemWhat::Task { task, .. } => task.id == t.id,
                ItemWhat::Software { software, .. } => software
                    .configuration_task
                    .as_ref()
                    .is_some_and(|c| c.id == t.id),
            })
        };
        if let Some(s) = unfinished(store).await?.iter().find(|s| uses(s)) {
            return Err(busy("the task", s));
        }
        Ok(Removal {
            detections: detections_of(store, Subject::Task(t.id), None).await?,
            tasks: vec![t.id],
            deployments: all(store.scan::<Deployment>(None))
                .await?
                .into_iter()
                .filter(|d| d.maintenance_task_id == Some(t.id))
                .map(|d| d.id)
                .collect(),
            ..Default::default()
        })
    }

    /// A tenant and everything it owns (audit records stay). Refused while it has computers
    /// unless `force`, and always while one of its sessions is unfinished.
    pub async fn tenant(store: &Db, tenant: &Tenant, force: bool) -> ApiResult<Removal> {
        let t = tenant.id;
        let owned = |i: u8| IndexKey::new(i, tenant_key(Some(t)));
        let computers = all(store.by_index::<Computer>(&owned(TENANT_COMPUTERS), None)).await?;
        if !computers.is_empty() && !force {
            return Err(ApiError::Conflict(format!(
                "the tenant has {} computer(s): delete them first, or pass force: true to delete the tenant with everything it owns",
                computers.len()
            )));
        }
        if let Some(s) = unfinished(store).await?.iter().find(|s| s.tenant_id == t) {
            return Err(busy("the tenant", s));
        }
        let mut r = Removal {
            tenant: Some(tenant.clone()),
            computers,
            users: all(store.by_index(&owned(TENANT_USERS), None)).await?,
            api_keys: all(store.by_index(&owned(TENANT_API_KEYS), None)).await?,
            enrollment_keys: all(store.by_index(&owned(TENANT_ENROLLMENT_KEYS), None)).await?,
            ..Default::default()
        };
        let ids = |i: u8| async move {
            let keys: Vec<Vec<u8>> = store.index_scan(&owned(i), None).try_collect().await?;
            Ok::<_, ApiError>(
                keys.iter()
                    .filter_map(|k| Id::from_slice(k))
                    .collect::<Vec<_>>(),
            )
        };
        r.persons = ids(TENANT_PERSONS).await?;
        r.software = ids(TENANT_SOFTWARE).await?;
        r.tasks = ids(TENANT_TASKS).await?;
        r.deployments = ids(TENANT_DEPLOYMENTS).await?;
        r.schedules = ids(TENANT_SCHEDULES).await?;
        r.cross_tenant_aims(store).await?;
        r.webhooks = ids(TENANT_WEBHOOKS).await?;
        r.rollouts = ids(TENANT_ROLLOUTS).await?;
        r.tenant_history(store, t).await?;
        for subject in subjects_of(store, t).await? {
            r.detections
                .extend(detections_of(store, subject, Some(t)).await?);
        }
        Ok(r)
    }

    /// Cross-tenant deployments and schedules aimed at one of the removed computers or people
    /// go too (they can aim at any tenant's).
    async fn cross_tenant_aims(&mut self, store: &Db) -> ApiResult<()> {
        let k = tenant_key(None);
        let aimed = |t: &Target| {
            self.computers
                .iter()
                .any(|c| aims_at(t, TargetKind::Computer, c.id))
                || self
                    .persons
                    .iter()
                    .any(|p| aims_at(t, TargetKind::Person, *p))
        };
        let d =
            all(store.by_index::<Deployment>(&IndexKey::new(TENANT_DEPLOYMENTS, &k), None)).await?;
        let s = all(store.by_index::<Schedule>(&IndexKey::new(TENANT_SCHEDULES, &k), None)).await?;
        let d: Vec<Id> = d
            .iter()
            .filter(|d| aimed(&d.target))
            .map(|d| d.id)
            .collect();
        let s: Vec<Id> = s
            .iter()
            .filter(|s| aimed(&s.target))
            .map(|s| s.id)
            .collect();
        self.deployments.extend(d);
        self.schedules.extend(s);
        Ok(())
    }

    /// A tenant's sessions with their events and output, webhook deliveries, versions cache.
    async fn tenant_history(&mut self, store: &Db, t: Id) -> ApiResult<()> {
        let sessions =
            all(store.by_index::<Session>(&IndexKey::new(TENANT_SESSIONS, t.as_bytes()), None))
                .await?;
        for s in &sessions {
            let events = all(store.scan_prefix::<SessionEvent>(s.id.as_bytes(), None)).await?;
            self.events.extend(events.iter().map(Record::key));
            self.outputs.extend(
                (0..s.actions.len() as u32).map(|a| upkeep_core::output::output_key(s.id, a)),
            );
        }
        self.sessions = sessions.iter().map(|s| s.id).collect();
        for w in &self.webhooks {
            let keys: Vec<Vec<u8>> = store
                .index_scan(&IndexKey::new(WEBHOOK_DELIVERIES, w.as_bytes()), None)
                .try_collect()
                .await?;
            self.deliveries
                .extend(keys.iter().filter_map(|k| Id::from_slice(k)));
        }
        let cache = all(store.scan_prefix::<VersionsCache>(t.as_bytes(), None)).await?;
        self.versions = cache.iter().map(Record::key).collect();
        Ok(())
    }

    /// Removes everything in one transaction; `check` runs first inside it (the records the
    /// decision rested on, read again).
    pub async fn apply(
        &self,
        store: &Db,
        check: impl Fn(&mut Tx<'_>) -> Result<(), TxError<ApiError>> + Send + Sync,
    ) -> ApiResult<()> {
        store
            .write(|tx| {
                check(tx)?;
                self.remove(tx)
            })
            .await?;
        store.flush().await?;
        Ok(())
    }

    // long: one line per kind a delete may reach, in one transaction
    fn remove(&self, tx: &mut Tx<'_>) -> Result<(), TxError<ApiError>> {
        fn gone<T: Record>(tx: &mut Tx<'_>, ids: &[Id]) -> Result<(), TxError<ApiError>> {
            for id in ids {
                tx.delete::<T, ApiError>(id.as_bytes())?;
            }
            Ok(())
        }
        if let Some(t) = &self.tenant {
            tx.delete::<Tenant, ApiError>(t.id.as_bytes())?;
            release_owned(tx, &tenant_name_key(&t.name), t.id)?;
        }
        for c in &self.computers {
            tx.delete::<Computer, ApiError>(c.id.as_bytes())?;
            tx.delete::<InventoryRecord, ApiError>(c.id.as_bytes())?;
            release_owned(
                tx,
                &IndexKey::new(MACHINE_ID, machine_value(c.tenant_id, c.machine_id.trim())),
                c.id,
            )?;
            if let Some(h) = &c.agent_token_hash {
                release_owned(tx, &IndexKey::new(AGENT_TOKEN, h), c.id)?;
            }
        }
        // The record a delete names comes first: the audit record describes the first change.
        gone::<Person>(tx, &self.persons)?;
        gone::<Software>(tx, &self.software)?;
        gone::<MaintenanceTask>(tx, &self.tasks)?;
        for u in &self.users {
            tx.delete::<User, ApiError>(u.id.as_bytes())?;
            release_owned(tx, &IndexKey::new(USER_EMAIL, u.email.text()), u.id)?;
        }
        for k in &self.api_keys {
            tx.delete::<ApiKey, ApiError>(k.id.as_bytes())?;
            release_owned(tx, &IndexKey::new(API_KEY_HASH, &k.secret_hash), k.id)?;
        }
        for k in &self.enrollment_keys {
            // An enrollment counts its key's use in its own transaction: a changed count means
            // a computer joined the tenant since it was read, which this delete would orphan.
            let now: Option<EnrollmentKey> =
                tx.delete::<EnrollmentKey, ApiError>(k.id.as_bytes())?;
            if now.is_some_and(|n| n.uses != k.uses) {
                return Err(TxError::Abort(ApiError::Conflict(
                    "a computer enrolled in the tenant meanwhile: try again".into(),
                )));
            }
            release_owned(tx, &IndexKey::new(ENROLLMENT_KEY_HASH, &k.key_hash), k.id)?;
        }
        for c in &self.unlink_person {
            if let Some(mut comp) = tx.get::<Computer, ApiError>(c)? {
                comp.primary_person_id = None;
                tx.put(&comp)?;
            }
        }
        gone::<Deployment>(tx, &self.deployments)?;
        gone::<Schedule>(tx, &self.schedules)?;
        gone::<Webhook>(tx, &self.webhooks)?;
        gone::<Delivery>(tx, &self.deliveries)?;
        gone::<Session>(tx, &self.sessions)?;
        gone::<upkeep_core::rollout::Rollout>(tx, &self.rollouts)?;
        for k in &self.events {
            tx.delete::<SessionEvent, ApiError>(k)?;
        }
        for k in &self.outputs {
            tx.delete::<upkeep_core::output::OutputRecord, ApiError>(k)?;
        }
        for k in &self.versions {
            tx.delete::<VersionsCache, ApiError>(k)?;
        }
        for k in &self.detections {
            tx.delete::<Detection, ApiError>(k)?;
        }
        Ok(())
    }

    /// What the server keeps in memory about the removed records, to forget after the
    /// transaction: agent tokens and API key hashes.
    pub fn forget(&self, app: &super::App) {
        for c in &self.computers {
            app.agents
                .set_token(c.agent_token_hash.as_deref(), None, c.id);
            app.tell_replicas(crate::services::cluster::Note::AgentToken { computer: c.id });
        }
        for k in &self.api_keys {
            app.accounts.forget_api_key(&k.secret_hash);
        }
        if !self.users.is_empty() || !self.api_keys.is_empty() {
            app.credentials_may_have_ended();
        }
    }
}

/// Releases a unique index value if `owner` still holds it.
pub fn release_owned(tx: &mut Tx<'_>, idx: &IndexKey, owner: Id) -> Result<(), TxError<ApiError>> {
    if tx.index_has(idx)?.as_deref() == Some(owner.as_bytes().as_slice()) {
        tx.release_unique(idx)?;
    }
    Ok(())
}
