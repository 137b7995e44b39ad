//! Health, metrics and the OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Serialize;

use crate::app::AppState;

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

/// Prometheus metrics (text format). Queue depth, unknown payments and captures without
/// an order are sampled at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let stats = tokio::time::timeout(
        Duration::from_secs(1),
        app.queue.stats(&app.config.cart_address),
    )
    .await;
    if let Ok(Ok(stats)) = &stats {
        app.metrics
            .queue_depth
            .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
        let age = stats
            .oldest_enqueued_at
            .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        app.metrics.queue_oldest_age.set(age);
    }
    if let Ok(Ok(counts)) = tokio::time::timeout(
        Duration::from_secs(1),
        crate::fulfilment::store::counts(&app.db),
    )
    .await
    {
        for status in ["pending", "error", "critical_error"] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            app.metrics
                .outbox_rows
                .get_or_create(&crate::metrics::StatusLabel {
                    status: status.to_string(),
                })
                .set(n);
        }
    }
    let abandoned_before = crate::payments::abandoned_before(app.config.payment_timeout);
    if let Ok(Ok(unknown)) = tokio::time::timeout(
        Duration::from_secs(1),
        crate::payments::store::count_unknown(&app.db, abandoned_before),
    )
    .await
    {
        app.metrics.payments_unknown.set(unknown);
    }
    if let Ok(Ok(counts)) = tokio::time::timeout(
        Duration::from_secs(1),
        crate::deadletters::counts_by_reason(&app.db),
    )
    .await
    {
        // A reason with none left disappears rather than keep its last value.
        app.metrics.dead_letters.clear();
        for (reason, n) in counts {
            app.metrics
                .dead_letters
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .set(n);
        }
    }
    if let Ok(Ok(stuck)) = tokio::time::timeout(
        Duration::from_secs(1),
        crate::payments::store::count_captured_without_order(&app.db, abandoned_before),
    )
    .await
    {
        app.metrics.payments_captured_without_order.set(stuck);
    }
    app.metrics.ready.set(i64::from(app.is_ready()));
    app.metrics.queue_up.set(i64::from(app.queue.is_healthy()));
    let control = &app.control;
    app.metrics
        .consumer_running
        .set(i64::from(control.state() == crate::control::State::Running));
    app.metrics
        .consumer_in_flight
        .set(control.in_flight() as i64);
    let (intake, drain) = control.rates();
    app.metrics.intake_per_second.set(intake);
    app.metrics.drain_per_second.set(drain);
    let eta = match &stats {
        Ok(Ok(stats)) if stats.depth == 0 => 0.0,
        Ok(Ok(stats)) if drain > intake => stats.depth as f64 / (drain - intake),
        _ => f64::NAN,
    };
    app.metrics.catch_up_eta_seconds.set(eta);
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
