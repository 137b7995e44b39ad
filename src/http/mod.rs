//! The HTTP API: routes (documented with utoipa), middleware, and error rendering.

mod admin;
mod admin_page;
mod checkouts;
mod deadletters;
mod events;
mod examples;
pub mod extract;
mod ops;
mod orders;
mod outbox;
mod payments;
pub mod problem;
mod request;
pub mod server;
mod service_errors;
mod smoke;
mod webhook_doc;
pub(crate) mod webhooks;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::HttpLabels;
use crate::runtime::app::AppState;
use problem::{PROBLEM_JSON, problem_response};
use webhook_doc::Webhooks as WebhookDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cartbus",
        description = "Queue-buffered checkout: carts in, purchase orders out, without downtime during deploys.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&SecuritySchemes, &WebhookDoc),
    components(schemas(
        crate::domain::event::CheckoutOrdered,
        crate::domain::event::CheckoutRejected,
        crate::domain::event::CheckoutPaymentUnknown,
        crate::domain::event::OrderStatusChanged,
    )),
    tags(
        (name = "checkouts", description = "Taking carts in"),
        (name = "orders", description = "Purchase orders"),
        (name = "operations", description = "Health, metrics, this document"),
        (name = "admin", description = "The drain switch and payment resolution (bearer CARTBUS_ADMIN_TOKEN)"),
        (name = "webhooks", description = "Receivers of order events, signed as Standard Webhooks (bearer CARTBUS_ADMIN_TOKEN)"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "storefront_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "CARTBUS_STOREFRONT_KEY, required only when configured",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("CARTBUS_ADMIN_TOKEN; without it the admin API is off"))
                    .build(),
            ),
        );
    }
}

/// Documents the answers given before a handler runs, on every operation that can get
/// them: 400 for a query string or body that cannot be read; 408, 413 and 415 for a JSON
/// body that is too slow, too large or not JSON; 401 and 429 for an admin call without the
/// right token, or after too many wrong ones. An operation that documents its own keeps it.
struct RejectionResponses;

impl Modify for RejectionResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::PartialSchema;
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

        let problem = |description: &str, error: problem::ApiError| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .example(Some(
                            serde_json::to_value(error.problem()).expect("a problem serialises"),
                        ))
                        .build(),
                )
                .build()
        };
        let held_off = ResponseBuilder::from(problem(
            "Too many wrong admin tokens from this client or from all: held off, even with the right token, until the window ends",
            problem::ApiError::too_many_guesses(std::time::Duration::from_secs(120)),
        ))
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(u64::schema()))
                .description(Some("Seconds until the window ends"))
                .build(),
        )
        .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let reads_query = operation.parameters.iter().flatten().any(
                    |p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query)),
                );
                let reads_body = operation.request_body.is_some();
                let needs_admin_token = operation.security.iter().flatten().any(|requirement| {
                    serde_json::to_value(requirement)
                        .is_ok_and(|names| names.get("admin_token").is_some())
                });
                let mut add = |status: &str, response: Response| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(RefOr::T(response));
                };
                if needs_admin_token {
                    add(
                        "401",
                        problem(
                            "Missing or wrong admin token",
                            problem::ApiError::Unauthorized,
                        ),
                    );
                    add("429", held_off.clone());
                }
                if reads_body {
                    add(
                        "408",
                        problem(
                            "The body did not arrive within CARTBUS_BODY_READ_TIMEOUT_SECONDS",
                            problem::ApiError::body_timeout(std::time::Duration::from_secs(10)),
                        ),
                    );
                    add(
                        "400",
                        problem(
                            "Malformed JSON",
                            problem::ApiError::bad_request(
                                "malformed JSON: expected value at line 1 column 1",
                            ),
                        ),
                    );
                    add(
                        "413",
                        problem(
                            "Body larger than 256 KiB",
                            problem::ApiError::PayloadTooLarge {
                                limit: extract::MAX_BODY_BYTES,
                            },
                        ),
                    );
                    add(
                        "415",
                        problem(
                            "Not application/json",
                            problem::ApiError::UnsupportedMediaType(
                                extract::JSON_CONTENT_TYPE_RULE.into(),
                            ),
                        ),
                    );
                } else if reads_query {
                    add(
                        "400",
                        problem(
                            "A query parameter of the wrong type",
                            problem::ApiError::bad_request(
                                "Failed to deserialize query string: limit: invalid digit found in string",
                            ),
                        ),
                    );
                }
            }
        }
    }
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(checkouts::create))
        .routes(routes!(checkouts::status))
        .routes(routes!(orders::get))
        .routes(routes!(ops::live))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(admin::consumer))
        .routes(routes!(admin::pause))
        .routes(routes!(admin::resume))
        .routes(routes!(admin::history))
        .routes(routes!(deadletters::list))
        .routes(routes!(deadletters::get, deadletters::delete))
        .routes(routes!(deadletters::resubmit))
        .routes(routes!(deadletters::resubmit_many))
        .routes(routes!(deadletters::resubmit_job))
        .routes(routes!(events::list))
        .routes(routes!(smoke::smoke, smoke::runs))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update))
        .routes(routes!(webhooks::disable))
        .routes(routes!(webhooks::enable))
        .routes(routes!(webhooks::rotate))
        .routes(routes!(webhooks::replay))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(outbox::list))
        .routes(routes!(outbox::retry))
        .routes(routes!(payments::list))
        .routes(routes!(payments::resolve))
}

/// The OpenAPI document, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = api().split_for_parts().1;
    // After the routes are in: `modifiers(…)` runs before they are.
    RejectionResponses.modify(&mut openapi);
    openapi
}

pub fn router(app: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    let timeout = app.config.http.request_timeout;
    routes
        .merge(admin_page::routes())
        .fallback(|| async { problem_response(StatusCode::NOT_FOUND, "no such resource") })
        .layer(middleware::from_fn_with_state(app.clone(), shed_load))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            problem::retry_after,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", request_id, method = %req.method(), path = %req.uri().path())
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn(problem_for_bare_errors))
                .layer(CatchPanicLayer::custom(|_| {
                    problem_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                }))
                .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout)),
        )
        .with_state(app)
}

/// Sheds checkouts past `CARTBUS_MAX_IN_FLIGHT` with 503 + Retry-After before reading
/// their bodies, instead of queueing unbounded work in memory when intake outruns the
/// queue. Reads, health and admin calls are never shed.
async fn shed_load(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST || req.uri().path() != "/v1/checkouts" {
        return next.run(req).await;
    }
    match app.intake_permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            app.metrics.checkout("shed");
            problem::ApiError::unavailable(format!(
                "more than {} checkouts in progress; retry shortly",
                app.config.http.max_in_flight
            ))
            .into_response()
        }
    }
}

/// Latency histogram by route template (never the raw path: ids would explode the labels).
async fn record_metrics(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let response = next.run(req).await;
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Errors produced outside our handlers (axum's 405, a timeout's 503, …) become
/// problem+json too, so that every error response has the same shape.
async fn problem_for_bare_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON) || v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this resource",
        StatusCode::SERVICE_UNAVAILABLE => "the request took too long; retry later",
        _ => "the request could not be served",
    };
    let mut problem = problem_response(status, detail);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem.into_response()
}
