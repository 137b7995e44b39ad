//! What the consumer does with messages it cannot turn into orders, and with a database
//! that goes away under it.

mod common;

use bytes::Bytes;
use cartbus::queue::{Message, Properties, Property};
use common::{Backend, Settings, TestApp, cart, count_orders, eventually};
use serde_json::{Value, json};
use sqlx::Connection;

fn raw_message(message_id: &str, body: Vec<u8>) -> Message {
    Message {
        message_id: message_id.into(),
        content_type: "application/json".into(),
        properties: Properties::from([("schema".into(), Property::Int(1))]),
        body: Bytes::from(body),
        ..Default::default()
    }
}

fn envelope(schema: i64, cart: &Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "schema": schema, "cart": cart, "accepted_at": "2026-11-24T07:00:00Z" }),
    )
    .expect("json")
}

/// `(message_id, reason)` of the dead letters recorded in the orders database.
async fn recorded_dead_letters(app: &TestApp) -> Vec<(String, String)> {
    cartbus::on_db!(&app.state.db, |pool| sqlx::query_as(
        "SELECT message_id, reason FROM dead_letters WHERE source = 'checkout-carts' ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .expect("dead letters"))
}

#[tokio::test]
async fn undecodable_and_unknown_messages_are_dead_lettered_with_their_reason() {
    for backend in
        Backend::all("undecodable_and_unknown_messages_are_dead_lettered_with_their_reason").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&Settings::new(dir.path(), &backend)).await;
        let queue = &app.state.queue;

        let future = cart();
        let future_id = future["cart_id"].as_str().expect("id").to_string();
        let mut broken = cart();
        broken["total"] = json!(1);
        let broken_id = broken["cart_id"].as_str().expect("id").to_string();
        let other = cart();
        let mismatched_id = uuid::Uuid::new_v4().to_string();
        let good = cart();
        let good_id = good["cart_id"].as_str().expect("id").to_string();

        for message in [
            raw_message(&future_id, envelope(99, &future)),
            raw_message(&broken_id, envelope(1, &broken)),
            raw_message("not-a-cart", b"\x00\x01 not json".to_vec()),
            raw_message(&mismatched_id, envelope(1, &other)),
            raw_message(&good_id, envelope(1, &good)),
        ] {
            queue.send("checkout-carts", message).await.expect("send");
        }

        app.wait_for_order(&good_id).await;
        let mut dead = eventually("four dead letters recorded", || async {
            let dead = recorded_dead_letters(&app).await;
            (dead.len() == 4).then_some(dead)
        })
        .await;
        // Two consumer tasks work side by side: the record order is not the send order.
        dead.sort();
        let mut expected = vec![
            (future_id.clone(), "unknown-schema".to_string()),
            (broken_id.clone(), "invalid".to_string()),
            ("not-a-cart".to_string(), "invalid".to_string()),
            (mismatched_id.clone(), "invalid".to_string()),
        ];
        expected.sort();
        assert_eq!(dead, expected, "{backend:?}");
        // The embedded queue keeps its own dead letters too.
        eventually("queue dead letters", || async {
            (common::dead_letters(dir.path()).await.len() == 4).then_some(())
        })
        .await;
        // The storefront can see why.
        for (cart_id, reason) in [(&future_id, "unknown-schema"), (&broken_id, "invalid")] {
            let (status, checkout) = app.get_json(&format!("/v1/checkouts/{cart_id}")).await;
            assert_eq!(status, 200);
            assert_eq!(checkout["status"], "rejected");
            assert_eq!(checkout["reason"], reason);
            assert!(checkout["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        assert_eq!(
            count_orders(&app.state).await,
            1,
            "only the good cart is an order"
        );
        app.stop().await.expect("clean stop");
    }
}

/// Stops new connections to `database` and kills the open ones, as a restarting or
/// failing-over PostgreSQL would.
async fn block_database(admin: &mut sqlx::PgConnection, database: &str, blocked: bool) {
    let sql = format!(
        "ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {}",
        !blocked
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut *admin)
        .await
        .expect("alter database");
    if blocked {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .execute(&mut *admin)
            .await
            .expect("terminate");
    }
}

#[tokio::test]
async fn carts_wait_while_the_database_is_down_and_none_is_dead_lettered() {
    let Some(admin_url) = common::postgres_admin_url(
        "carts_wait_while_the_database_is_down_and_none_is_dead_lettered",
    ) else {
        return;
    };
    let url = common::fresh_postgres(&admin_url).await;
    let database = url
        .rsplit('/')
        .next()
        .expect("name")
        .split('?')
        .next()
        .expect("name")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Postgres(url)).set("CARTBUS_MAX_ATTEMPTS", "2"),
    )
    .await;
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin");

    let before = cart();
    assert_eq!(app.post_cart(&before).await.status(), 202);
    app.wait_for_order(before["cart_id"].as_str().expect("id"))
        .await;

    block_database(&mut admin, &database, true).await;
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let cart = cart();
        // The queue takes carts while the database is away.
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        waiting.push(cart["cart_id"].as_str().expect("id").to_string());
    }
    eventually("the consumer notices", || async {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // The series is there at 0 from the start: wait for a release.
        (common::metric(
            &metrics,
            r#"cartbus_consumer_messages_total{outcome="released"}"#,
        ) > 0.0)
            .then_some(())
    })
    .await;
    block_database(&mut admin, &database, false).await;

    for cart_id in &waiting {
        app.wait_for_order(cart_id).await;
    }
    assert_eq!(count_orders(&app.state).await, 21);
    assert!(
        recorded_dead_letters(&app).await.is_empty(),
        "a database outage must not dead-letter good carts"
    );
    assert!(common::dead_letters(dir.path()).await.is_empty());
    app.stop().await.expect("clean stop");
}
