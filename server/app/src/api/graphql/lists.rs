//! How each connection reads its items: which index, which filter, which order. The resolvers
//! in `query.rs` name the arguments; this module does the reading.
//!
//! Two shapes: a tenant's records of a small kind (people, computers, the catalogue, keys…)
//! read whole and sorted in memory ([`connection::page_sorted`]), and the long lists
//! (sessions, the audit trail) streamed in the store's id order ([`IdOrdered`]), which is
//! their default order; their other orders read the matching ids and keys and sort those.

use super::connection::{self, IdOrdered, ListOrder, PageArgs, Position, SortKey};
use super::ctx::{Ctx, Owned};
use super::enums::SessionStatus;
use super::inputs::*;
use super::order::MaintenanceSessionOrderField;
use crate::auth::TenantScope;
use crate::error::{ApiError, ApiResult};
use async_graphql::ID;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use upkeep_core::audit::AuditEvent;
use upkeep_core::domain::*;
use upkeep_core::session::{Session, SessionTrigger};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey};

/// Lists a tenant-indexed kind: one tenant's (plus cross-tenant ones when `with_cross`), or for
/// MSP roles without a tenant, everything.
pub async fn tenant_kind<T: Owned>(
    c: &Ctx<'_>,
    index: u8,
    tenant: Option<&ID>,
    with_cross: bool,
) -> ApiResult<Vec<T>> {
    let asked = tenant.map(|t| super::parse_id("tenantId", t)).transpose()?;
    let mut out = Vec::new();
    match c.scope.narrow(asked) {
        TenantScope::Nothing => {}
        TenantScope::All => {
            let mut records = std::pin::pin!(c.app.store.scan::<T>(None));
            while let Some(r) = records.next().await {
                out.push(r?);
            }
        }
        TenantScope::Tenant(t) => {
            let mut keys = vec![tenant_key(Some(t))];
            if with_cross {
                keys.push(tenant_key(None));
            }
            for k in keys {
                let mut records =
                    std::pin::pin!(c.app.store.by_index::<T>(&IndexKey::new(index, k), None));
                while let Some(r) = records.next().await {
                    out.push(r?);
                }
            }
            out.sort_by_key(|r| r.key());
        }
    }
    Ok(out.into_iter().filter(|r| c.visible(r)).collect())
}

/// `computers(filter)`: the conditions of [`ComputerFilter`], checked cheapest first (the
/// record, then presence, then the inventory record only when asked about).
pub async fn computers(c: &Ctx<'_>, f: &ComputerFilter) -> ApiResult<Vec<Computer>> {
    let all = tenant_kind::<Computer>(c, TENANT_COMPUTERS, f.tenant_id.as_ref(), false).await?;
    let needle = f
        .search
        .as_deref()
        .map(str::to_lowercase)
        .filter(|s| !s.is_empty());
    let compliance: Option<Vec<Compliance>> = f
        .compliance
        .as_ref()
        .map(|v| v.iter().map(|&x| x.into()).collect());
    let os =
        f.os.as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
    let software = f.installed_software.as_deref().filter(|s| !s.is_empty());
    let mut kept = Vec::new();
    for x in all {
        let cheap = f
            .tag
            .as_deref()
            .is_none_or(|t| x.tags.iter().any(|y| y.is(t)))
            && needle.as_deref().is_none_or(|n| {
                x.name.to_lowercase().contains(n)
                    || x.hostname.to_lowercase().contains(n)
                    || x.tags.iter().any(|t| t.key().contains(n))
            })
            && compliance.as_ref().is_none_or(|v| {
                v.is_empty() || v.contains(&x.compliance.unwrap_or(Compliance::Unknown))
            })
            && f.online.is_none_or(|o| c.app.agents.is_online(x.id) == o);
        if !cheap {
            continue;
        }
        if (os.is_some()
            && !x
                .os
                .to_lowercase()
                .contains(os.as_deref().unwrap_or_default()))
            || software.is_some()
        {
            let inventory = c
                .app
                .store
                .get::<upkeep_core::inventory::InventoryRecord>(&x.id)
                .await?;
            let os_ok = os.as_deref().is_none_or(|n| {
                x.os.to_lowercase().contains(n)
                    || inventory
                        .as_ref()
                        .and_then(|i| i.os_name.as_deref())
                        .is_some_and(|o| o.to_lowercase().contains(n))
            });
            let software_ok = software.is_none_or(|n| {
                inventory
                    .as_ref()
                    .is_some_and(|i| i.programs(Some(n)).next().is_some())
            });
            if !(os_ok && software_ok) {
                continue;
            }
        }
        kept.push(x);
    }
    Ok(kept)
}

