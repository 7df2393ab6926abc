//! The HTTP surface: routes, middleware, and server start-up.

use crate::api::graphql;
use crate::auth::Keys;
use crate::clock::Clock;
use crate::config::PublicUrl;
use crate::config::ServeConfig;
use crate::mail::render::Templates;
use crate::services::App;
use crate::services::cluster::Bus;
use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use upkeep_core::domain::*;

pub fn router(app: Arc<App>) -> Router {
    let mut gql = Router::new()
        .route(
            "/graphql",
            get(graphql::graphql_handler).post(graphql::graphql_handler),
        )
        .layer(axum::Extension(Arc::new(
            graphql::persisted::PersistedQueries::default(),
        )))
        .layer(axum::middleware::map_response(graphql::vary_accept))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        // `DefaultBodyLimit` only binds axum's own extractors; async-graphql-axum reads the
        // body stream itself, so without this a request body of any size was buffered.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024))
        .layer(axum::middleware::map_response(graphql::errors_as_graphql))
        // Outside the 1 MiB limit: multipart uploads stream their files into the file store.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            graphql::upload::multipart_uploads,
        ));
    if let Some(cors) = cors_layer(&app.config) {
        gql = gql.layer(cors);
    }
    let mut r = Router::new()
        .merge(gql)
        .route("/graphql/ws", get(graphql::ws_handler))
        .merge(crate::api::graphiql::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::api::metrics::render))
        .merge(crate::api::agent::routes())
        .merge(crate::api::files::routes())
        .merge(crate::api::records::routes())
        .merge(crate::api::reports::routes())
        .merge(crate::api::postpone::routes())
        .merge(crate::api::console::routes());
    if app.clock.settable {
        r = r.route("/debug/clock", post(set_clock));
    }
    r.fallback(|| async {
        crate::api::agent::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    })
    .layer(axum::middleware::from_fn(close_if_body_unread))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        body_deadline,
    ))
    // Inside `track`, so a panic counts as the 500 it answers.
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_answer,
    ))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::api::metrics::track,
    ))
    .with_state(app)
}

/// Request headers a browser on another origin may always send: the credential and the
/// body's type, and the ones Apollo Client adds to identify itself.
pub const CORS_DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "apollographql-client-name",
    "apollographql-client-version",
];

/// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
pub const CORS_MAX_AGE_SECONDS: u64 = 600;

/// `/graphql` for portals on other origins (`--cors-origins`, `--cors-headers`): the listed
/// origins (already normalised by the flag's parser), or any with `*`; never credentials (the
/// API takes bearer tokens, not cookies).
fn cors_layer(config: &ServeConfig) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if config.cors_origins.is_empty() {
        return None;
    }
    let origins = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let headers: Vec<axum::http::HeaderName> = CORS_DEFAULT_HEADERS
        .iter()
        .copied()
        .chain(config.cors_headers.iter().map(String::as_str))
        .filter_map(|h| axum::http::HeaderName::from_bytes(h.as_bytes()).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(headers)
            .max_age(std::time::Duration::from_secs(CORS_MAX_AGE_SECONDS)),
    )
}

/// `--cors-origins '*'` allows every origin, so it stands alone.
fn check_cors(config: &ServeConfig) -> anyhow::Result<()> {
    if config.cors_origins.len() > 1 && config.cors_origins.iter().any(|o| o == "*") {
        anyhow::bail!("--cors-origins: '*' allows every origin; give it alone or list origins");
    }
    Ok(())
}

/// A handler that panicked (a bug) answers 500 like any internal error: logged once under an
/// error id, and the client sees only the id. The body carries both shapes, the agent
/// protocol's (`code`, `message`) and GraphQL's (`errors`), so either kind of client reads it.
fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::http::Response<String> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    let e = crate::error::ApiError::internal(format!("handler panicked: {what}"));
    let body = serde_json::json!({
        "code": e.code(),
        "message": e.to_string(),
        "errors": [{"message": e.to_string(), "extensions": {"code": e.code()}}],
    });
    let mut r = axum::http::Response::new(body.to_string());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// When a handler answers without reading the whole request body (a refusal before the body,
