//! Server configuration: every flag is also an environment variable (CONTRACT §2).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "upkeep-server",
    version,
    about = "Upkeep maintenance-session server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify the store: every index entry points at a record and back, no session in an
    /// impossible state. Exits non-zero on damage.
    Check {
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
        /// Check the PostgreSQL store at this URL instead of the data directory's.
        #[arg(long, env = "UPKEEP_DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
        database_url: Option<String>,
    },
    /// Copy the embedded store of a data dir into an empty PostgreSQL database (cluster mode)
    /// and check that every space's key count matches. The server must not be running on the
    /// data dir.
    Migrate {
        /// The data directory whose embedded store is copied.
        #[arg(long)]
        from_data_dir: PathBuf,
        /// The empty PostgreSQL database to copy into.
        #[arg(long, hide_env_values = true, value_parser = parse_database_url)]
        to_database_url: String,
    },
    /// Write the GraphQL schema (SDL) to stdout.
    Schema,
    /// Verify an exported session record (`GET /api/v1/sessions/{id}/record`) offline: its
    /// events hash to the signed chain head and the signature holds. Exits 0 when it verifies,
    /// 1 when it does not, 2 when the file cannot be read.
    VerifyRecord {
        /// The record file (JSON).
        file: PathBuf,
        /// Require the record to be signed by this public key (base64url, as
        /// `Attestation.publicKey` shows it) instead of trusting the key the record names.
        /// A key may begin with `-` (one in 64 does): it is taken as the value, not a flag.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
    },
    /// Make a new key for signing session records; the old one's public key is kept in
    /// `attestation-keys.retired` (records signed with it still verify). The server must not be
    /// running on the data dir. Embedded store only (in cluster mode the key is in the database).
    RotateAttestationKey {
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
    },
    /// Write a consistent backup of the store (asks the running server, if any).
    Backup {
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
        /// The backup file to write (installer files go beside it, into `<out>.files/`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import software and maintenance tasks from a library directory (YAML or JSON files, one
    /// entry each; `library/` in the repository) into the catalogue: MSP-level, or one tenant's
    /// with --tenant. Entries are matched by name; the server must not be running on the data
    /// dir (use --library at start instead).
    ImportLibrary {
        /// The library directory.
        dir: PathBuf,
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
        /// Import into this tenant's catalogue (its id) instead of the MSP-level one.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove installer files that no software (and no unfinished session) names any more and
    /// that were uploaded over an hour ago (asks the running server, if any).
    Gc {
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
    },
    /// Restore a backup into a new, empty data dir (the server must not be running on it).
    Restore {
        /// The server's data directory.
        #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
        data_dir: PathBuf,
        /// The backup file to read (with its `<in>.files/` beside it).
        #[arg(long = "in")]
        input: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to bind; port 0 picks a free port.
    #[arg(long, env = "UPKEEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the sled store and generated secrets live (with --database-url: outbox files and
    /// installers only; the generated secrets are kept in the database).
    #[arg(long, env = "UPKEEP_DATA_DIR", default_value = "./upkeep-data")]
    pub data_dir: PathBuf,
    /// Keep the store in PostgreSQL (`postgres://user:pass@host:5432/db`) instead of the
    /// embedded store in the data directory: cluster mode, with --nats-url (README).
    #[arg(long, env = "UPKEEP_DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub database_url: Option<String>,
    /// Where installer files are kept (default `<data-dir>/files`). In cluster mode give every
    /// replica the same directory on shared storage (NFS, CephFS, …): an installer uploaded
    /// through one replica is checked and served by all of them.
    #[arg(long, env = "UPKEEP_FILES_DIR")]
    pub files_dir: Option<PathBuf>,
    /// NATS server with JetStream (`nats://host:4222`) that replicas on one database use to
    /// tell each other about session events, agent jobs and presence. Cluster mode takes
    /// --database-url and --nats-url together.
    #[arg(long, env = "UPKEEP_NATS_URL", hide_env_values = true, value_parser = parse_nats_url)]
    pub nats_url: Option<String>,
    /// Prefix of this deployment's NATS subjects and JetStream streams (letters, digits, `_`),
    /// so several deployments (or tests) can share one NATS server.
    #[arg(long, env = "UPKEEP_NATS_PREFIX", default_value = "upkeep", value_parser = parse_nats_prefix)]
    pub nats_prefix: String,
    /// Cluster mode: seconds a replica holds a mail or webhook delivery it is sending before
    /// another replica may take it over (the lease of a replica that died). Longer than any
    /// one send (SMTP and webhook attempts time out at 30 s and 10 s).
    #[arg(long, env = "UPKEEP_CLAIM_LEASE_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..), hide = true)]
    pub claim_lease_seconds: u32,
    /// Base of links in e-mails (default: http://<listen address>).
    #[arg(long, env = "UPKEEP_PUBLIC_URL", value_parser = PublicUrl::parse)]
    pub public_url: Option<PublicUrl>,
    /// SMTP server, e.g. smtp://127.0.0.1:2525 or smtps://user:pass@host. Without it, mail is
    /// written as .eml files to <data-dir>/outbox-files/.
    #[arg(long, env = "UPKEEP_SMTP_URL", value_parser = parse_smtp_url)]
    pub smtp_url: Option<String>,
    /// Default sender when a tenant sets none.
    #[arg(long, env = "UPKEEP_MAIL_FROM", default_value = "upkeep@localhost", value_parser = parse_mailbox)]
    pub mail_from: String,
    /// The MSP's name as end users see it in mails and pages ("Maintenance is provided by …").
    #[arg(long, env = "UPKEEP_MSP_NAME", default_value = "your IT provider")]
    pub msp_name: String,
    /// Directory whose templates override the built-in ones.
    #[arg(long, env = "UPKEEP_TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
    /// On a store with no users, create this MSP admin.
    #[arg(long, env = "UPKEEP_ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,
    /// The password of `--admin-email` (at least 12 characters).
    #[arg(long, env = "UPKEEP_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// HMAC key for API and postpone tokens (default: generated once into the data dir, or
    /// with --database-url into the database, shared by every server on it).
    #[arg(long, env = "UPKEEP_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Comma-separated browser origins allowed to call /graphql (`https://portal.example`,
    /// normalised: a trailing slash is dropped), or `*` alone for any origin (no credentials
    /// are involved: the API takes bearer tokens, not cookies).
    #[arg(long, env = "UPKEEP_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_cors_origin)]
    pub cors_origins: Vec<String>,
    /// Comma-separated request headers browsers may send cross-origin, added to the defaults
    /// (authorization, content-type, apollographql-client-name, apollographql-client-version).
    #[arg(long, env = "UPKEEP_CORS_HEADERS", value_delimiter = ',', value_parser = parse_header_name)]
    pub cors_headers: Vec<String>,
    /// Allow webhook URLs on loopback and private addresses.
    #[arg(long, env = "UPKEEP_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,
    /// Sessions running at once; more wait PENDING ("queued").
    #[arg(long, env = "UPKEEP_MAX_CONCURRENT_SESSIONS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_sessions: u32,
    /// Monthly reports built at once (each reads a month of a tenant's sessions); a caller
    /// kept waiting 30 s gets THROTTLED. 0 turns reports off.
    #[arg(long, env = "UPKEEP_MAX_CONCURRENT_REPORTS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub max_concurrent_reports: u32,
    /// Impact previews (`previewDeploymentChange`) computed at once (each plans the whole
    /// fleet the change may reach); a caller kept waiting 10 s gets THROTTLED. 0 turns them off.
    #[arg(long, env = "UPKEEP_MAX_CONCURRENT_PREVIEWS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub max_concurrent_previews: u32,
    /// Testing only: start the server's clock at this RFC 3339 instant and let tests move it
    /// with `POST /debug/clock` (never use in production).
    #[arg(long, env = "UPKEEP_TEST_CLOCK", hide = true)]
    pub test_clock: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds after the last poll when a computer counts as offline.
    #[arg(long, env = "UPKEEP_OFFLINE_AFTER_SECONDS", default_value_t = 75)]
    pub offline_after_seconds: u32,
    /// Time limit of every agent script, in seconds (default: 300 for detection, 1800 for
    /// changes).
    #[arg(long, env = "UPKEEP_JOB_TIMEOUT_SECONDS", hide = true)]
    pub job_timeout_seconds: Option<u32>,
    /// Extra seconds a job lease allows beyond its scripts' time limits.
    #[arg(
        long,
        env = "UPKEEP_LEASE_SLACK_SECONDS",
        default_value_t = 120,
        hide = true
    )]
    pub lease_slack_seconds: u32,
    /// Seconds a WebSocket may take to send `connection_init` before it is closed (4408).
    #[arg(
        long,
        env = "UPKEEP_WS_INIT_TIMEOUT_SECONDS",
        default_value_t = 10,
        hide = true
    )]
    pub ws_init_timeout_seconds: u32,
    /// MSP_ADMIN and MSP_TECHNICIAN users must turn on TOTP: until they do, their login only
    /// allows `me`, `enrollTotp`, `confirmTotp` and `changePassword`.
    #[arg(long, env = "UPKEEP_REQUIRE_MFA_FOR_MSP_ROLES")]
    pub require_mfa_for_msp_roles: bool,
    /// Comma-separated addresses or networks of reverse proxies in front of this server (nginx,
    /// a TLS terminator: `127.0.0.1,10.0.0.0/8`). Only for connections from these is the client's
    /// address taken from `X-Forwarded-For` (its rightmost address that is not a proxy), so login
    /// and enrollment throttles count clients, not the proxy.
    #[arg(long, env = "UPKEEP_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::proxy::Cidr::parse)]
    pub trusted_proxies: Vec<crate::proxy::Cidr>,
    /// Open client connections at most; more are closed at once (and a warning is logged).
    #[arg(long, env = "UPKEEP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers, counted from when the connection
    /// starts waiting for a request: also how long an idle keep-alive connection stays open.
    #[arg(long, env = "UPKEEP_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..), hide = true)]
    pub header_read_timeout_seconds: u32,
    /// Seconds a client has to send a request's body after its headers (408 otherwise).
    #[arg(long, env = "UPKEEP_BODY_READ_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..), hide = true)]
    pub body_read_timeout_seconds: u32,
    /// Log format: `text` or `json`.
    #[arg(long, env = "UPKEEP_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Comma-separated domains a tenant's mailFrom may use (default: any).
    #[arg(long, env = "UPKEEP_MAIL_FROM_DOMAINS", value_delimiter = ',', value_parser = parse_domain)]
    pub mail_from_domains: Vec<String>,
    /// A library directory (as for `import-library`) imported into the MSP-level catalogue at
    /// start; the server does not start when it is invalid.
    #[arg(long, env = "UPKEEP_LIBRARY")]
    pub library: Option<PathBuf>,
    /// When set, /metrics answers only requests with `Authorization: Bearer <this>`.
    #[arg(long, env = "UPKEEP_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A check every session runs on its computer before it changes anything (repeatable; the
    /// language from the extension: .sh, .ps1, .py). Read once at start.
    #[arg(long = "preflight-script", env = "UPKEEP_PREFLIGHT_SCRIPTS", value_name = "FILE", value_parser = parse_preflight_script)]
    pub preflight_scripts: Vec<upkeep_core::domain::Script>,
    /// Largest installer file `POST /api/v1/files` and `uploadInstaller` take, in MiB.
    #[arg(long, env = "UPKEEP_MAX_UPLOAD_MB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_upload_mb: u64,
}

