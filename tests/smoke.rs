//! Smoke checkouts (issue 21, first step): `POST /v1/admin/smoke` runs carts through the
//! instance's whole path and reports each step, and leaves nothing behind: the orders,
//! events, outbox rows, dead letters, rejections and queued messages are exactly what
//! they were. A fenced instance reports the fence.

mod common;

use common::{Backend, Process, Settings, TestApp, admin_call, metric, metrics_text};
use serde_json::{Value, json};

const TOKEN: &str = "smoke-test-admin-token";

const COUNTS: &str = "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM events),
        (SELECT count(*) FROM order_dispatch), (SELECT count(*) FROM dead_letters),
        (SELECT count(*) FROM rejected_checkouts), (SELECT count(*) FROM order_status)";

type Counts = (i64, i64, i64, i64, i64, i64);

async fn counts(dir: &std::path::Path) -> Counts {
    counts_on(&Backend::Sqlite, dir).await
}

async fn counts_on(backend: &Backend, dir: &std::path::Path) -> Counts {
    common::orders_db_rows::<Counts>(backend, dir, COUNTS)
        .await
        .pop()
        .expect("one row")
}

async fn smoke(app: &TestApp, carts: Value) -> (u16, Value) {
    admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/smoke",
        Some(json!({ "carts": carts })),
    )
    .await
}

