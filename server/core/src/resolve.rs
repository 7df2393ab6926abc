//! Deployment resolution: which deployments apply to a computer, and per software or task which
//! one wins. The most specific target wins (`COMPUTER` > `PERSON` > `TAG` > `ALL_COMPUTERS`),
//! then a tenant's own deployment beats a cross-tenant one, then the newest beats older ones.
//! Pure and deterministic.

use crate::domain::*;

#[derive(Debug, Clone)]
pub struct Resolution<'a> {
    pub subject: Subject,
    pub winner: &'a Deployment,
    /// Other matching deployments of the same software or task, best first.
    pub shadowed: Vec<&'a Deployment>,
    /// Why the winner won, e.g. "TAG beats ALL_COMPUTERS".
    pub rule: String,
}

impl Resolution<'_> {
    /// An exception (`IGNORE`) wins: the subject is left alone.
    pub fn is_exception(&self) -> bool {
        self.winner.desired_state == Some(DesiredSoftwareState::Ignore)
            || (self.winner.software_id.is_none() && self.winner.task_mode == TaskMode::Ignore)
    }
}

/// Rank: higher wins.
fn rank(d: &Deployment) -> (u8, bool, Id) {
    (d.target.kind.specificity(), d.tenant_id.is_some(), d.id)
}

/// Why the winner won, as text. The texts are fixed (four target kinds), so they are
/// literals: resolution runs for every computer of a schedule, and formatting the same few
/// sentences again for each showed in the planning profile.
fn rule(winner: &Deployment, second: Option<&Deployment>) -> &'static str {
    use TargetKind::*;
    let w = winner.target.kind;
    let Some(second) = second else {
        return match w {
            AllComputers => "only matching deployment (ALL_COMPUTERS)",
            Computer => "only matching deployment (COMPUTER)",
            Tag => "only matching deployment (TAG)",
            Person => "only matching deployment (PERSON)",
        };
    };
    let (wr, sr) = (rank(winner), rank(second));
    if wr.0 != sr.0 {
        return match (w, second.target.kind) {
            (AllComputers, AllComputers) => "ALL_COMPUTERS beats ALL_COMPUTERS",
            (AllComputers, Computer) => "ALL_COMPUTERS beats COMPUTER",
            (AllComputers, Tag) => "ALL_COMPUTERS beats TAG",
            (AllComputers, Person) => "ALL_COMPUTERS beats PERSON",
            (Computer, AllComputers) => "COMPUTER beats ALL_COMPUTERS",
            (Computer, Computer) => "COMPUTER beats COMPUTER",
            (Computer, Tag) => "COMPUTER beats TAG",
            (Computer, Person) => "COMPUTER beats PERSON",
            (Tag, AllComputers) => "TAG beats ALL_COMPUTERS",
            (Tag, Computer) => "TAG beats COMPUTER",
            (Tag, Tag) => "TAG beats TAG",
            (Tag, Person) => "TAG beats PERSON",
            (Person, AllComputers) => "PERSON beats ALL_COMPUTERS",
            (Person, Computer) => "PERSON beats COMPUTER",
            (Person, Tag) => "PERSON beats TAG",
            (Person, Person) => "PERSON beats PERSON",
        };
    }
    if wr.1 != sr.1 {
        return match w {
            AllComputers => "tenant deployment beats cross-tenant (ALL_COMPUTERS each)",
            Computer => "tenant deployment beats cross-tenant (COMPUTER each)",
            Tag => "tenant deployment beats cross-tenant (TAG each)",
            Person => "tenant deployment beats cross-tenant (PERSON each)",
        };
    }
    match w {
        AllComputers => "newest of equally specific deployments (ALL_COMPUTERS)",
        Computer => "newest of equally specific deployments (COMPUTER)",
        Tag => "newest of equally specific deployments (TAG)",
        Person => "newest of equally specific deployments (PERSON)",
    }
}

/// A deployment's rank, sorting the winner first.
type BestFirst = std::cmp::Reverse<(u8, bool, Id)>;

