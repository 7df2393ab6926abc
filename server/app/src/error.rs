//! API errors: one enum, converted once at the edge: into GraphQL `extensions.code` by
//! [`add_codes`], into an HTTP status by [`ApiError::status`].
//!
//! Internal errors (store failures, a blocking task that panicked, anything the client cannot
//! act on) are logged once, where they are made ([`ApiError::internal`]), under a short random
//! id; the client sees only that id. Their detail (store paths, sled messages) never leaves the
//! server.

use axum::http::StatusCode;
use upkeep_core::engine::EngineError;
use upkeep_store::{StoreError, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    /// The password was right (or not checked yet) but the TOTP code is missing or wrong:
    /// `UNAUTHENTICATED` with `extensions.mfaRequired: true`, so a client knows to ask for it.
    #[error("{0}")]
    MfaRequired(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    /// The session engine refused a command: `CONFLICT` when the session's state is in the
    /// way, else `BAD_USER_INPUT` on the field `id` (the session may never do it). Kept typed
    /// so that callers (the postpone page) choose their answer by variant, not by text.
    #[error("{}", refused_text(.0))]
    Refused(EngineError),
    /// The server is doing as much of this as it will at once: retry later (`THROTTLED`,
    /// HTTP 429).
    #[error("{0}")]
    Busy(String),
    /// Only the id is kept: the detail was logged by [`ApiError::internal`].
    #[error("{0}")]
    Internal(InternalError),
}

/// What a client learns of an internal error: the id under which the server logged it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal error (id {id}); the server log has the details")]
pub struct InternalError {
    id: String,
}

impl InternalError {
    /// The `error_id` of the server log line with the detail.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn refused_text(e: &EngineError) -> String {
    if e.is_conflict() {
        e.to_string()
    } else {
        format!("{REFUSED_FIELD}: {e}")
    }
}

/// The field a non-conflict engine refusal is charged to: the session's id.
const REFUSED_FIELD: &str = "id";

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) | ApiError::MfaRequired(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::BadInput { .. } => "BAD_USER_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Refused(e) if e.is_conflict() => "CONFLICT",
            ApiError::Refused(_) => "BAD_USER_INPUT",
            ApiError::Busy(_) => "THROTTLED",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    /// The HTTP status of the same answer, for the routes outside GraphQL.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) | ApiError::MfaRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadInput { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Refused(e) if e.is_conflict() => StatusCode::CONFLICT,
            ApiError::Refused(_) => StatusCode::BAD_REQUEST,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The input field the error is about (`extensions.field`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadInput { field, .. } => Some(field),
            ApiError::Refused(e) if !e.is_conflict() => Some(REFUSED_FIELD),
            _ => None,
        }
    }

    pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadInput {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
        ApiError::NotFound(format!("{what} {id}"))
    }

    /// An error the client cannot act on: logs `detail` once, here, with a fresh error id and
    /// the caller's source location, and keeps only the id for the client.
    #[track_caller]
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        let id = format!("{:08x}", rand::random::<u32>());
        let at = std::panic::Location::caller();
        tracing::error!(error_id = %id, error = %detail, at = %at, "internal error");
        ApiError::Internal(InternalError { id })
    }
}

