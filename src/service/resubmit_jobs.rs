//! Bulk resubmit (issue 8): every open dead letter that matches a filter is resubmitted,
//! oldest first, by a job that runs in the background and can be resumed.
//!
//! Each dead letter's resubmit moves the job's `last_id` in the same transaction as the
//! order and the audit entry. A job that dies halfway (the process killed, the database
//! gone) therefore resumes after the last one it finished, and resubmits nothing twice.
//! Besides, a resolved dead letter is never resubmitted again, whoever asks.
//!
//! To resume, the operator posts the same `job_id` again. A job whose instance still
//! beats is left to it. One whose heartbeat is older than [`STALE`], or that stopped, is
//! taken over.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use super::resubmit::{Error, Options, Report, Resubmitter};
use crate::store::{Db, Tx};
use crate::{on_db, on_tx};

/// A running job's heartbeat older than this means its instance is gone.
pub const STALE: Duration = Duration::from_secs(30);
/// Dead letters read per page.
const PAGE: i64 = 100;
/// Resubmit reports a dry run shows in full.
const SAMPLE: usize = 20;

/// Which open dead letters a bulk resubmit takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFilter {
    #[schema(example = "max-attempts")]
    pub reason: Option<String>,
    /// A queue address (e.g. the cart queue).
    pub source: Option<String>,
    /// Last seen at or after.
    pub since: Option<DateTime<Utc>>,
}

/// A bulk resubmit and how far it got.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub job_id: Uuid,
    /// - `running`: an instance is working on it.
    /// - `interrupted`: its instance stopped beating halfway; post it again to resume.
    /// - `stopped`: it stopped itself (see `error`); post it again to resume.
    /// - `done`: every matching dead letter was dealt with.
    #[schema(example = "done")]
    pub state: String,
    pub actor: String,
    pub reason: String,
    pub filter: JobFilter,
    /// Every matching dead letter up to this id has been dealt with.
    pub last_id: i64,
    /// Resubmits this job made, by outcome.
    #[schema(example = json!({"created-order": 40, "duplicate": 2}))]
    pub outcomes: BTreeMap<String, i64>,
    /// Resubmits this job made in all.
    pub resubmitted: i64,
    /// Dead letters passed over because their payment call may still be in flight; they
    /// stay open for a later job.
    pub skipped: i64,
    /// Why it stopped early.
    pub error: Option<String>,
    /// The instance running it (or that last ran it).
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    actor: String,
    reason: String,
    filter: Json<JobFilter>,
    state: String,
    last_id: i64,
    owner: String,
    skipped: i32,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: Uuid,
    pub filter: JobFilter,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} exists with another filter; use a new job_id for a new set")]
    Mismatch(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Jobs running in this process, so that a post of the same job does not start a second
/// runner beside the first.
#[derive(Debug, Default)]
pub struct Running(Mutex<HashSet<Uuid>>);

impl Running {
    fn contains(&self, job: Uuid) -> bool {
        self.0.lock().map(|set| set.contains(&job)).unwrap_or(true)
    }

    /// Marks `job` running here; false when it is already.
    fn enter(&self, job: Uuid) -> bool {
        self.0
            .lock()
            .map(|mut set| set.insert(job))
            .unwrap_or(false)
    }

    fn leave(&self, job: Uuid) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&job);
        }
    }
}

