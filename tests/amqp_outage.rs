//! The broker goes away under cartbus: `rabbitmqctl stop_app` / `start_app`. These stop
//! the shared test broker, so they live in their own test binary (cargo runs binaries one
//! at a time) and take turns inside it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::broker;
use common::{Backend, TestApp, eventually, order_counts};
use tokio::sync::Mutex;

static BROKER: Mutex<()> = Mutex::const_new(());

/// Stops the broker application; starts it again when dropped, even if the test fails.
struct Outage;

impl Outage {
    fn begin() -> Outage {
        broker::rabbitmqctl(&["stop_app"]);
        Outage
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        broker::rabbitmqctl(&["start_app"]);
        broker::rabbitmqctl(&["await_startup"]);
    }
}

/// One answered checkout: cart id, status, how long it took, and when it was sent.
struct Answer {
    cart_id: String,
    status: u16,
    took: Duration,
    sent_at: Instant,
}

#[tokio::test]
async fn the_broker_stopping_under_load_fails_no_request_and_loses_no_cart() {
    const TEST: &str = "the_broker_stopping_under_load_fails_no_request_and_loses_no_cart";
    let Some(url) = broker::url(TEST) else { return };
    let _turn = BROKER.lock().await;
    let backend = broker::orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Arc::new(TestApp::spawn(&broker::settings(dir.path(), &backend, &url, &queue)).await);
    broker::wait_connected(&app.state).await;

    // Eight storefront clients posting carts back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let cart = common::cart();
                    let sent_at = Instant::now();
                    let status = app.post_cart(&cart).await.status().as_u16();
                    answers.push(Answer {
                        cart_id: cart["cart_id"].as_str().expect("id").to_string(),
                        status,
                        took: sent_at.elapsed(),
                        sent_at,
                    });
                }
                answers
            })
        })
        .collect();

    eventually("some carts queued before the outage", || async {
        (common::count_orders(&app.state).await >= 50).then_some(())
    })
    .await;
    let outage = tokio::task::spawn_blocking(Outage::begin)
        .await
        .expect("stop_app");
    let down_since = Instant::now();
    eventually("the service noticing the broker is gone", || async {
        (!app.state.queue.is_healthy()).then_some(())
    })
    .await;
    // Keep the load on while the broker is down.
    while down_since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || drop(outage))
        .await
        .expect("start_app");
    eventually("the backend reconnecting by itself", || async {
        app.state.queue.is_healthy().then_some(())
    })
    .await;
    let reconnected_at = Instant::now();
    while reconnected_at.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("client task"));
    }

    let failed: Vec<u16> = answers
        .iter()
        .map(|a| a.status)
        .filter(|s| *s != 201 && *s != 202)
        .collect();
    assert!(failed.is_empty(), "no request fails: {failed:?}");
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(
        slowest <= Duration::from_secs(2),
        "slowest checkout took {slowest:?}"
    );
    let direct = answers.iter().filter(|a| a.status == 201).count();
    assert!(direct > 0, "carts went direct while the broker was down");
    assert!(
        answers
            .iter()
            .any(|a| a.status == 202 && a.sent_at > reconnected_at),
        "carts queue again after the reconnect"
    );

    let accepted = answers.len() as i64;
    eventually("every accepted cart ordered", || async {
        (order_counts(&backend, dir.path()).await.0 >= accepted && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(
        order_counts(&backend, dir.path()).await,
        (accepted, accepted),
        "exactly one order per accepted cart ({direct} direct)"
    );
    for answer in answers.iter().step_by(answers.len() / 20 + 1) {
        assert_eq!(
            common::count_orders_for(&app.state, &answer.cart_id).await,
            1
        );
    }
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await.expect("clean stop"),
        Err(_) => panic!("clients still hold the app"),
    }
    broker::delete(&queue);
}

#[tokio::test]
async fn a_backlog_survives_a_broker_restart() {
    const TEST: &str = "a_backlog_survives_a_broker_restart";
    let Some(url) = broker::url(TEST) else { return };
    let _turn = BROKER.lock().await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = broker::settings(dir.path(), &Backend::Sqlite, &url, &queue);
    let producer = TestApp::spawn(&settings.set("CARTBUS_CONSUMER", "off")).await;
    broker::wait_connected(&producer.state).await;
    for _ in 0..200 {
        assert_eq!(producer.post_cart(&common::cart()).await.status(), 202);
    }
    assert_eq!(broker::depth(&queue), Some(200));

    tokio::task::spawn_blocking(|| drop(Outage::begin()))
        .await
        .expect("restart the broker");
    assert_eq!(
        broker::depth(&queue),
        Some(200),
        "durable queue and durable messages survive the restart"
    );
    eventually("the producer reconnecting by itself", || async {
        producer.state.queue.is_healthy().then_some(())
    })
    .await;

    let settings = broker::settings(dir.path(), &Backend::Sqlite, &url, &queue);
    let consumer = TestApp::spawn(&settings).await;
    eventually("200 orders", || async {
        (common::count_orders(&consumer.state).await >= 200 && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(order_counts(&Backend::Sqlite, dir.path()).await, (200, 200));
    producer.stop().await.expect("clean stop");
    consumer.stop().await.expect("clean stop");
    broker::delete(&queue);
}
