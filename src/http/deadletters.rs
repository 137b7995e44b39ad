//! Dead letters for operators (DESIGN §3 Admin). Bearer `CARTBUS_ADMIN_TOKEN`.
//! - List them with filters and cursor pages, and look at one with what was done to it.
//! - Resubmit one (optionally corrected, or as a dry run), or every one that matches a
//!   filter in a resumable job.
//! - Delete (hide) one, with a reason that is kept.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::AdminAuth;
use super::extract::{JsonBody, OptionalJsonBody, Query};
use super::problem::{ApiError, Problem};
use super::request::{Fields, Findings};
use crate::runtime::app::AppState;
use crate::service::resubmit::{Options, Report};
use crate::service::resubmit_jobs::{self, JobView, NewJob, Preview};
use crate::store::dead_letters::{self, AuditEntry, DeadLetterView, Filter, Status};

mod requests;

use requests::{BulkRequest, BulkResubmit, Delete, DeleteRequest, Resubmit, ResubmitRequest};

const MAX_FILTER: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// `open` (default: neither resolved nor deleted), `resolved`, `deleted` or `all`.
    status: Option<String>,
    /// Only this reason: `conflict`, `unknown-schema`, `invalid`, `max-attempts`,
    /// `bad-signature`, `unknown-order`, `wrong-partner`, `wrong-datacenter`, `payment-unknown`.
    reason: Option<String>,
    /// Only from this queue address (e.g. the cart queue, or the partner status queue).
    source: Option<String>,
    /// Only those last seen at or after this time (RFC 3339).
    since: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Items per page (1–1000, default 100).
    limit: Option<i64>,
}

/// One page of dead letters, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
    /// Open dead letters (all of them, not just this page's) by reason.
    #[schema(example = json!({"conflict": 2, "max-attempts": 40, "bad-signature": 1}))]
    pub counts: BTreeMap<String, i64>,
}

/// Dead letters, open ones by default, filtered, oldest first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = DeadLetterPage, example = json!(crate::http::examples::dead_letter_page())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 422, description = "A bad filter, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::dead_letters_invalid())),
        (status = 503, description = "The orders database is unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let mut found = Findings::default();
    let text = |name: &str, value: Option<String>, found: &mut Findings| match value {
        Some(v) if v.chars().count() > MAX_FILTER => {
            found.add(
                format!("/{name}"),
                format!("must be at most {MAX_FILTER} characters"),
            );
            None
        }
        Some(v) if v.is_empty() => None,
        v => v,
    };
    let status = match query.status.as_deref() {
        None | Some("") => Status::Open,
        Some(raw) => Status::parse(raw).unwrap_or_else(|| {
            found.add("/status", "must be open, resolved, deleted or all");
            Status::Open
        }),
    };
    let reason = text("reason", query.reason, &mut found);
    let source = text("source", query.source, &mut found);
    let since = query.since.as_deref().map_or(Ok(None), time);
    let since = since.unwrap_or_else(|detail| {
        found.add("/since", detail);
        None
    });
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(id) if id >= 0 => Some(id),
            _ => {
                found.add("/after", "must be the `next` of a page");
                None
            }
        },
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        found.add("/limit", "must be from 1 to 1000");
    }
    found.into_result()?;
    let filter = Filter {
        status,
        reason,
        source,
        since,
        after,
    };
    let mut items = dead_letters::list(&app.db, &filter, limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let counts = dead_letters::counts_by_reason(&app.db)
        .await?
        .into_iter()
        .collect();
    Ok(Json(DeadLetterPage {
        next: more
            .then(|| items.last().map(|item| item.id.to_string()))
            .flatten(),
        items,
        counts,
    }))
}

/// A dead letter and what operators did with it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub dead_letter: DeadLetterView,
    /// Oldest first.
    pub audit: Vec<AuditEntry>,
}

