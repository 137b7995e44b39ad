//! Settlements, as SQL run inside the writer's transaction: accept deletes, release makes
//! the message visible again, fail counts an attempt (dead-lettering at the limit), reject
//! dead-letters. Each acts only while the settling consumer still holds the lease.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;

use crate::queue::{Reason, Settlement};

/// Most ids in one `IN (…)` list (SQLite allows 32,766 bind parameters).
const IDS_PER_STATEMENT: usize = 500;

/// Settles a consumer's batch: accepts (and releases with the same delay) of one lease in
/// one statement per few hundred, not one round trip each; failures and rejections, which
/// are rare and carry their own details, one by one.
pub(super) async fn settle_all(
    conn: &mut SqliteConnection,
    items: &[(i64, i64, Settlement)],
    max_attempts: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut accepts: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut releases: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for (id, token, settlement) in items {
        match settlement {
            Settlement::Accept => accepts.entry(*token).or_default().push(*id),
            Settlement::Release { delay } => releases
                .entry((*token, now + millis(*delay)))
                .or_default()
                .push(*id),
            other => settle(conn, *id, *token, other, max_attempts, now).await?,
        }
    }
    let mut ignored = 0;
    for (token, ids) in accepts {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut delete = sqlx::QueryBuilder::new("DELETE FROM messages WHERE lease_token = ");
            delete.push_bind(token).push(" AND id IN (");
            let mut list = delete.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            delete.push(")");
            let done = delete.build().execute(&mut *conn).await?.rows_affected();
            ignored += chunk.len() as u64 - done;
        }
    }
    for ((token, visible_at), ids) in releases {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut update = sqlx::QueryBuilder::new(
                "UPDATE messages SET lease_owner = NULL, lease_token = NULL, visible_at = ",
            );
            update
                .push_bind(visible_at)
                .push(" WHERE lease_token = ")
                .push_bind(token)
                .push(" AND id IN (");
            let mut list = update.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            update.push(")");
            let done = update.build().execute(&mut *conn).await?.rows_affected();
            ignored += chunk.len() as u64 - done;
        }
    }
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "settlements ignored: their leases had expired and moved on"
        );
    }
    Ok(())
}

/// Settles one leased message. A delivery whose lease was lost (expired and handed out
/// again) is left alone: its new holder settles it.
async fn settle(
    conn: &mut SqliteConnection,
    id: i64,
    token: i64,
    settlement: &Settlement,
    max_attempts: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let held = match settlement {
        Settlement::Accept => {
            sqlx::query("DELETE FROM messages WHERE id = $1 AND lease_token = $2")
                .bind(id)
                .bind(token)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                > 0
        }
        Settlement::Release { delay } => {
            sqlx::query(
                "UPDATE messages SET visible_at = $3, lease_owner = NULL, lease_token = NULL
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .bind(now + millis(*delay))
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0
        }
        Settlement::Fail { delay, detail } => {
            let attempts: Option<i64> = sqlx::query_scalar(
                "UPDATE messages SET attempts = attempts + 1, last_error = $3, visible_at = $4,
                        lease_owner = NULL, lease_token = NULL
                 WHERE id = $1 AND lease_token = $2
                 RETURNING attempts",
            )
            .bind(id)
            .bind(token)
            .bind(detail)
            .bind(now + millis(*delay))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(attempts) = attempts
                && attempts >= max_attempts
            {
                let detail = format!("failed {attempts} times; last: {detail}");
                dead_letter(conn, id, None, Reason::MaxAttempts, &detail, now).await?;
            }
            attempts.is_some()
        }
        Settlement::Reject { reason, detail } => {
            dead_letter(conn, id, Some(token), *reason, detail, now).await?
        }
    };
    if !held {
        tracing::warn!(id, "settlement ignored: the lease had expired and moved on");
    }
    Ok(())
}

/// Moves a message to `dead_letters`; with a token, only if the lease is still held.
async fn dead_letter(
    conn: &mut SqliteConnection,
    id: i64,
    token: Option<i64>,
    reason: Reason,
    detail: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "INSERT INTO dead_letters (address, message_id, content_type, properties, body,
                                   enqueued_at, attempts, reason, detail, dead_lettered_at)
         SELECT address, message_id, content_type, properties, body, enqueued_at, attempts,
                $3, $4, $5
         FROM messages WHERE id = $1 AND ($2 IS NULL OR lease_token = $2)",
    )
    .bind(id)
    .bind(token)
    .bind(reason.as_str())
    .bind(detail)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if moved {
        sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}
