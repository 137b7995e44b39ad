//! The databases of a run: fresh PostgreSQL databases and migrated scratch ones for the
//! raw figures, and the orders a cartbus has written so far.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartbus::config::Config;
use cartbus::store::Db;

/// How many orders cartbus has written.
pub async fn count_orders(db: &Db) -> anyhow::Result<i64> {
    Ok(cartbus::on_db!(db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM orders"
    )
    .fetch_one(pool)
    .await)?)
}

/// How many orders have been sent to their partner (outbox rows `processed`).
pub async fn count_sent(db: &Db) -> anyhow::Result<i64> {
    Ok(cartbus::on_db!(db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM order_dispatch WHERE process_status = 'processed'"
    )
    .fetch_one(pool)
    .await)?)
}

/// Sets the first `count` sent outbox rows pending again, as a crash or an outage would
/// leave them: work for the polling relay alone.
pub async fn unsend(db: &Db, count: usize) -> anyhow::Result<i64> {
    let limit = i64::try_from(count).unwrap_or(i64::MAX);
    let done = cartbus::on_db!(db, |pool| sqlx::query(
        "UPDATE order_dispatch SET process_status = 'pending', processed_at = NULL,
             locked_until = NULL, next_attempt_at = created_at
         WHERE order_id IN (SELECT order_id FROM order_dispatch
                            WHERE process_status = 'processed' ORDER BY order_id LIMIT $1)"
    )
    .bind(limit)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(done as i64)
}

/// Waits until `target` orders have been sent to their partner.
pub async fn wait_for_dispatched(db: &Db, target: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let sent = count_sent(db).await?;
        if sent >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the relay had sent {sent} of {target} orders after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until cartbus has written `target` orders.
pub async fn wait_for_orders(db: &Db, target: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count_orders(db).await? < target {
        if Instant::now() > deadline {
            bail!("orders did not reach {target} in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// An empty, migrated orders database of the same kind as `env` names.
pub async fn scratch_db(env: &[(String, String)], data: &Path) -> anyhow::Result<Db> {
    let postgres = env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone());
    let url = match postgres {
        Some(url) => {
            let (admin, _) = url.rsplit_once('/').context("database URL")?;
            fresh_postgres(&format!("{admin}/postgres")).await?
        }
        None => format!(
            "sqlite://{}",
            data.join(format!("scratch-{}.db", uuid::Uuid::new_v4().simple()))
                .display()
        ),
    };
    let config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("CARTBUS_DATA_DIR", &data.display().to_string()),
    ])?;
    let db = Db::connect_lazy(&config)?;
    db.migrate().await?;
    Ok(db)
}

/// Creates an empty database on the PostgreSQL server of `admin_url`; returns its URL.
pub async fn fresh_postgres(admin_url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!("cartbus_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (base, _) = admin_url.rsplit_once('/').context("database URL")?;
    Ok(format!("{base}/{name}"))
}
