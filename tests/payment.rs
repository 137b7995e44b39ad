//! Payment capture, at most once (DESIGN §8), against a real (fake) payment server on an
//! ephemeral port that counts the calls per cart and answers as each test scripts it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{Backend, Process, Settings, TestApp, client, eventually, get_json, post_cart};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "payment-test-admin-token-0123";
const PAYMENT_TOKEN: &str = "payment-test-bearer-token-0123";

/// How the fake payment service answers for a cart.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Capture,
    /// 402 Payment Required.
    Decline,
    /// Never answers (longer than any test's timeout).
    Hang,
    /// 500.
    Fail,
    /// Captures, but answers only once the test releases the call ([`FakePayments::release`]).
    Held,
}

#[derive(Clone, Debug)]
struct Call {
    body: Value,
    idempotency_key: Option<String>,
    authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    behaviours: HashMap<String, Behaviour>,
    calls: HashMap<String, Vec<Call>>,
    /// Per held cart: what its call waits on.
    gates: HashMap<String, Arc<Notify>>,
}

type Shared = Arc<Mutex<Script>>;

struct FakePayments {
    url: String,
    script: Shared,
}

impl FakePayments {
    async fn start() -> FakePayments {
        let script = Shared::default();
        let router = axum::Router::new()
            .route("/capture", axum::routing::post(capture))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake payment service");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakePayments {
            url: format!("http://{address}/capture?key=query-key-never-logged"),
            script,
        }
    }

    fn answer(&self, cart: &Value, behaviour: Behaviour) {
        self.script
            .lock()
            .expect("script lock")
            .behaviours
            .insert(id(cart), behaviour);
    }

    /// Holds the cart's capture call (it captures) until [`FakePayments::release`].
    fn hold(&self, cart: &Value) {
        let mut script = self.script.lock().expect("script lock");
        script.behaviours.insert(id(cart), Behaviour::Held);
        script.gates.insert(id(cart), Arc::new(Notify::new()));
    }

    /// Lets the held call answer (now, or as soon as it arrives).
    fn release(&self, cart: &Value) {
        let script = self.script.lock().expect("script lock");
        script
            .gates
            .get(&id(cart))
            .expect("a held cart")
            .notify_one();
    }

    /// Waits until the cart's capture call has reached the payment service.
    async fn wait_for_call(&self, cart: &Value) {
        eventually(&format!("the capture call of {}", id(cart)), || async {
            (!self.calls(cart).is_empty()).then_some(())
        })
        .await;
    }

    fn calls(&self, cart: &Value) -> Vec<Call> {
        let script = self.script.lock().expect("script lock");
        script.calls.get(&id(cart)).cloned().unwrap_or_default()
    }
}

async fn capture(
    State(script): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let cart_id = body["cart_id"].as_str().unwrap_or_default().to_string();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (behaviour, gate) = {
        let mut script = script.lock().expect("script lock");
        script.calls.entry(cart_id.clone()).or_default().push(Call {
            body: body.clone(),
            idempotency_key: header("idempotency-key"),
            authorization: header("authorization"),
        });
        let behaviour = script
            .behaviours
            .get(&cart_id)
            .copied()
            .unwrap_or(Behaviour::Capture);
        (behaviour, script.gates.get(&cart_id).cloned())
    };
    if let (Behaviour::Held, Some(gate)) = (behaviour, gate) {
        gate.notified().await;
    }
    match behaviour {
        Behaviour::Capture | Behaviour::Held => {
            axum::Json(json!({ "payment_id": format!("pay-{cart_id}") })).into_response()
        }
        Behaviour::Decline => (
            StatusCode::PAYMENT_REQUIRED,
            axum::Json(json!({ "error": "card_declined" })),
        )
            .into_response(),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::OK.into_response()
        }
        Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn id(cart: &Value) -> String {
    cart["cart_id"].as_str().expect("cart_id").to_string()
}

fn settings(dir: &std::path::Path, backend: &Backend, payments: &FakePayments) -> Settings {
    Settings::new(dir, backend)
        .set("CARTBUS_PAYMENT_URL", payments.url.clone())
        .set("CARTBUS_PAYMENT_TOKEN", PAYMENT_TOKEN)
        .set("CARTBUS_PAYMENT_TIMEOUT_MS", "300")
        .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
}

async fn checkout(http: &reqwest::Client, base: &str, cart: &Value) -> Value {
    let (status, body) = get_json(http, base, &format!("/v1/checkouts/{}", id(cart))).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls until the checkout has `status` (and `reason`, when given).
async fn wait_for_checkout(
    http: &reqwest::Client,
    base: &str,
    cart: &Value,
    status: &str,
    reason: Option<&str>,
) -> Value {
    eventually(
        &format!("checkout {} {status} {reason:?}", id(cart)),
        || async {
            let body = checkout(http, base, cart).await;
            (body["status"] == status && reason.is_none_or(|r| body["reason"] == r)).then_some(body)
        },
    )
    .await
}

async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-cartbus-actor", "ops-alice");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn resolve(http: &reqwest::Client, base: &str, cart: &Value, body: Value) -> (u16, Value) {
    let path = format!("/v1/admin/payments/{}/resolve", id(cart));
    admin(http, base, reqwest::Method::POST, &path, Some(body)).await
}

async fn payments_listed(http: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let path = format!("/v1/admin/payments{query}");
    let (status, body) = admin(http, base, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().expect("items")
}

fn listed<'a>(items: &'a [Value], cart: &Value) -> Option<&'a Value> {
    items.iter().find(|item| item["cart_id"] == cart["cart_id"])
}

