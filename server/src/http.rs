//! The HTTP surface: routes, middleware, and server start-up.

use crate::app::App;
use crate::auth::Keys;
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::domain::*;
use crate::graphql;
use crate::mail::render::Templates;
use crate::store::Store;
use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    let mut gql = Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql).post(graphql::graphql_handler),
        )
        .layer(DefaultBodyLimit::max(1024 * 1024))
        // `DefaultBodyLimit` only binds axum's own extractors; async-graphql-axum reads the
        // body stream itself, so without this a request body of any size was buffered.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024))
        .layer(axum::middleware::map_response(graphql::errors_as_graphql));
    if !app.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = app
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
            .collect();
        gql = gql.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                ])
                .max_age(std::time::Duration::from_secs(600)),
        );
    }
    let mut r = Router::new()
        .merge(gql)
        .route("/graphql/ws", get(graphql::ws_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::render))
        .merge(crate::agents::routes())
        .merge(crate::postpone::routes())
        .merge(crate::console::routes());
    if app.clock.settable {
        r = r.route("/debug/clock", post(set_clock));
    }
    r.fallback(|| async {
        crate::agents::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    })
    .layer(axum::middleware::from_fn(close_if_body_unread))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::metrics::track,
    ))
    .with_state(app)
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

#[derive(serde::Deserialize)]
struct ClockBody {
    now: Time,
}

/// Test clocks only: moves the server's clock (`{"now": "2026-03-08T06:00:00Z"}`).
async fn set_clock(State(app): State<Arc<App>>, Json(b): Json<ClockBody>) -> impl IntoResponse {
    app.clock.set(b.now);
    app.credentials_may_have_ended();
    Json(serde_json::json!({ "now": app.clock.now() }))
}

/// A running server (tests hold it to learn the address and to stop it).
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful stop: background loops end, held polls answer, sled is flushed.
    pub async fn stop(self) {
        self.app.shutdown.trigger();
        let _ = self.task.await;
        let _ = self.app.store.flush().await;
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
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let secret = crate::auth::new_secret("").into_bytes();
            let tmp = config.data_dir.join("jwt-secret.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(&secret)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Restricts `dir` and everything under it to the owner: directories 0700, files 0600,
/// whatever the umask they were made with (the data dir holds password hashes, webhook
/// secrets, the JWT key and live postpone links). Symbolic links are left alone. Returns how
/// many paths were looser.
pub fn tighten_permissions(dir: &std::path::Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        // The data dir itself may be a link to where the data lives; links inside are not
        // followed.
        let meta = if path == dir {
            std::fs::metadata(&path)?
        } else {
            std::fs::symlink_metadata(&path)?
        };
        let want = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
            0o700
        } else if meta.file_type().is_symlink() {
            continue;
        } else {
            0o600
        };
        if meta.permissions().mode() & 0o777 != want {
            if meta.permissions().mode() & 0o077 != 0 {
                loose += 1;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
        }
    }
    Ok(loose)
}

/// Opens the store, recovers sessions, starts background loops and serves. Returns once the
/// listener is bound.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    crate::install_tls_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let loose = tighten_permissions(&config.data_dir).with_context(|| {
        format!(
            "cannot restrict the data dir {} to its owner",
            config.data_dir.display()
        )
    })?;
    if loose > 0 {
        tracing::warn!(dir = %config.data_dir.display(), paths = loose, "the data dir was readable by others; tightened to 0700 (directories) and 0600 (files)");
    }
    let probe = config.data_dir.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data dir {} is not writable", config.data_dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let templates =
        Templates::load(config.templates_dir.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = jwt_secret(&config)?;
    let store = Store::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    // sled creates its files with the process's umask.
    tighten_permissions(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let clock = match config.test_clock {
        Some(t) => Clock::starting_at(t),
        None => Clock::system(),
    };
    let app = Arc::new(App::new(
        store,
        config.clone(),
        clock,
        Keys::new(&secret),
        templates,
        public_url,
    ));
    bootstrap_admin(&app).await?;
    let tokens = app.agents.load_tokens(&app.store)?;
    let recovered = app.recover_sessions().await?;
    tracing::info!(agents = tokens, sessions = recovered, "store loaded");
    tokio::spawn(app.clone().run_timers());
    tokio::spawn(app.clone().run_presence());
    tokio::spawn(app.clone().run_scheduler());
    tokio::spawn(app.clone().run_mailer());
    tokio::spawn(app.clone().run_webhooks());
    tokio::spawn(crate::backup::serve_socket(app.clone()));
    {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => app.write_api_key_usage(),
                    _ = app.shutdown.wait() => { app.write_api_key_usage(); return; }
                }
            }
        });
    }
    let router = router(app.clone());
    let shutdown = app.shutdown.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.wait().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    tracing::info!("listening on http://{addr}");
    Ok(Running { addr, app, task })
}

async fn bootstrap_admin(app: &App) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&app.config.admin_email, &app.config.admin_password)
    else {
        return Ok(());
    };
    if app.store.count::<User>() > 0 {
        return Ok(());
    }
    let email = email.trim().to_lowercase();
    anyhow::ensure!(
        email.parse::<lettre::Address>().is_ok(),
        "--admin-email '{email}' is not an e-mail address"
    );
    anyhow::ensure!(
        password.chars().count() >= 10,
        "--admin-password must be at least 10 characters"
    );
    let user = User {
        id: Id::new(),
        email: email.clone(),
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
    app.create_user(user)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(email, "created the first MSP admin");
    Ok(())
}
