//! `fleet`: a million registered agents (quick: 100 000) polling once a minute each — 16 700
//! polls/s — against the release `upkeep-server` as a process of its own, so its memory is
//! read apart from the load generator's (`/proc/<pid>/status`, `VmRSS`).
//!
//! Registration is **preloaded through the store API** (the computers, their agent-token
//! claims and machine ids, as enrollment writes them) before the server starts: enrolling a
//! million agents over HTTP would take minutes and is measured by `polls`. Polls go over real
//! HTTP, paced: poll `k` of a pass is due `k / 16 700` s after the pass starts, spread over
//! [`CONNECTIONS`] keep-alive connections; a pass polls every agent once (`waitSeconds: 0`, as
//! an agent polling each minute without holding a long-poll). Latency counts from when a poll
//! was due, so a server that falls behind shows it.
//!
//! Memory per agent by component, each a difference of the server's RSS ÷ agents:
//! `tokens` (started on the fleet's store vs an empty server: the token table and what start-up
//! read), `presence` (after one pass: every agent's presence entry), `writeback` (after every
//! agent's `lastSeenAt` was written back: the store's share), and steady state after a second
//! pass and write-back. `UPKEEP_BENCH_KEEP=1` keeps the temp dir (the store, the server's log).

use crate::processes::{ServerProcess, server_binary};
use crate::report::{Figure, Latencies, note, rss_of};
use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use upkeep_core::domain::*;
use upkeep_store::records::{AGENT_TOKEN, MACHINE_ID, USER_EMAIL, machine_value};
use upkeep_store::{IndexKey, TxError};
use upkeep_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, http_client};

const S: &str = "fleet";
/// A million agents polling once a minute.
pub const RATE: f64 = 1_000_000.0 / 60.0;
/// Keep-alive connections the polls share: each carries every 128th poll (130 per second, 7.7 ms
/// apart), so an answer slower than that delays the rest of its connection's schedule, which
/// latency from when a poll was due shows. 1 024 connections were tried (session 12): p99 from
/// send rose from 14 to 63 ms (more polls in flight queue in the server behind a stall), so
/// the figures stay comparable with 128.
pub const CONNECTIONS: usize = 128;
/// Computers per preload transaction.
const BATCH: usize = 2000;
const POLL_BODY: &str = r#"{"protocolVersion":1,"waitSeconds":0}"#;

/// Agent tokens, packed (`uat_` + 43 characters each).
pub struct Tokens {
    bytes: Vec<u8>,
    len: usize,
    pub n: usize,
}

impl Tokens {
    pub fn get(&self, i: usize) -> &str {
        let i = i % self.n;
        std::str::from_utf8(&self.bytes[i * self.len..(i + 1) * self.len]).unwrap_or("")
    }
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let agents = if quick { 100_000 } else { 1_000_000 };
    let bin = server_binary()?;
    let dir = tempfile::Builder::new().prefix("upkeep-bench-").tempdir()?;

    note(S, "empty server: memory baseline");
    let empty = ServerProcess::start(&bin, dir.path(), "empty", &[]).await?;
    let rss_empty = settled_rss(empty.pid()).await?;
    drop(empty);

