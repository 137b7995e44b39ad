//! `payment_steps` (DESIGN §5, §8): the flag written before a capture call, the result
//! written after it, and an operator's resolution of a call whose outcome is unknown.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use crate::domain::Cart;
use crate::domain::payment::{CallOutcome, PaymentState, PaymentView};
use crate::store::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

/// Carts per statement: two bind parameters each in [`known`], six in [`flag`].
const CARTS_PER_STATEMENT: usize = 1_000;

/// What the database already knows about a cart before its payment step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// An order exists: the payment was settled when it was made.
    pub ordered: bool,
    /// A `payment_steps` row: `Some(result)` once there is one.
    pub step: Option<Option<bool>>,
    pub detail: Option<String>,
    /// An operator resolved it.
    pub resolved: bool,
    /// No result yet, and the call started recently enough that it may still be running.
    pub in_flight: bool,
}

#[derive(FromRow)]
struct KnownRow {
    cart_id: Uuid,
    is_order: bool,
    payment_ok: Option<bool>,
    result_detail: Option<String>,
    resolved: bool,
    in_flight: bool,
}

/// Orders and payment steps of `cart_ids`, in one query (per thousand carts). A step
/// without a result whose call started after `in_flight_since`, and was not marked
/// unknown, is `in_flight`.
pub async fn known(
    db: &Db,
    cart_ids: &[Uuid],
    in_flight_since: DateTime<Utc>,
) -> Result<HashMap<Uuid, Known>, StoreError> {
    let mut known: HashMap<Uuid, Known> = HashMap::new();
    for chunk in cart_ids.chunks(CARTS_PER_STATEMENT) {
        let rows: Vec<KnownRow> = on_db!(db, |pool| {
            let mut select = sqlx::QueryBuilder::new(
                "SELECT cart_id, TRUE AS is_order, NULL AS payment_ok, NULL AS result_detail,
                        FALSE AS resolved, FALSE AS in_flight
                 FROM orders WHERE cart_id IN (",
            );
            let mut ids = select.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            select.push(
                ") UNION ALL SELECT cart_id, FALSE, payment_ok, result_detail,
                          resolved_at IS NOT NULL,
                          payment_ok IS NULL AND result_at IS NULL AND called_at > ",
            );
            select.push_bind(in_flight_since);
            select.push(" FROM payment_steps WHERE cart_id IN (");
            let mut ids = select.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            select.push(")");
            select.build_query_as().fetch_all(pool).await?
        });
        for row in rows {
            let entry = known.entry(row.cart_id).or_default();
            if row.is_order {
                entry.ordered = true;
            } else {
                entry.step = Some(row.payment_ok);
                entry.detail = row.result_detail;
                entry.resolved = row.resolved;
                entry.in_flight = row.in_flight;
            }
        }
    }
    Ok(known)
}

/// Sets `calling_payment` for each cart, in one transaction committed before any call.
/// Returns the carts flagged now; a cart missing from the answer had a row already
/// (another consumer got there first) and must not be called for.
pub async fn flag(db: &Db, carts: &[(&Cart, &[u8])]) -> Result<Vec<Uuid>, StoreError> {
    let now = Utc::now();
    let mut tx = db.begin().await?;
    let mut flagged = Vec::with_capacity(carts.len());
    for chunk in carts.chunks(CARTS_PER_STATEMENT) {
        on_tx!(&mut tx, |c| {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO payment_steps (cart_id, calling_payment, amount, currency,
                     message_body, called_at) ",
            );
            insert.push_values(chunk, |mut row, (cart, body)| {
                row.push_bind(cart.cart_id.as_uuid())
                    .push_bind(true)
                    .push_bind(cart.total.minor_units())
                    .push_bind(cart.currency.as_str())
                    .push_bind(*body)
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (cart_id) DO NOTHING RETURNING cart_id");
            let ids: Vec<Uuid> = insert.build_query_scalar().fetch_all(&mut *c).await?;
            flagged.extend(ids);
            Ok::<_, sqlx::Error>(())
        })?;
    }
    tx.commit().await?;
    Ok(flagged)
}

/// Records what the calls came to, in one transaction. A call that was never sent clears
/// its flag (the row goes), so the cart can be tried again. Returns the carts whose row
/// was no longer waiting for a result (an operator resolved it meanwhile); what such a
/// call came to is appended to the row's `result_detail`, so the audit shows it.
pub async fn record(db: &Db, results: &[(Uuid, CallOutcome)]) -> Result<Vec<Uuid>, StoreError> {
    const WAITING: &str = "cart_id = $1 AND payment_ok IS NULL AND resolved_at IS NULL";
    let now = Utc::now();
    let mut tx = db.begin().await?;
    let mut taken = Vec::new();
    for (cart_id, outcome) in results {
        let done = on_tx!(&mut tx, |c| {
            let query = match outcome {
                CallOutcome::Captured { payment_id } => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE payment_steps SET payment_ok = TRUE, completed = TRUE,
                         payment_id = $2, result_detail = $3, result_at = $4 WHERE {WAITING}"
                )))
                .bind(*cart_id)
                .bind(payment_id.as_deref())
                .bind("captured")
                .bind(now),
                CallOutcome::Declined { detail } => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE payment_steps SET payment_ok = FALSE, completed = TRUE,
                         result_detail = $2, result_at = $3 WHERE {WAITING}"
                )))
                .bind(*cart_id)
                .bind(detail.as_str())
                .bind(now),
                CallOutcome::Unknown { detail } => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE payment_steps SET result_detail = $2, result_at = $3 WHERE {WAITING}"
                )))
                .bind(*cart_id)
                .bind(detail.as_str())
                .bind(now),
                CallOutcome::NotSent { .. } => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM payment_steps WHERE {WAITING}"
                )))
                .bind(*cart_id),
            };
            query.execute(&mut *c).await?.rows_affected()
        });
        if done == 0 {
            let late = match outcome {
                CallOutcome::Captured { payment_id } => format!(
                    "late call result after the resolution: captured (payment_id {})",
                    payment_id.as_deref().unwrap_or("not given")
                ),
                CallOutcome::Declined { detail } | CallOutcome::Unknown { detail } => {
                    format!("late call result after the resolution: {detail}")
                }
                CallOutcome::NotSent { detail } => {
                    format!("late call result after the resolution: not sent ({detail})")
                }
            };
            on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE payment_steps SET result_detail = COALESCE(result_detail || '; ', '') || $2
                 WHERE cart_id = $1 AND resolved_at IS NOT NULL"
            )
            .bind(*cart_id)
            .bind(late)
            .execute(&mut *c)
            .await
            .map(drop)?);
            taken.push(*cart_id);
        }
    }
    tx.commit().await?;
    Ok(taken)
}

