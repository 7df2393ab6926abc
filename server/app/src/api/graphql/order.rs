//! `orderBy` of every connection: `<Type>Order { field: <Type>OrderField!, direction:
//! OrderDirection! }`, and what each field sorts by.
//!
//! A cursor carries its item's sort key (base64, not encrypted): a field a caller may not
//! read (a webhook's URL) is no order field.
//!
//! `CREATED_AT` is creation order everywhere: ids are UUIDv7 minted at creation, so it is the
//! store's own key order and costs no sort. Other fields sort what the list read (see
//! docs/PERFORMANCE.md).

use super::connection::{ListOrder, Position, SortKey};
use async_graphql::resolver_utils::EnumType;
use async_graphql::{Enum, InputObject};
use upkeep_core::domain::*;

/// Ascending (smallest, oldest, A first) or descending. Items without a value for the field
/// (a computer never seen, a session not finished) sort lowest: first ascending, last
/// descending. Ties go by creation order in the same direction.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OrderDirection {
    /// Smallest, oldest, A first.
    Asc,
    /// Largest, newest, Z first.
    Desc,
}

/// The order a list was asked for (or its default) as a [`ListOrder`] and the field.
pub fn resolve<F: EnumType>(
    list: &'static str,
    given: Option<(F, OrderDirection)>,
    default: (F, OrderDirection),
) -> (F, ListOrder) {
    let (field, dir) = given.unwrap_or(default);
    let name = F::items()
        .iter()
        .find(|i| i.value == field)
        .map_or("?", |i| i.name);
    (
        field,
        ListOrder::new(list, name, dir == OrderDirection::Desc),
    )
}

