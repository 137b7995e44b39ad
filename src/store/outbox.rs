//! The outbox table `order_dispatch` (DESIGN §5, §7): claiming a batch under a lease, and
//! recording what became of each row. Every write after the claim names the batch and
//! requires the lease to hold, so a relay that stalled past its lease changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use crate::domain::event::{NewEvent, OrderStatusChanged};
use crate::on_db;
use crate::store::{Db, StoreError, events};

/// One row a relay holds.
#[derive(Clone, Debug, FromRow)]
pub struct Claimed {
    pub order_id: Uuid,
    pub retry_count: i32,
    /// Set when an earlier attempt routed it: the order stays with that partner.
    pub partner: Option<String>,
}

/// Locks up to `limit` due rows for `batch_id` for `until - now` — rows that are pending
/// or waiting to retry, due, and not leased (or whose lease lapsed) — and routes them, in
/// one transaction (one commit per batch, not two). PostgreSQL skips rows another relay
/// is claiming at this moment; SQLite has one writer, so the claim is atomic.
///
/// A row routed by an earlier attempt keeps its partner; the others get `route(country,
/// region)`, recorded on the row and on the order before anything is sent, so that the
/// partner's reply can be checked against it. `partner` is `None` where no rule matched.
pub async fn claim(
    db: &Db,
    instance: &str,
    batch_id: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
    route: &(dyn Fn(&str, Option<&str>) -> Option<String> + Sync),
) -> Result<Vec<Claimed>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Leases on the database's clock: instances whose clocks disagree still agree
            // on whether a lease has lapsed.
            let lease_ms = (until - now).num_milliseconds();
            let mut claimed: Vec<Claimed> = sqlx::query_as(
                "UPDATE order_dispatch d
                 SET locked_by = $1, locked_until = now() + make_interval(secs => $2::float8 / 1000),
                     batch_id = $3, version = d.version + 1
                 FROM (SELECT order_id FROM order_dispatch
                       WHERE process_status IN ('pending', 'error') AND next_attempt_at <= now()
                         AND (locked_until IS NULL OR locked_until < now())
                       ORDER BY next_attempt_at
                       LIMIT $4
                       FOR UPDATE SKIP LOCKED) due
                 WHERE d.order_id = due.order_id
                 RETURNING d.order_id, d.retry_count, d.partner",
            )
            .bind(instance)
            .bind(lease_ms as f64)
            .bind(batch_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let unrouted = unrouted(&claimed);
            if !unrouted.is_empty() {
                let places: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
                    "SELECT id, ship_country, ship_region FROM orders WHERE id = ANY($1)",
                )
                .bind(&unrouted)
                .fetch_all(&mut *tx)
                .await?;
                let assigned = assign(&mut claimed, &places, route);
                let (ids, partners): (Vec<Uuid>, Vec<String>) = assigned.into_iter().unzip();
                sqlx::query(
                    "UPDATE order_dispatch d SET partner = t.partner
                     FROM UNNEST($1::uuid[], $2::text[]) AS t(order_id, partner)
                     WHERE d.order_id = t.order_id",
                )
                .bind(&ids)
                .bind(&partners)
                .execute(&mut *tx)
                .await?;
                record_partners(&mut tx, &ids, &partners).await?;
            }
            tx.commit().await?;
            Ok(claimed)
        }
        Db::Sqlite(pool) => {
            // The due rows, by the partial index in due order (without `INDEXED BY` the
            // planner takes the status index and sorts every pending row). A read: a poll
            // that finds nothing never takes SQLite's one write lock from the consumer.
            macro_rules! due {
                () => {
                    "SELECT order_id FROM order_dispatch INDEXED BY order_dispatch_due
                     WHERE process_status IN ('pending', 'error') AND next_attempt_at <= $1
                       AND (locked_until IS NULL OR locked_until < $1)
                     ORDER BY next_attempt_at
                     LIMIT $2"
                };
            }
            let due: Option<Uuid> = sqlx::query_scalar(due!())
                .bind(now)
                .bind(1_i64)
                .fetch_optional(pool)
                .await?;
            if due.is_none() {
                return Ok(Vec::new());
            }
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut claimed: Vec<Claimed> = sqlx::query_as(concat!(
                "UPDATE order_dispatch
                 SET locked_by = $3, locked_until = $4, batch_id = $5, version = version + 1
                 WHERE order_id IN (",
                due!(),
                ") RETURNING order_id, retry_count, partner"
            ))
            .bind(now)
            .bind(limit)
            .bind(instance)
            .bind(until)
            .bind(batch_id)
            .fetch_all(&mut *tx)
            .await?;
            let unrouted = unrouted(&claimed);
            let mut places: Vec<(Uuid, String, Option<String>)> = Vec::new();
            for chunk in unrouted.chunks(SQLITE_ROWS_PER_STATEMENT) {
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT id, ship_country, ship_region FROM orders WHERE id IN (",
                );
                let mut ids = select.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                select.push(")");
                places.extend(select.build_query_as().fetch_all(&mut *tx).await?);
            }
            let (ids, partners): (Vec<Uuid>, Vec<String>) =
                assign(&mut claimed, &places, route).into_iter().unzip();
            route_sqlite(&mut tx, &ids, &partners).await?;
            tx.commit().await?;
            Ok(claimed)
        }
    }
}

