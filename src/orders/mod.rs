//! Purchase orders: the one way a cart becomes an order ([`place`]), used by both the
//! queue consumer and the direct-write fallback, and the reads behind the HTTP API.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use crate::checkout::{Cart, CartId, Line};
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
    let placed = place_many(tx, &[(cart, payload_hash)], source).await?;
    placed
        .into_iter()
        .next()
        .ok_or_else(|| sqlx::Error::Protocol("no placement for the cart".into()))
}

/// Most rows per multi-row statement: keeps every statement well under SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters (orders take 17 each, lines 6).
const ORDERS_PER_STATEMENT: usize = 500;
const LINES_PER_STATEMENT: usize = 2_000;

/// [`place`] for a batch, in a handful of multi-row statements instead of three per
/// cart: insert every order (`ON CONFLICT (cart_id) DO NOTHING`), look up the carts that
/// already had one (duplicate or conflict, by payload hash), then insert the lines and
/// `placed` rows of the new orders. Placements come back in the order of `carts`; the
/// same cart twice in a batch is created once and a duplicate after that.
pub async fn place_many(
    tx: &mut Tx,
    carts: &[(&Cart, &str)],
    source: Source,
) -> Result<Vec<Placement>, sqlx::Error> {
    let now = Utc::now();
    let order_ids: Vec<Uuid> = carts.iter().map(|_| Uuid::now_v7()).collect();
    let mut created: HashMap<Uuid, Uuid> = HashMap::with_capacity(carts.len());
    if let Tx::Postgres(c) = tx {
        // One statement whatever the batch size: columns as arrays, UNNEST into rows.
        // (A multi-row VALUES of thousands of parameters costs PostgreSQL ~50 ms a batch
        // in parse and plan; this is one cached statement.)
        let column = |f: &dyn Fn(&Cart) -> Option<String>| -> Vec<Option<String>> {
            carts.iter().map(|(cart, _)| f(cart)).collect()
        };
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "INSERT INTO orders (id, cart_id, customer_id, customer_name, customer_email,
                 customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                 ship_postal_code, ship_country, currency, total, source, payload_hash,
                 created_at)
             SELECT id, cart_id, customer_id, customer_name, customer_email, customer_phone,
                    ship_line1, ship_line2, ship_city, ship_region, ship_postal_code,
                    ship_country, currency, total, $15, payload_hash, $16
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::text[], $14::bigint[], $17::text[])
                  AS t(id, cart_id, customer_id, customer_name, customer_email,
                       customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                       ship_postal_code, ship_country, currency, total, payload_hash)
             ON CONFLICT (cart_id) DO NOTHING
             RETURNING id, cart_id",
        )
        .bind(&order_ids)
        .bind(
            carts
                .iter()
                .map(|(c, _)| c.cart_id.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(column(&|c| c.customer.id.clone()))
        .bind(column(&|c| Some(c.customer.name.clone())))
        .bind(column(&|c| Some(c.customer.email.as_str().to_string())))
        .bind(column(&|c| c.customer.phone.clone()))
        .bind(column(&|c| Some(c.shipping_address.line1.clone())))
        .bind(column(&|c| c.shipping_address.line2.clone()))
        .bind(column(&|c| Some(c.shipping_address.city.clone())))
        .bind(column(&|c| c.shipping_address.region.clone()))
        .bind(column(&|c| c.shipping_address.postal_code.clone()))
        .bind(column(&|c| {
            Some(c.shipping_address.country.as_str().to_string())
        }))
        .bind(column(&|c| Some(c.currency.as_str().to_string())))
        .bind(
            carts
                .iter()
                .map(|(c, _)| c.total.minor_units())
                .collect::<Vec<i64>>(),
        )
        .bind(source.as_str())
        .bind(now)
        .bind(
            carts
                .iter()
                .map(|(_, h)| h.to_string())
                .collect::<Vec<String>>(),
        )
        .fetch_all(&mut **c)
        .await?;
        created.extend(rows.into_iter().map(|(id, cart_id)| (cart_id, id)));
    } else {
        for (chunk, ids) in carts
            .chunks(ORDERS_PER_STATEMENT)
            .zip(order_ids.chunks(ORDERS_PER_STATEMENT))
        {
            insert_orders_values(tx, chunk, ids, source, now, &mut created).await?;
        }
    }

    // Carts that had an order already (before this batch, or earlier in it).
    let mut existing: HashMap<Uuid, (Uuid, String)> = HashMap::new();
    let mut seen: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    let to_look_up: Vec<Uuid> = carts
        .iter()
        .map(|(cart, _)| cart.cart_id.as_uuid())
        .filter(|id| !created.contains_key(id) || !seen.insert(*id))
        .collect();
    if let (Tx::Postgres(c), false) = (&mut *tx, to_look_up.is_empty()) {
        let rows: Vec<(Uuid, Uuid, String)> =
            sqlx::query_as("SELECT id, cart_id, payload_hash FROM orders WHERE cart_id = ANY($1)")
                .bind(&to_look_up)
                .fetch_all(&mut **c)
                .await?;
        existing.extend(
            rows.into_iter()
                .map(|(id, cart_id, hash)| (cart_id, (id, hash))),
        );
    } else if !to_look_up.is_empty() {
        for chunk in to_look_up.chunks(ORDERS_PER_STATEMENT) {
            on_tx!(tx, |c| {
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT id, cart_id, payload_hash FROM orders WHERE cart_id IN (",
                );
                let mut ids = select.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                select.push(")");
                let rows: Vec<(Uuid, Uuid, String)> =
                    select.build_query_as().fetch_all(&mut *c).await?;
                existing.extend(
                    rows.into_iter()
                        .map(|(id, cart_id, hash)| (cart_id, (id, hash))),
                );
                Ok::<_, sqlx::Error>(())
            })?;
        }
    }

    let mut placements = Vec::with_capacity(carts.len());
    let mut new_orders: Vec<(&Cart, Uuid)> = Vec::new();
    let mut first_seen: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for (cart, hash) in carts {
        let cart_id = cart.cart_id.as_uuid();
        match created.get(&cart_id) {
            Some(order_id) if first_seen.insert(cart_id) => {
                new_orders.push((cart, *order_id));
                placements.push(Placement::Created(*order_id));
            }
            _ => {
                let (order_id, existing_hash) = existing.get(&cart_id).ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "order for cart {cart_id} neither inserted nor found"
                    ))
                })?;
                placements.push(if existing_hash == hash {
                    Placement::Duplicate(*order_id)
                } else {
                    Placement::Conflict(*order_id)
                });
            }
        }
    }

    let lines: Vec<(Uuid, i32, &Line)> = new_orders
        .iter()
        .flat_map(|(cart, order_id)| {
            cart.lines
                .iter()
                .zip(0_i32..)
                .map(move |(line, line_no)| (*order_id, line_no, line))
        })
        .collect();
    if let Tx::Postgres(c) = tx {
        if !new_orders.is_empty() {
            sqlx::query(
                "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price)
                 SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[],
                                      $6::bigint[])",
            )
            .bind(lines.iter().map(|(id, _, _)| *id).collect::<Vec<Uuid>>())
            .bind(lines.iter().map(|(_, n, _)| *n).collect::<Vec<i32>>())
            .bind(
                lines
                    .iter()
                    .map(|(_, _, l)| l.sku.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                lines
                    .iter()
                    .map(|(_, _, l)| l.name.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                lines
                    .iter()
                    .map(|(_, _, l)| i32::try_from(l.quantity.get()).unwrap_or(i32::MAX))
                    .collect::<Vec<i32>>(),
            )
            .bind(
                lines
                    .iter()
                    .map(|(_, _, l)| l.unit_price.minor_units())
                    .collect::<Vec<i64>>(),
            )
            .execute(&mut **c)
            .await?;
            sqlx::query(
                "INSERT INTO order_status (order_id, status, at)
                 SELECT id, 'placed', $2 FROM UNNEST($1::uuid[]) AS t(id)
                 ON CONFLICT (order_id, status) DO NOTHING",
            )
            .bind(new_orders.iter().map(|(_, id)| *id).collect::<Vec<Uuid>>())
            .bind(now)
            .execute(&mut **c)
            .await?;
            // The fulfilment outbox row, in the order's own transaction (DESIGN §7).
            sqlx::query(
                "INSERT INTO order_dispatch (order_id, next_attempt_at, created_at)
                 SELECT id, $2, $2 FROM UNNEST($1::uuid[]) AS t(id)",
            )
            .bind(new_orders.iter().map(|(_, id)| *id).collect::<Vec<Uuid>>())
            .bind(now)
            .execute(&mut **c)
            .await?;
        }
        return Ok(placements);
    }
    for chunk in lines.chunks(LINES_PER_STATEMENT) {
        on_tx!(tx, |c| {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price) ",
            );
            insert.push_values(chunk, |mut row, (order_id, line_no, line)| {
                row.push_bind(*order_id)
                    .push_bind(*line_no)
                    .push_bind(&line.sku)
                    .push_bind(&line.name)
                    .push_bind(i32::try_from(line.quantity.get()).unwrap_or(i32::MAX))
                    .push_bind(line.unit_price.minor_units());
            });
            insert.build().execute(&mut *c).await.map(drop)
        })?;
    }
    for chunk in new_orders.chunks(LINES_PER_STATEMENT) {
        on_tx!(tx, |c| {
            let mut insert =
                sqlx::QueryBuilder::new("INSERT INTO order_status (order_id, status, at) ");
            insert.push_values(chunk, |mut row, (_, order_id)| {
                row.push_bind(*order_id).push_bind("placed").push_bind(now);
            });
            insert.push(" ON CONFLICT (order_id, status) DO NOTHING");
            insert.build().execute(&mut *c).await?;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO order_dispatch (order_id, next_attempt_at, created_at) ",
            );
            insert.push_values(chunk, |mut row, (_, order_id)| {
                row.push_bind(*order_id).push_bind(now).push_bind(now);
            });
            insert.build().execute(&mut *c).await.map(drop)
        })?;
    }
    Ok(placements)
}

