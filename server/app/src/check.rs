//! `upkeep-server check`: verifies a store offline.

use futures_util::StreamExt;
use std::path::Path;
use std::process::ExitCode;
use upkeep_core::session::{Session, Stage};
use upkeep_store::Db;

/// Problems found in the store: broken indexes and sessions in impossible states.
pub async fn problems(store: &Db) -> upkeep_store::Result<Vec<String>> {
    let mut out = store.check_indexes().await?;
    let mut sessions = std::pin::pin!(store.scan::<Session>(None));
    while let Some(s) = sessions.next().await {
        let s = s?;
        let terminal = s.status.is_terminal();
        if terminal != (s.stage == Stage::Done) {
            out.push(format!(
                "session {}: status {:?} with stage {:?}",
                s.id, s.status, s.stage
            ));
        }
        if terminal && s.pending_job.is_some() {
            out.push(format!("session {}: finished but waits for a job", s.id));
        }
        if terminal && s.finished_at.is_none() {
            out.push(format!("session {}: finished without finishedAt", s.id));
        }
        if s.actions.iter().any(|a| a.item >= s.items.len()) {
            out.push(format!(
                "session {}: an action points at no plan item",
                s.id
            ));
        }
    }
    out.extend(attestation_problems(store).await?);
    Ok(out)
}

/// Every stored attestation against its session's stored events: a changed, missing or added
/// event, or a signature that does not hold, is reported.
async fn attestation_problems(store: &Db) -> upkeep_store::Result<Vec<String>> {
    use upkeep_core::attest::Attestation;
    use upkeep_core::session::SessionEvent;
    let mut out = Vec::new();
    let mut attestations = std::pin::pin!(store.scan::<Attestation>(None));
    while let Some(a) = attestations.next().await {
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                out.push(format!("an attestation cannot be read: {e}"));
                continue;
            }
        };
        let mut events = Vec::new();
        let mut scan =
            std::pin::pin!(store.scan_prefix::<SessionEvent>(a.session_id.as_bytes(), None));
        let mut unreadable = None;
        while let Some(e) = scan.next().await {
            match e {
                Ok(e) if e.sequence <= a.last_sequence => events.push(e),
                Ok(_) => break,
                Err(e) => {
                    unreadable = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = unreadable {
            out.push(format!(
                "session {}: an event cannot be read, so its signed record does not verify: {e}",
                a.session_id
            ));
        } else if let Err(e) = crate::attestation::verify(&a, &events) {
            out.push(format!(
                "session {}: the signed record does not verify: {e}",
                a.session_id
            ));
        }
    }
    Ok(out)
}

/// Checks the store of `data_dir`, or the PostgreSQL store at `database_url` when given.
pub async fn run(data_dir: &Path, database_url: Option<&str>) -> ExitCode {
    let opened = match database_url {
        Some(url) => upkeep_store::open_postgres(url)
            .await
            .map_err(|e| format!("cannot open the PostgreSQL store: {e}")),
        None => crate::datadir::ensure_embedded_store(data_dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                upkeep_store::open_embedded(data_dir)
                    .map_err(|e| format!("cannot open {}: {e}", data_dir.display()))
            }),
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upkeep-server check: {e}");
            return ExitCode::from(2);
        }
    };
    match problems(&store).await {
        Ok(p) if p.is_empty() => {
            println!("store OK");
            ExitCode::SUCCESS
        }
        Ok(p) => {
            for line in &p {
                println!("{line}");
            }
            eprintln!("upkeep-server check: {} problem(s) found", p.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("upkeep-server check: {e}");
            ExitCode::FAILURE
        }
    }
}
