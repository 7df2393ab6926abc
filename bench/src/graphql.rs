//! `graphql`: the sessions list an operator opens first,
//! `maintenanceSessions(first: 50) { edges { node { id status actions { kind status } } } }`,
//! over a store of finished sessions; and the server's start-up time on that store.
//!
//! Fixture: before the server starts, finished sessions are written straight through the
//! server's `Store` API (`Store::write` + `tx.put`, a few thousand per transaction, so their
//! index entries are written with them), together with their tenants, computers and the admin
//! user (so start-up does not spend its time hashing the admin password). Each session is
//! shaped as the engine leaves one: frozen plan items with their scripts and one verified
//! INSTALL action per item, spread over a year of history. Event logs are not preloaded (the
//! query does not read them).

use crate::report::{Figure, Latencies, note};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{Duration as Days, Utc};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use upkeep_core::domain::*;
use upkeep_core::session::*;
use upkeep_store::TxError;
use upkeep_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, TestServer, http_client};

const S: &str = "graphql";
/// Deployments (plan items and actions) per preloaded session.
pub const ITEMS: usize = 5;
const BATCH: usize = 2_000;
const QUERY: &str =
    "{ maintenanceSessions(first: 50) { edges { node { id status actions { kind status } } } } }";

struct Size {
    sessions: usize,
    tenants: usize,
    computers: usize,
    measure: Duration,
}

impl Size {
    fn new(quick: bool) -> Size {
        if quick {
            Size {
                sessions: 50_000,
                tenants: 5,
                computers: 1_000,
                measure: Duration::from_secs(3),
            }
        } else {
            Size {
                sessions: 1_000_000,
                tenants: 20,
                computers: 10_000,
                measure: Duration::from_secs(15),
            }
        }
    }
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let size = Size::new(quick);
    let dir = tempfile::Builder::new().prefix("upkeep-bench-").tempdir()?;
    let config = upkeep_testkit::config(dir.path());
    note(S, format!("preloading {} sessions", size.sessions));
    let t = Instant::now();
    let record_bytes = {
        let path = dir.path().to_path_buf();
        let sessions = size.sessions;
        let (tenants, computers) = (size.tenants, size.computers);
        tokio::task::spawn_blocking(move || preload(&path, sessions, tenants, computers)).await??
    };
    let preload_s = t.elapsed().as_secs_f64();
    let disk = dir_size(dir.path());
    note(
        S,
        format!("preloaded in {preload_s:.1} s; starting the server"),
    );

    let (mut srv, startup) = start_timed(&config).await?;
    let admin = srv.admin().await?;
    check_page(&srv, &admin).await?;

    note(S, "querying with 1 connection, then 8");
    let (_, mut one) = drive(&srv, &admin, 1, size.measure).await?;
    let (rate8, mut eight) = drive(&srv, &admin, 8, size.measure).await?;
    note(S, "counting: /metrics and maintenanceSessionStatusCounts");
    let mut counts = Counts::measure(&srv, &admin, size.sessions).await?;
    srv.stop().await;
    // The same store again, now that the server itself opened and closed it once.
    note(S, "restarting");
    let (mut srv, restart) = start_timed(&config).await?;
    srv.stop().await;
    drop(dir);
    Ok(vec![
        Figure::new(S, "sessions", size.sessions as f64, "sessions"),
        Figure::new(S, "session_record_bytes", record_bytes, "bytes"),
        Figure::new(S, "store_on_disk", disk as f64 / (1024.0 * 1024.0), "MiB"),
        Figure::new(S, "preload_s", preload_s, "s"),
        Figure::new(S, "startup_ms", startup.as_secs_f64() * 1000.0, "ms"),
        Figure::new(S, "restart_ms", restart.as_secs_f64() * 1000.0, "ms"),
        Figure::new(S, "p50_ms", one.quantile_ms(0.50), "ms"),
        Figure::new(S, "p99_ms", one.quantile_ms(0.99), "ms"),
        Figure::new(S, "queries_per_s_8conns", rate8, "1/s"),
        Figure::new(S, "p99_ms_8conns", eight.quantile_ms(0.99), "ms"),
        Figure::new(S, "metrics_p50_ms", counts.metrics.quantile_ms(0.50), "ms"),
        Figure::new(S, "metrics_p99_ms", counts.metrics.quantile_ms(0.99), "ms"),
        Figure::new(S, "counts_p50_ms", counts.all.quantile_ms(0.50), "ms"),
        Figure::new(S, "counts_p99_ms", counts.all.quantile_ms(0.99), "ms"),
        Figure::new(
            S,
            "counts_tenant_p99_ms",
            counts.tenant.quantile_ms(0.99),
            "ms",
        ),
    ])
}

