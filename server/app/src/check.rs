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
    Ok(out)
}

pub async fn run(data_dir: &Path) -> ExitCode {
    let store = match upkeep_store::open_embedded(data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "upkeep-server check: cannot open {}: {e}",
                data_dir.display()
            );
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
