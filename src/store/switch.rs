//! The drain switch's tables: `consumer_control` (one row), its append-only history, and
//! `consumer_instances` (heartbeats). Every change bumps `revision`, appends history and,
//! on PostgreSQL, notifies the other instances in the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::domain::drain::{Identity, SwitchReading};
use crate::store::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

/// The PostgreSQL channel instances LISTEN on for switch changes.
pub const CHANNEL: &str = "cartbus_consumer_control";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Switch {
    /// `running` or `paused`.
    pub desired: String,
    /// The version allowed to consume; `null` before the first resume names one.
    pub active_version: Option<String>,
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
    /// A pause lifts itself at this time.
    pub until: Option<DateTime<Utc>>,
    /// Bumped by every change.
    pub revision: i64,
}

impl Switch {
    pub fn is_paused(&self) -> bool {
        self.desired == "paused"
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub revision: i64,
    /// `pause`, `resume`, `force-resume` (a resume for a version no live instance ran) or
    /// `expire`.
    pub action: String,
    pub desired: String,
    pub active_version: Option<String>,
    pub reason: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstanceRow {
    pub instance: String,
    pub version: String,
    pub schema_version: i64,
    /// `running`, `pausing`, `paused`, `passive`, `fenced` or `stopped`.
    pub state: String,
    pub in_flight: i64,
    pub processed: i64,
    #[serde(skip)]
    pub accepted: i64,
    /// The switch revision this state answers to.
    pub seen_revision: i64,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

const SELECT_SWITCH: &str =
    "SELECT desired, active_version, reason, changed_at, changed_by, until, revision
     FROM consumer_control WHERE id = 1";

/// The same mapping for a row of either backend (the row types differ).
macro_rules! switch_from_row {
    ($row:expr) => {
        Switch {
            desired: $row.try_get("desired")?,
            active_version: $row.try_get("active_version")?,
            reason: $row.try_get("reason")?,
            changed_at: $row.try_get("changed_at")?,
            changed_by: $row.try_get("changed_by")?,
            until: $row.try_get("until")?,
            revision: $row.try_get("revision")?,
        }
    };
}

pub async fn read(db: &Db) -> Result<Switch, StoreError> {
    Ok(on_db!(db, |pool| {
        let row = sqlx::query(SELECT_SWITCH).fetch_one(pool).await?;
        Ok::<_, sqlx::Error>(switch_from_row!(row))
    })?)
}

/// A change to apply to the switch.
pub struct Change<'a> {
    pub action: &'a str,
    pub desired: &'a str,
    /// `Some(v)` sets the active version; `None` keeps it.
    pub active_version: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub until: Option<DateTime<Utc>>,
    pub by: &'a str,
    /// When, on the database's clock (`changed_at`, as every instance's history reads it).
    pub at: DateTime<Utc>,
    /// Apply only if the switch is still at this revision (`expire` uses it so that two
    /// instances lifting the same pause record it once).
    pub if_revision: Option<i64>,
}

/// Applies `change` unless it changes nothing; returns the switch after it and whether it
/// changed. Pausing a paused switch with the same reason and expiry, or resuming a running
/// one for the same version, is a no-op: both calls are safe to repeat.
pub async fn change(db: &Db, change: Change<'_>) -> Result<(Switch, bool), StoreError> {
    let mut tx = db.begin().await?;
    let current = read_in(&mut tx).await?;
    let active_version = change
        .active_version
        .map(str::to_string)
        .or(current.active_version.clone());
    let stale = change.if_revision.is_some_and(|r| r != current.revision);
    let same = current.desired == change.desired
        && current.active_version == active_version
        && (change.desired == "running"
            || (current.reason.as_deref() == change.reason && current.until == change.until));
    if stale || same {
        tx.commit().await?;
        return Ok((current, false));
    }
    let now = change.at;
    let revision = current.revision + 1;
    let until = if change.desired == "paused" {
        change.until
    } else {
        None
    };
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE consumer_control
         SET desired = $1, active_version = $2, reason = $3, changed_at = $4, changed_by = $5,
             until = $6, revision = $7
         WHERE id = 1"
    )
    .bind(change.desired)
    .bind(&active_version)
    .bind(change.reason)
    .bind(now)
    .bind(change.by)
    .bind(until)
    .bind(revision)
    .execute(&mut *c)
    .await
    .map(drop))?;
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO consumer_control_history
             (revision, action, desired, active_version, reason, until, changed_at, changed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )
    .bind(revision)
    .bind(change.action)
    .bind(change.desired)
    .bind(&active_version)
    .bind(change.reason)
    .bind(until)
    .bind(now)
    .bind(change.by)
    .execute(&mut *c)
    .await
    .map(drop))?;
    if let Tx::Postgres(c) = &mut tx {
        // Delivered at commit: the other instances react within milliseconds.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(revision.to_string())
            .execute(&mut **c)
            .await?;
    }
    tx.commit().await?;
    let switch = Switch {
        desired: change.desired.to_string(),
        active_version,
        reason: change.reason.map(str::to_string),
        changed_at: now,
        changed_by: change.by.to_string(),
        until,
        revision,
    };
    Ok((switch, true))
}

