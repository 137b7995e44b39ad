//! cartbus's own record of dead-lettered messages (DESIGN §5 `dead_letters`), kept in the
//! orders database for every queue backend. A message is recorded before it is rejected
//! on the queue, so a broker without a dead-letter exchange cannot lose it.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use crate::domain::Reason;
use crate::domain::message::Message;
use crate::store::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

/// Records (or, for the same message seen again, refreshes) a dead letter.
pub async fn record(
    tx: &mut Tx,
    source: &str,
    message: &Message,
    reason: Reason,
    detail: &str,
    attempts: u32,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let body_hash = hex::encode(Sha256::digest(&message.body));
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    Ok(on_tx!(tx, |c| sqlx::query(
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
    .map(drop))?)
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
    /// Resubmits so far (each counts against `CARTBUS_RESUBMIT_LIMIT`).
    pub resubmits: i32,
    /// When a resubmit made or found its order (or applied the reply); a resolved dead
    /// letter leaves the open list.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The resubmit outcome that resolved it: `created-order`, `duplicate`,
    /// `payment-declined` or `reply-applied`.
    #[schema(example = "created-order")]
    pub resolution: Option<String>,
    /// The order it became (or was found to be).
    pub order_id: Option<uuid::Uuid>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) message_id: String,
    pub(crate) source: String,
    pub(crate) reason: String,
    pub(crate) detail: String,
    pub(crate) attempts: i32,
    pub(crate) times_seen: i32,
    pub(crate) first_seen: DateTime<Utc>,
    pub(crate) last_seen: DateTime<Utc>,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: Json<serde_json::Value>,
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    pub(crate) deleted_by: Option<String>,
    pub(crate) deleted_why: Option<String>,
    pub(crate) resubmits: i32,
    pub(crate) resolved_at: Option<DateTime<Utc>>,
    pub(crate) resolution: Option<String>,
    pub(crate) order_id: Option<uuid::Uuid>,
}

impl Row {
    /// The message as it was dead-lettered, to process again.
    pub(crate) fn message(&self) -> Message {
        let properties = serde_json::from_value(self.properties.0.clone()).unwrap_or_default();
        Message {
            message_id: self.message_id.clone(),
            content_type: self.content_type.clone(),
            properties,
            body: self.body.clone().into(),
            ..Default::default()
        }
    }

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
            resubmits: self.resubmits,
            resolved_at: self.resolved_at,
            resolution: self.resolution,
            order_id: self.order_id,
        }
    }
}

const COLUMNS: &str = "id, message_id, source, reason, detail, attempts, times_seen, first_seen,
    last_seen, content_type, body, properties, deleted_at, deleted_by, deleted_why, resubmits,
    resolved_at, resolution, order_id";

/// Where a dead letter is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// Neither resolved by a resubmit nor deleted: waiting for a person.
    #[default]
    Open,
    Resolved,
    Deleted,
    All,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "open" => Status::Open,
            "resolved" => Status::Resolved,
            "deleted" => Status::Deleted,
            "all" => Status::All,
            _ => return None,
        })
    }

    fn condition(self) -> &'static str {
        match self {
            Status::Open => "deleted_at IS NULL AND resolved_at IS NULL",
            Status::Resolved => "deleted_at IS NULL AND resolved_at IS NOT NULL",
            Status::Deleted => "deleted_at IS NOT NULL",
            Status::All => "TRUE",
        }
    }
}

/// Which dead letters to list; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub status: Status,
    pub reason: Option<String>,
    pub source: Option<String>,
    /// Last seen at or after.
    pub since: Option<DateTime<Utc>>,
    /// Ids above this (the previous page's last).
    pub after: Option<i64>,
}

/// Dead letters in `filter.status` (open by default), oldest first, at most `limit`.
pub async fn list(db: &Db, filter: &Filter, limit: i64) -> Result<Vec<DeadLetterView>, StoreError> {
    Ok(on_db!(db, |pool| {
        let mut select = sqlx::QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {}",
            filter.status.condition()
        ));
        push_filter(&mut select, &filter.reason, &filter.source, filter.since);
        if let Some(after) = filter.after {
            select.push(" AND id > ").push_bind(after);
        }
        select.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows: Vec<Row> = select.build_query_as().fetch_all(pool).await?;
        Ok::<_, sqlx::Error>(rows.into_iter().map(Row::into_view).collect())
    })?)
}

/// Appends ` AND …` for each filter that is set.
pub(crate) fn push_filter<DB: sqlx::Database>(
    select: &mut sqlx::QueryBuilder<DB>,
    reason: &Option<String>,
    source: &Option<String>,
    since: Option<DateTime<Utc>>,
) where
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    DateTime<Utc>: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if let Some(reason) = reason {
        select.push(" AND reason = ").push_bind(reason.clone());
    }
    if let Some(source) = source {
        select.push(" AND source = ").push_bind(source.clone());
    }
    if let Some(since) = since {
        select.push(" AND last_seen >= ").push_bind(since);
    }
}

/// One dead letter, deleted or not.
pub async fn find(db: &Db, id: i64) -> Result<Option<DeadLetterView>, StoreError> {
    Ok(load(db, id).await?.map(Row::into_view))
}

/// One dead letter with its raw message.
pub(crate) async fn load(db: &Db, id: i64) -> Result<Option<Row>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1")
    ))
    .bind(id)
    .fetch_optional(pool)
    .await)?)
}

/// [`load`] inside a transaction, locking the row on PostgreSQL (SQLite's single writer
/// serialises the transaction anyway) so that two resubmits of one dead letter queue up.
pub(crate) async fn lock(tx: &mut Tx, id: i64) -> Result<Option<Row>, StoreError> {
    let row = match tx {
        Tx::Postgres(c) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE"
            )))
            .bind(id)
            .fetch_optional(&mut **c)
            .await
        }
        Tx::Sqlite(c) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut **c)
            .await
        }
    };
    Ok(row?)
}

/// An action an operator took on a dead letter.
#[derive(Clone, Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    #[schema(example = "resubmit")]
    pub action: String,
    pub outcome: Option<String>,
    pub order_id: Option<uuid::Uuid>,
    pub actor: String,
    pub reason: Option<String>,
    /// What a resubmit found, in words.
    pub detail: Option<String>,
    /// The bulk resubmit it was part of.
    pub job_id: Option<uuid::Uuid>,
    pub at: DateTime<Utc>,
}

pub async fn audit(db: &Db, id: i64) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT action, outcome, order_id, actor, reason, detail, job_id, at FROM dead_letter_audit
         WHERE dead_letter_id = $1 ORDER BY id"
    )
    .bind(id)
    .fetch_all(pool)
    .await)?)
}

/// Deletes (hides) a dead letter, keeping it and an audit entry: who and why. Deleting
/// one that is deleted already changes nothing. `None` when there is no such id.
pub async fn delete(
    db: &Db,
    id: i64,
    actor: &str,
    reason: &str,
) -> Result<Option<DeadLetterView>, StoreError> {
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

/// Open dead letters (neither resolved nor deleted), by reason (for metrics and the
/// console).
pub async fn counts_by_reason(db: &Db) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT reason, COUNT(*) FROM dead_letters
         WHERE deleted_at IS NULL AND resolved_at IS NULL GROUP BY reason"
    )
    .fetch_all(pool)
    .await)?)
}
