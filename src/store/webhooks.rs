//! Webhook endpoints (issue 20): the storefront's receivers, their secrets and state.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, StoreError};
use crate::domain::webhook::{EndpointState, EventFilter, Secret};
use crate::on_db;

/// The id of the endpoint `CARTBUS_WEBHOOK_URL` configures.
pub const CONFIGURED: &str = "config";
/// Why that endpoint is disabled when the setting is taken away.
pub const URL_UNSET: &str = "CARTBUS_WEBHOOK_URL is no longer set";

/// An endpoint as stored. No `Debug`: it holds its secrets.
#[derive(Clone, FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub description: String,
    pub event_types: Option<String>,
    /// `whsec_…`, newest first, comma-separated. Never shown after it was made.
    pub secrets: String,
    pub old_secret_until: Option<DateTime<Utc>>,
    pub state: String,
    pub state_reason: Option<String>,
    pub state_since: DateTime<Utc>,
    pub probe_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl EndpointRow {
    pub fn state(&self) -> EndpointState {
        EndpointState::parse(&self.state).unwrap_or(EndpointState::Disabled)
    }

    pub fn filter(&self) -> EventFilter {
        EventFilter::from_stored(self.event_types.as_deref())
    }

    /// The secrets that sign a call at `now`: the newest, and the older ones until their
    /// overlap ends; for the endpoint from configuration, every one listed there (the
    /// operator rotates by listing the new and the old, then dropping the old).
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<Secret> {
        let keep_old =
            self.id == CONFIGURED || self.old_secret_until.is_some_and(|until| now < until);
        self.secrets
            .split(',')
            .enumerate()
            .filter(|(i, _)| *i == 0 || keep_old)
            .filter_map(|(_, s)| Secret::parse(s.trim()).ok())
            .collect()
    }
}

const COLUMNS: &str = "id, url, description, event_types, secrets, old_secret_until, state, \
                       state_reason, state_since, probe_at, created_at";

/// A new endpoint.
pub struct NewEndpoint<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub description: &'a str,
    pub events: &'a EventFilter,
    pub secrets: &'a [Secret],
}

fn join(secrets: &[Secret]) -> String {
    secrets
        .iter()
        .map(Secret::expose)
        .collect::<Vec<_>>()
        .join(",")
}

const INSERT: &str = "INSERT INTO webhook_endpoints (id, url, description, event_types, secrets,
                                        state, state_since, created_at)
                       VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $6)";

pub async fn create(db: &Db, new: &NewEndpoint<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
    write(db, INSERT, new, now).await
}

/// The endpoint from configuration, made or brought in line with it at start-up: its URL,
/// secrets and event types follow the configuration; its state stays (an operator's
/// disable holds across restarts).
pub async fn upsert_configured(
    db: &Db,
    new: &NewEndpoint<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // A `config` row disabled because the setting went away (`URL_UNSET`) is enabled
    // again once it is set.
    const UPSERT: &str = "INSERT INTO webhook_endpoints (id, url, description, event_types,
                                        secrets, state, state_since, created_at)
         VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $6)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, event_types = excluded.event_types,
             secrets = excluded.secrets, old_secret_until = NULL,
             description = excluded.description,
             state = CASE WHEN webhook_endpoints.state_reason = 'CARTBUS_WEBHOOK_URL is no longer set'
                          THEN 'enabled' ELSE webhook_endpoints.state END,
             state_reason = CASE WHEN webhook_endpoints.state_reason = 'CARTBUS_WEBHOOK_URL is no longer set'
                          THEN NULL ELSE webhook_endpoints.state_reason END";
    debug_assert!(UPSERT.contains(URL_UNSET));
    write(db, UPSERT, new, now).await
}

