//! Orders as the API shows them, and what placing a cart can come to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
/// How an order came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Queued at intake, converted by the consumer.
    Queue,
    /// Written at intake because the queue could not take the cart.
    Direct,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Queue => "queue",
            Source::Direct => "direct",
        }
    }
}

/// What placing a cart did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Created(Uuid),
    /// The same cart was ordered before: nothing changed.
    Duplicate(Uuid),
    /// An order exists for this cart_id with a different payload: nothing changed.
    Conflict(Uuid),
}

impl Placement {
    pub fn order_id(self) -> Uuid {
        match self {
            Placement::Created(id) | Placement::Duplicate(id) | Placement::Conflict(id) => id,
        }
    }
}

/// What the database knows about a checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckoutState {
    Ordered {
        order_id: Uuid,
        /// Set when a later cart with this cart_id and another payload was turned away
        /// (`conflict`): why, so that the status does not read as that cart's order.
        conflict: Option<String>,
    },
    Rejected {
        reason: String,
        detail: String,
    },
    /// Still pending: the payment call's outcome is unknown until a person resolves it.
    PaymentUnknown,
}

// The views below are also the customer, address and lines of a partner's `new-order`
// message (`partner::NewOrder`), which partners deserialise.

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub id: Option<String>,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddressView {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2
    #[schema(example = "GB")]
    pub country: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineView {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    /// Minor units of the order's currency.
    pub unit_price: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StatusEntry {
    #[schema(example = "placed")]
    pub status: String,
    pub at: DateTime<Utc>,
}

/// A purchase order as `GET /v1/orders/{order_id}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: Uuid,
    pub cart_id: Uuid,
    pub customer: CustomerView,
    pub shipping_address: AddressView,
    /// ISO 4217
    #[schema(example = "GBP")]
    pub currency: String,
    pub lines: Vec<LineView>,
    /// Minor units of `currency`.
    pub total: i64,
    pub source: Source,
    pub created_at: DateTime<Utc>,
    pub transport_partner: Option<String>,
    pub tracking_id: Option<String>,
    /// The furthest status reached (the last of `status_history`).
    #[schema(example = "shipped")]
    pub status: Option<String>,
    /// In the order of the fulfilment steps (`placed`, `sent_to_partner`,
    /// `received_by_partner`, `shipped`, `delivered`), so a partner reply that arrives
    /// late never moves it backwards; within a step, oldest first.
    pub status_history: Vec<StatusEntry>,
}