/// Records on the orders (PostgreSQL) the partner each is routed to, so that the
/// partner's replies can be checked against it.
async fn record_partners(
    c: &mut sqlx::PgConnection,
    ids: &[Uuid],
    partners: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders o SET transport_partner = t.partner
         FROM UNNEST($1::uuid[], $2::text[]) AS t(order_id, partner)
         WHERE o.id = t.order_id",
    )
    .bind(ids)
    .bind(partners)
    .execute(c)
    .await
    .map(drop)
}

/// Rows per SQLite statement in the multi-row writes below (at most three binds a row,
/// far under SQLite's 32,766).
const SQLITE_ROWS_PER_STATEMENT: usize = 1_000;

// Every `UPDATE … FROM t` on SQLite below also says `AND <key> IN (SELECT id FROM t)`.
// Without it SQLite (3.54) plans a join with 256 rows of t or more as a scan of the whole
// table against a bloom filter of t: each statement cost more the more orders the shop
// had (50 ms a chunk with 300k orders, half the statement time of a busy drain). With it,
// one primary-key look-up a row; `tests::updates_from_values_look_rows_up_by_key` holds it.

/// After `WITH t(id, partner) AS (VALUES …) `: the outbox rows' partners.
const ROUTE_DISPATCH_SQLITE: &str =
    "UPDATE order_dispatch SET partner = t.partner FROM t WHERE order_dispatch.order_id = t.id
       AND order_dispatch.order_id IN (SELECT id FROM t)";
/// After `WITH t(id, partner) AS (VALUES …) `: the orders' partners.
const ROUTE_ORDERS_SQLITE: &str = "UPDATE orders SET transport_partner = t.partner
       FROM t WHERE orders.id = t.id AND orders.id IN (SELECT id FROM t)";
/// After `WITH t(id, batch) AS (VALUES …) `, around the bound `processed_at`: the rows
/// sent, if still leased by the batch that sent them.
const MARK_SENT_SQLITE: [&str; 2] = [
    "UPDATE order_dispatch SET process_status = 'processed', processed_at = ",
    ", locked_until = NULL, last_error = NULL, version = version + 1
     FROM t WHERE order_dispatch.order_id = t.id
       AND order_dispatch.batch_id = t.batch
       AND order_dispatch.order_id IN (SELECT id FROM t)
     RETURNING order_id",
];