/// A `--preflight-script` file as a script, its language from its extension.
fn parse_preflight_script(path: &str) -> Result<upkeep_core::domain::Script, String> {
    use upkeep_core::domain::{Script, ScriptLanguage};
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let language = match ext.as_deref() {
        Some("sh") => ScriptLanguage::Shell,
        Some("ps1") => ScriptLanguage::Powershell,
        Some("py") => ScriptLanguage::Python,
        Some("cmd" | "bat") => ScriptLanguage::Cmd,
        _ => {
            return Err(format!(
                "'{path}': the language comes from the extension; use .sh, .ps1, .py, .cmd or .bat"
            ));
        }
    };
    let body = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    if body.trim().is_empty() {
        return Err(format!("'{path}' is empty"));
    }
    Ok(Script { language, body })
}

/// A CORS origin as browsers send it: `scheme://host[:port]` (no path, query or user; a
/// trailing slash is dropped, scheme and host lowercased, a default port left out), or `*`.
pub fn parse_cors_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(s.into());
    }
    let url = url::Url::parse(s).map_err(|e| {
        format!("'{s}' is not an origin ({e}); write it as scheme://host[:port], e.g. https://portal.example")
    })?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "'{s}' is not an origin: write it as scheme://host[:port] (http or https, no path), e.g. https://portal.example"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// A request header name (`--cors-headers`), lowercased.
