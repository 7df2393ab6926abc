//! The session board: which session holds a running slot, which wait for one and in what
//! order, which wake when, and the one unfinished session of each computer. Pure data: the
//! runtime keeps one behind a mutex and steps the sessions this board names.
//!
//! Architecture invariant: at most one unfinished session per computer, and at most
//! `max_running` sessions holding a slot; the runtime asks this board and nothing else.
//!
//! Rules:
//! - At most `max_running` sessions hold a slot; a session that holds one keeps it through
//!   the stages that need the computer (`engine::holds_slot`).
//! - Waiting sessions queue by trigger priority, then creation time. Only the head of the
//!   queue may take a free slot.
//! - Only the head is woken, and once per freed slot until its step begins ([`Board::stepping`]):
//!   waking every queued session on every freed slot piled thousands of steps on one lock.

use crate::domain::{Id, Time};
use crate::engine;
use crate::session::Session;
use std::collections::{BTreeSet, HashMap, HashSet};

type QueueKey = (u8, Time, Id);

#[derive(Debug, Default)]
pub struct Board {
    max_running: usize,
    /// (wake time, session) for sessions that asked for a `Tick`.
    timers: BTreeSet<(Time, Id)>,
    wake_of: HashMap<Id, Time>,
    /// The unfinished session of each computer (at most one).
    active_by_computer: HashMap<Id, Id>,
    /// Sessions holding a running slot.
    running: HashSet<Id>,
    /// Sessions waiting for a slot, in start order.
    queue: BTreeSet<QueueKey>,
    queued_key: HashMap<Id, QueueKey>,
    /// Queue heads woken for a free slot whose step has not begun yet.
    head_woken: HashSet<Id>,
    /// (due, computer) for reboots held by business hours.
    held_reboots: BTreeSet<(Time, Id)>,
}

impl Board {
    pub fn new(max_running: usize) -> Board {
        Board {
            max_running,
            ..Board::default()
        }
    }

    pub fn active_session_of(&self, computer: Id) -> Option<Id> {
        self.active_by_computer.get(&computer).copied()
    }

