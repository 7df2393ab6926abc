//! Installers as content-addressed files: uploads (raw body and GraphQL multipart), the agent
//! fetching and verifying them before the install script runs, tampering caught, byte ranges,
//! garbage collection, backups, and a 1 GiB upload streamed through a server process.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(60);

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that differ from file to file (`seed`) and do not compress to nothing.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `POST /api/v1/files` with the raw bytes: (status, body).
async fn post_file(s: &TestServer, token: Option<&str>, bytes: Vec<u8>) -> Result<(u16, Value)> {
    let mut req = s.http.post(format!("{}/api/v1/files", s.url)).body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// `uploadInstaller` as a GraphQL multipart request: the whole answer.
async fn upload_multipart(s: &TestServer, token: &str, name: &str, bytes: &[u8]) -> Result<Value> {
    let boundary = "upkeep-test-boundary-7f3a";
    let operations = json!({
        "query": "mutation($file: Upload!) { uploadInstaller(file: $file) { sha256 size fileName } }",
        "variables": {"file": null},
    });
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{operations}\r\n").as_bytes());
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\": [\"variables.file\"]}}\r\n").as_bytes());
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await?;
    Ok(r.json().await?)
}

/// Software whose install script records the SHA-256 of `$UPKEEP_INSTALLER_FILE` in
/// `dir/<name>.got` and then the version in `dir/<name>.version`.
fn software_input(tenant: &str, name: &str, dir: &Path, installer: Value) -> Value {
    let got = dir.join(format!("{name}.got"));
    let ver = dir.join(format!("{name}.version"));
    json!({
        "name": name, "tenantId": tenant,
        "detectionScript": {"language": "SHELL", "body": format!("test -f '{v}' && cat '{v}' || exit 0", v = ver.display())},
        "versions": [{"version": "1.0", "installer": installer,
            "installScript": {"language": "SHELL", "body": format!(
                "test -f \"$UPKEEP_INSTALLER_FILE\" || exit 3\nsha256sum \"$UPKEEP_INSTALLER_FILE\" | cut -d' ' -f1 > '{}'\necho 1.0 > '{}'",
                got.display(), ver.display())}}],
    })
}

