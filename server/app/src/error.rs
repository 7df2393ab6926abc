//! API errors: one enum, converted once at the GraphQL edge into `extensions.code`.

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
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) | ApiError::MfaRequired(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::BadInput { .. } => "BAD_USER_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Internal(_) => "INTERNAL",
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
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::Internal(e.to_string())
    }
}

impl From<WriteError<ApiError>> for ApiError {
    fn from(e: WriteError<ApiError>) -> Self {
        match e {
            WriteError::Abort(e) => e,
            WriteError::Store(e) => e.into(),
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
                if let ApiError::BadInput { field, .. } = a {
                    Some(field.clone())
                } else {
                    None
                },
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
