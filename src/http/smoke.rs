//! `POST /v1/admin/smoke` (issue 21): carts through this instance's whole path, with
//! nothing left behind — for the staging slot before a swap.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::admin::AdminAuth;
use super::extract::JsonBody;
use super::problem::{ApiError, Problem};
use super::request::{Fields, Findings, Sent};
use crate::runtime::app::AppState;
use crate::service::smoke::{MAX_CARTS, Smoke, SmokeReport};
use crate::store::smoke_runs::{self, SmokeRun};

/// Body of `POST /v1/admin/smoke`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SmokeRequest {
    /// 1 to 20 carts, as `POST /v1/checkouts` takes them; a cart that breaks the rules
    /// is reported `invalid` (a check of the rules, not a failure).
    #[serde(default)]
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 20)]
    carts: Sent<Vec<serde_json::Value>>,
}

fn carts(body: Fields<SmokeRequest>) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut found = Findings::default();
    found.unknown("", &body.unknown);
    let carts = match body.known.carts {
        Sent::Typed(carts) if (1..=MAX_CARTS).contains(&carts.len()) => {
            for (i, cart) in carts.iter().enumerate() {
                if !cart.is_object() {
                    found.add(format!("/carts/{i}"), "must be a cart (a JSON object)");
                }
            }
            Some(carts)
        }
        Sent::Typed(_) | Sent::Absent => {
            found.add(
                "/carts",
                format!("must be an array of 1 to {MAX_CARTS} carts"),
            );
            None
        }
        Sent::WrongType => {
            found.add("/carts", "must be an array of carts");
            None
        }
    };
    Ok(found.finish(carts)?)
}

/// A smoke checkout on *this* instance's version: each cart is validated, encoded, sent
/// through a scratch address of its own on the same queue and back, decoded, converted
/// in an orders transaction that is rolled back (against live data: a cart already
/// ordered is a `duplicate` of that order, which does not change), and rendered as the
/// order and hand-off it would make. Nothing is kept: no order, event, outbox row, dead
/// letter or message; the payment endpoint is never called; the drain switch is not
/// touched. Runs on a passive instance (the staging slot); a fenced one reports the fence.
#[utoipa::path(post, path = "/v1/admin/smoke", tag = "admin",
    security(("admin_token" = [])),
    request_body(content = SmokeRequest, content_type = "application/json",
        example = json!({"carts": [cart_example()]})),
    responses(
        (status = 200, description = "The report: `ok` when every step ran, each cart's outcome and steps", body = SmokeReport, example = json!(report_example())),
        (status = 404, description = "Admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 409, description = "A smoke run is in progress on this instance; or its scratch address is the live cart queue (rename CARTBUS_INSTANCE)", body = Problem, content_type = "application/problem+json", example = json!(ApiError::Conflict("a smoke run is in progress on this instance: try again when it is done".into()).problem())),
        (status = 503, description = "The smoke payment endpoint's client could not be made", body = Problem, content_type = "application/problem+json", example = json!(ApiError::unavailable("the smoke payment endpoint's client: builder error").problem())),
        (status = 422, description = "A bad field, named", body = Problem, content_type = "application/problem+json", example = json!(ApiError::field("/carts", format!("must be an array of 1 to {MAX_CARTS} carts")).problem())),
    ))]
