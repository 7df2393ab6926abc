//! `cluster`: the `polls` and `sessions` loads against cluster mode on this box, beside the
//! same loads against one server on sled, so the cost of each part shows.
//!
//! Four targets, each a release `upkeep-server` process (`processes.rs`), measured with the
//! same client in the same run:
//!
//! | target | what it adds over the previous one |
//! | --- | --- |
//! | `sled` | one server on the embedded store, no flags (the single-node default) |
//! | `direct` | PostgreSQL + NATS: one replica on a fresh database, straight |
//! | `nginx1` | nginx: the same replica behind nginx |
//! | `nginx3` | replicas: nginx in front of three replicas on one database |
//!
//! Each phase (polls, then sessions) starts its own processes: the sled server, a one-replica
//! cluster and a three-replica cluster (each a fresh database and NATS prefix, removed at the
//! end; `--trusted-proxies 127.0.0.1/32`, one shared `--files-dir`), and one nginx with a
//! listener for each cluster. Polls run in interleaved rounds over the targets (one fleet per
//! store; `direct` and `nginx1` poll the same replica); session bursts run one target after
//! another on fleets of their own. Beside each figure: the CPU seconds each part of the box
//! used (`Part`), per 1 000 polls or per session. `UPKEEP_BENCH_KEEP=1` keeps the temp dir
//! (logs, nginx's configuration).

use crate::polls::{self, CONNECTIONS, Pass, Run, Tokens};
use crate::processes::{CpuUse, Nginx, Part, Parts, ServerProcess, nginx_binary, server_binary};
use crate::report::{Figure, note};
use crate::sessions::{self, Fleet};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use upkeep_testkit::{Endpoint, ScratchCluster, http_client};

const S: &str = "cluster";

/// Enrollments in flight at once while building a fleet. Not the 64 of `polls`: on
/// PostgreSQL, 64 concurrent enrollments make some fail with 500 ("a transaction still
/// conflicted after 64 attempts", `services/fleet.rs`) — a finding of this bench, to be fixed
/// in the server; 4 at a time do not.
const ENROLL_CONCURRENCY: usize = 4;

/// Agents per polls fleet: fewer than `polls` (enrollment at 4 at a time is slow); the poll
/// load (64 connections, round-robin) is the same.
fn poll_agents(quick: bool) -> usize {
    if quick { 2_000 } else { 10_000 }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Sled,
    Direct,
    Nginx1,
    Nginx3,
}

impl Target {
    const ALL: [Target; 4] = [Target::Sled, Target::Direct, Target::Nginx1, Target::Nginx3];

    fn key(self) -> &'static str {
        match self {
            Target::Sled => "sled",
            Target::Direct => "direct",
            Target::Nginx1 => "nginx1",
            Target::Nginx3 => "nginx3",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Target::Sled => "one server on sled",
            Target::Direct => "one replica on PostgreSQL + NATS, straight",
            Target::Nginx1 => "nginx -> one replica",
            Target::Nginx3 => "nginx -> three replicas",
        }
    }
}

/// One phase's processes. Fields drop in order: nginx, then the servers, then the databases
/// and NATS streams (which outlive every replica on them).
struct Deployment {
    nginx: Nginx,
    sled: ServerProcess,
    one: ServerProcess,
    three: Vec<ServerProcess>,
    one_cluster: ScratchCluster,
    three_cluster: ScratchCluster,
}

impl Deployment {
    async fn start(dir: &Path) -> Result<Deployment> {
        let bin = server_binary()?;
        let nginx_bin = nginx_binary()?;
        std::fs::create_dir_all(dir)?;
        let sled = ServerProcess::start(&bin, dir, "sled", &[]).await?;
        let one_cluster = ScratchCluster::create().await?;
        let three_cluster = ScratchCluster::create().await?;
        let files = dir.join("files");
        std::fs::create_dir_all(&files)?;
        let one = ServerProcess::replica(&bin, dir, "one", &one_cluster, &files).await?;
        // One after another: the first creates the admin and the generated keys.
        let mut three = Vec::new();
        for name in ["three-a", "three-b", "three-c"] {
            three.push(ServerProcess::replica(&bin, dir, name, &three_cluster, &files).await?);
        }
        let groups = [vec![one.port], three.iter().map(|r| r.port).collect()];
        let nginx = Nginx::start(&nginx_bin, &dir.join("nginx"), &groups).await?;
        Ok(Deployment {
            nginx,
            sled,
            one,
            three,
            one_cluster,
            three_cluster,
        })
    }

