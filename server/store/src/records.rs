//! How each record kind is keyed and indexed. The index ids below are stored on disk: never
//! reuse or renumber one.

use super::{IndexKey, Kind, Record, StoreError, codec};
use upkeep_core::domain::*;
use upkeep_core::mail::OutboxMail;
use upkeep_core::session::{JobRecord, JobState, Session, SessionEvent};
use upkeep_core::webhook::{Delivery, Webhook};

pub const USER_EMAIL: u8 = 1;
pub const TENANT_PERSONS: u8 = 2;
pub const TENANT_COMPUTERS: u8 = 3;
pub const TAG_COMPUTERS: u8 = 4;
pub const MACHINE_ID: u8 = 5;
pub const AGENT_TOKEN: u8 = 6;
pub const TENANT_SOFTWARE: u8 = 7;
pub const TENANT_TASKS: u8 = 8;
pub const TENANT_DEPLOYMENTS: u8 = 9;
pub const TENANT_SCHEDULES: u8 = 10;
pub const TENANT_ENROLLMENT_KEYS: u8 = 11;
pub const ENROLLMENT_KEY_HASH: u8 = 12;
pub const COMPUTER_SESSIONS: u8 = 13;
pub const STATUS_SESSIONS: u8 = 14;
pub const TENANT_SESSIONS: u8 = 15;
pub const OPEN_JOBS: u8 = 16;
pub const PENDING_MAIL: u8 = 17;
pub const API_KEY_HASH: u8 = 18;
pub const TENANT_API_KEYS: u8 = 19;
pub const TENANT_WEBHOOKS: u8 = 20;
pub const WEBHOOK_DELIVERIES: u8 = 21;
pub const SCHEDULE_SESSIONS: u8 = 22;
pub const TENANT_USERS: u8 = 23;
pub const PENDING_DELIVERIES: u8 = 24;
pub const ACTIVE_SESSIONS: u8 = 25;
pub const TENANT_AUDIT: u8 = 26;
pub const ACTOR_AUDIT: u8 = 27;
/// Unique: a tenant's name, trimmed and in lower case (`tenant_name_key`).
pub const TENANT_NAME: u8 = 28;
/// Jobs handed out to an agent in cluster mode, by when their lease ends (`leased_jobs_key`):
/// any replica finds the leases that ran out from here.
pub const LEASED_JOBS: u8 = 29;
/// Unique, cluster mode: a computer's id → its unfinished session's key, claimed in the
/// transaction that starts the session and released by the step that finishes it, so two
/// replicas never start two sessions on one computer.
pub const COMPUTER_ACTIVE_SESSION: u8 = 30;
/// Unique, cluster mode: a running slot's number (u32, big-endian) → the key of the session
/// holding it, claimed by the step that moves a session into the stages that need a slot and
/// released by the step that leaves them: the concurrency ceiling counted across replicas.
pub const RUNNING_SLOT: u8 = 31;
/// Unique, cluster mode: a session's id → the running slot it holds (u32, big-endian), the
/// way back from [`RUNNING_SLOT`] for the step that releases it.
pub const SESSION_SLOT: u8 = 32;
/// A rollout's tenant (`tenant_key`) → its rollouts.
pub const TENANT_ROLLOUTS: u8 = 40;
/// Rollouts that are `RUNNING` or `WAITING` (empty value): what the driver looks at.
pub const ACTIVE_ROLLOUTS: u8 = 41;
/// A rollout's id → the sessions it started.
pub const ROLLOUT_SESSIONS: u8 = 42;

/// The all-zero id stands for "no tenant" (cross-tenant records) in tenant indexes.
pub const NO_TENANT: [u8; 16] = [0; 16];

pub fn tenant_key(t: Option<Id>) -> Vec<u8> {
    t.map(|t| t.as_bytes().to_vec())
        .unwrap_or_else(|| NO_TENANT.to_vec())
}

pub fn tag_value(tenant: Id, tag: &str) -> Vec<u8> {
    let mut v = tenant.as_bytes().to_vec();
    v.extend_from_slice(upkeep_core::types::Tag::key_of(tag).as_bytes());
    v
}

/// The unique index value of a tenant name: names differing only in case or surrounding
/// blanks are the same name.
pub fn tenant_name_key(name: &str) -> IndexKey {
    IndexKey::new(TENANT_NAME, name.trim().to_lowercase())
}