    note(
        S,
        format!("preloading {agents} registered agents through the store API"),
    );
    let t = std::time::Instant::now();
    let data = dir.path().join("fleet");
    let tokens = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || preload(&data, agents)).await??
    };
    let preload_s = t.elapsed().as_secs_f64();
    let tokens = Arc::new(tokens);

    note(S, "starting the server on that store");
    let t = std::time::Instant::now();
    let server = ServerProcess::start(&bin, dir.path(), "fleet", &[]).await?;
    let startup = t.elapsed();
    // Where start-up went, as the server logs it (ms since its start).
    let log = server.log_text();
    let phases: Vec<Figure> = [
        ("startup_store_open_ms", "store opened", "ms"),
        ("startup_tokens_ms", "store loaded", "tokens_ms"),
        (
            "startup_open_jobs_ms",
            "open jobs recovered",
            "open_jobs_ms",
        ),
        ("startup_store_loaded_ms", "store loaded", "ms"),
    ]
    .into_iter()
    .filter_map(|(metric, message, field)| {
        let v = crate::processes::log_field(&log, message, field)?;
        Some(Figure::new(S, metric, v, "ms"))
    })
    .collect();
    let client = http_client()?;
    let held = metric(&client, &server.url(), "upkeep_agent_tokens").await?;
    if held as usize != agents {
        bail!("the server holds {held} agent tokens, not {agents}");
    }
    let rss_loaded = settled_rss(server.pid()).await?;

    let url = format!("{}/agent/v1/poll", server.url());
    note(
        S,
        format!("pass 1: every agent polls once, {RATE:.0} polls/s"),
    );
    let mut first = paced_pass(&client, &url, &tokens).await?;
    let rss_polled = settled_rss(server.pid()).await?;
    note(S, "waiting for every lastSeenAt to be written back");
    wait_written(&client, &server.url(), agents as f64).await?;
    let rss_written = settled_rss(server.pid()).await?;
    note(S, "pass 2, then its write-back");
    let second = paced_pass(&client, &url, &tokens).await?;
    wait_written(&client, &server.url(), 2.0 * agents as f64).await?;
    let rss_steady = settled_rss(server.pid()).await?;
    drop(server);
    if std::env::var("UPKEEP_BENCH_KEEP").is_ok_and(|v| v == "1") {
        note(S, format!("keeping {}", dir.keep().display()));
    } else {
        drop(dir);
    }

    let errors = first.errors + second.errors;
    if errors > 0 {
        bail!(
            "{errors} polls failed (first: {})",
            first.first_error.or(second.first_error).unwrap_or_default()
        );
    }
    let rate = (first.count + second.count) as f64 / (first.elapsed + second.elapsed).as_secs_f64();
    first.due.merge(second.due);
    first.service.merge(second.service);
    let per = |from: u64, to: u64| (to as f64 - from as f64) / agents as f64;
    let mut figures = phases;
    figures.extend([
        Figure::new(S, "registered_agents_preloaded", agents as f64, "agents"),
        Figure::new(S, "preload_s", preload_s, "s"),
        Figure::new(S, "startup_ms", startup.as_secs_f64() * 1000.0, "ms"),
        Figure::new(S, "rss_empty_server", mib(rss_empty), "MiB"),
        Figure::new(S, "rss_fleet_server_steady", mib(rss_steady), "MiB"),
        Figure::new(
            S,
            "rss_tokens_per_agent",
            per(rss_empty, rss_loaded),
            "bytes",
        ),
        Figure::new(
            S,
            "rss_presence_per_agent",
            per(rss_loaded, rss_polled),
            "bytes",
        ),
        Figure::new(
            S,
            "rss_writeback_per_agent",
            per(rss_polled, rss_written),
            "bytes",
        ),
        Figure::new(S, "rss_per_agent", per(rss_empty, rss_written), "bytes"),
        Figure::new(
            S,
            "rss_per_agent_steady",
            per(rss_empty, rss_steady),
            "bytes",
        ),
        Figure::new(S, "connections", CONNECTIONS as f64, "connections"),
        Figure::new(S, "polls_per_s", rate, "1/s").against(RATE),
        Figure::new(S, "p50_ms", first.due.quantile_ms(0.50), "ms"),
        Figure::new(S, "p99_ms", first.due.quantile_ms(0.99), "ms"),
        Figure::new(S, "p999_ms", first.due.quantile_ms(0.999), "ms"),
        Figure::new(S, "p99_ms_from_send", first.service.quantile_ms(0.99), "ms"),
    ]);
    Ok(figures)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The server's RSS once it stopped moving (two readings 0.5 s apart within 256 KiB, 10 s at