/// `(message_id, reason)` of the dead letters in the orders database, read directly (the
/// instance may be a child process).
async fn dead_letters(backend: &Backend, dir: &std::path::Path) -> Vec<(String, String)> {
    const SQL: &str = "SELECT message_id, reason FROM dead_letters ORDER BY id";
    common::orders_db_rows(backend, dir, SQL).await
}

async fn metric(http: &reqwest::Client, base: &str, sample: &str) -> f64 {
    common::metric(&common::metrics_text(http, base).await, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_cart_becomes_an_order_and_is_charged_once() {
    for backend in Backend::all("a_captured_cart_becomes_an_order_and_is_charged_once").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &payments)).await;
        let http = &app.client;
        let cart = common::cart();

        assert_eq!(app.post_cart(&cart).await.status(), 202);
        let order = app.wait_for_order(&id(&cart)).await;
        let calls = payments.calls(&cart);
        assert_eq!(calls.len(), 1, "{backend:?}");
        // The contract of the call.
        let call = &calls[0];
        assert_eq!(
            call.body,
            json!({ "cart_id": id(&cart), "amount": cart["total"], "currency": "GBP",
                    "customer_id": "cust-42" })
        );
        assert_eq!(call.idempotency_key.as_deref(), Some(id(&cart).as_str()));
        assert_eq!(call.authorization, Some(format!("Bearer {PAYMENT_TOKEN}")));

        let all = payments_listed(http, &app.base, "?state=all").await;
        let step = listed(&all, &cart).expect("payment step listed");
        assert_eq!(step["state"], "captured");
        assert_eq!(step["payment_id"], format!("pay-{}", id(&cart)));
        assert_eq!(step["order_id"], order["order_id"]);
        assert_eq!(step["amount"], cart["total"]);
        assert!(
            listed(&payments_listed(http, &app.base, "").await, &cart).is_none(),
            "a captured payment is not unknown"
        );

        // The same cart again: it has its order, so nothing is called.
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        eventually("the second message settled as a duplicate", || async {
            let duplicates = metric(
                http,
                &app.base,
                r#"cartbus_consumer_messages_total{outcome="duplicate"}"#,
            )
            .await;
            (duplicates == 1.0).then_some(())
        })
        .await;
        assert_eq!(payments.calls(&cart).len(), 1, "never charged twice");
        assert_eq!(common::count_orders_for(&app.state, &id(&cart)).await, 1);
        assert_eq!(
            metric(
                http,
                &app.base,
                r#"cartbus_payment_calls_total{outcome="captured"}"#
            )
            .await,
            1.0
        );
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_rejects_the_checkout_without_an_order() {
    for backend in Backend::all("a_declined_payment_rejects_the_checkout_without_an_order").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &payments)).await;
        let cart = common::cart();
        payments.answer(&cart, Behaviour::Decline);

        assert_eq!(app.post_cart(&cart).await.status(), 202);
        let status = wait_for_checkout(
            &app.client,
            &app.base,
            &cart,
            "rejected",
            Some("payment-declined"),
        )
        .await;
        assert!(status["order_id"].is_null(), "{status}");
        assert_eq!(common::count_orders_for(&app.state, &id(&cart)).await, 0);
        assert_eq!(payments.calls(&cart).len(), 1, "{backend:?}");
        // A business outcome: the message is accepted, not dead-lettered.
        eventually("the queue empty", || async {
            (common::queued_messages(dir.path()).await == 0).then_some(())
        })
        .await;
        assert!(dead_letters(&backend, dir.path()).await.is_empty());
        assert!(common::dead_letters(dir.path()).await.is_empty());
        let all = payments_listed(&app.client, &app.base, "?state=all").await;
        assert_eq!(listed(&all, &cart).expect("listed")["state"], "declined");
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_an_answer_is_never_repeated() {
    for backend in Backend::all("a_call_without_an_answer_is_never_repeated").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &payments)).await;
        let http = &app.client;
        let hangs = common::cart();
        payments.answer(&hangs, Behaviour::Hang);
        let fails = common::cart();
        payments.answer(&fails, Behaviour::Fail);

        for cart in [&hangs, &fails] {
            assert_eq!(app.post_cart(cart).await.status(), 202);
        }
        for cart in [&hangs, &fails] {
            let status =
                wait_for_checkout(http, &app.base, cart, "pending", Some("payment-unknown")).await;
            assert!(status["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        let mut dead = eventually("both dead-lettered payment-unknown", || async {
            let dead = dead_letters(&backend, dir.path()).await;
            (dead.len() == 2).then_some(dead)
        })
        .await;
        dead.sort();
        let mut expected = vec![
            (id(&hangs), "payment-unknown".to_string()),
            (id(&fails), "payment-unknown".to_string()),
        ];
        expected.sort();
        assert_eq!(dead, expected, "{backend:?}");

        // Delivered again (the storefront retries the checkout): still never called again.
        for _ in 0..2 {
            for cart in [&hangs, &fails] {
                assert_eq!(app.post_cart(cart).await.status(), 202);
            }
        }
        eventually("six payment-unknown dead letters", || async {
            let unknown = metric(
                http,
                &app.base,
                r#"cartbus_consumer_messages_total{outcome="payment_unknown"}"#,
            )
            .await;
            (unknown == 6.0).then_some(())
        })
        .await;
        for cart in [&hangs, &fails] {
            assert_eq!(payments.calls(cart).len(), 1, "{backend:?}: called once");
            assert_eq!(common::count_orders_for(&app.state, &id(cart)).await, 0);
        }
        let text = common::metrics_text(http, &app.base).await;
        assert_eq!(
            common::metric(&text, r#"cartbus_payment_calls_total{outcome="unknown"}"#),
            2.0
        );
        assert_eq!(common::metric(&text, "cartbus_payments_unknown "), 2.0);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_payment_service_charges_nothing_and_the_cart_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port that nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_PAYMENT_URL", format!("http://{closed}/capture"))
            .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN),
    )
    .await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    // Counted as released once the step is over, i.e. after the flag was cleared.
    eventually("a call not sent and the message released", || async {
        let text = common::metrics_text(&app.client, &app.base).await;
        let not_sent = common::metric(&text, r#"cartbus_payment_calls_total{outcome="not_sent"}"#);
        let released = common::metric(
            &text,
            r#"cartbus_consumer_messages_total{outcome="released"}"#,
        );
        (not_sent >= 1.0 && released >= 1.0).then_some(())
    })
    .await;
    // Known not called: the flag is cleared and the cart waits for another try.
    let status = checkout(&app.client, &app.base, &cart).await;
    assert_eq!(
        (status["status"].as_str(), status.get("reason")),
        (Some("pending"), None)
    );
    assert!(
        payments_listed(&app.client, &app.base, "?state=all")
            .await
            .is_empty()
    );
    assert_eq!(common::queued_messages(dir.path()).await, 1);
    assert!(dead_letters(&Backend::Sqlite, dir.path()).await.is_empty());
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_call_the_cart_is_dead_lettered_and_never_charged_again() {
    for backend in
        Backend::all("killed_after_the_call_the_cart_is_dead_lettered_and_never_charged_again")
            .await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let settings = settings(dir.path(), &backend, &payments);
        let http = client();
        let cart = common::cart();

        // The payment service captures; the process dies before it records that.
        let mut first = Process::start(&settings, &[("FAILPOINTS", "payment-after-call=return")]);
        assert_eq!(post_cart(&http, &first.base, &cart).await.status(), 202);
        eventually("the call made and the process stopped after it", || async {
            (payments.calls(&cart).len() == 1 && first.logs_contain("fail point hit")).then_some(())
        })
        .await;
        first.kill();

        let second = Process::start(&settings, &[]);
        eventually(
            "the redelivered cart dead-lettered payment-unknown",
            || async {
                dead_letters(&backend, dir.path())
                    .await
                    .contains(&(id(&cart), "payment-unknown".to_string()))
                    .then_some(())
            },
        )
        .await;
        wait_for_checkout(
            &http,
            &second.base,
            &cart,
            "pending",
            Some("payment-unknown"),
        )
        .await;
        assert_eq!(
            payments.calls(&cart).len(),
            1,
            "{backend:?}: called once, never again"
        );
        assert_eq!(common::order_counts(&backend, dir.path()).await.0, 0);
        let unknown = payments_listed(&http, &second.base, "").await;
        let step = listed(&unknown, &cart).expect("listed as unknown");
        assert_eq!(step["state"], "unknown");
        assert!(
            step["detail"]
                .as_str()
                .is_some_and(|d| d.contains("not called again"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_resolve_unknown_payments() {
    for backend in Backend::all("operators_list_and_resolve_unknown_payments").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &payments)).await;
        let http = &app.client;
        let base = &app.base;
        let (taken, lost, paid) = (common::cart_with_lines(3), common::cart(), common::cart());
        payments.answer(&taken, Behaviour::Hang);
        payments.answer(&lost, Behaviour::Hang);
        for cart in [&taken, &lost, &paid] {
            assert_eq!(app.post_cart(cart).await.status(), 202);
        }
        app.wait_for_order(&id(&paid)).await;
        for cart in [&taken, &lost] {
            wait_for_checkout(http, base, cart, "pending", Some("payment-unknown")).await;
        }

        let unknown = payments_listed(http, base, "?state=unknown").await;
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        let step = listed(&unknown, &taken).expect("listed");
        assert_eq!(
            (&step["state"], &step["amount"], &step["currency"]),
            (&json!("unknown"), &taken["total"], &json!("GBP"))
        );
        assert!(step["called_at"].is_string() && step["result_at"].is_string());
        assert_eq!(
            payments_listed(http, base, "?state=all&limit=1")
                .await
                .len(),
            1
        );

        // Only with the admin token.
        let path = format!("/v1/admin/payments/{}/resolve", id(&taken));
        let body = json!({ "outcome": "captured", "reason": "seen in the dashboard" });
        for token in [None, Some("wrong-token-wrong-token")] {
            let mut request = http.post(app.url(&path)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("resolve");
            assert_eq!(response.status(), 401);
            let response = http
                .get(app.url("/v1/admin/payments"))
                .send()
                .await
                .expect("list");
            assert_eq!(response.status(), 401);
        }

        // Bad bodies name their field.
        for (body, pointer) in [
            (json!({ "reason": "checked" }), "/outcome"),
            (
                json!({ "outcome": "maybe", "reason": "checked" }),
                "/outcome",
            ),
            (json!({ "outcome": "captured" }), "/reason"),
            (json!({ "outcome": "captured", "reason": "  " }), "/reason"),
            (
                json!({ "outcome": "captured", "reason": "x".repeat(501) }),
                "/reason",
            ),
            (json!({ "outcome": "captured", "reason": 7 }), "/reason"),
            (
                json!({ "outcome": "failed", "reason": "checked", "payment_id": "p-1" }),
                "/payment_id",
            ),
            (
                json!({ "outcome": "captured", "reason": "checked", "color": "red" }),
                "/color",
            ),
        ] {
            let (status, problem) = resolve(http, base, &taken, body.clone()).await;
            assert_eq!(status, 422, "{body} → {problem}");
            let pointers: Vec<&str> = problem["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .filter_map(|e| e["pointer"].as_str())
                .collect();
            assert!(pointers.contains(&pointer), "{body} → {problem}");
        }
        for query in ["?state=maybe", "?limit=0", "?limit=1001"] {
            let path = format!("/v1/admin/payments{query}");
            let (status, _) = admin(http, base, reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 422, "{query}");
        }

        // Captured: the order is made from the stored cart, with its lines.
        let resolution = json!({ "outcome": "captured", "reason": "charge seen in the dashboard",
                                 "payment_id": "ch_123" });
        let (status, resolved) = resolve(http, base, &taken, resolution.clone()).await;
        assert_eq!(status, 200, "{resolved}");
        assert_eq!(resolved["state"], "resolved-captured");
        assert_eq!(resolved["payment_id"], "ch_123");
        assert_eq!(resolved["resolved_reason"], "charge seen in the dashboard");
        assert!(
            resolved["resolved_by"]
                .as_str()
                .is_some_and(|by| by.starts_with("ops-alice"))
        );
        assert!(resolved["resolved_at"].is_string());
        let order = app.wait_for_order(&id(&taken)).await;
        assert_eq!(resolved["order_id"], order["order_id"]);
        assert_eq!(order["source"], "queue");
        assert_eq!(order["total"], taken["total"]);
        let lines: Vec<Value> = order["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| {
                json!({ "sku": l["sku"], "name": l["name"], "quantity": l["quantity"],
                             "unit_price": l["unit_price"] })
            })
            .collect();
        assert_eq!(Value::from(lines), taken["lines"]);
        // The same resolution again answers the same; the other one conflicts.
        let (status, again) = resolve(http, base, &taken, resolution).await;
        assert_eq!((status, &again["order_id"]), (200, &order["order_id"]));
        let (status, problem) = resolve(
            http,
            base,
            &taken,
            json!({ "outcome": "failed", "reason": "changed my mind" }),
        )
        .await;
        assert_eq!(status, 409, "{problem}");

        // Failed: the checkout is rejected, no order.
        let failed = json!({ "outcome": "failed", "reason": "no charge at the provider" });
        let (status, resolved) = resolve(http, base, &lost, failed.clone()).await;
        assert_eq!(
            (status, &resolved["state"]),
            (200, &json!("resolved-failed"))
        );
        wait_for_checkout(http, base, &lost, "rejected", Some("payment-failed")).await;
        assert_eq!(common::count_orders_for(&app.state, &id(&lost)).await, 0);
        assert_eq!(resolve(http, base, &lost, failed).await.0, 200);

        // A payment with a result, or no payment step at all, is not for resolving.
        let body = json!({ "outcome": "captured", "reason": "checked" });
        assert_eq!(resolve(http, base, &paid, body.clone()).await.0, 409);
        assert_eq!(resolve(http, base, &common::cart(), body).await.0, 404);

        assert!(payments_listed(http, base, "").await.is_empty());
        assert_eq!(payments_listed(http, base, "?state=all").await.len(), 3);
        // The storefront retries the resolved checkouts: no call, nothing changes.
        for cart in [&taken, &lost] {
            assert_eq!(app.post_cart(cart).await.status(), 202);
        }
        eventually("the queue empty", || async {
            (common::queued_messages(dir.path()).await == 0).then_some(())
        })
        .await;
        for cart in [&taken, &lost, &paid] {
            assert_eq!(payments.calls(cart).len(), 1, "{backend:?}");
        }
        assert_eq!(common::count_orders(&app.state).await, 2);
        wait_for_checkout(http, base, &lost, "rejected", Some("payment-failed")).await;
        app.stop().await.expect("clean stop");
    }
}

/// The queue down: the cart is written directly, and still paid for exactly once; a
/// declined card gives no order, an unanswered call is never repeated.
#[tokio::test]
async fn a_direct_write_captures_the_payment_once_too() {
    for backend in Backend::all("a_direct_write_captures_the_payment_once_too").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let not_a_directory = dir.path().join("not-a-directory");
        std::fs::write(&not_a_directory, b"x").expect("write");
        let settings = settings(dir.path(), &backend, &payments)
            .set(
                "CARTBUS_QUEUE_URL",
                format!("embedded:{}", not_a_directory.join("queue.db").display()),
            )
            .set("CARTBUS_PAYMENT_TIMEOUT_MS", "300");
        let app = TestApp::spawn(&settings).await;

        let paid = common::cart();
        let response = app.post_cart(&paid).await;
        assert_eq!(response.status(), 201, "{backend:?}");
        assert_eq!(app.post_cart(&paid).await.status(), 201, "posted again");
        assert_eq!(common::count_orders_for(&app.state, &id(&paid)).await, 1);
        assert_eq!(payments.calls(&paid).len(), 1, "{backend:?}: charged once");

        let declined = common::cart();
        payments.answer(&declined, Behaviour::Decline);
        assert_eq!(app.post_cart(&declined).await.status(), 202);
        let status = checkout(&app.client, &app.base, &declined).await;
        assert_eq!(status["status"], "rejected", "{status}");
        assert_eq!(status["reason"], "payment-declined");
        assert_eq!(
            common::count_orders_for(&app.state, &id(&declined)).await,
            0
        );

        let unanswered = common::cart();
        payments.answer(&unanswered, Behaviour::Hang);
        assert_eq!(app.post_cart(&unanswered).await.status(), 202);
        assert_eq!(app.post_cart(&unanswered).await.status(), 202, "again");
        let status = checkout(&app.client, &app.base, &unanswered).await;
        assert_eq!(status["status"], "pending", "{status}");
        assert_eq!(status["reason"], "payment-unknown");
        assert_eq!(
            payments.calls(&unanswered).len(),
            1,
            "{backend:?}: never again"
        );
        assert!(
            dead_letters(&backend, dir.path())
                .await
                .iter()
                .any(|(id, reason)| *id == self::id(&unanswered) && reason == "payment-unknown")
        );
        app.stop().await.expect("clean stop");
    }
}

/// Moves the cart's payment step an hour into the past (its call, and its result if it
/// has one), as if its process had died long ago. Straight in the orders database.
async fn backdate(backend: &Backend, dir: &std::path::Path, cart: &Value) {
    use sqlx::Connection;
    const SQL: &str = "UPDATE payment_steps SET called_at = $1,
             result_at = CASE WHEN result_at IS NULL THEN NULL ELSE $1 END
         WHERE cart_id = $2";
    let then = chrono::Utc::now() - chrono::Duration::hours(1);
    let cart_id = uuid::Uuid::parse_str(&id(cart)).expect("cart id");
    let updated = match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.join("cartbus.db"))
                .busy_timeout(Duration::from_secs(10));
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("open orders file");
            sqlx::query(SQL)
                .bind(then)
                .bind(cart_id)
                .execute(&mut conn)
                .await
                .expect("backdate")
                .rows_affected()
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(SQL)
                .bind(then)
                .bind(cart_id)
                .execute(&mut conn)
                .await
                .expect("backdate")
                .rows_affected()
        }
    };
    assert_eq!(updated, 1, "a payment step to backdate");
}

