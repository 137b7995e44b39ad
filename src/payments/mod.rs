//! Payment capture, at most once (DESIGN §8). Before a capture call, `calling_payment` is
//! set in its own committed write; the result follows in another. A cart found flagged
//! with no result is never called for again: its outcome is unknown until an operator
//! checks with the payment service and resolves it ([`resolve`]).

pub mod gateway;
pub mod store;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::checkout::message::{self, Decoded};
use crate::db::Db;
use crate::orders::{self, Placement, Source};
use crate::queue::Message;

pub use gateway::{CallOutcome, Gateway};

/// Where a cart's payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentState {
    /// Called, no result: it may or may not have captured (or the call is in flight).
    Unknown,
    Captured,
    Declined,
    /// Was unknown; an operator found it captured (the order was then placed).
    ResolvedCaptured,
    /// Was unknown; an operator found it not captured (the checkout was rejected).
    ResolvedFailed,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Unknown => "unknown",
            PaymentState::Captured => "captured",
            PaymentState::Declined => "declined",
            PaymentState::ResolvedCaptured => "resolved-captured",
            PaymentState::ResolvedFailed => "resolved-failed",
        }
    }
}

/// One cart's payment step.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub cart_id: Uuid,
    /// Minor units of `currency`.
    pub amount: i64,
    #[schema(example = "GBP")]
    pub currency: String,
    pub state: PaymentState,
    /// The payment service's id for the capture, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// What the call came to, or why its outcome is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the capture call was about to be made.
    pub called_at: DateTime<Utc>,
    /// When its result (or that none can be had) was known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
}

/// An operator's finding about an unknown payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The payment service took the money: place the order.
    Captured,
    /// It did not: reject the checkout (`payment-failed`).
    Failed,
}

impl Finding {
    fn state(self) -> PaymentState {
        match self {
            Finding::Captured => PaymentState::ResolvedCaptured,
            Finding::Failed => PaymentState::ResolvedFailed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no payment step for cart {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Resolves an unknown payment: `Captured` places the order from the stored cart
/// message, `Failed` rejects the checkout, each in one transaction with the audit record.
/// The same finding again answers as the first did; a different one is a conflict.
pub async fn resolve(
    db: &Db,
    cart_id: Uuid,
    finding: Finding,
    payment_id: Option<&str>,
    by: &str,
    reason: &str,
) -> Result<PaymentView, ResolveError> {
    let mut tx = db.begin().await?;
    let captured = finding == Finding::Captured;
    let Some(body) = store::resolve(&mut tx, cart_id, captured, payment_id, by, reason).await?
    else {
        let view = store::find(&mut tx, cart_id)
            .await?
            .ok_or(ResolveError::NotFound(cart_id))?;
        return if view.state == finding.state() {
            Ok(view)
        } else {
            Err(ResolveError::Conflict(format!(
                "the payment of cart {cart_id} is {}, not unknown",
                view.state.as_str()
            )))
        };
    };
    match finding {
        Finding::Captured => {
            let message = Message {
                message_id: cart_id.to_string(),
                content_type: message::CONTENT_TYPE.into(),
                body: Bytes::from(body),
                ..Default::default()
            };
            let cart = match message::decode(&message) {
                Decoded::Cart(cart) => cart,
                Decoded::UnknownSchema(detail) | Decoded::Invalid(detail) => {
                    return Err(ResolveError::Conflict(format!(
                        "the stored cart message cannot be ordered: {detail}"
                    )));
                }
            };
            let placement =
                orders::place(&mut tx, &cart, &cart.payload_hash(), Source::Queue).await?;
            if let Placement::Conflict(order_id) = placement {
                return Err(ResolveError::Conflict(format!(
                    "order {order_id} exists for this cart_id with a different payload"
                )));
            }
        }
        Finding::Failed => {
            // The shopper sees this detail; the operator's reason stays in the audit record.
            let detail = "the payment did not go through";
            orders::record_rejection(&mut tx, cart_id, "payment-failed", detail).await?;
        }
    }
    let view = store::find(&mut tx, cart_id)
        .await?
        .ok_or(ResolveError::NotFound(cart_id))?;
    tx.commit().await?;
    tracing::warn!(%cart_id, ?finding, by, "unknown payment resolved");
    Ok(view)
}
