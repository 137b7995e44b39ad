//! The drain switch (DESIGN §6): pause everywhere, know it is drained, resume on the new
//! version — through the admin API of real instances.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{
    Backend, Process, Settings, TestApp, client, eventually, get_json, order_counts, post_cart,
    queued_messages,
};
use serde_json::{Value, json};

const TOKEN: &str = "drain-switch-test-token-0123";

fn with_admin(settings: Settings) -> Settings {
    settings.set("CARTBUS_ADMIN_TOKEN", TOKEN)
}

/// `POST` to an admin endpoint with the token; returns status and body.
async fn admin_post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .header("x-cartbus-actor", "test-operator")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin_get(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Pauses and asserts that the call answered `200` with `drained: true`; returns the status.
async fn pause_until_drained(http: &reqwest::Client, base: &str, body: Value) -> Value {
    let (status, drained) = admin_post(http, base, "/v1/admin/consumer/pause", body).await;
    assert_eq!(
        (status, &drained["drained"]),
        (200, &json!(true)),
        "{drained}"
    );
    drained
}

/// Leased (handed out, unsettled) messages in the embedded queue file.
async fn leased_messages(dir: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("queue.db"))
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open queue file");
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE lease_token IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .expect("count leases")
}

fn instance<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["instance"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_pause_under_load_answers_drained_and_a_resume_orders_everything_once() {
    for backend in
        Backend::all("a_pause_under_load_answers_drained_and_a_resume_orders_everything_once").await
    {
        let dir = tempfile::tempdir().expect("tempdir");
        // Small batches, so that the drain is still under way when the pause lands.
        let settings =
            with_admin(Settings::new(dir.path(), &backend)).set("CARTBUS_CONSUMER_BATCH", "10");
        let app = TestApp::spawn(&settings).await;
        let http = &app.client;
        let (status, _) = admin_post(
            http,
            &app.base,
            "/v1/admin/consumer/pause",
            json!({ "wait_seconds": 10 }),
        )
        .await;
        assert_eq!(status, 200);

        // A backlog builds while paused; every cart stays pending.
        let carts: Vec<Value> = (0..1500).map(|_| common::cart()).collect();
        for chunk in carts.chunks(50) {
            let answers =
                futures::future::join_all(chunk.iter().map(|cart| app.post_cart(cart))).await;
            assert!(answers.iter().all(|r| r.status() == 202));
        }
        let (_, pending) = app
            .get_json(&format!(
                "/v1/checkouts/{}",
                carts[0]["cart_id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(pending["status"], "pending");
        assert_eq!(common::count_orders(&app.state).await, 0);

        // Resume, and pause again while the consumer is busy with the backlog.
        let (status, _) = admin_post(http, &app.base, "/v1/admin/consumer/resume", json!({})).await;
        assert_eq!(status, 200);
        eventually("the consumer busy with the backlog", || async {
            (common::count_orders(&app.state).await > 0).then_some(())
        })
        .await;
        let asked = Instant::now();
        let (status, drained) = admin_post(
            http,
            &app.base,
            "/v1/admin/consumer/pause",
            json!({ "reason": "deploy v2", "wait_seconds": 30 }),
        )
        .await;
        let took = asked.elapsed();
        assert_eq!(
            (status, &drained["drained"]),
            (200, &json!(true)),
            "{drained}"
        );
        let me = instance(&drained, "test");
        assert_eq!(
            (me["state"].as_str(), me["in_flight"].as_i64()),
            (Some("paused"), Some(0))
        );
        common::note(&format!(
            "pause→drained under load took {took:?} ({backend:?})"
        ));

        // Nothing half-done: every cart is an order or still queued, none held by anyone.
        let orders = common::count_orders(&app.state).await;
        let queued = queued_messages(dir.path()).await;
        assert!(
            queued > 0,
            "the pause stopped a backlog in progress ({orders} orders)"
        );
        assert_eq!(orders + queued, 1500);
        assert_eq!(
            leased_messages(dir.path()).await,
            0,
            "deliveries given back"
        );
        let (_, after) = admin_get(http, &app.base, "/v1/admin/consumer").await;
        assert_eq!(
            common::count_orders(&app.state).await,
            orders,
            "nothing consumed while paused"
        );
        assert_eq!(after["desired"], "paused");

        let (status, _) = admin_post(http, &app.base, "/v1/admin/consumer/resume", json!({})).await;
        assert_eq!(status, 200);
        eventually("every cart ordered", || async {
            (common::count_orders(&app.state).await >= 1500).then_some(())
        })
        .await;
        assert_eq!(
            order_counts(&backend, dir.path()).await,
            (1500, 1500),
            "{backend:?}"
        );
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn pausing_and_resuming_twice_is_harmless_and_other_versions_stay_passive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&with_admin(Settings::new(dir.path(), &Backend::Sqlite))).await;
    let http = &app.client;
    for _ in 0..2 {
        pause_until_drained(
            http,
            &app.base,
            json!({ "reason": "twice", "wait_seconds": 10 }),
        )
        .await;
    }
    // A version no live instance runs (a typo at 2 a.m.) is refused, naming the live
    // versions, and changes nothing.
    let (status, refused) = admin_post(
        http,
        &app.base,
        "/v1/admin/consumer/resume",
        json!({ "version": "9.9.9", "reason": "slot swap to 9.9.9" }),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["type"], "/problems/no-live-instance");
    assert_eq!(
        refused["live_versions"],
        json!([env!("CARGO_PKG_VERSION")]),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("9.9.9") && d.contains(env!("CARGO_PKG_VERSION"))),
        "{refused}"
    );
    let (_, status) = admin_get(http, &app.base, "/v1/admin/consumer").await;
    assert_eq!(
        status["desired"], "paused",
        "a refused resume changes nothing"
    );

    // Forced, it goes through and leaves this one passive: carts stay pending.
    let (status, body) = admin_post(
        http,
        &app.base,
        "/v1/admin/consumer/resume",
        json!({ "version": "9.9.9", "reason": "slot swap to 9.9.9", "force": true }),
    )
    .await;
    assert_eq!((status, &body["active_version"]), (200, &json!("9.9.9")));
    eventually("this instance passive", || async {
        let (_, status) = admin_get(http, &app.base, "/v1/admin/consumer").await;
        (instance(&status, "test")["state"] == "passive").then_some(())
    })
    .await;
    let cart = common::cart();
    assert_eq!(app.post_cart(&cart).await.status(), 202);
    let cart_id = cart["cart_id"].as_str().expect("id");
    let (_, checkout) = app.get_json(&format!("/v1/checkouts/{cart_id}")).await;
    assert_eq!(checkout["status"], "pending");

    // Resume with no version: the version of the instance taking the call.
    for _ in 0..2 {
        let (status, body) =
            admin_post(http, &app.base, "/v1/admin/consumer/resume", json!({})).await;
        assert_eq!((status, &body["desired"]), (200, &json!("running")));
        assert_eq!(body["active_version"], env!("CARGO_PKG_VERSION"));
    }
    app.wait_for_order(cart_id).await;
    let (_, history) = admin_get(http, &app.base, "/v1/admin/consumer/history").await;
    let actions: Vec<(&str, Option<&str>)> = history
        .as_array()
        .expect("history list")
        .iter()
        .map(|h| {
            (
                h["action"].as_str().unwrap_or(""),
                h["active_version"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("resume", Some(env!("CARGO_PKG_VERSION"))),
            ("force-resume", Some("9.9.9")),
            ("pause", None),
        ],
        "newest first; the repeated calls changed nothing"
    );
    assert_eq!(history[1]["reason"], "slot swap to 9.9.9", "{history}");
    assert!(
        history[2]["changed_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("test-operator"))
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_pause_survives_a_restart_and_lifts_itself_at_its_until() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = with_admin(Settings::new(dir.path(), &Backend::Sqlite));
    let http = client();
    let mut first = Process::start(&settings, &[]);
    let (status, _) = admin_post(
        &http,
        &first.base,
        "/v1/admin/consumer/pause",
        json!({ "reason": "deploy 42", "wait_seconds": 10 }),
    )
    .await;
    assert_eq!(status, 200);
    first.kill();

    let second = Process::start(&settings, &[]);
    let status = eventually("the restarted instance paused", || async {
        let (_, status) = admin_get(&http, &second.base, "/v1/admin/consumer").await;
        (instance(&status, "test")["state"] == "paused").then_some(status)
    })
    .await;
    assert_eq!(
        (status["desired"].as_str(), status["reason"].as_str()),
        (Some("paused"), Some("deploy 42"))
    );
    let cart = common::cart();
    let cart_id = cart["cart_id"].as_str().expect("id").to_string();
    assert_eq!(post_cart(&http, &second.base, &cart).await.status(), 202);
    let (_, checkout) = get_json(&http, &second.base, &format!("/v1/checkouts/{cart_id}")).await;
    assert_eq!(checkout["status"], "pending");

    // A pause with an expiry lifts itself; the order then gets made.
    let until = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, body) = admin_post(
        &http,
        &second.base,
        "/v1/admin/consumer/pause",
        json!({ "reason": "short window", "until": until, "wait_seconds": 5 }),
    )
    .await;
    assert_eq!(
        (status, &body["drained"]),
        (200, &json!(true)),
        "already paused: drained as soon as this instance sees the change: {body}"
    );
    common::wait_for_order(&http, &second.base, &cart_id).await;
    let (_, history) = admin_get(&http, &second.base, "/v1/admin/consumer/history").await;
    let entries: Vec<(&str, Option<&str>)> = history
        .as_array()
        .expect("history")
        .iter()
        .map(|h| (h["action"].as_str().unwrap_or(""), h["reason"].as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("expire", Some("the pause reached its `until`")),
            ("pause", Some("short window")),
            ("pause", Some("deploy 42")),
        ]
    );
}

#[tokio::test]
async fn a_pause_sent_to_one_instance_stops_both_and_drained_waits_for_both() {
    let backend = match common::postgres_admin_url(
        "a_pause_sent_to_one_instance_stops_both_and_drained_waits_for_both",
    ) {
        Some(admin) => Backend::Postgres(common::fresh_postgres(&admin).await),
        None => Backend::Sqlite,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = with_admin(Settings::new(dir.path(), &backend));
    let http = client();
    let a = Process::start(&settings.set("CARTBUS_INSTANCE", "a"), &[]);
    let settings = with_admin(Settings::new(dir.path(), &backend));
    let mut b = Process::start(&settings.set("CARTBUS_INSTANCE", "b"), &[]);
    eventually("both instances heartbeating", || async {
        let (_, status) = admin_get(&http, &a.base, "/v1/admin/consumer").await;
        (instance(&status, "a")["state"] == "running"
            && instance(&status, "b")["state"] == "running")
            .then_some(())
    })
    .await;
    for _ in 0..200 {
        assert_eq!(
            post_cart(&http, &b.base, &common::cart()).await.status(),
            202
        );
    }

    let drained = pause_until_drained(&http, &a.base, json!({ "wait_seconds": 30 })).await;
    for name in ["a", "b"] {
        let me = instance(&drained, name);
        assert_eq!(
            (me["state"].as_str(), me["in_flight"].as_i64()),
            (Some("paused"), Some(0)),
            "{name}: {drained}"
        );
        assert_eq!(
            me["seen_revision"], drained["revision"],
            "{name} saw this pause"
        );
    }
    let before = order_counts(&backend, dir.path()).await;
    let cart = common::cart();
    let cart_id = cart["cart_id"].as_str().expect("id").to_string();
    assert_eq!(post_cart(&http, &a.base, &cart).await.status(), 202);
    let (_, checkout) = get_json(&http, &b.base, &format!("/v1/checkouts/{cart_id}")).await;
    assert_eq!(checkout["status"], "pending");
    assert_eq!(
        order_counts(&backend, dir.path()).await,
        before,
        "neither consumes"
    );

    let (status, _) = admin_post(&http, &b.base, "/v1/admin/consumer/resume", json!({})).await;
    assert_eq!(status, 200);
    eventually("every cart ordered", || async {
        (order_counts(&backend, dir.path()).await.0 >= 201).then_some(())
    })
    .await;
    assert_eq!(order_counts(&backend, dir.path()).await, (201, 201));

    // b dies without a word (SIGKILL) while running: a pause is drained once b's
    // heartbeats stop counting, and b is no longer listed.
    b.kill();
    let drained = pause_until_drained(&http, &a.base, json!({ "wait_seconds": 30 })).await;
    assert_eq!(instance(&drained, "b"), &Value::Null, "{drained}");
}

/// The slot swap of DESIGN §6, automated, under continuous checkout load.
#[tokio::test]
async fn slot_swap_drill_loses_nothing_and_fails_no_request() {
    let backend =
        match common::postgres_admin_url("slot_swap_drill_loses_nothing_and_fails_no_request") {
            Some(admin) => Backend::Postgres(common::fresh_postgres(&admin).await),
            None => Backend::Sqlite,
        };
    let dir = tempfile::tempdir().expect("tempdir");
    let http = client();
    let v1_settings = with_admin(Settings::new(dir.path(), &backend))
        .set("CARTBUS_INSTANCE", "v1")
        .set("CARTBUS_VERSION", "1.0.0");
    let mut v1 = Process::start(&v1_settings, &[]);

    // Storefront load: 4 clients posting back to back to whichever slot is live.
    let target = Arc::new(std::sync::RwLock::new(v1.base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let target = target.clone();
            let stop = stop.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let base = target.read().map(|t| t.clone()).unwrap_or_default();
                    let cart = common::cart();
                    match http
                        .post(format!("{base}/v1/checkouts"))
                        .json(&cart)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            accepted.push(cart["cart_id"].as_str().unwrap_or("").to_string());
                        }
                        Ok(r) => failures.push(format!("{base}: HTTP {}", r.status())),
                        Err(e) => failures.push(format!("{base}: {e}")),
                    }
                }
                (accepted, failures)
            })
        })
        .collect();
    eventually("v1 taking orders", || async {
        (order_counts(&backend, dir.path()).await.0 > 20).then_some(())
    })
    .await;

    // 1. Pause → drained, under load.
    let asked = Instant::now();
    pause_until_drained(
        &http,
        &v1.base,
        json!({ "reason": "slot swap to 2.0.0", "wait_seconds": 30 }),
    )
    .await;
    common::note(&format!(
        "drill: pause→drained under load in {:?}",
        asked.elapsed()
    ));

    // 2. v2 (newer version, one more migration) starts on the same database and queue.
    let v2_settings = with_admin(Settings::new(dir.path(), &backend))
        .set("CARTBUS_INSTANCE", "v2")
        .set("CARTBUS_VERSION", "2.0.0");
    let v2 = Process::start(&v2_settings, &[("FAILPOINTS", "newer-schema=return")]);
    let status = eventually("v1 fenced by v2's migration, v2 paused", || async {
        let (_, status) = admin_get(&http, &v2.base, "/v1/admin/consumer").await;
        (instance(&status, "v1")["state"] == "fenced"
            && instance(&status, "v2")["state"] == "paused")
            .then_some(status)
    })
    .await;
    assert_eq!(
        instance(&status, "v2")["schema_version"].as_i64(),
        Some(9_000)
    );

    // 2½. Smoke the new version before the swap: v2 passes; v1, fenced, says so. The
    // ledger at the end (exactly one order per accepted cart) shows it kept nothing.
    let smoke = |base: String| {
        let http = http.clone();
        async move {
            let cart = common::cart();
            let (status, report) =
                admin_post(&http, &base, "/v1/admin/smoke", json!({ "carts": [cart] })).await;
            assert_eq!(status, 200, "{report}");
            report
        }
    };
    let report = smoke(v2.base.clone()).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["carts"][0]["outcome"], "would-create-order",
        "{report}"
    );
    let report = smoke(v1.base.clone()).await;
    assert_eq!(report["ok"], false, "{report}");
    let fence = report["fence"]["detail"].as_str().unwrap_or_default();
    assert!(
        fence.contains("fenced") && fence.contains("9000"),
        "{report}"
    );

    // 3. Swap: the load now goes to v2. 4. Resume on v2's version.
    *target.write().expect("target lock") = v2.base.clone();
    let (status, resumed) = admin_post(
        &http,
        &v2.base,
        "/v1/admin/consumer/resume",
        json!({ "version": "2.0.0" }),
    )
    .await;
    assert_eq!((status, &resumed["active_version"]), (200, &json!("2.0.0")));
    let v1_processed = instance(&resumed, "v1")["processed"].clone();
    eventually("v2 consuming", || async {
        let (_, status) = admin_get(&http, &v2.base, "/v1/admin/consumer").await;
        (instance(&status, "v2")["state"] == "running").then_some(())
    })
    .await;
    let v2_seen = order_counts(&backend, dir.path()).await.0;
    eventually("v2 draining the backlog", || async {
        (order_counts(&backend, dir.path()).await.0 > v2_seen + 20).then_some(())
    })
    .await;
    let (_, status) = admin_get(&http, &v2.base, "/v1/admin/consumer").await;
    assert_eq!(
        instance(&status, "v1")["processed"],
        v1_processed,
        "v1 never consumed after the resume"
    );
    assert_eq!(instance(&status, "v1")["state"], "fenced");

    // v1 leaves: SIGTERM, exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(v1.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM v1");
    let exit = eventually("v1 exits", || {
        let exited = v1.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert_eq!(exit.code(), Some(0));

    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    for client in clients {
        let (a, f) = client.await.expect("client");
        accepted.extend(a);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "every request answered 2xx: {failures:?}"
    );
    let expected = accepted.len() as i64;
    eventually("every accepted cart ordered", || async {
        (order_counts(&backend, dir.path()).await.0 >= expected).then_some(())
    })
    .await;
    assert_eq!(
        order_counts(&backend, dir.path()).await,
        (expected, expected),
        "exactly one order each"
    );
    drop(v2);
}

#[tokio::test]
async fn a_fenced_instance_never_writes_orders_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings =
        with_admin(Settings::new(dir.path(), &Backend::Sqlite)).set("CARTBUS_QUEUE_URL", {
            let file = dir.path().join("not-a-directory");
            std::fs::write(&file, b"x").expect("write");
            format!("embedded:{}", file.join("queue.db").display())
        });
    let app = TestApp::spawn(&settings).await;
    // A newer version migrated the database past what this binary knows.
    cartbus::on_db!(&app.state.db, |pool| {
        sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         VALUES (9001, 'newer', CURRENT_TIMESTAMP, TRUE, x'00', 0)"
    )
    .execute(pool)
    .await
    .map(drop)
        .expect("record a newer migration")
    });
    eventually("this instance fenced", || async {
        let (_, status) = admin_get(&app.client, &app.base, "/v1/admin/consumer").await;
        (instance(&status, "test")["state"] == "fenced").then_some(())
    })
    .await;
    let response = app.post_cart(&common::cart()).await;
    assert_eq!(
        response.status(),
        503,
        "queue down and fenced: nowhere to put the cart"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(common::count_orders(&app.state).await, 0);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_never_logs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = client();
    // No token configured: the admin API is off, and the start-up log says so.
    let off = Process::start(&Settings::new(dir.path(), &Backend::Sqlite), &[]);
    for path in ["/v1/admin/consumer", "/v1/admin/consumer/history"] {
        let (status, _) = admin_get(&http, &off.base, path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = admin_post(&http, &off.base, "/v1/admin/consumer/pause", json!({})).await;
    assert_eq!(status, 404);
    assert!(off.logs_contain("admin API off"));
    drop(off);

    let settings =
        with_admin(Settings::new(dir.path(), &Backend::Sqlite)).set("CARTBUS_LOG", "debug");
    let on = Process::start(&settings, &[]);
    let wrong_length = format!("{TOKEN}x");
    let wrong_value = TOKEN.replace('0', "1");
    let cases: [Option<&str>; 3] = [None, Some(&wrong_value), Some(&wrong_length)];
    for token in cases {
        for (method, path) in [
            ("GET", "/v1/admin/consumer"),
            ("POST", "/v1/admin/consumer/pause"),
            ("POST", "/v1/admin/consumer/resume"),
            ("GET", "/v1/admin/consumer/history"),
        ] {
            let mut request = http.request(
                method.parse().expect("method"),
                format!("{}{path}", on.base),
            );
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            assert!(response.headers().contains_key("www-authenticate"));
        }
    }
    let (status, _) = admin_get(&http, &on.base, "/v1/admin/consumer").await;
    assert_eq!(status, 200);
    let (status, _) = admin_post(
        &http,
        &on.base,
        "/v1/admin/consumer/pause",
        json!({ "reason": "x" }),
    )
    .await;
    assert!(status == 200 || status == 202, "{status}");
    assert!(
        on.logs()
            .iter()
            .all(|line| !line.contains(TOKEN) && !line.contains(&wrong_value)),
        "a token reached the logs"
    );
}

#[tokio::test]
async fn bad_admin_bodies_are_422_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&with_admin(Settings::new(dir.path(), &Backend::Sqlite))).await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        ("pause", json!({ "wait_seconds": -1 }), "/wait_seconds"),
        ("pause", json!({ "wait_seconds": "ten" }), "/wait_seconds"),
        ("pause", json!({ "wait_seconds": 301 }), "/wait_seconds"),
        ("pause", json!({ "wait_seconds": 1.5 }), "/wait_seconds"),
        ("pause", json!({ "until": "tomorrow" }), "/until"),
        ("pause", json!({ "until": past }), "/until"),
        ("pause", json!({ "until": 12 }), "/until"),
        ("pause", json!({ "reason": 7 }), "/reason"),
        ("pause", json!({ "reason": "x".repeat(501) }), "/reason"),
        ("pause", json!({ "wait": 5 }), "/wait"),
        ("pause", json!([1]), ""),
        ("resume", json!({ "version": "" }), "/version"),
        ("resume", json!({ "version": 2 }), "/version"),
        ("resume", json!({ "versoin": "2" }), "/versoin"),
        ("resume", json!({ "reason": 7 }), "/reason"),
    ];
    for (action, body, pointer) in cases {
        let (status, problem) = admin_post(
            &app.client,
            &app.base,
            &format!("/v1/admin/consumer/{action}"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 422, "{action} {body}: {problem}");
        let pointers: Vec<&str> = problem["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["pointer"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(pointers, vec![pointer], "{action} {body}");
    }
    let malformed = app
        .client
        .post(app.url("/v1/admin/consumer/pause"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("request");
    assert_eq!(malformed.status(), 400);
    let (status, _) = admin_get(&app.client, &app.base, "/v1/admin/consumer/history?limit=0").await;
    assert_eq!(status, 422);
    // Nothing above changed the switch.
    let (_, history) = admin_get(&app.client, &app.base, "/v1/admin/consumer/history").await;
    assert_eq!(history, json!([]));
    app.stop().await.expect("clean stop");
}

/// Runs `cartbus consumer …` against `base`; returns exit code, stdout, stderr.
async fn cli(base: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .arg("consumer")
        .args(args)
        .env_clear()
        .env("CARTBUS_ADMIN_URL", base)
        .env("CARTBUS_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("run cartbus consumer");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_pauses_resumes_and_exits_with_codes_a_deploy_script_can_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = with_admin(Settings::new(dir.path(), &Backend::Sqlite));
    let http = client();
    let process = Process::start(&settings, &[]);

    let (code, out, err) = cli(
        &process.base,
        TOKEN,
        &["pause", "--reason", "cli drill", "--wait", "30"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("drained: true") && out.contains("cli drill"),
        "{out}"
    );
    let (code, out, _) = cli(&process.base, TOKEN, &["--json", "status"]).await;
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).expect("--json prints the status");
    assert_eq!(status["desired"], "paused");
    // With no $USER or $LOGNAME (the CLI runs with a cleared environment here), the
    // history names the login of the process's user.
    let login = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let login = String::from_utf8_lossy(&login.stdout).trim().to_string();
    assert_eq!(
        status["changed_by"],
        json!(format!("{login} (cli) via test")),
        "{status}"
    );
    let (code, out, _) = cli(&process.base, TOKEN, &["resume", "--reason", "drill over"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("switch: running") && out.contains("drill over"),
        "{out}"
    );

    // The runbook's example version on a deployment that runs another: refused, exit 6,
    // naming the live version; nothing changes until --force.
    let (code, _, err) = cli(&process.base, TOKEN, &["resume", "--version", "2.0.0"]).await;
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("2.0.0") && err.contains(env!("CARGO_PKG_VERSION")) && err.contains("force"),
        "{err}"
    );
    let (code, out, err) = cli(
        &process.base,
        TOKEN,
        &["resume", "--version", "2.0.0", "--force"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("active version: 2.0.0"), "{out}");
    let (code, _, err) = cli(&process.base, TOKEN, &["resume"]).await;
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = cli(&process.base, "not-the-token-at-all", &["status"]).await;
    assert_eq!(code, 4, "{err}");
    // No token at all: the error names the variable to set, before any request.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(["consumer", "status"])
        .env_clear()
        .env("CARTBUS_ADMIN_URL", &process.base)
        .output()
        .await
        .expect("run cartbus consumer");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{err}");
    assert!(
        err.contains("CARTBUS_ADMIN_TOKEN") && err.contains("--token"),
        "{err}"
    );
    // --help says where both settings come from and how to put the CLI on PATH.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(["consumer", "--help"])
        .env_clear()
        .env("CARTBUS_ADMIN_URL", &process.base)
        .output()
        .await
        .expect("run cartbus consumer --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "CARTBUS_ADMIN_URL",
        "CARTBUS_ADMIN_TOKEN",
        "cargo install --path . --locked",
        "(cli) via",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(
        !help.contains(&process.base),
        "--help shows the same text whatever CARTBUS_ADMIN_URL holds:\n{help}"
    );
    let (code, _, err) = cli(&process.base, TOKEN, &["pause", "--until", "soon"]).await;
    assert_eq!((code, err.contains("/until")), (6, true), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let (code, _, _) = cli(&nowhere, TOKEN, &["status"]).await;
    assert_eq!(code, 1);
    drop(process);

    let off = Process::start(&Settings::new(dir.path(), &Backend::Sqlite), &[]);
    let (code, _, err) = cli(&off.base, TOKEN, &["status"]).await;
    assert_eq!(code, 5, "{err}");
    drop(off);

    // An instance stuck mid-batch (frozen after its commit): the wait ends undrained.
    let stuck = Process::start(
        &settings,
        &[("FAILPOINTS", "consumer-before-settle=return")],
    );
    for _ in 0..5 {
        assert_eq!(
            post_cart(&http, &stuck.base, &common::cart())
                .await
                .status(),
            202
        );
    }
    eventually("the consumer stuck with work in hand", || async {
        let (_, status) = admin_get(&http, &stuck.base, "/v1/admin/consumer").await;
        (instance(&status, "test")["in_flight"].as_i64() > Some(0)).then_some(())
    })
    .await;
    let (code, _, err) = cli(&stuck.base, TOKEN, &["pause", "--wait", "2"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not drained") && err.contains("in flight"),
        "{err}"
    );
}

#[tokio::test]
async fn an_instance_that_missed_the_pause_still_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = with_admin(Settings::new(dir.path(), &Backend::Sqlite));
    let http = client();
    // Its watcher stops reading the switch once it is consuming: it never hears of the
    // pause below and keeps its consumer running.
    let deaf = Process::start(
        &settings,
        &[("FAILPOINTS", "control-watch-after-consume=return")],
    );
    let first = common::cart();
    assert_eq!(post_cart(&http, &deaf.base, &first).await.status(), 202);
    common::wait_for_order(&http, &deaf.base, first["cart_id"].as_str().expect("id")).await;

    let (status, _) = admin_post(
        &http,
        &deaf.base,
        "/v1/admin/consumer/pause",
        json!({ "reason": "deaf test" }),
    )
    .await;
    assert!(status == 200 || status == 202);
    for _ in 0..20 {
        assert_eq!(
            post_cart(&http, &deaf.base, &common::cart()).await.status(),
            202
        );
    }
    // The consumer takes them, finds the switch paused inside its transaction, and gives
    // them back: no order is written while paused.
    let metrics = eventually("the consumer gave a batch back", || async {
        let text = common::metrics_text(&http, &deaf.base).await;
        text.lines()
            .any(|l| {
                l.starts_with("cartbus_consumer_messages_total{outcome=\"released\"}")
                    && !l.ends_with(" 0")
            })
            .then_some(text)
    })
    .await;
    assert!(deaf.logs_contain("the drain switch says stop"), "{metrics}");
    assert_eq!(order_counts(&Backend::Sqlite, dir.path()).await, (1, 1));
    assert_eq!(queued_messages(dir.path()).await, 20, "all still queued");
}

#[tokio::test]
async fn concurrent_switch_changes_each_get_their_own_revision() {
    let backend =
        match common::postgres_admin_url("concurrent_switch_changes_each_get_their_own_revision") {
            Some(admin) => Backend::Postgres(common::fresh_postgres(&admin).await),
            None => Backend::Sqlite,
        };
    let dir = tempfile::tempdir().expect("tempdir");
    let a = TestApp::spawn(
        &with_admin(Settings::new(dir.path(), &backend)).set("CARTBUS_INSTANCE", "a"),
    )
    .await;
    let b = TestApp::spawn(
        &with_admin(Settings::new(dir.path(), &backend)).set("CARTBUS_INSTANCE", "b"),
    )
    .await;
    let calls = (0..20).map(|n| {
        let (app, action, body) = match n % 4 {
            0 => (&a, "pause", json!({ "reason": format!("p{n}") })),
            1 => (
                &b,
                "resume",
                json!({ "version": format!("v{n}"), "force": true }),
            ),
            2 => (&b, "pause", json!({ "reason": format!("p{n}") })),
            _ => (
                &a,
                "resume",
                json!({ "version": format!("v{n}"), "force": true }),
            ),
        };
        async move {
            admin_post(
                &app.client,
                &app.base,
                &format!("/v1/admin/consumer/{action}"),
                body,
            )
            .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == 200 || *status == 202),
        "{answers:?}"
    );
    let (_, history) = admin_get(&a.client, &a.base, "/v1/admin/consumer/history").await;
    let revisions: Vec<i64> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["revision"].as_i64())
        .collect();
    let mut unique = revisions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        revisions.len(),
        "no two changes built on one revision: {revisions:?}"
    );
    assert_eq!(revisions.len(), 20, "every call changed something");
    let (_, status) = admin_get(&a.client, &a.base, "/v1/admin/consumer").await;
    assert_eq!(
        status["revision"].as_i64(),
        revisions.first().copied(),
        "the switch is the last change"
    );
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test]
async fn liveness_and_a_timed_pause_go_by_the_database_clock_not_an_instances_own() {
    const TEST: &str = "liveness_and_a_timed_pause_go_by_the_database_clock_not_an_instances_own";
    let backend = match common::postgres_admin_url(TEST) {
        Some(admin) => Backend::Postgres(common::fresh_postgres(&admin).await),
        None => Backend::Sqlite,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = with_admin(Settings::new(dir.path(), &backend));
    let a = TestApp::spawn(&settings.with("CARTBUS_INSTANCE", "a")).await;
    // Two more instances whose own clocks are off by half a minute (a test-only skew).
    let _slow = Process::start(
        &settings.with("CARTBUS_INSTANCE", "slow"),
        &[("FAILPOINTS", "clock-skew-ms=return(-30000)")],
    );
    let _fast = Process::start(
        &settings.with("CARTBUS_INSTANCE", "fast"),
        &[("FAILPOINTS", "clock-skew-ms=return(30000)")],
    );

    // Both count as live: their heartbeats carry the database's time, not their own.
    eventually("both skewed instances live", || async {
        let (_, status) = admin_get(&a.client, &a.base, "/v1/admin/consumer").await;
        (!instance(&status, "slow").is_null() && !instance(&status, "fast").is_null()).then_some(())
    })
    .await;

    // A pause until three seconds from now is not lifted early by the instance whose own
    // clock is already past it.
    let until = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (status, body) = admin_post(
        &a.client,
        &a.base,
        "/v1/admin/consumer/pause",
        json!({ "reason": "timed", "until": until.to_rfc3339() }),
    )
    .await;
    assert!(status == 200 || status == 202, "{body}");
    let lifted_at = eventually("the timed pause lifted", || async {
        let (_, status) = admin_get(&a.client, &a.base, "/v1/admin/consumer").await;
        (status["desired"] == "running").then(chrono::Utc::now)
    })
    .await;
    assert!(
        lifted_at >= until,
        "lifted at {lifted_at}, before its until {until}"
    );
    let (_, history) = admin_get(&a.client, &a.base, "/v1/admin/consumer/history").await;
    assert_eq!(history[0]["action"], "expire", "{history}");
    let recorded: chrono::DateTime<chrono::Utc> = history[0]["changed_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("changed_at");
    assert!(
        recorded >= until,
        "the history says it lifted at {recorded}, before {until}"
    );
    a.stop().await.expect("clean stop");
}
