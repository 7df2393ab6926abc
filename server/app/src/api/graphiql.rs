//! GraphiQL, served from the binary: the page, its bootstrap script and the production builds
//! of React and GraphiQL it loads (`server/app/graphiql/`, committed; see the README there for
//! the versions and how to refresh them). Nothing comes from another host, so GraphiQL works
//! on a locked-down or air-gapped network; the page's Content-Security-Policy names no other
//! host either.
//!
//! `GET /graphql` answers the page only to a browser navigating (`Accept: text/html`; see
//! `graphql::graphql_handler`); the assets are under `/graphql/assets/`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

use crate::services::App;

/// Versions of the vendored builds (also in the asset names, so they are cached for good).
pub const GRAPHIQL_VERSION: &str = "3.9.0";
pub const REACT_VERSION: &str = "18.3.1";

/// What the page may load: only this server (the fonts and icons GraphiQL's CSS inlines are
/// `data:` URLs; React sets inline styles).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     font-src 'self' data:; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// An asset: its name under `/graphql/assets/`, content type, bytes, and whether its name
/// carries its version (then it is cached for a year).
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    versioned: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "react-18.3.1.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../graphiql/react.production.min.js"),
        versioned: true,
    },
    Asset {
        name: "react-dom-18.3.1.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../graphiql/react-dom.production.min.js"),
        versioned: true,
    },
    Asset {
        name: "graphiql-3.9.0.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../graphiql/graphiql.min.js"),
        versioned: true,
    },
    Asset {
        name: "graphiql-3.9.0.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../graphiql/graphiql.min.css"),
        versioned: true,
    },
    Asset {
        name: "upkeep-graphiql.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../graphiql/upkeep-graphiql.js"),
        versioned: false,
    },
];

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Upkeep GraphiQL</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/graphql/assets/graphiql-3.9.0.min.css">
<style>body { margin: 0; } #graphiql { height: 100vh; }</style>
</head>
<body>
<div id="graphiql">Loading…</div>
<script src="/graphql/assets/react-18.3.1.production.min.js"></script>
<script src="/graphql/assets/react-dom-18.3.1.production.min.js"></script>
<script src="/graphql/assets/graphiql-3.9.0.min.js"></script>
<script src="/graphql/assets/upkeep-graphiql.js"></script>
</body>
</html>
"#;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/graphql/assets/{name}", get(asset))
}

/// The GraphiQL page (for `GET /graphql` from a browser).
pub fn page() -> Response {
    let mut r = axum::response::Html(PAGE).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    r
}

async fn asset(Path(name): Path<String>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        let body = serde_json::json!({"code": "NOT_FOUND", "message": "no such asset"});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let cache = if a.versioned {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        a.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_and_no_other_host() {
        for a in ASSETS {
            assert!(
                PAGE.contains(&format!("/graphql/assets/{}", a.name)),
                "{}",
                a.name
            );
            if a.versioned {
                assert!(
                    a.name.contains(GRAPHIQL_VERSION) || a.name.contains(REACT_VERSION),
                    "{}",
                    a.name
                );
            }
        }
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!CSP.contains("http"));
    }
}
