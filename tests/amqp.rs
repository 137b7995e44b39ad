//! The AMQP 1.0 backend against a real RabbitMQ (and PostgreSQL where the test says so).
//! Every test uses its own queue, so they run side by side; the tests that stop the
//! broker live in `amqp_outage.rs`.

mod common;

use std::time::{Duration, Instant};

use common::broker::{self, Raw};
use common::{Backend, Process, Settings, TestApp, client, eventually, order_counts, post_cart};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn a_thousand_carts_through_the_broker_become_a_thousand_orders_once() {
    const TEST: &str = "a_thousand_carts_through_the_broker_become_a_thousand_orders_once";
    let Some(url) = broker::url(TEST) else { return };
    let backend = broker::orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&broker::settings(dir.path(), &backend, &url, &queue)).await;
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
        broker::settings(dir.path(), &Backend::Sqlite, &url, &queue).set("CARTBUS_CONSUMER", "off");
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);

    let address = format!("/amq/queue/{queue}");
    let stdout = broker::interop(&python, "receive.py", &[&url, &address], b"").await;
    let seen: Value = serde_json::from_slice(&stdout).expect("receive.py prints JSON");
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

    let address = format!("/amq/queue/{queue}");
    let body = serde_json::to_vec(&envelope).expect("json");
    broker::interop(&python, "send.py", &[&url, &address, &cart_id], &body).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&broker::settings(
        dir.path(),
        &Backend::Sqlite,
        &url,
        &queue,
    ))
    .await;
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
    let backend = broker::orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = broker::settings(dir.path(), &backend, &url, &queue);
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
    let settings = broker::settings(dir.path(), &backend, &url, &queue);
    let survivor = Process::start(&settings, &[]);
    eventually("300 orders and an empty queue", || async {
        (order_counts(&backend, dir.path()).await.0 >= 300 && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(order_counts(&backend, dir.path()).await, (300, 300));
    let metrics = common::metrics_text(&http, &survivor.base).await;
    let duplicates = common::metric(
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
        // No conflict check at intake: the conflicting cart is to reach the consumer.
        let app = TestApp::spawn(
            &broker::settings(dir.path(), &Backend::Sqlite, &url, &queue)
                .set("CARTBUS_CONFLICT_CHECK_MS", "0"),
        )
        .await;
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

#[tokio::test]
async fn amqps_connects_through_tls_with_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    const TEST: &str = "amqps_connects_through_tls_with_a_private_ca";
    let Some(url) = broker::url(TEST) else { return };
    // A private CA and a certificate for localhost, signed by it.
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");

    // TLS in front of the test broker's plain port: what a broker's amqps port does.
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server TLS config");
    let acceptor = TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tls_port = listener.local_addr().expect("addr").port();
    let broker_port = url::Url::parse(&url)
        .expect("broker URL")
        .port()
        .unwrap_or(5672);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) =
                    tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });

    let parsed = url::Url::parse(&url).expect("broker URL");
    let tls_url = format!(
        "amqps://{}:{}@localhost:{tls_port}",
        parsed.username(),
        parsed.password().unwrap_or_default()
    );
    let queue = broker::fresh_queue();
    let settings = broker::settings(dir.path(), &Backend::Sqlite, &tls_url, &queue)
        .set("CARTBUS_AMQP_CA_FILE", ca_file.display().to_string());
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    let order = app
        .wait_for_order(cart["cart_id"].as_str().expect("id"))
        .await;
    assert_eq!(order["source"], "queue");
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn broker_credentials_never_reach_the_logs() {
    const TEST: &str = "broker_credentials_never_reach_the_logs";
    let Some(url) = broker::url(TEST) else { return };
    let parsed = url::Url::parse(&url).expect("broker URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port().unwrap_or(5672);
    let secret = "n0t-the-Passw0rd-xyzzy";
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set(
            "CARTBUS_QUEUE_URL",
            format!("amqp://guest:{secret}@{host}:{port}"),
        )
        .set("CARTBUS_LOG", "debug");
    let http = client();
    let process = Process::start(&settings, &[]);
    // A wrong password: the broker refuses the login, the service logs why, goes direct.
    eventually("the refused login logged", || async {
        process.logs_contain("broker unreachable").then_some(())
    })
    .await;
    assert_eq!(
        post_cart(&http, &process.base, &common::cart())
            .await
            .status(),
        201
    );
    let logs = process.logs();
    assert!(
        logs.iter()
            .all(|line| !line.contains(secret) && !line.contains("n0t-the")),
        "the password is in the logs"
    );
    assert!(
        logs.iter()
            .any(|line| line.contains(&format!("{host}:{port}"))),
        "the endpoint (without credentials) is logged"
    );
}

#[tokio::test]
async fn broker_setup_declares_durable_queues_and_prints_the_dead_letter_policy() {
    const TEST: &str = "broker_setup_declares_durable_queues_and_prints_the_dead_letter_policy";
    let Some(url) = broker::url(TEST) else { return };
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(["broker", "setup"])
        .env("CARTBUS_QUEUE_URL", &url)
        .env("CARTBUS_CART_ADDRESS", format!("/queue/{queue}"))
        .env("CARTBUS_DATA_DIR", dir.path())
        .output()
        .await
        .expect("run cartbus broker setup");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed =
        broker::rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "durable"]);
    for name in [queue.clone(), format!("{queue}.dlq")] {
        assert!(
            listed.lines().any(|l| l.trim() == format!("{name}\ttrue")),
            "{name} declared durable: {listed}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "rabbitmqctl set_policy {queue}-dlx '^{queue}$'"
        )) && stdout.contains(&format!(
            r#"'{{"dead-letter-exchange":"","dead-letter-routing-key":"{queue}.dlq"}}' --apply-to queues"#
        )),
        "{stdout}"
    );
    broker::delete(&queue);
    broker::delete(&format!("{queue}.dlq"));
}

