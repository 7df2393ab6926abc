//! The permission matrix: which role may do what, written once.
//!
//! Architecture invariant: every "may this actor do X" question is answered by [`permits`]
//! (through [`crate::auth::Actor::require`]); no resolver compares roles or ranks by hand.
//! Delegation (API keys, new users, role changes) is a check of *actions*: a credential may
//! be handed on only when every action it permits is one its maker may do too
//! ([`within`]), so no chain of keys or users climbs above where it started.

use upkeep_core::domain::UserRole;

/// What a caller may be allowed to do. Reading is decided by tenant visibility
/// (`auth::TenantScope`), not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create tenants.
    CreateTenants,
    /// Delete a tenant (with `force`, everything it owns).
    DeleteTenants,
    /// Change a tenant's settings: branding, time zone, business hours, mail, exclusion.
    ConfigureTenant,
    /// People, computers, enrollment keys, agent revocation.
    ManageComputers,
    /// Software, maintenance tasks and deployments of one tenant; cross-tenant software and
    /// tasks (the catalogue).
    ManageCatalogue,
    /// Deployments that apply to every tenant.
    ManageCrossTenantDeployments,
    /// Start, cancel, rerun, postpone sessions; run a schedule now; send a test mail.
    RunSessions,
    ManageSchedules,
    ManageUsers,
    /// Create and revoke API keys (never above the maker: see [`within`]).
    ManageApiKeys,
    /// Create and delete webhooks, read their URLs (which often carry PSA tokens) and
    /// deliveries.
    ManageWebhooks,
    /// Read the audit trail.
    ViewAudit,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::CreateTenants,
        Action::DeleteTenants,
        Action::ConfigureTenant,
        Action::ManageComputers,
        Action::ManageCatalogue,
        Action::ManageCrossTenantDeployments,
        Action::RunSessions,
        Action::ManageSchedules,
        Action::ManageUsers,
        Action::ManageApiKeys,
        Action::ManageWebhooks,
        Action::ViewAudit,
    ];

    /// How error messages name it ("your role may not manage schedules").
    pub fn describe(self) -> &'static str {
        match self {
            Action::CreateTenants => "create tenants",
            Action::DeleteTenants => "delete tenants",
            Action::ConfigureTenant => "change tenant settings",
            Action::ManageComputers => "manage computers, people and enrollment keys",
            Action::ManageCatalogue => "manage software, tasks and deployments",
            Action::ManageCrossTenantDeployments => "manage cross-tenant deployments",
            Action::RunSessions => "start or change maintenance sessions",
            Action::ManageSchedules => "manage schedules",
            Action::ManageUsers => "manage users",
            Action::ManageApiKeys => "manage API keys",
            Action::ManageWebhooks => "manage webhooks",
            Action::ViewAudit => "read the audit trail",
        }
    }
}

/// The matrix. Tenant roles act only inside their own tenant; that scope is checked by the
/// caller (`Actor::require`), not here.
pub fn permits(role: UserRole, action: Action) -> bool {
    use Action::*;
    use UserRole::*;
    match role {
        MspAdmin => true,
        MspTechnician => matches!(
            action,
            CreateTenants
                | ConfigureTenant
                | ManageComputers
                | ManageCatalogue
                | RunSessions
                | ManageApiKeys
        ),
        TenantAdmin => matches!(
            action,
            ConfigureTenant
                | ManageComputers
                | ManageCatalogue
                | RunSessions
                | ManageSchedules
                | ManageUsers
                | ManageApiKeys
                | ManageWebhooks
                | ViewAudit
        ),
        TenantViewer => false,
    }
}

/// May a maker with role `maker` hand on a credential with role `granted`? Only when every
/// action `granted` permits, `maker` permits too, and an MSP-wide role is handed on only by an
/// MSP-wide maker (tenant scope is checked by the caller).
pub fn within(granted: UserRole, maker: UserRole) -> bool {
    (maker.is_msp() || !granted.is_msp())
        && Action::ALL
            .iter()
            .all(|a| !permits(granted, *a) || permits(maker, *a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use UserRole::*;

    const ROLES: [UserRole; 4] = [MspAdmin, MspTechnician, TenantAdmin, TenantViewer];

    /// The whole matrix, spelled out: a change to `permits` must change this table too.
    #[test]
    fn matrix_is_exactly_the_documented_one() {
        use Action::*;
        let expected: &[(Action, [bool; 4])] = &[
            //                       MSP_ADMIN MSP_TECH TENANT_ADMIN TENANT_VIEWER
            (CreateTenants, [true, true, false, false]),
            (DeleteTenants, [true, false, false, false]),
            (ConfigureTenant, [true, true, true, false]),
            (ManageComputers, [true, true, true, false]),
            (ManageCatalogue, [true, true, true, false]),
            (ManageCrossTenantDeployments, [true, false, false, false]),
            (RunSessions, [true, true, true, false]),
            (ManageSchedules, [true, false, true, false]),
            (ManageUsers, [true, false, true, false]),
            (ManageApiKeys, [true, true, true, false]),
            (ManageWebhooks, [true, false, true, false]),
            (ViewAudit, [true, false, true, false]),
        ];
        assert_eq!(expected.len(), Action::ALL.len());
        for (action, row) in expected {
            for (role, want) in ROLES.iter().zip(row) {
                assert_eq!(permits(*role, *action), *want, "{role:?} × {action:?}");
            }
        }
    }

    #[test]
    fn delegation_never_adds_rights() {
        for maker in ROLES {
            for granted in ROLES {
                let ok = within(granted, maker);
                if ok {
                    for a in Action::ALL {
                        assert!(!permits(granted, a) || permits(maker, a));
                    }
                }
            }
            assert!(within(maker, maker), "{maker:?} may hand on its own role");
        }
        // The finding that started this: a technician cannot mint a tenant admin (who manages
        // users, schedules and webhooks) nor an MSP admin.
        assert!(!within(TenantAdmin, MspTechnician));
        assert!(!within(MspAdmin, MspTechnician));
        assert!(within(MspTechnician, MspTechnician));
        assert!(within(TenantViewer, MspTechnician));
        assert!(!within(MspTechnician, TenantAdmin));
        assert!(within(TenantViewer, TenantAdmin));
        assert!(within(TenantAdmin, TenantAdmin));
        assert!(within(TenantViewer, TenantViewer));
    }
}