/// Why this instance must not commit orders now, read inside the caller's transaction;
/// `None` when it may. On PostgreSQL the row is share-locked, so a change of the switch
/// waits for that transaction to end; SQLite's write transactions are serial already.
pub async fn forbids_consuming(
    tx: &mut Tx,
    identity: &Identity,
) -> Result<Option<&'static str>, StoreError> {
    let lock = if matches!(tx, Tx::Postgres(_)) {
        " FOR SHARE"
    } else {
        ""
    };
    let (desired, active_version, applied): (String, Option<String>, Option<i64>) =
        on_tx!(tx, |c| {
            let (desired, active_version): (String, Option<String>) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT desired, active_version FROM consumer_control WHERE id = 1{lock}"
                )))
                .fetch_one(&mut *c)
                .await?;
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE",
            )
            .fetch_one(&mut *c)
            .await?;
            Ok::<_, sqlx::Error>((desired, active_version, applied))
        })?;
    Ok(identity.forbids(&SwitchReading {
        paused: desired == "paused",
        active_version: active_version.as_deref(),
        applied_schema: applied.unwrap_or(0),
    }))
}

async fn read_in(tx: &mut Tx) -> Result<Switch, sqlx::Error> {
    // Locked for the change that follows: two changes at once (a pause and an expiry,
    // say) must not both build on the same revision. SQLite's BEGIN IMMEDIATE already
    // serialises them.
    if let Tx::Postgres(c) = tx {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_SWITCH} FOR UPDATE")))
            .fetch_one(&mut **c)
            .await?;
        return Ok(switch_from_row!(row));
    }
    on_tx!(tx, |c| {
        let row = sqlx::query(SELECT_SWITCH).fetch_one(&mut *c).await?;
        Ok(switch_from_row!(row))
    })
}

/// Newest first.
pub async fn history(db: &Db, limit: i64) -> Result<Vec<HistoryEntry>, StoreError> {
    Ok(on_db!(db, |pool| {
        let rows = sqlx::query(
            "SELECT revision, action, desired, active_version, reason, until, changed_at, changed_by
             FROM consumer_control_history ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HistoryEntry {
                    revision: row.try_get("revision")?,
                    action: row.try_get("action")?,
                    desired: row.try_get("desired")?,
                    active_version: row.try_get("active_version")?,
                    reason: row.try_get("reason")?,
                    until: row.try_get("until")?,
                    changed_at: row.try_get("changed_at")?,
                    changed_by: row.try_get("changed_by")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?)
}

/// The database server's clock: the one clock every instance agrees on, whatever its own
/// says. Liveness (`last_seen`) and a pause's `until` are measured against it.
pub async fn database_now(db: &Db) -> Result<DateTime<Utc>, StoreError> {
    Ok(match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar::<_, DateTime<Utc>>("SELECT clock_timestamp()")
                .fetch_one(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            // SQLite's clock is the machine's: on one machine every instance shares it.
            let text: String = sqlx::query_scalar("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
                .fetch_one(pool)
                .await?;
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| StoreError::invariant(format!("SQLite's clock said {text:?}: {e}")))?
                .with_timezone(&Utc)
        }
    })
}

pub async fn heartbeat(db: &Db, row: &InstanceRow) -> Result<(), StoreError> {
    Ok(on_db!(db, |pool| sqlx::query(
        "INSERT INTO consumer_instances (instance, version, schema_version, state, in_flight,
             processed, accepted, seen_revision, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (instance) DO UPDATE
         SET version = excluded.version, schema_version = excluded.schema_version,
             state = excluded.state, in_flight = excluded.in_flight,
             processed = excluded.processed, accepted = excluded.accepted,
             seen_revision = excluded.seen_revision, started_at = excluded.started_at,
             last_seen = excluded.last_seen"
    )
    .bind(&row.instance)
    .bind(&row.version)
    .bind(row.schema_version)
    .bind(&row.state)
    .bind(row.in_flight)
    .bind(row.processed)
    .bind(row.accepted)
    .bind(row.seen_revision)
    .bind(row.started_at)
    .bind(row.last_seen)
    .execute(pool)
    .await
    .map(drop))?)
}

/// Instances seen since `since`, by name.
pub async fn instances(db: &Db, since: DateTime<Utc>) -> Result<Vec<InstanceRow>, StoreError> {
    Ok(on_db!(db, |pool| {
        let rows = sqlx::query(
            "SELECT instance, version, schema_version, state, in_flight, processed, accepted,
                    seen_revision, started_at, last_seen
             FROM consumer_instances WHERE last_seen >= $1 ORDER BY instance",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InstanceRow {
                    instance: row.try_get("instance")?,
                    version: row.try_get("version")?,
                    schema_version: row.try_get("schema_version")?,
                    state: row.try_get("state")?,
                    in_flight: row.try_get::<i32, _>("in_flight").map(i64::from)?,
                    processed: row.try_get("processed")?,
                    accepted: row.try_get("accepted")?,
                    seen_revision: row.try_get("seen_revision")?,
                    started_at: row.try_get("started_at")?,
                    last_seen: row.try_get("last_seen")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    })?)
}