/// `cartbus smoke --url base` with the token in the environment: exit code and output.
async fn cli(base: &str) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(["smoke", "--url", base])
        .env("CARTBUS_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .expect("run cartbus smoke");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[tokio::test]
async fn a_smoke_run_reports_each_step_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_ROUTES", "*=acme")
            .set("CARTBUS_PARTNER_ACME_SECRET", "acme-secret-0000001")
            .set("CARTBUS_AUDIT_THRESHOLD", "10000"),
    )
    .await;
    // A live order, whose cart the smoke run sends again.
    let live = common::cart();
    assert_eq!(app.post_cart(&live).await.status(), 202);
    let live_order = app
        .wait_for_order(live["cart_id"].as_str().expect("id"))
        .await;
    let live_order_id = live_order["order_id"].clone();
    // Sampled once the live cart is all done: its message accepted (gone from the queue)
    // and its order handed to the partner (the new-order waiting on the partner's queue).
    let path = format!("/v1/orders/{}", live_order_id.as_str().expect("order id"));
    common::eventually("the live order handed off and its cart settled", || async {
        let (_, order) = app.get_json(&path).await;
        (order["status"] == "sent_to_partner" && common::queued_messages(dir.path()).await == 1)
            .then_some(())
    })
    .await;
    let before = counts(dir.path()).await;
    let queued_before = common::queued_messages(dir.path()).await;

    let fresh = common::cart();
    let mut other = fresh.clone();
    other["lines"][0]["name"] = json!("Something else");
    let mut large = common::cart();
    for line in large["lines"].as_array_mut().expect("lines") {
        line["quantity"] = json!(100);
    }
    let total: i64 = large["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["quantity"].as_i64().unwrap_or(0) * l["unit_price"].as_i64().unwrap_or(0))
        .sum();
    large["total"] = json!(total);
    let broken = json!({"cart_id": "nope", "lines": []});
    let (status, report) = smoke(&app, json!([fresh, fresh, other, broken, live, large])).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["fence"]["ok"], true, "{report}");
    let outcomes: Vec<&str> = report["carts"]
        .as_array()
        .expect("carts")
        .iter()
        .map(|c| c["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        outcomes,
        [
            "would-create-order",
            "duplicate",
            "conflict",
            "invalid",
            "duplicate",
            "would-create-order"
        ],
        "{report}"
    );
    let carts = &report["carts"];
    let steps: Vec<&str> = carts[0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps,
        [
            "validate",
            "encode",
            "queue round trip",
            "decode",
            "payment",
            "convert",
            "render"
        ]
    );
    assert!(
        carts[0]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["ok"] == true)
    );
    assert_eq!(carts[0]["order"]["cart_id"], fresh["cart_id"], "{report}");
    assert!(
        carts[0]["hand_off"]
            .as_str()
            .unwrap_or_default()
            .contains("partner acme")
    );
    assert!(
        carts[1]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("earlier in this run")
    );
    assert_eq!(
        carts[2]["order_id"], carts[0]["order_id"],
        "the conflict names the order in its way"
    );
    assert!(
        carts[3]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("/cart_id")
    );
    assert_eq!(
        carts[4]["order_id"], live_order_id,
        "a duplicate of the live order"
    );
    assert!(
        carts[4]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("exists live")
    );
    assert!(
        carts[5]["hand_off"]
            .as_str()
            .unwrap_or_default()
            .contains("audit copy"),
        "{report}"
    );

    // Nothing remains: the same rows, the same messages, no checkout for the smoke carts.
    assert_eq!(counts(dir.path()).await, before);
    assert_eq!(common::queued_messages(dir.path()).await, queued_before);
    let (status, _) = app
        .get_json(&format!(
            "/v1/checkouts/{}",
            fresh["cart_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 404);
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&text, "cartbus_smoke_runs_total{outcome=\"passed\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "cartbus_checkouts_total{outcome=\"queued\"}"),
        1.0
    );

    // The command a deploy pipeline runs: the built-in set, as expected, exit 0; and
    // again nothing remains.
    let (code, out) = cli(&app.base).await;
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "a new cart",
        "the same cart again",
        "its id, another payload",
        "a broken cart",
        "a large order",
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
    assert!(!out.contains("UNEXPECTED"), "{out}");
    common::note(&format!("cartbus smoke --url <instance>:\n{out}"));
    assert_eq!(counts(dir.path()).await, before);

    let (status, problem) = smoke(&app, json!([])).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/carts", "{problem}");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_fenced_instance_reports_the_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", TOKEN);
    // A newer version migrates the database past what this build knows.
    let mut newer = Process::start(&settings, &[("FAILPOINTS", "newer-schema=return")]);
    newer.kill();
    let app = TestApp::spawn(&settings).await;
    let before = counts(dir.path()).await;
    let (status, report) = smoke(&app, json!([common::cart()])).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["fence"]["ok"], false, "{report}");
    let detail = report["fence"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("fenced") && detail.contains("9000"),
        "{detail}"
    );
    assert_eq!(report["carts"].as_array().map(Vec::len), Some(0));
    assert_eq!(counts(dir.path()).await, before);
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&text, "cartbus_smoke_runs_total{outcome=\"failed\"}"),
        1.0
    );
    let (code, out) = cli(&app.base).await;
    assert_eq!(code, Some(2), "a fenced instance fails the pipeline: {out}");
    assert!(out.contains("fenced"), "{out}");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn on_rabbitmq_and_postgresql_the_scratch_queue_is_deleted_and_nothing_kept() {
    const TEST: &str = "on_rabbitmq_and_postgresql_the_scratch_queue_is_deleted_and_nothing_kept";
    let Some(url) = common::broker::url(TEST) else {
        return;
    };
    let Some(management) = common::broker::management_url(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = common::broker::orders_backend(TEST).await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let carts_queue = format!("cartbus-t-{tag}-carts");
    let app = TestApp::spawn(
        &common::broker::settings(dir.path(), &backend, &url, &carts_queue)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_BROKER_MANAGEMENT_URL", management)
            .set("CARTBUS_INSTANCE", format!("t-{tag}")),
    )
    .await;
    common::broker::wait_connected(&app.state).await;
    let live = common::cart();
    assert_eq!(app.post_cart(&live).await.status(), 202);
    let live_order = app
        .wait_for_order(live["cart_id"].as_str().expect("id"))
        .await;
    let before = counts_on(&backend, dir.path()).await;

    let (status, report) = smoke(&app, json!([common::cart(), live])).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let carts = &report["carts"];
    assert_eq!(carts[0]["outcome"], "would-create-order", "{report}");
    assert_eq!(carts[1]["outcome"], "duplicate", "{report}");
    assert_eq!(carts[1]["order_id"], live_order["order_id"], "{report}");
    let trip = carts[0]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "queue round trip")
        .cloned()
        .unwrap_or_default();
    let detail = trip["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("/queue/cartbus-smoke-t-{tag}"))
            && detail.contains("deleted after"),
        "{trip}"
    );
    assert_eq!(
        counts_on(&backend, dir.path()).await,
        before,
        "nothing kept"
    );
    assert_eq!(
        common::broker::depth(&format!("cartbus-smoke-t-{tag}")),
        None,
        "the scratch queue is gone"
    );
    assert_eq!(
        common::broker::depth(&carts_queue),
        Some(0),
        "the live queue untouched"
    );
    app.stop().await.expect("stops");
}

