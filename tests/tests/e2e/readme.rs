//! The README's walk-through, run as a reader runs it: every code block of "## A first
//! walk-through" (up to the next `## ` heading), in order, against the real server and agent
//! binaries, in a scratch directory. What a reader would do by hand is all the test adds: it
//! puts the answers of earlier blocks where a block says `<tenant id>`, `<key>`, …, and it
//! uses a free port instead of 8080 and this build's binaries instead of `cargo run --release`.
//! A block that fails (a GraphQL error, a non-zero exit) fails the test, naming its line.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use upkeep_tests::{bin, http_client, wait_for, ws::Subscription};

const T: Duration = Duration::from_secs(60);

struct Block {
    lang: String,
    text: String,
    line: usize,
}

/// The fenced blocks of the walk-through section, in order.
fn walk_through(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut inside = false;
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            inside = line == "## A first walk-through";
            continue;
        }
        if !inside {
            continue;
        }
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_string(),
                    text: String::new(),
                    line: i + 1,
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Processes the walk-through starts in the background (server, agent), stopped at the end.
struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Reader {
    scratch: PathBuf,
    home: PathBuf,
    port: u16,
    url: String,
    http: reqwest::Client,
    token: Option<String>,
    vars: HashMap<String, String>,
    background: Background,
    /// In the cluster pass: the scratch cluster as `UPKEEP_*` settings, so the server the
    /// README starts runs on it as written.
    store_env: Vec<(String, String)>,
}

impl Reader {
    /// Puts earlier answers where the text says `<tenant id>` and the like.
    fn fill(&self, text: &str, line: usize) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('<') {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 1..];
            let end = tail.find('>').unwrap_or(0);
            let name = &tail[..end];
            if end > 0 && name.chars().all(|c| c.is_ascii_lowercase() || c == ' ') {
                let value = self.vars.get(name).with_context(|| {
                    format!("README line {line}: no earlier answer for <{name}>")
                })?;
                out.push_str(value);
                rest = &tail[end + 1..];
            } else {
                out.push('<');
                rest = tail;
            }
        }
        out.push_str(rest);
        Ok(out.replace("127.0.0.1:8080", &format!("127.0.0.1:{}", self.port)))
    }

    async fn shell(&mut self, b: &Block) -> Result<()> {
        let command = self.fill(&b.text.replace("\\\n", " "), b.line)?;
        let command = command.trim();
        let server = "cargo run --release -p upkeep-server --";
        let agent = "cargo run --release -p upkeep-agent --";
        if let Some(args) = command.strip_prefix(server) {
            let bin = bin("upkeep-server-under-test");
            self.spawn(&format!("exec '{}' {args}", bin.display()), "server")?;
            let health = format!("{}/healthz", self.url);
            let http = self.http.clone();
            wait_for("the server to answer /healthz", T, || async {
                Ok(http
                    .get(&health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success()))
            })
            .await?;
            return Ok(());
        }
        if let Some(args) = command.strip_prefix(agent) {
            let bin = bin("upkeep-agent-under-test");
            return self.spawn(&format!("exec '{}' {args}", bin.display()), "agent");
        }
        // Anything else is a command a reader runs and looks at; a reader looks again a little
        // later when what it shows is not there yet (a mail still being written).
        let (scratch, home) = (self.scratch.clone(), self.home.clone());
        let store_env = &self.store_env;
        wait_for(&format!("README line {}: `{command}`", b.line), T, || {
            let (scratch, home) = (scratch.clone(), home.clone());
            async move {
                let out = sh(command, &scratch, &home, store_env).output()?;
                Ok(out.status.success().then_some(()))
            }
        })
        .await
    }

    fn spawn(&mut self, command: &str, name: &str) -> Result<()> {
        let log = std::fs::File::create(self.scratch.join(format!("{name}.log")))?;
        let child = sh(command, &self.scratch, &self.home, &self.store_env)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.background.0.push(child);
        Ok(())
    }

    async fn graphql(&mut self, b: &Block) -> Result<()> {
        let query = self.fill(&b.text, b.line)?;
        if query.trim_start().starts_with("subscription") {
            return self.subscribe(&query, b.line).await;
        }
        // A computer shows up once its agent has enrolled: a reader asks again.
        let data = wait_for(&format!("README line {}", b.line), T, || async {
            let body = upkeep_testkit::gql_raw(
                &self.http,
                &self.url,
                self.token.as_deref(),
                &query,
                json!({}),
            )
            .await?;
            if !body["errors"].is_null() {
                bail!("README line {}: {}", b.line, body["errors"]);
            }
            let data = body["data"].clone();
            let waiting = data["computers"]["edges"]
                .as_array()
                .is_some_and(|e| e.is_empty());
            Ok((!waiting).then_some(data))
        })
        .await?;
        self.remember(&data);
        if let Some(status) = data["maintenanceSession"]["status"].as_str() {
            ensure!(
                status == "PASSED",
                "README line {}: the session is {status}: {data}",
                b.line
            );
        }
        Ok(())
    }

    /// Reads the session's events until it ends; the walk-through's session passes.
    async fn subscribe(&mut self, query: &str, line: usize) -> Result<()> {
        let token = self.token.clone().context("a subscription before login")?;
        let mut sub =
            Subscription::start(&self.url, "graphql-transport-ws", &token, query, json!({}))
                .await?;
        let mut last = 0;
        loop {
            let data = sub.next_data(T).await?;
            let event = &data["maintenanceSessionUpdates"];
            let sequence = event["sequence"].as_i64().unwrap_or(0);
            ensure!(
                sequence == last + 1,
                "README line {line}: events in order: {event}"
            );
            last = sequence;
            match event["status"].as_str() {
                Some("PASSED") => break,
                Some(s @ ("FAILED" | "CANCELLED")) => bail!("README line {line}: the session {s}"),
                _ => {}
            }
        }
        sub.close().await;
        Ok(())
    }

    /// Keeps what later blocks refer to.
    fn remember(&mut self, data: &Value) {
        let mut keep = |name: &str, v: &Value| {
            if let Some(s) = v.as_str() {
                self.vars.insert(name.to_string(), s.to_string());
            }
        };
        keep("tenant id", &data["createTenant"]["id"]);
        keep("key", &data["createEnrollmentKey"]["key"]);
        keep("computer id", &data["computers"]["edges"][0]["node"]["id"]);
        keep("person id", &data["createPerson"]["id"]);
        keep("software id", &data["createSoftware"]["id"]);
        keep("task id", &data["createMaintenanceTask"]["id"]);
        keep("session id", &data["startMaintenanceSession"][0]["id"]);
        keep("session id", &data["startOnboardingSession"]["id"]);
        if let Some(t) = data["login"]["token"].as_str() {
            self.token = Some(t.to_string());
        }
    }
}

