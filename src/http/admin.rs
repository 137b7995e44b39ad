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

use super::extract::{OptionalJsonBody, Query, bearer, secrets_match};
use super::problem::ApiError;
use super::request::{Fields, Findings, Sent};
use crate::domain::FieldError;
use crate::runtime::app::AppState;
use crate::service::drain::{self, Status};
use crate::store::switch::{self, Change, HistoryEntry, InstanceRow};

/// Longest `wait_seconds` a pause call may ask for.
const MAX_WAIT_SECONDS: u64 = 300;
const MAX_REASON: usize = 500;
const MAX_VERSION: usize = 100;
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
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let client = client_address(peer, &parts.headers, &app.config.admin.trusted_proxies);
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

/// The client a call counts against: the TCP peer; or, when the peer is a trusted proxy,
/// the rightmost `X-Forwarded-For` address that is not one — what the proxies themselves
/// appended (a client can write anything to the left). Behind a proxy not trusted, every
/// client would share the proxy's address and one guesser would hold every operator off.
fn client_address(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage where a proxy should have written an address: trust none of it.
            Err(_) => return peer,
        }
    }
    peer
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

/// Body of `POST /v1/admin/consumer/pause`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PauseRequest {
    /// Why (kept in the history), at most 500 characters.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    reason: Sent<String>,
    /// Wait up to this many seconds (0–300) for every instance to report drained.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    wait_seconds: Sent<u64>,
    /// RFC 3339 time in the future at which the pause lifts itself.
    // Read as text: chrono's `Deserialize` takes more than RFC 3339.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    until: Sent<String>,
}

/// A pause, checked.
#[derive(Debug)]
pub struct Pause {
    reason: Option<String>,
    wait: Duration,
    until: Option<DateTime<Utc>>,
}

/// A pause body, checked at `now` on the database's clock (an `until` must be after it).
impl TryFrom<(Fields<PauseRequest>, DateTime<Utc>)> for Pause {
    type Error = Vec<FieldError>;

    fn try_from(
        (body, now): (Fields<PauseRequest>, DateTime<Utc>),
    ) -> Result<Pause, Vec<FieldError>> {
        let PauseRequest {
            reason,
            wait_seconds,
            until,
        } = body.known;
        let mut found = Findings::default();
        let reason = reason.optional_text("/reason", MAX_REASON, &mut found);
        let wait = match wait_seconds {
            Sent::Absent => Duration::ZERO,
            Sent::Typed(n) if n <= MAX_WAIT_SECONDS => Duration::from_secs(n),
            Sent::Typed(_) | Sent::WrongType => {
                found.add(
                    "/wait_seconds",
                    format!("must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}"),
                );
                Duration::ZERO
            }
        };
        let until = match until {
            Sent::Absent => None,
            Sent::Typed(s) => match DateTime::parse_from_rfc3339(&s) {
                Ok(t) if t.with_timezone(&Utc) > now => Some(t.with_timezone(&Utc)),
                Ok(_) => {
                    found.add("/until", "must be in the future");
                    None
                }
                Err(_) => {
                    found.add(
                        "/until",
                        "must be an RFC 3339 time, e.g. 2026-11-26T03:00:00Z",
                    );
                    None
                }
            },
            Sent::WrongType => {
                found.add("/until", "must be an RFC 3339 time string");
                None
            }
        };
        found.unknown("", &body.unknown);
        found.finish(Some(Pause {
            reason,
            wait,
            until,
        }))
    }
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
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    let Pause {
        reason,
        wait,
        until,
    } = (
        Fields::<PauseRequest>::read_optional(body)?,
        app.control.now(),
    )
        .try_into()?;
    let (switch, changed) = switch::change(
        &app.db,
        Change {
            action: "pause",
            desired: "paused",
            active_version: None,
            reason: reason.as_deref(),
            until,
            by: &auth.actor,
            at: app.control.now(),
            if_revision: None,
        },
    )
    .await
    .map_err(unavailable)?;
    if changed {
        tracing::warn!(by = %auth.actor, reason = ?switch.reason, until = ?switch.until, "consumer paused");
    }
    app.control.nudge();
    let deadline = Instant::now() + wait;
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResumeRequest {
    /// The version allowed to consume; default: the version of the instance taking the call.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    version: Sent<String>,
    /// Why (kept in the history), at most 500 characters.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    reason: Sent<String>,
    /// Resume even though no live instance runs `version` (every instance goes passive
    /// until one does); recorded in the history as `force-resume`. Default false.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    force: Sent<bool>,
}

/// A resume, checked.
#[derive(Debug)]
pub struct Resume {
    /// `None`: the version of the instance taking the call.
    version: Option<String>,
    reason: Option<String>,
    force: bool,
}

impl TryFrom<Fields<ResumeRequest>> for Resume {
    type Error = Vec<FieldError>;

