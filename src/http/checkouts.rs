//! `POST /v1/checkouts` and `GET /v1/checkouts/{cart_id}` (DESIGN §3).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::extract::{JsonBody, StorefrontAuth};
use super::problem::{ApiError, Problem};
use crate::domain::order::CheckoutState;
use crate::domain::{Cart, CartId, Reason};
use crate::queue::Lookup;
use crate::runtime::app::AppState;
use crate::service::intake::Accepted;
use crate::store::order_reads;

#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckoutQueued {
    pub checkout_id: Uuid,
    /// Always `pending`: the word `GET /v1/checkouts/{cart_id}` answers until the order
    /// (or a rejection) exists.
    #[schema(example = "pending")]
    pub status: &'static str,
    #[schema(example = "/v1/checkouts/6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11")]
    pub status_url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckoutOrdered {
    pub checkout_id: Uuid,
    #[schema(example = "ordered")]
    pub status: &'static str,
    pub order_id: Uuid,
    pub order_url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutStatusKind {
    Pending,
    Ordered,
    Rejected,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckoutStatus {
    pub checkout_id: Uuid,
    pub status: CheckoutStatusKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_url: Option<String>,
    /// Why it was rejected (`conflict`, `invalid`, `unknown-schema`, `payment-declined`,
    /// `payment-failed`, …) or is still pending (`payment-unknown`: the payment is being
    /// checked). On an `ordered` checkout, `conflict`: the order is the first cart's, and a
    /// later cart sent with this cart_id and another payload was turned away.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Take a cart in.
///
/// Queues the cart and answers `202` once the queue has durably taken it. If the queue
/// cannot, the order is written directly and the answer is `201`. Posting the same cart
/// again is safe: at most one order is ever created per `cart_id`.
#[utoipa::path(
    post, path = "/v1/checkouts", tag = "checkouts",
    request_body(content = Cart, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "If sent, must equal cart_id")),
    security((), ("storefront_key" = [])),
    responses(
        (status = 202, description = "Queued", body = CheckoutQueued,
         headers(("Location" = String, description = "The checkout's status URL"))),
        (status = 201, description = "Queue unavailable: order written directly", body = CheckoutOrdered,
         headers(("Location" = String, description = "The order's URL"))),
        (status = 401, description = "Missing or wrong storefront key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This cart_id was already ordered with a different payload (checked before queueing when the orders database answers within CARTBUS_CONFLICT_CHECK_MS, and always on a direct write)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The cart breaks a rule; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Neither queue nor database can take the cart", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn create(
    State(app): State<AppState>,
    _auth: StorefrontAuth,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // The domain's parser, not serde: the cart's rules (the same for queue messages)
    // report every bad field at once. `Cart`'s schema documents what it reads.
    let cart = Cart::parse(&body).map_err(|errors| {
        app.metrics.checkout("invalid");
        ApiError::Validation(errors)
    })?;
    if let Some(key) = headers.get("idempotency-key") {
        let matches = key
            .to_str()
            .ok()
            .and_then(|k| CartId::parse(k).ok())
            .is_some_and(|k| k == cart.cart_id);
        if !matches {
            app.metrics.checkout("invalid");
            return Err(ApiError::field(
                "/cart_id",
                "must equal the Idempotency-Key header",
            ));
        }
    }
    let checkout_id = cart.cart_id.as_uuid();
    match app.intake.submit(&cart).await? {
        Accepted::Queued => {
            let status_url = format!("/v1/checkouts/{checkout_id}");
            Ok(created_at(
                StatusCode::ACCEPTED,
                &status_url.clone(),
                Json(CheckoutQueued {
                    checkout_id,
                    status: "pending",
                    status_url,
                }),
            ))
        }
        Accepted::Ordered(order_id) => {
            let order_url = format!("/v1/orders/{order_id}");
            Ok(created_at(
                StatusCode::CREATED,
                &order_url.clone(),
                Json(CheckoutOrdered {
                    checkout_id,
                    status: "ordered",
                    order_id,
                    order_url,
                }),
            ))
        }
    }
}

fn created_at(status: StatusCode, location: &str, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Where a checkout stands: `pending` until an order (or a recorded rejection) exists.
#[utoipa::path(
    get, path = "/v1/checkouts/{cart_id}", tag = "checkouts",
    params(("cart_id" = String, Path, description = "The cart's UUID")),
    responses(
        (status = 200, body = CheckoutStatus),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Never accepted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Neither database nor queue can answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    State(app): State<AppState>,
    Path(cart_id): Path<String>,
) -> Result<Json<CheckoutStatus>, ApiError> {
    let cart_id =
        CartId::parse(&cart_id).map_err(|e| ApiError::bad_request(format!("cart_id {e}")))?;
    // Database, then queue, then database again: the consumer commits the order before
    // it removes the message, so a cart absent from the queue is visible in the database.
    if let Ok(Some(state)) = order_reads::checkout_state(&app.db, cart_id).await {
        return Ok(Json(from_state(cart_id, state)));
    }
    let lookup = app
        .queue
        .lookup(&app.config.queue.cart_address, &cart_id.to_string())
        .await;
    match lookup {
        Ok(Lookup::Waiting) | Ok(Lookup::Unknown) => Ok(Json(pending(cart_id))),
        Ok(Lookup::DeadLettered { reason }) => Ok(Json(CheckoutStatus {
            reason: Some(reason),
            status: CheckoutStatusKind::Rejected,
            ..pending(cart_id)
        })),
        Ok(Lookup::Absent) | Err(_) => match order_reads::checkout_state(&app.db, cart_id).await? {
            Some(state) => Ok(Json(from_state(cart_id, state))),
            None => match lookup {
                Ok(_) => Err(ApiError::NotFound(format!("no checkout {cart_id}"))),
                Err(e) => Err(ApiError::unavailable_because(
                    "the queue cannot be asked about this checkout right now",
                    e,
                )),
            },
        },
    }
}

fn pending(cart_id: CartId) -> CheckoutStatus {
    CheckoutStatus {
        checkout_id: cart_id.as_uuid(),
        status: CheckoutStatusKind::Pending,
        order_id: None,
        order_url: None,
        reason: None,
        detail: None,
    }
}

fn from_state(cart_id: CartId, state: CheckoutState) -> CheckoutStatus {
    match state {
        CheckoutState::Ordered { order_id, conflict } => CheckoutStatus {
            status: CheckoutStatusKind::Ordered,
            order_id: Some(order_id),
            order_url: Some(format!("/v1/orders/{order_id}")),
            reason: conflict
                .is_some()
                .then(|| Reason::Conflict.as_str().to_string()),
            detail: conflict.map(|detail| {
                format!(
                    "ordered from the first cart sent with this cart_id; a later cart with a \
                     different payload was turned away ({detail})"
                )
            }),
            ..pending(cart_id)
        },
        CheckoutState::Rejected { reason, detail } => CheckoutStatus {
            status: CheckoutStatusKind::Rejected,
            reason: Some(reason),
            detail: Some(detail),
            ..pending(cart_id)
        },
        CheckoutState::PaymentUnknown => CheckoutStatus {
            reason: Some("payment-unknown".into()),
            detail: Some(
                "we are checking with the payment service whether your payment went through; \
                 this checkout is updated once that is known"
                    .into(),
            ),
            ..pending(cart_id)
        },
    }
}
