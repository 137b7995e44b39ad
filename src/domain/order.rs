//! Orders as the API shows them, and what placing a cart can come to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
/// How an order came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl OrderView {
    /// The order a cart has just become, as `GET /v1/orders/{order_id}` will read it back:
    /// what the consumer hands to a partner right after its commit, without reading it.
    /// `created_at` is what was written (whole microseconds, which both databases keep).
    pub fn placed(
        cart: &crate::domain::Cart,
        order_id: Uuid,
        source: Source,
        created_at: DateTime<Utc>,
    ) -> OrderView {
        let customer = &cart.customer;
        let address = &cart.shipping_address;
        OrderView {
            order_id,
            cart_id: cart.cart_id.as_uuid(),
            customer: CustomerView {
                id: customer.id.clone(),
                name: customer.name.clone(),
                email: customer.email.as_str().to_string(),
                phone: customer.phone.clone(),
            },
            shipping_address: AddressView {
                line1: address.line1.clone(),
                line2: address.line2.clone(),
                city: address.city.clone(),
                region: address.region.clone(),
                postal_code: address.postal_code.clone(),
                country: address.country.as_str().to_string(),
            },
            currency: cart.currency.as_str().to_string(),
            lines: cart
                .lines
                .iter()
                .map(|line| LineView {
                    sku: line.sku.clone(),
                    name: line.name.clone(),
                    quantity: i32::try_from(line.quantity.get()).unwrap_or(i32::MAX),
                    unit_price: line.unit_price.minor_units(),
                })
                .collect(),
            total: cart.total.minor_units(),
            source,
            created_at,
            transport_partner: None,
            tracking_id: None,
            status: Some("placed".to_string()),
            status_history: vec![StatusEntry {
                status: "placed".to_string(),
                at: created_at,
            }],
        }
    }
}

/// Now, as an order's timestamps are stored: whole microseconds, which PostgreSQL keeps
/// and SQLite keeps too, so that a view built in memory equals the one read back.
pub fn timestamp_now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}