pub fn machine_value(tenant: Id, machine_id: &str) -> Vec<u8> {
    let mut v = tenant.as_bytes().to_vec();
    v.extend_from_slice(machine_id.as_bytes());
    v
}

impl Record for User {
    const KIND: Kind = Kind::User;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_USERS, tenant_key(self.tenant_id))]
    }
}

impl Record for Tenant {
    const KIND: Kind = Kind::Tenant;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

impl Record for Person {
    const KIND: Kind = Kind::Person;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_PERSONS, self.tenant_id.as_bytes())]
    }
}

impl Record for Computer {
    const KIND: Kind = Kind::Computer;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        let mut v = vec![IndexKey::new(TENANT_COMPUTERS, self.tenant_id.as_bytes())];
        for t in &self.tags {
            v.push(IndexKey::new(
                TAG_COMPUTERS,
                tag_value(self.tenant_id, t.text()),
            ));
        }
        v
    }
}

impl Record for Software {
    const KIND: Kind = Kind::Software;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_SOFTWARE, tenant_key(self.tenant_id))]
    }
}

impl Record for MaintenanceTask {
    const KIND: Kind = Kind::Task;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_TASKS, tenant_key(self.tenant_id))]
    }
}

impl Record for Deployment {
    const KIND: Kind = Kind::Deployment;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(
            TENANT_DEPLOYMENTS,
            tenant_key(self.tenant_id),
        )]
    }
}

impl Record for Schedule {
    const KIND: Kind = Kind::Schedule;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_SCHEDULES, tenant_key(self.tenant_id))]
    }
}

impl Record for EnrollmentKey {
    const KIND: Kind = Kind::EnrollmentKey;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(
            TENANT_ENROLLMENT_KEYS,
            self.tenant_id.as_bytes(),
        )]
    }
}

impl Record for ApiKey {
    const KIND: Kind = Kind::ApiKey;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_API_KEYS, tenant_key(self.tenant_id))]
    }
}

impl Record for Session {
    const KIND: Kind = Kind::Session;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        session_index_keys(
            self.computer_id,
            self.status,
            self.tenant_id,
            self.schedule_id,
            self.rollout.map(|r| r.id),
        )
    }
    /// Every step rewrites its session: reading back only the indexed fields of the old value
    /// (not its plan, scripts and actions) halves the decoding a step costs.
    fn stored_index_keys(bytes: &[u8]) -> Result<Vec<IndexKey>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Indexed {
            tenant_id: Id,
            computer_id: Id,
            schedule_id: Option<Id>,
            status: upkeep_core::session::SessionStatus,
            #[serde(default)]
            rollout: Option<upkeep_core::session::RolloutRef>,
        }
        let v: Indexed = codec::decode(bytes)?;
        Ok(session_index_keys(
            v.computer_id,
            v.status,
            v.tenant_id,
            v.schedule_id,
            v.rollout.map(|r| r.id),
        ))
    }
    const DETACHED: Option<Kind> = Some(Kind::SessionPlan);
    fn encode_parts(&self) -> Result<crate::StoredParts, StoreError> {
        let p = crate::session_split::encode(self)?;
        Ok((p.hot, Some((p.plan, p.digest))))
    }
    fn decode_parts(main: &[u8], detached: Option<&[u8]>) -> Result<Self, StoreError> {
        crate::session_split::decode(main, detached)
    }
    fn stored_detached_digest(main: &[u8]) -> Result<Option<String>, StoreError> {
        crate::session_split::stored_digest(main)
    }
}

fn session_index_keys(
    computer: Id,
    status: upkeep_core::session::SessionStatus,
    tenant: Id,
    schedule: Option<Id>,
    rollout: Option<Id>,
) -> Vec<IndexKey> {
    let mut v = vec![
        IndexKey::new(COMPUTER_SESSIONS, computer.as_bytes()),
        IndexKey::new(STATUS_SESSIONS, [status.code()]),
        IndexKey::new(TENANT_SESSIONS, tenant.as_bytes()),
    ];
    if let Some(s) = schedule {
        v.push(IndexKey::new(SCHEDULE_SESSIONS, s.as_bytes()));
    }
    if let Some(r) = rollout {
        v.push(IndexKey::new(ROLLOUT_SESSIONS, r.as_bytes()));
    }
    if !status.is_terminal() {
        v.push(IndexKey::new(ACTIVE_SESSIONS, []));
    }
    v
}

