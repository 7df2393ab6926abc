//! Safe on the internet, the network side: webhooks never reach the server's own network
//! (SSRF, run in a network namespace of its own), and slow, idle or excess client connections
//! are closed.

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upkeep_tests::*;

/// Longer than any timeout these tests set: a connection still open after this was not cut.
const NOT_CUT: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection (end of stream or reset) and returns what
/// arrived; an error if it is still open after `limit`.
async fn read_until_closed(sock: &mut TcpStream, limit: Duration) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(got),
        Err(_) => bail!(
            "the server kept the connection open for {limit:?} (got {:?})",
            String::from_utf8_lossy(&got)
        ),
    }
}

/// Sends `GET /healthz` on a kept-alive connection and reads the whole answer.
async fn healthz(sock: &mut TcpStream) -> Result<()> {
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: upkeep\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(NOT_CUT, async {
        while !got.ends_with(b"\r\n\r\nok") {
            let n = sock.read(&mut buf).await?;
            ensure!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await
    .context("no answer to GET /healthz")??;
    ensure!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_line_is_cut_after_the_header_timeout() -> Result<()> {
    let s = TestServer::start_with(|c| c.header_read_timeout_seconds = 1).await?;
    let mut sock = TcpStream::connect(s.addr).await?;
    sock.write_all(b"GET /heal").await?;
    let got = read_until_closed(&mut sock, NOT_CUT).await?;
    ensure!(
        !got.starts_with(b"HTTP/1.1 200"),
        "a half request was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The server goes on serving others.
    let mut other = TcpStream::connect(s.addr).await?;
    healthz(&mut other).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() -> Result<()> {
    let s = TestServer::start_with(|c| c.header_read_timeout_seconds = 1).await?;
    let mut sock = TcpStream::connect(s.addr).await?;
    healthz(&mut sock).await?;
    healthz(&mut sock)
        .await
        .context("kept alive between requests")?;
    let rest = read_until_closed(&mut sock, NOT_CUT).await?;
    ensure!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    Ok(())
}

/// Enrolls a computer over raw HTTP; returns its agent token.
async fn enroll(s: &TestServer) -> Result<String> {
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Trickle").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let body = json!({ "protocolVersion": upkeep_agent_protocol::PROTOCOL_VERSION,
        "enrollmentKey": key, "hostname": "slow-1", "machineId": "slow-1",
        "os": "Debian", "agentVersion": "0.1.0" });
    let r = s
        .http
        .post(format!("{}/agent/v1/enroll", s.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    ensure!(status == 200, "enroll: {status} {answer}");
    Ok(answer["agentToken"]
        .as_str()
        .context("agent token")?
        .to_string())
}

/// POSTs to `/graphql` announcing `len` bytes of body and sending a byte every 200 ms.
async fn trickle(addr: SocketAddr, len: usize) -> Result<Vec<u8>> {
    let mut sock = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: upkeep\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await?;
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..len {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(NOT_CUT, rd.read_to_end(&mut got)).await;
    writer.abort();
    match read {
        Ok(_) => Ok(got),
        Err(_) => bail!(
            "a trickling body was not cut within {NOT_CUT:?} (got {:?})",
            String::from_utf8_lossy(&got)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_cut_but_a_held_poll_is_answered() -> Result<()> {
    let s = TestServer::start_with(|c| c.body_read_timeout_seconds = 1).await?;
    let got = trickle(s.addr, 200).await?;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    ensure!(head.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(body).with_context(|| format!("JSON body: {text}"))?;
    assert_eq!(body["code"], "REQUEST_TIMEOUT", "{body}");

    // Only the client's sending is timed: a poll the server holds for longer than the body
    // timeout (its body arrived at once) still gets its answer.
    let token = enroll(&s).await?;
    let poll =
        json!({ "protocolVersion": upkeep_agent_protocol::PROTOCOL_VERSION, "waitSeconds": 3 });
    let r = s
        .http
        .post(format!("{}/agent/v1/poll", s.url))
        .bearer_auth(&token)
        .json(&poll)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    ensure!(status == 200, "held poll: {status} {answer}");
    ensure!(answer["jobs"] == json!([]), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_until_one_frees() -> Result<()> {
    let s = TestServer::start_with(|c| c.max_connections = 5).await?;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut sock = TcpStream::connect(s.addr).await?;
        healthz(&mut sock).await?;
        held.push(sock);
    }
    let mut sixth = TcpStream::connect(s.addr).await?;
    let _ = sixth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: upkeep\r\n\r\n")
        .await;
    let got = read_until_closed(&mut sixth, NOT_CUT).await?;
    ensure!(
        got.is_empty(),
        "a 6th connection was served: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The five held ones still work.
    for sock in &mut held {
        healthz(sock).await?;
    }
    drop(held);
    wait_for("a connection to be accepted again", NOT_CUT, || async {
        let mut sock = TcpStream::connect(s.addr).await?;
        Ok(healthz(&mut sock).await.ok())
    })
    .await
}

#[test]
fn webhooks_never_reach_the_servers_own_network() -> Result<()> {
    if embedded_only(
        "the server runs in a network namespace with loopback only, out of reach of the \
         machine's PostgreSQL and NATS; the SSRF guard does not depend on the store",
    ) {
        return Ok(());
    }
    let bin = bin("upkeep-ssrf-under-test");
    ensure!(bin.exists(), "{} was not built", bin.display());
    let out = std::process::Command::new("unshare")
        .args(["-n", "--"])
        .arg(&bin)
        .output()
        .context(
            "cannot run `unshare` (util-linux): this test needs it, and root, to give the \
             server a network namespace with loopback only",
        )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("all SSRF scenarios passed"),
        "`unshare -n -- {}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        bin.display(),
        out.status
    );
    for must in [
        "ok: creation refuses http://[::ffff:0.0.0.0]:",
        "ok: creation refuses http://127.0.0.1:",
        "refused at connect time",
        "ok: the loopback trap saw no connection",
    ] {
        ensure!(stdout.contains(must), "missing {must:?} in:\n{stdout}");
    }
    Ok(())
}
