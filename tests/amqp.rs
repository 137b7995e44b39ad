//! The AMQP 1.0 backend against a real RabbitMQ (and PostgreSQL where the test says so).
//! Every test uses its own queue, so they run side by side; the tests that stop the
//! broker live in `amqp_outage.rs`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::broker::{self, Raw};
use common::{Backend, Process, Settings, TestApp, client, eventually, order_counts, post_cart};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Settings for an instance on `queue` of the test broker, orders on `backend`.
fn on_broker(dir: &std::path::Path, backend: &Backend, url: &str, queue: &str) -> Settings {
    Settings::new(dir, backend)
        .set("CARTBUS_QUEUE_URL", url)
        .set("CARTBUS_CART_ADDRESS", format!("/queue/{queue}"))
}

/// PostgreSQL when the test machine has it (the production pairing), else SQLite.
async fn orders_backend(test: &str) -> Backend {
    match common::postgres_admin_url(test) {
        Some(admin) => Backend::Postgres(common::fresh_postgres(&admin).await),
        None => Backend::Sqlite,
    }
}

#[tokio::test]
async fn a_thousand_carts_through_the_broker_become_a_thousand_orders_once() {
    const TEST: &str = "a_thousand_carts_through_the_broker_become_a_thousand_orders_once";
    let Some(url) = broker::url(TEST) else { return };
    let backend = orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&on_broker(dir.path(), &backend, &url, &queue)).await;
    broker::wait_connected(&app.state).await;

    let carts: Vec<Value> = (0..1000).map(|_| common::cart()).collect();
    let statuses: Vec<u16> = futures::stream::iter(&carts)
        .map(|cart| async { app.post_cart(cart).await.status().as_u16() })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every cart queued: {:?}",
        statuses.iter().filter(|s| **s != 202).collect::<Vec<_>>()
    );

    eventually("1000 orders", || async {
        (common::count_orders(&app.state).await >= 1000).then_some(())
    })
    .await;
    eventually("the broker queue empty", || async {
        (broker::depth(&queue) == Some(0)).then_some(())
    })
    .await;
    assert_eq!(order_counts(&backend, dir.path()).await, (1000, 1000));
    for cart in carts.iter().step_by(97) {
        let order = app
            .wait_for_order(cart["cart_id"].as_str().expect("id"))
            .await;
        assert_eq!(order["source"], "queue");
        assert_eq!(order["total"], cart["total"]);
    }
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn the_wire_format_is_what_an_independent_client_reads() {
    const TEST: &str = "the_wire_format_is_what_an_independent_client_reads";
    let (Some(url), Some(python)) = (broker::url(TEST), broker::python(TEST)) else {
        return;
    };
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings =
        on_broker(dir.path(), &Backend::Sqlite, &url, &queue).set("CARTBUS_CONSUMER", "off");
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);

    let output = tokio::process::Command::new(&python)
        .arg(interop_script("receive.py"))
        .arg(&url)
        .arg(format!("/amq/queue/{queue}"))
        .output()
        .await
        .expect("run python");
    assert!(
        output.status.success(),
        "receive.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("receive.py prints JSON");
    assert_eq!(seen["message_id"], cart["cart_id"]);
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["durable"], true);
    assert_eq!(
        seen["body_type"], "data",
        "a data section, not an amqp-value"
    );
    let envelope: Value =
        serde_json::from_str(seen["body"].as_str().expect("body")).expect("body is JSON");
    assert_eq!(envelope["schema"], 1);
    assert_eq!(envelope["cart"]["cart_id"], cart["cart_id"]);
    assert_eq!(envelope["cart"]["lines"], cart["lines"]);
    assert!(envelope["accepted_at"].is_string());
    assert_eq!(seen["properties"]["schema"], json!([1, "int32"]));
    assert_eq!(seen["properties"]["total"], json!([cart["total"], "int"]));
    assert_eq!(seen["properties"]["currency"], json!(["GBP", "str"]));
    assert_eq!(seen["properties"]["country"], json!(["GB", "str"]));
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn a_cart_sent_by_an_independent_client_becomes_an_order() {
    const TEST: &str = "a_cart_sent_by_an_independent_client_becomes_an_order";
    let (Some(url), Some(python)) = (broker::url(TEST), broker::python(TEST)) else {
        return;
    };
    let queue = broker::fresh_queue();
    broker::declare(&queue);
    let cart = common::cart();
    let cart_id = cart["cart_id"].as_str().expect("id").to_string();
    let envelope = json!({ "schema": 1, "cart": cart, "accepted_at": "2026-11-26T08:00:00Z" });

    let mut child = tokio::process::Command::new(&python)
        .arg(interop_script("send.py"))
        .arg(&url)
        .arg(format!("/amq/queue/{queue}"))
        .arg(&cart_id)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&serde_json::to_vec(&envelope).expect("json"))
        .await
        .expect("write envelope");
    drop(stdin);
    let output = child.wait_with_output().await.expect("send.py");
    assert!(
        output.status.success(),
        "send.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&on_broker(dir.path(), &Backend::Sqlite, &url, &queue)).await;
    let order = app.wait_for_order(&cart_id).await;
    assert_eq!(order["source"], "queue");
    assert_eq!(order["total"], cart["total"]);
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn an_unreachable_broker_leaves_the_service_ready_and_checkouts_direct() {
    // Two brokers that are not there: a closed port (refused at once) and a port that
    // accepts TCP and never says a word (a hung broker: the connect timeout must bite).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    for port in [closed, silent_port] {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings::new(dir.path(), &Backend::Sqlite)
            .set(
                "CARTBUS_QUEUE_URL",
                format!("amqp://guest:guest@127.0.0.1:{port}"),
            )
            .set("CARTBUS_AMQP_CONNECT_TIMEOUT_MS", "500");
        let app = TestApp::spawn(&settings).await;
        let (status, ready) = app.get_json("/health/ready").await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["queue_up"], false);
        for _ in 0..5 {
            let cart = common::cart();
            let started = Instant::now();
            let response = app.post_cart(&cart).await;
            assert_eq!(response.status(), 201, "port {port}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "direct write took {:?}",
                started.elapsed()
            );
            let order = app
                .wait_for_order(cart["cart_id"].as_str().expect("id"))
                .await;
            assert_eq!(order["source"], "direct");
        }
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_leaves_exactly_one_order_per_cart() {
    const TEST: &str = "a_consumer_killed_mid_stream_leaves_exactly_one_order_per_cart";
    let Some(url) = broker::url(TEST) else { return };
    let backend = orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = on_broker(dir.path(), &backend, &url, &queue);
    let http = client();

    // Queue 300 carts with no consumer running.
    let producer = Process::start(&settings, &[("CARTBUS_CONSUMER", "off")]);
    eventually("producer connected", || async {
        let (_, ready) = common::get_json(&http, &producer.base, "/health/ready").await;
        (ready["queue_up"] == true).then_some(())
    })
    .await;
    for _ in 0..300 {
        let response = post_cart(&http, &producer.base, &common::cart()).await;
        assert_eq!(response.status(), 202);
    }
    assert_eq!(broker::depth(&queue), Some(300));

    // A consumer that freezes after its first commit, before settling: kill it there.
    let mut doomed = Process::start(
        &settings.set("CARTBUS_INSTANCE", "doomed"),
        &[("FAILPOINTS", "consumer-before-settle=return")],
    );
    eventually("a batch committed but not settled", || async {
        (order_counts(&backend, dir.path()).await.0 > 0).then_some(())
    })
    .await;
    doomed.kill();
    let committed_unsettled = order_counts(&backend, dir.path()).await.0;
    assert_eq!(
        broker::depth(&queue),
        Some(300),
        "the committed batch was never accepted, so the broker still has all 300"
    );

    // The next consumer gets the killed one's deliveries again; those are no-ops.
    let settings = on_broker(dir.path(), &backend, &url, &queue);
    let survivor = Process::start(&settings, &[]);
    eventually("300 orders and an empty queue", || async {
        (order_counts(&backend, dir.path()).await.0 >= 300 && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(order_counts(&backend, dir.path()).await, (300, 300));
    let metrics = http
        .get(format!("{}/metrics", survivor.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let duplicates = metric(
        &metrics,
        "cartbus_consumer_messages_total{outcome=\"duplicate\"}",
    );
    assert_eq!(
        duplicates, committed_unsettled as f64,
        "each redelivered, already-committed cart was a no-op"
    );
    drop(producer);
    drop(survivor);
    broker::delete(&queue);
}

#[tokio::test]
async fn bad_messages_are_recorded_then_rejected_into_the_dead_letter_queue() {
    const TEST: &str = "bad_messages_are_recorded_then_rejected_into_the_dead_letter_queue";
    let Some(url) = broker::url(TEST) else { return };
    for with_dlx in [true, false] {
        let queue = broker::fresh_queue();
        broker::declare(&queue);
        let dlq = with_dlx.then(|| broker::dead_letter_policy(&queue));
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&on_broker(dir.path(), &Backend::Sqlite, &url, &queue)).await;
        broker::wait_connected(&app.state).await;

        // A conflict: the same cart_id again with a different payload.
        let cart = common::cart();
        let cart_id = cart["cart_id"].as_str().expect("id").to_string();
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        let original = app.wait_for_order(&cart_id).await;
        let mut changed = cart.clone();
        changed["customer"]["name"] = json!("Mallory");
        assert_eq!(app.post_cart(&changed).await.status(), 202);

        // A future schema and plain garbage, from some other producer.
        let future = common::cart();
        let future_id = future["cart_id"].as_str().expect("id").to_string();
        let future_body =
            serde_json::to_vec(&json!({ "schema": 99, "cart": future })).expect("json");
        broker::publish(
            &url,
            &format!("/amq/queue/{queue}"),
            &[
                Raw {
                    message_id: &future_id,
                    body: &future_body,
                    schema: 99,
                },
                Raw {
                    message_id: "poison-1",
                    body: b"{not json",
                    schema: 1,
                },
            ],
        )
        .await;

        let recorded = eventually("three dead letters recorded", || async {
            let recorded = broker::recorded_dead_letters(&app.state).await;
            (recorded.len() >= 3).then_some(recorded)
        })
        .await;
        let mut recorded: Vec<(String, String)> = recorded;
        recorded.sort();
        let mut expected = vec![
            (cart_id.clone(), "conflict".to_string()),
            (future_id.clone(), "unknown-schema".to_string()),
            ("poison-1".to_string(), "invalid".to_string()),
        ];
        expected.sort();
        assert_eq!(recorded, expected, "with_dlx={with_dlx}");

        eventually("the cart queue empty", || async {
            (broker::depth(&queue) == Some(0)).then_some(())
        })
        .await;
        if let Some(dlq) = &dlq {
            eventually("three messages in the dead-letter queue", || async {
                (broker::depth(dlq) == Some(3)).then_some(())
            })
            .await;
        }
        let (_, order) = app
            .get_json(original["order_url"].as_str().unwrap_or(&format!(
                "/v1/orders/{}",
                original["order_id"].as_str().expect("order id")
            )))
            .await;
        assert_eq!(
            order["customer"]["name"], "Ada Lovelace",
            "original untouched"
        );
        let (_, checkout) = app.get_json(&format!("/v1/checkouts/{future_id}")).await;
        assert_eq!(checkout["status"], "rejected", "{checkout}");
        app.stop().await.expect("clean stop");
        broker::delete(&queue);
        if let Some(dlq) = dlq {
            broker::delete(&dlq);
        }
    }
}

fn interop_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// The value of one sample line of Prometheus text, 0 when absent.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}