/// When each computer was last seen, as `Computer.lastSeenAt` answers it: the agent's presence
/// in memory, else the written-back time, else the record's.
pub async fn last_seen_keys(
    c: &Ctx<'_>,
    all: &[Computer],
) -> ApiResult<std::collections::HashMap<Id, SortKey>> {
    let mut out = std::collections::HashMap::with_capacity(all.len());
    for x in all {
        let t = match c.app.agents.last_seen(x.id) {
            Some(t) => Some(t),
            None => c.app.store.last_seen(&x.id).await?.or(x.last_seen_at),
        };
        out.insert(x.id, SortKey::time(t));
    }
    Ok(out)
}

/// A sessions query: the most selective index for the filter, then the remaining conditions.
#[derive(Clone)]
pub struct SessionQuery {
    index: Option<IndexKey>,
    /// The caller's scope narrowed to the tenant it asked for.
    scope: TenantScope,
    computer: Option<Id>,
    schedule: Option<Id>,
    statuses: Option<Vec<SessionStatus>>,
    triggers: Option<Vec<SessionTrigger>>,
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
}

impl SessionQuery {
    pub fn new(c: &Ctx<'_>, f: &MaintenanceSessionFilter) -> ApiResult<SessionQuery> {
        let asked = opt_id("filter.tenantId", &f.tenant_id)?;
        let scope = c.scope.narrow(asked);
        let computer = opt_id("filter.computerId", &f.computer_id)?;
        let schedule = opt_id("filter.scheduleId", &f.schedule_id)?;
        let index = if let Some(cid) = computer {
            Some(IndexKey::new(COMPUTER_SESSIONS, cid.as_bytes()))
        } else if let Some(sid) = schedule {
            Some(IndexKey::new(SCHEDULE_SESSIONS, sid.as_bytes()))
        } else if let TenantScope::Tenant(t) = scope {
            Some(IndexKey::new(TENANT_SESSIONS, t.as_bytes()))
        } else if let Some([one]) = f.status.as_deref() {
            Some(IndexKey::new(
                STATUS_SESSIONS,
                [upkeep_core::session::SessionStatus::from(*one).code()],
            ))
        } else if f.status.as_ref().is_some_and(|s| {
            s.iter()
                .all(|&x| !upkeep_core::session::SessionStatus::from(x).is_terminal())
        }) {
            Some(IndexKey::new(ACTIVE_SESSIONS, []))
        } else {
            None
        };
        Ok(SessionQuery {
            index,
            scope,
            computer,
            schedule,
            statuses: f.status.clone(),
            triggers: f
                .trigger
                .as_ref()
                .map(|v| v.iter().map(|&t| t.into()).collect()),
            after: f.created_after.map(|d| d.0),
            before: f.created_before.map(|d| d.0),
        })
    }

    fn keep(&self, s: &Session) -> bool {
        self.scope.contains(Some(s.tenant_id))
            && self.computer.is_none_or(|x| s.computer_id == x)
            && self.schedule.is_none_or(|x| s.schedule_id == Some(x))
            && self
                .statuses
                .as_ref()
                .is_none_or(|v| v.is_empty() || v.contains(&s.status.into()))
            && self
                .triggers
                .as_ref()
                .is_none_or(|v| v.is_empty() || v.contains(&s.trigger))
            && self.after.is_none_or(|t| s.created_at >= t)
            && self.before.is_none_or(|t| s.created_at < t)
    }

