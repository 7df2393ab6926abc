//! The Relay `Node` interface and `node(id)`. Ids are UUIDs that do not say their type, so
//! `node` looks the id up in each kind in turn (a point read each); each kind's own visibility
//! rule applies, so a record the caller may not see is null, exactly like a missing one.
//! Audit events and webhook deliveries come last: they are the kinds with the most records.

use super::ctx::Ctx;
use super::types::{EnrollmentKeyView, View};
use crate::error::ApiResult;
use crate::permissions::Action;
use async_graphql::{ID, Interface};
use upkeep_core::audit::AuditEvent;
use upkeep_core::domain::*;
use upkeep_core::session::Session;
use upkeep_core::webhook::{Delivery, Webhook};

/// An object with a global id: `node(id)` fetches it again by that id alone.
// One node per `node(id)` answer: boxing the large variants would save nothing that counts.
#[allow(clippy::large_enum_variant)]
#[derive(Interface)]
#[graphql(field(
    name = "id",
    ty = "ID",
    desc = "The object's id, unique across all types."
))]
pub enum Node {
    Tenant(View<Tenant>),
    User(View<User>),
    Person(View<Person>),
    Computer(View<Computer>),
    Software(View<Software>),
    MaintenanceTask(View<MaintenanceTask>),
    Deployment(View<Deployment>),
    Schedule(View<Schedule>),
    EnrollmentKey(EnrollmentKeyView),
    MaintenanceSession(View<Session>),
    ApiKey(View<ApiKey>),
    Webhook(View<Webhook>),
    WebhookDelivery(View<Delivery>),
    AuditEvent(View<AuditEvent>),
}

/// The object with this id that the caller may see, of whichever kind.
pub async fn find(c: &Ctx<'_>, id: Id) -> ApiResult<Option<Node>> {
    macro_rules! try_kind {
        ($t:ty, $wrap:expr) => {
            if let Some(r) = c.find::<$t>(id).await? {
                return Ok(Some($wrap(r)));
            }
        };
    }
    try_kind!(Computer, |r| Node::Computer(View(r)));
    try_kind!(Session, |r| Node::MaintenanceSession(View(r)));
    try_kind!(Tenant, |r| Node::Tenant(View(r)));
    try_kind!(Person, |r| Node::Person(View(r)));
    try_kind!(User, |r| Node::User(View(r)));
    try_kind!(Software, |r| Node::Software(View(r)));
    try_kind!(MaintenanceTask, |r| Node::MaintenanceTask(View(r)));
    try_kind!(Deployment, |r| Node::Deployment(View(r)));
    try_kind!(Schedule, |r| Node::Schedule(View(r)));
    try_kind!(EnrollmentKey, |key| Node::EnrollmentKey(
        EnrollmentKeyView { key, secret: None }
    ));
    try_kind!(ApiKey, |r| Node::ApiKey(View(r)));
    // Webhook URLs often carry a PSA's token: only roles that manage webhooks read them, and
    // their deliveries.
    let manages = |w: &Webhook| c.actor.require(Action::ManageWebhooks, w.tenant_id).is_ok();
    if let Some(w) = c.find::<Webhook>(id).await? {
        return Ok(manages(&w).then_some(Node::Webhook(View(w))));
    }
    if let Some(d) = c.app.store.get::<Delivery>(&id).await? {
        let w = c.find::<Webhook>(d.webhook_id).await?;
        return Ok(w
            .filter(|w| manages(w))
            .map(|_| Node::WebhookDelivery(View(d))));
    }
    // The audit trail: as `auditEvents` reads it.
    if let Some(e) = c.app.store.get::<AuditEvent>(&id).await? {
        let may = c.actor.require_role(Action::ViewAudit).is_ok() && c.scope.contains(e.tenant_id);
        return Ok(may.then_some(Node::AuditEvent(View(e))));
    }
    Ok(None)
}