    fn try_from(body: Fields<ResumeRequest>) -> Result<Resume, Vec<FieldError>> {
        let ResumeRequest {
            version,
            reason,
            force,
        } = body.known;
        let mut found = Findings::default();
        let version = version.optional_text("/version", MAX_VERSION, &mut found);
        if version.as_deref().is_some_and(|v| v.trim().is_empty()) {
            found.add("/version", "must not be empty");
        }
        let reason = reason.optional_text("/reason", MAX_REASON, &mut found);
        let force = force.flag("/force", &mut found);
        found.unknown("", &body.unknown);
        found.finish(Some(Resume {
            version,
            reason,
            force,
        }))
    }
}

/// Resume consuming; only `version` consumes from now on. A version no live instance runs
/// is refused (409, listing the live versions) unless `force` is true: resuming it would
/// leave every instance passive.
#[utoipa::path(post, path = "/v1/admin/consumer/resume", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = Option<ResumeRequest>, description = "Optional", content_type = "application/json", example = json!(crate::http::examples::resume_request())),
    responses(
        (status = 200, description = "Running; instances of other versions stay passive", body = Status, example = json!(crate::http::examples::status_running())),
        (status = 404, description = "Admin API off (no CARTBUS_ADMIN_TOKEN)", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 409, description = "No live instance runs `version` and `force` is not true; nothing changed", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::no_live_instance())),
        (status = 503, description = "The database holding the drain switch is unavailable", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::switch_unavailable())),
        (status = 422, description = "A bad field", body = super::problem::Problem, content_type = "application/problem+json", example = json!(crate::http::examples::resume_invalid())),
    ))]
pub async fn resume(
    State(app): State<AppState>,
    auth: AdminAuth,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<Status>, ApiError> {
    let Resume {
        version,
        reason,
        force,
    } = Fields::<ResumeRequest>::read_optional(body)?.try_into()?;
    let version = version.unwrap_or_else(|| app.config.version.clone());
    if !force {
        let (_, instances, _) = app.drain_state().await.map_err(unavailable)?;
        let live = live_versions(&instances);
        if !live.contains(&version) {
            return Err(ApiError::NoLiveInstance { version, live });
        }
    }
    let (switch, changed) = switch::change(
        &app.db,
        Change {
            action: if force { "force-resume" } else { "resume" },
            desired: "running",
            active_version: Some(&version),
            reason: reason.as_deref(),
            until: None,
            by: &auth.actor,
            at: app.control.now(),
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

/// The versions of the instances that are live and not stopped, each once, in order.
fn live_versions(instances: &[InstanceRow]) -> Vec<String> {
    let versions: std::collections::BTreeSet<&str> = instances
        .iter()
        .filter(|i| i.state != drain::State::Stopped.as_str())
        .map(|i| i.version.as_str())
        .collect();
    versions.into_iter().map(str::to_string).collect()
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

/// What a 503 says when the drain switch cannot be read or changed.
pub const SWITCH_UNAVAILABLE: &str = "the database holding the drain switch is unavailable";

/// The drain switch's database failed: a 503 that names the switch, the operator's concern
/// on these calls (the same database as the orders').
fn unavailable(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::unavailable_because(SWITCH_UNAVAILABLE, e)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use axum::http::{HeaderMap, HeaderValue};

    use super::client_address;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        headers
    }

    #[test]
    fn only_a_trusted_proxy_may_name_the_client() {
        let proxy = ip("10.0.0.5");
        let trusted = [proxy, ip("10.0.0.6")];
        let headers = forwarded(&["198.51.100.1, 203.0.113.7"]);
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(
            client_address(ip("203.0.113.9"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the rightmost address it appended, not the client's own claim.
        assert_eq!(client_address(proxy, &headers, &trusted), ip("203.0.113.7"));
        // Through two proxies (each appends), in two header lines.
        let two = forwarded(&["203.0.113.7", "10.0.0.6"]);
        assert_eq!(client_address(proxy, &two, &trusted), ip("203.0.113.7"));
        // Nothing usable: the proxy itself.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(
            client_address(proxy, &forwarded(&["junk"]), &trusted),
            proxy
        );
        // No proxy trusted: the peer, always.
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
    }
}
