//! Webhook endpoints for operators (issue 20): register the storefront's receivers, pick
//! their event types, rotate their secrets, turn them off and on, see what waits for
//! each, and send events again.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::AdminAuth;
use super::extract::{JsonBody, OptionalJsonBody, Query};
use super::problem::{ApiError, Problem};
use super::request::Fields;
use crate::domain::webhook::{EndpointState, Secret};
use crate::runtime::app::AppState;
use crate::service::webhook_call;
use crate::store::deliveries::{self, DeliveryRow};
use crate::store::webhooks::{self as store, CONFIGURED, EndpointRow, NewEndpoint, PendingCount};

mod examples;
mod requests;

use requests::{
    Create, CreateRequest, Replay, ReplayRequest, RotateRequest, Update, UpdateRequest,
};

/// An endpoint as the admin API shows it (never its secrets).
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// `ep_…`, or `config` for the one `CARTBUS_WEBHOOK_URL` sets.
    pub id: String,
    /// Without its query string, which may carry a key.
    pub url: String,
    pub description: String,
    pub event_types: Vec<&'static str>,
    /// `enabled`, `failing` (out of retries: probed once per retry cap, enabled again on
    /// the first 2xx) or `disabled` (by an operator, or by a 410 from the receiver).
    pub state: &'static str,
    /// Why it is failing or disabled.
    pub state_reason: Option<String>,
    pub state_since: DateTime<Utc>,
    /// Failing: when it is tried next.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Events not yet delivered to it.
    pub pending: i64,
    /// When the oldest of them was queued for it.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// During a rotation: until when the old secret signs too.
    pub old_secret_until: Option<DateTime<Utc>>,
    /// Set by configuration: its URL, secret and types change there, not here.
    pub from_configuration: bool,
    pub created_at: DateTime<Utc>,
}

fn view(row: EndpointRow, pending: &[PendingCount]) -> EndpointView {
    let waiting = pending.iter().find(|p| p.endpoint_id == row.id);
    let url = url::Url::parse(&row.url).map_or_else(
        |_| String::new(),
        |mut url| {
            url.set_query(None);
            url.to_string()
        },
    );
    EndpointView {
        url,
        description: row.description.clone(),
        event_types: row.filter().names(),
        state: row.state().as_str(),
        state_reason: row.state_reason.clone(),
        state_since: row.state_since,
        next_probe_at: (row.state() == EndpointState::Failing)
            .then_some(row.probe_at)
            .flatten(),
        pending: waiting.map_or(0, |p| p.pending),
        oldest_pending_at: waiting.and_then(|p| p.oldest),
        old_secret_until: row.old_secret_until.filter(|until| *until > Utc::now()),
        from_configuration: row.id == CONFIGURED,
        created_at: row.created_at,
        id: row.id,
    }
}

async fn one(app: &AppState, id: &str) -> Result<EndpointView, ApiError> {
    let row = store::get(&app.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint {}", shown(id))))?;
    Ok(view(row, &store::pending(&app.db).await?))
}

/// An id from a path, cut short for messages.
fn shown(id: &str) -> String {
    id.chars().take(60).collect()
}

/// A new endpoint and its secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    pub endpoint: EndpointView,
    /// `whsec_…`: give it to the receiver's verifier. It is not shown again.
    pub secret: String,
}

/// Registers a receiver of order events. Its signing secret is in the answer, once.
#[utoipa::path(post, path = "/v1/admin/webhooks", tag = "webhooks",
    security(("admin_token" = [])),
    request_body(content = CreateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; events from now on go to it", body = Created, example = json!(crate::http::webhooks::examples::created())),
        (status = 404, description = "Admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 422, description = "A bad field, named (an inside address too)", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::url_refused())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn create(
    State(app): State<AppState>,
    _auth: AdminAuth,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Create {
        url,
        description,
        events,
    } = Fields::<CreateRequest>::read(body)?.try_into()?;
    if let Some(why) =
        webhook_call::refused_address(&url, &app.config.webhooks.allow_networks).await
    {
        return Err(ApiError::field("/url", why));
    }
    let secret = Secret::generate();
    let id = format!("ep_{}", uuid::Uuid::now_v7().simple());
    store::create(
        &app.db,
        &NewEndpoint {
            id: &id,
            url: url.as_str(),
            description: &description,
            events: &events,
            secrets: std::slice::from_ref(&secret),
        },
        Utc::now(),
    )
    .await?;
    tracing::info!(endpoint = %id, "webhook endpoint registered");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            endpoint: one(&app, &id).await?,
            secret: secret.expose().to_string(),
        }),
    ))
}