/// Marks a flagged cart without a result as unknown (when its message is dead-lettered
/// for it), keeping the first explanation.
pub async fn mark_unknown(tx: &mut Tx, cart_id: Uuid, detail: &str) -> Result<(), StoreError> {
    Ok(on_tx!(tx, |c| sqlx::query(
        "UPDATE payment_steps SET result_detail = COALESCE(result_detail, $2),
             result_at = COALESCE(result_at, $3)
         WHERE cart_id = $1 AND payment_ok IS NULL AND resolved_at IS NULL"
    )
    .bind(cart_id)
    .bind(detail)
    .bind(Utc::now())
    .execute(&mut *c)
    .await
    .map(drop))?)
}

/// Whether the cart's payment outcome is known to be unknown (not merely in flight) and
/// still unresolved.
pub async fn is_unknown(db: &Db, cart_id: Uuid) -> Result<bool, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM payment_steps
         WHERE cart_id = $1 AND payment_ok IS NULL AND resolved_at IS NULL
           AND result_at IS NOT NULL"
    )
    .bind(cart_id)
    .fetch_one(pool)
    .await
    .map(|n: i64| n > 0))?)
}

#[derive(FromRow)]
struct Row {
    cart_id: Uuid,
    amount: i64,
    currency: String,
    payment_ok: Option<bool>,
    payment_id: Option<String>,
    result_detail: Option<String>,
    called_at: DateTime<Utc>,
    result_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolved_reason: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    order_id: Option<Uuid>,
}

impl Row {
    /// The view of this row; a call without a result that started after
    /// `abandoned_before`, and was not marked unknown, is in flight.
    fn view(self, abandoned_before: DateTime<Utc>) -> PaymentView {
        let row = self;
        let state = match (row.resolved_at.is_some(), row.payment_ok) {
            (_, None) if row.result_at.is_none() && row.called_at >= abandoned_before => {
                PaymentState::InFlight
            }
            (_, None) => PaymentState::Unknown,
            (false, Some(true)) => PaymentState::Captured,
            (false, Some(false)) => PaymentState::Declined,
            (true, Some(true)) => PaymentState::ResolvedCaptured,
            (true, Some(false)) => PaymentState::ResolvedFailed,
        };
        PaymentView {
            cart_id: row.cart_id,
            amount: row.amount,
            currency: row.currency,
            state,
            payment_id: row.payment_id,
            detail: row.result_detail,
            called_at: row.called_at,
            result_at: row.result_at,
            resolved_by: row.resolved_by,
            resolved_reason: row.resolved_reason,
            resolved_at: row.resolved_at,
            order_id: row.order_id,
        }
    }
}

const SELECT_VIEW: &str = "SELECT p.cart_id, p.amount, p.currency, p.payment_ok, p.payment_id,
        p.result_detail, p.called_at, p.result_at, p.resolved_by, p.resolved_reason,
        p.resolved_at, o.id AS order_id
    FROM payment_steps p LEFT JOIN orders o ON o.cart_id = p.cart_id";