/// a body-less route sent a body), the connection still holds the unread rest: it is closed
/// after the answer and the answer says `Connection: close`, so a client does not reuse it and
/// see its next request fail.
async fn close_if_body_unread(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if req.body().is_end_stream() || req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(TrackEnd {
        inner: body,
        ended: ended.clone(),
    });
    let mut resp = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !ended.load(std::sync::atomic::Ordering::Acquire) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

/// A request body that records whether it was read to its end.
struct TrackEnd {
    inner: axum::body::Body,
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for TrackEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, std::sync::atomic::Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body must arrive within `--body-read-timeout-seconds` of its headers; one that
/// trickles in slower is cut: the handler sees its body fail, and the client is answered 408
/// and the connection closed. Only the client's sending is timed: once the body is read, a
/// handler may take as long as it needs (agents' long polls are held for many seconds).
async fn body_deadline(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if req.body().is_end_stream() || req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limit = std::time::Duration::from_secs(app.config.body_read_timeout_seconds.into());
    let upload = is_upload(&req);
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(Deadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(limit)),
        timed_out: timed_out.clone(),
        limit,
        progress: upload.then_some(0),
    });
    let resp = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !timed_out.load(std::sync::atomic::Ordering::Acquire) {
        return resp;
    }
    let mut resp = crate::api::agent::error(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        format!(
            "the request body did not arrive within {} s",
            limit.as_secs()
        ),
    );
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    resp
}

/// Bytes an upload must deliver within each `--body-read-timeout-seconds` to keep going: a
/// large installer over a slow line takes as long as it needs, a trickle does not.
const UPLOAD_PROGRESS_BYTES: u64 = 64 * 1024;

/// Installer uploads (`POST /api/v1/files`, GraphQL multipart requests) get a deadline that
/// moves with progress; every other body must arrive whole within the limit.
fn is_upload(req: &axum::extract::Request) -> bool {
    req.uri().path() == "/api/v1/files"
        || req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            })
}

/// A request body that fails once its time is up while it is still waiting for data.
struct Deadline {
    inner: axum::body::Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<std::sync::atomic::AtomicBool>,
    limit: std::time::Duration,
    /// Uploads: bytes since the deadline last moved; every [`UPLOAD_PROGRESS_BYTES`] moves it
    /// to `limit` from now.
    progress: Option<u64>,
}

impl http_body::Body for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(seen), std::task::Poll::Ready(Some(Ok(frame)))) = (self.progress, &r) {
            let seen = seen + frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen >= UPLOAD_PROGRESS_BYTES {
                let at = tokio::time::Instant::now() + self.limit;
                self.sleep.as_mut().reset(at);
                self.progress = Some(0);
            } else {
                self.progress = Some(seen);
            }
        }
        if r.is_pending() && self.sleep.as_mut().poll(cx).is_ready() {
            self.timed_out
                .store(true, std::sync::atomic::Ordering::Release);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(
                "the request body did not arrive in time",
            ))));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(serde::Deserialize)]
struct ClockBody {
    now: Time,
}

/// Test clocks only: moves the server's clock (`{"now": "2026-03-08T06:00:00Z"}`).
/// How long `/healthz` waits for the database in cluster mode.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /healthz`: "ok". In cluster mode (PostgreSQL) only when a cheap read of the store
/// answers within [`HEALTH_TIMEOUT`]; otherwise 503 with a JSON body (the cause is logged). The embedded
/// store is in this process: nothing to ask.
async fn healthz(State(app): State<Arc<App>>) -> axum::response::Response {
    match unhealthy(&app).await {
        None => "ok".into_response(),
        Some(answer) => answer,
    }
}

/// `GET /readyz`: like `/healthz`, and 503 `STARTING` until start-up work (recovering
/// sessions, jobs and agent tokens) is done. A load balancer sends traffic only to ready
/// replicas.
async fn readyz(State(app): State<Arc<App>>) -> axum::response::Response {
    if let Some(answer) = unhealthy(&app).await {
        return answer;
    }
    if !app.ready.load(std::sync::atomic::Ordering::Acquire) {
        return unavailable("STARTING", "the server is still starting");
    }
    "ok".into_response()
}

/// `None` when the parts this process depends on answer; else the 503 to send. The embedded
/// store is in this process: nothing to ask.
async fn unhealthy(app: &App) -> Option<axum::response::Response> {
    if let Some(bus) = &app.cluster
        && !bus.connected()
    {
        tracing::warn!("health check: NATS is unreachable");
        return Some(unavailable(
            "NATS_UNAVAILABLE",
            "NATS is unreachable (see the server log)",
        ));
    }
    // The embedded store is in this process: nothing more to ask.
    app.config.database_url.as_ref()?;
    let read = app.store.read(upkeep_store::Space::Meta, b"schema_version");
    let why = match tokio::time::timeout(HEALTH_TIMEOUT, read).await {
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", HEALTH_TIMEOUT.as_secs()),
    };
    // The cause goes to the log only: /healthz answers anyone.
    tracing::warn!(error = %why, "health check: the database is unreachable");
    Some(unavailable(
        "STORE_UNAVAILABLE",
        "the database is unreachable (see the server log)",
    ))
}

