//! Health, metrics, request ids, graceful shutdown, start-up errors and `cartbus migrate`.

mod common;

use std::process::Command;

use common::{Backend, Process, Settings, TestApp, cart, client, eventually, get_json, post_cart};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test]
async fn health_and_metrics_tell_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app =
        TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_CONSUMER", "off"))
            .await;
    let (status, live) = app.get_json("/health/live").await;
    assert_eq!((status, live["status"].as_str()), (200, Some("live")));
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["queue_up"], true);
    assert_eq!(ready["database_up"], true);
    assert_eq!(ready["migrated"], true);
    assert_eq!(ready["instance"], "test");

    for _ in 0..3 {
        assert_eq!(app.post_cart(&cart()).await.status(), 202);
    }
    let mut bad = cart();
    bad["total"] = 1.into();
    assert_eq!(app.post_cart(&bad).await.status(), 422);

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    for expected in [
        r#"cartbus_checkouts_total{outcome="queued"} 3"#,
        r#"cartbus_checkouts_total{outcome="invalid"} 1"#,
        "cartbus_queue_depth_messages 3",
        "cartbus_ready 1",
        r#"cartbus_http_request_duration_seconds_count{method="POST",route="/v1/checkouts",status="202"} 3"#,
        "# TYPE cartbus_queue_oldest_age_seconds gauge",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_response_and_its_log_lines_carry_a_request_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite);
    let process = Process::start(&settings, &[("CARTBUS_LOG", "info,tower_http=debug")]);
    let http = client();

    let response = http
        .get(format!("{}/health/live", process.base))
        .send()
        .await
        .expect("GET");
    let generated = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let mine = "req-test-7f3a9c";
    let response = http
        .post(format!("{}/v1/checkouts", process.base))
        .header("x-request-id", mine)
        .json(&cart())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.headers()["x-request-id"], mine);
    eventually("a log line with the request id", || async {
        process.logs_contain(mine).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_turns_readiness_off_gives_back_deliveries_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite);
    let http = client();

    // A backlog to be in the middle of when the signal comes.
    let mut loader = Process::start(&settings, &[("CARTBUS_CONSUMER", "off")]);
    let carts = 300;
    for _ in 0..carts {
        assert_eq!(post_cart(&http, &loader.base, &cart()).await.status(), 202);
    }
    loader.kill();

    let mut process = Process::start(
        &settings,
        // One cart per transaction, so the signal lands mid-backlog.
        &[
            ("CARTBUS_SHUTDOWN_DELAY_SECONDS", "1"),
            ("CARTBUS_CONSUMER_BATCH", "1"),
        ],
    );
    eventually("consumer under way", || async {
        (common::order_counts(&Backend::Sqlite, dir.path()).await.0 > 0).then_some(())
    })
    .await;
    kill(Pid::from_raw(process.pid()), Signal::SIGTERM).expect("SIGTERM");

    // During the delay the instance still answers, but says it is not ready.
    let ready = eventually("readiness off", || async {
        let (status, ready) = get_json(&http, &process.base, "/health/ready").await;
        (status == 503).then_some(ready)
    })
    .await;
    assert_eq!(ready["shutting_down"], true);

    let exit = eventually("process exits", || {
        let status = process.child.try_wait().expect("wait");
        async move { status }
    })
    .await;
    assert_eq!(exit.code(), Some(0), "logs: {:?}", process.logs());

    let (orders, distinct) = common::order_counts(&Backend::Sqlite, dir.path()).await;
    assert_eq!(orders, distinct);
    let waiting = common::queued_messages(dir.path()).await;
    assert_eq!(
        orders + waiting,
        carts,
        "every cart is an order or still queued"
    );
    let leased = leased_messages(dir.path()).await;
    assert_eq!(leased, 0, "nothing may stay leased after a graceful stop");
}

async fn leased_messages(data_dir: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("queue.db"))
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open");
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE lease_owner IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

fn cartbus(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cartbus"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run cartbus")
}

#[test]
fn a_bad_setting_stops_start_up_naming_it_without_printing_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    for (key, value) in [
        ("CARTBUS_CONSUMER_BATCH", "0"),
        ("CARTBUS_LISTEN", "everywhere"),
        ("CARTBUS_CONSUMER", "sometimes"),
        ("DATABASE_URL", "mysql://shop:hunter2-secret@db/shop"),
        ("CARTBUS_ADMIN_TOKEN", "short"),
    ] {
        let output = cartbus(&[], &[("CARTBUS_DATA_DIR", &data), (key, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in {stderr:?}");
        assert!(
            !stderr.contains("hunter2-secret"),
            "secret printed: {stderr}"
        );
    }
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let output = cartbus(&["migrate"], &[("CARTBUS_DATA_DIR", &data)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = std::fs::read(dir.path().join("cartbus.db")).expect("database file");
    let text = String::from_utf8_lossy(&db);
    assert!(text.contains("CREATE TABLE orders"), "schema not applied");
    // Running it again is harmless.
    let output = cartbus(&["migrate"], &[("CARTBUS_DATA_DIR", &data)]);
    assert!(output.status.success());
}

#[tokio::test]
async fn a_config_file_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cartbus.toml");
    std::fs::write(
        &file,
        "instance = \"from-file\"\nconsumer = \"off\"\nversion = \"9.9.9\"\n",
    )
    .expect("write");
    let settings = Settings::new(dir.path(), &Backend::Sqlite);
    let mut vars: Vec<(String, String)> = settings
        .vars
        .into_iter()
        .filter(|(k, _)| k != "CARTBUS_INSTANCE")
        .collect();
    vars.push(("CARTBUS_VERSION".into(), "1.2.3".into()));
    let settings = Settings { vars, ..settings };
    let file_arg = file.display().to_string();
    let process = Process::start(&settings, &[("CARTBUS_CONFIG", file_arg.as_str())]);
    let (status, ready) = get_json(&client(), &process.base, "/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["instance"], "from-file");
    assert_eq!(ready["version"], "1.2.3");
    // The file said consumer = off: the instance says so, and a queued cart stays queued.
    eventually("consumer reported off", || async {
        process.logs_contain("CARTBUS_CONSUMER=off").then_some(())
    })
    .await;
    assert_eq!(
        post_cart(&client(), &process.base, &cart()).await.status(),
        202
    );
    assert_eq!(common::queued_messages(dir.path()).await, 1);
}

#[tokio::test]
async fn past_its_in_flight_limit_intake_sheds_with_503_and_retry_after() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_MAX_IN_FLIGHT", "2");
    let app = TestApp::spawn(&settings).await;
    let address = app.base.trim_start_matches("http://").to_string();
    // Two checkouts that announce a body and never send it hold both slots.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        socket
            .write_all(
                b"POST /v1/checkouts HTTP/1.1\r\nHost: cartbus\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
            )
            .await
            .expect("write head");
        stalled.push(socket);
    }
    let shed = eventually("a checkout shed", || async {
        let response = app.post_cart(&cart()).await;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert_eq!(
        shed.headers()["retry-after"],
        "5",
        "CARTBUS_RETRY_AFTER_SECONDS"
    );
    assert_eq!(shed.headers()["content-type"], "application/problem+json");
    let (_, health) = app.get_json("/health/ready").await;
    assert_eq!(health["ready"], true, "shedding is not being down");

    drop(stalled);
    eventually("checkouts taken again", || async {
        (app.post_cart(&cart()).await.status() == 202).then_some(())
    })
    .await;
    let metrics = common::metrics_text(&app.client, &app.base).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("cartbus_checkouts_total{outcome=\"shed\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}
