//! The multi-row cart → order path: one batch, any mix of new, repeated and conflicting
//! carts, on both databases.

mod common;

use cartbus::domain::Cart;
use cartbus::domain::order::{Placement, Source};
use cartbus::store::orders;
use common::{Backend, Settings, TestApp};

fn parse(value: &serde_json::Value) -> Cart {
    Cart::parse(value).unwrap_or_else(|e| panic!("valid cart: {e:?}"))
}

#[tokio::test]
async fn a_batch_creates_each_cart_once_and_tells_duplicates_from_conflicts() {
    for backend in
        Backend::all("a_batch_creates_each_cart_once_and_tells_duplicates_from_conflicts").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let app =
            TestApp::spawn(&Settings::new(dir.path(), &backend).set("CARTBUS_CONSUMER", "off"))
                .await;
        let earlier = parse(&common::cart());
        let mut tx = app.state.db.begin().await.expect("begin");
        let before = orders::place(&mut tx, &earlier, &earlier.payload_hash(), Source::Direct)
            .await
            .expect("place");
        tx.commit().await.expect("commit");

        let a = common::cart_with_lines(3);
        let mut a_changed = a.clone();
        a_changed["customer"]["name"] = serde_json::json!("Mallory");
        let (a, a_changed, b) = (
            parse(&a),
            parse(&a_changed),
            parse(&common::cart_with_lines(700 / 2)),
        );
        let mut earlier_changed = common::cart();
        earlier_changed["cart_id"] = serde_json::json!(earlier.cart_id.to_string());
        earlier_changed["shipping_address"]["city"] = serde_json::json!("Leeds");
        let earlier_changed = parse(&earlier_changed);
        let batch = [&a, &a_changed, &b, &a, &earlier, &earlier_changed];
        let hashes: Vec<String> = batch.iter().map(|c| c.payload_hash()).collect();
        let carts: Vec<(&Cart, &str)> = batch
            .iter()
            .copied()
            .zip(hashes.iter().map(String::as_str))
            .collect();
        let mut tx = app.state.db.begin().await.expect("begin");
        let placed = orders::place_many(&mut tx, &carts, Source::Queue, chrono::Utc::now(), None)
            .await
            .expect("place_many");
        tx.commit().await.expect("commit");

        let a_id = match placed[0] {
            Placement::Created(id) => id,
            other => panic!("first sight of a: {other:?}"),
        };
        assert_eq!(placed[1], Placement::Conflict(a_id), "{backend:?}");
        assert!(matches!(placed[2], Placement::Created(id) if id != a_id));
        assert_eq!(placed[3], Placement::Duplicate(a_id));
        assert_eq!(placed[4], Placement::Duplicate(before.order_id()));
        assert_eq!(placed[5], Placement::Conflict(before.order_id()));

        assert_eq!(common::count_orders(&app.state).await, 3);
        let order = app.wait_for_order(&a.cart_id.to_string()).await;
        assert_eq!(
            order["customer"]["name"], "Ada Lovelace",
            "the first payload wins"
        );
        assert_eq!(order["lines"].as_array().map(Vec::len), Some(3));
        assert_eq!(order["status_history"].as_array().map(Vec::len), Some(1));
        let order = app.wait_for_order(&b.cart_id.to_string()).await;
        assert_eq!(order["lines"].as_array().map(Vec::len), Some(350));
        app.stop().await.expect("clean stop");
    }
}