/// Every endpoint.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub items: Vec<EndpointView>,
}

/// The receivers, their state and what waits for each.
#[utoipa::path(get, path = "/v1/admin/webhooks", tag = "webhooks",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every endpoint", body = EndpointList, example = json!(crate::http::webhooks::examples::list())),
        (status = 404, description = "Admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
) -> Result<Json<EndpointList>, ApiError> {
    let (rows, pending) = tokio::try_join!(store::list(&app.db), store::pending(&app.db))?;
    Ok(Json(EndpointList {
        items: rows.into_iter().map(|row| view(row, &pending)).collect(),
    }))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView, example = json!(crate::http::webhooks::examples::endpoint())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn get(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    Ok(Json(one(&app, &id).await?))
}

fn not_configured(id: &str, what: &str) -> Result<(), ApiError> {
    if id == CONFIGURED {
        return Err(ApiError::Conflict(format!(
            "the `config` endpoint's {what} is set by configuration (CARTBUS_WEBHOOK_URL, CARTBUS_WEBHOOK_SECRET, CARTBUS_WEBHOOK_EVENTS)"
        )));
    }
    Ok(())
}

/// Changes an endpoint's event types or description.
#[utoipa::path(patch, path = "/v1/admin/webhooks/{id}", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    request_body(content = UpdateRequest, content_type = "application/json", example = json!(crate::http::webhooks::examples::update_request())),
    responses(
        (status = 200, description = "Changed", body = EndpointView, example = json!(crate::http::webhooks::examples::endpoint())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 409, description = "The endpoint from configuration", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::from_configuration())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::types_invalid())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn update(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<EndpointView>, ApiError> {
    let Update {
        description,
        events,
    } = Fields::<UpdateRequest>::read(body)?.try_into()?;
    not_configured(&id, "event types")?;
    store::update(&app.db, &id, events.as_ref(), description.as_deref()).await?;
    Ok(Json(one(&app, &id).await?))
}

/// Stops sending to an endpoint: nothing is queued for it until it is enabled again
/// (replay by time range what happened meanwhile).
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/disable", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "Disabled (or was)", body = EndpointView, example = json!(crate::http::webhooks::examples::endpoint())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn disable(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    use EndpointState::{Disabled, Enabled, Failing};
    let reason = format!("disabled by {}", auth.actor);
    store::set_state(
        &app.db,
        &id,
        &[Enabled, Failing],
        Disabled,
        Some(&reason),
        None,
        Utc::now(),
    )
    .await?;
    tracing::info!(endpoint = %shown(&id), actor = %auth.actor, "webhook endpoint disabled");
    Ok(Json(one(&app, &id).await?))
}

/// Sends to an endpoint again, now: what waits for it (a failing one's too) goes at once,
/// its retries counted afresh.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/enable", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "Enabled", body = EndpointView, example = json!(crate::http::webhooks::examples::endpoint())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn enable(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    use EndpointState::{Disabled, Enabled, Failing};
    store::set_state(
        &app.db,
        &id,
        &[Enabled, Failing, Disabled],
        Enabled,
        None,
        None,
        Utc::now(),
    )
    .await?;
    tracing::info!(endpoint = %shown(&id), actor = %auth.actor, "webhook endpoint enabled");
    Ok(Json(one(&app, &id).await?))
}

/// A new secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// `whsec_…`: every call is signed with it from now on.
    pub secret: String,
    /// Until then the old secret signs each call too (a second `v1,` signature).
    pub old_secret_until: DateTime<Utc>,
}

/// A new signing secret. The old one keeps signing beside it for `old_secret_seconds`, so
/// the receiver can switch without refusing a call.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    request_body(content = Option<RotateRequest>, content_type = "application/json", example = json!(crate::http::webhooks::examples::rotate_request())),
    responses(
        (status = 200, description = "Rotated", body = Rotated, example = json!(crate::http::webhooks::examples::rotated())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 409, description = "The endpoint from configuration (rotate in CARTBUS_WEBHOOK_SECRET), or another rotation at the same moment", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::from_configuration())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::rotate_invalid())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn rotate(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<Rotated>, ApiError> {
    let seconds: i64 = Fields::<RotateRequest>::read_optional(body)?.try_into()?;
    not_configured(&id, "secret")?;
    let secret = Secret::generate();
    let until = Utc::now() + chrono::Duration::seconds(seconds);
    match store::rotate(&app.db, &id, &secret, until).await? {
        store::Rotation::Done => {}
        store::Rotation::NotFound => {
            return Err(ApiError::NotFound(format!(
                "no webhook endpoint {}",
                shown(&id)
            )));
        }
        store::Rotation::Raced => {
            return Err(ApiError::Conflict(
                "the secret was rotated by another call meanwhile: that rotation stands".into(),
            ));
        }
    }
    tracing::info!(endpoint = %shown(&id), actor = %auth.actor, "webhook secret rotated");
    Ok(Json(Rotated {
        secret: secret.expose().to_string(),
        old_secret_until: until,
    }))
}

/// How many events a replay queued.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Events queued again (those the endpoint wants and not already waiting for it).
    pub queued: usize,
    /// Stopped at 100,000 events: replay the rest with a later `since`.
    pub truncated: bool,
}