/// SQLite's way of recording the partners of claimed rows: one
/// `UPDATE … FROM (VALUES …)` per chunk on the outbox and one on the orders, not two
/// statements a row — on SQLite every statement is a round trip to its worker thread.
async fn route_sqlite(
    c: &mut sqlx::SqliteConnection,
    ids: &[Uuid],
    partners: &[String],
) -> Result<(), sqlx::Error> {
    let chunks = ids
        .chunks(SQLITE_ROWS_PER_STATEMENT)
        .zip(partners.chunks(SQLITE_ROWS_PER_STATEMENT));
    for (ids, partners) in chunks {
        let routes = || {
            let mut update = sqlx::QueryBuilder::new("WITH t(id, partner) AS (");
            update.push_values(ids.iter().zip(partners), |mut row, (id, partner)| {
                row.push_bind(*id).push_bind(partner);
            });
            update.push(") ");
            update
        };
        let mut update = routes();
        update.push(ROUTE_DISPATCH_SQLITE);
        update.build().execute(&mut *c).await?;
        let mut update = routes();
        update.push(ROUTE_ORDERS_SQLITE);
        update.build().execute(&mut *c).await?;
    }
    Ok(())
}

/// Claimed rows no earlier attempt routed.
fn unrouted(claimed: &[Claimed]) -> Vec<Uuid> {
    claimed
        .iter()
        .filter(|row| row.partner.is_none())
        .map(|row| row.order_id)
        .collect()
}

/// Routes the claimed rows that have no partner yet; returns the new assignments.
fn assign(
    claimed: &mut [Claimed],
    places: &[(Uuid, String, Option<String>)],
    route: &(dyn Fn(&str, Option<&str>) -> Option<String> + Sync),
) -> Vec<(Uuid, String)> {
    let places: std::collections::HashMap<Uuid, (&str, Option<&str>)> = places
        .iter()
        .map(|(id, country, region)| (*id, (country.as_str(), region.as_deref())))
        .collect();
    let mut assigned = Vec::new();
    for row in claimed.iter_mut().filter(|row| row.partner.is_none()) {
        let Some(&(country, region)) = places.get(&row.order_id) else {
            continue;
        };
        if let Some(partner) = route(country, region) {
            assigned.push((row.order_id, partner.clone()));
            row.partner = Some(partner);
        }
    }
    assigned
}

/// The lease under which orders are written when the instance placing them hands them on
/// itself right after the commit ([`super::orders::place_many`]): their outbox rows are
/// born leased to `instance` under `batch_id`, exactly as if a relay had claimed them, so
/// the polling relay leaves them alone unless the lease lapses (this instance died or
/// stalled). On PostgreSQL the lease runs on the database's clock, as a claim's does;
/// `until` is its end on this instance's clock (and SQLite's).
#[derive(Clone, Debug)]
pub struct OutboxLease<'a> {
    pub instance: &'a str,
    pub batch_id: Uuid,
    pub duration: std::time::Duration,
    pub until: DateTime<Utc>,
}

impl<'a> OutboxLease<'a> {
    /// A new batch's lease, from now.
    pub fn starting_now(instance: &'a str, duration: std::time::Duration) -> Self {
        let until =
            Utc::now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        OutboxLease {
            instance,
            batch_id: Uuid::now_v7(),
            duration,
            until,
        }
    }
}

