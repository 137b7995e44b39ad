//! Placing orders: a batch of carts → orders, lines, `placed` statuses and outbox rows in
//! the caller's transaction, idempotent on `cart_id`; and the record of a checkout turned
//! away.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::order::{Placement, Source, timestamp_now};
use crate::domain::{Cart, Line, Reason};
use crate::on_tx;
use crate::store::outbox::OutboxLease;
use crate::store::{StoreError, Tx};

/// Turns a cart into an order, lines and a `placed` status inside the caller's
/// transaction, idempotently on `cart_id`. Never overwrites an existing order.
pub async fn place(
    tx: &mut Tx,
    cart: &Cart,
    payload_hash: &str,
    source: Source,
) -> Result<Placement, StoreError> {
    let placed = place_many(tx, &[(cart, payload_hash)], source, timestamp_now(), None).await?;
    placed
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::invariant("no placement for the cart"))
}

/// Most rows per multi-row statement: keeps every statement well under SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters (orders take 18 each, lines 6, outbox rows 8).
pub(super) const ORDERS_PER_STATEMENT: usize = 500;
const LINES_PER_STATEMENT: usize = 2_000;

/// [`place`] for a batch, in a handful of multi-row statements instead of three per
/// cart: insert every order (`ON CONFLICT (cart_id) DO NOTHING`), look up the carts that
/// already had one (duplicate or conflict, by payload hash), then insert the lines and
/// `placed` rows of the new orders. Placements come back in the order of `carts`; the
/// same cart twice in a batch is created once and a duplicate after that.
/// `now` is the new orders' `created_at` (see [`timestamp_now`]).
///
/// With `hand_off` (a lease and each cart's partner, aligned with `carts`), a new order
/// whose cart has a partner gets it as its `transport_partner` and its outbox row is
/// written already leased to the instance that will hand it on right after the commit
/// ([`OutboxLease`]) — not inserted and then updated. Without one, or for a cart without
/// a partner, the row waits for the polling relay as before.
pub async fn place_many(
    tx: &mut Tx,
    carts: &[(&Cart, &str)],
    source: Source,
    now: DateTime<Utc>,
    hand_off: Option<(&OutboxLease<'_>, &[Option<String>])>,
) -> Result<Vec<Placement>, StoreError> {
    let order_ids: Vec<Uuid> = carts.iter().map(|_| Uuid::now_v7()).collect();
    let no_partners = vec![None; carts.len()];
    let (lease, partners) = match hand_off {
        Some((lease, partners)) if partners.len() == carts.len() => (Some(lease), partners),
        Some(_) => return Err(StoreError::invariant("a partner for every cart, or none")),
        None => (None, no_partners.as_slice()),
    };
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
                 created_at, transport_partner)
             SELECT id, cart_id, customer_id, customer_name, customer_email, customer_phone,
                    ship_line1, ship_line2, ship_city, ship_region, ship_postal_code,
                    ship_country, currency, total, $15, payload_hash, $16, partner
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::text[], $14::bigint[], $17::text[],
                         $18::text[])
                  AS t(id, cart_id, customer_id, customer_name, customer_email,
                       customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                       ship_postal_code, ship_country, currency, total, payload_hash,
                       partner)
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
        .bind(partners)
        .fetch_all(&mut **c)
        .await?;
        created.extend(rows.into_iter().map(|(id, cart_id)| (cart_id, id)));
    } else {
        let chunks = carts
            .chunks(ORDERS_PER_STATEMENT)
            .zip(order_ids.chunks(ORDERS_PER_STATEMENT))
            .zip(partners.chunks(ORDERS_PER_STATEMENT));
        for ((chunk, ids), partners) in chunks {
            let new = NewOrders {
                carts: chunk,
                ids,
                partners,
            };
            insert_orders_values(tx, new, source, now, &mut created).await?;
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
    // Each new order's partner, when it is leased (aligned with `new_orders`).
    let mut new_partners: Vec<Option<&str>> = Vec::new();
    let mut first_seen: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for ((cart, hash), partner) in carts.iter().zip(partners) {
        let cart_id = cart.cart_id.as_uuid();
        // Test-only: play an insert that reports no row for a cart it did insert.
        let inserted = created
            .get(&cart_id)
            .filter(|_| !crate::fault::hit("order-neither-inserted-nor-found"));
        match inserted {
            Some(order_id) if first_seen.insert(cart_id) => {
                new_orders.push((cart, *order_id));
                new_partners.push(partner.as_deref().filter(|_| lease.is_some()));
                placements.push(Placement::Created(*order_id));
            }
            _ => {
                let (order_id, existing_hash) = existing.get(&cart_id).ok_or_else(|| {
                    StoreError::invariant(format!(
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
            // The fulfilment outbox row, in the order's own transaction (DESIGN §7); a
            // row with a partner is leased on the database's clock, as a relay's claim.
            sqlx::query(
                "INSERT INTO order_dispatch (order_id, partner, locked_by, locked_until,
                     next_attempt_at, batch_id, version, created_at)
                 SELECT id, partner,
                        CASE WHEN partner IS NULL THEN NULL ELSE $3::text END,
                        CASE WHEN partner IS NULL THEN NULL
                             ELSE now() + make_interval(secs => $4::float8 / 1000) END,
                        CASE WHEN partner IS NULL THEN $2
                             ELSE now() + make_interval(secs => $4::float8 / 1000) END,
                        CASE WHEN partner IS NULL THEN NULL ELSE $5::uuid END,
                        CASE WHEN partner IS NULL THEN 0 ELSE 1 END,
                        $2
                 FROM UNNEST($1::uuid[], $6::text[]) AS t(id, partner)",
            )
            .bind(new_orders.iter().map(|(_, id)| *id).collect::<Vec<Uuid>>())
            .bind(now)
            .bind(lease.map(|l| l.instance))
            .bind(lease.map(|l| l.duration.as_millis() as f64))
            .bind(lease.map(|l| l.batch_id))
            .bind(&new_partners)
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
    let chunks = new_orders
        .chunks(LINES_PER_STATEMENT)
        .zip(new_partners.chunks(LINES_PER_STATEMENT));
    for (chunk, partners) in chunks {
        on_tx!(tx, |c| {
            let mut insert =
                sqlx::QueryBuilder::new("INSERT INTO order_status (order_id, status, at) ");
            insert.push_values(chunk, |mut row, (_, order_id)| {
                row.push_bind(*order_id).push_bind("placed").push_bind(now);
            });
            insert.push(" ON CONFLICT (order_id, status) DO NOTHING");
            insert.build().execute(&mut *c).await?;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO order_dispatch (order_id, partner, locked_by, locked_until,
                     next_attempt_at, batch_id, version, created_at) ",
            );
            insert.push_values(
                chunk.iter().zip(partners),
                |mut row, ((_, order_id), partner)| {
                    let lease = lease.filter(|_| partner.is_some());
                    row.push_bind(*order_id)
                        .push_bind(*partner)
                        .push_bind(lease.map(|l| l.instance))
                        .push_bind(lease.map(|l| l.until))
                        .push_bind(lease.map_or(now, |l| l.until))
                        .push_bind(lease.map(|l| l.batch_id))
                        .push_bind(i32::from(lease.is_some()))
                        .push_bind(now);
                },
            );
            insert.build().execute(&mut *c).await.map(drop)
        })?;
    }
    Ok(placements)
}

/// A chunk of orders to insert: the carts with their payload hashes, the new ids and the
/// partners (aligned).
struct NewOrders<'a, 'c> {
    carts: &'a [(&'c Cart, &'c str)],
    ids: &'a [Uuid],
    partners: &'a [Option<String>],
}

/// SQLite's way: one multi-row `VALUES` per chunk (SQLite plans these cheaply).
async fn insert_orders_values(
    tx: &mut Tx,
    new: NewOrders<'_, '_>,
    source: Source,
    now: DateTime<Utc>,
    created: &mut HashMap<Uuid, Uuid>,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO orders (id, cart_id, customer_id, customer_name, customer_email,
                 customer_phone, ship_line1, ship_line2, ship_city, ship_region,
                 ship_postal_code, ship_country, currency, total, source, payload_hash,
                 created_at, transport_partner) ",
        );
        let rows = new.carts.iter().zip(new.ids).zip(new.partners);
        insert.push_values(rows, |mut row, (((cart, hash), id), partner)| {
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
                .push_bind(now)
                .push_bind(partner.as_deref());
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
    reason: Reason,
    detail: &str,
) -> Result<(), StoreError> {
    Ok(on_tx!(tx, |c| sqlx::query(
        "INSERT INTO rejected_checkouts (cart_id, reason, detail, at) VALUES ($1, $2, $3, $4)"
    )
    .bind(cart_id)
    .bind(reason.as_str())
    .bind(detail)
    .bind(Utc::now())
    .execute(&mut *c)
    .await
    .map(drop))?)
}