/// Latencies of the counts: a `/metrics` scrape, `maintenanceSessionStatusCounts` over all
/// tenants and for one tenant, each 200 times back to back after a warm-up, on one
/// connection. The counts must add up to the preloaded sessions.
struct Counts {
    metrics: Latencies,
    all: Latencies,
    tenant: Latencies,
}

const COUNTS: &str =
    "query($t: ID) { maintenanceSessionStatusCounts(tenantId: $t) { status count } }";

impl Counts {
    async fn measure(srv: &TestServer, token: &str, sessions: usize) -> Result<Counts> {
        let d = srv.gql(token, COUNTS, json!({})).await?;
        let total: i64 = d["maintenanceSessionStatusCounts"]
            .as_array()
            .context("no counts")?
            .iter()
            .filter_map(|c| c["count"].as_i64())
            .sum();
        if total != sessions as i64 {
            bail!("the counts add up to {total}, not the {sessions} sessions preloaded");
        }
        let passed = srv.metrics_text().await?;
        if !passed.contains(&format!(
            "upkeep_sessions_by_status{{status=\"PASSED\"}} {sessions}"
        )) {
            bail!("/metrics does not count {sessions} PASSED sessions");
        }
        let tenant = d_tenant(srv, token).await?;
        let client = http_client()?;
        let url = format!("{}/graphql", srv.url);
        let all_body = json!({"query": COUNTS}).to_string();
        let tenant_body = json!({"query": COUNTS, "variables": {"t": tenant}}).to_string();
        let mut out = Counts {
            metrics: Latencies::default(),
            all: Latencies::default(),
            tenant: Latencies::default(),
        };
        for round in 0..220 {
            let t = Instant::now();
            srv.metrics_text().await?;
            let m = t.elapsed();
            let t = Instant::now();
            one_query(&client, &url, token, &all_body).await?;
            let a = t.elapsed();
            let t = Instant::now();
            one_query(&client, &url, token, &tenant_body).await?;
            let o = t.elapsed();
            if round >= 20 {
                out.metrics.record(m);
                out.all.record(a);
                out.tenant.record(o);
            }
        }
        Ok(out)
    }
}

