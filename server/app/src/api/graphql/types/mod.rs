//! GraphQL views of the domain records. Relations are resolved through [`Ctx`], which applies
//! tenant isolation, so a field can never reach into a tenant the caller may not see.

mod catalogue;
mod integrations;
mod inventory;
mod people;
mod rollouts;
mod sessions;

pub use catalogue::*;
pub use integrations::{Viewer, ViewerKind};
pub use inventory::*;
pub use people::*;
pub use rollouts::*;
pub use sessions::*;

use super::ctx::Ctx;
use super::enums::{OfflineBehavior, RebootPreference};
use async_graphql::{Context, ID, Result, SimpleObject};
use upkeep_core::domain::*;

/// A GraphQL view of a core record: the API decides the fields, the record stays plain data
/// (the core carries no GraphQL derives). Fields read the record through `Deref`.
#[derive(Debug, Clone)]
pub struct View<T>(pub T);

impl<T> std::ops::Deref for View<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for View<T> {
    fn from(t: T) -> View<T> {
        View(t)
    }
}

// `MaintenanceOptions` as the API shows them (no description: the SDL has none).
/// How a session notifies, may be postponed, reboots and treats an offline computer.
#[derive(SimpleObject)]
#[graphql(name = "MaintenanceOptions")]
pub struct MaintenanceOptionsView {
    /// Mail the computer's person what will happen and when, after detection.
    pub notify_before: bool,
    /// Mail the computer's person what happened, when the session ends.
    pub notify_after: bool,
    /// Mail even when nothing is to do.
    pub notify_when_compliant: bool,
    /// List each action in the mails.
    pub show_actions_in_email: bool,
    /// Offer the postpone link in the before-mail.
    pub allow_postpone: bool,
    /// How many times the person may postpone.
    pub max_postpones: u32,
    /// How long one postpone waits, in hours.
    pub postpone_hours: u32,
    /// Offer an "update now" link in the before-mail.
    pub allow_update_now: bool,
    /// Whether and how the computer reboots when an action needs it.
    pub reboot_preference: RebootPreference,
    /// What happens when the computer is offline at execution.
    pub offline_behavior: OfflineBehavior,
    /// With `SKIP`: minutes to wait for an offline computer before cancelling.
    pub offline_grace_minutes: u32,
    /// True lets a reboot happen in the tenant's business hours.
    pub allow_reboot_during_business_hours: bool,
    /// With `PROMPT`: minutes between telling the users and rebooting.
    pub reboot_prompt_minutes: u32,
    /// A failed preflight check runs again after this many minutes.
    pub preflight_retry_minutes: u32,
}

impl From<&MaintenanceOptions> for MaintenanceOptionsView {
    fn from(o: &MaintenanceOptions) -> Self {
        MaintenanceOptionsView {
            notify_before: o.notify_before,
            notify_after: o.notify_after,
            notify_when_compliant: o.notify_when_compliant,
            show_actions_in_email: o.show_actions_in_email,
            allow_postpone: o.allow_postpone,
            max_postpones: o.max_postpones,
            postpone_hours: o.postpone_hours,
            allow_update_now: o.allow_update_now,
            reboot_preference: o.reboot_preference.into(),
            offline_behavior: o.offline_behavior.into(),
            offline_grace_minutes: o.offline_grace_minutes,
            allow_reboot_during_business_hours: o.allow_reboot_during_business_hours,
            reboot_prompt_minutes: o.reboot_prompt_minutes,
            preflight_retry_minutes: o.preflight_retry_minutes,
        }
    }
}

fn id(i: Id) -> ID {
    ID(i.to_string())
}

async fn opt_tenant(ctx: &Context<'_>, t: Option<Id>) -> Result<Option<Tenant>> {
    match t {
        Some(t) => Ok(Ctx::new(ctx)?.find::<Tenant>(t).await?),
        None => Ok(None),
    }
}

async fn tenant(ctx: &Context<'_>, t: Id) -> Result<Tenant> {
    Ok(Ctx::new(ctx)?.load::<Tenant>(t).await?)
}
