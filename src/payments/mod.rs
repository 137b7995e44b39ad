//! Payment capture, at most once (DESIGN §8). Before a capture call, `calling_payment` is
//! set in its own committed write; the result follows in another. A cart found flagged
//! with no result is never called for again: while the first call may still be running
//! it is retried later; after that its outcome is unknown until an operator checks with
//! the payment service and resolves it ([`resolve`]).

pub mod gateway;
pub mod store;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::checkout::message::{self, Decoded};
use crate::db::Db;
use crate::orders::{self, Placement, Source};
use crate::queue::Message;

pub use gateway::{CallOutcome, Gateway};

/// How much longer than `CARTBUS_PAYMENT_TIMEOUT_MS` a first call may still be running
/// when the cart comes back: until then the cart is retried rather than called unknown.
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(5);
/// How much longer than `CARTBUS_PAYMENT_TIMEOUT_MS` after its call a step without a
/// result (or a capture without an order) is taken as abandoned — its process died, and
/// no redelivery came — so that an operator may resolve it.
pub const ABANDONED_MARGIN: Duration = Duration::from_secs(30);

/// Calls made after this instant may still be in flight (see [`IN_FLIGHT_MARGIN`]).
pub fn in_flight_since(payment_timeout: Duration) -> DateTime<Utc> {
    Utc::now() - chrono_duration(payment_timeout + IN_FLIGHT_MARGIN)
}

/// Steps whose call (or capture) is older than this are abandoned if still unfinished
/// (see [`ABANDONED_MARGIN`]).
pub fn abandoned_before(payment_timeout: Duration) -> DateTime<Utc> {
    Utc::now() - chrono_duration(payment_timeout + ABANDONED_MARGIN)
}

/// When a step called (or captured) at `at` counts as abandoned.
pub fn abandoned_at(at: DateTime<Utc>, payment_timeout: Duration) -> DateTime<Utc> {
    at + chrono_duration(payment_timeout + ABANDONED_MARGIN)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Where a cart's payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentState {
    /// Called, no result, and no longer in flight (the call failed without an answer, or
    /// its process died): it may or may not have captured; a person resolves it.
    Unknown,
    /// Called moments ago, no result yet: the call may still be running. Not resolvable.
    InFlight,
    Captured,
    Declined,
    /// Was unknown (or captured without an order); an operator found it captured and the
    /// order was then placed.
    ResolvedCaptured,
    /// Was unknown; an operator found it not captured (the checkout was rejected).
    ResolvedFailed,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Unknown => "unknown",
            PaymentState::InFlight => "in-flight",
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
/// A capture left without its order (abandoned) may be resolved `Captured` too: its order
/// is placed the same way. The same finding again answers as the first did; a different
/// one, or a call that may still be in flight, is a conflict.
pub async fn resolve(
    db: &Db,
    cart_id: Uuid,
    finding: Finding,
    payment_id: Option<&str>,
    by: &str,
    reason: &str,
    payment_timeout: Duration,
) -> Result<PaymentView, ResolveError> {
    let mut tx = db.begin().await?;
    let captured = finding == Finding::Captured;
    let cutoff = abandoned_before(payment_timeout);
    let resolution = store::Resolution {
        captured,
        payment_id,
        by,
        reason,
        abandoned_before: cutoff,
    };
    let Some(body) = store::resolve(&mut tx, cart_id, &resolution).await? else {
        let view = store::find(&mut tx, cart_id, cutoff)
            .await?
            .ok_or(ResolveError::NotFound(cart_id))?;
        return match view.state {
            state if state == finding.state() => Ok(view),
            PaymentState::InFlight => Err(ResolveError::Conflict(format!(
                "payment call in flight; try again after {} (the call of cart {cart_id} \
                 started at {} and may still capture)",
                abandoned_at(view.called_at, payment_timeout).to_rfc3339(),
                view.called_at.to_rfc3339()
            ))),
            PaymentState::Captured if view.order_id.is_none() => {
                let since = view.result_at.unwrap_or(view.called_at);
                Err(ResolveError::Conflict(match finding {
                    Finding::Failed => format!(
                        "the payment of cart {cart_id} was captured; it cannot be resolved as failed"
                    ),
                    Finding::Captured => format!(
                        "the payment of cart {cart_id} was captured and its order may still be \
                         being written; try again after {}",
                        abandoned_at(since, payment_timeout).to_rfc3339()
                    ),
                }))
            }
            state => Err(ResolveError::Conflict(format!(
                "the payment of cart {cart_id} is {}, not unknown",
                state.as_str()
            ))),
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
    let view = store::find(&mut tx, cart_id, cutoff)
        .await?
        .ok_or(ResolveError::NotFound(cart_id))?;
    tx.commit().await?;
    tracing::warn!(%cart_id, ?finding, by, "payment resolved by an operator");
    Ok(view)
}
