//! Every reason a message is dead-lettered or a checkout rejected, written once.

/// Why a message was dead-lettered or a checkout turned away: stable strings, shown to
/// operators, storefronts and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Same cart_id, different payload from the order that exists.
    Conflict,
    /// A message schema version this consumer does not know.
    UnknownSchema,
    /// A message that cannot be decoded or holds an invalid cart.
    Invalid,
    /// Failed more often than the attempt limit allows.
    MaxAttempts,
    /// A partner reply whose signature is missing or wrong, or whose partner has no
    /// secret configured.
    BadSignature,
    /// A partner reply about an order that does not exist.
    UnknownOrder,
    /// A partner reply about an order assigned to another partner.
    WrongPartner,
    /// A partner reply about an order this site does not hold, naming another datacenter:
    /// the partner answered on the wrong site's broker.
    WrongDatacenter,
    /// The payment endpoint was called and whether it captured is not known: never
    /// called again; a person checks with the payment service and resolves it.
    PaymentUnknown,
    /// The payment service said no: the checkout is rejected (not a dead letter).
    PaymentDeclined,
    /// An operator found that an unknown payment did not go through: rejected.
    PaymentFailed,
}

impl Reason {
    /// Every reason, for metrics that show each one at 0 before it first happens.
    pub const ALL: [Reason; 11] = [
        Reason::Conflict,
        Reason::UnknownSchema,
        Reason::Invalid,
        Reason::MaxAttempts,
        Reason::BadSignature,
        Reason::UnknownOrder,
        Reason::WrongPartner,
        Reason::WrongDatacenter,
        Reason::PaymentUnknown,
        Reason::PaymentDeclined,
        Reason::PaymentFailed,
    ];

    /// The reasons a message can be dead-lettered for: all but the business outcomes.
    pub fn dead_lettered() -> impl Iterator<Item = Reason> {
        Reason::ALL
            .into_iter()
            .filter(|reason| !reason.is_business_outcome())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Conflict => "conflict",
            Reason::UnknownSchema => "unknown-schema",
            Reason::Invalid => "invalid",
            Reason::MaxAttempts => "max-attempts",
            Reason::BadSignature => "bad-signature",
            Reason::UnknownOrder => "unknown-order",
            Reason::WrongPartner => "wrong-partner",
            Reason::WrongDatacenter => "wrong-datacenter",
            Reason::PaymentUnknown => "payment-unknown",
            Reason::PaymentDeclined => "payment-declined",
            Reason::PaymentFailed => "payment-failed",
        }
    }

    /// The same word as a metric label value (`max_attempts`).
    pub fn label(self) -> &'static str {
        match self {
            Reason::Conflict => "conflict",
            Reason::UnknownSchema => "unknown_schema",
            Reason::Invalid => "invalid",
            Reason::MaxAttempts => "max_attempts",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownOrder => "unknown_order",
            Reason::WrongPartner => "wrong_partner",
            Reason::WrongDatacenter => "wrong_datacenter",
            Reason::PaymentUnknown => "payment_unknown",
            Reason::PaymentDeclined => "payment_declined",
            Reason::PaymentFailed => "payment_failed",
        }
    }

    /// A business outcome rather than a message that needs a person: the checkout is
    /// turned away and its message is done with, not dead-lettered.
    pub fn is_business_outcome(self) -> bool {
        matches!(self, Reason::PaymentDeclined | Reason::PaymentFailed)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::Reason;

    #[test]
    fn every_reason_has_its_own_words() {
        let words: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let labels: HashSet<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(words.len(), Reason::ALL.len());
        assert_eq!(labels.len(), Reason::ALL.len());
        for reason in Reason::ALL {
            assert_eq!(
                reason.label(),
                reason.as_str().replace('-', "_"),
                "{reason:?}"
            );
        }
        assert_eq!(Reason::dead_lettered().count(), Reason::ALL.len() - 2);
    }
}
