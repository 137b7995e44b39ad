//! `/metrics` shows what the admin page shows — the backlog, its rates and catch-up
//! estimate, the drain switch, instances by state, outbox rows and dead letters — under
//! the names and types the metrics table in docs/operations.md documents.

mod common;

use common::{Backend, Settings, TestApp, eventually, metrics_text};
use serde_json::{Value, json};

const TOKEN: &str = "metrics-test-admin-token-0001";

/// Every family in docs/operations.md's metrics table, with its type. Counters are named here as
/// their `# TYPE` line names them: without the `_total` their samples carry.
const FAMILIES: [(&str, &str); 28] = [
    ("cartbus_checkouts", "counter"),
    ("cartbus_consumer_messages", "counter"),
    ("cartbus_http_request_duration_seconds", "histogram"),
    ("cartbus_ready", "gauge"),
    ("cartbus_queue_up", "gauge"),
    ("cartbus_queue_connections", "counter"),
    ("cartbus_queue_connection_losses", "counter"),
    ("cartbus_queue_depth_messages", "gauge"),
    ("cartbus_queue_oldest_age_seconds", "gauge"),
    ("cartbus_intake_messages", "counter"),
    ("cartbus_drain_messages", "counter"),
    ("cartbus_intake_per_second", "gauge"),
    ("cartbus_drain_per_second", "gauge"),
    ("cartbus_catch_up_eta_seconds", "gauge"),
    ("cartbus_consumer_running", "gauge"),
    ("cartbus_consumer_in_flight", "gauge"),
    ("cartbus_instances", "gauge"),
    ("cartbus_drain_switch_paused", "gauge"),
    ("cartbus_drain_switch_drained", "gauge"),
    ("cartbus_outbox_rows", "gauge"),
    ("cartbus_dead_letters", "gauge"),
    ("cartbus_payments_unknown", "gauge"),
    ("cartbus_payments_captured_without_order", "gauge"),
    ("cartbus_outbox_events", "counter"),
    ("cartbus_dead_letter_resubmits", "counter"),
    ("cartbus_partner_replies", "counter"),
    ("cartbus_payment_calls", "counter"),
    ("cartbus_sample_stale", "gauge"),
];

/// The value of one sample (`name{labels}` exactly), `None` when it is absent.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        path,
        Some(body),
    )
    .await
}

async fn scrape_until(app: &TestApp, what: &str, ready: impl Fn(&str) -> bool) -> String {
    eventually(what, || async {
        let text = metrics_text(&app.client, &app.base).await;
        ready(&text).then_some(text)
    })
    .await
}

