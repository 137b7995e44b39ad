//! RabbitMQ's management API (issue 18). `cartbus broker setup` declares quorum queues
//! and the dead-letter policy through it. And the backlog on a real broker: with
//! `CARTBUS_BROKER_MANAGEMENT_URL` the cart queue's depth and oldest message come from
//! it into `/v1/admin/consumer` and `/metrics`; a failed read serves the last figures
//! marked stale; without the API the depth is absent, never a false 0.

mod common;

use common::proxy::Proxy;
use common::{Backend, TestApp, broker, eventually, metrics_text, sample};
use serde_json::{Value, json};

const TOKEN: &str = "broker-backlog-admin-token-0123";

async fn status(app: &TestApp) -> Value {
    common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::GET,
        "/v1/admin/consumer",
        None,
    )
    .await
    .1
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> Value {
    let (code, answer) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        path,
        Some(body),
    )
    .await;
    assert_eq!(code, 200, "{path}: {answer}");
    answer
}

#[tokio::test]
async fn a_brokers_backlog_comes_from_its_management_api_and_goes_stale_not_wrong() {
    const TEST: &str = "a_brokers_backlog_comes_from_its_management_api_and_goes_stale_not_wrong";
    let (Some(url), Some(management)) = (broker::url(TEST), broker::management_url(TEST)) else {
        return;
    };
    // Through a proxy the test can cut, so that a read can fail after one has worked.
    let management = url::Url::parse(&management).expect("management URL");
    let upstream = format!(
        "{}:{}",
        management.host_str().unwrap_or("127.0.0.1"),
        management.port().unwrap_or(15672)
    );
    let proxy = Proxy::start(
        tokio::net::lookup_host(&upstream)
            .await
            .expect("resolve the management API")
            .next()
            .expect("an address"),
    )
    .await;
    let mut through_proxy = management.clone();
    through_proxy.set_port(Some(proxy.port)).expect("a port");
    let password = management.password().unwrap_or_default().to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    let queue = broker::fresh_queue();
    let app = TestApp::spawn(
        &broker::settings(dir.path(), &Backend::Sqlite, &url, &queue)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_BROKER_MANAGEMENT_URL", through_proxy.as_str()),
    )
    .await;
    broker::wait_connected(&app.state).await;
    admin_post(
        &app,
        "/v1/admin/consumer/pause",
        json!({ "reason": "backlog test", "wait_seconds": 30 }),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(app.post_cart(&common::cart()).await.status(), 202);
    }

    // RabbitMQ refreshes a queue's figures every 5 s: poll until they show the three.
    let backlog = eventually("the broker's depth in /v1/admin/consumer", || async {
        let backlog = status(&app).await["backlog"].clone();
        (backlog["depth"] == 3 && backlog["depth_stale"] == false).then_some(backlog)
    })
    .await;
    common::note(&format!("backlog read from RabbitMQ: {backlog}"));
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        sample(&text, "cartbus_queue_depth_messages"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"cartbus_sample_stale{figure="queue_depth"}"#),
        Some(0.0)
    );
    // cartbus sets each message's creation-time, which RabbitMQ reports for the first
    // one waiting: older than the wait for the figures above, and less than a minute.
    let age = backlog["oldest_age_seconds"].as_f64().unwrap_or(-1.0);
    assert!((0.0..60.0).contains(&age), "{backlog}");
    assert!(
        sample(&text, "cartbus_queue_oldest_age_seconds").is_some_and(|a| a > 0.0),
        "{text}"
    );

    // The API unreachable: the last figures stay, marked stale, in both places.
    proxy.cut();
    let backlog = eventually("the depth marked stale", || async {
        let backlog = status(&app).await["backlog"].clone();
        (backlog["depth_stale"] == true).then_some(backlog)
    })
    .await;
    assert_eq!(backlog["depth"], 3, "{backlog}");
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        sample(&text, r#"cartbus_sample_stale{figure="queue_depth"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "cartbus_queue_depth_messages"), Some(3.0));

    // Back, and resumed: the depth falls to 0, fresh.
    proxy.mend();
    admin_post(&app, "/v1/admin/consumer/resume", json!({})).await;
    let backlog = eventually("the queue drained, as the broker reports it", || async {
        let backlog = status(&app).await["backlog"].clone();
        (backlog["depth"] == 0 && backlog["depth_stale"] == false).then_some(backlog)
    })
    .await;
    assert_eq!(backlog["catch_up_eta_seconds"], 0.0, "{backlog}");
    let everything = format!(
        "{}{}",
        status(&app).await,
        metrics_text(&app.client, &app.base).await
    );
    assert!(
        password.len() < 4 || !everything.contains(&format!(":{password}@")),
        "the management password never shows"
    );
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

#[tokio::test]
async fn without_a_management_api_a_brokers_depth_is_absent_not_zero() {
    const TEST: &str = "without_a_management_api_a_brokers_depth_is_absent_not_zero";
    let Some(url) = broker::url(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = broker::fresh_queue();
    let app = TestApp::spawn(
        &broker::settings(dir.path(), &Backend::Sqlite, &url, &queue)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN),
    )
    .await;
    broker::wait_connected(&app.state).await;
    assert_eq!(app.post_cart(&common::cart()).await.status(), 202);
    let text = metrics_text(&app.client, &app.base).await;
    assert_eq!(
        sample(&text, "cartbus_queue_depth_messages"),
        None,
        "{text}"
    );
    assert_eq!(sample(&text, "cartbus_queue_oldest_age_seconds"), None);
    assert!(text.contains("# TYPE cartbus_queue_depth_messages gauge"));
    assert_eq!(
        sample(&text, r#"cartbus_sample_stale{figure="queue_depth"}"#),
        Some(1.0)
    );
    let backlog = status(&app).await["backlog"].clone();
    assert_eq!(backlog["depth"], Value::Null, "{backlog}");
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}

/// `cartbus broker setup` with quorum queues through the management API: every queue
/// cartbus uses is a quorum queue, the dead-letter policy is set, a second run changes
/// nothing, and an instance on the default (non-declaring) addresses turns a cart into
/// an order whose hand-off reaches the partner's quorum queue.
#[tokio::test]
async fn broker_setup_declares_quorum_queues_and_the_policy_through_the_management_api() {
    const TEST: &str =
        "broker_setup_declares_quorum_queues_and_the_policy_through_the_management_api";
    let (Some(url), Some(management)) = (broker::url(TEST), broker::management_url(TEST)) else {
        return;
    };
    let tag = broker::fresh_queue();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = broker::settings(dir.path(), &Backend::Sqlite, &url, &format!("{tag}-carts"))
        .set("CARTBUS_CART_ADDRESS", format!("/amq/queue/{tag}-carts"))
        .set("CARTBUS_AMQP_QUEUE_TYPE", "quorum")
        .set("CARTBUS_BROKER_MANAGEMENT_URL", &management)
        .set("CARTBUS_ROUTES", "*=acme")
        .set(
            "CARTBUS_PARTNER_ACME_ADDRESS",
            format!("/amq/queue/{tag}-acme"),
        )
        .set("CARTBUS_STATUS_ADDRESS", format!("/amq/queue/{tag}-status"))
        .set("CARTBUS_AUDIT_ADDRESS", format!("/amq/queue/{tag}-audit"));
    let setup = || async {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
            .args(["broker", "setup"])
            .env_clear()
            .envs(settings.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await
            .expect("run cartbus broker setup");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    };
    let first = setup().await;
    common::note(&format!("cartbus broker setup (quorum):\n{first}"));
    let queues = ["carts", "carts.dlq", "status", "audit", "acme"];
    for queue in queues {
        assert!(
            first.contains(&format!("quorum queue {tag}-{queue} (")) && !first.contains("password"),
            "{queue}: {first}"
        );
        let info = management_get(&management, &format!("queues/%2F/{tag}-{queue}")).await;
        assert_eq!(info["type"], "quorum", "{queue}: {info}");
    }
    let policy = management_get(&management, &format!("policies/%2F/{tag}-carts-dlx")).await;
    assert_eq!(
        policy["definition"]["dead-letter-routing-key"],
        format!("{tag}-carts.dlq"),
        "{policy}"
    );
    let again = setup().await;
    assert_eq!(
        again.matches(": already there").count(),
        queues.len(),
        "{again}"
    );

    let app = TestApp::spawn(&settings.set("CARTBUS_ADMIN_TOKEN", TOKEN)).await;
    broker::wait_connected(&app.state).await;
    let cart = common::cart();
    assert_eq!(
        app.post_cart(&cart).await.status(),
        202,
        "queued on the quorum queue"
    );
    app.wait_for_order(cart["cart_id"].as_str().unwrap_or_default())
        .await;
    eventually("the order on the partner's quorum queue", || async {
        let info = management_get(&management, &format!("queues/%2F/{tag}-acme")).await;
        (info["messages"].as_u64() == Some(1)).then_some(())
    })
    .await;
    app.stop().await.expect("clean stop");
    // Also clears the `{tag}-carts-dlx` policy.
    for queue in queues {
        broker::delete(&format!("{tag}-{queue}"));
    }
}

/// A GET on the management API (`path` under `/api/`), as JSON.
async fn management_get(management: &str, path: &str) -> Value {
    let base = url::Url::parse(management).expect("management URL");
    let mut endpoint = base.join(&format!("api/{path}")).expect("a path");
    let (user, password) = (
        base.username().to_string(),
        base.password().map(str::to_string),
    );
    let _ = endpoint.set_username("");
    let _ = endpoint.set_password(None);
    reqwest::Client::new()
        .get(endpoint)
        .basic_auth(user, password)
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("JSON")
}