/// Resolves `deployments` (any tenant's; others are ignored) for `computer`, one entry per
/// software or task that some enabled deployment targets at it, ordered by subject.
pub fn resolve<'a>(computer: &Computer, deployments: &'a [Deployment]) -> Vec<Resolution<'a>> {
    // One vector sorted by (subject, best first) instead of a map of vectors: one allocation
    // per computer instead of one per subject. The sort is stable, as the per-subject sort
    // was, so equal ranks keep the deployments' order.
    let mut matching: Vec<(Subject, BestFirst, &Deployment)> = deployments
        .iter()
        .filter(|d| {
            d.tenant_id.is_none_or(|t| t == computer.tenant_id)
                && d.enabled
                && d.target.matches(computer)
        })
        .map(|d| (d.subject(), std::cmp::Reverse(rank(d)), d))
        .collect();
    matching.sort_by_key(|a| (a.0, a.1));
    matching
        .chunk_by(|a, b| a.0 == b.0)
        .map(|ds| {
            let winner = ds[0].2;
            Resolution {
                subject: ds[0].0,
                winner,
                shadowed: ds[1..].iter().map(|d| d.2).collect(),
                rule: rule(winner, ds.get(1).map(|d| d.2)).to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use proptest::prelude::*;

    fn computer() -> Computer {
        Computer {
            id: Id::new(),
            tenant_id: Id::new(),
            name: "pc".into(),
            hostname: "pc".into(),
            machine_id: "m".into(),
            tags: vec![crate::types::Stored::read("Office")],
            primary_person_id: Some(Id::new()),
            os: String::new(),
            agent_version: String::new(),
            last_seen_at: None,
            agent_token_hash: None,
            enrolled_at: Utc::now(),
            excluded_from_maintenance: false,
            compliance: None,
            logged_on_user: None,
            onboarded: false,
            onboarding: None,
            held_reboot: None,
        }
    }

    fn dep(c: &Computer, kind: TargetKind, tenant: bool, sw: Id) -> Deployment {
        let value = match kind {
            TargetKind::AllComputers => None,
            TargetKind::Computer => Some(c.id.to_string()),
            TargetKind::Tag => Some("office".into()),
            TargetKind::Person => c.primary_person_id.map(|p| p.to_string()),
        };
        Deployment {
            id: Id::new(),
            tenant_id: tenant.then_some(c.tenant_id),
            target: Target { kind, value },
            software_id: Some(sw),
            desired_state: Some(DesiredSoftwareState::InstalledLatest),
            version: None,
            maintenance_task_id: None,
            task_mode: TaskMode::Enforce,
            parameters: Default::default(),
            enforcement: Enforcement::Required,
            order: DeploymentOrder::Unordered,
            position: 0,
            enabled: true,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_tag_target_matches_as_the_tag_index_compares() {
        let mut c = computer();
        c.tags = vec![crate::types::Stored::read("Ärzte")];
        let target = |v: &str| Target {
            kind: TargetKind::Tag,
            value: Some(v.into()),
        };
        assert!(target("office").matches(&computer()));
        assert!(
            target("ärzte").matches(&c),
            "case-insensitive beyond ASCII, as the index"
        );
        assert!(!target("ärzt").matches(&c));
    }

    #[test]
    fn tag_beats_all_computers() {
        let c = computer();
        let sw = Id::new();
        let all = dep(&c, TargetKind::AllComputers, true, sw);
        let tag = dep(&c, TargetKind::Tag, true, sw);
        let ds = [all.clone(), tag.clone()];
        let r = resolve(&c, &ds);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].winner.id, tag.id);
        assert_eq!(r[0].shadowed[0].id, all.id);
        assert_eq!(r[0].rule, "TAG beats ALL_COMPUTERS");
    }

    #[test]
    fn tenant_beats_cross_tenant_and_other_tenants_are_ignored() {
        let c = computer();
        let sw = Id::new();
        let cross = dep(&c, TargetKind::Computer, false, sw);
        let own = dep(&c, TargetKind::Computer, true, sw);
        let mut foreign = dep(&c, TargetKind::Computer, true, sw);
        foreign.tenant_id = Some(Id::new());
        let ds = [own.clone(), cross, foreign];
        let r = resolve(&c, &ds);
        assert_eq!(r[0].winner.id, own.id);
        assert_eq!(r[0].shadowed.len(), 1);
        assert!(
            r[0].rule
                .starts_with("tenant deployment beats cross-tenant")
        );
    }

    #[test]
    fn disabled_and_non_matching_deployments_do_nothing() {
        let c = computer();
        let mut d = dep(&c, TargetKind::AllComputers, true, Id::new());
        d.enabled = false;
        let mut t = dep(&c, TargetKind::Tag, true, Id::new());
        t.target.value = Some("other".into());
        assert!(resolve(&c, &[d, t]).is_empty());
    }

    #[test]
    fn ignore_winner_is_an_exception() {
        let c = computer();
        let sw = Id::new();
        let all = dep(&c, TargetKind::AllComputers, false, sw);
        let mut ex = dep(&c, TargetKind::Tag, true, sw);
        ex.desired_state = Some(DesiredSoftwareState::Ignore);
        let ds = [all, ex];
        let r = resolve(&c, &ds);
        assert!(r[0].is_exception());
    }

    proptest! {
        /// The winner always has the highest (specificity, tenant-owned) of the matches, and
        /// the result does not depend on input order.
        #[test]
        fn winner_is_most_specific(kinds in proptest::collection::vec((0u8..4, any::<bool>()), 1..8), seed in any::<u64>()) {
            let c = computer();
            let sw = Id::new();
            let all = [TargetKind::AllComputers, TargetKind::Tag, TargetKind::Person, TargetKind::Computer];
            let mut ds: Vec<Deployment> = kinds.iter().map(|(k, t)| dep(&c, all[*k as usize], *t, sw)).collect();
            let original = ds.clone();
            let r1 = resolve(&c, &original);
            let n = ds.len();
            ds.rotate_left((seed % n as u64) as usize);
            let r2 = resolve(&c, &ds);
            prop_assert_eq!(r1[0].winner.id, r2[0].winner.id);
            let best = ds.iter().map(|d| (d.target.kind.specificity(), d.tenant_id.is_some())).max().unwrap();
            prop_assert_eq!((r1[0].winner.target.kind.specificity(), r1[0].winner.tenant_id.is_some()), best);
            prop_assert_eq!(r1[0].shadowed.len(), n - 1);
        }
    }
}