/// most).
async fn settled_rss(pid: u32) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_of(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_of(pid)?;
        if now.abs_diff(last) < 256 * 1024 || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> Result<f64> {
    upkeep_testkit::metric(client, url, name).await
}

/// Waits until the server has written back `total` `lastSeenAt` values since it started (it
/// writes back every 30 s).
async fn wait_written(client: &reqwest::Client, url: &str, total: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let written = metric(client, url, "upkeep_agent_last_seen_written_total").await?;
        if written >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {written} of {total} lastSeenAt values written back within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One pass over the fleet.
#[derive(Default)]
pub struct PassRun {
    pub count: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// From when each poll was due to its answer.
    pub due: Latencies,
    /// From when each poll was sent to its answer.
    pub service: Latencies,
    pub first_error: Option<String>,
}

/// Every agent polls once, poll `k` due at `k / RATE` s after the start.
pub async fn paced_pass(
    client: &reqwest::Client,
    url: &str,
    tokens: &Arc<Tokens>,
) -> Result<PassRun> {
    let start = Instant::now() + Duration::from_millis(100);
    let mut workers = Vec::new();
    for w in 0..CONNECTIONS {
        let (client, url, tokens) = (client.clone(), url.to_string(), tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut run = PassRun::default();
            let mut k = w;
            while k < tokens.n {
                let due = start + Duration::from_secs_f64(k as f64 / RATE);
                tokio::time::sleep_until(due).await;
                let sent = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(tokens.get(k))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(POLL_BODY)
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                run.due.record(due.elapsed());
                run.service.record(sent.elapsed());
                if status == reqwest::StatusCode::OK {
                    run.count += 1;
                } else {
                    run.errors += 1;
                    run.first_error.get_or_insert_with(|| status.to_string());
                }
                k += CONNECTIONS;
            }
            Ok::<_, anyhow::Error>(run)
        }));
    }
    let mut total = PassRun::default();
    for w in workers {
        let r = w.await??;
        total.count += r.count;
        total.errors += r.errors;
        total.due.merge(r.due);
        total.service.merge(r.service);
        total.first_error = total.first_error.take().or(r.first_error);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Writes `agents` registered computers into a new store at `dir` (one tenant, the admin user
/// so start-up does not hash a password), as enrollment leaves them: the computer record with
/// its token hash, the `AGENT_TOKEN` and `MACHINE_ID` claims. Returns the agents' tokens.
pub fn preload(dir: &Path, agents: usize) -> Result<Tokens> {
    std::fs::create_dir_all(dir)?;
    let store = upkeep_store::open_embedded(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let now = Utc::now();
    let write = |f: &(dyn Fn(&mut upkeep_store::Tx<'_>) -> Result<(), TxError<String>> + Sync)| {
        rt.block_on(store.write(f)).map_err(|e| anyhow!("{e}"))
    };
    let admin = User {
        id: upkeep_server::ids::fresh(),
        email: upkeep_core::types::Stored::read(ADMIN_EMAIL),
        password_hash: upkeep_server::auth::hash_password_blocking(ADMIN_PASSWORD)
            .map_err(|e| anyhow!("{e}"))?,
        role: UserRole::MspAdmin,
        tenant_id: None,
        created_at: now,
        disabled: false,
        token_generation: 0,
        totp: Default::default(),
    };
    let tenant = upkeep_server::ids::fresh();
    write(&|tx| {
        tx.put(&admin)?;
        tx.claim_unique(
            &IndexKey::new(USER_EMAIL, admin.email.text().as_bytes()),
            admin.id.as_bytes(),
        )?;
        tx.put(&Tenant {
            id: tenant,
            name: "Fleet".into(),
            company_name: None,
            time_zone: upkeep_core::types::TimeZone::UTC.into(),
            mail_from: None,
            logo_url: None,
            primary_color: None,
            auto_onboarding: false,
            excluded_from_maintenance: false,
            business_hours: None,
            mail_bcc: vec![],
            preflight_scripts: vec![],
            created_at: now,
        })?;
        Ok(())
    })?;
    let first = upkeep_server::auth::new_secret("uat_");
    let len = first.len();
    let mut bytes = Vec::with_capacity(agents * len);
    for _ in 0..agents {
        bytes.extend_from_slice(upkeep_server::auth::new_secret("uat_").as_bytes());
    }
    if bytes.len() != agents * len {
        bail!("agent tokens are not all {len} characters");
    }
    let tokens = Tokens {
        bytes,
        len,
        n: agents,
    };
    for start in (0..agents).step_by(BATCH) {
        let end = (start + BATCH).min(agents);
        let computers: Vec<(Computer, String)> = (start..end)
            .map(|i| {
                let hash = upkeep_server::auth::secret_hash(tokens.get(i));
                (computer(i, tenant, &hash, now), hash)
            })
            .collect();
        write(&|tx| {
            for (c, hash) in &computers {
                let key = c.id.as_bytes();
                tx.claim_unique(
                    &IndexKey::new(MACHINE_ID, machine_value(tenant, &c.machine_id)),
                    key,
                )?;
                tx.claim_unique(&IndexKey::new(AGENT_TOKEN, hash), key)?;
                tx.put(c)?;
            }
            Ok(())
        })?;
        if end.is_multiple_of(200_000) {
            note(S, format!("{end} computers written"));
        }
    }
    rt.block_on(store.flush())
        .context("flushing the preloaded store")?;
    Ok(tokens)
}

fn computer(i: usize, tenant: Id, hash: &str, now: Time) -> Computer {
    Computer {
        id: upkeep_server::ids::fresh(),
        tenant_id: tenant,
        name: format!("pc-{i:07}"),
        hostname: format!("pc-{i:07}"),
        machine_id: format!("fleet-machine-{i:07}"),
        tags: vec![],
        primary_person_id: None,
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        agent_version: "0.1.0".into(),
        last_seen_at: Some(now),
        agent_token_hash: Some(hash.to_string()),
        enrolled_at: now,
        excluded_from_maintenance: false,
        compliance: None,
        logged_on_user: None,
        onboarded: true,
        onboarding: None,
        held_reboot: None,
    }
}