/// Settings with a payment timeout long enough to hold a call open while the test acts.
fn slow_settings(dir: &std::path::Path, backend: &Backend, payments: &FakePayments) -> Settings {
    settings(dir, backend, payments).set("CARTBUS_PAYMENT_TIMEOUT_MS", "5000")
}

/// The queue made unusable, so that checkouts are written directly.
fn without_queue(settings: Settings, dir: &std::path::Path) -> Settings {
    let not_a_directory = dir.join("not-a-directory");
    std::fs::write(&not_a_directory, b"x").expect("write");
    settings.set(
        "CARTBUS_QUEUE_URL",
        format!("embedded:{}", not_a_directory.join("queue.db").display()),
    )
}

fn problem_detail(problem: &Value) -> &str {
    problem["detail"].as_str().unwrap_or_default()
}

/// A call still in flight is neither listed as unknown nor resolvable: its real result
/// must not be lost. A call that answers after a resolution (its step was abandoned) is
/// kept in the step's detail and counted, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_cannot_be_resolved_and_a_late_answer_is_kept() {
    for backend in
        Backend::all("a_call_in_flight_cannot_be_resolved_and_a_late_answer_is_kept").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&slow_settings(dir.path(), &backend, &payments)).await;
        let (http, base) = (&app.client, &app.base);

        let cart = common::cart();
        payments.hold(&cart);
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        payments.wait_for_call(&cart).await;
        assert!(
            listed(&payments_listed(http, base, "").await, &cart).is_none(),
            "{backend:?}: a call in flight is not unknown"
        );
        let all = payments_listed(http, base, "?state=all").await;
        assert_eq!(listed(&all, &cart).expect("listed")["state"], "in-flight");
        assert_eq!(metric(http, base, "cartbus_payments_unknown ").await, 0.0);
        let (status, problem) = resolve(
            http,
            base,
            &cart,
            json!({ "outcome": "failed", "reason": "not in the dashboard yet" }),
        )
        .await;
        assert_eq!(status, 409, "{problem}");
        assert!(
            problem_detail(&problem).contains("payment call in flight; try again after"),
            "{problem}"
        );
        // The call answers: its capture is recorded and the order placed.
        payments.release(&cart);
        let order = app.wait_for_order(&id(&cart)).await;
        let all = payments_listed(http, base, "?state=all").await;
        let step = listed(&all, &cart).expect("listed");
        assert_eq!(step["state"], "captured", "{step}");
        assert_eq!(step["payment_id"], format!("pay-{}", id(&cart)));
        assert_eq!(step["order_id"], order["order_id"]);

        // A call whose process is long gone (an hour ago, no redelivery) is unknown and
        // may be resolved; should it answer after all, the answer is kept and counted.
        let late = common::cart();
        payments.hold(&late);
        assert_eq!(app.post_cart(&late).await.status(), 202);
        payments.wait_for_call(&late).await;
        backdate(&backend, dir.path(), &late).await;
        let unknown = payments_listed(http, base, "").await;
        assert_eq!(listed(&unknown, &late).expect("listed")["state"], "unknown");
        let (status, resolved) = resolve(
            http,
            base,
            &late,
            json!({ "outcome": "failed", "reason": "no charge at the provider" }),
        )
        .await;
        assert_eq!(
            (status, &resolved["state"]),
            (200, &json!("resolved-failed"))
        );
        payments.release(&late);
        eventually("the late answer counted", || async {
            let late = metric(
                http,
                base,
                r#"cartbus_payment_calls_total{outcome="late_after_resolution"}"#,
            )
            .await;
            (late == 1.0).then_some(())
        })
        .await;
        let all = payments_listed(http, base, "?state=all").await;
        let step = listed(&all, &late).expect("listed");
        assert_eq!(step["state"], "resolved-failed", "{step}");
        assert!(
            step["detail"].as_str().is_some_and(|d| d.contains(&format!(
                "late call result after the resolution: captured (payment_id pay-{})",
                id(&late)
            ))),
            "{step}"
        );
        wait_for_checkout(http, base, &late, "rejected", Some("payment-failed")).await;
        assert_eq!(common::count_orders_for(&app.state, &id(&late)).await, 0);
        app.stop().await.expect("clean stop");
    }
}

