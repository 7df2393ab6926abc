//! `/console`: the operator console, one static page built into the binary.
//!
//! Its script and style are inline; the Content-Security-Policy allows exactly those blocks by
//! their SHA-256 (no `'unsafe-inline'`, no other host), computed once from the page itself.

use crate::services::App;
use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};

const INDEX: &str = include_str!("../../console/index.html");

static CSP: LazyLock<String> = LazyLock::new(|| policy_for(INDEX));

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/console", get(index)).route(
        "/",
        get(|| async { axum::response::Redirect::to("/console") }),
    )
}

async fn index() -> impl IntoResponse {
    (
        [
            ("content-security-policy", CSP.as_str()),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ],
        Html(INDEX),
    )
}

/// The bodies of the page's `<tag>` blocks (written without attributes).
fn blocks<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

fn hashes(html: &str, tag: &str) -> String {
    blocks(html, tag)
        .iter()
        .map(|b| {
            let digest = Sha256::digest(b.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Same origin only; the inline script and style by hash; no frames, forms or base changes.
fn policy_for(html: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(html, "script"),
        hashes(html, "style")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_blocks_by_hash_and_nothing_inline_else() {
        let csp = policy_for(INDEX);
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(!csp.contains("http"), "{csp}");
        let script = blocks(INDEX, "script");
        assert_eq!(script.len(), 1, "one inline script");
        assert!(script[0].contains("function markFindings"));
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script[0]));
        assert!(
            csp.contains(&format!("script-src 'sha256-{digest}';")),
            "{csp}"
        );
        assert_eq!(blocks(INDEX, "style").len(), 1, "one inline style");
    }

    #[test]
    fn blocks_are_found_in_order_and_an_unclosed_one_is_ignored() {
        let html = "<p><script>a()</script><script>b()</script><script>c(";
        assert_eq!(blocks(html, "script"), vec!["a()", "b()"]);
        assert_eq!(
            hashes("<style>x</style>", "style"),
            "'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='"
        );
    }
}
