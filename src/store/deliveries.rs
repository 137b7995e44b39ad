//! Webhook deliveries (issue 20): one row per event and endpoint, made by the fan-out in
//! the order the events' transactions committed, claimed under a lease per cart in that
//! order, and marked after each call. A lease that lapses (a deliverer that died between
//! its call and its mark) frees the row: the event goes again with the same id.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::webhooks::EndpointRow;
use super::{Db, StoreError, Tx};
use crate::domain::webhook::EventFilter;
use crate::on_db;

/// Events read per fan-out transaction.
pub const FAN_OUT_BATCH: i64 = 1_000;

/// Delivery rows this process has fanned out since it last analyzed the table.
static UNANALYZED: AtomicUsize = AtomicUsize::new(0);
/// How many make it analyze the table again (PostgreSQL).
const ANALYZE_AFTER: usize = 20_000;

#[derive(FromRow)]
struct Fresh {
    seq: i64,
    #[sqlx(rename = "type")]
    kind: String,
    cart_id: Uuid,
}

/// The delivery rows for `events` in their order: one per endpoint that wants each.
fn rows_for(
    events: &[Fresh],
    endpoints: &[(String, EventFilter)],
) -> (Vec<String>, Vec<i64>, Vec<Uuid>) {
    let mut rows = (Vec::new(), Vec::new(), Vec::new());
    for event in events {
        for (id, filter) in endpoints {
            if filter.wants(&event.kind) {
                rows.0.push(id.clone());
                rows.1.push(event.seq);
                rows.2.push(event.cart_id);
            }
        }
    }
    rows
}

/// The endpoints events are queued for (all but disabled ones), read in the fan-out's
/// transaction after its events: an endpoint made before those events committed is seen.
const RECEIVING: &str =
    "SELECT id, event_types FROM webhook_endpoints WHERE state <> 'disabled' ORDER BY id";

fn filters(rows: Vec<(String, Option<String>)>) -> Vec<(String, EventFilter)> {
    rows.into_iter()
        .map(|(id, types)| (id, EventFilter::from_stored(types.as_deref())))
        .collect()
}

/// Gives the events committed since the last fan-out a delivery row for every endpoint
/// that is not disabled and wants them; returns how many events it read. One instance at
/// a time (the cursor row is locked; another finds it taken and returns 0). A round with
/// nothing new only reads: no lock, no write.
pub async fn fan_out(db: &Db, now: DateTime<Utc>) -> Result<usize, StoreError> {
    match db {
        Db::Postgres(pool) => {
            // Only events of transactions older than every one still running: those are
            // all visible now, and no event can appear below them later.
            let due: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events e, webhook_fanout f
                                WHERE f.id = 1 AND (e.txid, e.seq) > (f.txid, f.seq)
                                  AND e.txid < pg_snapshot_xmin(pg_current_snapshot()))",
            )
            .fetch_one(pool)
            .await?;
            if !due {
                return Ok(0);
            }
            let mut tx = pool.begin().await?;
            let cursor: Option<(String, i64)> = sqlx::query_as(
                "SELECT txid::text, seq FROM webhook_fanout WHERE id = 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some((txid, seq)) = cursor else {
                return Ok(0);
            };
            let events: Vec<(i64, String, Uuid, String)> = sqlx::query_as(
                "SELECT seq, type, cart_id, txid::text FROM events
                 WHERE (txid, seq) > ($1::text::xid8, $2)
                   AND txid < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY txid, seq LIMIT $3",
            )
            .bind(&txid)
            .bind(seq)
            .bind(FAN_OUT_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let Some((last_seq, _, _, last_txid)) = events.last().cloned() else {
                return Ok(0);
            };
            let fresh: Vec<Fresh> = events
                .into_iter()
                .map(|(seq, kind, cart_id, _)| Fresh { seq, kind, cart_id })
                .collect();
            let endpoints = filters(sqlx::query_as(RECEIVING).fetch_all(&mut *tx).await?);
            let (endpoint_ids, seqs, carts) = rows_for(&fresh, &endpoints);
            if !seqs.is_empty() {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_seq, cart_id, next_at,
                                                     created_at)
                     SELECT e, s, c, $4, $4
                     FROM UNNEST($1::text[], $2::bigint[], $3::uuid[]) WITH ORDINALITY AS t(e, s, c, n)
                     ORDER BY n",
                )
                .bind(&endpoint_ids)
                .bind(&seqs)
                .bind(&carts)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE webhook_fanout SET txid = $1::text::xid8, seq = $2 WHERE id = 1")
                .bind(&last_txid)
                .bind(last_seq)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            // The claim's plan depends on how many deliveries wait per cart; after a burst
            // (a backlog drained), autovacuum's analyze comes up to a minute later, and
            // until then PostgreSQL plans for the empty table it last saw: claims then
            // take seconds. Analyze it once enough rows went in.
            let since = UNANALYZED.fetch_add(seqs.len(), Ordering::Relaxed) + seqs.len();
            if since >= ANALYZE_AFTER {
                UNANALYZED.store(0, Ordering::Relaxed);
                sqlx::query("ANALYZE webhook_deliveries")
                    .execute(pool)
                    .await?;
            }
            Ok(fresh.len())
        }
        Db::Sqlite(pool) => {
            let due: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events e, webhook_fanout f
                                WHERE f.id = 1 AND e.seq > f.seq)",
            )
            .fetch_one(pool)
            .await?;
            if !due {
                return Ok(0);
            }
            // One writer at a time: events commit in `seq` order.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let seq: i64 = sqlx::query_scalar("SELECT seq FROM webhook_fanout WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let fresh: Vec<Fresh> = sqlx::query_as(
                "SELECT seq, type, cart_id FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(seq)
            .bind(FAN_OUT_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = fresh.last().map(|e| e.seq) else {
                return Ok(0);
            };
            let endpoints = filters(sqlx::query_as(RECEIVING).fetch_all(&mut *tx).await?);
            let (endpoint_ids, seqs, carts) = rows_for(&fresh, &endpoints);
            for start in (0..seqs.len()).step_by(500) {
                let end = (start + 500).min(seqs.len());
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_seq, cart_id, next_at,
                                                     created_at) ",
                );
                insert.push_values(start..end, |mut row, i| {
                    row.push_bind(endpoint_ids[i].as_str())
                        .push_bind(seqs[i])
                        .push_bind(carts[i])
                        .push_bind(now)
                        .push_bind(now);
                });
                insert.build().execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE webhook_fanout SET seq = $1 WHERE id = 1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(fresh.len())
        }
    }
}