    pub fn active_count(&self) -> usize {
        self.active_by_computer.len()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Reserves a running slot for `id` if it holds one, or one is free and no session queued
    /// ahead of it waits.
    pub fn try_slot(&mut self, id: Id) -> bool {
        if self.running.contains(&id) {
            return true;
        }
        let head_ok = match self.queue.first() {
            None => true,
            Some(first) => first.2 == id,
        };
        if self.running.len() < self.max_running && head_ok {
            self.running.insert(id);
            true
        } else {
            false
        }
    }

    /// At start-up: a stored session that holds a slot takes it back, whatever the ceiling.
    pub fn recover(&mut self, s: &Session) -> Option<Id> {
        if engine::holds_slot(s) {
            self.running.insert(s.id);
        }
        self.note(s)
    }

    /// Records the session's new state; returns the queued session to step because a slot is
    /// free (the head, at most once until its step begins).
    ///
    /// The head is woken even when it is `s` itself: a slot may have freed while `s` was being
    /// refused one, and the note that freed it found `s` not yet queued.
    pub fn note(&mut self, s: &Session) -> Option<Id> {
        if let Some(old) = self.wake_of.remove(&s.id) {
            self.timers.remove(&(old, s.id));
        }
        if let Some(k) = self.queued_key.remove(&s.id) {
            self.queue.remove(&k);
        }
        if s.status.is_terminal() {
            if self.active_by_computer.get(&s.computer_id) == Some(&s.id) {
                self.active_by_computer.remove(&s.computer_id);
            }
        } else {
            self.active_by_computer.insert(s.computer_id, s.id);
            if let Some(w) = s.wake_at {
                self.timers.insert((w, s.id));
                self.wake_of.insert(s.id, w);
            }
            if s.queued {
                let k = (s.trigger.priority(), s.created_at, s.id);
                self.queue.insert(k);
                self.queued_key.insert(s.id, k);
            }
        }
        if !engine::holds_slot(s) {
            self.running.remove(&s.id);
        }
        if self.running.len() < self.max_running
            && let Some(head) = self.queue.first().map(|k| k.2)
            && self.head_woken.insert(head)
        {
            Some(head)
        } else {
            None
        }
    }

    /// A step of `id` is about to read its state: a later freed slot may wake it again.
    pub fn stepping(&mut self, id: Id) {
        if !self.head_woken.is_empty() {
            self.head_woken.remove(&id);
        }
    }

    /// Sessions whose timer is due at `now` (they stay registered until their next note).
    pub fn due_timers(&self, now: Time) -> Vec<Id> {
        self.timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    pub fn hold_reboot(&mut self, computer: Id, due: Time) {
        self.held_reboots.insert((due, computer));
    }

    /// Computers whose held reboot is due at `now`; each is handed out once.
    pub fn take_due_reboots(&mut self, now: Time) -> Vec<Id> {
        let due: Vec<(Time, Id)> = self
            .held_reboots
            .iter()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        for d in &due {
            self.held_reboots.remove(d);
        }
        due.into_iter().map(|(_, c)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionStatus, SessionTrigger, Stage};

    fn id(n: u128) -> Id {
        Id::from_u128(n)
    }

    fn t(minute: i64) -> Time {
        chrono::DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
    }

    /// A session queued for a slot (created at minute `n`), of computer `n`.
    fn queued(n: u128) -> Session {
        let mut s = Session::for_tests(id(n), id(1000 + n), t(n as i64));
        s.queued = true;
        s.status = SessionStatus::Pending;
        s.stage = Stage::AwaitExecute;
        s
    }

    fn running(n: u128) -> Session {
        let mut s = queued(n);
        s.queued = false;
        s.status = SessionStatus::Executing;
        s.stage = Stage::Executing;
        s
    }

    fn finished(mut s: Session) -> Session {
        s.queued = false;
        s.status = SessionStatus::Passed;
        s.stage = Stage::Done;
        s
    }

    #[test]
    fn only_the_head_takes_a_free_slot() {
        let mut b = Board::new(1);
        assert!(b.try_slot(id(1)));
        assert_eq!(b.note(&running(1)), None);
        assert_eq!(b.note(&queued(2)), None, "no free slot: nobody is woken");
        assert_eq!(b.note(&queued(3)), None);
        assert!(!b.try_slot(id(3)), "a slot is taken");
        assert_eq!(b.queued_count(), 2);
        // The slot frees: the head (2) is woken, once.
        assert_eq!(b.note(&finished(running(1))), Some(id(2)));
        assert!(!b.try_slot(id(3)), "3 is not the head");
        assert!(b.try_slot(id(2)));
        assert_eq!(b.running_count(), 1);
    }

    #[test]
    fn the_head_is_woken_once_per_freed_slot_until_its_step_begins() {
        let mut b = Board::new(2);
        b.try_slot(id(1));
        b.note(&running(1));
        b.try_slot(id(2));
        b.note(&running(2));
        b.note(&queued(3));
        // Two slots free in a row before 3 steps: 3 is woken once, not twice.
        assert_eq!(b.note(&finished(running(1))), Some(id(3)));
        assert_eq!(b.note(&finished(running(2))), None);
        // Its step begins: a later note may wake it again.
        b.stepping(id(3));
        assert_eq!(b.note(&queued(3)), Some(id(3)));
    }

    #[test]
    fn priority_orders_the_queue_before_creation_time() {
        let mut b = Board::new(1);
        b.try_slot(id(9));
        b.note(&running(9));
        let mut scheduled = queued(1);
        scheduled.trigger = SessionTrigger::Schedule;
        b.note(&scheduled);
        let mut manual = queued(2);
        manual.trigger = SessionTrigger::Manual;
        b.note(&manual);
        assert_eq!(
            b.note(&finished(running(9))),
            Some(id(2)),
            "manual before schedule"
        );
    }

    #[test]
    fn a_computer_has_one_active_session_until_it_finishes() {
        let mut b = Board::new(4);
        let s = queued(1);
        b.note(&s);
        assert_eq!(b.active_session_of(id(1001)), Some(id(1)));
        b.note(&finished(s));
        assert_eq!(b.active_session_of(id(1001)), None);
        assert_eq!(b.active_count(), 0);
    }

    #[test]
    fn timers_and_held_reboots_fall_due_in_order() {
        let mut b = Board::new(1);
        let mut s = queued(1);
        s.wake_at = Some(t(10));
        b.note(&s);
        assert!(b.due_timers(t(9)).is_empty());
        assert_eq!(b.due_timers(t(10)), vec![id(1)]);
        b.hold_reboot(id(7), t(5));
        b.hold_reboot(id(8), t(6));
        assert_eq!(b.take_due_reboots(t(5)), vec![id(7)]);
        assert_eq!(b.take_due_reboots(t(6)), vec![id(8)]);
        assert!(b.take_due_reboots(t(60)).is_empty());
    }
}
