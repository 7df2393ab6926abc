//! `GET /api/v1/sessions/{id}/record`: a finished session's events with the signed head of
//! their chain (`attestation`), as one JSON document that `upkeep-server verify-record` checks
//! offline. Whoever may read the session may export its record.

use crate::api::files::refuse;
use crate::api::graphql::ctx::visible_in;
use crate::services::App;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::TryStreamExt;
use std::sync::Arc;
use upkeep_core::attest::{Attestation, RECORD_FORMAT, SessionRecord};
use upkeep_core::session::{Session, SessionEvent};

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/sessions/{id}/record", get(record))
}

async fn record(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let actor = match crate::api::files::signed_in(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<upkeep_core::domain::Id>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the id is not a session id",
        );
    };
    let not_found = || {
        refuse(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no session {id}"),
        )
    };
    let session = match app.store.get::<Session>(&id).await {
        Ok(Some(s)) if visible_in(actor.scope(), &s) => s,
        Ok(_) => return not_found(),
        Err(e) => return store_error(e),
    };
    let attestation = match app.store.get::<Attestation>(&session.id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return refuse(
                StatusCode::CONFLICT,
                "NOT_FINISHED",
                format!(
                    "session {id} has no signed record: it is {:?} (records are signed when a session ends)",
                    session.status
                ),
            );
        }
        Err(e) => return store_error(e),
    };
    let events: Vec<SessionEvent> = match app.events_after(id, 0).try_collect().await {
        Ok(e) => e,
        Err(e) => return store_error(e),
    };
    let events = events
        .into_iter()
        .take_while(|e| e.sequence <= attestation.last_sequence)
        .collect();
    let body = SessionRecord {
        format: RECORD_FORMAT.to_string(),
        attestation,
        events,
    };
    let mut r = Json(body).into_response();
    if let Ok(v) = format!("attachment; filename=\"session-{id}.json\"").parse() {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

fn store_error(e: upkeep_store::StoreError) -> Response {
    crate::api::files::api_error(&crate::error::ApiError::from(e))
}
