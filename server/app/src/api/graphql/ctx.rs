//! The per-request context every resolver goes through: who is calling, the tenants it sees
//! (its [`TenantScope`], derived once here), and loaders that apply that scope so another
//! tenant's record reads exactly like a missing one.

use crate::auth::{Actor, TenantScope};
use crate::error::{ApiError, ApiResult};
use crate::services::App;
use async_graphql::Context;
use std::sync::Arc;
use upkeep_core::domain::*;
use upkeep_core::session::Session;
use upkeep_store::Record;

/// Records that belong to a tenant (or to none: cross-tenant).
pub trait Owned: Record {
    const NAME: &'static str;
    fn owner(&self) -> Option<Id>;
    /// Cross-tenant entries of a catalogue kind are readable by every role.
    const CATALOGUE: bool = false;
}

macro_rules! owned {
    ($t:ty, $name:literal, $f:expr) => {
        owned!($t, $name, $f, false);
    };
    ($t:ty, $name:literal, $f:expr, $cat:literal) => {
        impl Owned for $t {
            const NAME: &'static str = $name;
            const CATALOGUE: bool = $cat;
            fn owner(&self) -> Option<Id> {
                let f: fn(&$t) -> Option<Id> = $f;
                f(self)
            }
        }
    };
}

owned!(Tenant, "tenant", |t| Some(t.id));
owned!(Person, "person", |p| Some(p.tenant_id));
owned!(Computer, "computer", |c| Some(c.tenant_id));
owned!(Software, "software", |s| s.tenant_id, true);
owned!(MaintenanceTask, "maintenance task", |t| t.tenant_id, true);
owned!(Deployment, "deployment", |d| d.tenant_id);
owned!(Schedule, "schedule", |s| s.tenant_id);
owned!(EnrollmentKey, "enrollment key", |k| Some(k.tenant_id));
owned!(Session, "maintenance session", |s| Some(s.tenant_id));
owned!(ApiKey, "API key", |k| k.tenant_id);
owned!(User, "user", |u| u.tenant_id);
owned!(upkeep_core::webhook::Webhook, "webhook", |w| w.tenant_id);
owned!(upkeep_core::rollout::Rollout, "rollout", |r| r.tenant_id);

/// May a caller with `scope` read this record? Catalogue kinds' cross-tenant entries are
/// readable in every scope.
pub fn visible_in<T: Owned>(scope: TenantScope, r: &T) -> bool {
    if T::CATALOGUE {
        scope.catalogue_contains(r.owner())
    } else {
        scope.contains(r.owner())
    }
}

pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub actor: &'a Actor,
    /// The caller's tenants: resolvers ask this, never the actor's role or tenant.
    pub scope: TenantScope,
}

impl<'a> Ctx<'a> {
    /// The context of a signed-in caller. Every resolver starts here, so this is also where a
    /// caller who must still enroll TOTP is stopped.
    pub fn new(ctx: &'a Context<'_>) -> ApiResult<Ctx<'a>> {
        let c = Self::own_account(ctx)?;
        if c.actor.mfa_pending {
            return Err(ApiError::Forbidden(
                "this server requires MSP roles to use a second factor: enroll TOTP first (enrollTotp, then confirmTotp)".into(),
            ));
        }
        Ok(c)
    }

    /// Like [`new`](Self::new), but also for a caller who must still enroll TOTP: only for
    /// operations on the caller's own account (`me`, `enrollTotp`, `confirmTotp`,
    /// `changePassword`).
    pub fn own_account(ctx: &'a Context<'_>) -> ApiResult<Ctx<'a>> {
        let app = ctx
            .data::<Arc<App>>()
            .map_err(|_| ApiError::internal("application state missing"))?;
        let actor = ctx.data_opt::<Actor>().ok_or_else(|| {
            match ctx.data_opt::<super::RefusedCredential>() {
                Some(refused) => ApiError::Unauthenticated(refused.0.clone()),
                None => ApiError::Unauthenticated(
                    "sign in: send Authorization: Bearer <token or API key>".into(),
                ),
            }
        })?;
        Ok(Ctx {
            app,
            actor,
            scope: actor.scope(),
        })
    }

    /// May the caller read this record? The rule every loader and nested field applies.
    pub fn visible<T: Owned>(&self, r: &T) -> bool {
        visible_in(self.scope, r)
    }

    /// The record if it exists and the caller may see it.
    pub async fn find<T: Owned>(&self, id: Id) -> ApiResult<Option<T>> {
        Ok(self
            .app
            .store
            .get::<T>(&id)
            .await?
            .filter(|r| self.visible(r)))
    }

    pub async fn find_catalogue<T: Owned>(&self, id: Id) -> ApiResult<Option<T>> {
        self.find(id).await
    }

    /// The record, or NOT_FOUND (also when it belongs to a tenant the caller may not see).
    pub async fn load<T: Owned>(&self, id: Id) -> ApiResult<T> {
        self.find(id)
            .await?
            .ok_or_else(|| ApiError::not_found(T::NAME, id))
    }

    /// The record, for a change: NOT_FOUND when invisible, FORBIDDEN when visible but the role
    /// may not change it (read-only roles, cross-tenant items for tenant roles).
    pub async fn load_for_write<T: Owned>(&self, id: Id) -> ApiResult<T> {
        let r = self.load::<T>(id).await?;
        self.actor.require_write_in(r.owner())?;
        Ok(r)
    }

    /// Checks the caller may act in `tenant` (a tenant id it names in an input): an invisible
    /// tenant is NOT_FOUND.
    pub async fn tenant_for_write(&self, tenant: Option<Id>) -> ApiResult<Option<Tenant>> {
        match tenant {
            Some(t) => {
                let t = self.load::<Tenant>(t).await?;
                self.actor.require_write_in(Some(t.id))?;
                Ok(Some(t))
            }
            None => {
                self.actor.require_write_in(None)?;
                Ok(None)
            }
        }
    }
}
