//! `/console`: the operator console, static files built into the binary.

use crate::services::App;
use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use std::sync::Arc;

const INDEX: &str = include_str!("../../console/index.html");

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/console", get(index)).route(
        "/",
        get(|| async { axum::response::Redirect::to("/console") }),
    )
}

async fn index() -> impl IntoResponse {
    (
        [(
            "content-security-policy",
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:",
        )],
        Html(INDEX),
    )
}
