//! Upkeep's domain, pure: what is stored and reasoned about, the session engine and planner,
//! version order, the schedule calendar and the rules of the concurrency queue.
//!
//! Architecture invariant: nothing here does I/O, reads the clock, mints ids or names a
//! runtime, store or API framework (see `Cargo.toml`). The caller passes `now` and an id
//! source ([`engine::Env`]); the same inputs give the same outputs, byte for byte.

pub mod attest;
pub mod audit;
pub mod calendar;
pub mod cron;
pub mod domain;
pub mod engine;
pub mod exclusion;
pub mod impact;
pub mod inventory;
pub mod lease;
pub mod localtime;
pub mod mail;
pub mod output;
pub mod params;
pub mod queue;
pub mod report;
pub mod resolve;
pub mod rollout;
pub mod session;
pub mod types;
pub mod version;
pub mod versions;
pub mod webhook;