    fn url(&self, t: Target) -> String {
        match t {
            Target::Sled => self.sled.url(),
            Target::Direct => self.one.url(),
            Target::Nginx1 => self.nginx.url(0),
            Target::Nginx3 => self.nginx.url(1),
        }
    }

    /// The processes whose CPU counts for `t`.
    fn parts(&self, t: Target) -> Parts {
        let database = |c: &ScratchCluster| {
            c.database
                .url()
                .rsplit_once('/')
                .map(|(_, name)| name.to_string())
        };
        let (servers, nginx, database) = match t {
            Target::Sled => (vec![self.sled.pid()], vec![], None),
            Target::Direct => (vec![self.one.pid()], vec![], database(&self.one_cluster)),
            Target::Nginx1 => (
                vec![self.one.pid()],
                self.nginx.pids(),
                database(&self.one_cluster),
            ),
            Target::Nginx3 => (
                self.three.iter().map(ServerProcess::pid).collect(),
                self.nginx.pids(),
                database(&self.three_cluster),
            ),
        };
        Parts {
            servers,
            nginx,
            database,
        }
    }

    /// The last lines of every server's log, for a failure report.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for s in [&self.sled, &self.one].into_iter().chain(&self.three) {
            out.push_str(&format!(
                "--- {} ({})\n{}\n",
                s.name,
                s.log.display(),
                s.log_tail(5)
            ));
        }
        out
    }
}

/// nginx, PostgreSQL and NATS are there (`all` goes on without this scenario when one is not).
async fn parts_reachable() -> Result<()> {
    nginx_binary()?;
    drop(
        ScratchCluster::create()
            .await
            .context("PostgreSQL is not reachable (UPKEEP_TEST_DATABASE_URL or 127.0.0.1:5432)")?,
    );
    let nats = upkeep_testkit::nats_url();
    tokio::net::TcpStream::connect(nats.trim_start_matches("nats://"))
        .await
        .with_context(|| format!("NATS is not reachable at {nats}"))?;
    Ok(())
}

/// The scenario's temp dir: removed at the end unless `UPKEEP_BENCH_KEEP=1`.
struct Scratch {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    fn create() -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("upkeep-bench-cluster-")
            .tempdir()?;
        if std::env::var("UPKEEP_BENCH_KEEP").is_ok_and(|v| v == "1") {
            let path = dir.keep();
            note(S, format!("keeping {}", path.display()));
            return Ok(Scratch { _dir: None, path });
        }
        Ok(Scratch {
            path: dir.path().to_path_buf(),
            _dir: Some(dir),
        })
    }
}

/// What went wrong with one target: the scenario measures the rest, prints every figure and
/// then fails with these.
type Failures = Vec<String>;

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    // Before anything starts: a missing part is said at once.
    if let Err(e) = parts_reachable().await {
        note(S, format!("SKIPPED: {e:#}"));
        return Ok(vec![]);
    }
    server_binary()?;
    let scratch = Scratch::create()?;
    let mut figures = Vec::new();
    let mut failures = Failures::new();
    let dep = Deployment::start(&scratch.path.join("polls"))
        .await
        .context("starting the polls phase's processes")?;
    let polled = poll_phase(&dep, quick, &mut figures, &mut failures).await;
    drop(dep);
    polled?;
    let dep = Deployment::start(&scratch.path.join("sessions"))
        .await
        .context("starting the sessions phase's processes")?;
    session_phase(&dep, quick, &mut figures, &mut failures).await;
    if !failures.is_empty() {
        note(S, format!("server logs:\n{}", dep.log_tails()));
    }
    drop(dep);
    let retries = crate::server::ENROLL_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
    figures.push(Figure::new(
        S,
        "enrollments_retried",
        retries as f64,
        "calls",
    ));
    if failures.is_empty() {
        return Ok(figures);
    }
    // Print what was measured, then fail with what was not.
    for f in &figures {
        f.print();
    }
    anyhow::bail!(
        "{} target(s) could not be measured:\n{}",
        failures.len(),
        failures.join("\n")
    )
}

