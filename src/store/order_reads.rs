//! Reading orders and checkouts back, as the API shows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::orders::ORDERS_PER_STATEMENT;
use crate::domain::order::{
    AddressView, CheckoutState, CustomerView, LineView, OrderView, Source, StatusEntry,
};
use crate::domain::{CartId, Reason};
use crate::on_db;
use crate::store::{Db, StoreError};

/// The orders placed for any of `cart_ids`: cart id → (order id, the hash of the cart it
/// was placed from). Carts without an order are left out.
pub async fn placed_many(
    db: &Db,
    cart_ids: &[Uuid],
) -> Result<HashMap<Uuid, (Uuid, String)>, StoreError> {
    if cart_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Uuid, String)> = match db {
        Db::Postgres(pool) => {
            sqlx::query_as("SELECT cart_id, id, payload_hash FROM orders WHERE cart_id = ANY($1)")
                .bind(cart_ids)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            let mut rows = Vec::new();
            for chunk in cart_ids.chunks(ORDERS_PER_STATEMENT) {
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT cart_id, id, payload_hash FROM orders WHERE cart_id IN (",
                );
                let mut ids = select.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                select.push(")");
                // One text per batch size: not worth a place in the statement cache.
                let found: Vec<(Uuid, Uuid, String)> = select
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(pool)
                    .await?;
                rows.extend(found);
            }
            rows
        }
    };
    Ok(rows
        .into_iter()
        .map(|(cart_id, order_id, hash)| (cart_id, (order_id, hash)))
        .collect())
}

pub async fn checkout_state(db: &Db, cart_id: CartId) -> Result<Option<CheckoutState>, StoreError> {
    on_db!(db, |pool| {
        let order: Option<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE cart_id = $1")
            .bind(cart_id.as_uuid())
            .fetch_optional(pool)
            .await?;
        let rejected: Option<(String, String)> = sqlx::query_as(
            "SELECT reason, detail FROM rejected_checkouts WHERE cart_id = $1
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(cart_id.as_uuid())
        .fetch_optional(pool)
        .await?;
        if let Some(order_id) = order {
            // A later cart under this cart_id with another payload was turned away: the
            // order is the first cart's, and the status says so.
            let conflict = rejected
                .filter(|(reason, _)| reason == Reason::Conflict.as_str())
                .map(|(_, detail)| detail);
            return Ok(Some(CheckoutState::Ordered { order_id, conflict }));
        }
        if let Some((reason, detail)) = rejected {
            return Ok(Some(CheckoutState::Rejected { reason, detail }));
        }
        let unknown = crate::store::payments::is_unknown(db, cart_id.as_uuid()).await?;
        Ok(unknown.then_some(CheckoutState::PaymentUnknown))
    })
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

pub async fn find(db: &Db, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
    on_db!(db, |pool| {
        // History first: a partner reply adds its status and tracking id in one
        // transaction, so the order row read after it is never older than the history.
        let status_history: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT status, at FROM order_status WHERE order_id = $1
             ORDER BY CASE status WHEN 'placed' THEN 0 WHEN 'sent_to_partner' THEN 1
                      WHEN 'received_by_partner' THEN 2 WHEN 'shipped' THEN 3
                      WHEN 'delivered' THEN 4 ELSE 5 END, at, seq",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
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
        let lines: Vec<(String, String, i32, i64)> = sqlx::query_as(
            "SELECT sku, name, quantity, unit_price FROM order_lines
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
        let lines = lines
            .into_iter()
            .map(|(sku, name, quantity, unit_price)| LineView {
                sku,
                name,
                quantity,
                unit_price,
            })
            .collect();
        let status_history = status_history
            .into_iter()
            .map(|(status, at)| StatusEntry { status, at })
            .collect();
        Ok(Some(row.into_view(lines, status_history)))
    })
}

/// Several orders with their lines, in two queries (no status history: callers that hand
/// orders on do not need it). Missing ids are left out.
pub async fn find_many(db: &Db, order_ids: &[Uuid]) -> Result<Vec<OrderView>, StoreError> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    const COLUMNS: &str = "id, cart_id, customer_id, customer_name, customer_email,
        customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code,
        ship_country, currency, total, source, created_at, transport_partner, tracking_id";
    let (rows, lines): (Vec<OrderRow>, Vec<(Uuid, LineView)>) = match db {
        Db::Postgres(pool) => {
            let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM orders WHERE id = ANY($1)"
            )))
            .bind(order_ids)
            .fetch_all(pool)
            .await?;
            let lines: Vec<LineRow> = sqlx::query_as(
                "SELECT order_id, sku, name, quantity, unit_price FROM order_lines
                 WHERE order_id = ANY($1) ORDER BY order_id, line_no",
            )
            .bind(order_ids)
            .fetch_all(pool)
            .await?;
            (rows, lines.into_iter().map(LineRow::split).collect())
        }
        Db::Sqlite(pool) => {
            let mut rows = Vec::new();
            let mut lines = Vec::new();
            for chunk in order_ids.chunks(ORDERS_PER_STATEMENT) {
                let mut select =
                    sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM orders WHERE id IN ("));
                let mut ids = select.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                select.push(")");
                rows.extend(select.build_query_as::<OrderRow>().fetch_all(pool).await?);
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT order_id, sku, name, quantity, unit_price FROM order_lines
                     WHERE order_id IN (",
                );
                let mut ids = select.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                select.push(") ORDER BY order_id, line_no");
                let found: Vec<LineRow> = select.build_query_as().fetch_all(pool).await?;
                lines.extend(found.into_iter().map(LineRow::split));
            }
            (rows, lines)
        }
    };
    let mut by_order: HashMap<Uuid, Vec<LineView>> = HashMap::with_capacity(rows.len());
    for (order_id, line) in lines {
        by_order.entry(order_id).or_default().push(line);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let lines = by_order.remove(&row.id).unwrap_or_default();
            row.into_view(lines, Vec::new())
        })
        .collect())
}

#[derive(FromRow)]
struct LineRow {
    order_id: Uuid,
    sku: String,
    name: String,
    quantity: i32,
    unit_price: i64,
}

impl LineRow {
    fn split(self) -> (Uuid, LineView) {
        (
            self.order_id,
            LineView {
                sku: self.sku,
                name: self.name,
                quantity: self.quantity,
                unit_price: self.unit_price,
            },
        )
    }
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
            status: status_history.last().map(|entry| entry.status.clone()),
            status_history,
        }
    }
}
