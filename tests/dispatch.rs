//! Dispatch right after the commit (issue 17): the consumer hands the orders it has just
//! written to their partners itself, under the same lease a relay's claim takes. These
//! tests hold it to what the polling relay promised: each order sent once when nothing
//! fails (the relay, polling all the while, never sends one again), the message the
//! partner gets is the one the relay would have built from the database, and a pause
//! is not `drained` while a dispatch is in flight. Kills at `relay-after-send` (which
//! the dispatch path passes too) are in `tests/fulfilment.rs` and the fault campaign.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cartbus::domain::partner as message;
use cartbus::store::order_reads;
use common::partners::*;
use common::{Backend, Process, TestApp, metric, metrics_text};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

/// Every order is sent once, by the consumer right after its commit: the relay polls
/// every 10 ms throughout and sends none of them again. What the partner receives is
/// byte for byte what the relay would have built from the stored order.
#[tokio::test]
async fn orders_handed_on_at_commit_are_sent_once_and_never_again_by_the_relay() {
    const TEST: &str = "orders_handed_on_at_commit_are_sent_once_and_never_again_by_the_relay";
    for stack in stacks(TEST) {
        let backend = orders_backend(&stack, TEST).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(
            &settings(dir.path(), &backend, &stack, &tag()).set("CARTBUS_RELAY_POLL_MS", "10"),
        )
        .await;
        wait_ready(&app, &stack).await;
        let carts: Vec<Value> = (0..300)
            .map(|i| {
                let mut cart = match i % 3 {
                    0 => cart_to("GB", Some("LND"), 2_500),
                    1 => cart_to("GB", None, 1_000_001),
                    _ => cart_to("DE", None, 700),
                };
                if i % 5 == 0 {
                    // Several lines, a phone and a second address line, so that every
                    // field of the message is compared.
                    let mut longer = common::cart_with_lines(3);
                    longer["shipping_address"] = cart["shipping_address"].clone();
                    longer["customer"]["phone"] = json!("+44 20 7946 0000");
                    longer["shipping_address"]["line2"] = json!("Flat 2");
                    cart = longer;
                }
                cart
            })
            .collect();
        let statuses: Vec<u16> = futures::stream::iter(&carts)
            .map(|cart| async { app.post_cart(cart).await.status().as_u16() })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(
            statuses.iter().all(|s| *s == 202),
            "{stack:?}: {statuses:?}"
        );
        wait_all_processed(&app, carts.len()).await;

        let metrics = metrics_text(&app.client, &app.url("")).await;
        let outbox = |outcome: &str| {
            metric(
                &metrics,
                &format!("cartbus_outbox_events_total{{outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(outbox("sent"), carts.len() as f64, "{stack:?}: {metrics}");
        assert_eq!(
            outbox("sent_at_commit"),
            carts.len() as f64,
            "{stack:?}: every order handed on right after its commit, none by the relay"
        );

        let ids = order_ids(&app).await;
        let order_ids: Vec<Uuid> = ids.values().copied().collect();
        let stored = order_reads::find_many(&app.state.db, &order_ids)
            .await
            .expect("read orders");
        let stored: HashMap<Uuid, _> = stored.into_iter().map(|o| (o.order_id, o)).collect();
        let status_address = app.state.config.fulfilment.status_address.clone();
        let mut seen = HashSet::new();
        for partner in ["contoso", "acme", "fabrikam"] {
            let expected = carts
                .iter()
                .filter(|cart| {
                    let address = &cart["shipping_address"];
                    partner_for(
                        address["country"].as_str().unwrap_or_default(),
                        address["region"].as_str(),
                    ) == partner
                })
                .count();
            // take_all waits a quiet spell after the last: a second copy would show.
            let messages = take_all(&app.state.queue, &address_of(&app, partner), expected).await;
            assert_eq!(messages.len(), expected, "{stack:?} {partner}: once each");
            for sent in &messages {
                let order_id = Uuid::parse_str(&sent.message_id).expect("order id");
                assert!(seen.insert(order_id), "{stack:?}: {order_id} sent twice");
                let order = &stored[&order_id];
                assert_eq!(order.transport_partner.as_deref(), Some(partner));
                let rebuilt = message::new_order(order, partner, &status_address, None);
                let sent_body: Value = serde_json::from_slice(&sent.body).expect("JSON");
                let rebuilt_body: Value = serde_json::from_slice(&rebuilt.body).expect("JSON");
                assert_eq!(
                    sent_body, rebuilt_body,
                    "{stack:?}: the message sent at commit is the one the relay would send"
                );
                assert_eq!(sent.properties, rebuilt.properties, "{stack:?}");
                assert_eq!(sent.reply_to, rebuilt.reply_to, "{stack:?}");
            }
        }
        assert_eq!(seen.len(), carts.len(), "{stack:?}: every order sent");
        common::note(&format!(
            "{stack:?}: {} orders handed on at commit, each once; the relay sent none again",
            carts.len()
        ));
        app.stop().await.expect("stops");
    }
}

/// A pause is not `drained` while a dispatch is in flight: with every dispatch taking
/// 1.5 s (fail point `dispatch-slow`), a pause asked while one is under way answers
/// `drained` only once the order has been handed on — and well before the 30 s lease,
/// so it waits for the dispatch, not for the relay.
#[tokio::test]
async fn a_pause_waits_for_a_dispatch_in_flight() {
    const TEST: &str = "a_pause_waits_for_a_dispatch_in_flight";
    const DISPATCH_MS: u64 = 1_500;
    for backend in Backend::all(TEST).await {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path(), &backend, &Stack::Embedded, "unused");
        let process = Process::start(
            &settings,
            &[(
                "FAILPOINTS",
                &format!("dispatch-slow=return({DISPATCH_MS})"),
            )],
        );
        let client = common::client();
        let cart = cart_to("GB", Some("LND"), 1_000);
        let cart_id = cart_id(&cart).to_string();
        assert!(
            common::post_cart(&client, &process.base, &cart)
                .await
                .status()
                .is_success()
        );
        // The order is committed; its dispatch has begun and takes 1.5 s.
        let order = common::wait_for_order(&client, &process.base, &cart_id).await;
        let committed = Instant::now();
        assert_eq!(statuses(&order), ["placed"], "{backend:?}: {order}");

        let (code, paused) = common::admin_call(
            &client,
            &process.base,
            ADMIN_TOKEN,
            reqwest::Method::POST,
            "/v1/admin/consumer/pause",
            Some(json!({ "wait_seconds": 20, "reason": "dispatch test" })),
        )
        .await;
        let took = committed.elapsed();
        assert_eq!(code, 200, "{backend:?}: {paused}");
        assert_eq!(paused["drained"], true, "{backend:?}: {paused}");
        let order = common::wait_for_order(&client, &process.base, &cart_id).await;
        assert_eq!(
            statuses(&order),
            ["placed", "sent_to_partner"],
            "{backend:?}: drained was reported before the order in flight was handed on"
        );
        assert!(
            took < Duration::from_millis(DISPATCH_MS) + Duration::from_secs(5),
            "{backend:?}: drained after {took:?}: it waited for something beyond the dispatch"
        );
        common::note(&format!(
            "{backend:?}: pause answered drained {took:?} after the commit, with the {DISPATCH_MS} ms dispatch done"
        ));
    }
}

fn statuses(order: &Value) -> Vec<String> {
    order["status_history"]
        .as_array()
        .map(|history| {
            history
                .iter()
                .filter_map(|e| e["status"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
