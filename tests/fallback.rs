//! When the queue cannot take a cart, the order is written directly (201); when neither
//! can, 503 with Retry-After and nothing stored.

mod common;

use common::{Backend, Settings, TestApp, cart, count_orders};
use reqwest::Method;
use serde_json::Value;

/// A queue path below a regular file can never be opened.
fn unusable_queue(dir: &std::path::Path) -> String {
    let file = dir.join("not-a-directory");
    std::fs::write(&file, b"x").expect("write");
    format!("embedded:{}", file.join("queue.db").display())
}

#[tokio::test]
async fn without_a_queue_the_order_is_written_directly() {
    for backend in Backend::all("without_a_queue_the_order_is_written_directly").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings::new(dir.path(), &backend)
            .set("CARTBUS_QUEUE_URL", unusable_queue(dir.path()));
        let app = TestApp::spawn(&settings).await;
        let (status, ready) = app.get_json("/health/ready").await;
        assert_eq!(
            status, 200,
            "the database alone makes the instance ready: {ready}"
        );
        assert_eq!(ready["queue_up"], false);

        let cart = cart();
        let response = app.post_cart(&cart).await;
        assert_eq!(response.status(), 201, "{backend:?}");
        let order_url = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ordered");
        assert_eq!(body["checkout_id"], cart["cart_id"]);
        assert_eq!(body["order_url"], order_url.as_str());

        let (status, order) = app.get_json(&order_url).await;
        assert_eq!(status, 200);
        assert_eq!(order["source"], "direct");
        assert_eq!(order["lines"], cart["lines"]);
        assert_eq!(order["status_history"][0]["status"], "placed");
        let (_, checkout) = app
            .get_json(&format!(
                "/v1/checkouts/{}",
                cart["cart_id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(checkout["status"], "ordered");
        assert_eq!(checkout["order_id"], body["order_id"]);

        // Posting it again answers with the same order; a changed payload is a conflict.
        let again = app.post_cart(&cart).await;
        assert_eq!(again.status(), 201);
        let again: Value = again.json().await.expect("json");
        assert_eq!(again["order_id"], body["order_id"]);
        let mut changed = cart.clone();
        changed["customer"]["name"] = "Someone Else".into();
        let conflict = app.post_cart(&changed).await;
        assert_eq!(conflict.status(), 409);
        assert_eq!(
            conflict.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(count_orders(&app.state).await, 1);
        let (_, order_after) = app.get_json(&order_url).await;
        assert_eq!(order_after, order, "the original order is untouched");
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn without_queue_and_database_the_answer_is_503_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on port 1; the pool gives up after its acquire timeout.
    let settings = Settings::new(
        dir.path(),
        &Backend::Postgres("postgres://cartbus@127.0.0.1:1/none".into()),
    )
    .set("CARTBUS_QUEUE_URL", unusable_queue(dir.path()));
    let app = TestApp::spawn(&settings).await;
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);

    let cart = cart();
    let response = app.post_cart(&cart).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let (status, _) = app
        .get_json(&format!(
            "/v1/checkouts/{}",
            cart["cart_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        status, 503,
        "nobody can say where the cart is, and nobody pretends to"
    );
    let (status, live) = app.get_json("/health/live").await;
    assert_eq!(status, 200, "{live}");
    app.stop().await.expect("clean stop");
}

/// One `Retry-After` policy: every 503 for a database or queue that cannot serve says to
/// retry after `CARTBUS_RETRY_AFTER_SECONDS`, whichever endpoint (storefront or admin)
/// answered it.
#[tokio::test]
async fn every_unavailable_answer_says_the_configured_retry_after() {
    const TOKEN: &str = "fallback-test-admin-token-0001";
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(
        dir.path(),
        &Backend::Postgres("postgres://cartbus@127.0.0.1:1/none".into()),
    )
    .set("CARTBUS_QUEUE_URL", unusable_queue(dir.path()))
    .set("CARTBUS_RETRY_AFTER_SECONDS", "7")
    .set("CARTBUS_ADMIN_TOKEN", TOKEN);
    let app = TestApp::spawn(&settings).await;
    let cart = cart();
    let cart_id = cart["cart_id"].as_str().expect("id");
    let resolution = serde_json::json!({"outcome": "failed", "reason": "checked by hand"});
    let calls = [
        (
            Method::POST,
            "/v1/checkouts".to_string(),
            Some(cart.clone()),
        ),
        (Method::GET, format!("/v1/checkouts/{cart_id}"), None),
        (Method::GET, format!("/v1/orders/{cart_id}"), None),
        (Method::GET, "/v1/admin/consumer".to_string(), None),
        (Method::GET, "/v1/admin/dead-letters".to_string(), None),
        (
            Method::POST,
            format!("/v1/admin/payments/{cart_id}/resolve"),
            Some(resolution),
        ),
    ];
    // At once: each database call waits out the pool's acquire timeout.
    let answers = futures::future::join_all(calls.into_iter().map(|(method, path, body)| {
        let mut request = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("an answer");
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (format!("{method} {path}"), response.status(), retry_after)
        }
    }))
    .await;
    for (call, status, retry_after) in answers {
        assert_eq!(status, 503, "{call}");
        assert_eq!(retry_after.as_deref(), Some("7"), "{call}");
    }
    app.stop().await.expect("clean stop");
}
