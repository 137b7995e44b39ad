//! Health, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use crate::runtime::app::AppState;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Live {
    #[schema(example = "live")]
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub shutting_down: bool,
    /// The queue took its last write.
    pub queue_up: bool,
    pub database_up: bool,
    /// The database carries this binary's schema.
    pub migrated: bool,
    pub instance: String,
    pub version: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { status: "live" })
}

/// Ready for traffic: not shutting down, and either the queue or the database can take a cart.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    let readiness = Readiness {
        ready: app.is_ready(),
        shutting_down: app.health.shutting_down(),
        queue_up: app.queue.is_healthy(),
        database_up: app.health.database_up(),
        migrated: app.health.migrated(),
        instance: app.config.instance.clone(),
        version: app.config.version.clone(),
    };
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

/// Prometheus metrics (OpenMetrics text). The backlog, the drain switch, instance
/// states, outbox rows, dead letters and payments needing a person are read at scrape time,
/// at once, each within 1 s.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    crate::runtime::sample::at_scrape(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi())
}