async fn deploy(f: &Fixture, software: &str) -> Result<()> {
    f.s.create_deployment(&f.admin, json!({"tenantId": f.tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": software, "desiredState": "INSTALLED_ANY"})).await?;
    Ok(())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_installers_reach_the_install_script_verified() -> Result<()> {
    let f = Fixture::start("inst-ok").await?;
    let a = content(1, 300_000);
    let (status, body) = post_file(&f.s, Some(&f.admin), a.clone()).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"sha256": hex(&a), "size": a.len()}));
    // The same bytes again: stored once.
    let (status, again) = post_file(&f.s, Some(&f.admin), a.clone()).await?;
    assert_eq!((status, &again), (200, &body));

    let b = content(2, 123_457);
    let up = upload_multipart(&f.s, &f.admin, "tool-setup.bin", &b).await?;
    assert_eq!(
        up["data"]["uploadInstaller"],
        json!({"sha256": hex(&b), "size": b.len(), "fileName": "tool-setup.bin"}),
        "{up}"
    );
    assert_eq!(f.s.metric("upkeep_installer_files").await?, 2.0);
    assert_eq!(
        f.s.metric("upkeep_installer_file_bytes").await?,
        (a.len() + b.len()) as f64
    );

    let dir = f.dir.path();
    let one =
        f.s.create_software(
            &f.admin,
            software_input(&f.tenant, "one", dir, json!({"sha256": hex(&a)})),
        )
        .await?;
    let two = f.s.create_software(&f.admin, software_input(&f.tenant, "two", dir, json!({"sha256": hex(&b).to_uppercase(), "fileName": "tool-setup.bin", "size": b.len()}))).await?;
    let shown = f
        .s
        .gql(&f.admin, "query($id: ID!) { softwareById(id: $id) { versions { installer { sha256 size url fileName } } } }", json!({"id": two}))
        .await?;
    assert_eq!(
        shown["softwareById"]["versions"][0]["installer"],
        json!({"sha256": hex(&b), "size": b.len(), "url": null, "fileName": "tool-setup.bin"})
    );
    deploy(&f, &one).await?;
    deploy(&f, &two).await?;
    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(s["status"], "PASSED", "{s:#}");
    assert_eq!(read(&dir.join("one.got")), hex(&a));
    assert_eq!(read(&dir.join("two.got")), hex(&b));
    // The agent keeps them in its cache, under their hashes.
    let cached = f.agent.state_dir.join("installers").join(hex(&a));
    assert_eq!(std::fs::read(&cached)?, a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_installer_fails_the_action_and_nothing_runs() -> Result<()> {
    let f = Fixture::start("inst-bad").await?;
    let a = content(3, 50_000);
    let (status, _) = post_file(&f.s, Some(&f.admin), a.clone()).await?;
    assert_eq!(status, 201);
    let sha = hex(&a);

    // Names that cannot work are refused when the software is written.
    let dir = f.dir.path();
    let bad = |installer: Value| software_input(&f.tenant, "x", dir, installer);
    let q = "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }";
    for installer in [
        json!({"sha256": hex(b"never uploaded")}),
        json!({"sha256": "abc"}),
        json!({"sha256": sha, "url": "http://vendor.example/x.msi", "size": 5}),
        json!({"sha256": sha, "url": "https://vendor.example/x.msi"}),
        json!({"sha256": sha, "size": 7}),
    ] {
        let code =
            f.s.gql_err(Some(&f.admin), q, json!({"i": bad(installer.clone())}))
                .await?;
        assert_eq!(code, "BAD_USER_INPUT", "{installer}");
    }

    let sw =
        f.s.create_software(
            &f.admin,
            software_input(&f.tenant, "tampered", dir, json!({"sha256": sha})),
        )
        .await?;
    deploy(&f, &sw).await?;
    // Someone changes the stored file behind the server's back (same size, other bytes).
    let stored = f.s.data_dir.join("files").join(&sha[..2]).join(&sha);
    let mut changed = a.clone();
    changed[1000] ^= 0xff;
    std::fs::write(&stored, &changed)?;

    let id = f.s.start_session(&f.admin, &f.computer, json!({})).await?;
    let s =
        f.s.wait_status(&f.admin, &id, &["PASSED", "FAILED"], T)
            .await?;
    assert_eq!(s["status"], "FAILED", "{s:#}");
    let message = s["actions"][0]["resultMessage"]
        .as_str()
        .unwrap_or_default();
    let expected = format!(
        "installer hash mismatch: expected {sha}, got {}",
        hex(&changed)
    );
    assert!(message.contains(&expected), "{message}");
    assert!(
        !dir.join("tampered.got").exists(),
        "the install script must not run"
    );
    assert!(!dir.join("tampered.version").exists());
    assert!(!f.agent.state_dir.join("installers").join(&sha).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_named_files_whole_or_from_an_offset() -> Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let other = s.create_tenant(&admin, "Other").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let (token, _) = s.enroll_raw(&key, "ranges", "machine-ranges").await?;
    let a = content(4, 10_000);
    let sha = hex(&a);

    // Uploads need a user who may create software, and a body within the bound.
    let (status, body) = post_file(&s, None, a.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, body) = post_file(&s, Some(&token), a.clone()).await?;
    assert_eq!(status, 401, "an agent token is no user: {body}");
    s.gql(&admin, "mutation($t: ID!) { createUser(input: {email: \"v@a.example\", password: \"viewer-password\", role: TENANT_VIEWER, tenantId: $t}) { id } }", json!({"t": tenant})).await?;
    let viewer = s.login("v@a.example", "viewer-password").await?;
    let (status, body) = post_file(&s, Some(&viewer), a.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let up = upload_multipart(&s, &viewer, "a.bin", &a).await?;
    assert_eq!(up["errors"][0]["extensions"]["code"], "FORBIDDEN", "{up}");
    assert_eq!(
        s.metric("upkeep_installer_files").await?,
        0.0,
        "nothing stored for them"
    );
    let (status, _) = post_file(&s, Some(&admin), a.clone()).await?;
    assert_eq!(status, 201);

    let get = |range: Option<&'static str>, bearer: Option<String>, name: String| {
        let mut r = s.http.get(format!("{}/agent/v1/files/{name}", s.url));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        if let Some(v) = range {
            r = r.header("range", v);
        }
        r.send()
    };
    // Stored, but named by no software this computer's tenant has: not served.
    let r = get(None, Some(token.clone()), sha.clone()).await?;
    assert_eq!(r.status(), 404);
    let dir = tempfile::tempdir()?;
    s.create_software(
        &admin,
        software_input(&other, "theirs", dir.path(), json!({"sha256": sha})),
    )
    .await?;
    assert_eq!(
        get(None, Some(token.clone()), sha.clone()).await?.status(),
        404,
        "another tenant's software"
    );
    s.create_software(
        &admin,
        software_input(&tenant, "ours", dir.path(), json!({"sha256": sha})),
    )
    .await?;

    let r = get(None, Some(token.clone()), sha.clone()).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await?.to_vec(), a);
    let r = get(Some("bytes=4000-"), Some(token.clone()), sha.clone()).await?;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 4000-9999/10000");
    assert_eq!(r.bytes().await?.to_vec(), a[4000..]);
    let r = get(Some("bytes=10000-"), Some(token.clone()), sha.clone()).await?;
    assert_eq!(r.status(), 416);
    assert_eq!(get(None, None, sha.clone()).await?.status(), 401);
    let r = get(None, Some(token.clone()), "0".repeat(64)).await?;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await?["code"], "NOT_FOUND");
    assert_eq!(
        get(None, Some(token.clone()), "..%2F..%2Fjwt-secret".into())
            .await?
            .status(),
        404
    );

    // Over --max-upload-mb: 413 with a JSON body, and nothing stored.
    let small = TestServer::start_with(|c| c.max_upload_mb = 1).await?;
    let small_admin = small.admin().await?;
    let (status, body) = post_file(&small, Some(&small_admin), content(5, 1024 * 1024 + 1)).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "{body}"
    );
    let up = upload_multipart(
        &small,
        &small_admin,
        "big.bin",
        &content(6, 1024 * 1024 + 1),
    )
    .await?;
    assert_eq!(
        up["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
        "{up}"
    );
    assert_eq!(small.metric("upkeep_installer_files").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_unnamed_files_and_backups_keep_the_rest() -> Result<()> {
    let start = chrono::Utc::now();
    let s = TestServer::start_with(|c| c.test_clock = Some(start)).await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let (named, loose) = (content(7, 20_000), content(8, 30_000));
    for f in [&named, &loose] {
        assert_eq!(post_file(&s, Some(&admin), f.clone()).await?.0, 201);
    }
    let dir = tempfile::tempdir()?;
    s.create_software(
        &admin,
        software_input(&tenant, "kept", dir.path(), json!({"sha256": hex(&named)})),
    )
    .await?;
    let path = |f: &[u8]| {
        let sha = hex(f);
        s.data_dir.join("files").join(&sha[..2]).join(sha)
    };

    // Young files stay, named or not: an upload comes before the software that names it.
    let line = upkeep_server::api::backup::gc(&s.data_dir).await?;
    assert_eq!(line, "removed 0 files (0 bytes), kept 2");
    s.set_clock(start + chrono::Duration::hours(2)).await?;
    let line = upkeep_server::api::backup::gc(&s.data_dir).await?;
    assert_eq!(line, "removed 1 files (30000 bytes), kept 1");
    assert!(path(&named).is_file());
    assert!(!path(&loose).exists());

    // Without a running server, `gc` opens the store itself.
    let mut s = s;
    s.stop().await;
    if s.cluster.is_some() {
        // A replica's data dir holds no store to open: refused, and none is made there.
        let e = upkeep_server::api::backup::gc(&s.data_dir)
            .await
            .expect_err("gc on a stopped replica's data dir");
        assert!(
            format!("{e:#}").contains("holds no embedded store"),
            "{e:#}"
        );
        assert!(!s.data_dir.join("store").exists());
        return Ok(());
    }
    // The stopped in-process server's last tasks may still hold the store's lock for a moment
    // (a real server's process ends with its lock).
    let mut tries = 0;
    let line = loop {
        match upkeep_server::api::backup::gc(&s.data_dir).await {
            Err(e) if tries < 100 && format!("{e:#}").contains("in use by a running server") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    assert_eq!(line, "removed 0 files (0 bytes), kept 1");

    // A backup carries the file beside it; restore checks it.
    let out = tempfile::tempdir()?;
    let backup = out.path().join("upkeep.backup");
    let (_, copied) = upkeep_server::api::backup::backup(&s.data_dir, &backup).await?;
    assert_eq!(copied, (1, named.len() as u64));
    let restored = out.path().join("restored");
    let (_, copied) = upkeep_server::api::backup::restore(&restored, &backup).await?;
    assert_eq!(copied, (1, named.len() as u64));
    let sha = hex(&named);
    assert_eq!(
        std::fs::read(restored.join("files").join(&sha[..2]).join(&sha))?,
        named
    );

    // A damaged file in the backup is refused on restore.
    let copy = upkeep_server::api::backup::files_dir_of(&backup)
        .join(&sha[..2])
        .join(&sha);
    std::fs::write(&copy, content(9, named.len()))?;
    let again = upkeep_server::api::backup::restore(&out.path().join("restored-2"), &backup).await;
    let e = again.expect_err("a damaged installer file");
    assert!(e.to_string().contains("damaged"), "{e:#}");
    Ok(())
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmHWM value")?
        .parse()?)
}

const GIB: u64 = 1024 * 1024 * 1024;

/// The 1 GiB test file, chunk `i` of 1 MiB: one random MiB with its number in front.
fn gib_chunk(base: &[u8], i: u32) -> Vec<u8> {
    let mut c = base.to_vec();
    c[..4].copy_from_slice(&i.to_be_bytes());
    c
}

fn hex_of_gib() -> String {
    let base = content(10, 1024 * 1024);
    let mut h = Sha256::new();
    for i in 0..1024u32 {
        h.update(gib_chunk(&base, i));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends the 1 GiB file over a raw connection, written chunk by chunk (never whole in this
/// process either), as a raw body or a GraphQL multipart request; returns the JSON answer.
async fn upload_gib(port: u16, token: &str, multipart: bool) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let boundary = "gib-boundary-5c1e";
    let (path, content_type, pre, post) = if multipart {
        let ops = r#"{"query":"mutation($f: Upload!) { uploadInstaller(file: $f) { sha256 size } }","variables":{"f":null}}"#;
        let pre = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{ops}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{{\"0\":[\"variables.f\"]}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"big.bin\"\r\n\r\n"
        );
        let post = format!("\r\n--{boundary}--\r\n");
        (
            "/graphql",
            format!("multipart/form-data; boundary={boundary}"),
            pre,
            post,
        )
    } else {
        (
            "/api/v1/files",
            "application/octet-stream".to_string(),
            String::new(),
            String::new(),
        )
    };
    let len = pre.len() as u64 + GIB + post.len() as u64;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{pre}"
    );
    sock.write_all(head.as_bytes()).await?;
    let base = content(10, 1024 * 1024);
    for i in 0..1024u32 {
        sock.write_all(&gib_chunk(&base, i)).await?;
    }
    sock.write_all(post.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), sock.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer);
    ensure!(text.starts_with("HTTP/1.1 20"), "{text}");
    Ok(serde_json::from_str(
        text.split_once("\r\n\r\n").context("no body")?.1,
    )?)
}

/// A 1 GiB upload through the server binary: streamed to disk, so the server's peak RSS stays
/// far below the file's size (the bound is generous; the figure is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_upload_streams_through_a_server_process() -> Result<()> {
    let data = tempfile::tempdir()?;
    let cluster = if_cluster_mode().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(bin("upkeep-server-under-test"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .args([
            "--admin-email",
            ADMIN_EMAIL,
            "--admin-password",
            ADMIN_PASSWORD,
        ])
        .args(cluster_args(cluster.as_ref()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = async {
        let url = format!("http://127.0.0.1:{port}");
        let http = http_client()?;
        wait_for("the server", T, || async {
            Ok(http
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok()
                .then_some(()))
        })
        .await?;
        let login = upkeep_testkit::gql_raw(
            &http,
            &url,
            None,
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}),
        )
        .await?;
        let token = login["data"]["login"]["token"]
            .as_str()
            .with_context(|| format!("no token: {login}"))?
            .to_string();
        let before = peak_rss_kib(child.id())?;

        let expected = hex_of_gib();
        for multipart in [false, true] {
            let started = std::time::Instant::now();
            let answer = upload_gib(port, &token, multipart).await?;
            let elapsed = started.elapsed();
            let sha = if multipart {
                answer["data"]["uploadInstaller"]["sha256"].clone()
            } else {
                answer["sha256"].clone()
            };
            assert_eq!(sha, json!(expected), "{answer}");
            let peak = peak_rss_kib(child.id())?;
            println!(
                "1 GiB upload ({}): {:.1} s, server peak RSS {} MiB (before any upload {} MiB)",
                if multipart {
                    "GraphQL multipart"
                } else {
                    "POST /api/v1/files"
                },
                elapsed.as_secs_f64(),
                peak / 1024,
                before / 1024
            );
            ensure!(
                peak < 256 * 1024,
                "peak RSS {peak} KiB for a streamed upload"
            );
        }
        let stored = data
            .path()
            .join("files")
            .join(&expected[..2])
            .join(&expected);
        assert_eq!(std::fs::metadata(stored)?.len(), GIB);
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
