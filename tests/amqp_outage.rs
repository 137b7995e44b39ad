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

/// A log sink for `tracing_subscriber`: every line written, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
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
    // What cartbus logs on this test's thread (its runtime is single-threaded, so every
    // task of the app it spawns logs here), as JSON lines.
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish(),
    );
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
    // The log says when the queue was lost and when it was back, with the count in
    // between, not a line per checkout (sends that fail together at the start of the
    // outage may report it more than once, never once per checkout).
    let events = logs.events();
    let lost = events
        .iter()
        .filter(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("queue lost"))
        })
        .count();
    let back: Vec<u64> = events
        .iter()
        .filter(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("queue back"))
        })
        .filter_map(|e| e["fields"]["checkouts_not_queued"].as_u64())
        .collect();
    assert!(
        (1..=3).contains(&lost) && lost == back.len(),
        "{lost} 'queue lost' and {} 'queue back' lines for {direct} direct writes",
        back.len()
    );
    assert_eq!(
        back.iter().sum::<u64>(),
        direct as u64,
        "the 'queue back' lines count every checkout written directly"
    );
    assert!(
        !events.iter().any(|e| e["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("writing the order directly"))),
        "no line per checkout at info or above"
    );
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