fn parse_header_name(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    axum::http::HeaderName::from_bytes(s.as_bytes())
        .map(|h| h.as_str().to_string())
        .map_err(|_| format!("'{s}' is not a header name"))
}

fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(d)
    } else {
        Err(format!("'{s}' is not a domain name like msp.example"))
    }
}

/// Where end users and agents reach the server (`--public-url`): the base of every link in a
/// mail and the host of every Message-ID. Parsed once, at start (WHATWG rules, as browsers
/// read it); shown without a trailing slash, so `format!("{url}/postpone/…")` is a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(url::Url);

impl PublicUrl {
    pub fn parse(s: &str) -> Result<PublicUrl, String> {
        let bad = |why: &str| format!("'{s}' is not a usable public URL: {why}");
        let u = url::Url::parse(s.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(bad("use http:// or https://"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad("links must not carry credentials"));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(bad("a base URL has no ?query or #fragment"));
        }
        Ok(PublicUrl(u))
    }

    /// The host, for Message-IDs (`<id@host>`).
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or("localhost")
    }
}

impl std::fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

fn parse_smtp_url(s: &str) -> Result<String, String> {
    let bad = || format!("'{s}' is not an smtp:// or smtps:// URL with a host");
    let u = url::Url::parse(s).map_err(|_| bad())?;
    if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some_and(|h| !h.is_empty()) {
        Ok(s.to_string())
    } else {
        Err(bad())
    }
}