fn unavailable(code: &str, message: &str) -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "status": "unavailable",
            "code": code,
            "message": message,
        })),
    )
        .into_response()
}

async fn set_clock(State(app): State<Arc<App>>, Json(b): Json<ClockBody>) -> impl IntoResponse {
    app.clock.set(b.now);
    app.credentials_may_have_ended();
    Json(serde_json::json!({ "now": app.clock.now() }))
}

/// A running server (tests hold it to learn the address and to stop it).
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// Supervises the accept loop and every background loop (see [`supervise`]).
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful stop: background loops end, held polls answer, sled is flushed.
    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = self.task.await;
        let _ = self.app.store.flush().await;
    }

    /// Stops the way SIGKILL would, as far as one process can do it to a server inside it
    /// (tests): every supervised task is aborted where it stands — nothing is flushed, nothing
    /// recorded, a lease it held stays held — then the token stops what lives outside them
    /// (open connections, held polls).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        self.app.shutdown.cancel();
    }
}

/// Runs the server's long-lived tasks in one `JoinSet` until `app.shutdown` is cancelled and
/// all of them have ended. Each loop ends on the token by itself; one that ends early (a
/// panic, or returning) is logged by name, and the others keep serving.
async fn supervise(
    app: Arc<App>,
    tasks: Vec<(&'static str, futures_util::future::BoxFuture<'static, ()>)>,
) {
    let mut set = tokio::task::JoinSet::new();
    for (name, task) in tasks {
        set.spawn(async move {
            task.await;
            name
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(name) if !app.shutdown.is_cancelled() => {
                tracing::error!(task = name, "background task ended before shutdown");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "background task panicked"),
        }
    }
}

/// Reads or creates the JWT secret in the data dir (mode 0600).
fn jwt_secret(config: &ServeConfig) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &config.jwt_secret {
        anyhow::ensure!(s.len() >= 32, "--jwt-secret must be at least 32 characters");
        return Ok(s.as_bytes().to_vec());
    }
    let path = config.data_dir.join("jwt-secret");
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 32 => Ok(b),
        Ok(_) => anyhow::bail!(
            "{} is too short; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = crate::auth::new_secret("").into_bytes();
            crate::datadir::write_private(&path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn check_writable(dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Opens the store, recovers sessions, starts background loops and serves. Returns once the
/// listener is bound.
// long: start-up in its order (data dir, secrets, store, app, background tasks); split, the
// order would be harder to see.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let begun = std::time::Instant::now();
    crate::install_tls_provider();
    check_cors(&config)?;
    anyhow::ensure!(
        config.database_url.is_some() == config.nats_url.is_some(),
        "cluster mode takes --database-url and --nats-url together (one node: neither)"
    );
    prepare_data_dir(&config.data_dir)?;
    let templates =
        Templates::load(config.templates_dir.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = match &config.database_url {
        Some(url) => upkeep_store::open_postgres(url)
            .await
            .context("cannot open the PostgreSQL store (--database-url)")?,
        None => upkeep_store::open_embedded(&config.data_dir)
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    };
    tracing::info!(
        engine = store.engine(),
        ms = begun.elapsed().as_millis() as u64,
        "store opened"
    );
    // Generated keys: in the data dir, or with PostgreSQL in the store, shared by replicas.
    let secret = match (&config.jwt_secret, &config.database_url) {
        (None, Some(_)) => crate::secrets::shared::jwt_secret(&store, &config.data_dir).await?,
        _ => jwt_secret(&config)?,
    };
    // sled creates its files with the process's umask.
    crate::datadir::tighten_permissions(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = match config.public_url.clone() {
        Some(u) => u,
        None => PublicUrl::parse(&format!("http://{addr}")).map_err(|e| anyhow::anyhow!(e))?,
    };
    let clock = match config.test_clock {
        Some(t) => Clock::starting_at(t),
        None => Clock::system(),
    };
    // SECRET parameters' key (`secret.key`), made at the first start.
    let sealing = match &config.database_url {
        Some(_) => crate::secrets::shared::sealing_key(&store, &config.data_dir).await?,
        None => crate::secrets::SecretBox::load_or_create(&config.data_dir)?,
    };
    // The key that signs session records (`attestation.key`), made at the first start.
    let attestation = match &config.database_url {
        Some(_) => crate::attestation::Signer::shared(&store, &config.data_dir).await?,
        None => crate::attestation::Signer::load_or_create(&config.data_dir)?,
    };
    let cluster = match &config.nats_url {
        Some(url) => Some(Arc::new(
            Bus::connect(url, &config.nats_prefix, crate::ids::fresh()).await?,
        )),
        None => None,
    };
    // Other replicas' notes from now on, read once the state below is loaded.
    let inbox = match &cluster {
        Some(bus) => Some(bus.subscribe().await?),
        None => None,
    };
    let app = Arc::new(
        App::new(
            store,
            config.clone(),
            clock,
            Keys::new(&secret),
            templates,
            public_url,
            crate::services::ServerKeys {
                sealing,
                attestation,
            },
        )
        .with_cluster(cluster),
    );
    bootstrap_admin(&app).await?;
    if let Some(dir) = &config.library {
        import_library(&app, dir).await?;
    }
    let t = std::time::Instant::now();
    let tokens = app.agents.load_tokens(&app.store).await?;
    let tokens_ms = t.elapsed().as_millis() as u64;
    if app.cluster.is_none() {
        app.agents.reserve_presence();
    }
    let recovered = app.recover_sessions().await?;
    tracing::info!(
        agents = tokens,
        tokens_ms,
        sessions = recovered,
        ms = begun.elapsed().as_millis() as u64,
        "store loaded"
    );
    let usage = {
        let app = app.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => app.accounts.write_api_key_usage().await,
                    _ = app.shutdown.cancelled() => { app.accounts.write_api_key_usage().await; return; }
                }
            }
        }
    };
    let router = router(app.clone());
    let mut tasks: Vec<(&'static str, futures_util::future::BoxFuture<'static, ()>)> = vec![
        ("timers", Box::pin(app.clone().run_timers())),
        ("presence", Box::pin(app.clone().run_presence())),
        (
            "scheduler",
            Box::pin(app.scheduler.clone().run(Arc::new(app.clone()))),
        ),
        (
            "rollouts",
            Box::pin(app.rollouts.clone().run(Arc::new(app.clone()))),
        ),
        ("outbox", Box::pin(app.outbox.clone().run())),
        ("webhooks", Box::pin(app.webhooks.clone().run())),
        (
            "backup socket",
            Box::pin(crate::api::backup::serve_socket(app.clone())),
        ),
        ("api key usage", Box::pin(usage)),
        (
            "installer file gc",
            Box::pin(crate::services::files::run_gc(app.clone())),
        ),
        ("http", Box::pin(serve(listener, router, app.clone()))),
    ];
    if let (Some(bus), Some(inbox)) = (app.cluster.clone(), inbox) {
        tasks.push((
            "cluster sender",
            Box::pin(bus.run_sender(app.shutdown.clone())),
        ));
        tasks.push((
            "cluster inbox",
            Box::pin(app.clone().run_cluster_inbox(inbox)),
        ));
    }
    app.ready.store(true, std::sync::atomic::Ordering::Release);
    let task = tokio::spawn(supervise(app.clone(), tasks));
    tracing::info!("listening on http://{addr}");
    Ok(Running { addr, app, task })
}

/// The data dir exists, is its owner's only (tightened with a warning when it was not) and
/// takes writes.
fn prepare_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let loose = crate::datadir::tighten_permissions(dir).with_context(|| {
        format!(
            "cannot restrict the data dir {} to its owner",
            dir.display()
        )
    })?;
    if loose > 0 {
        tracing::warn!(dir = %dir.display(), paths = loose, "the data dir was readable by others; tightened to 0700 (directories) and 0600 (files)");
    }
    check_writable(dir)
}

/// `--library DIR`: the library imported into the MSP-level catalogue before anything serves.
async fn import_library(app: &App, dir: &std::path::Path) -> anyhow::Result<()> {
    let lib = crate::services::library::Library::load(dir)?;
    let report = crate::services::library::import(
        &app.store,
        &lib,
        None,
        app.clock.now(),
        &crate::ids::fresh,
    )
    .await?;
    tracing::info!(dir = %dir.display(), %report, "library imported");
    Ok(())
}

/// The accept loop: every connection is HTTP/1 with a header-read timeout (which also ends
/// keep-alive connections idle that long: hyper starts the timer as soon as a connection waits
/// for its next request), WebSocket upgrades, and a slot out of `--max-connections` held for
/// the connection's whole life (an upgraded WebSocket included). When no slot is free a new
/// connection is closed at once. On shutdown the listener closes, idle connections close,
/// and requests in flight finish before this returns.
async fn serve(listener: tokio::net::TcpListener, router: Router, app: Arc<App>) {
    let max = app.config.max_connections as usize;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(
            app.config.header_read_timeout_seconds.into(),
        ))
        .keep_alive(true);
    // Every connection task holds a sender; when all are gone, every connection has ended.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut refusals = Refusals::default();
    let trusted: Arc<[crate::proxy::Cidr]> = app.config.trusted_proxies.clone().into();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(&e, &app.shutdown).await;
                    continue;
                }
            },
            _ = app.shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refusals.note(max);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(Counted {
            stream,
            _slot: slot,
        });
        let service = ConnService {
            router: router.clone(),
            peer,
            trusted: trusted.clone(),
        };
        let conn = http1.serve_connection(io, service).with_upgrades();
        let shutdown = app.shutdown.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// Errors from `accept` that concern one connection are skipped; others (out of file
