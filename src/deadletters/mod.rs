//! cartbus's own record of dead-lettered messages (DESIGN §5 `dead_letters`), kept in the
//! orders database for every queue backend. A message is recorded before it is rejected
//! on the queue, so a broker without a dead-letter exchange cannot lose it.

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use crate::db::Tx;
use crate::on_tx;
use crate::queue::{DeadLetterReason, Message};

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