/// A second delivery of a cart while its first call is still running is given back for
/// later, not dead-lettered `payment-unknown`: the first call's capture then places the
/// order, and the second delivery finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_back_while_its_first_call_runs_waits_for_it() {
    for backend in Backend::all("a_cart_back_while_its_first_call_runs_waits_for_it").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let settings = slow_settings(dir.path(), &backend, &payments).set("CARTBUS_CONSUMERS", "2");
        let app = TestApp::spawn(&settings).await;
        let (http, base) = (&app.client, &app.base);
        let cart = common::cart();
        payments.hold(&cart);

        assert_eq!(app.post_cart(&cart).await.status(), 202);
        payments.wait_for_call(&cart).await;
        // The storefront posts again; the other consumer takes it while the call runs.
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        eventually("the second delivery given back", || async {
            let released = metric(
                http,
                base,
                r#"cartbus_consumer_messages_total{outcome="released"}"#,
            )
            .await;
            (released >= 1.0).then_some(())
        })
        .await;
        payments.release(&cart);
        app.wait_for_order(&id(&cart)).await;
        eventually("both deliveries settled", || async {
            (common::queued_messages(dir.path()).await == 0).then_some(())
        })
        .await;
        assert_eq!(payments.calls(&cart).len(), 1, "{backend:?}");
        assert!(
            dead_letters(&backend, dir.path()).await.is_empty(),
            "{backend:?}"
        );
        assert!(common::dead_letters(dir.path()).await.is_empty());
        let status = checkout(http, base, &cart).await;
        assert_eq!(status["status"], "ordered", "{status}");
        app.stop().await.expect("clean stop");
    }
}