/// How long the oldest event not yet fanned out has waited (0 when none): on PostgreSQL a
/// long write transaction anywhere on the server holds the fan-out back, and this shows it.
pub async fn fan_out_lag(db: &Db, now: DateTime<Utc>) -> Result<f64, StoreError> {
    let oldest: Option<DateTime<Utc>> = match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT MIN(e.created_at) FROM events e, webhook_fanout f
                 WHERE f.id = 1 AND (e.txid, e.seq) > (f.txid, f.seq)",
            )
            .fetch_one(pool)
            .await?
        }
        Db::Sqlite(pool) => {
            sqlx::query_scalar(
                "SELECT MIN(e.created_at) FROM events e, webhook_fanout f
                 WHERE f.id = 1 AND e.seq > f.seq",
            )
            .fetch_one(pool)
            .await?
        }
    };
    Ok(oldest.map_or(0.0, |at| {
        (now - at).num_milliseconds().max(0) as f64 / 1000.0
    }))
}

/// A delivery a deliverer holds, with its event.
#[derive(Clone, Debug, FromRow)]
pub struct Claimed {
    pub id: i64,
    /// Failed calls so far.
    pub attempts: i32,
    pub cart_id: Uuid,
    pub event_seq: i64,
    pub event_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub data: String,
    pub created_at: DateTime<Utc>,
}

