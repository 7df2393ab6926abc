//! The rollout state machine with no server: waves, halts, resume, abort, the split.

use super::*;
use crate::domain::{TargetKind, Time};
use crate::types::Stored;

fn at(s: i64) -> Time {
    chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
}

fn computer(n: u128, tags: &[&str]) -> Computer {
    Computer {
        id: Id::from_u128(0x100 + n),
        tenant_id: Id::from_u128(1),
        name: format!("pc{n}"),
        hostname: format!("pc{n}"),
        machine_id: format!("m{n}"),
        tags: tags.iter().map(|t| Stored::read(t)).collect(),
        primary_person_id: None,
        os: String::new(),
        agent_version: String::new(),
        last_seen_at: None,
        agent_token_hash: None,
        enrolled_at: at(0),
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: false,
        onboarding: None,
        held_reboot: None,
    }
}

fn canary() -> WaveSelector {
    WaveSelector::Target(Target {
        kind: TargetKind::Tag,
        value: Some("canary".into()),
    })
}

fn rollout(waves: Vec<Wave>, wait_minutes: u32) -> Rollout {
    Rollout {
        id: Id::from_u128(7),
        tenant_id: Some(Id::from_u128(1)),
        deployment_id: Id::from_u128(9),
        waves,
        halt_above: 0.1,
        min_sessions_per_wave: 1,
        wait_minutes,
        options: MaintenanceOptions::default(),
        status: RolloutStatus::Running,
        status_reason: None,
        current: 0,
        next_wave_at: None,
        created_by: "tech".into(),
        created_at: at(0),
        updated_at: at(0),
        revision: 0,
    }
}

fn two_waves(wait: u32) -> Rollout {
    rollout(
        vec![
            Wave::new("canary".into(), canary()),
            Wave::new("rest".into(), WaveSelector::Percent(100)),
        ],
        wait,
    )
}

fn out(n: u128, status: SessionStatus) -> Outcome {
    Outcome {
        session: Id::from_u128(0x900 + n),
        status,
    }
}

fn observe(r: &mut Rollout, t: i64, sessions: Vec<Outcome>) -> Vec<Effect> {
    step(
        r,
        Event::Observe {
            now: at(t),
            sessions,
        },
    )
    .unwrap()
}

fn started(r: &mut Rollout, t: i64, wave: usize, computers: Vec<Id>) {
    step(
        r,
        Event::WaveStarted {
            now: at(t),
            wave,
            computers,
        },
    )
    .unwrap();
}

#[test]
fn a_new_rollout_starts_its_first_wave() {
    let mut r = two_waves(0);
    assert_eq!(observe(&mut r, 0, vec![]), vec![Effect::StartWave(0)]);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    assert_eq!(r.waves[0].status, WaveStatus::Running);
    // Observing again with its session running changes nothing.
    let before = r.clone();
    assert_eq!(
        observe(&mut r, 1, vec![out(1, SessionStatus::Executing)]),
        vec![]
    );
    assert_eq!(r, before);
}

#[test]
fn a_failing_canary_halts_before_the_next_wave() {
    let mut r = two_waves(0);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    let e = observe(&mut r, 5, vec![out(1, SessionStatus::Failed)]);
    assert_eq!(
        e,
        vec![Effect::Halted {
            failing: vec![Id::from_u128(0x901)]
        }]
    );
    assert_eq!(r.status, RolloutStatus::Halted);
    assert_eq!(r.waves[0].status, WaveStatus::Halted);
    assert_eq!(r.waves[0].failure_rate(), Some(1.0));
    assert!(
        r.status_reason
            .as_deref()
            .unwrap()
            .contains("wave canary failed")
    );
    // Halted: time passing starts nothing.
    assert_eq!(
        observe(&mut r, 500, vec![out(1, SessionStatus::Failed)]),
        vec![]
    );
    assert_eq!(r.waves[1].status, WaveStatus::Pending);
}

#[test]
fn a_wave_halts_early_while_others_still_run() {
    let mut r = two_waves(0);
    r.min_sessions_per_wave = 2;
    started(
        &mut r,
        0,
        0,
        vec![Id::from_u128(1), Id::from_u128(2), Id::from_u128(3)],
    );
    // One failure out of one decided: not enough evidence yet.
    let e = observe(
        &mut r,
        1,
        vec![
            out(1, SessionStatus::Failed),
            out(2, SessionStatus::Executing),
            out(3, SessionStatus::Executing),
        ],
    );
    assert_eq!(e, vec![]);
    assert_eq!(r.status, RolloutStatus::Running);
    let e = observe(
        &mut r,
        2,
        vec![
            out(1, SessionStatus::Failed),
            out(2, SessionStatus::Passed),
            out(3, SessionStatus::Executing),
        ],
    );
    assert!(matches!(e[..], [Effect::Halted { .. }]));
    assert_eq!(r.waves[0].failure_rate(), Some(0.5));
}

#[test]
fn a_passing_rollout_waits_between_waves_and_completes() {
    let mut r = two_waves(30);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    assert_eq!(
        observe(&mut r, 60, vec![out(1, SessionStatus::Passed)]),
        vec![]
    );
    assert_eq!(r.status, RolloutStatus::Waiting);
    assert_eq!(r.next_wave_at, Some(at(60 + 30 * 60)));
    assert_eq!(observe(&mut r, 60 + 29 * 60, vec![]), vec![]);
    assert_eq!(
        observe(&mut r, 60 + 30 * 60, vec![]),
        vec![Effect::StartWave(1)]
    );
    started(
        &mut r,
        60 + 30 * 60,
        1,
        vec![Id::from_u128(2), Id::from_u128(3)],
    );
    assert_eq!(r.status, RolloutStatus::Running);
    assert_eq!(r.current, 1);
    let e = observe(
        &mut r,
        4000,
        vec![
            out(2, SessionStatus::Passed),
            out(3, SessionStatus::Cancelled),
        ],
    );
    assert_eq!(e, vec![]);
    assert_eq!(r.status, RolloutStatus::Completed);
    assert_eq!(r.waves[1].status, WaveStatus::Passed);
    assert_eq!(r.waves[1].failure_rate(), Some(0.0));
}

