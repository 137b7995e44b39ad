//! What resubmitting a dead letter came to: the words operators read in a resubmit's
//! report and in `cartbus_dead_letter_resubmits_total`.

use serde::Serialize;

use super::Reason;

/// What a resubmit did, or (dry run) would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Dry run: the cart would become a new order.
    WouldCreateOrder,
    CreatedOrder,
    /// The cart has its order already (same payload): nothing new, and the dead letter is
    /// resolved.
    Duplicate,
    /// Another order holds this cart_id with a different payload: resubmit a corrected
    /// cart (a new cart_id), or delete the dead letter.
    Conflict,
    /// Still not a valid cart or reply.
    Invalid,
    /// A schema version this build does not read.
    UnknownSchema,
    /// The payment was refused: the checkout is rejected, no order; resolved.
    PaymentDeclined,
    /// The payment's outcome is unknown: resolve it through `/v1/admin/payments` first.
    PaymentUnknown,
    /// Dry run: the partner reply would be recorded.
    WouldApplyReply,
    ReplyApplied,
    BadSignature,
    UnknownOrder,
    WrongPartner,
    WrongDatacenter,
}

impl Outcome {
    /// Every outcome, for `cartbus_dead_letter_resubmits_total`, which shows each one at 0
    /// before it first happens.
    pub const ALL: [Outcome; 14] = [
        Outcome::WouldCreateOrder,
        Outcome::CreatedOrder,
        Outcome::Duplicate,
        Outcome::Conflict,
        Outcome::Invalid,
        Outcome::UnknownSchema,
        Outcome::PaymentDeclined,
        Outcome::PaymentUnknown,
        Outcome::WouldApplyReply,
        Outcome::ReplyApplied,
        Outcome::BadSignature,
        Outcome::UnknownOrder,
        Outcome::WrongPartner,
        Outcome::WrongDatacenter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::WouldCreateOrder => "would-create-order",
            Outcome::CreatedOrder => "created-order",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict => Reason::Conflict.as_str(),
            Outcome::Invalid => "invalid",
            Outcome::UnknownSchema => "unknown-schema",
            Outcome::PaymentDeclined => Reason::PaymentDeclined.as_str(),
            Outcome::PaymentUnknown => "payment-unknown",
            Outcome::WouldApplyReply => "would-apply-reply",
            Outcome::ReplyApplied => "reply-applied",
            Outcome::BadSignature => "bad-signature",
            Outcome::UnknownOrder => "unknown-order",
            Outcome::WrongPartner => "wrong-partner",
            Outcome::WrongDatacenter => Reason::WrongDatacenter.as_str(),
        }
    }

    /// An outcome only a dry run has (and a dry run is not counted in metrics).
    pub fn is_dry_run(self) -> bool {
        matches!(self, Outcome::WouldCreateOrder | Outcome::WouldApplyReply)
    }

    /// Whether this outcome, for real, takes the dead letter off the open list.
    pub fn resolves(self) -> bool {
        matches!(
            self,
            Outcome::CreatedOrder
                | Outcome::Duplicate
                | Outcome::PaymentDeclined
                | Outcome::ReplyApplied
        )
    }

    pub fn refused(reason: Reason) -> Outcome {
        match reason {
            Reason::BadSignature => Outcome::BadSignature,
            Reason::UnknownOrder => Outcome::UnknownOrder,
            Reason::WrongPartner => Outcome::WrongPartner,
            Reason::WrongDatacenter => Outcome::WrongDatacenter,
            _ => Outcome::Invalid,
        }
    }
}
