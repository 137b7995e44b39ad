//! `GET /v1/orders/{order_id}`.

use axum::Json;
use axum::extract::{Path, State};

use super::problem::{ApiError, Problem};
use crate::domain::order::OrderView;
use crate::domain::parse_uuid;
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
    let order_id =
        parse_uuid(&order_id).map_err(|e| ApiError::bad_request(format!("order_id {e}")))?;
    order_reads::find(&app.db, order_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no order {order_id}")))
}
