//! Failed-attempt counts for broker deliveries, kept in the orders database
//! (`delivery_attempts`): a classic RabbitMQ queue leaves `delivery_count` at 0 and a
//! release does not count, so the broker cannot enforce an attempt limit for us. The
//! queue asks through its [`AttemptLedger`] trait and never sees the database.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{QueryBuilder, Row};

use crate::on_db;
use crate::queue::{AttemptLedger, LedgerError};
use crate::store::{Db, StoreError};

#[async_trait]
impl AttemptLedger for Db {
    async fn attempts(
        &self,
        source: &str,
        message_ids: &[&str],
    ) -> Result<HashMap<String, u32>, LedgerError> {
        Ok(of(self, source, message_ids).await?)
    }

    async fn count_failure(
        &self,
        source: &str,
        message_id: &str,
        error: &str,
    ) -> Result<(), LedgerError> {
        Ok(record(self, source, message_id, error).await?)
    }

    async fn forget(&self, source: &str, message_ids: &[&str]) -> Result<(), LedgerError> {
        Ok(forget(self, source, message_ids).await?)
    }
}

/// Failed attempts recorded so far for each of `message_ids` (absent = none).
pub async fn of(
    db: &Db,
    source: &str,
    message_ids: &[&str],
) -> Result<HashMap<String, u32>, StoreError> {
    if message_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = on_db!(db, |pool| {
        let mut query =
            QueryBuilder::new("SELECT message_id, attempts FROM delivery_attempts WHERE source = ");
        query.push_bind(source).push(" AND message_id IN (");
        let mut ids = query.separated(", ");
        for id in message_ids {
            ids.push_bind(*id);
        }
        query.push(")");
        query
            .build()
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                let attempts: i32 = row.get("attempts");
                (row.get::<String, _>("message_id"), attempts.max(0) as u32)
            })
            .collect::<HashMap<_, _>>()
    });
    Ok(rows)
}

/// Counts one more failed attempt.
pub async fn record(
    db: &Db,
    source: &str,
    message_id: &str,
    error: &str,
) -> Result<(), StoreError> {
    Ok(on_db!(db, |pool| sqlx::query(
        "INSERT INTO delivery_attempts (source, message_id, attempts, last_error, updated_at)
         VALUES ($1, $2, 1, $3, $4)
         ON CONFLICT (source, message_id) DO UPDATE
         SET attempts = delivery_attempts.attempts + 1, last_error = excluded.last_error,
             updated_at = excluded.updated_at"
    )
    .bind(source)
    .bind(message_id)
    .bind(error)
    .bind(Utc::now())
    .execute(pool)
    .await
    .map(drop))?)
}

/// Forgets the count of messages that are settled for good.
pub async fn forget(db: &Db, source: &str, message_ids: &[&str]) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    Ok(on_db!(db, |pool| {
        let mut query = QueryBuilder::new("DELETE FROM delivery_attempts WHERE source = ");
        query.push_bind(source).push(" AND message_id IN (");
        let mut ids = query.separated(", ");
        for id in message_ids {
            ids.push_bind(*id);
        }
        query.push(")");
        query.build().execute(pool).await.map(drop)
    })?)
}
