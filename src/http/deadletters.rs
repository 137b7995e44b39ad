//! Dead letters for operators (DESIGN §3 Admin): list them with filters and cursor
//! pages, look at one with what was done to it, and delete (hide) one with a reason that
//! is kept. Bearer `CARTBUS_ADMIN_TOKEN`.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::{AdminAuth, field, optional_string, unknown_fields};
use super::extract::JsonBody;
use super::problem::{ApiError, Problem};
use crate::app::AppState;
use crate::deadletters::{self, AuditEntry, DeadLetterView, Filter};

const MAX_REASON: usize = 500;
const MAX_FILTER: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only this reason: `conflict`, `unknown-schema`, `invalid`, `max-attempts`,
    /// `bad-signature`, `unknown-order`, `wrong-partner`, `payment-unknown`.
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
}

/// Dead letters not deleted, filtered, oldest first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = DeadLetterPage),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter, named", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let mut errors = Vec::new();
    let text = |name: &str, value: Option<String>, errors: &mut Vec<_>| match value {
        Some(v) if v.chars().count() > MAX_FILTER => {
            errors.push(field(
                &format!("/{name}"),
                format!("must be at most {MAX_FILTER} characters"),
            ));
            None
        }
        Some(v) if v.is_empty() => None,
        v => v,
    };
    let reason = text("reason", query.reason, &mut errors);
    let source = text("source", query.source, &mut errors);
    let since = match query.since.as_deref() {
        None | Some("") => None,
        Some(raw) => match DateTime::parse_from_rfc3339(raw) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                errors.push(field(
                    "/since",
                    "must be an RFC 3339 time, e.g. 2026-11-26T02:00:00Z",
                ));
                None
            }
        },
    };
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(id) if id >= 0 => Some(id),
            _ => {
                errors.push(field("/after", "must be the `next` of a page"));
                None
            }
        },
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        errors.push(field("/limit", "must be from 1 to 1000"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = Filter {
        reason,
        source,
        since,
        after,
    };
    let mut items = deadletters::list(&app.db, &filter, limit + 1)
        .await
        .map_err(ApiError::database_unavailable)?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Json(DeadLetterPage {
        next: more
            .then(|| items.last().map(|item| item.id.to_string()))
            .flatten(),
        items,
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
        (status = 200, description = "The dead letter", body = DeadLetterDetail),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter, or admin API off", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = parse_id(&id)?;
    let dead_letter = deadletters::find(&app.db, id)
        .await
        .map_err(ApiError::database_unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    let audit = deadletters::audit(&app.db, id)
        .await
        .map_err(ApiError::database_unavailable)?;
    Ok(Json(DeadLetterDetail { dead_letter, audit }))
}

/// Body of `DELETE /v1/admin/dead-letters/{id}` (documentation; parsed by hand to name
/// every bad field).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DeleteRequest {
    /// Why it can go (kept in the audit trail), 1–500 characters.
    #[schema(example = "test order from the storefront team")]
    reason: String,
}

/// Deletes a dead letter from the list. It is kept, with who and why, and still shown by
/// `GET …/{id}`; deleting it again changes nothing.
#[utoipa::path(delete, path = "/v1/admin/dead-letters/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The dead letter's id")),
    request_body = DeleteRequest,
    responses(
        (status = 200, description = "Deleted (or deleted before)", body = DeadLetterDetail),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter, or admin API off", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = parse_id(&id)?;
    let Value::Object(body) = body else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors = Vec::new();
    unknown_fields(&body, &["reason"], &mut errors);
    let reason = match optional_string(&body, "reason", MAX_REASON, &mut errors) {
        Some(reason) if !reason.trim().is_empty() => Some(reason.trim().to_string()),
        Some(_) => {
            errors.push(field("/reason", "must not be empty"));
            None
        }
        None if !errors.iter().any(|e| e.pointer == "/reason") => {
            errors.push(field("/reason", "is required: say why it can go"));
            None
        }
        None => None,
    };
    let Some(reason) = reason.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let dead_letter = deadletters::delete(&app.db, id, &auth.actor, &reason)
        .await
        .map_err(ApiError::database_unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    tracing::warn!(id, by = %auth.actor, reason, "dead letter deleted");
    let audit = deadletters::audit(&app.db, id)
        .await
        .map_err(ApiError::database_unavailable)?;
    Ok(Json(DeadLetterDetail { dead_letter, audit }))
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::field("/id", "must be a dead letter id (a positive integer)"))
}
