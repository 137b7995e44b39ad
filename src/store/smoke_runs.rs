//! The last smoke run of each version (issue 21), for the deploy-window page.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Db, StoreError};
use crate::on_db;

#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SmokeRun {
    pub version: String,
    pub instance: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// The outcomes by count (`would-create-order ×2, duplicate, invalid`), or the step
    /// that failed and why.
    pub summary: String,
}

/// Keeps `run` as its version's last.
pub async fn record(db: &Db, run: &SmokeRun) -> Result<(), StoreError> {
    on_db!(db, |pool| sqlx::query(
        "INSERT INTO smoke_runs (version, instance, at, ok, summary) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (version) DO UPDATE SET instance = excluded.instance, at = excluded.at,
             ok = excluded.ok, summary = excluded.summary"
    )
    .bind(&run.version)
    .bind(&run.instance)
    .bind(run.at)
    .bind(run.ok)
    .bind(&run.summary)
    .execute(pool)
    .await
    .map(drop))?;
    Ok(())
}

/// The last run of each version, newest first.
pub async fn last_per_version(db: &Db) -> Result<Vec<SmokeRun>, StoreError> {
    Ok(on_db!(db, |pool| sqlx::query_as(
        "SELECT version, instance, at, ok, summary FROM smoke_runs ORDER BY at DESC LIMIT 20"
    )
    .fetch_all(pool)
    .await)?)
}
