//! The deploy-window page for operators (`/admin`): one HTML page, its script and its
//! style, compiled into the binary so that it works wherever cartbus runs, with no CDN.
//! The page itself holds no data and needs no token; everything it shows comes from the
//! admin API, which it calls with the token the operator types in (kept in memory only).
//! These routes are not API: they stay out of the OpenAPI document.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runtime::app::AppState;

const INDEX: &str = include_str!("admin_page/index.html");
const SCRIPT: &str = include_str!("admin_page/app.js");
const STYLE: &str = include_str!("admin_page/app.css");

/// Only this origin's script, style and API; no inline script, no framing, and no form
/// may submit anywhere (the login form is handled by the script, so the token can never
/// leak into a URL).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/admin/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/admin/app.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, body)
}