/// Starts the job, or resumes it when it exists, was interrupted and matches. Answers the
/// job as it stands, and whether this call set it running.
pub async fn start(resubmitter: &Resubmitter, new: NewJob) -> Result<(JobView, bool), JobError> {
    let now = Utc::now();
    let me = &resubmitter.instance;
    let inserted = on_db!(&resubmitter.db, |pool| sqlx::query(
        "INSERT INTO dead_letter_jobs
             (id, actor, reason, filter, state, last_id, owner, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'running', 0, $5, $6, $6)
         ON CONFLICT (id) DO NOTHING"
    )
    .bind(new.id)
    .bind(&new.actor)
    .bind(&new.reason)
    .bind(Json(&new.filter))
    .bind(me)
    .bind(now)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?;
    let started = if inserted == 1 {
        true
    } else {
        let row = load(&resubmitter.db, new.id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        if row.filter.0 != new.filter {
            return Err(JobError::Mismatch(new.id));
        }
        let takeable = match row.state.as_str() {
            "done" => false,
            "stopped" => true,
            _ => {
                !resubmitter.jobs.contains(new.id)
                    && (row.owner == *me || is_stale(row.updated_at, now))
            }
        };
        takeable && claim(&resubmitter.db, &row, me, now).await?
    };
    if started {
        tracing::info!(job = %new.id, filter = ?new.filter, by = new.actor, "bulk resubmit started");
        tokio::spawn(run(resubmitter.clone(), new.id));
    }
    let view = find(&resubmitter.db, new.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok((view, started))
}

fn is_stale(updated_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    (now - updated_at).to_std().is_ok_and(|age| age > STALE)
}

/// Takes the job over, unless someone else did since `row` was read.
async fn claim(db: &Db, row: &JobRow, me: &str, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    on_db!(db, |pool| sqlx::query(
        "UPDATE dead_letter_jobs SET owner = $2, state = 'running', error = NULL, updated_at = $3
         WHERE id = $1 AND updated_at = $4 AND state <> 'done'"
    )
    .bind(row.id)
    .bind(me)
    .bind(now)
    .bind(row.updated_at)
    .execute(pool)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// Works the job to its end (or until it must stop).
async fn run(resubmitter: Resubmitter, job: Uuid) {
    if !resubmitter.jobs.enter(job) {
        return;
    }
    let result = work(&resubmitter, job).await;
    resubmitter.jobs.leave(job);
    let outcome = match result {
        Ok(()) => return,
        Err(why) => why,
    };
    tracing::warn!(%job, why = %outcome, "bulk resubmit stopped; post it again to resume");
    let stopped = on_db!(&resubmitter.db, |pool| sqlx::query(
        "UPDATE dead_letter_jobs SET state = 'stopped', error = $2, updated_at = $3
         WHERE id = $1 AND state = 'running'"
    )
    .bind(job)
    .bind(&outcome)
    .bind(Utc::now())
    .execute(pool)
    .await
    .map(drop));
    if let Err(e) = stopped {
        tracing::warn!(%job, error = %e, "could not mark the job stopped; it shows as interrupted");
    }
}

async fn work(resubmitter: &Resubmitter, job: Uuid) -> Result<(), String> {
    let limit = i32::try_from(resubmitter.resubmit_limit).unwrap_or(i32::MAX);
    loop {
        let row = load(&resubmitter.db, job)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the job row is gone")?;
        if row.state != "running" || row.owner != resubmitter.instance {
            return Ok(());
        }
        let page = candidates(&resubmitter.db, &row.filter, row.last_id, limit)
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            finish(&resubmitter.db, job)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(%job, "bulk resubmit done");
            return Ok(());
        }
        for id in page {
            let options = Options {
                actor: &row.actor,
                reason: Some(&row.reason),
                job: Some(job),
                ..Options::default()
            };
            match resubmitter.resubmit(id, &options).await {
                Ok(_) => {}
                // Dealt with by someone else meanwhile (or not resubmittable at all).
                Err(
                    Error::NotFound(_)
                    | Error::Deleted(_)
                    | Error::Resolved { .. }
                    | Error::LimitReached { .. }
                    | Error::CannotCorrectReply,
                ) => pass(&resubmitter.db, job, id, false)
                    .await
                    .map_err(|e| e.to_string())?,
                Err(Error::Retry(why)) => {
                    tracing::warn!(%job, dead_letter = id, why, "passed over: its payment step cannot be decided yet");
                    pass(&resubmitter.db, job, id, true)
                        .await
                        .map_err(|e| e.to_string())?
                }
                Err(e @ (Error::Gated(_) | Error::Database(_))) => return Err(e.to_string()),
            }
            // Test-only: die between two dead letters of a bulk resubmit.
            crate::fault::freeze_if_hit("resubmit-job-after-item").await;
        }
    }
}

/// Open dead letters matching `filter` after `after`, under the replay limit, by id.
async fn candidates(
    db: &Db,
    filter: &JobFilter,
    after: i64,
    limit: i32,
) -> Result<Vec<i64>, sqlx::Error> {
    on_db!(db, |pool| {
        let mut select = sqlx::QueryBuilder::new(
            "SELECT id FROM dead_letters
             WHERE deleted_at IS NULL AND resolved_at IS NULL AND id > ",
        );
        select.push_bind(after);
        select.push(" AND resubmits < ").push_bind(limit);
        crate::store::dead_letters::push_filter(
            &mut select,
            &filter.reason,
            &filter.source,
            filter.since,
        );
        select.push(" ORDER BY id LIMIT ").push_bind(PAGE);
        select.build_query_scalar().fetch_all(pool).await
    })
}

/// Moves the job past dead letter `id` inside a resubmit's transaction.
pub(super) async fn advance(tx: &mut Tx, job: Uuid, id: i64) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE dead_letter_jobs SET last_id = $2, updated_at = $3
         WHERE id = $1 AND last_id < $2"
    )
    .bind(job)
    .bind(id)
    .bind(Utc::now())
    .execute(&mut *c)
    .await
    .map(drop))
}

/// Moves the job past dead letter `id` without resubmitting it.
async fn pass(db: &Db, job: Uuid, id: i64, skipped: bool) -> Result<(), sqlx::Error> {
    on_db!(db, |pool| sqlx::query(
        "UPDATE dead_letter_jobs SET last_id = $2, updated_at = $3, skipped = skipped + $4
         WHERE id = $1 AND last_id < $2"
    )
    .bind(job)
    .bind(id)
    .bind(Utc::now())
    .bind(i32::from(skipped))
    .execute(pool)
    .await
    .map(drop))
}

async fn finish(db: &Db, job: Uuid) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    on_db!(db, |pool| sqlx::query(
        "UPDATE dead_letter_jobs SET state = 'done', updated_at = $2, finished_at = $2
         WHERE id = $1"
    )
    .bind(job)
    .bind(now)
    .execute(pool)
    .await
    .map(drop))
}