async fn write(
    db: &Db,
    sql: &'static str,
    new: &NewEndpoint<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let secrets = join(new.secrets);
    let types = new.events.stored();
    on_db!(db, |pool| sqlx::query(sql)
        .bind(new.id)
        .bind(new.url)
        .bind(new.description)
        .bind(&types)
        .bind(&secrets)
        .bind(now)
        .execute(pool)
        .await
        .map(drop))?;
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<EndpointRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    ));
    Ok(on_db!(db, |pool| sqlx::query_as(sql)
        .fetch_all(pool)
        .await)?)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<EndpointRow>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1"
    ));
    Ok(on_db!(db, |pool| sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(pool)
        .await)?)
}

/// Changes what an endpoint wants or its description; false when there is no such one.
pub async fn update(
    db: &Db,
    id: &str,
    events: Option<&EventFilter>,
    description: Option<&str>,
) -> Result<bool, StoreError> {
    let types = events.map(EventFilter::stored);
    let done = on_db!(db, |pool| sqlx::query(
        "UPDATE webhook_endpoints
         SET event_types = CASE WHEN $2 THEN $3 ELSE event_types END,
             description = COALESCE($4, description)
         WHERE id = $1"
    )
    .bind(id)
    .bind(types.is_some())
    .bind(types.flatten())
    .bind(description)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done > 0)
}

/// What a rotation came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    Done,
    NotFound,
    /// Another rotation changed the secrets meanwhile: theirs stands.
    Raced,
}

/// A new secret first; the newest of the old ones keeps signing until `old_until`.
pub async fn rotate(
    db: &Db,
    id: &str,
    new: &Secret,
    old_until: DateTime<Utc>,
) -> Result<Rotation, StoreError> {
    let Some(row) = get(db, id).await? else {
        return Ok(Rotation::NotFound);
    };
    let newest_old = row.secrets.split(',').next().unwrap_or_default();
    let secrets = format!("{},{newest_old}", new.expose());
    let done = on_db!(db, |pool| sqlx::query(
        "UPDATE webhook_endpoints SET secrets = $2, old_secret_until = $3
         WHERE id = $1 AND secrets = $4"
    )
    .bind(id)
    .bind(&secrets)
    .bind(old_until)
    .bind(&row.secrets)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(if done == 0 {
        Rotation::Raced
    } else {
        Rotation::Done
    })
}

/// Sets an endpoint's state, only from one of `from`. Enabling also makes its pending
/// deliveries due now, their count of attempts starting again. False when the endpoint
/// is not there or not in one of `from`.
pub async fn set_state(
    db: &Db,
    id: &str,
    from: &[EndpointState],
    to: EndpointState,
    reason: Option<&str>,
    probe_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let mut tx = db.begin().await?;
    let done = crate::on_tx!(&mut tx, |c| {
        let done = sqlx::query(
            "UPDATE webhook_endpoints
             SET state = $2, state_reason = $3, probe_at = $4,
                 state_since = CASE WHEN state = $2 THEN state_since ELSE $5 END
             WHERE id = $1 AND state IN ($6, $7, $8)",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(reason)
        .bind(probe_at)
        .bind(now)
        .bind(from.first().copied().unwrap_or(""))
        .bind(from.get(1).copied().unwrap_or(""))
        .bind(from.get(2).copied().unwrap_or(""))
        .execute(&mut *c)
        .await?
        .rows_affected();
        if done > 0 && to == EndpointState::Enabled {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_at = $2, attempts = 0
                 WHERE endpoint_id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *c)
            .await?;
        }
        Ok::<_, sqlx::Error>(done)
    })?;
    tx.commit().await?;
    Ok(done > 0)
}

/// Pending deliveries per endpoint, and the oldest one's time (the partial indexes hold
/// only pending rows: delivered ones are never counted).
#[derive(Clone, Debug, FromRow)]
pub struct PendingCount {
    pub endpoint_id: String,
    pub pending: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub async fn pending(db: &Db) -> Result<Vec<PendingCount>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT endpoint_id, COUNT(*) AS pending, MIN(created_at) AS oldest
         FROM webhook_deliveries WHERE state = 'pending' GROUP BY endpoint_id"
    )
    .fetch_all(pool)
    .await)?)
}
