//! cartbus's own record of dead-lettered messages (DESIGN §5 `dead_letters`), kept in the
//! orders database for every queue backend. A message is recorded before it is rejected
//! on the queue, so a broker without a dead-letter exchange cannot lose it.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use crate::db::{Db, Tx};
use crate::queue::{DeadLetterReason, Message};
use crate::{on_db, on_tx};

/// Records (or, for the same message seen again, refreshes) a dead letter.
pub async fn record(
    tx: &mut Tx,
    source: &str,
    message: &Message,
    reason: DeadLetterReason,
    detail: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let body_hash = hex::encode(Sha256::digest(&message.body));
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO dead_letters (source, message_id, body_hash, reason, detail, attempts,
             content_type, properties, body, first_seen, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         ON CONFLICT (source, message_id, body_hash) DO UPDATE
         SET reason = excluded.reason, detail = excluded.detail, attempts = excluded.attempts,
             last_seen = excluded.last_seen, times_seen = dead_letters.times_seen + 1"
    )
    .bind(source)
    .bind(&message.message_id)
    .bind(&body_hash)
    .bind(reason.as_str())
    .bind(detail)
    .bind(attempts)
    .bind(&message.content_type)
    .bind(Json(&message.properties))
    .bind(message.body.as_ref())
    .bind(now)
    .execute(&mut *c)
    .await
    .map(drop))
}

/// A dead letter as operators see it: the message as it came, and why it was refused.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    pub message_id: String,
    /// The queue address it came from (`direct-write` for a direct write's payment step).
    pub source: String,
    #[schema(example = "conflict")]
    pub reason: String,
    pub detail: String,
    /// Failed attempts before it was dead-lettered.
    pub attempts: i32,
    /// How often the same message (same id and body) was dead-lettered.
    pub times_seen: i32,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub content_type: String,
    /// The body as JSON when it is JSON, otherwise as text (invalid UTF-8 replaced).
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    #[schema(value_type = Object)]
    pub properties: serde_json::Value,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_by: Option<String>,
    pub deleted_why: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    message_id: String,
    source: String,
    reason: String,
    detail: String,
    attempts: i32,
    times_seen: i32,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    content_type: String,
    body: Vec<u8>,
    properties: Json<serde_json::Value>,
    deleted_at: Option<DateTime<Utc>>,
    deleted_by: Option<String>,
    deleted_why: Option<String>,
}

impl Row {
    fn into_view(self) -> DeadLetterView {
        let body = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        });
        DeadLetterView {
            id: self.id,
            message_id: self.message_id,
            source: self.source,
            reason: self.reason,
            detail: self.detail,
            attempts: self.attempts,
            times_seen: self.times_seen,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            content_type: self.content_type,
            body,
            properties: self.properties.0,
            deleted_at: self.deleted_at,
            deleted_by: self.deleted_by,
            deleted_why: self.deleted_why,
        }
    }
}

const COLUMNS: &str = "id, message_id, source, reason, detail, attempts, times_seen, first_seen,
    last_seen, content_type, body, properties, deleted_at, deleted_by, deleted_why";

/// Which dead letters to list; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub source: Option<String>,
    /// Last seen at or after.
    pub since: Option<DateTime<Utc>>,
    /// Ids above this (the previous page's last).
    pub after: Option<i64>,
}

/// Dead letters not deleted, oldest first, at most `limit`.
pub async fn list(
    db: &Db,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetterView>, sqlx::Error> {
    on_db!(db, |pool| {
        let mut select = sqlx::QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE deleted_at IS NULL"
        ));
        if let Some(reason) = &filter.reason {
            select.push(" AND reason = ").push_bind(reason.clone());
        }
        if let Some(source) = &filter.source {
            select.push(" AND source = ").push_bind(source.clone());
        }
        if let Some(since) = filter.since {
            select.push(" AND last_seen >= ").push_bind(since);
        }
        if let Some(after) = filter.after {
            select.push(" AND id > ").push_bind(after);
        }
        select.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows: Vec<Row> = select.build_query_as().fetch_all(pool).await?;
        Ok(rows.into_iter().map(Row::into_view).collect())
    })
}

/// One dead letter, deleted or not.
pub async fn find(db: &Db, id: i64) -> Result<Option<DeadLetterView>, sqlx::Error> {
    on_db!(db, |pool| {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(Row::into_view))
    })
}

/// An action an operator took on a dead letter.
#[derive(Clone, Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    #[schema(example = "delete")]
    pub action: String,
    pub outcome: Option<String>,
    pub order_id: Option<uuid::Uuid>,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn audit(db: &Db, id: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
    on_db!(db, |pool| sqlx::query_as(
        "SELECT action, outcome, order_id, actor, reason, at FROM dead_letter_audit
         WHERE dead_letter_id = $1 ORDER BY id"
    )
    .bind(id)
    .fetch_all(pool)
    .await)
}

/// Deletes (hides) a dead letter, keeping it and an audit entry: who and why. Deleting
/// one that is deleted already changes nothing. `None` when there is no such id.
pub async fn delete(
    db: &Db,
    id: i64,
    actor: &str,
    reason: &str,
) -> Result<Option<DeadLetterView>, sqlx::Error> {
    let now = Utc::now();
    let mut tx = db.begin().await?;
    let deleted: u64 = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE dead_letters SET deleted_at = $2, deleted_by = $3, deleted_why = $4
         WHERE id = $1 AND deleted_at IS NULL"
    )
    .bind(id)
    .bind(now)
    .bind(actor)
    .bind(reason)
    .execute(&mut *c)
    .await
    .map(|done| done.rows_affected()))?;
    if deleted == 1 {
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO dead_letter_audit (dead_letter_id, action, actor, reason, at)
             VALUES ($1, 'delete', $2, $3, $4)"
        )
        .bind(id)
        .bind(actor)
        .bind(reason)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(drop))?;
    }
    tx.commit().await?;
    find(db, id).await
}

/// Dead letters not deleted, by reason (for metrics and the console).
pub async fn counts_by_reason(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    on_db!(db, |pool| sqlx::query_as(
        "SELECT reason, COUNT(*) FROM dead_letters WHERE deleted_at IS NULL GROUP BY reason"
    )
    .fetch_all(pool)
    .await)
}
