//! Queries. Every list is a Relay connection limited to what the caller may see.

use super::connection::{self, Page};
use super::ctx::{Ctx, Owned};
use super::enums::{ActionStatus, Compliance, MailKind, SessionStatus, SessionTrigger};
use super::inputs::*;
use super::parse_id;
use super::types::EnrollmentKeyView;
use super::types::View;
use crate::api::graphql::scalars::DateTime;
use crate::auth::TenantScope;
use crate::error::{ApiError, ApiResult};
use crate::services::App;
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_core::webhook::{Delivery, Webhook};
use upkeep_store::records::*;
use upkeep_store::{Db, IndexKey};

pub struct Query;

/// Lists a tenant-indexed kind: one tenant's (plus cross-tenant ones when `with_cross`), or for
/// MSP roles without a tenant, everything.
async fn list_tenant_kind<T: Owned>(
    c: &Ctx<'_>,
    index: u8,
    tenant: Option<&ID>,
    with_cross: bool,
) -> ApiResult<Vec<T>> {
    let asked = tenant.map(|t| parse_id("tenantId", t)).transpose()?;
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

/// A maintenance mail as it would be sent.
#[derive(SimpleObject)]
pub struct EmailPreview {
    /// The subject line.
    pub subject: String,
    /// The HTML body.
    pub html: String,
    /// The plain-text body.
    pub text: String,
}

/// How many sessions are in one status.
#[derive(SimpleObject)]
pub struct StatusCount {
    /// The status.
    pub status: SessionStatus,
    /// How many.
    pub count: i64,
}

/// `totalCount` of a sessions page, computed only when asked for.
pub struct SessionTotal {
    app: Arc<App>,
    query: SessionQuery,
}

#[Object]
impl SessionTotal {
    async fn total_count(&self) -> Result<usize> {
        Ok(self
            .query
            .stream(&self.app.store, None)
            .try_fold(0, |n, _| std::future::ready(Ok(n + 1)))
            .await?)
    }
}

#[Object]
impl Query {
    /// The signed-in person; `null` when the caller is an API key (see `viewer`).
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<View<User>>> {
        let c = Ctx::own_account(ctx)?;
        let crate::auth::Principal::User { id, .. } = c.actor.principal else {
            return Ok(None);
        };
        Ok(Some(View(c.app.store.get::<User>(&id).await?.ok_or_else(
            || ApiError::Unauthenticated("the user no longer exists".into()),
        )?)))
    }

    /// Who the credential of this request is: a person's token or an API key, with the role
    /// and tenant it acts with.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<super::types::Viewer> {
        let c = Ctx::own_account(ctx)?;
        Ok(super::types::Viewer::of(c.actor))
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Tenant>>> {
        let c = Ctx::new(ctx)?;
        let all: Vec<Tenant> = match c.scope {
            TenantScope::Tenant(t) => c.find::<Tenant>(t).await?.into_iter().collect(),
            TenantScope::Nothing => vec![],
            TenantScope::All => c
                .app
                .store
                .scan::<Tenant>(None)
                .try_collect::<Vec<_>>()
                .await
                .map_err(ApiError::from)?,
        };
        Ok(connection::from_vec(all, |t| t.id, first, after)?)
    }

    async fn tenant(&self, ctx: &Context<'_>, id: ID) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        Ok(View(c.load(parse_id("id", &id)?).await?))
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<User>>> {
        let c = Ctx::new(ctx)?;
        let all = list_tenant_kind::<User>(&c, TENANT_USERS, tenant_id.as_ref(), false).await?;
        Ok(connection::from_vec(all, |u| u.id, first, after)?)
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn persons(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Person>>> {
        let c = Ctx::new(ctx)?;
        let all = list_tenant_kind::<Person>(&c, TENANT_PERSONS, tenant_id.as_ref(), false).await?;
        Ok(connection::from_vec(all, |p| p.id, first, after)?)
    }

    async fn person(&self, ctx: &Context<'_>, id: ID) -> Result<View<Person>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Computers, filtered by tag and by a search over name, hostname and tags.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)] // each is a GraphQL argument of its own
    async fn computers(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        tag: Option<String>,
        search: Option<String>,
        #[graphql(
            desc = "keeps computers whose OS (as reported) contains this, case-insensitively"
        )]
        os: Option<String>,
        #[graphql(desc = "keeps computers with an installed program whose name contains this")]
        software: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Computer>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<Computer>(&c, TENANT_COMPUTERS, tenant_id.as_ref(), false).await?;
        let all = filter_by_inventory(&c, all, os.as_deref(), software.as_deref()).await?;
        let needle = search.as_deref().map(str::to_lowercase);
        let filtered: Vec<Computer> = all
            .into_iter()
            .filter(|x| {
                tag.as_deref()
                    .is_none_or(|t| x.tags.iter().any(|y| y.is(t)))
            })
            .filter(|x| {
                needle.as_deref().is_none_or(|n| {
                    x.name.to_lowercase().contains(n)
                        || x.hostname.to_lowercase().contains(n)
                        || x.tags.iter().any(|t| t.key().contains(n))
                })
            })
            .collect();
        Ok(connection::from_vec(filtered, |x| x.id, first, after)?)
    }

    async fn computer(&self, ctx: &Context<'_>, id: ID) -> Result<View<Computer>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// The software catalogue: cross-tenant entries and the tenant's own.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn software(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Software>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<Software>(&c, TENANT_SOFTWARE, tenant_id.as_ref(), true).await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    async fn software_by_id(&self, ctx: &Context<'_>, id: ID) -> Result<View<Software>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn maintenance_tasks(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<MaintenanceTask>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<MaintenanceTask>(&c, TENANT_TASKS, tenant_id.as_ref(), true).await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    async fn maintenance_task(&self, ctx: &Context<'_>, id: ID) -> Result<View<MaintenanceTask>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn deployments(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Deployment>>> {
        let c = Ctx::new(ctx)?;
        let all = list_tenant_kind::<Deployment>(&c, TENANT_DEPLOYMENTS, tenant_id.as_ref(), false)
            .await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    async fn deployment(&self, ctx: &Context<'_>, id: ID) -> Result<View<Deployment>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn schedules(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Schedule>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<Schedule>(&c, TENANT_SCHEDULES, tenant_id.as_ref(), false).await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    async fn schedule(&self, ctx: &Context<'_>, id: ID) -> Result<View<Schedule>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Enrollment keys, without their secrets.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn enrollment_keys(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<EnrollmentKeyView>> {
        let c = Ctx::new(ctx)?;
        let all = list_tenant_kind::<EnrollmentKey>(
            &c,
            TENANT_ENROLLMENT_KEYS,
            tenant_id.as_ref(),
            false,
        )
        .await?;
        let views = all
            .into_iter()
            .map(|key| EnrollmentKeyView { key, secret: None })
            .collect();
        Ok(connection::from_vec(views, |v| v.key.id, first, after)?)
    }

    /// The audit trail, newest first: every change to configuration or access, logins and
    /// enrollments. MSP admins read all of it; tenant admins their tenant's.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditEventFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<upkeep_core::audit::AuditEvent>>> {
        let c = Ctx::new(ctx)?;
        c.actor
            .require_role(crate::permissions::Action::ViewAudit)?;
        let f = filter.unwrap_or_default();
        let asked = opt_id("filter.tenantId", &f.tenant_id)?;
        let scope = c.scope.narrow(asked);
        if scope == TenantScope::Nothing {
            return Ok(connection::build(
                std::iter::empty(),
                |e: &upkeep_core::audit::AuditEvent| e.id,
                0,
                0,
                false,
            )?);
        }
        let actor = opt_id("filter.actorId", &f.actor_id)?;
        let n = connection::page_size(first)?;
        let after = connection::parse_cursor(after.as_deref())?;
        let keep = |e: &upkeep_core::audit::AuditEvent| {
            scope.contains(e.tenant_id)
                && actor.is_none_or(|a| e.actor_id == Some(a))
                && f.action.as_deref().is_none_or(|a| e.action == a)
                && f.since.is_none_or(|s| e.at >= s.0)
                && f.until.is_none_or(|u| e.at < u.0)
        };
        type Audit = upkeep_core::audit::AuditEvent;
        let store = &c.app.store;
        let scan = |before: Option<Id>| -> BoxStream<'_, upkeep_store::Result<Audit>> {
            let before = before.map(|b| b.as_bytes().to_vec());
            match scope {
                TenantScope::Tenant(t) => {
                    let idx = IndexKey::new(TENANT_AUDIT, tenant_key(Some(t)));
                    Box::pin(store.by_index_rev::<Audit>(&idx, before.as_deref()))
                }
                TenantScope::All | TenantScope::Nothing => {
                    Box::pin(store.scan_rev::<Audit>(before.as_deref()))
                }
            }
        };
        let mut total = 0usize;
        let mut all = scan(None);
        while let Some(e) = all.try_next().await? {
            if keep(&e) {
                total += 1;
            }
        }
        let items = scan(after)
            .try_filter(|e| std::future::ready(keep(e)))
            .map_err(ApiError::from);
        Ok(connection::build_stream(items, |e| e.id, n, total, after.is_some()).await?)
    }

    /// Sessions, newest first, filtered.
    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn maintenance_sessions(
        &self,
        ctx: &Context<'_>,
        filter: Option<MaintenanceSessionFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, View<Session>, SessionTotal>> {
        let c = Ctx::new(ctx)?;
        let f = filter.unwrap_or_default();
        let n = connection::page_size(first)?;
        let after = connection::parse_cursor(after.as_deref())?;
        let q = SessionQuery::new(&c, &f)?;
        let mut nodes: Vec<Session> = q
            .stream(&c.app.store, after)
            .take(n + 1)
            .try_collect()
            .await?;
        let has_next = nodes.len() > n;
        nodes.truncate(n);
        let total = SessionTotal {
            app: c.app.clone(),
            query: q,
        };
        let mut conn = Connection::with_additional_fields(after.is_some(), has_next, total);
        conn.edges.extend(
            nodes
                .into_iter()
                .map(|s| Edge::new(s.id.to_string(), View(s))),
        );
        Ok(conn)
    }

    async fn maintenance_session(&self, ctx: &Context<'_>, id: ID) -> Result<View<Session>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Sessions per status, for dashboards (created since `since`, when given).
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn maintenance_session_status_counts(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        since: Option<DateTime>,
    ) -> Result<Vec<StatusCount>> {
        let c = Ctx::new(ctx)?;
        let asked = tenant_id
            .as_ref()
            .map(|t| parse_id("tenantId", t))
            .transpose()?;
        let scope = c.scope.narrow(asked);
        let mut out = Vec::new();
        for status in upkeep_core::session::SessionStatus::ALL {
            let idx = IndexKey::new(STATUS_SESSIONS, [status.code()]);
            let count = if scope == TenantScope::All && since.is_none() {
                c.app.store.index_count(&idx).await? as usize
            } else {
                c.app
                    .store
                    .by_index::<Session>(&idx, None)
                    .filter_map(|s| std::future::ready(s.ok()))
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .filter(|s| {
                        scope.contains(Some(s.tenant_id))
                            && since.is_none_or(|t| s.created_at >= t.0)
                    })
                    .count()
            };
            out.push(StatusCount {
                status: status.into(),
                count: count as i64,
            });
        }
        Ok(out)
    }

    /// The plan a session would make now, from the last detection of each item (items never
    /// detected say so in their `reason`).
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn preview_maintenance(
        &self,
        ctx: &Context<'_>,
        computer_id: ID,
    ) -> Result<Vec<super::types::ActionView>> {
        let c = Ctx::new(ctx)?;
        let computer: Computer = c.load(parse_id("computerId", &computer_id)?).await?;
        let items = c
            .app
            .plan_items(
                &computer,
                upkeep_core::session::SessionTrigger::Manual,
                None,
            )
            .await?;
        let history = c.app.sessions_of_computer(computer.id, 20).await?;
        let items_arc = std::sync::Arc::new(items.clone());
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let last = history.iter().find_map(|s| {
                s.actions
                    .iter()
                    .find(|a| {
                        s.items.get(a.item).is_some_and(|it| {
                            it.deployment_id == item.deployment_id && it.subject() == item.subject()
                        })
                    })
                    .map(|a| (s, a))
            });
            let mut action = match last {
                Some((_, a)) => {
                    let found = upkeep_core::engine::plan::Found {
                        version: a.detected_version.clone(),
                        detection_error: None,
                        test: match a.compliance {
                            upkeep_core::domain::Compliance::Compliant => Some(true),
                            upkeep_core::domain::Compliance::NonCompliant
                                if matches!(item.what, ItemWhat::Task { .. }) =>
                            {
                                Some(false)
                            }
                            _ => None,
                        },
                        test_error: None,
                        current_value: a.current_value.clone(),
                        get_error: None,
                    };
                    upkeep_core::engine::plan::plan(i, item, &found, crate::ids::fresh())
                }
                None => {
                    let mut a = upkeep_core::engine::plan::plan(
                        i,
                        item,
                        &Default::default(),
                        crate::ids::fresh(),
                    );
                    a.compliance = Compliance::Unknown.into();
                    a.reason = format!("not detected yet; {}", a.reason);
                    a
                }
            };
            action.status = ActionStatus::Pending.into();
            out.push(super::types::ActionView {
                session: items_arc.clone(),
                action,
                output_of: None,
            });
        }
        Ok(out)
    }

    /// Renders a session's before- or after-mail without sending it.
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn email_preview(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        kind: MailKind,
    ) -> Result<EmailPreview> {
        let c = Ctx::new(ctx)?;
        let s: Session = c.load(parse_id("sessionId", &session_id)?).await?;
        let tenant: Tenant = c.load(s.tenant_id).await?;
        let computer = c.app.store.get::<Computer>(&s.computer_id).await?;
        let person = match computer.as_ref().and_then(|c| c.primary_person_id) {
            Some(p) => c.app.store.get::<Person>(&p).await?,
            None => None,
        };
        let link = match kind {
            MailKind::Before => c
                .app
                .postpone_link(
                    &s,
                    person.as_ref().map(|p| p.email.text()).unwrap_or("preview"),
                )?
                .map(|_| format!("{}/postpone/PREVIEW", c.app.public_url)),
            _ => None,
        };
        let mut view = c.app.session_view(
            &s,
            &tenant,
            computer
                .as_ref()
                .map(|c| c.name.as_str())
                .unwrap_or("(deleted computer)"),
            person.as_ref().map(|p| p.name.as_str()).unwrap_or("there"),
            link,
        );
        if kind == MailKind::Before {
            // As the mail has it: update now is a link of its own.
            view.update_now_url = c
                .app
                .update_now_link(&s, "preview")?
                .map(|_| format!("{}/postpone/PREVIEW-UPDATE-NOW", c.app.public_url));
        }
        let template = match kind {
            MailKind::After => crate::mail::render::MailTemplate::After,
            _ => crate::mail::render::MailTemplate::Before,
        };
        let r = c
            .app
            .templates
            .render_session_mail(template, &view)
            .map_err(|e| ApiError::internal(e))?;
        Ok(EmailPreview {
            subject: r.subject,
            html: r.html,
            text: r.text,
        })
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<ApiKey>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<ApiKey>(&c, TENANT_API_KEYS, tenant_id.as_ref(), false).await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Webhook>>> {
        let c = Ctx::new(ctx)?;
        let all =
            list_tenant_kind::<Webhook>(&c, TENANT_WEBHOOKS, tenant_id.as_ref(), false).await?;
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }

    #[graphql(complexity = "super::page_cost(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<View<Delivery>>> {
        let c = Ctx::new(ctx)?;
        let w: Webhook = c.load(parse_id("webhookId", &webhook_id)?).await?;
        c.actor
            .require(crate::permissions::Action::ManageWebhooks, w.tenant_id)?;
        let mut all: Vec<Delivery> = c
            .app
            .store
            .by_index::<Delivery>(&IndexKey::new(WEBHOOK_DELIVERIES, w.id.as_bytes()), None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(ApiError::from)?;
        all.reverse();
        Ok(connection::from_vec(all, |x| x.id, first, after)?)
    }
}

/// A sessions query: the most selective index for the filter, then the remaining conditions.
#[derive(Clone)]
struct SessionQuery {
    index: Option<IndexKey>,
    /// The caller's scope narrowed to the tenant it asked for.
    scope: TenantScope,
    computer: Option<Id>,
    schedule: Option<Id>,
    statuses: Option<Vec<SessionStatus>>,
    trigger: Option<SessionTrigger>,
    after: Option<DateTime>,
    before: Option<DateTime>,
}

impl SessionQuery {
    fn new(c: &Ctx<'_>, f: &MaintenanceSessionFilter) -> ApiResult<SessionQuery> {
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
            trigger: f.trigger,
            after: f.created_after,
            before: f.created_before,
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
            && self.trigger.is_none_or(|t| s.trigger == t.into())
            && self.after.is_none_or(|t| s.created_at >= t.0)
            && self.before.is_none_or(|t| s.created_at < t.0)
    }

    /// The matching sessions, newest first, strictly before the cursor `after`.
    fn stream<'a>(&'a self, store: &'a Db, after: Option<Id>) -> BoxStream<'a, ApiResult<Session>> {
        if self.scope == TenantScope::Nothing {
            return Box::pin(futures_util::stream::empty());
        }
        let before = after.map(|a| a.as_bytes().to_vec());
        let all: BoxStream<'a, upkeep_store::Result<Session>> = match &self.index {
            Some(idx) => Box::pin(store.by_index_rev::<Session>(idx, before.as_deref())),
            None => Box::pin(store.scan_rev::<Session>(before.as_deref())),
        };
        Box::pin(
            all.map_err(ApiError::from)
                .try_filter(move |s| std::future::ready(self.keep(s))),
        )
    }
}

/// `computers(os, software)`: the OS filter reads the computer's own `os` and its inventory's
/// OS name; the software filter its inventory's programs.
async fn filter_by_inventory(
    c: &Ctx<'_>,
    all: Vec<Computer>,
    os: Option<&str>,
    software: Option<&str>,
) -> ApiResult<Vec<Computer>> {
    let os = os.map(str::to_lowercase).filter(|s| !s.is_empty());
    let software = software.filter(|s| !s.is_empty());
    if os.is_none() && software.is_none() {
        return Ok(all);
    }
    let mut kept = Vec::new();
    for computer in all {
        let inventory = c
            .app
            .store
            .get::<upkeep_core::inventory::InventoryRecord>(&computer.id)
            .await?;
        let os_ok = os.as_deref().is_none_or(|n| {
            computer.os.to_lowercase().contains(n)
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
        if os_ok && software_ok {
            kept.push(computer);
        }
    }
    Ok(kept)
}