#[tokio::test]
async fn a_message_that_cannot_be_decoded_is_dead_lettered_not_stuck() {
    const TEST: &str = "a_message_that_cannot_be_decoded_is_dead_lettered_not_stuck";
    let (Some(url), Some(python)) = (broker::url(TEST), broker::python(TEST)) else {
        return;
    };
    let queue = broker::fresh_queue();
    broker::declare(&queue);
    let address = format!("/amq/queue/{queue}");
    broker::interop(
        &python,
        "send_list_property.py",
        &[&url, &address, "odd-1"],
        b"",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&broker::settings(
        dir.path(),
        &Backend::Sqlite,
        &url,
        &queue,
    ))
    .await;
    // It comes first; a good cart behind it must still get through.
    let cart = common::cart();
    broker::wait_connected(&app.state).await;
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    app.wait_for_order(cart["cart_id"].as_str().expect("id"))
        .await;
    let recorded = eventually("the odd message recorded", || async {
        let recorded = broker::recorded_dead_letters(&app.state).await;
        (!recorded.is_empty()).then_some(recorded)
    })
    .await;
    assert_eq!(recorded, vec![(String::new(), "invalid".to_string())]);
    eventually("the queue empty", || async {
        (broker::depth(&queue) == Some(0)).then_some(())
    })
    .await;
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

/// A TCP proxy to the broker that can be frozen: bytes stop flowing both ways, the
/// connections stay open. That is a hung broker (a paused VM, a full disk, a network
/// partition), the case in which a send never resolves on its own.
struct FreezableProxy {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl FreezableProxy {
    async fn start(target_port: u16) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                tokio::spawn(Self::pipe(client_read, upstream_write, watch.clone()));
                tokio::spawn(Self::pipe(upstream_read, client_write, watch.clone()));
            }
        });
        FreezableProxy { port, frozen }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Bytes read just before a freeze are held until the thaw, like a stalled link.
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