/// Leases up to `limit` due deliveries of `endpoint` until `until`, oldest first, each the
/// earliest pending one of its cart (a cart's later event waits for its earlier one).
pub async fn claim(
    db: &Db,
    endpoint: &str,
    instance: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // A cart's events go in `seq` order (the order they happened in): a delivery is due
    // only as the earliest pending one of its cart here, and (PostgreSQL) while no earlier
    // event of its cart is still to be fanned out — a reply batch can commit a later
    // event under an older transaction id than an earlier one's. Both are scalar
    // subqueries on purpose: PostgreSQL runs them per row on the cart's index, where it
    // would turn NOT EXISTS into an anti join, planned on the statistics of a table that
    // went from empty to thousands of rows a moment ago (a scan of every pending row for
    // each: 200 deliveries a second instead of thousands).
    macro_rules! due {
        ($earlier:literal, $lock:literal) => {
            concat!(
                "SELECT d.id FROM webhook_deliveries d
                 WHERE d.endpoint_id = $1 AND d.state = 'pending' AND d.next_at <= $2
                   AND (d.leased_until IS NULL OR d.leased_until < $2)
                   AND d.event_seq = (SELECT MIN(e.event_seq) FROM webhook_deliveries e
                                      WHERE e.endpoint_id = d.endpoint_id
                                        AND e.cart_id = d.cart_id AND e.state = 'pending') ",
                $earlier,
                " ORDER BY d.next_at, d.id LIMIT $3 ",
                $lock
            )
        };
    }
    // One statement: atomic on SQLite (one writer); PostgreSQL skips rows another
    // deliverer is claiming at this moment.
    let sql = match db {
        Db::Postgres(_) => concat!(
            "UPDATE webhook_deliveries SET leased_by = $4, leased_until = $5 WHERE id IN (",
            due!(
                "AND NOT (SELECT EXISTS (
                     SELECT 1 FROM events ev WHERE ev.cart_id = d.cart_id AND ev.seq < d.event_seq
                       AND (ev.txid, ev.seq) > (SELECT f.txid, f.seq FROM webhook_fanout f WHERE f.id = 1)))",
                "FOR UPDATE SKIP LOCKED"
            ),
            ") RETURNING id"
        ),
        Db::Sqlite(_) => concat!(
            "UPDATE webhook_deliveries SET leased_by = $4, leased_until = $5 WHERE id IN (",
            due!("", ""),
            ") RETURNING id"
        ),
    };
    let leased: Vec<i64> = on_db!(db, |pool| sqlx::query_scalar(sql)
        .bind(endpoint)
        .bind(now)
        .bind(limit)
        .bind(instance)
        .bind(until)
        .fetch_all(pool)
        .await)?;
    if leased.is_empty() {
        return Ok(Vec::new());
    }
    let mut claimed = on_db!(db, |pool| {
        let mut select = sqlx::QueryBuilder::new(
            "SELECT d.id, d.attempts, d.cart_id, d.event_seq, e.id AS event_id, e.type, e.data,
                    e.created_at
             FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id IN (",
        );
        let mut ids = select.separated(", ");
        for id in &leased {
            ids.push_bind(*id);
        }
        select.push(")");
        select.build_query_as::<Claimed>().fetch_all(pool).await
    })?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// What one call came to.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: i64,
    pub cart_id: Uuid,
    pub event_seq: i64,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// `None` = delivered; else why not, and when to try again.
    pub failed: Option<(String, DateTime<Utc>)>,
}

/// Records `attempts`: delivered ones leave the queue; failed ones wait until their next
/// time, and so do the later pending deliveries of the same cart (they could not go
/// before it anyway, and so are not looked at meanwhile).
pub async fn record(
    db: &Db,
    endpoint: &str,
    instance: &str,
    attempts: &[Attempt],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let (delivered, failed): (Vec<&Attempt>, Vec<&Attempt>) =
        attempts.iter().partition(|a| a.failed.is_none());
    let mut tx = db.begin().await?;
    // The delivered ones in one statement: a busy endpoint's round is hundreds.
    match &mut tx {
        Tx::Postgres(c) if !delivered.is_empty() => {
            sqlx::query(
                "UPDATE webhook_deliveries d
                 SET state = 'delivered', attempts = d.attempts + 1, last_status = t.status,
                     last_error = NULL, last_attempt_at = $3, delivered_at = $3,
                     leased_by = NULL, leased_until = NULL
                 FROM UNNEST($1::bigint[], $2::int[]) AS t(id, status)
                 WHERE d.id = t.id AND d.leased_by = $4",
            )
            .bind(delivered.iter().map(|a| a.id).collect::<Vec<i64>>())
            .bind(
                delivered
                    .iter()
                    .map(|a| a.status.map(i32::from))
                    .collect::<Vec<Option<i32>>>(),
            )
            .bind(now)
            .bind(instance)
            .execute(&mut **c)
            .await?;
        }
        Tx::Sqlite(c) => {
            for attempt in &delivered {
                sqlx::query(
                    "UPDATE webhook_deliveries
                     SET state = 'delivered', attempts = attempts + 1, last_status = $2,
                         last_error = NULL, last_attempt_at = $3, delivered_at = $3,
                         leased_by = NULL, leased_until = NULL
                     WHERE id = $1 AND leased_by = $4",
                )
                .bind(attempt.id)
                .bind(attempt.status.map(i32::from))
                .bind(now)
                .bind(instance)
                .execute(&mut **c)
                .await?;
            }
        }
        Tx::Postgres(_) => {}
    }
    crate::on_tx!(&mut tx, |c| {
        for attempt in &failed {
            let Some((error, next_at)) = &attempt.failed else {
                continue;
            };
            sqlx::query(
                "UPDATE webhook_deliveries
                 SET attempts = attempts + 1, last_status = $2, last_error = $3,
                     last_attempt_at = $4, next_at = $5,
                     leased_by = NULL, leased_until = NULL
                 WHERE id = $1 AND leased_by = $6",
            )
            .bind(attempt.id)
            .bind(attempt.status.map(i32::from))
            .bind(error)
            .bind(now)
            .bind(next_at)
            .bind(instance)
            .execute(&mut *c)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET next_at = $4
                 WHERE endpoint_id = $1 AND cart_id = $2 AND state = 'pending'
                   AND event_seq > $3 AND next_at < $4",
            )
            .bind(endpoint)
            .bind(attempt.cart_id)
            .bind(attempt.event_seq)
            .bind(next_at)
            .execute(&mut *c)
            .await?;
        }
        Ok::<_, sqlx::Error>(())
    })?;
    tx.commit().await?;
    Ok(())
}

