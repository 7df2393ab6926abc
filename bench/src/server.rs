//! What the scenarios do with the server beyond the kit's client (`upkeep-testkit`): deploy
//! the bench's software, enroll a fleet, and wait for its sessions, all through an [`Endpoint`]
//! (a URL). Most scenarios run the kit's `TestServer`: the real
//! `upkeep_server::api::http::start` on `127.0.0.1:0` with a temp data dir, in this process, on
//! a runtime of its own (`main` sets it; see [`upkeep_testkit::set_server_runtime`]); `cluster`
//! runs server processes and nginx (`processes.rs`). Everything measured goes over loopback HTTP
//! or WebSocket.

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upkeep_agent_protocol as proto;
use upkeep_testkit::Endpoint;

/// Enrollments answered 500 and retried, since the process started.
pub static ENROLL_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Enrollment calls the bench keeps in flight at once while building a fleet.
pub const ENROLL_CONCURRENCY: usize = 64;

/// `count` software entries with one version ("1.0") and trivial scripts, each deployed to
/// every computer of `tenant` as INSTALLED_LATEST.
pub async fn deploy_software(s: &Endpoint, token: &str, tenant: &str, count: usize) -> Result<()> {
    for i in 0..count {
        let sw = s
            .create_software(
                token,
                json!({
                    "name": format!("bench-app-{i}"),
                    "tenantId": tenant,
                    "detectionScript": {"language": "SHELL", "body": format!("cat /opt/app{i}/version 2>/dev/null")},
                    "versions": [{"version": "1.0", "installScript": {"language": "SHELL", "body": format!("mkdir -p /opt/app{i} && echo 1.0 > /opt/app{i}/version")}}],
                }),
            )
            .await?;
        s.create_deployment(
            token,
            json!({
                "tenantId": tenant,
                "target": {"kind": "ALL_COMPUTERS"},
                "softwareId": sw,
                "desiredState": "INSTALLED_LATEST",
            }),
        )
        .await?;
    }
    Ok(())
}

/// Enrolls `count` agents over `/agent/v1/enroll`, `concurrency` at a time, and hands each
/// answer to `keep`; returns how long it took.
pub async fn enroll_fleet(
    s: &Endpoint,
    key: &str,
    count: usize,
    concurrency: usize,
    keep: impl Fn(usize, proto::EnrollResponse) + Send + Sync + 'static,
) -> Result<Duration> {
    let keep = Arc::new(keep);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let http = s.http.clone();
        let url = s.url.clone();
        let key = key.to_string();
        let keep = keep.clone();
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while i < count {
                let req = proto::EnrollRequest {
                    protocol_version: proto::PROTOCOL_VERSION,
                    enrollment_key: key.clone(),
                    hostname: format!("bench-{i:06}"),
                    machine_id: format!("bench-machine-{i:06}"),
                    os: "Debian GNU/Linux 12 (bookworm)".into(),
                    agent_version: "0.1.0".into(),
                };
                // A 500 is retried a few times: on PostgreSQL concurrent enrollments can fail
                // (serialization conflicts, predicate-lock memory); each retry is counted.
                let mut attempt = 0;
                let answer = loop {
                    match upkeep_testkit::enroll(&http, &url, &req).await {
                        Ok(a) => break a,
                        Err(e) if attempt < 10 && format!("{e:#}").contains("500") => {
                            attempt += 1;
                            ENROLL_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                keep(i, answer);
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}

/// Counts of sessions per status (all tenants).
pub async fn status_counts(s: &Endpoint, token: &str) -> Result<HashMap<String, u64>> {
    let d = s
        .gql(
            token,
            "{ maintenanceSessionStatusCounts { status count } }",
            json!({}),
        )
        .await?;
    let mut out = HashMap::new();
    for c in d["maintenanceSessionStatusCounts"]
        .as_array()
        .context("status counts")?
    {
        out.insert(
            c["status"].as_str().unwrap_or_default().to_string(),
            c["count"].as_u64().unwrap_or(0),
        );
    }
    Ok(out)
}

/// Waits until `n` sessions are PASSED; fails when any ends otherwise or `timeout` passes.
pub async fn wait_passed(s: &Endpoint, token: &str, n: u64, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let counts = status_counts(s, token).await?;
        let passed = counts.get("PASSED").copied().unwrap_or(0);
        let bad = counts.get("FAILED").copied().unwrap_or(0)
            + counts.get("CANCELLED").copied().unwrap_or(0);
        if bad > 0 {
            bail!("{bad} session(s) did not pass: {counts:?}");
        }
        if passed >= n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let metrics = s.metrics_text().await?;
            let runtime: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("upkeep_sessions_") || l.starts_with("upkeep_jobs"))
                .collect();
            let stuck = s
                .gql(
                    token,
                    "{ maintenanceSessions(first: 2, filter: {status: [EXECUTING, DETECTING]}) { edges { node { id status logs { sequence at message } } } } }",
                    json!({}),
                )
                .await
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string());
            bail!(
                "only {passed} of {n} sessions passed within {timeout:?}: {counts:?}\n{}\n{stuck}",
                runtime.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