impl Record for upkeep_core::rollout::Rollout {
    const KIND: Kind = Kind::Rollout;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        let mut v = vec![IndexKey::new(TENANT_ROLLOUTS, tenant_key(self.tenant_id))];
        if self.status.is_active() {
            v.push(IndexKey::new(ACTIVE_ROLLOUTS, []));
        }
        v
    }
}

/// Events are keyed (session id, sequence) so a session's log is one ordered prefix scan.
pub fn event_key(session: Id, sequence: u64) -> Vec<u8> {
    let mut k = session.as_bytes().to_vec();
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

impl Record for SessionEvent {
    const KIND: Kind = Kind::Event;
    fn key(&self) -> Vec<u8> {
        event_key(self.session_id, self.sequence)
    }
}

impl Record for JobRecord {
    const KIND: Kind = Kind::Job;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        job_index_keys(self.computer_id, &self.state)
    }
    fn stored_index_keys(bytes: &[u8]) -> Result<Vec<IndexKey>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Indexed {
            computer_id: Id,
            state: JobState,
        }
        let v: Indexed = codec::decode(bytes)?;
        Ok(job_index_keys(v.computer_id, &v.state))
    }
}

fn job_index_keys(computer: Id, state: &JobState) -> Vec<IndexKey> {
    match state {
        JobState::Done { .. } => vec![],
        JobState::Queued => vec![IndexKey::new(OPEN_JOBS, computer.as_bytes())],
        JobState::Leased { until, .. } => vec![
            IndexKey::new(OPEN_JOBS, computer.as_bytes()),
            leased_jobs_key(*until),
        ],
    }
}

/// The `LEASED_JOBS` value of a lease ending at `until`: its milliseconds, big-endian, so that
/// index entries sort by when their lease ends (see [`crate::Db`]'s `leases_ended_by`).
pub fn leased_jobs_key(until: Time) -> IndexKey {
    let ms = u64::try_from(until.timestamp_millis()).unwrap_or(0);
    IndexKey::new(LEASED_JOBS, ms.to_be_bytes())
}

impl Record for OutboxMail {
    const KIND: Kind = Kind::Mail;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        if self.is_pending() {
            vec![IndexKey::new(PENDING_MAIL, [])]
        } else {
            vec![]
        }
    }
}

impl Record for Webhook {
    const KIND: Kind = Kind::Webhook;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        vec![IndexKey::new(TENANT_WEBHOOKS, tenant_key(self.tenant_id))]
    }
}

impl Record for Delivery {
    const KIND: Kind = Kind::Delivery;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        let mut v = vec![IndexKey::new(
            WEBHOOK_DELIVERIES,
            self.webhook_id.as_bytes(),
        )];
        if self.is_pending() {
            v.push(IndexKey::new(PENDING_DELIVERIES, []));
        }
        v
    }
}

/// A remembered idempotent call: (caller, key) → the result's ids.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    pub created_at: Time,
    pub session_ids: Vec<Id>,
    /// SHA-256 (hex) of the call's input without its key: a repeat with the same key and a
    /// different input is refused (absent in records from before: not compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
}

impl Record for IdempotencyRecord {
    const KIND: Kind = Kind::Idempotency;
    fn key(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }
}

impl Record for upkeep_core::audit::AuditEvent {
    const KIND: Kind = Kind::Audit;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn index_keys(&self) -> Vec<IndexKey> {
        let mut v = vec![IndexKey::new(TENANT_AUDIT, tenant_key(self.tenant_id))];
        if let Some(a) = self.actor_id {
            v.push(IndexKey::new(ACTOR_AUDIT, a.as_bytes()));
        }
        v
    }
}

impl Record for upkeep_core::output::OutputRecord {
    const KIND: Kind = Kind::Output;
    fn key(&self) -> Vec<u8> {
        upkeep_core::output::output_key(self.session_id, self.action)
    }
}

/// One per computer, keyed by the computer's id: written only when the agent's report changed.
impl Record for upkeep_core::inventory::InventoryRecord {
    const KIND: Kind = Kind::Inventory;
    fn key(&self) -> Vec<u8> {
        self.computer_id.as_bytes().to_vec()
    }
}

/// One per tenant and software with a versions script: what the script last printed on one of
/// the tenant's computers (the cache `versionsCacheMinutes` keeps).
impl Record for upkeep_core::versions::VersionsCache {
    const KIND: Kind = Kind::Versions;
    fn key(&self) -> Vec<u8> {
        versions_key(self.tenant_id, self.software_id)
    }
}

