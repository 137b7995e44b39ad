//! Order events for the storefront (issue 20): what happened to a checkout after it was
//! accepted, one event per change, written in the transaction of that change. Each type's
//! payload is a stable JSON shape (its schema is in the OpenAPI document).
//!
//! An event's id is derived from the change it reports (`checkout.ordered` of this cart,
//! `order.status_changed` to `shipped` of this order), not drawn at random: a change that
//! is recorded again (a redelivered message, a resubmit) finds its event there already and
//! adds none, and a receiver that dedupes on the id sees each change once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Reason;
use super::order::Source;

/// The kinds of event, as the storefront subscribes to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    CheckoutOrdered,
    CheckoutRejected,
    CheckoutPaymentUnknown,
    OrderStatusChanged,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::CheckoutOrdered,
        EventType::CheckoutRejected,
        EventType::CheckoutPaymentUnknown,
        EventType::OrderStatusChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CheckoutOrdered => "checkout.ordered",
            EventType::CheckoutRejected => "checkout.rejected",
            EventType::CheckoutPaymentUnknown => "checkout.payment_unknown",
            EventType::OrderStatusChanged => "order.status_changed",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `checkout.ordered`: the cart became an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CheckoutOrderedEvent)]
pub struct CheckoutOrdered {
    pub order_id: Uuid,
    pub cart_id: Uuid,
    /// In minor units of `currency`.
    pub total: i64,
    pub currency: String,
    /// `queue` (converted by the consumer) or `direct` (written at intake).
    pub source: Source,
}

/// `checkout.rejected`: the cart will not become an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CheckoutRejectedEvent)]
pub struct CheckoutRejected {
    pub cart_id: Uuid,
    /// `conflict`, `payment-declined` or `payment-failed`.
    pub reason: String,
    pub detail: String,
    /// The order in the way, for a `conflict`.
    pub order_id: Option<Uuid>,
}

/// `checkout.payment_unknown`: whether the payment went through is not known; a person
/// checks with the payment service, and `checkout.ordered` or `checkout.rejected` follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CheckoutPaymentUnknownEvent)]
pub struct CheckoutPaymentUnknown {
    pub cart_id: Uuid,
    pub detail: String,
}

/// `order.status_changed`: a fulfilment step (`sent_to_partner`, `received_by_partner`,
/// `shipped`, `delivered`). Never sent for an order before its `checkout.ordered`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = OrderStatusChangedEvent)]
pub struct OrderStatusChanged {
    pub order_id: Uuid,
    pub cart_id: Uuid,
    pub status: String,
    /// The transport partner the order is with.
    pub partner: Option<String>,
    pub tracking_id: Option<String>,
}

/// An event to record, its payload already JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// `evt_` and a UUID derived from the change.
    pub id: String,
    pub kind: EventType,
    pub cart_id: Uuid,
    pub order_id: Option<Uuid>,
    pub data: String,
    pub at: DateTime<Utc>,
}

/// The namespace of event ids (UUID v5): fixed, so an id is the same on every instance.
const EVENT_IDS: Uuid = Uuid::from_u128(0x6361_7274_6275_7300_8000_0000_6576_7473);

fn event_id(kind: EventType, key: &str) -> String {
    let id = Uuid::new_v5(&EVENT_IDS, format!("{kind}/{key}").as_bytes());
    format!("evt_{}", id.simple())
}

fn json(data: &impl Serialize) -> String {
    serde_json::to_string(data).expect("an event payload always serialises")
}

impl NewEvent {
    pub fn ordered(data: &CheckoutOrdered, at: DateTime<Utc>) -> NewEvent {
        NewEvent {
            id: event_id(EventType::CheckoutOrdered, &data.cart_id.to_string()),
            kind: EventType::CheckoutOrdered,
            cart_id: data.cart_id,
            order_id: Some(data.order_id),
            data: json(data),
            at,
        }
    }

    pub fn rejected(
        cart_id: Uuid,
        reason: Reason,
        detail: &str,
        order_id: Option<Uuid>,
        at: DateTime<Utc>,
    ) -> NewEvent {
        let data = CheckoutRejected {
            cart_id,
            reason: reason.as_str().to_string(),
            detail: detail.to_string(),
            order_id,
        };
        NewEvent {
            id: event_id(EventType::CheckoutRejected, &format!("{cart_id}/{reason}")),
            kind: EventType::CheckoutRejected,
            cart_id,
            order_id,
            data: json(&data),
            at,
        }
    }

    pub fn payment_unknown(cart_id: Uuid, detail: &str, at: DateTime<Utc>) -> NewEvent {
        let data = CheckoutPaymentUnknown {
            cart_id,
            detail: detail.to_string(),
        };
        NewEvent {
            id: event_id(EventType::CheckoutPaymentUnknown, &cart_id.to_string()),
            kind: EventType::CheckoutPaymentUnknown,
            cart_id,
            order_id: None,
            data: json(&data),
            at,
        }
    }

    pub fn status_changed(data: &OrderStatusChanged, at: DateTime<Utc>) -> NewEvent {
        NewEvent {
            id: event_id(
                EventType::OrderStatusChanged,
                &format!("{}/{}", data.order_id, data.status),
            ),
            kind: EventType::OrderStatusChanged,
            cart_id: data.cart_id,
            order_id: Some(data.order_id),
            data: json(data),
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_the_same_for_the_same_change_and_differs_between_changes() {
        let at = Utc::now();
        let cart_id = Uuid::now_v7();
        let ordered = CheckoutOrdered {
            order_id: Uuid::now_v7(),
            cart_id,
            total: 3998,
            currency: "GBP".into(),
            source: Source::Queue,
        };
        let once = NewEvent::ordered(&ordered, at);
        let again = NewEvent::ordered(&ordered, at + chrono::Duration::seconds(5));
        assert_eq!(once.id, again.id);
        assert!(
            once.id.starts_with("evt_") && once.id.len() == 36,
            "{}",
            once.id
        );
        let status = |status: &str| OrderStatusChanged {
            order_id: ordered.order_id,
            cart_id,
            status: status.into(),
            partner: Some("acme".into()),
            tracking_id: None,
        };
        let sent = NewEvent::status_changed(&status("sent_to_partner"), at);
        let shipped = NewEvent::status_changed(&status("shipped"), at);
        let ids = [&once.id, &sent.id, &shipped.id];
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        assert_eq!(
            EventType::parse("order.status_changed"),
            Some(EventType::OrderStatusChanged)
        );
        assert_eq!(EventType::parse("order.shipped"), None);
    }

    /// The payloads are a contract with storefronts: changing this test means a new
    /// event type or an added field, never a renamed or removed one.
    #[test]
    fn payloads_have_their_documented_shape() {
        let nil = Uuid::nil();
        let ordered = CheckoutOrdered {
            order_id: nil,
            cart_id: nil,
            total: 3998,
            currency: "GBP".into(),
            source: Source::Direct,
        };
        let value: serde_json::Value =
            serde_json::from_str(&NewEvent::ordered(&ordered, Utc::now()).data).expect("JSON");
        let n = nil.to_string();
        assert_eq!(
            value,
            serde_json::json!({"order_id": n, "cart_id": n, "total": 3998, "currency": "GBP", "source": "direct"})
        );
        let rejected = NewEvent::rejected(nil, Reason::Conflict, "taken", Some(nil), Utc::now());
        let value: serde_json::Value = serde_json::from_str(&rejected.data).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"cart_id": n, "reason": "conflict", "detail": "taken", "order_id": n})
        );
    }
}
