//! The HTTP layer's one error type, rendered as RFC 9457 problem details, and the one
//! `Retry-After` policy for a service that cannot answer now.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;
use crate::runtime::app::AppState;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem detail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Identifies the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-request")]
    pub kind: String,
    #[schema(example = "The cart breaks the rules")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    /// For validation problems: each bad field, by JSON pointer into the request body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<FieldError>,
    /// On a refused resume (`/problems/no-live-instance`): the versions of the live
    /// instances, one of which a resume may name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub live_versions: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("missing or wrong credentials")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A resume named a version no live instance runs: it would stop all consuming.
    #[error("no live instance runs version {version:?}; live versions: {}; send force: true to resume it anyway", if .live.is_empty() { "none".to_string() } else { .live.join(", ") })]
    NoLiveInstance { version: String, live: Vec<String> },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body did not arrive in time (a slow or stalled client).
    #[error("{0}")]
    RequestTimeout(String),
    /// Too many wrong admin credentials from this client, or from all clients.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: Duration,
    },
    #[error("the request breaks {} rule(s)", .0.len())]
    Validation(Vec<FieldError>),
    /// The database or the queue cannot serve the request now: 503, with the `Retry-After`
    /// that [`retry_after`] sets. `cause`, when there is one, goes to the log only.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        #[source]
        cause: Option<anyhow::Error>,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Every bad field of a request, found by a request type's `TryFrom` or a parser.
impl From<Vec<FieldError>> for ApiError {
    fn from(errors: Vec<FieldError>) -> Self {
        ApiError::Validation(errors)
    }
}

/// What a 503 says when the orders database failed a read or write.
pub const DATABASE_UNAVAILABLE: &str = "the orders database is unavailable";

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A client held off after too many wrong admin credentials (its own or everyone's).
    pub fn too_many_guesses(retry_after: Duration) -> ApiError {
        ApiError::TooManyRequests {
            detail: "too many wrong admin credentials; retry after the time given".into(),
            retry_after,
        }
    }

    /// The request body did not arrive whole within `deadline`.
    pub fn body_timeout(deadline: Duration) -> ApiError {
        ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs()
        ))
    }

    /// A 503 with nothing to log beyond `detail`.
    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::Unavailable {
            detail: detail.into(),
            cause: None,
        }
    }

    /// A 503 caused by `cause`, which is logged and never shown.
    pub fn unavailable_because(
        detail: impl Into<String>,
        cause: impl Into<anyhow::Error>,
    ) -> ApiError {
        ApiError::Unavailable {
            detail: detail.into(),
            cause: Some(cause.into()),
        }
    }

    pub fn field(pointer: &str, detail: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::NoLiveInstance { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem detail this error answers with (also what the OpenAPI examples show).
    pub fn problem(&self) -> Problem {
        let (kind, title) = self.kind_and_title();
        let detail = match self {
            ApiError::Validation(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.pointer, one.detail),
                _ => self.to_string(),
            },
            _ => self.to_string(),
        };
        let errors = match self {
            ApiError::Validation(errors) | ApiError::BadRequest { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        let live_versions = match self {
            ApiError::NoLiveInstance { live, .. } => Some(live.clone()),
            _ => None,
        };
        Problem {
            kind: kind.into(),
            title: title.into(),
            status: self.status().as_u16(),
            detail,
            errors,
            live_versions,
        }
    }

    fn kind_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("/problems/bad-request", "The request cannot be read"),
            ApiError::Unauthorized => ("/problems/unauthorized", "Missing or wrong credentials"),
            ApiError::NotFound(_) => ("/problems/not-found", "Not found"),
            ApiError::Conflict(_) => ("/problems/conflict", "Conflicts with an earlier request"),
            ApiError::NoLiveInstance { .. } => (
                "/problems/no-live-instance",
                "No live instance runs that version",
            ),
            ApiError::PayloadTooLarge { .. } => {
                ("/problems/payload-too-large", "Request body too large")
            }
            ApiError::UnsupportedMediaType(_) => {
                ("/problems/unsupported-media-type", "Unsupported media type")
            }
            ApiError::RequestTimeout(_) => {
                ("/problems/request-timeout", "Request not received in time")
            }
            ApiError::TooManyRequests { .. } => {
                ("/problems/too-many-requests", "Too many requests")
            }
            ApiError::Validation(_) => {
                ("/problems/invalid-request", "The request breaks the rules")
            }
            ApiError::Unavailable { .. } => ("/problems/unavailable", "Temporarily unavailable"),
            ApiError::Internal(_) => ("/problems/internal", "Internal error"),
        }
    }
}

/// A problem response for a bare status code (errors raised outside handlers: no route,
/// wrong method, a panic), typed like every other problem: `/problems/<reason>`.
pub fn problem_response(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let kind = match status {
        // The same types the handlers' own 404s and 500s carry.
        StatusCode::NOT_FOUND => "/problems/not-found".to_string(),
        StatusCode::INTERNAL_SERVER_ERROR => "/problems/internal".to_string(),
        StatusCode::SERVICE_UNAVAILABLE => "/problems/unavailable".to_string(),
        StatusCode::UNPROCESSABLE_ENTITY => "/problems/invalid-request".to_string(),
        _ => format!("/problems/{}", title.to_ascii_lowercase().replace(' ', "-")),
    };
    let problem = Problem {
        kind,
        title: title.into(),
        status: status.as_u16(),
        detail: detail.into(),
        errors: Vec::new(),
        live_versions: None,
    };
    render(status, &problem)
}

fn render(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).expect("a problem always serialises");
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The chain goes to the log, never to the client.
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable {
                detail,
                cause: Some(e),
            } => tracing::warn!(error = ?e, "{detail}"),
            _ => {}
        }
        let mut response = render(status, &self.problem());
        match &self {
            ApiError::Unavailable { .. } => {
                response.extensions_mut().insert(RetryLater);
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, whole_seconds(*retry_after));
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Marks a response whose `Retry-After` the [`retry_after`] layer writes.
#[derive(Clone, Copy)]
struct RetryLater;

/// The one `Retry-After` policy: a 503 because the database or the queue cannot serve now
/// says "retry after `CARTBUS_RETRY_AFTER_SECONDS`", whichever handler, extractor or layer
/// answered it. A layer, because the setting lives in the state and an error's
/// `into_response` cannot see the state. (A 429's wait is the lockout's, not this.)
pub async fn retry_after(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if response.extensions_mut().remove::<RetryLater>().is_some() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            whole_seconds(app.config.http.retry_after),
        );
    }
    response
}

/// Whole seconds, rounded up, at least 1: retrying earlier would only be refused again.
fn whole_seconds(wait: Duration) -> HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}