pub async fn smoke(
    State(app): State<AppState>,
    _auth: AdminAuth,
    JsonBody(body): JsonBody,
) -> Result<Json<SmokeReport>, ApiError> {
    let carts = carts(Fields::<SmokeRequest>::read(body)?)?;
    // One run at a time on an instance: two would share its scratch address.
    let Ok(running) = app.smoke_running.clone().try_lock_owned() else {
        return Err(ApiError::Conflict(
            "a smoke run is in progress on this instance: try again when it is done".into(),
        ));
    };
    let config = &app.config;
    let instance: String = config
        .instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    // `/amq/queue/` (quorum queues, declared by `cartbus broker setup`) declares nothing:
    // the scratch queue is a plain `/queue/` one, made by attaching to it.
    let prefix = match config.queue.address_prefix() {
        "/amq/queue/" => "/queue/",
        other => other,
    };
    let scratch = format!("{prefix}cartbus-smoke-{instance}");
    if crate::queue::amqp::management::queue_name(&scratch).unwrap_or(&scratch)
        == crate::queue::amqp::management::queue_name(&config.queue.cart_address)
            .unwrap_or(&config.queue.cart_address)
    {
        // Never the live cart queue, whatever it was named.
        return Err(ApiError::Conflict(format!(
            "the scratch address {scratch} is the live cart queue: rename CARTBUS_INSTANCE"
        )));
    }
    let payments = crate::service::payment::Gateway::for_smoke(config)
        .map_err(|e| ApiError::unavailable(format!("the smoke payment endpoint's client: {e}")))?;
    // In a task of its own: a client that hangs up mid-run does not cut the run short
    // before its scratch queue is cleared and its transaction rolled back.
    let task = tokio::spawn(async move {
        let _running = running;
        let config = &app.config;
        let smoke = Smoke {
            payments: payments.as_ref(),
            db: &app.db,
            queue: app.queue.as_ref(),
            fulfilment: &config.fulfilment,
            scratch,
            known_schema: crate::store::known_schema_version(&config.database.kind),
            version: &config.version,
            instance: &config.instance,
        };
        let report = smoke.run(&carts).await;
        app.metrics.smoke_run(report.ok);
        // What the page shows; the run's result stands whether or not this is kept (an
        // older, fenced version may not know the table).
        let run = SmokeRun {
            version: report.version.clone(),
            instance: report.instance.clone(),
            at: chrono::Utc::now(),
            ok: report.ok,
            summary: report.summary(),
        };
        if let Err(e) = smoke_runs::record(&app.db, &run).await {
            tracing::warn!(error = %e, "smoke run not recorded for the page");
        }
        tracing::info!(
            ok = report.ok,
            carts = report.carts.len(),
            ms = report.ms,
            "smoke run"
        );
        report
    });
    let report = task
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the smoke run failed: {e}")))?;
    Ok(Json(report))
}

/// The report of a cart that is ordered live already.
fn report_example() -> SmokeReport {
    use crate::service::smoke::{CartReport, StepReport};
    let step = |step: &'static str, ms: f64, detail: &str| StepReport {
        step,
        ok: true,
        ms,
        detail: detail.into(),
    };
    let order = uuid::uuid!("01936f0e-8a6c-7d2e-9b41-5c3f2a1d0e77");
    let detail = format!("duplicate of order {order}, which exists live: nothing about it changes");
    SmokeReport {
        version: "2.0.0".into(),
        instance: "cartbus-staging-1".into(),
        ok: true,
        fence: step("fence", 0.4, "schema 10; this version knows up to 10"),
        carts: vec![CartReport {
            cart_id: Some(uuid::uuid!("6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11")),
            outcome: "duplicate".into(),
            detail: detail.clone(),
            order_id: Some(order),
            steps: vec![
                step("validate", 0.1, "the cart keeps the rules"),
                step("encode", 0.1, "519 bytes"),
                step(
                    "queue round trip",
                    3.2,
                    "through /queue/cartbus-smoke-cartbus-staging-1 and back, body unchanged",
                ),
                step("decode", 0.1, "schema known"),
                step(
                    "payment",
                    0.0,
                    "skipped: a smoke run never calls the payment endpoint",
                ),
                step("convert", 0.9, &format!("{detail} (rolled back)")),
            ],
            order: None,
            hand_off: None,
        }],
        ms: 5.1,
    }
}

/// The README's cart.
fn cart_example() -> serde_json::Value {
    serde_json::json!({
        "cart_id": "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11",
        "customer": {"id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"},
        "shipping_address": {"line1": "12 Analytical St", "line2": null, "city": "London",
                             "region": "LND", "postal_code": "EC1A 1AA", "country": "GB"},
        "currency": "GBP",
        "lines": [{"sku": "BOOK-001", "name": "Notes on the Engine", "quantity": 2, "unit_price": 1999}],
        "total": 3998
    })
}

/// The last smoke run of each version.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SmokeRuns {
    pub items: Vec<SmokeRun>,
}

/// The last smoke run of each version, newest first: what the deploy-window page shows
/// before a swap.
#[utoipa::path(get, path = "/v1/admin/smoke", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The last run per version", body = SmokeRuns, example = json!(SmokeRuns { items: vec![SmokeRun {
            version: "2.0.0".into(), instance: "cartbus-staging-1".into(),
            at: "2026-12-07T02:04:00Z".parse().unwrap_or_default(), ok: true,
            summary: "would-create-order ×2, duplicate, conflict, invalid".into() }] })),
        (status = 404, description = "Admin API off", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::admin_off())),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json", example = json!(crate::http::examples::unavailable())),
    ))]
pub async fn runs(
    State(app): State<AppState>,
    _auth: AdminAuth,
) -> Result<Json<SmokeRuns>, ApiError> {
    Ok(Json(SmokeRuns {
        items: smoke_runs::last_per_version(&app.db).await?,
    }))
}