/// Some tenant's id.
async fn d_tenant(srv: &TestServer, token: &str) -> Result<String> {
    let d = srv
        .gql(
            token,
            "{ tenants(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await?;
    d["tenants"]["edges"][0]["node"]["id"]
        .as_str()
        .map(String::from)
        .context("no tenant")
}

/// Starts a server on `config`'s data dir and times it until `/healthz` answers.
pub(crate) async fn start_timed(
    config: &upkeep_server::config::ServeConfig,
) -> Result<(TestServer, Duration)> {
    // sled lets go of its lock when its last handle is gone; retry until it has (only the
    // successful attempt is timed).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = Instant::now();
        match TestServer::start_config(config.clone()).await {
            Ok(s) => {
                upkeep_testkit::wait_healthy(&s.http, &s.url).await?;
                return Ok((s, t.elapsed()));
            }
            Err(e) if format!("{e:#}").contains("lock") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The first page must be full: 50 sessions with their actions.
async fn check_page(srv: &TestServer, token: &str) -> Result<()> {
    let d = srv.gql(token, QUERY, json!({})).await?;
    let edges = d["maintenanceSessions"]["edges"]
        .as_array()
        .context("no edges")?;
    let actions = edges
        .first()
        .and_then(|e| e["node"]["actions"].as_array())
        .map_or(0, Vec::len);
    if edges.len() != 50 || actions != ITEMS {
        bail!(
            "expected 50 sessions of {ITEMS} actions, got {} of {actions}",
            edges.len()
        );
    }
    Ok(())
}

/// `conns` clients sending the query back to back for `measure`; returns queries/s and
/// latencies.
async fn drive(
    srv: &TestServer,
    token: &str,
    conns: usize,
    measure: Duration,
) -> Result<(f64, Latencies)> {
    let client = http_client()?;
    let url = format!("{}/graphql", srv.url);
    let body = json!({"query": QUERY}).to_string();
    // Warm-up: connections and caches.
    for _ in 0..20 {
        one_query(&client, &url, token, &body).await?;
    }
    let started = Instant::now();
    let deadline = started + measure;
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (client, url, token, body) =
            (client.clone(), url.clone(), token.to_string(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                one_query(&client, &url, &token, &body).await?;
                lat.record(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Latencies::default();
    for w in workers {
        all.merge(w.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

async fn one_query(client: &reqwest::Client, url: &str, token: &str, body: &str) -> Result<()> {
    let resp = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() || v.get("errors").is_some() {
        bail!("query failed ({status}): {v}");
    }
    Ok(())
}

/// A UUIDv7-shaped id whose time part is `ms` (so ids sort like the history they stand for).
fn id_at(ms: i64, n: u64) -> Id {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((n >> 56) as u8 & 0x0f);
    b[7] = (n >> 48) as u8;
    b[8] = 0x80 | ((n >> 40) as u8 & 0x3f);
    b[9..16].copy_from_slice(&n.to_be_bytes()[1..]);
    Id::from_slice(&b).expect("16 bytes")
}

fn script(body: String) -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body,
    }
}

/// Writes the fixture; returns the average encoded session size in bytes.
fn preload(
    dir: &std::path::Path,
    sessions: usize,
    tenants: usize,
    computers: usize,
) -> Result<f64> {
    let store = upkeep_store::open_embedded(dir)?;
    // The fixture is written from a blocking thread, on a runtime of its own.
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
    let tenant_ids: Vec<Id> = (0..tenants).map(|_| upkeep_server::ids::fresh()).collect();
    let computer_list: Vec<(Id, Id)> = (0..computers)
        .map(|i| (upkeep_server::ids::fresh(), tenant_ids[i % tenants]))
        .collect();
    write(&|tx| {
        tx.put(&admin)?;
        tx.claim_unique(
            &upkeep_store::IndexKey::new(
                upkeep_store::records::USER_EMAIL,
                admin.email.text().as_bytes(),
            ),
            admin.id.as_bytes(),
        )?;
        for (i, t) in tenant_ids.iter().enumerate() {
            tx.put(&Tenant {
                id: *t,
                name: format!("Tenant {i}"),
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
        }
        Ok(())
    })?;
    for chunk in computer_list.chunks(BATCH) {
        write(&|tx| {
            for (i, (id, tenant)) in chunk.iter().enumerate() {
                tx.put(&Computer {
                    id: *id,
                    tenant_id: *tenant,
                    name: format!("pc-{i:05}"),
                    hostname: format!("pc-{i:05}"),
                    machine_id: format!("machine-{id}"),
                    tags: vec![],
                    primary_person_id: None,
                    os: "Debian GNU/Linux 12 (bookworm)".into(),
                    agent_version: "0.1.0".into(),
                    last_seen_at: Some(now),
                    agent_token_hash: None,
                    enrolled_at: now,
                    excluded_from_maintenance: false,
                    compliance: Some(Compliance::Compliant),
                    logged_on_user: None,
                    onboarded: true,
                    onboarding: None,
                    held_reboot: None,
                })?;
            }
            Ok(())
        })?;
    }
    let items: Vec<PlanItem> = (0..ITEMS)
        .map(|i| PlanItem {
            deployment_id: upkeep_server::ids::fresh(),
            order: DeploymentOrder::Unordered,
            position: 0,
            enforcement: Enforcement::Required,
            parameters: Default::default(),
            invalid: None,
            what: ItemWhat::Software {
                software: SoftwareSnapshot {
                    id: upkeep_server::ids::fresh(),
                    name: format!("bench-app-{i}"),
                    detection_script: script(format!("cat /opt/app{i}/version 2>/dev/null")),
                    versions: vec![SoftwareVersion {
                        version: "1.0".into(),
                        install_script: script(format!(
                            "mkdir -p /opt/app{i} && echo 1.0 > /opt/app{i}/version"
                        )),
                        upgrade_script: None,
                        installer: None,
                    }],
                    uninstall_script: None,
                    configuration_task: None,
                    versions_script: None,
                    versions_cache_minutes: 0,
                    install_script: None,
                    upgrade_script: None,
                    depends_on: vec![],
                    versions_note: None,
                },
                desired: DesiredSoftwareState::InstalledLatest,
                version: None,
            },
            rule: "only matching deployment (ALL_COMPUTERS)".into(),
            prerequisites: vec![],
            needed_by: None,
        })
        .collect();
    let span_ms = Days::days(365).num_milliseconds();
    let start_ms = now.timestamp_millis() - span_ms;
    let mut encoded = 0usize;
    let mut n = 0usize;
    while n < sessions {
        let batch: Vec<Session> = (n..(n + BATCH).min(sessions))
            .map(|i| {
                let ms = start_ms + (i as i64 * span_ms) / sessions as i64;
                let created = chrono::DateTime::from_timestamp_millis(ms).unwrap_or(now);
                let (computer, tenant) = computer_list[i % computers];
                session(id_at(ms, i as u64), tenant, computer, created, &items)
            })
            .collect();
        if n == 0 {
            encoded = serde_json::to_vec(&batch[0])?.len() + 1;
        }
        write(&|tx| {
            for s in &batch {
                tx.put(s)?;
            }
            Ok(())
        })?;
        n += batch.len();
        if n.is_multiple_of(100_000) {
            note(S, format!("{n} sessions written"));
        }
    }
    rt.block_on(store.flush())?;
    Ok(encoded as f64)
}

fn session(id: Id, tenant: Id, computer: Id, created: Time, items: &[PlanItem]) -> Session {
    let finished = created + Days::seconds(40);
    let actions = items
        .iter()
        .enumerate()
        .map(|(i, item)| Action {
            id: upkeep_server::ids::fresh(),
            item: i,
            kind: ActionKind::Install,
            status: ActionStatus::Succeeded,
            compliance: Compliance::Compliant,
            desired_version: Some("1.0".into()),
            detected_version: Some("1.0".into()),
            detected_version_before: Some("1.0".into()),
            detected_version_after: None,
            result_message: Some("done and verified".into()),
            current_value: None,
            reason: "not installed, latest is 1.0".into(),
            started_at: Some(created),
            finished_at: Some(finished),
            steps: match &item.what {
                ItemWhat::Software { software, .. } => vec![Step::Script {
                    label: format!("install {} 1.0", software.name),
                    script: software.versions[0].install_script.clone(),
                    version: Some("1.0".into()),
                    installer: None,
                }],
                ItemWhat::Task { .. } => vec![],
            },
            next_step: 1,
            step_failed: false,
            reboot_required: false,
        })
        .collect();
    Session {
        id,
        tenant_id: tenant,
        computer_id: computer,
        schedule_id: None,
        status: SessionStatus::Passed,
        status_reason: Some(format!("{0} of {0} actions succeeded", items.len())),
        trigger: SessionTrigger::Manual,
        detection_only: false,
        options: MaintenanceOptions::default(),
        created_by: ADMIN_EMAIL.into(),
        created_at: created,
        started_at: Some(created),
        finished_at: Some(finished),
        execute_at: None,
        window_end: None,
        postpone_count: 0,
        end_user_postpones: 0,
        reboot_required: false,
        rebooted_at: None,
        compliance: Some(Compliance::Compliant),
        items: items.to_vec(),
        actions,
        stage: Stage::Done,
        pending_job: None,
        wake_at: None,
        offline_since: None,
        last_sequence: 6 + 5 * items.len() as u64,
        before_mail_sent: false,
        after_mail_sent: false,
        deployment_ids: None,
        used_tokens: vec![],
        offline_in_window: false,
        queued: false,
        time_zone: upkeep_core::types::TimeZone::UTC.into(),
        mail_siblings: vec![],
        reboot_held_until: None,
        preflight: vec![],
        preflight_since: None,
        preflight_message: None,
        pre_rebooted_at: None,
        prompted: false,
        revision: 0,
        rollout: None,
    }
}

/// Bytes under `dir` (the store's size on disk).
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