/// CPU milliseconds of each part per `per` operations, as figures named
/// `cpu_ms_per_<what>_<target>_<part>`.
fn cpu_figures(what: &str, t: Target, cpu: &CpuUse, ops: f64, per: f64) -> Vec<Figure> {
    Part::ALL
        .iter()
        .map(|p| {
            let ms = if ops > 0.0 {
                cpu.seconds(*p) * 1000.0 * per / ops
            } else {
                0.0
            };
            Figure::new(
                S,
                format!("cpu_ms_per_{what}_{}_{}", t.key(), p.name()),
                ms,
                "ms",
            )
        })
        .collect()
}

/// Polls: a fleet per store enrolled and polled once each, then interleaved rounds of
/// `waitSeconds: 0` polls over 64 connections, as in `polls`.
// long: fleets, warm-up, interleaved rounds and figures share the per-target state; split, each
// piece would take most of it as arguments.
async fn poll_phase(
    dep: &Deployment,
    quick: bool,
    figures: &mut Vec<Figure>,
    failures: &mut Failures,
) -> Result<()> {
    let size = polls::Size::new(quick);
    let agents = poll_agents(quick);
    let client = http_client()?;
    let mut fleets: Vec<(Target, std::sync::Arc<Tokens>)> = Vec::new();
    for t in [Target::Sled, Target::Direct, Target::Nginx3] {
        let ep = Endpoint::new(dep.url(t))?;
        let admin = ep.admin().await?;
        let tenant = ep.create_tenant(&admin, "Polls").await?;
        let key = ep.enrollment_key(&admin, &tenant).await?;
        note(S, format!("{}: enrolling {agents} agents", t.describe()));
        let (tokens, took) = Tokens::enroll(&ep, &key, Tokens::table(agents), ENROLL_CONCURRENCY)
            .await
            .with_context(|| format!("enrolling through {}", t.describe()))?;
        figures.push(Figure::new(
            S,
            format!("enrollments_per_s_{}", t.key()),
            agents as f64 / took.as_secs_f64(),
            "1/s",
        ));
        fleets.push((t, std::sync::Arc::new(tokens)));
    }
    let tokens_of = |t: Target| {
        let store = if t == Target::Nginx1 {
            Target::Direct
        } else {
            t
        };
        fleets
            .iter()
            .find(|(f, _)| *f == store)
            .map(|(_, tokens)| tokens.clone())
            .context("no fleet")
    };
    let poll_url = |t: Target| format!("{}/agent/v1/poll", dep.url(t));
    // One poll each (presence), then a warm-up of every target.
    for t in Target::ALL {
        let tokens = tokens_of(t)?;
        if t != Target::Nginx1 {
            let (once, _) =
                polls::drive(&client, &poll_url(t), &tokens, CONNECTIONS, Pass::Each).await?;
            if once.errors > 0 {
                note(
                    S,
                    format!(
                        "{}: {} of {} first polls failed",
                        t.describe(),
                        once.errors,
                        agents
                    ),
                );
            }
        }
        let warm = Pass::For(Duration::from_millis(500));
        polls::drive(&client, &poll_url(t), &tokens, CONNECTIONS, warm).await?;
    }
    let mut runs: Vec<(Run, CpuUse)> = Target::ALL
        .iter()
        .map(|_| (Run::default(), CpuUse::default()))
        .collect();
    let half = size.measure / 2;
    for round in 0..2 {
        for (i, t) in Target::ALL.into_iter().enumerate() {
            note(S, format!("polls round {}: {}", round + 1, t.describe()));
            let parts = dep.parts(t);
            let before = parts.read()?;
            let tokens = tokens_of(t)?;
            let r =
                polls::drive(&client, &poll_url(t), &tokens, CONNECTIONS, Pass::For(half)).await?;
            let cpu = CpuUse::between(&before, &parts.read()?);
            runs[i].0.add(r);
            runs[i].1.add(&cpu);
        }
    }
    let sled_rate = runs[0].0.rate();
    figures.push(Figure::new(
        S,
        "connections",
        CONNECTIONS as f64,
        "connections",
    ));
    for (t, (run, cpu)) in Target::ALL.into_iter().zip(runs.iter_mut()) {
        let k = t.key();
        figures
            .push(Figure::new(S, format!("polls_per_s_{k}"), run.rate(), "1/s").against(sled_rate));
        figures.push(Figure::new(
            S,
            format!("poll_p50_ms_{k}"),
            run.lat.quantile_ms(0.50),
            "ms",
        ));
        figures.push(Figure::new(
            S,
            format!("poll_p99_ms_{k}"),
            run.lat.quantile_ms(0.99),
            "ms",
        ));
        figures.push(Figure::new(
            S,
            format!("poll_errors_{k}"),
            run.errors as f64,
            "polls",
        ));
        figures.extend(cpu_figures("1000_polls", t, cpu, run.count as f64, 1000.0));
        if run.errors > 0 {
            failures.push(format!(
                "polls through {}: {} of {} answered other than 200 (first: {}); polls/s counts \
                 only the 200s",
                t.describe(),
                run.errors,
                run.errors + run.count,
                run.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

/// Sessions: on each target a fleet of its own (as in `sessions`: 100 computers, 1 000 in a
/// full run, 10 deployments each), one burst of sessions, until every session PASSED.
async fn session_phase(
    dep: &Deployment,
    quick: bool,
    figures: &mut Vec<Figure>,
    failures: &mut Failures,
) {
    let n = sessions::fleet_size(quick);
    let mut sled_rate = None;
    for t in Target::ALL {
        note(S, format!("sessions: {}", t.describe()));
        match session_burst(dep, t, n, quick).await {
            Ok((mut b, cpu)) => {
                let k = t.key();
                let rate = b.sessions_per_s();
                let base = *sled_rate.get_or_insert(rate);
                figures
                    .push(Figure::new(S, format!("sessions_per_s_{k}"), rate, "1/s").against(base));
                figures.push(Figure::new(
                    S,
                    format!("result_p50_ms_{k}"),
                    b.result_latency.quantile_ms(0.50),
                    "ms",
                ));
                figures.push(Figure::new(
                    S,
                    format!("result_p99_ms_{k}"),
                    b.result_latency.quantile_ms(0.99),
                    "ms",
                ));
                figures.extend(cpu_figures("session", t, &cpu, b.sessions as f64, 1.0));
            }
            Err(e) => {
                let why = format!("sessions through {}: {e:#}", t.describe());
                note(S, format!("FAILED {why}"));
                figures.push(Figure::new(
                    S,
                    format!("sessions_failed_{}", t.key()),
                    1.0,
                    "runs",
                ));
                failures.push(why);
            }
        }
    }
    figures.push(Figure::new(S, "computers", n as f64, "computers"));
}

async fn session_burst(
    dep: &Deployment,
    t: Target,
    n: usize,
    quick: bool,
) -> Result<(sessions::Burst, CpuUse)> {
    let name = format!("Fleet {}", t.key());
    let mut fleet = Fleet::on(
        Endpoint::new(dep.url(t))?,
        &name,
        S,
        n,
        sessions::AGENTS,
        ENROLL_CONCURRENCY,
    )
    .await?;
    let parts = dep.parts(t);
    let before = parts.read()?;
    let burst = sessions::burst(S, &mut fleet, quick).await;
    let cpu = CpuUse::between(&before, &parts.read()?);
    fleet.stop().await;
    Ok((burst?, cpu))
}