/// One dead letter (deleted ones too), with its audit trail.
#[utoipa::path(get, path = "/v1/admin/dead-letters/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterDetail, example = json!(crate::http::examples::dead_letter_resolved())),
        (status = 404, description = "No such dead letter, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::dead_letter_not_found())),
        (status = 422, description = "Not a dead letter id", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::dead_letter_id_invalid())),
        (status = 503, description = "The orders database is unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn get(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = parse_id(&id)?;
    let dead_letter = dead_letters::find(&app.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    let audit = dead_letters::audit(&app.db, id).await?;
    Ok(Json(DeadLetterDetail { dead_letter, audit }))
}

/// Deletes a dead letter from the list. It is kept, with who and why, and still shown by
/// `GET …/{id}`; deleting it again changes nothing.
#[utoipa::path(delete, path = "/v1/admin/dead-letters/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The dead letter's id")),
    request_body(content = DeleteRequest, content_type = "application/json", example = json!(crate::http::examples::delete_request())),
    responses(
        (status = 200, description = "Deleted (or deleted before)", body = DeadLetterDetail, example = json!(crate::http::examples::dead_letter_deleted())),
        (status = 404, description = "No such dead letter, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::dead_letter_not_found())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::delete_invalid())),
        (status = 503, description = "The orders database is unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = parse_id(&id)?;
    let Delete { reason } = Fields::<DeleteRequest>::read(body)?.try_into()?;
    let dead_letter = dead_letters::delete(&app.db, id, &auth.actor, &reason)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    tracing::warn!(id, by = %auth.actor, reason, "dead letter deleted");
    let audit = dead_letters::audit(&app.db, id).await?;
    Ok(Json(DeadLetterDetail { dead_letter, audit }))
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::field("/id", "must be a dead letter id (a positive integer)"))
}

/// An RFC 3339 time; blank is none.
fn time(raw: &str) -> Result<Option<DateTime<Utc>>, &'static str> {
    if raw.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|at| Some(at.with_timezone(&Utc)))
        .map_err(|_| "must be an RFC 3339 time, e.g. 2026-11-26T02:00:00Z")
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ResubmitQuery {
    /// `true`: say what would happen, change nothing (no payment call either).
    dry_run: Option<bool>,
}

/// Resubmits a dead letter now, by the rules of its reader, and says what happened. Never
/// a second order for a cart; counted against `CARTBUS_RESUBMIT_LIMIT`; with
/// `dry_run=true`, changes nothing.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/resubmit", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The dead letter's id"), ResubmitQuery),
    request_body(content = Option<ResubmitRequest>, description = "Optional", content_type = "application/json", example = json!(crate::http::examples::resubmit_request())),
    responses(
        (status = 200, description = "What happened (or, dry run, would happen)", body = Report,
            example = json!({"dead_letter_id": 17, "dry_run": false, "outcome": "created-order", "resolved": true, "detail": "order 0193a5c2-7d1e-7b3a-9f00-5a1d2c3b4e5f created for cart 5f0c8a52-2a4c-4c1e-9b7e-3f1d2a6b8c90", "order_id": "0193a5c2-7d1e-7b3a-9f00-5a1d2c3b4e5f", "cart_id": "5f0c8a52-2a4c-4c1e-9b7e-3f1d2a6b8c90", "resubmits": 1, "resubmit_limit": 5})),
        (status = 404, description = "No such dead letter, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::dead_letter_not_found())),
        (status = 409, description = "Deleted, resolved already, at its replay limit, or (not a dry run) the drain switch is paused", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/conflict", "title": "Conflicts with an earlier request", "status": 409, "detail": "dead letter 17 was resubmitted 5 times, the limit (CARTBUS_RESUBMIT_LIMIT); fix the cause, or delete it"})),
        (status = 422, description = "A bad field (or corrected cart field), named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resubmit_invalid())),
        (status = 503, description = "Database unavailable, or the cart's payment call may still be in flight; retry", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn resubmit(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    Query(query): Query<ResubmitQuery>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<Report>, ApiError> {
    let id = parse_id(&id)?;
    let Resubmit { reason, corrected } =
        Fields::<ResubmitRequest>::read_optional(body)?.try_into()?;
    let options = Options {
        dry_run: query.dry_run.unwrap_or(false),
        corrected: corrected.as_ref(),
        actor: &auth.actor,
        reason: reason.as_deref(),
        job: None,
    };
    Ok(Json(app.resubmitter.resubmit(id, &options).await?))
}

/// Resubmits every open dead letter that matches a filter, oldest first, in a background
/// job (202, with `Location` to follow it). The job is resumable and idempotent: posting
/// the same `job_id` after a crash resumes after the last dead letter it finished, and no
/// dead letter is resubmitted twice. With `dry_run`, answers at once with the outcomes it
/// would have.
#[utoipa::path(post, path = "/v1/admin/dead-letters/resubmit", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = BulkRequest, content_type = "application/json",
        example = json!(crate::http::examples::bulk_request())),
    responses(
        (status = 202, description = "Started (or resumed)", body = JobView,
            headers(("Location" = String, description = "The job")),
            example = json!({"job_id": "8d6f2b9e-0c1a-4f3e-9d2b-7a5c4e3f2a10", "state": "running", "actor": "admin via cartbus-1", "reason": "database constraint fixed in 1.4.2", "filter": {"reason": "max-attempts", "source": null, "since": null}, "last_id": 0, "outcomes": {}, "resubmitted": 0, "skipped": 0, "error": null, "owner": "cartbus-1", "created_at": "2026-11-26T02:10:00Z", "updated_at": "2026-11-26T02:10:00Z", "finished_at": null})),
        (status = 200, description = "A dry run's outcomes; or the job exists and is running or done, so nothing was started", body = BulkAnswer,
            example = json!({"dry_run": true, "matched": 42, "outcomes": {"would-create-order": 40, "duplicate": 2}, "truncated": false, "sample": []})),
        (status = 404, description = "Admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 409, description = "The job_id exists with another filter", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::job_mismatch())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::bulk_invalid())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn resubmit_many(
    State(app): State<AppState>,
    auth: AdminAuth,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let BulkResubmit {
        job_id,
        filter,
        reason,
        dry_run,
        max,
    } = Fields::<BulkRequest>::read(body)?.try_into()?;
    if dry_run {
        let preview = resubmit_jobs::preview(&app.resubmitter, &filter, max).await?;
        return Ok(Json(BulkAnswer::Preview(preview)).into_response());
    }
    let new = NewJob {
        id: job_id,
        filter,
        actor: auth.actor,
        reason: reason.unwrap_or_default(),
    };
    let (view, started) = resubmit_jobs::start(&app.resubmitter, new).await?;
    let status = if started {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/admin/dead-letters/resubmit/{}", view.job_id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(BulkAnswer::Job(Box::new(view))),
    )
        .into_response())
}

/// What a bulk resubmit answers: a dry run's outcomes, or the job (new, resumed, or
/// already running or done).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BulkAnswer {
    Preview(Preview),
    Job(Box<JobView>),
}

/// A bulk resubmit and how far it got: `interrupted` means its instance died; post it
/// again to resume.
#[utoipa::path(get, path = "/v1/admin/dead-letters/resubmit/{job_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("job_id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobView,
            example = json!({"job_id": "8d6f2b9e-0c1a-4f3e-9d2b-7a5c4e3f2a10", "state": "done", "actor": "admin via cartbus-1", "reason": "database constraint fixed in 1.4.2", "filter": {"reason": "max-attempts", "source": null, "since": null}, "last_id": 212, "outcomes": {"created-order": 40, "duplicate": 2}, "resubmitted": 42, "skipped": 0, "error": null, "owner": "cartbus-1", "created_at": "2026-11-26T02:10:00Z", "updated_at": "2026-11-26T02:10:04Z", "finished_at": "2026-11-26T02:10:04Z"})),
        (status = 404, description = "No such job, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::job_not_found())),
        (status = 422, description = "Not a UUID", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::job_id_invalid())),
        (status = 503, description = "The orders database is unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn resubmit_job(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = crate::domain::parse_uuid(&job_id).map_err(|e| ApiError::field("/job_id", e))?;
    resubmit_jobs::find(&app.db, job_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no resubmit job {job_id}")))
}
