//! The fulfilment hand-off (DESIGN §7) end to end: outbox relay to partners (exactly once
//! per address under concurrency, again after a relay dies holding a lease, retries then
//! `critical_error`), partners' signed status replies, and the partner simulator. Each
//! runs on the embedded queue and, when `CARTBUS_TEST_AMQP_URL` is set, on RabbitMQ.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use cartbus::domain::partner::{self as message, StatusReply};
use cartbus::queue::Property;
use common::broker;
use common::partners::*;
use common::{Backend, Process, TestApp, eventually, get_json, metric, metrics_text};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn two_relays_send_every_order_once_per_address_routed_by_region() {
    const TEST: &str = "two_relays_send_every_order_once_per_address_routed_by_region";
    let Some(admin) = common::postgres_admin_url(TEST) else {
        return;
    };
    for stack in stacks(TEST) {
        let backend = Backend::Postgres(common::fresh_postgres(&admin).await);
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = tag();
        // Two instances on one database and one queue (a shared queue file when embedded).
        let shared = |name: &str| {
            let data = dir.path().join(name);
            std::fs::create_dir_all(&data).expect("data dir");
            let mut s = settings(&data, &backend, &stack, &tag)
                .set("CARTBUS_INSTANCE", format!("relay-{name}"))
                .set("CARTBUS_RELAY_BATCH", "8");
            if let Stack::Embedded = stack {
                s = s.set(
                    "CARTBUS_QUEUE_URL",
                    format!("embedded:{}", dir.path().join("queue.db").display()),
                );
            }
            s
        };
        let a = TestApp::spawn(&shared("a")).await;
        let b = TestApp::spawn(&shared("b")).await;
        wait_ready(&a, &stack).await;
        wait_ready(&b, &stack).await;

        let places: [(&str, Option<&str>); 4] = [
            ("GB", Some("LND")),
            ("GB", Some("MAN")),
            ("FR", Some("IDF")),
            ("DE", None),
        ];
        let carts: Vec<Value> = (0..500)
            .map(|i| {
                let (country, region) = places[i % places.len()];
                // Every seventh is above the 10,000.00 audit threshold.
                let price = if i % 7 == 0 { 1_000_001 } else { 2_500 };
                cart_to(country, region, price)
            })
            .collect();
        let statuses: Vec<u16> = futures::stream::iter(carts.iter().enumerate())
            .map(|(i, cart)| {
                let app = if i % 2 == 0 { &a } else { &b };
                async move { app.post_cart(cart).await.status().as_u16() }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(
            statuses.iter().all(|s| *s == 202 || *s == 201),
            "{stack:?}: {statuses:?}"
        );
        wait_all_processed(&a, carts.len()).await;

        let orders = order_ids(&a).await;
        let mut expected: BTreeMap<&str, HashSet<Uuid>> = BTreeMap::new();
        let mut audited: HashSet<Uuid> = HashSet::new();
        for cart in &carts {
            let order_id = orders[&cart_id(cart)];
            let address = &cart["shipping_address"];
            let partner = partner_for(
                address["country"].as_str().unwrap_or_default(),
                address["region"].as_str(),
            );
            expected.entry(partner).or_default().insert(order_id);
            if cart["total"].as_i64().unwrap_or(0) > 1_000_000 {
                audited.insert(order_id);
            }
        }
        let status_address = a.state.config.fulfilment.status_address.clone();
        for (partner, ids) in &expected {
            let messages = take_all(&a.state.queue, &address_of(&a, partner), ids.len()).await;
            let got: Vec<Uuid> = messages
                .iter()
                .map(|m| Uuid::parse_str(&m.message_id).expect("message-id is an order id"))
                .collect();
            assert_eq!(got.len(), ids.len(), "{stack:?} {partner}: once each");
            assert_eq!(
                &got.iter().copied().collect::<HashSet<_>>(),
                ids,
                "{stack:?} {partner}"
            );
            for m in &messages {
                assert_eq!(m.correlation_id.as_deref(), Some(m.message_id.as_str()));
                assert_eq!(m.reply_to.as_deref(), Some(status_address.as_str()));
                assert_eq!(m.subject.as_deref(), Some("new-order"));
                assert_eq!(
                    m.properties.get("partner"),
                    Some(&Property::String(partner.to_string()))
                );
                let body: Value = serde_json::from_slice(&m.body).expect("JSON body");
                assert_eq!(body["schema"], 1);
                assert_eq!(body["partner"], *partner);
                assert_eq!(body["order_id"], m.message_id.as_str());
                assert_eq!(
                    m.properties.get("order_amount"),
                    Some(&Property::Long(body["total"].as_i64().expect("total")))
                );
                assert_eq!(body["lines"].as_array().map(Vec::len), Some(1));
            }
        }
        let audit_address = a.state.config.fulfilment.audit_address.clone();
        let copies = take_all(&a.state.queue, &audit_address, audited.len()).await;
        let copied: Vec<Uuid> = copies
            .iter()
            .map(|m| Uuid::parse_str(&m.message_id).expect("order id"))
            .collect();
        assert_eq!(
            copied.len(),
            audited.len(),
            "{stack:?}: one audit copy each"
        );
        assert_eq!(copied.into_iter().collect::<HashSet<_>>(), audited);

        // Both relays took part, and every order's history says it was sent.
        let rows = dispatch_rows(&a).await;
        let by: HashSet<Option<String>> = rows.iter().map(|(_, _, by)| by.clone()).collect();
        assert!(
            by.contains(&Some("relay-a".into())) && by.contains(&Some("relay-b".into())),
            "{stack:?}: both relays should have sent some orders: {by:?}"
        );
        let some_cart = cart_id(&carts[0]).to_string();
        let order = a.wait_for_order(&some_cart).await;
        let history: Vec<&str> = order["status_history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|e| e["status"].as_str())
            .collect();
        assert_eq!(history, ["placed", "sent_to_partner"], "{stack:?}");
        assert_eq!(order["transport_partner"], "contoso");
        common::note(&format!(
            "{stack:?}: two relays sent {} orders once each, {} audit copies",
            carts.len(),
            audited.len()
        ));
        a.stop().await.expect("a stops");
        b.stop().await.expect("b stops");
    }
}

#[tokio::test]
async fn a_relay_killed_mid_batch_leaves_its_rows_to_another_after_the_lease() {
    const TEST: &str = "a_relay_killed_mid_batch_leaves_its_rows_to_another_after_the_lease";
    for backend in Backend::all(TEST).await {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = settings(dir.path(), &backend, &Stack::Embedded, "unused")
            .set("CARTBUS_RELAY_LEASE_SECONDS", "2");
        // A sends its first batch, then freezes before marking it: killed there.
        let mut a = Process::start(
            &base.with("CARTBUS_INSTANCE", "relay-a"),
            &[("FAILPOINTS", "relay-after-send=return")],
        );
        let client = common::client();
        let carts: Vec<Value> = (0..40).map(|_| cart_to("GB", Some("LND"), 1_000)).collect();
        for cart in &carts {
            let status = common::post_cart(&client, &a.base, cart).await.status();
            assert!(status.is_success(), "{status}");
        }
        eventually("A's relay frozen after sending", || async {
            a.logs_contain("fail point hit").then_some(())
        })
        .await;
        eventually("all carts ordered by A", || async {
            let (orders, _) = common::order_counts(&backend, dir.path()).await;
            (orders == carts.len() as i64).then_some(())
        })
        .await;
        a.kill();

        let frozen = held_by(&backend, dir.path(), "relay-a").await;
        assert!(!frozen.is_empty(), "A held a batch when it died");
        let b = TestApp::spawn(&base.with("CARTBUS_INSTANCE", "relay-b")).await;
        wait_all_processed(&b, carts.len()).await;
        // B has sent everything it will (wait_all_processed); A's sends landed before it
        // died. The rows A held are sent again; of those, the batch frozen after its send
        // arrives more than once: A's dispatcher froze holding it, its lease lapsed and
        // A's own relay may have claimed and sent it again (and frozen too) before the
        // kill. Rows A held but had not (durably) sent when it was killed arrive once: a
        // kill can land between a send and its confirmation. A row A did not hold at the
        // kill is never sent twice.
        let messages = take_all(&b.state.queue, &address_of(&b, "contoso"), carts.len()).await;
        let mut copies: HashMap<Uuid, usize> = HashMap::new();
        for m in &messages {
            *copies
                .entry(Uuid::parse_str(&m.message_id).expect("order id"))
                .or_default() += 1;
        }
        assert_eq!(copies.len(), carts.len(), "{backend:?}: every order sent");
        for (order_id, n) in &copies {
            assert!(
                *n == 1 || frozen.contains(order_id),
                "{backend:?}: order {order_id} sent {n} times: again only if the dead relay held it"
            );
        }
        assert!(
            copies.values().any(|n| *n >= 2),
            "{backend:?}: the batch frozen after its send is sent again"
        );
        common::note(&format!(
            "{backend:?}: relay killed holding {} rows; they were sent again after the 2 s lease, the other {} once",
            frozen.len(),
            carts.len() - frozen.len()
        ));
        b.stop().await.expect("b stops");
    }
}

/// Outbox rows still locked by `instance` (read before anyone else may take them).
async fn held_by(backend: &Backend, data_dir: &std::path::Path, instance: &str) -> HashSet<Uuid> {
    use sqlx::Connection;
    const SQL: &str =
        "SELECT order_id FROM order_dispatch WHERE process_status = 'pending' AND locked_by = $1";
    let ids: Vec<Uuid> = match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data_dir.join("cartbus.db"))
                .read_only(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("open orders file");
            sqlx::query_scalar(SQL)
                .bind(instance)
                .fetch_all(&mut conn)
                .await
                .expect("read")
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_scalar(SQL)
                .bind(instance)
                .fetch_all(&mut conn)
                .await
                .expect("read")
        }
    };
    ids.into_iter().collect()
}

#[tokio::test]
async fn failed_sends_are_retried_then_left_as_critical_errors_for_a_person() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(dir.path(), &Backend::Sqlite, &Stack::Embedded, "unused")
        .set("CARTBUS_RELAY_MAX_RETRIES", "2")
        .set("CARTBUS_RELAY_RETRY_BASE_MS", "10");
    let process = Process::start(&settings, &[("FAILPOINTS", "relay-send=return")]);
    let client = common::client();
    for _ in 0..2 {
        let cart = cart_to("FR", None, 1_000);
        assert!(
            common::post_cart(&client, &process.base, &cart)
                .await
                .status()
                .is_success()
        );
    }
    assert_critical_errors(&client, &process.base, 2, 3).await;
    assert!(
        process
            .logs()
            .iter()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("critical_error"))
    );
}