/// The same with the queue down: the storefront's second post, while the first one's
/// call runs, is answered 503 with Retry-After rather than parked as payment-unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_during_the_first_call_asks_to_retry() {
    for backend in Backend::all("a_direct_write_during_the_first_call_asks_to_retry").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let settings = without_queue(slow_settings(dir.path(), &backend, &payments), dir.path());
        let app = TestApp::spawn(&settings).await;
        let cart = common::cart();
        payments.hold(&cart);

        let first = tokio::spawn({
            let (http, base, cart) = (app.client.clone(), app.base.clone(), cart.clone());
            async move { post_cart(&http, &base, &cart).await.status() }
        });
        payments.wait_for_call(&cart).await;
        let second = app.post_cart(&cart).await;
        assert_eq!(second.status(), 503, "{backend:?}");
        assert!(second.headers().contains_key("retry-after"));
        assert!(
            second.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/problem+json"))
        );
        assert!(dead_letters(&backend, dir.path()).await.is_empty());

        payments.release(&cart);
        assert_eq!(first.await.expect("first post"), 201, "{backend:?}");
        assert_eq!(app.post_cart(&cart).await.status(), 201, "posted again");
        assert_eq!(payments.calls(&cart).len(), 1, "{backend:?}");
        assert_eq!(common::count_orders_for(&app.state, &id(&cart)).await, 1);
        assert!(dead_letters(&backend, dir.path()).await.is_empty());
        let status = checkout(&app.client, &app.base, &cart).await;
        assert_eq!(status["status"], "ordered", "{status}");
        app.stop().await.expect("clean stop");
    }
}

