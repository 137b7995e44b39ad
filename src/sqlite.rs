//! SQLite connection hygiene shared by the orders database and the embedded queue.

use sqlx::Connection;

/// Whether a released SQLite connection may go back to the pool. A COMMIT that fails
/// because SQLite rolled the transaction back itself (SQLITE_FULL on a full disk, say)
/// leaves sqlx counting a transaction that no longer exists, and every later BEGIN on the
/// connection fails ("attempted to call begin_with at non-zero transaction depth"): the
/// fault campaign's disk-full phase found the whole pool poisoned that way. The ping lets
/// the worker run any rollback queued by a dropped transaction first.
pub async fn connection_is_sound(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    conn.ping().await?;
    let sound = !conn.is_in_transaction();
    if !sound {
        tracing::warn!("closing an SQLite connection left in a transaction by a failed commit");
    }
    Ok(sound)
}
