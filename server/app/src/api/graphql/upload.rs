//! GraphQL multipart requests (the GraphQL multipart request spec) for `uploadInstaller`.
//!
//! async-graphql-axum would buffer each file in memory (or in an anonymous temporary file with
//! its `tempfile` feature); here the request is read part by part instead, and each file part
//! streams straight into the installer file store (`services::files`) as it arrives. The
//! resolver then finds the stored file by the upload's index in [`UploadedFiles`]; the
//! `Upload` value async-graphql sees carries the name and type but no bytes.
//!
//! Only callers who may create software may send multipart requests, and that is checked
//! before any byte of a file is read.

use super::{ClientAddr, authenticate, shared_schema};
use crate::error::ApiError;
use crate::services::App;
use crate::services::files::{FileError, StoredFile};
use async_graphql::UploadValue;
use async_graphql_axum::GraphQLResponse;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Files one multipart request may carry.
pub const MAX_FILES: usize = 1;

/// Largest `operations` part (the query and its variables).
const MAX_OPERATIONS_BYTES: u64 = 1024 * 1024;

/// Largest `map` part.
const MAX_MAP_BYTES: u64 = 64 * 1024;

/// The files of this request, stored, in the order of the request's `uploads`
/// (`Upload::0` indexes both).
pub struct UploadedFiles(pub Vec<UploadedFile>);

pub struct UploadedFile {
    pub stored: StoredFile,
    pub file_name: String,
}

/// In front of `POST /graphql`: multipart requests are answered here, anything else goes on
/// to the ordinary handler (and its 1 MiB body limit).
pub async fn multipart_uploads(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let multipart = req.method() == Method::POST
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            });
    if !multipart {
        return next.run(req).await;
    }
    match handle(app, req).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

/// Who may upload: whoever may manage the catalogue (create software), once any second factor
/// the server requires is set up.
pub fn may_upload(actor: &crate::auth::Actor) -> Result<(), ApiError> {
    if actor.mfa_pending {
        return Err(ApiError::Forbidden(
            "this server requires MSP roles to use a second factor: enroll TOTP first".into(),
        ));
    }
    actor.require_role(crate::permissions::Action::ManageCatalogue)
}

/// A GraphQL-shaped refusal, so that clients read `errors[0].extensions.code` as always.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message.into(), "extensions": { "code": code } }]
    });
    (status, axum::Json(body)).into_response()
}

fn refuse_api(e: &ApiError) -> Response {
    refuse(e.status(), e.code(), e.to_string())
}

fn bad(message: impl Into<String>) -> Response {
    refuse(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

// long: the multipart walk (operations, map, then files) reads best in one piece.
async fn handle(app: Arc<App>, req: Request) -> Result<Response, Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let actor = match authenticate(&app, auth).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return Err(refuse_api(&ApiError::Unauthenticated(
                "sign in: send Authorization: Bearer <token or API key>".into(),
            )));
        }
        Err(e) => return Err(refuse_api(&e)),
    };
    may_upload(&actor).map_err(|e| refuse_api(&e))?;
    let room = app.files.max_bytes() + MAX_OPERATIONS_BYTES + MAX_MAP_BYTES + 64 * 1024;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > room) {
        return Err(too_large(app.files.max_bytes()));
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| bad("a multipart request needs a boundary"))?;
    let limits = multer::SizeLimit::new()
        .whole_stream(room)
        .for_field("operations", MAX_OPERATIONS_BYTES)
        .for_field("map", MAX_MAP_BYTES);
    let mut parts = multer::Multipart::with_constraints(
        req.into_body().into_data_stream(),
        boundary,
        multer::Constraints::new().size_limit(limits),
    );
    let mut request: Option<async_graphql::Request> = None;
    let mut map: Option<HashMap<String, Vec<String>>> = None;
    let mut files: Vec<(String, String, Option<String>, StoredFile)> = Vec::new();
    loop {
        let field = match parts.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&e)),
        };
        match field.name() {
            Some("operations") => {
                let bytes = field.bytes().await.map_err(|e| multipart_error(&e))?;
                let r = serde_json::from_slice(&bytes).map_err(|e| {
                    bad(format!(
                        "operations is not one GraphQL request as JSON: {e}"
                    ))
                })?;
                request = Some(r);
            }
            Some("map") => {
                let bytes = field.bytes().await.map_err(|e| multipart_error(&e))?;
                let m = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("map is not a JSON object of paths: {e}")))?;
                map = Some(m);
            }
            Some(name) => {
                let name = name.to_string();
                if request.is_none() || map.is_none() {
                    return Err(bad("operations and map must come before the files"));
                }
                if files.len() >= MAX_FILES {
                    return Err(bad(format!("at most {MAX_FILES} file per request")));
                }
                let file_name = field.file_name().unwrap_or("upload").to_string();
                let content_type = field.content_type().map(ToString::to_string);
                let stored = app.files.put(field).await.map_err(|e| match e {
                    FileError::TooLarge { limit } => too_large(limit),
                    FileError::Body(m) => bad(format!("the upload broke off: {m}")),
                    FileError::Io(e) => refuse_api(&ApiError::internal(e)),
                })?;
                tracing::info!(sha256 = %stored.sha256, bytes = stored.size, by = %actor.display(), "installer file uploaded");
                files.push((name, file_name, content_type, stored));
            }
            None => {}
        }
    }
    let mut request = request.ok_or_else(|| bad("the operations part is missing"))?;
    let mut map = map.ok_or_else(|| bad("the map part is missing"))?;
    let mut uploaded = Vec::new();
    for (name, file_name, content_type, stored) in files {
        for path in map.remove(&name).unwrap_or_default() {
            let before = request.uploads.len();
            request.set_upload(
                &path,
                UploadValue {
                    filename: file_name.clone(),
                    content_type: content_type.clone(),
                    content: Default::default(),
                },
            );
            if request.uploads.len() > before {
                uploaded.push(UploadedFile {
                    stored: stored.clone(),
                    file_name: file_name.clone(),
                });
            }
        }
    }
    if !map.is_empty() {
        return Err(bad("the map names files the request does not carry"));
    }
    let mut request = request
        .data(app.clone())
        .data(actor)
        .data(UploadedFiles(uploaded));
    if let Some(peer) = peer {
        request = request.data(ClientAddr(peer));
    }
    Ok(GraphQLResponse::from(shared_schema().execute(request).await).into_response())
}

fn too_large(limit: u64) -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the file is larger than the limit of {limit} bytes (--max-upload-mb)"),
    )
}

fn multipart_error(e: &multer::Error) -> Response {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the request is too large: {e}"),
            )
        }
        _ => bad(format!("not a valid multipart request: {e}")),
    }
}
