//! Upkeep: a maintenance-session server for MSPs. See `docs/ARCHITECTURE.md` for the map.

pub mod api;
pub mod attestation;
pub mod audit;
pub mod auth;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod error;
pub mod ids;
pub mod logsafe;
pub mod mail;
pub mod migrate;
pub mod net;
pub mod permissions;
pub mod proxy;
pub mod report;
pub mod secrets;
pub mod services;
pub mod time;
pub mod totp;

/// Sets up logging once (text or JSON lines), honouring `RUST_LOG`.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn"));
    // Colours only for a person at a terminal: in the journal, a file or a pipe they are noise.
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Makes ring the process's TLS provider (outgoing HTTPS: webhooks). Idempotent; every binary
/// and test harness calls it before building an HTTP client.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
