//! `sessions`: N computers × 10 deployments, simulated agents that answer every job at once.
//! Sessions are started through GraphQL `startMaintenanceSession` and the clock runs until
//! `maintenanceSessionStatusCounts` shows all of them PASSED.
//!
//! Each session is 12 agent round trips: one detection probe job (10 probes), ten install
//! steps one after another, one verification probe job; each result is persisted and flushed
//! before the server acknowledges it.

use crate::agent::{self, AgentOptions, FleetStats};
use crate::report::{Figure, Latencies, note};
use crate::server::{ENROLL_CONCURRENCY, deploy_software, enroll_fleet};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use upkeep_testkit::{Endpoint, TestServer};

const S: &str = "sessions";
pub const DEPLOYMENTS: usize = 10;
/// Computers per `startMaintenanceSession` call.
const START_BATCH: usize = 100;

/// A tenant with enrolled, polling simulated agents and its deployments.
pub struct Fleet {
    /// Where the agents and the bench's calls go.
    pub endpoint: Endpoint,
    /// The server of this process the fleet started, if it started one.
    pub server: Option<TestServer>,
    pub admin: String,
    pub tenant: String,
    pub computers: Vec<String>,
    pub stats: Arc<FleetStats>,
    agents: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl Fleet {
    /// Starts a server in this process and a fleet of `n` agents on it ([`Fleet::on`]).
    pub async fn start(scenario: &str, n: usize, opts: AgentOptions) -> Result<Fleet> {
        // The server's defaults, including `--max-concurrent-sessions` (500): with 1 000
        // computers half the sessions wait in the queue for a slot.
        let server = TestServer::start_in_temp_dir(upkeep_testkit::config).await?;
        let mut fleet = Fleet::on(
            server.endpoint(),
            "Fleet",
            scenario,
            n,
            opts,
            ENROLL_CONCURRENCY,
        )
        .await?;
        fleet.server = Some(server);
        Ok(fleet)
    }

    /// On the server(s) behind `endpoint`: creates a tenant named `name` (names are unique),
    /// enrolls `n` agents (HTTP),
    /// deploys `DEPLOYMENTS` software entries to all of them, and waits until every agent has
    /// polled.
    pub async fn on(
        endpoint: Endpoint,
        name: &str,
        scenario: &str,
        n: usize,
        opts: AgentOptions,
        enroll_concurrency: usize,
    ) -> Result<Fleet> {
        let admin = endpoint.admin().await?;
        let tenant = endpoint.create_tenant(&admin, name).await?;
        let key = endpoint.enrollment_key(&admin, &tenant).await?;
        deploy_software(&endpoint, &admin, &tenant, DEPLOYMENTS).await?;
        note(scenario, format!("enrolling {n} agents"));
        let enrolled = Arc::new(std::sync::Mutex::new(vec![
            (String::new(), String::new());
            n
        ]));
        let e = enrolled.clone();
        enroll_fleet(&endpoint, &key, n, enroll_concurrency, move |i, r| {
            if let Ok(mut e) = e.lock() {
                e[i] = (r.computer_id, r.agent_token);
            }
        })
        .await?;
        let enrolled =
            std::mem::take(&mut *enrolled.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let stats = Arc::new(FleetStats::new());
        let http = upkeep_testkit::http_client()?;
        let mut agents = Vec::new();
        let mut computers = Vec::new();
        for (i, (computer, token)) in enrolled.into_iter().enumerate() {
            computers.push(computer);
            agents.push(tokio::spawn(agent::run(
                http.clone(),
                endpoint.url.clone(),
                token,
                opts.clone(),
                i as u64,
                stats.clone(),
            )));
        }
        let mut fleet = Fleet {
            endpoint,
            server: None,
            admin,
            tenant,
            computers,
            stats,
            agents,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.stats.ready.load(Ordering::Relaxed) < n as u64 {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} agents polled",
                    fleet.stats.ready.load(Ordering::Relaxed)
                );
            }
            fleet.check_agents()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(fleet)
    }

    /// Starts sessions for `computers` in calls of `START_BATCH` computers, all calls at once
    /// (a PSA or several schedules starting work together).
    pub async fn start_sessions(&self, computers: &[String]) -> Result<()> {
        let mut calls = Vec::new();
        for batch in computers.chunks(START_BATCH) {
            let http = self.endpoint.http.clone();
            let url = self.endpoint.url.clone();
            let admin = self.admin.clone();
            let ids = batch.to_vec();
            let call = tokio::spawn(async move {
                let d = upkeep_testkit::gql(
                    &http,
                    &url,
                    &admin,
                    "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }",
                    json!({"i": {"computerIds": ids}}),
                )
                .await?;
                let started = d["startMaintenanceSession"]
                    .as_array()
                    .context("no sessions")?
                    .len();
                anyhow::ensure!(
                    started == ids.len(),
                    "{started} of {} sessions started",
                    ids.len()
                );
                Ok::<_, anyhow::Error>(())
            });
            calls.push(call);
        }
        for c in calls {
            c.await??;
        }
        Ok(())
    }

    /// Fails with the first error of an agent that stopped.
    pub fn check_agents(&mut self) -> Result<()> {
        use futures_util::FutureExt;
        for a in &mut self.agents {
            if a.is_finished() {
                let why = match a.now_or_never() {
                    Some(Ok(Err(e))) => format!("{e:#}"),
                    Some(Err(e)) => e.to_string(),
                    _ => "it ended".into(),
                };
                bail!("a simulated agent stopped: {why}");
            }
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        for a in &self.agents {
            a.abort();
        }
        if let Some(s) = &mut self.server {
            s.stop().await;
        }
    }
}

/// What one burst of sessions took.
pub struct Burst {
    pub sessions: usize,
    /// From the first start call until every session PASSED.
    pub elapsed: Duration,
    /// The start calls alone.
    pub started: Duration,
    pub results: u64,
    pub result_latency: Latencies,
    pub throttled: u64,
}

impl Burst {
    pub fn sessions_per_s(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }
}

/// The fleet the `sessions` load runs on: `n` agents that answer every job at once.
pub fn fleet_size(quick: bool) -> usize {
    if quick { 100 } else { 1000 }
}

pub const AGENTS: AgentOptions = AgentOptions {
    think: Duration::ZERO,
    wait_seconds: 25,
};

/// Starts a session on every computer of `fleet` at once and waits until all PASSED.
pub async fn burst(scenario: &str, fleet: &mut Fleet, quick: bool) -> Result<Burst> {
    let n = fleet.computers.len();
    note(
        scenario,
        format!("starting {n} sessions of {DEPLOYMENTS} deployments"),
    );
    // Counts are of the whole store: another fleet's sessions may have passed on it before.
    let passed_before = crate::server::status_counts(&fleet.endpoint, &fleet.admin)
        .await?
        .get("PASSED")
        .copied()
        .unwrap_or(0);
    let results_before = fleet.stats.results.load(Ordering::Relaxed);
    let throttled_before = fleet.stats.throttled.load(Ordering::Relaxed);
    // Every session is started before any agent answers (a schedule firing for the whole
    // fleet): the first 500 then run side by side while the rest wait for a slot.
    fleet.stats.hold_results(true);
    let t0 = Instant::now();
    let calls = fleet.start_sessions(&fleet.computers).await;
    let started = t0.elapsed();
    fleet.stats.hold_results(false);
    calls?;
    // Ten times what a healthy run takes; a stuck server is reported, not waited for.
    let timeout = Duration::from_secs(if quick { 30 } else { 90 });
    let waited = crate::server::wait_passed(
        &fleet.endpoint,
        &fleet.admin,
        passed_before + n as u64,
        timeout,
    )
    .await;
    let elapsed = t0.elapsed();
    // A simulated agent that stopped (the server refused one of its calls) explains a stall.
    fleet.check_agents()?;
    waited?;
    let result_latency = std::mem::take(
        &mut *fleet
            .stats
            .result_latency
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    Ok(Burst {
        sessions: n,
        elapsed,
        started,
        results: fleet.stats.results.load(Ordering::Relaxed) - results_before,
        result_latency,
        throttled: fleet.stats.throttled.load(Ordering::Relaxed) - throttled_before,
    })
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let n = fleet_size(quick);
    let mut fleet = Fleet::start(S, n, AGENTS).await?;
    let mut b = burst(S, &mut fleet, quick).await?;
    let server = fleet.endpoint.clone();
    let flushes = server.metric("upkeep_store_flushes_total").await?;
    let flush_s = server.metric("upkeep_store_flush_seconds_total").await?;
    fleet.stop().await;
    let secs = b.elapsed.as_secs_f64();
    Ok(vec![
        Figure::new(S, "computers", n as f64, "computers"),
        Figure::new(S, "sessions_per_s", b.sessions_per_s(), "1/s"),
        Figure::new(S, "actions_per_s", (n * DEPLOYMENTS) as f64 / secs, "1/s"),
        Figure::new(S, "elapsed_s", secs, "s"),
        Figure::new(S, "start_calls_s", b.started.as_secs_f64(), "s"),
        Figure::new(S, "job_results_per_s", b.results as f64 / secs, "1/s"),
        Figure::new(S, "result_p50_ms", b.result_latency.quantile_ms(0.50), "ms"),
        Figure::new(S, "result_p99_ms", b.result_latency.quantile_ms(0.99), "ms"),
        Figure::new(S, "polls_throttled", b.throttled as f64, "polls"),
        // Over the whole run, enrollment included: how well fsyncs are shared.
        Figure::new(S, "store_flushes", flushes, "fsyncs"),
        Figure::new(
            S,
            "store_flush_mean_ms",
            if flushes > 0.0 {
                flush_s * 1000.0 / flushes
            } else {
                0.0
            },
            "ms",
        ),
    ])
}
