//! `polls`: a registered fleet polling with `waitSeconds: 0` over 64 keep-alive connections,
//! against a bare axum handler measured in the same run with the same client; and the server's
//! memory per registered agent.
//!
//! Agents are registered through `/agent/v1/enroll` (the real path: store write, flush, token
//! map) and then poll once each, so every one has its in-memory presence entry — an idle,
//! registered agent. RSS is read before and after; the client's token table is allocated and
//! touched before the first reading, so the difference is the server's (plus the allocator's
//! slack).

use crate::report::{Figure, Latencies, note, rss_bytes};
use crate::server::{ENROLL_CONCURRENCY, enroll_fleet};
use anyhow::{Result, bail};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upkeep_agent_protocol as proto;
use upkeep_testkit::{Endpoint, TestServer, http_client};

const S: &str = "polls";
pub const CONNECTIONS: usize = 64;
/// "Hundreds of connections": a second, shorter measurement.
pub const MANY_CONNECTIONS: usize = 256;
/// `uat_` + 43 base64url characters.
const TOKEN_LEN: usize = 47;
const POLL_BODY: &str = r#"{"protocolVersion":1,"waitSeconds":0}"#;

pub struct Size {
    pub agents: usize,
    /// Measuring time per target (split over two interleaved rounds).
    pub measure: Duration,
    /// Further poll-everyone-then-write-back rounds before the steady-state memory reading.
    pub more_writebacks: usize,
}

impl Size {
    pub fn new(quick: bool) -> Size {
        if quick {
            Size {
                agents: 10_000,
                measure: Duration::from_secs(4),
                more_writebacks: 0,
            }
        } else {
            Size {
                agents: 100_000,
                measure: Duration::from_secs(20),
                more_writebacks: 2,
            }
        }
    }
}

/// Agent tokens packed into one buffer allocated before the memory baseline.
pub struct Tokens {
    bytes: Vec<u8>,
    n: usize,
}

impl Tokens {
    fn get(&self, i: usize) -> &str {
        let i = i % self.n;
        std::str::from_utf8(&self.bytes[i * TOKEN_LEN..(i + 1) * TOKEN_LEN]).unwrap_or("")
    }

    /// Room for `n` tokens, written with a non-zero byte so every page is resident before a
    /// memory reading taken after it.
    pub fn table(n: usize) -> Vec<u8> {
        vec![b'x'; n * TOKEN_LEN]
    }

