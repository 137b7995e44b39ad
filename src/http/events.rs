//! Order events as recorded (issue 20), for operators and for a storefront catching up:
//! `GET /v1/admin/events`, oldest first, by cart or all.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::AdminAuth;
use super::extract::Query;
use super::problem::ApiError;
use crate::domain::event::EventType;
use crate::runtime::app::AppState;
use crate::store::events;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only this cart's events.
    cart_id: Option<String>,
    /// The `next` of the previous page (a `seq`).
    after: Option<i64>,
    /// Events per page (1–1000, default 100).
    limit: Option<i64>,
}

/// One event, as a webhook delivers it (`type`, `timestamp`, `data`), with its id and its
/// place in the sequence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// `evt_…`: stable per change; a receiver dedupes on it (`webhook-id`).
    pub id: String,
    /// `checkout.ordered`, `checkout.rejected`, `checkout.payment_unknown` or
    /// `order.status_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the change was recorded.
    pub timestamp: DateTime<Utc>,
    /// The order events happened in: for one cart, `checkout.ordered` always comes before
    /// its `order.status_changed`.
    pub seq: i64,
    /// The payload of its type: `CheckoutOrderedEvent`, `CheckoutRejectedEvent`,
    /// `CheckoutPaymentUnknownEvent` or `OrderStatusChangedEvent` (in `components`).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of events.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    pub items: Vec<EventView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<i64>,
}

/// Events in the order they happened: what each checkout came to and each order's
/// fulfilment steps, written in the transaction of each change.
#[utoipa::path(get, path = "/v1/admin/events", tag = "admin",
    security(("admin_token" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "One page of events", body = EventsPage, example = json!(crate::http::examples::events_page())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 422, description = "A bad filter, named", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::events_invalid())),
        (status = 503, description = "The orders database is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("/limit", "must be from 1 to 1000"));
    }
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::field("/after", "must be the `next` of a page"));
    }
    let cart_id = match query.cart_id.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            Some(crate::domain::parse_uuid(raw).map_err(|e| ApiError::field("/cart_id", e))?)
        }
    };
    let rows = events::list(&app.db, cart_id, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<EventView> = rows
        .into_iter()
        .take(limit as usize)
        .map(|row| EventView {
            // Written by this code from a typed payload: it parses.
            data: serde_json::from_str(&row.data).unwrap_or(serde_json::Value::Null),
            kind: EventType::parse(&row.kind).map_or(row.kind, |kind| kind.as_str().to_string()),
            id: row.id,
            timestamp: row.created_at,
            seq: row.seq,
        })
        .collect();
    Ok(Json(EventsPage {
        next: if more {
            items.last().map(|item| item.seq)
        } else {
            None
        },
        items,
    }))
}
