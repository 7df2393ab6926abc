//! A simulated agent: the agent protocol without scripts. It long-polls, and answers every job
//! with a synthetic result — detection says "not installed" the first time a session probes
//! and "1.0" (the version the bench's software offers) afterwards; steps exit 0; reboots start.
//! So every session of the bench ends PASSED with one INSTALL per deployment.

use crate::report::Latencies;
use anyhow::{Result, bail};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upkeep_agent_protocol as proto;

/// What the fleet did, shared by every simulated agent.
pub struct FleetStats {
    /// While true, agents hold their results back (they still take jobs).
    hold: tokio::sync::watch::Sender<bool>,
    /// Agents that polled once and count as online.
    pub ready: AtomicU64,
    pub results: AtomicU64,
    pub throttled: AtomicU64,
    /// Round-trip time of result calls (the server persists and flushes before it answers).
    pub result_latency: Mutex<Latencies>,
}

impl FleetStats {
    pub fn new() -> FleetStats {
        FleetStats {
            hold: tokio::sync::watch::Sender::new(false),
            ready: Default::default(),
            results: Default::default(),
            throttled: Default::default(),
            result_latency: Default::default(),
        }
    }

    /// Makes agents hold their results back (`true`) or send them (`false`).
    pub fn hold_results(&self, hold: bool) {
        self.hold.send_replace(hold);
    }
}

#[derive(Clone)]
pub struct AgentOptions {
    /// How long a job "runs" before its result is sent (zero: answered at once).
    pub think: Duration,
    /// Long-poll wait asked of the server.
    pub wait_seconds: u32,
}

/// Runs one agent until its task is aborted.
pub async fn run(
    http: reqwest::Client,
    base_url: String,
    token: String,
    opts: AgentOptions,
    seed: u64,
    stats: Arc<FleetStats>,
) -> Result<()> {
    let poll_url = format!("{base_url}/agent/v1/poll");
    let mut probed: HashSet<String> = HashSet::new();
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut first = true;
    loop {
        let body = proto::PollRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            wait_seconds: if first { 0 } else { opts.wait_seconds },
            inventory: None,
            reboot_pending: None,
        };
        let resp = http
            .post(&poll_url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if !resp.status().is_success() {
            bail!("poll answered {}", resp.status());
        }
        let answer: proto::PollResponse = resp.json().await?;
        if first {
            first = false;
            stats.ready.fetch_add(1, Ordering::Relaxed);
        }
        for job in answer.jobs {
            if !opts.think.is_zero() {
                // Jitter of ±50 % so the fleet does not answer in lockstep.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let factor = 0.5 + (rng % 1000) as f64 / 1000.0;
                tokio::time::sleep(opts.think.mul_f64(factor)).await;
            }
            let outcome = answer_job(&job, &mut probed);
            let url = format!("{base_url}/agent/v1/jobs/{}/result", job.id);
            let result = proto::JobResult {
                protocol_version: proto::PROTOCOL_VERSION,
                outcome,
                reboot_pending: None,
            };
            stats.hold.subscribe().wait_for(|h| !*h).await?;
            let sent = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(&token)
                .json(&result)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("result of job {} answered {}", job.id, resp.status());
            }
            let _ack: proto::ResultAck = resp.json().await?;
            if let Ok(mut l) = stats.result_latency.lock() {
                l.record(sent.elapsed());
            }
            stats.results.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn outcome(exit_code: i32, stdout: &str) -> proto::ScriptOutcome {
    proto::ScriptOutcome {
        exit_code: Some(exit_code),
        stdout: stdout.into(),
        stderr: String::new(),
        duration_ms: 1,
        timed_out: false,
        truncated: false,
        error: None,
    }
}

/// The synthetic result of one job. `probed` remembers sessions whose detection already ran.
fn answer_job(job: &proto::Job, probed: &mut HashSet<String>) -> proto::JobOutcome {
    match &job.kind {
        proto::JobKind::Probe { probes } => {
            let installed = !probed.insert(job.session_id.clone());
            let results = probes
                .iter()
                .map(|p| proto::ProbeResult {
                    probe_id: p.probe_id.clone(),
                    // Detection probes are `d<item>`; task tests (`c…`, `t…`) say compliant.
                    outcome: if p.probe_id.starts_with('d') {
                        outcome(0, if installed { "1.0\n" } else { "" })
                    } else {
                        outcome(0, "")
                    },
                })
                .collect();
            proto::JobOutcome::Probe { results }
        }
        proto::JobKind::Step { .. } => proto::JobOutcome::Step {
            outcome: outcome(0, "installed\n"),
        },
        proto::JobKind::Reboot {} => proto::JobOutcome::Reboot {
            started: true,
            error: None,
        },
        proto::JobKind::Prompt { .. } => proto::JobOutcome::Prompt {
            shown: true,
            error: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_job(session: &str) -> proto::Job {
        proto::Job {
            id: "j".into(),
            session_id: session.into(),
            lease_seconds: 60,
            kind: proto::JobKind::Probe {
                probes: vec![proto::Probe {
                    probe_id: "d0".into(),
                    script: proto::Script {
                        language: proto::ScriptLanguage::Shell,
                        body: "true".into(),
                        timeout_seconds: 1,
                    },
                    parameters: Default::default(),
                }],
            },
        }
    }

    fn stdout_of(o: &proto::JobOutcome) -> String {
        match o {
            proto::JobOutcome::Probe { results } => results[0].outcome.stdout.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn detection_says_missing_then_installed_per_session() {
        let mut probed = HashSet::new();
        assert_eq!(stdout_of(&answer_job(&probe_job("s1"), &mut probed)), "");
        assert_eq!(
            stdout_of(&answer_job(&probe_job("s1"), &mut probed)),
            "1.0\n"
        );
        assert_eq!(stdout_of(&answer_job(&probe_job("s2"), &mut probed)), "");
    }
}