/// A session's attestation, keyed by the session's id (one per session, written when it ends).
impl Record for upkeep_core::attest::Attestation {
    const KIND: Kind = Kind::Attestation;
    fn key(&self) -> Vec<u8> {
        self.session_id.as_bytes().to_vec()
    }
}

/// One per computer and software or task: what its last detection found (impact previews
/// plan from it). Keyed subject, tenant, computer, so a preview reads one subject's detections
/// across a tenant (or every tenant) in one range.
impl Record for upkeep_core::impact::Detection {
    const KIND: Kind = Kind::Detection;
    fn key(&self) -> Vec<u8> {
        detection_key(self.subject, Some(self.tenant_id), Some(self.computer_id))
    }
}

/// The key of a detection, or (with `tenant` or `computer` left out) the prefix of a subject's
/// (and tenant's) detections.
pub fn detection_key(subject: Subject, tenant: Option<Id>, computer: Option<Id>) -> Vec<u8> {
    let (Subject::Software(s) | Subject::Task(s)) = subject;
    let mut k = s.as_bytes().to_vec();
    for part in [tenant, computer].into_iter().map_while(|p| p) {
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// The key of a tenant's versions cache entry for one software.
pub fn versions_key(tenant: Id, software: Id) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.extend_from_slice(software.as_bytes());
    k
}

pub fn index_keys_of(kind: Kind, value: &[u8]) -> Result<Vec<IndexKey>, StoreError> {
    fn of<T: Record>(v: &[u8]) -> Result<Vec<IndexKey>, StoreError> {
        Ok(codec::decode::<T>(v)?.index_keys())
    }
    match kind {
        Kind::User => of::<User>(value),
        Kind::Tenant => of::<Tenant>(value),
        Kind::Person => of::<Person>(value),
        Kind::Computer => of::<Computer>(value),
        Kind::Software => of::<Software>(value),
        Kind::Task => of::<MaintenanceTask>(value),
        Kind::Deployment => of::<Deployment>(value),
        Kind::Schedule => of::<Schedule>(value),
        Kind::EnrollmentKey => of::<EnrollmentKey>(value),
        Kind::Session => of::<Session>(value),
        Kind::Event => of::<SessionEvent>(value),
        Kind::Job => of::<JobRecord>(value),
        Kind::Mail => of::<OutboxMail>(value),
        Kind::ApiKey => of::<ApiKey>(value),
        Kind::Webhook => of::<Webhook>(value),
        Kind::Delivery => of::<Delivery>(value),
        Kind::Idempotency => of::<IdempotencyRecord>(value),
        Kind::Audit => of::<upkeep_core::audit::AuditEvent>(value),
        Kind::Output => of::<upkeep_core::output::OutputRecord>(value),
        Kind::Inventory => of::<upkeep_core::inventory::InventoryRecord>(value),
        Kind::Versions => of::<upkeep_core::versions::VersionsCache>(value),
        Kind::Attestation => of::<upkeep_core::attest::Attestation>(value),
        Kind::Rollout => of::<upkeep_core::rollout::Rollout>(value),
        Kind::Detection => of::<upkeep_core::impact::Detection>(value),
        // Not indexed: read only with its session (and checked to decode).
        Kind::SessionPlan => {
            codec::decode::<serde_json::Value>(value)?;
            Ok(vec![])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store reads back only the indexed fields of a stored session to retire its old index
    /// entries; that view must give exactly what the full record gives.
    #[test]
    fn stored_index_view_of_a_session_matches_the_record() {
        use upkeep_core::domain::Id;
        use upkeep_core::session::{Session, SessionStatus};
        let all = [
            SessionStatus::Pending,
            SessionStatus::Detecting,
            SessionStatus::Executing,
            SessionStatus::Passed,
            SessionStatus::Failed,
            SessionStatus::Cancelled,
        ];
        for status in all {
            for schedule in [None, Some(Id::from_u128(3))] {
                let mut s =
                    Session::for_tests(Id::from_u128(1), Id::from_u128(2), chrono::Utc::now());
                s.status = status;
                s.schedule_id = schedule;
                s.rollout = schedule.map(|id| upkeep_core::session::RolloutRef { id, wave: 1 });
                let mut bytes = vec![crate::FORMAT_VERSION];
                bytes.extend(serde_json::to_vec(&s).unwrap());
                assert_eq!(Session::stored_index_keys(&bytes).unwrap(), s.index_keys());
            }
        }
    }
}