fn parse_database_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err("the database URL must start with postgres:// or postgresql://".into())
    }
}

fn parse_nats_url(s: &str) -> Result<String, String> {
    if s.starts_with("nats://") || s.starts_with("tls://") {
        Ok(s.to_string())
    } else {
        Err("the NATS URL must start with nats:// or tls://".into())
    }
}

fn parse_nats_prefix(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(s.to_string())
    } else {
        Err("the NATS prefix must be 1 to 32 letters, digits or '_'".into())
    }
}

fn parse_mailbox(s: &str) -> Result<String, String> {
    s.parse::<lettre::message::Mailbox>()
        .map(|_| s.to_string())
        .map_err(|e| format!("'{s}' is not a mail address: {e}"))
}

impl ServeConfig {
    /// Where installer files live: `--files-dir`, else `<data-dir>/files`.
    pub fn files_dir(&self) -> PathBuf {
        self.files_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"))
    }

    pub fn for_tests(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            data_dir,
            database_url: None,
            nats_url: None,
            nats_prefix: "upkeep".into(),
            claim_lease_seconds: 60,
            files_dir: None,
            public_url: None,
            smtp_url: None,
            mail_from: "upkeep@localhost".into(),
            templates_dir: None,
            msp_name: "your IT provider".into(),
            admin_email: None,
            admin_password: None,
            jwt_secret: None,
            cors_origins: vec![],
            cors_headers: vec![],
            allow_private_webhooks: false,
            max_concurrent_sessions: 500,
            max_concurrent_reports: 2,
            max_concurrent_previews: 2,
            test_clock: None,
            offline_after_seconds: 75,
            job_timeout_seconds: None,
            lease_slack_seconds: 120,
            ws_init_timeout_seconds: 10,
            require_mfa_for_msp_roles: false,
            log_format: "text".into(),
            mail_from_domains: vec![],
            library: None,
            metrics_token: None,
            max_connections: 10_000,
            trusted_proxies: vec![],
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: 60,
            preflight_scripts: vec![],
            max_upload_mb: 4096,
        }
    }
}

