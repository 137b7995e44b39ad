//! `GET /v1/orders/{order_id}`.

use axum::Json;
use axum::extract::{Path, State};
use uuid::Uuid;

use super::problem::{ApiError, Problem};
use crate::domain::order::OrderView;
use crate::runtime::app::AppState;
use crate::store::order_reads;

/// A purchase order with its lines and status history (oldest first).
#[utoipa::path(
    get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The order's UUID")),
    responses(
        (status = 200, body = OrderView),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order_id = Uuid::try_parse(order_id.trim())
        .map_err(|_| ApiError::bad_request("order_id must be a UUID"))?;
    match order_reads::find(&app.db, order_id).await {
        Ok(Some(order)) => Ok(Json(order)),
        Ok(None) => Err(ApiError::NotFound(format!("no order {order_id}"))),
        Err(e) => {
            tracing::warn!(error = %e, "order read failed");
            Err(ApiError::Unavailable {
                detail: "the orders database is unavailable".into(),
                retry_after: app.config.http.retry_after,
            })
        }
    }
}
