//! The admin API for the drain switch (DESIGN §3 Admin, §6): bearer `CARTBUS_ADMIN_TOKEN`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::extract::{Query, bearer, secrets_match};
use super::problem::ApiError;
use crate::domain::FieldError;
use crate::runtime::app::AppState;
use crate::service::drain::Status;
use crate::store::switch::{self, Change, HistoryEntry};

/// Longest `wait_seconds` a pause call may ask for.
const MAX_WAIT_SECONDS: u64 = 300;
const MAX_REASON: usize = 500;
const MAX_ACTOR: usize = 100;

/// Requires `Authorization: Bearer <CARTBUS_ADMIN_TOKEN>`; with no token configured the
/// admin API does not exist (404), as the start-up log says.
pub struct AdminAuth {
    /// Who made the change, from `X-Cartbus-Actor` (for the audit trail).
    pub actor: String,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &app.config.admin.token else {
            return Err(ApiError::NotFound(
                "the admin API is off: CARTBUS_ADMIN_TOKEN is not set".into(),
            ));
        };
        // Not trusting X-Forwarded-For: behind a proxy every client shares its address.
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        // Checked before the token, so a held-off client learns nothing from trying more.
        if let Err(held) = app.admin_failures.check(client) {
            tracing::debug!(%client, global = held.global, "admin call held off after too many wrong credentials");
            return Err(ApiError::too_many_guesses(held.retry_after));
        }
        if !bearer(&parts.headers).is_some_and(|t| secrets_match(t, token.expose_secret())) {
            // Only a presented credential is a guess; a missing one is counted as none.
            if parts.headers.contains_key(AUTHORIZATION) {
                record_failure(app, client);
            }
            return Err(ApiError::Unauthorized);
        }
        let actor = parts
            .headers
            .get("x-cartbus-actor")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| a.chars().take(MAX_ACTOR).collect::<String>())
            .unwrap_or_else(|| "admin".to_string());
        Ok(AdminAuth {
            actor: format!("{actor} via {}", app.config.instance),
        })
    }
}

/// Counts a wrong credential from `client` and says so, never with what was presented.
fn record_failure(app: &AppState, client: IpAddr) {
    let recorded = app.admin_failures.record(client);
    let limits = &app.config.admin.auth_failures;
    if recorded.limit_reached {
        tracing::warn!(
            %client,
            failures = recorded.client,
            failures_all_clients = recorded.all,
            window = ?limits.window,
            "too many wrong admin credentials: admin calls answer 429 until the window ends"
        );
    } else {
        tracing::warn!(
            %client,
            failures = recorded.client,
            failures_all_clients = recorded.all,
            "wrong admin credentials"
        );
    }
}

/// The drain switch, every live instance, and the backlog.
#[utoipa::path(get, path = "/v1/admin/consumer", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The switch and the instances", body = Status, example = json!(crate::http::examples::status_running())),
        (status = 503, description = "The database holding the drain switch is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::switch_unavailable())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
    ))]
pub async fn consumer(
    State(app): State<AppState>,
    _auth: AdminAuth,
) -> Result<Json<Status>, ApiError> {
    Ok(Json(app.drain_status().await.map_err(unavailable)?))
}

/// Body of `POST /v1/admin/consumer/pause` (documentation; parsed by hand to name every
/// bad field).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PauseRequest {
    /// Why (kept in the history), at most 500 characters.
    reason: Option<String>,
    /// Wait up to this many seconds (0–300) for every instance to report drained.
    wait_seconds: Option<u64>,
    /// RFC 3339 time in the future at which the pause lifts itself.
    until: Option<DateTime<Utc>>,
}

/// Pause consuming on every instance; with `wait_seconds`, answer when drained.
#[utoipa::path(post, path = "/v1/admin/consumer/pause", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = Option<PauseRequest>, description = "Optional", content_type = "application/json", example = json!(crate::http::examples::pause_request())),
    responses(
        (status = 200, description = "Paused and drained: no instance consumes or holds a delivery", body = Status, example = json!(crate::http::examples::status_drained())),
        (status = 202, description = "Paused; not (yet) drained when the wait ended", body = Status, example = json!(crate::http::examples::status_pausing())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "The database holding the drain switch is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::switch_unavailable())),
        (status = 422, description = "A bad field", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::pause_invalid())),
    ))]