/// On a broker the failure is real: a partner address the broker refuses.
#[tokio::test]
async fn a_partner_address_the_broker_refuses_ends_as_critical_error() {
    const TEST: &str = "a_partner_address_the_broker_refuses_ends_as_critical_error";
    let Some(url) = broker::url(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = tag();
    let settings = settings(dir.path(), &Backend::Sqlite, &Stack::Broker(url), &tag)
        .set("CARTBUS_RELAY_MAX_RETRIES", "1")
        .set("CARTBUS_RELAY_RETRY_BASE_MS", "10")
        .set(
            "CARTBUS_PARTNER_FABRIKAM_ADDRESS",
            format!("/exchange/cartbus-t-{tag}-missing/x"),
        );
    let app = TestApp::spawn(&settings).await;
    broker::wait_connected(&app.state).await;
    let cart = cart_to("FR", None, 1_000);
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    assert_critical_errors(&app.client, &app.base, 1, 2).await;
    // Checkouts still queue: the relay's connection is not the intake's.
    assert_eq!(app.post_cart(&cart_to("GB", None, 10)).await.status(), 202);
    app.stop().await.expect("stops");
}

/// A broker outage is the broker's fault, not the order's: however many times the relay
/// finds the broker gone, the rows keep their retries, and every order reaches its partner
/// once the broker is back. (Before, each try counted, and a long enough outage left every
/// waiting order in `critical_error` for a person to push on.)
#[tokio::test]
async fn a_broker_outage_does_not_use_up_the_relays_retries() {
    const TEST: &str = "a_broker_outage_does_not_use_up_the_relays_retries";
    let Some(url) = broker::url(TEST) else { return };
    let mut upstream = url::Url::parse(&url).expect("CARTBUS_TEST_AMQP_URL is a URL");
    let broker_at = upstream
        .socket_addrs(|| Some(5672))
        .ok()
        .and_then(|a| a.into_iter().next())
        .expect("the broker's address");
    // The broker's stand-in: it takes TCP connections but never answers, until it starts
    // passing them on to the real broker.
    let door = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = door.local_addr().expect("address").port();
    let _ = upstream.set_port(Some(port));
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = tag();
    let settings = settings(
        dir.path(),
        &Backend::Sqlite,
        &Stack::Broker(upstream.to_string()),
        &tag,
    )
    .set("CARTBUS_RELAY_MAX_RETRIES", "1")
    .set("CARTBUS_RELAY_RETRY_BASE_MS", "10");
    let app = TestApp::spawn(&settings).await;

    // No broker: the carts are written directly as orders, and wait in the outbox.
    let carts: Vec<Value> = (0..3).map(|_| cart_to("FR", None, 1_000)).collect();
    for cart in &carts {
        assert_eq!(app.post_cart(cart).await.status(), 201);
    }
    // More tries than the retry limit allows (two), all while the broker is away.
    eventually("the relay to find the broker away five times", || async {
        let text = metrics_text(&app.client, &app.base).await;
        (metric(
            &text,
            "cartbus_outbox_events_total{outcome=\"send_deferred\"}",
        ) >= 5.0)
            .then_some(())
    })
    .await;
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(
            &text,
            "cartbus_outbox_events_total{outcome=\"critical_error\"}"
        ),
        0.0
    );
    let rows: Vec<(String, i32, Option<String>)> = cartbus::on_db!(&app.state.db, |pool| {
        sqlx::query_as("SELECT process_status, retry_count, last_error FROM order_dispatch")
            .fetch_all(pool)
            .await
            .expect("read order_dispatch")
    });
    assert_eq!(rows.len(), carts.len());
    for (status, retries, last_error) in &rows {
        assert_ne!(status, "critical_error");
        assert_eq!(*retries, 0, "a try while the broker was away was counted");
        if let Some(error) = last_error {
            assert!(error.contains("queue unavailable"), "{error}");
        }
    }

    // The broker comes back: every order reaches its partner, once.
    let forwarding = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = door.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(broker_at).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    wait_all_processed(&app, carts.len()).await;
    broker::wait_connected(&app.state).await;
    let ids = order_ids(&app).await;
    let messages = take_all(&app.state.queue, &address_of(&app, "fabrikam"), carts.len()).await;
    let sent: HashSet<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    let expected: HashSet<String> = carts
        .iter()
        .map(|cart| ids[&cart_id(cart)].to_string())
        .collect();
    assert_eq!(sent, expected);
    assert_eq!(messages.len(), carts.len());
    app.stop().await.expect("stops");
    forwarding.abort();
}

