//! A cart's payment step as the API shows it, and the time rules around a capture call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

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
    pub fn state(self) -> PaymentState {
        match self {
            Finding::Captured => PaymentState::ResolvedCaptured,
            Finding::Failed => PaymentState::ResolvedFailed,
        }
    }
}

/// What one capture call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// 2xx: the payment is taken.
    Captured { payment_id: Option<String> },
    /// 402 or 422: the payment service said no; a business outcome.
    Declined { detail: String },
    /// The request never left (no connection): nothing can have been captured.
    NotSent { detail: String },
    /// It may or may not have captured (timeout, 5xx, a connection lost mid-request, …).
    Unknown { detail: String },
}

impl CallOutcome {
    /// Every value [`CallOutcome::label`] gives, for the metric to show each at 0 before
    /// it first happens.
    pub const LABELS: [&'static str; 4] = ["captured", "declined", "not_sent", "unknown"];

    /// The `outcome` label of `cartbus_payment_calls_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CallOutcome::Captured { .. } => "captured",
            CallOutcome::Declined { .. } => "declined",
            CallOutcome::NotSent { .. } => "not_sent",
            CallOutcome::Unknown { .. } => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CallOutcome;

    #[test]
    fn labels_lists_every_call_outcome_once() {
        let detail = String::new;
        let labels: Vec<&str> = [
            CallOutcome::Captured { payment_id: None },
            CallOutcome::Declined { detail: detail() },
            CallOutcome::NotSent { detail: detail() },
            CallOutcome::Unknown { detail: detail() },
        ]
        .iter()
        .map(CallOutcome::label)
        .collect();
        assert_eq!(labels, CallOutcome::LABELS);
    }
}