/// The slot swap's step 2½ for real: v1 takes live load on PostgreSQL + RabbitMQ while
/// v2, passive on the same database and queue, is smoked. Afterwards every count is what
/// v1's load alone explains (the ledger of accepted carts), and v2's scratch queue is gone.
#[tokio::test]
async fn a_passive_new_version_is_smoked_while_the_live_one_takes_load() {
    const TEST: &str = "a_passive_new_version_is_smoked_while_the_live_one_takes_load";
    let Some(url) = common::broker::url(TEST) else {
        return;
    };
    let Some(management) = common::broker::management_url(TEST) else {
        return;
    };
    let backend = common::broker::orders_backend(TEST).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (dir1, dir2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let slot = |dir: &std::path::Path, version: &str| {
        common::broker::fulfilment_settings(dir, &backend, &url, &tag)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_BROKER_MANAGEMENT_URL", management.clone())
            .set("CARTBUS_ROUTES", "*=acme")
            .set("CARTBUS_PARTNER_ACME_SECRET", "acme-secret-0000001")
            .set("CARTBUS_VERSION", version)
            .set("CARTBUS_INSTANCE", format!("{version}-{tag}"))
    };
    let v1 = TestApp::spawn(&slot(dir1.path(), "1.0.0")).await;
    let v2 = TestApp::spawn(&slot(dir2.path(), "2.0.0")).await;
    common::broker::wait_connected(&v1.state).await;
    common::broker::wait_connected(&v2.state).await;
    let (status, resumed) = admin_call(
        &v1.client,
        &v1.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/consumer/resume",
        Some(json!({"version": "1.0.0", "reason": "v1 live, v2 staged"})),
    )
    .await;
    assert_eq!(status, 200, "{resumed}");

    // Live load on v1, and the smoke of v2 in the middle of it.
    let load = {
        let (client, base) = (v1.client.clone(), v1.base.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for _ in 0..150 {
                let cart = common::cart();
                let response = common::post_cart(&client, &base, &cart).await;
                if response.status().is_success() {
                    accepted.push(cart["cart_id"].as_str().unwrap_or_default().to_string());
                }
            }
            accepted
        })
    };
    let (code, out) = cli(&v2.base).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("version 2.0.0"), "{out}");
    let accepted = load.await.expect("load ran");
    assert_eq!(accepted.len(), 150);

    // The ledger: v1's load, and nothing else.
    common::eventually("every accepted cart ordered and handed off", || async {
        let (orders, _, dispatched, ..) = counts_on(&backend, dir1.path()).await;
        (orders == 150 && dispatched == 150).then_some(())
    })
    .await;
    let ordered: Vec<(String,)> = common::orders_db_rows(
        &backend,
        dir1.path(),
        "SELECT CAST(cart_id AS TEXT) FROM orders",
    )
    .await;
    let ordered: std::collections::HashSet<String> = ordered.into_iter().map(|(id,)| id).collect();
    for id in &accepted {
        assert!(ordered.contains(id), "accepted cart {id} has its order");
    }
    let (orders, _, dispatched, dead_letters, rejected, _) = counts_on(&backend, dir1.path()).await;
    assert_eq!(
        (orders, dispatched, dead_letters, rejected),
        (150, 150, 0, 0)
    );
    let payments: Vec<(i64,)> =
        common::orders_db_rows(&backend, dir1.path(), "SELECT count(*) FROM payment_steps").await;
    assert_eq!(payments[0].0, 0, "no payment step");
    assert_eq!(
        common::broker::depth(&format!("cartbus-t-{tag}-carts")),
        Some(0)
    );
    assert_eq!(
        common::broker::depth(&format!("cartbus-smoke-2-0-0-{tag}")),
        None,
        "v2's scratch queue is gone"
    );
    common::note(&format!(
        "smoke of v2 during v1's load: {} live carts accepted → {orders} orders, {dispatched} handed off, 0 dead letters, 0 rejections, 0 payment steps; scratch queue deleted\n{out}",
        accepted.len()
    ));
    v2.stop().await.expect("stops");
    v1.stop().await.expect("stops");
}