pub async fn pause(
    State(app): State<AppState>,
    auth: AdminAuth,
    body: OptionalJson,
) -> Result<Response, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let reason = optional_string(&body, "reason", MAX_REASON, &mut errors);
    let wait = match body.get("wait_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_WAIT_SECONDS => Some(Duration::from_secs(n)),
            _ => {
                errors.push(field(
                    "/wait_seconds",
                    format!("must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}"),
                ));
                None
            }
        },
    };
    let until = match body.get("until") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.with_timezone(&Utc) > Utc::now() => Some(t.with_timezone(&Utc)),
            Ok(_) => {
                errors.push(field("/until", "must be in the future"));
                None
            }
            Err(_) => {
                errors.push(field(
                    "/until",
                    "must be an RFC 3339 time, e.g. 2026-11-26T03:00:00Z",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(field("/until", "must be an RFC 3339 time string"));
            None
        }
    };
    unknown_fields(&body, &["reason", "wait_seconds", "until"], &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (switch, changed) = switch::change(
        &app.db,
        Change {
            action: "pause",
            desired: "paused",
            active_version: None,
            reason: reason.as_deref(),
            until,
            by: &auth.actor,
            if_revision: None,
        },
    )
    .await
    .map_err(unavailable)?;
    if changed {
        tracing::warn!(by = %auth.actor, reason = ?switch.reason, until = ?switch.until, "consumer paused");
    }
    app.control.nudge();
    let deadline = Instant::now() + wait.unwrap_or_default();
    // Poll only what `drained` needs: the backlog figures (a queue count) come once, at
    // the end.
    loop {
        let (switch, _, drained) = app.drain_state().await.map_err(unavailable)?;
        if drained || Instant::now() >= deadline || !switch.is_paused() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = app.drain_status().await.map_err(unavailable)?;
    let code = if status.drained {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(status)).into_response())
}

/// Body of `POST /v1/admin/consumer/resume`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ResumeRequest {
    /// The version allowed to consume; default: the version of the instance taking the call.
    version: Option<String>,
    /// Why (kept in the history), at most 500 characters.
    reason: Option<String>,
}

/// Resume consuming; only `version` consumes from now on.
#[utoipa::path(post, path = "/v1/admin/consumer/resume", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = Option<ResumeRequest>, description = "Optional", content_type = "application/json", example = json!(crate::http::examples::resume_request())),
    responses(
        (status = 200, description = "Running; instances of other versions stay passive", body = Status, example = json!(crate::http::examples::status_running())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "The database holding the drain switch is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::switch_unavailable())),
        (status = 422, description = "A bad field", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resume_invalid())),
    ))]
pub async fn resume(
    State(app): State<AppState>,
    auth: AdminAuth,
    body: OptionalJson,
) -> Result<Json<Status>, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let version = optional_string(&body, "version", 100, &mut errors)
        .unwrap_or_else(|| app.config.version.clone());
    if version.trim().is_empty() {
        errors.push(field("/version", "must not be empty"));
    }
    let reason = optional_string(&body, "reason", MAX_REASON, &mut errors);
    unknown_fields(&body, &["version", "reason"], &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (switch, changed) = switch::change(
        &app.db,
        Change {
            action: "resume",
            desired: "running",
            active_version: Some(&version),
            reason: reason.as_deref(),
            until: None,
            by: &auth.actor,
            if_revision: None,
        },
    )
    .await
    .map_err(unavailable)?;
    if changed {
        tracing::warn!(by = %auth.actor, active_version = ?switch.active_version, "consumer resumed");
    }
    app.control.nudge();
    Ok(Json(app.drain_status().await.map_err(unavailable)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Most entries to return, newest first (1–1000, default 100).
    limit: Option<i64>,
}

/// Every change of the switch: who, why, when (append-only, newest first).
#[utoipa::path(get, path = "/v1/admin/consumer/history", tag = "admin",
    security(("admin_token" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<HistoryEntry>, example = json!(crate::http::examples::history())),
        (status = 422, description = "A bad limit", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::limit_invalid())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "The database holding the drain switch is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::switch_unavailable())),
    ))]
pub async fn history(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("/limit", "must be from 1 to 1000"));
    }
    Ok(Json(
        switch::history(&app.db, limit).await.map_err(unavailable)?,
    ))
}

/// A JSON object body that may also be empty (`curl -X POST …/pause` with no body).
pub struct OptionalJson(pub Map<String, Value>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for OptionalJson
where
    AppState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match super::extract::OptionalJsonBody::from_request(req, state)
            .await?
            .0
        {
            None => Ok(OptionalJson(Map::new())),
            Some(Value::Object(map)) => Ok(OptionalJson(map)),
            Some(_) => Err(ApiError::field("", "must be a JSON object")),
        }
    }
}

pub(super) fn field(pointer: &str, detail: impl Into<String>) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        detail: detail.into(),
    }
}

pub(super) fn optional_string(
    body: &Map<String, Value>,
    name: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match body.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.push(field(
                &format!("/{name}"),
                format!("must be at most {max} characters"),
            ));
            None
        }
        Some(_) => {
            errors.push(field(&format!("/{name}"), "must be a string"));
            None
        }
    }
}

pub(super) fn unknown_fields(
    body: &Map<String, Value>,
    known: &[&str],
    errors: &mut Vec<FieldError>,
) {
    for key in body.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(field(
            &format!("/{}", key.replace('~', "~0").replace('/', "~1")),
            "is not a known field",
        ));
    }
}

fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "drain switch unavailable");
    ApiError::Unavailable {
        detail: "the database holding the drain switch is unavailable".into(),
        retry_after: Duration::from_secs(5),
    }
}
