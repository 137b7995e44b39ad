//! Order events (issue 20): appended in the transaction of the change they report, read
//! back in the order they happened.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use super::{Db, StoreError, Tx};
use crate::domain::event::NewEvent;
use crate::on_db;

/// Rows per SQLite statement (6 parameters each, well under its 32,766).
const SQLITE_EVENTS_PER_STATEMENT: usize = 500;

/// Appends `events` in the caller's transaction. An event whose id is there already (the
/// same change recorded again) is skipped: each change has one event.
pub async fn append(tx: &mut Tx, events: &[NewEvent]) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Postgres(c) => append_postgres(c, events).await,
        Tx::Sqlite(c) => append_sqlite(c, events).await,
    }
}

/// [`append`] on a PostgreSQL transaction held as such: one statement, columns as arrays.
pub(super) async fn append_postgres(
    c: &mut PgConnection,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let column =
        |f: &dyn Fn(&NewEvent) -> String| -> Vec<String> { events.iter().map(f).collect() };
    sqlx::query(
        "INSERT INTO events (id, type, cart_id, order_id, data, created_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::timestamptz[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(column(&|e| e.id.clone()))
    .bind(column(&|e| e.kind.as_str().to_string()))
    .bind(events.iter().map(|e| e.cart_id).collect::<Vec<Uuid>>())
    .bind(
        events
            .iter()
            .map(|e| e.order_id)
            .collect::<Vec<Option<Uuid>>>(),
    )
    .bind(column(&|e| e.data.clone()))
    .bind(events.iter().map(|e| e.at).collect::<Vec<DateTime<Utc>>>())
    .execute(c)
    .await
    .map(drop)
}

/// [`append`] on an SQLite transaction held as such.
pub(super) async fn append_sqlite(
    c: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(SQLITE_EVENTS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO events (id, type, cart_id, order_id, data, created_at) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(e.id.as_str())
                .push_bind(e.kind.as_str())
                .push_bind(e.cart_id)
                .push_bind(e.order_id)
                .push_bind(e.data.as_str())
                .push_bind(e.at);
        });
        insert.push(" ON CONFLICT (id) DO NOTHING");
        insert.build().execute(&mut *c).await?;
    }
    Ok(())
}

/// An event as recorded.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub cart_id: Uuid,
    pub order_id: Option<Uuid>,
    pub data: String,
    pub created_at: DateTime<Utc>,
}

/// Events after `after` (a `seq`), oldest first, at most `limit`; only `cart_id`'s when
/// given.
pub async fn list(
    db: &Db,
    cart_id: Option<Uuid>,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, StoreError> {
    // Two statements, so that one cart's events come off `events_by_cart`.
    Ok(match cart_id {
        Some(cart_id) => on_db!(db, |pool| sqlx::query_as(
            "SELECT seq, id, type, cart_id, order_id, data, created_at FROM events
             WHERE cart_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
        .bind(cart_id)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)?,
        None => on_db!(db, |pool| sqlx::query_as(
            "SELECT seq, id, type, cart_id, order_id, data, created_at FROM events
             WHERE seq > $1 ORDER BY seq LIMIT $2"
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)?,
    })
}
