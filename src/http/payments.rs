//! The admin API for payments (DESIGN §8): list payment steps, and resolve one whose
//! outcome is unknown after checking with the payment service. Bearer
//! `CARTBUS_ADMIN_TOKEN`.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::{AdminAuth, field, optional_string, unknown_fields};
use super::extract::{JsonBody, Query};
use super::problem::{ApiError, Problem};
use crate::domain::CartId;
use crate::domain::payment::{Finding, PaymentView};
use crate::runtime::app::AppState;
use crate::service::payment::resolve::{self, ResolveError};
use crate::store::payments as store;

const MAX_REASON: usize = 500;
const MAX_PAYMENT_ID: usize = 200;
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// `unknown` (default): calls without a result that are no longer in flight, waiting
    /// for a person; `captured-without-order`: captures left without their order;
    /// `all`: every step.
    state: Option<String>,
    /// Most items to return, newest call first (1–1000, default 100).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PaymentList {
    /// Newest call first.
    pub items: Vec<PaymentView>,
}

/// Payment steps, newest call first: by default those whose outcome is unknown (marked
/// unknown, or called longer ago than the payment timeout + 30 s without a result — a
/// call still in flight is not listed), or with `state=captured-without-order` captures
/// whose order was never written.
#[utoipa::path(get, path = "/v1/admin/payments", tag = "admin",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Newest call first", body = PaymentList, example = json!(crate::http::examples::payment_list())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 422, description = "A bad query parameter", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::payments_invalid())),
        (status = 503, description = "The orders database is unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<ListQuery>,
) -> Result<Json<PaymentList>, ApiError> {
    let mut errors = Vec::new();
    let filter = match query.state.as_deref() {
        None | Some("unknown") => store::Filter::Unknown,
        Some("captured-without-order") => store::Filter::CapturedWithoutOrder,
        Some("all") => store::Filter::All,
        Some(_) => {
            errors.push(field(
                "/state",
                "must be unknown, captured-without-order or all",
            ));
            store::Filter::Unknown
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        errors.push(field("/limit", format!("must be from 1 to {MAX_LIMIT}")));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let cutoff = crate::domain::payment::abandoned_before(app.config.payments.timeout);
    let items = store::list(&app.db, filter, cutoff, limit)
        .await
        .map_err(|e| unavailable(&app, e))?;
    Ok(Json(PaymentList { items }))
}

/// Body of `POST /v1/admin/payments/{cart_id}/resolve` (documentation; parsed by hand to
/// name every bad field).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ResolveRequest {
    /// What the payment service says happened: `captured` places the order, `failed`
    /// rejects the checkout (`payment-failed`). A capture left without its order can be
    /// resolved `captured` too, which places the order.
    #[schema(example = "captured")]
    outcome: String,
    /// Why (kept in the audit record), 1 to 500 characters.
    #[schema(example = "charge ch_3Nx… succeeded per the payment dashboard")]
    reason: String,
    /// The payment service's id for the capture (only with `captured`), at most 200
    /// characters.
    payment_id: Option<String>,
}

/// Resolve a payment whose outcome is unknown, once someone has checked with the payment
/// service, or finish a capture left without its order (`captured`). A call still in
/// flight cannot be resolved (409). Resolving the same way again answers as the first
/// time did.
#[utoipa::path(post, path = "/v1/admin/payments/{cart_id}/resolve", tag = "admin",
    security(("admin_token" = [])),
    params(("cart_id" = String, Path, description = "The cart's UUID")),
    request_body(content = ResolveRequest, content_type = "application/json", example = json!(crate::http::examples::resolve_request())),
    responses(
        (status = 200, description = "Resolved (now, or before in the same way)", body = PaymentView, example = json!(crate::http::examples::payment_resolved())),
        (status = 400, description = "Not a UUID, or malformed JSON", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resolve_bad_cart_id())),
        (status = 404, description = "No payment step for this cart, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resolve_not_found())),
        (status = 409, description = "The payment is not unknown (it has a result, was resolved the other way, or its call may still be in flight: try again after the time the detail names)", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resolve_conflict())),
        (status = 422, description = "A bad field", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resolve_invalid())),
        (status = 503, description = "This instance cannot write orders now", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::cannot_write_orders())),
    ))]
pub async fn resolve(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(cart_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<PaymentView>, ApiError> {
    let cart_id =
        CartId::parse(&cart_id).map_err(|e| ApiError::bad_request(format!("cart_id {e}")))?;
    let Value::Object(body) = body else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors = Vec::new();
    let finding = match body.get("outcome") {
        None | Some(Value::Null) => {
            errors.push(field("/outcome", "is required: captured or failed"));
            None
        }
        Some(Value::String(s)) if s == "captured" => Some(Finding::Captured),
        Some(Value::String(s)) if s == "failed" => Some(Finding::Failed),
        Some(_) => {
            errors.push(field("/outcome", "must be captured or failed"));
            None
        }
    };
    let reason = match body.get("reason") {
        None | Some(Value::Null) => {
            errors.push(field("/reason", "is required: say what the check found"));
            None
        }
        Some(_) => match optional_string(&body, "reason", MAX_REASON, &mut errors) {
            Some(reason) if reason.trim().is_empty() => {
                errors.push(field("/reason", "must not be empty"));
                None
            }
            reason => reason.map(|r| r.trim().to_string()),
        },
    };
    let payment_id = optional_string(&body, "payment_id", MAX_PAYMENT_ID, &mut errors);
    if payment_id.is_some() && finding == Some(Finding::Failed) {
        errors.push(field("/payment_id", "only goes with outcome captured"));
    }
    unknown_fields(&body, &["outcome", "reason", "payment_id"], &mut errors);
    let (Some(finding), Some(reason), true) = (finding, reason, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    if !app.can_write_orders() {
        return Err(ApiError::Unavailable {
            detail: "this instance cannot write orders now (database down, or its schema is \
                     newer than this version); try another instance or later"
                .into(),
            retry_after: app.config.http.retry_after,
        });
    }
    resolve::resolve(
        &app.db,
        cart_id.as_uuid(),
        finding,
        payment_id.as_deref(),
        &auth.actor,
        &reason,
        app.config.payments.timeout,
    )
    .await
    .map(Json)
    .map_err(|e| match e {
        ResolveError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ResolveError::Conflict(_) => ApiError::Conflict(e.to_string()),
        ResolveError::Database(e) => unavailable(&app, e),
    })
}

fn unavailable(app: &AppState, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "payments: orders database unavailable");
    ApiError::Unavailable {
        detail: "the orders database is unavailable".into(),
        retry_after: app.config.http.retry_after,
    }
}
