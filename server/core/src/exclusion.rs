//! Whether a computer may be maintained: the one rule every start path asks (a manual start,
//! a rerun, an onboarding session, a schedule occurrence, run-now, auto-onboarding at
//! enrollment). Pure.

use crate::domain::{Computer, Tenant};
use std::fmt;

/// Why a start is refused: the computer, or its whole tenant, is excluded from maintenance.
/// `Display` gives the reason as callers show it ("tenant Acme is excluded from maintenance").
#[derive(Debug, Clone, Copy)]
pub enum Exclusion<'a> {
    Computer(&'a Computer),
    Tenant(&'a Tenant),
}

/// May `computer` of `tenant` be maintained? `None` when it may. Without a computer the
/// question is asked of the tenant as a whole (a schedule deciding whether to look at a
/// tenant's computers at all). The computer's own flag is named first when both are set.
pub fn exclusion<'a>(tenant: &'a Tenant, computer: Option<&'a Computer>) -> Option<Exclusion<'a>> {
    if let Some(c) = computer.filter(|c| c.excluded_from_maintenance) {
        return Some(Exclusion::Computer(c));
    }
    tenant
        .excluded_from_maintenance
        .then_some(Exclusion::Tenant(tenant))
}

impl fmt::Display for Exclusion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Computer(c) => write!(f, "computer {} is excluded from maintenance", c.name),
            Exclusion::Tenant(t) => write!(f, "tenant {} is excluded from maintenance", t.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Id;
    use chrono::Utc;

    fn tenant(excluded: bool) -> Tenant {
        Tenant {
            id: Id::new(),
            name: "Acme".into(),
            company_name: None,
            time_zone: crate::types::TimeZone::UTC.into(),
            mail_from: None,
            logo_url: None,
            preflight_scripts: vec![],
            primary_color: None,
            auto_onboarding: false,
            excluded_from_maintenance: excluded,
            business_hours: None,
            mail_bcc: vec![],
            created_at: Utc::now(),
        }
    }

    fn computer(t: &Tenant, excluded: bool) -> Computer {
        Computer {
            id: Id::new(),
            tenant_id: t.id,
            name: "pc-1".into(),
            hostname: "pc-1".into(),
            machine_id: "m".into(),
            tags: vec![],
            primary_person_id: None,
            os: String::new(),
            agent_version: String::new(),
            last_seen_at: None,
            agent_token_hash: None,
            enrolled_at: Utc::now(),
            excluded_from_maintenance: excluded,
            compliance: None,
            logged_on_user: None,
            onboarded: false,
            onboarding: None,
            held_reboot: None,
        }
    }

    fn reason(t: &Tenant, c: Option<&Computer>) -> Option<String> {
        exclusion(t, c).map(|e| e.to_string())
    }

    #[test]
    fn either_flag_excludes_and_the_computer_is_named_first() {
        for (t_ex, c_ex, want) in [
            (false, false, None),
            (
                true,
                false,
                Some("tenant Acme is excluded from maintenance"),
            ),
            (
                false,
                true,
                Some("computer pc-1 is excluded from maintenance"),
            ),
            (
                true,
                true,
                Some("computer pc-1 is excluded from maintenance"),
            ),
        ] {
            let t = tenant(t_ex);
            let c = computer(&t, c_ex);
            assert_eq!(
                reason(&t, Some(&c)).as_deref(),
                want,
                "tenant {t_ex}, computer {c_ex}"
            );
        }
    }

    #[test]
    fn without_a_computer_only_the_tenant_counts() {
        assert_eq!(reason(&tenant(false), None), None);
        assert_eq!(
            reason(&tenant(true), None).as_deref(),
            Some("tenant Acme is excluded from maintenance")
        );
    }
}
