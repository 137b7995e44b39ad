//! The fulfilment outbox for operators: what is stuck and why, and a way to send a
//! `critical_error` order again once its cause is fixed.

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::AdminAuth;
use super::extract::Query;
use super::problem::ApiError;
use crate::runtime::app::AppState;
use crate::store::outbox::{self, DispatchRow};

const STATUSES: [&str; 4] = ["critical_error", "error", "pending", "processed"];

#[derive(Deserialize, utoipa::IntoParams)]
pub struct OutboxQuery {
    /// `critical_error` (default), `error` (retrying), `pending` or `processed`.
    status: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Rows per page (1–1000, default 100).
    limit: Option<i64>,
}

/// A page of outbox rows, with how many wait in each unfinished status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutboxPage {
    pub items: Vec<DispatchRow>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<Uuid>,
    /// Rows per unfinished status: `pending`, `error`, `critical_error`.
    pub counts: std::collections::BTreeMap<String, i64>,
}

/// Outbox rows by status, oldest first: `critical_error` ones need a person.
#[utoipa::path(get, path = "/v1/admin/outbox", tag = "admin",
    security(("admin_token" = [])),
    params(OutboxQuery),
    responses(
        (status = 200, description = "One page of rows", body = OutboxPage, example = json!(crate::http::examples::outbox_page())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "The orders database is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
        (status = 422, description = "A bad filter, named", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::outbox_invalid())),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<OutboxQuery>,
) -> Result<Json<OutboxPage>, ApiError> {
    let status = query.status.as_deref().unwrap_or("critical_error");
    if !STATUSES.contains(&status) {
        return Err(ApiError::field(
            "/status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("/limit", "must be from 1 to 1000"));
    }
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            Uuid::try_parse(raw)
                .map_err(|_| ApiError::field("/after", "must be the `next` of a page"))?,
        ),
    };
    let items = outbox::list(&app.db, status, after, limit + 1).await?;
    let counts = outbox::counts(&app.db).await?;
    let more = items.len() as i64 > limit;
    let items: Vec<DispatchRow> = items.into_iter().take(limit as usize).collect();
    Ok(Json(OutboxPage {
        next: if more {
            items.last().map(|row| row.order_id)
        } else {
            None
        },
        items,
        counts: counts.into_iter().collect(),
    }))
}

/// Sends a `critical_error` (or retrying) order again, with a fresh retry budget.
#[utoipa::path(post, path = "/v1/admin/outbox/{order_id}/retry", tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = Uuid, Path, description = "The order whose hand-off to retry")),
    responses(
        (status = 202, description = "Queued for the relay again"),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 422, description = "order_id is not a UUID", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::order_id_invalid())),
        (status = 503, description = "The orders database is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
        (status = 409, description = "The row is not in critical_error or error", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::outbox_not_stuck())),
    ))]
pub async fn retry(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(order_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let order_id =
        crate::domain::parse_uuid(&order_id).map_err(|e| ApiError::field("/order_id", e))?;
    if !outbox::retry(&app.db, order_id, Utc::now()).await? {
        return Err(ApiError::Conflict(format!(
            "order {order_id} has no outbox row in critical_error or error"
        )));
    }
    tracing::warn!(%order_id, by = %auth.actor, "outbox row sent back to the relay by an operator");
    app.outbox_wake.notify_one();
    Ok(axum::http::StatusCode::ACCEPTED)
}