macro_rules! order {
    ($what:literal, $order:ident, $field:ident { $($(#[doc = $vdoc:literal])+ $variant:ident),+ $(,)? }) => {
        #[doc = concat!("What ", $what, " can be ordered by.")]
        #[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum $field {
            $( $(#[doc = $vdoc])+ $variant ),+
        }

        #[doc = concat!("How to order ", $what, ".")]
        #[derive(InputObject, Clone, Copy, Debug)]
        pub struct $order {
            /// The field to order by.
            pub field: $field,
            /// Ascending or descending.
            pub direction: OrderDirection,
        }

        impl $order {
            pub fn pair(o: Option<$order>) -> Option<($field, OrderDirection)> {
                o.map(|o| (o.field, o.direction))
            }
        }
    };
}

order!(
    "rollouts",
    RolloutOrder,
    RolloutOrderField {
        /// Creation order (the default, descending: newest first).
        CREATED_AT,
        /// When it last changed (a wave started or ended, a halt, a resume).
        UPDATED_AT,
    }
);
order!(
    "tenants",
    TenantOrder,
    TenantOrderField {
        /// Case-insensitively.
        NAME,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "users",
    UserOrder,
    UserOrderField {
        /// Their e-mail address.
        EMAIL,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "people",
    PersonOrder,
    PersonOrderField {
        /// Case-insensitively.
        NAME,
        /// Their e-mail address.
        EMAIL,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "computers",
    ComputerOrder,
    ComputerOrderField {
        /// Case-insensitively.
        NAME,
        /// Enrollment order (the default, ascending).
        CREATED_AT,
        /// When the agent last polled; never-seen computers sort lowest.
        LAST_SEEN_AT,
    }
);
order!(
    "software",
    SoftwareOrder,
    SoftwareOrderField {
        /// Case-insensitively.
        NAME,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "maintenance tasks",
    MaintenanceTaskOrder,
    MaintenanceTaskOrderField {
        /// Case-insensitively.
        NAME,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
// `DeploymentOrder` names where a deployment runs in a session (BEGINNING, END): this is the
// list's order.
order!(
    "deployments",
    DeploymentListOrder,
    DeploymentOrderField {
        /// Creation order (the default, ascending).
        CREATED_AT,
        /// `position`, the tie-break among deployments of one subject.
        POSITION,
    }
);
order!(
    "schedules",
    ScheduleOrder,
    ScheduleOrderField {
        /// Case-insensitively.
        NAME,
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "enrollment keys",
    EnrollmentKeyOrder,
    EnrollmentKeyOrderField {
        /// Creation order (the default, ascending).
        CREATED_AT,
        /// When the key expires; keys that never expire sort lowest.
        EXPIRES_AT,
    }
);
order!(
    "audit events",
    AuditEventOrder,
    AuditEventOrderField {
        /// When it happened (the default, descending: newest first).
        CREATED_AT,
    }
);
order!(
    "maintenance sessions",
    MaintenanceSessionOrder,
    MaintenanceSessionOrderField {
        /// Creation order (the default, descending: newest first).
        CREATED_AT,
        /// When it finished; unfinished sessions sort lowest.
        FINISHED_AT,
        /// By status, in the order `PENDING`, `WAITING`, … as the enum lists them.
        STATUS,
    }
);
order!(
    "API keys",
    ApiKeyOrder,
    ApiKeyOrderField {
        /// Case-insensitively.
        NAME,
        /// Creation order (the default, ascending).
        CREATED_AT,
        /// When the key was last used; unused keys sort lowest.
        LAST_USED_AT,
    }
);
order!(
    // Not by URL: only roles that manage webhooks read it, and a cursor carries its sort key.
    "webhooks",
    WebhookOrder,
    WebhookOrderField {
        /// Creation order (the default, ascending).
        CREATED_AT,
    }
);
order!(
    "webhook deliveries",
    WebhookDeliveryOrder,
    WebhookDeliveryOrderField {
        /// Creation order (the default, descending: newest first).
        CREATED_AT,
    }
);

/// The position of a record whose order field is `key` (or creation order when `None`).
pub fn at(key: Option<SortKey>, id: Id) -> Position {
    match key {
        Some(key) => Position { key, id },
        None => Position::by_id(id),
    }
}

pub fn tenant(f: TenantOrderField, t: &Tenant) -> Position {
    at(
        match f {
            TenantOrderField::NAME => Some(SortKey::text(&t.name)),
            TenantOrderField::CREATED_AT => None,
        },
        t.id,
    )
}

pub fn user(f: UserOrderField, u: &User) -> Position {
    at(
        match f {
            UserOrderField::EMAIL => Some(SortKey::text(u.email.text())),
            UserOrderField::CREATED_AT => None,
        },
        u.id,
    )
}

pub fn person(f: PersonOrderField, p: &Person) -> Position {
    at(
        match f {
            PersonOrderField::NAME => Some(SortKey::text(&p.name)),
            PersonOrderField::EMAIL => Some(SortKey::text(p.email.text())),
            PersonOrderField::CREATED_AT => None,
        },
        p.id,
    )
}

pub fn software(f: SoftwareOrderField, s: &Software) -> Position {
    at(
        match f {
            SoftwareOrderField::NAME => Some(SortKey::text(&s.name)),
            SoftwareOrderField::CREATED_AT => None,
        },
        s.id,
    )
}

pub fn task(f: MaintenanceTaskOrderField, t: &MaintenanceTask) -> Position {
    at(
        match f {
            MaintenanceTaskOrderField::NAME => Some(SortKey::text(&t.name)),
            MaintenanceTaskOrderField::CREATED_AT => None,
        },
        t.id,
    )
}

pub fn deployment(f: DeploymentOrderField, d: &Deployment) -> Position {
    at(
        match f {
            DeploymentOrderField::POSITION => Some(SortKey::Int(i64::from(d.position))),
            DeploymentOrderField::CREATED_AT => None,
        },
        d.id,
    )
}

pub fn rollout(f: RolloutOrderField, r: &upkeep_core::rollout::Rollout) -> Position {
    at(
        match f {
            RolloutOrderField::UPDATED_AT => Some(SortKey::time(Some(r.updated_at))),
            RolloutOrderField::CREATED_AT => None,
        },
        r.id,
    )
}

pub fn schedule(f: ScheduleOrderField, s: &Schedule) -> Position {
    at(
        match f {
            ScheduleOrderField::NAME => Some(SortKey::text(&s.name)),
            ScheduleOrderField::CREATED_AT => None,
        },
        s.id,
    )
}

pub fn enrollment_key(f: EnrollmentKeyOrderField, k: &EnrollmentKey) -> Position {
    at(
        match f {
            EnrollmentKeyOrderField::EXPIRES_AT => Some(SortKey::time(k.expires_at)),
            EnrollmentKeyOrderField::CREATED_AT => None,
        },
        k.id,
    )
}

pub fn api_key(f: ApiKeyOrderField, k: &ApiKey) -> Position {
    at(
        match f {
            ApiKeyOrderField::NAME => Some(SortKey::text(&k.name)),
            ApiKeyOrderField::LAST_USED_AT => Some(SortKey::time(k.last_used_at)),
            ApiKeyOrderField::CREATED_AT => None,
        },
        k.id,
    )
}

pub fn webhook(f: WebhookOrderField, w: &upkeep_core::webhook::Webhook) -> Position {
    match f {
        WebhookOrderField::CREATED_AT => Position::by_id(w.id),
    }
}

/// `LAST_SEEN_AT` needs presence, which the record does not hold: the list reads it first and
/// does not come here (it is creation order here).
pub fn computer(f: ComputerOrderField, c: &Computer) -> Position {
    at(
        match f {
            ComputerOrderField::NAME => Some(SortKey::text(&c.name)),
            ComputerOrderField::CREATED_AT | ComputerOrderField::LAST_SEEN_AT => None,
        },
        c.id,
    )
}