/// A direct write whose request goes away mid-call (client gone, or the request timeout)
/// still records the capture and writes the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_finishes_when_its_request_is_dropped() {
    for backend in Backend::all("a_direct_write_finishes_when_its_request_is_dropped").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let settings = without_queue(slow_settings(dir.path(), &backend, &payments), dir.path());
        let app = TestApp::spawn(&settings).await;
        let cart = common::cart();
        payments.hold(&cart);

        let post = tokio::spawn({
            let (http, base, cart) = (client(), app.base.clone(), cart.clone());
            async move { post_cart(&http, &base, &cart).await.status() }
        });
        payments.wait_for_call(&cart).await;
        // The client goes away: its connection closes mid-request.
        post.abort();
        assert!(post.await.is_err_and(|e| e.is_cancelled()));
        payments.release(&cart);

        let order = app.wait_for_order(&id(&cart)).await;
        assert_eq!(order["source"], "direct", "{backend:?}");
        let all = payments_listed(&app.client, &app.base, "?state=all").await;
        assert_eq!(listed(&all, &cart).expect("listed")["state"], "captured");
        assert_eq!(payments.calls(&cart).len(), 1);
        app.stop().await.expect("clean stop");
    }
}

/// A capture whose order was never written (its process died in between) is listed
/// under `captured-without-order`, counted in a gauge, and finished by resolving it
/// `captured`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_left_without_its_order_is_shown_and_can_be_finished() {
    for backend in
        Backend::all("a_capture_left_without_its_order_is_shown_and_can_be_finished").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let settings = without_queue(slow_settings(dir.path(), &backend, &payments), dir.path());
        let http = client();
        let cart = common::cart();

        // Captured; the process dies before it writes the order.
        let mut first = Process::start(&settings, &[("FAILPOINTS", "direct-after-payment=return")]);
        let post = tokio::spawn({
            let (http, base, cart) = (http.clone(), first.base.clone(), cart.clone());
            async move { post_cart(&http, &base, &cart).await.status() }
        });
        eventually("captured and stopped before the order", || async {
            (payments.calls(&cart).len() == 1 && first.logs_contain("fail point hit")).then_some(())
        })
        .await;
        first.kill();
        post.abort();

        let second = Process::start(&settings, &[]);
        let base = &second.base;
        let stuck = "?state=captured-without-order";
        // Moments after the capture its order may still be on its way: not listed yet.
        assert!(payments_listed(&http, base, stuck).await.is_empty());
        backdate(&backend, dir.path(), &cart).await;
        let items = payments_listed(&http, base, stuck).await;
        let step = listed(&items, &cart).expect("listed");
        assert_eq!(step["state"], "captured", "{backend:?}: {step}");
        assert!(step.get("order_id").is_none(), "{step}");
        assert_eq!(
            metric(&http, base, "cartbus_payments_captured_without_order ").await,
            1.0
        );
        assert!(
            payments_listed(&http, base, "").await.is_empty(),
            "not unknown"
        );

        let (status, problem) = resolve(
            &http,
            base,
            &cart,
            json!({ "outcome": "failed", "reason": "refunded" }),
        )
        .await;
        assert_eq!(status, 409, "{problem}");
        let (status, resolved) = resolve(
            &http,
            base,
            &cart,
            json!({ "outcome": "captured", "reason": "order write lost after capture" }),
        )
        .await;
        assert_eq!(status, 200, "{resolved}");
        assert_eq!(resolved["state"], "resolved-captured");
        assert_eq!(resolved["payment_id"], format!("pay-{}", id(&cart)));
        let order = common::wait_for_order(&http, base, &id(&cart)).await;
        assert_eq!(resolved["order_id"], order["order_id"]);
        assert!(payments_listed(&http, base, stuck).await.is_empty());
        assert_eq!(
            metric(&http, base, "cartbus_payments_captured_without_order ").await,
            0.0
        );
        assert_eq!(payments.calls(&cart).len(), 1, "{backend:?}");
    }
}