/// Marks sent rows `processed` and appends `sent_to_partner`, in one transaction, for the
/// rows still held by the batch that sent them (`(order_id, batch_id)` pairs, from one
/// batch or several). Returns the ids marked; the others were claimed by another relay
/// after their lease lapsed (every claim writes a new batch id, so the batch id alone
/// says who holds a row).
pub async fn mark_sent(
    db: &Db,
    rows: &[(Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    match db {
        Db::Postgres(pool) => {
            let (ids, batches): (Vec<Uuid>, Vec<Uuid>) = rows.iter().copied().unzip();
            let mut tx = pool.begin().await?;
            let mut marked: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE order_dispatch d
                 SET process_status = 'processed', processed_at = $3, locked_until = NULL,
                     last_error = NULL, version = d.version + 1
                 FROM UNNEST($1::uuid[], $2::uuid[]) AS t(order_id, batch_id)
                 WHERE d.order_id = t.order_id AND d.batch_id = t.batch_id
                 RETURNING d.order_id",
            )
            .bind(&ids)
            .bind(&batches)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            // In order-id order, as the reply reader writes the same keys: two
            // transactions never wait on each other in a cycle.
            marked.sort_unstable();
            sqlx::query(
                "INSERT INTO order_status (order_id, status, at)
                 SELECT id, 'sent_to_partner', $2 FROM UNNEST($1::uuid[]) AS t(id)
                 ON CONFLICT (order_id, status) DO NOTHING",
            )
            .bind(&marked)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let sent: Vec<(Uuid, Uuid, Option<String>)> = sqlx::query_as(
                "SELECT id, cart_id, transport_partner FROM orders WHERE id = ANY($1)",
            )
            .bind(&marked)
            .fetch_all(&mut *tx)
            .await?;
            events::append_postgres(&mut tx, &sent_events(sent, now)).await?;
            tx.commit().await?;
            Ok(marked)
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut marked = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                let mut update = sqlx::QueryBuilder::new("WITH t(id, batch) AS (");
                update.push_values(chunk, |mut row, (id, batch_id)| {
                    row.push_bind(*id).push_bind(*batch_id);
                });
                update
                    .push(") ")
                    .push(MARK_SENT_SQLITE[0])
                    .push_bind(now)
                    .push(MARK_SENT_SQLITE[1]);
                let done: Vec<Uuid> = update.build_query_scalar().fetch_all(&mut *tx).await?;
                if !done.is_empty() {
                    let mut insert =
                        sqlx::QueryBuilder::new("INSERT INTO order_status (order_id, status, at) ");
                    insert.push_values(&done, |mut row, id| {
                        row.push_bind(*id)
                            .push_bind("sent_to_partner")
                            .push_bind(now);
                    });
                    insert.push(" ON CONFLICT (order_id, status) DO NOTHING");
                    insert.build().execute(&mut *tx).await?;
                    let mut select = sqlx::QueryBuilder::new(
                        "SELECT id, cart_id, transport_partner FROM orders WHERE id IN (",
                    );
                    let mut ids = select.separated(", ");
                    for id in &done {
                        ids.push_bind(*id);
                    }
                    select.push(")");
                    let sent: Vec<(Uuid, Uuid, Option<String>)> =
                        select.build_query_as().fetch_all(&mut *tx).await?;
                    events::append_sqlite(&mut tx, &sent_events(sent, now)).await?;
                }
                marked.extend(done);
            }
            tx.commit().await?;
            Ok(marked)
        }
    }
}

/// `order.status_changed` to `sent_to_partner` for each order sent, `(id, cart_id,
/// partner)`. An order sent again (at least once) finds its event there already.
fn sent_events(mut sent: Vec<(Uuid, Uuid, Option<String>)>, now: DateTime<Utc>) -> Vec<NewEvent> {
    sent.sort_unstable_by_key(|(order_id, _, _)| *order_id);
    sent.into_iter()
        .map(|(order_id, cart_id, partner)| {
            let changed = OrderStatusChanged {
                order_id,
                cart_id,
                status: "sent_to_partner".into(),
                partner,
                tracking_id: None,
            };
            NewEvent::status_changed(&changed, now)
        })
        .collect()
}

/// What a failed send leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Retried at this time.
    Retry(DateTime<Utc>),
    /// Tried again at this time, without counting the try: the queue was down, which says
    /// nothing about this row, and a broker outage must not use up its retries.
    Defer(DateTime<Utc>),
    /// Out of retries: `critical_error`, for a person.
    GiveUp,
}

/// Records a failed send of a row this batch still holds; false when another relay has it.
pub async fn mark_failed(
    db: &Db,
    batch_id: Uuid,
    order_id: Uuid,
    error: &str,
    after: AfterFailure,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    // A deferred row keeps its status and its count.
    let (status, next, counted) = match after {
        AfterFailure::Retry(at) => (Some("error"), at, 1_i32),
        AfterFailure::Defer(at) => (None, at, 0),
        AfterFailure::GiveUp => (Some("critical_error"), now, 1),
    };
    Ok(on_db!(db, |pool| {
        let done = sqlx::query(
            "UPDATE order_dispatch
             SET process_status = COALESCE($1, process_status), next_attempt_at = $2,
                 retry_count = retry_count + $6, last_error = $3, locked_until = NULL,
                 version = version + 1
             WHERE order_id = $4 AND batch_id = $5",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(order_id)
        .bind(batch_id)
        .bind(counted)
        .execute(pool)
        .await?;
        Ok::<_, sqlx::Error>(done.rows_affected() == 1)
    })?)
}

/// Rows by status, except `processed` (which only grows): what the metrics and the admin
/// API show.
pub async fn counts(db: &Db) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT process_status, COUNT(*) FROM order_dispatch
         WHERE process_status IN ('pending', 'error', 'critical_error')
         GROUP BY process_status"
    )
    .fetch_all(pool)
    .await)?)
}

