//! The orders database: SQLite (default, one machine) or PostgreSQL (production), and a
//! store per table family. Each takes `&mut` a transaction (or the pool, for reads) and
//! knows nothing of HTTP, queues or services.
//!
//! Queries are written once and compiled for both backends with [`on_db!`] and [`on_tx!`],
//! which expand into a `match` with the same body in each arm; where the SQL dialects
//! differ, the caller matches on the backend itself.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Postgres, SqlSafeStr, Sqlite, Transaction};

use crate::config::{Config, DatabaseKind};

pub mod attempts;
pub mod dead_letters;
pub mod deliveries;
pub mod events;
pub mod order_reads;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod smoke_runs;
pub mod switch;
pub mod webhooks;

pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// This binary's migrations, in a migrator that tolerates newer ones already applied: a
/// newer version may have migrated the database during a deploy, and this instance must
/// then carry on fenced (DESIGN §6), not crash.
pub fn migrator(kind: &DatabaseKind) -> Migrator {
    let base = match kind {
        DatabaseKind::Postgres => &POSTGRES_MIGRATOR,
        DatabaseKind::Sqlite => &SQLITE_MIGRATOR,
    };
    let mut migrations = base.migrations.to_vec();
    // Test-only (fail points exist only in test builds): play a newer version that
    // carries one more migration, for the slot-swap drill.
    if crate::fault::hit("newer-schema") {
        migrations.push(Migration::new(
            9_000,
            "drill: a newer version's migration".into(),
            MigrationType::Simple,
            AssertSqlSafe("CREATE TABLE drill_newer_version (id INTEGER PRIMARY KEY)")
                .into_sql_str(),
            false,
        ));
    }
    // The fields are sqlx's (0.9, pinned): there is no public constructor from a list.
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: true,
        ..Migrator::DEFAULT
    }
}

/// The newest migration this binary knows.
pub fn known_schema_version(kind: &DatabaseKind) -> i64 {
    migrator(kind).iter().map(|m| m.version).max().unwrap_or(0)
}

/// Runs `$body` with `$c` bound to the pool of whichever backend `$db` is.
#[macro_export]
macro_rules! on_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Postgres($c) => $body,
            $crate::store::Db::Sqlite($c) => $body,
        }
    };
}

/// Runs `$body` with `$c` bound to the connection of whichever backend `$tx` is.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres($c) => {
                let $c: &mut sqlx::PgConnection = &mut *$c;
                $body
            }
            $crate::store::Tx::Sqlite($c) => {
                let $c: &mut sqlx::SqliteConnection = &mut *$c;
                $body
            }
        }
    };
}

#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// `CARTBUS_DATABASE_MAX_CONNECTIONS` as (workers, checkouts): half each, the odd one to
/// the workers, at least one each.
fn split_connections(all: u32) -> (u32, u32) {
    let checkouts = (all / 2).max(1);
    (all.saturating_sub(checkouts).max(1), checkouts)
}

/// The pools of [`Db::connect_split`].
pub struct Pools {
    pub workers: Db,
    pub checkouts: Db,
}

pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Db {
    /// Creates the pool without connecting: the service starts (and queues carts) even
    /// while the database is down. The first use connects.
    pub fn connect_lazy(config: &Config) -> Result<Db, sqlx::Error> {
        Db::connect_lazy_sized(config, config.database.max_connections)
    }

    /// The service's two pools, `CARTBUS_DATABASE_MAX_CONNECTIONS` split between them:
    /// one for the background workers (consumer, relay, heartbeat, …) and one for
    /// checkouts (the conflict check, direct writes). A pool hands out connections first
    /// come, first served, so with one pool a flood of checkouts queued the consumer's
    /// transaction behind hundreds of conflict checks: the drain nearly stopped while
    /// carts arrived (the bench's open loop, 149 orders/s at 40 % of intake).
    pub fn connect_split(config: &Config) -> Result<Pools, sqlx::Error> {
        let (workers, checkouts) = split_connections(config.database.max_connections);
        Ok(Pools {
            workers: Db::connect_lazy_sized(config, workers)?,
            checkouts: Db::connect_lazy_sized(config, checkouts)?,
        })
    }

    fn connect_lazy_sized(config: &Config, max_connections: u32) -> Result<Db, sqlx::Error> {
        let url = config.database.url.expose_secret();
        let acquire_timeout = Duration::from_secs(3);
        match config.database.kind {
            DatabaseKind::Postgres => {
                // sqlx (0.9.1 on) sets TCP_NODELAY itself: a batch of orders is one large
                // bind message, which would otherwise wait for the server's delayed ACK.
                let options = PgConnectOptions::from_str(url)?.application_name("cartbus");
                Ok(Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with(options),
                ))
            }
            DatabaseKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Orders must be at least as durable as the queue's accept that follows.
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                    && let Err(e) = std::fs::create_dir_all(dir)
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot create the database directory");
                }
                Ok(Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(acquire_timeout)
                        .after_release(|conn, _| Box::pin(crate::sqlite::connection_is_sound(conn)))
                        .connect_lazy_with(options),
                ))
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    pub fn database_kind(&self) -> DatabaseKind {
        match self {
            Db::Postgres(_) => DatabaseKind::Postgres,
            Db::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    /// Applies the migrations this binary carries.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let migrator = migrator(&self.database_kind());
        match self {
            Db::Postgres(pool) => migrator.run(pool).await,
            Db::Sqlite(pool) => migrator.run(pool).await,
        }
    }

    /// The newest migration applied to the database (by any version of cartbus).
    pub async fn applied_schema_version(&self) -> Result<i64, sqlx::Error> {
        on_db!(self, |pool| sqlx::query_scalar::<_, Option<i64>>(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE"
        )
        .fetch_one(pool)
        .await
        .map(|v| v.unwrap_or(0)))
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so that it waits for other writers instead of failing when it upgrades later.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Db::Postgres(pool) => Ok(Tx::Postgres(pool.begin().await?)),
            Db::Sqlite(pool) => Ok(Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
        }
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_db!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))
    }

    pub async fn close(&self) {
        on_db!(self, |pool| pool.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// Runs the migrations for `url` and returns; `cartbus migrate`.
pub async fn migrate_url(url: &SecretString, kind: &DatabaseKind) -> anyhow::Result<()> {
    let url = url.expose_secret();
    match kind {
        DatabaseKind::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(PgConnectOptions::from_str(url)?)
                .await?;
            migrator(kind).run(&pool).await?;
            pool.close().await;
        }
        DatabaseKind::Sqlite => {
            let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
            if let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| d != &Path::new(""))
            {
                std::fs::create_dir_all(dir)?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?;
            migrator(kind).run(&pool).await?;
            pool.close().await;
        }
    }
    Ok(())
}

/// What a store call can fail with, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is away, busy or restarting: try again later, counting no attempt.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// This statement fails for this data (a constraint, say): count an attempt, and
    /// dead-letter the message once the attempts run out.
    #[error("database refused the statement: {0}")]
    Permanent(#[source] sqlx::Error),
    /// What the database returned breaks a rule the code relies on: a bug. Logged
    /// loudly and counted as an attempt like a permanent failure — never retried forever.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }

    /// Reports a broken invariant at error level where it is found.
    pub fn invariant(what: impl Into<String>) -> StoreError {
        let what = what.into();
        tracing::error!(invariant = %what, "store invariant broken: this is a bug");
        StoreError::Invariant(what)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            StoreError::Transient(e)
        } else {
            StoreError::Permanent(e)
        }
    }
}

/// Whether an error means "the database is not reachable or not answering" (retry later)
/// rather than "this statement is wrong for this data". `Protocol` is the driver's own
/// word for a connection that broke mid-conversation (a restarting server); cartbus never
/// raises it itself — a broken rule of ours is [`StoreError::Invariant`].
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection (08), resources (53), operator intervention (57),
            // serialization/deadlock (40). SQLite: BUSY (5), LOCKED (6), FULL (13),
            // IOERR (10), CANTOPEN (14), READONLY (8).
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class))
                || matches!(
                    code.as_ref(),
                    "5" | "6" | "8" | "10" | "13" | "14" | "261" | "517"
                )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::split_connections;

    #[test]
    fn connections_are_split_between_workers_and_checkouts_with_one_each_at_least() {
        assert_eq!(split_connections(16), (8, 8));
        assert_eq!(split_connections(5), (3, 2));
        assert_eq!(split_connections(2), (1, 1));
        assert_eq!(split_connections(1), (1, 1));
    }
}
