//! Order events (issue 20), recorded in the transaction of each change and read back
//! through `GET /v1/admin/events`: on the embedded queue with SQLite and on a broker with
//! PostgreSQL, carts go through the consumer to a partner (simulated, sending every reply
//! twice) and back; each cart's events are one `checkout.ordered`, then its fulfilment
//! steps in order, none twice. A conflicting cart is `checkout.rejected`, and so is one
//! dead-lettered before it could be converted.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::partners::{
    ADMIN_TOKEN, Simulated, cart_id, cart_to, orders_backend, settings, stacks, tag, wait_ready,
};
use common::{TestApp, admin_call, eventually};
use serde_json::Value;

const CARTS: usize = 20;

async fn events(app: &TestApp, query: &str) -> (u16, Value) {
    admin_call(
        &app.client,
        &app.base,
        ADMIN_TOKEN,
        reqwest::Method::GET,
        &format!("/v1/admin/events{query}"),
        None,
    )
    .await
}

/// `(type, status)` of each of a cart's events, in order.
async fn steps(app: &TestApp, cart: &str) -> Vec<(String, String)> {
    let (status, page) = events(app, &format!("?cart_id={cart}")).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or_default().to_string();
            let step = e["data"]["status"].as_str().unwrap_or_default().to_string();
            (kind, step)
        })
        .collect()
}

#[tokio::test]
async fn each_change_is_one_event_in_the_order_it_happened() {
    const TEST: &str = "each_change_is_one_event_in_the_order_it_happened";
    for stack in stacks(TEST) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = orders_backend(&stack, TEST).await;
        let app = TestApp::spawn(
            &settings(dir.path(), &backend, &stack, &tag()).set("CARTBUS_CONFLICT_CHECK_MS", "0"),
        )
        .await;
        wait_ready(&app, &stack).await;
        let simulator = Simulated::start(&app, Duration::from_millis(50), None);
        let carts: Vec<Value> = (0..CARTS)
            .map(|_| cart_to("GB", Some("MAN"), 4_200))
            .collect();
        for cart in &carts {
            assert!(app.post_cart(cart).await.status().is_success());
        }
        let expected = [
            ("checkout.ordered", ""),
            ("order.status_changed", "sent_to_partner"),
            ("order.status_changed", "received_by_partner"),
            ("order.status_changed", "shipped"),
        ]
        .map(|(k, s)| (k.to_string(), s.to_string()));
        for cart in &carts {
            let id = cart_id(cart).to_string();
            let seen = eventually("every step of the cart's order", || async {
                let seen = steps(&app, &id).await;
                (seen.len() >= expected.len()).then_some(seen)
            })
            .await;
            assert_eq!(seen, expected, "{stack:?} {id}");
        }

        // The same cart_id with another payload, queued (no check at intake): rejected.
        let first = &carts[0];
        let mut other = cart_to("GB", Some("MAN"), 5_100);
        other["cart_id"] = first["cart_id"].clone();
        assert_eq!(app.post_cart(&other).await.status(), 202);
        let id = cart_id(first).to_string();
        let rejected = eventually("checkout.rejected", || async {
            let (_, page) = events(&app, &format!("?cart_id={id}")).await;
            page["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|e| e["type"] == "checkout.rejected")
                    .cloned()
            })
        })
        .await;
        assert_eq!(rejected["data"]["reason"], "conflict", "{rejected}");
        assert!(rejected["data"]["order_id"].is_string(), "{rejected}");

        // A queued cart dead-lettered before conversion (a schema this version cannot
        // read) is rejected too, with that reason.
        let unreadable = cart_to("GB", Some("MAN"), 4_200);
        app.state
            .queue
            .send(
                &app.state.config.queue.cart_address,
                common::unknown_schema_message(&unreadable),
            )
            .await
            .expect("sent");
        let id = cart_id(&unreadable).to_string();
        let seen = eventually("checkout.rejected for the unreadable cart", || async {
            let seen = steps(&app, &id).await;
            (!seen.is_empty()).then_some(seen)
        })
        .await;
        assert_eq!(seen, [("checkout.rejected".to_string(), String::new())]);

        // Every event once, in pages, in the order they happened; the duplicate replies
        // added none.
        let (mut ids, mut last_seq, mut after) = (HashSet::new(), 0, String::new());
        loop {
            let (status, page) = events(&app, &format!("?limit=7{after}")).await;
            assert_eq!(status, 200, "{page}");
            for event in page["items"].as_array().expect("items") {
                assert!(ids.insert(event["id"].as_str().unwrap_or_default().to_string()));
                let seq = event["seq"].as_i64().expect("seq");
                assert!(seq > last_seq, "in order: {seq} after {last_seq}");
                last_seq = seq;
            }
            match page["next"].as_i64() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        assert_eq!(ids.len(), CARTS * expected.len() + 2, "{stack:?}");

        let (status, problem) = events(&app, "?cart_id=nope").await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["errors"][0]["pointer"], "/cart_id", "{problem}");
        simulator.stop().await;
        app.stop().await.expect("stops");
    }
}