#[tokio::test]
async fn a_hung_broker_costs_each_checkout_at_most_the_bound_then_none() {
    const TEST: &str = "a_hung_broker_costs_each_checkout_at_most_the_bound_then_none";
    let Some(url) = broker::url(TEST) else { return };
    let parsed = url::Url::parse(&url).expect("broker URL");
    let proxy = FreezableProxy::start(parsed.port().unwrap_or(5672)).await;
    let proxied = format!(
        "amqp://{}:{}@127.0.0.1:{}",
        parsed.username(),
        parsed.password().unwrap_or_default(),
        proxy.port
    );
    let backend = broker::orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = broker::settings(dir.path(), &backend, &proxied, &queue)
        .set("CARTBUS_AMQP_CONNECT_TIMEOUT_MS", "500");
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let mut accepted = Vec::new();
    for _ in 0..20 {
        let cart = common::cart();
        assert_eq!(app.post_cart(&cart).await.status(), 202);
        accepted.push(cart);
    }

    proxy.freeze(true);
    // Checkouts during the hang: each within the bound, all answered 201 (direct).
    let mut slowest = Duration::ZERO;
    let mut during = Vec::new();
    for _ in 0..8 {
        let batch: Vec<Value> = (0..4).map(|_| common::cart()).collect();
        let answers: Vec<(u16, Duration)> =
            futures::future::join_all(batch.iter().map(|cart| async {
                let started = Instant::now();
                let status = app.post_cart(cart).await.status().as_u16();
                (status, started.elapsed())
            }))
            .await;
        for (status, took) in &answers {
            assert_eq!(
                *status, 201,
                "a checkout during the hang is written directly"
            );
            slowest = slowest.max(*took);
        }
        during.push(
            answers
                .iter()
                .map(|(_, took)| *took)
                .max()
                .unwrap_or_default(),
        );
        accepted.extend(batch);
    }
    assert!(
        slowest <= Duration::from_secs(2),
        "slowest checkout {slowest:?}"
    );
    assert!(
        !app.state.queue.is_healthy(),
        "the hung connection was given up after repeated timeouts"
    );
    // Once the breaker is open, a checkout no longer waits for the broker at all.
    let last = during.last().copied().unwrap_or_default();
    assert!(
        last < Duration::from_millis(500),
        "checkouts after the breaker opened took {last:?}"
    );

    proxy.freeze(false);
    broker::wait_connected(&app.state).await;
    let cart = common::cart();
    assert_eq!(
        app.post_cart(&cart).await.status(),
        202,
        "queued again after the thaw"
    );
    accepted.push(cart);

    // Sends whose outcome was unknown may have reached the queue as well as the database:
    // still exactly one order per cart.
    let expected = accepted.len() as i64;
    eventually("every cart ordered and the queue empty", || async {
        (order_counts(&backend, dir.path()).await.0 >= expected && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(
        order_counts(&backend, dir.path()).await,
        (expected, expected)
    );
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn a_pause_on_a_broker_gives_back_what_was_prefetched() {
    const TEST: &str = "a_pause_on_a_broker_gives_back_what_was_prefetched";
    let Some(url) = broker::url(TEST) else { return };
    let backend = broker::orders_backend(TEST).await;
    let queue = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "broker-pause-test-token-0123";
    let settings = broker::settings(dir.path(), &backend, &url, &queue)
        .set("CARTBUS_ADMIN_TOKEN", token)
        .set("CARTBUS_CONSUMER_PREFETCH", "100")
        // Small batches, so that the drain is still under way when the pause lands.
        .set("CARTBUS_CONSUMER_BATCH", "10");
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let admin = |path: &'static str, body: Value| {
        let request = app
            .client
            .post(app.url(path))
            .bearer_auth(token)
            .json(&body);
        async move {
            let response = request.send().await.expect("admin call");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, _) = admin("/v1/admin/consumer/pause", json!({ "wait_seconds": 10 })).await;
    assert_eq!(status, 200);
    let carts: Vec<Value> = (0..1000).map(|_| common::cart()).collect();
    let statuses: Vec<u16> = futures::stream::iter(&carts)
        .map(|cart| async { app.post_cart(cart).await.status().as_u16() })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202));
    assert_eq!(broker::depth(&queue), Some(1000));

    let (status, _) = admin("/v1/admin/consumer/resume", json!({})).await;
    assert_eq!(status, 200);
    eventually("the consumer busy", || async {
        (common::count_orders(&app.state).await > 0).then_some(())
    })
    .await;
    let (status, drained) = admin("/v1/admin/consumer/pause", json!({ "wait_seconds": 30 })).await;
    assert_eq!(
        (status, &drained["drained"]),
        (200, &json!(true)),
        "{drained}"
    );
    let orders = common::count_orders(&app.state).await;
    let waiting = broker::depth(&queue).unwrap_or(0) as i64;
    assert_eq!(
        broker::unacknowledged(&queue),
        Some(0),
        "nothing held by the paused consumer"
    );
    assert!(waiting > 0, "paused mid-backlog ({orders} orders)");
    assert_eq!(
        orders + waiting,
        1000,
        "every cart an order or still queued"
    );

    let (status, _) = admin("/v1/admin/consumer/resume", json!({})).await;
    assert_eq!(status, 200);
    eventually("every cart ordered", || async {
        (common::count_orders(&app.state).await >= 1000 && broker::depth(&queue) == Some(0))
            .then_some(())
    })
    .await;
    assert_eq!(order_counts(&backend, dir.path()).await, (1000, 1000));
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}