#[tokio::test]
async fn metrics_show_the_backlog_the_drain_switch_and_instances_as_they_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No conflict check at intake: the conflicting cart below is to reach the consumer
    // and be dead-lettered there.
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_CONFLICT_CHECK_MS", "0"),
    )
    .await;

    // Paused and drained: carts wait on the queue and the backlog is not shrinking.
    let (status, paused) = admin_post(
        &app,
        "/v1/admin/consumer/pause",
        json!({ "reason": "metrics test", "wait_seconds": 30 }),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    let carts = [common::cart(), common::cart()];
    for cart in &carts {
        assert_eq!(app.post_cart(cart).await.status(), 202);
    }
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        response.headers()
    );
    assert_eq!(
        response.text().await.expect("text").lines().last(),
        Some("# EOF")
    );
    // Rates come from heartbeats, every 0.5 s.
    let text = scrape_until(&app, "the intake rate while paused", |text| {
        sample(text, "cartbus_intake_per_second").is_some_and(|r| r > 0.0)
            && sample(text, "cartbus_queue_oldest_age_seconds").is_some_and(|a| a > 0.0)
    })
    .await;
    assert_eq!(value(&text, "cartbus_queue_depth_messages"), 2.0);
    assert_eq!(value(&text, "cartbus_intake_messages_total"), 2.0);
    assert_eq!(value(&text, "cartbus_drain_messages_total"), 0.0);
    assert_eq!(value(&text, "cartbus_drain_per_second"), 0.0);
    assert!(
        value(&text, "cartbus_catch_up_eta_seconds").is_nan(),
        "a backlog that does not shrink has no catch-up estimate"
    );
    assert_eq!(value(&text, "cartbus_drain_switch_paused"), 1.0);
    assert_eq!(value(&text, "cartbus_drain_switch_drained"), 1.0);
    assert_eq!(value(&text, r#"cartbus_instances{state="paused"}"#), 1.0);
    for state in ["running", "pausing", "passive", "fenced", "stopped"] {
        assert_eq!(
            value(&text, &format!("cartbus_instances{{state=\"{state}\"}}")),
            0.0,
            "{state}"
        );
    }
    assert_eq!(value(&text, "cartbus_consumer_running"), 0.0);
    assert_eq!(value(&text, "cartbus_consumer_in_flight"), 0.0);

    // Resumed: the backlog drains, and with no CARTBUS_ROUTES the orders wait in the outbox.
    let (status, resumed) = admin_post(&app, "/v1/admin/consumer/resume", json!({})).await;
    assert_eq!(status, 200, "{resumed}");
    for cart in &carts {
        app.wait_for_order(cart["cart_id"].as_str().expect("cart_id"))
            .await;
    }
    let text = scrape_until(&app, "the drain rate after resuming", |text| {
        // The drain is counted once the batch is settled, just after its orders commit.
        sample(text, "cartbus_drain_per_second").is_some_and(|r| r > 0.0)
            && sample(text, "cartbus_drain_messages_total") == Some(2.0)
            && sample(text, r#"cartbus_instances{state="running"}"#) == Some(1.0)
    })
    .await;
    assert_eq!(value(&text, "cartbus_queue_depth_messages"), 0.0);
    assert_eq!(value(&text, "cartbus_queue_oldest_age_seconds"), 0.0);
    assert_eq!(value(&text, "cartbus_catch_up_eta_seconds"), 0.0);
    assert_eq!(value(&text, "cartbus_drain_messages_total"), 2.0);
    assert_eq!(value(&text, "cartbus_drain_switch_paused"), 0.0);
    assert_eq!(value(&text, "cartbus_drain_switch_drained"), 0.0);
    assert_eq!(value(&text, r#"cartbus_instances{state="paused"}"#), 0.0);
    assert_eq!(value(&text, "cartbus_consumer_running"), 1.0);
    assert_eq!(
        value(&text, r#"cartbus_outbox_rows{status="pending"}"#),
        2.0
    );
    assert_eq!(
        value(&text, r#"cartbus_outbox_rows{status="critical_error"}"#),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"cartbus_consumer_messages_total{outcome="created"}"#
        ),
        2.0
    );

    // A dead letter drains the queue too, and shows by reason.
    let mut changed = carts[0].clone();
    changed["lines"][0]["name"] = json!("Something else");
    assert_eq!(app.post_cart(&changed).await.status(), 202);
    let text = scrape_until(&app, "the conflict dead letter", |text| {
        // The dead letter commits just before its delivery is settled and counted.
        sample(text, r#"cartbus_dead_letters{reason="conflict"}"#) == Some(1.0)
            && sample(text, "cartbus_drain_messages_total") == Some(3.0)
    })
    .await;
    assert_eq!(value(&text, "cartbus_intake_messages_total"), 3.0);
    assert_eq!(value(&text, "cartbus_drain_messages_total"), 3.0);
    assert_eq!(
        value(&text, r#"cartbus_checkouts_total{outcome="queued"}"#),
        3.0
    );

    for (family, kind) in FAMILIES {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "no `# TYPE {family} {kind}` in\n{text}"
        );
    }
    // Prometheus conventions: every counter sample, and nothing else, ends in `_total`.
    let mut kinds = std::collections::HashMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("`# TYPE name kind`");
        kinds.insert(name, kind);
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split([' ', '{']).next().unwrap_or_default();
        let counter = series
            .strip_suffix("_total")
            .is_some_and(|family| kinds.get(family) == Some(&"counter"));
        assert_eq!(
            counter,
            series.ends_with("_total"),
            "{series}: only counters end in _total"
        );
        if !counter {
            assert!(
                kinds.get(series) == Some(&"gauge")
                    || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                        series
                            .strip_suffix(suffix)
                            .is_some_and(|family| kinds.get(family) == Some(&"histogram"))
                    }),
                "{series} belongs to no family"
            );
        }
    }

    // Deleted, the dead letter's reason reads 0: it does not vanish.
    let (status, page) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::GET,
        "/v1/admin/dead-letters?reason=conflict",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let id = page["items"][0]["id"].as_i64().expect("the conflict's id");
    let (status, deleted) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::DELETE,
        &format!("/v1/admin/dead-letters/{id}"),
        Some(json!({ "reason": "metrics test: none left" })),
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    let text = scrape_until(&app, "the conflict reason at 0", |text| {
        sample(text, r#"cartbus_dead_letters{reason="conflict"}"#) == Some(0.0)
    })
    .await;
    for reason in cartbus::domain::Reason::dead_lettered() {
        let series = format!("cartbus_dead_letters{{reason=\"{}\"}}", reason.as_str());
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    app.stop().await.expect("clean stop");
}
