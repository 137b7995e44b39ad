//! Webhooks (issue 20): order events reach the storefront signed as Standard Webhooks,
//! checked by an independent verifier (Python's `standardwebhooks`, in
//! tests/webhooks/receiver.py). Every change is one event id, delivered at least once, in
//! order per cart; receivers that fail, hang or answer 410 are retried with growing waits,
//! marked failing, disabled and replayed; a process killed between a call and its mark
//! sends the event again with the same id; inside addresses are refused; no secret is
//! logged.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cartbus::domain::webhook::Secret;
use common::partners::{
    ADMIN_TOKEN, Simulated, cart_id, cart_to, orders_backend, settings, stacks, tag, wait_ready,
};
use common::webhooks::{Receiver, python};
use common::{Backend, Process, Settings, TestApp, admin_call, eventually, metric, metrics_text};
use futures::StreamExt;
use serde_json::{Value, json};

const CARTS: usize = 500;

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    admin_call(&app.client, &app.base, ADMIN_TOKEN, method, path, body).await
}

/// Registers `url` for `types` (all when empty); its id and secret.
async fn register(app: &TestApp, url: &str, types: &[&str]) -> (String, String) {
    let mut body = json!({"url": url, "description": "test receiver"});
    if !types.is_empty() {
        body["event_types"] = json!(types);
    }
    let (status, created) =
        admin(app, reqwest::Method::POST, "/v1/admin/webhooks", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    (
        created["endpoint"]["id"].as_str().expect("id").to_string(),
        secret,
    )
}

async fn endpoint(app: &TestApp, id: &str) -> Value {
    let (status, view) = admin(
        app,
        reqwest::Method::GET,
        &format!("/v1/admin/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    view
}

/// Distinct event ids in the order they first arrived, with their calls.
fn first_arrivals(calls: &[Value]) -> Vec<&Value> {
    let mut seen = HashSet::new();
    calls
        .iter()
        .filter(|c| {
            c["status"] == 200 && seen.insert(c["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[tokio::test]
async fn every_change_reaches_the_receiver_verified_once_per_id_in_cart_order() {
    const TEST: &str = "every_change_reaches_the_receiver_verified_once_per_id_in_cart_order";
    let Some(python) = python(TEST) else { return };
    for stack in stacks(TEST) {
        let dir = tempfile::tempdir().expect("tempdir");
        let receiver = Receiver::start(&python, dir.path());
        let config_secret = Secret::generate();
        receiver.accept("/all", &[config_secret.expose()]).await;
        let backend = orders_backend(&stack, TEST).await;
        let app = TestApp::spawn(
            &settings(dir.path(), &backend, &stack, &tag())
                .set("CARTBUS_WEBHOOK_URL", receiver.url("/all"))
                .set("CARTBUS_WEBHOOK_SECRET", config_secret.expose())
                .set("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
                .set("CARTBUS_WEBHOOK_POLL_MS", "50"),
        )
        .await;
        wait_ready(&app, &stack).await;
        let (_, ordered_secret) =
            register(&app, &receiver.url("/ordered"), &["checkout.ordered"]).await;
        receiver.accept("/ordered", &[&ordered_secret]).await;
        let simulator = Simulated::start(&app, Duration::from_millis(20), None);

        let started = Instant::now();
        let carts: Vec<Value> = (0..CARTS)
            .map(|_| cart_to("GB", Some("MAN"), 2_500))
            .collect();
        futures::stream::iter(&carts)
            .for_each_concurrent(16, |cart| async {
                assert!(app.post_cart(cart).await.status().is_success());
            })
            .await;
        let expected_all = CARTS * 4;
        let all = patiently("every event of every cart at /all", || async {
            let calls = receiver.calls("/all");
            (first_arrivals(&calls).len() >= expected_all).then_some(calls)
        })
        .await;
        let elapsed = started.elapsed();
        let ordered = patiently("every checkout.ordered at /ordered", || async {
            let calls = receiver.calls("/ordered");
            (first_arrivals(&calls).len() >= CARTS).then_some(calls)
        })
        .await;

        // Every call verified: cartbus signs as the specification says.
        for call in all.iter().chain(&ordered) {
            assert_eq!(call["verified"], true, "{call}");
        }
        // The filtered endpoint got checkout.ordered only, one id per cart.
        let mut ordered_ids: HashMap<String, HashSet<String>> = HashMap::new();
        for call in &ordered {
            assert_eq!(call["type"], "checkout.ordered", "{call}");
            ordered_ids
                .entry(call["cart_id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .insert(call["id"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(ordered_ids.len(), CARTS, "{stack:?}");
        assert!(
            ordered_ids.values().all(|ids| ids.len() == 1),
            "one checkout.ordered id per cart"
        );

        // On /all: each cart's events arrived ordered → sent → received → shipped, each
        // id once or more (a repeat carries the same event), and nothing else.
        let mut by_cart: HashMap<String, Vec<String>> = HashMap::new();
        let mut by_id: HashMap<String, (Value, Value)> = HashMap::new();
        for call in &all {
            let id = call["id"].as_str().unwrap_or_default().to_string();
            let what = (call["type"].clone(), call["status_to"].clone());
            let first = by_id.entry(id).or_insert_with(|| what.clone());
            assert_eq!(*first, what, "a repeated id is the same event");
        }
        for call in first_arrivals(&all) {
            let step = match (call["type"].as_str(), call["status_to"].as_str()) {
                (Some("checkout.ordered"), _) => "ordered".to_string(),
                (Some("order.status_changed"), Some(status)) => status.to_string(),
                other => panic!("unexpected event {other:?}: {call}"),
            };
            by_cart
                .entry(call["cart_id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(step);
        }
        assert_eq!(by_cart.len(), CARTS);
        for (cart, steps) in &by_cart {
            assert_eq!(
                steps,
                &[
                    "ordered",
                    "sent_to_partner",
                    "received_by_partner",
                    "shipped"
                ],
                "{stack:?} cart {cart}"
            );
        }
        for cart in &carts {
            assert!(by_cart.contains_key(&cart_id(cart).to_string()));
        }
        let text = metrics_text(&app.client, &app.base).await;
        let delivered = metric(&text, "cartbus_webhook_calls_total{outcome=\"delivered\"}");
        assert!(delivered >= (expected_all + CARTS) as f64, "{delivered}");
        let pending = eventually("nothing pending", || async {
            let (_, list) = admin(&app, reqwest::Method::GET, "/v1/admin/webhooks", None).await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            items.iter().all(|e| e["pending"] == 0).then_some(items)
        })
        .await;
        assert_eq!(pending.len(), 2);
        common::note(&format!(
            "{stack:?}: {CARTS} carts → {} events to /all ({} calls) and {} to /ordered in {} ms, all verified by standardwebhooks",
            expected_all,
            all.len(),
            CARTS,
            elapsed.as_millis()
        ));
        simulator.stop().await;
        app.stop().await.expect("stops");
    }
}

/// Like [`eventually`], with the time 500 carts through partners may take on a loaded
/// 2-core machine (about 11 s alone on RabbitMQ + PostgreSQL).
async fn patiently<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gaps between consecutive calls of one event, in ms.
fn gaps(calls: &[Value]) -> Vec<f64> {
    calls
        .windows(2)
        .map(|w| (w[1]["at"].as_f64().unwrap_or(0.0) - w[0]["at"].as_f64().unwrap_or(0.0)) * 1000.0)
        .collect()
}

/// The event ids waiting for endpoint `id`, oldest first.
async fn pending_ids(app: &TestApp, id: &str) -> Vec<Value> {
    let path = format!("/v1/admin/webhooks/{id}/deliveries?state=pending");
    let (status, page) = admin(app, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["event_id"].clone())
        .collect()
}

async fn replay(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/admin/webhooks/{id}/replay");
    admin(app, reqwest::Method::POST, &path, Some(body)).await
}

/// Rotates `id`'s secret, the old one signing for `seconds` more; the new secret.
async fn rotate(app: &TestApp, id: &str, seconds: i64) -> String {
    let path = format!("/v1/admin/webhooks/{id}/rotate-secret");
    let body = json!({"old_secret_seconds": seconds});
    let (status, rotated) = admin(app, reqwest::Method::POST, &path, Some(body)).await;
    assert_eq!(status, 200, "{rotated}");
    rotated["secret"].as_str().expect("secret").to_string()
}

/// With /flaky accepting only `secret`, a new cart's event as it arrived there.
async fn post_and_wait(app: &TestApp, receiver: &Receiver, secret: &str) -> Value {
    receiver.accept("/flaky", &[secret]).await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    let id = cart_id(&cart).to_string();
    eventually("the cart's event at /flaky", || async {
        receiver
            .calls("/flaky")
            .into_iter()
            .find(|c| c["cart_id"] == id.as_str() && c["status"] == 200)
    })
    .await
}

#[tokio::test]
async fn failing_receivers_are_retried_marked_disabled_and_replayed() {
    const TEST: &str = "failing_receivers_are_retried_marked_disabled_and_replayed";
    let Some(python) = python(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(&python, dir.path());
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
            .set("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
            .set("CARTBUS_WEBHOOK_POLL_MS", "20")
            .set("CARTBUS_WEBHOOK_TIMEOUT_MS", "400")
            .set("CARTBUS_WEBHOOK_RETRY_BASE_MS", "100")
            .set("CARTBUS_WEBHOOK_RETRY_CAP_SECONDS", "1")
            .set("CARTBUS_WEBHOOK_FAILING_AFTER", "4"),
    )
    .await;
    let (flaky, flaky_secret) = register(&app, &receiver.url("/flaky"), &[]).await;
    let (slow, slow_secret) = register(&app, &receiver.url("/slow"), &[]).await;
    let (gone, gone_secret) = register(&app, &receiver.url("/gone"), &[]).await;
    receiver.accept("/flaky", &[&flaky_secret]).await;
    receiver.accept("/slow", &[&slow_secret]).await;
    receiver.accept("/gone", &[&gone_secret]).await;
    receiver.behave("/flaky", json!({"fail": 3})).await;
    receiver
        .behave("/slow", json!({"hang": 5, "hang_seconds": 2}))
        .await;
    receiver.behave("/gone", json!({"gone": true})).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);

    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);

    // Fails three times, then takes it: four calls of one id, each wait longer.
    let flaky_calls = eventually("the flaky receiver takes it", || async {
        let calls = receiver.calls("/flaky");
        calls.iter().any(|c| c["status"] == 200).then_some(calls)
    })
    .await;
    let statuses: Vec<&Value> = flaky_calls.iter().map(|c| &c["status"]).collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    let event_id = flaky_calls[0]["id"].clone();
    assert!(
        flaky_calls
            .iter()
            .all(|c| c["id"] == event_id && c["verified"] == true)
    );
    // Waits of base × 2^(n-1), jittered between half and all of it: 50+, 100+, 200+ ms.
    for (gap, least) in gaps(&flaky_calls).iter().zip([50.0, 100.0, 200.0]) {
        assert!(*gap >= least * 0.9, "gaps {:?}", gaps(&flaky_calls));
    }
    let (_, delivered) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/admin/webhooks/{flaky}/deliveries?state=delivered"),
        None,
    )
    .await;
    assert_eq!(delivered["items"][0]["attempts"], 4, "{delivered}");
    assert_eq!(delivered["items"][0]["last_status"], 200, "{delivered}");

    // 410: disabled at once, with the reason, and called no more.
    let gone_view = eventually("the gone endpoint disabled", || async {
        let view = endpoint(&app, &gone).await;
        (view["state"] == "disabled").then_some(view)
    })
    .await;
    assert!(
        gone_view["state_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("410"),
        "{gone_view}"
    );

    // Hangs past the timeout: out of retries after 4 calls, so failing; probed once per
    // retry cap; enabled again on its first answer.
    let failing = eventually("the slow endpoint failing", || async {
        let view = endpoint(&app, &slow).await;
        (view["state"] == "failing").then_some(view)
    })
    .await;
    let reason = failing["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed 4 times") && reason.contains("no answer within 400 ms"),
        "{failing}"
    );
    assert!(failing["next_probe_at"].is_string(), "{failing}");
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        metric(&text, "cartbus_webhook_endpoints{state=\"failing\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "cartbus_webhook_endpoints{state=\"disabled\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cartbus_webhook_pending{{endpoint=\"{slow}\"}}")
        ),
        1.0
    );
    assert!(metric(&text, "cartbus_webhook_calls_total{outcome=\"timeout\"}") >= 4.0);
    assert_eq!(
        metric(&text, "cartbus_webhook_calls_total{outcome=\"gone\"}"),
        1.0
    );
    let recovered = eventually("the slow endpoint enabled again", || async {
        let view = endpoint(&app, &slow).await;
        (view["state"] == "enabled").then_some(view)
    })
    .await;
    assert_eq!(recovered["pending"], 0, "{recovered}");
    let slow_calls = receiver.calls("/slow");
    assert_eq!(
        slow_calls.len(),
        6,
        "5 hung, then the probe that was answered: {slow_calls:?}"
    );
    assert!(slow_calls.iter().all(|c| c["id"] == event_id));
    // The probes after it was marked failing came a retry cap (1 s) apart.
    let probe_gap = gaps(&slow_calls)[4];
    assert!(probe_gap >= 900.0, "probe gap {probe_gap} ms");

    // A second cart: the flaky receiver gets it, the disabled one never hears of it.
    let second = common::cart();
    assert_eq!(app.post_cart(&second).await.status(), 202);
    let second_id = cart_id(&second).to_string();
    eventually("the second cart at /flaky", || async {
        receiver
            .calls("/flaky")
            .iter()
            .any(|c| c["cart_id"] == second_id.as_str() && c["status"] == 200)
            .then_some(())
    })
    .await;
    // The fan-out has passed the second cart's event: nothing was queued for the
    // disabled endpoint, whose first event still waits.
    let waiting = pending_ids(&app, &gone).await;
    assert_eq!(
        waiting,
        std::slice::from_ref(&event_id),
        "only the event from before the 410"
    );
    assert_eq!(
        receiver.calls("/gone").len(),
        1,
        "a disabled endpoint is not called"
    );

    // What it missed is replayed while it is disabled (an event waiting there already is
    // not queued twice), then it is enabled: both go, each cart's in order.
    let (status, replayed) = replay(&app, &gone, json!({"since": since.to_rfc3339()})).await;
    assert_eq!(
        (
            status,
            replayed["queued"].as_u64(),
            replayed["truncated"].as_bool()
        ),
        (200, Some(1), Some(false)),
        "{replayed}"
    );
    assert_eq!(pending_ids(&app, &gone).await.len(), 2);
    assert_eq!(
        receiver.calls("/gone").len(),
        1,
        "nothing sent while disabled"
    );
    receiver.behave("/gone", json!({})).await;
    let (status, enabled) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/v1/admin/webhooks/{gone}/enable"),
        None,
    )
    .await;
    assert_eq!(
        (status, enabled["state"].as_str()),
        (200, Some("enabled")),
        "{enabled}"
    );
    eventually("both events delivered at /gone", || async {
        let view = endpoint(&app, &gone).await;
        (view["pending"] == 0).then_some(())
    })
    .await;
    let taken: HashSet<String> = receiver
        .calls("/gone")
        .iter()
        .filter(|c| c["status"] == 200)
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert!(taken.contains(event_id.as_str().unwrap_or_default()));
    // By id, once delivered: the one event again, with the same webhook-id.
    eventually("nothing pending at /flaky", || async {
        (endpoint(&app, &flaky).await["pending"] == 0).then_some(())
    })
    .await;
    let (status, replayed) = replay(&app, &flaky, json!({"event_ids": [event_id]})).await;
    assert_eq!(
        (status, replayed["queued"].as_u64()),
        (200, Some(1)),
        "{replayed}"
    );
    eventually("the replayed event at /flaky", || async {
        (receiver
            .calls("/flaky")
            .iter()
            .filter(|c| c["id"] == event_id && c["status"] == 200)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let (status, problem) = replay(
        &app,
        &flaky,
        json!({"event_ids": ["evt_1"], "since": since.to_rfc3339()}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");

    // Rotation: the new and the old secret both sign while the old one is kept; a
    // receiver that holds either verifies the call.
    let new_secret = rotate(&app, &flaky, 3600).await;
    assert!(endpoint(&app, &flaky).await["old_secret_until"].is_string());
    let call = post_and_wait(&app, &receiver, &new_secret).await;
    assert_eq!(call["signatures"], 2, "{call}");
    let call = post_and_wait(&app, &receiver, &flaky_secret).await;
    assert_eq!(call["signatures"], 2, "{call}");
    // Rotated again with no overlap: one signature, by the newest secret only.
    let newest = rotate(&app, &flaky, 0).await;
    let call = post_and_wait(&app, &receiver, &newest).await;
    assert_eq!(call["signatures"], 1, "{call}");

    // The receiver refuses what cartbus never sends: a forgery, a stale call, and one
    // signed with a secret it no longer holds.
    let body = r#"{"type":"checkout.ordered","timestamp":"2026-12-07T00:00:00Z","data":{}}"#;
    let now = chrono::Utc::now().timestamp();
    let signed = |secret: &Secret, at: i64| {
        vec![
            ("webhook-id", "evt_forged".to_string()),
            ("webhook-timestamp", at.to_string()),
            (
                "webhook-signature",
                secret.sign("evt_forged", at, body.as_bytes()),
            ),
            ("content-type", "application/json".to_string()),
        ]
    };
    let newest = Secret::parse(&newest).expect("whsec");
    let old = Secret::parse(&new_secret).expect("whsec");
    assert_eq!(
        receiver
            .post("/flaky", &signed(&Secret::generate(), now), body)
            .await,
        401,
        "forged"
    );
    assert_eq!(
        receiver
            .post("/flaky", &signed(&newest, now - 600), body)
            .await,
        401,
        "stale"
    );
    assert_eq!(
        receiver.post("/flaky", &signed(&old, now), body).await,
        401,
        "old secret"
    );
    assert_eq!(
        receiver.post("/flaky", &signed(&newest, now), body).await,
        200,
        "the real thing"
    );

    // Bad requests are named.
    let (status, problem) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": "ftp://x", "event_types": ["order.shipped"]})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/url", "/event_types"], "{problem}");
    let (status, problem) = admin(
        &app,
        reqwest::Method::POST,
        "/v1/admin/webhooks/ep_none/disable",
        None,
    )
    .await;
    assert_eq!(status, 404, "{problem}");
    let (status, disabled) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/v1/admin/webhooks/{flaky}/disable"),
        None,
    )
    .await;
    assert_eq!(
        (status, disabled["state"].as_str()),
        (200, Some("disabled")),
        "{disabled}"
    );
    assert!(
        disabled["state_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("disabled by")
    );
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn inside_addresses_are_refused_unless_allowed() {
    const TEST: &str = "inside_addresses_are_refused_unless_allowed";
    let Some(python) = python(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(&python, dir.path());
    let secret = Secret::generate();
    receiver.accept("/cfg", &[secret.expose()]).await;
    // Configured by a name that resolves to loopback, with no network allowed: refused at
    // each connection (the name is resolved and checked then, not only once).
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
            .set(
                "CARTBUS_WEBHOOK_URL",
                receiver.url("/cfg").replace("127.0.0.1", "localhost"),
            )
            .set("CARTBUS_WEBHOOK_SECRET", secret.expose())
            .set("CARTBUS_WEBHOOK_POLL_MS", "20")
            .set("CARTBUS_WEBHOOK_RETRY_BASE_MS", "50"),
    )
    .await;
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
    ] {
        let (status, problem) = admin(
            &app,
            reqwest::Method::POST,
            "/v1/admin/webhooks",
            Some(json!({"url": url})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], "/url", "{problem}");
        let detail = problem["errors"][0]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(why) && detail.contains("CARTBUS_WEBHOOK_ALLOW_NETWORKS"),
            "{url}: {detail}"
        );
    }
    assert_eq!(app.post_cart(&common::cart()).await.status(), 202);
    let refused = eventually("a refused call recorded", || async {
        let (_, page) = admin(
            &app,
            reqwest::Method::GET,
            "/v1/admin/webhooks/config/deliveries",
            None,
        )
        .await;
        let item = page["items"][0].clone();
        (item["attempts"].as_i64().unwrap_or(0) >= 2).then_some(item)
    })
    .await;
    let error = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`localhost` resolves only to inside addresses (loopback)"),
        "{refused}"
    );
    assert!(
        receiver.calls("/cfg").is_empty(),
        "nothing reached the inside address"
    );
    let text = metrics_text(&app.client, &app.base).await;
    assert!(
        metric(
            &text,
            "cartbus_webhook_calls_total{outcome=\"unreachable\"}"
        ) >= 2.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_call_whose_mark_died_with_the_process_goes_again_with_its_id_and_no_secret_is_logged() {
    const TEST: &str =
        "a_call_whose_mark_died_with_the_process_goes_again_with_its_id_and_no_secret_is_logged";
    let Some(python) = python(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(&python, dir.path());
    // Mid-rotation: both secrets configured, the receiver still holding the old one.
    let (secret, old) = (Secret::generate(), Secret::generate());
    receiver.accept("/hook", &[old.expose()]).await;
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
        .set(
            "CARTBUS_WEBHOOK_URL",
            format!("{}?key=hook-k3y", receiver.url("/hook")),
        )
        .set(
            "CARTBUS_WEBHOOK_SECRET",
            format!("{},{}", secret.expose(), old.expose()),
        )
        .set("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
        .set("CARTBUS_WEBHOOK_POLL_MS", "20")
        .set("CARTBUS_WEBHOOK_TIMEOUT_MS", "500");
    let mut first = Process::start(&settings, &[("FAILPOINTS", "webhook-before-mark=return")]);
    let http = common::client();
    // An endpoint made through the API: its secret is in the answer, never in a log.
    let (status, created) = admin_call(
        &http,
        &first.base,
        ADMIN_TOKEN,
        reqwest::Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": receiver.url("/api")})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let api_secret = created["secret"].as_str().expect("secret").to_string();
    receiver.accept("/api", &[&api_secret]).await;
    assert_eq!(
        common::post_cart(&http, &first.base, &common::cart())
            .await
            .status(),
        202
    );
    let delivered = eventually("the call before the mark", || async {
        receiver
            .calls("/hook")
            .into_iter()
            .find(|c| c["status"] == 200)
    })
    .await;
    eventually("the fail point hit", || async {
        first.logs_contain("webhook-before-mark").then_some(())
    })
    .await;
    first.kill();
    let mut logs = first.logs();

    let mut second = Process::start(&settings, &[]);
    let again = eventually("the same event again after the lease", || async {
        let calls: Vec<Value> = receiver
            .calls("/hook")
            .into_iter()
            .filter(|c| c["status"] == 200)
            .collect();
        (calls.len() >= 2).then_some(calls)
    })
    .await;
    assert_eq!(
        again[1]["id"], delivered["id"],
        "delivered again with the same webhook-id"
    );
    assert_eq!(delivered["signatures"], 2, "both configured secrets sign");
    assert!(again.iter().all(|c| c["verified"] == true));
    eventually("nothing pending after the second delivery", || async {
        let (_, view) = admin_call(
            &http,
            &second.base,
            ADMIN_TOKEN,
            reqwest::Method::GET,
            "/v1/admin/webhooks/config",
            None,
        )
        .await;
        (view["pending"] == 0).then_some(())
    })
    .await;
    second.kill();
    logs.extend(second.logs());
    let key = secret.expose().trim_start_matches("whsec_").to_string();
    let old_key = old.expose().trim_start_matches("whsec_").to_string();
    let api_key = api_secret.trim_start_matches("whsec_").to_string();
    for leaked in [key.as_str(), old_key.as_str(), api_key.as_str(), "hook-k3y"] {
        assert!(
            !logs.iter().any(|l| l.contains(leaked)),
            "{leaked} in the logs"
        );
    }
}
