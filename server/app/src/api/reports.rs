//! `GET /api/v1/tenants/{id}/reports/{yyyy-mm}.pdf` and `.html`: a tenant's monthly report as a
//! document (CONTRACT §16). Whoever may read the tenant may fetch its report; the caller signs in
//! as on the other REST routes (a bearer token or API key). The PDF is drawn on a blocking
//! thread; both answers are `no-store` (they hold the tenant's data).

use crate::api::files::{api_error as error, refuse};
use crate::api::graphql::ctx::visible_in;
use crate::error::ApiError;
use crate::services::App;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use upkeep_core::domain::{Id, Tenant};

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/tenants/{id}/reports/{file}", get(report))
}

/// What the report page may load: its own inline style and the tenant's logo, nothing else.
const HTML_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src https: http:; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Pdf,
    Html,
}

async fn report(
    State(app): State<Arc<App>>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let actor = match crate::api::files::signed_in(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (month, format) = match file.rsplit_once('.') {
        Some((m, "pdf")) => (m, Format::Pdf),
        Some((m, "html")) => (m, Format::Html),
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "reports are {yyyy-mm}.pdf or {yyyy-mm}.html",
            );
        }
    };
    let Ok(id) = id.parse::<Id>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the id is not a tenant id",
        );
    };
    let tenant = match app.store.get::<Tenant>(&id).await {
        Ok(Some(t)) if visible_in(actor.scope(), &t) => t,
        Ok(_) => return error(&ApiError::not_found("tenant", id)),
        Err(e) => return error(&ApiError::from(e)),
    };
    // The permit is held until the document is drawn.
    let (r, _permit) = match app.tenant_report(tenant, month).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let view = crate::report::view(&r, app.brand(&r.tenant));
    let name = file_name(&r.tenant, &view.month, format);
    let (body, content_type) = match format {
        Format::Html => match app.templates.render_report_page(&view) {
            Ok(html) => (html.into_bytes(), "text/html; charset=utf-8"),
            Err(e) => return error(&ApiError::internal(e)),
        },
        Format::Pdf => {
            match tokio::task::spawn_blocking(move || crate::report::pdf::render(&view)).await {
                Ok(Ok(pdf)) => (pdf, "application/pdf"),
                Ok(Err(e)) => return error(&ApiError::internal(e)),
                Err(e) => return error(&ApiError::internal(e)),
            }
        }
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if format == Format::Html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(HTML_CSP),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// "acme-dental-2026-11.pdf": the tenant's name in letters, digits and dashes only (it goes
/// into a header).
fn file_name(t: &Tenant, month: &str, format: Format) -> String {
    let mut slug = String::new();
    for c in t.name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 60 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let ext = match format {
        Format::Pdf => "pdf",
        Format::Html => "html",
    };
    if slug.is_empty() {
        format!("report-{month}.{ext}")
    } else {
        format!("{slug}-report-{month}.{ext}")
    }
}