impl From<StoreError> for ApiError {
    #[track_caller]
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<WriteError<ApiError>> for ApiError {
    #[track_caller]
    fn from(e: WriteError<ApiError>) -> Self {
        match e {
            WriteError::Abort(e) => e,
            WriteError::Store(e) => ApiError::from(e),
        }
    }
}

/// Sets `extensions.code` (and `field`) on GraphQL errors: from the [`ApiError`] a resolver
/// returned (async-graphql keeps it as the error's source), or `BAD_USER_INPUT` for the
/// library's own parse, validation and limit errors.
pub fn add_codes(resp: &mut async_graphql::Response) {
    for e in &mut resp.errors {
        let api = e.source::<ApiError>().map(|a| {
            (
                a.code(),
                a.field().map(str::to_string),
                matches!(a, ApiError::MfaRequired(_)),
            )
        });
        let ext = e.extensions.get_or_insert_with(Default::default);
        match api {
            Some((code, field, mfa_required)) => {
                ext.set("code", code);
                if let Some(f) = field {
                    ext.set("field", f);
                }
                if mfa_required {
                    ext.set("mfaRequired", true);
                }
            }
            None if ext.get("code").is_none() => ext.set("code", "BAD_USER_INPUT"),
            None => {}
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
    use std::sync::{Arc, Mutex};

    /// Held by the tests that log internal errors (see the first one).
    static INTERNAL_LOGS: Mutex<()> = Mutex::new(());

    /// The server log of one test.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Log {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
        type Writer = Log;
        fn make_writer(&'a self) -> Log {
            self.clone()
        }
    }

    const STORE_DETAIL: &str = "page 7 of /srv/upkeep/data/db is torn";

    struct Query;

    #[Object]
    impl Query {
        async fn broken(&self) -> async_graphql::Result<i32> {
            let e: ApiError = StoreError::Corrupt(STORE_DETAIL.into()).into();
            Err(e.into())
        }
    }

    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "a current-thread test; the lock only keeps the other logging test apart"
    )]
    async fn a_store_error_is_logged_under_an_id_and_the_client_sees_only_the_id() {
        // Not beside the other test that logs internal errors: tracing caches a callsite's
        // interest process-wide, and that test hits the same `error!` with no subscriber.
        let _one_at_a_time = INTERNAL_LOGS.lock().unwrap_or_else(|e| e.into_inner());
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let mut resp = schema.execute("{ broken }").await;
        add_codes(&mut resp);
        let answer = serde_json::to_value(&resp).unwrap();

        let error = &answer["errors"][0];
        assert_eq!(error["extensions"]["code"], "INTERNAL", "{answer}");
        let message = error["message"].as_str().unwrap();
        let id = message
            .strip_prefix("internal error (id ")
            .and_then(|m| m.strip_suffix("); the server log has the details"))
            .unwrap_or_else(|| panic!("{message}"));
        assert_eq!(id.len(), 8, "{id}");
        let answer = answer.to_string();
        assert!(!answer.contains("torn"), "{answer}");
        assert!(!answer.contains("/srv/upkeep"), "{answer}");
        assert!(!answer.contains("corrupt"), "{answer}");

        let log = log.text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
        assert_eq!(lines.len(), 1, "logged once: {log}");
        assert!(lines[0].contains(&format!("error_id={id}")), "{log}");
        assert!(lines[0].contains(STORE_DETAIL), "{log}");
        assert!(lines[0].contains("ERROR"), "{log}");
    }

    #[test]
    fn every_internal_error_gets_its_own_id() {
        let _one_at_a_time = INTERNAL_LOGS.lock().unwrap_or_else(|e| e.into_inner());
        let (ApiError::Internal(a), ApiError::Internal(b)) =
            (ApiError::internal("a"), ApiError::internal("b"))
        else {
            panic!("internal() makes Internal");
        };
        assert_ne!(a.id(), b.id());
    }

    /// Engine refusals keep the codes, fields and texts clients saw when they were strings.
    #[test]
    fn engine_refusals_map_to_conflict_or_bad_input_on_the_id() {
        let used = ApiError::Refused(EngineError::LinkUsed);
        assert_eq!(
            (used.code(), used.field(), used.status()),
            ("BAD_USER_INPUT", Some("id"), StatusCode::BAD_REQUEST)
        );
        assert_eq!(used.to_string(), "id: this link was already used");
        let late = ApiError::Refused(EngineError::NotPostponable);
        assert_eq!(
            (late.code(), late.field(), late.status()),
            ("CONFLICT", None, StatusCode::CONFLICT)
        );
        assert_eq!(
            late.to_string(),
            "only a session waiting to execute can be postponed"
        );
    }
}