/// Resubmitting a dead letter takes the same payment step as the queue: a cart whose
/// payment is unknown is never called again (not even by a resubmit) until a person
/// resolves it; a corrected cart is captured once, and a declined one is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_cart_is_charged_at_most_once() {
    for backend in Backend::all("a_resubmitted_cart_is_charged_at_most_once").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let payments = FakePayments::start().await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &payments)).await;
        let (http, base) = (&app.client, &app.base);
        let resubmit = |id: i64, dry_run: bool, body: Option<Value>| async move {
            let path = format!("/v1/admin/dead-letters/{id}/resubmit?dry_run={dry_run}");
            admin(http, base, reqwest::Method::POST, &path, body).await
        };
        let dead_letter = |reason: &'static str, message_id: String| async move {
            eventually(&format!("a {reason} dead letter"), || async {
                let path = format!("/v1/admin/dead-letters?reason={reason}");
                let (_, page) = admin(http, base, reqwest::Method::GET, &path, None).await;
                page["items"]
                    .as_array()?
                    .iter()
                    .find(|i| i["message_id"] == message_id.as_str())
                    .and_then(|i| i["id"].as_i64())
            })
            .await
        };

        // Unknown: dead-lettered after one call, and no resubmit calls again.
        let unknown = common::cart();
        payments.answer(&unknown, Behaviour::Hang);
        assert_eq!(app.post_cart(&unknown).await.status(), 202);
        let id_unknown = dead_letter("payment-unknown", id(&unknown)).await;
        for dry_run in [true, false] {
            let (status, report) = resubmit(id_unknown, dry_run, None).await;
            assert_eq!(status, 200, "{report}");
            assert_eq!(report["outcome"], "payment-unknown", "{report}");
            assert_eq!(report["resolved"], false);
        }
        assert_eq!(payments.calls(&unknown).len(), 1, "never called again");
        let resolution = json!({ "outcome": "captured", "reason": "charge seen in the dashboard" });
        assert_eq!(resolve(http, base, &unknown, resolution).await.0, 200);
        let (status, report) = resubmit(id_unknown, false, None).await;
        assert_eq!(
            (status, report["outcome"].as_str()),
            (200, Some("duplicate")),
            "{report}"
        );
        assert_eq!(report["resolved"], true);
        assert_eq!(payments.calls(&unknown).len(), 1);
        assert_eq!(common::count_orders_for(&app.state, &id(&unknown)).await, 1);

        // Corrected carts: captured once and ordered; declined and rejected.
        let (paid, declined) = (common::cart(), common::cart());
        payments.answer(&declined, Behaviour::Decline);
        for cart in [&paid, &declined] {
            app.state
                .queue
                .send(
                    &app.state.config.queue.cart_address,
                    common::unknown_schema_message(cart),
                )
                .await
                .expect("send");
        }
        let id_paid = dead_letter("unknown-schema", id(&paid)).await;
        let id_declined = dead_letter("unknown-schema", id(&declined)).await;
        let (status, report) = resubmit(id_paid, true, Some(json!({ "cart": paid }))).await;
        assert_eq!(
            (status, report["outcome"].as_str()),
            (200, Some("would-create-order")),
            "{report}"
        );
        assert!(payments.calls(&paid).is_empty(), "a dry run calls nobody");
        let (status, report) = resubmit(id_paid, false, Some(json!({ "cart": paid }))).await;
        assert_eq!(
            (status, report["outcome"].as_str()),
            (200, Some("created-order")),
            "{report}"
        );
        assert_eq!(
            resubmit(id_paid, false, Some(json!({ "cart": paid })))
                .await
                .0,
            409
        );
        assert_eq!(payments.calls(&paid).len(), 1);
        assert_eq!(common::count_orders_for(&app.state, &id(&paid)).await, 1);
        let (status, report) =
            resubmit(id_declined, false, Some(json!({ "cart": declined }))).await;
        assert_eq!(
            (status, report["outcome"].as_str()),
            (200, Some("payment-declined")),
            "{report}"
        );
        assert_eq!(report["resolved"], true);
        assert_eq!(payments.calls(&declined).len(), 1);
        assert_eq!(
            common::count_orders_for(&app.state, &id(&declined)).await,
            0
        );
        wait_for_checkout(http, base, &declined, "rejected", Some("payment-declined")).await;
        app.stop().await.expect("stops");
    }
}
