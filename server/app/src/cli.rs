//! The `upkeep-server` command line.

use crate::config::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// Entry point of the binary (also used by the end-to-end tests' copy of it).
pub fn main() -> ExitCode {
    // Everything the server writes (the store, secrets, outbox files, backups) is for its own
    // user only, whatever umask it was started with: sled creates its files with the default
    // mode, and keeps creating them while it runs. `http::start` also tightens what exists.
    // SAFETY: umask only sets this process's file-mode mask; no other thread runs yet.
    unsafe {
        libc::umask(0o077);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with success; bad flags print one line and fail.
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("upkeep-server: {first}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Schema) => {
            print!("{}", crate::api::graphql::sdl());
            ExitCode::SUCCESS
        }
        Some(Command::Check {
            data_dir,
            database_url,
        }) => offline(async move { crate::check::run(&data_dir, database_url.as_deref()).await }),
        Some(Command::Migrate {
            from_data_dir,
            to_database_url,
        }) => offline(async move { crate::migrate::run(&from_data_dir, &to_database_url).await }),
        Some(Command::Backup { data_dir, out }) => offline(async move {
            match crate::api::backup::backup(&data_dir, &out).await {
                Ok((n, (files, bytes))) => {
                    println!(
                        "backup of {} written to {} ({n} bytes); {files} new installer files ({bytes} bytes) copied to {}",
                        data_dir.display(),
                        out.display(),
                        crate::api::backup::files_dir_of(&out).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("upkeep-server backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
        Some(Command::ImportLibrary {
            dir,
            data_dir,
            tenant,
        }) => offline(import_library(dir, data_dir, tenant)),
        Some(Command::Gc { data_dir }) => offline(gc(data_dir)),
        Some(Command::VerifyRecord { file, public_key }) => {
            crate::attestation::verify_record_file(&file, public_key.as_deref())
        }
        Some(Command::RotateAttestationKey { data_dir }) => rotate_attestation_key(&data_dir),
        Some(Command::Restore { data_dir, input }) => offline(restore(data_dir, input)),
        None => serve(cli.serve),
    }
}

async fn import_library(
    dir: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    tenant: Option<String>,
) -> ExitCode {
    use crate::services::library;
    let run = async {
        let tenant = match tenant {
            Some(t) => Some(
                t.parse::<upkeep_core::domain::Id>()
                    .map_err(|_| anyhow::anyhow!("--tenant: '{t}' is not an id"))?,
            ),
            None => None,
        };
        let lib = library::Library::load(&dir)?;
        let store = upkeep_store::open_embedded(&data_dir)
            .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", data_dir.display()))?;
        let now = chrono::Utc::now();
        let report = library::import(&store, &lib, tenant, now, &crate::ids::fresh).await?;
        anyhow::Ok(report)
    };
    match run.await {
        Ok(report) => {
            println!("imported the library {}: {report}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upkeep-server import-library: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn restore(data_dir: std::path::PathBuf, input: std::path::PathBuf) -> ExitCode {
    match crate::api::backup::restore(&data_dir, &input).await {
        Ok((n, (files, bytes))) => {
            println!(
                "restored {n} entries and {files} installer files ({bytes} bytes) into {}",
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upkeep-server restore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn gc(data_dir: std::path::PathBuf) -> ExitCode {
    match crate::api::backup::gc(&data_dir).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upkeep-server gc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an offline command (check, backup, restore) on a small runtime of its own.
fn offline(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(command),
        Err(e) => {
            eprintln!("upkeep-server: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: crate::config::ServeConfig) -> ExitCode {
    crate::init_logging(&config.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upkeep-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match crate::api::http::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("upkeep-server: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn rotate_attestation_key(data_dir: &std::path::Path) -> ExitCode {
    if crate::api::backup::server_running(data_dir) {
        eprintln!(
            "upkeep-server rotate-attestation-key: a server is running on {}; stop it first",
            data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::datadir::ensure_embedded_store(data_dir) {
        eprintln!(
            "upkeep-server rotate-attestation-key: {e:#} (in cluster mode the key is in the database)"
        );
        return ExitCode::FAILURE;
    }
    match crate::attestation::rotate(data_dir) {
        Ok((old, new)) => {
            if let Some(old) = old {
                println!(
                    "retired public key {old} (kept in {})",
                    crate::attestation::RETIRED_FILE
                );
            }
            println!("new public key {new}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upkeep-server rotate-attestation-key: {e:#}");
            ExitCode::FAILURE
        }
    }
}
