//! Leases: which replica may do one item of work that must happen once (send one mail, make
//! one webhook delivery). In cluster mode several replicas run the same outbox; before sending
//! an item a replica claims it by writing a [`Lease`] into the item's record, in a store
//! transaction that fails when another live lease is there (the store's transactions are
//! serializable, so two claims of one item never both commit). The result is recorded, and the
//! lease dropped, in one more transaction. A replica that dies holding a lease leaves it to
//! run out; then another replica claims the item and sends it.
//!
//! At-least-once at the wire: a replica killed after the receiver accepted the item (SMTP
//! `DATA` answered, the webhook's 2xx read) and before its result was committed leaves the
//! item pending, and the next holder sends it again. Mails keep their Message-ID and
//! deliveries their id, so receivers can tell the repeat. Outside that window an item is sent
//! once.
//!
//! A lease's end is an instant on the claimer's clock: replicas' clocks must agree (NTP) to
//! well within the lease's length.
//!
//! Pure: the caller passes `now` and its own id.

use crate::domain::{Id, Time};
use serde::{Deserialize, Serialize};

/// Who holds an item, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The claiming replica (its id for this run of the process).
    pub holder: Id,
    /// The lease is over from this instant on.
    pub until: Time,
}

impl Lease {
    /// Whether the lease still holds at `now`.
    pub fn live(&self, now: Time) -> bool {
        now < self.until
    }
}

/// A replica as a claimer: its id and how long its leases last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant {
    pub holder: Id,
    pub length: chrono::Duration,
}

impl Claimant {
    /// The lease to write for an item whose current lease is `current`, or `None` while a
    /// lease still holds — another replica's, or this one's own (two passes of one replica,
    /// the loop's and a caller's, must not both send an item). A run-out lease is taken over.
    pub fn claim(&self, current: Option<&Lease>, now: Time) -> Option<Lease> {
        if current.is_some_and(|l| l.live(now)) {
            return None;
        }
        Some(Lease {
            holder: self.holder,
            until: now + self.length,
        })
    }

    /// Whether another replica holds `current` at `now` (its item is in flight there).
    pub fn held_by_other(&self, current: Option<&Lease>, now: Time) -> bool {
        current.is_some_and(|l| l.holder != self.holder && l.live(now))
    }

    /// Whether this replica's result of an attempt may be recorded over the item as it is now
    /// stored with `current`. Yes while the lease is this replica's, or nobody's live one. When
    /// this replica's lease ran out and another replica claimed the item meanwhile, only a
    /// result that `finishes` the item (sent, failed for good, withdrawn) is recorded: the
    /// other replica would otherwise send it again; a failed attempt is left to the new holder.
    pub fn may_settle(&self, current: Option<&Lease>, now: Time, finishes: bool) -> bool {
        finishes || !self.held_by_other(current, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration};

    fn at(s: i64) -> Time {
        DateTime::UNIX_EPOCH + Duration::seconds(s)
    }

    fn me() -> Claimant {
        Claimant {
            holder: Id::from_u128(1),
            length: Duration::seconds(60),
        }
    }

    fn other_until(s: i64) -> Lease {
        Lease {
            holder: Id::from_u128(2),
            until: at(s),
        }
    }

    #[test]
    fn an_unleased_item_is_claimed_for_the_lease_length() {
        assert_eq!(
            me().claim(None, at(100)),
            Some(Lease {
                holder: Id::from_u128(1),
                until: at(160)
            })
        );
    }

    #[test]
    fn another_replicas_live_lease_refuses_the_claim_until_it_runs_out() {
        let held = other_until(160);
        assert_eq!(me().claim(Some(&held), at(100)), None);
        assert_eq!(me().claim(Some(&held), at(159)), None);
        assert!(me().held_by_other(Some(&held), at(159)));
        // The end is exclusive: at `until` the lease is over and the item is taken over.
        assert!(!held.live(at(160)));
        assert_eq!(
            me().claim(Some(&held), at(160))
                .map(|l| (l.holder, l.until)),
            Some((Id::from_u128(1), at(220)))
        );
    }

    #[test]
    fn a_replicas_own_live_lease_refuses_its_second_claim() {
        let mine = me().claim(None, at(0)).expect("claimed");
        assert!(!me().held_by_other(Some(&mine), at(10)));
        assert_eq!(me().claim(Some(&mine), at(10)), None);
        assert_eq!(
            me().claim(Some(&mine), at(60)).map(|l| l.until),
            Some(at(120))
        );
    }

    #[test]
    fn a_result_is_recorded_unless_a_newer_holder_took_over_and_it_finishes_nothing() {
        let mine = me().claim(None, at(0)).expect("claimed");
        for finishes in [true, false] {
            assert!(me().may_settle(Some(&mine), at(10), finishes));
            assert!(me().may_settle(None, at(10), finishes));
            // Another replica's lease that ran out no longer stands in the way.
            assert!(me().may_settle(Some(&other_until(5)), at(10), finishes));
        }
        let taken_over = other_until(200);
        assert!(me().may_settle(Some(&taken_over), at(100), true));
        assert!(!me().may_settle(Some(&taken_over), at(100), false));
    }
}
