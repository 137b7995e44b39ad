//! Cart → queue → order over HTTP, on SQLite and on PostgreSQL, and what posting the same
//! cart again does.

mod common;

use common::{Backend, Settings, TestApp, cart, cart_with_lines, count_orders, count_orders_for};
use serde_json::{Value, json};

#[tokio::test]
async fn a_queued_cart_becomes_the_same_order() {
    for backend in Backend::all("a_queued_cart_becomes_the_same_order").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&Settings::new(dir.path(), &backend)).await;
        let cart = cart_with_lines(3);
        let cart_id = cart["cart_id"].as_str().expect("id").to_string();

        let response = app.post_cart(&cart).await;
        assert_eq!(response.status(), 202, "{backend:?}");
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        assert_eq!(location, format!("/v1/checkouts/{cart_id}"));
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["checkout_id"], cart_id.as_str());
        assert_eq!(body["status"], "pending", "the word GET answers too");
        assert_eq!(body["status_url"], location.as_str());

        let order = app.wait_for_order(&cart_id).await;
        assert_eq!(order["cart_id"], cart["cart_id"]);
        assert_eq!(order["source"], "queue");
        assert_eq!(order["total"], cart["total"]);
        assert_eq!(order["currency"], "GBP");
        assert_eq!(order["customer"], cart["customer"]);
        assert_eq!(order["shipping_address"], cart["shipping_address"]);
        assert_eq!(order["lines"], cart["lines"]);
        let history: Vec<&str> = order["status_history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|s| s["status"].as_str().expect("status"))
            .collect();
        assert_eq!(history, ["placed"]);
        assert_eq!(count_orders(&app.state).await, 1);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn unknown_checkouts_and_orders_are_404_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite)).await;
    for path in [
        format!("/v1/checkouts/{}", uuid::Uuid::new_v4()),
        format!("/v1/orders/{}", uuid::Uuid::new_v4()),
    ] {
        let response = app.client.get(app.url(&path)).send().await.expect("GET");
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // Errors raised outside the handlers (no route, wrong method) have the same shape and
    // the same `/problems/…` types as every other problem.
    for (method, path, status, kind) in [
        (
            reqwest::Method::GET,
            "/v1/no-such-thing",
            404,
            "/problems/not-found",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/checkouts",
            405,
            "/problems/method-not-allowed",
        ),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["type"], kind, "{method} {path}: {problem}");
        assert_eq!(problem["status"], status);
    }
    for path in ["/v1/checkouts/not-a-uuid", "/v1/orders/not-a-uuid"] {
        let response = app.client.get(app.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn twenty_concurrent_posts_of_one_cart_make_one_order() {
    for backend in Backend::all("twenty_concurrent_posts_of_one_cart_make_one_order").await {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&Settings::new(dir.path(), &backend)).await;
        let cart = cart();
        let cart_id = cart["cart_id"].as_str().expect("id").to_string();

        let posts = (0..20).map(|_| app.post_cart(&cart));
        for response in futures::future::join_all(posts).await {
            assert_eq!(response.status(), 202, "{backend:?}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["checkout_id"], cart_id.as_str());
        }
        let order = app.wait_for_order(&cart_id).await;
        // Every copy has to be consumed before "exactly one" means anything.
        common::eventually("queue drained", || async {
            let stats = app.state.queue.stats("checkout-carts").await.ok()?;
            (stats.depth == 0).then_some(())
        })
        .await;
        assert_eq!(
            count_orders_for(&app.state, &cart_id).await,
            1,
            "{backend:?}"
        );

        // Later, the same cart again: same checkout, still the same one order.
        let again = app.post_cart(&cart).await;
        assert_eq!(again.status(), 202);
        let body: Value = again.json().await.expect("json");
        assert_eq!(body["checkout_id"], cart_id.as_str());
        common::eventually("queue drained again", || async {
            let stats = app.state.queue.stats("checkout-carts").await.ok()?;
            (stats.depth == 0).then_some(())
        })
        .await;
        let (_, checkout) = app.get_json(&format!("/v1/checkouts/{cart_id}")).await;
        assert_eq!(checkout["order_id"], order["order_id"]);
        assert_eq!(count_orders(&app.state).await, 1);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn same_cart_id_with_a_different_payload_is_a_recorded_conflict() {
    for backend in
        Backend::all("same_cart_id_with_a_different_payload_is_a_recorded_conflict").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        // The database is not asked at intake here: the reused cart_id is queued, as it is
        // when the database does not answer within CARTBUS_CONFLICT_CHECK_MS.
        let app = TestApp::spawn(
            &Settings::new(dir.path(), &backend).set("CARTBUS_CONFLICT_CHECK_MS", "0"),
        )
        .await;
        let original = cart();
        let cart_id = original["cart_id"].as_str().expect("id").to_string();
        assert_eq!(app.post_cart(&original).await.status(), 202);
        let order = app.wait_for_order(&cart_id).await;

        let mut changed = original.clone();
        changed["lines"][0]["quantity"] = json!(7);
        changed["total"] = json!(7 * 100 + 2 * 101);
        assert_eq!(app.post_cart(&changed).await.status(), 202);

        // The conflicting message is dead-lettered with its reason…
        let dead = common::eventually("conflict dead-lettered", || async {
            let dead = common::dead_letters(dir.path()).await;
            (!dead.is_empty()).then_some(dead)
        })
        .await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, cart_id);
        assert_eq!(dead[0].1, "conflict");
        // …recorded in the database…
        let recorded: i64 = cartbus::on_db!(&app.state.db, |pool| sqlx::query_scalar(
            "SELECT count(*) FROM rejected_checkouts WHERE cart_id = $1 AND reason = 'conflict'"
        )
        .bind(uuid::Uuid::parse_str(&cart_id).expect("uuid"))
        .fetch_one(pool)
        .await
        .expect("count"));
        assert_eq!(recorded, 1, "{backend:?}");
        let dead_letter: (String, String) = cartbus::on_db!(&app.state.db, |pool| sqlx::query_as(
            "SELECT message_id, reason FROM dead_letters WHERE source = 'checkout-carts'"
        )
        .fetch_one(pool)
        .await
        .expect("dead letter recorded in the database"));
        assert_eq!(dead_letter, (cart_id.clone(), "conflict".to_string()));
        // …and the original order is untouched.
        let (status, after) = app
            .get_json(
                order["order_id"]
                    .as_str()
                    .map(|id| format!("/v1/orders/{id}"))
                    .as_deref()
                    .expect("id"),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(after, order);
        // The checkout reads `ordered`, and says the order is the first cart's.
        let (_, checkout) = app.get_json(&format!("/v1/checkouts/{cart_id}")).await;
        assert_eq!(checkout["status"], "ordered");
        assert_eq!(checkout["order_id"], order["order_id"]);
        assert_eq!(checkout["reason"], "conflict", "{checkout}");
        assert!(
            checkout["detail"]
                .as_str()
                .is_some_and(|d| d.contains("first cart") && d.contains("different payload")),
            "{checkout}"
        );
        assert_eq!(count_orders(&app.state).await, 1);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn a_reused_cart_id_with_another_cart_is_refused_at_intake_when_the_database_answers() {
    for backend in Backend::all(
        "a_reused_cart_id_with_another_cart_is_refused_at_intake_when_the_database_answers",
    )
    .await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&Settings::new(dir.path(), &backend)).await;
        let original = cart();
        let cart_id = original["cart_id"].as_str().expect("id").to_string();
        assert_eq!(app.post_cart(&original).await.status(), 202);
        let order = app.wait_for_order(&cart_id).await;

        let mut changed = original.clone();
        changed["total"] = json!(original["total"].as_i64().expect("total") + 1);
        changed["lines"][0]["unit_price"] =
            json!(original["lines"][0]["unit_price"].as_i64().expect("price") + 1);
        let response = app.post_cart(&changed).await;
        assert_eq!(response.status(), 409, "{backend:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["type"], "/problems/conflict");
        assert!(
            problem["detail"].as_str().is_some_and(
                |d| d.contains(&cart_id) && d.contains(order["order_id"].as_str().expect("id"))
            ),
            "{problem}"
        );
        // The same cart again is still fine (a retry), and nothing reached the queue for
        // the refused one: no dead letter, one order.
        assert_eq!(app.post_cart(&original).await.status(), 202);
        let text = common::metrics_text(&app.client, &app.base).await;
        assert_eq!(
            common::metric(&text, r#"cartbus_checkouts_total{outcome="conflict"}"#),
            1.0,
            "{text}"
        );
        assert!(common::dead_letters(dir.path()).await.is_empty());
        assert_eq!(count_orders(&app.state).await, 1);
        app.stop().await.expect("clean stop");
    }
}

/// The conflict check answers checkouts in batches (one query for all that wait): each
/// checkout must still get its own cart's answer.
#[tokio::test]
async fn checkouts_checked_together_each_get_their_own_answer() {
    for backend in Backend::all("checkouts_checked_together_each_get_their_own_answer").await {
        let dir = tempfile::tempdir().expect("tempdir");
        // A generous bound: under a loaded CI machine the answer must still come in time.
        let app = TestApp::spawn(
            &Settings::new(dir.path(), &backend).set("CARTBUS_CONFLICT_CHECK_MS", "1000"),
        )
        .await;
        let placed: Vec<Value> = (0..10).map(|_| cart()).collect();
        for cart in &placed {
            assert_eq!(app.post_cart(cart).await.status(), 202, "{backend:?}");
        }
        for cart in &placed {
            app.wait_for_order(cart["cart_id"].as_str().expect("id"))
                .await;
        }
        // Interleaved: each placed cart with one more unit price (a conflict), each
        // followed by a cart never seen (accepted), all posted at once.
        let mut posts = Vec::new();
        for cart in &placed {
            let mut changed = cart.clone();
            changed["total"] = json!(cart["total"].as_i64().expect("total") + 1);
            changed["lines"][0]["unit_price"] =
                json!(cart["lines"][0]["unit_price"].as_i64().expect("price") + 1);
            posts.push((changed, 409));
            posts.push((common::cart(), 202));
        }
        let statuses =
            futures::future::join_all(posts.iter().map(|(cart, _)| app.post_cart(cart))).await;
        for ((cart, expected), response) in posts.iter().zip(statuses) {
            assert_eq!(
                response.status().as_u16(),
                *expected,
                "{backend:?}: cart {}",
                cart["cart_id"]
            );
        }
        app.stop().await.expect("clean stop");
    }
}