impl ServeConfig {
    /// `--max-upload-mb` in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_mb.saturating_mul(1024 * 1024)
    }

    pub fn ws_init_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.ws_init_timeout_seconds))
    }

    pub fn limits(&self) -> upkeep_core::engine::Limits {
        let d = upkeep_core::engine::Limits::default();
        upkeep_core::engine::Limits {
            probe_timeout_seconds: self.job_timeout_seconds.unwrap_or(d.probe_timeout_seconds),
            step_timeout_seconds: self.job_timeout_seconds.unwrap_or(d.step_timeout_seconds),
            lease_slack_seconds: self.lease_slack_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PublicUrl;

    #[test]
    fn a_preflight_script_takes_its_language_from_its_extension() {
        use upkeep_core::domain::ScriptLanguage;
        let dir = tempfile::tempdir().expect("tempdir");
        let sh = dir.path().join("no-render.sh");
        std::fs::write(&sh, "pgrep blender && exit 1\n").expect("write");
        let script = super::parse_preflight_script(&sh.display().to_string()).expect("parses");
        assert_eq!(script.language, ScriptLanguage::Shell);
        assert_eq!(script.body, "pgrep blender && exit 1\n");
        let ps1 = dir.path().join("wu.PS1");
        std::fs::write(&ps1, "exit 0").expect("write");
        let script = super::parse_preflight_script(&ps1.display().to_string()).expect("parses");
        assert_eq!(script.language, ScriptLanguage::Powershell);
        let bat = dir.path().join("wu-running.bat");
        std::fs::write(&bat, "@exit /b 0").expect("write");
        let script = super::parse_preflight_script(&bat.display().to_string()).expect("parses");
        assert_eq!(script.language, ScriptLanguage::Cmd);
        let txt = dir.path().join("check.txt");
        std::fs::write(&txt, "exit 0").expect("write");
        let e = super::parse_preflight_script(&txt.display().to_string()).unwrap_err();
        assert!(e.contains(".sh, .ps1, .py, .cmd or .bat"), "{e}");
        let e = super::parse_preflight_script("/no/such/check.sh").unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    /// base64url keys begin with `-` one time in 64; such a key once failed a test run.
    #[test]
    fn a_public_key_that_begins_with_a_dash_is_a_value() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "upkeep-server",
            "verify-record",
            "record.json",
            "--public-key",
            "-gX9kZ",
        ])
        .expect("parses");
        match cli.command {
            Some(super::Command::VerifyRecord { public_key, .. }) => {
                assert_eq!(public_key.as_deref(), Some("-gX9kZ"));
            }
            _ => panic!("not verify-record"),
        }
    }

    #[test]
    fn public_url_is_parsed_once_and_shown_without_a_trailing_slash() {
        let u = PublicUrl::parse("https://rmm.example.com/upkeep/").unwrap();
        assert_eq!(u.to_string(), "https://rmm.example.com/upkeep");
        assert_eq!(u.host(), "rmm.example.com");
        let u = PublicUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(u.host(), "[::1]");
        assert_eq!(u.to_string(), "http://[::1]:8080");
        for bad in ["smtp://", "http://mail.example", "smtp:mail.example"] {
            assert!(super::parse_smtp_url(bad).is_err(), "{bad} accepted");
        }
        assert!(super::parse_smtp_url("smtps://u:p@mail.example:465").is_ok());
        for bad in [
            "ftp://x.example",
            "https://",
            "rmm.example.com",
            "https://user:pw@rmm.example.com",
            "https://rmm.example.com/?a=b",
            "https://rmm.example.com/#x",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