    /// The matching sessions in id order (`up`: oldest first), strictly past `from`.
    pub fn walk<'a>(
        &'a self,
        store: &'a Db,
        from: Option<Id>,
        up: bool,
    ) -> BoxStream<'a, ApiResult<Session>> {
        if self.scope == TenantScope::Nothing {
            return Box::pin(futures_util::stream::empty());
        }
        let from = from.map(|a| a.as_bytes().to_vec());
        let from = from.as_deref();
        let all: BoxStream<'a, upkeep_store::Result<Session>> = match (&self.index, up) {
            (Some(idx), true) => Box::pin(store.by_index::<Session>(idx, from)),
            (Some(idx), false) => Box::pin(store.by_index_rev::<Session>(idx, from)),
            (None, true) => Box::pin(store.scan::<Session>(from)),
            (None, false) => Box::pin(store.scan_rev::<Session>(from)),
        };
        Box::pin(
            all.map_err(ApiError::from)
                .try_filter(move |s| std::future::ready(self.keep(s))),
        )
    }

    /// The reader of the matching sessions in id order.
    pub fn id_ordered<'a>(&'a self, store: &'a Db) -> IdOrdered<'a, Session> {
        IdOrdered {
            walk: Box::new(move |from, up| self.walk(store, from, up)),
            get: Box::new(move |id| {
                Box::pin(
                    async move { Ok(store.get::<Session>(&id).await?.filter(|s| self.keep(s))) },
                )
            }),
            id_of: |s| s.id,
        }
    }

    /// The page in an order other than creation: reads every matching session once, keeps
    /// its key and id, sorts those, and reads the page's sessions again.
    pub async fn sorted_page(
        &self,
        store: &Db,
        field: MaintenanceSessionOrderField,
        order: &ListOrder,
        args: &PageArgs,
    ) -> ApiResult<connection::Slice<Session>> {
        let w = args.window(order)?;
        let keys: Vec<Position> = self
            .walk(store, None, true)
            .map_ok(|s| session_position(field, &s))
            .try_collect()
            .await?;
        let slice = connection::slice_sorted(keys, Clone::clone, order, &w);
        let mut items = Vec::with_capacity(slice.items.len());
        for p in &slice.items {
            // A session deleted since the scan is left out of the page.
            if let Some(s) = store.get::<Session>(&p.id).await? {
                items.push(s);
            }
        }
        Ok(connection::Slice {
            items,
            has_previous: slice.has_previous,
            has_next: slice.has_next,
        })
    }

    /// How many sessions match (`totalCount`, computed only when asked for).
    pub async fn count(&self, store: &Db) -> ApiResult<usize> {
        self.walk(store, None, false)
            .try_fold(0, |n, _| std::future::ready(Ok(n + 1)))
            .await
    }
}

pub fn session_position(field: MaintenanceSessionOrderField, s: &Session) -> Position {
    super::order::at(
        match field {
            MaintenanceSessionOrderField::CREATED_AT => None,
            MaintenanceSessionOrderField::FINISHED_AT => Some(SortKey::time(s.finished_at)),
            MaintenanceSessionOrderField::STATUS => Some(SortKey::Int(i64::from(s.status.code()))),
        },
        s.id,
    )
}

/// An audit trail query: the tenant's index (or every record), then the filter's conditions.
pub struct AuditQuery {
    scope: TenantScope,
    actor: Option<Id>,
    action: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl AuditQuery {
    pub fn new(c: &Ctx<'_>, f: AuditEventFilter) -> ApiResult<AuditQuery> {
        let asked = opt_id("filter.tenantId", &f.tenant_id)?;
        Ok(AuditQuery {
            scope: c.scope.narrow(asked),
            actor: opt_id("filter.actorId", &f.actor_id)?,
            action: f.action,
            since: f.since.map(|d| d.0),
            until: f.until.map(|d| d.0),
        })
    }

    fn keep(&self, e: &AuditEvent) -> bool {
        self.scope.contains(e.tenant_id)
            && self.actor.is_none_or(|a| e.actor_id == Some(a))
            && self.action.as_deref().is_none_or(|a| e.action == a)
            && self.since.is_none_or(|s| e.at >= s)
            && self.until.is_none_or(|u| e.at < u)
    }

    fn walk<'a>(
        &'a self,
        store: &'a Db,
        from: Option<Id>,
        up: bool,
    ) -> BoxStream<'a, ApiResult<AuditEvent>> {
        let from = from.map(|a| a.as_bytes().to_vec());
        let from = from.as_deref();
        let all: BoxStream<'a, upkeep_store::Result<AuditEvent>> = match (self.scope, up) {
            (TenantScope::Nothing, _) => Box::pin(futures_util::stream::empty()),
            (TenantScope::Tenant(t), up) => {
                let idx = IndexKey::new(TENANT_AUDIT, tenant_key(Some(t)));
                if up {
                    Box::pin(store.by_index::<AuditEvent>(&idx, from))
                } else {
                    Box::pin(store.by_index_rev::<AuditEvent>(&idx, from))
                }
            }
            (TenantScope::All, true) => Box::pin(store.scan::<AuditEvent>(from)),
            (TenantScope::All, false) => Box::pin(store.scan_rev::<AuditEvent>(from)),
        };
        Box::pin(
            all.map_err(ApiError::from)
                .try_filter(move |e| std::future::ready(self.keep(e))),
        )
    }

    pub fn id_ordered<'a>(&'a self, store: &'a Db) -> IdOrdered<'a, AuditEvent> {
        IdOrdered {
            walk: Box::new(move |from, up| self.walk(store, from, up)),
            get: Box::new(move |id| {
                Box::pin(
                    async move { Ok(store.get::<AuditEvent>(&id).await?.filter(|e| self.keep(e))) },
                )
            }),
            id_of: |e| e.id,
        }
    }

    pub async fn count(&self, store: &Db) -> ApiResult<usize> {
        self.walk(store, None, false)
            .try_fold(0, |n, _| std::future::ready(Ok(n + 1)))
            .await
    }
}
