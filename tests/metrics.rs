//! `/metrics` shows what the admin page shows — the backlog, its rates and catch-up
//! estimate, the drain switch, instances by state, outbox rows and dead letters — under
//! the names and types the metrics table in docs/operations.md documents; every known
//! counter outcome and dead-letter reason at 0 rather than absent, and which sampled
//! figure is stale.

mod common;

use common::{Backend, Settings, TestApp, eventually, metrics_text, sample};
use serde_json::{Value, json};

const TOKEN: &str = "metrics-test-admin-token-0001";

/// Every family in docs/operations.md's metrics table, with its type. Counters are named here as
/// their `# TYPE` line names them: without the `_total` their samples carry. Not here:
/// `cartbus_broker_connection_info`, which has no series (and so no lines) without a broker
/// connection; tests/broker_nodes.rs checks it.
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

/// Each labelled counter, named as its samples are, with the outcomes it knows.
fn counter_families() -> [(&'static str, &'static [&'static str]); 8] {
    use cartbus::metrics::outcomes;
    [
        ("cartbus_checkouts_total", outcomes::CHECKOUTS.as_slice()),
        (
            "cartbus_consumer_messages_total",
            outcomes::CONSUMER.as_slice(),
        ),
        ("cartbus_outbox_events_total", outcomes::OUTBOX.as_slice()),
        (
            "cartbus_partner_replies_total",
            outcomes::PARTNER_REPLIES.as_slice(),
        ),
        (
            "cartbus_dead_letter_resubmits_total",
            outcomes::DEAD_LETTER_RESUBMITS.as_slice(),
        ),
        (
            "cartbus_payment_calls_total",
            outcomes::PAYMENT_CALLS.as_slice(),
        ),
        (
            "cartbus_webhook_calls_total",
            outcomes::WEBHOOK_CALLS.as_slice(),
        ),
        ("cartbus_smoke_runs_total", outcomes::SMOKE_RUNS.as_slice()),
    ]
}

/// The words in backquotes in the meaning column of `series`'s row of the metrics table
/// that look like label values (`queued`, `created-order`; not `POST /v1/checkouts`).
fn documented_values(series: &str) -> Vec<String> {
    let docs = include_str!("../docs/operations.md");
    let row = docs
        .lines()
        .find(|l| l.starts_with(&format!("| `{series}` |")))
        .unwrap_or_else(|| panic!("no row for {series} in docs/operations.md"));
    let meaning = row.split(" | ").nth(3).expect("a meaning column");
    meaning
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            word.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_fresh_instance_shows_every_known_outcome_reason_and_figure_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite)).await;
    let text = metrics_text(&app.client, &app.base).await;
    // Present, at 0: `common::metric` would read a missing series as 0 too.
    let has = |line: String| {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    };
    for (series, known) in counter_families() {
        for outcome in known {
            has(format!("{series}{{outcome=\"{outcome}\"}} 0"));
        }
        let shown = text
            .lines()
            .filter(|l| l.starts_with(&format!("{series}{{")))
            .count();
        assert_eq!(shown, known.len(), "{series}: only the known outcomes");
        // What the metrics table promises is among them.
        let documented = documented_values(series);
        assert!(!documented.is_empty(), "{series}: no values documented");
        for value in documented {
            assert!(
                known.contains(&value.as_str()),
                "{series}: `{value}` is documented but not known"
            );
        }
    }
    for reason in cartbus::domain::Reason::dead_lettered() {
        has(format!(
            "cartbus_dead_letters{{reason=\"{}\"}} 0",
            reason.as_str()
        ));
    }
    for figure in cartbus::metrics::Figure::ALL {
        has(format!(
            "cartbus_sample_stale{{figure=\"{}\"}} 0",
            figure.as_str()
        ));
    }
    let documented = documented_values("cartbus_sample_stale");
    for figure in cartbus::metrics::Figure::ALL {
        assert!(
            documented.iter().any(|d| d == figure.as_str()),
            "figure {figure:?} is not documented"
        );
    }
    for documented in documented {
        if cartbus::metrics::Figure::ALL
            .iter()
            .all(|f| f.as_str() != documented)
        {
            assert!(
                documented.starts_with("cartbus_"),
                "figure `{documented}` is documented but not sampled"
            );
        }
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_figure_whose_read_times_out_keeps_its_last_value_and_is_flagged_stale() {
    use cartbus::metrics::Figure;

    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        .set("CARTBUS_CONFLICT_CHECK_MS", "0");
    // The dead-letter count at scrape: read at the first scrape, 2 s (over the 1 s
    // timeout) at the second, read again from the third. Nothing but this test scrapes.
    let process = common::Process::start(
        &settings,
        &[(
            "FAILPOINTS",
            "sample-slow-dead_letters=1*off->1*return(2000)->off",
        )],
    );
    let client = common::client();
    let stale = |text: &str, figure: Figure| {
        sample(
            text,
            &format!("cartbus_sample_stale{{figure=\"{}\"}}", figure.as_str()),
        )
    };
    let conflicts = r#"cartbus_dead_letters{reason="conflict"}"#;

    let first = metrics_text(&client, &process.base).await;
    for figure in Figure::ALL {
        assert_eq!(stale(&first, figure), Some(0.0), "{figure:?}\n{first}");
    }
    assert_eq!(sample(&first, conflicts), Some(0.0));

    // A conflict dead letter, seen through the admin API (which does not scrape).
    let cart = common::cart();
    let cart_id = cart["cart_id"].as_str().expect("cart_id").to_string();
    assert_eq!(
        common::post_cart(&client, &process.base, &cart)
            .await
            .status(),
        202
    );
    common::wait_for_order(&client, &process.base, &cart_id).await;
    let mut changed = cart.clone();
    changed["lines"][0]["name"] = json!("Something else");
    assert_eq!(
        common::post_cart(&client, &process.base, &changed)
            .await
            .status(),
        202
    );
    eventually("the conflict dead letter", || async {
        let (status, page) = common::admin_call(
            &client,
            &process.base,
            TOKEN,
            reqwest::Method::GET,
            "/v1/admin/dead-letters?reason=conflict",
            None,
        )
        .await;
        (status == 200 && page["items"].as_array().is_some_and(|i| i.len() == 1)).then_some(())
    })
    .await;

    // Timed out: the count shown is the old one, and says so; the other figures are fresh.
    let second = metrics_text(&client, &process.base).await;
    assert_eq!(stale(&second, Figure::DeadLetters), Some(1.0), "{second}");
    assert_eq!(sample(&second, conflicts), Some(0.0), "the last value read");
    for figure in Figure::ALL
        .into_iter()
        .filter(|f| *f != Figure::DeadLetters)
    {
        assert_eq!(stale(&second, figure), Some(0.0), "{figure:?}\n{second}");
    }

    // Read again: fresh, and right.
    let third = metrics_text(&client, &process.base).await;
    assert_eq!(stale(&third, Figure::DeadLetters), Some(0.0), "{third}");
    assert_eq!(sample(&third, conflicts), Some(1.0), "{third}");
}
