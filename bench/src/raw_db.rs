//! The raw speed of the databases underneath cartbus: the same rows written straight
//! through sqlx and cartbus's order writer, with no HTTP, validation or queue in between.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartbus::domain::Cart;
use cartbus::domain::order::Source;
use cartbus::store::orders;

use crate::databases::scratch_db;
use crate::load::cart_json;

/// Raw durable append rate of the embedded queue's store: SQLite, WAL, synchronous FULL,
/// 256 rows of ~1 KB per transaction, no cartbus code.
pub async fn raw_sqlite_append(path: &Path, count: usize) -> anyhow::Result<f64> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE m (id INTEGER PRIMARY KEY, message_id TEXT, body BLOB)")
        .execute(&mut conn)
        .await?;
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(256) {
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO m (message_id, body) ");
        insert.push_values(chunk, |mut row, n| {
            row.push_bind(n.to_string()).push_bind(&body);
        });
        insert.build().execute(&mut conn).await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// The same order rows the consumer writes, `batch` per transaction, straight into a
/// fresh database of the same kind: the raw speed the drain is compared with.
pub async fn raw_batched_insert(
    env: &[(String, String)],
    data: &Path,
    count: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let db = scratch_db(env, data).await?;
    let carts: Vec<Cart> = (0..count)
        .map(|_| Cart::parse(&cart_json()).map_err(|e| anyhow::anyhow!("{e:?}")))
        .collect::<anyhow::Result<_>>()?;
    let hashes: Vec<String> = carts.iter().map(Cart::payload_hash).collect();
    let started = Instant::now();
    for (chunk, hashes) in carts.chunks(batch).zip(hashes.chunks(batch)) {
        let batch: Vec<(&Cart, &str)> = chunk
            .iter()
            .zip(hashes.iter().map(String::as_str))
            .collect();
        let mut tx = db.begin().await?;
        orders::place_many(&mut tx, &batch, Source::Queue, chrono::Utc::now(), None).await?;
        tx.commit().await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// One cart per transaction from `clients` tasks: the raw counterpart of direct writes.
pub async fn raw_single_inserts(
    env: &[(String, String)],
    data: &Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let db = Arc::new(scratch_db(env, data).await?);
    let end = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let cart = Cart::parse(&cart_json()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let mut tx = db.begin().await?;
                    orders::place(&mut tx, &cart, &cart.payload_hash(), Source::Direct).await?;
                    tx.commit().await?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