/// descriptors) are logged and retried after a pause rather than spinning.
async fn accept_failed(e: &std::io::Error, shutdown: &tokio_util::sync::CancellationToken) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections");
    tokio::select! {
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Connections closed because `--max-connections` were open: one warning a minute at most,
/// with how many were refused since the last one.
#[derive(Default)]
struct Refusals {
    since_warning: u64,
    warned_at: Option<std::time::Instant>,
}

impl Refusals {
    /// Counts one refusal; true when it logged the warning.
    fn note(&mut self, max: usize) -> bool {
        self.since_warning += 1;
        if self
            .warned_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(60))
        {
            return false;
        }
        tracing::warn!(
            max_connections = max,
            refused = self.since_warning,
            "connection limit reached: new connections are closed at once (raise --max-connections if this is legitimate load)"
        );
        self.since_warning = 0;
        self.warned_at = Some(std::time::Instant::now());
        true
    }
}

/// A client's TCP stream with its connection slot, which is given back when the stream is
/// dropped: after the last response, or when an upgraded WebSocket closes.
struct Counted {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: each request carries the client's address as
/// `ConnectInfo` (login throttling and enrollment read it): the peer, or behind a trusted proxy
/// the address it forwarded (`crate::proxy`).
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    trusted: Arc<[crate::proxy::Cidr]>,
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        <Router as tower_service::Service<axum::http::Request<hyper::body::Incoming>>>::Future;

