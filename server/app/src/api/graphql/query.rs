//! Queries. Every list is a Relay connection limited to what the caller may see.

// A connection field's Rust arguments are its GraphQL arguments: paging (four), order, filter
// and the tenant are each one of their own.
#![allow(clippy::too_many_arguments)]

use super::connection::{self, Page, PageArgs, Position};
use super::ctx::Ctx;
use super::enums::{ActionStatus, Compliance, MailKind, SessionStatus};
use super::inputs::*;
use super::lists;
use super::order::{self, *};
use super::parse_id;
use super::types::EnrollmentKeyView;
use super::types::View;
use crate::api::graphql::scalars::DateTime;
use crate::auth::TenantScope;
use crate::error::ApiError;
use crate::services::App;
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use futures_util::stream::{StreamExt, TryStreamExt};
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_core::webhook::{Delivery, Webhook};
use upkeep_store::IndexKey;
use upkeep_store::records::*;

pub struct Query;

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

/// `totalCount` of an audit page, computed only when asked for (it reads the whole trail the
/// filter covers).
pub struct AuditTotal {
    app: Arc<App>,
    query: lists::AuditQuery,
}

#[Object]
impl AuditTotal {
    /// How many events match, on every page (cursors and page size aside); counted only when
    /// asked for.
    async fn total_count(&self) -> Result<usize> {
        Ok(self.query.count(&self.app.store).await?)
    }
}

/// `totalCount` of a sessions page, computed only when asked for.
pub struct SessionTotal {
    app: Arc<App>,
    query: lists::SessionQuery,
}

#[Object]
impl SessionTotal {
    /// How many sessions match, on every page (cursors and page size aside); counted only
    /// when asked for.
    async fn total_count(&self) -> Result<usize> {
        Ok(self.query.count(&self.app.store).await?)
    }
}

