//! `preview`: `previewDeploymentChange` over 10 000 computers, the answer a technician waits
//! for while editing a deployment form (target: 200 ms).
//!
//! Fixture, written through the server's `Store` before it starts: one tenant of 10 000
//! computers (half tagged `office`), 10 software entries each deployed to every computer
//! (`ALL_COMPUTERS`, `INSTALLED_LATEST`) and each computer's last detection of each (not
//! installed, an old version or the latest, a day old; every 50th computer never detected).
//! The previewed change is a new `ALL_COMPUTERS` deployment of one of them pinned to an older
//! version (`INSTALLED_VERSION 1.0`): it reaches every computer, shadows the existing
//! deployment everywhere and plans an install, a downgrade or nothing on each. The query asks
//! for the counts, the first page of 50 computers with their actions, and the stale list.

use crate::report::{Figure, Latencies, note};
use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use serde_json::{Value, json};
use std::time::Instant;
use upkeep_core::domain::*;
use upkeep_core::impact::Detection;
use upkeep_store::TxError;
use upkeep_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, http_client};

const S: &str = "preview";
const SOFTWARE: usize = 10;
const BATCH: usize = 2_000;
const QUERY: &str = "query($i: DeploymentChangeInput!) { previewDeploymentChange(input: $i) {
  counts { kind count }
  computers(first: 50) { totalCount edges { node { computer { name } actions { kind reason } } } }
  stale { id } } }";

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let computers = if quick { 2_000 } else { 10_000 };
    let rounds = if quick { 5 } else { 30 };
    let dir = tempfile::Builder::new().prefix("upkeep-bench-").tempdir()?;
    let config = upkeep_testkit::config(dir.path());
    note(S, format!("preloading {computers} computers"));
    let (tenant, software) = {
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || preload(&path, computers)).await??
    };
    let (mut srv, _) = crate::graphql::start_timed(&config).await?;
    let admin = srv.admin().await?;
    let vars = json!({"i": {"create": {"tenantId": tenant.to_string(),
        "target": {"kind": "ALL_COMPUTERS"}, "softwareId": software.to_string(),
        "desiredState": "INSTALLED_VERSION", "version": "1.0"}}});
    let first = srv.gql(&admin, QUERY, vars.clone()).await?;
    let p = &first["previewDeploymentChange"];
    let planned = p["computers"]["totalCount"]
        .as_u64()
        .context("totalCount")?;
    let stale = p["stale"].as_array().map_or(0, Vec::len);
    if planned as usize + stale != computers {
        bail!("expected {computers} computers planned or stale, got {planned} + {stale}: {p}");
    }
    note(
        S,
        format!("{planned} planned, {stale} stale; timing {rounds} previews"),
    );
    let client = http_client()?;
    let body = json!({"query": QUERY, "variables": vars}).to_string();
    let url = format!("{}/graphql", srv.url);
    let mut lat = Latencies::default();
    for _ in 0..rounds {
        let t = Instant::now();
        let resp = client
            .post(&url)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let v: Value = resp.json().await?;
        if v.get("errors").is_some() {
            bail!("preview failed: {v}");
        }
        lat.record(t.elapsed());
    }
    srv.stop().await;
    drop(dir);
    Ok(vec![
        Figure::new(S, "computers", computers as f64, "computers"),
        Figure::new(S, "planned", planned as f64, "computers"),
        Figure::new(S, "stale", stale as f64, "computers"),
        Figure::new(S, "p50_ms", lat.quantile_ms(0.50), "ms"),
        Figure::new(S, "p99_ms", lat.quantile_ms(0.99), "ms"),
    ])
}

fn script(body: String) -> Script {
    Script {
        language: ScriptLanguage::Shell,
        body,
    }
}

/// Writes the fixture; returns the tenant and the software the preview changes.
// long: one fixture, written kind by kind in batches
fn preload(dir: &std::path::Path, computers: usize) -> Result<(Id, Id)> {
    let store = upkeep_store::open_embedded(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let now = Utc::now();
    let write = |f: &(dyn Fn(&mut upkeep_store::Tx<'_>) -> Result<(), TxError<String>> + Sync)| {
        rt.block_on(store.write(f)).map_err(|e| anyhow!("{e}"))
    };
    let fresh = upkeep_server::ids::fresh;
    let admin = User {
        id: fresh(),
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
    let tenant = Tenant {
        id: fresh(),
        name: "Bench".into(),
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
    };
    let software: Vec<Software> = (0..SOFTWARE)
        .map(|i| Software {
            id: fresh(),
            tenant_id: Some(tenant.id),
            name: format!("app-{i}"),
            detection_script: script(format!("cat /opt/app{i}/version")),
            versions: ["1.0", "2.0"]
                .iter()
                .map(|v| SoftwareVersion {
                    version: v.to_string(),
                    install_script: script(format!("install app{i} {v}")),
                    upgrade_script: None,
                    installer: None,
                })
                .collect(),
            uninstall_script: Some(script(format!("remove app{i}"))),
            configuration_task_id: None,
            created_at: now,
            versions_script: None,
            versions_cache_minutes: 60,
            install_script: None,
            upgrade_script: None,
            depends_on: vec![],
        })
        .collect();
    let ids: Vec<Id> = (0..computers).map(|_| fresh()).collect();
    write(&|tx| {
        tx.put(&admin)?;
        tx.claim_unique(
            &upkeep_store::IndexKey::new(
                upkeep_store::records::USER_EMAIL,
                admin.email.text().as_bytes(),
            ),
            admin.id.as_bytes(),
        )?;
        tx.put(&tenant)?;
        for sw in &software {
            tx.put(sw)?;
            tx.put(&Deployment {
                id: fresh(),
                tenant_id: Some(tenant.id),
                target: Target {
                    kind: TargetKind::AllComputers,
                    value: None,
                },
                software_id: Some(sw.id),
                desired_state: Some(DesiredSoftwareState::InstalledLatest),
                version: None,
                maintenance_task_id: None,
                task_mode: TaskMode::Enforce,
                parameters: Default::default(),
                enforcement: Enforcement::Required,
                order: DeploymentOrder::Unordered,
                position: 0,
                enabled: true,
                created_at: now,
            })?;
        }
        Ok(())
    })?;
    for (n, chunk) in ids.chunks(BATCH).enumerate() {
        write(&|tx| {
            for (j, id) in chunk.iter().enumerate() {
                let i = n * BATCH + j;
                tx.put(&Computer {
                    id: *id,
                    tenant_id: tenant.id,
                    name: format!("pc-{i:05}"),
                    hostname: format!("pc-{i:05}"),
                    machine_id: format!("machine-{id}"),
                    tags: if i.is_multiple_of(2) {
                        vec![upkeep_core::types::Stored::read("office")]
                    } else {
                        vec![]
                    },
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
                if i % 50 == 49 {
                    continue; // never detected: listed as stale
                }
                for sw in &software {
                    tx.put(&Detection {
                        tenant_id: tenant.id,
                        computer_id: *id,
                        subject: Subject::Software(sw.id),
                        session_id: *id,
                        at: now - chrono::Duration::days(1),
                        version: match i % 3 {
                            0 => None,
                            1 => Some("1.0".into()),
                            _ => Some("2.0".into()),
                        },
                        test: None,
                        test_error: None,
                        current_value: None,
                    })?;
                }
            }
            Ok(())
        })?;
    }
    rt.block_on(store.flush()).map_err(|e| anyhow!("{e}"))?;
    Ok((tenant.id, software[0].id))
}