/// `sh -c` in the scratch directory, with the scratch home and no UPKEEP_* settings of ours but
/// `store_env`.
fn sh(command: &str, dir: &Path, home: &Path, store_env: &[(String, String)]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(command).current_dir(dir).env("HOME", home);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("UPKEEP_") {
            c.env_remove(k);
        }
    }
    c.envs(store_env.iter().map(|(k, v)| (k, v)));
    c.stdin(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let blocks = walk_through(&readme);
    ensure!(
        blocks.len() >= 15,
        "the walk-through has {} blocks",
        blocks.len()
    );
    let dir = tempfile::tempdir()?;
    let (scratch, home) = (dir.path().join("scratch"), dir.path().join("home"));
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&home)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cluster = upkeep_tests::if_cluster_mode().await?;
    let store_env = cluster
        .as_ref()
        .map(|c| {
            [
                ("UPKEEP_DATABASE_URL", c.database.url().to_string()),
                ("UPKEEP_NATS_URL", c.nats_url.clone()),
                ("UPKEEP_NATS_PREFIX", c.prefix.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .to_vec()
        })
        .unwrap_or_default();
    let mut reader = Reader {
        scratch: scratch.clone(),
        home: home.clone(),
        port,
        url: format!("http://127.0.0.1:{port}"),
        http: http_client()?,
        token: None,
        vars: HashMap::new(),
        background: Background(Vec::new()),
        store_env,
    };
    for b in &blocks {
        let done = match b.lang.as_str() {
            "sh" => reader.shell(b).await,
            "graphql" => reader.graphql(b).await,
            other => Err(anyhow::anyhow!(
                "README line {}: a ```{other} block",
                b.line
            )),
        };
        if let Err(e) = done {
            for name in ["server", "agent"] {
                let log = std::fs::read_to_string(scratch.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!(
                    "--- {name} log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
            return Err(e);
        }
    }
    // What the walk-through promised happened on this machine: the software was installed
    // (the agent's relative --state-dir worked), and the mail is a file.
    assert_eq!(
        std::fs::read_to_string(home.join(".hello/version"))?.trim(),
        "1.0.0"
    );
    assert!(scratch.join("run/agent1").is_dir());
    // `check` on the data dir of the running server says what to do, in words (in the cluster
    // pass the data dir holds no store, and it says that).
    let check = Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--data-dir", "upkeep-data"])
        .env_remove("UPKEEP_DATABASE_URL")
        .current_dir(&scratch)
        .output()?;
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    let want = if cluster.is_some() {
        "holds no embedded store"
    } else {
        "stop the server first"
    };
    assert!(said.contains(want) && !said.contains("Os {"), "{said}");
    // The logs a service writes (to a file here, as to the journal) are plain text: no colour
    // codes, no Rust debug forms.
    for name in ["server", "agent"] {
        let log = std::fs::read_to_string(scratch.join(format!("{name}.log")))?;
        assert!(!log.contains('\u{1b}'), "{name} log has colour codes");
        assert!(!log.contains("Some("), "{name} log has debug text: {log}");
    }
    Ok(())
}