async fn load(db: &Db, job: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    on_db!(db, |pool| sqlx::query_as(
        "SELECT id, actor, reason, filter, state, last_id, owner, skipped, error, created_at,
                updated_at, finished_at
         FROM dead_letter_jobs WHERE id = $1"
    )
    .bind(job)
    .fetch_optional(pool)
    .await)
}

/// The job as it stands, with its resubmits counted by outcome.
pub async fn find(db: &Db, job: Uuid) -> Result<Option<JobView>, sqlx::Error> {
    let Some(row) = load(db, job).await? else {
        return Ok(None);
    };
    let counts: Vec<(String, i64)> = on_db!(db, |pool| sqlx::query_as(
        "SELECT outcome, COUNT(*) FROM dead_letter_audit
         WHERE job_id = $1 AND action = 'resubmit' GROUP BY outcome"
    )
    .bind(job)
    .fetch_all(pool)
    .await)?;
    let outcomes: BTreeMap<String, i64> = counts.into_iter().collect();
    let state = if row.state == "running" && is_stale(row.updated_at, Utc::now()) {
        "interrupted".to_string()
    } else {
        row.state
    };
    Ok(Some(JobView {
        job_id: row.id,
        state,
        actor: row.actor,
        reason: row.reason,
        filter: row.filter.0,
        last_id: row.last_id,
        resubmitted: outcomes.values().sum(),
        outcomes,
        skipped: i64::from(row.skipped),
        error: row.error,
        owner: row.owner,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    }))
}

/// What a bulk resubmit of `filter` would do, from dry runs of (at most `max`) matching
/// dead letters.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub dry_run: bool,
    /// Dead letters dry-run.
    pub matched: i64,
    /// Dry-run outcomes by kind.
    #[schema(example = json!({"would-create-order": 40, "duplicate": 2}))]
    pub outcomes: BTreeMap<String, i64>,
    /// More matched than were looked at (`max`).
    pub truncated: bool,
    /// The first few dry runs in full.
    pub sample: Vec<Report>,
}

pub async fn preview(
    resubmitter: &Resubmitter,
    filter: &JobFilter,
    max: i64,
) -> Result<Preview, crate::store::StoreError> {
    let limit = i32::try_from(resubmitter.resubmit_limit).unwrap_or(i32::MAX);
    let mut preview = Preview {
        dry_run: true,
        matched: 0,
        outcomes: BTreeMap::new(),
        truncated: false,
        sample: Vec::new(),
    };
    let mut after = 0;
    'pages: loop {
        let page = candidates(&resubmitter.db, filter, after, limit).await?;
        if page.is_empty() {
            break;
        }
        for id in page {
            if preview.matched == max {
                preview.truncated = true;
                break 'pages;
            }
            after = id;
            let options = Options {
                dry_run: true,
                ..Options::default()
            };
            let label = match resubmitter.resubmit(id, &options).await {
                Ok(report) => {
                    let label = report.outcome.as_str();
                    if preview.sample.len() < SAMPLE {
                        preview.sample.push(report);
                    }
                    label
                }
                Err(Error::Retry(_)) => "payment-in-flight",
                Err(Error::Database(e)) => return Err(e),
                Err(_) => continue,
            };
            preview.matched += 1;
            *preview.outcomes.entry(label.to_string()).or_default() += 1;
        }
    }
    Ok(preview)
}