#[test]
fn without_a_wait_the_next_wave_starts_at_once() {
    let mut r = two_waves(0);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    assert_eq!(
        observe(&mut r, 1, vec![out(1, SessionStatus::Passed)]),
        vec![Effect::StartWave(1)]
    );
}

#[test]
fn a_wave_with_too_few_finished_sessions_halts() {
    let mut r = two_waves(0);
    started(&mut r, 0, 0, vec![]);
    let e = observe(&mut r, 1, vec![]);
    assert_eq!(e, vec![Effect::Halted { failing: vec![] }]);
    assert!(
        r.status_reason
            .as_deref()
            .unwrap()
            .contains("fewer than the 1 required")
    );
    // With no minimum an empty wave passes.
    let mut r = two_waves(0);
    r.min_sessions_per_wave = 0;
    started(&mut r, 0, 0, vec![]);
    assert_eq!(observe(&mut r, 1, vec![]), vec![Effect::StartWave(1)]);
}

#[test]
fn resume_accepts_the_halted_wave_and_goes_on() {
    let mut r = two_waves(30);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    observe(&mut r, 1, vec![out(1, SessionStatus::Failed)]);
    step(
        &mut r,
        Event::Resume {
            now: at(2),
            by: "tech".into(),
        },
    )
    .unwrap();
    assert_eq!(r.status, RolloutStatus::Running);
    // The accepted wave passes and the next starts at once, whatever the wait.
    assert_eq!(
        observe(&mut r, 3, vec![out(1, SessionStatus::Failed)]),
        vec![Effect::StartWave(1)]
    );
    assert_eq!(r.waves[0].status, WaveStatus::Passed);
    // Only a halted rollout resumes.
    assert_eq!(
        step(
            &mut r,
            Event::Resume {
                now: at(4),
                by: "tech".into()
            }
        ),
        Err(RolloutError::NotHalted("RUNNING"))
    );
}

#[test]
fn abort_ends_the_rollout_and_cancels_what_runs() {
    let mut r = two_waves(0);
    started(&mut r, 0, 0, vec![Id::from_u128(1)]);
    let e = step(
        &mut r,
        Event::Abort {
            now: at(1),
            by: "tech".into(),
        },
    )
    .unwrap();
    assert_eq!(e, vec![Effect::CancelUnfinished]);
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert!(r.waves.iter().all(|w| w.status == WaveStatus::Aborted));
    assert_eq!(
        observe(&mut r, 2, vec![out(1, SessionStatus::Passed)]),
        vec![]
    );
    assert_eq!(
        step(
            &mut r,
            Event::Abort {
                now: at(3),
                by: "tech".into()
            }
        ),
        Err(RolloutError::Final("ABORTED"))
    );
    // A late WaveStarted (a replica that lost the race) changes nothing.
    let before = r.clone();
    started(&mut r, 4, 1, vec![Id::from_u128(2)]);
    assert_eq!(r, before);
}

#[test]
fn waves_split_the_targets_stably_and_never_twice() {
    let all: Vec<Computer> = (0..10)
        .map(|n| computer(n, if n < 2 { &["canary"] } else { &[] }))
        .collect();
    let mut r = rollout(
        vec![
            Wave::new("canary".into(), canary()),
            Wave::new("a third".into(), WaveSelector::Percent(30)),
            Wave::new("rest".into(), WaveSelector::Percent(100)),
        ],
        0,
    );
    let canary = wave_members(&r, 0, &all);
    let mut sorted = canary.clone();
    sorted.sort();
    assert_eq!(sorted, vec![Id::from_u128(0x100), Id::from_u128(0x101)]);
    r.waves[0].computers = canary.clone();
    let third = wave_members(&r, 1, &all);
    assert_eq!(third.len(), 3, "ceil(30 % of 10)");
    assert!(third.iter().all(|c| !canary.contains(c)));
    // The same inputs in another order give the same split.
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(wave_members(&r, 1, &reversed), third);
    r.waves[1].computers = third.clone();
    let rest = wave_members(&r, 2, &all);
    assert_eq!(rest.len(), 5);
    let mut every: Vec<Id> = [canary, third, rest].concat();
    every.sort();
    every.dedup();
    assert_eq!(every.len(), 10);
    // Another rollout orders the computers differently (not by enrollment order).
    let order = |rollout: u128| {
        let mut ids: Vec<Id> = all.iter().map(|c| c.id).collect();
        ids.sort_by_key(|c| split_key(Id::from_u128(rollout), *c));
        ids
    };
    assert_ne!(order(7), order(8));
}

#[test]
fn a_percent_wave_takes_at_least_the_minimum() {
    let all: Vec<Computer> = (0..10).map(|n| computer(n, &[])).collect();
    let mut r = rollout(vec![Wave::new("one".into(), WaveSelector::Percent(1))], 0);
    assert_eq!(wave_members(&r, 0, &all).len(), 1);
    r.min_sessions_per_wave = 4;
    assert_eq!(wave_members(&r, 0, &all).len(), 4);
}