async fn assert_critical_errors(client: &reqwest::Client, base: &str, rows: usize, tries: i64) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let page: Value = eventually("critical_error rows in the admin API", || async {
        let page: Value = client
            .get(format!("{base}/v1/admin/outbox"))
            .header("authorization", &auth)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (page["items"].as_array().map(Vec::len) == Some(rows)).then_some(page)
    })
    .await;
    for item in page["items"].as_array().expect("items") {
        assert_eq!(item["process_status"], "critical_error", "{item}");
        assert_eq!(item["retry_count"], tries, "{item}");
        assert!(item["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(page["counts"]["critical_error"], rows as i64);
    let text = common::metrics_text(client, base).await;
    assert_eq!(
        metric(
            &text,
            "cartbus_outbox_events_total{outcome=\"critical_error\"}"
        ),
        rows as f64
    );
    assert_eq!(
        metric(
            &text,
            "cartbus_outbox_events_total{outcome=\"send_failed\"}"
        ),
        (rows as i64 * (tries - 1)) as f64
    );
    assert_eq!(
        metric(&text, "cartbus_outbox_rows{status=\"critical_error\"}"),
        rows as f64
    );
    // The admin API wants the token, names bad filters, and can send a row again.
    let response = client
        .get(format!("{base}/v1/admin/outbox"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 401);
    let response = client
        .get(format!("{base}/v1/admin/outbox?status=lost"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["pointer"], "/status");
    let order_id = page["items"][0]["order_id"].as_str().expect("order_id");
    let retried = client
        .post(format!("{base}/v1/admin/outbox/{order_id}/retry"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("POST");
    assert_eq!(retried.status(), 202);
    let unknown = client
        .post(format!("{base}/v1/admin/outbox/{}/retry", Uuid::new_v4()))
        .header("authorization", &auth)
        .send()
        .await
        .expect("POST");
    assert_eq!(unknown.status(), 409);
}

/// Sends a signed reply as `partner` would, straight onto the status queue.
async fn reply(app: &TestApp, order_id: Uuid, status: &str, partner: &str, key: &str) {
    let reply = StatusReply {
        order_id,
        status: status.to_string(),
        tracking_id: Some(format!("TRK-{status}")),
        partner: partner.to_string(),
    };
    app.state
        .queue
        .send(
            &app.state.config.fulfilment.status_address,
            message::reply(&reply, key.as_bytes(), None),
        )
        .await
        .expect("reply sent");
}

async fn history(app: &TestApp, order_id: Uuid) -> (Vec<String>, Value) {
    let (status, order) = get_json(&app.client, &app.base, &format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, 200);
    let history = order["status_history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["status"].as_str().map(str::to_string))
        .collect();
    (history, order)
}

async fn replies_metric(app: &TestApp, outcome: &str) -> f64 {
    metric(
        &metrics_text(&app.client, &app.base).await,
        &format!("cartbus_partner_replies_total{{outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn partner_replies_fill_the_history_once_in_order_and_only_when_signed() {
    const TEST: &str = "partner_replies_fill_the_history_once_in_order_and_only_when_signed";
    for stack in stacks(TEST) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = orders_backend(&stack, TEST).await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &stack, &tag())).await;
        wait_ready(&app, &stack).await;
        let first = cart_to("GB", Some("LND"), 1_000);
        let second = cart_to("GB", Some("LND"), 2_000);
        let mut ids = Vec::new();
        for cart in [&first, &second] {
            assert!(app.post_cart(cart).await.status().is_success());
            let order = app.wait_for_order(&cart_id(cart).to_string()).await;
            let order_id = Uuid::parse_str(order["order_id"].as_str().expect("id")).expect("uuid");
            eventually("sent to contoso", || async {
                let (h, _) = history(&app, order_id).await;
                h.contains(&"sent_to_partner".to_string()).then_some(())
            })
            .await;
            ids.push(order_id);
        }
        let (one, two) = (ids[0], ids[1]);
        let key = secret("contoso");

        // Good reply: history and tracking id.
        reply(&app, one, "received_by_partner", "contoso", key).await;
        let order = eventually("received_by_partner recorded", || async {
            let (h, order) = history(&app, one).await;
            (h.len() == 3).then_some(order)
        })
        .await;
        assert_eq!(
            order["status_history"][2]["status"], "received_by_partner",
            "{stack:?}"
        );
        assert_eq!(order["tracking_id"], "TRK-received_by_partner");
        assert_eq!(order["status"], "received_by_partner");

        // The same again: accepted, nothing changes.
        reply(&app, one, "received_by_partner", "contoso", key).await;
        eventually("duplicate counted", || async {
            (replies_metric(&app, "duplicate").await >= 1.0).then_some(())
        })
        .await;
        let (h, _) = history(&app, one).await;
        assert_eq!(h, ["placed", "sent_to_partner", "received_by_partner"]);

        // Out of order: shipped first, received after; history never goes backwards.
        reply(&app, two, "shipped", "contoso", key).await;
        eventually("shipped recorded", || async {
            let (h, _) = history(&app, two).await;
            h.contains(&"shipped".to_string()).then_some(())
        })
        .await;
        reply(&app, two, "received_by_partner", "contoso", key).await;
        let (h, order) = eventually("late received_by_partner recorded", || async {
            let (h, order) = history(&app, two).await;
            (h.len() == 4).then_some((h, order))
        })
        .await;
        assert_eq!(
            h,
            [
                "placed",
                "sent_to_partner",
                "received_by_partner",
                "shipped"
            ],
            "{stack:?}"
        );
        assert_eq!(order["status"], "shipped");
        assert_eq!(
            order["tracking_id"], "TRK-shipped",
            "the late reply keeps the newer id"
        );

        // Refused, recorded as dead letters, nothing changed.
        reply(&app, one, "shipped", "contoso", "not-contoso-secret").await;
        let unknown = Uuid::new_v4();
        reply(&app, unknown, "shipped", "contoso", key).await;
        reply(&app, one, "delivered", "acme", secret("acme")).await;
        let mut unsigned = message::reply(
            &StatusReply {
                order_id: one,
                status: "delivered".into(),
                tracking_id: None,
                partner: "contoso".into(),
            },
            key.as_bytes(),
            None,
        );
        unsigned.properties.clear();
        app.state
            .queue
            .send(&app.state.config.fulfilment.status_address, unsigned)
            .await
            .expect("send");
        let dead = eventually("four dead letters", || async {
            let dead = broker::recorded_dead_letters(&app.state).await;
            (dead.len() == 4).then_some(dead)
        })
        .await;
        let mut reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
        reasons.sort_unstable();
        assert_eq!(
            reasons,
            [
                "bad-signature",
                "bad-signature",
                "unknown-order",
                "wrong-partner"
            ],
            "{stack:?}"
        );
        assert!(
            dead.iter()
                .any(|(id, r)| id == &format!("{unknown}:shipped") && r == "unknown-order")
        );
        let (h, order) = history(&app, one).await;
        assert_eq!(
            h,
            ["placed", "sent_to_partner", "received_by_partner"],
            "{stack:?}"
        );
        assert_eq!(order["tracking_id"], "TRK-received_by_partner");
        assert_eq!(replies_metric(&app, "bad-signature").await, 2.0);
        app.stop().await.expect("stops");
    }
}

#[tokio::test]
async fn the_partner_simulator_plays_the_whole_loop() {
    const TEST: &str = "the_partner_simulator_plays_the_whole_loop";
    for stack in stacks(TEST) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = orders_backend(&stack, TEST).await;
        let app = TestApp::spawn(&settings(dir.path(), &backend, &stack, &tag())).await;
        wait_ready(&app, &stack).await;
        let simulator = Simulated::start(
            &app,
            Duration::from_millis(100),
            Some(Duration::from_millis(100)),
        );
        let cart = cart_to("GB", Some("MAN"), 4_200);
        assert!(app.post_cart(&cart).await.status().is_success());
        let order = app.wait_for_order(&cart_id(&cart).to_string()).await;
        let order_id = Uuid::parse_str(order["order_id"].as_str().expect("id")).expect("uuid");
        let (h, order) = eventually("delivered", || async {
            let (h, order) = history(&app, order_id).await;
            h.contains(&"delivered".to_string()).then_some((h, order))
        })
        .await;
        assert_eq!(
            h,
            [
                "placed",
                "sent_to_partner",
                "received_by_partner",
                "shipped",
                "delivered"
            ],
            "{stack:?}"
        );
        assert_eq!(order["transport_partner"], "acme");
        assert!(
            order["tracking_id"]
                .as_str()
                .is_some_and(|t| t.starts_with("TRK-"))
        );
        eventually("every duplicate reply accepted and ignored", || async {
            (replies_metric(&app, "duplicate").await == 3.0).then_some(())
        })
        .await;
        let stats = simulator.stop().await;
        assert_eq!(stats.orders.load(std::sync::atomic::Ordering::Relaxed), 1);
        app.stop().await.expect("stops");
    }
}

/// The relay and the reply reader pause with the drain switch: nothing is sent and no
/// reply is applied while paused (watched for a second, twenty relay polls), and both
/// pick up where they were on resume.
#[tokio::test]
async fn the_relay_and_the_reply_reader_pause_with_the_drain_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&settings(
        dir.path(),
        &Backend::Sqlite,
        &Stack::Embedded,
        "x",
    ))
    .await;
    let cart = cart_to("GB", Some("LND"), 1_000);
    assert!(app.post_cart(&cart).await.status().is_success());
    let order = app.wait_for_order(&cart_id(&cart).to_string()).await;
    let order_id = Uuid::parse_str(order["order_id"].as_str().expect("id")).expect("uuid");
    wait_all_processed(&app, 1).await;
    take_all(&app.state.queue, &address_of(&app, "contoso"), 1).await;

    let paused = admin_post(
        &app,
        "/v1/admin/consumer/pause",
        json!({ "wait_seconds": 10, "reason": "fulfilment test" }),
    )
    .await;
    assert_eq!(paused["drained"], true, "{paused}");
    // Work for both while paused: the row due again, and a good reply.
    cartbus::on_db!(&app.state.db, |pool| sqlx::query(
        "UPDATE order_dispatch SET process_status = 'pending', next_attempt_at = $1"
    )
    .bind(chrono::Utc::now())
    .execute(pool)
    .await
    .map(drop)
    .expect("row due again"));
    reply(
        &app,
        order_id,
        "received_by_partner",
        "contoso",
        secret("contoso"),
    )
    .await;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(1) {
        let rows = dispatch_rows(&app).await;
        assert_eq!(rows[0].1, "pending", "the relay sent while paused");
        let (h, _) = history(&app, order_id).await;
        assert_eq!(
            h,
            ["placed", "sent_to_partner"],
            "a reply was applied while paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    admin_post(&app, "/v1/admin/consumer/resume", json!({})).await;
    wait_all_processed(&app, 1).await;
    eventually("the reply applied after resume", || async {
        let (h, _) = history(&app, order_id).await;
        (h.len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        take_all(&app.state.queue, &address_of(&app, "contoso"), 1)
            .await
            .len(),
        1,
        "sent once more after resume"
    );
    app.stop().await.expect("stops");
}
