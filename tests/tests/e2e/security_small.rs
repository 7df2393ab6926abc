//! The smaller security fixes: login limits and their throttles, enrollment with a valid key
//! after failures, argon2 off the async workers, version text, private data dir, mailFrom
//! domains, test-mail limits, and the metrics token.

use serde_json::{Value, json};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);
const LOGIN: &str =
    "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";

/// The first error of a login attempt: (code, message); `None` when it succeeded.
async fn login_error(
    s: &TestServer,
    email: &str,
    password: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let body = s
        .gql_raw(None, LOGIN, json!({"e": email, "p": password}))
        .await?;
    Ok(body["errors"].get(0).map(|e| {
        (
            e["extensions"]["code"].as_str().unwrap_or("").to_string(),
            e["message"].as_str().unwrap_or("").to_string(),
        )
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_login_values_are_refused_before_any_work() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let long_email = format!("{}@msp.example", "a".repeat(10_000));
    let body = s
        .gql_raw(None, LOGIN, json!({"e": long_email, "p": ADMIN_PASSWORD}))
        .await?;
    let e = &body["errors"][0];
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{body}");
    assert_eq!(e["extensions"]["field"], "email", "{body}");
    let body = s
        .gql_raw(
            None,
            LOGIN,
            json!({"e": ADMIN_EMAIL, "p": "p".repeat(1025)}),
        )
        .await?;
    let e = &body["errors"][0];
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{body}");
    assert_eq!(e["extensions"]["field"], "password", "{body}");
    // Refused values are not failed logins: the account is not locked by them.
    for _ in 0..10 {
        s.gql_err(
            None,
            LOGIN,
            json!({"e": ADMIN_EMAIL, "p": "p".repeat(2000)}),
        )
        .await?;
    }
    s.admin().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_for_other_accounts_do_not_lock_out_a_user_at_the_same_address()
-> anyhow::Result<()> {
    let s = TestServer::start().await?;
    // One account guessed until it locks, and many others failing once each: an office
    // behind one address.
    for _ in 0..8 {
        let e = login_error(&s, "guessed@msp.example", "wrong password!").await?;
        assert_eq!(e.map(|e| e.0).as_deref(), Some("UNAUTHENTICATED"));
    }
    let locked = login_error(&s, "guessed@msp.example", "wrong password!").await?;
    assert!(
        locked
            .as_ref()
            .is_some_and(|e| e.1.contains("too many failed logins")),
        "{locked:?}"
    );
    for i in 0..35 {
        let e = login_error(&s, &format!("user{i}@msp.example"), "wrong password!").await?;
        assert_eq!(
            e.as_ref().map(|e| e.1.as_str()),
            Some("wrong e-mail or password"),
            "attempt {i}"
        );
    }
    // Another user at the same address still gets in.
    s.admin().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_guesses_cannot_outrun_the_limit() -> anyhow::Result<()> {
    let s = Arc::new(TestServer::start().await?);
    let guesses = (0..50).map(|i| {
        let s = s.clone();
        tokio::spawn(
            async move { login_error(&s, ADMIN_EMAIL, &format!("guess number {i}")).await },
        )
    });
    let (mut wrong, mut throttled) = (0, 0);
    for g in futures_util::future::join_all(guesses).await {
        let e = g??;
        match e {
            Some((code, msg)) if code == "UNAUTHENTICATED" && msg == "wrong e-mail or password" => {
                wrong += 1
            }
            Some((code, msg))
                if code == "UNAUTHENTICATED" && msg.contains("too many failed logins") =>
            {
                throttled += 1
            }
            other => panic!("unexpected answer to a wrong guess: {other:?}"),
        }
    }
    assert!(
        (1..=5).contains(&wrong),
        "{wrong} guesses were checked; the limit is 5 per account and address"
    );
    assert_eq!(wrong + throttled, 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_enrollment_key_enrolls_after_failures_from_the_same_address() -> anyhow::Result<()>
{
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Enrolling").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let r = s
            .http
            .post(format!("{}/agent/v1/enroll", s.url))
            .json(&json!({"protocolVersion": 1, "enrollmentKey": format!("upe_wrong{i}"), "hostname": "pc", "machineId": format!("m{i}"), "os": "Linux", "agentVersion": "0"}))
            .send()
            .await?;
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().all(|c| [401, 429].contains(c)),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&429),
        "unknown keys are throttled: {statuses:?}"
    );
    let (_token, computer) = s.enroll_raw(&key, "good-pc", "good-machine").await?;
    assert!(!computer.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_text_without_a_version_is_not_compliant() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Chatty").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&s.url, &key, "chatty-pc").await?;
    let computer = s.computer_id(&admin, "chatty-pc").await?;
    s.wait_online(&admin, &computer).await?;
    let dir = tempfile::tempdir()?;
    let sw = create_file_software(
        &s,
        &admin,
        Some(&tenant),
        "chatty",
        dir.path(),
        &["1.9.2", "1.10.0"],
    )
    .await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"})).await?;
    let detect = |text: &'static str| {
        let s = &s;
        let admin = &admin;
        let computer = &computer;
        let dir = dir.path().to_path_buf();
        async move {
            std::fs::write(dir.join("chatty.version"), text)?;
            let id = s
                .start_session(admin, computer, json!({"detectionOnly": true}))
                .await?;
            let r = s.wait_status(admin, &id, &["PASSED", "FAILED"], T).await?;
            anyhow::Ok(r)
        }
    };
    // Markup around a version: the version counts.
    let r = detect("Chatty version <b>1.10.0</b>\n").await?;
    assert_eq!(r["compliance"], "COMPLIANT", "{r:#}");
    // No version at all: unknown, so an upgrade to the latest is planned.
    let r = detect("<b>Chatty</b>\n").await?;
    assert_eq!(r["compliance"], "NON_COMPLIANT", "{r:#}");
    let a = &r["actions"][0];
    assert_eq!(a["kind"], "UPGRADE", "{r:#}");
    assert_eq!(a["desiredVersion"], "1.10.0");
    assert_eq!(a["detectedVersion"], "<b>Chatty</b>");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_must_be_on_an_allowed_domain() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| {
        c.mail_from_domains = vec!["msp.example".into(), "b.example".into()];
    })
    .await?;
    let admin = s.admin().await?;
    let create =
        "mutation($m: String) { createTenant(input: {name: \"M\", mailFrom: $m}) { id mailFrom } }";
    let body = s
        .gql_raw(
            Some(&admin),
            create,
            json!({"m": "IT <it@customer.example>"}),
        )
        .await?;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "mailFrom",
        "{body}"
    );
    // A subdomain is another domain.
    let code = s
        .gql_err(Some(&admin), create, json!({"m": "it@mail.msp.example"}))
        .await?;
    assert_eq!(code, "BAD_USER_INPUT");
    let d = s
        .gql(&admin, create, json!({"m": "IT <it@MSP.example>"}))
        .await?;
    let id = d["createTenant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let update = "mutation($id: ID!, $m: String) { updateTenant(id: $id, input: {mailFrom: $m}) { mailFrom } }";
    let body = s
        .gql_raw(
            Some(&admin),
            update,
            json!({"id": id, "m": "x@evil.example"}),
        )
        .await?;
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "mailFrom",
        "{body}"
    );
    let d = s
        .gql(&admin, update, json!({"id": id, "m": "help@b.example"}))
        .await?;
    assert_eq!(d["updateTenant"]["mailFrom"], "help@b.example");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_email_is_limited_per_tenant() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Mailer").await?;
    let other = s.create_tenant(&admin, "Other").await?;
    let send = "mutation($t: ID!) { sendTestEmail(tenantId: $t, to: \"x@customer.example\") }";
    for i in 0..10 {
        s.gql(&admin, send, json!({"t": tenant}))
            .await
            .map_err(|e| e.context(format!("test mail {i}")))?;
    }
    let body = s.gql_raw(Some(&admin), send, json!({"t": tenant})).await?;
    let e = &body["errors"][0];
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{body}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("too many test mails"),
        "{body}"
    );
    // The limit is the tenant's: another tenant may still send.
    s.gql(&admin, send, json!({"t": other})).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_needs_the_token_when_one_is_set() -> anyhow::Result<()> {
    let s = TestServer::start_with(|c| c.metrics_token = Some("metrics-secret-0123456789".into()))
        .await?;
    let url = format!("{}/metrics", s.url);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer metrics-secret-01234567890"),
    ] {
        let mut req = s.http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        let body: Value = r.json().await?;
        assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    }
    let r = s
        .http
        .get(&url)
        .bearer_auth("metrics-secret-0123456789")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await?.contains("upkeep_http_requests_total"));
    Ok(())
}

/// The real binary started under `umask 000`, its stderr collected line by line.
struct Process {
    child: std::process::Child,
    url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// `store`: the cluster flags in the cluster pass ([`cluster_args`]).
    fn start(data: &Path, store: Vec<String>) -> anyhow::Result<Process> {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(bin("upkeep-server-under-test"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args([
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .args(store)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(stderr).lines() {
                    let Ok(l) = l else { return };
                    if let Some(i) = l.find("listening on http://") {
                        let _ = tx.send(l[i + "listening on ".len()..].trim().to_string());
                    }
                    lines.lock().expect("lock").push(l);
                }
            });
        }
        let url = rx.recv_timeout(T)?;
        Ok(Process { child, url, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    async fn wait_for_line(&self, needle: &str) -> anyhow::Result<()> {
        wait_for(needle, T, || async {
            Ok(self
                .lines()
                .iter()
                .any(|l| l.contains(needle))
                .then_some(()))
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every path under `dir` that is not 0700 (directories) or 0600 (files).
fn loose_paths(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        let mode = m.permissions().mode() & 0o777;
        let want = if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
            0o700
        } else {
            0o600
        };
        if mode != want {
            out.push(format!("{} {mode:o}", p.display()));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_whatever_the_umask() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // An existing data dir left readable by everyone.
    std::fs::create_dir_all(data.join("outbox-files"))?;
    std::fs::write(
        data.join("outbox-files/old.eml"),
        "Subject: old\r\n\r\nlink",
    )?;
    for (p, mode) in [(data.clone(), 0o777), (data.join("outbox-files"), 0o755)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::set_permissions(
        data.join("outbox-files/old.eml"),
        std::fs::Permissions::from_mode(0o666),
    )?;

    let cluster = if_cluster_mode().await?;
    let p = Process::start(&data, cluster_args(cluster.as_ref()))?;
    let warnings: Vec<String> = p
        .lines()
        .into_iter()
        .filter(|l| l.contains("the data dir was readable by others"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", p.lines());
    let client = http_client()?;
    let gql = |token: Option<String>, query: &'static str, vars: Value| {
        let client = &client;
        let url = format!("{}/graphql", p.url);
        async move {
            let mut r = client
                .post(url)
                .json(&json!({"query": query, "variables": vars}));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let v: Value = r.send().await?.json().await?;
            anyhow::Ok(v)
        }
    };
    let login = gql(None, LOGIN, json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD})).await?;
    let token = login["data"]["login"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let t = gql(
        Some(token.clone()),
        "mutation { createTenant(input: {name: \"P\"}) { id } }",
        json!({}),
    )
    .await?;
    let tenant = t["data"]["createTenant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Without --smtp-url mail is written as .eml files into the data dir.
    let sent = gql(
        Some(token),
        "mutation($t: ID!) { sendTestEmail(tenantId: $t, to: \"a@b.example\") }",
        json!({"t": tenant}),
    )
    .await?;
    assert_eq!(sent["data"]["sendTestEmail"], true, "{sent}");
    wait_for("a new .eml file", T, || async {
        Ok((std::fs::read_dir(data.join("outbox-files"))?.count() >= 2).then_some(()))
    })
    .await?;
    // A backup holds as much as the data dir.
    let backup = dir.path().join("upkeep.backup");
    let out = std::process::Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(bin("upkeep-server-under-test"))
        .arg("backup")
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&backup)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&backup)?.permissions().mode() & 0o777,
        0o600
    );
    drop(p);
    assert_eq!(loose_paths(&data)?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_login_email_cannot_forge_a_log_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = if_cluster_mode().await?;
    let p = Process::start(&dir.path().join("data"), cluster_args(cluster.as_ref()))?;
    let r: Value = http_client()?
        .post(format!("{}/graphql", p.url))
        .json(&json!({"query": LOGIN, "variables": {"e": "nobody@x.example\nFORGED INFO admin logged in", "p": "whatever it is"}}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{r}"
    );
    p.wait_for_line("failed login").await?;
    let lines = p.lines();
    // The e-mail is logged normalised (lower case): look for the forged text either way.
    assert!(
        !lines.iter().any(|l| l.to_lowercase().starts_with("forged")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed login") && l.contains("nobody@x.example\\nforged")),
        "{lines:#?}"
    );
    Ok(())
}

/// Behind a trusted proxy (`--trusted-proxies`) the enrollment throttle counts the clients the
/// proxy forwards, not the proxy; from any other peer `X-Forwarded-For` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_throttles_count_forwarded_clients() -> anyhow::Result<()> {
    // The status of the last of `n` enrollments with unknown keys.
    let enroll_from = |s: &TestServer, xff: &'static str, n: usize| {
        let (http, url) = (s.http.clone(), format!("{}/agent/v1/enroll", s.url));
        async move {
            let mut last = 0;
            for i in 0..n {
                last = http
                    .post(&url)
                    .header("x-forwarded-for", xff)
                    .json(&json!({"protocolVersion": 1, "enrollmentKey": format!("upe_wrong{i}"), "hostname": "pc", "machineId": format!("m{i}"), "os": "Linux", "agentVersion": "0"}))
                    .send()
                    .await?
                    .status()
                    .as_u16();
            }
            anyhow::Ok(last)
        }
    };
    let proxied = TestServer::start_in_temp_dir(|dir| {
        let mut c = test_config(dir);
        c.trusted_proxies = vec![upkeep_server::proxy::Cidr::parse("127.0.0.1").unwrap()];
        c
    })
    .await?;
    assert_eq!(enroll_from(&proxied, "203.0.113.1", 25).await?, 429);
    // Another client through the same proxy is not throttled by the first one's failures, and
    // the first cannot escape its throttle by writing a header of its own to the left.
    assert_eq!(enroll_from(&proxied, "203.0.113.2", 1).await?, 401);
    assert_eq!(
        enroll_from(&proxied, "198.51.100.1, 203.0.113.1", 1).await?,
        429
    );

    // Without trusted proxies the header is ignored: the loopback peer is one client.
    let direct = TestServer::start().await?;
    assert_eq!(enroll_from(&direct, "203.0.113.1", 25).await?, 429);
    assert_eq!(enroll_from(&direct, "203.0.113.2", 1).await?, 429);
    Ok(())
}