    /// Enrolls as many agents as `table` has room for through `endpoint`, `concurrency` at a
    /// time; returns their tokens and how long enrollment took.
    pub async fn enroll(
        endpoint: &Endpoint,
        key: &str,
        table: Vec<u8>,
        concurrency: usize,
    ) -> Result<(Tokens, Duration)> {
        let n = table.len() / TOKEN_LEN;
        let table = Arc::new(Mutex::new(table));
        let t = table.clone();
        let took = enroll_fleet(endpoint, key, n, concurrency, move |i, r| {
            if r.agent_token.len() == TOKEN_LEN
                && let Ok(mut t) = t.lock()
            {
                t[i * TOKEN_LEN..(i + 1) * TOKEN_LEN].copy_from_slice(r.agent_token.as_bytes());
            }
        })
        .await?;
        let bytes = std::mem::take(&mut *table.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let tokens = Tokens { bytes, n };
        if n > 0 && (tokens.get(0).len() != TOKEN_LEN || tokens.get(0).starts_with('x')) {
            bail!("agent tokens are not {TOKEN_LEN} characters");
        }
        Ok((tokens, took))
    }
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let size = Size::new(quick);
    let mut server = TestServer::start_in_temp_dir(upkeep_testkit::config).await?;
    let admin = server.admin().await?;
    let tenant = server.create_tenant(&admin, "Polls").await?;
    let key = server.enrollment_key(&admin, &tenant).await?;

    let table = Tokens::table(size.agents);
    let rss_before = rss_bytes()?;
    note(S, format!("enrolling {} agents", size.agents));
    let (tokens, took) =
        Tokens::enroll(&server.endpoint(), &key, table, ENROLL_CONCURRENCY).await?;
    let rss_enrolled = rss_bytes()?;
    let tokens = Arc::new(tokens);
    // One poll each: every agent now has its presence entry, as an idle fleet does.
    let client = http_client()?;
    let url = format!("{}/agent/v1/poll", server.url);
    let (once, _) = drive(&client, &url, &tokens, CONNECTIONS, Pass::Each).await?;
    if once.errors > 0 {
        bail!("{} of the first polls failed", once.errors);
    }
    let rss_after = rss_bytes()?;
    // The server writes `lastSeenAt` back for every agent that polled, every 30 s, in one
    // transaction; an idle server has done so.
    note(S, "waiting for the lastSeenAt write-back");
    wait_for_writeback(&server).await?;
    let rss_settled = rss_bytes()?;
    // An idle fleet keeps polling, so every write-back rewrites every computer: a few more
    // rounds show where memory settles.
    for round in 0..size.more_writebacks {
        note(S, format!("poll round and write-back {}", round + 2));
        drive(&client, &url, &tokens, CONNECTIONS, Pass::Each).await?;
        wait_for_writeback(&server).await?;
    }
    let rss_steady = rss_bytes()?;
    let per_agent = |from: u64, to: u64| to.saturating_sub(from) as f64 / size.agents as f64;

    let bare = spawn_bare_server().await?;
    let bare_url = format!("http://{bare}/agent/v1/poll");
    // Warm both (connections, caches), then two interleaved rounds each.
    let warm = Duration::from_millis(500);
    drive(&client, &bare_url, &tokens, CONNECTIONS, Pass::For(warm)).await?;
    drive(&client, &url, &tokens, CONNECTIONS, Pass::For(warm)).await?;
    let mut base = Run::default();
    let mut real = Run::default();
    let half = size.measure / 2;
    for round in 0..2 {
        note(S, format!("round {}: bare handler, then upkeep", round + 1));
        base.add(drive(&client, &bare_url, &tokens, CONNECTIONS, Pass::For(half)).await?);
        real.add(drive(&client, &url, &tokens, CONNECTIONS, Pass::For(half)).await?);
    }
    note(
        S,
        format!("{MANY_CONNECTIONS} connections: bare handler, then upkeep"),
    );
    let mut many_base = Run::default();
    let mut many_real = Run::default();
    many_base.add(
        drive(
            &client,
            &bare_url,
            &tokens,
            MANY_CONNECTIONS,
            Pass::For(half),
        )
        .await?,
    );
    many_real.add(drive(&client, &url, &tokens, MANY_CONNECTIONS, Pass::For(half)).await?);
    let errors = base.errors + real.errors + many_base.errors + many_real.errors;
    if errors > 0 {
        bail!("{errors} polls failed");
    }
    server.stop().await;

    let mut figures = vec![
        Figure::new(S, "registered_agents", size.agents as f64, "agents"),
        Figure::new(
            S,
            "enrollments_per_s",
            size.agents as f64 / took.as_secs_f64(),
            "1/s",
        ),
        Figure::new(
            S,
            "rss_per_agent",
            per_agent(rss_before, rss_settled),
            "bytes",
        ),
        // Of which: enrollment (token map, the computer's records in sled's cache) and the
        // in-memory presence entry its first poll creates.
        Figure::new(
            S,
            "rss_enrolled_per_agent",
            per_agent(rss_before, rss_enrolled),
            "bytes",
        ),
        Figure::new(
            S,
            "rss_presence_per_agent",
            per_agent(rss_enrolled, rss_after),
            "bytes",
        ),
        Figure::new(
            S,
            "rss_writeback_per_agent",
            per_agent(rss_after, rss_settled),
            "bytes",
        ),
    ];
    if size.more_writebacks > 0 {
        figures.push(Figure::new(
            S,
            "rss_per_agent_steady",
            per_agent(rss_before, rss_steady),
            "bytes",
        ));
    }
    figures.extend([
        Figure::new(S, "connections", CONNECTIONS as f64, "connections"),
        Figure::new(S, "polls_per_s", real.rate(), "1/s").against(base.rate()),
        Figure::new(S, "p50_ms", real.lat.quantile_ms(0.50), "ms")
            .against(base.lat.quantile_ms(0.50)),
        Figure::new(S, "p99_ms", real.lat.quantile_ms(0.99), "ms")
            .against(base.lat.quantile_ms(0.99)),
        Figure::new(S, "polls_per_s_256conns", many_real.rate(), "1/s").against(many_base.rate()),
        Figure::new(S, "p99_ms_256conns", many_real.lat.quantile_ms(0.99), "ms")
            .against(many_base.lat.quantile_ms(0.99)),
    ]);
    Ok(figures)
}

/// Waits for the server's next store write. Polls write nothing and nothing else runs here,
/// so that is the `lastSeenAt` write-back (every 30 s).
async fn wait_for_writeback(server: &TestServer) -> Result<()> {
    let writes = server.metric("upkeep_store_writes_total").await?;
    let deadline = Instant::now() + Duration::from_secs(45);
    while server.metric("upkeep_store_writes_total").await? <= writes {
        if Instant::now() > deadline {
            bail!("lastSeenAt was not written back within 45 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The counter moves when the transaction starts; it is done when memory stops growing
    // (two half-second readings within 1 MiB).
    let mut last = rss_bytes()?;
    let mut calm = 0;
    while calm < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_bytes()?;
        calm = if now <= last + (1 << 20) { calm + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

#[derive(Default)]
pub struct Run {
    pub count: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub lat: Latencies,
    /// The status (or transport error) of the first poll that failed.
    pub first_error: Option<String>,
}

impl Run {
    pub fn add(&mut self, (r, elapsed): (Run, Duration)) {
        self.count += r.count;
        self.errors += r.errors;
        self.elapsed += elapsed;
        self.lat.merge(r.lat);
        self.first_error = self.first_error.take().or(r.first_error);
    }
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

pub enum Pass {
    /// Poll every agent once.
    Each,
    /// Poll round-robin for this long.
    For(Duration),
}

/// `conns` workers, each one keep-alive connection, polling one agent after another.
pub async fn drive(
    client: &reqwest::Client,
    url: &str,
    tokens: &Arc<Tokens>,
    conns: usize,
    pass: Pass,
) -> Result<(Run, Duration)> {
    let started = Instant::now();
    let (deadline, limit) = match pass {
        Pass::Each => (None, tokens.n),
        Pass::For(d) => (Some(started + d), usize::MAX),
    };
    let mut workers = Vec::new();
    for w in 0..conns {
        let client = client.clone();
        let url = url.to_string();
        let tokens = tokens.clone();
        workers.push(tokio::spawn(async move {
            let mut run = Run::default();
            let mut i = w;
            while i < limit && deadline.is_none_or(|d| Instant::now() < d) {
                let sent = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(tokens.get(i))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(POLL_BODY)
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                run.lat.record(sent.elapsed());
                if status == reqwest::StatusCode::OK {
                    run.count += 1;
                } else {
                    run.errors += 1;
                    run.first_error.get_or_insert_with(|| status.to_string());
                }
                i += conns;
            }
            Ok::<_, anyhow::Error>(run)
        }));
    }
    let mut total = Run::default();
    for w in workers {
        let r = w.await??;
        total.count += r.count;
        total.errors += r.errors;
        total.lat.merge(r.lat);
        total.first_error = total.first_error.take().or(r.first_error);
    }
    Ok((total, started.elapsed()))
}

/// The reference: the least an axum handler for this route does — check the bearer header,
/// parse the poll, answer "no work".
async fn bare_poll(headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match serde_json::from_slice::<proto::PollRequest>(&body) {
        Ok(_) => axum::Json(proto::PollResponse::default()).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Serves the bare handler on another loopback port, on the server runtime (until the process
/// ends).
async fn spawn_bare_server() -> Result<std::net::SocketAddr> {
    let app = axum::Router::new().route("/agent/v1/poll", axum::routing::post(bare_poll));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    upkeep_testkit::server_runtime().spawn(async move {
        if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
            let _ = axum::serve(l, app).await;
        }
    });
    Ok(addr)
}
