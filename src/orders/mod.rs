//! Purchase orders: the one way a cart becomes an order ([`place`]), used by both the
//! queue consumer and the direct-write fallback, and the reads behind the HTTP API.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use crate::checkout::{Cart, CartId};
use crate::db::{Db, Tx};
use crate::{on_db, on_tx};

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

/// Turns a cart into an order, lines and a `placed` status inside the caller's
/// transaction, idempotently on `cart_id`. Never overwrites an existing order.
pub async fn place(
    tx: &mut Tx,
    cart: &Cart,
    payload_hash: &str,
    source: Source,
) -> Result<Placement, sqlx::Error> {
    let order_id = Uuid::now_v7();
    let now = Utc::now();
    let customer = &cart.customer;
    let address = &cart.shipping_address;
    on_tx!(tx, |c| {
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO orders (id, cart_id, customer_id, customer_name, customer_email,
                 customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                 ship_postal_code, ship_country, currency, total, source, payload_hash,
                 created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (cart_id) DO NOTHING
             RETURNING id",
        )
        .bind(order_id)
        .bind(cart.cart_id.as_uuid())
        .bind(customer.id.as_deref())
        .bind(&customer.name)
        .bind(customer.email.as_str())
        .bind(customer.phone.as_deref())
        .bind(&address.line1)
        .bind(address.line2.as_deref())
        .bind(&address.city)
        .bind(address.region.as_deref())
        .bind(address.postal_code.as_deref())
        .bind(address.country.as_str())
        .bind(cart.currency.as_str())
        .bind(cart.total.minor_units())
        .bind(source.as_str())
        .bind(payload_hash)
        .bind(now)
        .fetch_optional(&mut *c)
        .await?;

        if inserted.is_none() {
            let (existing, existing_hash): (Uuid, String) =
                sqlx::query_as("SELECT id, payload_hash FROM orders WHERE cart_id = $1")
                    .bind(cart.cart_id.as_uuid())
                    .fetch_one(&mut *c)
                    .await?;
            return Ok(if existing_hash == payload_hash {
                Placement::Duplicate(existing)
            } else {
                Placement::Conflict(existing)
            });
        }

        let mut lines = sqlx::QueryBuilder::new(
            "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price) ",
        );
        lines.push_values(
            cart.lines.iter().zip(0_i32..),
            |mut row, (line, line_no)| {
                row.push_bind(order_id)
                    .push_bind(line_no)
                    .push_bind(&line.sku)
                    .push_bind(&line.name)
                    .push_bind(i32::try_from(line.quantity.get()).unwrap_or(i32::MAX))
                    .push_bind(line.unit_price.minor_units());
            },
        );
        lines.build().persistent(false).execute(&mut *c).await?;

        sqlx::query(
            "INSERT INTO order_status (order_id, status, at) VALUES ($1, 'placed', $2)
             ON CONFLICT (order_id, status) DO NOTHING",
        )
        .bind(order_id)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(Placement::Created(order_id))
    })
}

/// Records why a checkout was turned away, so that its status can say so.
pub async fn record_rejection(
    tx: &mut Tx,
    cart_id: Uuid,
    reason: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO rejected_checkouts (cart_id, reason, detail, at) VALUES ($1, $2, $3, $4)"
    )
    .bind(cart_id)
    .bind(reason)
    .bind(detail)
    .bind(Utc::now())
    .execute(&mut *c)
    .await
    .map(drop))
}

/// What the database knows about a checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckoutState {
    Ordered(Uuid),
    Rejected { reason: String, detail: String },
}

pub async fn checkout_state(
    db: &Db,
    cart_id: CartId,
) -> Result<Option<CheckoutState>, sqlx::Error> {
    on_db!(db, |pool| {
        let order: Option<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE cart_id = $1")
            .bind(cart_id.as_uuid())
            .fetch_optional(pool)
            .await?;
        if let Some(order_id) = order {
            return Ok(Some(CheckoutState::Ordered(order_id)));
        }
        let rejected: Option<(String, String)> = sqlx::query_as(
            "SELECT reason, detail FROM rejected_checkouts WHERE cart_id = $1
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(cart_id.as_uuid())
        .fetch_optional(pool)
        .await?;
        Ok(rejected.map(|(reason, detail)| CheckoutState::Rejected { reason, detail }))
    })
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub id: Option<String>,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct LineView {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    /// Minor units of the order's currency.
    pub unit_price: i64,
}

#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
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
    /// Oldest first.
    pub status_history: Vec<StatusEntry>,
}

#[derive(FromRow)]
struct OrderRow {
    id: Uuid,
    cart_id: Uuid,
    customer_id: Option<String>,
    customer_name: String,
    customer_email: String,
    customer_phone: Option<String>,
    ship_line1: String,
    ship_line2: Option<String>,
    ship_city: String,
    ship_region: Option<String>,
    ship_postal_code: Option<String>,
    ship_country: String,
    currency: String,
    total: i64,
    source: String,
    created_at: DateTime<Utc>,
    transport_partner: Option<String>,
    tracking_id: Option<String>,
}

pub async fn find(db: &Db, order_id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    on_db!(db, |pool| {
        let row: Option<OrderRow> = sqlx::query_as(
            "SELECT id, cart_id, customer_id, customer_name, customer_email, customer_phone,
                    ship_line1, ship_line2, ship_city, ship_region, ship_postal_code,
                    ship_country, currency, total, source, created_at, transport_partner,
                    tracking_id
             FROM orders WHERE id = $1",
        )
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let lines: Vec<LineView> = sqlx::query_as(
            "SELECT sku, name, quantity, unit_price FROM order_lines
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
        let status_history: Vec<StatusEntry> = sqlx::query_as(
            "SELECT status, at FROM order_status WHERE order_id = $1 ORDER BY at, seq",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
        Ok(Some(row.into_view(lines, status_history)))
    })
}

impl OrderRow {
    fn into_view(self, lines: Vec<LineView>, status_history: Vec<StatusEntry>) -> OrderView {
        OrderView {
            order_id: self.id,
            cart_id: self.cart_id,
            customer: CustomerView {
                id: self.customer_id,
                name: self.customer_name,
                email: self.customer_email,
                phone: self.customer_phone,
            },
            shipping_address: AddressView {
                line1: self.ship_line1,
                line2: self.ship_line2,
                city: self.ship_city,
                region: self.ship_region,
                postal_code: self.ship_postal_code,
                country: self.ship_country,
            },
            currency: self.currency,
            lines,
            total: self.total,
            source: if self.source == "direct" {
                Source::Direct
            } else {
                Source::Queue
            },
            created_at: self.created_at,
            transport_partner: self.transport_partner,
            tracking_id: self.tracking_id,
            status_history,
        }
    }
}