/// SQLite's way: one multi-row `VALUES` per chunk (SQLite plans these cheaply).
async fn insert_orders_values(
    tx: &mut Tx,
    chunk: &[(&Cart, &str)],
    ids: &[Uuid],
    source: Source,
    now: DateTime<Utc>,
    created: &mut HashMap<Uuid, Uuid>,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO orders (id, cart_id, customer_id, customer_name, customer_email,
                 customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                 ship_postal_code, ship_country, currency, total, source, payload_hash,
                 created_at) ",
        );
        insert.push_values(chunk.iter().zip(ids), |mut row, ((cart, hash), id)| {
            let customer = &cart.customer;
            let address = &cart.shipping_address;
            row.push_bind(*id)
                .push_bind(cart.cart_id.as_uuid())
                .push_bind(customer.id.as_deref())
                .push_bind(&customer.name)
                .push_bind(customer.email.as_str())
                .push_bind(customer.phone.as_deref())
                .push_bind(&address.line1)
                .push_bind(address.line2.as_deref())
                .push_bind(&address.city)
                .push_bind(address.region.as_deref())
                .push_bind(address.postal_code.as_deref())
                .push_bind(address.country.as_str())
                .push_bind(cart.currency.as_str())
                .push_bind(cart.total.minor_units())
                .push_bind(source.as_str())
                .push_bind(*hash)
                .push_bind(now);
        });
        insert.push(" ON CONFLICT (cart_id) DO NOTHING RETURNING id, cart_id");
        let rows: Vec<(Uuid, Uuid)> = insert.build_query_as().fetch_all(&mut *c).await?;
        created.extend(rows.into_iter().map(|(id, cart_id)| (cart_id, id)));
        Ok(())
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
    Rejected {
        reason: String,
        detail: String,
    },
    /// Still pending: the payment call's outcome is unknown until a person resolves it.
    PaymentUnknown,
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
        if let Some((reason, detail)) = rejected {
            return Ok(Some(CheckoutState::Rejected { reason, detail }));
        }
        let unknown = crate::payments::store::is_unknown(db, cart_id.as_uuid()).await?;
        Ok(unknown.then_some(CheckoutState::PaymentUnknown))
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
    /// The furthest status reached (the last of `status_history`).
    #[schema(example = "shipped")]
    pub status: Option<String>,
    /// In the order of the fulfilment steps (`placed`, `sent_to_partner`,
    /// `received_by_partner`, `shipped`, `delivered`), so a partner reply that arrives
    /// late never moves it backwards; within a step, oldest first.
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
        // History first: a partner reply adds its status and tracking id in one
        // transaction, so the order row read after it is never older than the history.
        let status_history: Vec<StatusEntry> = sqlx::query_as(
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
        let lines: Vec<LineView> = sqlx::query_as(
            "SELECT sku, name, quantity, unit_price FROM order_lines
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await?;
        Ok(Some(row.into_view(lines, status_history)))
    })
}

/// Several orders with their lines, in two queries (no status history: callers that hand
/// orders on do not need it). Missing ids are left out.
pub async fn find_many(db: &Db, order_ids: &[Uuid]) -> Result<Vec<OrderView>, sqlx::Error> {
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
