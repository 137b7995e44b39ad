//! The admin API for payments (DESIGN §8): list payment steps, and resolve one whose
//! outcome is unknown after checking with the payment service. Bearer
//! `CARTBUS_ADMIN_TOKEN`.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::admin::AdminAuth;
use super::extract::{JsonBody, Query};
use super::problem::{ApiError, Problem};
use super::request::{Fields, Findings, Sent};
use crate::domain::payment::{Finding, PaymentView};
use crate::domain::{CartId, FieldError};
use crate::runtime::app::AppState;
use crate::service::payment::resolve;
use crate::store::payments as store;

const MAX_REASON: usize = 500;
/// What a 503 says when this instance may not write orders.
pub const CANNOT_WRITE_ORDERS: &str = "this instance cannot write orders now (database down, \
     or its schema is newer than this version); try another instance or later";
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
    let mut found = Findings::default();
    let filter = match query.state.as_deref() {
        None | Some("unknown") => store::Filter::Unknown,
        Some("captured-without-order") => store::Filter::CapturedWithoutOrder,
        Some("all") => store::Filter::All,
        Some(_) => {
            found.add("/state", "must be unknown, captured-without-order or all");
            store::Filter::Unknown
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        found.add("/limit", format!("must be from 1 to {MAX_LIMIT}"));
    }
    found.into_result()?;
    let cutoff = crate::domain::payment::abandoned_before(app.config.payments.timeout);
    let items = store::list(&app.db, filter, cutoff, limit).await?;
    Ok(Json(PaymentList { items }))
}

/// Body of `POST /v1/admin/payments/{cart_id}/resolve`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResolveRequest {
    /// What the payment service says happened: `captured` places the order, `failed`
    /// rejects the checkout (`payment-failed`). A capture left without its order can be
    /// resolved `captured` too, which places the order.
    #[serde(default)]
    #[schema(value_type = String, required, example = "captured")]
    outcome: Sent<String>,
    /// Why (kept in the audit record), 1 to 500 characters.
    #[serde(default)]
    #[schema(value_type = String, required, example = "charge ch_3Nx… succeeded per the payment dashboard")]
    reason: Sent<String>,
    /// The payment service's id for the capture (only with `captured`), at most 200
    /// characters.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    payment_id: Sent<String>,
}

/// An operator's resolution, checked.
#[derive(Debug)]
pub struct Resolution {
    finding: Finding,
    /// Trimmed, never blank.
    reason: String,
    payment_id: Option<String>,
}

impl TryFrom<Fields<ResolveRequest>> for Resolution {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<ResolveRequest>) -> Result<Resolution, Vec<FieldError>> {
        let ResolveRequest {
            outcome,
            reason,
            payment_id,
        } = body.known;
        let mut found = Findings::default();
        let finding = match outcome {
            Sent::Absent => {
                found.add("/outcome", "is required: captured or failed");
                None
            }
            Sent::Typed(s) if s == "captured" => Some(Finding::Captured),
            Sent::Typed(s) if s == "failed" => Some(Finding::Failed),
            Sent::Typed(_) | Sent::WrongType => {
                found.add("/outcome", "must be captured or failed");
                None
            }
        };
        let reason = reason.required_text(
            "/reason",
            MAX_REASON,
            "is required: say what the check found",
            &mut found,
        );
        let payment_id = payment_id.optional_text("/payment_id", MAX_PAYMENT_ID, &mut found);
        if payment_id.is_some() && finding == Some(Finding::Failed) {
            found.add("/payment_id", "only goes with outcome captured");
        }
        found.unknown("", &body.unknown);
        let checked = finding.zip(reason).map(|(finding, reason)| Resolution {
            finding,
            reason,
            payment_id,
        });
        found.finish(checked)
    }
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
    let Resolution {
        finding,
        reason,
        payment_id,
    } = Fields::<ResolveRequest>::read(body)?.try_into()?;
    if !app.can_write_orders() {
        return Err(ApiError::unavailable(CANNOT_WRITE_ORDERS));
    }
    let view = resolve::resolve(
        &app.db,
        cart_id.as_uuid(),
        finding,
        payment_id.as_deref(),
        &auth.actor,
        &reason,
        app.config.payments.timeout,
    )
    .await?;
    Ok(Json(view))
}