/// Which events to send again.
pub enum Replay<'a> {
    Ids(&'a [String]),
    Between(DateTime<Utc>, DateTime<Utc>),
}

/// Most events one replay call queues.
pub const MAX_REPLAY: i64 = 100_000;

/// What a replay queued.
pub struct Replayed {
    pub queued: usize,
    /// It stopped at [`MAX_REPLAY`] events: replay the rest with a later `since`.
    pub truncated: bool,
}

/// Queues the chosen events (those the endpoint wants) for `endpoint` again, in their
/// order; an event still pending there is not queued twice. A cart's events still go in
/// order: one replayed goes before that cart's later events still pending. At most
/// [`MAX_REPLAY`] events, in one statement.
pub async fn replay(
    db: &Db,
    endpoint: &EndpointRow,
    which: Replay<'_>,
    now: DateTime<Utc>,
) -> Result<Replayed, StoreError> {
    let types = endpoint.filter().names();
    let queued = on_db!(db, |pool| {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, cart_id, next_at, created_at)
             SELECT ",
        );
        insert
            .push_bind(endpoint.id.as_str())
            .push(", e.seq, e.cart_id, ")
            .push_bind(now)
            .push(", ")
            .push_bind(now)
            .push(" FROM events e WHERE ");
        match &which {
            Replay::Ids(ids) => {
                insert.push("e.id IN (");
                let mut list = insert.separated(", ");
                for id in ids.iter() {
                    list.push_bind(id.as_str());
                }
                insert.push(")");
            }
            Replay::Between(since, until) => {
                insert
                    .push("e.created_at >= ")
                    .push_bind(*since)
                    .push(" AND e.created_at < ")
                    .push_bind(*until);
            }
        }
        insert.push(" AND e.type IN (");
        let mut list = insert.separated(", ");
        for kind in &types {
            list.push_bind(*kind);
        }
        insert
            .push(") AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = ")
            .push_bind(endpoint.id.as_str())
            .push(" AND p.event_seq = e.seq AND p.state = 'pending') ORDER BY e.seq LIMIT ")
            .push_bind(MAX_REPLAY);
        insert
            .build()
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    let queued = usize::try_from(queued).unwrap_or(usize::MAX);
    Ok(Replayed {
        queued,
        truncated: queued as i64 >= MAX_REPLAY,
    })
}

/// A delivery as the admin API lists it.
#[derive(Clone, Debug, FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub cart_id: Uuid,
    pub state: String,
    pub attempts: i32,
    pub next_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An endpoint's deliveries in `state` after `after` (an id), oldest first.
pub async fn list(
    db: &Db,
    endpoint: &str,
    state: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT d.id, e.id AS event_id, e.type, d.cart_id, d.state, d.attempts, d.next_at,
                d.last_status, d.last_error, d.last_attempt_at, d.delivered_at
         FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq
         WHERE d.endpoint_id = $1 AND d.state = $2 AND d.id > $3 ORDER BY d.id LIMIT $4"
    )
    .bind(endpoint)
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await)?)
}