/// Which payment steps to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Unresolved, without a result, and no longer in flight: marked unknown, or called
    /// before the cutoff.
    Unknown,
    /// Captured before the cutoff, yet no order exists.
    CapturedWithoutOrder,
    All,
}

/// `$2` is the `abandoned_before` cutoff; with `p` (the step) and `o` (its order).
const UNKNOWN: &str = "p.payment_ok IS NULL AND p.resolved_at IS NULL
    AND (p.result_at IS NOT NULL OR p.called_at < $2)";
const CAPTURED_WITHOUT_ORDER: &str = "p.payment_ok = TRUE AND p.resolved_at IS NULL
    AND o.id IS NULL AND p.result_at < $2";

/// Payment steps, newest call first. Calls or captures before `abandoned_before` that are
/// still unfinished count as abandoned.
pub async fn list(
    db: &Db,
    filter: Filter,
    abandoned_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<PaymentView>, StoreError> {
    let filter = match filter {
        Filter::Unknown => UNKNOWN,
        Filter::CapturedWithoutOrder => CAPTURED_WITHOUT_ORDER,
        // Binds `$2` all the same, so that every variant takes the same parameters.
        Filter::All => "$2 IS NOT NULL",
    };
    let sql = format!("{SELECT_VIEW} WHERE {filter} ORDER BY p.called_at DESC, p.cart_id LIMIT $1");
    let rows: Vec<Row> = on_db!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .bind(abandoned_before)
        .fetch_all(pool)
        .await?);
    Ok(rows
        .into_iter()
        .map(|row| row.view(abandoned_before))
        .collect())
}

pub async fn find(
    tx: &mut Tx,
    cart_id: Uuid,
    abandoned_before: DateTime<Utc>,
) -> Result<Option<PaymentView>, StoreError> {
    let sql = format!("{SELECT_VIEW} WHERE p.cart_id = $1");
    let row: Option<Row> = on_tx!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(cart_id)
        .fetch_optional(&mut *c)
        .await?);
    Ok(row.map(|row| row.view(abandoned_before)))
}

/// Carts whose capture is unknown (not merely in flight) and unresolved (the
/// `cartbus_payments_unknown` gauge).
pub async fn count_unknown(db: &Db, abandoned_before: DateTime<Utc>) -> Result<i64, StoreError> {
    Ok(count(db, UNKNOWN, abandoned_before).await?)
}

/// Captures left without an order past the cutoff (the
/// `cartbus_payments_captured_without_order` gauge).
pub async fn count_captured_without_order(
    db: &Db,
    abandoned_before: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(count(db, CAPTURED_WITHOUT_ORDER, abandoned_before).await?)
}

async fn count(db: &Db, filter: &str, abandoned_before: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    // `$1` unused but bound, so that the filters' `$2` lines up.
    let sql = format!(
        "SELECT count(*) FROM payment_steps p LEFT JOIN orders o ON o.cart_id = p.cart_id
         WHERE $1 IS NOT NULL AND {filter}"
    );
    on_db!(db, |pool| sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(0_i64)
        .bind(abandoned_before)
        .fetch_one(pool)
        .await)
}

/// An operator's finding, as [`resolve`] writes it.
pub struct Resolution<'a> {
    pub captured: bool,
    pub payment_id: Option<&'a str>,
    pub by: &'a str,
    pub reason: &'a str,
    /// Calls (or captures) before this are abandoned if still unfinished.
    pub abandoned_before: DateTime<Utc>,
}

/// An operator's resolution, written if the step is unknown (without a result and no
/// longer in flight), or — for a finding of captured — captured without an order past
/// the cutoff. Returns the stored cart message when it was written, `None` otherwise.
pub async fn resolve(
    tx: &mut Tx,
    cart_id: Uuid,
    resolution: &Resolution<'_>,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(on_tx!(tx, |c| sqlx::query_scalar(
        "UPDATE payment_steps SET payment_ok = $2, completed = TRUE,
             payment_id = COALESCE(payment_id, $3), resolved_by = $4, resolved_reason = $5,
             resolved_at = $6
         WHERE cart_id = $1 AND resolved_at IS NULL
           AND ((payment_ok IS NULL AND (result_at IS NOT NULL OR called_at < $7))
                OR ($2 AND payment_ok = TRUE AND result_at < $7
                    AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.cart_id = $1)))
         RETURNING message_body"
    )
    .bind(cart_id)
    .bind(resolution.captured)
    .bind(resolution.payment_id)
    .bind(resolution.by)
    .bind(resolution.reason)
    .bind(Utc::now())
    .bind(resolution.abandoned_before)
    .fetch_optional(&mut *c)
    .await)?)
}