/// Sends events to an endpoint again, with their ids unchanged (the receiver dedupes):
/// by id, or every one recorded in a time range, in the order they happened; each cart's
/// replayed events go before its later ones still waiting. On a disabled endpoint they
/// wait until it is enabled: replay what it missed before enabling it, and each cart's
/// events still arrive in order.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/replay", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    request_body(content = ReplayRequest, content_type = "application/json", example = json!(crate::http::webhooks::examples::replay_request())),
    responses(
        (status = 200, description = "Queued", body = Replayed, example = json!(crate::http::webhooks::examples::replayed())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::replay_invalid())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn replay(
    State(app): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Replayed>, ApiError> {
    let which: Replay = Fields::<ReplayRequest>::read(body)?.try_into()?;
    let endpoint = store::get(&app.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint {}", shown(&id))))?;
    let queued = match &which {
        Replay::Ids(ids) => {
            deliveries::replay(&app.db, &endpoint, deliveries::Replay::Ids(ids), Utc::now()).await?
        }
        Replay::Between(since, until) => {
            let range = deliveries::Replay::Between(*since, *until);
            deliveries::replay(&app.db, &endpoint, range, Utc::now()).await?
        }
    };
    tracing::info!(endpoint = %shown(&id), actor = %auth.actor, queued = queued.queued, "webhook events replayed");
    Ok(Json(Replayed {
        queued: queued.queued,
        truncated: queued.truncated,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// `pending` (default: waiting or retrying) or `delivered`.
    state: Option<String>,
    /// The `next` of the previous page.
    after: Option<i64>,
    /// Rows per page (1–1000, default 100).
    limit: Option<i64>,
}

/// One delivery of one event to the endpoint.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// The event (`webhook-id`).
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub cart_id: uuid::Uuid,
    pub state: String,
    /// Calls made so far.
    pub attempts: i32,
    /// Pending: when it is tried next (a cart's later event also waits for its earlier).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of deliveries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    pub items: Vec<DeliveryView>,
    pub next: Option<i64>,
}

/// An endpoint's deliveries, oldest first: what waits and why, or what went.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", tag = "webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint"), DeliveriesQuery),
    responses(
        (status = 200, description = "One page", body = DeliveriesPage, example = json!(crate::http::webhooks::examples::deliveries())),
        (status = 404, description = "No such endpoint, or admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::not_found())),
        (status = 422, description = "A bad filter, named", body = Problem, content_type = "application/problem+json", example = json!(crate::http::webhooks::examples::state_invalid())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn deliveries(
    State(app): State<AppState>,
    _auth: AdminAuth,
    Path(id): Path<String>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let state = query.state.as_deref().unwrap_or("pending");
    if !matches!(state, "pending" | "delivered") {
        return Err(ApiError::field("/state", "must be pending or delivered"));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("/limit", "must be from 1 to 1000"));
    }
    if store::get(&app.db, &id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "no webhook endpoint {}",
            shown(&id)
        )));
    }
    let rows = deliveries::list(&app.db, &id, state, query.after.unwrap_or(0), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<DeliveryView> = rows
        .into_iter()
        .take(limit as usize)
        .map(delivery)
        .collect();
    Ok(Json(DeliveriesPage {
        next: if more {
            items.last().map(|d| d.id)
        } else {
            None
        },
        items,
    }))
}

fn delivery(row: DeliveryRow) -> DeliveryView {
    DeliveryView {
        next_attempt_at: (row.state == "pending").then_some(row.next_at),
        id: row.id,
        event_id: row.event_id,
        kind: row.kind,
        cart_id: row.cart_id,
        state: row.state,
        attempts: row.attempts,
        last_status: row.last_status,
        last_error: row.last_error,
        last_attempt_at: row.last_attempt_at,
        delivered_at: row.delivered_at,
    }
}
