//! The deploy-window page (issue 8, part 2). Without a browser: `/admin` and its assets are
//! served from the binary with strict headers and stay out of the OpenAPI document, while
//! the data behind them still needs the token. In a real browser (`tests/browser/`,
//! playwright-core driving Debian's chromium): an operator signs in, pauses, sees the
//! instances drain, resumes, and dry-runs then resubmits a dead letter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cartbus::domain::Reason;
use cartbus::domain::partner::{self, StatusReply};
use cartbus::domain::{Cart, cart_message as message};
use common::{Backend, Settings, TestApp, eventually, services_required, skipped};
use serde_json::{Value, json};

const TOKEN: &str = "admin-page-test-token-0001";
/// The partner key of the RabbitMQ page test, whose site holds a reply meant for another.
const PARTNER_SECRET: &str = "admin-page-partner-key-0001";
/// The browser script's own deadlines are 30 s a step; this bounds the whole run.
const BROWSER_RUN: Duration = Duration::from_secs(180);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_strict_headers_and_no_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", TOKEN),
    )
    .await;

    for (path, content_type, source) in [
        ("/admin", "text/html", "src/http/admin_page/index.html"),
        (
            "/admin/app.js",
            "text/javascript",
            "src/http/admin_page/app.js",
        ),
        ("/admin/app.css", "text/css", "src/http/admin_page/app.css"),
    ] {
        // No token: the page is public; what it shows is not.
        let response = app.client.get(app.url(path)).send().await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert!(policy.contains("form-action 'none'"), "{path}: {policy}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = response.text().await.expect("body");
        let file = std::fs::read_to_string(manifest_dir().join(source)).expect("asset source");
        assert_eq!(body, file, "{path} is served as committed");
    }
    let html = std::fs::read_to_string(manifest_dir().join("src/http/admin_page/index.html"))
        .expect("index.html");
    assert!(
        !html.contains("<script>") && !html.contains("style=\""),
        "no inline script or style: the CSP would block it"
    );

    let (status, _) = app.get_json("/v1/admin/consumer").await;
    assert_eq!(status, 401, "the page's data needs the token");
    let (_, openapi) = app.get_json("/openapi.json").await;
    let paths = openapi["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|p| !p.starts_with("/admin")),
        "the page is not API: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    app.stop().await.expect("clean stop");
}

/// The chromium to drive (`CARTBUS_TEST_CHROMIUM`, else Debian's), or `None` when the
/// browser test cannot run here: skipped, said loudly, or failed when services are required.
fn browser(test: &str) -> Option<PathBuf> {
    let chromium = std::env::var_os("CARTBUS_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    match browser_missing(&chromium) {
        None => Some(chromium),
        Some(why) => {
            assert!(
                !services_required(),
                "CARTBUS_REQUIRE_SERVICES=1 but the browser test {why}"
            );
            skipped(test, &why);
            None
        }
    }
}

/// Runs `tests/browser/<script>` with node, `env` and the browser; fails the test with
/// the script's output if it fails. Returns the folder its screenshots went to.
async fn run_browser(script: &str, chromium: &Path, env: &[(&str, String)]) -> PathBuf {
    let artefacts = manifest_dir().join("target/artefacts");
    std::fs::create_dir_all(&artefacts).expect("artefacts folder");
    let run = tokio::process::Command::new("node")
        .arg(manifest_dir().join("tests/browser").join(script))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CARTBUS_CHROMIUM", chromium)
        .env("CARTBUS_ARTEFACTS", &artefacts)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_RUN, run)
        .await
        .expect("the browser test finishes in time")
        .expect("node starts");
    assert!(
        output.status.success(),
        "browser test {script} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    artefacts
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing(chromium: &Path) -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Some("needs node on PATH".into());
    }
    if !chromium.exists() {
        return Some(format!(
            "needs chromium at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !manifest_dir()
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("needs playwright-core: npm ci --prefix tests/browser".into());
    }
    None
}

#[tokio::test]
async fn an_operator_pauses_resumes_and_resubmits_a_dead_letter_in_a_real_browser() {
    const TEST: &str = "an_operator_pauses_resumes_and_resubmits_a_dead_letter_in_a_real_browser";
    let Some(chromium) = browser(TEST) else {
        return;
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            // The conflicting cart below is to reach the consumer, not a 409 at intake.
            .set("CARTBUS_CONFLICT_CHECK_MS", "0")
            // A webhook receiver that is down: failing after its first refused call.
            .set("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
            .set("CARTBUS_WEBHOOK_FAILING_AFTER", "1")
            .set("CARTBUS_WEBHOOK_POLL_MS", "50"),
    )
    .await;
    let config = &app.state.config;
    let (status, created) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/down"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let webhook = created["endpoint"]["id"].as_str().expect("id").to_string();

    // A valid cart that failed on every attempt (say the orders database was down): a
    // resubmit now creates its order.
    let cart_json = common::cart();
    let cart_id = cart_json["cart_id"].as_str().expect("cart_id").to_string();
    let cart = Cart::parse(&cart_json).expect("a valid cart");
    let mut tx = app.state.db.begin().await.expect("begin");
    cartbus::store::dead_letters::record(
        &mut tx,
        &config.queue.cart_address,
        &message::encode(&cart, chrono::Utc::now()),
        Reason::MaxAttempts,
        "failed 5 times: the orders database did not answer",
        5,
    )
    .await
    .expect("record dead letter");
    tx.commit().await.expect("commit");
    // And one that the consumer itself dead-letters: a cart sent again with another
    // payload.
    let ordered = common::cart();
    assert_eq!(app.post_cart(&ordered).await.status(), 202);
    app.wait_for_order(ordered["cart_id"].as_str().expect("cart_id"))
        .await;
    let mut conflicting = ordered.clone();
    conflicting["lines"][0]["name"] = json!("Something else");
    assert_eq!(app.post_cart(&conflicting).await.status(), 202);
    let dead_letter_id = eventually("both dead letters listed", || async {
        let page = admin_get(&app, "/v1/admin/dead-letters").await;
        let items = page["items"].as_array()?;
        if items.len() < 2 {
            return None;
        }
        items
            .iter()
            .find(|i| i["reason"] == "max-attempts")
            .and_then(|i| i["id"].as_i64())
    })
    .await;
    assert_eq!(common::count_orders_for(&app.state, &cart_id).await, 0);
    // A smoke run of this version, for the page's smoke panel.
    let (status, report) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/smoke",
        Some(json!({"carts": [common::cart()]})),
    )
    .await;
    assert_eq!((status, &report["ok"]), (200, &json!(true)), "{report}");
    eventually("the webhook endpoint failing", || async {
        let view = admin_get(&app, &format!("/v1/admin/webhooks/{webhook}")).await;
        (view["state"] == "failing").then_some(())
    })
    .await;

    let artefacts = run_browser(
        "admin_page.mjs",
        &chromium,
        &[
            ("CARTBUS_BASE_URL", app.base.clone()),
            ("CARTBUS_ADMIN_TOKEN", TOKEN.to_string()),
            ("CARTBUS_INSTANCE", config.instance.clone()),
            ("CARTBUS_DEAD_LETTER_ID", dead_letter_id.to_string()),
            ("CARTBUS_DEAD_LETTER_CART_ID", cart_id.clone()),
            ("CARTBUS_FAILING_WEBHOOK", webhook.clone()),
            ("CARTBUS_SMOKED_VERSION", config.version.clone()),
        ],
    )
    .await;
    common::note(&format!(
        "admin page screenshot: {}",
        artefacts.join("admin-page.png").display()
    ));

    // What the page did, seen through the API: one order for the resubmitted cart, the
    // dead letter resolved, and the pause and resume in the history with their reasons.
    assert_eq!(common::count_orders_for(&app.state, &cart_id).await, 1);
    let (status, checkout) = app.get_json(&format!("/v1/checkouts/{cart_id}")).await;
    assert_eq!((status, &checkout["status"]), (200, &json!("ordered")));
    let letter = admin_get(&app, &format!("/v1/admin/dead-letters/{dead_letter_id}")).await;
    assert!(letter["resolved_at"].is_string(), "{letter}");
    let resubmits: Vec<(&str, &str)> = letter["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|a| a["action"] == "resubmit")
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or_default(),
                a["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        resubmits,
        [("created-order", "orders database back (browser test)")],
        "the dry run and the refused try leave no resubmit: {letter}"
    );
    let history = admin_get(&app, "/v1/admin/consumer/history").await;
    let actions: Vec<(&str, &str)> = history
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["action"].as_str().unwrap_or_default(),
                h["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        actions[..2],
        [
            ("resume", "deploy 2.0.0 done (browser test)"),
            ("pause", "deploy 2.0.0 (browser test)")
        ],
        "{history}"
    );
    assert!(
        history[0]["changed_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("browser-test via ")),
        "{history}"
    );
    app.stop().await.expect("clean stop");
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect(path);
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("JSON")
}

/// On RabbitMQ with its management API: the page shows the backlog the broker reports and
/// its catch-up (issue 18); the screenshot is `target/artefacts/admin-page-rabbitmq.png`.
#[tokio::test]
async fn the_page_shows_a_rabbitmq_backlog_and_its_catch_up_in_a_real_browser() {
    const TEST: &str = "the_page_shows_a_rabbitmq_backlog_and_its_catch_up_in_a_real_browser";
    let Some(chromium) = browser(TEST) else {
        return;
    };
    let (Some(url), Some(management)) = (
        common::broker::url(TEST),
        common::broker::management_url(TEST),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::broker::fresh_queue();
    let status_queue = format!("{queue}-status");
    // One site of several, with a partner reply on it that belongs to the other.
    let app = TestApp::spawn(
        &common::broker::settings(dir.path(), &Backend::Sqlite, &url, &queue)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_BROKER_MANAGEMENT_URL", management)
            .set("CARTBUS_DATACENTER", "eu")
            .set("CARTBUS_STATUS_ADDRESS", format!("/queue/{status_queue}"))
            .set("CARTBUS_PARTNER_ACME_SECRET", PARTNER_SECRET),
    )
    .await;
    common::broker::wait_connected(&app.state).await;
    let reply = StatusReply {
        order_id: uuid::Uuid::new_v4(),
        status: "shipped".into(),
        tracking_id: None,
        partner: "acme".into(),
    };
    app.state
        .queue
        .send(
            &app.state.config.fulfilment.status_address,
            partner::reply(&reply, PARTNER_SECRET.as_bytes(), Some("us")),
        )
        .await
        .expect("reply sent");
    eventually("the reply dead-lettered wrong-datacenter", || async {
        let letters = common::broker::recorded_dead_letters(&app.state).await;
        letters
            .iter()
            .any(|(_, reason)| reason == "wrong-datacenter")
            .then_some(())
    })
    .await;
    let (code, paused) = common::admin_call(
        &app.client,
        &app.base,
        TOKEN,
        reqwest::Method::POST,
        "/v1/admin/consumer/pause",
        Some(json!({ "reason": "backlog on RabbitMQ (browser test)", "wait_seconds": 30 })),
    )
    .await;
    assert_eq!(code, 200, "{paused}");
    const CARTS: usize = 40;
    for _ in 0..CARTS {
        assert_eq!(app.post_cart(&common::cart()).await.status(), 202);
    }

    let artefacts = run_browser(
        "broker_backlog.mjs",
        &chromium,
        &[
            ("CARTBUS_BASE_URL", app.base.clone()),
            ("CARTBUS_ADMIN_TOKEN", TOKEN.to_string()),
            ("CARTBUS_EXPECTED_DEPTH", CARTS.to_string()),
            ("CARTBUS_EXPECTED_DATACENTER", "eu".to_string()),
        ],
    )
    .await;
    common::note(&format!(
        "admin page on RabbitMQ: {}",
        artefacts.join("admin-page-rabbitmq.png").display()
    ));
    // The page's resume went through: every cart became an order.
    assert_eq!(common::count_orders(&app.state).await, CARTS as i64);
    app.stop().await.expect("clean stop");
    common::broker::delete(&queue);
    common::broker::delete(&status_queue);
}