    fn call(&self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let client = crate::proxy::client_addr(&self.trusted, self.peer, req.headers());
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(client));
        // `Router` is always ready; `poll_ready` need not be called first.
        tower_service::Service::call(&mut self.router.clone(), req)
    }
}

async fn bootstrap_admin(app: &App) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&app.config.admin_email, &app.config.admin_password)
    else {
        return Ok(());
    };
    if app.store.count::<User>().await? > 0 {
        return Ok(());
    }
    let email = upkeep_core::types::EmailAddress::parse(email)
        .map_err(|e| anyhow::anyhow!("--admin-email: {e}"))?
        .to_lowercase();
    anyhow::ensure!(
        password.chars().count() >= 10,
        "--admin-password must be at least 10 characters"
    );
    let user = User {
        id: crate::ids::fresh(),
        email: email.clone().into(),
        password_hash: crate::auth::hash_password(password)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        role: UserRole::MspAdmin,
        tenant_id: None,
        created_at: app.clock.now(),
        disabled: false,
        token_generation: 0,
        totp: Default::default(),
    };
    app.accounts
        .create_user(user)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(email = email.as_str(), "created the first MSP admin");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Refusals;

    /// A panicking handler answers a JSON 500 naming only an error id, through the layer the
    /// router uses; the panic's text stays in the log.
    #[tokio::test]
    async fn a_panic_answers_500_with_an_error_id_only() {
        use super::*;
        use tower::ServiceExt;
        async fn boom() -> &'static str {
            panic!("secret detail")
        }
        let router: Router = Router::new().route("/boom", get(boom)).layer(
            tower_http::catch_panic::CatchPanicLayer::custom(panic_answer),
        );
        let req = axum::http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], "INTERNAL");
        assert_eq!(body["errors"][0]["extensions"]["code"], "INTERNAL");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("internal error (id "), "{message}");
        assert!(
            !bytes.windows(6).any(|w| w == b"secret"),
            "the panic text leaked"
        );
    }

    #[test]
    fn a_full_house_warns_once_then_counts_quietly() {
        let mut r = Refusals::default();
        assert!(r.note(5), "the first refusal is logged");
        assert!(!r.note(5), "the next ones within a minute are not");
        assert!(!r.note(5));
        assert_eq!(r.since_warning, 2, "and are counted for the next warning");
    }
}
