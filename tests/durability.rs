//! Nothing accepted is lost and nothing is ordered twice when the process is killed
//! (SIGKILL: no shutdown code runs).

mod common;

use common::{
    Backend, Process, Settings, client, eventually, order_counts, post_cart, queued_messages,
};
use serde_json::Value;

#[tokio::test]
async fn queued_carts_survive_sigkill_and_become_orders_exactly_once() {
    for backend in Backend::all("queued_carts_survive_sigkill_and_become_orders_exactly_once").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings::new(dir.path(), &backend);
        let http = client();

        let mut first = Process::start(&settings, &[("CARTBUS_CONSUMER", "off")]);
        let mut cart_ids = Vec::new();
        for _ in 0..200 {
            let cart = common::cart();
            let response = post_cart(&http, &first.base, &cart).await;
            assert_eq!(response.status(), 202, "{backend:?}");
            cart_ids.push(cart["cart_id"].as_str().expect("id").to_string());
        }
        first.kill();
        assert_eq!(
            queued_messages(dir.path()).await,
            200,
            "every 202 is on disk"
        );

        let second = Process::start(&settings, &[]);
        eventually("200 orders", || async {
            (order_counts(&backend, dir.path()).await.0 >= 200).then_some(())
        })
        .await;
        eventually("queue empty", || async {
            (queued_messages(dir.path()).await == 0).then_some(())
        })
        .await;
        assert_eq!(
            order_counts(&backend, dir.path()).await,
            (200, 200),
            "{backend:?}"
        );
        for cart_id in cart_ids.iter().step_by(20) {
            let (status, checkout) =
                common::get_json(&http, &second.base, &format!("/v1/checkouts/{cart_id}")).await;
            assert_eq!(
                (status, checkout["status"].as_str()),
                (200, Some("ordered"))
            );
        }
    }
}

#[tokio::test]
async fn a_consumer_killed_between_commit_and_settle_makes_no_second_order() {
    for backend in
        Backend::all("a_consumer_killed_between_commit_and_settle_makes_no_second_order").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings::new(dir.path(), &backend);
        let http = client();

        // The consumer commits, then stops dead before it settles.
        let mut first = Process::start(
            &settings,
            &[("FAILPOINTS", "consumer-before-settle=return")],
        );
        let cart = common::cart();
        let cart_id = cart["cart_id"].as_str().expect("id").to_string();
        assert_eq!(post_cart(&http, &first.base, &cart).await.status(), 202);
        let order = common::wait_for_order(&http, &first.base, &cart_id).await;
        assert_eq!(
            queued_messages(dir.path()).await,
            1,
            "committed but not settled"
        );
        first.kill();

        // Restarted, it gets the message back, sees the order, and only settles.
        let second = Process::start(&settings, &[]);
        eventually("redelivered message settled", || async {
            (queued_messages(dir.path()).await == 0).then_some(())
        })
        .await;
        assert_eq!(
            order_counts(&backend, dir.path()).await,
            (1, 1),
            "{backend:?}"
        );
        let (_, checkout) =
            common::get_json(&http, &second.base, &format!("/v1/checkouts/{cart_id}")).await;
        assert_eq!(checkout["order_id"], order["order_id"]);
        let metrics = common::metrics_text(&http, &second.base).await;
        assert!(
            metrics.contains(r#"cartbus_consumer_messages_total{outcome="duplicate"} 1"#),
            "the redelivery was recognised as a duplicate:\n{metrics}"
        );
        let _: Value = order;
    }
}

#[tokio::test]
async fn killed_in_the_middle_of_a_batched_drain_every_cart_is_still_one_order() {
    for backend in
        Backend::all("killed_in_the_middle_of_a_batched_drain_every_cart_is_still_one_order").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings::new(dir.path(), &backend);
        let http = client();
        const CARTS: usize = 3000;

        // A backlog, queued with no consumer.
        let producer = Process::start(&settings, &[("CARTBUS_CONSUMER", "off")]);
        let carts: Vec<Value> = (0..CARTS).map(|_| common::cart()).collect();
        for chunk in carts.chunks(50) {
            let answers = futures::future::join_all(
                chunk
                    .iter()
                    .map(|cart| post_cart(&http, &producer.base, cart)),
            )
            .await;
            assert!(answers.iter().all(|r| r.status() == 202));
        }
        drop(producer);

        // Drain in batches (the next batch read ahead), and SIGKILL part way through.
        let mut drainer = Process::start(&settings, &[("CARTBUS_CONSUMER_BATCH", "20")]);
        eventually("the drain under way", || async {
            (order_counts(&backend, dir.path()).await.0 >= 500).then_some(())
        })
        .await;
        drainer.kill();
        let at_kill = order_counts(&backend, dir.path()).await.0;
        assert!(
            at_kill < CARTS as i64,
            "killed mid-drain ({at_kill} of {CARTS} ordered)"
        );

        let _finisher = Process::start(&settings, &[]);
        eventually("every cart ordered and the queue empty", || async {
            (order_counts(&backend, dir.path()).await.0 >= CARTS as i64
                && queued_messages(dir.path()).await == 0)
                .then_some(())
        })
        .await;
        assert_eq!(
            order_counts(&backend, dir.path()).await,
            (CARTS as i64, CARTS as i64),
            "{backend:?}: exactly one order per cart"
        );
    }
}