/// An outbox row as the admin API shows it.
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct DispatchRow {
    pub order_id: Uuid,
    /// `pending`, `error` (retrying), `processed` or `critical_error`.
    #[schema(example = "critical_error")]
    pub process_status: String,
    pub retry_count: i32,
    pub last_error: Option<String>,
    pub partner: Option<String>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// Rows in one status, oldest first, after `after` (the last order id of the previous
/// page).
pub async fn list(
    db: &Db,
    status: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DispatchRow>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT order_id, process_status, retry_count, last_error, partner, locked_by,
                locked_until, next_attempt_at, created_at, processed_at
         FROM order_dispatch
         WHERE process_status = $1 AND ($2 IS NULL OR order_id > $2)
         ORDER BY order_id
         LIMIT $3"
    )
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await)?)
}

/// Sends a `critical_error` (or `error`) row again from scratch; false when it is in
/// neither state, or a relay holds it right now (breaking its lease would send it twice).
pub async fn retry(db: &Db, order_id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(on_db!(db, |pool| {
        let done = sqlx::query(
            "UPDATE order_dispatch
             SET process_status = 'pending', retry_count = 0, next_attempt_at = $2,
                 locked_until = NULL, version = version + 1
             WHERE order_id = $1 AND process_status IN ('critical_error', 'error')
               AND (locked_until IS NULL OR locked_until < $2)",
        )
        .bind(order_id)
        .bind(now)
        .execute(pool)
        .await?;
        Ok::<_, sqlx::Error>(done.rows_affected() == 1)
    })?)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row, SqliteConnection};
    use uuid::Uuid;

    use super::{MARK_SENT_SQLITE, ROUTE_DISPATCH_SQLITE, ROUTE_ORDERS_SQLITE};

    /// The query plan of `WITH t(…) AS (VALUES <rows>) <statement>`, one step a line.
    async fn plan(c: &mut SqliteConnection, columns: &str, rows: usize, statement: &str) -> String {
        let mut explain =
            sqlx::QueryBuilder::new(format!("EXPLAIN QUERY PLAN WITH t({columns}) AS ("));
        explain.push_values(0..rows, |mut row, _| {
            row.push_bind(Uuid::new_v4()).push_bind("x");
        });
        explain.push(") ").push(statement);
        let steps = explain.build().fetch_all(&mut *c).await.expect("explained");
        steps
            .iter()
            .map(|step| step.get::<String, _>(3))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn updates_from_values_look_rows_up_by_key() {
        let mut c = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("connected");
        crate::store::migrator(&crate::config::DatabaseKind::Sqlite)
            .run(&mut c)
            .await
            .expect("migrated");
        let mark = format!("{}'now'{}", MARK_SENT_SQLITE[0], MARK_SENT_SQLITE[1]);
        // A chunk of 1,000 rows is what SQLite switched to a table scan for (at 256).
        for (columns, statement, table) in [
            ("id, batch", mark.as_str(), "order_dispatch"),
            ("id, partner", ROUTE_DISPATCH_SQLITE, "order_dispatch"),
            ("id, partner", ROUTE_ORDERS_SQLITE, "orders"),
        ] {
            for rows in [1, 300, super::SQLITE_ROWS_PER_STATEMENT] {
                let plan = plan(&mut c, columns, rows, statement).await;
                assert!(
                    plan.lines()
                        .any(|step| step.starts_with(&format!("SEARCH {table} USING"))),
                    "{rows} rows: {table} is not looked up by key:\n{plan}"
                );
                assert!(
                    !plan
                        .lines()
                        .any(|step| step.starts_with(&format!("SCAN {table}"))),
                    "{rows} rows: {table} is scanned whole:\n{plan}"
                );
            }
        }
    }
}