/// What can be read: the caller's own account, every list (each a Relay connection limited to
/// what the caller may see), objects by id, previews.
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

    /// Any object by its id (Relay): tenants, users, people, computers, software, tasks,
    /// deployments, schedules, enrollment keys, sessions, API keys, webhooks and their
    /// deliveries, audit events. Null when
    /// nothing has this id or the caller may not see it (the same answer).
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The `id` of any object.")] id: ID,
    ) -> Result<Option<super::node::Node>> {
        let c = Ctx::new(ctx)?;
        Ok(super::node::find(&c, parse_id("id", &id)?).await?)
    }

    /// Tenants the caller sees.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            TenantOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Tenant>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "tenants",
            TenantOrder::pair(order_by),
            (TenantOrderField::CREATED_AT, OrderDirection::Asc),
        );
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
        Ok(connection::page_sorted(
            all,
            |x| order::tenant(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A tenant by id (NOT_FOUND when missing or not visible).
    async fn tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Tenant>> {
        let c = Ctx::new(ctx)?;
        Ok(View(c.load(parse_id("id", &id)?).await?))
    }

    /// Users (people who sign in) the caller sees.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            UserOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<User>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "users",
            UserOrder::pair(order_by),
            (UserOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all = lists::tenant_kind::<User>(&c, TENANT_USERS, tenant_id.as_ref(), false).await?;
        Ok(connection::page_sorted(
            all,
            |x| order::user(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A user by id (NOT_FOUND when missing or not visible).
    async fn user(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<User>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// People of the tenants the caller sees (end users of computers, who get mails).
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn persons(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            PersonOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Person>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "persons",
            PersonOrder::pair(order_by),
            (PersonOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all =
            lists::tenant_kind::<Person>(&c, TENANT_PERSONS, tenant_id.as_ref(), false).await?;
        Ok(connection::page_sorted(
            all,
            |x| order::person(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A person by id (NOT_FOUND when missing or not visible).
    async fn person(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Person>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Computers, filtered (`filter`; the older single arguments still work and combine
    /// with it) and ordered.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn computers(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            deprecation = "use filter: { tenantId }",
            desc = "Same as `filter.tenantId`."
        )]
        tenant_id: Option<ID>,
        #[graphql(deprecation = "use filter: { tag }", desc = "Same as `filter.tag`.")] tag: Option<
            String,
        >,
        #[graphql(
            deprecation = "use filter: { search }",
            desc = "Same as `filter.search`."
        )]
        search: Option<String>,
        #[graphql(deprecation = "use filter: { os }", desc = "Same as `filter.os`.")] os: Option<
            String,
        >,
        #[graphql(
            deprecation = "use filter: { installedSoftware }",
            desc = "Same as `filter.installedSoftware`."
        )]
        software: Option<String>,
        #[graphql(desc = "Which computers (all given conditions hold).")] filter: Option<
            ComputerFilter,
        >,
        #[graphql(desc = "The order (default: enrollment order, oldest first).")] order_by: Option<
            ComputerOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Computer>>> {
        let c = Ctx::new(ctx)?;
        let mut f = filter.unwrap_or_default();
        f.tenant_id = f.tenant_id.or(tenant_id);
        f.tag = f.tag.or(tag);
        f.search = f.search.or(search);
        f.os = f.os.or(os);
        f.installed_software = f.installed_software.or(software);
        let (field, o) = order::resolve(
            "computers",
            ComputerOrder::pair(order_by),
            (ComputerOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all = lists::computers(&c, &f).await?;
        let args = PageArgs {
            first,
            after,
            last,
            before,
        };
        if field == ComputerOrderField::LAST_SEEN_AT {
            let keys = lists::last_seen_keys(&c, &all).await?;
            let pos = |x: &Computer| order::at(keys.get(&x.id).cloned(), x.id);
            return Ok(connection::page_sorted(all, pos, &o, &args)?);
        }
        Ok(connection::page_sorted(
            all,
            |x| order::computer(field, x),
            &o,
            &args,
        )?)
    }

    /// A computer by id (NOT_FOUND when missing or not visible).
    async fn computer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Computer>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// The software catalogue: cross-tenant entries and the tenant's own.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn software(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            SoftwareOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Software>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "software",
            SoftwareOrder::pair(order_by),
            (SoftwareOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all =
            lists::tenant_kind::<Software>(&c, TENANT_SOFTWARE, tenant_id.as_ref(), true).await?;
        Ok(connection::page_sorted(
            all,
            |x| order::software(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A software catalogue entry by id (NOT_FOUND when missing or not visible).
    async fn software_item(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Software>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// A software catalogue entry by id: the old name of `softwareItem`.
    #[graphql(deprecation = "use softwareItem(id)")]
    async fn software_by_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Software>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Maintenance tasks: cross-tenant entries and the tenant's own.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn maintenance_tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            MaintenanceTaskOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<MaintenanceTask>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "maintenanceTasks",
            MaintenanceTaskOrder::pair(order_by),
            (MaintenanceTaskOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all = lists::tenant_kind::<MaintenanceTask>(&c, TENANT_TASKS, tenant_id.as_ref(), true)
            .await?;
        Ok(connection::page_sorted(
            all,
            |x| order::task(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A maintenance task by id (NOT_FOUND when missing or not visible).
    async fn maintenance_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<MaintenanceTask>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Deployments the caller sees.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn deployments(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            DeploymentListOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Deployment>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "deployments",
            DeploymentListOrder::pair(order_by),
            (DeploymentOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all =
            lists::tenant_kind::<Deployment>(&c, TENANT_DEPLOYMENTS, tenant_id.as_ref(), false)
                .await?;
        Ok(connection::page_sorted(
            all,
            |x| order::deployment(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A deployment by id (NOT_FOUND when missing or not visible).
    async fn deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Deployment>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Schedules the caller sees.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn schedules(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            ScheduleOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Schedule>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "schedules",
            ScheduleOrder::pair(order_by),
            (ScheduleOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all =
            lists::tenant_kind::<Schedule>(&c, TENANT_SCHEDULES, tenant_id.as_ref(), false).await?;
        Ok(connection::page_sorted(
            all,
            |x| order::schedule(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// Rollouts the caller sees.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn rollouts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which rollouts.")] filter: Option<super::types::RolloutFilter>,
        #[graphql(desc = "The order (default: creation order, newest first).")] order_by: Option<
            RolloutOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<upkeep_core::rollout::Rollout>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "rollouts",
            RolloutOrder::pair(order_by),
            (RolloutOrderField::CREATED_AT, OrderDirection::Desc),
        );
        let filter = filter.unwrap_or_default();
        let all = lists::tenant_kind::<upkeep_core::rollout::Rollout>(
            &c,
            TENANT_ROLLOUTS,
            filter.tenant_id.as_ref(),
            false,
        )
        .await?
        .into_iter()
        .filter(|r| filter.status.is_none_or(|s| r.status == s.into()))
        .collect();
        Ok(connection::page_sorted(
            all,
            |r| order::rollout(field, r),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A rollout by id (NOT_FOUND when missing or not visible).
    async fn rollout(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<upkeep_core::rollout::Rollout>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// A schedule by id (NOT_FOUND when missing or not visible).
    async fn schedule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Schedule>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Enrollment keys, without their secrets.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn enrollment_keys(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            EnrollmentKeyOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<EnrollmentKeyView>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "enrollmentKeys",
            EnrollmentKeyOrder::pair(order_by),
            (EnrollmentKeyOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all = lists::tenant_kind::<EnrollmentKey>(
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
        let pos = |v: &EnrollmentKeyView| order::enrollment_key(field, &v.key);
        Ok(connection::page_sorted(
            views,
            pos,
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// The audit trail, newest first: every change to configuration or access, logins and
    /// enrollments. MSP admins read all of it; tenant admins their tenant's.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which events (all given conditions hold).")] filter: Option<
            AuditEventFilter,
        >,
        #[graphql(desc = "The order (default: newest first).")] order_by: Option<AuditEventOrder>,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<upkeep_core::audit::AuditEvent>, AuditTotal>> {
        let c = Ctx::new(ctx)?;
        c.actor
            .require_role(crate::permissions::Action::ViewAudit)?;
        let (_, o) = order::resolve(
            "auditEvents",
            AuditEventOrder::pair(order_by),
            (AuditEventOrderField::CREATED_AT, OrderDirection::Desc),
        );
        let w = PageArgs {
            first,
            after,
            last,
            before,
        }
        .window(&o)?;
        let q = lists::AuditQuery::new(&c, filter.unwrap_or_default())?;
        let slice = q.id_ordered(&c.app.store).slice(&o, &w).await?;
        let total = AuditTotal {
            app: c.app.clone(),
            query: q,
        };
        Ok(slice.into_connection(&o, |e| Position::by_id(e.id), total))
    }

    /// Sessions, filtered; newest first unless `orderBy` says otherwise.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn maintenance_sessions(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which sessions (all given conditions hold).")] filter: Option<
            MaintenanceSessionFilter,
        >,
        #[graphql(
            desc = "The order (default: newest first). `CREATED_AT` reads the store in its own order; `FINISHED_AT` and `STATUS` read every matching session to sort them (narrow the filter on large stores)."
        )]
        order_by: Option<MaintenanceSessionOrder>,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Session>, SessionTotal>> {
        let c = Ctx::new(ctx)?;
        let f = filter.unwrap_or_default();
        let (field, o) = order::resolve(
            "maintenanceSessions",
            MaintenanceSessionOrder::pair(order_by),
            (
                MaintenanceSessionOrderField::CREATED_AT,
                OrderDirection::Desc,
            ),
        );
        let args = PageArgs {
            first,
            after,
            last,
            before,
        };
        let q = lists::SessionQuery::new(&c, &f)?;
        let slice = if field == MaintenanceSessionOrderField::CREATED_AT {
            let w = args.window(&o)?;
            q.id_ordered(&c.app.store).slice(&o, &w).await?
        } else {
            q.sorted_page(&c.app.store, field, &o, &args).await?
        };
        let total = SessionTotal {
            app: c.app.clone(),
            query: q.clone(),
        };
        Ok(slice.into_connection(&o, |s| lists::session_position(field, s), total))
    }

    /// A maintenance session by id (NOT_FOUND when missing or not visible).
    async fn maintenance_session(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Session>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Sessions per status, for dashboards (created since `since`, when given). Without
    /// `since` the counts come from counters kept with the sessions and cost the same at any
    /// number of sessions; with `since` every session of each status is read (slow on a large
    /// store).
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn maintenance_session_status_counts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "Only sessions created at or after this instant.")] since: Option<
            DateTime,
        >,
    ) -> Result<Vec<StatusCount>> {
        let c = Ctx::new(ctx)?;
        let asked = tenant_id
            .as_ref()
            .map(|t| parse_id("tenantId", t))
            .transpose()?;
        let scope = c.scope.narrow(asked);
        // Without `since`, the store's session counters answer (a few entries per tenant and
        // status, whatever the number of sessions); `since` needs each session's creation
        // time, so it reads the sessions of each status.
        let counted = match (since, scope) {
            (Some(_), _) | (None, TenantScope::Nothing) => None,
            (None, TenantScope::All) => Some(c.app.store.session_counts(None).await?),
            (None, TenantScope::Tenant(t)) => Some(c.app.store.session_counts(Some(t)).await?),
        };
        let mut out = Vec::new();
        for status in upkeep_core::session::SessionStatus::ALL {
            let count = match (&counted, scope) {
                (Some(counts), _) => counts.get(&status.code()).copied().unwrap_or(0) as usize,
                (None, TenantScope::Nothing) => 0,
                (None, _) => {
                    let idx = IndexKey::new(STATUS_SESSIONS, [status.code()]);
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
                }
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
        #[graphql(desc = "The computer.")] computer_id: ID,
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

    /// What a deployment change would do across the fleet, without running anything: per
    /// computer it reaches, the action the next session would plan for each software or task
    /// whose plan changes (from the computer's last detection), counts per tenant and kind, the
    /// deployments it would shadow or unshadow, and the computers whose detection is missing or
    /// older than `staleAfterDays` (listed, not guessed). The change is checked as its mutation
    /// checks it: the roles that may make it may preview it.
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn preview_deployment_change(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The change: exactly one of create, update or delete.")]
        input: super::impact::DeploymentChangeInput,
        #[graphql(
            desc = "Detections older than this many days are not planned from (1 to 3650; default 14)."
        )]
        stale_after_days: Option<i32>,
    ) -> Result<super::impact::ImpactPreview> {
        let days = stale_after_days.unwrap_or(upkeep_core::impact::DEFAULT_STALE_AFTER_DAYS as i32);
        Ok(super::impact::preview(&Ctx::new(ctx)?, input, days).await?)
    }

    /// A tenant's monthly report: its computers and their compliance at the month's end,
    /// sessions by outcome, software installed and updated, tasks remediated, failures and what
    /// was done about them, postpones by end users and the month's signed session records. The
    /// same report as PDF and HTML at `pdfUrl` and `htmlUrl`. Whoever may read the tenant may
    /// read its report; `THROTTLED` while the server builds as many reports as it will at once.
    /// One report per request: the field costs half the complexity budget.
    #[graphql(complexity = "super::MAX_COMPLEXITY / 2 + child_complexity")]
    async fn tenant_report(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tenant.")] tenant_id: ID,
        #[graphql(desc = "The month, YYYY-MM (\"2026-11\"), in the tenant's time zone.")]
        month: String,
    ) -> Result<super::report::TenantReport> {
        super::report::tenant_report(&Ctx::new(ctx)?, &tenant_id, &month).await
    }

    /// Renders a session's before- or after-mail without sending it.
    #[graphql(complexity = "super::EXPENSIVE_FIELD_COST + child_complexity")]
    async fn email_preview(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The session whose mail to render.")] session_id: ID,
        #[graphql(desc = "Which of its mails.")] kind: MailKind,
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

    /// API keys the caller sees (never their secrets).
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            ApiKeyOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<ApiKey>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "apiKeys",
            ApiKeyOrder::pair(order_by),
            (ApiKeyOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let all =
            lists::tenant_kind::<ApiKey>(&c, TENANT_API_KEYS, tenant_id.as_ref(), false).await?;
        Ok(connection::page_sorted(
            all,
            |x| order::api_key(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// An API key by id (NOT_FOUND when missing or not visible).
    async fn api_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<ApiKey>> {
        Ok(View(Ctx::new(ctx)?.load(parse_id("id", &id)?).await?))
    }

    /// Webhooks the caller may manage.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this tenant's (MSP roles; a tenant role always gets its own).")]
        tenant_id: Option<ID>,
        #[graphql(desc = "The order (default: creation order, oldest first).")] order_by: Option<
            WebhookOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Webhook>>> {
        let c = Ctx::new(ctx)?;
        let (field, o) = order::resolve(
            "webhooks",
            WebhookOrder::pair(order_by),
            (WebhookOrderField::CREATED_AT, OrderDirection::Asc),
        );
        let mut all =
            lists::tenant_kind::<Webhook>(&c, TENANT_WEBHOOKS, tenant_id.as_ref(), false).await?;
        // As `webhook(id)` and `node(id)`: only those the caller may manage (a viewer reads
        // none; their events and descriptions are an integration's setup).
        all.retain(|w| {
            c.actor
                .require(crate::permissions::Action::ManageWebhooks, w.tenant_id)
                .is_ok()
        });
        Ok(connection::page_sorted(
            all,
            |x| order::webhook(field, x),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }

    /// A webhook by id (NOT_FOUND when missing, not visible, or the role may not manage
    /// webhooks).
    async fn webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its id.")] id: ID,
    ) -> Result<View<Webhook>> {
        let c = Ctx::new(ctx)?;
        let w: Webhook = c.load(parse_id("id", &id)?).await?;
        c.actor
            .require(crate::permissions::Action::ManageWebhooks, w.tenant_id)?;
        Ok(View(w))
    }

    /// A webhook's deliveries, newest first.
    #[graphql(complexity = "super::page_cost(first.or(last), child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The webhook.")] webhook_id: ID,
        #[graphql(desc = "The order (default: newest first).")] order_by: Option<
            WebhookDeliveryOrder,
        >,
        #[graphql(
            desc = "The first this many items after `after` (default 50; at most 500, a larger value reads as 500)."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.endCursor`): the page starts after it, even when its item is gone."
        )]
        after: Option<String>,
        #[graphql(
            desc = "The last this many items before `before` (at most 500, a larger value reads as 500). Give `first` or `last`, not both."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "A cursor of this list in the same `orderBy` (`pageInfo.startCursor`): the page ends before it, even when its item is gone."
        )]
        before: Option<String>,
    ) -> Result<Page<View<Delivery>>> {
        let c = Ctx::new(ctx)?;
        let w: Webhook = c.load(parse_id("webhookId", &webhook_id)?).await?;
        c.actor
            .require(crate::permissions::Action::ManageWebhooks, w.tenant_id)?;
        let (_, o) = order::resolve(
            "webhookDeliveries",
            WebhookDeliveryOrder::pair(order_by),
            (WebhookDeliveryOrderField::CREATED_AT, OrderDirection::Desc),
        );
        let all: Vec<Delivery> = c
            .app
            .store
            .by_index::<Delivery>(&IndexKey::new(WEBHOOK_DELIVERIES, w.id.as_bytes()), None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(ApiError::from)?;
        Ok(connection::page_sorted(
            all,
            |x| Position::by_id(x.id),
            &o,
            &PageArgs {
                first,
                after,
                last,
                before,
            },
        )?)
    }
}