/// Killed (kill -9) with a smoke cart converted inside its transaction: nothing of it
/// is kept, and the next smoke run on the restarted instance passes.
#[tokio::test]
async fn a_smoke_run_killed_midway_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", TOKEN);
    let mut first = Process::start(&settings, &[("FAILPOINTS", "smoke-in-tx=return")]);
    let http = common::client();
    let live = common::cart();
    assert_eq!(
        common::post_cart(&http, &first.base, &live).await.status(),
        202
    );
    common::wait_for_order(&http, &first.base, live["cart_id"].as_str().expect("id")).await;
    common::eventually("the live cart's message settled", || async {
        (common::queued_messages(dir.path()).await == 0).then_some(())
    })
    .await;
    let before = counts(dir.path()).await;
    let queued = common::queued_messages(dir.path()).await;
    let call = {
        let (http, base) = (http.clone(), first.base.clone());
        tokio::spawn(async move {
            admin_call(
                &http,
                &base,
                TOKEN,
                reqwest::Method::POST,
                "/v1/admin/smoke",
                Some(json!({"carts": [common::cart()]})),
            )
            .await
        })
    };
    common::eventually("the smoke run in its transaction", || async {
        first.logs_contain("smoke-in-tx").then_some(())
    })
    .await;
    first.kill();
    call.abort();
    assert_eq!(
        counts(dir.path()).await,
        before,
        "nothing of the killed run kept"
    );
    assert_eq!(common::queued_messages(dir.path()).await, queued);

    let second = Process::start(&settings, &[]);
    let (status, report) = admin_call(
        &http,
        &second.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/smoke",
        Some(json!({"carts": [common::cart()]})),
    )
    .await;
    assert_eq!((status, &report["ok"]), (200, &json!(true)), "{report}");
    assert_eq!(counts(dir.path()).await, before);
}

/// A payment provider on this machine for the smoke tests: declines the cart ids it is
/// told to, captures the rest, and counts the calls it got.
async fn payment_provider(
    decline: Vec<String>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let router = axum::Router::new().route(
        "/capture",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (calls, decline) = (counted.clone(), decline.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let cart = body["cart_id"].as_str().unwrap_or_default().to_string();
                if decline.contains(&cart) {
                    (
                        axum::http::StatusCode::PAYMENT_REQUIRED,
                        axum::Json(json!({"error": "card_declined"})),
                    )
                } else {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"payment_id": "pay_sandbox_1"})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the payment provider");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/capture"), calls)
}

/// With `CARTBUS_PAYMENT_SMOKE_URL`, the payment step calls the provider's sandbox
/// (a declined card makes the cart `payment-declined`), and the live endpoint never.
#[tokio::test]
async fn the_payment_step_calls_the_sandbox_never_the_live_endpoint() {
    use std::sync::atomic::Ordering;
    let declined = common::cart();
    let declined_id = declined["cart_id"].as_str().expect("id").to_string();
    let (live_url, live_calls) = payment_provider(Vec::new()).await;
    let (sandbox_url, sandbox_calls) = payment_provider(vec![declined_id]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_PAYMENT_URL", live_url)
            .set("CARTBUS_PAYMENT_SMOKE_URL", sandbox_url),
    )
    .await;
    let before = counts(dir.path()).await;
    let (status, report) = smoke(&app, json!([common::cart(), declined])).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let outcomes: Vec<&str> = report["carts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        outcomes,
        ["would-create-order", "payment-declined"],
        "{report}"
    );
    let payment = report["carts"][0]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "payment")
        .cloned()
        .unwrap_or_default();
    assert!(
        payment["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("captured by"),
        "{payment}"
    );
    assert_eq!(sandbox_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        live_calls.load(Ordering::SeqCst),
        0,
        "the live endpoint is never called"
    );
    assert_eq!(counts(dir.path()).await, before);
    let steps: Vec<(i64,)> = common::orders_db_rows(
        &Backend::Sqlite,
        dir.path(),
        "SELECT count(*) FROM payment_steps",
    )
    .await;
    assert_eq!(steps[0].0, 0, "no payment step recorded");
    app.stop().await.expect("stops");
}
