//! Installer files over HTTP: `POST /api/v1/files` (a user's bearer token, the raw body is the
//! file, streamed into `services::files`) and the byte ranges that `GET /agent/v1/files/{sha256}`
//! (in `api::agent`, which owns the agent protocol) answers with.

use crate::error::ApiError;
use crate::services::App;
use crate::services::files::FileError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/files", post(upload))
}

/// The user or API key a REST request is signed in as, or the 401 (or error) to answer.
pub async fn signed_in(
    app: &Arc<App>,
    headers: &HeaderMap,
) -> Result<crate::auth::Actor, Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match crate::api::graphql::authenticate(app, auth).await {
        // As GraphQL holds it (`Ctx::new`): an MSP user who must still enroll TOTP reaches
        // nothing but their own account, so a password alone opens no REST route either.
        Ok(Some(a)) if a.mfa_pending => Err(refuse(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "this server requires MSP roles to use a second factor: enroll TOTP first (enrollTotp, then confirmTotp)",
        )),
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "sign in: send Authorization: Bearer <token or API key>",
        )),
        Err(e) => Err(api_error(&e)),
    }
}

/// The JSON error shape of the REST routes (`{"code", "error"}`, as the agent routes answer).
pub fn refuse(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": code, "error": msg.into() });
    (status, Json(body)).into_response()
}

/// An [`ApiError`] as a REST answer: its status and code in the JSON error shape, and
/// `Retry-After` on a 429 (`THROTTLED`).
pub fn api_error(e: &ApiError) -> Response {
    let mut r = refuse(e.status(), e.code(), e.to_string());
    if e.status() == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    r
}

/// `POST /api/v1/files`: who may create software may upload; the body is the file, read as it
/// arrives and never held whole; answers `{"sha256", "size"}` (201 when new, 200 when the same
/// bytes were stored already).
async fn upload(State(app): State<Arc<App>>, req: Request) -> Response {
    let actor = match signed_in(&app, req.headers()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(e) = crate::api::graphql::upload::may_upload(&actor) {
        return api_error(&e);
    }
    if let Some(r) = too_large(&app, req.headers()) {
        return r;
    }
    let body = req.into_body().into_data_stream();
    match app.files.put(body).await {
        Ok(f) => {
            let status = if f.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            tracing::info!(sha256 = %f.sha256, bytes = f.size, by = %actor.display(), "installer file uploaded");
            let body = serde_json::json!({ "sha256": f.sha256, "size": f.size });
            (status, Json(body)).into_response()
        }
        Err(e) => file_error(&e),
    }
}

/// 413 at once when the declared length is over the limit (the body is not read).
pub fn too_large(app: &App, headers: &HeaderMap) -> Option<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())?;
    (declared > app.files.max_bytes()).then(|| {
        file_error(&FileError::TooLarge {
            limit: app.files.max_bytes(),
        })
    })
}

/// An internal error as the REST routes answer it (logged once under an id).
#[track_caller]
pub fn internal(detail: impl std::fmt::Display) -> Response {
    api_error(&ApiError::internal(detail))
}

pub fn file_error(e: &FileError) -> Response {
    match e {
        FileError::TooLarge { .. } => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            e.to_string(),
        ),
        FileError::Body(_) => refuse(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()),
        FileError::Io(_) => api_error(&ApiError::internal(e)),
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No header, or one this server does not take (suffix ranges, lists), which RFC 9110
    /// lets it ignore: the whole file.
    Whole,
    /// Bytes `first..=last` (`bytes=N-` or `bytes=N-M`).
    Part(u64, u64),
    /// A start at or beyond the end: 416.
    Unsatisfiable,
}

/// The [`Range`] a header value asks of a file of `size` bytes.
pub fn parse_range(value: Option<&str>, size: u64) -> Range {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let Ok(first) = first.trim().parse::<u64>() else {
        return Range::Whole;
    };
    let last = match last.trim() {
        "" => size.saturating_sub(1),
        l => match l.parse::<u64>() {
            Ok(l) if l >= first => l.min(size.saturating_sub(1)),
            _ => return Range::Whole,
        },
    };
    if first >= size {
        return Range::Unsatisfiable;
    }
    Range::Part(first, last)
}

/// The file at `path`, whole (200) or the range the request asks for (206 with
/// `Content-Range`), streamed from disk.
pub async fn serve(path: &std::path::Path, headers: &HeaderMap) -> std::io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match parse_range(range, size) {
        Range::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last),
        Range::Whole => (StatusCode::OK, 0, size.saturating_sub(1)),
        Range::Unsatisfiable => {
            let mut r = refuse(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_NOT_SATISFIABLE",
                format!("the file has {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let len = if size == 0 { 0 } else { last - first + 1 };
    file.seek(std::io::SeekFrom::Start(first)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::{Range, parse_range};

    #[test]
    fn ranges_from_an_offset_resume_and_odd_ones_get_the_whole_file() {
        assert_eq!(parse_range(None, 10), Range::Whole);
        assert_eq!(parse_range(Some("bytes=4-"), 10), Range::Part(4, 9));
        assert_eq!(parse_range(Some("bytes=0-"), 10), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=2-5"), 10), Range::Part(2, 5));
        assert_eq!(parse_range(Some("bytes=2-50"), 10), Range::Part(2, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-3"), 10), Range::Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Range::Whole);
        assert_eq!(parse_range(Some("items=1-"), 10), Range::Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Range::Unsatisfiable);
    }
}
